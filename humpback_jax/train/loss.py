"""Weighted token cross-entropy of supervised fine-tuning (loss on output tokens only)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def weighted_cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array
                           ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean next-token cross-entropy over weighted positions.

  [HB] §3.1: the loss is on the output tokens only; the data pipeline sets
  ``decoder_loss_weights`` to 1 on targets that are response tokens or the final EOS and to 0 on
  prompt tokens and padding. The mean is over all weighted tokens of the (global) batch, so a
  long response counts more than a short one (token-level mean, as HF causal-LM training).

  Args:
    logits: float32 [B, T, V] (float64 keeps float64).
    targets: int32 [B, T] next-token ids.
    weights: [B, T] 0/1 (any numeric dtype) loss weights.
  Returns:
    (loss f32 (or f64) scalar, metrics) with metrics ``loss``, ``loss_sum`` (sum of weighted token
    losses, nats), ``num_tokens`` (sum of weights) and ``accuracy`` (weighted argmax accuracy).
    A batch with no weighted token gives loss 0.
  """
  acc = jnp.promote_types(logits.dtype, jnp.float32)  # float64 in exactness tests
  logits = logits.astype(acc)
  w = weights.astype(acc)
  token_loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  loss_sum = jnp.sum(token_loss * w)
  num_tokens = jnp.sum(w)
  denom = jnp.maximum(num_tokens, 1.0)
  loss = loss_sum / denom
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(acc)
  metrics = {"loss": loss, "loss_sum": loss_sum, "num_tokens": num_tokens,
             "accuracy": jnp.sum(correct * w) / denom}
  return loss, metrics
