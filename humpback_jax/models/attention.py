"""Attention kernels of the LLaMA decoder, chosen by ``LlamaConfig.attention_impl``.

All of them compute the same function, softmax(q k^T / sqrt(Dh) masked) v with grouped-query
heads, and differ in memory, speed and rounding order:

  "dot_product"  einsum + softmax (the reference): materializes the scores [B, KV, G, T, S].
  "chunked"      flash-style online softmax in pure JAX over key/value chunks of
                 ``attention_chunk_size`` tokens, with a custom VJP that recomputes the chunk's
                 scores in the backward pass: no score tensor is larger than
                 [B, KV, G, T, chunk] (a few such blocks are live at once: scores,
                 probabilities, their gradient), plus a running max / sum [B, KV, G, T] and
                 output [B, T, H, Dh] in float32; the residuals saved for the backward pass
                 are q, k, v, the output and the row max / sum (O(T), never O(T x S)).
  "xla", "cudnn" ``jax.nn.dot_product_attention(implementation=...)``; "cudnn" (cuDNN flash
                 attention) only on a CUDA GPU and only for the dtypes/shapes cuDNN supports
                 (float16/bfloat16); it raises otherwise. Its softmax runs in float32 even for a
                 float64 model.
  "splash"       the TPU Pallas splash-attention kernel, for the no-cache path (training,
                 evaluation, a prefill without a cache) only; with a KV cache (prefill into a
                 cache, decode) it falls back to "chunked" (splash has no decode kernel). On
                 another platform it raises ``ValueError`` (never a silent fallback: a config
                 that asks for a TPU kernel on CPU/GPU is a misconfiguration).

Masks. A query attends to a key iff both have the same non-zero segment id and the key's slot
is not after the query's (``attention_mask``). Masked scores are filled with the large finite
``NEG_INF``, so a fully masked row (a padding query: segment id 0) is a uniform average of the
values, never NaN; "chunked" reproduces this exactly. "splash" lets padding queries (segment 0)
attend to padding keys (its ``SegmentIds`` have no "never attend" id), so padding rows' outputs
differ from the other kernels'; non-padding rows are unaffected (a non-zero segment never sees
segment 0) and padding rows carry no loss.

Shapes: B batch, T queries, S keys (T, or the cache length), H query heads, KV key/value heads,
G = H // KV, Dh head width.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

NEG_INF = -0.7 * float(np.finfo(np.float32).max)


def _acc(dtype) -> Any:
  """Accumulation dtype: float32, or float64 for a float64 model (exactness tests)."""
  return jnp.promote_types(dtype, jnp.float32)


def attention_mask(q_segment_ids, kv_segment_ids, q_slots, kv_slots):
  """Boolean [B, T, S] mask: same non-zero segment and key slot <= query slot.

  Args:
    q_segment_ids: int32 [B, T]; kv_segment_ids: int32 [B, S];
    q_slots: int32 [T] slot index of each query; kv_slots: int32 [S].
  """
  same = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
  causal = kv_slots[None, None, :] <= q_slots[None, :, None]
  return same & causal & (q_segment_ids[:, :, None] != 0)


class MaskSpec(NamedTuple):
  """What decides the mask, without the [B, T, S] tensor unless a kernel needs it.

  Attributes:
    q_segment_ids: int32 [B, T]; kv_segment_ids: int32 [B, S] (the cache's, with a cache).
    q_slots: int32 [T]; kv_slots: int32 [S] (cache slots; ``arange`` without a cache).
    dense: bool [B, T, S] ``attention_mask`` of the above, or None for the kernels that build
      their own ("chunked", "splash"), so that no O(T x S) tensor is ever made for them.

  Only arrays (it passes through ``nn.scan`` / ``nn.remat`` as traced values).
  """

  q_segment_ids: jax.Array
  kv_segment_ids: jax.Array
  q_slots: jax.Array
  kv_slots: jax.Array
  dense: jax.Array | None

  @classmethod
  def build(cls, impl: str, q_segment_ids, kv_segment_ids, q_slots, kv_slots) -> "MaskSpec":
    """The spec for kernel ``impl``, with ``dense`` only where the kernel reads it."""
    needs_dense = impl in ("dot_product", "xla", "cudnn")
    dense = (attention_mask(q_segment_ids, kv_segment_ids, q_slots, kv_slots)
             if needs_dense else None)
    return cls(q_segment_ids, kv_segment_ids, q_slots, kv_slots, dense)


def dot_product_attention(q, k, v, mask, dtype):
  """The reference: einsum scores [B, KV, G, T, S] in float32 (or wider), softmax, einsum.

  Args:
    q: [B, T, H, Dh] (compute dtype); k, v: [B, S, KV, Dh] (any float dtype);
    mask: bool [B, T, S]; dtype: compute dtype of the output.
  Returns:
    ``dtype`` [B, T, H, Dh].
  """
  b, t, h, dh = q.shape
  kv = k.shape[2]
  q = q.reshape(b, t, kv, h // kv, dh)
  scores = jnp.einsum("btkgd,bskd->bkgts", q, k.astype(q.dtype),
                      preferred_element_type=_acc(q.dtype)) * (dh ** -0.5)
  scores = jnp.where(mask[:, None, None, :, :], scores, NEG_INF)
  probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
  out = jnp.einsum("bkgts,bskd->btkgd", probs, v.astype(dtype))
  return out.reshape(b, t, h, dh)


# ----------------------------------------------------------------------------------------------
# "chunked": online softmax over key/value chunks, custom VJP (FlashAttention-2 backward).


def _chunk_scores(q, k_c, q_seg, kv_seg_c, q_slots, kv_slots_c):
  """Masked scaled scores of one key chunk: (acc [B, KV, G, T, C], bool mask [B, 1, 1, T, C])."""
  scale = q.shape[-1] ** -0.5
  s = jnp.einsum("btkgd,bskd->bkgts", q, k_c, preferred_element_type=_acc(q.dtype)) * scale
  m = attention_mask(q_seg, kv_seg_c, q_slots, kv_slots_c)[:, None, None]
  return jnp.where(m, s, NEG_INF), m


def _over_chunks(fn, carry, chunk, k, v, kv_seg, kv_slots):
  """Runs ``carry, y = fn(carry, k_c, v_c, kv_seg_c, kv_slots_c)`` over the key chunks.

  The S // chunk full chunks go through one ``lax.scan`` (sliced with ``dynamic_slice``, so
  nothing is copied or padded); a last partial chunk of S % chunk keys is one more call.
  Returns (carry, list of the calls' ``y``s, each with a leading chunk axis, in key order).
  """
  s = k.shape[1]
  n, tail = divmod(s, chunk)
  ys = []
  if n:
    def body(c, i):
      sl = lambda x, axis: jax.lax.dynamic_slice_in_dim(x, i * chunk, chunk, axis)
      return fn(c, sl(k, 1), sl(v, 1), sl(kv_seg, 1), sl(kv_slots, 0))
    carry, y = jax.lax.scan(body, carry, jnp.arange(n, dtype=jnp.int32))
    ys.append(y)
  if tail:
    carry, y = fn(carry, k[:, n * chunk:], v[:, n * chunk:], kv_seg[:, n * chunk:],
                  kv_slots[n * chunk:])
    ys.append(jax.tree.map(lambda a: a[None], y))
  return carry, ys


def _chunked_fwd_stats(q, k, v, q_seg, kv_seg, q_slots, kv_slots, chunk):
  """Forward pass: (out acc [B, KV, G, T, Dh], running max m and sum l, acc [B, KV, G, T]).

  Queries longer than one chunk are processed in blocks of ``chunk`` queries, each over the
  key chunks; a key chunk that lies wholly after a block's last query slot (every score
  causally masked) is skipped (``lax.cond``), its exact contribution added instead (nothing
  for a row that has an unmasked key; for a still fully masked row, what a masked chunk adds:
  weight exp(0) = 1 per key). So a causal prefill of T tokens computes about half of the
  T x S scores, with the same results up to rounding.
  """
  t = q.shape[1]
  if t <= chunk:
    return _fwd_block(q, k, v, q_seg, kv_seg, q_slots, kv_slots, chunk)
  parts = [_fwd_block(q[:, i:i + chunk], k, v, q_seg[:, i:i + chunk], kv_seg,
                      q_slots[i:i + chunk], kv_slots, chunk) for i in range(0, t, chunk)]
  return tuple(jnp.concatenate([p[j] for p in parts], axis=3) for j in range(3))


def _fwd_block(q, k, v, q_seg, kv_seg, q_slots, kv_slots, chunk):
  """``_chunked_fwd_stats`` of one block of queries (q [B, T, KV, G, Dh])."""
  b, t, kvh, g, dh = q.shape
  acc = _acc(q.dtype)
  last_q = jnp.max(q_slots)

  def compute(carry, k_c, v_c, kv_seg_c, kv_slots_c):
    m, l, o = carry
    s, _ = _chunk_scores(q, k_c, q_seg, kv_seg_c, q_slots, kv_slots_c)
    m_new = jnp.maximum(m, s.max(axis=-1))
    alpha = jnp.exp(m - m_new)
    p = jnp.exp(s - m_new[..., None])
    l = alpha * l + p.sum(axis=-1)
    o = alpha[..., None] * o + jnp.einsum("bkgts,bskd->bkgtd", p.astype(q.dtype), v_c,
                                          preferred_element_type=acc)
    return m_new, l, o

  def skip(carry, k_c, v_c, kv_seg_c, kv_slots_c):
    del k_c, kv_seg_c, kv_slots_c
    m, l, o = carry
    empty = m == NEG_INF  # no unmasked key yet: a masked chunk weighs exp(0) = 1 per key
    vsum = jnp.sum(v_c.astype(acc), axis=1)  # [B, KV, Dh]
    l = jnp.where(empty, l + v_c.shape[1], l)
    o = jnp.where(empty[..., None], o + vsum[:, :, None, None, :], o)
    return m, l, o

  def step(carry, k_c, v_c, kv_seg_c, kv_slots_c):
    needed = jnp.min(kv_slots_c) <= last_q
    return jax.lax.cond(needed, compute, skip, carry, k_c, v_c, kv_seg_c, kv_slots_c), None

  init = (jnp.full((b, kvh, g, t), NEG_INF, acc), jnp.zeros((b, kvh, g, t), acc),
          jnp.zeros((b, kvh, g, t, dh), acc))
  (m, l, o), _ = _over_chunks(step, init, chunk, k, v, kv_seg, kv_slots)
  return o / l[..., None], m, l  # l >= 1: the row's max contributes exp(0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def _chunked(q, k, v, q_seg, kv_seg, q_slots, kv_slots, chunk):
  out, _, _ = _chunked_fwd_stats(q, k, v, q_seg, kv_seg, q_slots, kv_slots, chunk)
  return jnp.einsum("bkgtd->btkgd", out).astype(q.dtype)


def _chunked_vjp_fwd(q, k, v, q_seg, kv_seg, q_slots, kv_slots, chunk):
  out, m, l = _chunked_fwd_stats(q, k, v, q_seg, kv_seg, q_slots, kv_slots, chunk)
  res = (q, k, v, q_seg, kv_seg, q_slots, kv_slots, out, m, l)
  return jnp.einsum("bkgtd->btkgd", out).astype(q.dtype), res


def _chunked_vjp_bwd(chunk, res, d_out):
  """FlashAttention-2 backward: per chunk, p = exp(s - m) / l recomputed from the saved row
  statistics; ds = p (dp - rowsum(dO * O)), zero where masked (as ``where`` in the reference)."""
  q, k, v, q_seg, kv_seg, q_slots, kv_slots, out, m, l = res
  acc = _acc(q.dtype)
  scale = q.shape[-1] ** -0.5
  do = jnp.einsum("btkgd->bkgtd", d_out).astype(acc)
  delta = jnp.sum(do * out, axis=-1)  # [B, KV, G, T]
  do = do.astype(q.dtype)

  def step(dq, k_c, v_c, kv_seg_c, kv_slots_c):
    s, mask = _chunk_scores(q, k_c, q_seg, kv_seg_c, q_slots, kv_slots_c)
    p = jnp.exp(s - m[..., None]) / l[..., None]
    dv_c = jnp.einsum("bkgts,bkgtd->bskd", p.astype(q.dtype), do, preferred_element_type=acc)
    dp = jnp.einsum("bkgtd,bskd->bkgts", do, v_c, preferred_element_type=acc)
    ds = (jnp.where(mask, p * (dp - delta[..., None]), 0.0) * scale).astype(q.dtype)
    dq = dq + jnp.einsum("bkgts,bskd->btkgd", ds, k_c, preferred_element_type=acc)
    dk_c = jnp.einsum("bkgts,btkgd->bskd", ds, q, preferred_element_type=acc)
    return dq, (dk_c, dv_c)

  dq, ys = _over_chunks(step, jnp.zeros(q.shape, acc), chunk, k, v, kv_seg, kv_slots)
  # Each y: [n, B, C, KV, Dh] -> [B, n * C, KV, Dh]; chunks are in key order.
  join = lambda i: jnp.concatenate(
      [jnp.moveaxis(y[i], 0, 1).reshape(k.shape[0], -1, *k.shape[2:]) for y in ys], axis=1)
  return (dq.astype(q.dtype), join(0).astype(k.dtype), join(1).astype(v.dtype),
          None, None, None, None)


_chunked.defvjp(_chunked_vjp_fwd, _chunked_vjp_bwd)


def chunked_attention(q, k, v, spec: MaskSpec, chunk_size: int, dtype):
  """Flash-style attention in pure JAX (any platform, differentiable, with or without a cache).

  Scores are computed one chunk of ``chunk_size`` keys at a time (the last chunk may be
  shorter), with a running max / sum / output in float32 (float64 for a float64 model); the
  backward pass (custom VJP) recomputes each chunk's probabilities from the saved per-row max
  and sum, so no score tensor of either pass is larger than [B, KV, G, T, chunk]. Results
  equal ``dot_product_attention`` up to rounding, including fully masked (padding) rows.

  Args:
    q: [B, T, H, Dh]; k, v: [B, S, KV, Dh]; spec: the mask (``dense`` unused);
    chunk_size: keys per chunk (>= 1); dtype: compute dtype (matmul operands, output).
  Returns:
    ``dtype`` [B, T, H, Dh].
  """
  b, t, h, dh = q.shape
  kvh = k.shape[2]
  q = q.astype(dtype).reshape(b, t, kvh, h // kvh, dh)
  out = _chunked(q, k.astype(dtype), v.astype(dtype), spec.q_segment_ids.astype(jnp.int32),
                 spec.kv_segment_ids.astype(jnp.int32), spec.q_slots.astype(jnp.int32),
                 spec.kv_slots.astype(jnp.int32), int(chunk_size))
  return out.reshape(b, t, h, dh)


# ----------------------------------------------------------------------------------------------
# "xla" / "cudnn": jax.nn.dot_product_attention.


def _platform() -> str:
  return jax.default_backend()


def jax_nn_attention(q, k, v, mask, dtype, implementation: str):
  """``jax.nn.dot_product_attention`` (GQA native; mask [B, 1, T, S]; scale 1/sqrt(Dh)).

  Args:
    q: [B, T, H, Dh]; k, v: [B, S, KV, Dh]; mask: bool [B, T, S]; dtype: compute dtype;
    implementation: "xla" or "cudnn".
  Returns:
    ``dtype`` [B, T, H, Dh].
  Raises:
    ValueError: "cudnn" off a CUDA GPU (names the platform); cuDNN's own errors for
      unsupported dtypes/shapes (e.g. float32) come from JAX.
  """
  if implementation == "cudnn" and _platform() not in ("gpu", "cuda"):
    raise ValueError(f"attention_impl='cudnn' needs a CUDA GPU, but JAX runs on "
                     f"{_platform()!r}; use 'chunked', 'xla' or 'dot_product' there")
  q = q.astype(dtype)
  return jax.nn.dot_product_attention(
      q, k.astype(dtype), v.astype(dtype), mask=mask[:, None], scale=q.shape[-1] ** -0.5,
      implementation=implementation).astype(dtype)


# ----------------------------------------------------------------------------------------------
# "splash": TPU Pallas kernel (no cache).


def _splash_block(t: int) -> int:
  for blk in (512, 256, 128):
    if t % blk == 0:
      return blk
  raise ValueError(f"attention_impl='splash' needs a sequence length divisible by 128, got {t}")


def splash_attention(q, k, v, segment_ids, dtype, sharding=None, interpret: bool = False):
  """Causal self-attention with segment ids through the TPU splash-attention kernel.

  Args:
    q: [B, T, H, Dh]; k, v: [B, T, KV, Dh] (no cache: S == T); segment_ids: int32 [B, T];
    dtype: compute dtype; sharding: the model's ``ActivationSharding`` or None: with one, the
      kernel runs under ``shard_map`` per (batch, heads) shard, since XLA cannot partition a
      Pallas call; interpret: run the kernel in the Pallas interpreter (any platform; tests).
  Returns:
    ``dtype`` [B, T, H, Dh]. Rows of segment 0 (padding) attend to earlier padding keys.
  Raises:
    ValueError: not on a TPU (and not ``interpret``), T not a multiple of 128, or the heads
      and kv heads sharded differently.
  """
  if not interpret and _platform() != "tpu":
    raise ValueError(f"attention_impl='splash' is the TPU Pallas kernel, but JAX runs on "
                     f"{_platform()!r}; use 'chunked' (any platform) or 'cudnn' (GPU) there")
  from jax.experimental.pallas.ops.tpu import splash_attention as sa
  b, t, h, dh = q.shape
  blk = _splash_block(t)

  def run(q, k, v, seg):
    heads = q.shape[2]
    blocks = sa.BlockSizes(block_q=blk, block_kv=blk, block_kv_compute=blk, block_q_dkv=blk,
                           block_kv_dkv=blk, block_kv_dkv_compute=blk, block_q_dq=blk,
                           block_kv_dq=blk)
    kernel = sa.make_splash_mha(sa.MultiHeadMask([sa.CausalMask((t, t))] * heads),
                                head_shards=1, q_seq_shards=1, block_sizes=blocks,
                                interpret=interpret)
    heads_first = lambda x: jnp.einsum("bthd->bhtd", x)
    out = jax.vmap(kernel)(heads_first(q * dh ** -0.5), heads_first(k), heads_first(v),
                           sa.SegmentIds(seg, seg))
    return jnp.einsum("bhtd->bthd", out)

  q, k, v = q.astype(dtype), k.astype(dtype), v.astype(dtype)
  segment_ids = segment_ids.astype(jnp.int32)
  if sharding is None:
    return run(q, k, v, segment_ids).astype(dtype)
  from jax.sharding import PartitionSpec as P
  q_spec = sharding.spec(("activation_batch", None, "activation_heads", None), q.shape)
  kv_spec = sharding.spec(("activation_batch", None, "activation_kv_heads", None), k.shape)
  if q_spec[2] != kv_spec[2]:
    raise ValueError(f"attention_impl='splash': heads sharded as {q_spec[2]} but kv heads as "
                     f"{kv_spec[2]}; grouped-query heads must be split alike")
  out = jax.shard_map(run, mesh=sharding.mesh, in_specs=(q_spec, kv_spec, kv_spec,
                                                         P(q_spec[0], None)),
                      out_specs=q_spec, check_vma=False)(q, k, v, segment_ids)
  return out.astype(dtype)


# ----------------------------------------------------------------------------------------------


def attend(q, k, v, spec: MaskSpec, impl: str, chunk_size: int, dtype, cached: bool = False,
           sharding=None):
  """Dispatches to the ``impl`` kernel (``LlamaConfig.attention_impl``).

  Args:
    q: [B, T, H, Dh]; k, v: [B, S, KV, Dh] (S = T without a cache); spec: the mask;
    impl: one of ``models.config.ATTENTION_IMPLS``; chunk_size: keys per chunk ("chunked");
    dtype: compute dtype; cached: keys/values are KV-cache slots (prefill into a cache,
    decode); sharding: ``ActivationSharding`` or None ("splash" only).
  Returns:
    ``dtype`` [B, T, H, Dh].
  Raises:
    ValueError: an unknown ``impl``, or a kernel unavailable on this platform (see the
      module docstring).
  """
  if impl == "splash" and cached:
    impl = "chunked"  # splash has no decode / cache-slot kernel (documented fallback)
  if impl == "dot_product":
    return dot_product_attention(q, k, v, spec.dense, dtype)
  if impl == "chunked":
    return chunked_attention(q, k, v, spec, chunk_size, dtype)
  if impl in ("xla", "cudnn"):
    return jax_nn_attention(q, k, v, spec.dense, dtype, impl)
  if impl == "splash":
    return splash_attention(q, k, v, spec.q_segment_ids, dtype, sharding)
  raise ValueError(f"attention_impl={impl!r}: unknown")
