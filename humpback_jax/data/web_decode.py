"""Bytes -> text for web pages: charset detection of :mod:`humpback_jax.data.web`.

Decoding order (WHATWG-like, see :func:`decode_html_ex`): a byte-order mark; UTF-16 without a
BOM (sniffed from the NUL-byte pattern); the transport label (HTTP ``Content-Type`` charset); a
``<meta charset>``/``http-equiv`` label in the head; then the unlabelled fallbacks UTF-8
(strict), windows-1252 (strict, only when the result looks like Western text) and finally the
guess of ``charset_normalizer``.
"""

from __future__ import annotations

import codecs
import re
from typing import NamedTuple


class UndecodableError(ValueError):
  """Raised by :func:`decode_html` when bytes are not decodable text; ``reason`` names why."""

  def __init__(self, reason: str, message: str):
    super().__init__(message)
    self.reason = reason


class Decoded(NamedTuple):
  """Result of :func:`decode_html_ex`.

  ``method`` is how the charset was chosen: ``"bom"``, ``"http_charset"``, ``"meta_charset"``
  (labelled) or one of the unlabelled fallbacks of :data:`GUESS_METHODS`. ``lossy``: the label
  was used although some bytes were invalid for it (replaced by U+FFFD).
  """

  text: str
  method: str
  lossy: bool = False


# Unlabelled fallbacks, in the order tried (counted as ``documents_decoded_by_guess``).
GUESS_METHODS: tuple[str, ...] = ("utf-16-sniffed", "utf-8", "cp1252", "charset_normalizer")

_META_CHARSET = re.compile(
    r"""<meta[^>]{0,200}?charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)
_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF32_LE, "utf-32"),
         (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF16_LE, "utf-16"),
         (codecs.BOM_UTF16_BE, "utf-16"))
# WHATWG: these labels mean windows-1252 in HTML; servers often send them for UTF-8 pages.
_LATIN1_LABELS = frozenset({"latin-1", "iso8859-1", "ascii", "cp1252"})
# WHATWG: a UTF-16/32 label on bytes that are not UTF-16 (no NUL pattern) is ignored.
_WIDE = ("utf-16", "utf-32")
_HEAD_BYTES = 4096  # bytes searched for a <meta charset> and sniffed for UTF-16
_MAX_LOSSY = 0.01  # a label is still used when at most this share of characters is invalid
_NON_ASCII_RUN = re.compile(r"[^\x00-\x7f]+")


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


def _sniff_utf16(data: bytes) -> str | None:
  """``"utf-16-le"``/``"utf-16-be"`` when the head has a NUL in every other byte (ASCII
  markup in UTF-16 without a BOM), else ``None``."""
  head = data[:_HEAD_BYTES]
  pairs = len(head) // 2
  if pairs < 4:
    return None
  odd, even = head[1::2].count(0), head[0::2].count(0)
  if odd >= 0.5 * pairs and even <= 0.05 * pairs:
    return "utf-16-le"
  if even >= 0.5 * pairs and odd <= 0.05 * pairs:
    return "utf-16-be"
  return None


def _looks_western(text: str) -> bool:
  """Whether cp1252-decoded text looks like a Western page rather than mojibake of a multi-byte
  or Cyrillic charset: at most half of its non-ASCII characters stand in runs of 3 or more
  (accented Latin words have isolated accents, "ação" two; CJK or KOI8-R read as cp1252 gives
  long runs). Our heuristic."""
  runs = [len(m.group()) for m in _NON_ASCII_RUN.finditer(text)]
  total = sum(runs)
  return total < 8 or sum(r for r in runs if r >= 3) <= 0.5 * total


def _lossy(data: bytes, enc: str) -> str | None:
  """``data`` decoded with replacement if at most ``_MAX_LOSSY`` of the characters are bad."""
  try:
    text = data.decode(enc, errors="replace")
  except LookupError:
    return None
  bad = text.count("\ufffd")
  return text if bad <= _MAX_LOSSY * max(1, len(text)) else None


def decode_html_ex(data: bytes, declared: str | None = None) -> Decoded:
  """Decodes HTML bytes to text, saying how the charset was chosen.

  Order: (1) a byte-order mark (UTF-8/16/32); (2) UTF-16 LE/BE without a BOM, recognised by a
  NUL in every other byte of the first 4,096 bytes (method ``"meta_charset"`` if the decoded
  head has a ``<meta charset>``, else ``"utf-16-sniffed"``); (3) the transport label
  ``declared`` (HTTP ``Content-Type`` charset), then (4) a ``<meta charset>``/``http-equiv``
  label in the first 4,096 bytes, each strictly; a Latin-1/ASCII/cp1252 label on valid UTF-8
  bytes means UTF-8 (a common server mislabel), else windows-1252, else Latin-1; UTF-16/32
  labels on bytes without the UTF-16 NUL pattern are ignored (WHATWG); a label whose strict
  decoding fails is still used when at most 1% of the characters are invalid (``lossy``);
  (5) unlabelled: UTF-8 (strict); (6) windows-1252 (strict; the WHATWG default for Western
  pages; it fails on the undefined bytes 0x81, 0x8D, 0x8F, 0x90, 0x9D, and is also rejected when
  the result looks like mojibake of a multi-byte or Cyrillic charset, see
  :func:`_looks_western`); (7) the best guess of ``charset_normalizer``.

  Args:
    data: raw bytes of one document.
    declared: charset label from the transport (e.g. the HTTP header), if any.

  Returns:
    A :class:`Decoded` ``(text, method, lossy)``.

  Raises:
    UndecodableError: reason ``"empty"`` (no non-whitespace bytes), ``"binary"`` (NUL bytes in
      neither a UTF-16/32 BOM nor the UTF-16 pattern: not text) or ``"undecodable"`` (no
      candidate decodes it).
  """
  if not data.strip():
    raise UndecodableError("empty", "document is empty (no non-whitespace bytes)")
  for bom, enc in _BOMS:
    if data.startswith(bom):
      try:
        return Decoded(data.decode(enc), "bom")
      except UnicodeDecodeError as e:
        raise UndecodableError("undecodable", f"bad {enc} after its BOM: {e}") from e
  wide = _sniff_utf16(data)
  if wide is not None:
    try:
      text = data.decode(wide)
    except UnicodeDecodeError:
      text = _lossy(data, wide)
      if text is None:
        raise UndecodableError("undecodable", f"bytes look like {wide} but do not decode")
      lossy = True
    else:
      lossy = False
    meta = _META_CHARSET.search(text[:_HEAD_BYTES])
    return Decoded(text, "meta_charset" if meta else "utf-16-sniffed", lossy)
  if b"\x00" in data[:65536]:
    raise UndecodableError("binary", "NUL bytes in a document without a UTF-16/32 BOM or pattern")
  m = _META_CHARSET.search(data[:_HEAD_BYTES].decode("ascii", "replace"))
  labels = [("http_charset", _codec(declared)), ("meta_charset", _codec(m.group(1) if m else None))]
  labels = [(how, enc) for how, enc in labels if enc and not enc.startswith(_WIDE)]
  for how, enc in labels:
    if enc in _LATIN1_LABELS:
      for alt in ("utf-8", "cp1252", "latin-1"):
        try:
          return Decoded(data.decode(alt), how)
        except UnicodeDecodeError:
          continue
    try:
      return Decoded(data.decode(enc), how)
    except (UnicodeDecodeError, LookupError):
      continue
  for how, enc in labels:
    text = _lossy(data, enc)
    if text is not None:
      return Decoded(text, how, True)
  try:
    return Decoded(data.decode("utf-8"), "utf-8")
  except UnicodeDecodeError:
    pass
  try:
    text = data.decode("cp1252")
    if _looks_western(text):
      return Decoded(text, "cp1252")
  except UnicodeDecodeError:
    pass
  import charset_normalizer  # pylint: disable=g-import-not-at-top
  best = charset_normalizer.from_bytes(data).best()
  if best is None:
    raise UndecodableError(
        "undecodable", f"no charset decodes it (labels {[e for _, e in labels]}, utf-8, cp1252, "
        "charset_normalizer)")
  return Decoded(str(best), "charset_normalizer")


def decode_html(data: bytes, declared: str | None = None) -> str:
  """The text of :func:`decode_html_ex` (same order, same errors)."""
  return decode_html_ex(data, declared).text
