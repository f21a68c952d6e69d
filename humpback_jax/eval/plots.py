"""PNG figures of the analyses and evaluations ([HB] Figures 2 and 4, Table 2; [BF] §4).

Each function draws one figure and writes it as one PNG, returning the path written. Figures
are built on ``matplotlib.figure.Figure`` with the Agg canvas directly: no pyplot, no global
backend switch, no window, ever (``plt.show`` is never called), so importing this module does
not change the backend of a program that uses pyplot. Files are written whole through
``humpback_jax.fs`` (atomic locally, one object write on ``gs://``). The caller decides which
process writes (``hosts.is_writer()``); these functions write unconditionally.
"""

from __future__ import annotations

import io
import os
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from humpback_jax import fs

_DPI = 120
_SCORE_KEYS = ("1", "2", "3", "4", "5", "unscored")


def _figure(width: float = 7.0, height: float = 4.0):
  fig = Figure(figsize=(width, height), dpi=_DPI)
  FigureCanvasAgg(fig)
  return fig, fig.add_subplot(1, 1, 1)


def _save(fig: Figure, path: str | os.PathLike) -> str:
  """Renders ``fig`` as PNG to ``path`` (atomically) and returns ``path`` as a string."""
  buf = io.BytesIO()
  fig.tight_layout()
  fig.savefig(buf, format="png", dpi=_DPI)
  p = fs.path(path)
  fs.atomic_write_bytes(p, buf.getvalue())
  return os.fspath(p)


def _no_data(ax, what: str) -> None:
  ax.text(0.5, 0.5, f"no {what}", ha="center", va="center", transform=ax.transAxes)
  ax.set_xticks([])
  ax.set_yticks([])


def plot_score_histograms(hists: Mapping[str, Mapping[str, int]],
                          path: str | os.PathLike) -> str:
  """Grouped bars of self-curation scores per scorer ([HB] §2.3: keep score 5 -> A_5).

  Bars are shares (percent of all rated candidates of that scorer, unscored included), so
  scorers compare; the legend gives each scorer's total.

  Args:
    hists: ``{scorer name ("M0"...): analyses.score_histogram dict}`` (keys "1".."5",
      "unscored"; a missing key counts 0).
    path: PNG to write.

  Returns:
    The path written (str).
  """
  fig, ax = _figure()
  if not hists:
    _no_data(ax, "scores")
    return _save(fig, path)
  x = np.arange(len(_SCORE_KEYS))
  width = 0.8 / len(hists)
  for j, (name, h) in enumerate(hists.items()):
    counts = np.array([h.get(k, 0) for k in _SCORE_KEYS], dtype=np.float64)
    total = counts.sum()
    share = 100 * counts / total if total else counts
    ax.bar(x + (j - (len(hists) - 1) / 2) * width, share, width, label=f"{name} (n={int(total)})")
  ax.set_xticks(x, list(_SCORE_KEYS))
  ax.set_xlabel("score")
  ax.set_ylabel("% of candidates")
  ax.set_title("Self-curation scores")
  ax.legend()
  return _save(fig, path)


def plot_lengths(summaries: Mapping[str, Mapping], path: str | os.PathLike,
                 unit: str = "tokens") -> str:
  """Mean instruction and response length per dataset ([HB] Table 2, [BF] §4 token lengths).

  Args:
    summaries: ``{dataset name: analyses.dataset_summary dict}``; datasets whose mean is
      None (no records, or no tokenizer for tokens) are drawn as 0 with "n/a".
    path: PNG to write.
    unit: "tokens" (``instruction_tokens`` / ``response_tokens``) or "chars".

  Returns:
    The path written (str).

  Raises:
    ValueError: ``unit`` is neither "tokens" nor "chars".
  """
  if unit not in ("tokens", "chars"):
    raise ValueError(f"unit must be 'tokens' or 'chars', got {unit!r}")
  fig, ax = _figure()
  if not summaries:
    _no_data(ax, "datasets")
    return _save(fig, path)
  names = list(summaries)
  x = np.arange(len(names))
  for j, side in enumerate(("instruction", "response")):
    means = [summaries[n][f"{side}_{unit}"]["mean"] for n in names]
    vals = [0.0 if m is None else m for m in means]
    bars = ax.bar(x + (j - 0.5) * 0.4, vals, 0.4, label=side)
    for b, m in zip(bars, means):
      ax.annotate("n/a" if m is None else f"{m:.0f}", (b.get_x() + b.get_width() / 2,
                                                       b.get_height()),
                  ha="center", va="bottom", fontsize=8)
  ax.set_xticks(x, [f"{n}\n(n={summaries[n].get('count', 0)})" for n in names])
  ax.set_ylabel(f"mean length ({unit})")
  ax.set_title("Instruction and response lengths")
  ax.legend()
  return _save(fig, path)


def plot_win_rates(results: Sequence[Mapping], path: str | os.PathLike) -> str:
  """Win rates with ± one standard error and the 50% (tie) line ([HB] Table 3 style).

  Args:
    results: ``[{"name": str, "win_rate": float, "standard_error": float}, ...]``, win rates
      and standard errors in percent (0-100, AlpacaEval's unit); a None standard error draws
      no error bar.
    path: PNG to write.

  Returns:
    The path written (str).
  """
  fig, ax = _figure(max(5.0, 1.0 + 0.8 * len(results)), 4.0)
  if not results:
    _no_data(ax, "win rates")
    return _save(fig, path)
  names = [r["name"] for r in results]
  rates = [r["win_rate"] for r in results]
  errs = [0.0 if r.get("standard_error") is None else r["standard_error"] for r in results]
  x = np.arange(len(results))
  bars = ax.bar(x, rates, yerr=errs, capsize=4, color="tab:blue")
  for b, w in zip(bars, rates):
    ax.annotate(f"{w:.1f}", (b.get_x() + b.get_width() / 2, 0), xytext=(0, 3),
                textcoords="offset points", ha="center", va="bottom", fontsize=8, color="white")
  ax.axhline(50.0, color="gray", linestyle="--", linewidth=1, label="50% (tie)")
  ax.set_xticks(x, names, rotation=20, ha="right")
  ax.set_ylim(0, 100)
  ax.set_ylabel("win rate (%) ± SE")
  ax.set_title("Pairwise win rates")
  ax.legend(loc="upper right")
  return _save(fig, path)


def plot_winrate_vs_length(points: Sequence[Mapping], path: str | os.PathLike) -> str:
  """Win rate against mean output length: judges favour longer answers (AlpacaEval 2.0's
  length-controlled win rate exists for that reason; [HB] reports 10.12 vs LC 16.25).

  Args:
    points: ``[{"name": str, "win_rate": float (percent), "mean_output_tokens": float}]``.
    path: PNG to write.

  Returns:
    The path written (str).
  """
  fig, ax = _figure()
  if not points:
    _no_data(ax, "models")
    return _save(fig, path)
  xs = [p["mean_output_tokens"] for p in points]
  ys = [p["win_rate"] for p in points]
  ax.scatter(xs, ys)
  for p, x, y in zip(points, xs, ys):
    ax.annotate(p["name"], (x, y), xytext=(4, 4), textcoords="offset points", fontsize=8)
  ax.axhline(50.0, color="gray", linestyle="--", linewidth=1)
  ax.set_xlabel("mean output length (tokens)")
  ax.set_ylabel("win rate (%)")
  ax.set_title("Win rate vs output length")
  return _save(fig, path)


def plot_scaling(n_examples: Sequence[float], win_rates: Sequence[float],
                 standard_errors: Sequence[float] | None, fit: Mapping | None,
                 path: str | os.PathLike) -> str:
  """Data-scaling curve ([HB] Figure 2): win rate against N on a log x axis, with the fit.

  Args:
    n_examples: training-set sizes N (examples), > 0.
    win_rates: win rate at each N (percent).
    standard_errors: the win rates' standard errors (error bars), or None.
    fit: ``analyses.fit_scaling``'s dict (``alpha``, ``C``; natural log) drawn as
      ``w = alpha ln N + C``, or None (or ``{}``) for points only.
    path: PNG to write.

  Returns:
    The path written (str).

  Raises:
    ValueError: the sequences differ in length, or an N <= 0.
  """
  n = np.asarray(n_examples, dtype=np.float64)
  w = np.asarray(win_rates, dtype=np.float64)
  if n.shape != w.shape or (standard_errors is not None and len(standard_errors) != len(n)):
    raise ValueError("n_examples, win_rates and standard_errors must have equal lengths")
  if np.any(n <= 0):
    raise ValueError(f"every N must be > 0, got {n.tolist()}")
  fig, ax = _figure()
  if not len(n):
    _no_data(ax, "points")
    return _save(fig, path)
  ax.errorbar(n, w, yerr=None if standard_errors is None else np.asarray(standard_errors,
                                                                         dtype=np.float64),
              fmt="o", capsize=4, label="measured")
  if fit:
    grid = np.geomspace(n.min(), n.max(), 100) if n.min() < n.max() else n
    ax.plot(grid, fit["alpha"] * np.log(grid) + fit["C"], "-",
            label=f"fit: {fit['alpha']:.2f} ln N {fit['C']:+.2f}")
  ax.set_xscale("log")
  ax.set_xlabel("training examples N (log scale)")
  ax.set_ylabel("win rate (%)")
  ax.set_title("Data scaling")
  ax.legend()
  return _save(fig, path)


def plot_verb_noun(top_pairs: Sequence[Sequence], path: str | os.PathLike) -> str:
  """Horizontal bars of the most common (root verb, noun object) pairs of instructions.

  [HB] Figure 4 draws them as a sunburst (verbs inside, their nouns outside); bars carry the
  same counts.

  Args:
    top_pairs: ``[[verb, noun, count], ...]`` (``analyses.verb_noun``'s ``top_pairs``), most
      common first; drawn top to bottom in that order.
    path: PNG to write.

  Returns:
    The path written (str).
  """
  fig, ax = _figure(6.0, max(2.5, 0.3 * len(top_pairs) + 1.0))
  if not top_pairs:
    _no_data(ax, "verb-noun pairs")
    return _save(fig, path)
  labels = [f"{v} {n}" for v, n, _ in top_pairs]
  counts = [c for _, _, c in top_pairs]
  y = np.arange(len(top_pairs))
  ax.barh(y, counts)
  ax.set_yticks(y, labels)
  ax.invert_yaxis()
  ax.set_xlabel("instructions")
  ax.set_title("Most common root verb - noun object pairs")
  return _save(fig, path)
