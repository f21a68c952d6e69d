"""A pure-functional Flax (Linen) LLaMA decoder: training, prefill and cached decode.

Architecture (HF ``LlamaForCausalLM`` semantics): RMSNorm pre-norm blocks, rotary position
embeddings in the HF *half-split* layout (``rotate_half``), grouped-query attention, SwiGLU MLP,
tied or untied output embedding. The L blocks are stacked under one ``nn.scan``, so every block
parameter has a leading ``layers`` axis of size L (``LlamaConfig.scan_layers=False`` unrolls that
scan but keeps the layout). The attention kernel is ``LlamaConfig.attention_impl``
(``models/attention.py``).

Parameters are a plain pytree ``{"params": {...}}``:

  embed_tokens/embedding        (V, D)          ("vocab", "embed")
  layers/input_norm/scale       (L, D)          ("layers", "norm")
  layers/attn/q_proj/kernel     (L, D, H, Dh)   ("layers", "embed", "heads", "head_dim")
  layers/attn/k_proj/kernel     (L, D, KV, Dh)  ("layers", "embed", "kv_heads", "head_dim")
  layers/attn/v_proj/kernel     (L, D, KV, Dh)  ("layers", "embed", "kv_heads", "head_dim")
  layers/attn/o_proj/kernel     (L, H, Dh, D)   ("layers", "heads", "head_dim", "embed")
  layers/post_attn_norm/scale   (L, D)          ("layers", "norm")
  layers/mlp/gate_proj/kernel   (L, D, F)       ("layers", "embed", "mlp")
  layers/mlp/up_proj/kernel     (L, D, F)       ("layers", "embed", "mlp")
  layers/mlp/down_proj/kernel   (L, F, D)       ("layers", "mlp", "embed")
  final_norm/scale              (D,)            ("norm",)
  lm_head/kernel                (D, V)          ("embed", "vocab")   [untied only]

``model.init`` returns these wrapped in ``nn.LogicallyPartitioned`` boxes (the logical names
above); ``nn.unbox`` gives the plain arrays that ``apply`` and the converters use.

Activation sharding. ``Llama(config, sharding=...)`` with a ``sharding.ActivationSharding``
constrains the residual stream, the attention projections, the MLP hidden activations, the
logits and the KV cache to their logical shardings (``activation_batch``, ``activation_length``,
``activation_embed``, ``activation_heads``, ``activation_kv_heads``, ``activation_mlp``,
``activation_vocab``; ``cache_batch``, ``cache_sequence``, ``cache_heads``), so that XLA never
replicates them over the mesh. Without it (the default) nothing is constrained.

Masks. Every call takes ``segment_ids`` (int32 [B, T]; 0 = padding, equal non-zero ids = one
packed example). A query attends to a key iff both have the same non-zero segment id and the key
is not in the future. With a KV cache the keys are the cache slots, whose segment ids are kept
in the cache, so left-padded prompts and decode steps need no extra mask arguments. The mask
travels as a ``attention.MaskSpec`` (segment ids and slots); the [B, T, S] boolean tensor is
built only for the kernels that read it.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# attention_mask is re-exported (it lived here before models/attention.py).
from humpback_jax.models.attention import MaskSpec, attend, attention_mask  # noqa: F401
from humpback_jax.models.config import REMAT_POLICIES, LlamaConfig

KVCache = dict  # {"k","v": [L,B,S,KV,Dh]; "segment_ids": int32[B,S]; "index": int32[]}


def _acc(dtype) -> Any:
  """Accumulation dtype: float32, or float64 for a float64 model (exactness tests)."""
  return jnp.promote_types(dtype, jnp.float32)


def _constrain(sharding, x, names):
  """``sharding.constrain(x, names)`` (logical names per dimension), or ``x`` unchanged."""
  return x if sharding is None else sharding.constrain(x, names)


_RESIDUAL = ("activation_batch", "activation_length", "activation_embed")


def _dense_init(names):
  return nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02), names)


class RMSNorm(nn.Module):
  """Root-mean-square layer norm, computed in float32 or wider (HF ``LlamaRMSNorm``)."""

  eps: float
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x):
    scale = self.param(
        "scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
        (x.shape[-1],), self.param_dtype)
    acc = _acc(x.dtype)
    x32 = x.astype(acc)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * scale.astype(acc)).astype(self.dtype)


def rope_tables(positions: jax.Array, head_dim: int, theta: float, dtype=jnp.float32):
  """cos/sin tables for HF half-split RoPE.

  Args:
    positions: int32 [B, T] absolute positions (tokens).
    head_dim: Dh (even).
    theta: RoPE base.
    dtype: float32 (float64 in exactness tests).
  Returns:
    (cos, sin), each ``dtype`` [B, T, 1, Dh], broadcastable over heads.
  """
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=dtype) / head_dim))
  freqs = positions.astype(dtype)[..., None] * inv_freq  # [B, T, Dh/2]
  emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
  return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotates x [B, T, N, Dh] in the HF layout: x*cos + rotate_half(x)*sin."""
  half = x.shape[-1] // 2
  x32 = x.astype(_acc(x.dtype))
  rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
  return (x32 * cos + rotated * sin).astype(x.dtype)


class Attention(nn.Module):
  config: LlamaConfig
  sharding: Any = None

  @nn.compact
  def __call__(self, x, cos, sin, mask, layer_cache, cache_index):
    cfg = self.config
    c = lambda y, names: _constrain(self.sharding, y, names)
    h, kv, dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    dense = lambda feats, axis, names, name: nn.DenseGeneral(
        feats, axis=axis, use_bias=False, dtype=cfg.compute_dtype,
        param_dtype=cfg.weight_dtype, kernel_init=_dense_init(names), name=name)
    q = dense((h, dh), -1, ("embed", "heads", "head_dim"), "q_proj")(x)
    k = dense((kv, dh), -1, ("embed", "kv_heads", "head_dim"), "k_proj")(x)
    v = dense((kv, dh), -1, ("embed", "kv_heads", "head_dim"), "v_proj")(x)
    q = c(apply_rope(q, cos, sin), ("activation_batch", "activation_length", "activation_heads",
                                     None))
    k = c(apply_rope(k, cos, sin), ("activation_batch", "activation_length",
                                     "activation_kv_heads", None))
    v = c(v, ("activation_batch", "activation_length", "activation_kv_heads", None))

    new_cache = None
    if layer_cache is not None:
      k_cache, v_cache = layer_cache
      zero = jnp.zeros((), cache_index.dtype)  # offsets share one int dtype (also with x64)
      at = (zero, cache_index, zero, zero)
      cache_names = ("cache_batch", "cache_sequence", "cache_heads", None)
      k = c(jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), at), cache_names)
      v = c(jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), at), cache_names)
      new_cache = (k, v)

    out = attend(q, k, v, mask, cfg.attention_impl, cfg.attention_chunk_size,
                 cfg.compute_dtype, cached=layer_cache is not None, sharding=self.sharding)
    out = c(out, ("activation_batch", "activation_length", "activation_heads", None))
    out = dense(cfg.hidden_size, (-2, -1), ("heads", "head_dim", "embed"), "o_proj")(out)
    return c(out, _RESIDUAL), new_cache


class MLP(nn.Module):
  config: LlamaConfig
  sharding: Any = None

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    hidden = ("activation_batch", "activation_length", "activation_mlp")
    dense = lambda feats, names, name: nn.Dense(
        feats, use_bias=False, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
        kernel_init=_dense_init(names), name=name)
    gate = _constrain(self.sharding, dense(cfg.intermediate_size, ("embed", "mlp"),
                                           "gate_proj")(x), hidden)
    up = _constrain(self.sharding, dense(cfg.intermediate_size, ("embed", "mlp"), "up_proj")(x),
                    hidden)
    # SiLU as x / (1 + exp(-x)), the formula of PyTorch's kernel (jax.nn.silu's x * sigmoid(x)
    # rounds differently, enough to move SmolLM2's logits by ~2e-5 over 30 layers).
    gate32 = gate.astype(_acc(gate.dtype))
    act = (gate32 / (1.0 + jnp.exp(-gate32))).astype(gate.dtype)
    out = dense(cfg.hidden_size, ("mlp", "embed"), "down_proj")(
        _constrain(self.sharding, act * up, hidden))
    return _constrain(self.sharding, out, _RESIDUAL)


class DecoderLayer(nn.Module):
  """One pre-norm block; scanned, so it maps (carry=x, xs=layer cache) -> (x, new cache).

  ``mask`` is an ``attention.MaskSpec`` (broadcast to every layer).
  """

  config: LlamaConfig
  deterministic: bool = True
  sharding: Any = None

  @nn.compact
  def __call__(self, x, layer_cache, cos, sin, mask, cache_index):
    cfg = self.config
    norm = lambda name: RMSNorm(cfg.rms_norm_eps, cfg.compute_dtype, cfg.weight_dtype, name=name)
    drop = nn.Dropout(cfg.dropout_rate, deterministic=self.deterministic)
    x = _constrain(self.sharding, x, _RESIDUAL)
    attn_out, new_cache = Attention(cfg, self.sharding, name="attn")(
        norm("input_norm")(x), cos, sin, mask, layer_cache, cache_index)
    x = x + drop(attn_out)
    x = x + drop(MLP(cfg, self.sharding, name="mlp")(norm("post_attn_norm")(x)))
    return _constrain(self.sharding, x, _RESIDUAL), new_cache


class Llama(nn.Module):
  """LLaMA causal LM.

  ``__call__(tokens, positions, segment_ids=None, cache=None, last_logits_only=False,
  return_hidden=False)``:
    tokens: int32 [B, T] token ids.
    positions: int32 [B, T] RoPE positions (tokens from the start of each example).
    segment_ids: int32 [B, T]; 0 marks padding; ``None`` means all ones.
    cache: a ``KVCache`` from ``init_cache`` or a previous call; new keys/values are written at
      slots ``[cache["index"], cache["index"] + T)``.
    last_logits_only: project only the last column to the vocabulary (logits [B, 1, V]); with
      left-padded prompts that is every row's next-token distribution, without materializing
      [B, T, V] (1 GiB at B=8, T=1024, V=32000).
    return_hidden: return the final hidden states (after the final RMSNorm, before the LM
      head) instead of the logits; the LM head is not computed. Used for text features
      (``eval/mauve_score.py``). Default False: the logits, as before.
  Returns:
    (logits float32 [B, T, V] (or [B, 1, V]; float64 for a float64 model), new cache or None);
    with ``return_hidden``: (hidden [B, T, D] (or [B, 1, D] with ``last_logits_only``) in the
    head's dtype (float32 with ``logits_dot_in_fp32``, else the compute dtype), new cache or
    None).
  """

  config: LlamaConfig
  deterministic: bool = True
  sharding: Any = None  # a sharding.ActivationSharding, or None (no constraints)

  @nn.compact
  def __call__(self, tokens, positions, segment_ids=None, cache: KVCache | None = None,
               last_logits_only: bool = False, return_hidden: bool = False):
    cfg = self.config
    if segment_ids is None:
      segment_ids = jnp.ones_like(tokens)
    embed = nn.Embed(
        cfg.vocab_size, cfg.hidden_size, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
        embedding_init=nn.with_logical_partitioning(
            nn.initializers.normal(stddev=0.02), ("vocab", "embed")),
        name="embed_tokens")
    x = _constrain(self.sharding, embed(tokens), _RESIDUAL)
    t = tokens.shape[1]
    cos, sin = rope_tables(positions, cfg.head_dim, cfg.rope_theta, _acc(cfg.compute_dtype))

    if cache is None:
      slots = jnp.arange(t, dtype=jnp.int32)
      mask = MaskSpec.build(cfg.attention_impl, segment_ids, segment_ids, slots, slots)
      cache_index = None
      xs = None
    else:
      cache_index = cache["index"]
      kv_segments = jax.lax.dynamic_update_slice(
          cache["segment_ids"], segment_ids.astype(jnp.int32),
          (jnp.zeros((), cache_index.dtype), cache_index))
      s = kv_segments.shape[1]
      mask = MaskSpec.build(cfg.attention_impl, segment_ids, kv_segments,
                            cache_index + jnp.arange(t, dtype=jnp.int32),
                            jnp.arange(s, dtype=jnp.int32))
      xs = (cache["k"], cache["v"])

    block = DecoderLayer
    if cfg.remat_policy != "none":
      policy = REMAT_POLICIES[cfg.remat_policy]
      block = nn.remat(block, prevent_cse=False,
                       policy=None if policy is None else getattr(jax.checkpoint_policies, policy))
    layers = nn.scan(
        block,
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
        length=cfg.num_layers,
        unroll=1 if cfg.scan_layers else cfg.num_layers,  # unrolled: same stacked params
        metadata_params={nn.PARTITION_NAME: "layers"},
    )(cfg, deterministic=self.deterministic, sharding=self.sharding, name="layers")
    x, new_kv = layers(x, xs, cos, sin, mask, cache_index)

    if last_logits_only:
      x = x[:, -1:]
    head_dtype = _acc(cfg.compute_dtype) if cfg.logits_dot_in_fp32 else cfg.compute_dtype
    x = RMSNorm(cfg.rms_norm_eps, head_dtype, cfg.weight_dtype, name="final_norm")(x)

    new_cache = None
    if cache is not None:
      new_cache = {"k": new_kv[0], "v": new_kv[1], "segment_ids": kv_segments,
                   "index": cache_index + t}
    if return_hidden:
      return x, new_cache
    if cfg.tie_word_embeddings:
      logits = jnp.einsum("btd,vd->btv", x.astype(head_dtype),
                          embed.embedding.astype(head_dtype),
                          preferred_element_type=_acc(head_dtype))
    else:
      logits = nn.Dense(
          cfg.vocab_size, use_bias=False, dtype=head_dtype, param_dtype=cfg.weight_dtype,
          kernel_init=_dense_init(("embed", "vocab")), name="lm_head")(x)
    logits = _constrain(self.sharding, logits.astype(_acc(cfg.compute_dtype)),
                        ("activation_batch", "activation_length", "activation_vocab"))
    return logits, new_cache


def init_cache(config: LlamaConfig, batch_size: int, max_len: int, dtype=None) -> KVCache:
  """An empty KV cache.

  Returns a dict: ``k``/``v`` zeros [L, B, S=max_len, KV, Dh] (compute dtype unless ``dtype``),
  ``segment_ids`` int32 zeros [B, S] (0 = empty slot, never attended), ``index`` int32 0.
  """
  dtype = dtype or config.compute_dtype
  shape = (config.num_layers, batch_size, max_len, config.num_kv_heads, config.head_dim)
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
          "segment_ids": jnp.zeros((batch_size, max_len), jnp.int32),
          "index": jnp.zeros((), jnp.int32)}


def init_params(config: LlamaConfig, rng: jax.Array, boxed: bool = False):
  """Random parameters ``{"params": ...}`` (normal(0.02) kernels, unit norms).

  With ``boxed=True`` leaves are ``nn.LogicallyPartitioned`` (for sharding specs).
  """
  tokens = jnp.zeros((1, 1), jnp.int32)
  variables = Llama(config).init(rng, tokens, tokens)
  return variables if boxed else nn.unbox(variables)


def param_logical_axes(config: LlamaConfig):
  """Pytree of ``PartitionSpec`` of logical axis names, matching ``init_params``' structure."""
  abstract = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0), boxed=True))
  return nn.get_partition_spec(abstract)
