"""Benchmark: batched generation throughput of our ``generate`` vs HF ``model.generate``.

What is measured. For each batch size in ``--batches`` (default 1, 8 and 32): sampling of
exactly ``--new_tokens`` (64) tokens after each of ``batch`` LEFT-padded prompts of random token
ids, ``--prompt_len`` (128) columns wide (row 0 is full length, the others random lengths in
``[prompt_len // 2, prompt_len]`` unless ``--no_ragged``), with temperature 0.7 and top-p 0.9
(``--temperature``, ``--top_p``; ``--greedy`` for arg-max) on both sides.

* Ours: ``humpback_jax.sample.decode.generate`` (``Sampling(0.7, 0.9)``: one jitted program,
  prefill + a ``lax.while_loop`` of single-token steps over a KV cache; see its module
  docstring), per-row keys, ``eos_ids=()`` so every row runs the whole budget.
* Peer: ``transformers.LlamaForCausalLM`` holding the same weights,
  ``model.generate(do_sample=True, temperature=0.7, top_p=0.9, top_k=0, eos_token_id=None,
  use_cache=True)`` (its DynamicCache and default attention) with the same prompts and
  ``attention_mask``; no EOS, so every row also produces exactly ``new_tokens`` tokens (checked
  from the output shape).

Units. ``ours_tok_s`` / ``peer_tok_s``: new tokens per second, ``batch * new_tokens / seconds``
of one whole call (prefill included), the median over ``--repeats`` timed calls per side, ours
and the peer's calls interleaved (one untimed warm-up call each first). ``ratio`` = ours / peer
(> 1: we are faster); ``ratio_paired``: the median of the per-round ratios (each round one
call per side, back to back), steadier when the machine's load drifts. ``ours_compile_s`` / ``ours_compilations``: XLA compile seconds and
executables built by our first call (``humpback_jax.compilation``).

Roofline. At batch 1 a decode step reads every parameter once, so its speed is bounded by
memory bandwidth: ``roofline_tok_s = bandwidth / param_bytes_per_step``, with the bandwidth
measured here on the device (the best of a ``--bw_mib`` MiB sum, read-only, and a copy, read +
write; bytes / median seconds), and ``param_bytes_per_step`` the bytes of every parameter the
step reads in the decode dtype (all blocks, the final norm and the output head; the embedding
table only once when tied). ``batch1_fraction_of_roofline`` = ours at batch 1 / roofline
(prefill included, so a lower bound of the decode loop's fraction).

Devices. ``--device cpu|gpu|tpu`` selects JAX's platform (default: JAX's default backend) and
the peer's torch device (CUDA on gpu; CPU otherwise, or ``--peer none`` to skip it). Default
dtype: float32 on cpu, bfloat16 on accelerators.

Run (from the repository root; prints one JSON object on stdout)::

  .venv/bin/python tools/bench_generate.py                 # the spec: 1/8/32 x 128 + 64
  .venv/bin/python tools/bench_generate.py --model tiny --batches 1,4 --new_tokens 16
  .venv/bin/python tools/bench_generate.py --device gpu
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

PAD_ID = 0
_PLATFORMS = {"cpu": "cpu", "gpu": "cuda", "tpu": "tpu"}


def make_prompts(vocab_size: int, batch: int, prompt_len: int, ragged: bool,
                 seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Random left-padded prompts.

  Returns:
    (tokens int32 [B, P] with ``PAD_ID`` on the left, lengths int32 [B]; row 0 is full length).
  """
  rng = np.random.default_rng(seed)
  lengths = np.full((batch,), prompt_len, np.int32)
  if ragged and batch > 1:
    lengths[1:] = rng.integers(max(1, prompt_len // 2), prompt_len + 1, size=batch - 1)
  tokens = np.full((batch, prompt_len), PAD_ID, np.int32)
  for r, n in enumerate(lengths):
    tokens[r, prompt_len - n:] = rng.integers(1, vocab_size, size=n)
  return tokens, lengths


def measure_bandwidth(mib: int, repeats: int = 5) -> dict:
  """Device memory bandwidth (bytes/s): the best of a jitted sum (reads ``mib`` MiB) and a
  jitted copy (reads and writes them), median seconds of ``repeats`` calls each."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  n = mib * (1 << 20) // 4
  x = jax.block_until_ready(jnp.arange(n, dtype=jnp.float32))
  read = jax.jit(lambda a: jnp.sum(a))
  copy = jax.jit(lambda a: a * 1.000001)
  out = {}
  for name, fn, moved in (("sum", read, 4 * n), ("copy", copy, 8 * n)):
    jax.block_until_ready(fn(x))
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      jax.block_until_ready(fn(x))
      times.append(time.perf_counter() - start)
    out[f"{name}_bytes_per_s"] = moved / statistics.median(times)
  out["bandwidth_bytes_per_s"] = max(out["sum_bytes_per_s"], out["copy_bytes_per_s"])
  return {k: float(f"{v:.4g}") for k, v in out.items()}


def param_bytes_per_step(cfg, params) -> int:
  """Bytes of parameters one decode step reads, in the dtypes the decode loop holds them
  (``decode.cast_params``): everything but the embedding table, which only a tied head reads
  (the lookup reads B rows)."""
  import jax  # pylint: disable=g-import-not-at-top
  from humpback_jax.sample import decode  # pylint: disable=g-import-not-at-top
  cast_fn = getattr(decode, "cast_params", lambda p, c: p)
  cast = jax.eval_shape(lambda p: cast_fn(p, cfg), params)
  total = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(cast)[0]:
    names = [getattr(k, "key", None) for k in path]
    if names[-1] == "embedding" and not cfg.tie_word_embeddings:
      continue
    total += int(np.prod(leaf.shape)) * leaf.dtype.itemsize
  return total


def _median_s(times: list[float]) -> float:
  return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
  parser.add_argument("--model", default="smollm2",
                      help="smollm2 | tiny | checkpoint path (HF dir, .gguf, llama2.c .bin)")
  parser.add_argument("--batches", default="1,8,32", help="comma-separated batch sizes")
  parser.add_argument("--prompt_len", type=int, default=128, help="padded prompt width (tokens)")
  parser.add_argument("--new_tokens", type=int, default=64, help="tokens generated per row")
  parser.add_argument("--temperature", type=float, default=0.7)
  parser.add_argument("--top_p", type=float, default=0.9)
  parser.add_argument("--greedy", action="store_true", help="arg-max decoding on both sides")
  parser.add_argument("--no_ragged", action="store_true", help="all prompts full length")
  parser.add_argument("--device", default=None, choices=sorted(_PLATFORMS),
                      help="JAX platform (default: JAX's default backend)")
  parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                      help="model dtype (default: float32 on cpu, bfloat16 on gpu/tpu)")
  parser.add_argument("--cache_dtype", default=None, choices=("float32", "bfloat16"),
                      help="our KV cache dtype (default: the model dtype)")
  parser.add_argument("--layer_loop", default=None, choices=("unrolled", "scan"),
                      help="our decode layer loop (default: decode.default_layer_loop)")
  parser.add_argument("--peer", default="hf", choices=("hf", "none"))
  parser.add_argument("--repeats", type=int, default=3, help="timed calls per side (median)")
  parser.add_argument("--bw_mib", type=int, default=None,
                      help="MiB moved by the bandwidth probe (default 256 on cpu, 1024 else)")
  parser.add_argument("--torch_threads", type=int, default=None,
                      help="torch intra-op threads (default: torch's own default)")
  parser.add_argument("--single_core", action="store_true",
                      help="pin the process to one CPU core and torch to one thread: a CPU "
                      "comparison that a loaded shared machine distorts less")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  if args.single_core:  # before JAX's CPU backend starts its threads
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    args.torch_threads = 1

  import jax  # pylint: disable=g-import-not-at-top
  if args.device:
    jax.config.update("jax_platforms", _PLATFORMS[args.device])
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  import bench_forward as bf  # pylint: disable=g-import-not-at-top
  from humpback_jax import compilation  # pylint: disable=g-import-not-at-top
  from humpback_jax.sample import decode  # pylint: disable=g-import-not-at-top
  from humpback_jax.sample.sampling import Greedy, Sampling  # pylint: disable=g-import-not-at-top

  backend = jax.default_backend()
  dtype = args.dtype or ("float32" if backend == "cpu" else "bfloat16")
  bf.set_torch_threads(args.torch_threads)
  cfg, params = bf.load_model(args.model, dtype, args.seed)
  params = jax.device_put(params)
  strategy = Greedy() if args.greedy else Sampling(temperature=args.temperature,
                                                   top_p=args.top_p)
  default_loop = getattr(decode, "default_layer_loop", None)  # absent before issue 9
  layer_loop = args.layer_loop or (default_loop() if default_loop else None)
  extra = {k: v for k, v in (("cache_dtype", args.cache_dtype), ("layer_loop", layer_loop))
           if v is not None}
  batches = [int(b) for b in args.batches.split(",") if b]
  n = args.new_tokens

  hf_model, torch, peer_device = None, None, None
  if args.peer == "hf":
    import torch  # pylint: disable=g-import-not-at-top
    peer_device = "cuda" if backend == "gpu" and torch.cuda.is_available() else "cpu"
    hf_model = bf.build_hf_model(cfg, params, dtype).to(peer_device)
    torch.manual_seed(args.seed)

  bandwidth = measure_bandwidth(args.bw_mib or (256 if backend == "cpu" else 1024))
  results = []
  for batch in batches:
    tokens_np, lengths_np = make_prompts(cfg.vocab_size, batch, args.prompt_len,
                                         not args.no_ragged, args.seed + batch)
    tokens, lengths = jnp.asarray(tokens_np), jnp.asarray(lengths_np)
    keys = jax.random.split(jax.random.PRNGKey(args.seed), batch)

    def ours():
      out = decode.generate(params, tokens, lengths, config=cfg, max_new_tokens=n, eos_ids=(),
                            strategy=strategy, rng=keys, pad_id=PAD_ID, **extra)
      return jax.block_until_ready(out)

    with compilation.counting() as compiled:
      first_s = bf.timed(ours)
    out = ours()
    if int(out.steps) != n or not np.all(np.asarray(out.lengths) == n):
      raise RuntimeError(f"ours stopped early: steps={int(out.steps)}, lengths={out.lengths}")
    fns = {"ours": ours}
    if hf_model is not None:
      input_ids = torch.from_numpy(tokens_np.astype(np.int64)).to(peer_device)
      attention_mask = torch.from_numpy(
          (np.arange(args.prompt_len)[None, :] >= args.prompt_len - lengths_np[:, None])
          .astype(np.int64)).to(peer_device)
      sample_kw = (dict(do_sample=False, temperature=None, top_p=None, top_k=None)
                   if args.greedy else
                   dict(do_sample=True, temperature=args.temperature, top_p=args.top_p,
                        top_k=0))

      def hf():
        with torch.no_grad():
          res = hf_model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                  use_cache=True, max_new_tokens=n, min_new_tokens=n,
                                  pad_token_id=PAD_ID, eos_token_id=None, num_beams=1,
                                  **sample_kw)
        if peer_device == "cuda":
          torch.cuda.synchronize()
        return res

      hf_out = hf()  # warm-up
      if tuple(hf_out.shape) != (batch, args.prompt_len + n):
        raise RuntimeError(f"HF returned shape {tuple(hf_out.shape)}, expected "
                           f"{(batch, args.prompt_len + n)}")
      fns["peer"] = hf
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(args.repeats):
      for name, fn in fns.items():
        times[name].append(bf.timed(fn))
    ours_s = _median_s(times["ours"])
    row = {"batch": batch, "ours_tok_s": round(batch * n / ours_s, 2)}
    if "peer" in times:
      peer_s = _median_s(times["peer"])
      row.update(peer_tok_s=round(batch * n / peer_s, 2), ratio=round(peer_s / ours_s, 3),
                 ratio_paired=round(statistics.median(
                     p / o for p, o in zip(times["peer"], times["ours"])), 3))
    else:
      row.update(peer_tok_s=None, ratio=None, ratio_paired=None)
    row.update(ours_times_s=[round(t, 3) for t in times["ours"]],
               peer_times_s=[round(t, 3) for t in times.get("peer", [])],
               ours_first_call_s=round(first_s, 2),
               ours_compile_s=round(compiled["compile_seconds"], 2),
               ours_compilations=compiled["compilations"],
               prompt_lengths=lengths_np.tolist())
    results.append(row)
    print(json.dumps({"progress": row}), file=sys.stderr, flush=True)

  step_bytes = param_bytes_per_step(cfg, params)
  roofline_tok_s = bandwidth["bandwidth_bytes_per_s"] / step_bytes
  ours_b1 = next((r["ours_tok_s"] for r in results if r["batch"] == 1), None)
  record = {
      "benchmark": "generate",
      "model": args.model,
      "device_platform": backend,
      "dtype": dtype,
      "cache_dtype": args.cache_dtype or dtype,
      "layer_loop": layer_loop,
      "prompt_len": args.prompt_len,
      "ragged": not args.no_ragged,
      "new_tokens": n,
      "strategy": ("greedy" if args.greedy else
                   {"temperature": args.temperature, "top_p": args.top_p, "top_k": 0}),
      "repeats": args.repeats,
      "single_core": args.single_core,
      "results": results,
      "roofline": {
          **bandwidth,
          "param_bytes_per_step": step_bytes,
          "roofline_tok_s": round(roofline_tok_s, 2),
          "batch1_fraction_of_roofline": (round(ours_b1 / roofline_tok_s, 3)
                                          if ours_b1 else None),
      },
      "peer": (None if hf_model is None else
               {"name": "transformers.generate", "device": peer_device,
                "attn_implementation": getattr(hf_model.config, "_attn_implementation", None)}),
      **bf.machine_info(),
      "versions": {"jax": jax.__version__,
                   "torch": None if torch is None else torch.__version__,
                   "transformers": (None if hf_model is None
                                    else __import__("transformers").__version__)},
  }
  print(json.dumps(record))
  return record


if __name__ == "__main__":
  main()
