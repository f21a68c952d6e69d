"""Data analyses of a run's datasets, the ones the papers report ([HB] §3-4, [BF] §4).

* ``dataset_summary``: count and instruction / response lengths in tokens and characters
  ([HB] Table 2; [BF] §4 reports token lengths, e.g. instruction / response 69 / 499 tokens for
  its filtered data).
* ``score_histogram`` / ``read_scores``: how the self-curation scores 1..5 spread per iteration
  ([HB] §2.3, Table 2 counts: A_5 41,821 = 8.3% and A_4 195,043 = 38.8% of 502,133 after two
  iterations).
* ``ngram_diversity``: distinct word n-grams ([BF] §4, "unique trigrams" as its diversity
  measure).
* ``fit_scaling``: the data-scaling fit ``w = alpha * log(N) + C`` ([HB] §4.1, Figure 2:
  alpha = 6.95 for Humpback, 5.40 Alpaca-GPT4, 4.43 Open Assistant, 2.86 LIMA).

Re-exported here (their own modules hold them):

* ``verb_noun`` / ``extract_verb_noun`` (``eval/verb_noun.py``): root verb and direct object of
  each instruction's first sentence ([HB] Figure 4, following Self-Instruct's
  instruction-diversity chart); spaCy's ``en_core_web_sm``, optional: without it ``verb_noun``
  says how to install it.
* ``analyze_run`` (``eval/run_analyses.py``): all of the above over a run directory, plus MAUVE
  (``eval/mauve_score.py``) between named datasets; writes ``analyses.json`` and PNG plots
  (``eval/plots.py``).

Nothing here needs a model.
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from humpback_jax import jsonl
from humpback_jax.errors import InputError
from humpback_jax.eval.verb_noun import (  # noqa: F401  (re-exports)
    SPACY_MODEL, extract_verb_noun, verb_noun)

# Word tokenization of ``ngram_diversity``: maximal runs of Unicode word characters (letters,
# digits, underscore), on the lowercased text. "Don't stop!" -> ["don", "t", "stop"].
WORD_RE = re.compile(r"\w+")

SCORES = (1, 2, 3, 4, 5)  # the 5-point scale of the rating prompt ([HB] Table 19)


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
