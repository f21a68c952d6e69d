"""Memory plan: per-device bytes of the train step and the sampler, compiled ahead of time.

  python tools/memory_plan.py --gin_file=configs/humpback_llama2_7b.gin --devices=16 --chip=v5e
  python tools/memory_plan.py --gin_file=configs/humpback_llama2_7b_v4_8.gin --slice=v4-8
  python tools/memory_plan.py --gin_file=configs/humpback_llama2_70b_v5p_64.gin --slice=v5p-64 \
      --backend=tpu    # XLA's TPU compiler (libtpu installed; no TPU needed)

Builds the model, mesh and logical axis rules the pipeline would use from the gin config,
then compiles, on abstract inputs only (nothing is allocated), (1) the training step
(``train.step.make_train_step``: forward, backward, AdamW update, ``TrainConfig.remat_policy``
and ``micro_batches``, activation sharding) for ``forward/TrainConfig`` and (2) the sampler's
decode program (``sample.decode._generate``: prefill + while-loop decode with the KV cache) for
``GenerationConfig`` (self-augmentation) and ``CurationConfig`` (rating), and reads XLA's
``memory_analysis()`` of each. XLA's figures are per device (per SPMD partition). The train
step is planned for ``TrainConfig.batch_size`` rows (rounded up to the batch shards), the worst
case of packing (one example per row).

Backends (``--backend``):
  cpu  (default) fake CPU devices (``--xla_force_host_platform_device_count``): seconds, needs
       only jax. XLA:CPU fuses less than XLA:TPU and assigns buffers differently, so its
       figures are estimates: for the configs in configs/ the train step came out between 5%
       under and 13% over the TPU compiler's, the sampler 1.7-2.0x over.
  tpu  XLA's TPU compiler for the slice's real topology (``jax.experimental.topologies``, as
       MaxText's ``train_compile.py``): needs the ``libtpu`` package importable (the release
       jax's ``[tpu]`` extra pins, 0.0.42.* for jax 0.10.2; a ``pip install --target DIR`` on
       ``PYTHONPATH`` will do) but no TPU; about 20-260 s per program on 2 CPU cores. A program
       larger than the chip is refused by the compiler; its ``compiled`` is then ``error``,
       ``per_device_total_bytes`` (what it needs) and ``available_hbm_bytes`` (what XLA can
       use), read from the message, and ``fits`` is false.

``--slice`` names a Cloud TPU slice (``v5e-16``, ``v4-8``, ``v5p-64``) and sets ``--chip`` and
``--devices``: v4 and v5p slice names count TensorCores (two per chip; JAX sees one device per
chip), so v4-8 is 4 devices and v5p-64 is 32; v5e and v6e names count chips.

Prints one JSON object. Keys: ``model`` (shape name), ``devices``, ``mesh`` (axis sizes),
``chip``, ``chip_hbm_bytes``, ``headroom``, ``backend``, ``topology`` (tpu only), ``train``,
``sample`` and ``curate`` (each: the analytic per-device bytes of what the program holds,
``parameters_bytes``, ``optimizer_state_bytes``, ``batch_bytes`` / ``kv_cache_bytes``, and
XLA's ``compiled`` figures ``argument_bytes``, ``output_bytes``, ``temp_bytes`` (activations and
other temporaries), ``alias_bytes`` (donated buffers reused by outputs),
``generated_code_bytes``; ``per_device_total_bytes`` = argument + output + temp - alias; the
train step also has ``rows``, ``sequence_length``, ``remat_policy``, ``micro_batches`` and
``attention_impl``), ``per_device_total_bytes`` and ``per_device_total_gib`` (the largest
program), ``fits`` (that total <= ``chip_hbm_bytes`` x ``--headroom``), and ``slice`` (with
``--slice``).

Model shapes: the config's ``BaseModelConfig.checkpoint`` when it names a Llama-2 size
(``hf://meta-llama/Llama-2-7b-hf`` -> llama2_7b), else ``--model`` (one of ``SHAPES``).
Configs that ``include 'configs/...'`` are parsed from the repository root.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import re
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent

# HBM per chip, bytes (../shared/docs/hardware.md; vendor figures).
CHIP_HBM_BYTES = {
    "v4": 32 * 2**30, "v5e": 16 * 2**30, "v5p": 95 * 2**30, "v6e": 32 * 2**30,
    "a100": 80 * 10**9, "h100": 80 * 10**9, "h200": 141 * 10**9,
}

# Cloud TPU slice names: the number counts TensorCores for v4 and v5p (2 per chip; JAX sees one
# device per chip, "megacore") and chips for v5e and v6e (hardware.md, tpu/README.md).
_CORES_PER_CHIP_IN_NAME = {"v4": 2, "v5p": 2, "v5e": 1, "v6e": 1}
_SLICE_ALIASES = {"v5litepod": "v5e"}


def parse_slice(name: str) -> tuple[str, int]:
  """``"v5p-64"`` -> ``("v5p", 32)``: the chip and the number of chips (= JAX devices).

  Raises:
    ValueError: not ``FAMILY-N`` with a known family, or N not a whole number of chips.
  """
  family, _, n = name.strip().lower().rpartition("-")
  family = _SLICE_ALIASES.get(family, family)
  if family not in _CORES_PER_CHIP_IN_NAME or not n.isdigit() or int(n) < 1:
    raise ValueError(f"slice {name!r}: expected FAMILY-N with FAMILY one of "
                     f"{sorted(_CORES_PER_CHIP_IN_NAME)} (or v5litepod), e.g. v5e-16, v4-8")
  per = _CORES_PER_CHIP_IN_NAME[family]
  if int(n) % per:
    raise ValueError(f"slice {name!r}: {family} slice sizes count TensorCores ({per} per chip)")
  return family, int(n) // per


# TPU topologies for --backend=tpu: (chip, devices) -> (topology name, get_topology_desc
# keyword arguments); MaxText's accelerator table (v4/v5p: megacore, 2x2x1 chips per host).
_MEGACORE = dict(chip_config_name="megacore", chips_per_host_bounds=(2, 2, 1), num_slices=1,
                 wrap=(False, False, False))
_TOPOLOGY_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
                256: "4x8x8"}
_TOPOLOGY_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
                256: "16x16"}


def tpu_topology(chip: str, devices: int) -> tuple[str, dict]:
  """The ``jax.experimental.topologies.get_topology_desc`` arguments of ``devices`` chips."""
  if chip in ("v4", "v5p") and devices in _TOPOLOGY_3D:
    return f"{chip}:{_TOPOLOGY_3D[devices]}", dict(_MEGACORE)
  if chip in ("v5e", "v6e") and devices in _TOPOLOGY_2D:
    return f"{chip}:{_TOPOLOGY_2D[devices]}", {}
  raise ValueError(f"no TPU topology known for {devices} {chip} chips")


def tpu_devices(chip: str, devices: int) -> tuple[list, str]:
  """Abstract TPU devices of the slice (libtpu's AOT compiler; no TPU needed) and the
  topology's name."""
  from jax.experimental import topologies
  name, kwargs = tpu_topology(chip, devices)
  try:
    topo = topologies.get_topology_desc(topology_name=name, platform="tpu", **kwargs)
  except Exception as e:  # noqa: BLE001 - libtpu missing or too old/new for this jax
    raise SystemExit(f"--backend=tpu needs libtpu (pip install 'libtpu==0.0.42.*' for jax "
                     f"0.10.2): {type(e).__name__}: {e}") from e
  if len(topo.devices) != devices:
    raise SystemExit(f"topology {name} has {len(topo.devices)} devices, expected {devices}")
  return list(topo.devices), name


# Llama-2 shapes (HF config.json of meta-llama/Llama-2-*-hf; hardware.md), SmolLM2-135M and
# stories260K (data README), as LlamaConfig keyword arguments.
SHAPES = {
    "llama2_7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                      num_layers=32, num_heads=32, num_kv_heads=32, max_seq_len=4096),
    "llama2_13b": dict(vocab_size=32000, hidden_size=5120, intermediate_size=13824,
                       num_layers=40, num_heads=40, num_kv_heads=40, max_seq_len=4096),
    "llama2_70b": dict(vocab_size=32000, hidden_size=8192, intermediate_size=28672,
                       num_layers=80, num_heads=64, num_kv_heads=8, max_seq_len=4096),
    "smollm2_135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_layers=30, num_heads=9, num_kv_heads=3, max_seq_len=8192,
                         rope_theta=100000.0, tie_word_embeddings=True),
    "stories260k": dict(vocab_size=512, hidden_size=64, intermediate_size=172, num_layers=5,
                        num_heads=8, num_kv_heads=4, max_seq_len=512,
                        tie_word_embeddings=True),
}


def _shape_name(checkpoint: str, override: str | None) -> str:
  if override:
    return override
  m = re.search(r"llama-2-(7|13|70)b", checkpoint.lower())
  if m:
    return f"llama2_{m.group(1)}b"
  if checkpoint == "smollm2":
    return "smollm2_135m"
  if "stories260k" in checkpoint.lower():
    return "stories260k"
  raise SystemExit(f"cannot tell the model shape of checkpoint {checkpoint!r}; pass --model "
                   f"(one of {sorted(SHAPES)})")


def _bytes_per_device(abstract, shardings) -> int:
  """Sum over leaves of the shard's size in bytes (what one device holds)."""
  import jax
  import numpy as np
  total = 0
  for a, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)):
    total += int(np.prod(s.shard_shape(a.shape))) * np.dtype(a.dtype).itemsize
  return total


def _compiled_figures(compiled) -> dict:
  m = compiled.memory_analysis()
  out = {"argument_bytes": int(m.argument_size_in_bytes),
         "output_bytes": int(m.output_size_in_bytes),
         "temp_bytes": int(m.temp_size_in_bytes),
         "alias_bytes": int(m.alias_size_in_bytes),
         "generated_code_bytes": int(m.generated_code_size_in_bytes)}
  out["per_device_total_bytes"] = (out["argument_bytes"] + out["output_bytes"] +
                                   out["temp_bytes"] - out["alias_bytes"])
  return out


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _out_of_memory_figures(message: str) -> dict | None:
  """XLA:TPU refuses to compile a program larger than the chip's HBM ("RESOURCE_EXHAUSTED: Ran
  out of memory on HBM, the total memory required for HLO temporaries (40.00G) exceeds
  available HBM (30.75G)"): the figures from its message (binary units), or None."""
  if "RESOURCE_EXHAUSTED" not in message and "Ran out of memory" not in message:
    return None
  size = r"\(?([0-9.]+)([KMGT]?)i?B?\)?"
  m = (re.search(r"required for .*?" + size + r" exceeds available HBM " + size, message) or
       re.search(r"Used " + size + r" of " + size + r" hbm", message))
  out = {"error": " ".join(message.split())[:400]}
  if m:
    out["per_device_total_bytes"] = int(float(m.group(1)) * _UNITS[m.group(2)])
    out["available_hbm_bytes"] = int(float(m.group(3)) * _UNITS[m.group(4)])
  return out


def _compile(lowered) -> dict:
  """XLA's figures of ``lowered``; for a program the TPU compiler finds too large for the
  chip, ``{"error", "per_device_total_bytes", "available_hbm_bytes"}`` from its message."""
  try:
    compiled = lowered.compile()
  except Exception as e:  # noqa: BLE001 - jax raises JaxRuntimeError (not importable stably)
    figures = _out_of_memory_figures(str(e))
    if figures is None:
      raise
    return figures
  return _compiled_figures(compiled)


def plan_train(model_config, train_config, mesh, rules=None, rows: int | None = None) -> dict:
  """Compiles the train step on abstract inputs; returns analytic and compiled bytes."""
  import jax
  import jax.numpy as jnp
  from humpback_jax import sharding as shd
  from humpback_jax.train import state as state_lib
  from humpback_jax.train.schedule import make_optimizer
  from humpback_jax.train.step import BATCH_KEYS, make_train_step
  rules = tuple(shd.DEFAULT_LOGICAL_AXIS_RULES if rules is None else rules)
  optimizer = make_optimizer(train_config)
  abstract = state_lib.abstract_state(model_config, optimizer)
  shardings = state_lib.state_shardings(model_config, abstract, mesh, rules)
  step = make_train_step(model_config, train_config, optimizer, mesh, shardings, rules)
  multiple = shd.batch_parallel_size(mesh)
  rows = rows or -(-train_config.batch_size // multiple) * multiple
  t = train_config.sequence_length
  batch_sharding = shd.batch_sharding(mesh, rules)
  batch = {k: jax.ShapeDtypeStruct((rows, t), jnp.int32, sharding=batch_sharding)
           for k in BATCH_KEYS}
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=shd.replicated(mesh))
  state_in = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
  t0 = time.perf_counter()
  with jax.set_mesh(mesh):
    compiled = _compile(step.lower(state_in, batch, rng))
  return {
      "rows": rows, "sequence_length": t, "remat_policy": train_config.remat_policy,
      "micro_batches": train_config.micro_batches,
      "attention_impl": getattr(train_config, "attention_impl", "dot_product"),
      "parameters_bytes": _bytes_per_device(abstract.params, shardings.params),
      "optimizer_state_bytes": _bytes_per_device(abstract.opt_state, shardings.opt_state),
      "batch_bytes": _bytes_per_device(batch, {k: batch_sharding for k in batch}),
      "compiled": compiled,
      "compile_seconds": round(time.perf_counter() - t0, 1),
  }


def plan_sample(model_config, gen_config, mesh, rules=None) -> dict:
  """Compiles the sampler's decode program on abstract inputs (params in the compute dtype,
  sharded; batch over data x fsdp; KV cache over data x fsdp and tensor)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from humpback_jax import sharding as shd
  from humpback_jax.sample import decode
  from humpback_jax.sample.sampling import Greedy, Sampling
  rules = tuple(shd.DEFAULT_LOGICAL_AXIS_RULES if rules is None else rules)
  cfg = model_config.replace(param_dtype=model_config.dtype)  # inference copy
  act = shd.ActivationSharding(mesh, rules)
  p_abs = shd.abstract_params(cfg)
  p_shard = shd.param_shardings(cfg, mesh, rules)
  params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        p_abs, p_shard)
  b, p, n = gen_config.batch_size, gen_config.max_prompt_len, gen_config.max_new_tokens
  rows = shd.logical_to_mesh_spec(("batch",), rules, mesh=mesh)[0]
  spec = lambda *rest: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(rows, *rest))
  tokens = jax.ShapeDtypeStruct((b, p), jnp.int32, sharding=spec(None))
  lengths = jax.ShapeDtypeStruct((b,), jnp.int32, sharding=spec())
  keys = jax.ShapeDtypeStruct((b, 2), jnp.uint32, sharding=spec(None))
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  eos = jax.ShapeDtypeStruct((4,), jnp.int32, sharding=rep)  # abstract: no device arrays
  pad = jax.ShapeDtypeStruct((), jnp.int32, sharding=rep)
  t0 = time.perf_counter()
  with jax.set_mesh(mesh):
    compiled = _compile(decode._generate.lower(  # pylint: disable=protected-access
        params, tokens, lengths, keys, eos, pad, config=cfg, max_new_tokens=n,
        strategy=(Sampling(temperature=gen_config.temperature, top_p=gen_config.top_p)
                  if gen_config.temperature > 0 else Greedy()),
        sharding=act, layer_loop="scan"))  # the accelerators' decode loop (default_layer_loop)
  kv_spec = act.spec(("layers", "cache_batch", "cache_sequence", "cache_heads", None),
                     (cfg.num_layers, b, p + n, cfg.num_kv_heads, cfg.head_dim))
  kv_shape = jax.sharding.NamedSharding(mesh, kv_spec).shard_shape(
      (cfg.num_layers, b, p + n, cfg.num_kv_heads, cfg.head_dim))
  return {
      "batch_size": b, "max_prompt_len": p, "max_new_tokens": n,
      "parameters_bytes": _bytes_per_device(p_abs, p_shard),
      "kv_cache_bytes": 2 * int(np.prod(kv_shape)) * np.dtype(cfg.compute_dtype).itemsize,
      "compiled": compiled,
      "compile_seconds": round(time.perf_counter() - t0, 1),
  }


def memory_plan(gin_files, gin_params=(), *, devices: int, chip: str, model: str | None = None,
                headroom: float = 0.9, sample: bool = True, backend: str = "cpu") -> dict:
  """The plan as a dict (see the module docstring). With ``backend="cpu"`` JAX must see
  ``devices`` devices; with ``"tpu"`` libtpu must be importable."""
  import gin
  import jax
  from humpback_jax import sharding as shd
  from humpback_jax.models.config import LlamaConfig
  from humpback_jax.pipeline.config import build_config
  from humpback_jax.train.config import TrainConfig

  # Configs `include 'configs/...'` relative to the repository root (where the pipeline runs:
  # tpu/run_pod.sh), so parse there, with the files named absolutely.
  gin_files = [str(pathlib.Path(f).absolute()) for f in gin_files]
  with contextlib.chdir(REPO):
    config = build_config(gin_files, gin_params)
  with gin.config_scope("forward"):
    train_config = gin.get_configurable(TrainConfig)()
  name = _shape_name(config.base.checkpoint, model)
  model_config = LlamaConfig(**SHAPES[name], dtype=config.base.dtype,
                             param_dtype=config.base.param_dtype)
  if hasattr(config.base, "apply"):  # the base model's sampling kernel, where configurable
    model_config = config.base.apply(model_config)
  topology = None
  if backend == "tpu":
    device_list, topology = tpu_devices(chip, devices)
  else:
    if jax.device_count() < devices:
      raise SystemExit(f"JAX sees {jax.device_count()} devices, need {devices}")
    device_list = jax.devices()[:devices]
  mesh = shd.make_mesh(train_config.mesh, device_list)
  out = {"model": name, "devices": devices, "mesh": dict(mesh.shape), "chip": chip,
         "chip_hbm_bytes": CHIP_HBM_BYTES[chip], "headroom": headroom, "backend": backend}
  if topology:
    out["topology"] = topology
  out["train"] = plan_train(model_config, train_config, mesh)
  if sample:
    out["sample"] = plan_sample(model_config, config.augment, mesh)
    out["curate"] = plan_sample(model_config, config.curation, mesh)
  programs = [out[k]["compiled"] for k in ("train", "sample", "curate") if k in out]
  totals = [c.get("per_device_total_bytes", 0) for c in programs]
  out["per_device_total_bytes"] = max(totals)
  out["per_device_total_gib"] = round(max(totals) / 2**30, 2)
  out["fits"] = (max(totals) <= headroom * CHIP_HBM_BYTES[chip] and
                 not any("error" in c for c in programs))  # error: XLA:TPU ran out of HBM
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--gin_file", action="append", default=None)
  p.add_argument("--gin_param", action="append", default=[])
  p.add_argument("--devices", type=int, default=None,
                 help="chips in the slice (JAX devices); required unless --slice")
  p.add_argument("--chip", choices=sorted(CHIP_HBM_BYTES), default=None,
                 help="chip whose HBM is the budget (default v5e, or --slice's)")
  p.add_argument("--slice", default=None,
                 help="Cloud TPU slice, e.g. v5e-16, v4-8, v5p-64: sets --chip and --devices")
  p.add_argument("--backend", choices=("cpu", "tpu"), default="cpu",
                 help="cpu: fake CPU devices (default); tpu: XLA's TPU compiler via libtpu")
  p.add_argument("--model", choices=sorted(SHAPES), default=None,
                 help="model shape (default: from BaseModelConfig.checkpoint)")
  p.add_argument("--headroom", type=float, default=0.9,
                 help="share of HBM the plan may use (XLA reserves some; default 0.9)")
  p.add_argument("--no_sample", action="store_true", help="plan the train step only")
  args = p.parse_args(argv)
  if args.slice:
    try:
      chip, devices = parse_slice(args.slice)
    except ValueError as e:
      p.error(str(e))
    if args.chip not in (None, chip) or args.devices not in (None, devices):
      p.error(f"--slice={args.slice} is {devices} {chip} chips; --chip/--devices disagree")
    args.chip, args.devices = chip, devices
  if args.devices is None:
    p.error("--devices or --slice is required")
  args.chip = args.chip or "v5e"
  if args.backend == "tpu" and args.chip not in _CORES_PER_CHIP_IN_NAME:
    p.error(f"--backend=tpu needs a TPU chip, not {args.chip}")
  if args.backend == "cpu":
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                   os.environ.get("XLA_FLAGS", ""))
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.devices}"
  os.environ.setdefault("JAX_PLATFORMS", "cpu")  # tpu: the compiler only, no TPU runtime
  sys.path.insert(0, str(REPO))
  out = memory_plan(args.gin_file or [str(REPO / "configs" / "humpback_llama2_7b.gin")],
                    args.gin_param, devices=args.devices, chip=args.chip, model=args.model,
                    headroom=args.headroom, sample=not args.no_sample, backend=args.backend)
  if args.slice:
    out["slice"] = args.slice
  print(json.dumps(out))
  return 0


if __name__ == "__main__":
  sys.exit(main())
