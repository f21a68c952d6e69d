"""Typed configuration of back-and-forth translation ([BF] §2), bound by gin."""

from __future__ import annotations

import dataclasses

from humpback_jax.bft.rewrite_parse import RewritePolicy
from humpback_jax.bft.self_instruct import SelfInstructConfig

SOURCES = ("curated", "candidates")


@dataclasses.dataclass(frozen=True)
class RewriteConfig:
  """The aligned model that rewrites (and, for the distillation control, answers).

  Attributes:
    model: model spec of the aligned chat model (``BaseModelConfig.checkpoint`` forms; [BF]:
      Llama-2-70B-chat; the demo: SmolLM2-135M-Instruct, "smollm2").
    tokenizer: its tokenizer spec (None: the checkpoint's own).
    chat_format: "chat" (the model's own chat template) or "llama2" (``[INST] ... [/INST]``,
      for a Llama-2-chat checkpoint whose tokenizer has no template).
    temperature, top_p: decoding ([BF] §2: T = 1.0, p = 0.9, for rewrite and distillation).
    max_new_tokens: budget of a rewrite / an answer (tokens); a rewrite cut by it is
      ``unterminated`` (see ``policy``).
    max_prompt_len: prompt budget (tokens); longer drafts lose their middle (counted).
    batch_size, chunk_size: rows per sampler call; pairs per resumable chunk.
    policy: retries and what happens to a pair whose every rewrite failed
      (``bft.rewrite_parse.RewritePolicy``: retry with a new seed up to ``max_retries`` times,
      then keep the draft or drop the pair).
    response_prefix: text that opens the model's turn (written after the chat template's
      assistant header, before sampling; the parse reads it with the output). "" = none, as in
      [BF]. "[RES]" makes a model that ignores the prompt's tag instruction (SmolLM2-135M-
      Instruct wrote no [RES] in 28 of 28 attempts, docs/bft.md) start inside the block; its
      text then usually ends with EOS instead of [/RES] (an ``unterminated`` parse, which
      ``RewritePolicy.accept_unterminated`` with ``accept_cut=False`` accepts). Not in the
      papers.
  """

  model: str = "smollm2"
  tokenizer: str | None = None
  chat_format: str = "chat"
  temperature: float = 1.0
  top_p: float = 0.9
  max_new_tokens: int = 512
  max_prompt_len: int = 1536
  batch_size: int = 8
  chunk_size: int = 16
  policy: RewritePolicy = RewritePolicy()
  response_prefix: str = dataclasses.field(default="", metadata={"fingerprint": "if_set"})

  def __post_init__(self):
    if self.chat_format not in ("chat", "llama2"):
      raise ValueError(f"RewriteConfig.chat_format={self.chat_format!r}: 'chat' or 'llama2'")
    if not 0 < self.top_p <= 1 or self.temperature < 0:
      raise ValueError("RewriteConfig: 0 < top_p <= 1 and temperature >= 0 are required")


@dataclasses.dataclass(frozen=True)
class BFConfig:
  """Which [BF] datasets a run builds.

  Attributes:
    rewrite: the sources whose responses are rewritten: "curated" (A_k of the last curation
      iteration: [BF]'s filter + rewrite) and/or "candidates" (every backtranslated pair:
      rewrite only).
    distill: the sources whose instructions the aligned model answers with no draft
      ([BF]'s distillation control; "curated": filter + distill).
    rewriter: the aligned model and its decoding.
    variants: models trained on seed + one dataset each ([BF] §4; ``bft.stages.VARIANTS``):
      "filter" (A_k as is), "rewrite" (every candidate rewritten), "filter_rewrite" (A_k
      rewritten), "filter_distill" (A_k's instructions, the aligned model's answers). Each
      trains with ``PipelineConfig.variant_train`` (gin scope ``variant/``) and can be named
      in ``EvalConfig.models``; "self_instruct" trains on the self-instruct baseline.
    self_instruct: the self-instruct baseline from the same seed and base model
      (``bft/self_instruct.py``; ``num_instructions`` 0 = none).
  """

  rewrite: tuple[str, ...] = ()
  distill: tuple[str, ...] = ()
  rewriter: RewriteConfig = RewriteConfig()
  variants: tuple[str, ...] = ()
  self_instruct: SelfInstructConfig = SelfInstructConfig()

  def __post_init__(self):
    from humpback_jax.bft.stages import VARIANTS
    bad = [v for v in self.variants if v not in VARIANTS]
    if bad:
      raise ValueError(f"BFConfig.variants: unknown {bad}; expected some of {tuple(VARIANTS)}")
    if "self_instruct" in self.variants and not self.self_instruct.num_instructions:
      raise ValueError("BFConfig.variants has 'self_instruct': set "
                       "SelfInstructConfig.num_instructions > 0")
    needs = {"rewrite": ("rewrite", "candidates"), "filter_rewrite": ("rewrite", "curated"),
             "filter_distill": ("distill", "curated")}
    for v in self.variants:
      if v in needs and needs[v][1] not in getattr(self, needs[v][0]):
        raise ValueError(f"BFConfig.variants has {v!r}: it needs BFConfig.{needs[v][0]} to "
                         f"include {needs[v][1]!r}")
    for field in ("rewrite", "distill"):
      bad = [s for s in getattr(self, field) if s not in SOURCES]
      if bad:
        raise ValueError(f"BFConfig.{field}: unknown sources {bad}; expected {SOURCES}")
