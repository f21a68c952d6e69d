"""The pairwise judge: which of two outputs is better, read from two choice tokens' log-probs.

Prompt. ``JUDGE_PROMPT`` follows the design of AlpacaEval 2.0's ``weighted_alpaca_eval_gpt4_turbo``
annotator (instruction, two outputs named by the identifiers ``m`` and ``M``, "answer with the
identifier only"; the preference is read from the log-probabilities of the two identifier
tokens, ``max_tokens = 1``), worded for this project. The text is ours; the identifiers and the
read-out are AlpacaEval's.

Read-out. As in self-curation (``curate/probe.py``), nothing is parsed: the prompt is encoded
with each identifier appended, the encodings must share one prefix and differ in one last
token (``probe.choice_probe``; a tokenizer for which this fails raises ``ProbeError`` rather
than reading a wrong position), and P(first better) = P(id_1) / (P(id_1) + P(id_2)) at the
end of that prefix. The two tokens' share of the full softmax (``choice_mass``) says how much
the judge believes it is answering at all.

Both orders. Every pair is judged with the evaluated output first and second
(``winrate.combine_orders``), which cancels the judge's position bias; the two orders'
agreement is reported (``winrate.order_agreement``) as the measure of how weak a judge is.

Backends. ``LocalChoiceBackend`` runs any imported checkpoint through our sampler (sharded,
the shared prompt head encoded once: ``sample/prefix.py``); ``eval.openai_backend`` asks an
OpenAI-compatible endpoint for the top-20 log-probs of the first token.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Protocol, Sequence

import numpy as np

from humpback_jax.curate.probe import choice_probe
from humpback_jax.data import templates
from humpback_jax.eval import winrate

__all__ = ["JUDGE_PROMPT", "render_prompt", "JudgeConfig", "ChoiceBackend", "LocalChoiceBackend",
           "PairwiseJudge", "truncate_output"]

# Our wording of AlpacaEval 2.0's pairwise prompt; slots: instruction, output_1, output_2 and
# the two identifiers id_1, id_2 (``JudgeConfig.choices``).
JUDGE_PROMPT = """You compare two answers to the same instruction and pick the one a careful human reader would prefer: the more helpful, accurate, relevant and complete answer. The order of the answers carries no meaning, and length alone is no merit.

## Instruction

{instruction}

## Answer {id_1}

{output_1}

## Answer {id_2}

{output_2}

## Task

Which answer is better, {id_1} or {id_2}? Reply with the identifier of the better answer only, with nothing else: {id_1} or {id_2}."""


@dataclasses.dataclass(frozen=True)
class JudgeConfig:
  """The pairwise judge's settings.

  Attributes:
    choices: the two identifiers, first output then second (AlpacaEval 2.0: ``m``, ``M``).
    max_output_tokens: each output is cut to this many tokens of the judge's tokenizer before
      it enters the prompt (counted as ``truncated_outputs``), so that both outputs and the
      closing task survive the prompt budget.
    max_prompt_len: the judge's prompt budget (tokens); longer prompts lose their middle
      (counted by the sampler).
    batch_size: rows per judge forward pass.
    prefix_reuse: encode the prompt's shared head once (``sample/prefix.py``).
  """

  choices: tuple[str, str] = ("m", "M")
  max_output_tokens: int = 384
  max_prompt_len: int = 2048
  batch_size: int = 8
  prefix_reuse: bool = True

  def __post_init__(self):
    if len(self.choices) != 2 or self.choices[0] == self.choices[1]:
      raise ValueError(f"JudgeConfig.choices must be two distinct strings, got {self.choices!r}")
    if self.max_output_tokens < 1 or self.max_prompt_len < 64 or self.batch_size < 1:
      raise ValueError("JudgeConfig: max_output_tokens >= 1, max_prompt_len >= 64 and "
                       "batch_size >= 1 are required")


class ChoiceBackend(Protocol):
  """Anything that gives the log-probs of K choice strings as the reply's first token."""

  def choice_logprobs(self, user_messages: Sequence[str], choices: Sequence[str],
                      system: str | None = None) -> tuple[np.ndarray, list[str] | None]:
    """float64 [N, K] log P(choice | chat prompt) (-inf: unavailable), and optionally the
    texts the backend would write (None for a local read-out)."""
    ...


class LocalChoiceBackend:
  """The judge is a model of ours: one forward pass per prompt through a ``Sampler``.

  Args:
    sampler: a ``sample.sampler.Sampler`` of the judge model (its ``max_prompt_len`` is the
      judge's prompt budget).
    params: the judge's parameters, placed by ``sampler.place_params``.
    tokenizer: its tokenizer (chat template applied by ``templates.chat_prompt``).
    prefix_template: renders a user message from one filler string (e.g. the judge prompt
      with every slot filled by it); its shared token head is encoded once per call. None:
      no reuse.
  """

  def __init__(self, sampler, params, tokenizer,
               prefix_template: Callable[[str], str] | None = None):
    self.sampler, self.params, self.tokenizer = sampler, params, tokenizer
    self.prefix_template = prefix_template
    self.stats = {"prompts": 0, "prefix_reused": 0}

  def choice_logprobs(self, user_messages: Sequence[str], choices: Sequence[str],
                      system: str | None = None) -> tuple[np.ndarray, None]:
    """Raises ``ProbeError`` when the tokenizer cannot express the choices as one token
    each after the prompt (``probe.choice_probe``); ``system`` is not supported (the chat
    template's default system turn is used) and must be None."""
    if system is not None:
      raise ValueError("LocalChoiceBackend renders one user turn; put instructions there")
    if not user_messages:
      return np.zeros((0, len(choices))), None
    tok = self.tokenizer
    probes = [choice_probe(tok, templates.chat_prompt(tok, m), "", choices,
                           hint="choose other JudgeConfig.choices") for m in user_messages]
    ids = [p for p, _ in probes]
    cand = np.asarray([c for _, c in probes], np.int32)
    self.stats["prompts"] += len(ids)
    prefix = []
    if self.prefix_template is not None:
      from humpback_jax.curate.probe import _can_reuse_prefix
      if _can_reuse_prefix(self.sampler):
        from humpback_jax.sample.prefix import template_prefix
        prefix = template_prefix(tok, lambda f: templates.chat_prompt(
            tok, self.prefix_template(f)))
    if not prefix:
      return np.asarray(self.sampler.candidate_logprobs(self.params, ids, cand),
                        np.float64), None
    from humpback_jax.sample.prefix import scorer_for
    logp, reused = scorer_for(self.sampler).candidate_logprobs(self.params, prefix, ids, cand,
                                                               return_reused=True)
    self.stats["prefix_reused"] += int(np.sum(reused))
    return np.asarray(logp, np.float64), None


def render_prompt(instruction: str, output_1: str, output_2: str,
                  choices: Sequence[str] = ("m", "M")) -> str:
  """``JUDGE_PROMPT`` for one ordered pair, the outputs named by ``choices``."""
  return JUDGE_PROMPT.format(instruction=instruction, output_1=output_1, output_2=output_2,
                             id_1=choices[0], id_2=choices[1])


def truncate_output(tokenizer, text: str, max_tokens: int) -> tuple[str, bool]:
  """``text`` cut to its first ``max_tokens`` tokens (no BOS), and whether it was cut.
  A cut text ends with " [...]" so that the judge sees it is incomplete."""
  ids = list(tokenizer.encode(text, add_bos=False))
  if len(ids) <= max_tokens:
    return text, False
  return tokenizer.decode(ids[:max_tokens], skip_special_tokens=True).rstrip() + " [...]", True


def _p_first(logp: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(P(first) renormalised over the two choices, the choices' mass, readable flags) from
  float [N, 2] log-probs; rows with both -inf are unreadable (P = 0.5, mass 0)."""
  logp = np.asarray(logp, np.float64)
  top = logp.max(-1)
  ok = np.isfinite(top)
  safe_top = np.where(ok, top, 0.0)
  w = np.exp(np.where(ok[:, None], logp - safe_top[:, None], 0.0))
  w = np.where(np.isfinite(logp), w, 0.0)
  total = w.sum(-1)
  p = np.where(ok, w[:, 0] / np.where(total > 0, total, 1.0), 0.5)
  mass = np.where(ok, np.exp(safe_top) * total, 0.0)
  return p, mass, ok


class PairwiseJudge:
  """Judges (instruction, output_1, output_2) triples with ``JUDGE_PROMPT``, in both orders.

  Args:
    backend: a ``ChoiceBackend`` (``LocalChoiceBackend`` or ``OpenAIChoiceBackend``).
    tokenizer: used to cut long outputs to ``cfg.max_output_tokens`` (the judge's own for a
      local judge; any tokenizer for an endpoint, the cut is then approximate).
    cfg: ``JudgeConfig``.
  """

  def __init__(self, backend: ChoiceBackend, tokenizer, cfg: JudgeConfig = JudgeConfig()):
    self.backend, self.tokenizer, self.cfg = backend, tokenizer, cfg
    self.stats = {"judgments": 0, "truncated_outputs": 0, "unreadable": 0}

  def prompt(self, instruction: str, output_1: str, output_2: str) -> str:
    """The judge's user message for one ordered pair."""
    return render_prompt(instruction, output_1, output_2, self.cfg.choices)

  def _cut(self, text: str) -> str:
    cut, was = truncate_output(self.tokenizer, text, self.cfg.max_output_tokens)
    self.stats["truncated_outputs"] += int(was)
    return cut

  def p_first(self, instructions: Sequence[str], outputs_1: Sequence[str],
              outputs_2: Sequence[str]) -> dict[str, np.ndarray]:
    """One order: ``{"p_first": float64 [N] P(output_1 better), "choice_mass": float64 [N],
    "readable": bool [N]}`` (unreadable rows: neither identifier among an endpoint's top
    log-probs; P = 0.5, counted in ``stats["unreadable"]``)."""
    if not len(instructions) == len(outputs_1) == len(outputs_2):
      raise ValueError("instructions and outputs differ in length")
    msgs = [self.prompt(x, self._cut(a), self._cut(b))
            for x, a, b in zip(instructions, outputs_1, outputs_2)]
    logp, _ = self.backend.choice_logprobs(msgs, list(self.cfg.choices))
    p, mass, ok = _p_first(np.asarray(logp).reshape(len(msgs), 2))
    self.stats["judgments"] += len(msgs)
    self.stats["unreadable"] += int((~ok).sum())
    return {"p_first": p, "choice_mass": mass, "readable": ok}

  def compare(self, instructions: Sequence[str], outputs_model: Sequence[str],
              outputs_other: Sequence[str]) -> list[dict]:
    """Both orders of each pair; one record per prompt.

    Returns:
      N dicts ``{p_model_first, p_model_second, preference, choice_mass}``:
      ``p_model_first`` = P(first better) with the model's output first, ``p_model_second`` =
      P(first better) with it second, ``preference`` = ``winrate.combine_orders`` of the two
      (P(model's output better), in [0, 1]), ``choice_mass`` = the mean of the two orders'
      identifier mass.
    """
    n = len(instructions)
    both = self.p_first(list(instructions) * 2, list(outputs_model) + list(outputs_other),
                        list(outputs_other) + list(outputs_model))
    a, b = both["p_first"][:n], both["p_first"][n:]
    pref = winrate.combine_orders(a, b)
    mass = (both["choice_mass"][:n] + both["choice_mass"][n:]) / 2
    return [{"p_model_first": round(float(a[i]), 6), "p_model_second": round(float(b[i]), 6),
             "preference": round(float(pref[i]), 6),
             "choice_mass": round(float(mass[i]), 6) if math.isfinite(mass[i]) else None}
            for i in range(n)]
