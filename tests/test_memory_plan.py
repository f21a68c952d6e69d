"""tools/memory_plan.py and the sharding of parameters and activations (8 fake CPU devices).

The plan's analytic per-device bytes must equal what XLA compiled; no parameter or activation
above a size threshold may be replicated over the mesh; the Llama-2-7B config fits a v5e-16.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from humpback_jax import sharding as shd
from humpback_jax.models.config import LlamaConfig
from humpback_jax.pipeline.config import GenerationConfig
from humpback_jax.train.config import TrainConfig

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
import memory_plan  # noqa: E402

# A large vocabulary makes replicated logits easy to see: [8, 128, 4096] f32 = 16 MiB.
CFG = LlamaConfig(vocab_size=4096, hidden_size=64, intermediate_size=128, num_layers=2,
                  num_heads=4, num_kv_heads=2)
TRAIN = TrainConfig(num_steps=2, sequence_length=128, batch_size=8)
MESHES = [(1, 8, 1), (2, 2, 2), (8, 1, 1), (1, 2, 4)]

pytestmark = pytest.mark.skipif(jax.device_count() < 8,
                                reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=8")


def _mesh(shape):
  return shd.make_mesh(shd.MeshConfig(*shape), jax.devices()[:8])


@pytest.mark.parametrize("shape", MESHES)
def test_plan_bytes_equal_the_compiled_arguments(shape):
  mesh = _mesh(shape)
  train = memory_plan.plan_train(CFG, TRAIN, mesh)
  # State + batch + the rng key (8 B) and the step counter (int32, 4 B).
  held = train["parameters_bytes"] + train["optimizer_state_bytes"] + train["batch_bytes"]
  assert train["compiled"]["argument_bytes"] == held + 8 + 4
  # The state is donated: its buffers are reused for the new state.
  assert train["compiled"]["alias_bytes"] >= train["parameters_bytes"] + train[
      "optimizer_state_bytes"]
  n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shd.abstract_params(CFG)))
  shards = mesh.shape["fsdp"] * mesh.shape["tensor"]
  assert train["parameters_bytes"] <= 4 * n_params / shards * 1.1  # really split
  gen = GenerationConfig(batch_size=8, max_prompt_len=64, max_new_tokens=8)
  sample = memory_plan.plan_sample(CFG, gen, mesh)
  rows = mesh.shape["data"] * mesh.shape["fsdp"]
  batch_bytes = (8 // rows) * (64 + 1 + 2) * 4  # tokens, lengths, keys per device
  assert sample["compiled"]["argument_bytes"] == sample["parameters_bytes"] + batch_bytes + 16 + 4


@pytest.mark.parametrize("shape", MESHES)
def test_no_large_parameter_is_replicated(shape):
  """Every parameter over 64 KiB is split over the mesh (fsdp and/or tensor)."""
  mesh = _mesh(shape)
  abstract = shd.abstract_params(CFG)
  shardings = shd.param_shardings(CFG, mesh)
  if mesh.shape["fsdp"] * mesh.shape["tensor"] == 1:
    pytest.skip("pure data parallelism replicates parameters by design")
  for path, a, s in zip(jax.tree_util.tree_flatten_with_path(abstract)[0],
                        jax.tree.leaves(abstract), jax.tree.leaves(shardings)):
    if np.prod(a.shape) * 4 > 64 << 10:
      assert np.prod(s.shard_shape(a.shape)) < np.prod(a.shape), (path[0], s.spec)


@pytest.mark.parametrize("shape", MESHES)
def test_activations_are_not_replicated(shape):
  """The train step's temporaries per device stay below ONE replicated copy of the logits
  (16 MiB here); without the activation constraints the fsdp mesh needs 44 MiB."""
  train = memory_plan.plan_train(CFG, TRAIN, _mesh(shape))
  replicated_logits = 8 * 128 * CFG.vocab_size * 4
  assert train["compiled"]["temp_bytes"] < replicated_logits, train["compiled"]


def test_unknown_logical_activation_name_is_an_error():
  act = shd.ActivationSharding(_mesh((2, 2, 2)))
  with pytest.raises(shd.UnknownLogicalAxisError, match="activation_bogus"):
    act.spec(("activation_bogus",), (8,))


@pytest.mark.slow
def test_llama2_7b_plan_fits_a_v5e_16():
  """The 7B config (remat full, fsdp 16, 32 generation rows) on 16 fake devices."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=16")
  out = subprocess.run([sys.executable, str(REPO / "tools" / "memory_plan.py"), "--devices=16",
                        "--chip=v5e"], capture_output=True, text=True, env=env, cwd=REPO,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  plan = json.loads(out.stdout.strip().splitlines()[-1])
  assert plan["model"] == "llama2_7b" and plan["mesh"] == {"data": 1, "fsdp": 16, "tensor": 1}
  assert plan["fits"], plan
  train = plan["train"]
  assert train["remat_policy"] == "full"
  # f32 parameters and Adam moments of 6.74e9 parameters split 16 ways.
  assert abs(train["parameters_bytes"] - 6.74e9 * 4 / 16) < 0.01 * 6.74e9 * 4 / 16
  assert abs(train["optimizer_state_bytes"] - 2 * train["parameters_bytes"]) < 1e6
  assert plan["per_device_total_bytes"] <= 0.9 * 16 * 2**30
