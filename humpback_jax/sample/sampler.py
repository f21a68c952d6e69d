"""Batched autoregressive generation with a KV cache, and next-token scoring.

Device side (pure, jitted):
  ``generate``            left-padded prompts [B, P] -> ``SampleOutput`` (up to N new tokens).
  ``next_token_logprobs`` left-padded prompts [B, P] -> log P(next token) f32[B, V].

Host side:
  ``Sampler``             strings in, strings out: tokenize, truncate, sort by length, bucket,
                          batch, generate, decode, restore the caller's order.

Layout of one batch. Prompts are LEFT-padded to a common width P, so every row's last prompt
token sits in column P-1::

    row 0:  pad pad  a0  a1  a2 | g0 g1 g2 ...     segment ids 0 0 1 1 1 | 1 1 1
    row 1:   b0  b1  b2  b3  b4 | h0 h1 h2 ...     positions   0 0 0 1 2 | 3 4 5
            slot 0 ........ P-1 | P ...

Pads have segment id 0 (never attended) and do not advance the RoPE position, so a padded row
computes exactly what the same prompt computes alone (up to float rounding).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
from collections.abc import Sequence
from typing import Any, Protocol

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from humpback_jax import hosts
from humpback_jax.data import templates
from humpback_jax.models.config import LlamaConfig
from humpback_jax.models.llama import KVCache, Llama, init_cache
from humpback_jax.sample.sampling import Greedy, Sampling, Strategy

__all__ = [
    "ContextLengthError", "Greedy", "PromptTooLongError", "Sampling", "SampleOutput",
    "SamplingState", "Sampler", "check_context_length", "generate", "next_token_logprobs",
]

Params = Any

_log = logging.getLogger(__name__)


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


class Tokenizer(Protocol):
  """The tokenizer interface the host ``Sampler`` needs."""

  eos_id: int
  pad_id: int
  bos_id: int | None

  def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
    ...

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
    ...


def record_key_words(record_id: str | int) -> np.ndarray:
  """Two uint32 words of BLAKE2b-64 of ``str(record_id)`` (UTF-8): a stable, process- and
  platform-independent integer identity of a record (Python's ``hash`` is salted per process).

  Returns:
    uint32 [2].
  """
  digest = hashlib.blake2b(str(record_id).encode("utf-8"), digest_size=8).digest()
  return np.frombuffer(digest, dtype="<u4").astype(np.uint32)


@jax.jit
def _fold_words(base: jax.Array, words: jax.Array) -> jax.Array:
  return jax.vmap(lambda w: jax.random.fold_in(jax.random.fold_in(base, w[0]), w[1]))(words)


def record_keys(seed: int, record_ids: Sequence[str | int]) -> jax.Array:
  """Per-record sampling keys derived from the global seed and each record's id only.

  Key of record r = ``fold_in(fold_in(PRNGKey(seed), w0), w1)`` with ``(w0, w1) =
  record_key_words(r)``. It depends on nothing else (not the batch, the chunk, the batch size,
  what was already done before a restart, or the process), so a resumed, rebatched or
  host-split run draws the same random numbers for every record.

  Args:
    seed: the run's global seed.
    record_ids: N record ids (strings or ints; ``7`` and ``"7"`` give the same key).
  Returns:
    uint32 [N, 2] raw PRNG keys.
  """
  words = np.stack([record_key_words(r) for r in record_ids]) if len(record_ids) else \
      np.zeros((0, 2), np.uint32)
  return _fold_words(jax.random.PRNGKey(seed), jnp.asarray(words))


@dataclasses.dataclass(frozen=True)
class _Batch:
  index: int                # batch number in sorted order
  rows: np.ndarray          # int64 [n] original prompt indices of the real rows
  tokens: np.ndarray        # int32 [B, P] left-padded
  lengths: np.ndarray       # int32 [B]; 0 on filler rows


def _round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple


class ContextLengthError(ValueError):
  """A prompt budget plus a generation budget exceeds the model's context length."""


class PromptTooLongError(ValueError):
  """A prompt is longer than the budget and the overflow policy is "error"."""


def check_context_length(config: LlamaConfig, max_prompt_len: int, max_new_tokens: int = 0,
                         owner: str = "Sampler") -> None:
  """Refuses budgets the model was not trained for (RoPE would silently extrapolate).

  Args:
    config: the model; ``config.max_seq_len`` is its context length (tokens).
    max_prompt_len: prompt budget (tokens).
    max_new_tokens: generation budget (tokens); 0 for next-token scoring.
    owner: the config class whose fields these are, named in the error (e.g.
      "CurationConfig").
  Raises:
    ContextLengthError: ``max_prompt_len + max_new_tokens > config.max_seq_len``; the message
      names the three values.
  """
  if max_prompt_len + max_new_tokens > config.max_seq_len:
    raise ContextLengthError(
        f"{owner}.max_prompt_len={max_prompt_len} + max_new_tokens={max_new_tokens} = "
        f"{max_prompt_len + max_new_tokens} tokens exceeds the model's context length "
        f"LlamaConfig.max_seq_len={config.max_seq_len}; lower {owner}.max_prompt_len "
        f"(longer prompts are then middle-truncated and counted) or max_new_tokens")


class Sampler:
  """Host-side batched text generation and next-token scoring.

  Prompts are tokenized, truncated to ``max_prompt_len`` tokens if needed, sorted by length
  (longest first, so similar lengths share a batch and the biggest shape compiles first),
  left-padded to a multiple of ``bucket`` tokens (so at most ``max_prompt_len / bucket``
  prompt shapes compile per budget), batched ``batch_size`` rows at a time with inert filler
  rows in the last batch, and the results are returned in the caller's order.

  Truncation is a last resort that the caller should avoid by building prompts that fit:
  with ``prompt_overflow="truncate"`` it cuts the MIDDLE of the prompt (``templates.fit_prompt``:
  the head with BOS and the task, and the tail with the generation cue survive) and counts it
  in ``stats["truncated_prompts"]``; with ``prompt_overflow="error"`` it raises
  ``PromptTooLongError``. ``max_prompt_len + max_new_tokens`` may never exceed the model's
  context length (``check_context_length``).

  Determinism: prompt i samples with its own key ``record_keys(seed, [keys[i]])`` (``keys``
  defaults to the prompt's position in the call), so its draws do not depend on the batch
  size, its batch-mates or the order of the call. Its logits can still differ in the last bits
  with its batch's padded width (reduction order), so callers that need byte-identical reruns
  (the resumable stages) also keep the composition of each call fixed (``chunks``).

  Attributes:
    stats: running counters: "prompts", "truncated_prompts", "batches", "generated_tokens"
      (including EOS), "unfinished" (rows cut by the budget before an EOS).
  """

  def __init__(self, config: LlamaConfig, tokenizer: Tokenizer, *, max_prompt_len: int,
               batch_size: int, bucket: int = 64, mesh: jax.sharding.Mesh | None = None,
               rules: tuple | None = None, prompt_overflow: str = "truncate",
               owner: str = "Sampler"):
    """Constructor.

    Args:
      config: model configuration.
      tokenizer: see ``Tokenizer``.
      max_prompt_len: longest prompt kept (tokens); longer ones lose their middle.
      batch_size: rows per device call (fixed; the last batch is filled).
      bucket: prompt widths are rounded up to a multiple of this (tokens).
      mesh: a ``("data", "fsdp", "tensor")`` mesh (``sharding.make_mesh``; a mesh with a
        subset of these axes works too). Batches are sharded by ``rules``' ``batch`` entry
        (rows over data x fsdp), activations and the KV cache by their ``activation_*`` and
        ``cache_*`` entries (heads over tensor). Parameters should already be placed on the
        mesh (``place_params``); host arrays work but are uploaded at every call.
      rules: logical axis rules (default ``sharding.DEFAULT_LOGICAL_AXIS_RULES``).
      prompt_overflow: "truncate" (cut the middle, count it) or "error" for a prompt longer
        than ``max_prompt_len``.
      owner: the config class the budgets come from, named in errors.
    Raises:
      ValueError: on non-positive sizes, an unknown ``prompt_overflow``, or batch_size not
        divisible by the number of batch shards.
      ContextLengthError: ``max_prompt_len`` alone exceeds ``config.max_seq_len``.
    """
    from humpback_jax import sharding as shd
    if max_prompt_len < 1 or batch_size < 1 or bucket < 1:
      raise ValueError(f"need positive sizes: max_prompt_len={max_prompt_len}, "
                       f"batch_size={batch_size}, bucket={bucket}")
    if prompt_overflow not in ("truncate", "error"):
      raise ValueError(f"{owner}.prompt_overflow={prompt_overflow!r}: expected 'truncate' or "
                       "'error'")
    check_context_length(config, max_prompt_len, 0, owner)
    self.prompt_overflow = prompt_overflow
    self.owner = owner
    self.config = config
    self.tokenizer = tokenizer
    self.max_prompt_len = max_prompt_len
    self.batch_size = batch_size
    self.bucket = bucket
    self.mesh = mesh
    self.activation_sharding = None
    self._rows = None  # mesh axes of the batch dimension
    if mesh is not None:
      rules = tuple(shd.DEFAULT_LOGICAL_AXIS_RULES if rules is None else rules)
      known = set(mesh.axis_names)
      rules = tuple((name, _keep_axes(axes, known)) for name, axes in rules)
      self._rows = shd.logical_to_mesh_spec(("batch",), rules, mesh=mesh)[0]
      shards = shd.batch_parallel_size(mesh) if {"data", "fsdp"} <= known else int(
          np.prod([mesh.shape[a] for a in _axes_tuple(self._rows)]))
      if batch_size % shards:
        raise ValueError(f"{owner}.batch_size={batch_size} is not divisible by the {shards} "
                         f"batch shards of the mesh {dict(mesh.shape)}")
      self.activation_sharding = shd.ActivationSharding(mesh, rules)
    self.stats: dict[str, int] = {"prompts": 0, "truncated_prompts": 0, "batches": 0,
                                  "generated_tokens": 0, "unfinished": 0}

  def encode_prompts(self, prompts: Sequence[str | Sequence[int]]) -> list[list[int]]:
    """Tokenizes (strings; token id lists pass through) and, as a last resort, cuts the
    middle of a too-long prompt (``templates.fit_prompt``, as in training); counts
    truncations in ``stats``.

    Raises:
      PromptTooLongError: a prompt is too long and ``prompt_overflow="error"``.
    """
    out, truncated = [], 0
    for n, text in enumerate(prompts):
      ids = list(self.tokenizer.encode(text)) if isinstance(text, str) else [int(t) for t in text]
      if len(ids) > self.max_prompt_len:
        if self.prompt_overflow == "error":
          raise PromptTooLongError(
              f"prompt {n} has {len(ids)} tokens > {self.owner}.max_prompt_len="
              f"{self.max_prompt_len} (set {self.owner}.prompt_overflow='truncate' to cut its "
              "middle)")
        truncated += 1
        ids = templates.fit_prompt(ids, self.max_prompt_len)
      out.append(ids)
    if truncated:
      _log.warning("Sampler: middle-truncated %d of %d prompts to %d tokens", truncated,
                   len(prompts), self.max_prompt_len)
    self.stats["prompts"] += len(prompts)
    self.stats["truncated_prompts"] += truncated
    return out

  def _batches(self, ids: list[list[int]]) -> list[_Batch]:
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # stable: ties keep order
    pad = self.tokenizer.pad_id
    batches = []
    for n, start in enumerate(range(0, len(order), self.batch_size)):
      rows = np.asarray(order[start:start + self.batch_size], np.int64)
      width = _round_up(max(1, max(len(ids[i]) for i in rows)), self.bucket)
      tokens = np.full((self.batch_size, width), pad, np.int32)
      lengths = np.zeros((self.batch_size,), np.int32)
      for r, i in enumerate(rows):
        if ids[i]:
          tokens[r, width - len(ids[i]):] = ids[i]
        lengths[r] = len(ids[i])
      batches.append(_Batch(n, rows, tokens, lengths))
    return batches

  def _put(self, x: np.ndarray) -> jax.Array:
    """A host batch array (rows first) onto the device(s): rows split over the batch axes."""
    if self.mesh is None:
      return jnp.asarray(x)
    spec = jax.sharding.PartitionSpec(self._rows, *([None] * (np.ndim(x) - 1)))
    return jax.device_put(x, jax.sharding.NamedSharding(self.mesh, spec))

  def place_params(self, params: Params) -> Params:
    """Puts ``params`` onto the mesh with their logical shardings (``sharding.param_shardings``)
    once, so that no call re-uploads the model; without a mesh, onto the default device."""
    if self.mesh is None:
      return jax.device_put(params)
    from humpback_jax import sharding as shd
    return jax.device_put(params, shd.param_shardings(
        self.config, self.mesh, self.activation_sharding.rules))

  def generate_texts(self, params: Params, prompts: Sequence[str], *, max_new_tokens: int,
                     strategy: Strategy, seed: int, keys: Sequence[str | int] | None = None,
                     progress: bool = False,
                     return_finished: bool = False) -> list[str] | tuple[list[str], list[bool]]:
    """Generates one continuation per prompt.

    Args:
      params: model parameters (placed/sharded by the caller).
      prompts: N prompt strings (already templated).
      max_new_tokens: budget per prompt (tokens).
      strategy: ``Greedy()`` or ``Sampling(...)``.
      seed: the global seed.
      keys: N record ids; prompt i samples with ``record_keys(seed, [keys[i]])`` (default:
        its position ``i`` in this call).
      progress: show a tqdm bar over batches.
      return_finished: also return, per prompt, whether it ended with an EOS (False = cut by
        the budget, i.e. probably an incomplete text).
    Returns:
      N decoded texts (EOS and everything after it excluded) in the order of ``prompts``;
      with ``return_finished``, a pair (texts, finished flags).
    Raises:
      ContextLengthError: ``max_prompt_len + max_new_tokens`` exceeds the model's context.
    """
    check_context_length(self.config, self.max_prompt_len, max_new_tokens, self.owner)
    texts: list[str] = [""] * len(prompts)
    finished: list[bool] = [False] * len(prompts)
    batches = self._batches(self.encode_prompts(prompts))
    if keys is None:
      keys = range(len(prompts))
    if len(keys) != len(prompts):
      raise ValueError(f"got {len(keys)} keys for {len(prompts)} prompts")
    row_keys = np.asarray(record_keys(seed, list(keys)))
    for batch in _maybe_tqdm(batches, progress, "generate"):
      batch_keys = np.zeros((self.batch_size, 2), np.uint32)
      batch_keys[:len(batch.rows)] = row_keys[batch.rows]
      out = generate(params, self._put(batch.tokens), self._put(batch.lengths),
                     config=self.config, max_new_tokens=max_new_tokens,
                     eos_ids=(self.tokenizer.eos_id,), strategy=strategy,
                     rng=self._put(batch_keys),
                     pad_id=self.tokenizer.pad_id, sharding=self.activation_sharding)
      tokens, lengths, done = hosts.fetch((out.tokens, out.lengths, out.finished))
      for r, i in enumerate(batch.rows):
        n = int(lengths[r]) - int(done[r])
        texts[i] = self.tokenizer.decode(tokens[r, :n].tolist(), skip_special_tokens=True)
        finished[i] = bool(done[r])
      real = slice(0, len(batch.rows))
      self.stats["batches"] += 1
      self.stats["generated_tokens"] += int(lengths[real].sum())
      self.stats["unfinished"] += int((~done[real]).sum())
    return (texts, finished) if return_finished else texts

  def next_token_probs(self, params: Params, prompts: Sequence[str | Sequence[int]],
                       candidate_token_ids: Sequence[int] | np.ndarray, *,
                       progress: bool = False) -> np.ndarray:
    """Probabilities of K candidate next tokens, NOT renormalized (one forward pass a row).

    Args, raises: as ``candidate_logprobs``.
    Returns:
      float32 [N, K]: P(candidate | prompt) under the full softmax; row sums are the mass the
      model puts on the candidates.
    """
    return np.exp(self.candidate_logprobs(params, prompts, candidate_token_ids,
                                          progress=progress))

  def candidate_logprobs(self, params: Params, prompts: Sequence[str | Sequence[int]],
                         candidate_token_ids: Sequence[int] | np.ndarray, *,
                         progress: bool = False) -> np.ndarray:
    """Log-probabilities of K candidate next tokens (one forward pass a row).

    Args:
      params: model parameters.
      prompts: N prompts (strings, or token id lists already encoded), each ending where the
        candidate token would follow.
      candidate_token_ids: int [K] ids shared by every row, or int [N, K] ids per row.
      progress: show a tqdm bar over batches.
    Returns:
      float32 [N, K]: log P(candidate | prompt) under the full softmax (computed in float32),
      in the order of ``prompts``.
    Raises:
      ValueError: no candidates, or a candidate array of the wrong shape.
    """
    cand = np.asarray(candidate_token_ids, np.int32)
    if cand.ndim == 1:
      cand = np.broadcast_to(cand, (len(prompts), cand.size))
    if cand.ndim != 2 or cand.shape[0] != len(prompts) or cand.shape[1] == 0:
      raise ValueError(f"candidate_token_ids must be [K] or [N={len(prompts)}, K] with K >= 1, "
                       f"got shape {np.shape(candidate_token_ids)}")
    out = np.zeros(cand.shape, np.float32)
    for batch in _maybe_tqdm(self._batches(self.encode_prompts(prompts)), progress, "score"):
      logp = next_token_logprobs(params, self._put(batch.tokens), self._put(batch.lengths),
                                 config=self.config, sharding=self.activation_sharding)
      rows_cand = np.zeros((self.batch_size, cand.shape[1]), np.int32)
      rows_cand[:len(batch.rows)] = cand[batch.rows]
      lp = np.asarray(hosts.fetch(
          jnp.take_along_axis(logp, self._put(rows_cand), axis=-1)), np.float32)
      out[batch.rows] = lp[:len(batch.rows)]
      self.stats["batches"] += 1
    return out

  def score_next_token(self, params: Params, prompts: Sequence[str | Sequence[int]],
                       candidate_token_ids: Sequence[int] | np.ndarray, *,
                       progress: bool = False) -> np.ndarray:
    """``next_token_probs`` renormalized over the K candidates (rows sum to 1).

    Returns:
      float32 [N, K].
    """
    lp = self.candidate_logprobs(params, prompts, candidate_token_ids, progress=progress)
    return np.asarray(jax.nn.softmax(lp, axis=-1), np.float32)


def _axes_tuple(axes) -> tuple:
  return () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))


def _keep_axes(axes, known: set):
  """A rule's mesh axes restricted to those the mesh has (a 1-axis ``("data",)`` mesh drops
  ``fsdp``/``tensor``)."""
  kept = tuple(a for a in _axes_tuple(axes) if a in known)
  return None if not kept else (kept[0] if len(kept) == 1 else kept)


def _maybe_tqdm(items, progress: bool, desc: str):
  if not progress:
    return items
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(items, desc=desc, unit="batch")
