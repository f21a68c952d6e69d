"""Applying the optimizer's update to low-precision parameters: round to nearest or stochastically.

A bfloat16 parameter keeps 8 significant bits, so an update smaller than half the spacing of
its neighbours (between |w| 2^-9 and |w| 2^-8) is lost with round-to-nearest: at the paper's
learning rate 1e-5 ([HB] Table 18) most 7B weights of magnitude ~0.02 would never move.
Stochastic rounding (Gupta et al., 2015, "Deep learning with limited numerical precision")
rounds ``x = p + u`` (in float32) up or down to a neighbouring bfloat16 with probabilities that
make the result unbiased: E[round(x)] = x. It is done on the bit pattern: add 16 uniform random
bits below bfloat16's mantissa, then truncate.

Keys: leaf i of the tree rounds with ``fold_in(key, i)``; the step passes a key derived from
the run's seed and the step number, so a resumed run rounds exactly as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

PARAM_ROUNDINGS = ("nearest", "stochastic")


def stochastic_round_bf16(x: jax.Array, key: jax.Array) -> jax.Array:
  """Unbiased rounding of float32 ``x`` to bfloat16.

  Args:
    x: float32 array (any shape; non-finite values pass through truncated).
    key: PRNG key.
  Returns:
    bfloat16 array of ``x.shape``: for each element one of the two bfloat16 values enclosing
    it, the upper one with probability (x - lower) / (upper - lower).
  """
  x = x.astype(jnp.float32)
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  noise = jax.random.bits(key, x.shape, jnp.uint32) & jnp.uint32(0xFFFF)
  rounded = (bits + noise) & jnp.uint32(0xFFFF0000)
  # Keep inf/nan as they are (the carry could turn a large finite value into inf, which is
  # the correct stochastic rounding of a value within one spacing of bfloat16's max).
  rounded = jnp.where(jnp.isfinite(x), rounded, bits & jnp.uint32(0xFFFF0000))
  return jax.lax.bitcast_convert_type(rounded, jnp.float32).astype(jnp.bfloat16)


def apply_updates(params: Any, updates: Any, *, rounding: str = "nearest",
                  key: jax.Array | None = None) -> Any:
  """``optax.apply_updates`` with a rounding mode for bfloat16 parameters.

  Args:
    params: parameter tree (any float dtypes).
    updates: the optimizer's updates, same structure.
    rounding: "nearest" (``optax.apply_updates``) or "stochastic": bfloat16 leaves get
      ``stochastic_round_bf16(f32(p) + f32(u), fold_in(key, leaf index))``; other dtypes are
      added and rounded to nearest as usual.
    key: PRNG key (required for "stochastic").
  Returns:
    The updated tree, each leaf in its parameter's dtype.
  Raises:
    ValueError: an unknown ``rounding`` or a missing key.
  """
  if rounding not in PARAM_ROUNDINGS:
    raise ValueError(f"rounding must be one of {PARAM_ROUNDINGS}, got {rounding!r}")
  if rounding == "nearest":
    return optax.apply_updates(params, updates)
  if key is None:
    raise ValueError("stochastic rounding needs a key")
  leaves, treedef = jax.tree.flatten(params)
  ups = treedef.flatten_up_to(updates)
  out = []
  for i, (p, u) in enumerate(zip(leaves, ups)):
    if p.dtype == jnp.bfloat16:
      out.append(stochastic_round_bf16(p.astype(jnp.float32) + u.astype(jnp.float32),
                                       jax.random.fold_in(key, i)))
    else:
      out.append((p + u.astype(p.dtype)).astype(p.dtype))
  return jax.tree.unflatten(treedef, out)
