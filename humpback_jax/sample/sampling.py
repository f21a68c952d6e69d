"""Next-token sampling strategies: pure functions of one step's logits.

A strategy is a small frozen (hence hashable) dataclass, so it can be a static argument of
``jax.jit``; calling it maps logits float32 [B, V] and a PRNG key to token ids int32 [B].

``Sampling`` reproduces the logits warpers of HF ``transformers`` generation, applied in HF's
order (``GenerationMixin._get_logits_processor``): temperature first, then top-k
(``TopKLogitsWarper``), then top-p (``TopPLogitsWarper``), then a categorical draw. The defaults
T=0.7, p=0.9 are the Humpback paper's decoding settings ([HB] Li et al., 2023, "Self-Alignment
with Instruction Backtranslation": nucleus sampling with temperature 0.7, top-p 0.9).
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import jax
import jax.numpy as jnp


class Strategy(Protocol):
  """Anything mapping (logits f32[B, V], rng) -> int32[B]; must be hashable for ``jax.jit``."""

  def __call__(self, logits: jax.Array, rng: jax.Array) -> jax.Array:
    ...


@dataclasses.dataclass(frozen=True)
class Greedy:
  """Arg-max decoding (the rng is ignored). Ties go to the lowest token id."""

  def __call__(self, logits: jax.Array, rng: jax.Array | None = None) -> jax.Array:
    """Picks the most likely token.

    Args:
      logits: float32 [B, V] next-token logits.
      rng: unused.
    Returns:
      int32 [B] token ids.
    """
    del rng
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class Sampling:
  """Temperature + top-k + nucleus (top-p) sampling with HF ``transformers`` semantics.

  Attributes:
    temperature: logits are divided by this (> 0) before any cutoff. Use ``Greedy`` for T=0.
    top_p: keep the smallest set of most likely tokens whose cumulative probability (after
      temperature and top-k) is >= top_p; the top token is always kept. 1.0 disables it.
    top_k: keep the k most likely tokens (plus any tied with the k-th); 0 disables it.

  Raises:
    ValueError: on temperature <= 0, top_p outside (0, 1], or top_k < 0.
  """

  temperature: float = 0.7
  top_p: float = 0.9
  top_k: int = 0

  def __post_init__(self):
    if not self.temperature > 0:
      raise ValueError(f"temperature must be > 0 (use Greedy for T=0), got {self.temperature}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")

  def warp(self, logits: jax.Array) -> jax.Array:
    """Applies temperature, top-k and top-p; removed tokens get -inf.

    Args:
      logits: float [B, V] next-token logits.
    Returns:
      float32 [B, V] warped logits; ``softmax`` of them is the sampling distribution.
    """
    logits = logits.astype(jnp.float32) / self.temperature
    if self.top_k:
      logits = _top_k_filter(logits, self.top_k)
    if self.top_p < 1.0:
      logits = _top_p_filter(logits, self.top_p)
    return logits

  def __call__(self, logits: jax.Array, rng: jax.Array) -> jax.Array:
    """Draws one token per row from the warped distribution.

    Args:
      logits: float32 [B, V] next-token logits.
      rng: a PRNG key (one key for the whole batch; rows draw independently).
    Returns:
      int32 [B] token ids.
    """
    return jax.random.categorical(rng, self.warp(logits), axis=-1).astype(jnp.int32)


def _top_k_filter(logits: jax.Array, k: int) -> jax.Array:
  """HF ``TopKLogitsWarper``: drop tokens strictly below the k-th largest logit (ties kept)."""
  k = min(k, logits.shape[-1])
  kth = jax.lax.top_k(logits, k)[0][..., -1:]
  return jnp.where(logits < kth, -jnp.inf, logits)


def _top_p_filter(logits: jax.Array, top_p: float) -> jax.Array:
  """HF ``TopPLogitsWarper`` (min_tokens_to_keep=1).

  HF sorts ascending, takes the cumulative softmax and removes every token whose cumulative
  probability is <= 1 - top_p, except the last (most likely) one. Since the cumulative sum is
  monotone the removed tokens form a prefix of the ascending order, so the kept set is "every
  logit >= the first kept sorted logit" and no scatter back to vocabulary order is needed.
  (Exact ties at the cutoff are all kept, where HF would keep an arbitrary subset.)
  """
  sorted_logits = jnp.sort(logits, axis=-1)  # ascending
  cum_probs = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
  removed = cum_probs <= 1.0 - top_p
  removed = removed.at[..., -1].set(False)
  num_removed = jnp.sum(removed, axis=-1, keepdims=True)
  cutoff = jnp.take_along_axis(sorted_logits, num_removed, axis=-1)
  return jnp.where(logits < cutoff, -jnp.inf, logits)
