"""``RUN_DIR/manifest.json``: one line of record per stage, written atomically.

Schema: ``{"stages": {name: {"status": "running"|"done"|"failed", "count": N, "seconds": S,
"started": ISO time, "finished": ISO time, ...stage extras}}, "config": {...}}``. A stage is
skipped on rerun when its status is "done" and every declared output exists.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
from typing import Any


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class Manifest:
  """Reads and atomically rewrites ``manifest.json`` in a run directory."""

  def __init__(self, run_dir: str | os.PathLike):
    self.path = pathlib.Path(run_dir) / "manifest.json"
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

  def start(self, name: str) -> None:
    entry = self.data["stages"].setdefault(name, {})
    entry.update(status="running", started=_now())
    entry["attempts"] = entry.get("attempts", 0) + 1
    self._write()

  def finish(self, name: str, seconds: float, **extras) -> None:
    entry = self.data["stages"].setdefault(name, {})
    entry.update(extras)
    entry.update(status="done", seconds=round(seconds, 2), finished=_now())
    self._write()

  def fail(self, name: str, error: str) -> None:
    entry = self.data["stages"].setdefault(name, {})
    entry.update(status="failed", error=error, finished=_now())
    self._write()

  def _write(self) -> None:
    self.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = self.path.with_name(self.path.name + ".tmp")
    tmp.write_text(json.dumps(self.data, indent=2, sort_keys=False, default=str))
    os.replace(tmp, self.path)
