"""Readers of :mod:`humpback_jax.data.web`: ``(doc_id, html)`` from directories, HTML files, tar
archives and (``web_warc``) WARC files, every entry accounted for in a :class:`ReadCounts`.

An *entry* is a file of a directory, a member of a tar archive or a record of a WARC file. Each
one ends up exactly once as a yielded document, a failed document (``failures``: an HTML entry
that could not be read) or a skipped entry (``skipped``: not a document). Nothing is extracted
to disk: tar members are read in memory. Sizes are in bytes.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import gzip
import io
import logging
import os
import pathlib
import re
import stat
import tarfile
import zlib
from typing import Any, Iterator

from humpback_jax.data.web_decode import GUESS_METHODS, UndecodableError, decode_html_ex

log = logging.getLogger("humpback_jax.data.web")

HTML_SUFFIXES = (".html", ".htm", ".html.gz", ".htm.gz")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
WARC_SUFFIXES = (".warc", ".warc.gz")
SUPPORTED_SUFFIXES = HTML_SUFFIXES + TAR_SUFFIXES + WARC_SUFFIXES
# Archives found inside a source are not opened (counted as ``nested_archive``).
_ARCHIVE_SUFFIXES = TAR_SUFFIXES + WARC_SUFFIXES + (
    ".zip", ".gz", ".bz2", ".xz", ".tbz2", ".txz", ".7z", ".rar", ".arc", ".arc.gz", ".zst")
_READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, ValueError)


@dataclasses.dataclass
class ReadCounts:
  """What the readers saw, beside the documents they yield.

  Attributes:
    failures: failed documents, reason -> count (``gzip_error``, ``empty``, ``binary``,
      ``undecodable``, ``read_error``, ``too_large``, ``symlink_loop``, ``broken_symlink``,
      ``not_regular_file``, ``truncated_member``, ``http_status``, ``warc_record_error``,
      ``warc_truncated_record``), plus ``archive_error`` once per broken source (not a
      document).
    skipped: entries that are not documents, reason -> count (``non_html``, ``nested_archive``,
      ``unsafe_member``, ``directory``, ``other_member``, ``symlinked_directory``,
      ``warc_non_response``, ``warc_non_http``).
    decoded_by_guess: documents decoded without a charset label, fallback -> count (see
      ``web_decode.GUESS_METHODS``).
    decoded_lossy: documents decoded with their label although some bytes were invalid.
    sources_empty: sources without any entry (zero-byte file, empty directory or archive).
    sources_failed: source label -> what broke it ("archive truncated after N members: ...").
  """

  failures: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  decoded_by_guess: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  decoded_lossy: int = 0
  sources_empty: list = dataclasses.field(default_factory=list)
  sources_failed: dict = dataclasses.field(default_factory=dict)


def _counts(failures: collections.Counter | None, counts: ReadCounts | None) -> ReadCounts:
  if counts is None:
    counts = ReadCounts()
    if failures is not None:
      counts.failures = failures
  return counts


def _fail(counts: ReadCounts, reason: str, doc_id: str, detail: Any) -> None:
  counts.failures[reason] += 1
  log.warning("skipping %s (%s): %s", doc_id, reason, detail)


def _broken_source(counts: ReadCounts, label: str, n: int, e: BaseException) -> None:
  counts.failures["archive_error"] += 1
  msg = f"archive truncated or corrupt after {n} entries: {type(e).__name__}: {e}"
  counts.sources_failed[label] = msg
  log.warning("web source %s: %s", label, msg)


def _is_html_name(name: str) -> bool:
  base = name.rsplit("/", 1)[-1]
  return base.lower().endswith(HTML_SUFFIXES) and not base.startswith("._")


def _skip_reason(name: str) -> str | None:
  """``None`` for an HTML name, else why the entry is not a document."""
  if _is_html_name(name):
    return None
  return "nested_archive" if name.lower().endswith(_ARCHIVE_SUFFIXES) else "non_html"


class _TooLarge(Exception):
  pass


def _gunzip(data: bytes, max_bytes: int | None) -> bytes:
  """Decompresses (possibly multi-member) gzip data, at most ``max_bytes`` (else _TooLarge)."""
  with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
    out = f.read(-1 if max_bytes is None else max_bytes + 1)
  if max_bytes is not None and len(out) > max_bytes:
    raise _TooLarge(f"more than {max_bytes} bytes after gunzip")
  return out


def _bytes_to_html(data: bytes, name: str, doc_id: str, counts: ReadCounts,
                   declared: str | None = None, max_bytes: int | None = None) -> str | None:
  """Gunzips (``*.gz``) and decodes one document; counts and returns ``None`` on failure."""
  if name.lower().endswith(".gz"):
    try:
      data = _gunzip(data, max_bytes)
    except _TooLarge as e:
      _fail(counts, "too_large", doc_id, e)
      return None
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
      _fail(counts, "gzip_error", doc_id, f"not gzip or truncated gzip: {e}")
      return None
  if max_bytes is not None and len(data) > max_bytes:
    _fail(counts, "too_large", doc_id, f"{len(data)} bytes > max_document_bytes={max_bytes}")
    return None
  try:
    decoded = decode_html_ex(data, declared)
  except UndecodableError as e:
    _fail(counts, e.reason, doc_id, e)
    return None
  if decoded.method in GUESS_METHODS:
    counts.decoded_by_guess[decoded.method] += 1
  counts.decoded_lossy += decoded.lossy
  return decoded.text


def _read_file(path: pathlib.Path, doc_id: str, counts: ReadCounts,
               max_bytes: int | None) -> str | None:
  """One HTML file: checks (symlink loop, not a regular file, size) then reads and decodes."""
  try:
    st = os.stat(path)
  except OSError as e:
    reason = {errno.ELOOP: "symlink_loop", errno.ENOENT: "broken_symlink"}.get(e.errno,
                                                                               "read_error")
    _fail(counts, reason, doc_id, e)
    return None
  if not stat.S_ISREG(st.st_mode):
    _fail(counts, "not_regular_file", doc_id, "not a regular file (FIFO, device, directory?)")
    return None
  if max_bytes is not None and st.st_size > max_bytes:
    _fail(counts, "too_large", doc_id, f"{st.st_size} bytes > max_document_bytes={max_bytes}")
    return None
  try:
    data = path.read_bytes()
  except OSError as e:
    _fail(counts, "read_error", doc_id, e)
    return None
  return _bytes_to_html(data, path.name, doc_id, counts, max_bytes=max_bytes)


def iter_html_file(path: str | os.PathLike, *, label: str | None = None,
                   failures: collections.Counter | None = None, counts: ReadCounts | None = None,
                   max_bytes: int | None = None) -> Iterator[tuple[str, str]]:
  """Yields the one document of an ``.html``/``.htm`` file, gzipped (``.gz``) or not.

  Args:
    path: the file.
    label: its document id (default: the path as given).
    failures: counter incremented per failure reason (see :class:`ReadCounts`); used when
      ``counts`` is not given.
    counts: where failures, skips and decoding fallbacks are counted.
    max_bytes: larger documents (bytes, after gunzip) fail as ``too_large``.

  Yields:
    ``(doc_id, html)``; nothing if the document failed.
  """
  counts = _counts(failures, counts)
  path = pathlib.Path(path)
  doc_id = label if label is not None else str(path)
  html = _read_file(path, doc_id, counts, max_bytes)
  if html is not None:
    yield doc_id, html


def iter_directory(path: str | os.PathLike, *, label: str | None = None,
                   failures: collections.Counter | None = None, counts: ReadCounts | None = None,
                   max_bytes: int | None = None) -> Iterator[tuple[str, str]]:
  """Yields every ``*.html``, ``*.htm`` (optionally ``.gz``) file under a directory, recursively.

  Files are visited in sorted order of their relative POSIX path (deterministic). Symbolic
  links to directories are not followed (``skipped["symlinked_directory"]``); other files are
  counted as ``non_html`` or ``nested_archive``.

  Args:
    path: the directory.
    label: prefix of document ids (default: the path as given); ids are ``label:relative/path``.
    failures, counts, max_bytes: see :func:`iter_html_file`.

  Yields:
    ``(doc_id, html)`` pairs.

  Raises:
    NotADirectoryError: ``path`` is not a directory.
  """
  counts = _counts(failures, counts)
  root = pathlib.Path(path)
  if not root.is_dir():
    raise NotADirectoryError(str(root))
  prefix = label if label is not None else str(path)
  files = []
  for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
    base = pathlib.Path(dirpath)
    for d in dirnames:
      if os.path.islink(base / d):
        counts.skipped["symlinked_directory"] += 1
    files.extend(((base / f).relative_to(root).as_posix(), base / f) for f in filenames)
  if not files:
    counts.sources_empty.append(prefix)
  for rel, p in sorted(files):
    reason = _skip_reason(p.name)
    if reason is not None:
      counts.skipped[reason] += 1
      continue
    html = _read_file(p, f"{prefix}:{rel}", counts, max_bytes)
    if html is not None:
      yield f"{prefix}:{rel}", html


def _unsafe(member: tarfile.TarInfo) -> bool:
  """Links, devices, FIFOs, absolute names and names with ``..`` components."""
  if member.issym() or member.islnk() or member.isdev():  # isdev: char, block, FIFO
    return True
  name = member.name
  return (name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name) is not None
          or ".." in re.split(r"[\\/]+", name))


def iter_tar(path: str | os.PathLike, *, label: str | None = None,
             failures: collections.Counter | None = None, counts: ReadCounts | None = None,
             max_bytes: int | None = None) -> Iterator[tuple[str, str]]:
  """Streams the HTML members (``.html``, ``.htm``, optionally ``.gz``) of a tar archive.

  The archive is read with ``tarfile`` in streaming mode (``r|*``: plain, gzip, bz2 or xz),
  members in archive order, in memory (nothing is extracted to disk). Skipped members:
  ``unsafe_member`` (symbolic/hard links, devices, FIFOs, absolute names or ``..``
  components), ``nested_archive``, ``non_html``, ``directory``, ``other_member``. A member cut
  off by the end of the archive fails as ``truncated_member``; a corrupt or truncated archive
  counts ``archive_error`` once, records "archive truncated or corrupt after N entries" in
  ``counts.sources_failed`` and ends this source, keeping what came before.

  Args:
    path: the archive.
    label: prefix of document ids (default: the path as given); ids are ``label:member/name``.
    failures, counts, max_bytes: see :func:`iter_html_file`.

  Yields:
    ``(doc_id, html)`` pairs.

  Raises:
    FileNotFoundError: the archive does not exist.
  """
  counts = _counts(failures, counts)
  prefix = label if label is not None else str(path)
  n, reading = 0, False  # entries seen; whether the n-th one is being read
  with open(path, "rb") as f:
    if os.fstat(f.fileno()).st_size == 0:
      counts.sources_empty.append(prefix)
      return
    try:
      with tarfile.open(fileobj=f, mode="r|*") as tf:
        for member in tf:
          n += 1
          if _unsafe(member):
            counts.skipped["unsafe_member"] += 1
            log.warning("skipping unsafe tar member %s:%s", prefix, member.name)
            continue
          if member.isdir() or not member.isfile():
            counts.skipped["directory" if member.isdir() else "other_member"] += 1
            continue
          reason = _skip_reason(member.name)
          if reason is not None:
            counts.skipped[reason] += 1
            continue
          doc_id = f"{prefix}:{member.name}"
          if max_bytes is not None and member.size > max_bytes:
            _fail(counts, "too_large", doc_id, f"{member.size} bytes > {max_bytes}")
            continue
          extracted = tf.extractfile(member)
          reading = True
          try:
            data = extracted.read() if extracted is not None else b""
          except _READ_ERRORS as e:
            _fail(counts, "truncated_member", doc_id, e)
            raise
          if len(data) < member.size:
            _fail(counts, "truncated_member", doc_id, f"{len(data)} of {member.size} bytes")
            raise tarfile.ReadError("unexpected end of data")
          reading = False
          html = _bytes_to_html(data, member.name, doc_id, counts, max_bytes=max_bytes)
          if html is not None:
            yield doc_id, html
    except _READ_ERRORS as e:
      _broken_source(counts, prefix, n - 1 if reading else n, e)
      return
  if n == 0:
    counts.sources_empty.append(prefix)


def iter_documents(path: str | os.PathLike, *, label: str | None = None,
                   failures: collections.Counter | None = None, counts: ReadCounts | None = None,
                   max_bytes: int | None = None) -> Iterator[tuple[str, str]]:
  """Yields ``(doc_id, html)`` from any supported source, chosen by its type and file name.

  Directories -> :func:`iter_directory`; ``.warc``/``.warc.gz`` -> ``web_warc.iter_warc``;
  ``.tar``/``.tar.gz``/``.tgz`` -> :func:`iter_tar`; ``.html``/``.htm`` (``.gz``) ->
  :func:`iter_html_file`.

  Args:
    path: the source.
    label: document-id prefix (default: the path as given).
    failures, counts, max_bytes: see :func:`iter_html_file`.

  Yields:
    ``(doc_id, html)`` pairs, in a deterministic order.

  Raises:
    FileNotFoundError: ``path`` does not exist.
    ValueError: the file name has none of the supported suffixes.
  """
  from humpback_jax.data.web_warc import iter_warc  # pylint: disable=g-import-not-at-top

  counts = _counts(failures, counts)
  p = pathlib.Path(path)
  if not p.exists():
    raise FileNotFoundError(str(p))
  name = p.name.lower()
  kw = dict(label=label, counts=counts, max_bytes=max_bytes)
  if p.is_dir():
    yield from iter_directory(p, **kw)
  elif name.endswith(WARC_SUFFIXES):
    yield from iter_warc(p, **kw)
  elif name.endswith(TAR_SUFFIXES):
    yield from iter_tar(p, **kw)
  elif name.endswith(HTML_SUFFIXES):
    yield from iter_html_file(p, **kw)
  else:
    raise ValueError(f"unsupported web source {str(p)!r}: expected a directory or one of "
                     f"{SUPPORTED_SUFFIXES}")


def source_problem(src: str, p: pathlib.Path) -> str | None:
  """Why web source ``src`` (resolved to ``p``) cannot be read (a message naming it and its
  absolute path), or ``None``. Nothing is read; a FIFO is never opened."""
  where = f"web source {src!r}"
  absolute = p.absolute()
  try:
    st = os.stat(p)
  except OSError as e:
    if e.errno == errno.ELOOP:
      return f"{where} at {absolute} is a symbolic link loop"
    if e.errno in (errno.ENOENT, errno.ENOTDIR):
      broken = os.path.islink(p)
      return f"{where} not found at {absolute}" + (" (broken symbolic link)" if broken else "")
    return f"{where} at {absolute} cannot be accessed: {e.strerror or e}"
  name = p.name.lower()
  if stat.S_ISDIR(st.st_mode):
    if name.endswith(SUPPORTED_SUFFIXES):
      return (f"{where} at {absolute} is a directory, but its name ends in "
              f"{next(s for s in SUPPORTED_SUFFIXES[::-1] if name.endswith(s))!r}: expected a "
              "file of that type")
    try:
      os.listdir(p)
    except OSError as e:
      return f"{where} at {absolute}: directory cannot be listed: {e.strerror or e}"
    return None
  if not stat.S_ISREG(st.st_mode):
    return f"{where} at {absolute} is neither a regular file nor a directory (FIFO, device?)"
  if not name.endswith(SUPPORTED_SUFFIXES):
    return (f"{where} at {absolute} has an unsupported type: expected a directory or a file "
            f"ending in one of {', '.join(SUPPORTED_SUFFIXES)}")
  try:
    with open(p, "rb"):
      pass
  except OSError as e:
    return f"{where} at {absolute} cannot be opened: {e.strerror or e}"
  return None
