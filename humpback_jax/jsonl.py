"""JSON Lines artifacts: atomic writes, appendable shards for resumable stages, clear errors.

The standard library's ``json`` reads and writes the records; every file is one JSON object per
line, which ``datasets.load_dataset("json", data_files=...)`` reads as is.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Iterable, Iterator

from humpback_jax.errors import InputError


class JsonlError(InputError):
  """A JSONL file has a line that is not a JSON object; names file and 1-based line."""


def read_jsonl(path: str | os.PathLike) -> list[dict]:
  """Reads every record. Raises ``JsonlError`` naming the file and line of a bad record."""
  return list(iter_jsonl(path))


def iter_jsonl(path: str | os.PathLike) -> Iterator[dict]:
  """Yields records one by one; blank lines are skipped.

  Raises:
    FileNotFoundError: the file does not exist.
    JsonlError: a line is not valid JSON or not an object (message: ``file:line: what``).
  """
  for _, record in iter_jsonl_numbered(path):
    yield record


def iter_jsonl_numbered(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
  """As ``iter_jsonl``, yielding (1-based line number, record) for messages about a record."""
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise JsonlError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from e
      if not isinstance(record, dict):
        raise JsonlError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
      yield lineno, record


def write_jsonl(records: Iterable[dict], path: str | os.PathLike) -> int:
  """Writes records atomically (temp file + rename): a crash never leaves half a file.

  Returns:
    The number of records written.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  n = 0
  with open(tmp, "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")
      n += 1
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  return n


class JsonlAppender:
  """Append-only writer for a stage's partial output; each ``append`` is flushed.

  On restart, ``done_ids`` gives the ids already written, so the stage resumes where it
  stopped. A torn last line (the process died mid-write) is detected and dropped, with the count
  kept in ``torn_lines``.
  """

  def __init__(self, path: str | os.PathLike, id_key: str = "id"):
    self.path = pathlib.Path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self.id_key = id_key
    self.torn_lines = 0
    self.records: list[dict] = []
    if self.path.exists():
      good = []
      with open(self.path, encoding="utf-8") as f:
        for line in f:
          try:
            good.append(json.loads(line))
          except json.JSONDecodeError:
            self.torn_lines += 1
      self.records = good
      if self.torn_lines:  # rewrite without the torn tail
        write_jsonl(good, self.path)
    self.done_ids = {r[id_key] for r in self.records}
    self._f = open(self.path, "a", encoding="utf-8")

  def append(self, records: Iterable[dict]) -> None:
    for r in records:
      self._f.write(json.dumps(r, ensure_ascii=False) + "\n")
      self.records.append(r)
      self.done_ids.add(r[self.id_key])
    self._f.flush()
    os.fsync(self._f.fileno())

  def close(self) -> None:
    self._f.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
