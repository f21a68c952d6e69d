"""Stage fingerprints: what a stage's result depends on, so a rerun knows when it is stale.

A stage's fingerprint is a dict of named parts, each a short SHA-256 hex digest:

- ``config.<field>``: the ``PipelineConfig`` sections the stage reads (``Stage.config_keys``);
- ``base_model``: the base model's identity (``RunContext.base_model_id``), for stages that
  load it;
- ``file:<path>``: each external input (seed and web sources, AlpacaEval file), by content
  (SHA-256 of the bytes; files over ``CONTENT_HASH_MAX_BYTES`` by size and modification time,
  as ``make`` does; a directory by all its files);
- ``input:<path>``: each input in the run directory: a file by content, a directory (a trained
  model) by the fingerprint of the stage that produced it.

A done stage is up to date when its recorded parts equal the current ones; a changed part
makes it stale, and since its outputs then change, the ``input:`` parts of every stage
downstream change with them, so exactly the affected stages rerun (as ``make``/DVC).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
from typing import Any

from humpback_jax import fs

# Above this a file is identified by (size, mtime) rather than content (our choice: hashing a
# multi-GB WARC at every start would cost minutes; 256 MiB hashes in well under a second).
CONTENT_HASH_MAX_BYTES = 256 << 20


def _digest(obj: Any) -> str:
  blob = json.dumps(obj, sort_keys=True, default=str).encode("utf-8")
  return hashlib.sha256(blob).hexdigest()[:16]


def file_digest(path: str | os.PathLike) -> str:
  """Digest of a file or a directory tree ("missing" if absent, "unreadable: ..." on errors).

  Files up to ``CONTENT_HASH_MAX_BYTES`` (bytes) by content, larger ones by size and mtime;
  a directory by the sorted (relative name, digest) of its files (symlinks not followed).
  Local or object-store (``gs://``) paths alike (``fs.path``); on an object store a large
  object's mtime is its modification time in whole seconds.
  """
  path = fs.path(path)
  try:
    if path.is_dir():
      return _digest(sorted((name, file_digest(path / name)) for name in fs.walk_files(path)))
    if fs.is_local(path):
      st = os.stat(path)
      if not stat.S_ISREG(st.st_mode):  # a FIFO or device: never open it (it could block)
        return f"not a regular file (mode {stat.filemode(st.st_mode)})"
      size, mtime_ns = st.st_size, st.st_mtime_ns
    else:
      st = path.stat()
      size, mtime_ns = st.length, st.mtime * 1_000_000_000
    if size > CONTENT_HASH_MAX_BYTES:
      return _digest({"size": size, "mtime_ns": mtime_ns})
    h = hashlib.sha256()
    with path.open("rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
    return h.hexdigest()[:16]
  except FileNotFoundError:
    return "missing"
  except OSError as e:
    return f"unreadable: {e.strerror or e}"


# ``dataclasses.field(metadata=IF_SET)``: a config field added after runs exist; it enters a
# stage's config digest only when set to a non-default value, so adding it does not make every
# existing run stale.
IF_SET = {"fingerprint": "if_set"}


def config_dict(obj: Any) -> Any:
  """``dataclasses.asdict`` of a config without its ``IF_SET`` fields at their defaults."""
  if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
    out = {}
    for f in dataclasses.fields(obj):
      value = getattr(obj, f.name)
      if f.metadata.get("fingerprint") == "if_set" and value == f.default:
        continue
      out[f.name] = config_dict(value)
    return out
  if isinstance(obj, (list, tuple)):
    return type(obj)(config_dict(v) for v in obj)
  if isinstance(obj, dict):
    return {k: config_dict(v) for k, v in obj.items()}
  return obj


def stage_fingerprint(ctx, stage, producers: dict[str, str], manifest) -> dict[str, str]:
  """The current fingerprint parts of ``stage`` (see the module docstring).

  Args:
    ctx: the ``RunContext``.
    stage: the ``Stage``.
    producers: output path -> name of the stage that writes it.
    manifest: the run's ``Manifest`` (fingerprints of producing stages).
  Returns:
    ``{part name: digest}``.
  """
  config = config_dict(ctx.config)
  unknown = set(stage.config_keys) - {f.name for f in dataclasses.fields(ctx.config)}
  if unknown:
    raise ValueError(f"stage {stage.name}: unknown config keys {sorted(unknown)}")
  # A key absent from ``config_dict`` is an ``IF_SET`` field at its default: no part.
  parts = {f"config.{k}": _digest(config[k]) for k in stage.config_keys if k in config}
  if stage.uses_base_model:
    parts["base_model"] = _digest(ctx.base_model_id)
  for rel in stage.external_files(ctx.config):
    from humpback_jax import paths
    parts[f"file:{rel}"] = file_digest(paths.resolve(rel, ctx.data_root))
  run_dir = fs.path(ctx.run_dir)
  for rel in stage.inputs:
    path = run_dir / rel
    if path.is_dir() and rel in producers:
      recorded = manifest.stage(producers[rel]).get("fingerprint") or {}
      parts[f"input:{rel}"] = _digest(recorded)
    else:
      parts[f"input:{rel}"] = file_digest(path)
  return parts


def describe_changes(recorded: dict[str, str] | None, current: dict[str, str]) -> list[str]:
  """Human-readable differences, e.g. ``["config.web changed", "file:web/a.tar changed"]``."""
  if not recorded:
    return ["no fingerprint recorded (run by an older version)"]
  out = []
  for k in sorted(set(recorded) | set(current)):
    if k not in current:
      out.append(f"{k} no longer used")
    elif k not in recorded:
      out.append(f"{k} is new")
    elif recorded[k] != current[k]:
      out.append(f"{k} changed")
  return out
