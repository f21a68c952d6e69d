"""Self-curation ([HB] §2.2): rate (instruction, segment) pairs with a seed-tuned model.

The model answers the verbatim rating prompt of [HB] Table 19 (``templates.RATING_PROMPT``) with
a brief reasoning and ``Score: N``. ``parse_score`` reads N robustly; the share of outputs it can
read is the *validity rate* (an earlier reimplementation failed on 45-67% of outputs, [BF]
reports 88% valid; ``method.md`` §5). ``mode="logprob"`` is the parse-free alternative: one
forward pass over the prompt followed by ``Score:``, reading the probabilities of the tokens
"1".."5" (never unparsable). ``mode="generate+logprob"`` generates and parses, and falls back to
the logprob read-out after the model's own reasoning when the parse fails.

Thresholds: A_5 = score 5 ("≥ 4.5" in [HB] §4.1), A_4 = score ≥ 4; main setting k = 5.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import numpy as np

from humpback_jax.data import templates

SCORES = (1, 2, 3, 4, 5)

# "Score: 4", "**Score:** 4", "Score = 4/5", "score of 4", "Rating: 4", "4/5"; the optional
# group 2 is the denominator of "N/D" or "N out of D" (only 5 is a 5-point score).
_NUMBER = r"(\d+(?:\.\d+)?)(?:\s*(?:/|out of)\s*(\d+))?"
_SCORE_PATTERNS = (
    re.compile(r"score\s*[:=]?\s*(?:is|of)?\s*[*_\s]*\(?\s*" + _NUMBER, re.IGNORECASE),
    re.compile(r"rating\s*[:=]?\s*(?:is|of)?\s*[*_\s]*\(?\s*" + _NUMBER, re.IGNORECASE),
    re.compile(r"\b(\d(?:\.\d+)?)\s*(?:/|out of)\s*(5)\b", re.IGNORECASE),
)


def parse_score(text: str) -> int | None:
  """Reads the 5-point score from a rating model's output.

  The LAST ``Score: N`` wins (the prompt asks for it on the last line; reasoning may quote the
  scale). Accepts markdown emphasis, ``N/5``, ``N out of 5``, ``Rating: N``, and a bare digit
  1-5 alone on the last non-empty line. Decimals round half up (4.5 -> 5, as [HB]'s "≥ 4.5").
  Values outside 1..5 (an earlier reimplementation read "8", "91") and scores on another scale
  ("5 out of 10", "7/10") are invalid.

  Returns:
    1..5, or None when no valid score is found.
  """
  for pattern in _SCORE_PATTERNS:
    matches = pattern.findall(text)
    if matches:
      number, denominator = matches[-1]
      if denominator and denominator != "5":
        return None
      value = float(number)
      score = int(np.floor(value + 0.5))
      return score if 1 <= score <= 5 and value <= 5 else None
  lines = [l.strip(" *_#.`") for l in text.strip().splitlines() if l.strip()]
  if lines and re.fullmatch(r"[1-5]", lines[-1]):
    return int(lines[-1])
  return None


@dataclasses.dataclass(frozen=True)
class CurationConfig:
  """How M_t rates candidates.

  Attributes:
    mode: "generate" (reasoning + parse), "logprob" (parse-free), or "generate+logprob"
      (parse, logprob fallback on failures).
    threshold: k; a pair is kept when its score >= k ([HB] main setting k = 5).
    max_new_tokens: generation budget for the reasoning + score line (tokens). Not reported.
    temperature, top_p: rating decoding; [BF] §2 used T = 1.0, p = 0.9. 0 temperature = greedy.
    max_prompt_len: prompt budget (tokens); longer prompts are truncated and counted.
    batch_size: rows per sampler call.
    chunk_size: candidates per resumable chunk (written to the partial file before the next).
  """

  mode: str = "generate+logprob"
  threshold: int = 5
  max_new_tokens: int = 96
  temperature: float = 1.0
  top_p: float = 0.9
  max_prompt_len: int = 1536
  batch_size: int = 16
  chunk_size: int = 256

  def __post_init__(self):
    if self.mode not in ("generate", "logprob", "generate+logprob"):
      raise ValueError(f"CurationConfig.mode={self.mode!r}: expected generate, logprob or "
                       "generate+logprob")
    if self.threshold not in SCORES:
      raise ValueError(f"CurationConfig.threshold={self.threshold}: expected 1..5")


def rating_prompts(tokenizer, candidates: Sequence[dict]) -> list[str]:
  """Renders [HB] Table 19 for each ``{"instruction", "response"}`` candidate."""
  return [templates.rating_prompt(tokenizer, c["instruction"], c["response"]) for c in candidates]


def score_token_ids(tokenizer) -> list[int]:
  """Token ids of " 1".." 5" (or "1".."5" where the space merges differently), one per score.

  Raises:
    ValueError: a digit does not encode to a single token.
  """
  ids = []
  for s in SCORES:
    toks = tokenizer.encode(f" {s}", add_bos=False)
    if len(toks) != 1:
      toks = tokenizer.encode(str(s), add_bos=False)
    if len(toks) != 1:
      toks = toks[-1:]  # e.g. SentencePiece "▁" + "5": the digit piece follows the space
    ids.append(toks[0])
  return ids


def expected_scores(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """From probabilities over "1".."5" (f32 [N, 5]) to (argmax score int [N], mean score f32 [N])."""
  scores = np.asarray(SCORES, np.float32)
  return probs.argmax(-1).astype(np.int32) + 1, (probs * scores).sum(-1)


def score_candidates(sampler, params, tokenizer, candidates: Sequence[dict], cfg: CurationConfig,
                     seed: int) -> list[dict]:
  """Rates a batch of candidates; returns one record per candidate.

  Each record: ``{"id", "score": int|None, "parsed": bool, "source": "parse"|"logprob"|None,
  "rating": str (the generated reasoning; "" in logprob mode), "p_scores": [5 floats]|None}``.
  """
  prompts = rating_prompts(tokenizer, candidates)
  n = len(prompts)
  texts = [""] * n
  parsed: list[int | None] = [None] * n
  if cfg.mode != "logprob":
    from humpback_jax.sample.sampling import Greedy, Sampling
    strategy = (Greedy() if cfg.temperature <= 0 else
                Sampling(temperature=cfg.temperature, top_p=cfg.top_p))
    texts = sampler.generate_texts(params, prompts, max_new_tokens=cfg.max_new_tokens,
                                   strategy=strategy, seed=seed)
    parsed = [parse_score(t) for t in texts]
  records = [{"id": c["id"], "score": p, "parsed": p is not None,
              "source": "parse" if p is not None else None, "rating": t, "p_scores": None}
             for c, p, t in zip(candidates, parsed, texts)]
  need = [i for i, p in enumerate(parsed) if p is None] if cfg.mode != "generate" else []
  if need:
    # After the model's own reasoning (or right away in logprob mode), cut any partial score
    # line, then ask for the digit after "Score:".
    tails = [re.split(r"(?im)^.*\b(?:score|rating)\b.*$", texts[i])[0].rstrip() for i in need]
    probe = [prompts[i] + (tail + "\n" if tail else "") + "Score:" for i, tail in zip(need, tails)]
    probs = sampler.score_next_token(params, probe, score_token_ids(tokenizer))
    best, _ = expected_scores(np.asarray(probs))
    for j, i in enumerate(need):
      records[i].update(score=int(best[j]), source="logprob",
                        p_scores=[round(float(x), 5) for x in probs[j]])
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


def select(candidates: Sequence[dict], scores: dict[str, int | None], threshold: int) -> list[dict]:
  """A_k: candidates whose score >= threshold, in candidate order, score attached."""
  return [dict(c, score=scores[c["id"]]) for c in candidates
          if scores.get(c["id"]) is not None and scores[c["id"]] >= threshold]
