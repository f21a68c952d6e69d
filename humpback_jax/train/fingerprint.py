"""What determines a training run's result, recorded with its checkpoints and its final params.

A *fingerprint* is a flat JSON-able dict. ``train.loop.train`` stores
``{"train_config": TrainConfig.math_dict(), **caller's fingerprint}`` in every checkpoint's meta
and refuses (or, asked to, discards) a checkpoint whose recorded fingerprint differs from the
run's; ``pipeline.training.fine_tune`` adds the training file's sha256, the base model's
identity, the direction, the data seed and the tokenizer, and records the same dict inside the
final ``params/`` directory. Nothing here hashes model parameters.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping

ON_MISMATCH = ("error", "restart")
_MISSING = "(not recorded)"

# Key -> the phrase of an error message saying that input changed.
_LABELS = {
    "train_config": "hyper-parameters changed",
    "train_data_sha256": "training data changed",
    "base_model_id": "base model changed",
    "model_config": "base model config changed",
    "direction": "direction changed",
    "data_seed": "data-order seed changed",
    "sequence_length": "sequence length changed",
    "tokenizer": "tokenizer changed",
}


class InputsChangedError(ValueError):
  """A checkpoint or saved params were produced from different inputs than this run's.

  Attributes:
    changes: one human-readable line per changed input, e.g.
      ``"training data changed: sha256 3a7bd3e2360a… -> 9f86d081884c…"``.
  """

  def __init__(self, message: str, changes: list[str]):
    super().__init__(message)
    self.changes = list(changes)


def normalize(fingerprint: Mapping[str, Any] | None) -> dict:
  """``fingerprint`` as it reads back from JSON (tuples become lists, keys strings).

  Raises:
    TypeError: a value JSON cannot encode.
  """
  return json.loads(json.dumps(dict(fingerprint or {}), sort_keys=True))


def file_sha256(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
  """Hex sha256 of a file's bytes, read in ``chunk_bytes`` chunks.

  Raises:
    FileNotFoundError: ``path`` does not exist.
  """
  from humpback_jax import fs
  h = hashlib.sha256()
  with fs.path(path).open("rb") as f:  # local or gs://
    while chunk := f.read(chunk_bytes):
      h.update(chunk)
  return h.hexdigest()


def _short(v: Any) -> str:
  if isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v):
    return v[:12] + "…"  # a sha256
  return repr(v)


def describe_changes(recorded: Mapping[str, Any] | None, current: Mapping[str, Any]
                     ) -> list[str]:
  """Lines naming every input whose value differs between two fingerprints.

  Args:
    recorded: the fingerprint stored with a checkpoint / params (JSON-decoded), or None when
      none was stored (then the one line says so). A key missing from it reads
      ``'(not recorded)'``.
    current: this run's fingerprint.
  Returns:
    ``[]`` when they agree, else e.g. ``["training data changed: sha256 3a7b… -> 9f86…",
    "hyper-parameters changed: learning_rate 1e-05 -> 2e-05"]`` (keys in sorted order).
  """
  if recorded is None:
    return ["no fingerprint of the inputs was recorded (written by an older version, or "
            "interrupted)"]
  recorded, current = normalize(recorded), normalize(current)
  lines = []
  for key in sorted(set(recorded) | set(current)):
    old, new = recorded.get(key, _MISSING), current.get(key, _MISSING)
    if old == new:
      continue
    label = _LABELS.get(key, f"{key} changed")
    if isinstance(old, dict) or isinstance(new, dict):
      o = old if isinstance(old, dict) else {}
      n = new if isinstance(new, dict) else {}
      parts = [f"{k} {_short(o.get(k, _MISSING))} -> {_short(n.get(k, _MISSING))}"
               for k in sorted(set(o) | set(n)) if o.get(k, _MISSING) != n.get(k, _MISSING)]
      lines.append(f"{label}: {', '.join(parts) or f'{old!r} -> {new!r}'}")
    elif key == "train_data_sha256":
      lines.append(f"{label}: sha256 {_short(old)} -> {_short(new)}")
    else:
      lines.append(f"{label}: {_short(old)} -> {_short(new)}")
  return lines


def check_on_mismatch(on_mismatch: str) -> None:
  """Raises ValueError unless ``on_mismatch`` is one of ``ON_MISMATCH``."""
  if on_mismatch not in ON_MISMATCH:
    raise ValueError(f"on_mismatch must be one of {ON_MISMATCH}, got {on_mismatch!r}")
