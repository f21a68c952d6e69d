"""Self-curation ([HB] §2.2): rate (instruction, segment) pairs with a seed-tuned model.

The model answers the verbatim rating prompt of [HB] Table 19 (``templates.RATING_PROMPT``) with
a brief reasoning and ``Score: N``. Two read-outs of its judgement are taken:

- **parse** (``parse.parse_score``): the score written in the generated text; the share of
  outputs it can read is the *validity rate* (an earlier reimplementation failed on 45-67% of
  outputs, [BF] reports 88% valid; ``method.md`` §5).
- **log-prob** (``probe.read_scores``): the model's distribution over "Score: 1".."Score: 5"
  read at the digit position (never unparsable), after the model's own reasoning (the reasoning
  is cut before its first line that mentions a score) or, in ``mode="logprob"``, right after
  the prompt. It is cheap (one forward pass) and computed for every pair, so the two read-outs
  can be compared (*parse/log-prob agreement*).

``mode`` decides which read-out is THE score: "generate" (parse only; unparsable = no score),
"logprob" (log-prob arg-max, no generation), "generate+logprob" (parse, log-prob arg-max where
the parse fails).

Shared-prefix reuse (``CurationConfig.prefix_reuse``): every log-prob read-out starts with the
same rating prompt head (chat header + rubric, ~500 tokens); it is encoded once per model and
only the pair (plus the reasoning) is prefilled per candidate (``sample/prefix.py``), with the
same scores up to float rounding. Generation (the "generate" read-out) is unchanged.

Thresholds: A_5 = score 5 ("≥ 4.5" in [HB] §4.1), A_4 = score ≥ 4; main setting k = 5.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import numpy as np

from humpback_jax.curate.parse import SCORES, parse_score
from humpback_jax.curate.probe import ProbeError, ScoreReadout, read_scores, score_probe
from humpback_jax.data import templates

__all__ = [
    "SCORES", "CurationConfig", "ProbeError", "ScoreReadout", "curation_stats",
    "parse_score", "rating_prompts", "read_scores", "score_candidates", "score_histogram",
    "score_probe", "select", "validity_rate",
]

MODES = ("generate", "logprob", "generate+logprob")


@dataclasses.dataclass(frozen=True)
class CurationConfig:
  """How M_t rates candidates.

  Attributes:
    mode: which read-out is the score (see the module docstring): "generate",
      "logprob" or "generate+logprob".
    threshold: k; a pair is kept when its score >= k ([HB] main setting k = 5).
    max_new_tokens: generation budget for the reasoning + score line (tokens). Not reported.
    temperature, top_p: rating decoding; [BF] §2 used T = 1.0, p = 0.9. 0 temperature = greedy.
    max_prompt_len: prompt budget (tokens). Prompt + ``max_new_tokens`` must fit the model's
      context length; longer prompts lose their middle (counted) or raise, per
      ``prompt_overflow``.
    prompt_overflow: "truncate" (cut the middle, count it) or "error".
    batch_size: rows per sampler call.
    chunk_size: candidates per resumable chunk (written to the partial file before the next).
    sanity_pairs: how many seed pairs the judge sanity check rates, as written and with the
      responses shuffled among them (``curate.sanity``); 0 turns the check off.
    prefix_reuse: the log-prob read-out (modes "logprob" and "generate+logprob") encodes the
      rating prompt's fixed head (``probe.rating_prefix``: chat header + rubric up to the
      pair) once per model and prefills only each pair (and its reasoning) on top of it
      (``sample.prefix.PrefixScorer``): the same scores up to float rounding, ~2-3x fewer
      tokens prefilled. Prompts that do not start with the head are read in full (record
      field ``prefix_reused`` False, counted in ``curation_stats``). A speed setting only.
      (The judge sanity check, ``curate.sanity``, reads with ``read_scores``' default: reuse
      on.)
  """

  mode: str = "generate+logprob"
  threshold: int = 5
  max_new_tokens: int = 96
  temperature: float = 1.0
  top_p: float = 0.9
  max_prompt_len: int = 1536
  prompt_overflow: str = "truncate"
  batch_size: int = 16
  chunk_size: int = 256
  sanity_pairs: int = 32
  prefix_reuse: bool = True

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"CurationConfig.mode={self.mode!r}: expected one of {', '.join(MODES)}")
    if self.threshold not in SCORES:
      raise ValueError(f"CurationConfig.threshold={self.threshold}: expected 1..5")
    if self.sanity_pairs < 0:
      raise ValueError(f"CurationConfig.sanity_pairs={self.sanity_pairs}: expected >= 0")


def rating_prompts(tokenizer, candidates: Sequence[dict]) -> list[str]:
  """Renders [HB] Table 19 for each ``{"instruction", "response"}`` candidate."""
  return [templates.rating_prompt(tokenizer, c["instruction"], c["response"]) for c in candidates]


# The first line that states (or starts to state) a score ends the reasoning the log-prob
# read-out is conditioned on.
_SCORE_LINE = re.compile(r"(?im)^.*\b(?:score|rating)\b.*$")


def reasoning_context(prompt: str, rating_text: str) -> str:
  """The rating prompt plus the model's reasoning up to (excluding) its first score line."""
  tail = _SCORE_LINE.split(rating_text, maxsplit=1)[0].rstrip()
  return prompt + (tail + "\n" if tail else "")


def score_candidates(sampler, params, tokenizer, candidates: Sequence[dict], cfg: CurationConfig,
                     seed: int) -> list[dict]:
  """Rates candidates with both read-outs; returns one record per candidate, in order.

  Args:
    sampler: ``sample.sampler.Sampler`` of the rating model.
    params: its parameters.
    tokenizer: its tokenizer.
    candidates: ``{"id", "instruction", "response"}`` dicts.
    cfg: the curation config.
    seed: the global sampling seed; candidate c samples with the key of (seed, c["id"])
      (``sampler.record_keys``), whatever else is in the call.
  Returns:
    Records ``{"id", "score": int|None, "source": "parse"|"logprob"|None, "parsed": bool,
    "rating": str (generated reasoning; "" in logprob mode), "rating_finished": bool|None,
    "p_scores": [5 floats, renormalised], "digit_mass": float, "expected_score": float,
    "logprob_score": int, "prefix_reused": bool|None (the read-out reused the encoded rating
    prompt head; None with ``prefix_reuse`` off), "prompt_truncated": bool (the probe exceeded
    the sampler's prompt budget and lost its middle)}``.
  Raises:
    ProbeError: the tokenizer cannot express the probe (see ``probe.score_probe``).
  """
  prompts = rating_prompts(tokenizer, candidates)
  n = len(prompts)
  texts, finished = [""] * n, [None] * n
  if cfg.mode != "logprob":
    from humpback_jax.sample.sampling import Greedy, Sampling
    strategy = (Greedy() if cfg.temperature <= 0 else
                Sampling(temperature=cfg.temperature, top_p=cfg.top_p))
    texts, finished = sampler.generate_texts(params, prompts, max_new_tokens=cfg.max_new_tokens,
                                             strategy=strategy, seed=seed,
                                             keys=[c["id"] for c in candidates],
                                             return_finished=True)
  contexts = [reasoning_context(p, t) for p, t in zip(prompts, texts)]
  readout = read_scores(sampler, params, tokenizer, contexts, prefix_reuse=cfg.prefix_reuse)
  records = []
  for i, c in enumerate(candidates):
    parsed = parse_score(texts[i]) if cfg.mode != "logprob" else None
    if parsed is not None:
      score, source = parsed, "parse"
    elif cfg.mode == "generate":
      score, source = None, None
    else:
      score, source = int(readout.argmax[i]), "logprob"
    records.append({"id": c["id"], "score": score, "source": source,
                    "parsed": parsed is not None, "rating": texts[i],
                    "rating_finished": finished[i], **readout.record(i),
                    "prompt_truncated": bool(readout.probe_tokens[i] > sampler.max_prompt_len)})
  return records


def score_histogram(records: Sequence[dict]) -> dict[str, int]:
  """Counts per score "1".."5" plus "invalid" (no score)."""
  hist = {str(s): 0 for s in SCORES}
  hist["invalid"] = 0
  for r in records:
    hist[str(r["score"]) if r.get("score") in SCORES else "invalid"] += 1
  return hist


def validity_rate(records: Sequence[dict]) -> float:
  """Parsed / total over generated ratings (logprob-only records are excluded); nan if none."""
  gen = [r for r in records if r.get("rating")]
  return float(np.mean([r["parsed"] for r in gen])) if gen else float("nan")


def curation_stats(records: Sequence[dict]) -> dict:
  """Summary of one curation pass, for the manifest and the report.

  Returns:
    ``scored`` (records), ``histogram`` (``score_histogram``), ``validity_rate`` (None without
    generated ratings), ``parse_logprob_agreement`` (share of records with a parsed score whose
    log-prob arg-max equals it; None if none) and ``agreement_pairs`` (how many had both),
    ``mean_digit_mass``,
    ``mean_expected_score``, ``logprob_scored`` (records whose score came from the log-prob
    read-out), ``ratings_unfinished`` (generated ratings cut by ``max_new_tokens``),
    ``truncated_prompts`` (rating prompts that lost their middle to fit),
    ``prefix_reused`` / ``prefix_fallbacks`` (read-outs taken on the shared rating-prompt head /
    read in full although reuse was on), ``A_5`` and ``A_4`` (counts with score 5 and >= 4).
  """
  both = [r for r in records if r.get("parsed") and r.get("logprob_score") is not None]
  mass = [r["digit_mass"] for r in records if r.get("digit_mass") is not None]
  expected = [r["expected_score"] for r in records if r.get("expected_score") is not None]
  scores = [r.get("score") for r in records]
  mean = lambda xs: float(np.mean(xs)) if len(xs) else None  # JSON has no NaN
  validity = validity_rate(records)
  return {
      "scored": len(records),
      "histogram": score_histogram(records),
      "validity_rate": None if np.isnan(validity) else validity,
      "parse_logprob_agreement": mean([r["score"] == r["logprob_score"] for r in both]),
      "agreement_pairs": len(both),
      "mean_digit_mass": mean(mass),
      "mean_expected_score": mean(expected),
      "logprob_scored": sum(1 for r in records if r.get("source") == "logprob"),
      "ratings_unfinished": sum(1 for r in records if r.get("rating_finished") is False),
      "truncated_prompts": sum(1 for r in records if r.get("prompt_truncated")),
      "prefix_reused": sum(1 for r in records if r.get("prefix_reused") is True),
      "prefix_fallbacks": sum(1 for r in records if r.get("prefix_reused") is False),
      "A_5": sum(1 for s in scores if s is not None and s >= 5),
      "A_4": sum(1 for s in scores if s is not None and s >= 4),
  }


def select(candidates: Sequence[dict], scores: dict[str, int | None], threshold: int) -> list[dict]:
  """A_k: candidates whose score >= threshold, in candidate order, score attached."""
  return [dict(c, score=scores[c["id"]]) for c in candidates
          if scores.get(c["id"]) is not None and scores[c["id"]] >= threshold]
