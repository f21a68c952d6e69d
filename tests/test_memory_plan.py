"""tools/memory_plan.py and the sharding of parameters and activations (8 fake CPU devices).

The plan's analytic per-device bytes must equal what XLA compiled; no parameter or activation
above a size threshold may be replicated over the mesh; the Llama-2-7B config fits a v5e-16
and its v4-8 variant a v4-8. Every config in configs/ parses and builds a PipelineConfig, and
each TPU pod config's mesh and batch sizes match its slice (these need no devices).
"""

import contextlib
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
from humpback_jax.pipeline.config import GenerationConfig, build_config
from humpback_jax.train.config import TrainConfig

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
import memory_plan  # noqa: E402

# A large vocabulary makes replicated logits easy to see: [8, 128, 4096] f32 = 16 MiB.
CFG = LlamaConfig(vocab_size=4096, hidden_size=64, intermediate_size=128, num_layers=2,
                  num_heads=4, num_kv_heads=2)
TRAIN = TrainConfig(num_steps=2, sequence_length=128, batch_size=8)
MESHES = [(1, 8, 1), (2, 2, 2), (8, 1, 1), (1, 2, 4)]

needs_8_devices = pytest.mark.skipif(
    jax.device_count() < 8, reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=8")

CONFIGS = sorted((REPO / "configs").glob("*.gin"))
# The Cloud TPU slice each pod config is written (and memory-planned) for.
POD_CONFIGS = {
    "humpback_llama2_7b.gin": ("v5e-16", "llama2_7b"),
    "humpback_llama2_7b_v4_8.gin": ("v4-8", "llama2_7b"),
    "humpback_llama2_70b_v5p_64.gin": ("v5p-64", "llama2_70b"),
}


def _mesh(shape):
  return shd.make_mesh(shd.MeshConfig(*shape), jax.devices()[:8])


@needs_8_devices
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


@needs_8_devices
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


@needs_8_devices
@pytest.mark.parametrize("shape", MESHES)
def test_activations_are_not_replicated(shape):
  """The train step's temporaries per device stay below ONE replicated copy of the logits
  (16 MiB here); without the activation constraints the fsdp mesh needs 44 MiB."""
  train = memory_plan.plan_train(CFG, TRAIN, _mesh(shape))
  replicated_logits = 8 * 128 * CFG.vocab_size * 4
  assert train["compiled"]["temp_bytes"] < replicated_logits, train["compiled"]


@needs_8_devices
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


def _build(path):
  """``build_config`` from the repository root, where `include 'configs/...'` resolves (the
  pipeline runs there: tpu/run_pod.sh; memory_plan.py parses there)."""
  with contextlib.chdir(REPO):
    return build_config([str(path)])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_parses_and_builds(path):
  config = _build(path)
  assert config.forward_train.num_steps >= 1 and config.backward_train.num_steps >= 1


def test_every_pod_config_exists():
  assert set(POD_CONFIGS) <= {p.name for p in CONFIGS}


@pytest.mark.parametrize("name", sorted(POD_CONFIGS))
def test_pod_config_matches_its_slice(name):
  """Mesh axes multiply to the slice's chips; batches divide over the batch shards."""
  slice_name, shape = POD_CONFIGS[name]
  chip, chips = memory_plan.parse_slice(slice_name)
  config = _build(REPO / "configs" / name)
  assert memory_plan._shape_name(config.base.checkpoint, None) == shape
  assert config.base.dtype == "bfloat16"
  for train in (config.forward_train, config.backward_train):
    assert train.mesh == config.forward_train.mesh  # one mesh per run (runtime.Runtime)
    sizes = train.mesh.resolve(chips)
    assert int(np.prod(sizes)) == chips, (name, sizes)
    data, fsdp, _ = sizes
    assert train.batch_size % (data * fsdp * train.micro_batches) == 0, (name, train)
    assert train.remat_policy == "full"
  data, fsdp, _ = config.forward_train.mesh.resolve(chips)
  for sampler in (config.augment, config.curation):
    assert sampler.batch_size % (data * fsdp) == 0, (name, sampler.batch_size)
    assert sampler.max_prompt_len + sampler.max_new_tokens <= memory_plan.SHAPES[shape][
        "max_seq_len"]
  assert chip in memory_plan.CHIP_HBM_BYTES


def test_chip_hbm_and_slices():
  """hardware.md: v4 32 GiB, v5e 16 GiB, v5p 95 GiB per chip; v4/v5p slice names count
  TensorCores (2 per chip), v5e names count chips."""
  gib = 2**30
  assert memory_plan.CHIP_HBM_BYTES["v4"] == 32 * gib
  assert memory_plan.CHIP_HBM_BYTES["v5e"] == 16 * gib
  assert memory_plan.CHIP_HBM_BYTES["v5p"] == 95 * gib
  assert memory_plan.parse_slice("v5e-16") == ("v5e", 16)
  assert memory_plan.parse_slice("v5litepod-16") == ("v5e", 16)
  assert memory_plan.parse_slice("v4-8") == ("v4", 4)
  assert memory_plan.parse_slice("v5p-64") == ("v5p", 32)
  for bad in ("v4-7", "v9-8", "v5e", "v5p-x"):
    with pytest.raises(ValueError):
      memory_plan.parse_slice(bad)
  assert memory_plan.tpu_topology("v4", 4) == ("v4:2x2x1", memory_plan._MEGACORE)
  assert memory_plan.tpu_topology("v5p", 32)[0] == "v5p:2x4x4"
  assert memory_plan.tpu_topology("v5e", 16) == ("v5e:4x4", {})
  with pytest.raises(ValueError):
    memory_plan.tpu_topology("v5e", 12)


def test_tpu_out_of_memory_message_is_read():
  """--backend=tpu: XLA:TPU's refusal (this one is the f32-AdamW v4-8 step's) becomes figures."""
  msg = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
         "temporaries (35.96G) exceeds available HBM (30.75G).")
  got = memory_plan._out_of_memory_figures(msg)
  assert got["per_device_total_bytes"] == int(35.96 * 2**30)
  assert got["available_hbm_bytes"] == int(30.75 * 2**30)
  assert got["error"].startswith("RESOURCE_EXHAUSTED")
  assert memory_plan._out_of_memory_figures("INVALID_ARGUMENT: something else") is None


@pytest.mark.slow
def test_llama2_7b_v4_8_plan():
  """The v4-8 config (bf16 parameters, fsdp 4, 8 micro-batches, 16 sampler rows) on 4 fake CPU
  devices, with --slice. XLA:CPU puts the train step at ~30.1 GiB, above the plan's 0.9 x 32 GiB
  that XLA:TPU's 26.75 GiB meets (configs/humpback_llama2_7b_v4_8.gin), so this checks every
  program against the chip's 32 GiB and the sampler against the headroom."""
  env = dict(os.environ, XLA_FLAGS="")
  out = subprocess.run([sys.executable, str(REPO / "tools" / "memory_plan.py"), "--slice=v4-8",
                        "--gin_file=configs/humpback_llama2_7b_v4_8.gin"],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  plan = json.loads(out.stdout.strip().splitlines()[-1])
  assert plan["model"] == "llama2_7b" and plan["chip"] == "v4" and plan["devices"] == 4
  assert plan["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1} and plan["backend"] == "cpu"
  train = plan["train"]
  assert train["micro_batches"] == 8 and train["rows"] == 32
  # bf16 parameters, and optax's Adam moments in the parameters' dtype.
  assert abs(train["parameters_bytes"] - 6.74e9 * 2 / 4) < 0.01 * 6.74e9 * 2 / 4
  assert abs(train["optimizer_state_bytes"] - 2 * train["parameters_bytes"]) < 1e6
  hbm = memory_plan.CHIP_HBM_BYTES["v4"]
  assert plan["chip_hbm_bytes"] == hbm
  for name in ("train", "sample", "curate"):
    assert plan[name]["compiled"]["per_device_total_bytes"] < hbm, (name, plan[name])
  assert plan["sample"]["compiled"]["per_device_total_bytes"] <= 0.9 * hbm
