"""``humpback-jax`` command line.

  humpback-jax run   --gin_file=configs/demo.gin [--gin_param=...] --run_dir=DIR
  humpback-jax stage NAME --gin_file=configs/demo.gin [--gin_param=...] --run_dir=DIR
  humpback-jax stages [--gin_file=...]            # list stage names
  humpback-jax score --model=SPEC --input=pairs.jsonl --output=scores.jsonl \
      [--mode=logprob|generate|generate+logprob] [--sanity_check]   # rate any dataset
  humpback-jax eval --model=SPEC --output=DIR [--num_prompts=N --seed=S] [--judge=SPEC]
      # AlpacaEval model_outputs.json, and with a judge the win rate ± SE
  humpback-jax serve --model=SPEC --port=N [--host=127.0.0.1 --api_key=KEY]
      # an OpenAI-compatible HTTP API (/v1/models, /v1/chat/completions, /v1/completions)

A rerun with the same ``--run_dir`` skips finished, up-to-date stages, resumes an interrupted
one, and reruns the stages whose config section or input files changed since they ran (and
those downstream of them); ``--on_change=error`` stops instead, naming what changed.

Errors are printed as one line ``humpback-jax: error: [stage NAME: ]message`` (exit status 2
for bad input or a stale run, 1 otherwise); ``--verbose`` adds the traceback. The manifest and
``report.md`` record the failure; earlier stages' outputs stay.
"""

from __future__ import annotations

import argparse
import logging
import sys


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="humpback-jax", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="command", required=True)

  def common(sp):
    sp.add_argument("--gin_file", action="append", default=[], help="gin config file (repeatable)")
    sp.add_argument("--gin_param", action="append", default=[],
                    help='gin binding, e.g. "SeedConfig.max_examples = 64" (repeatable)')
    sp.add_argument("--no_progress", action="store_true", help="no progress bars")
    sp.add_argument("--verbose", action="store_true", help="print tracebacks of errors")
    sp.add_argument("--coordinator_address", default=None,
                    help="multi-host: host:port of process 0 (jax.distributed.initialize); "
                    "on a TPU VM pod slice omit the three flags and pass --distributed")
    sp.add_argument("--num_processes", type=int, default=None, help="multi-host: processes")
    sp.add_argument("--process_id", type=int, default=None, help="multi-host: this process")
    sp.add_argument("--distributed", action="store_true",
                    help="multi-host with auto-discovery (Cloud TPU VMs, SLURM)")

  run = sub.add_parser("run", help="run every stage")
  common(run)
  run.add_argument("--run_dir", required=True)
  stage = sub.add_parser("stage", help="run one stage (its inputs must exist)")
  stage.add_argument("name")
  common(stage)
  stage.add_argument("--run_dir", required=True)
  stage.add_argument("--force", action="store_true", help="rerun even if done")
  for sp in (run, stage):
    sp.add_argument("--on_change", choices=("rerun", "error"), default="rerun",
                    help="a finished stage whose config or inputs changed: rerun it and the "
                    "stages downstream (default), or stop with an error naming the change")
  lst = sub.add_parser("stages", help="list the stage names")
  common(lst)
  score = sub.add_parser(
      "score", help="rate any JSONL of {instruction, response} pairs with a model ([HB] "
      "Table 19 prompt); one line per pair with score, p_scores, digit_mass, expected_score")
  common(score)
  score.add_argument("--model", required=True,
                     help="smollm2, a GGUF file, an HF directory, a llama2.c .bin (with "
                     "--tokenizer), hf://org/name, or a run's RUN_DIR/models/<name>")
  score.add_argument("--tokenizer", default=None, help="tokenizer spec (default: the model's)")
  score.add_argument("--input", required=True, help="JSONL of {instruction, response[, id]}")
  score.add_argument("--output", required=True, help="JSONL written (resumable: a partial "
                     "file OUTPUT.partial is kept until done)")
  score.add_argument("--mode", choices=("logprob", "generate", "generate+logprob"),
                     default=None, help="which read-out is the score (default: the gin "
                     "CurationConfig.mode, generate+logprob)")
  score.add_argument("--sanity_check", action="store_true",
                     help="also rate the pairs with shuffled responses and report the AUC "
                     "(does the judge tell real pairs from mismatched ones?)")
  score.add_argument("--sanity_pairs", type=int, default=32,
                     help="pairs used by --sanity_check (the first N of the input)")
  score.add_argument("--seed", type=int, default=0, help="sampling seed")
  score.add_argument("--dtype", default=None, help="compute dtype (float32, bfloat16)")
  from humpback_jax.eval import cli as eval_cli
  eval_cli.add_parser(sub, common)
  from humpback_jax.serve import cli as serve_cli
  serve_cli.add_parser(sub)
  return p


def _score(args, progress: bool) -> int:
  """``humpback-jax score``: rates a user's pairs; prints one JSON summary line."""
  import dataclasses
  import json

  from humpback_jax import curate, jsonl
  from humpback_jax.curate import rate, sanity
  from humpback_jax.pipeline.config import build_section
  from humpback_jax.pipeline.context import load_model
  from humpback_jax.sample.sampler import Sampler, check_context_length

  cfg = build_section(curate.CurationConfig, args.gin_file, args.gin_param)
  if args.mode:
    cfg = dataclasses.replace(cfg, mode=args.mode)
  pairs = rate.read_pairs(args.input)
  model_cfg, params, tokenizer = load_model(args.model, tokenizer=args.tokenizer,
                                            dtype=args.dtype)
  budget = cfg.max_new_tokens if cfg.mode != "logprob" else 0
  max_prompt = min(cfg.max_prompt_len, model_cfg.max_seq_len - budget)
  check_context_length(model_cfg, max_prompt, budget, "CurationConfig")
  sampler = Sampler(model_cfg, tokenizer, max_prompt_len=max_prompt, batch_size=cfg.batch_size,
                    prompt_overflow=cfg.prompt_overflow, owner="CurationConfig")
  records = rate.rate_pairs(pairs, sampler=sampler, params=params, tokenizer=tokenizer,
                            cfg=cfg, seed=args.seed, partial_path=args.output + ".partial",
                            progress=progress, desc="score (chunks)")
  jsonl.write_jsonl(records, args.output)
  from humpback_jax import fs
  fs.path(args.output + ".partial").unlink(missing_ok=True)
  summary = {"model": args.model, "input": args.input, "output": args.output, "mode": cfg.mode,
             "max_prompt_len": max_prompt,
             **curate.curation_stats(records)}
  if args.sanity_check:
    summary["judge_sanity"] = sanity.judge_sanity_check(
        sampler, params, tokenizer, pairs, n=args.sanity_pairs, seed=args.seed)
    if summary["judge_sanity"]["warning"]:
      logging.warning("%s", summary["judge_sanity"]["warning"])
  print(json.dumps(summary, allow_nan=False))
  return 0


def _enable_compilation_cache(run_dir: str) -> None:
  """JAX's persistent compilation cache: M0/M1/M2 share one train-step program, and a rerun
  of an interrupted run skips its compiles. ``$JAX_COMPILATION_CACHE_DIR`` overrides."""
  import os

  from humpback_jax import compilation, fs
  cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.fspath(
      fs.path(run_dir) / ".jax_cache")
  compilation.enable_persistent_cache(cache, min_compile_time_secs=1.0)


def _error_line(e: BaseException) -> tuple[str, int]:
  """(one-line message, exit status) of an error ending the command."""
  from humpback_jax import errors
  from humpback_jax.sample.sampler import ContextLengthError, PromptTooLongError
  from humpback_jax.train.fingerprint import InputsChangedError
  from humpback_jax.train.loop import NonFiniteLossError
  stage = getattr(e, "humpback_stage", None)
  msg = " ".join(str(e).split()) or type(e).__name__
  where = f"stage {stage}: " if stage and not msg.startswith(f"stage {stage}") else ""
  user = (errors.InputError, errors.StaleStateError, InputsChangedError, ContextLengthError,
          PromptTooLongError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
          PermissionError)
  if isinstance(e, errors.DiskFullError) or errors.is_disk_full(e):
    return f"{where}disk full: {msg}", 1
  if isinstance(e, user):
    return where + msg, 2
  if isinstance(e, NonFiniteLossError):
    return where + msg, 1
  return (f"{where}{type(e).__name__}: {msg} (an unexpected error: rerun with --verbose for "
          "the traceback)"), 1


def main(argv=None) -> int:
  """The command line; returns the exit status (0 ok, 1 failure, 2 bad input or stale run)."""
  args = _parser().parse_args(argv)
  try:
    return _main(args)
  except KeyboardInterrupt:
    print("humpback-jax: interrupted; rerun the same command to resume", file=sys.stderr)
    return 130
  except Exception as e:  # pylint: disable=broad-except
    if getattr(args, "verbose", False):
      import traceback
      traceback.print_exc()
    line, status = _error_line(e)
    run_dir = getattr(args, "run_dir", None)
    print(f"humpback-jax: error: {line}" + (f" (see {run_dir}/report.md)" if run_dir and
          getattr(e, "humpback_stage", None) else ""), file=sys.stderr)
    return status


def _init_distributed(args) -> None:
  """``jax.distributed.initialize`` when the flags ask for several processes (before any
  other JAX call). On CPU the cross-process collectives use gloo."""
  given = [getattr(args, k, None) for k in ("coordinator_address", "num_processes",
                                             "process_id")]
  if not getattr(args, "distributed", False) and all(v is None for v in given):
    return
  import jax
  if any(v is None for v in given) and not args.distributed:
    from humpback_jax.errors import InputError
    raise InputError("--coordinator_address, --num_processes and --process_id go together "
                     "(or pass --distributed on a TPU VM to discover them)")
  if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(jax.config.jax_platforms):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=args.coordinator_address,
                             num_processes=args.num_processes, process_id=args.process_id)
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def _main(args) -> int:
  _init_distributed(args)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every file it writes
  import gin

  from humpback_jax.pipeline.config import build_config
  from humpback_jax.pipeline.runner import run_pipeline
  from humpback_jax.pipeline.stages import pipeline_stages

  if args.command == "score":
    return _score(args, progress=not args.no_progress)
  if args.command == "eval":
    from humpback_jax.eval import cli as eval_cli
    return eval_cli.run(args, progress=not args.no_progress)
  if args.command == "serve":
    from humpback_jax.serve import cli as serve_cli
    return serve_cli.run(args)
  config = build_config(args.gin_file, args.gin_param)
  if args.command == "stages":
    for s in pipeline_stages(config.iterations, config.export_hf, config.final_samples,
                           config.evaluation, config.bft,
                           config.augment_rounds):
      print(f"{s.name}: {', '.join(s.inputs) or '-'} -> {', '.join(s.outputs)}")
    return 0
  progress = not args.no_progress
  _enable_compilation_cache(args.run_dir)
  operative = gin.config_str()
  if args.command == "run":
    run_pipeline(args.run_dir, config, progress=progress, operative_gin=operative,
                 on_change=args.on_change)
  else:
    run_pipeline(args.run_dir, config, only=args.name, force=args.force, progress=progress,
                 operative_gin=operative, on_change=args.on_change)
  print(f"report: {args.run_dir}/report.md")
  return 0


if __name__ == "__main__":
  sys.exit(main())
