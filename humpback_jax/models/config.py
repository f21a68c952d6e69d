"""Typed configuration of the LLaMA architecture.

One frozen dataclass describes a checkpoint's shape; converters (``models/convert.py``) build it
from HF ``config.json``, GGUF metadata or a llama2.c header, and the model reads nothing else.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp


# remat_policy -> jax.checkpoint_policies name (None: nothing saved; "none": no remat at all).
REMAT_POLICIES: dict[str, str | None] = {
    "none": "everything_saveable",
    "full": None,
    "dots_saveable": "dots_saveable",
    "dots_with_no_batch_dims_saveable": "dots_with_no_batch_dims_saveable",
}

# attention_impl choices (kernels in ``models/attention.py``; its docstring compares them).
ATTENTION_IMPLS = ("dot_product", "chunked", "xla", "cudnn", "splash")

# Fields that choose how the model is executed (memory, speed, rounding order), not what it
# computes nor the checkpoint layout. ``to_dict`` leaves them out, so that the training
# fingerprint (``pipeline/training.py``) neither changes for existing runs nor when a run
# switches kernels. (``remat_policy`` is one too, but it was already recorded by ``to_dict``
# and is always "none" on the base config, which is what gets fingerprinted.)
EXECUTION_FIELDS = ("attention_impl", "attention_chunk_size", "scan_layers")


def check_execution(owner: str, attention_impl: str, attention_chunk_size: int,
                    scan_layers: bool) -> None:
  """Validates the execution fields a config binds (``TrainConfig``, ``BaseModelConfig``).

  Raises:
    ValueError: naming ``owner``'s field: an unknown ``attention_impl``, a chunk size < 1, or
      a non-bool ``scan_layers``.
  """
  if attention_impl not in ATTENTION_IMPLS:
    raise ValueError(f"{owner}.attention_impl={attention_impl!r}: expected one of "
                     f"{list(ATTENTION_IMPLS)}")
  if attention_chunk_size < 1:
    raise ValueError(f"{owner}.attention_chunk_size must be >= 1, got {attention_chunk_size}")
  if not isinstance(scan_layers, bool):
    raise ValueError(f"{owner}.scan_layers must be True or False, got {scan_layers!r}")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """Shape and numerics of a LLaMA-family decoder.

  Attributes:
    vocab_size: number of token ids (V).
    hidden_size: model width D.
    intermediate_size: SwiGLU inner width F.
    num_layers: number of decoder blocks L.
    num_heads: query heads H.
    num_kv_heads: key/value heads KV (grouped-query attention; H % KV == 0).
    head_dim: per-head width Dh; ``None`` means ``hidden_size // num_heads``.
    rope_theta: RoPE base (10,000 for LLaMA-1/2, 100,000 for SmolLM2).
    rms_norm_eps: epsilon inside RMSNorm.
    tie_word_embeddings: output projection shares the token embedding matrix.
    max_seq_len: longest sequence (tokens) the checkpoint was trained for; informational,
      RoPE itself has no limit.
    dtype: compute dtype of activations ("float32" or "bfloat16"); logits are always float32.
    param_dtype: storage dtype of parameters.
    dropout_rate: residual dropout probability used in training ([HB] Table 18: 0.1).
    remat_policy: what each decoder block keeps for the backward pass (``REMAT_POLICIES``):
      "none" (keep every activation: fastest, most memory), "full" (keep only the block's
      input and recompute the rest: least memory), "dots_saveable" (keep matmul outputs),
      "dots_with_no_batch_dims_saveable" (keep weight matmuls, recompute attention scores),
      "save_dot_except_mlp" is not offered; names follow ``jax.checkpoint_policies``.
    logits_dot_in_fp32: compute the final norm and the output projection (``lm_head`` or the
      tied embedding) in float32 whatever ``dtype`` is (MaxText's flag of the same name). The
      next-token scoring of self-curation turns it on, so that a bfloat16 model's scores are
      not read from logits rounded to bfloat16's 8-bit mantissa.
    attention_impl: the attention kernel (``ATTENTION_IMPLS``; ``models/attention.py``):
      "dot_product" (einsum; materializes the [B, KV, G, T, S] scores), "chunked" (pure-JAX
      flash attention over ``attention_chunk_size``-key chunks: scores never larger than
      [B, KV, G, T, chunk], forward and backward; any platform), "xla" / "cudnn"
      (``jax.nn.dot_product_attention``; "cudnn" only on a CUDA GPU, else ``ValueError`` at
      trace time), "splash" (TPU Pallas kernel for the no-cache path; with a KV cache it runs
      "chunked"; off TPU ``ValueError`` at trace time). Same math, different rounding order.
    attention_chunk_size: keys per chunk of "chunked" (>= 1; need not divide the length).
    scan_layers: True runs the L blocks under one ``nn.scan`` (one compiled block: fast
      compiles); False unrolls them (``nn.scan(unroll=L)``: XLA may schedule and fuse across
      layers; compile time grows with L). Either way the parameters keep their stacked
      layout with a leading L axis, so checkpoints and converters do not depend on it.
  """

  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int | None = None
  rope_theta: float = 10000.0
  rms_norm_eps: float = 1e-5
  tie_word_embeddings: bool = False
  max_seq_len: int = 2048
  dtype: str = "float32"
  param_dtype: str = "float32"
  dropout_rate: float = 0.0
  remat_policy: str = "none"
  logits_dot_in_fp32: bool = False
  attention_impl: str = "dot_product"
  attention_chunk_size: int = 512
  scan_layers: bool = True

  def __post_init__(self):
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"attention_impl={self.attention_impl!r}: expected one of "
                       f"{list(ATTENTION_IMPLS)}")
    if self.attention_chunk_size < 1:
      raise ValueError(f"attention_chunk_size must be >= 1, got {self.attention_chunk_size}")
    if not isinstance(self.scan_layers, bool):
      raise ValueError(f"scan_layers must be True or False, got {self.scan_layers!r}")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy={self.remat_policy!r}: expected one of "
                       f"{sorted(REMAT_POLICIES)}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
    if self.head_dim is None:
      if self.hidden_size % self.num_heads:
        raise ValueError(
            f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
      object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)

  @property
  def compute_dtype(self) -> Any:
    return jnp.dtype(self.dtype)

  @property
  def weight_dtype(self) -> Any:
    return jnp.dtype(self.param_dtype)

  def replace(self, **kw) -> "LlamaConfig":
    return dataclasses.replace(self, **kw)

  def to_dict(self) -> dict:
    """The fields as a dict, less ``EXECUTION_FIELDS`` (how it runs, not what it computes)."""
    return {k: v for k, v in dataclasses.asdict(self).items() if k not in EXECUTION_FIELDS}
