"""Teacher-forced log-probabilities of given continuations (the serve engine's logprobs).

``teacher_forced_logprobs`` runs one pass of the model over prompt + continuation (no
sampling): the prompts are prefilled into a KV cache as ``decode.generate`` does, then the
continuation is fed ``_SCORE_CHUNK`` columns at a time; it returns the full-softmax
log-probability of each continuation token and the top-k alternatives, with the final norm,
head and log-softmax in float32. ``serve/engine.py`` uses it for requests with
``top_logprobs`` (and re-exports it).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from humpback_jax.models.config import LlamaConfig
from humpback_jax.models.llama import Llama, init_cache
from humpback_jax.sample import decode

Params = Any
_SCORE_CHUNK = 32  # generated columns scored per scan step (bounds the [B, C, V] logits)


def continuation_width(n: int) -> int:
  """The padded continuation width (columns) to score a longest continuation of ``n`` tokens:
  the next power of two, so that few distinct widths (compiled programs) occur."""
  return 1 << max(0, int(n) - 1).bit_length()


@functools.partial(jax.jit, static_argnames=("config", "k", "chunk"))
def _teacher_forced(params: Params, prompt_tokens: jax.Array, prompt_lengths: jax.Array,
                    gen_tokens: jax.Array, gen_lengths: jax.Array, *, config: LlamaConfig,
                    k: int, chunk: int):
  b, p = prompt_tokens.shape
  g = gen_tokens.shape[1]
  segment_ids, positions = decode._prompt_layout(prompt_tokens, prompt_lengths)
  prompt_tokens = jnp.where(segment_ids > 0, prompt_tokens, 0)
  config = config.replace(logits_dot_in_fp32=True)
  # As decode.generate: columns 0..P-2 into a cache of exactly their slots (their logits are
  # dead code), then G empty slots for the continuation.
  cache = init_cache(config, b, max(p - 1, 1))
  if p > 1:
    impl = decode.prefill_attention_impl(config, p - 1)
    _, cache = Llama(config.replace(attention_impl=impl)).apply(
        params, prompt_tokens[:, :-1], positions[:, :-1], segment_ids[:, :-1], cache=cache)
  grow = p - 1 + g - cache["k"].shape[2]
  cache = dict(cache, k=jnp.pad(cache["k"], ((0, 0), (0, 0), (0, grow), (0, 0), (0, 0))),
               v=jnp.pad(cache["v"], ((0, 0), (0, 0), (0, grow), (0, 0), (0, 0))),
               segment_ids=jnp.pad(cache["segment_ids"], ((0, 0), (0, grow))))
  # Column j feeds the token before generated token j: the last prompt token, then gen[:-1].
  fed = jnp.concatenate([prompt_tokens[:, -1:], gen_tokens[:, :-1]], axis=1)
  cols = jnp.arange(g, dtype=jnp.int32)[None, :]
  seg = (cols < gen_lengths[:, None]).astype(jnp.int32)
  fed = jnp.where(seg > 0, fed, 0)
  pos = jnp.maximum(prompt_lengths[:, None] - 1, 0) + cols
  model = Llama(config)
  split = lambda x: jnp.moveaxis(x.reshape(b, g // chunk, chunk, *x.shape[2:]), 1, 0)

  def body(cache, xs):
    tok, ps, sg, target = xs
    logits, cache = model.apply(params, tok, ps, sg, cache=cache)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    chosen = jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]
    top_lp, top_ids = jax.lax.top_k(logp, k)
    return cache, (chosen, top_lp, top_ids.astype(jnp.int32))

  _, (chosen, top_lp, top_ids) = jax.lax.scan(
      body, cache, (split(fed), split(pos), split(seg), split(gen_tokens.astype(jnp.int32))))
  join = lambda x: jnp.moveaxis(x, 0, 1).reshape(b, g, *x.shape[3:])
  return join(chosen), join(top_lp), join(top_ids)


def teacher_forced_logprobs(params: Params, prompt_tokens: jax.Array,
                            prompt_lengths: jax.Array, gen_tokens: jax.Array,
                            gen_lengths: jax.Array, *, config: LlamaConfig, k: int = 20):
  """Log-probabilities of given continuations by one teacher-forced pass (no sampling).

  The prompts are prefilled into a KV cache as ``decode.generate`` does, then the continuation
  columns run through the model ``_SCORE_CHUNK`` columns at a time (so the logits are at most
  [B, 32, V]); final norm, head and log-softmax in float32 (``logits_dot_in_fp32``).

  Args:
    params: ``{"params": ...}`` of ``Llama(config)``.
    prompt_tokens: int32 [B, P] LEFT-padded prompts; prompt_lengths: int32 [B] (>= 1 for a
      meaningful row; 0 gives finite garbage: a filler row).
    gen_tokens: int32 [B, G] RIGHT-padded continuations (pad values are ignored);
      gen_lengths: int32 [B] their lengths (tokens), <= G.
    config: the model (static).
    k: alternatives per position (static), <= V.
  Returns:
    (logprobs float32 [B, G]: log P(gen[b, g] | prompt, gen[b, :g]); top_logprobs float32
    [B, G, k] and top_ids int32 [B, G, k], most likely first). Columns >= gen_lengths[b] are
    garbage.
  Raises:
    ValueError: bad shapes, or k outside 1..V.
  """
  if prompt_tokens.ndim != 2 or gen_tokens.ndim != 2 or \
      prompt_tokens.shape[0] != gen_tokens.shape[0]:
    raise ValueError(f"bad shapes: prompt_tokens {prompt_tokens.shape}, gen_tokens "
                     f"{gen_tokens.shape}")
  if not 1 <= k <= config.vocab_size:
    raise ValueError(f"k={k} must be in 1..{config.vocab_size}")
  g = gen_tokens.shape[1]
  chunk = min(_SCORE_CHUNK, g)
  pad = -g % chunk
  if pad:
    gen_tokens = jnp.pad(gen_tokens, ((0, 0), (0, pad)))
  out = _teacher_forced(params, jnp.asarray(prompt_tokens, jnp.int32),
                        jnp.asarray(prompt_lengths, jnp.int32), jnp.asarray(gen_tokens, jnp.int32),
                        jnp.asarray(gen_lengths, jnp.int32), config=config, k=int(k),
                        chunk=chunk)
  return tuple(x[:, :g] for x in out)
