"""The parameter tree of ``models/llama.py`` assembled from a lazily described checkpoint.

A checkpoint reader (``convert_hf``, ``convert_gguf``, ``convert_llama2c``) does not load
anything: it describes the checkpoint as a :class:`CheckpointSource`, a table of *readers*, one
per source tensor, each returning that tensor on demand as a fresh float32 numpy array in the HF
layout ``(out_features, in_features)`` (dequantized, widened, RoPE rows un-permuted). Shapes are
checked when a reader is added and missing tensors when the table is complete, before any tensor
is read.

:meth:`CheckpointSource.load` then builds the tree ``{"params": {...}}`` (layout table in
``models/llama.py``; block parameters stacked on a leading L axis) in one of two ways:

* ``shardings=None``: host numpy arrays (float32 unless ``dtype`` says otherwise), the whole tree
  on the host;
* ``shardings=`` a pytree of ``jax.sharding.Sharding``: every leaf is a ``jax.Array`` with that
  sharding, written one source tensor at a time. A global leaf is cut from its tensor device
  shard by device; a stacked leaf is a zero-filled device buffer into which each layer, cut the
  same way, is written in place (a donated ``dynamic_update_slice``). The host never holds a
  whole leaf or a device's stack of layers. Each process builds only its addressable shards (it
  reads every tensor its devices need a slice of). Shardings that split the L axis itself, or
  that are not ``NamedSharding`` / ``SingleDeviceSharding``, take a slower fallback that
  assembles each local shard of a stacked leaf on the host.

Host memory of a sharded load, independent of the number of layers: one source tensor in
float32, plus the device pieces cut from it (one at a time where transfers copy, as on GPU/TPU;
the CPU backend uses 64-byte-aligned host pieces as its device buffers, so there one layer's
pieces, the tensor's size again, live until the layer is written), plus what decoding needs
while reading (bfloat16 widening: +0.5x; GGUF dequantization and Q/K un-permutation: +1-2x).
"""

from __future__ import annotations

import dataclasses
import functools
import gc
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec, SingleDeviceSharding

from humpback_jax.models.config import LlamaConfig

Params = dict  # {"params": {...}}; numpy arrays (host load) or jax.Arrays (sharded load)
Reader = Callable[[], np.ndarray]
# A pytree of shardings matching {"params": ...} (or the inner dict), one Sharding for every
# leaf, or a function of the checkpoint's config returning either.
Shardings = Any

LAYER_NAMES = ("input_norm", "post_attn_norm", "q", "k", "v", "o", "gate", "up", "down")
GLOBAL_NAMES = ("embed", "final_norm", "lm_head")


# ----------------------------------------------------------------------------------------------
# RoPE row orders.


def interleaved_to_half(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Reorders the output rows of a Q/K weight from interleaved RoPE pairs to HF's half split.

  Within each head, rows ``(0, 1), (2, 3), ...`` (pairs rotated together, llama2.c / GGUF) become
  rows ``(0, Dh/2), (1, Dh/2 + 1), ...`` (HF ``rotate_half``): HF ``convert_llama_weights_to_hf``'s
  ``permute``, and the inverse of llama.cpp ``convert_hf_to_gguf``'s.

  Args:
    w: [n_heads * Dh, D_in] weight, rows = output features.
    n_heads: heads in the rows (query heads for wq, KV heads for wk).
  Returns:
    The permuted [n_heads * Dh, D_in] weight (a new C-contiguous array).
  Raises:
    ValueError: the rows do not split into ``n_heads`` heads of even size.
  """
  rows = w.shape[0]
  if rows % (2 * n_heads):
    raise ValueError(f"{rows} rows cannot be split into {n_heads} heads of even size")
  return (w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:])
          .swapaxes(1, 2).reshape(w.shape))


def half_to_interleaved(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Inverse of :func:`interleaved_to_half` (llama.cpp's ``permute``)."""
  rows = w.shape[0]
  return (w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:])
          .swapaxes(1, 2).reshape(w.shape))


# ----------------------------------------------------------------------------------------------
# Layout: source (HF, (out, in)) tensors -> leaves of the tree.


def expected_shapes(cfg: LlamaConfig) -> dict[str, tuple[int, ...]]:
  """HF-style (out, in) source tensor shapes per logical name (layer tensors without L)."""
  d, f, h, kv, dh = (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads,
                     cfg.head_dim)
  return {
      "embed": (cfg.vocab_size, d), "final_norm": (d,), "lm_head": (cfg.vocab_size, d),
      "input_norm": (d,), "post_attn_norm": (d,), "q": (h * dh, d), "k": (kv * dh, d),
      "v": (kv * dh, d), "o": (d, h * dh), "gate": (f, d), "up": (f, d), "down": (d, f),
  }


@dataclasses.dataclass(frozen=True)
class Leaf:
  """One leaf of the tree and how it is cut from its source tensor.

  Attributes:
    path: keys under ``"params"``, e.g. ``("layers", "attn", "q_proj", "kernel")``.
    name: logical source name (a key of :func:`expected_shapes`).
    stacked: a block parameter (leading L axis, one source tensor per layer).
    split: the source (out, in) tensor reshaped to this first (a view), or None.
    perm: then transposed by this (a view).
    shape: the leaf's full shape (with L when stacked).
  """

  path: tuple[str, ...]
  name: str
  stacked: bool
  split: tuple[int, ...] | None
  perm: tuple[int, ...]
  shape: tuple[int, ...]

  def view(self, src: np.ndarray) -> np.ndarray:
    """The leaf's value for one source tensor (one layer when stacked), as a numpy view."""
    return (src if self.split is None else src.reshape(self.split)).transpose(self.perm)


def tree_leaves(cfg: LlamaConfig) -> list[Leaf]:
  """Every leaf of ``init_params(cfg)`` with its source (``lm_head`` only when untied)."""
  L, d, f, h, kv, dh, v = (cfg.num_layers, cfg.hidden_size, cfg.intermediate_size, cfg.num_heads,
                           cfg.num_kv_heads, cfg.head_dim, cfg.vocab_size)
  out = [
      Leaf(("embed_tokens", "embedding"), "embed", False, None, (0, 1), (v, d)),
      Leaf(("layers", "input_norm", "scale"), "input_norm", True, None, (0,), (L, d)),
      Leaf(("layers", "post_attn_norm", "scale"), "post_attn_norm", True, None, (0,), (L, d)),
      Leaf(("layers", "attn", "q_proj", "kernel"), "q", True, (h, dh, d), (2, 0, 1),
           (L, d, h, dh)),
      Leaf(("layers", "attn", "k_proj", "kernel"), "k", True, (kv, dh, d), (2, 0, 1),
           (L, d, kv, dh)),
      Leaf(("layers", "attn", "v_proj", "kernel"), "v", True, (kv, dh, d), (2, 0, 1),
           (L, d, kv, dh)),
      Leaf(("layers", "attn", "o_proj", "kernel"), "o", True, (d, h, dh), (1, 2, 0),
           (L, h, dh, d)),
      Leaf(("layers", "mlp", "gate_proj", "kernel"), "gate", True, None, (1, 0), (L, d, f)),
      Leaf(("layers", "mlp", "up_proj", "kernel"), "up", True, None, (1, 0), (L, d, f)),
      Leaf(("layers", "mlp", "down_proj", "kernel"), "down", True, None, (1, 0), (L, f, d)),
      Leaf(("final_norm", "scale"), "final_norm", False, None, (0,), (d,)),
  ]
  if not cfg.tie_word_embeddings:
    out.append(Leaf(("lm_head", "kernel"), "lm_head", False, None, (1, 0), (d, v)))
  return out


def _set_path(tree: dict, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


# ----------------------------------------------------------------------------------------------
# The lazy checkpoint.


class CheckpointSource:
  """A checkpoint described tensor by tensor; nothing is read until :meth:`load`.

  Readers fill it with :meth:`add` and finish with :meth:`validate`. Attributes: ``config``
  (:class:`LlamaConfig`, float32 dtypes) and ``source`` (the path, for messages).
  """

  def __init__(self, config: LlamaConfig, source: str):
    self.config = config
    self.source = source
    self._shapes = expected_shapes(config)
    self._readers: dict[tuple[str, int | None], tuple[Reader, str]] = {}

  def add(self, name: str, reader: Reader, shape, layer: int | None = None,
          tensor: str = "") -> None:
    """Registers the reader of one source tensor.

    Args:
      name: logical name, a key of :func:`expected_shapes` (``"q"``, ``"embed"``, ...).
      reader: ``() -> np.ndarray``: the tensor as a fresh float32 array of ``shape`` in the HF
        (out, in) layout (Q/K rows in HF's half-split RoPE order), not a view of a mapped file.
      shape: its shape as stored (checked now, and again when read).
      layer: block index for a block tensor, None for a global one.
      tensor: the stored tensor's name, for messages.
    Raises:
      ValueError: a shape other than expected, or a layer index outside [0, L) (the message
        names the checkpoint and the tensor).
    """
    label = tensor or name
    want = self._shapes[name]
    if tuple(int(s) for s in shape) != want:
      raise ValueError(f"{self.source}: tensor {label} has shape {tuple(shape)}, expected {want}")
    if (layer is None) != (name not in LAYER_NAMES):
      raise ValueError(f"{self.source}: tensor {label} ({name}) needs "
                       f"{'a layer index' if layer is None else 'no layer index'}")
    if layer is not None and not 0 <= layer < self.config.num_layers:
      raise ValueError(f"{self.source}: tensor {label} has layer index {layer} outside "
                       f"[0, {self.config.num_layers})")
    self._readers[(name, layer)] = (reader, label)

  def validate(self) -> None:
    """Checks that every tensor the tree needs has a reader.

    Raises:
      ValueError: ``"<source>: missing tensor for <name>"`` or ``"... for layer <i> <name>"``.
    """
    cfg = self.config
    required = ["embed", "final_norm"] + ([] if cfg.tie_word_embeddings else ["lm_head"])
    for name in required:
      if (name, None) not in self._readers:
        raise ValueError(f"{self.source}: missing tensor for {name}")
    for name in LAYER_NAMES:
      for i in range(cfg.num_layers):
        if (name, i) not in self._readers:
          raise ValueError(f"{self.source}: missing tensor for layer {i} {name}")

  def read(self, name: str, layer: int | None = None) -> np.ndarray:
    """One source tensor: float32, C-contiguous, HF (out, in) layout, shape checked.

    Raises:
      ValueError: the reader's own errors (unsupported dtype, corrupt data) or a result of the
        wrong size, naming the checkpoint and tensor.
    """
    reader, label = self._readers[(name, layer)]
    arr = np.ascontiguousarray(reader(), dtype=np.float32)
    want = self._shapes[name]
    if arr.shape != want:
      raise ValueError(f"{self.source}: tensor {label} read with shape {arr.shape}, "
                       f"expected {want}")
    return arr

  def leaves(self) -> list[Leaf]:
    """The leaves :meth:`load` builds (see :func:`tree_leaves`)."""
    return tree_leaves(self.config)

  def load(self, shardings: Shardings = None, dtype: Any = None) -> Params:
    """Builds ``{"params": ...}`` (layout table in ``models/llama.py``).

    Args:
      shardings: None for host numpy arrays; else a pytree of ``jax.sharding.Sharding`` with the
        structure of ``{"params": ...}`` (e.g. ``sharding.param_shardings(config, mesh)``) or of
        its inner dict, a single ``Sharding`` for every leaf, or a callable
        ``LlamaConfig -> either``.
      dtype: element type of every leaf (e.g. ``"bfloat16"``); default float32. Values are
        rounded from float32 (round to nearest even).
    Returns:
      ``{"params": tree}``: numpy arrays, or ``jax.Array`` s with exactly the given shardings.
    Raises:
      ValueError: a missing tensor; a sharding tree whose leaves differ from the model's
        (message lists them); a tensor that cannot be read (names the file and tensor).
    """
    self.validate()
    dtype = jnp.dtype(np.float32 if dtype is None else dtype)
    leaves = self.leaves()
    if shardings is None:
      build = lambda leaf: self._host_leaf(leaf, dtype)
    else:
      per_leaf = _match_shardings(self, shardings, leaves)
      build = lambda leaf: self._sharded_leaf(leaf, per_leaf[leaf.path], dtype)
    tree: dict = {}
    for leaf in leaves:
      _set_path(tree, leaf.path, build(leaf))
    return {"params": tree}

  def _host_leaf(self, leaf: Leaf, dtype) -> np.ndarray:
    if not leaf.stacked:
      return np.ascontiguousarray(leaf.view(self.read(leaf.name)), dtype=dtype)
    out = np.empty(leaf.shape, dtype)
    for i in range(leaf.shape[0]):
      out[i] = leaf.view(self.read(leaf.name, i))
    return out

  def _sharded_leaf(self, leaf: Leaf, sharding, dtype) -> jax.Array:
    if not leaf.stacked:
      out = _array_from_pieces(leaf.shape, sharding, leaf.view(self.read(leaf.name)), dtype)
      _release_host_buffers()
      return out
    layer_sharding = _without_leading_axis(sharding)
    if layer_sharding is None:
      return self._sharded_leaf_by_shard(leaf, sharding, dtype)
    buf = jnp.zeros(leaf.shape, dtype, device=sharding)
    for i in range(leaf.shape[0]):
      layer = _array_from_pieces(leaf.shape[1:], layer_sharding,
                                 leaf.view(self.read(leaf.name, i)), dtype)
      buf = _layer_setter(sharding)(buf, layer, np.int32(i))
      buf.block_until_ready()
      layer.delete()
      del layer
      _release_host_buffers()
    if buf.sharding != sharding:  # an equivalent object: hand back the caller's own
      assert buf.sharding.is_equivalent_to(sharding, len(leaf.shape)), (buf.sharding, sharding)
      buf = jax.make_array_from_single_device_arrays(
          leaf.shape, sharding, [s.data for s in buf.addressable_shards])
    return buf

  def _sharded_leaf_by_shard(self, leaf: Leaf, sharding, dtype) -> jax.Array:
    """Fallback for a sharding of the L axis itself (or not a Named/SingleDeviceSharding): each
    distinct local shard is assembled on the host layer by layer, reading a layer once per shard
    that holds part of it (host memory: one device's shard of the leaf)."""
    def shard(index):
      rows = range(*index[0].indices(leaf.shape[0]))
      out = None
      for j, i in enumerate(rows):
        piece = leaf.view(self.read(leaf.name, i))[index[1:]]
        if out is None:
          out = np.empty((len(rows),) + piece.shape, dtype)
        out[j] = piece
      return out
    return _array_from_pieces(leaf.shape, sharding, None, dtype, shard=shard)


# ----------------------------------------------------------------------------------------------
# Sharded assembly.


def _match_shardings(src: CheckpointSource, shardings, leaves: list[Leaf]) -> dict:
  """{leaf path: Sharding}; raises ValueError when the trees' leaves differ."""
  if callable(shardings) and not isinstance(shardings, jax.sharding.Sharding):
    shardings = shardings(src.config)
  if isinstance(shardings, jax.sharding.Sharding):
    return {leaf.path: shardings for leaf in leaves}
  if isinstance(shardings, Mapping) and set(shardings) == {"params"}:
    shardings = shardings["params"]
  flat, _ = jax.tree_util.tree_flatten_with_path(
      shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
  given = {tuple(str(getattr(k, "key", k)) for k in path): s for path, s in flat}
  want = {leaf.path for leaf in leaves}
  if set(given) != want:
    missing = sorted("/".join(p) for p in want - set(given))
    extra = sorted("/".join(p) for p in set(given) - want)
    raise ValueError(f"{src.source}: the shardings do not match the model's parameters "
                     f"(missing {missing}, unexpected {extra})")
  for path, s in given.items():
    if not isinstance(s, jax.sharding.Sharding):
      raise ValueError(f"{src.source}: sharding of {'/'.join(path)} is {s!r}, not a "
                       "jax.sharding.Sharding")
  return given


def _without_leading_axis(sharding) -> jax.sharding.Sharding | None:
  """The sharding of one layer of a stacked leaf, or None when the L axis itself is split."""
  if isinstance(sharding, SingleDeviceSharding):
    return sharding
  if isinstance(sharding, NamedSharding):
    spec = tuple(sharding.spec)
    if spec and spec[0] is not None:
      return None
    return NamedSharding(sharding.mesh, PartitionSpec(*spec[1:]),
                         memory_kind=sharding.memory_kind)
  return None


def _index_key(index: tuple[slice, ...], shape) -> tuple:
  return tuple(s.indices(n) for s, n in zip(index, shape))


def _array_from_pieces(shape, sharding, value: np.ndarray | None, dtype,
                       shard: Callable[[tuple], np.ndarray] | None = None) -> jax.Array:
  """``jax.Array`` of ``shape`` with ``sharding`` from a host value, one device shard at a time.

  Like ``jax.make_array_from_callback``, but each distinct shard is cut (``value[index]``, cast
  to ``dtype``, or ``shard(index)``), copied to the devices that hold it and dropped before the
  next one is cut: ``make_array_from_callback`` keeps every local shard on the host until it
  transfers them all. (The CPU backend may still alias a suitably aligned numpy buffer as the
  device buffer, which is then device memory.)
  """
  by_index: dict[tuple, list] = {}
  indices = {}
  for device, index in sharding.addressable_devices_indices_map(tuple(shape)).items():
    key = _index_key(index, shape)
    by_index.setdefault(key, []).append(device)
    indices[key] = index
  arrays = []
  for key, devices in by_index.items():
    index = indices[key]
    piece = (np.ascontiguousarray(value[index], dtype=dtype) if shard is None
             else shard(index))
    copies = [jax.device_put(piece, device, may_alias=False) for device in devices]
    # Transfers are asynchronous and keep their host buffer until done: wait, so that pieces
    # never pile up on the host.
    arrays.extend(jax.block_until_ready(copies))
    del piece, copies
  return jax.make_array_from_single_device_arrays(tuple(shape), sharding, arrays)


def _release_host_buffers() -> None:
  """Frees the numpy buffers that finished transfers (or deleted CPU arrays aliasing them) let
  go of. The runtime drops those references on its own threads into a queue that it empties on
  Python's garbage-collection callback, so without this they would pile up until the next
  collection happens to run."""
  gc.collect(0)


@functools.lru_cache(maxsize=64)
def _layer_setter(sharding) -> Callable[[jax.Array, jax.Array, Any], jax.Array]:
  """Jitted ``(buf, layer, i) -> buf`` with ``buf[i] = layer``, in place (``buf`` donated), the
  result sharded by ``sharding`` (``out_shardings``, which Explicit mesh axes allow too)."""
  return jax.jit(lambda buf, layer, i: jax.lax.dynamic_update_index_in_dim(buf, layer, i, 0),
                 donate_argnums=0, out_shardings=sharding)

