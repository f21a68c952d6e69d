"""The parse-free read-out of a rating: P("Score: N") for N in 1..5 at the right token.

A log-prob read-out taken right after ``"Score:"`` reads the wrong position: in LLaMA's
SentencePiece and in GPT-2-style BPE (SmolLM2) the next token there is the space (``▁`` /
``Ġ``), and the digit only follows it, so the five digits hold ~0.1% of the mass there
(``method.md`` §5). The probe is therefore built from the tokenisation of the full answer: for
each N in 1..5 the text ``prompt + "Score: N"`` is encoded, the five encodings must share one
prefix and differ only in a final single digit token, and the distribution is read at the end
of that prefix. A tokenizer for which this does not hold (the digit merges with what precedes
it, or a digit spans two tokens) raises ``ProbeError`` instead of reading a wrong position.

What is kept per rated pair (``ScoreReadout``): the renormalised 5-way distribution, the digit
mass before renormalising (how much the model believes it is writing a score at all), the
arg-max score and the expected score.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence

import numpy as np

from humpback_jax.curate.parse import SCORES

# What the model is asked to write on its last line ([HB] Table 19: 'write "Score: <rating>"').
SCORE_ANSWER = "Score: "


class ProbeError(ValueError):
  """The tokenizer does not encode "Score: N" as a shared prefix plus one digit token."""


class _Tokenizer(Protocol):

  def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
    ...

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
    ...


def score_probe(tokenizer: _Tokenizer, context: str,
                answer: str = SCORE_ANSWER) -> tuple[list[int], list[int]]:
  """Token ids of the probe after ``context`` and of the five digit continuations.

  Args:
    tokenizer: the rating model's tokenizer (encode adds BOS where the model expects one).
    context: the rendered rating prompt, plus the model's own reasoning if any (text, not
      ids, so that the tokenizer sees the full answer as it would be written).
    answer: the answer's words before the digit ("Score: ").
  Returns:
    (prefix ids: the tokens of ``context + answer`` up to, excluding, the digit,
     digit ids: 5 ints, the token that completes "Score: N" for N = 1..5).
  Raises:
    ProbeError: the five encodings of ``context + answer + N`` do not share one prefix and
      differ only in one last token, or that token does not decode to the digit N.
  """
  encodings = [list(tokenizer.encode(f"{context}{answer}{n}")) for n in SCORES]
  prefix = encodings[0][:-1]
  for n, ids in zip(SCORES, encodings):
    if len(ids) != len(prefix) + 1 or ids[:-1] != prefix:
      tail = tokenizer.decode(ids[len(prefix) - 2:], skip_special_tokens=False)
      raise ProbeError(
          f"cannot build the score probe with this tokenizer: {answer + str(n)!r} after the "
          f"prompt does not encode as the shared prefix plus one digit token (tail {tail!r}, "
          f"{len(ids)} tokens vs {len(prefix) + 1}); use CurationConfig.mode='generate'")
    piece = tokenizer.decode([ids[-1]], skip_special_tokens=False)
    if piece.strip() != str(n):
      raise ProbeError(
          f"cannot build the score probe with this tokenizer: the token completing "
          f"{answer + str(n)!r} decodes to {piece!r}, not {str(n)!r}; use "
          "CurationConfig.mode='generate'")
  digits = [ids[-1] for ids in encodings]
  return prefix, digits


@dataclasses.dataclass(frozen=True)
class ScoreReadout:
  """The judge's distribution over the five scores at the probe, for a batch of pairs.

  Attributes:
    p_scores: float32 [N, 5] P(N | probe) renormalised over the digits 1..5 (rows sum to 1).
    digit_mass: float32 [N] sum of P("1".."5") under the full softmax before renormalising:
      how much the model believes it is writing a score at all (in [0, 1]).
    argmax: int32 [N] the most likely score (1..5).
    expected_score: float32 [N] sum_n n * p_scores[:, n-1] (in [1, 5]).
    probe_tokens: int32 [N] length of each probe (tokens) before any truncation, or None.
  """

  p_scores: np.ndarray
  digit_mass: np.ndarray
  argmax: np.ndarray
  expected_score: np.ndarray
  probe_tokens: np.ndarray | None = None

  @classmethod
  def from_logprobs(cls, digit_logprobs: np.ndarray,
                    probe_tokens: np.ndarray | None = None) -> "ScoreReadout":
    """From log P(digit N | probe) float [N, 5] under the full softmax."""
    lp = np.asarray(digit_logprobs, np.float64)
    top = lp.max(-1, keepdims=True)
    w = np.exp(lp - top)
    p = w / w.sum(-1, keepdims=True)
    mass = np.exp(top[:, 0]) * w.sum(-1)
    scores = np.asarray(SCORES, np.float64)
    return cls(p_scores=p.astype(np.float32), digit_mass=mass.astype(np.float32),
               argmax=(p.argmax(-1) + 1).astype(np.int32),
               expected_score=(p @ scores).astype(np.float32),
               probe_tokens=probe_tokens)

  def record(self, i: int) -> dict:
    """JSON fields of row ``i``: ``p_scores`` (5 floats), ``digit_mass``, ``expected_score``,
    ``logprob_score``."""
    return {"p_scores": [round(float(x), 6) for x in self.p_scores[i]],
            "digit_mass": round(float(self.digit_mass[i]), 6),
            "expected_score": round(float(self.expected_score[i]), 4),
            "logprob_score": int(self.argmax[i])}


def read_scores(sampler, params, tokenizer: _Tokenizer, contexts: Sequence[str],
                answer: str = SCORE_ANSWER) -> ScoreReadout:
  """One forward pass per context: the judge's distribution over "Score: 1".."Score: 5".

  Args:
    sampler: a ``sample.sampler.Sampler`` of the rating model (prompts longer than its budget
      lose their middle, the probe at the end survives).
    params: the rating model's parameters.
    tokenizer: its tokenizer.
    contexts: N texts, each the rendered rating prompt plus, optionally, the model's reasoning.
    answer: the words before the digit.
  Returns:
    ``ScoreReadout`` of N rows.
  Raises:
    ProbeError: see ``score_probe``.
  """
  if not contexts:
    return ScoreReadout.from_logprobs(np.zeros((0, len(SCORES)), np.float32))
  probes = [score_probe(tokenizer, c, answer) for c in contexts]
  logp = sampler.candidate_logprobs(params, [p for p, _ in probes],
                                    np.asarray([d for _, d in probes], np.int32))
  return ScoreReadout.from_logprobs(logp, np.asarray([len(p) for p, _ in probes], np.int32))
