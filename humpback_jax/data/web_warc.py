"""WARC reader of :mod:`humpback_jax.data.web` (``warcio``): HTML responses as documents, every
other record counted in a ``web_read.ReadCounts``. Sizes are in bytes."""

from __future__ import annotations

import collections
import os
import re
import zlib
from typing import Any, Iterator

from humpback_jax.data.web_read import (ReadCounts, _broken_source, _bytes_to_html, _counts,
                                        _fail)

_HTML_MIME = ("text/html", "application/xhtml+xml")


def _read_record(record: Any, records: Any, doc_id: str, counts: ReadCounts,
                 max_bytes: int | None) -> bytes | None:
  """The de-chunked, content-decoded body of a WARC record, or ``None`` (counted). Failure
  logs name the record's byte offset (asked of ``records`` only after the body was read, as
  warcio reads the record to its end to know it)."""
  where = lambda: f"{doc_id} (record at byte {records.get_record_offset()})"  # noqa: E731
  if record.rec_headers.get_header("WARC-Truncated"):
    _fail(counts, "warc_truncated_record", where(),
          f"WARC-Truncated: {record.rec_headers.get_header('WARC-Truncated')}")
    return None
  chunks, total = [], 0
  try:
    stream = record.content_stream()
    while True:
      chunk = stream.read(1 << 16)
      if not chunk:
        break
      chunks.append(chunk)
      total += len(chunk)
      if max_bytes is not None and total > max_bytes:
        _fail(counts, "too_large", where(), f"more than max_document_bytes={max_bytes}")
        return None
  except Exception as e:  # pylint: disable=broad-except  (warcio/zlib decode errors)
    _fail(counts, "warc_record_error", where(), e)
    return None
  missing = getattr(record.raw_stream, "limit", 0)
  if isinstance(missing, int) and missing > 0:
    _fail(counts, "warc_truncated_record", where(),
          f"record cut off: {missing} bytes of its Content-Length missing")
    return None
  return b"".join(chunks)


def iter_warc(path: str | os.PathLike, *, label: str | None = None,
              failures: collections.Counter | None = None, counts: ReadCounts | None = None,
              max_bytes: int | None = None) -> Iterator[tuple[str, str]]:
  """Yields the HTML pages of a WARC file (``.warc`` or ``.warc.gz``), read with ``warcio``.

  Documents are ``response`` records with an HTTP ``Content-Type`` of ``text/html`` or
  ``application/xhtml+xml``. Other records are skipped and counted: ``warc_non_response``
  (warcinfo, request, metadata, resource, revisit, ...), ``warc_non_http`` (responses without
  HTTP headers, e.g. ``dns:``), ``non_html`` (images, robots.txt, ...). Failures: ``http_status``
  (non-2xx), ``warc_truncated_record`` (fewer payload bytes than the record's Content-Length,
  or a ``WARC-Truncated`` header), ``warc_record_error``, ``too_large`` and the decoding reasons.
  The body (de-chunked, content-decoded by warcio) is decoded with the charset of the HTTP
  header, falling back as in ``decode_html_ex``.

  Args:
    path: the WARC file.
    label: prefix of document ids (default: the path as given); ids are ``label:target-URI``,
      with ``~k`` appended to the k-th (k >= 2) repeat of a URI; failure logs add the record's
      byte offset.
    failures, counts, max_bytes: see :func:`iter_html_file`.

  Yields:
    ``(doc_id, html)`` pairs.

  Raises:
    FileNotFoundError: the file does not exist.
  """
  from warcio.archiveiterator import ArchiveIterator  # pylint: disable=g-import-not-at-top
  from warcio.exceptions import ArchiveLoadFailed  # pylint: disable=g-import-not-at-top

  counts = _counts(failures, counts)
  prefix = label if label is not None else str(path)
  seen: collections.Counter = collections.Counter()
  n = 0
  with open(path, "rb") as f:
    try:
      records = ArchiveIterator(f)
      for record in records:
        if record.format not in ("warc", "warc/1.0", "warc/1.1"):  # warcio also reads ARC
          raise ValueError(f"not a WARC record at byte {records.get_record_offset()} "
                           f"(parsed as {record.format!r})")
        n += 1
        if record.rec_type != "response":
          counts.skipped["warc_non_response"] += 1
          continue
        if record.http_headers is None:
          counts.skipped["warc_non_http"] += 1
          continue
        ctype = record.http_headers.get_header("Content-Type") or ""
        mime, _, params = ctype.partition(";")
        if mime.strip().lower() not in _HTML_MIME:
          counts.skipped["non_html"] += 1
          continue
        uri = record.rec_headers.get_header("WARC-Target-URI") or "record"
        seen[uri] += 1
        doc_id = f"{prefix}:{uri}" + (f"~{seen[uri]}" if seen[uri] > 1 else "")
        status = record.http_headers.get_statuscode() or ""
        if not status.startswith("2"):
          _fail(counts, "http_status", f"{doc_id} (record at byte {records.get_record_offset()})",
                f"HTTP status {status!r}")
          continue
        data = _read_record(record, records, doc_id, counts, max_bytes)
        if data is None:
          continue
        where = f"{doc_id} (record at byte {records.get_record_offset()})"
        m = re.search(r"charset\s*=\s*[\"']?([^\s;\"']+)", params, re.I)
        html = _bytes_to_html(data, "", where, counts, declared=m.group(1) if m else None,
                              max_bytes=max_bytes)
        if html is not None:
          yield doc_id, html
    except (ArchiveLoadFailed, OSError, EOFError, zlib.error, ValueError) as e:
      _broken_source(counts, prefix, n, e)
      return
  if n == 0:
    counts.sources_empty.append(prefix)
