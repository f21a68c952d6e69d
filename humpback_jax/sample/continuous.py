"""Continuous batching: rows that finish are refilled from the queue while the others decode.

The bucketed sampler (``Sampler`` + ``decode.generate``) runs a batch until its LONGEST row ends,
so a batch whose rows want 10..96 tokens keeps every row's slot busy for 96 steps (on the demo's
augment stage, 37.5% of the row-steps carried a live row). Here a fixed batch of B rows decodes
in lockstep and each row holds one request at a time: when rows finish, the host takes the next
prompts off the queue (longest first), prefills them in groups of ``refill_rows`` and writes
their keys/values into the freed rows of the running KV cache, so every decode step works for
live requests until the queue is empty (vLLM's scheduling, without paging).

Cache layout. One shared write index (``cache["index"]``, a scalar) as in ``decode.generate``:
every step writes slot ``index`` of every row. A request inserted when the index is I has its
prompt's first P-1 tokens (left-padded to the group's width W) written at slots [I-W+1, I); its
last prompt token is fed by the next step, at slot I, as ``decode.generate`` feeds column P-1.
Slots before the window are marked empty (segment id 0) in that row, so the request attends to
its own prompt and its own tokens only, at the RoPE positions its prompt alone gives them::

    slot        ... I-W+1 ......... I-1 | I   I+1 ...
    old row:    [finished request: now segment 0]
    new row:    pad pad  p0 p1 ... p_{P-2} | p_{P-1} t0 t1 ...     positions 0 .. P-2 | P-1 P ...

So a request computes what it computes alone, up to float rounding, and samples with the same
per-record key folded with its own step count, as in ``decode.generate``: the same tokens as the
bucketed path (``tests/test_continuous.py``, float64). The cache has ``S = W_top + 2N`` slots
(W_top: the ladder width of the longest prompt); when fewer than N slots are left, every row is
shifted left by the oldest live request's first slot (a roll of the cache, once every >= N
steps), which never moves a live slot past slot 0.

Compiles: one decode executable, one insert executable per prompt width of the ladder used.
Single device (``sharding`` None); a mesh uses the bucketed path.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from humpback_jax.models.config import LlamaConfig
from humpback_jax.models.llama import KVCache, Llama, init_cache
from humpback_jax.sample import decode
from humpback_jax.sample.sampling import Strategy

Params = Any


@flax.struct.dataclass
class EngineState:
  """The running batch (B rows, S cache slots, N = max new tokens).

  Attributes:
    cache: ``KVCache``: k/v [L, B, S, KV, Dh], segment_ids int32 [B, S], index int32 [].
    live: bool [B] the row holds a request still generating.
    start: int32 [B] first cache slot of the row's request (its first real prompt token).
    last_token: int32 [B] token fed at the next step.
    positions: int32 [B] RoPE position of ``last_token``.
    row_step: int32 [B] tokens the row's request has sampled.
    tokens: int32 [B, N] the request's tokens (pad beyond ``lengths``).
    lengths: int32 [B] tokens sampled while live (including the first EOS).
    finished: bool [B] the request emitted an EOS.
    rng: uint32 [B, 2] the request's key; step s samples with ``fold_in(rng[b], s)``.
    steps: int32 [] decode steps run; compactions: int32 [] cache shifts done.
  """

  cache: KVCache
  live: jax.Array
  start: jax.Array
  last_token: jax.Array
  positions: jax.Array
  row_step: jax.Array
  tokens: jax.Array
  lengths: jax.Array
  finished: jax.Array
  rng: jax.Array
  steps: jax.Array
  compactions: jax.Array


def init_state(config: LlamaConfig, batch: int, slots: int, first_index: int,
               max_new_tokens: int, pad_id: int, cache_dtype=None) -> EngineState:
  """An empty batch: no live row, write index ``first_index`` (>= the widest prompt - 1)."""
  cache = init_cache(config, batch, slots, dtype=cache_dtype)
  cache["index"] = jnp.asarray(first_index, jnp.int32)
  zeros = lambda: jnp.zeros((batch,), jnp.int32)  # distinct buffers: the state is donated
  return EngineState(cache=cache, live=jnp.zeros((batch,), bool), start=zeros(),
                     last_token=zeros(), positions=zeros(), row_step=zeros(),
                     tokens=jnp.full((batch, max_new_tokens), pad_id, jnp.int32),
                     lengths=zeros(), finished=jnp.zeros((batch,), bool),
                     rng=jnp.zeros((batch, 2), jnp.uint32), steps=jnp.zeros((), jnp.int32),
                     compactions=jnp.zeros((), jnp.int32))


@functools.partial(jax.jit, static_argnames=("config",), donate_argnums=(1,))
def _insert(params: Params, state: EngineState, prompt_tokens: jax.Array,
            prompt_lengths: jax.Array, rows: jax.Array, keys: jax.Array, pad_id: jax.Array, *,
            config: LlamaConfig) -> EngineState:
  """Prefills R left-padded prompts [R, W] and writes them into rows ``rows`` [R] (an entry
  >= B is a filler: dropped) so that their prompts end at slot ``index - 1``."""
  r, w = prompt_tokens.shape
  b, s = state.cache["segment_ids"].shape
  lengths = jnp.clip(prompt_lengths.astype(jnp.int32), 0, w)
  segment_ids, positions = decode._prompt_layout(prompt_tokens, lengths)
  prompt_tokens = jnp.where(segment_ids > 0, prompt_tokens.astype(jnp.int32), 0)
  index = state.cache["index"]
  rows = jnp.where(lengths > 0, rows, b)  # empty prompts are never inserted
  row_segments = jnp.zeros((r, s), jnp.int32)
  cache = dict(state.cache)
  if w > 1:
    params = decode.cast_params(params, config)
    part = init_cache(config, r, w - 1, dtype=state.cache["k"].dtype)
    impl = decode.prefill_attention_impl(config, w - 1)
    _, part = Llama(config.replace(attention_impl=impl)).apply(
        params, prompt_tokens[:, :-1], positions[:, :-1], segment_ids[:, :-1], cache=part)
    slots = index - (w - 1) + jnp.arange(w - 1, dtype=jnp.int32)
    cache["k"] = cache["k"].at[:, rows[:, None], slots[None, :]].set(part["k"], mode="drop")
    cache["v"] = cache["v"].at[:, rows[:, None], slots[None, :]].set(part["v"], mode="drop")
    row_segments = row_segments.at[:, slots].set(part["segment_ids"])
  cache["segment_ids"] = cache["segment_ids"].at[rows].set(row_segments, mode="drop")
  put = lambda x, v: x.at[rows].set(v, mode="drop")
  zeros = jnp.zeros((r,), jnp.int32)
  return state.replace(
      cache=cache, live=put(state.live, lengths > 0), start=put(state.start, index - lengths + 1),
      last_token=put(state.last_token, prompt_tokens[:, -1]),
      positions=put(state.positions, jnp.maximum(lengths - 1, 0)),
      row_step=put(state.row_step, zeros),
      tokens=put(state.tokens, jnp.full((r, state.tokens.shape[1]), pad_id, jnp.int32)),
      lengths=put(state.lengths, zeros), finished=put(state.finished, jnp.zeros((r,), bool)),
      rng=put(state.rng, keys.astype(jnp.uint32)))


def _compact(state: EngineState, first_index: int) -> EngineState:
  """Shifts every row left by the oldest live request's first slot (at most down to an index
  of ``first_index``): live slots keep their order; freed slots at the end become empty."""
  cache = state.cache
  index = cache["index"]
  s = cache["segment_ids"].shape[1]
  oldest = jnp.min(jnp.where(state.live, state.start, index))
  shift = jnp.maximum(jnp.minimum(oldest, index - first_index), 0)
  roll = lambda x, axis: jnp.roll(x, -shift, axis=axis)
  segment_ids = roll(cache["segment_ids"], 1)
  segment_ids = jnp.where(jnp.arange(s, dtype=jnp.int32)[None, :] < s - shift, segment_ids, 0)
  cache = {"k": roll(cache["k"], 2), "v": roll(cache["v"], 2), "segment_ids": segment_ids,
           "index": index - shift}
  return state.replace(cache=cache, start=state.start - shift,
                       compactions=state.compactions + (shift > 0))


@functools.partial(jax.jit, static_argnames=("config", "strategy", "layer_loop", "first_index"),
                   donate_argnums=(1,))
def _decode(params: Params, state: EngineState, eos_ids: jax.Array, pad_id: jax.Array,
            min_free: jax.Array, *, config: LlamaConfig, strategy: Strategy, layer_loop: str,
            first_index: int) -> EngineState:
  """Decodes until at least ``min_free`` rows hold no live request (or none does)."""
  b, s = state.cache["segment_ids"].shape
  n = state.tokens.shape[1]
  state = jax.lax.cond(s - state.cache["index"] < n, lambda st: _compact(st, first_index),
                       lambda st: st, state)
  head_source = params
  params = decode.cast_params(params, config)
  step, loop_cache = decode.decode_step_fn(params, head_source, state.cache, config=config,
                                           layer_loop=layer_loop)
  rows = jnp.arange(b, dtype=jnp.int32)

  def cond_fn(carry):
    st, cache = carry
    live = st.live
    return (jnp.any(live) & (jnp.sum(~live) < min_free) & (cache["index"] < s))

  def body_fn(carry):
    st, cache = carry
    logits, cache = step(cache, st.last_token, st.positions)
    keys = jax.vmap(jax.random.fold_in)(st.rng, st.row_step)
    token = decode._sample_rows(strategy, logits, keys)
    live = st.live
    eos = decode._is_eos(token, eos_ids)
    row_step = st.row_step + live
    st = st.replace(
        tokens=st.tokens.at[rows, jnp.where(live, st.row_step, n)].set(token, mode="drop"),
        lengths=st.lengths + live, row_step=row_step,
        finished=st.finished | (live & eos), live=live & ~eos & (row_step < n),
        positions=st.positions + 1, last_token=token, steps=st.steps + 1)
    return st, cache

  state, loop_cache = jax.lax.while_loop(cond_fn, body_fn, (state, loop_cache))
  return state.replace(cache=decode.stack_cache(loop_cache))


def generate_continuous(params: Params, prompts: Sequence[Sequence[int]], keys: np.ndarray, *,
                        config: LlamaConfig, batch_size: int, max_new_tokens: int,
                        eos_ids: Sequence[int], strategy: Strategy, pad_id: int,
                        widths: Sequence[int], refill_rows: int | None = None,
                        cache_dtype=None, layer_loop: str | None = None):
  """Samples up to ``max_new_tokens`` tokens after each prompt with continuous batching.

  Args:
    params: ``{"params": ...}`` of ``Llama(config)`` (one device).
    prompts: N prompts as token ids (each 0 < len <= max(widths); an empty prompt yields no
      tokens).
    keys: uint32 [N, 2] one PRNG key per prompt (e.g. ``sampler.record_keys``).
    batch_size: B rows decoding in lockstep.
    widths: ascending padded prompt widths (``sampler.prompt_widths``): a refill group is
      left-padded to the smallest that holds its longest prompt.
    refill_rows: prompts prefilled per insert call (default ``max(1, B // 4)``): decoding
      pauses for a refill once that many rows are free (or every row is, at the end).
    cache_dtype, layer_loop: as in ``decode.generate``.
  Returns:
    ``(tokens, finished, stats)``: tokens: N lists of sampled ids (up to and excluding the
    first EOS); finished: N bools (an EOS came within the budget); stats: ``{"decode_steps",
    "row_steps" (B x decode_steps), "generated_tokens" (including EOS), "inserts",
    "compactions", "cache_slots"}``.
  Raises:
    ValueError: a prompt longer than the widest width, or non-positive sizes.
  """
  n_prompts = len(prompts)
  b = int(batch_size)
  refill = int(refill_rows or max(1, b // 4))
  if b < 1 or refill < 1 or refill > b or max_new_tokens < 1:
    raise ValueError(f"need batch_size >= refill_rows >= 1 and max_new_tokens >= 1, got "
                     f"{b}, {refill}, {max_new_tokens}")
  lengths = [len(p) for p in prompts]
  if lengths and max(lengths) > widths[-1]:
    raise ValueError(f"a prompt of {max(lengths)} tokens exceeds the widest width {widths[-1]}")
  width_of = lambda n: next(w for w in widths if w >= n)
  w_top = width_of(max(lengths + [1]))
  first_index = w_top - 1
  slots = w_top + 2 * max_new_tokens
  layer_loop = layer_loop or decode.default_layer_loop()
  eos = jnp.asarray(list(eos_ids) or [-1], jnp.int32)
  pad = jnp.int32(pad_id)
  state = init_state(config, b, slots, first_index, max_new_tokens, pad_id, cache_dtype)
  keys = np.asarray(keys, np.uint32).reshape(n_prompts, 2)
  queue = collections.deque(sorted((i for i in range(n_prompts) if lengths[i] > 0),
                                   key=lambda i: -lengths[i]))
  out_tokens: list[list[int]] = [[] for _ in range(n_prompts)]
  out_finished = [False] * n_prompts
  owner = [-1] * b
  free = list(range(b))
  inserts = 0
  while queue or any(o >= 0 for o in owner):
    while queue and (len(free) >= refill or (len(queue) < refill and len(free) >= len(queue))):
      group = [queue.popleft() for _ in range(min(refill, len(queue)))]
      width = width_of(max(lengths[i] for i in group))
      tokens = np.full((refill, width), pad_id, np.int32)
      glen = np.zeros((refill,), np.int32)
      rows = np.full((refill,), b, np.int32)
      gkeys = np.zeros((refill, 2), np.uint32)
      for j, i in enumerate(group):
        tokens[j, width - lengths[i]:] = prompts[i]
        glen[j] = lengths[i]
        rows[j] = free.pop(0)
        owner[rows[j]] = i
        gkeys[j] = keys[i]
      state = _insert(params, state, tokens, glen, rows, gkeys, pad, config=config)
      inserts += 1
    min_free = refill if queue else b
    state = _decode(params, state, eos, pad, jnp.int32(min_free), config=config,
                    strategy=strategy, layer_loop=layer_loop, first_index=first_index)
    live, lens, fin, toks = jax.device_get((state.live, state.lengths, state.finished,
                                            state.tokens))
    for row in range(b):
      i = owner[row]
      if i >= 0 and not live[row]:
        n = int(lens[row]) - int(fin[row])
        out_tokens[i] = toks[row, :n].tolist()
        out_finished[i] = bool(fin[row])
        owner[row] = -1
        free.append(row)
  steps, compactions = (int(x) for x in jax.device_get((state.steps, state.compactions)))
  stats = {"decode_steps": steps, "row_steps": steps * b,
           "generated_tokens": sum(len(t) + f for t, f in zip(out_tokens, out_finished)),
           "inserts": inserts, "compactions": compactions, "cache_slots": slots}
  return out_tokens, out_finished, stats
