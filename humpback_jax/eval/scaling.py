"""The data-scaling view of [HB] Figure 2: win rate against the number of curated examples.

For each size N of ``EvalConfig.scaling_sizes`` a model ``S<N>`` is fine-tuned from the base on
the seed (tag S_a) plus the first N pairs of a seeded permutation of the last curated set
A_k^(T) (tag S_w; nested subsets: S<8>'s data holds S<4>'s), with the forward hyper-parameters
of M_t; it answers the evaluation prompts and is judged against the reference like M0..M_T.
The fit is the paper's ``w = alpha * log N + C`` over the sizes with N > 0
(``analyses.fit_scaling``: [HB] §4.1 reports alpha = 6.95 for Humpback vs 5.40 Alpaca-GPT4,
4.43 Open Assistant, 2.86 LIMA). [HB] fine-tunes on each dataset alone; here the seed stays in
(as in M_t), so the curve measures what the curated data adds to the seed.
"""

from __future__ import annotations

import numpy as np

from humpback_jax import jsonl
from humpback_jax.data import templates

__all__ = ["scale_name", "nested_subset", "train_scale", "scaling_summary"]


def scale_name(n: int) -> str:
  """The model name of the size-``n`` point (``"S<n>"``)."""
  return f"S{n}"


def nested_subset(records: list[dict], n: int, seed: int) -> list[dict]:
  """The first ``n`` records of a ``numpy.random.default_rng(seed)`` permutation (all when
  ``n`` >= len): subsets of one seed are nested."""
  order = np.random.default_rng(seed).permutation(len(records))
  return [records[i] for i in order[:n]]


def train_scale(n: int, iterations: int):
  """The stage function training ``S<n>`` on seed + ``n`` pairs of ``curated_A<iterations>``."""

  def run(ctx) -> dict:
    from humpback_jax.pipeline.stages import _seed_records, _train
    curated = jsonl.read_jsonl(ctx.run_dir / f"data/curated_A{iterations}.jsonl")
    subset = nested_subset(curated, n, ctx.config.seed_value + 31)
    records = _seed_records(ctx) + [
        {"id": c["id"], "instruction": c["instruction"], "response": c["response"],
         "tags": [templates.TAG_WEB]} for c in subset]
    out = _train(ctx, scale_name(n), records, "forward", ctx.config.forward_train)
    return dict(out, curated_examples=len(subset), requested_examples=n,
                available_examples=len(curated))

  return run


def scaling_summary(results: list[dict], sizes: dict[str, int]) -> dict | None:
  """The scaling fit from the judge's results.

  Args:
    results: ``eval/results.json``'s ``results`` (comparisons against the reference).
    sizes: model name -> number of curated examples it was trained on (actual, after capping).
  Returns:
    ``{points: [{name, examples, win_rate, standard_error}], fit}`` with ``fit`` from
    ``analyses.fit_scaling`` over the points with examples > 0 (None with fewer than 2 distinct
    sizes), or None when no scaling model was judged.
  """
  from humpback_jax.eval import analyses
  points = [{"name": r["evaluated"], "examples": sizes[r["evaluated"]],
             "win_rate": r["win_rate"], "standard_error": r["standard_error"]}
            for r in results if not r["head_to_head"] and r["evaluated"] in sizes]
  if not points:
    return None
  points.sort(key=lambda p: p["examples"])
  usable = [p for p in points if p["examples"] > 0]
  fit = None
  if len({p["examples"] for p in usable}) >= 2:
    fit = analyses.fit_scaling([p["examples"] for p in usable],
                               [p["win_rate"] for p in usable])
  return {"points": points, "fit": fit}
