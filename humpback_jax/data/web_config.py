"""Configuration of the web corpus build (:func:`humpback_jax.data.web.build_segments`):
:class:`WebConfig`, the values of its ``unit`` field and its default sources.

Kept apart from ``web.py`` so that the filter and document modules can use the configuration
without importing the build; ``web.py`` re-exports every name here.
"""

from __future__ import annotations

import dataclasses
import os

from humpback_jax.data.web_filters import NAV_BLOCKLIST

# Values of ``WebConfig.unit``: header segments ([HB]) or whole documents ([BF]).
UNITS: tuple[str, ...] = ("segments", "documents")

# The four real inputs of ``../shared/data/web`` (see its README), relative to the data root.
DEFAULT_SOURCES: tuple[str, ...] = (
    "web/scrapinghub_aeb_181_news_html.tar",
    "web/postlight_parser_fixtures_171.tar.gz",
    "web/trafilatura_tests_en_178_pages.tar.gz",
    "web/warc/ukwa_IAH_blackbook_truncated.warc.gz",
)


@dataclasses.dataclass(frozen=True)
class WebConfig:
  """Configuration of :func:`humpback_jax.data.web.build_segments`.

  Attributes:
    unit: what one record is: ``"segments"`` (header-rooted segments, [HB] §2.1; the default)
      or ``"documents"`` (the whole main text of each page, [BF] §2 step 1; see the docstrings
      of ``web`` and ``web_documents``). The segment-only fields (``min_chars``, ``max_chars``,
      ``nav_blocklist``, ``title_as_h1``) do not apply to documents, the ``doc_*`` fields only
      to documents.
    sources: inputs, relative to the data root (absolute paths are used as given): directories,
      ``.html``/``.htm``(``.gz``) files, ``.tar``/``.tar.gz``/``.tgz`` archives, ``.warc``(``.gz``)
      files. Defaults to the four real files of ``web/`` (data README).
    min_chars: shortest kept segment text, characters ([HB] App. E: 600).
    max_chars: longest kept segment text, characters ([HB] App. E: 3,000).
    doc_min_chars: shortest kept document text, characters, document mode ([BF]: not reported;
      our choice: 600, [HB]'s segment minimum, so that no document is shorter than the
      shortest [HB] response).
    doc_max_chars: longest kept document text, characters, document mode (``None``: no limit).
      [BF] has no character bound: its upper cut is the backward model's context (see
      ``documents.drop_over_context``, in tokens). Our choice: 100,000, a guard only, far above
      any prompt budget of this project (a 4,096-token LLaMA-2 context holds ~16K characters of
      English), which keeps the quadratic repetition filter bounded on pathological pages.
    ngram: word n-gram order of the repetitive-sentence filter (not reported; our choice: 3).
    jaccard_threshold: a segment is repetitive if any two of its sentences have n-gram Jaccard
      similarity >= this (not reported; our choice: 0.5, i.e. half of the distinct n-grams of
      the pair shared).
    nav_blocklist: navigation/boilerplate header phrases ([HB] App. E examples + our list).
    max_segments: stop once this many records (segments, or documents in document mode) are
      kept (``None``: no limit).
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
    max_document_bytes: larger documents (bytes, after gunzip; ``None``: no limit) are not read
      and fail as ``too_large`` (our choice: 10 MiB = 10,485,760 bytes; the largest page of
      ``web/`` is far smaller, and trafilatura's time grows with page size).
  """

  sources: tuple[str, ...] = DEFAULT_SOURCES
  # Fields added after runs exist carry ``{"fingerprint": "if_set"}`` (pipeline.fingerprints.
  # IF_SET): at their defaults they leave a run's fingerprints unchanged.
  unit: str = dataclasses.field(default="segments", metadata={"fingerprint": "if_set"})
  min_chars: int = 600
  max_chars: int = 3000
  doc_min_chars: int = dataclasses.field(default=600, metadata={"fingerprint": "if_set"})
  doc_max_chars: int | None = dataclasses.field(default=100_000,
                                                metadata={"fingerprint": "if_set"})
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
  max_document_bytes: int | None = 10 * 1024 * 1024

  def __post_init__(self):
    if isinstance(self.sources, (str, os.PathLike)):
      raise TypeError("WebConfig.sources must be a tuple of paths, not one path")
    object.__setattr__(self, "sources", tuple(str(s) for s in self.sources))
    object.__setattr__(self, "nav_blocklist", tuple(self.nav_blocklist))
    if self.unit not in UNITS:
      raise ValueError(f"WebConfig.unit must be one of {UNITS}, got {self.unit!r}")
    if self.doc_min_chars < 0 or (self.doc_max_chars is not None
                                  and self.doc_max_chars < self.doc_min_chars):
      raise ValueError("need 0 <= doc_min_chars <= doc_max_chars (or doc_max_chars None), got "
                       f"{self.doc_min_chars}, {self.doc_max_chars}")
    if not 0 <= self.min_chars <= self.max_chars:
      raise ValueError(f"need 0 <= min_chars <= max_chars, got {self.min_chars}, {self.max_chars}")
    if self.ngram < 1:
      raise ValueError(f"ngram must be >= 1, got {self.ngram}")
    if not 0.0 < self.jaccard_threshold <= 1.0:
      raise ValueError(f"jaccard_threshold must be in (0, 1], got {self.jaccard_threshold}")
    if self.num_workers < 1:
      raise ValueError(f"num_workers must be >= 1, got {self.num_workers}")
    if self.max_document_bytes is not None and self.max_document_bytes < 1:
      raise ValueError(f"max_document_bytes must be >= 1 or None, got {self.max_document_bytes}")
