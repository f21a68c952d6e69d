"""Benchmark: greedy batched generation throughput of our ``generate`` vs HF ``model.generate``.

What is measured. Greedy decoding of exactly ``--new_tokens`` tokens after each of ``--batch``
LEFT-padded prompts of random token ids (the first row is ``--prompt_len`` tokens long, the others
random lengths in ``[prompt_len // 2, prompt_len]`` unless ``--no_ragged``). Ours:
``humpback_jax.sample.sampler.generate`` (``Greedy()``, KV cache, one prefill + a
``jax.lax.while_loop`` of single-token steps, jitted). Peer: ``transformers.LlamaForCausalLM``
holding the same weights, ``model.generate(do_sample=False, use_cache=True)`` with the same
prompts and ``attention_mask``, no EOS on either side (ours gets ``eos_ids=()``; HF's config has
no ``eos_token_id`` and ``min_new_tokens == max_new_tokens``), so both produce exactly
``batch * new_tokens`` tokens; the script checks that.

Units. Throughput is new tokens per second (``batch * new_tokens / seconds`` of one whole call,
prefill included), the median over ``--repeats`` timed calls per side, ours and HF's calls
interleaved. Warm-up calls are excluded; ``ours_compile_s`` is our first call's time minus the
median call time (trace + XLA compile, approximately). Agreement: ``rows_equal_fraction`` is the
fraction of rows whose greedy tokens are identical on both sides, ``tokens_equal_fraction`` the
fraction of equal (row, step) entries. With random prompts near-ties in the logits are common,
and one flipped arg-max changes the rest of the row, so agreement below 1.0 can be float rounding
(see ``max_abs_logit_diff`` of ``tools/bench_forward.py``), not a bug.

Run (from the repository root; prints one JSON object on stdout)::

  .venv/bin/python tools/bench_generate.py --model smollm2 --batch 4 --prompt_len 64 \\
      --new_tokens 32
  .venv/bin/python tools/bench_generate.py --model tiny
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position

import bench_forward as bf  # pylint: disable=wrong-import-position
from humpback_jax.sample.sampler import generate  # pylint: disable=wrong-import-position
from humpback_jax.sample.sampling import Greedy  # pylint: disable=wrong-import-position

PAD_ID = 0


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
    tokens[r, prompt_len - n:] = rng.integers(0, vocab_size, size=n)
  return tokens, lengths


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
  parser.add_argument("--model", default="smollm2",
                      help="smollm2 | tiny | checkpoint path (HF dir, .gguf, llama2.c .bin)")
  parser.add_argument("--batch", type=int, default=4, help="prompts per call")
  parser.add_argument("--prompt_len", type=int, default=64, help="padded prompt width (tokens)")
  parser.add_argument("--new_tokens", type=int, default=32, help="tokens generated per row")
  parser.add_argument("--no_ragged", action="store_true", help="all prompts full length")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--repeats", type=int, default=3, help="timed calls per side (median)")
  parser.add_argument("--torch_threads", type=int, default=None,
                      help="torch intra-op threads (default: torch's own default)")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  bf.set_torch_threads(args.torch_threads)
  import torch  # pylint: disable=g-import-not-at-top

  cfg, params = bf.load_model(args.model, args.dtype, args.seed)
  hf_model = bf.build_hf_model(cfg, params, args.dtype)
  tokens_np, lengths_np = make_prompts(cfg.vocab_size, args.batch, args.prompt_len,
                                       not args.no_ragged, args.seed)
  tokens, lengths = jnp.asarray(tokens_np), jnp.asarray(lengths_np)
  n = args.new_tokens
  key = jax.random.PRNGKey(args.seed)

  def ours():
    out = generate(params, tokens, lengths, config=cfg, max_new_tokens=n, eos_ids=(),
                   strategy=Greedy(), rng=key, pad_id=PAD_ID)
    return jax.block_until_ready(out)

  input_ids = torch.from_numpy(tokens_np.astype(np.int64))
  attention_mask = torch.from_numpy(
      (np.arange(args.prompt_len)[None, :] >= args.prompt_len - lengths_np[:, None])
      .astype(np.int64))

  def hf():
    with torch.no_grad():
      return hf_model.generate(input_ids=input_ids, attention_mask=attention_mask,
                               do_sample=False, use_cache=True, max_new_tokens=n,
                               min_new_tokens=n, pad_token_id=PAD_ID, eos_token_id=None,
                               num_beams=1, temperature=None, top_p=None, top_k=None)

  first_s = bf.timed(ours)
  out = ours()
  ours_tokens = np.asarray(out.tokens)
  if int(out.steps) != n or not np.all(np.asarray(out.lengths) == n):
    raise RuntimeError(f"ours stopped early: steps={int(out.steps)}, lengths={out.lengths}")
  hf_out = hf().numpy()
  if hf_out.shape != (args.batch, args.prompt_len + n):
    raise RuntimeError(f"HF returned shape {hf_out.shape}, expected "
                       f"{(args.batch, args.prompt_len + n)}")
  hf_tokens = hf_out[:, args.prompt_len:]
  med = bf.interleaved_medians({"ours": ours, "hf": hf}, args.repeats)

  n_new = args.batch * n
  record = {
      "benchmark": "generate",
      "model": args.model,
      "batch": args.batch,
      "prompt_len": args.prompt_len,
      "prompt_lengths": lengths_np.tolist(),
      "new_tokens": n,
      "dtype": args.dtype,
      "ours_new_tokens_per_s": round(n_new / med["ours"], 2),
      "hf_new_tokens_per_s": round(n_new / med["hf"], 2),
      "ratio_ours_over_hf": round(med["hf"] / med["ours"], 3),
      "ours_median_s": round(med["ours"], 4),
      "hf_median_s": round(med["hf"], 4),
      "ours_compile_s": round(max(0.0, first_s - med["ours"]), 2),
      "repeats": args.repeats,
      "rows_equal_fraction": float(np.mean(np.all(ours_tokens == hf_tokens, axis=1))),
      "tokens_equal_fraction": float(np.mean(ours_tokens == hf_tokens)),
      "hf_attn_implementation": getattr(hf_model.config, "_attn_implementation", None),
      **bf.machine_info(),
      "versions": {"jax": jax.__version__, "torch": torch.__version__,
                   "transformers": __import__("transformers").__version__},
  }
  print(json.dumps(record))
  return record


if __name__ == "__main__":
  main()
