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

  def __post_init__(self):
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
    return dataclasses.asdict(self)
