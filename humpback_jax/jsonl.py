"""JSON Lines artifacts: atomic writes, appendable shards for resumable stages, clear errors.

The standard library's ``json`` reads and writes the records; every file is one JSON object per
line, which ``datasets.load_dataset("json", data_files=...)`` reads as is. Paths may be local or
on an object store (``gs://``): file I/O goes through ``humpback_jax.fs`` (``etils.epath``), which
says what "atomic" and "append" mean there. Process 0 alone writes (``hosts.is_writer()``).
"""

from __future__ import annotations

import json
import os
from typing import Callable, Iterable, Iterator, Sequence

from humpback_jax import fs, hosts
from humpback_jax.errors import DiskFullError, InputError, is_disk_full


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
  with fs.open_text(path) as f:
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
  """Writes records atomically: a crash never leaves half a file.

  Locally a temporary file ``NAME.tmp`` + fsync + rename; on an object store one object write
  at the end (``fs.atomic_writer``).

  Returns:
    The number of records written.
  Raises:
    DiskFullError: the disk filled up; the temporary file is removed and ``path`` is left as
      it was.
    InputError: a record holds text that cannot be written as UTF-8 (a lone surrogate); the
      message names the record's position and id.
  """
  shown = os.fspath(path)
  if not hosts.is_writer():  # process 0 writes; the others validate, count and wait for it
    n = sum(1 for i, r in enumerate(records) if _dumps(r, shown, i + 1))
    hosts.sync(f"write_jsonl {shown}")
    return n
  n = 0
  try:
    with fs.atomic_writer(path, "w") as f:
      for r in records:
        f.write(_dumps(r, shown, n + 1))
        n += 1
    hosts.sync(f"write_jsonl {shown}")  # others may read it as soon as this returns
  except BaseException as e:
    if is_disk_full(e):
      raise DiskFullError(e.errno if isinstance(e, OSError) else 28,
                          f"{shown}: disk full after {n} records ({e}); the file was left as "
                          "it was; free space and rerun") from e
    raise
  return n


def _dumps(record: dict, path, n: int) -> str:
  line = json.dumps(record, ensure_ascii=False) + "\n"
  try:
    line.encode("utf-8")
  except UnicodeEncodeError as e:
    raise InputError(f"{path}: record {n} (id {record.get('id')!r}) holds text that is not "
                     f"valid Unicode ({e.reason} at character {e.start})") from e
  return line


class JsonlAppender:
  """Append-only writer for a stage's partial output; each ``append`` is flushed and fsynced
  (on an object store: the whole file re-uploaded in one object write, ``fs.AppendWriter``).

  On restart, ``done_ids`` gives the ids already written, so the stage resumes where it
  stopped. A torn line (the process died mid-write: not valid JSON, or a last line without
  its newline) is dropped and a second record with an id already seen is dropped, counted in
  ``torn_lines`` and ``duplicate_lines``; the file is rewritten without them, so every id is
  written once.

  Raises (``append``):
    DiskFullError: the disk filled up mid-append; the records of earlier appends are kept and
      the torn line is dropped on the next open.
  """

  def __init__(self, path: str | os.PathLike, id_key: str = "id"):
    self.path = fs.path(path)
    self.id_key = id_key
    self.torn_lines = 0
    self.duplicate_lines = 0
    self.records: list[dict] = []
    self.done_ids: set = set()
    if self.path.exists():
      with fs.open_text(self.path, errors="replace") as f:
        for line in f:
          try:
            if not line.endswith("\n"):
              raise ValueError("no newline")
            record = json.loads(line)
            rid = record[id_key]
          except (ValueError, KeyError, TypeError):
            self.torn_lines += 1
            continue
          if rid in self.done_ids:
            self.duplicate_lines += 1
            continue
          self.done_ids.add(rid)
          self.records.append(record)
      if self.torn_lines or self.duplicate_lines:  # rewrite without them
        write_jsonl(self.records, self.path)
    # Process 0 appends; the others keep the same records in memory (they compute the same
    # chunks in lockstep) and write nothing. On an object store each append re-uploads the
    # whole file (``fs.AppendWriter``): the object is never torn.
    self._f = fs.AppendWriter(self.path) if hosts.is_writer() else None

  def append(self, records: Iterable[dict]) -> None:
    try:
      for r in records:
        line = _dumps(r, self.path, len(self.records) + 1)
        if self._f is not None:
          self._f.write(line)
        self.records.append(r)
        self.done_ids.add(r[self.id_key])
      if self._f is not None:
        self._f.sync()
    except OSError as e:
      if is_disk_full(e):
        raise DiskFullError(e.errno, f"{self.path}: disk full while appending ({e}); the "
                            "records of earlier chunks are kept; free space and rerun to "
                            "resume") from e
      raise

  def close(self) -> None:
    if self._f is None:
      return
    try:
      self._f.close()
    except OSError:  # the buffered tail of a failed append; dropped as torn on the next open
      pass

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def pending_chunks(items: Sequence[dict], done_ids, chunk_size: int,
                   id_key: str = "id") -> Iterator[tuple[int, list[dict]]]:
  """The fixed chunks of ``items`` that still hold an item whose id is not in ``done_ids``.

  Chunk j is ``items[j * chunk_size:(j + 1) * chunk_size]``: its place in the WHOLE input,
  never in what remains after a restart, so a resumed stage computes every record in the same
  company (same batches, same padded widths, hence bit-identical numerics) as an uninterrupted
  run. A chunk cut short by a kill is recomputed whole; the caller appends only its missing
  records.

  Yields:
    ``(j, chunk)`` in input order.
  Raises:
    ValueError: ``chunk_size < 1``.
  """
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
  for j, start in enumerate(range(0, len(items), chunk_size)):
    chunk = list(items[start:start + chunk_size])
    if any(r[id_key] not in done_ids for r in chunk):
      yield j, chunk


def resumable_map(items: Sequence[dict], run_chunk: Callable[[list[dict]], Iterable[dict]],
                  partial_path: str | os.PathLike | None, chunk_size: int, *,
                  progress: bool = False, desc: str | None = None,
                  id_key: str = "id") -> list[dict]:
  """``run_chunk`` over the fixed chunks of ``items`` (``pending_chunks``), each finished chunk
  appended to ``partial_path`` (``JsonlAppender``) so that a rerun skips it and computes the rest
  in the same chunks as an uninterrupted run. The loop of every resumable sampling stage.

  Args:
    items: the work items, each with a unique ``id_key``.
    run_chunk: ``chunk -> records``, one record per item of the chunk, with the item's id.
    partial_path: the partial file; None keeps nothing (every chunk runs).
    chunk_size: items per chunk (>= 1).
    progress: show a tqdm bar over the pending chunks, titled ``desc``.
    id_key: the id field of items and records.
  Returns:
    The records in the order of ``items``.
  Raises:
    ValueError: ``chunk_size < 1``.
    KeyError: ``run_chunk`` returned no record for an item.
  """
  def run(chunks, done_ids, keep):
    chunks = list(chunks)
    if progress and chunks:
      from tqdm.auto import tqdm
      chunks = tqdm(chunks, desc=desc)
    for _, chunk in chunks:
      keep(r for r in run_chunk(chunk) if r[id_key] not in done_ids)

  if partial_path is None:
    rows: dict = {}
    run(pending_chunks(items, (), chunk_size, id_key), (),
        lambda records: rows.update((r[id_key], r) for r in records))
  else:
    with JsonlAppender(partial_path, id_key) as out:
      run(pending_chunks(items, out.done_ids, chunk_size, id_key), out.done_ids, out.append)
      rows = {r[id_key]: r for r in out.records}
  return [rows[x[id_key]] for x in items]
