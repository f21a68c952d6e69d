"""Next-token sampling strategies: pure functions of one step's logits.

A strategy is a small frozen (hence hashable) dataclass, so it can be a static argument of
``jax.jit``; calling it maps logits float32 [B, V] and a PRNG key to token ids int32 [B].

``Sampling`` reproduces the logits warpers of HF ``transformers`` generation, applied in HF's
order (``GenerationMixin._get_logits_processor``): temperature first, then top-k
(``TopKLogitsWarper``), then top-p (``TopPLogitsWarper``), then a categorical draw. The defaults
T=0.7, p=0.9 are the Humpback paper's decoding settings ([HB] Li et al., 2023, "Self-Alignment
with Instruction Backtranslation": nucleus sampling with temperature 0.7, top-p 0.9).

The decode loop calls ``sample_rows(logits [B, V], keys [B, 2])`` where a strategy has it (both
strategies here do); it equals ``vmap(lambda l, k: strategy(l[None], k)[0])`` (row b drawn with
its own key) token for token, but avoids the two costs that dominate a sampled decode step on
a CPU at a 49k vocabulary: ``Sampling.sample_rows`` finds the nucleus without sorting the
vocabulary (a top-k of 64 candidates; for a wider nucleus, the best in-nucleus token among
the 4 largest noise-perturbed logits) and draws the Gumbel noise of the candidates only; ``Greedy.sample_rows`` is a max and a min
instead of XLA's variadic arg-max reduction.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np


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

  def sample_rows(self, logits: jax.Array, keys: jax.Array | None = None) -> jax.Array:
    """``argmax`` per row (lowest id among ties), as two plain reductions.

    Args:
      logits: float [B, V]; keys: unused.
    Returns:
      int32 [B], equal to ``self(logits)`` (a row holding NaN gives its first NaN's id).
    """
    del keys
    return _argmax_first(logits)


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

  def sample_rows(self, logits: jax.Array, keys: jax.Array) -> jax.Array:
    """Row b draws with its own key: ``self(logits[b][None], keys[b])[0]`` for every b.

    The same tokens as that (same Gumbel noise, same arg-max), computed faster when
    ``top_p < 1``:

    * Nucleus. Token i is kept iff the probability mass of the tokens whose (warped) logit is
      strictly greater than its own is < top_p: HF's ascending-cumsum rule written from the
      top (as ``_top_p_filter``, every token tied at the cutoff is kept). The kept set is read
      off the 64 largest logits (``lax.top_k``) when their mass reaches top_p.
    * Draw. ``jax.random.categorical`` adds Gumbel noise to all V logits and takes the arg-max;
      only kept tokens can win, so when the nucleus lies within the candidates only their
      noise is generated (the same threefry counters as the full draw) and the arg-max taken
      among them (ties to the lowest id, as ``argmax``).
    * Wider nuclei (``_wide_nucleus_draw``): the noise of the whole vocabulary, and the best
      of the 4 largest perturbed logits that lies in the nucleus (4 masked sums); a bisection
      for the cutoff (32 masked sums) only when none of them does.
    Each wider search runs only when some row of the batch needs it, and a row's result never
    depends on which searches its batch ran. Borderline tokens (mass within float rounding of
    top_p) may fall on the other side than with ``warp``'s sort and cumulative sum.

    Args:
      logits: float [B, V] next-token logits.
      keys: uint32 [B, 2] raw PRNG keys, one per row.
    Returns:
      int32 [B] token ids.
    """
    w = logits.astype(jnp.float32) / self.temperature
    if self.top_k:
      w = _top_k_filter(w, self.top_k)
    if self.top_p >= 1.0:
      return _categorical_rows(keys, w)
    lse = jax.nn.logsumexp(w, axis=-1, keepdims=True)
    levels = tuple(k for k in _CANDIDATE_LEVELS if k < w.shape[-1])
    if not levels or not _fast_gumbel_ok():
      return _categorical_rows(keys, _top_p_bisect(w, lse, self.top_p))
    return _nucleus_draw(w, lse, keys, self.top_p, levels)


# Candidate counts tried in turn by ``Sampling.sample_rows`` before the wide-nucleus draw.
_CANDIDATE_LEVELS = (64,)
# Perturbed logits examined per row by the wide-nucleus draw (``_wide_nucleus_draw``).
_NOISE_CANDIDATES = 4


def _nucleus_of_candidates(vals: jax.Array, lse: jax.Array, top_p: float):
  """Nucleus among the k largest warped logits ``vals`` [B, k] (descending).

  Returns:
    (kept bool [B, k]: a prefix; inside bool [B]: the nucleus ends before the last candidate,
    so that it holds no other token).
  """
  probs = jnp.exp(vals - lse)
  excl = jnp.cumsum(probs, axis=-1) - probs  # mass of the earlier candidates
  # Ties are not "above": a tied run takes the mass before its first member.
  d = jax.lax.broadcasted_iota(jnp.int32, vals.shape, 1)
  new_run = jnp.concatenate([jnp.ones_like(vals[:, :1], bool), vals[:, 1:] != vals[:, :-1]],
                            axis=-1)
  first = jax.lax.cummax(jnp.where(new_run, d, 0), axis=1)
  above = jnp.take_along_axis(excl, first, axis=-1)
  kept = above < top_p
  return kept, ~kept[:, -1]


def _nucleus_draw(w, lse, keys, top_p: float, levels: tuple[int, ...]) -> jax.Array:
  """Draws of ``Sampling.sample_rows`` from the ``levels[0]`` largest logits, deferring the rows
  whose nucleus is wider to the next level (or, after the last, to a bisection)."""
  # The barrier keeps XLA from folding later slices of vals into the top-k's sort, which would
  # stop the CPU backend from rewriting it to its TopK kernel (a full sort of the vocabulary
  # is ~50x slower).
  vals, idx = jax.lax.optimization_barrier(jax.lax.top_k(w, levels[0]))
  kept, inside = _nucleus_of_candidates(vals, lse, top_p)
  here = _categorical_candidates(keys, vals, idx, kept)  # cheap: always computed

  def wider(_):
    if len(levels) > 1:
      return _nucleus_draw(w, lse, keys, top_p, levels[1:])
    return _wide_nucleus_draw(w, lse, keys, top_p)

  # The wider search runs only when some row needs it; each row keeps its own level's draw.
  return jnp.where(inside, here, jax.lax.cond(jnp.all(inside), lambda _: here, wider, None))


def _wide_nucleus_draw(w, lse, keys, top_p: float, k: int = _NOISE_CANDIDATES) -> jax.Array:
  """Draws of ``Sampling.sample_rows`` for rows whose nucleus is wider than the candidates.

  The reference draw is the Gumbel-max ``argmax_i (w_i + g_i)`` over the nucleus (``g`` the
  row's ``jax.random.gumbel(key, (1, V))``). Here the noise of the whole vocabulary is drawn
  once and the k largest perturbed logits z = w + g are taken; the answer is the best of them
  that lies in the nucleus (a token is in it iff the mass of the tokens with a strictly larger
  logit is < top_p: one masked sum over the vocabulary per candidate), since every nucleus
  token with a larger z would be among them. z's arg-max is a draw from the full softmax, so it
  is in the nucleus with probability >= top_p; a row none of whose k candidates is (< 1e-4 at
  top_p 0.9, k 4) is drawn by the exact bisection (``_top_p_bisect``), run only when some row
  of the batch needs it. No sort, no bisection, no top-1024 in the common case.
  """
  v = w.shape[-1]
  g = jax.vmap(lambda key: jax.random.gumbel(key, (1, v), jnp.float32)[0])(keys)
  z = w + g
  zv, zi = jax.lax.top_k(z, k)  # [B, k] descending
  wi = jnp.take_along_axis(w, zi, axis=-1)
  probs = jnp.exp(w - lse)
  mass_above = jnp.sum(jnp.where(w[:, None, :] > wi[:, :, None], probs[:, None, :], 0.0),
                       axis=-1)
  kept = mass_above < top_p
  score = jnp.where(kept, zv, -jnp.inf)
  best = jnp.max(score, axis=-1, keepdims=True)
  token = jnp.min(jnp.where(kept & (score == best), zi, jnp.iinfo(jnp.int32).max),
                  axis=-1).astype(jnp.int32)
  found = jnp.any(kept, axis=-1)

  def exact(_):
    return _categorical_rows(keys, _top_p_bisect(w, lse, top_p))

  return jnp.where(found, token, jax.lax.cond(jnp.all(found), lambda _: token, exact, None))


def _argmax_first(x: jax.Array) -> jax.Array:
  """int32 [B]: index of the first maximum of each row of x [B, V] (of the first NaN if any)."""
  v = x.shape[-1]
  iota = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
  nan = jnp.isnan(x)
  top = jnp.max(x, axis=-1, keepdims=True)
  hit = jnp.where(jnp.any(nan, axis=-1, keepdims=True), nan, x == top)
  return jnp.min(jnp.where(hit, iota, v), axis=-1).astype(jnp.int32)


def _categorical_rows(keys: jax.Array, warped: jax.Array) -> jax.Array:
  """Row b: ``jax.random.categorical(keys[b], warped[b][None], axis=-1)[0]`` (full vocabulary)."""
  return jax.vmap(lambda w, k: jax.random.categorical(k, w[None], axis=-1)[0])(
      warped, keys).astype(jnp.int32)


def _fast_gumbel_ok() -> bool:
  """The Gumbel noise of single vocabulary entries can be generated bit-identically to
  ``jax.random.gumbel``: threefry keys, partitionable counters, the 'low' mode."""
  return (jax.config.jax_default_prng_impl == "threefry2x32"
          and bool(jax.config.jax_threefry_partitionable)
          and not bool(jax.config.jax_high_dynamic_range_gumbel))


def gumbel_at(key: jax.Array, index: jax.Array) -> jax.Array:
  """``jax.random.gumbel(key, (1, V), float32)[0, index]`` without generating the V values.

  With partitionable threefry, entry i of a (1, V) draw hashes the counter pair (0, i) with
  the key; the bits become a uniform in [tiny, 1) and then -log(-log(u)), as
  ``jax.random.gumbel`` does (mode "low").

  Args:
    key: uint32 [2] raw key.
    index: int32 [K] vocabulary ids (< 2**32).
  Returns:
    float32 [K].
  """
  from jax.extend.random import threefry2x32_p  # pylint: disable=g-import-not-at-top
  lo = index.astype(jnp.uint32)
  b1, b2 = threefry2x32_p.bind(key[0], key[1], jnp.zeros_like(lo), lo)
  bits = b1 ^ b2
  one = np.array(1.0, np.float32).view(np.uint32)
  floats = jax.lax.bitcast_convert_type(
      jax.lax.shift_right_logical(bits, jnp.uint32(32 - 23)) | jnp.uint32(one),
      jnp.float32) - jnp.float32(1.0)
  tiny = jnp.float32(np.finfo(np.float32).tiny)
  u = jax.lax.max(tiny, floats * (jnp.float32(1.0) - tiny) + tiny)
  return -jnp.log(-jnp.log(u))


def _categorical_candidates(keys: jax.Array, vals: jax.Array, idx: jax.Array,
                            kept: jax.Array) -> jax.Array:
  """Row b: the categorical draw of ``keys[b]`` restricted to the candidates ``idx[b]`` (ids)
  with logits ``vals[b]``, of which ``kept[b]`` survive; equal to the full-vocabulary draw
  when every kept token is a candidate."""
  def row(key, v, i, m):
    score = jnp.where(m, v + gumbel_at(key, i), -jnp.inf)
    best = jnp.max(score)
    return jnp.min(jnp.where(score == best, i, jnp.iinfo(jnp.int32).max))

  return jax.vmap(row)(keys, vals, idx, kept).astype(jnp.int32)


def _sortable(x: jax.Array) -> jax.Array:
  """uint32 keys ordered as the float32 values x (-inf lowest; NaN not handled)."""
  bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
  neg = (bits >> jnp.uint32(31)) == 1
  return jnp.where(neg, ~bits, bits | jnp.uint32(0x80000000))


def _top_p_bisect(w: jax.Array, lse: jax.Array, top_p: float) -> jax.Array:
  """Nucleus filter of warped logits w [B, V] (lse: their logsumexp [B, 1]) without a sort.

  Keeps token i iff the mass of the tokens with a strictly larger logit is < top_p. That mass
  g(u) is non-increasing in the threshold u, so the kept set is {i: key_i >= u*} with u* the
  smallest uint32 threshold where g(u) < top_p, found by bisection over the order-preserving
  uint32 image of float32 (32 steps, each one masked sum over the vocabulary).

  Returns:
    float32 [B, V]: w, with -inf outside the nucleus.
  """
  key = _sortable(w)
  probs = jnp.exp(w - lse)
  mass_above = lambda u: jnp.sum(jnp.where(key > u[:, None], probs, 0.0), axis=-1)
  hi = jnp.max(key, axis=-1)  # g(hi) = 0 < top_p
  lo = jnp.min(key, axis=-1)  # the smallest key itself is kept iff g(lo) < top_p

  def body(_, bounds):
    lo, hi = bounds  # invariant: g(hi) < top_p; g(x) >= top_p for every x < lo
    mid = lo + (hi - lo) // jnp.uint32(2)
    ok = mass_above(mid) < top_p
    return jnp.where(ok, lo, mid + jnp.uint32(1)), jnp.where(ok, mid, hi)

  lo, hi = jax.lax.fori_loop(0, 32, body, (lo, hi))
  return jnp.where(key >= hi[:, None], w, -jnp.inf)


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
