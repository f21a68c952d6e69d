"""The Runtime: one mesh and one set of rules per run, shared by training and sampling."""

import jax
import pytest

from humpback_jax import sharding as shd
from humpback_jax.errors import InputError
from humpback_jax.models.config import LlamaConfig
from humpback_jax.pipeline.config import PipelineConfig
from humpback_jax.pipeline.context import RunContext
from humpback_jax.runtime import Runtime
from humpback_jax.train.config import TrainConfig

pytestmark = pytest.mark.skipif(jax.device_count() < 8,
                                reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=8")


def test_runtime_mesh_rules_and_processes():
  rt = Runtime.create(shd.MeshConfig(data=2, fsdp=-1, tensor=2))
  assert dict(rt.mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert rt.batch_parallel_size == 4
  assert (rt.process_index, rt.process_count, rt.is_writer) == (0, 1, True)
  cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                    num_heads=4, num_kv_heads=2)
  q = rt.param_shardings(cfg)["params"]["layers"]["attn"]["q_proj"]["kernel"]
  assert q.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
  assert rt.activation_sharding.spec(("activation_batch", "activation_length",
                                      "activation_vocab"), (8, 4, 64)) == \
      jax.sharding.PartitionSpec(("data", "fsdp"), None, "tensor")
  with pytest.raises(ValueError):
    Runtime.create(shd.MeshConfig(data=3, fsdp=-1))


def test_run_context_builds_one_runtime(tmp_path):
  mesh = shd.MeshConfig(data=-1)
  cfg = PipelineConfig(backward_train=TrainConfig(num_steps=1, mesh=mesh),
                       forward_train=TrainConfig(num_steps=1, mesh=mesh))
  ctx = RunContext(tmp_path, cfg)
  assert ctx.runtime is ctx.runtime and ctx.mesh is ctx.runtime.mesh
  assert dict(ctx.mesh.shape) == {"data": 8, "fsdp": 1, "tensor": 1}
  other = PipelineConfig(backward_train=TrainConfig(num_steps=1, mesh=shd.MeshConfig(fsdp=-1)),
                         forward_train=TrainConfig(num_steps=1, mesh=mesh))
  with pytest.raises(InputError, match="a run has one mesh"):
    RunContext(tmp_path, other).runtime
