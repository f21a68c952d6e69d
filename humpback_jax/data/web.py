"""Unlabelled web corpus: HTML documents -> header-rooted text segments ([HB] §2.1, App. E).

Pipeline, one document at a time, in a deterministic order:

1. **Read** ``(doc_id, html)`` pairs from a directory, a single HTML file, a tar archive or a
   WARC file (:func:`iter_documents`). Bytes are decoded with :func:`decode_html`. A document that
   cannot be read (corrupt gzip member, undecodable bytes, non-2xx HTTP status, ...) is counted
   under a reason in a ``failures`` counter, logged, and skipped; a broken archive stops that
   source only.
2. **Extract** the main content with ``trafilatura`` (XML output, which keeps headings as
   ``<head rend="hN">``); the boilerplate removal is trafilatura's, not ours
   (:func:`extract_blocks`). The page title from trafilatura's metadata stands in for the missing
   ``<h1>`` (:func:`segment_blocks`).
3. **Segment**: every header roots one segment: its text is everything after the header up to
   the next header of the same or a higher level (a smaller or equal ``N`` in ``hN``), sub-headers
   and their text included, so segments nest and overlap as in the paper. The header line itself
   is NOT part of ``text`` (it is kept in ``header``); sub-headers inside the segment are, each as
   a paragraph of its own.
4. **Filter** (:func:`filter_reason`, then exact de-duplication); the first failing filter, in
   the order of :data:`FILTERS`, is charged for each dropped segment, so the drop counters sum to
   ``segments_before_filters - kept``.

Text layout (our choice; the paper does not describe it): blocks (paragraphs, lists, tables,
quotes, code, sub-headers) are joined by a blank line (``"\\n\\n"``); list items are lines
``"- item"`` (``"1. item"`` in ordered lists), table rows are lines of cells joined by ``" | "``.
All lengths are in characters (Python ``str`` code points), the unit of [HB] App. E.
"""

from __future__ import annotations

import codecs
import collections
import concurrent.futures
import dataclasses
import gzip
import hashlib
import itertools
import logging
import math
import multiprocessing
import os
import pathlib
import re
import tarfile
import time
import zlib
from typing import Any, Iterable, Iterator, NamedTuple

from humpback_jax import paths

log = logging.getLogger(__name__)

# The four real inputs of ``../shared/data/web`` (see its README), relative to the data root.
DEFAULT_SOURCES: tuple[str, ...] = (
    "web/scrapinghub_aeb_181_news_html.tar",
    "web/postlight_parser_fixtures_171.tar.gz",
    "web/trafilatura_tests_en_178_pages.tar.gz",
    "web/warc/ukwa_IAH_blackbook_truncated.warc.gz",
)

# Navigation / boilerplate headers. The first four are the paper's examples ([HB] App. E); the
# rest are not reported by the paper (our choice): common widget, sharing, comment, promotion
# and site-chrome headings. Matching rule: see :func:`is_navigation_header`.
NAV_BLOCKLIST: tuple[str, ...] = (
    # [HB] App. E
    "advertisement", "forum", "quick link", "free newsletter",
    # our choice
    "ad", "ads", "advert", "advertising", "sponsored", "sponsored content", "sponsored links",
    "paid content", "partner content", "promoted", "promoted stories",
    "related", "related articles", "related article", "related posts", "related stories",
    "related content", "related links", "related topics", "related coverage", "related videos",
    "related reading", "you may also like", "you might also like", "you may be interested in",
    "recommended", "recommended for you", "recommended stories",
    "more from", "more stories", "more news", "more on this", "read more", "read next",
    "see also", "further reading", "external links", "references", "sources", "tags", "topics",
    "categories", "archives", "archive", "recent posts", "recent comments", "recent articles",
    "comment", "comments", "leave a reply", "leave a comment", "post a comment", "add a comment",
    "join the conversation", "join the discussion", "reader comments",
    "share", "share this", "share this article", "share this story", "share this post",
    "share on", "sharing", "spread the word",
    "subscribe", "subscribe to", "subscribe now", "newsletter", "newsletters",
    "get our newsletter", "sign up", "sign up for", "sign in", "log in", "login", "register",
    "follow us", "follow", "connect with us", "stay connected", "social", "social media",
    "navigation", "main navigation", "site navigation", "menu", "main menu", "footer", "header",
    "sidebar", "breadcrumb", "breadcrumbs", "skip to", "site map", "sitemap", "search",
    "popular", "most popular", "popular posts", "popular stories", "trending", "trending now",
    "most read", "most viewed", "most shared", "most emailed", "top stories", "latest news",
    "latest stories", "editor's picks", "editors picks", "in case you missed it",
    "about the author", "about us", "contact", "contact us", "privacy policy", "terms of use",
    "terms of service", "terms and conditions", "cookie policy", "cookies", "copyright",
    "all rights reserved", "table of contents", "contents", "links", "useful links",
    "download the app", "get the app", "trending topics", "video", "videos", "photos",
    "gallery", "watch", "listen", "podcast", "podcasts", "print", "email", "advertise",
    "advertise with us", "shop", "buy now", "deals", "more", "next", "previous",
)

# The filters of [HB] App. E (plus the exact de-duplication asked of this module), in the order
# they are tried; the first that fails is charged.
FILTERS: tuple[str, ...] = (
    "length", "empty_header", "uppercase_header", "nav_header", "non_english", "repetitive",
    "duplicate",
)

# English function words for the language heuristic (our choice: the 60 most frequent English
# words that are function words; standard lists such as NLTK's start the same way).
_EN_STOPWORDS: frozenset[str] = frozenset("""
a about after all also an and any are as at be because been but by can could did do does for
from had has have he her his how i if in into is it its just like more my no not of on one or
our out so some such than that the their them then there these they this to up was we were what
when which who will with would you your
""".split())

_HTML_SUFFIXES = (".html", ".htm", ".html.gz", ".htm.gz")
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_WARC_SUFFIXES = (".warc", ".warc.gz")
_HTML_MIME = ("text/html", "application/xhtml+xml")


@dataclasses.dataclass(frozen=True)
class WebConfig:
  """Configuration of :func:`build_segments`.

  Attributes:
    sources: inputs, relative to the data root (absolute paths are used as given): directories,
      ``.html``/``.htm``(``.gz``) files, ``.tar``/``.tar.gz``/``.tgz`` archives, ``.warc``(``.gz``)
      files. Defaults to the four real files of ``web/`` (data README).
    min_chars: shortest kept segment text, characters ([HB] App. E: 600).
    max_chars: longest kept segment text, characters ([HB] App. E: 3,000).
    ngram: word n-gram order of the repetitive-sentence filter (not reported; our choice: 3).
    jaccard_threshold: a segment is repetitive if any two of its sentences have n-gram Jaccard
      similarity >= this (not reported; our choice: 0.5, i.e. half of the distinct n-grams of
      the pair shared).
    nav_blocklist: navigation/boilerplate header phrases ([HB] App. E examples + our list).
    max_segments: stop once this many segments are kept (``None``: no limit).
    max_documents: stop after this many documents have been read, counted over all sources in
      order (``None``: no limit). Failed documents do not count.
    min_ascii_letter_frac: English heuristic: least share of ASCII letters among all letters of
      the text (not reported; our choice: 0.9; accented Latin text passes, CJK/Cyrillic fails).
    min_stopword_frac: English heuristic: least share of words (``[a-z']+`` tokens) that are
      common English function words (not reported; our choice: 0.2; measured on the pages of
      ``web/``: English segments have a median of 0.40 and a 10th percentile of 0.33, German,
      French, Spanish, Italian, Portuguese and Indonesian ones 0.0-0.12; English tables and
      lists of numbers, e.g. nutrition facts, also fall below 0.2).
    title_as_h1: when the extracted body has no ``h1``, the page title (trafilatura metadata)
      becomes a level-1 header over the whole body (our choice, as the title is the page's h1 in
      most layouts).
    include_tables: keep tables in the extracted text (trafilatura ``include_tables``; our
      choice: True, rows rendered as ``a | b`` lines).
    favor_precision: trafilatura ``favor_precision`` (our choice: False; on the scrapinghub
      ground truth the default mode has token F1 ~0.965).
    num_workers: extraction processes (1: in-process). Output is identical for any value.
  """

  sources: tuple[str, ...] = DEFAULT_SOURCES
  min_chars: int = 600
  max_chars: int = 3000
  ngram: int = 3
  jaccard_threshold: float = 0.5
  nav_blocklist: tuple[str, ...] = NAV_BLOCKLIST
  max_segments: int | None = None
  max_documents: int | None = None
  min_ascii_letter_frac: float = 0.9
  min_stopword_frac: float = 0.2
  title_as_h1: bool = True
  include_tables: bool = True
  favor_precision: bool = False
  num_workers: int = 1

  def __post_init__(self):
    if isinstance(self.sources, (str, os.PathLike)):
      raise TypeError("WebConfig.sources must be a tuple of paths, not one path")
    object.__setattr__(self, "sources", tuple(str(s) for s in self.sources))
    object.__setattr__(self, "nav_blocklist", tuple(self.nav_blocklist))
    if not 0 <= self.min_chars <= self.max_chars:
      raise ValueError(f"need 0 <= min_chars <= max_chars, got {self.min_chars}, {self.max_chars}")
    if self.ngram < 1:
      raise ValueError(f"ngram must be >= 1, got {self.ngram}")
    if not 0.0 < self.jaccard_threshold <= 1.0:
      raise ValueError(f"jaccard_threshold must be in (0, 1], got {self.jaccard_threshold}")
    if self.num_workers < 1:
      raise ValueError(f"num_workers must be >= 1, got {self.num_workers}")


class Block(NamedTuple):
  """One block of extracted content: a header (``kind="head"``, level 1-6) or text (level 0)."""

  kind: str
  level: int
  text: str


class Segment(NamedTuple):
  """One header-rooted segment of a document, before filtering."""

  index: int  # position of its header among the document's headers (0-based)
  header: str
  level: int
  text: str


class UndecodableError(ValueError):
  """Raised by :func:`decode_html` when bytes are not decodable text; ``reason`` names why."""

  def __init__(self, reason: str, message: str):
    super().__init__(message)
    self.reason = reason


# ------------------------------------------------------------------------------------------------
# Decoding
# ------------------------------------------------------------------------------------------------

_META_CHARSET = re.compile(rb"""<meta[^>]{0,200}?charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)
_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF32_LE, "utf-32"),
         (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF16_LE, "utf-16"),
         (codecs.BOM_UTF16_BE, "utf-16"))
# WHATWG: these labels mean windows-1252 in HTML; servers often send them for UTF-8 pages.
_LATIN1_LABELS = frozenset({"latin-1", "iso8859-1", "ascii", "cp1252"})


def _codec(label: str | bytes | None) -> str | None:
  """Normalized Python codec name of a charset label, or ``None`` if unknown."""
  if not label:
    return None
  if isinstance(label, bytes):
    label = label.decode("ascii", "ignore")
  try:
    return codecs.lookup(label.strip().strip("\"'").lower()).name
  except LookupError:
    return None


def decode_html(data: bytes, declared: str | None = None) -> str:
  """Decodes HTML bytes to text.

  Order (WHATWG-like): a byte-order mark; the declared charset (HTTP ``Content-Type``), then a
  ``<meta charset>`` in the first 4,096 bytes, then UTF-8, each decoded strictly; a Latin-1/ASCII
  label is overridden by UTF-8 when the bytes are valid UTF-8 (a common server mislabel), and
  means windows-1252 otherwise (WHATWG), with Latin-1 as its last resort; finally the best guess
  of ``charset_normalizer`` (a trafilatura dependency).

  Args:
    data: raw bytes of one document.
    declared: charset label from the transport (e.g. the HTTP header), if any.

  Returns:
    The decoded text.

  Raises:
    UndecodableError: reason ``"empty"`` (no non-whitespace bytes), ``"binary"`` (NUL bytes
      without a UTF-16/32 BOM: not text) or ``"undecodable"`` (no candidate decodes it).
  """
  if not data.strip():
    raise UndecodableError("empty", "document is empty")
  for bom, enc in _BOMS:
    if data.startswith(bom):
      try:
        return data.decode(enc)
      except UnicodeDecodeError as e:
        raise UndecodableError("undecodable", f"bad {enc} after BOM: {e}") from e
  if b"\x00" in data[:65536]:
    raise UndecodableError("binary", "NUL bytes in a document without a UTF-16/32 BOM")
  m = _META_CHARSET.search(data[:4096])
  candidates = [_codec(declared), _codec(m.group(1) if m else None), "utf-8"]
  tried = set()
  for enc in candidates:
    if enc is None or enc in tried:
      continue
    tried.add(enc)
    if enc in _LATIN1_LABELS:
      for alt in ("utf-8", "cp1252", "latin-1"):
        try:
          return data.decode(alt)
        except UnicodeDecodeError:
          continue
    try:
      return data.decode(enc)
    except (UnicodeDecodeError, LookupError):
      continue
  import charset_normalizer  # pylint: disable=g-import-not-at-top
  best = charset_normalizer.from_bytes(data).best()
  if best is None:
    raise UndecodableError("undecodable", f"no charset decodes it (tried {sorted(tried)})")
  return str(best)


# ------------------------------------------------------------------------------------------------
# Readers
# ------------------------------------------------------------------------------------------------


def _fail(failures: collections.Counter | None, reason: str, doc_id: str, detail: Any) -> None:
  if failures is not None:
    failures[reason] += 1
  log.warning("skipping %s (%s): %s", doc_id, reason, detail)


def _is_html_name(name: str) -> bool:
  base = name.rsplit("/", 1)[-1]
  return base.lower().endswith(_HTML_SUFFIXES) and not base.startswith("._")


def _bytes_to_html(data: bytes, name: str, doc_id: str, failures: collections.Counter | None,
                   declared: str | None = None) -> str | None:
  """Gunzips (``*.gz``) and decodes one document; counts and returns ``None`` on failure."""
  if name.lower().endswith(".gz"):
    try:
      data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
      _fail(failures, "gzip_error", doc_id, e)
      return None
  try:
    return decode_html(data, declared)
  except UndecodableError as e:
    _fail(failures, e.reason, doc_id, e)
    return None


def iter_html_file(path: str | os.PathLike, *, label: str | None = None,
                   failures: collections.Counter | None = None) -> Iterator[tuple[str, str]]:
  """Yields the one document of an ``.html``/``.htm`` file, gzipped (``.gz``) or not.

  Args:
    path: the file.
    label: its document id (default: the path as given).
    failures: counter incremented per failure reason (``gzip_error``, ``empty``, ``binary``,
      ``undecodable``, ``read_error``); the document is then skipped.

  Yields:
    ``(doc_id, html)``; nothing if the document failed.
  """
  path = pathlib.Path(path)
  doc_id = label if label is not None else str(path)
  try:
    data = path.read_bytes()
  except OSError as e:
    _fail(failures, "read_error", doc_id, e)
    return
  html = _bytes_to_html(data, path.name, doc_id, failures)
  if html is not None:
    yield doc_id, html


def iter_directory(path: str | os.PathLike, *, label: str | None = None,
                   failures: collections.Counter | None = None) -> Iterator[tuple[str, str]]:
  """Yields every ``*.html``, ``*.htm`` (optionally ``.gz``) file under a directory, recursively.

  Files are visited in sorted order of their relative POSIX path (deterministic).

  Args:
    path: the directory.
    label: prefix of document ids (default: the path as given); ids are ``label:relative/path``.
    failures: counter of failure reasons (see :func:`iter_html_file`).

  Yields:
    ``(doc_id, html)`` pairs.

  Raises:
    NotADirectoryError: ``path`` is not a directory.
  """
  root = pathlib.Path(path)
  if not root.is_dir():
    raise NotADirectoryError(str(root))
  prefix = label if label is not None else str(path)
  files = sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*")
                 if p.is_file() and _is_html_name(p.name))
  for rel, p in files:
    yield from iter_html_file(p, label=f"{prefix}:{rel}", failures=failures)


def iter_tar(path: str | os.PathLike, *, label: str | None = None,
             failures: collections.Counter | None = None) -> Iterator[tuple[str, str]]:
  """Streams the HTML members (``.html``, ``.htm``, optionally ``.gz``) of a tar archive.

  The archive is read with ``tarfile`` in streaming mode (``r|*``: plain, gzip, bz2 or xz),
  members in archive order. A corrupt member is counted and skipped; a corrupt archive (e.g.
  truncated) is counted as ``archive_error`` and ends this source, keeping what came before.

  Args:
    path: the archive.
    label: prefix of document ids (default: the path as given); ids are ``label:member/name``.
    failures: counter of failure reasons (see :func:`iter_html_file`, plus ``archive_error``).

  Yields:
    ``(doc_id, html)`` pairs.

  Raises:
    FileNotFoundError: the archive does not exist.
  """
  prefix = label if label is not None else str(path)
  with open(path, "rb") as f:
    try:
      with tarfile.open(fileobj=f, mode="r|*") as tf:
        for member in tf:
          if not member.isfile() or not _is_html_name(member.name):
            continue
          doc_id = f"{prefix}:{member.name}"
          extracted = tf.extractfile(member)
          if extracted is None:
            _fail(failures, "read_error", doc_id, "tar member has no data")
            continue
          data = extracted.read()
          html = _bytes_to_html(data, member.name, doc_id, failures)
          if html is not None:
            yield doc_id, html
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
      _fail(failures, "archive_error", prefix, e)


def iter_warc(path: str | os.PathLike, *, label: str | None = None,
              failures: collections.Counter | None = None) -> Iterator[tuple[str, str]]:
  """Yields the HTML pages of a WARC file (``.warc`` or ``.warc.gz``), read with ``warcio``.

  Only ``response`` records with an HTTP ``Content-Type`` of ``text/html`` or
  ``application/xhtml+xml`` are documents (others, e.g. images, robots.txt, DNS, requests and
  metadata, are not documents and are not counted). Responses with a non-2xx HTTP status are
  counted as ``http_status``. The body (de-chunked, content-decoded by warcio) is decoded with the
  charset of the HTTP header, falling back as in :func:`decode_html`.

  Args:
    path: the WARC file.
    label: prefix of document ids (default: the path as given); ids are ``label:target-URI``,
      with ``~k`` appended to the k-th (k >= 2) repeat of a URI.
    failures: counter of failure reasons (see :func:`iter_html_file`, plus ``http_status``,
      ``warc_record_error`` and ``archive_error``).

  Yields:
    ``(doc_id, html)`` pairs.

  Raises:
    FileNotFoundError: the file does not exist.
  """
  from warcio.archiveiterator import ArchiveIterator  # pylint: disable=g-import-not-at-top
  from warcio.exceptions import ArchiveLoadFailed  # pylint: disable=g-import-not-at-top

  prefix = label if label is not None else str(path)
  seen: collections.Counter = collections.Counter()
  with open(path, "rb") as f:
    try:
      for record in ArchiveIterator(f):
        if record.rec_type != "response" or record.http_headers is None:
          continue
        ctype = record.http_headers.get_header("Content-Type") or ""
        mime, _, params = ctype.partition(";")
        if mime.strip().lower() not in _HTML_MIME:
          continue
        uri = record.rec_headers.get_header("WARC-Target-URI") or "record"
        seen[uri] += 1
        doc_id = f"{prefix}:{uri}" + (f"~{seen[uri]}" if seen[uri] > 1 else "")
        status = record.http_headers.get_statuscode() or ""
        if not status.startswith("2"):
          _fail(failures, "http_status", doc_id, f"HTTP status {status!r}")
          continue
        m = re.search(r"charset\s*=\s*[\"']?([^\s;\"']+)", params, re.I)
        try:
          data = record.content_stream().read()
        except Exception as e:  # pylint: disable=broad-except  (warcio/zlib decode errors)
          _fail(failures, "warc_record_error", doc_id, e)
          continue
        html = _bytes_to_html(data, "", doc_id, failures, declared=m.group(1) if m else None)
        if html is not None:
          yield doc_id, html
    except (ArchiveLoadFailed, OSError, EOFError, zlib.error) as e:
      _fail(failures, "archive_error", prefix, e)


def iter_documents(path: str | os.PathLike, *, label: str | None = None,
                   failures: collections.Counter | None = None) -> Iterator[tuple[str, str]]:
  """Yields ``(doc_id, html)`` from any supported source, chosen by its type and file name.

  Directories -> :func:`iter_directory`; ``.warc``/``.warc.gz`` -> :func:`iter_warc`;
  ``.tar``/``.tar.gz``/``.tgz`` -> :func:`iter_tar`; ``.html``/``.htm`` (``.gz``) ->
  :func:`iter_html_file`.

  Args:
    path: the source.
    label: document-id prefix (default: the path as given).
    failures: counter of failure reasons of skipped documents.

  Yields:
    ``(doc_id, html)`` pairs, in a deterministic order.

  Raises:
    FileNotFoundError: ``path`` does not exist.
    ValueError: the file name has none of the supported suffixes.
  """
  p = pathlib.Path(path)
  if not p.exists():
    raise FileNotFoundError(str(p))
  name = p.name.lower()
  if p.is_dir():
    yield from iter_directory(p, label=label, failures=failures)
  elif name.endswith(_WARC_SUFFIXES):
    yield from iter_warc(p, label=label, failures=failures)
  elif name.endswith(_TAR_SUFFIXES):
    yield from iter_tar(p, label=label, failures=failures)
  elif name.endswith(_HTML_SUFFIXES):
    yield from iter_html_file(p, label=label, failures=failures)
  else:
    raise ValueError(f"unsupported web source {str(p)!r}: expected a directory or one of "
                     f"{_HTML_SUFFIXES + _TAR_SUFFIXES + _WARC_SUFFIXES}")


# ------------------------------------------------------------------------------------------------
# Extraction (trafilatura) and rendering of its XML
# ------------------------------------------------------------------------------------------------

_SPACES = re.compile(r"[^\S\n]+")  # whitespace except newlines
_HEAD_LEVEL = re.compile(r"h([1-6])$", re.I)
_EDIT_LINK = re.compile(r"\s*\[\s*edit(?: source)?\s*\]\s*$", re.I)  # MediaWiki "Title[edit]"


def _clean(text: str) -> str:
  """Collapses runs of spaces, strips each line, drops empty lines."""
  lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
  return "\n".join(line for line in lines if line)


def _inline_text(el: Any, skip: tuple[str, ...] = ()) -> str:
  """Text of an element and its descendants; ``<lb/>`` is a line break; ``skip`` tags omitted."""
  parts: list[str] = []

  def walk(e: Any) -> None:
    if e.text:
      parts.append(e.text)
    for c in e:
      if c.tag == "lb":
        parts.append("\n")
      elif c.tag not in skip:
        walk(c)
      if c.tail:
        parts.append(c.tail)

  walk(el)
  return _clean("".join(parts))


def _list_lines(el: Any, depth: int = 0) -> list[str]:
  """Lines of a trafilatura ``<list>``: ``- item`` (``1. item`` if ordered), nested indented."""
  ordered = (el.get("rend") or "").lower() == "ol"
  lines, k = [], 0
  for item in el:
    if item.tag != "item":
      text = _inline_text(item)
      if text:
        lines.append("  " * depth + text.replace("\n", " "))
      continue
    k += 1
    text = _inline_text(item, skip=("list",)).replace("\n", " ")
    if text:
      lines.append("  " * depth + (f"{k}. " if ordered else "- ") + text)
    for sub in item.iter("list"):
      if sub.getparent() is item:
        lines.extend(_list_lines(sub, depth + 1))
  return lines


def _table_lines(el: Any) -> list[str]:
  """Lines of a trafilatura ``<table>``: one per row, cells joined by `` | ``."""
  lines = []
  rows = [el] if el.tag == "row" else el.iter("row")
  for row in rows:
    cells = [_inline_text(c).replace("\n", " ") for c in row if c.tag == "cell"]
    cells = [c for c in cells if c]
    if cells:
      lines.append(" | ".join(cells))
  return lines


def _xml_blocks(el: Any, out: list[Block]) -> None:
  """Appends the blocks of the children of ``el`` (trafilatura ``<main>`` or a ``<div>``).

  Only ``<head>`` elements that are children of ``<main>`` (or of ``<div>`` containers in it) are
  headers; a ``<head>`` nested in a list item, table cell or quote is rendered as text.
  """
  if el.text and el.text.strip() and el.tag != "main":
    out.append(Block("text", 0, _clean(el.text)))
  for child in el:
    tag = child.tag
    if tag == "head":
      m = _HEAD_LEVEL.match(child.get("rend") or "")
      # trafilatura always sets rend="hN" for HTML h1-h6; a missing one is treated as the lowest.
      level = int(m.group(1)) if m else 6
      out.append(Block("head", level, _EDIT_LINK.sub("", _inline_text(child).replace("\n", " "))))
    elif tag == "div":
      _xml_blocks(child, out)
    else:
      if tag == "list":
        text = "\n".join(_list_lines(child))
      elif tag in ("table", "row"):
        text = "\n".join(_table_lines(child))
      elif tag == "code":
        raw = "".join(child.itertext())
        text = "\n".join(line.rstrip() for line in raw.split("\n")).strip("\n")
      else:  # p, quote, cell, graphic, ...
        text = _inline_text(child)
      if text.strip():
        out.append(Block("text", 0, text))
    if child.tail and child.tail.strip():
      out.append(Block("text", 0, _clean(child.tail)))


def extract_blocks(html: str, *, include_tables: bool = True, favor_precision: bool = False,
                   url: str | None = None) -> tuple[str | None, list[Block]] | None:
  """Main content of a page as header and text blocks, with trafilatura.

  Calls ``trafilatura.extract(html, output_format="xml", include_formatting=True,
  include_comments=False, include_images=False, include_links=False, with_metadata=True, ...)``:
  its XML keeps HTML ``<h1>``-``<h6>`` as ``<head rend="hN">`` and carries the page title in
  ``<doc title=...>``. Reader comments are excluded (not main content).

  Args:
    html: the page.
    include_tables: keep tables (trafilatura option).
    favor_precision: trafilatura's precision mode.
    url: the page URL, if known (helps trafilatura's metadata).

  Returns:
    ``(title, blocks)``; ``title`` is ``None`` when trafilatura found none. ``None`` when
    trafilatura extracts no main content.

  Raises:
    Whatever trafilatura or lxml raise on pathological input (callers count it as
    ``extraction_error``).
  """
  import trafilatura  # pylint: disable=g-import-not-at-top
  from lxml import etree  # pylint: disable=g-import-not-at-top

  xml = trafilatura.extract(
      html, url=url, output_format="xml", include_formatting=True, include_comments=False,
      include_images=False, include_links=False, include_tables=include_tables,
      with_metadata=True, favor_precision=favor_precision)
  if not xml:
    return None
  parser = etree.XMLParser(recover=True, huge_tree=True, remove_blank_text=False)
  doc = etree.fromstring(xml.encode("utf-8"), parser)
  if doc is None:
    return None
  main = doc.find("main")
  if main is None:
    return None
  blocks: list[Block] = []
  _xml_blocks(main, blocks)
  title = _clean(doc.get("title") or "").replace("\n", " ") or None
  return title, blocks


# ------------------------------------------------------------------------------------------------
# Segmentation
# ------------------------------------------------------------------------------------------------

BLOCK_SEPARATOR = "\n\n"  # between blocks of a segment's text (our choice)


def _same_text(a: str, b: str) -> bool:
  return " ".join(a.lower().split()) == " ".join(b.lower().split())


def segment_blocks(blocks: Iterable[Block], title: str | None = None,
                   title_as_h1: bool = True) -> list[Segment]:
  """Header-rooted segments of one document ([HB] §2.1).

  Each header roots a segment whose ``text`` is the blocks after it up to (excluding) the next
  header of the same or a higher level (``level <=`` its own), joined by
  :data:`BLOCK_SEPARATOR`; lower-level sub-headers and their text are included (each sub-header
  as a paragraph of its own), so segments nest. The header itself is not in ``text``. Text
  before the first header belongs to no segment.

  When ``title_as_h1`` and ``title`` are set and no block is a level-1 header, the title
  becomes a level-1 header before everything (so it covers the whole body, preamble included);
  if the first block already is a header with the title's text, that header is promoted to
  level 1 instead of being repeated (our choice; the paper does not say).

  Args:
    blocks: the document's blocks, in order (see :func:`extract_blocks`).
    title: page title, if any.
    title_as_h1: whether the title may stand in for a missing h1.

  Returns:
    One :class:`Segment` per header, in document order; ``index`` counts headers from 0.
  """
  blocks = list(blocks)
  if title_as_h1 and title and not any(b.kind == "head" and b.level == 1 for b in blocks):
    if blocks and blocks[0].kind == "head" and _same_text(blocks[0].text, title):
      blocks[0] = Block("head", 1, blocks[0].text)
    else:
      blocks.insert(0, Block("head", 1, title))
  segments = []
  for i, block in enumerate(blocks):
    if block.kind != "head":
      continue
    body = []
    for nxt in blocks[i + 1:]:
      if nxt.kind == "head" and nxt.level <= block.level:
        break
      body.append(nxt.text)
    text = BLOCK_SEPARATOR.join(t for t in body if t)
    segments.append(Segment(len(segments), block.text.strip(), block.level, text))
  return segments


# ------------------------------------------------------------------------------------------------
# Filters
# ------------------------------------------------------------------------------------------------

_SENTENCE = re.compile(r"\S.*?(?:[.!?\u2026][\"'\u201d\u2019)\]]*(?=\s)|$)")
_WORD = re.compile(r"\w+")


def split_sentences(text: str) -> list[str]:
  """Splits text into sentences: at line breaks, and after ``.``, ``!``, ``?`` or ``…``
  (optionally followed by closing quotes/brackets) followed by whitespace. Our choice; the paper
  does not say how it splits sentences.

  Args:
    text: segment text.

  Returns:
    Non-empty stripped sentences, in order.
  """
  out = []
  for line in text.split("\n"):
    out.extend(m.group().strip() for m in _SENTENCE.finditer(line))
  return out


def word_ngrams(sentence: str, n: int) -> set[tuple[str, ...]]:
  """Set of lower-cased word n-grams (words: ``\\w+`` runs) of one sentence; empty if shorter
  than ``n`` words."""
  words = _WORD.findall(sentence.lower())
  return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def max_sentence_jaccard(text: str, n: int = 3) -> float:
  """Largest word n-gram Jaccard similarity over all pairs of distinct sentence positions.

  Sentences with fewer than ``n`` words have no n-grams and take part in no pair (our choice:
  very short lines such as "Yes" or list bullets are not evidence of boilerplate repetition).

  Args:
    text: segment text (split with :func:`split_sentences`).
    n: n-gram order.

  Returns:
    The maximum Jaccard similarity in [0, 1]; 0.0 when fewer than two sentences have n-grams.
  """
  grams = [g for g in (word_ngrams(s, n) for s in split_sentences(text)) if g]
  best = 0.0
  for a, b in itertools.combinations(grams, 2):
    inter = len(a & b)
    if inter:
      best = max(best, inter / len(a | b))
      if best >= 1.0:
        break
  return best


def is_repetitive(text: str, n: int = 3, threshold: float = 0.5) -> bool:
  """Whether some pair of sentences has word n-gram Jaccard similarity ``>= threshold``.

  [HB] App. E filters "repetitive sentences" with n-gram Jaccard similarity; ``n`` and the
  threshold are not reported (our defaults: 3 and 0.5, see :class:`WebConfig`).
  """
  return max_sentence_jaccard(text, n) >= threshold


def english_scores(text: str) -> tuple[float, float]:
  """``(ascii_letter_frac, stopword_frac)`` of a text, for :func:`is_english`.

  ``ascii_letter_frac``: share of ASCII letters among all letters (``str.isalpha``);
  ``stopword_frac``: share of ``[a-z']+`` words (lower-cased) that are common English function
  words. Both are 0.0 for a text without letters/words.
  """
  letters = [c for c in text if c.isalpha()]
  ascii_frac = sum(c.isascii() for c in letters) / len(letters) if letters else 0.0
  words = re.findall(r"[a-z']+", text.lower())
  stop_frac = sum(w in _EN_STOPWORDS for w in words) / len(words) if words else 0.0
  return ascii_frac, stop_frac


def is_english(text: str, min_ascii_letter_frac: float = 0.9,
               min_stopword_frac: float = 0.2) -> bool:
  """A simple English-language heuristic (the paper's corpus is ClueWeb22 *English*).

  English iff at least ``min_ascii_letter_frac`` of the letters are ASCII (rejects CJK,
  Cyrillic, Greek, Arabic, ...) and at least ``min_stopword_frac`` of the words are common
  English function words (rejects other Latin-script languages). Thresholds: not reported; our
  choice (see :class:`WebConfig`).
  """
  ascii_frac, stop_frac = english_scores(text)
  return ascii_frac >= min_ascii_letter_frac and stop_frac >= min_stopword_frac


def _norm_header(header: str) -> str:
  """Lower-case letters and apostrophes only, single-spaced (digits/punctuation dropped)."""
  return " ".join(re.sub(r"[^a-z']+", " ", header.lower().replace("\u2019", "'")).split())


def is_navigation_header(header: str, blocklist: Iterable[str] = NAV_BLOCKLIST) -> bool:
  """Whether a header is navigation/boilerplate text ([HB] App. E; rule: our choice).

  Both sides are normalized to lower-case letters (digits and punctuation dropped, so
  "Comments (12)" is "comments"). A one-word phrase matches only the whole header ("Popular",
  "Popular:"), not "Popular culture in the 1990s"; a phrase of two or more words also matches as
  a prefix at a word boundary ("Related articles from Reuters", "Sign up for our newsletter").
  A trailing plural "s" is allowed ("Quick links").

  Args:
    header: the header text.
    blocklist: phrases.

  Returns:
    True if the header matches a phrase.
  """
  h = _norm_header(header)
  if not h:
    return False
  for phrase in blocklist:
    p = _norm_header(phrase)
    if not p:
      continue
    if h in (p, p + "s"):
      return True
    if " " in p and (h.startswith(p + " ") or h.startswith(p + "s ")):
      return True
  return False


def is_empty_header(header: str) -> bool:
  """Whether a header has no letter or digit (empty, whitespace, or only symbols like "•")."""
  return not any(c.isalnum() for c in header)


def is_uppercase_header(header: str) -> bool:
  """Whether a header is all upper-case ([HB] App. E): it has letters and every letter is an
  upper-case one, e.g. "LATEST NEWS", "FAQ" or "TL;DR", but not "NASA's new rocket" nor a
  Japanese header with an upper-case acronym (CJK letters are uncased: the non-English filter
  judges those)."""
  letters = [c for c in header if c.isalpha()]
  return bool(letters) and all(c.isupper() for c in letters)


def filter_reason(header: str, text: str, config: WebConfig) -> str | None:
  """The first filter of :data:`FILTERS` (except ``duplicate``) that drops a segment.

  Args:
    header: segment header.
    text: segment text (the header not included); its length is measured in characters.
    config: thresholds.

  Returns:
    ``"length"``, ``"empty_header"``, ``"uppercase_header"``, ``"nav_header"``,
    ``"non_english"``, ``"repetitive"``, or ``None`` if the segment passes.
  """
  if not config.min_chars <= len(text) <= config.max_chars:
    return "length"
  if is_empty_header(header):
    return "empty_header"
  if is_uppercase_header(header):
    return "uppercase_header"
  if is_navigation_header(header, config.nav_blocklist):
    return "nav_header"
  if not is_english(text, config.min_ascii_letter_frac, config.min_stopword_frac):
    return "non_english"
  if is_repetitive(text, config.ngram, config.jaccard_threshold):
    return "repetitive"
  return None


# ------------------------------------------------------------------------------------------------
# Build
# ------------------------------------------------------------------------------------------------


def _extract_job(job: tuple[str, str, bool, bool, bool]) -> tuple[str, Any]:
  """Worker: ``(doc_id, html, include_tables, favor_precision, title_as_h1)`` ->
  ``("ok", segments)``, ``("no_content", None)`` or ``("extraction_error", message)``."""
  doc_id, html, include_tables, favor_precision, title_as_h1 = job
  try:
    extracted = extract_blocks(html, include_tables=include_tables,
                               favor_precision=favor_precision)
  except Exception as e:  # pylint: disable=broad-except  (trafilatura/lxml on broken pages)
    return "extraction_error", f"{type(e).__name__}: {e}"
  if extracted is None:
    return "no_content", None
  title, blocks = extracted
  return "ok", segment_blocks(blocks, title, title_as_h1)


def segment_html(html: str, config: WebConfig | None = None) -> list[Segment]:
  """Extracts and segments one page (no filtering); see :func:`extract_blocks` and
  :func:`segment_blocks`.

  Args:
    html: the page.
    config: extraction options (default ``WebConfig()``).

  Returns:
    Segments in document order; empty if trafilatura finds no main content.

  Raises:
    Whatever trafilatura raises on pathological input.
  """
  config = config or WebConfig()
  extracted = extract_blocks(html, include_tables=config.include_tables,
                             favor_precision=config.favor_precision)
  if extracted is None:
    return []
  title, blocks = extracted
  return segment_blocks(blocks, title, config.title_as_h1)


def _documents(config: WebConfig, data_root: str | os.PathLike | None,
               failures: collections.Counter) -> Iterator[tuple[str, str, str]]:
  """``(source, doc_id, html)`` over all sources, at most ``config.max_documents``."""
  docs = ((src, doc_id, html) for src in config.sources
          for doc_id, html in iter_documents(paths.resolve(src, data_root), label=src,
                                             failures=failures))
  return itertools.islice(docs, config.max_documents)


def build_segments(config: WebConfig, data_root: str | os.PathLike | None = None,
                   progress: bool = False) -> tuple[list[dict], dict]:
  """Reads, extracts, segments and filters the web corpus ([HB] §2.1, App. E).

  Args:
    config: sources and filter settings.
    data_root: root for relative ``config.sources`` (default: ``paths.default_data_root()``).
    progress: show a ``tqdm`` progress bar over documents.

  Returns:
    ``(segments, stats)``. Segments, in source order, then document order, then header order:
    ``{"id": "<doc_id>#<header index>", "source", "doc_id", "header", "level", "text",
    "chars": len(text)}`` (characters). Stats: ``documents_read``, ``documents_failed``
    (reason -> count: ``gzip_error``, ``empty``, ``binary``, ``undecodable``, ``read_error``,
    ``http_status``, ``warc_record_error``, ``archive_error``, ``extraction_error``),
    ``documents_no_content`` (trafilatura found none), ``documents_no_headers`` (content but no
    header and no title), ``per_source`` (documents and kept segments), ``segments_before_filters``,
    ``dropped`` (filter -> count, each segment charged to its first failing filter, in
    :data:`FILTERS` order), ``kept``, ``chars_mean``/``chars_std``/``chars_min``/``chars_max`` of
    kept segments ([HB]: 1,722 ± 653 chars), ``stopped_early`` (``max_segments`` reached),
    ``wall_seconds``, and ``config``.

  Raises:
    FileNotFoundError: a source does not exist.
    ValueError: a source has an unsupported type.
  """
  t0 = time.perf_counter()
  for src in config.sources:  # fail fast, before any work
    if not paths.resolve(src, data_root).exists():
      raise FileNotFoundError(f"web source {src!r} not found at {paths.resolve(src, data_root)}")
  failures: collections.Counter = collections.Counter()
  dropped = {name: 0 for name in FILTERS}
  per_source = {src: {"documents": 0, "kept": 0} for src in config.sources}
  stats: dict[str, Any] = {"documents_read": 0, "documents_no_content": 0,
                           "documents_no_headers": 0, "segments_before_filters": 0}
  kept: list[dict] = []
  seen_text: set[bytes] = set()
  stopped_early = False

  docs = _documents(config, data_root, failures)
  bar = None
  if progress:
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm(desc="web documents", unit="doc", total=config.max_documents)
  opts = (config.include_tables, config.favor_precision, config.title_as_h1)
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
      for (src, doc_id, _), (status, payload) in zip(batch, results):
        stats["documents_read"] += 1
        per_source[src]["documents"] += 1
        if bar is not None:
          bar.update(1)
        if status == "extraction_error":
          _fail(failures, "extraction_error", doc_id, payload)
          continue
        if status == "no_content":
          stats["documents_no_content"] += 1
          continue
        if not payload:
          stats["documents_no_headers"] += 1
          continue
        for seg in payload:
          stats["segments_before_filters"] += 1
          reason = filter_reason(seg.header, seg.text, config)
          if reason is None:
            key = hashlib.sha1(seg.text.encode("utf-8")).digest()
            if key in seen_text:
              reason = "duplicate"
            seen_text.add(key)
          if reason is not None:
            dropped[reason] += 1
            continue
          kept.append({"id": f"{doc_id}#{seg.index}", "source": src, "doc_id": doc_id,
                       "header": seg.header, "level": seg.level, "text": seg.text,
                       "chars": len(seg.text)})
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

  chars = [s["chars"] for s in kept]
  mean = sum(chars) / len(chars) if chars else 0.0
  std = math.sqrt(sum((c - mean) ** 2 for c in chars) / len(chars)) if chars else 0.0
  stats.update({
      "documents_failed": dict(sorted(failures.items())),
      "documents_failed_total": sum(failures.values()),
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
  return kept, stats
