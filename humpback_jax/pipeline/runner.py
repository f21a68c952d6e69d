"""Runs pipeline stages in order, recording each in the manifest and skipping finished ones."""

from __future__ import annotations

import logging
import time

from humpback_jax.pipeline import report
from humpback_jax.pipeline.config import PipelineConfig, to_dict
from humpback_jax.pipeline.context import RunContext
from humpback_jax.pipeline.manifest import Manifest
from humpback_jax.pipeline.stages import Stage, pipeline_stages

log = logging.getLogger(__name__)


def _outputs_exist(ctx: RunContext, stage: Stage) -> bool:
  return all((ctx.run_dir / o).exists() for o in stage.outputs)


def run_stage(ctx: RunContext, manifest: Manifest, stage: Stage, force: bool = False) -> bool:
  """Runs one stage unless it is done (status "done" and outputs present).

  Returns:
    True if the stage ran, False if it was skipped.
  Raises:
    FileNotFoundError: a declared input is missing (run the earlier stage first).
    Whatever the stage raises; the manifest then records status "failed" and the error, and
    everything already written (earlier stages, partial files) stays for the rerun.
  """
  if not force and manifest.is_done(stage.name) and _outputs_exist(ctx, stage):
    log.info("stage %s: done, skipped", stage.name)
    return False
  missing = [i for i in stage.inputs if not (ctx.run_dir / i).exists()]
  if missing:
    raise FileNotFoundError(
        f"stage {stage.name}: missing inputs {missing} in {ctx.run_dir}; run the earlier stages")
  log.info("stage %s: running", stage.name)
  manifest.start(stage.name)
  t0 = time.time()
  ctx.force = force
  try:
    extras = stage.run(ctx)
  except BaseException as e:
    manifest.fail(stage.name, f"{type(e).__name__}: {e}")
    raise
  finally:
    ctx.force = False
  manifest.finish(stage.name, time.time() - t0, **extras)
  log.info("stage %s: done in %.1f s (count=%s)", stage.name, time.time() - t0,
           extras.get("count"))
  return True


def run_pipeline(run_dir, config: PipelineConfig, *, only: str | None = None,
                 force: bool = False, progress: bool = True, operative_gin: str = "") -> dict:
  """Runs every stage (or only the one named ``only``) and writes ``report.md``.

  Returns:
    The manifest data.
  Raises:
    ValueError: ``only`` names no stage.
  """
  ctx = RunContext(run_dir, config, progress=progress)
  manifest = Manifest(ctx.run_dir)
  if "config" not in manifest.data:
    manifest.set("config", to_dict(config))
    if operative_gin:
      ctx.path("config.gin").write_text(operative_gin)
  stages = pipeline_stages(config.iterations, config.export_hf, config.final_samples)
  if only is not None:
    names = [s.name for s in stages]
    if only not in names:
      raise ValueError(f"unknown stage {only!r}; stages are: {', '.join(names)}")
    stages = [s for s in stages if s.name == only]
  t0 = time.time()
  for stage in stages:
    run_stage(ctx, manifest, stage, force=force)
  if only is None:
    manifest.set("wall_seconds_last_run", round(time.time() - t0, 1))
  report.write_report(ctx, manifest)
  return manifest.data
