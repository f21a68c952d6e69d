"""``humpback-jax eval``: any model answers the AlpacaEval prompts; optionally judged.

  humpback-jax eval --model=SPEC --output=DIR [--num_prompts=N --seed=S] [--judge=SPEC |
      --judge_endpoint=URL --judge_model_name=NAME] [--gin_file=... --gin_param=...]

Writes ``DIR/model_outputs.json`` (AlpacaEval schema; ``alpaca_eval --model_outputs`` scores it
with GPT-4 where a key exists) and, with a judge, ``DIR/judgments.jsonl`` and
``DIR/results.json`` (win rate ± SE against the references, length-controlled win rate, the
judge's agreement across orders); prints one JSON summary line. Decoding and the judge's
settings come from ``EvalConfig`` (gin), the flags override the prompt subset and the seed.
Resumable: finished chunks are kept in ``DIR/*.partial.jsonl`` until the command completes.
"""

from __future__ import annotations

import dataclasses
import json


def add_parser(sub, common) -> None:
  """Adds the ``eval`` subcommand to the ``argparse`` subparsers ``sub``."""
  ev = sub.add_parser("eval", help="a model answers the AlpacaEval prompts "
                      "(model_outputs.json); with --judge, win rates ± SE")
  common(ev)
  ev.add_argument("--model", required=True, help="model spec (as `score --model`)")
  ev.add_argument("--tokenizer", default=None, help="tokenizer spec (default: the model's)")
  ev.add_argument("--output", required=True, help="output directory")
  ev.add_argument("--name", default=None, help="the generator name (default: from --model)")
  ev.add_argument("--num_prompts", type=int, default=None,
                  help="a seeded subset of this many prompts (default: EvalConfig)")
  ev.add_argument("--seed", type=int, default=0, help="subset and sampling seed")
  ev.add_argument("--prompts_file", default=None,
                  help="AlpacaEval file with references (default: EvalConfig.prompts_file)")
  ev.add_argument("--judge", default=None, help="model spec of a local pairwise judge")
  ev.add_argument("--judge_tokenizer", default=None,
                  help="the judge's tokenizer spec (needed for a llama2.c .bin)")
  ev.add_argument("--judge_endpoint", default=None,
                  help="OpenAI-compatible base URL used as the judge instead")
  ev.add_argument("--judge_model_name", default=None, help="the endpoint's model name")
  ev.add_argument("--no_tags", action="store_true",
                  help="no S_a/S_w tag sentences (a model not trained with them)")
  ev.add_argument("--dtype", default=None, help="compute dtype (float32, bfloat16)")


def run(args, progress: bool) -> int:
  """Runs ``humpback-jax eval``; returns the exit status."""
  from humpback_jax import fs, jsonl, paths
  from humpback_jax.eval import answers as answers_lib
  from humpback_jax.eval import compare, outputs
  from humpback_jax.eval.config import EvalConfig
  from humpback_jax.eval.stages import make_judge
  from humpback_jax.pipeline.config import build_section
  from humpback_jax.pipeline.context import load_model
  from humpback_jax.sample.sampler import Sampler, check_context_length

  cfg = build_section(EvalConfig, args.gin_file, args.gin_param)
  changes = {"subset_seed": args.seed}
  for key in ("num_prompts", "prompts_file", "judge", "judge_tokenizer", "judge_endpoint",
              "judge_model_name"):
    if getattr(args, key) is not None:
      changes[key] = getattr(args, key)
  if args.no_tags:
    changes["tags"] = ()
  cfg = dataclasses.replace(cfg, **changes)
  data_root = str(paths.default_data_root())
  out = fs.path(args.output)
  out.mkdir(parents=True, exist_ok=True)
  prompts = answers_lib.load_prompts(paths.resolve(cfg.prompts_file, data_root),
                                     cfg.num_prompts, cfg.subset_seed)
  model_cfg, params, tok = load_model(args.model, tokenizer=args.tokenizer, dtype=args.dtype)
  max_prompt = min(cfg.max_prompt_len, model_cfg.max_seq_len - cfg.max_new_tokens)
  check_context_length(model_cfg, max_prompt, cfg.max_new_tokens, "EvalConfig")
  sampler = Sampler(model_cfg, tok, max_prompt_len=max_prompt, batch_size=cfg.batch_size,
                    prompt_overflow="truncate", owner="EvalConfig",
                    batching="continuous" if cfg.batching == "auto" else cfg.batching)
  params = sampler.place_params(params)
  name = args.name or f"humpback-jax-{args.model.rstrip('/').split('/')[-1]}"
  partial = out / "answers.partial.jsonl"
  records, stats = answers_lib.generate_answers(sampler, params, tok, prompts, cfg=cfg,
                                                seed=args.seed, generator=name,
                                                partial_path=partial, progress=progress)
  outputs.write_model_outputs(records, out / "model_outputs.json")
  answers_lib.remove_partial(partial)
  summary = {"model": args.model, "generator": name, "output": str(out / "model_outputs.json"),
             "prompts": len(prompts), **stats}
  if cfg.judged:
    if any(p["reference"] is None for p in prompts):
      from humpback_jax.errors import InputError
      raise InputError(f"{cfg.prompts_file}: no reference outputs to judge against")
    del params, sampler
    judge, jtok, judge_name = make_judge(cfg, data_root=data_root, tokenizer_for_endpoint=tok)
    with jsonl.JsonlAppender(out / "judgments.partial.jsonl") as app:
      js = compare.judge_outputs(judge, f"{name}_vs_{cfg.reference_name}", prompts,
                                 [r["output"] for r in records],
                                 [p["reference"] for p in prompts], appender=app,
                                 chunk_size=cfg.chunk_size, progress=progress,
                                 length_fn=lambda t: len(jtok.encode(t, add_bos=False)))
    jsonl.write_jsonl(js, out / "judgments.jsonl")
    result = {"evaluated": name, "against": cfg.reference_name, "judge": judge_name,
              **compare.summarize(js, length_controlled=cfg.length_controlled),
              "judge_stats": dict(judge.stats)}
    fs.atomic_write_text(out / "results.json", json.dumps(result, indent=2) + "\n")
    answers_lib.remove_partial(out / "judgments.partial.jsonl")
    summary.update(judge=judge_name, win_rate=result["win_rate"],
                   standard_error=result["standard_error"],
                   lc_win_rate=(result.get("length_controlled") or {}).get("lc_win_rate"),
                   order_agreement=result["order"]["agreement"])
  print(json.dumps(summary, allow_nan=False))
  return 0
