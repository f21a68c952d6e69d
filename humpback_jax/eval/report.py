"""The "Evaluation" section of ``report.md``: win rates ± SE, head-to-head, the judge's
self-agreement, curation precision / recall, the data analyses, and their plots (PNG files in
``RUN_DIR/eval``, embedded by relative path). Built only from files in the run directory."""

from __future__ import annotations

import json

from humpback_jax import fs

__all__ = ["evaluation_section", "write_result_plots"]


def _f(x, digits: int = 2) -> str:
  return "–" if x is None else f"{x:.{digits}f}"


def _read(path):
  return json.loads(path.read_text()) if path.exists() else None


def write_result_plots(run_dir, results: dict) -> dict:
  """Writes ``eval/win_rates.png`` (each comparison's win rate ± SE) and
  ``eval/winrate_vs_length.png`` (win rate against mean output length, the length-controlled
  view) from ``eval/results.json``'s content; returns ``{name: relative path}``."""
  from humpback_jax.eval import plots
  run = fs.path(run_dir)
  rows = results["results"]
  out = {}
  bars = [{"name": r["pair"].replace("_vs_", " vs "), "win_rate": r["win_rate"],
           "standard_error": r["standard_error"] or 0.0} for r in rows]
  if bars:
    out["win_rates"] = "eval/win_rates.png"
    plots.plot_win_rates(bars, str(run / out["win_rates"]))
    points = [{"name": r["evaluated"], "win_rate": r["win_rate"],
               "mean_output_tokens": r["len_evaluated_mean"]} for r in rows
              if not r["head_to_head"]]
    if points:
      out["winrate_vs_length"] = "eval/winrate_vs_length.png"
      plots.plot_winrate_vs_length(points, str(run / out["winrate_vs_length"]))
  sc = results.get("scaling")
  if sc and sc.get("points"):
    pts = [p for p in sc["points"] if p["examples"] > 0]
    if pts:
      out["scaling"] = "eval/scaling.png"
      plots.plot_scaling([p["examples"] for p in pts], [p["win_rate"] for p in pts],
                         [p["standard_error"] or 0.0 for p in pts], sc.get("fit") or {},
                         str(run / out["scaling"]))
  return out


def evaluation_section(run_dir) -> list[str]:
  """Markdown lines of the evaluation section (empty when nothing was evaluated)."""
  run = fs.path(run_dir)
  results = _read(run / "eval/results.json")
  quality = _read(run / "eval/curation_quality.json")
  analyses = _read(run / "eval/analyses.json")
  if not (results or quality or analyses):
    return []
  lines = ["", "## Evaluation", ""]
  if results:
    lines += [f"AlpacaEval-style pairwise judging of {results['prompts']} prompts "
              f"(`{results['prompts_file']}`, seeded subset {results['num_prompts']} / seed "
              f"{results['subset_seed']}) by the judge `{results['judge']}`, each pair in both "
              "orders (P(better) from the log-probs of the two identifier tokens). Win rate = "
              "100 x mean preference ± its standard error over prompts; LC = length-controlled "
              "(GLM on the length difference, AlpacaEval 2.0 style). Agreement = share of pairs "
              "the judge decides the same way in both orders; position bias = mean P(first "
              "better) - 0.5.", "",
              "| evaluated | against | win rate ± SE | LC win rate ± SE | W / L / T | "
              "mean tokens (evaluated / other) | agreement | position bias |",
              "|---|---|---:|---:|---|---|---:|---:|"]
    for r in results["results"]:
      lc = r.get("length_controlled") or {}
      o = r.get("order") or {}
      lines.append(
          f"| {r['evaluated']} | {r['against']} | {_f(r['win_rate'])} ± "
          f"{_f(r['standard_error'])} | {_f(lc.get('lc_win_rate'))} ± "
          f"{_f(lc.get('lc_standard_error'))} | {r['wins']} / {r['losses']} / {r['ties']} | "
          f"{_f(r.get('len_evaluated_mean'), 0)} / {_f(r.get('len_other_mean'), 0)} | "
          f"{_f(o.get('agreement'))} | {_f(o.get('position_bias'))} |")
    stats = results.get("judge_stats") or {}
    lines += ["", f"Judge: {stats.get('judgments')} judgments, "
              f"{stats.get('truncated_outputs')} outputs cut to the judge's budget, "
              f"{stats.get('unreadable')} unreadable (neither identifier available)."]
    agreements = [(r.get("order") or {}).get("agreement") for r in results["results"]]
    agreements = [a for a in agreements if a is not None]
    if agreements and min(agreements) < 0.6:
      lo, hi = 100 * min(agreements), 100 * max(agreements)
      span = f"{lo:.0f}%" if round(lo) == round(hi) else f"{lo:.0f}-{hi:.0f}%"
      lines.append(f"**The judge is weak**: it agrees with itself across the two orders on "
                   f"only {span} of pairs; differences within a few standard errors mean "
                   "nothing.")
    for r in results["results"]:
      same = r.get("identical_outputs")
      if same:
        lines.append(f"- {r['evaluated']} and {r['against']} wrote identical outputs on {same} "
                     f"of {r['n']} prompts (judged as ties: preference 0.5 by construction "
                     "of the two orders).")
    for key, title in (("win_rates", "Win rates"), ("winrate_vs_length",
                                                     "Win rate against output length")):
      if (run / f"eval/{key}.png").exists():
        lines += ["", f"![{title}](eval/{key}.png)"]
    sc = results.get("scaling")
    if sc:
      fit = sc.get("fit") or {}
      lines += ["", "### Data scaling ([HB] Figure 2: w = alpha log N + C; alpha 6.95 for "
                "Humpback, 5.40 Alpaca-GPT4, 4.43 OASST, 2.86 LIMA)", "",
                "| model | curated examples N | win rate ± SE |", "|---|---:|---:|"]
      for p in sc["points"]:
        lines.append(f"| {p['name']} | {p['examples']} | {_f(p['win_rate'])} ± "
                     f"{_f(p['standard_error'])} |")
      if fit:
        lines += ["", f"Fit over N > 0: alpha = {_f(fit.get('alpha'))} ± "
                  f"{_f(fit.get('alpha_se'))}, C = {_f(fit.get('C'))}, R² = "
                  f"{_f(fit.get('r2'))} ({fit.get('n_points')} points)."]
      if (run / "eval/scaling.png").exists():
        lines += ["", "![Data scaling](eval/scaling.png)"]
  if quality:
    lines += ["", f"### Curation quality ([HB] §4.3: M0 0.44 / 0.09, M1 0.52 / 0.44, GPT-4 "
              "0.88 / 0.92)", "",
              f"{quality['count']} candidates labelled by the reference `{quality['reference']}`"
              f" (its score >= {quality['threshold']}: {quality['reference_positive']} positive).",
              "", "| selection by | candidates labelled | selected | true positive | "
              "precision | recall |", "|---|---|---:|---:|---:|---:|"]
    for name, q in quality["iterations"].items():
      lines.append(f"| {name} | `{q.get('pool', 'data/candidates.jsonl')}` | {q['selected']} | "
                   f"{q['true_positive']} | {_f(q['precision'])} | {_f(q['recall'])} |")
  if analyses:
    lines += ["", "### Data analyses", ""]
    lines += _analyses_lines(analyses)
  return lines


def _analyses_lines(a: dict) -> list[str]:
  """Tables of ``eval/analyses.json`` (``eval.run_analyses.analyze_run``) and its plots."""
  lines = []
  datasets = a.get("datasets") or {}
  if datasets:
    lines += ["[HB] Table 2 view (tokens of the base tokenizer, mean ± std) and diversity "
              "(unique lowercase word trigrams; distinct = unique / total).", "",
              "| data | count | instruction tokens | response tokens | unique trigrams "
              "(instr.) | distinct (instr.) | unique trigrams (resp.) | distinct (resp.) |",
              "|---|---:|---|---|---:|---:|---:|---:|"]
    for name, d in datasets.items():
      if not d or not d.get("present", True) or d.get("error"):
        why = (d or {}).get("error") or "absent"
        lines.append(f"| {name} | {why} | | | | | | |")
        continue
      s = d.get("summary") or {}
      it, rt = s.get("instruction_tokens") or {}, s.get("response_tokens") or {}
      div = d.get("diversity") or {}
      di, dr = div.get("instruction") or {}, div.get("response") or {}
      lines.append(f"| {name} | {s.get('count')} | {_f(it.get('mean'), 1)} ± "
                   f"{_f(it.get('std'), 1)} | {_f(rt.get('mean'), 1)} ± {_f(rt.get('std'), 1)}"
                   f" | {di.get('unique', '–')} | {_f(di.get('distinct_ratio'), 3)} | "
                   f"{dr.get('unique', '–')} | {_f(dr.get('distinct_ratio'), 3)} |")
    reasons = {(d.get("verb_noun") or {}).get("reason") for d in datasets.values()
               if d and not (d.get("verb_noun") or {}).get("available", True)}
    reasons.discard(None)
    if reasons:
      lines += ["", f"Verb-noun structure ([HB] Figure 4): not computed: {sorted(reasons)[0]}"]
  scores = a.get("scores") or {}
  if scores:
    lines += ["", "| scored by | scored | share score 5 | share score >= 4 |",
              "|---|---:|---:|---:|"]
    for name, sc in scores.items():
      if sc.get("present", True):
        lines.append(f"| {name} | {sc.get('total')} | {_f(sc.get('fraction_5'), 3)} | "
                     f"{_f(sc.get('fraction_ge4'), 3)} |")
  for m in a.get("mauve") or []:
    if m.get("computed", True) and m.get("mauve") is not None:
      lines.append(f"- MAUVE {m.get('p')} vs {m.get('q')} ({m.get('field')}): "
                   f"{_f(m.get('mauve'), 3)} ({m.get('n_p')} / {m.get('n_q')} texts, features: "
                   f"{m.get('featurizer')})")
    else:
      lines.append(f"- MAUVE {m.get('p')} vs {m.get('q')}: not computed ({m.get('reason')})")
  for name, rel in (a.get("plots") or {}).items():
    lines += ["", f"![{name}]({rel})"]
  return lines
