"""All the data analyses over a run directory: ``analyze_run`` ([HB] §3-4, [BF] §4).

Runs the per-dataset analyses of ``eval/analyses.py`` (lengths, score histograms, n-gram
diversity) and ``eval/verb_noun.py`` over a run's datasets and score files, MAUVE
(``eval/mauve_score.py``) between named datasets, and writes ``analyses.json`` and PNG plots
(``eval/plots.py``).
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from humpback_jax import fs, hosts, jsonl
from humpback_jax.errors import InputError
from humpback_jax.eval.analyses import (dataset_summary, ngram_diversity, read_scores,
                                        score_histogram)
from humpback_jax.eval.verb_noun import verb_noun

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
  """Every analysis of ``eval/analyses.py`` and ``eval/verb_noun.py`` over a run directory;
  writes ``analyses.json`` and plots.

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
