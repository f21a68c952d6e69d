"""Segment filters of :mod:`humpback_jax.data.web` ([HB] App. E): length, empty, upper-case and
navigation headers, an English heuristic and repetitive sentences; and the same filters on
whole documents (``WebConfig.unit="documents"``, [BF] §2 step 1), less the header ones.

All lengths are in characters (Python ``str`` code points).
"""

from __future__ import annotations

import hashlib
import itertools
import re
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
  from humpback_jax.data.web import WebConfig

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

# The filters of [HB] App. E (plus exact de-duplication across the corpus and, last, containment
# within a page: a kept segment whose text is a substring of another kept segment of the same
# document is dropped, the inner one, as nested headers make a child's text part of its
# parent's), in the order they are tried; the first that fails is charged.
FILTERS: tuple[str, ...] = (
    "length", "empty_header", "uppercase_header", "nav_header", "non_english", "repetitive",
    "duplicate", "contained",
)

# The filters that apply to whole documents (``WebConfig.unit="documents"``), in order; the
# other names of FILTERS keep a zero count in document mode (see document_filter_reason).
DOCUMENT_FILTERS: tuple[str, ...] = ("length", "non_english", "repetitive", "duplicate")

# English function words for the language heuristic (our choice: the 60 most frequent English
# words that are function words; standard lists such as NLTK's start the same way).
_EN_STOPWORDS: frozenset[str] = frozenset("""
a about after all also an and any are as at be because been but by can could did do does for
from had has have he her his how i if in into is it its just like more my no not of on one or
our out so some such than that the their them then there these they this to up was we were what
when which who will with would you your
""".split())


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
  """The first filter of :data:`FILTERS` (except ``duplicate`` and ``contained``, which need
  the other segments) that drops a segment.

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


def _seen_before(text: str, seen_text: set[bytes]) -> bool:
  """Whether ``text`` was seen (SHA-1 of its UTF-8 bytes in ``seen_text``); adds it."""
  key = hashlib.sha1(text.encode("utf-8")).digest()
  seen = key in seen_text
  seen_text.add(key)
  return seen


def decide_segments(segments: list, config: WebConfig, seen_text: set[bytes]) -> list[str | None]:
  """Drop reason (or ``None``: kept) of each segment of one document, in :data:`FILTERS` order:
  :func:`filter_reason`, then ``duplicate`` (same text already seen in the corpus; SHA-1 of the
  text added to ``seen_text``), then ``contained`` (text is a substring of another, longer,
  otherwise kept segment of the same document: the inner segment is dropped, the outer kept).

  Args:
    segments: the document's segments (``header`` and ``text`` attributes), in order.
    config: thresholds (:class:`~humpback_jax.data.web.WebConfig`).
    seen_text: digests of texts seen so far; updated.

  Returns:
    One reason or ``None`` per segment.
  """
  reasons = []
  for seg in segments:
    reason = filter_reason(seg.header, seg.text, config)
    if reason is None and _seen_before(seg.text, seen_text):
      reason = "duplicate"
    reasons.append(reason)
  candidates = [i for i, r in enumerate(reasons) if r is None]
  for i in candidates:
    text = segments[i].text
    if any(len(segments[j].text) > len(text) and text in segments[j].text for j in candidates):
      reasons[i] = "contained"
  return reasons


def document_filter_reason(text: str, config: WebConfig) -> str | None:
  """The first filter of :data:`FILTERS` that drops a whole document (document mode, [BF] §2
  step 1: "as [HB] but over whole cleaned documents"), except ``duplicate``.

  Only the filters that judge the text apply: ``length`` (with the document bounds
  ``config.doc_min_chars``/``config.doc_max_chars``, not the segment ones), ``non_english`` and
  ``repetitive`` (the same heuristics and thresholds as for segments). The header filters
  (``empty_header``, ``uppercase_header``, ``nav_header``) judge the header that roots a
  segment; a document has none (its ``header`` is the page title, metadata that the backward
  model never sees), so they never fire; nor does ``contained`` (one record per page).

  Args:
    text: the document's main text; its length is measured in characters.
    config: thresholds (:class:`~humpback_jax.data.web.WebConfig`).

  Returns:
    ``"length"``, ``"non_english"``, ``"repetitive"``, or ``None`` if the document passes.
  """
  n = len(text)
  if n < config.doc_min_chars or (config.doc_max_chars is not None and n > config.doc_max_chars):
    return "length"
  if not is_english(text, config.min_ascii_letter_frac, config.min_stopword_frac):
    return "non_english"
  if is_repetitive(text, config.ngram, config.jaccard_threshold):
    return "repetitive"
  return None


def decide_document(text: str, config: WebConfig, seen_text: set[bytes]) -> str | None:
  """Drop reason (or ``None``: kept) of one whole document: :func:`document_filter_reason`,
  then ``duplicate`` (the same text already seen in the corpus; its SHA-1 is added to
  ``seen_text`` only when it passed the other filters, as for segments).

  Args:
    text: the document's main text.
    config: thresholds.
    seen_text: digests of texts seen so far; updated.

  Returns:
    The first failing filter's name, or ``None``.
  """
  reason = document_filter_reason(text, config)
  if reason is None and _seen_before(text, seen_text):
    reason = "duplicate"
  return reason
