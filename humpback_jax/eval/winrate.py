"""Win rates with standard errors, the both-orders combination, and the length-controlled view.

Conventions (AlpacaEval, ``method.md`` §4). A judgment of one prompt is a *preference*
``p`` in [0, 1]: the probability the judge gives that the evaluated model's output is better
than the other one (the reference's, or another model's). The win rate is
``100 * mean(p)`` and its standard error is the standard error of that mean over prompts,
``100 * std(p, ddof=1) / sqrt(n)`` (the "±" of [HB] Table 5; AlpacaEval's ``sem``).

Position bias. Each pair is judged in both orders: with the model's output first, the judge
gives ``P(first better) = a``; with it second, ``P(first better) = b`` (now the other output's
win). The model's preference is ``(a + (1 - b)) / 2``, so a judge that always prefers the
first position gives exactly 0.5 ([HB] §4 / AlpacaEval: "both orders or a randomized order").

Length control (AlpacaEval 2.0, Dubois et al. 2024 "Length-Controlled AlpacaEval"): a
logistic GLM of the preference on the length difference,
``logit p = theta + phi * tanh((len_m - len_r) / sd(len_m - len_r))``, fitted with
``statsmodels`` (binomial family, fractional responses); the length-controlled win rate is the
prediction with the length term set to zero, ``100 * sigmoid(theta)``, with a delta-method
standard error. AlpacaEval's full GLM also has an instruction-difficulty term fitted across
many models of its leaderboard; with one model pair it is not identifiable, so it is left out.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["win_rate", "combine_orders", "order_agreement", "length_controlled",
           "TIE_TOLERANCE"]

# |p - 0.5| within this counts as a tie in the discrete counts (not in the win rate itself).
TIE_TOLERANCE = 1e-3


def _preferences(p) -> np.ndarray:
  p = np.asarray(p, np.float64).reshape(-1)
  if p.size and (not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1):
    raise ValueError("preferences must be finite and in [0, 1]")
  return p


def win_rate(preferences: Sequence[float] | np.ndarray) -> dict:
  """Win rate (percent) and its standard error over prompts.

  Args:
    preferences: float [N], P(model's output better) per prompt, in [0, 1] (1 = win,
      0 = loss, 0.5 = tie; soft values allowed).
  Returns:
    ``{n, win_rate, standard_error, wins, losses, ties, discrete_win_rate}``: ``win_rate`` =
    100 * mean; ``standard_error`` = 100 * sample std (ddof 1) / sqrt(n) (None for n < 2);
    ``wins``/``losses``/``ties`` count p > 0.5 + TIE_TOLERANCE, p < 0.5 - TIE_TOLERANCE and
    the rest (a soft judge that cannot tell the outputs apart gives p = 0.5 up to float
    rounding: a tie, not a coin of wins and losses); ``discrete_win_rate`` =
    100 * (wins + ties / 2) / n. Win rates are None for n = 0.
  Raises:
    ValueError: a preference outside [0, 1] or not finite.
  """
  p = _preferences(preferences)
  n = int(p.size)
  if n == 0:
    return {"n": 0, "win_rate": None, "standard_error": None, "wins": 0, "losses": 0,
            "ties": 0, "discrete_win_rate": None}
  wins = int((p > 0.5 + TIE_TOLERANCE).sum())
  losses = int((p < 0.5 - TIE_TOLERANCE).sum())
  ties = n - wins - losses
  se = float(100 * p.std(ddof=1) / math.sqrt(n)) if n > 1 else None
  return {"n": n, "win_rate": float(100 * p.mean()), "standard_error": se, "wins": wins,
          "losses": losses, "ties": ties, "discrete_win_rate": 100 * (wins + 0.5 * ties) / n}


def combine_orders(p_first_model_first, p_first_model_second) -> np.ndarray:
  """The model's preference from the two orders of one pair.

  Args:
    p_first_model_first: float [N], P(first output better) when the model's output is first.
    p_first_model_second: float [N], P(first output better) when the model's output is second.
  Returns:
    float64 [N]: ``(a + (1 - b)) / 2``, in [0, 1].
  Raises:
    ValueError: shapes differ, or values outside [0, 1].
  """
  a, b = _preferences(p_first_model_first), _preferences(p_first_model_second)
  if a.shape != b.shape:
    raise ValueError(f"the two orders have {a.size} and {b.size} judgments")
  return (a + (1.0 - b)) / 2.0


def order_agreement(p_first_model_first, p_first_model_second) -> dict:
  """How much the judge agrees with itself across the two orders of each pair.

  Returns:
    ``{n, agreement, position_bias, correlation}``: ``agreement`` = share of pairs whose
    hard decision is the same in both orders (``a > 0.5`` iff ``b < 0.5``; a tie in either
    counts as disagreement); ``position_bias`` = mean P(first better) over all 2N judgments
    minus 0.5 (positive: favours the first position); ``correlation`` = Pearson r of ``a`` and
    ``1 - b`` (None when either is constant or N < 2). A judge with no position effect has
    agreement near 1 and bias near 0; one that always picks the first position has
    agreement 0 and bias 0.5.
  """
  a, b = _preferences(p_first_model_first), _preferences(p_first_model_second)
  if a.shape != b.shape:
    raise ValueError(f"the two orders have {a.size} and {b.size} judgments")
  n = int(a.size)
  if n == 0:
    return {"n": 0, "agreement": None, "position_bias": None, "correlation": None}
  same = ((a > 0.5) & (b < 0.5)) | ((a < 0.5) & (b > 0.5))
  corr = None
  if n > 1 and a.std() > 0 and b.std() > 0:
    corr = float(np.corrcoef(a, 1.0 - b)[0, 1])
  return {"n": n, "agreement": float(same.mean()),
          "position_bias": float(np.concatenate([a, b]).mean() - 0.5), "correlation": corr}


def length_controlled(preferences, model_lengths, other_lengths) -> dict:
  """Length-controlled win rate (AlpacaEval 2.0's GLM without the difficulty term).

  Args:
    preferences: float [N] in [0, 1], P(model's output better).
    model_lengths, other_lengths: [N] output lengths (tokens or characters; only the
      standardized difference enters).
  Returns:
    ``{n, lc_win_rate, lc_standard_error, length_coef, length_coef_se, intercept,
    intercept_se, note}``; the win rates are percent. When the length difference is constant
    the length term is dropped (``length_coef`` None: the LC win rate is then the plain one,
    fitted). When the GLM cannot be fitted (all preferences 0, or all 1: perfect separation;
    N < 3) the numbers are None and ``note`` says why.
  Raises:
    ValueError: shapes differ or preferences outside [0, 1].
  """
  import statsmodels.api as sm
  p = _preferences(preferences)
  lm = np.asarray(model_lengths, np.float64).reshape(-1)
  lo = np.asarray(other_lengths, np.float64).reshape(-1)
  if not p.shape == lm.shape == lo.shape:
    raise ValueError(f"got {p.size} preferences, {lm.size} and {lo.size} lengths")
  out = {"n": int(p.size), "lc_win_rate": None, "lc_standard_error": None,
         "length_coef": None, "length_coef_se": None, "intercept": None,
         "intercept_se": None, "note": None}
  if p.size < 3:
    out["note"] = "fewer than 3 judgments"
    return out
  if p.min() == p.max() and p[0] in (0.0, 1.0):
    out["note"] = f"every preference is {p[0]:g}: the GLM is not identifiable"
    return out
  diff = lm - lo
  sd = diff.std()
  if sd > 0:
    exog = np.column_stack([np.ones_like(p), np.tanh(diff / sd)])
  else:
    exog = np.ones((p.size, 1))
    out["note"] = "the length difference is constant: no length term"
  import warnings
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # statsmodels warns about non-integer binomial responses
    fit = sm.GLM(p, exog, family=sm.families.Binomial()).fit()
  theta, theta_se = float(fit.params[0]), float(fit.bse[0])
  s = 1.0 / (1.0 + math.exp(-theta))
  out.update(lc_win_rate=100 * s, lc_standard_error=100 * s * (1 - s) * theta_se,
             intercept=theta, intercept_se=theta_se)
  if exog.shape[1] == 2:
    out.update(length_coef=float(fit.params[1]), length_coef_se=float(fit.bse[1]))
  return out
