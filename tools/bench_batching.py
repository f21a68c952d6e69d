"""Benchmark: continuous batching vs length bucketing on the real segment length distribution.

What is measured. Self-augmentation as the pipeline runs it: the backward model writes an
instruction for each of ``--segments`` REAL web segments (``data.web.build_segments`` over
``../shared/data/web``; prompt = ``templates.backward_prompt``, [BF]'s backtranslation prompt),
``--new_tokens`` (96, the demo's budget) at T 0.7, top-p 0.9, EOS ends a row, prompts budgeted
to ``--max_prompt_len`` (512) tokens. For each batch size in ``--batches`` (8: the demo's; 32):

* ``bucketed``: ``Sampler(batching="bucketed").generate_texts``: prompts sorted by length,
  batches padded to the geometric width ladder, each batch decoding until its longest row ends.
* ``continuous``: ``Sampler(batching="continuous")`` (``sample/continuous.py``): rows that end
  are refilled from the queue (groups of B/4).
* peer: HF ``model.generate`` (same weights, sampling T 0.7 / top-p 0.9 / top_k 0, EOS stops a
  row, batches sorted and left-padded as ours; a batch ends when all its rows have), the tool a
  user would otherwise run.

Both of ours sample with the same per-record keys, so their texts must be identical
(``same_texts``). Units: ``*_tok_s`` = generated tokens (EOS included) / seconds of one whole
``generate_texts`` call, after an untimed warm-up call of the same mode (so compiles are
excluded); ``decode_steps`` = lockstep steps run; ``row_utilization`` = generated tokens /
(decode_steps x B), the share of row-steps that carried a live request.
``continuous_over_bucketed`` = ratio of tokens/s; ``ratio`` = continuous / peer.

Which model. Default SmolLM2-135M-Instruct (GGUF) as the backward model: its instruction lengths
stand in for M_yx's; ``--model`` takes a trained M_yx (``run_dir/models/M_yx`` exported HF
directory or any checkpoint path the converter reads).

Run (prints one JSON object)::

  .venv/bin/python tools/bench_batching.py
  .venv/bin/python tools/bench_batching.py --device gpu
  .venv/bin/python tools/bench_batching.py --model tiny --segments 8 --batches 4 --new_tokens 8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

_PLATFORMS = {"cpu": "cpu", "gpu": "cuda", "tpu": "tpu"}


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
  parser.add_argument("--model", default="smollm2",
                      help="smollm2 | tiny | checkpoint path (HF dir, .gguf, llama2.c .bin)")
  parser.add_argument("--device", default=None, choices=sorted(_PLATFORMS))
  parser.add_argument("--segments", type=int, default=64, help="real web segments")
  parser.add_argument("--batches", default="8,32", help="comma-separated batch sizes")
  parser.add_argument("--new_tokens", type=int, default=96)
  parser.add_argument("--max_prompt_len", type=int, default=512)
  parser.add_argument("--temperature", type=float, default=0.7)
  parser.add_argument("--top_p", type=float, default=0.9)
  parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16"))
  parser.add_argument("--peer", default="hf", choices=("hf", "none"))
  parser.add_argument("--torch_threads", type=int, default=None)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)

  import jax  # pylint: disable=g-import-not-at-top
  if args.device:
    jax.config.update("jax_platforms", _PLATFORMS[args.device])
  import bench_curate as bc  # pylint: disable=g-import-not-at-top
  import bench_forward as bf  # pylint: disable=g-import-not-at-top
  from humpback_jax.data import templates  # pylint: disable=g-import-not-at-top
  from humpback_jax.data.web import WebConfig, build_segments  # pylint: disable=g-import-not-at-top
  from humpback_jax.sample.sampler import Sampler, record_keys  # pylint: disable=g-import-not-at-top
  from humpback_jax.sample.sampling import Sampling  # pylint: disable=g-import-not-at-top

  backend = jax.default_backend()
  dtype = args.dtype or ("float32" if backend == "cpu" else "bfloat16")
  bf.set_torch_threads(args.torch_threads)
  cfg, params, tok = bc.load(args.model, dtype, args.seed)
  params = jax.device_put(params)
  segments, _ = build_segments(WebConfig(max_segments=args.segments))
  segments = segments[:args.segments]
  prompts = [templates.backward_prompt(tok, s["text"]) for s in segments]
  ids_keys = [s["id"] for s in segments]
  strategy = Sampling(temperature=args.temperature, top_p=args.top_p)
  hf_model, torch = None, None
  if args.peer == "hf":
    import torch  # pylint: disable=g-import-not-at-top
    peer_device = "cuda" if backend == "gpu" and torch.cuda.is_available() else "cpu"
    hf_model = bf.build_hf_model(cfg, jax.device_get(params), dtype).to(peer_device)
    torch.manual_seed(args.seed)

  results = []
  prompt_tokens = None
  for batch in [int(b) for b in args.batches.split(",") if b]:
    row = {"batch": batch}
    texts = {}
    for mode in ("bucketed", "continuous"):
      sampler = Sampler(cfg, tok, max_prompt_len=args.max_prompt_len, batch_size=batch,
                        batching=mode)
      run = lambda s=sampler: s.generate_texts(params, prompts, max_new_tokens=args.new_tokens,
                                               strategy=strategy, seed=args.seed,
                                               keys=ids_keys, return_finished=True)
      run()  # warm-up: compiles
      before = dict(sampler.stats)
      start = time.perf_counter()
      texts[mode], finished = run()
      seconds = time.perf_counter() - start
      tokens = sampler.stats["generated_tokens"] - before["generated_tokens"]
      steps = sampler.stats["decode_steps"] - before["decode_steps"]
      row.update({f"{mode}_tok_s": round(tokens / seconds, 2), f"{mode}_s": round(seconds, 2),
                  f"{mode}_decode_steps": steps,
                  f"{mode}_row_utilization": round(tokens / (steps * batch), 3),
                  "generated_tokens": tokens,
                  "finished_share": round(float(np.mean(finished)), 3)})
      if prompt_tokens is None:
        prompt_tokens = [len(p) for p in sampler.encode_prompts(prompts)]
    row["same_texts"] = texts["bucketed"] == texts["continuous"]
    row["continuous_over_bucketed"] = round(row["continuous_tok_s"] / row["bucketed_tok_s"], 3)
    if hf_model is not None:
      sampler = Sampler(cfg, tok, max_prompt_len=args.max_prompt_len, batch_size=batch)
      ids = sampler.encode_prompts(prompts)
      order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
      peer_tokens = 0
      start = time.perf_counter()
      for s in range(0, len(order), batch):
        rows = order[s:s + batch]
        width = max(len(ids[i]) for i in rows)
        toks = np.full((len(rows), width), tok.pad_id, np.int64)
        mask = np.zeros((len(rows), width), np.int64)
        for r, i in enumerate(rows):
          toks[r, width - len(ids[i]):] = ids[i]
          mask[r, width - len(ids[i]):] = 1
        with torch.no_grad():
          out = hf_model.generate(
              input_ids=torch.from_numpy(toks).to(peer_device),
              attention_mask=torch.from_numpy(mask).to(peer_device), use_cache=True,
              max_new_tokens=args.new_tokens, do_sample=True, temperature=args.temperature,
              top_p=args.top_p, top_k=0, pad_token_id=tok.pad_id, eos_token_id=tok.eos_id)
        new = out[:, width:].cpu().numpy()
        for r in range(len(rows)):  # tokens up to and including the first EOS
          hit = np.nonzero(new[r] == tok.eos_id)[0]
          peer_tokens += int(hit[0]) + 1 if len(hit) else new.shape[1]
      if peer_device == "cuda":
        torch.cuda.synchronize()
      peer_s = time.perf_counter() - start
      row.update(peer_tok_s=round(peer_tokens / peer_s, 2), peer_s=round(peer_s, 2),
                 peer_generated_tokens=peer_tokens,
                 ratio=round(row["continuous_tok_s"] / (peer_tokens / peer_s), 3))
    results.append(row)
    print(json.dumps({"progress": row}), file=sys.stderr, flush=True)

  record = {
      "benchmark": "batching", "model": args.model, "device_platform": backend, "dtype": dtype,
      "segments": len(segments), "new_tokens": args.new_tokens,
      "max_prompt_len": args.max_prompt_len,
      "prompt_tokens": {"median": float(np.median(prompt_tokens)), "min": min(prompt_tokens),
                        "max": max(prompt_tokens)},
      "strategy": {"temperature": args.temperature, "top_p": args.top_p, "top_k": 0},
      "results": results, **bf.machine_info(),
      "versions": {"jax": jax.__version__,
                   "torch": None if torch is None else torch.__version__},
  }
  print(json.dumps(record))
  return record


if __name__ == "__main__":
  main()
