"""Judging sets of outputs against each other and summarizing: the win-rate table.

``judge_outputs`` judges, prompt by prompt, an evaluated model's outputs against another set
(the AlpacaEval reference, or another model of the run for a head-to-head), both orders, in
resumable chunks; ``summarize`` turns the judgments into the numbers of the report: win rate ±
standard error over prompts, the length-controlled win rate, wins/losses/ties, and the judge's
agreement with itself across the two orders.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from humpback_jax.eval import winrate

__all__ = ["judge_outputs", "summarize"]


def judge_outputs(judge, pair: str, prompts: Sequence[dict], evaluated: Sequence[str],
                  other: Sequence[str], *, appender=None, chunk_size: int = 32,
                  length_fn=None, progress: bool = False) -> list[dict]:
  """Judges ``evaluated[i]`` against ``other[i]`` for every prompt, both orders.

  Args:
    judge: a ``judge.PairwiseJudge``.
    pair: the comparison's name, e.g. ``"M1_vs_text_davinci_003"`` (the record id is
      ``"<pair>/<prompt id>"``).
    prompts: ``answers.load_prompts`` records (``id``, ``instruction``).
    evaluated, other: the two output sets, aligned with ``prompts``.
    appender: a ``jsonl.JsonlAppender`` of finished judgments (resume: records whose id it
      holds are not judged again); None keeps nothing.
    chunk_size: prompts per judge call (and per appended chunk).
    length_fn: text -> length (tokens) for the length-controlled view; None: characters.
  Returns:
    One record per prompt, in order: ``{id, pair, prompt_id, preference, p_model_first,
    p_model_second, choice_mass, len_evaluated, len_other}``.
  """
  if not len(prompts) == len(evaluated) == len(other):
    raise ValueError(f"{pair}: {len(prompts)} prompts, {len(evaluated)} and {len(other)} outputs")
  length_fn = length_fn or len
  done = dict((r["id"], r) for r in appender.records) if appender is not None else {}
  todo = [i for i, p in enumerate(prompts) if f"{pair}/{p['id']}" not in done]
  chunks = [todo[s:s + chunk_size] for s in range(0, len(todo), chunk_size)]
  if progress and chunks:
    from tqdm.auto import tqdm
    chunks = tqdm(chunks, desc=f"judge {pair} (chunks)")
  for chunk in chunks:
    got = judge.compare([prompts[i]["instruction"] for i in chunk],
                        [evaluated[i] for i in chunk], [other[i] for i in chunk])
    recs = [{"id": f"{pair}/{prompts[i]['id']}", "pair": pair, "prompt_id": prompts[i]["id"],
             **g, "len_evaluated": int(length_fn(evaluated[i])),
             "len_other": int(length_fn(other[i]))} for i, g in zip(chunk, got)]
    if appender is not None:
      appender.append(recs)
    done.update((r["id"], r) for r in recs)
  return [done[f"{pair}/{p['id']}"] for p in prompts]


def summarize(judgments: Sequence[dict], *, length_controlled: bool = True) -> dict:
  """The report's numbers for one comparison.

  Returns:
    ``winrate.win_rate`` fields (``n, win_rate, standard_error, wins, losses, ties,
    discrete_win_rate``), ``order_agreement`` (``agreement``, ``position_bias``,
    ``correlation``), the mean lengths, and with ``length_controlled`` the
    ``winrate.length_controlled`` fields (``lc_win_rate``, ``lc_standard_error``, ...).
  """
  pref = np.asarray([j["preference"] for j in judgments], np.float64)
  out = dict(winrate.win_rate(pref))
  out["order"] = winrate.order_agreement([j["p_model_first"] for j in judgments],
                                         [j["p_model_second"] for j in judgments])
  mass = [j["choice_mass"] for j in judgments if j.get("choice_mass") is not None]
  out["choice_mass_mean"] = float(np.mean(mass)) if mass else None
  lens_e = np.asarray([j["len_evaluated"] for j in judgments], np.float64)
  lens_o = np.asarray([j["len_other"] for j in judgments], np.float64)
  out["len_evaluated_mean"] = float(lens_e.mean()) if lens_e.size else None
  out["len_other_mean"] = float(lens_o.mean()) if lens_o.size else None
  if length_controlled:
    out["length_controlled"] = winrate.length_controlled(pref, lens_e, lens_o)
  return out
