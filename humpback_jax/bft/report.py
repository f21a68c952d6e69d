"""The "Back-and-forth translation" section of ``report.md``: the rewrite and distill stages'
counts (tag failures, retries, kept drafts, drops) and the variants' training mixtures."""

from __future__ import annotations

__all__ = ["bft_section"]


def _pct(x) -> str:
  return "–" if x is None else f"{100 * x:.1f}%"


def bft_section(stages: dict) -> list[str]:
  """Markdown lines from the manifest's stage entries (empty when no [BF] stage ran)."""
  rewrites = {n: e for n, e in stages.items() if n.startswith("rewrite_") and "rewrite" in e}
  distills = {n: e for n, e in stages.items() if n.startswith("distill_") and "count" in e}
  variants = {n: e for n, e in stages.items() if n.startswith("train_") and "sources" in e}
  if not (rewrites or distills or variants):
    return []
  lines = ["", "## Back-and-forth translation ([BF] §2)", ""]
  if rewrites:
    lines += ["Rewrites: the aligned model's text between [RES] and [/RES] (`bft/rewrite_parse.py`"
              "); a failed parse is resampled with a new seed, then the policy keeps the draft "
              "or drops the pair.", "",
              "| stage | pairs | first-attempt ok | attempts not accepted | statuses other than "
              "ok (all attempts) | retried | rewritten | kept draft | dropped | identical to "
              "draft |", "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for name, e in rewrites.items():
      r = e["rewrite"]
      fails = {k: v for k, v in r["statuses"].items() if k != "ok" and v}
      out = r["outcomes"]
      failed = (f"{r['failed_attempts']} / {r['attempts']} ({_pct(r['failure_rate'])})"
                if "failed_attempts" in r else "–")
      lines.append(f"| {name} | {r['rows']} | {_pct(r.get('first_attempt_ok_rate'))} | "
                   f"{failed} | {fails or '–'} | {r['retried_rows']} | "
                   f"{out.get('rewritten', 0) + out.get('rewritten_unterminated', 0)} | "
                   f"{out.get('kept_draft', 0)} | {out.get('dropped', 0)} | "
                   f"{r.get('identical_to_draft', 0)} |")
    policies = {str(e.get("policy")) for e in rewrites.values()}
    lines += ["", f"Policy: {', '.join(sorted(policies))}."]
  for name, e in distills.items():
    lines.append(f"- {name}: {e['count']} answers of {e['pairs']} instructions "
                 f"({e.get('dropped_empty')} empty dropped, {e.get('unfinished')} cut at "
                 "max_new_tokens).")
  if variants:
    lines += ["", "| variant model | training mixture (examples per source) | schedule | "
              "steps | final training loss | final held-out loss |",
              "|---|---|---|---:|---:|---:|"]
    for name, e in variants.items():
      train, loss = e.get("final_loss"), e.get("final_eval_loss")
      lines.append(f"| {name[len('train_'):]} | {e['sources']} | {e.get('lr_schedule')} | "
                   f"{e.get('steps', '–')} | {'–' if train is None else f'{train:.3f}'} | "
                   f"{'–' if loss is None else f'{loss:.3f}'} |")
  return lines
