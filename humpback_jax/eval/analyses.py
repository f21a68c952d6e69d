"""Data analyses of a run's datasets, the ones the papers report ([HB] §3-4, [BF] §4).

* ``dataset_summary``: count and instruction / response lengths in tokens and characters
  ([HB] Table 2; [BF] §4 reports token lengths, e.g. instruction / response 69 / 499 tokens for
  its filtered data).
* ``score_histogram`` / ``read_scores``: how the self-curation scores 1..5 spread per iteration
  ([HB] §2.3, Table 2 counts: A_5 41,821 = 8.3% and A_4 195,043 = 38.8% of 502,133 after two
  iterations).
* ``ngram_diversity``: distinct word n-grams ([BF] §4, "unique trigrams" as its diversity
  measure).
* ``verb_noun``: root verb and direct object of each instruction's first sentence ([HB]
  Figure 4, following Self-Instruct's instruction-diversity chart).
* ``fit_scaling``: the data-scaling fit ``w = alpha * log(N) + C`` ([HB] §4.1, Figure 2:
  alpha = 6.95 for Humpback, 5.40 Alpaca-GPT4, 4.43 Open Assistant, 2.86 LIMA).
* ``analyze_run``: all of the above over a run directory, plus MAUVE (``eval/mauve_score.py``)
  between named datasets; writes ``analyses.json`` and PNG plots (``eval/plots.py``).

Nothing here needs a model except MAUVE (a featurizer passed in) and the verb-noun parse
(spaCy's ``en_core_web_sm``, optional: without it ``verb_noun`` says how to install it).
"""

from __future__ import annotations

import collections
import functools
import json
import math
import os
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from humpback_jax import fs, hosts, jsonl
from humpback_jax.errors import InputError

# Word tokenization of ``ngram_diversity``: maximal runs of Unicode word characters (letters,
# digits, underscore), on the lowercased text. "Don't stop!" -> ["don", "t", "stop"].
WORD_RE = re.compile(r"\w+")

SCORES = (1, 2, 3, 4, 5)  # the 5-point scale of the rating prompt ([HB] Table 19)

# Default datasets of a run (paths relative to the run directory; pipeline/stages.py).
DEFAULT_DATASETS = {
    "seed": "data/seed.jsonl",
    "candidates": "data/candidates.jsonl",
    "A1": "data/curated_A1.jsonl",
    "A2": "data/curated_A2.jsonl",
}
# The two curation iterations of [HB] §2.3 (M0 scores -> A1, M1 scores -> A2); reported as
# absent when missing. More iterations (``scores_M2.jsonl``, ``curated_A3.jsonl``, ...) are
# picked up when present.
DEFAULT_SCORERS = ("M0", "M1")
_SCORES_FILE = re.compile(r"^scores_(M\d+)\.jsonl$")
_CURATED_FILE = re.compile(r"^curated_(A\d+)\.jsonl$")

# [BF] §4 computes MAUVE between 10K-sample sets.
MAUVE_SAMPLE = 10_000

# Direct-object dependency labels: ClearNLP style (spaCy's English models) and Universal
# Dependencies (spaCy's UD-trained models).
_DOBJ = ("dobj", "obj")
_NOUN_POS = ("NOUN", "PROPN")

SPACY_MODEL = "en_core_web_sm"
_SPACY_INSTALL = (f"install it with `python -m spacy download {SPACY_MODEL}` (needs internet), "
                  "or `pip install` its wheel from "
                  "https://github.com/explosion/spacy-models/releases, then rerun; or pass "
                  "`nlp=` any spaCy pipeline with a tagger, lemmatizer and dependency parser")


# ----------------------------------------------------------------------------------------------
# Lengths ([HB] Table 2).


def _stats(values: Sequence[float]) -> dict:
  """``{mean, std, median}`` as floats (population std, ddof=0); all None when empty."""
  if not len(values):
    return {"mean": None, "std": None, "median": None}
  a = np.asarray(values, dtype=np.float64)
  return {"mean": float(a.mean()), "std": float(a.std()), "median": float(np.median(a))}


def _field(record: Mapping, key: str, i: int) -> str:
  is_map = isinstance(record, Mapping)
  value = record.get(key) if is_map else None
  if not isinstance(value, str):
    rid = record.get("id") if is_map else None
    raise InputError(f"record {i + 1} (id {rid!r}): {key!r} must be a string, got "
                     f"{type(value).__name__}")
  return value


def dataset_summary(records: Sequence[Mapping], tokenizer: Any) -> dict:
  """Count and length statistics of (instruction, response) pairs ([HB] Table 2 view).

  Token counts are ``len(tokenizer.encode(text, add_bos=False))`` (no BOS, no EOS);
  character counts are ``len(text)`` (Unicode code points). ``std`` is the population standard
  deviation (ddof=0; neither paper says which; ``data/seed.py:length_stats`` uses the same).
  For reference: [HB] §3.1 seed 148 ± 322 / 1,072 ± 818 characters (instruction / response),
  ClueWeb segments' responses 1,722 ± 653 characters; [BF] §4 instruction / response tokens
  69 / 499 (filtered), 69 / 468 (filtered + rewritten), 69 / 567 (distilled).

  Args:
    records: mappings with string ``instruction`` and ``response`` (other keys ignored).
    tokenizer: anything with ``encode(text, add_bos=False) -> list[int]``
      (``humpback_jax.tokenizers``); None skips the token statistics (their fields are None).

  Returns:
    ``{"count": int, "instruction_tokens": S, "response_tokens": S, "instruction_chars": S,
    "response_chars": S}`` where each S is ``{"mean", "std", "median"}`` (floats; None when
    there are no records or no tokenizer).

  Raises:
    InputError: a record lacks a string ``instruction`` or ``response`` (names its position
      and id).
  """
  ins_c, res_c, ins_t, res_t = [], [], [], []
  for i, r in enumerate(records):
    ins, res = _field(r, "instruction", i), _field(r, "response", i)
    ins_c.append(len(ins))
    res_c.append(len(res))
    if tokenizer is not None:
      ins_t.append(len(tokenizer.encode(ins, add_bos=False)))
      res_t.append(len(tokenizer.encode(res, add_bos=False)))
  return {"count": len(ins_c),
          "instruction_tokens": _stats(ins_t), "response_tokens": _stats(res_t),
          "instruction_chars": _stats(ins_c), "response_chars": _stats(res_c)}


# ----------------------------------------------------------------------------------------------
# Self-curation scores ([HB] §2.3).


def score_histogram(scores: Iterable[int | None]) -> dict[str, int]:
  """Counts of each score 1..5 and of unscored candidates.

  Args:
    scores: ints in 1..5, or None for a candidate whose rating could not be read.

  Returns:
    ``{"1": n1, "2": n2, "3": n3, "4": n4, "5": n5, "unscored": n_none}`` (every key present).

  Raises:
    ValueError: a value is neither None nor an int in 1..5 (bools and floats included).
  """
  hist = {str(s): 0 for s in SCORES}
  hist["unscored"] = 0
  for s in scores:
    if s is None:
      hist["unscored"] += 1
    elif isinstance(s, (int, np.integer)) and not isinstance(s, bool) and int(s) in SCORES:
      hist[str(int(s))] += 1
    else:
      raise ValueError(f"a score must be an int in 1..5 or None, got {s!r}")
  return hist


def read_scores(path: str | os.PathLike) -> list[int | None]:
  """The ``score`` of every record of a ``scores_M*.jsonl`` file, in file order.

  Raises:
    FileNotFoundError: the file does not exist.
    InputError: a record has no ``score`` key, or a score that is neither null nor an int in
      1..5 (message ``file:line: ...``); ``jsonl.JsonlError`` for a line that is not JSON.
  """
  out = []
  for lineno, r in jsonl.iter_jsonl_numbered(path):
    if "score" not in r:
      raise InputError(f"{path}:{lineno}: record has no 'score' (id {r.get('id')!r})")
    s = r["score"]
    if s is not None and (isinstance(s, bool) or not isinstance(s, int) or s not in SCORES):
      raise InputError(f"{path}:{lineno}: score must be an int in 1..5 or null, got {s!r}")
    out.append(s)
  return out


# ----------------------------------------------------------------------------------------------
# Diversity ([BF] §4).


def words(text: str) -> list[str]:
  """Lowercased words of ``text``: ``re.findall(r"\\w+", text.lower())`` (Unicode ``\\w``:
  letters, digits and underscore; punctuation and whitespace separate words, so "don't" is
  "don", "t")."""
  return WORD_RE.findall(text.lower())


def ngram_diversity(texts: Iterable[str], n: int = 3) -> dict:
  """Distinct word n-grams over a set of texts ([BF] §4's "unique trigrams" diversity).

  Each text is split into words by ``words`` (lowercase, regex ``\\w+``); its n-grams are the
  ``len(words) - n + 1`` runs of ``n`` consecutive words (none for a text of fewer than ``n``
  words). N-grams never span two texts. The ratio depends on the set's size (bigger sets
  repeat more), so compare sets of equal size (``analyze_run``'s ``diversity_matched``).

  Args:
    texts: strings.
    n: n-gram order (words), >= 1; 3 = trigrams as in [BF].

  Returns:
    ``{"n": n, "texts": number of texts, "unique": distinct n-grams over all texts,
    "total": n-grams counted with repetition, "distinct_ratio": unique / total (0.0 when
    total is 0)}``.

  Raises:
    ValueError: ``n < 1``.
  """
  if n < 1:
    raise ValueError(f"n must be >= 1, got {n}")
  seen: set[tuple[str, ...]] = set()
  total = count = 0
  for text in texts:
    count += 1
    w = words(text)
    grams = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
    total += len(grams)
    seen.update(grams)
  return {"n": n, "texts": count, "unique": len(seen), "total": total,
          "distinct_ratio": len(seen) / total if total else 0.0}


# ----------------------------------------------------------------------------------------------
# Verb-noun structure of instructions ([HB] Figure 4).


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


# ----------------------------------------------------------------------------------------------
# Data scaling ([HB] §4.1, Figure 2).


def fit_scaling(n_examples: Sequence[float], win_rates: Sequence[float]) -> dict:
  """Least-squares fit of ``w = alpha * ln(N) + C`` ([HB] §4.1, Figure 2) with statsmodels OLS.

  [HB] writes ``w = alpha log N + C`` (alpha = 6.95 Humpback, 5.40 Alpaca-GPT4, 4.43 Open
  Assistant, 2.86 LIMA) without naming the base (not in docs/method.md either). We use the
  natural log; a fit in base b has ``alpha_b = alpha * ln(b)`` (e.g. log2: ``alpha *
  0.693``), ``C`` unchanged. Win rates are in whatever unit is given (percent in [HB]).

  Args:
    n_examples: training-set sizes N (examples), each > 0; at least 2 distinct values.
    win_rates: the win rate w at each N (same length).

  Returns:
    ``{"alpha": slope per unit of ln N, "alpha_se": its standard error, "C": intercept,
    "C_se": its standard error, "r2": R^2, "n_points": number of points, "log": "natural"}``;
    the standard errors are None with 2 points (no residual degrees of freedom), R^2 is None
    when every w is equal.

  Raises:
    ValueError: lengths differ, fewer than 2 distinct N, an N <= 0, or a non-finite value.
  """
  import statsmodels.api as sm  # pylint: disable=g-import-not-at-top  (slow import)
  n = np.asarray(n_examples, dtype=np.float64)
  w = np.asarray(win_rates, dtype=np.float64)
  if n.ndim != 1 or n.shape != w.shape:
    raise ValueError(f"n_examples and win_rates must be 1-D of equal length, got {n.shape} "
                     f"and {w.shape}")
  if not (np.all(np.isfinite(n)) and np.all(np.isfinite(w))):
    raise ValueError("n_examples and win_rates must be finite")
  if np.any(n <= 0):
    raise ValueError(f"every N must be > 0, got {n.tolist()}")
  if len(np.unique(n)) < 2:
    raise ValueError(f"need at least 2 distinct N to fit a line, got {n.tolist()}")
  x = sm.add_constant(np.log(n), has_constant="add")  # columns [1, ln N]
  res = sm.OLS(w, x).fit()
  clean = lambda v: float(v) if np.isfinite(v) else None  # JSON has no NaN
  has_df = res.df_resid > 0
  ss_tot = float(np.sum((w - w.mean()) ** 2))
  return {"alpha": float(res.params[1]),
          "alpha_se": clean(res.bse[1]) if has_df else None,
          "C": float(res.params[0]),
          "C_se": clean(res.bse[0]) if has_df else None,
          "r2": clean(res.rsquared) if ss_tot > 0 else None,
          "n_points": int(len(n)), "log": "natural"}


# ----------------------------------------------------------------------------------------------
# A whole run.


def _sample(items: Sequence, k: int | None, rng: np.random.Generator) -> list:
  """``k`` items drawn without replacement, kept in their order; all when ``k`` is None or
  at least ``len(items)``."""
  if k is None or len(items) <= k:
    return list(items)
  idx = np.sort(rng.choice(len(items), size=k, replace=False))
  return [items[i] for i in idx]


def _discovered(data_dir, pattern: re.Pattern) -> list[str]:
  """Names (``A3``, ``M2``, ...) of the files in ``data_dir`` matching ``pattern``."""
  if not data_dir.is_dir():
    return []
  found = [m.group(1) for p in data_dir.iterdir() if (m := pattern.match(p.name))]
  return sorted(found, key=lambda s: (len(s), s))


def _json_clean(x):
  """NaN/inf -> None, numpy scalars -> Python, tuples -> lists (``analyses.json``)."""
  if isinstance(x, dict):
    return {str(k): _json_clean(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_json_clean(v) for v in x]
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (float, np.floating)):
    return float(x) if math.isfinite(x) else None
  return x


def _shown(p, run) -> str:
  """``p`` relative to the run directory when inside it (``eval/lengths.png``), else in full."""
  ps, root = os.fspath(p), os.fspath(run).rstrip("/")
  return ps[len(root) + 1:] if ps.startswith(root + "/") else ps


def analyze_run(run_dir: str | os.PathLike, tokenizer: Any, *,
                datasets: Mapping[str, str] | None = None,
                mauve_features: Callable[[Sequence[str]], np.ndarray] | None = None,
                out_dir: str | os.PathLike | None = None,
                mauve_pairs: Sequence[Sequence[str]] | None = None,
                nlp: Callable | None = None,
                mauve_sample: int | None = MAUVE_SAMPLE,
                verb_noun_sample: int | None = 20_000,
                seed: int = 0,
                write: bool = True) -> dict:
  """Every analysis of this module over a run directory; writes ``analyses.json`` and plots.

  Datasets: ``seed``, ``candidates``, ``A1``, ``A2`` (``DEFAULT_DATASETS``), every further
  ``data/curated_A<t>.jsonl``, and ``datasets`` (``{name: path relative to run_dir}``, which
  may also override a default's path). Score files: ``data/scores_M0.jsonl``,
  ``data/scores_M1.jsonl`` and every further ``data/scores_M<t>.jsonl`` (never the
  ``.partial`` files). A missing file is listed with ``"present": False`` and named in
  ``absent``, never silently skipped; a malformed one gets ``"error"`` (the ``InputError``
  message) and the others are still analysed.

  Per present dataset: ``summary`` (``dataset_summary``), ``diversity`` (``ngram_diversity``,
  trigrams, of instructions and of responses, all records), ``diversity_matched`` (the same on
  a random sample of ``matched_n`` = the smallest present dataset's size, so sets compare at
  equal size) and ``verb_noun`` (of instructions; a random sample of ``verb_noun_sample``).

  MAUVE ([BF] §4: distilled vs rewritten 0.340, vs raw web 0.034): for each pair of
  ``mauve_pairs`` (``(p_name, q_name)`` or ``(p_name, q_name, field)``, field ``response``
  (default) or ``instruction``; default: ``[("seed", A_last)]``, A_last the highest-numbered
  present curated set, responses), on random samples of ``mauve_sample`` texts each (10K in
  [BF]); empty texts are left out (``dropped_empty``). Without ``mauve_features`` each pair is
  listed with ``computed: False`` and the reason.

  Process 0 alone writes (``hosts.is_writer()``); every process computes and returns the same
  dict. Collective-free: safe inside ``hosts.on_writer`` unless ``mauve_features`` runs a
  sharded model (then call it on every process).

  Args:
    run_dir: the run directory (local or ``gs://``).
    tokenizer: for token lengths (``encode(text, add_bos=False)``); None: characters only.
    datasets: extra or overriding ``{name: relative path}``.
    mauve_features: texts -> float32 [N, D] features (``mauve_score.make_featurizer``), or
      None to skip MAUVE.
    out_dir: where ``analyses.json`` and the PNGs go (default ``run_dir/eval``).
    mauve_pairs: see above.
    nlp: spaCy pipeline for ``verb_noun`` (None: ``en_core_web_sm`` if installed).
    mauve_sample: texts per MAUVE side (None: all).
    verb_noun_sample: instructions parsed per dataset (None: all).
    seed: seed of every random sample (numpy ``default_rng``) and of MAUVE's k-means.
    write: False computes and returns without writing anything (``plots`` is then empty and
      ``analyses_json`` None).

  Returns:
    ``{"run_dir", "out_dir", "datasets": {name: {"path", "present", "error"?, "summary",
    "diversity": {"instruction", "response"}, "diversity_matched": {...}, "verb_noun"}},
    "matched_n", "absent": [names of missing files: datasets and scorers], "scores": {"M0":
    {"path", "present", "histogram", "total", "fraction_5", "fraction_ge4"}, ...}, "mauve":
    [{"p", "q", "field", "computed", "reason"? | mauve_between's keys, "dropped_empty"}],
    "plots": {name: PNG path}, "analyses_json": its path}``. Written paths are relative to
    ``run_dir`` when ``out_dir`` is inside it (default: ``eval/lengths.png``,
    ``eval/analyses.json``), full paths otherwise. Plots: ``lengths``, ``score_histograms``
    (when a score file was read), ``verb_noun_<dataset>`` (when a parser found pairs).
  """
  from humpback_jax.eval import plots  # pylint: disable=g-import-not-at-top
  run = fs.path(run_dir)
  out = fs.path(out_dir) if out_dir is not None else run / "eval"
  data_dir = run / "data"
  rng = np.random.default_rng(seed)

  names = dict(DEFAULT_DATASETS)
  for a in _discovered(data_dir, _CURATED_FILE):
    names.setdefault(a, f"data/curated_{a}.jsonl")
  names.update(datasets or {})

  result: dict[str, Any] = {"run_dir": os.fspath(run), "out_dir": os.fspath(out),
                            "datasets": {}, "absent": [], "scores": {}, "mauve": [],
                            "plots": {}}
  loaded: dict[str, list[dict]] = {}
  for name, rel in names.items():
    p = run / rel
    entry: dict[str, Any] = {"path": rel, "present": p.exists()}
    result["datasets"][name] = entry
    if not entry["present"]:
      result["absent"].append(name)
      continue
    try:
      records = jsonl.read_jsonl(p)
      entry["summary"] = dataset_summary(records, tokenizer)
    except InputError as e:
      entry["error"] = f"{rel}: {e}"
      continue
    loaded[name] = records
    entry["diversity"] = {
        "instruction": ngram_diversity(r["instruction"] for r in records),
        "response": ngram_diversity(r["response"] for r in records)}
    entry["verb_noun"] = verb_noun(
        [r["instruction"] for r in _sample(records, verb_noun_sample, rng)], nlp=nlp)

  matched = min((len(v) for v in loaded.values()), default=0)
  result["matched_n"] = matched
  for name, records in loaded.items():
    sub = _sample(records, matched, rng)
    result["datasets"][name]["diversity_matched"] = {
        "instruction": ngram_diversity(r["instruction"] for r in sub),
        "response": ngram_diversity(r["response"] for r in sub)}

  scorers = list(DEFAULT_SCORERS)
  scorers += [m for m in _discovered(data_dir, _SCORES_FILE) if m not in scorers]
  for m in scorers:
    rel = f"data/scores_{m}.jsonl"
    entry = {"path": rel, "present": (run / rel).exists()}
    result["scores"][m] = entry
    if not entry["present"]:
      result["absent"].append(f"scores_{m}")
      continue
    try:
      hist = score_histogram(read_scores(run / rel))
    except InputError as e:
      entry["error"] = str(e)
      continue
    total = sum(hist.values())
    entry.update(histogram=hist, total=total,
                 fraction_5=hist["5"] / total if total else None,
                 fraction_ge4=(hist["4"] + hist["5"]) / total if total else None)

  if mauve_pairs is None:
    curated = sorted((n for n in names if _CURATED_FILE.match(f"curated_{n}.jsonl")),
                     key=lambda s: (len(s), s))
    present = [a for a in curated if a in loaded]
    mauve_pairs = [("seed", present[-1] if present else "A2")]
  for pair in mauve_pairs:
    p_name, q_name = pair[0], pair[1]
    field = pair[2] if len(pair) > 2 else "response"
    entry = {"p": p_name, "q": q_name, "field": field}
    result["mauve"].append(entry)
    missing = [n for n in (p_name, q_name) if n not in loaded]
    if field not in ("response", "instruction"):
      entry.update(computed=False, reason=f"field must be 'response' or 'instruction', got "
                   f"{field!r}")
    elif missing:
      entry.update(computed=False, reason=f"dataset(s) {missing} absent or unreadable")
    elif mauve_features is None:
      entry.update(computed=False, reason="no featurizer given (mauve_features=None)")
    else:
      from humpback_jax.eval import mauve_score  # pylint: disable=g-import-not-at-top
      texts = {}
      dropped = 0
      for n in (p_name, q_name):
        all_texts = [r[field] for r in loaded[n]]
        kept = [t for t in all_texts if t.strip()]
        dropped += len(all_texts) - len(kept)
        texts[n] = _sample(kept, mauve_sample, rng)
      try:
        entry.update(mauve_score.mauve_between(texts[p_name], texts[q_name], mauve_features,
                                               seed=seed), computed=True,
                     dropped_empty=dropped)
      except ValueError as e:
        entry.update(computed=False, reason=f"{type(e).__name__}: {e}")

  writer = write and hosts.is_writer()
  summaries = {n: e["summary"] for n, e in result["datasets"].items() if "summary" in e}
  hists = {m: e["histogram"] for m, e in result["scores"].items() if "histogram" in e}
  jobs = []
  if summaries:
    unit = "chars" if tokenizer is None else "tokens"
    jobs.append(("lengths", "lengths.png",
                 functools.partial(plots.plot_lengths, unit=unit), summaries))
  if hists:
    jobs.append(("score_histograms", "score_histograms.png", plots.plot_score_histograms, hists))
  for n, e in result["datasets"].items():
    vn = e.get("verb_noun")
    if vn and vn["available"] and vn["top_pairs"]:
      jobs.append((f"verb_noun_{n}", f"verb_noun_{n}.png", plots.plot_verb_noun,
                   vn["top_pairs"]))
  for key, fname, fn, arg in jobs if write else ():
    if writer:
      fn(arg, out / fname)
    result["plots"][key] = _shown(out / fname, run)
  result["analyses_json"] = _shown(out / "analyses.json", run) if write else None
  result = _json_clean(result)
  if writer:
    fs.atomic_write_text(out / "analyses.json", json.dumps(result, indent=1, ensure_ascii=False)
                         + "\n")
  return result
