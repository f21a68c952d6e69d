"""Document mode of the web corpus (``WebConfig.unit="documents"``, [BF] §2 step 1: "as [HB]
but over whole cleaned documents ..., no header segmentation"): one page -> one record.

Reading, decoding and extraction are those of segment mode (``web.build_segments``); instead
of header segmentation each page with main content becomes one record whose text is
trafilatura's whole main text (``web_extract.document_text``: every block, headers included, no
title added), judged by the filters that look at the text (``web_filters.decide_document``:
``length`` with the document bounds ``doc_min_chars`` / ``doc_max_chars``, ``non_english``,
``repetitive``, then ``duplicate``); the header filters and ``contained`` do not apply. [BF]'s
other cut, documents whose backward prompt exceeds the context limit (~25% dropped), needs the
tokenizer and the prompt, so it is a separate step: ``documents.drop_over_context``.

This module holds what is particular to whole documents: the record id suffix, one-page
extraction (:func:`document_html`) and the judging of one extracted page
(:func:`judge_document`); ``web.py`` re-exports its names and drives it.
"""

from __future__ import annotations

from humpback_jax.data.web_config import WebConfig
from humpback_jax.data.web_extract import cap_html_depth, document_text, extract_blocks
from humpback_jax.data.web_filters import decide_document

# Document-mode ids are ``<doc_id>#doc``: stable (the reader's document id) and never equal to a
# segment id ``<doc_id>#<n>``, which ends in digits.
DOCUMENT_ID_SUFFIX = "#doc"


def document_html(html: str, config: WebConfig | None = None) -> tuple[str | None, str] | None:
  """Extracts one page as a whole document (no filtering); see ``extract_blocks`` and
  ``document_text``. Pages deeper than ``web_extract.MAX_HTML_DEPTH`` elements are flattened
  first.

  Args:
    html: the page.
    config: extraction options (default ``WebConfig()``; ``unit`` is not read).

  Returns:
    ``(title, text)`` (``title`` ``None`` when trafilatura found none), or ``None`` if
    trafilatura finds no main content.

  Raises:
    Whatever trafilatura raises on pathological input.
  """
  config = config or WebConfig()
  extracted = extract_blocks(cap_html_depth(html)[0], include_tables=config.include_tables,
                             favor_precision=config.favor_precision)
  if extracted is None:
    return None
  title, blocks = extracted
  text = document_text(blocks)
  return (title, text) if text else None


def judge_document(src: str, doc_id: str, title: str | None, text: str, config: WebConfig,
                   seen_text: set[bytes]) -> tuple[str | None, dict | None]:
  """Filters one extracted page and builds its record.

  Args:
    src: the source the page was read from (as in ``WebConfig.sources``).
    doc_id: the reader's document id.
    title: the page title (``None`` when trafilatura found none).
    text: the page's whole main text (non-empty).
    config: filter settings.
    seen_text: hashes of the texts kept so far; a kept text's hash is added
      (``web_filters.decide_document``).

  Returns:
    ``(reason, record)``: the first failing filter of ``DOCUMENT_FILTERS`` and ``None``, or
    ``None`` and the record ``{"id": "<doc_id>#doc", "source", "doc_id", "header": title,
    "level": 0, "text", "chars": len(text)}``.
  """
  reason = decide_document(text, config, seen_text)
  if reason is not None:
    return reason, None
  return None, {"id": doc_id + DOCUMENT_ID_SUFFIX, "source": src, "doc_id": doc_id,
                "header": title, "level": 0, "text": text, "chars": len(text)}
