"""``RUN_DIR/manifest.json``: one line of record per stage, written atomically.

Schema: ``{"stages": {name: {"status": "running"|"done"|"failed", "attempts": N,
"fingerprint": {part: digest}, "count": N, "seconds": S, "started": ISO time, "finished": ISO
time, "error": "Type: message" (failed only), "rerun_reason": [...] (when it reran because its
inputs changed), ...stage extras}}, "config": {...} (of the latest invocation)}``. A stage is
skipped on rerun when its status is "done", every declared output exists and its fingerprint
is unchanged (``runner.run_stage``).

Only process 0 writes (``jax.process_index() == 0``); the others read. The run directory may be
local or on an object store (``gs://``): the manifest is rewritten whole each time
(``fs.atomic_write_text``: temp file + rename locally, one object write on GCS).
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any

from humpback_jax import fs


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class Manifest:
  """Reads and atomically rewrites ``manifest.json`` in a run directory."""

  def __init__(self, run_dir: str | os.PathLike):
    self.path = fs.path(run_dir) / "manifest.json"
    if self.path.exists():
      try:
        self.data = json.loads(self.path.read_text())
      except json.JSONDecodeError as e:
        raise ValueError(f"{self.path}: corrupt manifest ({e}); move it away to start over") from e
    else:
      self.data = {"stages": {}}
    self.data.setdefault("stages", {})

  def stage(self, name: str) -> dict:
    return self.data["stages"].get(name, {})

  def is_done(self, name: str) -> bool:
    return self.stage(name).get("status") == "done"

  def set(self, key: str, value: Any) -> None:
    self.data[key] = value
    self._write()

  def start(self, name: str, fingerprint: dict | None = None, **extras) -> None:
    """Marks ``name`` running. Results of an earlier attempt (count, error, stage extras) are
    cleared, so a failed rerun never shows the previous run's figures."""
    old = self.data["stages"].get(name, {})
    self.data["stages"][name] = entry = {"status": "running", "started": _now(),
                                         "attempts": old.get("attempts", 0) + 1}
    if fingerprint is not None:
      entry["fingerprint"] = fingerprint
    entry.update(extras)
    self._write()

  def finish(self, name: str, seconds: float, **extras) -> None:
    entry = self.data["stages"].setdefault(name, {})
    entry.pop("error", None)
    entry.update(extras)
    entry.update(status="done", seconds=round(seconds, 2), finished=_now())
    self._write()

  def fail(self, name: str, error: str) -> None:
    entry = self.data["stages"].setdefault(name, {})
    entry.update(status="failed", error=error, finished=_now())
    self._write()

  def _write(self) -> None:
    if not _is_writer():
      return
    fs.atomic_write_text(self.path, json.dumps(self.data, indent=2, sort_keys=False,
                                               default=str))


def _is_writer() -> bool:
  """Process 0 writes the manifest; other hosts of a multi-host run only read it
  (``hosts.is_writer``, which never imports JAX just to write a manifest)."""
  from humpback_jax import hosts
  return hosts.is_writer()
