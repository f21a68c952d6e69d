"""Typed configuration of the evaluation stages, bound by gin (``EvalConfig.*``)."""

from __future__ import annotations

import dataclasses

from humpback_jax.data import templates
from humpback_jax.eval.judge import JudgeConfig


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """AlpacaEval-style evaluation of a run's models ([HB] §3-4, ``method.md`` §4).

  Attributes:
    models: which models answer: run model names ("M0", "M1", "M2", "M_yx" makes no sense)
      or "base" (the base checkpoint, untuned). Empty: no evaluation stages.
    imported: (name, model spec[, tokenizer spec]) of checkpoints from outside the run that
      answer too (any spec ``BaseModelConfig.checkpoint`` takes, e.g. ``("smollm2_instruct",
      "smollm2")``; a llama2.c ``.bin`` needs the tokenizer), with their own tokenizer and chat
      template and no tag sentences.
    prompts_file: the AlpacaEval instructions with the reference outputs (relative to the data
      root): the 805 with text-davinci-003's outputs (AlpacaEval 1.0, the papers' reference).
    reference_name: the reference's name in reports.
    num_prompts: a seeded subset of that many prompts (``outputs.subset_indices``; nested: a
      smaller subset is inside a larger one); None = all 805.
    subset_seed: the subset's seed.
    temperature, top_p: decoding of the answers ([HB] §3.1 and [BF]: T = 0.7, p = 0.9).
    max_new_tokens: answer budget (tokens); answers cut by it are counted (``unfinished``).
    max_prompt_len: prompt budget of the answering model (tokens).
    batch_size, chunk_size: rows per sampler call; prompts per resumable chunk.
    batching, cache_dtype: as ``GenerationConfig``.
    tags: sentences appended to each instruction ([HB] §2.3: S_a then S_w at inference, the
      best setting of [HB] Table 5); () for a model trained without tags.
    judge: model spec of the local pairwise judge (``BaseModelConfig.checkpoint`` forms, or a
      run's ``RUN_DIR/models/<name>``); None = no judging unless ``judge_endpoint``.
    judge_tokenizer: the judge's tokenizer spec (None: the checkpoint's own; required for a
      llama2.c ``.bin``).
    prompt_overflow: an answering prompt over ``max_prompt_len``: "truncate" (counted) or
      "error".
    judge_endpoint: base URL of an OpenAI-compatible endpoint used as the judge instead (e.g.
      ``http://127.0.0.1:8000/v1``); ``judge_model_name`` names its model and the API key is
      read from the environment variable ``judge_api_key_env``.
    judge_settings: the judge's prompt budget, output cut, identifiers, batch size.
    head_to_head: pairs ("M1", "M0") judged against each other (the first is the evaluated
      one), besides every model against the reference.
    length_controlled: also fit the length-controlled win rate (``winrate.length_controlled``).
    analyses: run the data analyses stage (``eval.analyses``).
    quality_sample: how many candidates the reference judge labels for curation precision /
      recall ([HB] §4.3: 250 labelled pairs); 0 skips. The reference is ``judge`` (or the
      endpoint).
    analysis_datasets: extra (name, run-relative JSONL path) datasets the analyses cover
      besides seed, candidates and A_k (e.g. ``("rewritten", "data/rewritten_curated.jsonl")``).
    mauve_pairs: (p, q[, field]) dataset names to compare with MAUVE (default: seed vs the
      last A_k responses); [BF] §4: distilled vs rewritten 0.340, distilled vs web 0.034.
    scaling_sizes: the data-scaling view ([HB] Figure 2, ``eval/scaling.py``): a model
      ``S<N>`` per size, trained on seed + N curated pairs, answered and judged; () skips.
  """

  models: tuple[str, ...] = ()
  imported: tuple[tuple[str, ...], ...] = ()
  prompts_file: str = "eval/alpaca_eval_805_ref_text_davinci_003.json"
  reference_name: str = "text_davinci_003"
  num_prompts: int | None = None
  subset_seed: int = 0
  temperature: float = 0.7
  top_p: float = 0.9
  max_new_tokens: int = 512
  max_prompt_len: int = 512
  batch_size: int = 16
  chunk_size: int = 64
  batching: str = "auto"
  prompt_overflow: str = "truncate"
  cache_dtype: str | None = None
  tags: tuple[str, ...] = templates.INFERENCE_TAGS
  judge: str | None = None
  judge_tokenizer: str | None = None
  judge_endpoint: str | None = None
  judge_model_name: str | None = None
  judge_api_key_env: str = "OPENAI_API_KEY"
  judge_settings: JudgeConfig = JudgeConfig()
  head_to_head: tuple[tuple[str, str], ...] = ()
  length_controlled: bool = True
  analyses: bool = True
  quality_sample: int = 0
  scaling_sizes: tuple[int, ...] = ()
  analysis_datasets: tuple[tuple[str, str], ...] = ()
  mauve_pairs: tuple[tuple[str, ...], ...] = ()

  def __post_init__(self):
    for entry in self.imported:
      if len(entry) not in (2, 3):
        raise ValueError(f"EvalConfig.imported entry {entry!r}: (name, spec[, tokenizer])")
    names = set(self.models) | {e[0] for e in self.imported}
    if len(names) != len(self.models) + len(self.imported):
      raise ValueError(f"EvalConfig: model names must be unique: {self.models!r}, "
                       f"{self.imported!r}")
    for n in (e[0] for e in self.imported):
      if not n or "/" in n or n.startswith(("M", "S")) and n[1:].isdigit() or n == "base":
        raise ValueError(f"EvalConfig.imported name {n!r}: a plain name, not a run model's")
    for a, b in self.head_to_head:
      if a not in names or b not in names or a == b:
        raise ValueError(f"EvalConfig.head_to_head pair ({a!r}, {b!r}): both must be distinct "
                         f"entries of EvalConfig.models {self.models!r}")
    if any(n < 0 for n in self.scaling_sizes) or len(set(self.scaling_sizes)) != len(
        self.scaling_sizes):
      raise ValueError(f"EvalConfig.scaling_sizes must be distinct and >= 0, got "
                       f"{self.scaling_sizes}")
    if self.num_prompts is not None and self.num_prompts < 1:
      raise ValueError(f"EvalConfig.num_prompts must be >= 1 or None, got {self.num_prompts}")
    if self.batching not in ("auto", "bucketed", "continuous"):
      raise ValueError(f"EvalConfig.batching={self.batching!r}")
    if not 0 < self.top_p <= 1 or self.temperature < 0:
      raise ValueError("EvalConfig: 0 < top_p <= 1 and temperature >= 0 are required")

  @property
  def evaluated(self) -> tuple[str, ...]:
    """Every model that answers: ``models``, ``imported`` names, then ``S<N>`` per
    ``scaling_sizes``."""
    return (tuple(self.models) + tuple(e[0] for e in self.imported)
            + tuple(f"S{n}" for n in self.scaling_sizes))

  @property
  def judged(self) -> bool:
    """Whether a judge is configured."""
    return bool(self.judge or self.judge_endpoint)
