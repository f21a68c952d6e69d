"""``RUN_DIR/report.md``: counts per stage, length stats, score histograms per iteration, the
parse-validity rate and ten example curated pairs. Built only from the manifest and the
artifacts in the run directory (local or ``gs://``: read and written through ``humpback_jax.fs``).
"""

from __future__ import annotations

import math

from humpback_jax import fs, jsonl
from humpback_jax.data.seed import length_stats

_BAR = 40


def _fmt(x) -> str:
  if x is None:
    return "–"
  if isinstance(x, float):
    return "n/a" if math.isnan(x) else f"{x:.3f}"
  return str(x)


def _lengths_row(name: str, pairs: list[dict]) -> str:
  s = length_stats(pairs) if pairs else None
  if not s:
    return f"| {name} | 0 | – | – |"
  return (f"| {name} | {s['count']} | {s['instruction_chars_mean']} ± "
          f"{s['instruction_chars_std']} | {s['response_chars_mean']} ± "
          f"{s['response_chars_std']} |")


def _histogram(hist: dict[str, int]) -> list[str]:
  total = max(1, sum(hist.values()))
  out = ["| score | count | share | |", "|---|---:|---:|---|"]
  for k, v in hist.items():
    out.append(f"| {k} | {v} | {100 * v / total:.1f}% | {'█' * round(_BAR * v / total)} |")
  return out


def _clip(text: str, n: int = 300) -> str:
  text = " ".join(text.split())
  return text if len(text) <= n else text[:n] + " …"


def write_report(ctx, manifest) -> str:
  """Writes and returns the markdown report (stages not yet run are shown as pending)."""
  stages = manifest.data["stages"]
  run = fs.path(ctx.run_dir)
  lines = ["# Humpback run report", ""]
  base = ctx.config.base.checkpoint
  lines.append(f"Base model: `{base}`" + (
      " (SmolLM2-135M-Instruct: instruction-tuned, not a base model as in the paper)"
      if base == "smollm2" else ""))
  wall = manifest.data.get("wall_seconds_last_run")
  if wall is not None:
    lines.append(f"Wall time of the last full run: {wall:.1f} s")
  compiled = manifest.data.get("compile_last_run")
  if compiled is not None:
    lines.append(f"XLA compilations in the last run: {compiled.get('compilations')} "
                 f"({compiled.get('compile_seconds')} s; {compiled.get('cache_hits')} loaded "
                 "from the persistent cache)")
  lines += ["", "## Stages", "",
            "| stage | status | count | seconds | compilations | compile seconds |",
            "|---|---|---:|---:|---:|---:|"]
  for name, entry in stages.items():
    lines.append(f"| {name} | {entry.get('status')} | {entry.get('count', '')} | "
                 f"{entry.get('seconds', '')} | {entry.get('compilations', '')} | "
                 f"{entry.get('compile_seconds', '')} |")
  for name, entry in stages.items():
    if entry.get("status") == "failed":
      lines += ["", f"**Stage {name} failed** (attempt {entry.get('attempts')}): "
                f"{' '.join(str(entry.get('error')).split())}. Earlier stages' outputs are "
                "intact; fix the cause and rerun the same command to resume."]
    if entry.get("rerun_reason"):
      lines += ["", f"Stage {name} was rerun because its inputs changed: "
                f"{'; '.join(entry['rerun_reason'])}."]

  trained = [(n, e) for n, e in stages.items() if n.startswith("train_") and "steps" in e]
  if trained:
    lines += ["", "## Training", "",
              "Train loss is measured with dropout on; the held-out loss is deterministic "
              "(dropout off) on examples held out of the training file, so it tells learning "
              "from dropout noise.", "",
              "| model | examples | steps | final train loss | final held-out loss | "
              "seconds | tokens/s/device | MFU |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, e in trained:
      lines.append(f"| {name[len('train_'):]} | {e.get('count')} | {e.get('steps')} | "
                   f"{_fmt(e.get('final_loss'))} | {_fmt(e.get('final_eval_loss'))} | "
                   f"{_fmt(e.get('train_seconds'))} | "
                   f"{_fmt(e.get('tokens_per_second_per_device'))} | {_fmt(e.get('mfu'))} |")
    sources = {e.get("peak_flops_source") for _, e in trained} - {None}
    if sources:
      lines += ["", f"MFU = model FLOPs/s (6 x matmul parameters + attention, per token) over "
                f"the peak ({', '.join(sorted(sources))}); TensorBoard scalars in "
                "`tensorboard/`."]
  lines += ["", "## Data", ""]
  web = stages.get("prepare_web", {}).get("stats")
  if web:
    lines += ["Web segmentation ([HB] §2.1, App. E):", "",
              f"- documents read: {web.get('documents_read')} (failed: "
              f"{web.get('documents_failed_total')}, no content: "
              f"{web.get('documents_no_content')}, no headers: "
              f"{web.get('documents_no_headers')})",
              f"- segments before filters: {web.get('segments_before_filters')}",
              f"- dropped per filter: {web.get('dropped')}",
              f"- failed or skipped per reason: {web.get('documents_failed')}",
              f"- kept: {web.get('kept')} segments, {web.get('chars_mean', 0):.0f} ± "
              f"{web.get('chars_std', 0):.0f} chars (paper: 1,722 ± 653)"]
    shown = {"documents_read", "documents_failed_total", "documents_no_content",
             "documents_no_headers", "segments_before_filters", "dropped", "documents_failed",
             "kept", "chars_mean", "chars_std", "chars_min", "chars_max", "config",
             "wall_seconds", "per_source"}
    other = {k: v for k, v in web.items() if k not in shown and v}
    if other:
      lines.append(f"- other counts: `{other}`")
    lines.append("")
  seed = stages.get("prepare_seed", {})
  if seed.get("dropped"):
    lines.append(f"Seed: {seed.get('total_seen')} records read, {seed.get('count')} pairs kept, "
                 f"{seed.get('total_dropped')} dropped; per source and reason: "
                 f"`{seed['dropped']}`")
    lines.append("")
  if seed.get("decontamination"):
    lines += [f"AlpacaEval decontamination: {seed['decontamination']}; "
              f"{seed.get('decontaminated')} seed pairs removed (rule: "
              f"{seed.get('decontamination_rule')}).", ""]
  aug = stages.get("augment")
  if aug:
    lines.append(f"Self-augmentation: {aug.get('segments')} segments -> {aug.get('count')} "
                 f"candidates ({aug.get('dropped_empty_instruction')} empty instructions "
                 f"dropped; {aug.get('unfinished')} cut at max_new_tokens without an EOS, "
                 f"{aug.get('dropped_unfinished')} of them dropped; "
                 f"{aug.get('truncated_prompts')} prompts middle-truncated).")
    if aug.get("instruction_like") is not None:
      lines.append(f"Candidates that read as an instruction (a question or an imperative; "
                   f"`data/instructions.py`): {aug['instruction_like']} of {aug.get('count')} "
                   f"({100 * aug.get('instruction_like_share', 0):.0f}%).")
    lines.append("")

  lines += ["### Lengths (characters, mean ± std; [HB] Table 2 style)", "",
            "| data | count | instruction | response |", "|---|---:|---|---|"]
  for name, rel in [("seed", "data/seed.jsonl"), ("candidates A", "data/candidates.jsonl")] + [
      (f"A_k^({t + 1})", f"data/curated_A{t + 1}.jsonl") for t in range(ctx.config.iterations)]:
    if (run / rel).exists():
      lines.append(_lengths_row(name, jsonl.read_jsonl(run / rel)))

  lines += ["", "## Self-curation", ""]
  for t in range(ctx.config.iterations):
    c = stages.get(f"curate_M{t}")
    if not c or c.get("status") != "done":
      continue
    lines += [f"### Iteration {t + 1}: scored by M{t} (mode {c.get('mode')})", "",
              f"- candidates scored: {c.get('scored')}",
              f"- parse-validity rate (parsed / generated ratings): "
              f"{_fmt(c.get('validity_rate'))}; ratings cut at max_new_tokens: "
              f"{c.get('ratings_unfinished')}",
              f"- mean digit mass at the probe (P of \"Score: 1..5\" before renormalising): "
              f"{_fmt(c.get('mean_digit_mass'))}",
              f"- parse/log-prob agreement: {_fmt(c.get('parse_logprob_agreement'))} "
              f"over {c.get('agreement_pairs')} pairs with both",
              f"- scored by the log-prob read-out (no parsable score): "
              f"{c.get('logprob_scored')}; mean expected score "
              f"{_fmt(c.get('mean_expected_score'))}",
              f"- rating prompts middle-truncated: {c.get('truncated_prompts')}",
              f"- A_5 (score 5): {c.get('A_5')}; A_4 (score >= 4): {c.get('A_4')}",
              f"- kept with k = {c.get('threshold')}: {c.get('count')}"]
    sanity = c.get("judge_sanity")
    if sanity:
      lines.append(
          f"- judge sanity check ({sanity['n']} seed pairs vs the same instructions with "
          f"shuffled responses, log-prob expected score): AUC {sanity['auc']:.3f} (95% CI "
          f"{sanity['ci_low']:.3f}-{sanity['ci_high']:.3f}); mean score {sanity['mean_real']:.2f}"
          f" real vs {sanity['mean_shuffled']:.2f} shuffled")
      if sanity.get("warning"):
        lines.append(f"- **WARNING: {sanity['warning']}.**")
    lines.append("")
    lines += _histogram(c.get("histogram", {}))
    lines.append("")

  last = None
  for t in reversed(range(ctx.config.iterations)):
    if (run / f"data/curated_A{t + 1}.jsonl").exists():
      last = t + 1
      break
  if last:
    curated = jsonl.read_jsonl(run / f"data/curated_A{last}.jsonl")
    lines += [f"## Example curated pairs (A_k^({last}), first 10)", ""]
    for c in curated[:10]:
      lines += [f"**[{c['id']}] score {c.get('score')}**", "",
                f"- instruction: {_clip(c['instruction'], 200)}",
                f"- response: {_clip(c['response'])}", ""]
  final = run / "data/final_outputs.json"
  if final.exists():
    import json
    outs = json.loads(final.read_text())
    lines += ["", f"## The final model's answers (first {len(outs)} AlpacaEval instructions, "
              "tags S_a + S_w, T = 0.7, p = 0.9)", ""]
    for o in outs[:5]:
      lines += [f"- **{_clip(o['instruction'], 150)}**", f"  {_clip(o['output'], 400)}"]
  from humpback_jax.bft.report import bft_section
  from humpback_jax.eval.report import evaluation_section
  lines += bft_section(stages)
  lines += evaluation_section(run)
  text = "\n".join(lines) + "\n"
  from humpback_jax import hosts
  if hosts.is_writer():  # process 0 writes; one object write on GCS
    fs.atomic_write_text(run / "report.md", text)
  return text
