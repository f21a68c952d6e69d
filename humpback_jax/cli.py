"""``humpback-jax`` command line.

  humpback-jax run   --gin_file=configs/demo.gin [--gin_param=...] --run_dir=DIR
  humpback-jax stage NAME --gin_file=configs/demo.gin [--gin_param=...] --run_dir=DIR
  humpback-jax stages [--gin_file=...]            # list stage names

A rerun with the same ``--run_dir`` skips finished stages and resumes an interrupted one.
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

  run = sub.add_parser("run", help="run every stage")
  common(run)
  run.add_argument("--run_dir", required=True)
  stage = sub.add_parser("stage", help="run one stage (its inputs must exist)")
  stage.add_argument("name")
  common(stage)
  stage.add_argument("--run_dir", required=True)
  stage.add_argument("--force", action="store_true", help="rerun even if done")
  lst = sub.add_parser("stages", help="list the stage names")
  common(lst)
  return p


def _enable_compilation_cache(run_dir: str) -> None:
  """JAX's persistent compilation cache: M0/M1/M2 share one train-step program, and a rerun
  of an interrupted run skips its compiles. ``$JAX_COMPILATION_CACHE_DIR`` overrides."""
  import os

  import jax
  cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(run_dir, ".jax_cache")
  jax.config.update("jax_compilation_cache_dir", cache)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every file it writes
  import gin

  from humpback_jax.pipeline.config import build_config
  from humpback_jax.pipeline.runner import run_pipeline
  from humpback_jax.pipeline.stages import pipeline_stages

  config = build_config(args.gin_file, args.gin_param)
  if args.command == "stages":
    for s in pipeline_stages(config.iterations, config.export_hf, config.final_samples):
      print(f"{s.name}: {', '.join(s.inputs) or '-'} -> {', '.join(s.outputs)}")
    return 0
  progress = not args.no_progress
  _enable_compilation_cache(args.run_dir)
  operative = gin.config_str()
  if args.command == "run":
    run_pipeline(args.run_dir, config, progress=progress, operative_gin=operative)
  else:
    run_pipeline(args.run_dir, config, only=args.name, force=args.force, progress=progress,
                 operative_gin=operative)
  print(f"report: {args.run_dir}/report.md")
  return 0


if __name__ == "__main__":
  sys.exit(main())
