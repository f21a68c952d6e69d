"""Stage fingerprints: a changed config section or input file reruns exactly the stages it
affects (as make/DVC), or stops with an error naming the change; the manifest never shows a
previous attempt's figures. Fake stages, no model."""

import dataclasses
import json

import pytest

from humpback_jax.data.seed import SeedConfig
from humpback_jax.errors import StaleStateError
from humpback_jax.pipeline import fingerprints
from humpback_jax.pipeline.config import PipelineConfig
from humpback_jax.pipeline.context import RunContext
from humpback_jax.pipeline.manifest import Manifest
from humpback_jax.pipeline.runner import run_stage
from humpback_jax.pipeline.stages import Stage


def _copy(src, dst, transform=lambda s: s):
  def run(ctx):
    text = transform((ctx.run_dir / src).read_text()) if src else ctx.config.eval_file
    ctx.path(dst).write_text(text)
    return {"count": len(text)}
  return run


def _chain():
  """a (reads config.eval_file) -> b (upper-cases a) -> c (first char of b); d (reads the
  external seed file, independent)."""
  return [
      Stage("a", (), ("a.txt",), _copy(None, "a.txt"), ("eval_file",)),
      Stage("b", ("a.txt",), ("b.txt",), _copy("a.txt", "b.txt", str.upper)),
      Stage("c", ("b.txt",), ("c.txt",), _copy("b.txt", "c.txt", lambda s: s[:1])),
      Stage("d", (), ("d.txt",), _copy(None, "d.txt"), ("seed",),
            external_files=lambda cfg: cfg.seed.lima_files),
  ]


def _run_all(tmp_path, config, **kw):
  ctx = RunContext(tmp_path / "run", config, progress=False)
  manifest = Manifest(ctx.run_dir)
  stages = _chain()
  producers = {o: s.name for s in stages for o in s.outputs}
  return [s.name for s in stages if run_stage(ctx, manifest, s, producers=producers, **kw)]


def _config(tmp_path, eval_file="x", lima="lima.jsonl"):
  return PipelineConfig(data_root=str(tmp_path), eval_file=eval_file,
                        seed=SeedConfig(oasst_tree_files=(), lima_files=(lima,),
                                        alpaca_eval_file=None))


def test_changes_rerun_exactly_the_affected_stages(tmp_path):
  (tmp_path / "lima.jsonl").write_text("v1\n")
  assert _run_all(tmp_path, _config(tmp_path)) == ["a", "b", "c", "d"]
  assert _run_all(tmp_path, _config(tmp_path)) == []
  # A config change whose output is the same: only the changed stage reruns.
  assert _run_all(tmp_path, _config(tmp_path, eval_file="x")) == []
  # "xy" -> "XY" -> "X": b's output changes, so c reruns (its output happens to be the same).
  assert _run_all(tmp_path, _config(tmp_path, eval_file="xy")) == ["a", "b", "c"]
  assert (tmp_path / "run/c.txt").read_text() == "X"
  # An external input file edited: only the stage reading it.
  (tmp_path / "lima.jsonl").write_text("v2\n")
  assert _run_all(tmp_path, _config(tmp_path, eval_file="xy")) == ["d"]
  # Same content, new mtime: up to date (content digest).
  (tmp_path / "lima.jsonl").write_text("v2\n")
  assert _run_all(tmp_path, _config(tmp_path, eval_file="xy")) == []
  # An output edited by hand: the stage that wrote it reruns and restores it; c, whose input
  # is then what it was, stays up to date.
  (tmp_path / "run/b.txt").write_text("ZZ")
  assert _run_all(tmp_path, _config(tmp_path, eval_file="xy")) == ["b"]
  assert (tmp_path / "run/b.txt").read_text() == "XY"
  assert Manifest(tmp_path / "run").stage("b")["rerun_reason"] == ["output:b.txt modified"]


def test_on_change_error_names_what_changed_and_runs_nothing(tmp_path):
  (tmp_path / "lima.jsonl").write_text("v1\n")
  _run_all(tmp_path, _config(tmp_path))
  before = json.loads((tmp_path / "run/manifest.json").read_text())
  with pytest.raises(StaleStateError, match=r"stage a is out of date: config\.eval_file changed"):
    _run_all(tmp_path, _config(tmp_path, eval_file="zz"), on_change="error")
  assert json.loads((tmp_path / "run/manifest.json").read_text()) == before
  with pytest.raises(StaleStateError, match=r"stage d is out of date: config\.seed changed; "
                     r"file:lima\.jsonl no longer used; file:other\.jsonl is new"):
    (tmp_path / "other.jsonl").write_text("v1\n")
    _run_all(tmp_path, _config(tmp_path, lima="other.jsonl"), on_change="error")


def test_stale_partial_files_are_discarded_fresh_ones_resumed(tmp_path):
  seen = []

  def run(ctx):
    p = ctx.run_dir / "part.jsonl"
    seen.append(p.read_text() if p.exists() else None)
    raise RuntimeError("killed")

  stage = Stage("s", (), ("s.txt",), run, ("eval_file",), partials=("part.jsonl",))
  for eval_file, want in (("x", "old work\n"), ("x", "old work\n"), ("y", None)):
    ctx = RunContext(tmp_path / "run", _config(tmp_path, eval_file=eval_file), progress=False)
    if not (tmp_path / "run/part.jsonl").exists():
      ctx.path("part.jsonl").write_text("old work\n")
    with pytest.raises(RuntimeError):
      run_stage(ctx, Manifest(ctx.run_dir), stage)
    assert seen[-1] == want, eval_file


def test_manifest_never_keeps_a_previous_attempts_figures(tmp_path):
  m = Manifest(tmp_path)
  m.start("s", {"config.x": "1"})
  m.fail("s", "ValueError: boom")
  m.start("s", {"config.x": "1"})
  m.finish("s", 1.0, count=5)
  assert "error" not in m.stage("s") and m.stage("s")["count"] == 5
  m.start("s", {"config.x": "2"})  # a --force rerun that then fails
  m.fail("s", "OSError: disk")
  entry = Manifest(tmp_path).stage("s")
  assert "count" not in entry and entry["status"] == "failed" and entry["attempts"] == 3
  assert entry["fingerprint"] == {"config.x": "2"}


def test_file_digest_content_and_directories(tmp_path):
  f = tmp_path / "a.bin"
  f.write_bytes(b"abc")
  d1 = fingerprints.file_digest(f)
  import hashlib
  assert d1 == hashlib.sha256(b"abc").hexdigest()[:16]
  assert fingerprints.file_digest(tmp_path / "nope") == "missing"
  (tmp_path / "dir").mkdir()
  (tmp_path / "dir" / "x").write_bytes(b"1")
  a = fingerprints.file_digest(tmp_path / "dir")
  (tmp_path / "dir" / "x").write_bytes(b"2")
  assert fingerprints.file_digest(tmp_path / "dir") != a
  import os
  os.mkfifo(tmp_path / "fifo")  # never opened: reading a FIFO would block forever
  assert fingerprints.file_digest(tmp_path / "fifo").startswith("not a regular file")
  (tmp_path / "loop").symlink_to(tmp_path / "loop")
  assert fingerprints.file_digest(tmp_path / "loop").startswith("unreadable")


def test_manifest_counts_each_stages_xla_compilations(tmp_path):
  """A stage that jits two fresh functions (one of them at two shapes) records 3 compilations
  and their seconds; a stage that compiles nothing records 0."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  def jitting(ctx):
    f = jax.jit(lambda a: jnp.sin(a) * 2.0 + 0.5)
    g = jax.jit(lambda a: jnp.cumsum(a) - 3.0)
    for n in (5, 6):
      jax.block_until_ready(f(np.ones(n, np.float32)))
    jax.block_until_ready(g(np.ones(5, np.float32)))
    ctx.path("j.txt").write_text("ok")
    return {"count": 1}

  config = _config(tmp_path)
  ctx = RunContext(tmp_path / "run", config, progress=False)
  manifest = Manifest(ctx.run_dir)
  run_stage(ctx, manifest, Stage("j", (), ("j.txt",), jitting))
  run_stage(ctx, manifest, Stage("a", (), ("a.txt",), _copy(None, "a.txt"), ("eval_file",)))
  on_disk = Manifest(ctx.run_dir)
  assert on_disk.stage("j")["compilations"] == 3
  assert on_disk.stage("j")["compile_seconds"] > 0
  assert on_disk.stage("j")["compile_cache_hits"] == 0
  assert on_disk.stage("a")["compilations"] == 0


def test_a_field_added_later_enters_the_fingerprint_only_when_set(tmp_path):
  """A field marked ``fingerprints.IF_SET`` (here ``backward_template``): an existing run stays
  up to date after it appears with its default; setting it reruns the stage."""
  (tmp_path / "lima.jsonl").write_text("v1\n")
  stage = Stage("e", (), ("e.txt",), _copy(None, "e.txt"), ("eval_file", "backward_template"))

  def run(config):
    ctx = RunContext(tmp_path / "run", config, progress=False)
    return run_stage(ctx, Manifest(ctx.run_dir), stage, producers={})

  cfg = _config(tmp_path)
  assert run(cfg)
  parts = Manifest(tmp_path / "run").stage("e")["fingerprint"]
  assert "config.backward_template" not in parts
  assert not run(cfg)
  assert run(dataclasses.replace(cfg, backward_template="llama2"))
  assert "config.backward_template" in Manifest(tmp_path / "run").stage("e")["fingerprint"]
  assert not run(dataclasses.replace(cfg, backward_template="llama2"))
  assert run(cfg)  # back to the default: changed again
