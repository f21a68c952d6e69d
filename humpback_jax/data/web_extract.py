"""Main-content extraction (trafilatura), header-rooted segmentation ([HB] §2.1) and whole
document text ([BF] §2 step 1) of :mod:`humpback_jax.data.web`.

Text layout (our choice; the paper does not describe it): blocks (paragraphs, lists, tables,
quotes, code, sub-headers) are joined by a blank line (``"\\n\\n"``); list items are lines
``"- item"`` (``"1. item"`` in ordered lists), table rows are lines of cells joined by ``" | "``.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, NamedTuple


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


def document_text(blocks: Iterable[Block]) -> str:
  """The whole main text of a document, for ``WebConfig.unit="documents"`` ([BF] §2 step 1).

  Every block in order, headers included (each header as a paragraph of its own, as sub-headers
  are inside a segment), joined by :data:`BLOCK_SEPARATOR`, as in a segment's text; blank
  blocks are left out. No header segmentation and no title: the page title is not added (it
  goes to the record's ``header``), but a header of the body that repeats it stays, being part
  of the page's text.

  Args:
    blocks: the document's blocks, in order (see :func:`extract_blocks`).

  Returns:
    The text (characters); empty when no block has text.
  """
  return BLOCK_SEPARATOR.join(b.text for b in blocks if b.text.strip())


# ------------------------------------------------------------------------------------------------
# Pathologically deep pages
# ------------------------------------------------------------------------------------------------

# Deepest element nesting handed to trafilatura: lxml (libxml2) and so trafilatura drop the whole
# content of a page nested 254 or more elements deep; we keep a margin (our choice).
MAX_HTML_DEPTH = 200

_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9:-]*)[^>]*>")
_VOID = frozenset("area base br col embed hr img input keygen link meta param source track wbr"
                  .split())
_RAWTEXT = frozenset(("script", "style", "textarea", "title", "xmp", "noscript"))
_SELF_CLOSING = frozenset(("p", "li", "td", "th", "tr", "option", "dt", "dd"))
_BLOCK = frozenset("address article aside blockquote dd div dl dt fieldset figure footer form h1 "
                   "h2 h3 h4 h5 h6 header hr li main nav ol p pre section table td th tr ul"
                   .split())
_HEADS = frozenset(("h1", "h2", "h3", "h4", "h5", "h6"))


def cap_html_depth(html: str, max_depth: int = MAX_HTML_DEPTH) -> tuple[str, bool]:
  """Flattens a page nested deeper than ``max_depth`` elements, keeping all of its text.

  A linear scan of the tags (an approximate HTML tree: void elements and the implied end of an
  open ``p``/``li``/``td``/``tr``/... are handled; ``script``/``style`` contents are skipped)
  removes every start and end tag opened deeper than ``max_depth`` (a block tag becomes a line
  break), except a header (``h1``-``h6``) when no header is open, so deep headers still root
  segments. Pages within the limit are returned unchanged. Linear time; 10,000 levels take
  milliseconds.

  Args:
    html: the page.
    max_depth: deepest nesting kept, in elements.

  Returns:
    ``(html, capped)``: ``capped`` is True when the page was deeper than ``max_depth``.
  """
  if html.count("<") <= max_depth:
    return html, False
  stack: list[list] = []  # [name, dropped]
  open_count: dict[str, int] = {}
  drops: list[tuple[int, int, str]] = []
  heads_open = 0
  pos, n = 0, len(html)
  while pos < n:
    m = _TAG.search(html, pos)
    if m is None:
      break
    pos = m.end()
    closing, name = m.group(1), m.group(2).lower()
    if closing:
      if not open_count.get(name):
        continue  # stray end tag
      i = len(stack) - 1
      while stack[i][0] != name:
        i -= 1
      if stack[i][1]:
        drops.append((m.start(), m.end(), "\n" if name in _BLOCK else ""))
      for entry in stack[i:]:
        open_count[entry[0]] -= 1
        heads_open -= entry[0] in _HEADS
      del stack[i:]
      continue
    if name in _VOID or m.group().endswith("/>"):
      continue
    if stack and ((name in _SELF_CLOSING and stack[-1][0] == name)
                  or (name in _BLOCK and stack[-1][0] == "p")):
      top = stack.pop()
      open_count[top[0]] -= 1
    dropped = len(stack) >= max_depth and not (name in _HEADS and not heads_open)
    if dropped:
      drops.append((m.start(), m.end(), "\n" if name in _BLOCK else ""))
    stack.append([name, dropped])
    open_count[name] = open_count.get(name, 0) + 1
    heads_open += name in _HEADS
    if name in _RAWTEXT:
      end = re.compile(f"</{name}", re.I).search(html, pos)  # re caches compiled patterns
      pos = end.start() if end else n
  if not drops:
    return html, False
  out, last = [], 0
  for start, end, repl in drops:
    out.append(html[last:start])
    out.append(repl)
    last = end
  out.append(html[last:])
  return "".join(out), True
