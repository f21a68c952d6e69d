"""Verb-noun structure of instructions ([HB] Figure 4).

* ``extract_verb_noun``: the root verb and its direct noun object of a parsed text's first
  sentence (the rule of Self-Instruct's instruction-diversity chart, which [HB] Figure 4
  follows).
* ``verb_noun``: counts of those verbs and (verb, noun) pairs over a set of instructions, the
  two-ring view of [HB] Figure 4.

The parse is spaCy's ``en_core_web_sm`` by default (optional: without it ``verb_noun`` says how
to install it) or any spaCy pipeline passed as ``nlp``. Re-exported by ``eval/analyses.py``.
"""

from __future__ import annotations

import collections
import functools
from typing import Any, Callable, Sequence

# Direct-object dependency labels: ClearNLP style (spaCy's English models) and Universal
# Dependencies (spaCy's UD-trained models).
_DOBJ = ("dobj", "obj")
_NOUN_POS = ("NOUN", "PROPN")

SPACY_MODEL = "en_core_web_sm"
_SPACY_INSTALL = (f"install it with `python -m spacy download {SPACY_MODEL}` (needs internet), "
                  "or `pip install` its wheel from "
                  "https://github.com/explosion/spacy-models/releases, then rerun; or pass "
                  "`nlp=` any spaCy pipeline with a tagger, lemmatizer and dependency parser")


def _lemma(token) -> str:
  return (token.lemma_ or token.text).lower()


def extract_verb_noun(doc) -> tuple[str | None, str | None]:
  """The root verb and its direct noun object of a parsed text's first sentence.

  The verb is the sentence's root if its coarse POS is ``VERB``, else the ``VERB`` nearest to
  the root in the dependency tree (breadth-first, ties broken by word order): the rule of
  Self-Instruct's chart that [HB] Figure 4 follows ("the verb closest to the root and its first
  direct noun object"). Auxiliaries (``AUX``: "is", "can") do not count as verbs, so "What is
  X?" has none. The noun is the verb's first child (word order) whose dependency label is a
  direct object (``dobj``, or ``obj`` in Universal Dependencies) and whose POS is ``NOUN`` or
  ``PROPN`` (a pronoun object, "do it", gives no noun). Both are lowercased lemmas (the text if
  the pipeline has no lemmatizer).

  Args:
    doc: a ``spacy.tokens.Doc`` with a dependency parse (``doc.has_annotation("DEP")``).

  Returns:
    ``(verb, noun)``; ``(None, None)`` without a verb; ``(verb, None)`` without a noun object.
  """
  if len(doc) == 0:
    return None, None
  sent = next(iter(doc.sents))
  queue = collections.deque([sent.root])
  verb = None
  while queue:
    tok = queue.popleft()
    if tok.pos_ == "VERB":
      verb = tok
      break
    queue.extend(sorted(tok.children, key=lambda t: t.i))
  if verb is None:
    return None, None
  for child in sorted(verb.children, key=lambda t: t.i):
    if child.dep_ in _DOBJ and child.pos_ in _NOUN_POS:
      return _lemma(verb), _lemma(child)
  return _lemma(verb), None


@functools.lru_cache(maxsize=1)
def _default_nlp() -> tuple[Any, str | None]:
  """``(spacy.load(SPACY_MODEL) without NER, None)``, or ``(None, reason)``; loaded once."""
  try:
    import spacy  # pylint: disable=g-import-not-at-top
  except Exception as e:  # pylint: disable=broad-except
    return None, f"spaCy is not importable ({type(e).__name__}: {e}); {_SPACY_INSTALL}"
  try:
    return spacy.load(SPACY_MODEL, exclude=["ner"]), None
  except Exception as e:  # pylint: disable=broad-except  (OSError E050: model not installed)
    return None, (f"the spaCy English model {SPACY_MODEL!r} is not installed "
                  f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); {_SPACY_INSTALL}")


def _unavailable(reason: str) -> dict:
  return {"available": False, "reason": reason, "parsed": 0, "with_verb": 0, "with_pair": 0,
          "top_pairs": [], "top_verbs": [], "nouns_by_verb": {}}


def _top(counter: collections.Counter, k: int) -> list:
  """The ``k`` most common keys, ties broken by key (deterministic)."""
  return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:k]


def verb_noun(instructions: Sequence[str], nlp: Callable | None = None, top: int = 20, *,
              nouns_per_verb: int = 4, max_chars: int = 1000,
              batch_size: int = 256) -> dict:
  """Root verb - direct object statistics of instructions ([HB] Figure 4).

  Each instruction (its first ``max_chars`` characters: only the first sentence is read) is
  parsed by ``nlp`` and reduced to ``extract_verb_noun``'s (verb, noun). [HB] Figure 4 shows
  the most common root verbs (inner ring) and their most common noun objects (outer ring) of
  the seed and the augmented data; ``nouns_by_verb`` holds that two-ring view
  (``nouns_per_verb`` = 4 as in Self-Instruct's chart, which [HB] follows; a choice).

  Never raises for a missing model: ``nlp=None`` loads spaCy's ``en_core_web_sm``; if it is
  not installed (it is not on PyPI; it needs ``python -m spacy download en_core_web_sm``, which
  needs internet) the result says so with ``available: False``.

  Args:
    instructions: instruction strings.
    nlp: a callable ``text -> spacy.tokens.Doc`` with POS tags, lemmas and a dependency parse
      (a spaCy ``Language``; its ``pipe`` is used when it has one), or None for
      ``en_core_web_sm``.
    top: how many verbs / pairs to return.
    nouns_per_verb: nouns kept per verb in ``nouns_by_verb``.
    max_chars: characters of each instruction given to the parser.
    batch_size: ``nlp.pipe`` batch size (texts).

  Returns:
    With a parser: ``{"available": True, "parsed": texts parsed, "with_verb": texts with a
    verb, "with_pair": texts with a verb and a noun object, "top_pairs": [[verb, noun, count],
    ...] (most common first), "top_verbs": [[verb, count], ...], "nouns_by_verb": {verb:
    [[noun, count], ...]} for the top verbs}``. Without one: the same keys, zero / empty, with
    ``"available": False`` and ``"reason"`` (what failed and how to install the model).
  """
  if nlp is None:
    nlp, reason = _default_nlp()
    if nlp is None:
      return _unavailable(reason)
  texts = [t[:max_chars] for t in instructions]
  docs = nlp.pipe(texts, batch_size=batch_size) if hasattr(nlp, "pipe") else map(nlp, texts)
  verbs, pairs = collections.Counter(), collections.Counter()
  parsed = 0
  for doc in docs:
    if len(doc) and not doc.has_annotation("DEP"):
      return _unavailable("the spaCy pipeline given has no dependency parser (no DEP "
                          f"annotation); {_SPACY_INSTALL}")
    parsed += 1
    verb, noun = extract_verb_noun(doc)
    if verb is not None:
      verbs[verb] += 1
      if noun is not None:
        pairs[(verb, noun)] += 1
  top_verbs = _top(verbs, top)
  by_verb: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  for (v, n), c in pairs.items():
    by_verb[v][n] += c
  return {"available": True, "parsed": parsed, "with_verb": sum(verbs.values()),
          "with_pair": sum(pairs.values()),
          "top_pairs": [[v, n, c] for (v, n), c in _top(pairs, top)],
          "top_verbs": [[v, c] for v, c in top_verbs],
          "nouns_by_verb": {v: [[n, c] for n, c in _top(by_verb[v], nouns_per_verb)]
                            for v, _ in top_verbs}}
