"""Does the judge carry any signal? Real pairs against the same instructions with shuffled
responses.

A rating model that measures "is this a good answer to this instruction" must score a real
(instruction, response) pair above the same instruction paired with another example's response.
The check rates n seed pairs as written and with their responses permuted among them (a
derangement: no response stays with its instruction), using the log-prob read-out's expected
score (``probe.read_scores``; continuous, never unparsable, one forward pass per pair), and
reports the AUC = P(score_real > score_shuffled) + P(tie) / 2 over all (real, shuffled)
combinations (the Mann-Whitney statistic; ``scipy.stats.mannwhitneyu``), with a bootstrap
confidence interval that resamples instructions, keeping each instruction's real and shuffled
pair together (``scipy.stats.bootstrap(paired=True)``).

AUC 0.5 is chance. The check warns when the interval's lower end is not above 0.5: curation by
that judge then keeps pairs at random. Note that the judge M_t was fine-tuned on the seed pairs
it rates here, so the check is an optimistic bound on its signal on web pairs.
"""

from __future__ import annotations

import numpy as np
import scipy.stats

from humpback_jax.curate import probe as probe_lib
from humpback_jax.data import templates


def derangement(n: int, seed: int) -> np.ndarray:
  """A random permutation of 0..n-1 with no fixed point (int64 [n]); n >= 2.

  Raises:
    ValueError: n < 2 (one pair cannot be shuffled).
  """
  if n < 2:
    raise ValueError(f"need at least 2 pairs to shuffle, got {n}")
  rng = np.random.default_rng(seed)
  while True:  # expected e ~ 2.7 draws
    perm = rng.permutation(n)
    if not np.any(perm == np.arange(n)):
      return perm


def auc(real: np.ndarray, shuffled: np.ndarray) -> float:
  """P(real > shuffled) + P(tie) / 2 over every combination (Mann-Whitney U / (n1 n2))."""
  real, shuffled = np.asarray(real, np.float64), np.asarray(shuffled, np.float64)
  u = scipy.stats.mannwhitneyu(real, shuffled, alternative="two-sided").statistic
  return float(u / (real.size * shuffled.size))


def auc_with_ci(real: np.ndarray, shuffled: np.ndarray, *, confidence: float = 0.95,
                n_resamples: int = 2000, seed: int = 0) -> dict:
  """AUC of real over shuffled scores with a paired bootstrap (percentile) interval.

  Args:
    real: float [n] judge scores of the real pairs.
    shuffled: float [n] scores of the same instructions with shuffled responses (row i of
      both is instruction i).
    confidence: interval level.
    n_resamples: bootstrap resamples.
    seed: resampling seed.
  Returns:
    ``{"auc", "ci_low", "ci_high", "confidence", "n", "mean_real", "mean_shuffled",
    "signal": bool (ci_low > 0.5)}``.
  Raises:
    ValueError: fewer than 2 pairs, or arrays of different lengths.
  """
  real, shuffled = np.asarray(real, np.float64), np.asarray(shuffled, np.float64)
  if real.shape != shuffled.shape or real.ndim != 1 or real.size < 2:
    raise ValueError(f"need two equal-length 1-D score arrays of >= 2 pairs, got "
                     f"{real.shape} and {shuffled.shape}")
  value = auc(real, shuffled)
  if np.ptp(np.concatenate([real, shuffled])) == 0:  # all equal: the bootstrap is degenerate
    low = high = value
  else:
    res = scipy.stats.bootstrap(
        (real, shuffled), lambda r, s: auc(r, s), paired=True, vectorized=False,
        confidence_level=confidence, n_resamples=n_resamples, method="percentile",
        rng=np.random.default_rng(seed))
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
  return {"auc": round(value, 4), "ci_low": round(low, 4), "ci_high": round(high, 4),
          "confidence": confidence, "n": int(real.size),
          "mean_real": round(float(real.mean()), 4),
          "mean_shuffled": round(float(shuffled.mean()), 4), "signal": bool(low > 0.5)}


def judge_sanity_check(sampler, params, tokenizer, pairs: list[dict], *, n: int,
                       seed: int) -> dict:
  """Rates ``n`` pairs as written and with shuffled responses; AUC with a 95% interval.

  Args:
    sampler: ``Sampler`` of the judge.
    params: its parameters.
    tokenizer: its tokenizer.
    pairs: ``{"instruction", "response"}`` dicts (e.g. the seed); the first ``n`` are used
      (the caller chooses the sample).
    n: pairs to use (>= 2).
    seed: seed of the derangement and of the bootstrap.
  Returns:
    ``auc_with_ci``'s dict plus ``mean_digit_mass`` (over the 2n read-outs) and ``warning``
    (a sentence, or None when the judge shows signal).
  Raises:
    ValueError: fewer than 2 pairs.
  """
  pairs = list(pairs)[:n]
  perm = derangement(len(pairs), seed)
  real = [templates.rating_prompt(tokenizer, p["instruction"], p["response"]) for p in pairs]
  shuffled = [templates.rating_prompt(tokenizer, p["instruction"], pairs[j]["response"])
              for p, j in zip(pairs, perm)]
  out = probe_lib.read_scores(sampler, params, tokenizer, real + shuffled)
  k = len(pairs)
  stats = auc_with_ci(out.expected_score[:k], out.expected_score[k:], seed=seed)
  stats["mean_digit_mass"] = round(float(out.digit_mass.mean()), 4)
  stats["warning"] = None if stats["signal"] else (
      f"the judge does not tell real pairs from shuffled ones: AUC {stats['auc']:.2f} "
      f"(95% CI {stats['ci_low']:.2f}-{stats['ci_high']:.2f}, n={k}) is not clearly above "
      "0.5 (chance); its curation scores are mostly noise")
  return stats
