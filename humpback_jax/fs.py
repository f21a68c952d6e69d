"""Run-directory file I/O through ``etils.epath``: local disks and object stores (``gs://``) alike.

Every path of a run directory goes through ``path()``: an ``epath.Path`` that is either an
absolute local path or a URI such as ``gs://bucket/run`` kept exactly as given (never
``abspath``-mangled: ``path("gs://b/run") / "data"`` is ``gs://b/run/data``). ``epath.Path``
does what pathlib does on both (``/``, ``exists``, ``is_dir``, ``read_text``, ``read_bytes``,
``open``, ``mkdir``, ``unlink``, ``iterdir``, ``stat``, ``rmtree``, ``copy``); orbax takes it as a
checkpoint directory. This module adds the few operations that ``os``/``shutil``/pathlib do not
do on an object store, or do with other guarantees there:

``atomic_write_text`` / ``atomic_write_bytes`` / ``atomic_writer``
  Locally: a temporary file ``NAME.tmp`` beside the target, fsynced, then ``os.replace`` (a
  crash leaves the old file or the new one, never half of one; the temporary file is removed on
  any error). On an object store: the content is staged in a local temporary file and uploaded
  as ONE object write when complete; a single object PUT is atomic on GCS (readers see the old
  object or the new one), and a write that fails midway uploads nothing.

``replace(src, dst, marker=None)``
  Locally: ``os.replace``, atomic (an existing ``dst`` directory is removed first: directories
  are not replaced atomically, the window is between that removal and the rename). On an object
  store there is no rename: ``dst`` is deleted, every object of ``src`` copied, then ``src``
  deleted. This is NOT atomic: a crash midway leaves ``dst`` partial (and ``src`` intact, so
  the copy can be redone). ``marker`` names a file of a ``src`` directory that is copied last:
  its presence in ``dst`` says the copy is complete (the pipeline uses the params'
  fingerprint file, which readers already require).

``AppendWriter`` (append-only text files: the resumable JSONL partial files)
  Locally: the file opened in append mode; ``sync()`` flushes and fsyncs. GCS objects cannot
  be appended to; the strategy here is local staging + whole-object rewrite: the writer keeps a
  local staging copy of the object (downloaded when opened), appends to it, and ``sync()``
  uploads the whole staging file as the object in one PUT. The object is therefore always a
  complete earlier version, never a torn line; each ``sync`` costs an upload of the whole file
  (fine for a stage's partial files, a few MB synced once per chunk: the chunk size sets how
  often). Text written but not synced when the writer is closed is dropped (locally it reaches
  the file and is dropped as a torn line on the next open).

``rmtree(p)`` (a missing path is fine; a file is removed too), ``walk_files(p)`` (every file
under a directory, relative names), ``open_text``, ``is_local``.

Multi-host: nothing here looks at the process index. Process 0 alone writes run-directory
files: callers gate every write on ``humpback_jax.hosts.is_writer()`` and call
``hosts.sync(name)`` before other processes read what was written (GCS is strongly consistent
for read-after-write, so after the barrier every host sees the new object).
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from typing import IO, Iterator

from etils import epath

PathLike = str | os.PathLike


def is_local(p: PathLike) -> bool:
  """True for a local path; False for a URI (``gs://``, ``s3://``, ...) of an object store."""
  return "://" not in os.fspath(p)


def path(p: PathLike) -> epath.Path:
  """An ``epath.Path`` of ``p`` (str, ``os.PathLike`` or ``epath.Path``).

  Local paths are made absolute (``~`` expanded; symlinks are not resolved); URIs
  (``gs://bucket/x``) are kept as they are. Builds the path only: touches no file system.
  """
  s = os.fspath(p)
  if not is_local(s):
    return p if isinstance(p, epath.Path) else epath.Path(s)
  return epath.Path(os.path.abspath(os.path.expanduser(s)))


def _tmp_name(p: epath.Path) -> epath.Path:
  return p.with_name(p.name + ".tmp")


@contextlib.contextmanager
def atomic_writer(p: PathLike, mode: str = "w") -> Iterator[IO]:
  """Context manager yielding a file to write ``p`` whole; ``p`` appears only on success.

  Args:
    p: destination (its parent directory is created if local).
    mode: "w" (text, UTF-8) or "wb".
  Raises:
    Whatever writing raises (e.g. ``OSError`` ENOSPC); ``p`` is then left as it was and no
    temporary file remains.
  """
  if mode not in ("w", "wb"):
    raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
  p = path(p)
  encoding = None if "b" in mode else "utf-8"
  if is_local(p):
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(p)
    try:
      with open(tmp, mode, encoding=encoding) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())
      os.replace(tmp, p)
    except BaseException:
      tmp.unlink(missing_ok=True)
      raise
    return
  # Object store: stage locally, then one PUT (atomic on GCS); nothing is uploaded on error.
  with tempfile.TemporaryDirectory(prefix="humpback_fs_") as d:
    stage = epath.Path(d) / p.name
    with open(stage, mode, encoding=encoding) as f:
      yield f
    _upload(stage, p)


def atomic_write_text(p: PathLike, text: str) -> None:
  """Writes ``text`` (UTF-8) to ``p`` atomically (see ``atomic_writer``)."""
  with atomic_writer(p, "w") as f:
    f.write(text)


def atomic_write_bytes(p: PathLike, data: bytes) -> None:
  """Writes ``data`` to ``p`` atomically (see ``atomic_writer``)."""
  with atomic_writer(p, "wb") as f:
    f.write(data)


def _upload(local: epath.Path, dst: epath.Path) -> None:
  """One whole-object write of the local file ``local`` as ``dst``."""
  local.copy(dst, overwrite=True)


def open_text(p: PathLike, errors: str = "strict") -> IO[str]:
  """Opens ``p`` for reading as UTF-8 text (universal newlines), ``errors`` as in ``open``.

  Locally the file is streamed; from an object store it is read whole first.
  Raises:
    FileNotFoundError: ``p`` does not exist.
  """
  p = path(p)
  if is_local(p):
    return open(p, encoding="utf-8", errors=errors)
  return io.StringIO(p.read_bytes().decode("utf-8", errors=errors), newline=None)


def rmtree(p: PathLike) -> None:
  """Removes the directory tree (or file) ``p``; a missing ``p`` is fine."""
  p = path(p)
  if is_local(p):
    if p.is_dir() and not os.path.islink(p):
      p.rmtree(missing_ok=True)
    else:
      p.unlink(missing_ok=True)
    return
  if p.is_dir():
    p.rmtree(missing_ok=True)
    if p.exists():  # directory placeholder objects can survive the first pass (as orbax does)
      p.rmtree(missing_ok=True)
  elif p.exists():
    p.unlink(missing_ok=True)


def walk_files(p: PathLike) -> list[str]:
  """The files under directory ``p``: sorted POSIX names relative to ``p``.

  Locally as ``os.walk`` (symbolic links to directories are not followed); on an object store
  by listing (every object under the prefix).
  """
  p = path(p)
  out = []
  if is_local(p):
    for root, _, files in os.walk(p):
      rel = os.path.relpath(root, p)
      out += [name if rel == "." else f"{rel}/{name}".replace(os.sep, "/") for name in files]
    return sorted(out)

  def visit(d: epath.Path, prefix: str) -> None:
    for child in d.iterdir():
      if child.is_dir():
        visit(child, f"{prefix}{child.name}/")
      else:
        out.append(prefix + child.name)

  visit(p, "")
  return sorted(out)


def replace(src: PathLike, dst: PathLike, *, marker: str | None = None) -> None:
  """Moves ``src`` (a file or a directory) to ``dst``, replacing ``dst``.

  Locally ``os.replace`` (atomic for a file; an existing ``dst`` directory is removed first).
  On an object store: delete ``dst``, copy, delete ``src``, NOT atomic (see the module
  docstring); ``marker`` (a file name relative to a directory ``src``) is copied last, so a
  ``dst`` holding it is complete.

  Raises:
    FileNotFoundError: ``src`` does not exist.
  """
  src, dst = path(src), path(dst)
  if is_local(src) and is_local(dst):
    if os.path.isdir(dst) and not os.path.islink(dst) and os.path.isdir(src):
      rmtree(dst)
    os.replace(src, dst)
    return
  if not src.exists():
    raise FileNotFoundError(f"{src}: cannot move it to {dst}: it does not exist")
  rmtree(dst)
  if not src.is_dir():
    src.copy(dst, overwrite=True)
  else:
    names = walk_files(src)
    if marker is not None and marker in names:
      names = [n for n in names if n != marker] + [marker]
    for name in names:
      target = dst / name
      if is_local(target):
        target.parent.mkdir(parents=True, exist_ok=True)
      (src / name).copy(target, overwrite=True)
  rmtree(src)


class AppendWriter:
  """Appends text to a file; ``sync()`` makes what was written durable (module docstring).

  Args:
    p: the file (created if missing; its parent directory too, if local).
  """

  def __init__(self, p: PathLike):
    self.path = path(p)
    self._stage_dir = None
    if is_local(self.path):
      self.path.parent.mkdir(parents=True, exist_ok=True)
      self._f = open(self.path, "a", encoding="utf-8")
      return
    self._stage_dir = tempfile.TemporaryDirectory(prefix="humpback_fs_")
    self._stage = epath.Path(self._stage_dir.name) / self.path.name
    if self.path.exists():
      self.path.copy(self._stage, overwrite=True)
    self._f = open(self._stage, "a", encoding="utf-8")

  def write(self, text: str) -> None:
    self._f.write(text)

  def sync(self) -> None:
    """Locally flush + fsync; on an object store, upload the whole staging file (one PUT).

    Raises:
      OSError: e.g. ENOSPC; what earlier ``sync`` calls made durable stays.
    """
    self._f.flush()
    if self._stage_dir is None:
      os.fsync(self._f.fileno())
    else:
      _upload(self._stage, self.path)

  def close(self) -> None:
    """Closes the file; on an object store, drops the staging copy (nothing is uploaded)."""
    try:
      self._f.close()
    finally:
      if self._stage_dir is not None:
        self._stage_dir.cleanup()
        self._stage_dir = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
