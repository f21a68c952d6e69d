"""Runs pipeline stages in order, recording each in the manifest; skips the up-to-date ones.

A stage is up to date when its manifest status is "done", its outputs exist and its fingerprint
(config sections, external files, inputs: ``fingerprints.py``) is the one recorded. A stale
stage reruns (``on_change="rerun"``, the default), and so, through their inputs, do exactly the
stages downstream of it; or the run stops with ``StaleStateError`` naming what changed
(``on_change="error"``). A rerun from changed inputs first discards the stage's partial files,
and its training checkpoints (through ``ctx.force``).

The run directory may be local or on an object store (``gs://``); its files are reached through
``humpback_jax.fs`` (``etils.epath``), and process 0 alone writes them (``hosts.is_writer``).
"""

from __future__ import annotations

import logging
import time

from humpback_jax import compilation, fs, hosts
from humpback_jax.errors import StaleStateError
from humpback_jax.pipeline import fingerprints, report
from humpback_jax.pipeline.config import PipelineConfig, to_dict
from humpback_jax.pipeline.context import RunContext
from humpback_jax.pipeline.manifest import Manifest
from humpback_jax.pipeline.stages import Stage, pipeline_stages

log = logging.getLogger(__name__)

ON_CHANGE = ("rerun", "error")


def _outputs_exist(ctx: RunContext, stage: Stage) -> bool:
  run_dir = fs.path(ctx.run_dir)
  return all((run_dir / o).exists() for o in stage.outputs)


def _discard_partials(ctx: RunContext, stage: Stage, why: str) -> None:
  run_dir = fs.path(ctx.run_dir)
  for rel in stage.partials:
    path = run_dir / rel
    if path.exists():
      log.warning("stage %s: discarding %s (%s)", stage.name, path, why)
      if hosts.is_writer():
        path.unlink(missing_ok=True)
  hosts.sync(f"stage {stage.name} discard partials")  # no host reads a partial being deleted


def run_stage(ctx: RunContext, manifest: Manifest, stage: Stage, force: bool = False,
              producers: dict[str, str] | None = None, on_change: str = "rerun") -> bool:
  """Runs one stage unless it is up to date.

  Args:
    force: rerun even if up to date (partial files and checkpoints are discarded).
    producers: output path -> producing stage name (for directory inputs' fingerprints).
    on_change: "rerun" a stale done stage, or "error".
  Returns:
    True if the stage ran, False if it was skipped.
  Raises:
    FileNotFoundError: a declared input is missing (run the earlier stage first).
    StaleStateError: the stage is stale and ``on_change="error"``.
    Whatever the stage raises; the manifest then records status "failed" and the error, and
    everything already written (earlier stages, partial files) stays for the rerun.
  """
  if on_change not in ON_CHANGE:
    raise ValueError(f"on_change must be one of {ON_CHANGE}, got {on_change!r}")
  run_dir = fs.path(ctx.run_dir)
  missing = [i for i in stage.inputs if not (run_dir / i).exists()]
  if missing:
    raise FileNotFoundError(
        f"stage {stage.name}: missing inputs {missing} in {ctx.run_dir}; run the earlier stages")
  hosts.sync(f"stage {stage.name} start")  # every process decides on the same files
  current = fingerprints.stage_fingerprint(ctx, stage, producers or {}, manifest)
  entry = manifest.stage(stage.name)
  changes = fingerprints.describe_changes(entry.get("fingerprint"), current) if entry else []
  if manifest.is_done(stage.name):  # an output edited or replaced since the stage wrote it
    written = entry.get("outputs") or {}
    changes += [f"output:{rel} modified" for rel, d in written.items()
                if fingerprints.file_digest(run_dir / rel) != d]
  rerun_reason = None
  if not force and manifest.is_done(stage.name) and _outputs_exist(ctx, stage):
    if not changes:
      log.info("stage %s: up to date, skipped", stage.name)
      return False
    if on_change == "error":
      raise StaleStateError(
          f"stage {stage.name} is out of date: {'; '.join(changes)}; rerun with "
          "--on_change=rerun to redo it and the stages downstream of it")
    log.warning("stage %s: inputs changed since it ran (%s): rerunning", stage.name,
                "; ".join(changes))
    rerun_reason = changes
  restart = force or bool(rerun_reason) or (bool(entry) and bool(changes))
  if restart:  # partial work from other inputs (or --force): start over
    _discard_partials(ctx, stage, "--force" if force else "; ".join(changes))
  log.info("stage %s: running", stage.name)
  manifest.start(stage.name, current, **({"rerun_reason": rerun_reason} if rerun_reason else {}))
  t0 = time.time()
  ctx.force = restart
  try:
    with compilation.counting() as compiled:
      extras = stage.run(ctx)
  except BaseException as e:
    manifest.fail(stage.name, f"{type(e).__name__}: {e}")
    raise
  finally:
    ctx.force = False
  outputs = {rel: fingerprints.file_digest(run_dir / rel) for rel in stage.outputs
             if (run_dir / rel).is_file()}
  extras = dict(extras or {})
  extras.setdefault("compilations", compiled["compilations"])
  extras.setdefault("compile_seconds", compiled["compile_seconds"])
  extras.setdefault("compile_cache_hits", compiled["cache_hits"])
  manifest.finish(stage.name, time.time() - t0, outputs=outputs, **extras)
  hosts.sync(f"stage {stage.name} done")  # the others read its outputs only once written
  log.info("stage %s: done in %.1f s (count=%s)", stage.name, time.time() - t0,
           extras.get("count"))
  return True


def run_pipeline(run_dir, config: PipelineConfig, *, only: str | None = None,
                 force: bool = False, progress: bool = True, operative_gin: str = "",
                 on_change: str = "rerun") -> dict:
  """Runs every stage (or only the one named ``only``) and writes ``report.md``, also when a
  stage fails (the failure is in the report and the manifest).

  Returns:
    The manifest data.
  Raises:
    ValueError: ``only`` names no stage, or an unknown ``on_change``.
    Whatever a stage raises (see ``run_stage``).
  """
  if on_change not in ON_CHANGE:
    raise ValueError(f"on_change must be one of {ON_CHANGE}, got {on_change!r}")
  ctx = RunContext(run_dir, config, progress=progress)
  manifest = Manifest(ctx.run_dir)
  manifest.set("config", to_dict(config))
  if operative_gin and hosts.is_writer():
    fs.atomic_write_text(fs.path(ctx.run_dir) / "config.gin", operative_gin)
  stages = pipeline_stages(config.iterations, config.export_hf, config.final_samples,
                           config.evaluation, config.bft,
                           config.augment_rounds)
  producers = {out: s.name for s in stages for out in s.outputs}
  if only is not None:
    names = [s.name for s in stages]
    if only not in names:
      raise ValueError(f"unknown stage {only!r}; stages are: {', '.join(names)}")
    stages = [s for s in stages if s.name == only]
  t0 = time.time()
  run_compiles = compilation.compile_stats()
  try:
    for stage in stages:
      try:
        run_stage(ctx, manifest, stage, force=force, producers=producers, on_change=on_change)
      except Exception as e:
        try:
          e.humpback_stage = stage.name  # for the command line's one-line message
        except AttributeError:
          pass
        raise
    if only is None:
      manifest.set("wall_seconds_last_run", round(time.time() - t0, 1))
    # XLA executables built (and seconds spent compiling) by this invocation, all stages;
    # executables loaded from the persistent cache count as cache_hits, not compilations.
    manifest.set("compile_last_run", compilation.diff(compilation.compile_stats(),
                                                      run_compiles))
  finally:
    try:
      report.write_report(ctx, manifest)
    except Exception as e:  # never mask the stage's own error
      log.error("could not write %s/report.md: %s: %s", ctx.run_dir, type(e).__name__, e)
  return manifest.data
