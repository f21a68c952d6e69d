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

What one ``generate`` executable does, and why (measured on CPU, SmolLM2-135M, B=32, 192 slots):

* Parameters are cast to the dtype each one is used in (kernels and the embedding to the
  compute dtype, the head to the head dtype) once, before the prefill, not in every step.
* Prefill: one ``Llama.apply`` over prompt columns 0..P-2 into the KV cache (its logits are
  dead code); a prompt longer than one attention chunk uses the "chunked" kernel there, so no
  [B, H, P, P+N] score tensor is built (``prefill_attention``).
* Decode: a ``lax.while_loop`` of single-token steps that stops when every row has ended.
  With ``layer_loop="unrolled"`` (the default on CPU) the step runs the L decoder
  blocks as straight-line code on per-layer weights sliced once before the loop and on
  per-layer K/V buffers in the loop carry, so each step writes one token per layer in place;
  the model's scanned layer stack (``"scan"``, one compiled block) instead copies every
  layer's cache slice and weights out of the stacked arrays and back in each step (about 40%
  of the step at B=32 on CPU). Unrolled costs compile time (~2.5x for 30 layers) and a second
  copy of the layer weights while the call runs.
* Sampling: the strategy's ``sample_rows`` (``sampling.py``): no vocabulary sort for top-p,
  Gumbel noise drawn for the candidates only; same tokens as the per-row strategy call.
* KV cache dtype: the compute dtype, or ``cache_dtype`` (e.g. bfloat16 under a float32 model:
  half the cache memory and bandwidth, keys/values rounded to bfloat16).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from humpback_jax.models.attention import MaskSpec
from humpback_jax.models.config import LlamaConfig
from humpback_jax.models.llama import DecoderLayer, KVCache, Llama, RMSNorm, init_cache, rope_tables
from humpback_jax.sample.sampling import Strategy

Params = Any

LAYER_LOOPS = ("unrolled", "scan")
_RESIDUAL = ("activation_batch", "activation_length", "activation_embed")
_CACHE_NAMES = ("cache_batch", "cache_sequence", "cache_heads", None)


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
    cache: the KV cache, ``P + N`` slots; this step writes slot ``cache["index"]``. With
      ``layer_loop="scan"`` the model's ``KVCache``; unrolled, ``{"layers": [(k, v)] * L``
      (each [B, S, KV, Dh]), ``"segment_ids"``, ``"index"}``.
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


def _acc(dtype) -> Any:
  return jnp.promote_types(dtype, jnp.float32)


def _head_dtype(config: LlamaConfig):
  return _acc(config.compute_dtype) if config.logits_dot_in_fp32 else config.compute_dtype


def cast_params(params: Params, config: LlamaConfig) -> Params:
  """``params`` with every leaf in the dtype ``Llama(config)`` casts it to when used.

  Kernels of the blocks and the token embedding go to the compute dtype, the untied
  ``lm_head`` to the head dtype (float32 with ``logits_dot_in_fp32``), norm scales stay (the
  norms compute in float32 anyway). A tied embedding under ``logits_dot_in_fp32`` stays too
  (the head reads it in float32). So the model computes exactly what it computes from the
  original parameters, without casting them again at every call of a decode loop.
  """
  compute, head = config.compute_dtype, _head_dtype(config)
  tied_fp32 = config.tie_word_embeddings and config.logits_dot_in_fp32

  def cast(path, x):
    names = [getattr(k, "key", None) for k in path]
    if not jnp.issubdtype(x.dtype, jnp.floating):
      return x
    if names[-1] == "kernel":
      return x.astype(head if "lm_head" in names else compute)
    if names[-1] == "embedding" and not tied_fp32:
      return x.astype(compute)
    return x

  return jax.tree_util.tree_map_with_path(cast, params)


def default_layer_loop(sharding=None) -> str:
  """"unrolled" on CPU (measured there: the scan's stacked-slice copies are ~40% of a batch-32
  step), "scan" elsewhere: on TPU XLA fuses the stacked slices and unrolled blocks compile
  slowly, and on accelerators the unrolled loop's second copy of the layer weights would
  double the parameter memory of a large model (e.g. 7B: 13.5 GB more per replica)."""
  platform = (sharding.mesh.devices.flat[0].platform if sharding is not None
              else jax.default_backend())
  return "unrolled" if platform == "cpu" else "scan"


def prefill_attention_impl(config: LlamaConfig, columns: int) -> str:
  """The attention kernel of a forward pass over ``columns`` prompt columns (a prefill, or
  the scoring pass of ``next_token_logprobs``): "chunked" when the configured kernel
  materializes the [B, H, T, S] scores ("dot_product", "xla") and the pass is longer than one
  ``attention_chunk_size`` chunk (512: the scores of a 1536-token prompt are 85 MiB per row
  and layer for 9 heads), else the configured kernel. Same function, other rounding order."""
  if config.attention_impl in ("dot_product", "xla") and columns > config.attention_chunk_size:
    return "chunked"
  return config.attention_impl


def _constrain(sharding, x, names):
  return x if sharding is None else sharding.constrain(x, names)


def _sample_rows(strategy: Strategy, logits: jax.Array, keys: jax.Array) -> jax.Array:
  """int32 [B]: row b drawn with keys[b] (``strategy.sample_rows`` when it has one)."""
  fast = getattr(strategy, "sample_rows", None)
  if fast is not None:
    return fast(logits, keys).astype(jnp.int32)
  return jax.vmap(lambda lg, k: strategy(lg[None], k)[0])(logits, keys).astype(jnp.int32)


def _unrolled_step(config: LlamaConfig, sharding, params: Params, layer_params: list,
                   embedding: jax.Array, head_weight, cache: dict, tokens: jax.Array,
                   positions: jax.Array):
  """One decode step of ``Llama(config)`` over per-layer caches; what ``Llama.apply`` computes
  for tokens [B, 1] at ``cache["index"]``, with the L blocks unrolled.

  Args:
    params: ``cast_params`` of the model's (final norm, untied head).
    layer_params: L per-layer parameter trees (the blocks' kernels in the compute dtype).
    embedding: the lookup table [V, D] in the compute dtype.
    head_weight: the tied head [V, D] in the head dtype (None when untied).
  Returns:
    (logits f32 [B, V], new cache).
  """
  cfg = config
  p = params["params"]
  b = tokens.shape[0]
  index = cache["index"]
  x = _constrain(sharding, jnp.take(embedding, tokens[:, None], axis=0), _RESIDUAL)
  cos, sin = rope_tables(positions[:, None], cfg.head_dim, cfg.rope_theta,
                         _acc(cfg.compute_dtype))
  ones = jnp.ones((b, 1), jnp.int32)
  kv_segments = jax.lax.dynamic_update_slice(
      cache["segment_ids"], ones, (jnp.zeros((), index.dtype), index))
  s = kv_segments.shape[1]
  mask = MaskSpec.build(cfg.attention_impl, ones, kv_segments,
                        index + jnp.arange(1, dtype=jnp.int32), jnp.arange(s, dtype=jnp.int32))
  block = DecoderLayer(cfg, sharding=sharding)
  layers = []
  for lp, kv in zip(layer_params, cache["layers"]):
    x, kv = block.apply({"params": lp}, x, kv, cos, sin, mask, index)
    layers.append(kv)
  head_dtype = _head_dtype(cfg)
  x = RMSNorm(cfg.rms_norm_eps, head_dtype, cfg.weight_dtype).apply(
      {"params": p["final_norm"]}, x)
  if cfg.tie_word_embeddings:
    logits = jnp.einsum("btd,vd->btv", x.astype(head_dtype), head_weight,
                        preferred_element_type=_acc(head_dtype))
  else:
    logits = nn.Dense(cfg.vocab_size, use_bias=False, dtype=head_dtype,
                      param_dtype=cfg.weight_dtype).apply({"params": p["lm_head"]}, x)
  logits = _constrain(sharding, logits.astype(_acc(cfg.compute_dtype)),
                      ("activation_batch", "activation_length", "activation_vocab"))
  return logits[:, 0], {"layers": layers, "segment_ids": kv_segments, "index": index + 1}


def decode_step_fn(params: Params, head_source: Params, cache: KVCache, *, config: LlamaConfig,
                   sharding=None, layer_loop: str = "unrolled"):
  """The single-token decode step of ``Llama(config)`` for a ``lax.while_loop`` (traced code).

  Args:
    params: ``cast_params(head_source, config)``.
    head_source: the parameters as given (the tied head reads the original embedding).
    cache: the model's stacked ``KVCache`` (k/v [L, B, S, KV, Dh]).
    layer_loop: "scan" (the model's layer scan) or "unrolled" (per-layer weights and K/V
      buffers sliced out once, here; see the module docstring).
  Returns:
    ``(step, loop_cache)``: ``step(loop_cache, tokens int32 [B], positions int32 [B]) ->
    (logits f32 [B, V], loop_cache)`` writes slot ``loop_cache["index"]`` of every row and
    advances it; ``loop_cache`` is ``cache`` in the layout ``step`` takes (``stack_cache``
    turns it back into a ``KVCache``).
  """
  b = cache["segment_ids"].shape[0]
  decode_segments = jnp.ones((b, 1), jnp.int32)
  if layer_loop == "scan":
    model = Llama(config, sharding=sharding)

    def step(cache, tokens, positions):
      logits, cache = model.apply(params, tokens[:, None], positions[:, None], decode_segments,
                                  cache=cache)
      return logits[:, 0], cache
    return step, cache
  # Per-layer weights and K/V buffers: sliced out of the stacked arrays once, here.
  layer_params = [jax.tree.map(lambda a, l=l: a[l], params["params"]["layers"])
                  for l in range(config.num_layers)]
  table = head_source["params"]["embed_tokens"]["embedding"]
  embedding = table.astype(config.compute_dtype)  # no-ops unless mixed dtypes
  head_weight = table.astype(_head_dtype(config)) if config.tie_word_embeddings else None
  cache = {"layers": [(_constrain(sharding, cache["k"][l], _CACHE_NAMES),
                       _constrain(sharding, cache["v"][l], _CACHE_NAMES))
                      for l in range(config.num_layers)],
           "segment_ids": cache["segment_ids"], "index": cache["index"]}

  def step(cache, tokens, positions):
    return _unrolled_step(config, sharding, params, layer_params, embedding, head_weight,
                          cache, tokens, positions)
  return step, cache


def stack_cache(loop_cache: dict) -> KVCache:
  """The ``KVCache`` (k/v [L, B, S, KV, Dh]) of a ``decode_step_fn`` loop cache."""
  if "layers" not in loop_cache:
    return loop_cache
  return {"k": jnp.stack([k for k, _ in loop_cache["layers"]]),
          "v": jnp.stack([v for _, v in loop_cache["layers"]]),
          "segment_ids": loop_cache["segment_ids"], "index": loop_cache["index"]}


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "strategy",
                                             "sharding", "cache_dtype", "layer_loop",
                                             "prefill_attention"))
def _generate(params: Params, prompt_tokens: jax.Array, prompt_lengths: jax.Array,
              rng: jax.Array, eos_ids: jax.Array, pad_id: jax.Array, *, config: LlamaConfig,
              max_new_tokens: int, strategy: Strategy, sharding=None, cache_dtype=None,
              layer_loop: str | None = None,
              prefill_attention: str | None = None) -> SampleOutput:
  layer_loop = layer_loop or default_layer_loop(sharding)
  if layer_loop not in LAYER_LOOPS:
    raise ValueError(f"layer_loop={layer_loop!r}: expected one of {list(LAYER_LOOPS)}")
  b, p = prompt_tokens.shape
  prompt_tokens = prompt_tokens.astype(jnp.int32)
  prompt_lengths = jnp.clip(prompt_lengths.astype(jnp.int32), 0, p)
  segment_ids, positions = _prompt_layout(prompt_tokens, prompt_lengths)
  # Pad values are never attended, but an out-of-range id would embed as NaN and NaN * 0
  # attention weight is still NaN; replace pads by token 0.
  prompt_tokens = jnp.where(segment_ids > 0, prompt_tokens, 0)
  # Once, outside the loop: the blocks' kernels in the compute dtype (a no-op for a model
  # whose parameters are stored in it).
  head_source = params
  params = cast_params(params, config)

  # Prefill columns 0..P-2 only; the last prompt column is fed as decode step 0, which yields
  # the first new token. Prefilling all P columns would make the model materialize logits
  # f32[B, P, V] (XLA does not sink the lm_head matmul below the slice) just to keep the last
  # row; this way the prefill's logits are unused and dead-code eliminated, and the step
  # computes only f32[B, 1, V].
  # Slots needed: P prompt tokens + (N - 1) fed-back samples; the last sample is never fed.
  # The prefill fills a cache of exactly its P - 1 columns (its attention sees no empty
  # slot), which is then padded with empty slots to P + N.
  names = ("layers", "cache_batch", "cache_sequence", "cache_heads", None)
  total = p + max_new_tokens
  cache = init_cache(config, b, max(p - 1, 1), dtype=cache_dtype)
  if p > 1:
    cache = dict(cache, k=_constrain(sharding, cache["k"], names),
                 v=_constrain(sharding, cache["v"], names))
    impl = prefill_attention or prefill_attention_impl(config, p - 1)
    prefill = Llama(config.replace(attention_impl=impl), sharding=sharding)
    _, cache = prefill.apply(params, prompt_tokens[:, :-1], positions[:, :-1],
                             segment_ids[:, :-1], cache=cache)
  grow = total - cache["k"].shape[2]
  kv_pad = ((0, 0), (0, 0), (0, grow), (0, 0), (0, 0))
  cache = dict(cache, k=_constrain(sharding, jnp.pad(cache["k"], kv_pad), names),
               v=_constrain(sharding, jnp.pad(cache["v"], kv_pad), names),
               segment_ids=jnp.pad(cache["segment_ids"], ((0, 0), (0, grow))))

  # Why one shared cache write index (cache["index"], a scalar) is right for a ragged batch:
  # with LEFT padding all rows end their prompt in the same column P-1, so the t-th token fed
  # after the prompt belongs in slot P-1+t for every row at once. The slot index is only a
  # storage address and the causal order; what the model sees as "where am I" is the per-row
  # RoPE position passed explicitly (prompt length + t, pads not counted). Pad slots keep
  # segment id 0 in the cache and are never attended. Rotary attention depends only on
  # position differences, so the padded row equals the unpadded one. (Right padding would
  # need a per-row write index, i.e. a scatter instead of one dynamic_update_slice.)
  step, cache = decode_step_fn(params, head_source, cache, config=config, sharding=sharding,
                               layer_loop=layer_loop)

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

  def cond_fn(state: SamplingState) -> jax.Array:
    return (state.step < max_new_tokens) & ~jnp.all(state.done)

  def body_fn(state: SamplingState) -> SamplingState:
    logits, cache = step(state.cache, state.last_token, state.positions)
    # Each row draws with its own key folded with the step: a row's sample depends on its key
    # alone, never on the batch it shares or its row number.
    step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(state.rng, state.step)
    next_token = _sample_rows(strategy, logits, step_keys)
    # Rows already done keep decoding (the batch moves in lockstep) but their tokens fall
    # beyond `lengths` and are overwritten with pad after the loop.
    return SamplingState(
        step=state.step + 1,
        done=state.done | _is_eos(next_token, eos_ids),
        last_token=next_token,
        positions=state.positions + 1,
        tokens=jax.lax.dynamic_update_slice(state.tokens, next_token[:, None],
                                            (jnp.zeros((), jnp.int32), state.step)),
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
             sharding=None, cache_dtype=None, layer_loop: str | None = None,
             prefill_attention: str | None = None) -> SampleOutput:
  """Samples up to ``max_new_tokens`` tokens after each left-padded prompt.

  One prefill call over prompt columns 0..P-2 (the last column is the loop's first input, so
  no f32[B, P, V] logits are ever built), then a ``jax.lax.while_loop`` of single-token steps
  that stops when the budget is spent or every row has emitted an EOS (see the module
  docstring). Jitted; recompiles only for a new (B, P, max_new_tokens, config, strategy,
  cache_dtype, layer_loop), so bucket P.

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
    cache_dtype: dtype of the KV cache (static); None = the compute dtype. ``jnp.bfloat16``
      under a float32 model halves the cache (keys/values rounded to bfloat16).
    layer_loop: "unrolled" or "scan" (static; see the module docstring); None =
      ``default_layer_loop`` ("scan" on TPU, else "unrolled"). Same function, different
      rounding order is possible.
    prefill_attention: attention kernel of the prefill (static); None =
      ``prefill_attention_impl`` ("chunked" for prompts longer than one attention chunk under
      the materializing kernels, else ``config.attention_impl``).
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
  if cache_dtype is not None:
    cache_dtype = jnp.dtype(cache_dtype)
    if cache_dtype == config.compute_dtype:
      cache_dtype = None  # one executable for "the compute dtype", however it is spelled
  return _generate(params, prompt_tokens, prompt_lengths, rng, eos, jnp.int32(pad_id),
                   config=config, max_new_tokens=int(max_new_tokens), strategy=strategy,
                   sharding=sharding, cache_dtype=cache_dtype,
                   layer_loop=layer_loop or default_layer_loop(sharding),
                   prefill_attention=prefill_attention)


@functools.partial(jax.jit, static_argnames=("config", "sharding"))
def _next_token_logprobs(params: Params, prompt_tokens: jax.Array, prompt_lengths: jax.Array,
                         *, config: LlamaConfig, sharding=None) -> jax.Array:
  prompt_lengths = jnp.clip(prompt_lengths.astype(jnp.int32), 0, prompt_tokens.shape[1])
  segment_ids, positions = _prompt_layout(prompt_tokens, prompt_lengths)
  prompt_tokens = jnp.where(segment_ids > 0, prompt_tokens.astype(jnp.int32), 0)
  # Left padding: column P-1 is every row's last real token, the only one projected. Scores
  # are read from float32 logits (final norm and head in float32) whatever the model dtype.
  config = config.replace(logits_dot_in_fp32=True,
                          attention_impl=prefill_attention_impl(config, prompt_tokens.shape[1]))
  logits, _ = Llama(config, sharding=sharding).apply(
      params, prompt_tokens, positions, segment_ids, last_logits_only=True)
  return jax.nn.log_softmax(logits[:, -1], axis=-1)


def next_token_logprobs(params: Params, prompt_tokens: jax.Array, prompt_lengths: jax.Array,
                        *, config: LlamaConfig, sharding=None) -> jax.Array:
  """Log-probabilities of the token following each left-padded prompt (one forward pass).

  Only the last column is projected to the vocabulary (no f32[B, P, V] logits), and that
  projection runs in float32 even for a bfloat16 model (``LlamaConfig.logits_dot_in_fp32``).
  Prompts longer than one attention chunk use the "chunked" kernel
  (``prefill_attention_impl``), so no [B, H, P, P] scores are built.

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
