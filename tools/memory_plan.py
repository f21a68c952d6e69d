"""Memory plan: per-device bytes of the train step and the sampler, compiled ahead of time.

  python tools/memory_plan.py --gin_file=configs/humpback_llama2_7b.gin --devices=16 --chip=v5e

Builds the model, mesh and logical axis rules the pipeline would use from the gin config,
then compiles, on abstract inputs only (nothing is allocated; fake CPU devices stand in for
the chips), (1) the training step (``train.step.make_train_step``: forward, backward, AdamW
update, ``TrainConfig.remat_policy``, activation sharding) for ``forward/TrainConfig`` and (2)
the sampler's decode program (``sample.decode._generate``: prefill + while-loop decode with the
KV cache) for ``GenerationConfig`` (self-augmentation) and ``CurationConfig`` (rating), and
reads XLA's ``memory_analysis()`` of each. XLA's
figures are per device (per SPMD partition).

Prints one JSON object. Keys: ``model`` (shape name), ``devices``, ``mesh`` (axis sizes),
``chip``, ``chip_hbm_bytes``, ``train``, ``sample`` and ``curate`` (each: the analytic per-device bytes
of what the program holds, ``parameters_bytes``, ``optimizer_state_bytes``, ``batch_bytes`` /
``kv_cache_bytes``, and XLA's ``compiled`` figures ``argument_bytes``, ``output_bytes``,
``temp_bytes`` (activations and other temporaries), ``alias_bytes`` (donated buffers reused by
outputs), ``generated_code_bytes``; ``per_device_total_bytes`` = argument + output + temp -
alias), ``per_device_total_bytes`` (the larger program), ``fits`` (that total <=
``chip_hbm_bytes`` x ``--headroom``) and ``compile_seconds``.

Model shapes: the config's ``BaseModelConfig.checkpoint`` when it names a Llama-2 size
(``hf://meta-llama/Llama-2-7b-hf`` -> llama2_7b), else ``--model`` (one of ``SHAPES``).
"""

from __future__ import annotations

import argparse
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
    compiled = step.lower(state_in, batch, rng).compile()
  return {
      "rows": rows, "sequence_length": t, "remat_policy": train_config.remat_policy,
      "parameters_bytes": _bytes_per_device(abstract.params, shardings.params),
      "optimizer_state_bytes": _bytes_per_device(abstract.opt_state, shardings.opt_state),
      "batch_bytes": _bytes_per_device(batch, {k: batch_sharding for k in batch}),
      "compiled": _compiled_figures(compiled),
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
  eos = jnp.full((4,), -1, jnp.int32)
  t0 = time.perf_counter()
  with jax.set_mesh(mesh):
    compiled = decode._generate.lower(  # pylint: disable=protected-access
        params, tokens, lengths, keys, eos, jnp.int32(0), config=cfg, max_new_tokens=n,
        strategy=(Sampling(temperature=gen_config.temperature, top_p=gen_config.top_p)
                  if gen_config.temperature > 0 else Greedy()),
        sharding=act).compile()
  kv_spec = act.spec(("layers", "cache_batch", "cache_sequence", "cache_heads", None),
                     (cfg.num_layers, b, p + n, cfg.num_kv_heads, cfg.head_dim))
  kv_shape = jax.sharding.NamedSharding(mesh, kv_spec).shard_shape(
      (cfg.num_layers, b, p + n, cfg.num_kv_heads, cfg.head_dim))
  return {
      "batch_size": b, "max_prompt_len": p, "max_new_tokens": n,
      "parameters_bytes": _bytes_per_device(p_abs, p_shard),
      "kv_cache_bytes": 2 * int(np.prod(kv_shape)) * np.dtype(cfg.compute_dtype).itemsize,
      "compiled": _compiled_figures(compiled),
      "compile_seconds": round(time.perf_counter() - t0, 1),
  }


def memory_plan(gin_files, gin_params=(), *, devices: int, chip: str, model: str | None = None,
                headroom: float = 0.9, sample: bool = True) -> dict:
  """The plan as a dict (see the module docstring). JAX must see ``devices`` devices."""
  import gin
  import jax
  from humpback_jax import sharding as shd
  from humpback_jax.models.config import LlamaConfig
  from humpback_jax.pipeline.config import build_config
  from humpback_jax.train.config import TrainConfig

  config = build_config(gin_files, gin_params)
  with gin.config_scope("forward"):
    train_config = gin.get_configurable(TrainConfig)()
  name = _shape_name(config.base.checkpoint, model)
  model_config = LlamaConfig(**SHAPES[name], dtype=config.base.dtype,
                             param_dtype=config.base.param_dtype)
  if jax.device_count() < devices:
    raise SystemExit(f"JAX sees {jax.device_count()} devices, need {devices}")
  mesh = shd.make_mesh(train_config.mesh, jax.devices()[:devices])
  out = {"model": name, "devices": devices, "mesh": dict(mesh.shape), "chip": chip,
         "chip_hbm_bytes": CHIP_HBM_BYTES[chip], "headroom": headroom,
         "train": plan_train(model_config, train_config, mesh)}
  if sample:
    out["sample"] = plan_sample(model_config, config.augment, mesh)
    out["curate"] = plan_sample(model_config, config.curation, mesh)
  totals = [out[k]["compiled"]["per_device_total_bytes"] for k in ("train", "sample", "curate")
            if k in out]
  out["per_device_total_bytes"] = max(totals)
  out["per_device_total_gib"] = round(max(totals) / 2**30, 2)
  out["fits"] = max(totals) <= headroom * CHIP_HBM_BYTES[chip]
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--gin_file", action="append", default=None)
  p.add_argument("--gin_param", action="append", default=[])
  p.add_argument("--devices", type=int, required=True, help="chips in the slice")
  p.add_argument("--chip", choices=sorted(CHIP_HBM_BYTES), default="v5e")
  p.add_argument("--model", choices=sorted(SHAPES), default=None,
                 help="model shape (default: from BaseModelConfig.checkpoint)")
  p.add_argument("--headroom", type=float, default=0.9,
                 help="share of HBM the plan may use (XLA reserves some; default 0.9)")
  p.add_argument("--no_sample", action="store_true", help="plan the train step only")
  args = p.parse_args(argv)
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                 os.environ.get("XLA_FLAGS", ""))
  os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.devices}"
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.path.insert(0, str(REPO))
  out = memory_plan(args.gin_file or [str(REPO / "configs" / "humpback_llama2_7b.gin")],
                    args.gin_param, devices=args.devices, chip=args.chip, model=args.model,
                    headroom=args.headroom, sample=not args.no_sample)
  print(json.dumps(out))
  return 0


if __name__ == "__main__":
  sys.exit(main())
