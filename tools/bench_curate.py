"""Benchmark: self-curation throughput (pairs/s) by read-out, with and without shared-prefix reuse.

What is measured. ``--pairs`` (instruction, segment) pairs built from REAL web segments
(``data.web.build_segments(WebConfig(max_segments=--pairs))`` over ``../shared/data/web``, the
pipeline's ``prepare_web``; the instruction of segment s is ``"Tell me about <its header>."``,
a stand-in for M_yx's backtranslated instruction), rated by the model with the demo's
curation settings (``configs/demo.gin``: batch 8, 48 new tokens, 1536-token prompt budget,
T = 1.0, p = 0.9), each configuration through ``curate.score_candidates`` on a fresh
``Sampler`` (so a prefix encoding is paid once per configuration, as in a stage):

* ``parse_pairs_s``: mode "generate" (sampled reasoning + "Score: N", parsed; the log-prob
  read-out that every mode records runs too), ``prefix_reuse`` off: the pre-reuse pipeline.
* ``logprob_pairs_s``: mode "logprob" (one forward per pair, read at the digit probe), no reuse.
* ``logprob_prefix_pairs_s``: mode "logprob" with ``prefix_reuse`` (``sample/prefix.py``: the
  rating prompt's ~500-token head encoded once, only the pairs prefilled).
* ``speedup`` = ``logprob_prefix_pairs_s / parse_pairs_s``; ``prefix_over_full`` =
  ``logprob_prefix_pairs_s / logprob_pairs_s``.
* Peer, ``peer_logprob_pairs_s``: HF ``transformers.LlamaForCausalLM`` holding the same weights
  scores the same probes (the same token ids: probe construction and middle truncation
  included in its time, as in ours) with a batched forward: rows sorted by length, batches of
  the same size, LEFT-padded to the batch's longest row with ``attention_mask`` and
  ``position_ids`` (pads not counted), ``logits_to_keep=1``, log-softmax of the last position.
  ``ratio`` = ``logprob_prefix_pairs_s / peer_logprob_pairs_s`` (our best log-prob path over
  the peer's); ``ratio_full`` = ``logprob_pairs_s / peer_logprob_pairs_s``.
* Agreement, over all pairs: ``max_abs_p_scores_diff_*`` (the 5-way distribution renormalised
  over the digits, as recorded: 6 decimals) and ``max_abs_digit_mass_diff_*`` between our
  prefix and full paths and between our full path and the peer; ``argmax_equal_*``: share of
  pairs with the same arg-max score.
* Compiles of a demo-sized curate stage, measured FIRST (cold jit caches): ``rate.rate_pairs``
  over ``--stage_pairs`` pairs with the demo's ``CurationConfig`` (mode "generate+logprob",
  chunks of 16, prefix reuse on) plus the judge sanity check on ``sanity_pairs`` seed pairs
  (LIMA, as the stage's seed sample): ``stage_compiles`` (XLA compilations),
  ``stage_compile_s`` (seconds spent tracing, lowering and compiling), from
  ``humpback_jax.compilation.counting()`` (``stage_compile_stats``: its whole record) where
  that module exists, else from the same ``jax.monitoring`` events counted here;
  ``stage_wall_s``; ``stage_compiles_by_function`` (per jitted function, counted here).

Units and timing. pairs/s = pairs / seconds of one whole ``score_candidates`` call over all
pairs, with the seconds that call spent tracing/lowering/compiling subtracted (``jax.monitoring``
events; ``*_compile_s`` reports them, ``*_wall_s`` the raw wall time), so that one pass per
configuration suffices on a slow CPU; ``--warmup`` runs an untimed pass first instead (twice the
time, nothing subtracted). On a shared machine the configurations see different load: rerun
and compare. HF has no compile step.

Run (from the repository root; prints one JSON object on stdout)::

  .venv/bin/python tools/bench_curate.py                  # SmolLM2-135M, 64 real pairs, CPU
  .venv/bin/python tools/bench_curate.py --device gpu     # on an accelerator (tpu likewise;
                                                          # the peer runs on CPU on a TPU host)
  .venv/bin/python tools/bench_curate.py --model tiny --pairs 16 --stage_pairs 8   # quick check
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

import bench_forward as bf  # pylint: disable=wrong-import-position
from humpback_jax import curate, paths  # pylint: disable=wrong-import-position
from humpback_jax.curate import probe, rate, sanity  # pylint: disable=wrong-import-position
from humpback_jax.models import convert  # pylint: disable=wrong-import-position
from humpback_jax.sample.sampler import Sampler  # pylint: disable=wrong-import-position
from humpback_jax.tokenizers import load_tokenizer  # pylint: disable=wrong-import-position

DEMO_GIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "configs", "demo.gin")
_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")


class CompileCounter:
  """XLA compilations and the seconds spent tracing, lowering and compiling, from
  ``jax.monitoring`` duration events, while active (``with counter.active(): ...``)."""

  def __init__(self):
    self._on = False
    self.count = 0
    self.seconds = 0.0
    self.by_function: collections.Counter = collections.Counter()
    jax.monitoring.register_event_duration_secs_listener(self._listen)

  def _listen(self, event: str, duration: float, **kwargs) -> None:
    if not self._on or event not in _COMPILE_EVENTS:
      return
    self.seconds += duration
    if event == _COMPILE_EVENTS[-1]:
      self.count += 1
      self.by_function[str(kwargs.get("fun_name", "?"))] += 1

  @contextlib.contextmanager
  def active(self):
    self.count, self.seconds, self.by_function = 0, 0.0, collections.Counter()
    self._on = True
    try:
      yield self
    finally:
      self._on = False


def _project_counting():
  """``humpback_jax.compilation.counting()`` where that module exists (the project's compile
  count, as the pipeline reports it), else a context yielding None."""
  try:
    from humpback_jax import compilation  # pylint: disable=g-import-not-at-top
    return compilation.counting()
  except (ImportError, AttributeError):
    return contextlib.nullcontext(None)


def _platform(device: str | None) -> str:
  if device is None:
    device = jax.default_backend()
  return {"cuda": "gpu", "rocm": "gpu"}.get(device, device)


def load(model: str, dtype: str, seed: int):
  """(config, params, tokenizer) of ``--model``: smollm2 (GGUF), tiny (``bench_forward``'s
  random 4-layer model with SmolLM2's tokenizer, or LLaMA-2's without it) or a checkpoint."""
  if model == "tiny":
    path = convert.find_smollm2_gguf() or paths.default_data_root() / \
        "weights/llama2_tokenizer.model"
    tok = load_tokenizer(path)
    cfg, params = bf.load_model("tiny", dtype, seed)
    if cfg.vocab_size != tok.vocab_size:
      from humpback_jax.models.llama import init_params  # pylint: disable=g-import-not-at-top
      cfg = cfg.replace(vocab_size=tok.vocab_size)
      params = jax.device_get(init_params(cfg, jax.random.PRNGKey(seed)))
      params = jax.tree.map(lambda x: np.asarray(x, np.dtype(dtype)), params)
    return cfg, params, tok
  cfg, params = bf.load_model(model, dtype, seed)
  path = convert.find_smollm2_gguf() if model == "smollm2" else model
  return cfg, params, load_tokenizer(path)


def real_pairs(n: int) -> tuple[list[dict], dict]:
  """``n`` (instruction, segment) pairs over the first ``n`` real web segments."""
  from humpback_jax.data.web import WebConfig, build_segments  # pylint: disable=g-import-not-at-top
  segments, stats = build_segments(WebConfig(max_segments=n))
  pairs = [{"id": s["id"], "instruction": f"Tell me about {s['header'].strip()}.",
            "response": s["text"]} for s in segments[:n]]
  return pairs, {"segments": len(segments), "segment_chars_median":
                 float(np.median([s["chars"] for s in segments[:n]]))}


def seed_pairs(n: int) -> list[dict]:
  """``n`` single-turn LIMA pairs (the sanity check's seed sample in the demo stage)."""
  path = paths.default_data_root() / "seed/lima_train_1030.jsonl"
  out = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      rec = json.loads(line)
      if len(rec["messages"]) == 2:
        out.append({"instruction": rec["messages"][0]["content"],
                    "response": rec["messages"][1]["content"]})
      if len(out) == n:
        break
  return out


def demo_curation() -> curate.CurationConfig:
  """``CurationConfig`` of ``configs/demo.gin``."""
  from humpback_jax.pipeline.config import build_section  # pylint: disable=g-import-not-at-top
  return build_section(curate.CurationConfig, [DEMO_GIN])


def _p_scores(records) -> np.ndarray:
  return np.asarray([r["p_scores"] for r in records], np.float64)


def _mass(records) -> np.ndarray:
  return np.asarray([r["digit_mass"] for r in records], np.float64)


def new_sampler(model_cfg, tok, cur: curate.CurationConfig) -> Sampler:
  return Sampler(model_cfg, tok, max_prompt_len=cur.max_prompt_len, batch_size=cur.batch_size,
                 prompt_overflow=cur.prompt_overflow, owner="CurationConfig")


def peer_digit_logprobs(hf_model, torch_device: str, sampler: Sampler, tok, contexts,
                        batch_size: int, pad_id: int) -> np.ndarray:
  """HF: log P(digit N | probe) [N, 5] for our probes (the same ids, the same truncation)."""
  import torch  # pylint: disable=g-import-not-at-top
  probes = [probe.score_probe(tok, c) for c in contexts]
  ids = sampler.encode_prompts([p for p, _ in probes])
  digits = np.asarray([d for _, d in probes], np.int64)
  order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
  out = np.zeros((len(ids), digits.shape[1]), np.float32)
  with torch.no_grad():
    for start in range(0, len(order), batch_size):
      rows = order[start:start + batch_size]
      width = max(len(ids[i]) for i in rows)
      tokens = np.full((len(rows), width), pad_id, np.int64)
      mask = np.zeros((len(rows), width), np.int64)
      for r, i in enumerate(rows):
        tokens[r, width - len(ids[i]):] = ids[i]
        mask[r, width - len(ids[i]):] = 1
      positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
      t = lambda x: torch.from_numpy(x).to(torch_device)
      logits = hf_model(input_ids=t(tokens), attention_mask=t(mask), position_ids=t(positions),
                        logits_to_keep=1, use_cache=False).logits[:, -1].float()
      logp = torch.log_softmax(logits, dim=-1)
      got = torch.gather(logp, 1, t(digits[rows])).cpu().numpy()
      out[rows] = got
  return out


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
  parser.add_argument("--model", default="smollm2",
                      help="smollm2 | tiny | checkpoint path (HF dir, .gguf, llama2.c .bin)")
  parser.add_argument("--device", default=None, choices=("cpu", "gpu", "tpu"),
                      help="JAX platform (default: JAX's default backend)")
  parser.add_argument("--pairs", type=int, default=64, help="real (instruction, segment) pairs")
  parser.add_argument("--stage_pairs", type=int, default=24,
                      help="candidates of the demo-sized stage (the demo augments 24 segments)")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--warmup", action="store_true",
                      help="an untimed pass per configuration first (else compile seconds are "
                           "subtracted)")
  parser.add_argument("--no_peer", action="store_true", help="skip the HF peer")
  parser.add_argument("--no_stage", action="store_true", help="skip the stage compile count")
  parser.add_argument("--torch_threads", type=int, default=None)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  bf.set_torch_threads(args.torch_threads)
  platform = _platform(args.device)
  device = jax.devices(platform)[0]
  counter = CompileCounter()
  model_cfg, params, tok = load(args.model, args.dtype, args.seed)
  params = jax.device_put(params, device)
  cur = demo_curation()
  pairs, data_info = real_pairs(args.pairs)
  record: dict = {"benchmark": "curate", "model": args.model, "device_platform": platform,
                  "pairs": len(pairs), **data_info, "dtype": args.dtype,
                  "batch_size": cur.batch_size, "max_new_tokens": cur.max_new_tokens,
                  "max_prompt_len": cur.max_prompt_len, "temperature": cur.temperature,
                  "top_p": cur.top_p, "warmup": args.warmup}
  prefix_ids = probe.rating_prefix(tok)
  prompts = curate.rating_prompts(tok, pairs)
  lens = [len(tok.encode(p)) for p in prompts]
  record.update(prefix_tokens=len(prefix_ids), prompt_tokens_mean=round(float(np.mean(lens)), 1),
                prompt_tokens_max=int(max(lens)))

  with jax.default_device(device):
    if not args.no_stage:  # first: cold jit caches, as a stage in a fresh process
      stage_cfg = dataclasses.replace(cur, prefix_reuse=True)
      sampler = new_sampler(model_cfg, tok, stage_cfg)
      start = time.perf_counter()
      with _project_counting() as project, counter.active(), \
          tempfile.TemporaryDirectory() as tmp:
        rate.rate_pairs(pairs[:args.stage_pairs], sampler=sampler, params=params, tokenizer=tok,
                        cfg=stage_cfg, seed=args.seed,
                        partial_path=os.path.join(tmp, "scores.partial.jsonl"))
        if stage_cfg.sanity_pairs:
          sanity.judge_sanity_check(sampler, params, tok, seed_pairs(stage_cfg.sanity_pairs),
                                    n=stage_cfg.sanity_pairs, seed=args.seed)
      print(f"bench_curate: stage: {time.perf_counter() - start:.1f} s, {counter.count} "
            "compiles", file=sys.stderr)
      record.update(stage_pairs=min(args.stage_pairs, len(pairs)), stage_mode=stage_cfg.mode,
                    stage_sanity_pairs=stage_cfg.sanity_pairs,
                    stage_wall_s=round(time.perf_counter() - start, 2),
                    stage_compiles=counter.count, stage_compile_s=round(counter.seconds, 2),
                    stage_compiles_by_function=dict(counter.by_function.most_common()))
      if project is not None:  # the project's count (humpback_jax.compilation) takes precedence
        record["stage_compile_stats"] = project
        record["stage_compiles"] = project["compilations"]
        record["stage_compile_s"] = round(sum(project[k] for k in (
            "compile_seconds", "cache_hit_seconds", "trace_seconds", "lower_seconds")), 2)

    configs = {
        "parse": dict(mode="generate", prefix_reuse=False),
        "logprob": dict(mode="logprob", prefix_reuse=False),
        "logprob_prefix": dict(mode="logprob", prefix_reuse=True),
    }
    results = {}
    for name, over in configs.items():
      cfg = dataclasses.replace(cur, sanity_pairs=0, **over)
      if args.warmup:
        curate.score_candidates(new_sampler(model_cfg, tok, cfg), params, tok, pairs, cfg,
                                seed=args.seed)
      sampler = new_sampler(model_cfg, tok, cfg)
      start = time.perf_counter()
      with counter.active():
        recs = curate.score_candidates(sampler, params, tok, pairs, cfg, seed=args.seed)
      wall = time.perf_counter() - start
      print(f"bench_curate: {name}: {wall:.1f} s ({counter.seconds:.1f} s compiling)",
            file=sys.stderr)
      compute = wall - (0.0 if args.warmup else counter.seconds)
      results[name] = recs
      record[f"{name}_pairs_s"] = round(len(pairs) / compute, 4)
      record[f"{name}_wall_s"] = round(wall, 2)
      record[f"{name}_compile_s"] = round(counter.seconds, 2)
      record[f"{name}_compiles"] = counter.count
      if name == "parse":
        record["parse_validity_rate"] = curate.validity_rate(recs)
        record["parse_unfinished"] = sum(1 for r in recs if r["rating_finished"] is False)
      if name == "logprob_prefix":
        st = curate.curation_stats(recs)
        record["prefix_reused"], record["prefix_fallbacks"] = (st["prefix_reused"],
                                                                st["prefix_fallbacks"])
    record["speedup"] = round(record["logprob_prefix_pairs_s"] / record["parse_pairs_s"], 3)
    record["prefix_over_full"] = round(
        record["logprob_prefix_pairs_s"] / record["logprob_pairs_s"], 3)
    # Agreement (from the records: p_scores renormalised over the digits, 6 decimals).
    p_full, p_prefix = _p_scores(results["logprob"]), _p_scores(results["logprob_prefix"])
    record["max_abs_p_scores_diff_prefix_vs_full"] = float(np.abs(p_prefix - p_full).max())
    record["max_abs_digit_mass_diff_prefix_vs_full"] = float(np.abs(
        _mass(results["logprob_prefix"]) - _mass(results["logprob"])).max())
    record["argmax_equal_prefix_vs_full"] = float(np.mean(
        p_prefix.argmax(-1) == p_full.argmax(-1)))

  if not args.no_peer:
    import torch  # pylint: disable=g-import-not-at-top
    torch_device = "cuda" if platform == "gpu" and torch.cuda.is_available() else "cpu"
    hf_model = bf.build_hf_model(model_cfg, jax.device_get(params), args.dtype).to(torch_device)
    peer_sampler = new_sampler(model_cfg, tok, cur)  # tokenize/truncate only
    peer_digit_logprobs(hf_model, torch_device, peer_sampler, tok, prompts[:1], 1,
                        tok.pad_id)  # warm-up
    start = time.perf_counter()
    peer = peer_digit_logprobs(hf_model, torch_device, peer_sampler, tok, prompts,
                               cur.batch_size, tok.pad_id)
    if torch_device == "cuda":
      torch.cuda.synchronize()
    peer_s = time.perf_counter() - start
    record.update(peer_device=torch_device, peer_wall_s=round(peer_s, 2),
                  peer_logprob_pairs_s=round(len(pairs) / peer_s, 4),
                  hf_attn_implementation=getattr(hf_model.config, "_attn_implementation", None))
    record["ratio"] = round(record["logprob_prefix_pairs_s"] / record["peer_logprob_pairs_s"], 3)
    record["ratio_full"] = round(record["logprob_pairs_s"] / record["peer_logprob_pairs_s"], 3)
    peer_p = np.exp(peer - peer.max(-1, keepdims=True))
    peer_p /= peer_p.sum(-1, keepdims=True)
    record["max_abs_p_scores_diff_vs_peer"] = float(np.abs(peer_p - p_full).max())
    record["max_abs_digit_mass_diff_vs_peer"] = float(np.abs(
        np.exp(peer).sum(-1) - _mass(results["logprob"])).max())
    record["argmax_equal_vs_peer"] = float(np.mean(peer_p.argmax(-1) == p_full.argmax(-1)))
  record.update(bf.machine_info())
  record["versions"] = {"jax": jax.__version__}
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
    record["versions"].update(torch=torch.__version__, transformers=transformers.__version__)
  except ImportError:
    pass
  print(json.dumps(record))
  return record


if __name__ == "__main__":
  main()
