"""Device side of generation and scoring: pure, jitted functions of left-padded prompts.

  ``generate``            left-padded prompts [B, P] -> ``SampleOutput`` (up to N new tokens).
  ``next_token_logprobs`` left-padded prompts [B, P] -> log P(next token) f32[B, V].

Layout of one batch. Prompts are LEFT-padded to a common width P, so every row's last prompt
token sits in column P-1::

    row 0:  pad pad  a0  a1  a2 | g0 g1 g2 ...     segment ids 0 0 1 1 1 | 1 1 1
    row 1:   b0  b1  b2  b3  b4 | h0 h1 h2 ...     positions   0 0 0 1 2 | 3 4 5
            slot 0 ........ P-1 | P ...

Pads have segment id 0 (never attended) and do not advance the RoPE position, so a padded row
computes exactly what the same prompt computes alone (up to float rounding). The host side
(tokenize, batch, decode, per-record keys) is ``sample/sampler.py``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from humpback_jax.models.config import LlamaConfig
from humpback_jax.models.llama import KVCache, Llama, init_cache
from humpback_jax.sample.sampling import Strategy

Params = Any


def _round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple


@flax.struct.dataclass
class SamplingState:
  """Carry of the decode ``while_loop``.

  Attributes:
    step: int32 [] number of tokens sampled so far (0..max_new_tokens); also the column of
      ``tokens`` written next.
    done: bool [B] row has emitted an EOS (or had an empty prompt and never started).
    last_token: int32 [B] token fed to the model at this step (the last prompt token at step 0,
      then the previously sampled token).
    positions: int32 [B] RoPE position (tokens, pads excluded) of ``last_token``.
    tokens: int32 [B, N] output buffer, initialized to pad.
    lengths: int32 [B] tokens emitted while not done (so it counts the first EOS).
    cache: the KV cache, ``P + N`` slots; the model writes this step at ``cache["index"]``.
    rng: per-row PRNG keys uint32 [B, 2]; row b samples step s with ``fold_in(rng[b], s)``.
  """

  step: jax.Array
  done: jax.Array
  last_token: jax.Array
  positions: jax.Array
  tokens: jax.Array
  lengths: jax.Array
  cache: KVCache
  rng: jax.Array


@flax.struct.dataclass
class SampleOutput:
  """Result of ``generate``.

  Attributes:
    tokens: int32 [B, N] generated tokens; ``tokens[b, lengths[b]:]`` are ``pad_id``.
    lengths: int32 [B] generated tokens up to and INCLUDING the first EOS (N when no EOS was
      emitted; 0 for an empty prompt). Use ``content_lengths`` for text.
    finished: bool [B] the row emitted an EOS within the budget (False = cut by the budget).
    steps: int32 [] decode steps run (<= N; fewer when every row finished early).
  """

  tokens: jax.Array
  lengths: jax.Array
  finished: jax.Array
  steps: jax.Array

  @property
  def content_lengths(self) -> jax.Array:
    """int32 [B]: generated tokens excluding the terminating EOS; decode ``tokens[b, :this]``."""
    return self.lengths - self.finished.astype(self.lengths.dtype)


def _prompt_layout(prompt_tokens: jax.Array, prompt_lengths: jax.Array):
  """Segment ids and RoPE positions of a left-padded block.

  Args:
    prompt_tokens: int32 [B, P].
    prompt_lengths: int32 [B], 0 <= length <= P.
  Returns:
    (segment_ids int32 [B, P]: 1 on real tokens, 0 on pads;
     positions int32 [B, P]: 0.. over the real tokens, 0 on pads).
  """
  p = prompt_tokens.shape[1]
  real = jnp.arange(p, dtype=jnp.int32)[None, :] >= (p - prompt_lengths[:, None])
  segment_ids = real.astype(jnp.int32)
  positions = jnp.maximum(jnp.cumsum(segment_ids, axis=1) - 1, 0).astype(jnp.int32)
  return segment_ids, positions


def _is_eos(tokens: jax.Array, eos_ids: jax.Array) -> jax.Array:
  """bool [B]: tokens int32 [B] is one of eos_ids int32 [E] (-1 entries never match)."""
  return jnp.any(tokens[:, None] == eos_ids[None, :], axis=-1)


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "strategy",
                                             "sharding"))
def _generate(params: Params, prompt_tokens: jax.Array, prompt_lengths: jax.Array,
              rng: jax.Array, eos_ids: jax.Array, pad_id: jax.Array, *, config: LlamaConfig,
              max_new_tokens: int, strategy: Strategy, sharding=None) -> SampleOutput:
  model = Llama(config, sharding=sharding)
  b, p = prompt_tokens.shape
  prompt_tokens = prompt_tokens.astype(jnp.int32)
  prompt_lengths = jnp.clip(prompt_lengths.astype(jnp.int32), 0, p)
  segment_ids, positions = _prompt_layout(prompt_tokens, prompt_lengths)
  # Pad values are never attended, but an out-of-range id would embed as NaN and NaN * 0
  # attention weight is still NaN; replace pads by token 0.
  prompt_tokens = jnp.where(segment_ids > 0, prompt_tokens, 0)

  # Prefill columns 0..P-2 only; the last prompt column is fed as decode step 0, which yields
  # the first new token. Prefilling all P columns would make the model materialize logits
  # f32[B, P, V] (XLA does not sink the lm_head matmul below the slice) just to keep the last
  # row; this way the prefill's logits are unused and dead-code eliminated, and the step
  # computes only f32[B, 1, V].
  # Slots needed: P prompt tokens + (N - 1) fed-back samples; the last sample is never fed.
  cache = init_cache(config, b, p + max_new_tokens)
  if sharding is not None:  # [L, B, S, KV, Dh]: rows over data x fsdp, heads over tensor
    names = ("layers", "cache_batch", "cache_sequence", "cache_heads", None)
    cache = dict(cache, k=sharding.constrain(cache["k"], names),
                 v=sharding.constrain(cache["v"], names))
  if p > 1:
    _, cache = model.apply(params, prompt_tokens[:, :-1], positions[:, :-1],
                           segment_ids[:, :-1], cache=cache)

  # Why one shared cache write index (cache["index"], a scalar) is right for a ragged batch:
  # with LEFT padding all rows end their prompt in the same column P-1, so the t-th token fed
  # after the prompt belongs in slot P-1+t for every row at once. The slot index is only a
  # storage address and the causal order; what the model sees as "where am I" is the per-row
  # RoPE position passed explicitly (prompt length + t, pads not counted). Pad slots keep
  # segment id 0 in the cache and are never attended. Rotary attention depends only on
  # position differences, so the padded row equals the unpadded one. (Right padding would
  # need a per-row write index, i.e. a scatter instead of one dynamic_update_slice.)
  empty = prompt_lengths == 0  # e.g. batch-filler rows: never start, never block early exit
  state = SamplingState(
      step=jnp.zeros((), jnp.int32),
      done=empty,
      last_token=prompt_tokens[:, -1],
      positions=jnp.maximum(prompt_lengths - 1, 0),
      tokens=jnp.full((b, max_new_tokens), pad_id, jnp.int32),
      lengths=jnp.zeros((b,), jnp.int32),
      cache=cache,
      rng=rng,
  )
  decode_segments = jnp.ones((b, 1), jnp.int32)

  def cond_fn(state: SamplingState) -> jax.Array:
    return (state.step < max_new_tokens) & ~jnp.all(state.done)

  def body_fn(state: SamplingState) -> SamplingState:
    logits, cache = model.apply(params, state.last_token[:, None], state.positions[:, None],
                                decode_segments, cache=state.cache)
    # Each row draws with its own key folded with the step: a row's sample depends on its key
    # alone, never on the batch it shares or its row number.
    step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(state.rng, state.step)
    next_token = jax.vmap(lambda lg, k: strategy(lg[None], k)[0])(logits[:, 0], step_keys)
    next_token = next_token.astype(jnp.int32)
    # Rows already done keep decoding (the batch moves in lockstep) but their tokens fall
    # beyond `lengths` and are overwritten with pad after the loop.
    return SamplingState(
        step=state.step + 1,
        done=state.done | _is_eos(next_token, eos_ids),
        last_token=next_token,
        positions=state.positions + 1,
        tokens=jax.lax.dynamic_update_slice(state.tokens, next_token[:, None], (0, state.step)),
        lengths=state.lengths + (~state.done).astype(jnp.int32),
        cache=cache,
        rng=state.rng,
    )

  state = jax.lax.while_loop(cond_fn, body_fn, state)
  keep = jnp.arange(max_new_tokens, dtype=jnp.int32)[None, :] < state.lengths[:, None]
  return SampleOutput(
      tokens=jnp.where(keep, state.tokens, pad_id),
      lengths=state.lengths,
      finished=state.done & ~empty,
      steps=state.step,
  )


def generate(params: Params, prompt_tokens: jax.Array, prompt_lengths: jax.Array, *,
             config: LlamaConfig, max_new_tokens: int, eos_ids: Sequence[int],
             strategy: Strategy, rng: jax.Array, pad_id: int = 0,
             sharding=None) -> SampleOutput:
  """Samples up to ``max_new_tokens`` tokens after each left-padded prompt.

  One prefill call over prompt columns 0..P-2 (the last column is the loop's first input, so
  no f32[B, P, V] logits are ever built), then a ``jax.lax.while_loop`` of single-token steps
  that stops when the budget is spent or every row has emitted an EOS. Jitted; recompiles only
  for a new (B, P, max_new_tokens, config, strategy), so bucket P.

  Args:
    params: ``{"params": ...}`` of ``Llama(config)``.
    prompt_tokens: int32 [B, P] LEFT-padded prompts (pad values are ignored, any int).
    prompt_lengths: int32 [B] real tokens per row, 0 <= length <= P (clipped). A row of length
      0 is inert: it generates nothing (lengths 0, finished False) and does not delay the
      early exit; use it to fill a batch.
    config: model configuration (static).
    max_new_tokens: budget N >= 1 (tokens, static).
    eos_ids: token ids (>= 0) that end a row (traced, so changing them does not recompile
      unless there are more than 4); may be empty (then rows never finish).
    strategy: a hashable ``Strategy`` such as ``Greedy()`` or ``Sampling()`` (static).
    rng: per-row PRNG keys uint32 [B, 2] (``record_keys``): row b draws step s with
      ``fold_in(rng[b], s)``; or one key uint32 [2], which gives row b the key
      ``fold_in(rng, b)``. Greedy ignores it.
    pad_id: written after a row's first EOS and in unused columns (traced).
    sharding: a ``sharding.ActivationSharding`` (static): activations and the KV cache are
      constrained to their logical shardings on its mesh; None leaves placement to XLA.
  Returns:
    ``SampleOutput`` with tokens int32 [B, N], lengths int32 [B] (including the EOS),
    finished bool [B], steps int32 [].
  Raises:
    ValueError: on bad shapes or max_new_tokens < 1.
  """
  if prompt_tokens.ndim != 2:
    raise ValueError(f"prompt_tokens must be [B, P], got shape {prompt_tokens.shape}")
  if prompt_lengths.shape != prompt_tokens.shape[:1]:
    raise ValueError(
        f"prompt_lengths shape {prompt_lengths.shape} != batch {prompt_tokens.shape[:1]}")
  if prompt_tokens.shape[1] < 1:
    raise ValueError("prompt block must have at least one column")
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  # Pad the EOS list to a multiple of 4 with -1 (never sampled) so that the usual one to four
  # EOS ids share one compilation.
  eos = [int(e) for e in eos_ids]
  eos = jnp.asarray(eos + [-1] * (max(4, _round_up(len(eos), 4)) - len(eos)), jnp.int32)
  b = prompt_tokens.shape[0]
  if rng.ndim == 1:
    rng = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, jnp.arange(b, dtype=jnp.uint32))
  if rng.shape[0] != b:
    raise ValueError(f"rng must be one key or one key per row [B={b}, 2], got {rng.shape}")
  return _generate(params, prompt_tokens, prompt_lengths, rng, eos, jnp.int32(pad_id),
                   config=config, max_new_tokens=int(max_new_tokens), strategy=strategy,
                   sharding=sharding)


@functools.partial(jax.jit, static_argnames=("config", "sharding"))
def _next_token_logprobs(params: Params, prompt_tokens: jax.Array, prompt_lengths: jax.Array,
                         *, config: LlamaConfig, sharding=None) -> jax.Array:
  prompt_lengths = jnp.clip(prompt_lengths.astype(jnp.int32), 0, prompt_tokens.shape[1])
  segment_ids, positions = _prompt_layout(prompt_tokens, prompt_lengths)
  prompt_tokens = jnp.where(segment_ids > 0, prompt_tokens.astype(jnp.int32), 0)
  # Left padding: column P-1 is every row's last real token, the only one projected. Scores
  # are read from float32 logits (final norm and head in float32) whatever the model dtype.
  logits, _ = Llama(config.replace(logits_dot_in_fp32=True), sharding=sharding).apply(
      params, prompt_tokens, positions, segment_ids, last_logits_only=True)
  return jax.nn.log_softmax(logits[:, -1], axis=-1)


def next_token_logprobs(params: Params, prompt_tokens: jax.Array, prompt_lengths: jax.Array,
                        *, config: LlamaConfig, sharding=None) -> jax.Array:
  """Log-probabilities of the token following each left-padded prompt (one forward pass).

  Only the last column is projected to the vocabulary (no f32[B, P, V] logits), and that
  projection runs in float32 even for a bfloat16 model (``LlamaConfig.logits_dot_in_fp32``).

  Args:
    params: ``{"params": ...}`` of ``Llama(config)``.
    prompt_tokens: int32 [B, P] LEFT-padded prompts.
    prompt_lengths: int32 [B] real tokens per row (>= 1 for a meaningful result; a row of
      length 0 gives finite garbage).
    config: model configuration (static).
    sharding: ``sharding.ActivationSharding`` (static) or None, as for ``generate``.
  Returns:
    float32 [B, V] log-softmax of the last position's logits.
  Raises:
    ValueError: on bad shapes.
  """
  if prompt_tokens.ndim != 2 or prompt_lengths.shape != prompt_tokens.shape[:1]:
    raise ValueError(f"bad shapes: prompt_tokens {prompt_tokens.shape}, "
                     f"prompt_lengths {prompt_lengths.shape}")
  return _next_token_logprobs(params, prompt_tokens, prompt_lengths, config=config,
                              sharding=sharding)
