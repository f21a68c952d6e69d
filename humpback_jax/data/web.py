"""Unlabelled web corpus: HTML documents -> header-rooted text segments ([HB] §2.1, App. E) or
whole cleaned documents ([BF] §2 step 1), per ``WebConfig.unit``.

Pipeline, one document at a time, in a deterministic order:

0. **Validate** every source before reading any (:func:`validate_sources`): all bad sources are
   reported in one :class:`WebInputError`.
1. **Read** ``(doc_id, html)`` pairs from a directory, a single HTML file, a tar archive or a
   WARC file (``web_read.iter_documents``). Bytes are decoded with ``web_decode.decode_html_ex``
   (BOM, UTF-16 sniffing, HTTP charset, ``<meta charset>``, then UTF-8, windows-1252,
   ``charset_normalizer``). Every file, member or record is counted: read, failed (a reason in
   ``documents_failed``) or skipped as not a document (a reason in ``members_skipped``); a
   broken archive stops that source only (``sources_failed``).
2. **Extract** the main content with ``trafilatura`` (XML output, which keeps headings as
   ``<head rend="hN">``); the boilerplate removal is trafilatura's, not ours
   (``web_extract.extract_blocks``). Pages nested deeper than ``web_extract.MAX_HTML_DEPTH``
   elements are flattened first (``web_extract.cap_html_depth``; lxml would drop them whole).
   The page title stands in for the missing ``<h1>`` (``web_extract.segment_blocks``).
3. **Segment**: every header roots one segment: its text is everything after the header up to
   the next header of the same or a higher level (a smaller or equal ``N`` in ``hN``), sub-headers
   and their text included, so segments nest and overlap as in the paper. The header line itself
   is NOT part of ``text`` (it is kept in ``header``); sub-headers inside the segment are, each as
   a paragraph of its own.
4. **Filter** (``web_filters.filter_reason``, then exact de-duplication across the corpus, then
   containment within a page); the first failing filter, in the order of :data:`FILTERS`, is
   charged for each dropped segment, so the drop counters sum to
   ``segments_before_filters - kept``. Containment (our choice): of two kept segments of the
   same document where one's text is a substring of the other's (a sub-header's segment inside
   its parent's), the inner one is dropped as ``contained`` and the outer, header-rooted one
   kept, so no kept text is repeated inside another.

**Document mode** (``WebConfig.unit="documents"``, [BF] §2 step 1): steps 0-2 are the same;
step 3 is replaced by one record per page (its whole main text) and step 4 applies the filters
that judge the text; see ``web_documents``.

Modules: ``web_config`` (:class:`WebConfig`), ``web_decode`` (charsets), ``web_read``
(readers), ``web_extract`` (trafilatura, segmentation), ``web_filters`` (filters),
``web_documents`` (document mode); their public names are re-exported here.
All lengths are in characters (Python ``str`` code points), the unit of [HB] App. E; sizes of
files are in bytes.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import math
import multiprocessing
import os
import pathlib
import time
from typing import Any, Iterator

from humpback_jax import paths
from humpback_jax.errors import InputError
from humpback_jax.data.web_config import DEFAULT_SOURCES, UNITS, WebConfig  # noqa: F401
from humpback_jax.data.web_decode import (  # noqa: F401  (re-exports)
    GUESS_METHODS, Decoded, UndecodableError, decode_html, decode_html_ex)
from humpback_jax.data.web_documents import (  # noqa: F401
    DOCUMENT_ID_SUFFIX, document_html, judge_document)
from humpback_jax.data.web_extract import (  # noqa: F401
    BLOCK_SEPARATOR, MAX_HTML_DEPTH, Block, Segment, cap_html_depth, document_text,
    extract_blocks, segment_blocks)
from humpback_jax.data.web_filters import (  # noqa: F401
    DOCUMENT_FILTERS, FILTERS, NAV_BLOCKLIST, decide_document, decide_segments,
    document_filter_reason, english_scores, filter_reason, is_empty_header, is_english,
    is_navigation_header, is_repetitive, is_uppercase_header, max_sentence_jaccard,
    split_sentences, word_ngrams)
from humpback_jax.data.web_read import (  # noqa: F401
    HTML_SUFFIXES, SUPPORTED_SUFFIXES, TAR_SUFFIXES, WARC_SUFFIXES, ReadCounts, iter_directory,
    iter_documents, iter_html_file, iter_tar, log, source_problem)
from humpback_jax.data.web_warc import iter_warc  # noqa: F401

class WebInputError(InputError):
  """A bad web source or a corpus from which nothing usable could be read; the message names
  the source(s) and what is wrong. ``stats``: the build's stats when raised after reading
  (``None`` when raised by validation)."""

  def __init__(self, message: str, stats: dict | None = None):
    super().__init__(message)
    self.stats = stats


# ------------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------------


def validate_sources(sources: tuple[str, ...], data_root: str | os.PathLike | None = None
                     ) -> list[pathlib.Path]:
  """Checks every source before any is read.

  Each must exist (not a dangling link nor a symbolic link loop), be readable, and be a
  directory or a regular file with a supported suffix (:data:`SUPPORTED_SUFFIXES`); a
  directory whose name has such a suffix (``x.tar/``) is refused.

  Args:
    sources: as in :class:`WebConfig`.
    data_root: root of relative sources.

  Returns:
    The resolved paths, in order.

  Raises:
    WebInputError: one error naming every bad source and why (e.g. "web source 'x' not found
      at /abs/path"), or no source at all.
  """
  if not sources:
    raise WebInputError("no web sources given (WebConfig.sources is empty)")
  resolved = [paths.resolve(src, data_root) for src in sources]
  problems = [m for m in (source_problem(s, p) for s, p in zip(sources, resolved)) if m]
  if len(problems) == 1:
    raise WebInputError(problems[0])
  if problems:
    raise WebInputError(f"{len(problems)} bad web sources: " + "; ".join(problems))
  return resolved


# ------------------------------------------------------------------------------------------------
# Build
# ------------------------------------------------------------------------------------------------


def _extract_job(job: tuple[str, str, bool, bool, bool, str]) -> tuple[str, Any, bool]:
  """Worker: ``(doc_id, html, include_tables, favor_precision, title_as_h1, unit)`` ->
  ``(status, payload, too_deep)``: ``("ok", segments)`` (``("ok", (title, text))`` for
  ``unit="documents"``), ``("no_content", None)`` or ``("extraction_error", message)``;
  ``too_deep``: the page was flattened."""
  doc_id, html, include_tables, favor_precision, title_as_h1, unit = job
  try:
    html, too_deep = cap_html_depth(html)
    extracted = extract_blocks(html, include_tables=include_tables,
                               favor_precision=favor_precision)
  except Exception as e:  # pylint: disable=broad-except  (trafilatura/lxml on broken pages)
    return "extraction_error", f"{type(e).__name__}: {e}", False
  if extracted is None:
    return "no_content", None, too_deep
  title, blocks = extracted
  if unit == "documents":
    text = document_text(blocks)
    return ("ok", (title, text), too_deep) if text else ("no_content", None, too_deep)
  return "ok", segment_blocks(blocks, title, title_as_h1), too_deep


def segment_html(html: str, config: WebConfig | None = None) -> list[Segment]:
  """Extracts and segments one page (no filtering); see ``extract_blocks`` and
  ``segment_blocks``. Pages deeper than :data:`MAX_HTML_DEPTH` elements are flattened first.

  Args:
    html: the page.
    config: extraction options (default ``WebConfig()``).

  Returns:
    Segments in document order; empty if trafilatura finds no main content.

  Raises:
    Whatever trafilatura raises on pathological input.
  """
  config = config or WebConfig()
  extracted = extract_blocks(cap_html_depth(html)[0], include_tables=config.include_tables,
                             favor_precision=config.favor_precision)
  if extracted is None:
    return []
  title, blocks = extracted
  return segment_blocks(blocks, title, config.title_as_h1)


def _documents(config: WebConfig, resolved: list[pathlib.Path],
               counts: ReadCounts) -> Iterator[tuple[str, str, str]]:
  """``(source, doc_id, html)`` over all sources, at most ``config.max_documents``."""

  def gen() -> Iterator[tuple[str, str, str]]:
    for src, p in zip(config.sources, resolved):
      try:
        for doc_id, html in iter_documents(p, label=src, counts=counts,
                                           max_bytes=config.max_document_bytes):
          yield src, doc_id, html
      except (OSError, ValueError) as e:  # e.g. the source vanished after validation
        raise WebInputError(f"web source {src!r} at {p.absolute()} cannot be read: "
                            f"{type(e).__name__}: {e}") from e

  return itertools.islice(gen(), config.max_documents)


def _judge_segments(src: str, doc_id: str, segments: list[Segment], config: WebConfig,
                    seen_text: set[bytes]) -> Iterator[tuple[str | None, dict | None]]:
  """``(reason, record)`` per segment of one page, in order: the first failing filter
  (``decide_segments``) and ``None``, or ``None`` and the segment's record."""
  for seg, reason in zip(segments, decide_segments(segments, config, seen_text)):
    if reason is not None:
      yield reason, None
    else:
      yield None, {"id": f"{doc_id}#{seg.index}", "source": src, "doc_id": doc_id,
                   "header": seg.header, "level": seg.level, "text": seg.text,
                   "chars": len(seg.text)}


def build_segments(config: WebConfig, data_root: str | os.PathLike | None = None,
                   progress: bool = False) -> tuple[list[dict], dict]:
  """Reads, extracts, segments and filters the web corpus ([HB] §2.1, App. E); or, with
  ``config.unit="documents"``, extracts and filters whole documents ([BF] §2 step 1).

  Every source is validated before any is read (:func:`validate_sources`). Every file, tar
  member or WARC record seen is accounted for exactly once: ``documents_read +
  documents_failed_total + sum(members_skipped.values()) == entries_total``.

  Args:
    config: sources and filter settings.
    data_root: root for relative ``config.sources`` (default: ``paths.default_data_root()``).
    progress: show a ``tqdm`` progress bar over documents.

  Returns:
    ``(records, stats)``, with at least one record. Segments, in source order, then document
    order, then header order: ``{"id": "<doc_id>#<header index>", "source", "doc_id", "header",
    "level", "text", "chars": len(text)}`` (characters). Stats keys:

    - ``documents_read``: documents decoded and extracted (``documents_no_content`` of them
      with no main content, ``documents_no_headers`` with content but no header and no title);
    - ``documents_failed``: failed documents, reason -> count: ``gzip_error`` (not gzip or
      truncated gzip), ``empty``, ``binary``, ``undecodable``, ``read_error``, ``too_large``
      (over ``max_document_bytes``), ``symlink_loop``, ``broken_symlink``,
      ``not_regular_file``, ``truncated_member`` (tar member cut off), ``http_status``,
      ``warc_record_error``, ``warc_truncated_record`` (payload shorter than the record's
      Content-Length, or ``WARC-Truncated``), ``extraction_error``; ``documents_failed_total``;
    - ``members_skipped``: entries that are not documents, reason -> count: ``non_html``,
      ``nested_archive``, ``unsafe_member`` (tar links, devices, absolute or ``..`` names),
      ``directory``, ``other_member``, ``symlinked_directory``, ``warc_non_response``,
      ``warc_non_http``;
    - ``entries_total``: files, members and records seen (the sum above);
    - ``sources_empty``: sources with no entry at all; ``sources_failed``: source -> "archive
      truncated or corrupt after N entries: ..." (the rest of that source is lost);
    - ``documents_decoded_by_guess``: documents without a usable charset label, fallback ->
      count (``utf-16-sniffed``, ``utf-8``, ``cp1252``, ``charset_normalizer``);
      ``documents_decoded_lossy``: decoded with their label despite invalid bytes (U+FFFD);
    - ``documents_too_deep``: pages nested deeper than ``MAX_HTML_DEPTH`` elements, flattened;
    - ``unit``: ``config.unit``;
    - ``per_source`` (documents read and kept segments per source);
    - ``segments_before_filters``; ``dropped`` (filter -> count, each segment charged to its
      first failing filter, in :data:`FILTERS` order, ``contained`` last); ``kept``;
    - ``chars_mean``/``chars_std``/``chars_min``/``chars_max`` of kept segments ([HB]: 1,722 ±
      653 chars); ``stopped_early`` (``max_segments`` reached); ``wall_seconds``; ``config``.

    Document mode (``config.unit="documents"``): one record per page that has main content,
    ``{"id": "<doc_id>#doc", "source", "doc_id", "header": page title or None, "level": 0,
    "text": the whole main text, "chars"}``, in source then document order; the stats have the
    same keys with the same meaning per record: ``segments_before_filters`` counts documents
    with main content (``documents_read - documents_no_content``), ``dropped`` charges each
    dropped document to its first failing filter of :data:`DOCUMENT_FILTERS` (the header
    filters and ``contained`` stay 0), ``kept`` and ``chars_*`` are over kept documents, and
    ``documents_no_headers`` is 0 (a document needs no header).

  Raises:
    WebInputError: a bad source (not found, symbolic link loop, unreadable, unsupported type;
      all named at once, before reading); or no segment at all: "no document could be read
      from sources [...] (failures: ...)" or "N documents read from sources [...], 0 segments
      survived the filters (drops: ...)" ("0 documents" in document mode), with ``.stats`` set.
  """
  t0 = time.perf_counter()
  resolved = validate_sources(config.sources, data_root)
  counts = ReadCounts()
  dropped = {name: 0 for name in FILTERS}
  per_source = {src: {"documents": 0, "kept": 0} for src in config.sources}
  as_documents = config.unit == "documents"
  stats: dict[str, Any] = {"unit": config.unit, "documents_read": 0, "documents_no_content": 0,
                           "documents_no_headers": 0, "documents_too_deep": 0,
                           "segments_before_filters": 0}
  kept: list[dict] = []
  seen_text: set[bytes] = set()
  stopped_early = False

  docs = _documents(config, resolved, counts)
  bar = None
  if progress:
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm(desc="web documents", unit="doc", total=config.max_documents)
  opts = (config.include_tables, config.favor_precision, config.title_as_h1, config.unit)
  # "spawn": forking a process that has started JAX's (or TF's) threads can deadlock.
  pool = (concurrent.futures.ProcessPoolExecutor(
      config.num_workers, mp_context=multiprocessing.get_context("spawn"))
          if config.num_workers > 1 else None)
  batch_size = 16 * config.num_workers
  try:
    while not stopped_early:
      batch = list(itertools.islice(docs, batch_size))
      if not batch:
        break
      jobs = [(doc_id, html) + opts for _, doc_id, html in batch]
      results = pool.map(_extract_job, jobs, chunksize=4) if pool else map(_extract_job, jobs)
      for (src, doc_id, _), (status, payload, too_deep) in zip(batch, results):
        if bar is not None:
          bar.update(1)
        stats["documents_too_deep"] += too_deep
        if status == "extraction_error":
          counts.failures["extraction_error"] += 1
          log.warning("skipping %s (extraction_error): %s", doc_id, payload)
          continue
        stats["documents_read"] += 1
        per_source[src]["documents"] += 1
        if status == "no_content":
          stats["documents_no_content"] += 1
          continue
        if as_documents:
          judged = [judge_document(src, doc_id, *payload, config, seen_text)]
        elif not payload:
          stats["documents_no_headers"] += 1
          continue
        else:
          judged = _judge_segments(src, doc_id, payload, config, seen_text)
        for reason, record in judged:
          stats["segments_before_filters"] += 1
          if reason is not None:
            dropped[reason] += 1
            continue
          kept.append(record)
          per_source[src]["kept"] += 1
          if config.max_segments is not None and len(kept) >= config.max_segments:
            stopped_early = True
            break
        if bar is not None:
          bar.set_postfix(kept=len(kept))
        if stopped_early:
          break
  finally:
    if pool is not None:
      pool.shutdown(cancel_futures=True)
    if bar is not None:
      bar.close()

  failures = {k: v for k, v in sorted(counts.failures.items()) if k != "archive_error"}
  skipped = dict(sorted(counts.skipped.items()))
  chars = [s["chars"] for s in kept]
  mean = sum(chars) / len(chars) if chars else 0.0
  std = math.sqrt(sum((c - mean) ** 2 for c in chars) / len(chars)) if chars else 0.0
  stats.update({
      "documents_failed": failures,
      "documents_failed_total": sum(failures.values()),
      "members_skipped": skipped,
      "entries_total": stats["documents_read"] + sum(failures.values()) + sum(skipped.values()),
      "sources_empty": list(counts.sources_empty),
      "sources_failed": dict(counts.sources_failed),
      "documents_decoded_by_guess": dict(sorted(counts.decoded_by_guess.items())),
      "documents_decoded_lossy": counts.decoded_lossy,
      "per_source": per_source,
      "dropped": dropped,
      "kept": len(kept),
      "chars_mean": mean,
      "chars_std": std,
      "chars_min": min(chars) if chars else 0,
      "chars_max": max(chars) if chars else 0,
      "stopped_early": stopped_early,
      "wall_seconds": time.perf_counter() - t0,
      "config": dataclasses.asdict(config),
  })
  if not kept:
    sources = list(config.sources)
    if stats["documents_read"] == 0:
      raise WebInputError(
          f"no document could be read from sources {sources} (failures: {failures or 'none'}; "
          f"skipped entries: {skipped or 'none'}; empty sources: {stats['sources_empty']}; "
          f"broken sources: {stats['sources_failed'] or 'none'})", stats)
    drops = {k: v for k, v in dropped.items() if v}
    raise WebInputError(
        f"{stats['documents_read']} documents read from sources {sources}, 0 {config.unit} "
        f"survived the filters (drops: {drops or 'none'}; {config.unit} before filters: "
        f"{stats['segments_before_filters']}; documents with no content: "
        f"{stats['documents_no_content']}, with no headers: {stats['documents_no_headers']}; "
        f"failures: {failures or 'none'})", stats)
  return kept, stats
