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

Shared-prefix reuse. Every probe starts with the same rating prompt head (chat header + the
rubric of [HB] Table 19 up to the pair: 499 tokens with SmolLM2), so ``read_scores`` by default
encodes that head once and prefills only each probe's rest (``sample/prefix.py``; the same
numbers up to float rounding). ``rating_prefix`` is that head's token ids; a probe that does not
start with it is read without reuse (``ScoreReadout.prefix_reused``).
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Protocol, Sequence

import numpy as np

from humpback_jax.curate.parse import SCORES
from humpback_jax.data import templates

# What the model is asked to write on its last line ([HB] Table 19: 'write "Score: <rating>"').
SCORE_ANSWER = "Score: "


class ProbeError(ValueError):
  """The tokenizer does not encode "Score: N" as a shared prefix plus one digit token."""


class _Tokenizer(Protocol):

  def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
    ...

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
    ...


def choice_probe(tokenizer: _Tokenizer, context: str, answer: str, choices: Sequence[str],
                 hint: str = "") -> tuple[list[int], list[int]]:
  """Token ids of the probe after ``context`` and of the K choice tokens that complete it.

  The parse-free read-out of a K-way choice (the five scores of self-curation, the two
  outputs of the pairwise judge): ``context + answer + c`` is encoded for each choice ``c``;
  the K encodings must share one prefix and differ only in one last token, which decodes to
  ``c`` (surrounding whitespace ignored). The distribution is read at the end of the prefix.

  Args:
    tokenizer: the reading model's tokenizer (encode adds BOS where the model expects one).
    context: the rendered prompt (text, so that the tokenizer sees the full answer as it
      would be written).
    answer: the words written before the choice (may be empty).
    choices: K >= 2 distinct strings.
    hint: appended to error messages (what the user can do instead).
  Returns:
    (prefix ids: the tokens of ``context + answer`` up to, excluding, the choice token,
     choice ids: K ints, the token that completes the text with each choice).
  Raises:
    ProbeError: the encodings do not share one prefix and differ only in one last token, or
      that token does not decode to its choice.
    ValueError: fewer than 2 choices, or duplicates.
  """
  if len(choices) < 2 or len(set(choices)) != len(choices):
    raise ValueError(f"choice_probe needs >= 2 distinct choices, got {list(choices)!r}")
  hint = f"; {hint}" if hint else ""
  encodings = [list(tokenizer.encode(f"{context}{answer}{c}")) for c in choices]
  prefix = encodings[0][:-1]
  for c, ids in zip(choices, encodings):
    if len(ids) != len(prefix) + 1 or ids[:-1] != prefix:
      tail = tokenizer.decode(ids[max(len(prefix) - 2, 0):], skip_special_tokens=False)
      raise ProbeError(
          f"cannot build the probe with this tokenizer: {answer + str(c)!r} after the "
          f"prompt does not encode as the shared prefix plus one {c!r} token (tail {tail!r}, "
          f"{len(ids)} tokens vs {len(prefix) + 1}){hint}")
    piece = tokenizer.decode([ids[-1]], skip_special_tokens=False)
    if piece.strip() != str(c).strip():
      raise ProbeError(
          f"cannot build the probe with this tokenizer: the token completing "
          f"{answer + str(c)!r} decodes to {piece!r}, not {str(c)!r}{hint}")
  return prefix, [ids[-1] for ids in encodings]


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
      differ only in one last token, or that token does not decode to the digit N
      (``choice_probe``).
  """
  return choice_probe(tokenizer, context, answer, [str(n) for n in SCORES],
                      hint="use CurationConfig.mode='generate'")


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
    prefix_reused: bool [N] the probe was read on the shared rating-prompt prefix encoded once
      (``sample/prefix.py``); False: read by a full forward although reuse was asked for (the
      probe does not start with the prefix); None: reuse was not asked for (or the sampler
      cannot do it).
  """

  p_scores: np.ndarray
  digit_mass: np.ndarray
  argmax: np.ndarray
  expected_score: np.ndarray
  probe_tokens: np.ndarray | None = None
  prefix_reused: np.ndarray | None = None

  @classmethod
  def from_logprobs(cls, digit_logprobs: np.ndarray,
                    probe_tokens: np.ndarray | None = None,
                    prefix_reused: np.ndarray | None = None) -> "ScoreReadout":
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
               probe_tokens=probe_tokens, prefix_reused=prefix_reused)

  def record(self, i: int) -> dict:
    """JSON fields of row ``i``: ``p_scores`` (5 floats), ``digit_mass``, ``expected_score``,
    ``logprob_score``, ``prefix_reused`` (bool, or None when reuse was not asked for)."""
    return {"p_scores": [round(float(x), 6) for x in self.p_scores[i]],
            "digit_mass": round(float(self.digit_mass[i]), 6),
            "expected_score": round(float(self.expected_score[i]), 4),
            "logprob_score": int(self.argmax[i]),
            "prefix_reused": (None if self.prefix_reused is None
                              else bool(self.prefix_reused[i]))}


_RATING_PREFIXES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def rating_prefix(tokenizer) -> list[int]:
  """Token ids every rating prompt of ``tokenizer`` starts with: the chat header and the
  rubric of [HB] Table 19 up to (excluding) the pair and the BPE pieces that may merge with
  its first characters (``sample.prefix.template_prefix``). Computed once per tokenizer."""
  try:
    cached = _RATING_PREFIXES.get(tokenizer)
  except TypeError:  # not weak-referenceable: compute every time
    cached = None
  if cached is not None:
    return list(cached)
  from humpback_jax.sample.prefix import template_prefix
  ids = template_prefix(tokenizer, lambda f: templates.rating_prompt(tokenizer, f, f))
  try:
    _RATING_PREFIXES[tokenizer] = tuple(ids)
  except TypeError:
    pass
  return ids


def _can_reuse_prefix(sampler) -> bool:
  """Prefix reuse needs the real ``Sampler`` (its budget, batching and mesh); duck-typed
  stand-ins (tests' fakes) are read by their own ``candidate_logprobs``."""
  from humpback_jax.sample.sampler import Sampler
  return isinstance(sampler, Sampler)


def read_scores(sampler, params, tokenizer: _Tokenizer, contexts: Sequence[str],
                answer: str = SCORE_ANSWER, prefix_reuse: bool = True) -> ScoreReadout:
  """One forward pass per context: the judge's distribution over "Score: 1".."Score: 5".

  Args:
    sampler: a ``sample.sampler.Sampler`` of the rating model (prompts longer than its budget
      lose their middle, the probe at the end survives).
    params: the rating model's parameters.
    tokenizer: its tokenizer.
    contexts: N texts, each the rendered rating prompt plus, optionally, the model's reasoning.
    answer: the words before the digit.
    prefix_reuse: encode the rating prompt's shared head (``rating_prefix``) once and prefill
      only the rest of each probe (``sample.prefix.PrefixScorer``; same numbers up to float
      rounding); probes that do not start with it are read in full (``prefix_reused``).
      Ignored (full reads, ``prefix_reused`` None) for a sampler that is not a ``Sampler``.
  Returns:
    ``ScoreReadout`` of N rows.
  Raises:
    ProbeError: see ``score_probe``.
  """
  if not contexts:
    return ScoreReadout.from_logprobs(np.zeros((0, len(SCORES)), np.float32))
  probes = [score_probe(tokenizer, c, answer) for c in contexts]
  ids = [p for p, _ in probes]
  digits = np.asarray([d for _, d in probes], np.int32)
  lengths = np.asarray([len(p) for p in ids], np.int32)
  prefix = rating_prefix(tokenizer) if prefix_reuse and _can_reuse_prefix(sampler) else []
  if not prefix:
    return ScoreReadout.from_logprobs(sampler.candidate_logprobs(params, ids, digits), lengths)
  from humpback_jax.sample.prefix import scorer_for
  logp, reused = scorer_for(sampler).candidate_logprobs(params, prefix, ids, digits,
                                                        return_reused=True)
  return ScoreReadout.from_logprobs(logp, lengths, reused)
