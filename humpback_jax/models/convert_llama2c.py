"""llama2.c legacy (v0) ``.bin`` checkpoints, described lazily over a memory map of the file."""

from __future__ import annotations

import functools
import os
import pathlib
import struct
from typing import Any

import numpy as np

from humpback_jax.models.config import LlamaConfig
from humpback_jax.models.convert_tree import (CheckpointSource, Params, Shardings,
                                              interleaved_to_half)

_LLAMA2C_HEADER = struct.Struct("<7i")


def _read(data: np.ndarray, offset: int, shape: tuple[int, ...], rope_heads: int | None
          ) -> np.ndarray:
  """A new float32 array of ``shape`` from ``data[offset:]`` (Q/K rows un-permuted)."""
  w = np.array(data[offset:offset + int(np.prod(shape))], dtype=np.float32).reshape(shape)
  return w if rope_heads is None else interleaved_to_half(w, rope_heads)


def open_llama2c(path: str | os.PathLike) -> CheckpointSource:
  """Describes a llama2.c legacy (v0) ``.bin`` checkpoint lazily (header and file size only).

  Layout: 7 little-endian int32 ``dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
  seq_len`` (negative vocab = an unshared classifier follows), then float32 arrays (see
  ``shared/data/README.md``). RMSNorm eps 1e-5, RoPE theta 10,000; wq/wk rows are permuted from
  interleaved RoPE pairs to HF's half split when read.

  Args:
    path: the ``.bin`` file.
  Returns:
    A validated :class:`CheckpointSource` (``.config``; ``.load(shardings=, dtype=)``).
  Raises:
    FileNotFoundError: no such file.
    ValueError: a bad header or a file size that does not match it (e.g. truncated).
  """
  p = pathlib.Path(path)
  if not p.is_file():
    raise FileNotFoundError(f"{p}: no such file")
  size = p.stat().st_size
  if size < _LLAMA2C_HEADER.size:
    raise ValueError(f"{p}: {size} bytes is too short for a llama2.c header")
  with open(p, "rb") as f:
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = _LLAMA2C_HEADER.unpack(
        f.read(_LLAMA2C_HEADER.size))
  shared = vocab > 0
  vocab = abs(vocab)
  if (min(dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len) <= 0 or dim % n_heads
      or n_heads % n_kv or (dim // n_heads) % 2):
    raise ValueError(f"{p}: invalid llama2.c header dim={dim} hidden_dim={hidden} "
                     f"n_layers={n_layers} n_heads={n_heads} n_kv_heads={n_kv} vocab={vocab} "
                     f"seq_len={seq_len}")
  head_dim = dim // n_heads
  kv_dim = n_kv * head_dim
  L = n_layers
  shapes = [
      ("embed", (vocab, dim)), ("input_norm", (L, dim)), ("q", (L, dim, dim)),
      ("k", (L, kv_dim, dim)), ("v", (L, kv_dim, dim)), ("o", (L, dim, dim)),
      ("post_attn_norm", (L, dim)), ("gate", (L, hidden, dim)), ("down", (L, dim, hidden)),
      ("up", (L, hidden, dim)), ("final_norm", (dim,)), ("freq_cis", (seq_len * head_dim,)),
  ]
  if not shared:
    shapes.append(("lm_head", (vocab, dim)))
  n_floats = sum(int(np.prod(s)) for _, s in shapes)
  expected = _LLAMA2C_HEADER.size + 4 * n_floats
  if size != expected:
    raise ValueError(f"{p}: file has {size} bytes but its llama2.c v0 header (dim={dim}, "
                     f"n_layers={n_layers}, vocab={vocab}, seq_len={seq_len}) implies {expected} "
                     f"bytes ({'truncated' if size < expected else 'trailing data or not v0'})")
  cfg = LlamaConfig(vocab_size=vocab, hidden_size=dim, intermediate_size=hidden,
                    num_layers=n_layers, num_heads=n_heads, num_kv_heads=n_kv,
                    rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=shared,
                    max_seq_len=seq_len)
  data = np.memmap(p, dtype="<f4", mode="r", offset=_LLAMA2C_HEADER.size, shape=(n_floats,))
  src = CheckpointSource(cfg, str(p))
  rope_heads = {"q": n_heads, "k": n_kv}
  off = 0
  for name, shape in shapes:
    if name == "freq_cis":
      pass
    elif name in ("embed", "final_norm", "lm_head"):
      src.add(name, functools.partial(_read, data, off, shape, None), shape, tensor=name)
    else:
      per_layer = shape[1:]
      n = int(np.prod(per_layer))
      for i in range(L):
        src.add(name, functools.partial(_read, data, off + i * n, per_layer,
                                        rope_heads.get(name)),
                per_layer, i, tensor=f"{name}[{i}]")
    off += int(np.prod(shape))
  src.validate()
  return src


def load_llama2c(path: str | os.PathLike, *, shardings: Shardings = None,
                 dtype: Any = None) -> tuple[LlamaConfig, Params]:
  """Loads a llama2.c legacy (v0) ``.bin`` checkpoint (see :func:`open_llama2c`).

  Args:
    path: the ``.bin`` file.
    shardings, dtype: as :meth:`CheckpointSource.load` (None: host float32 numpy arrays).
  Returns:
    ``(config, {"params": ...})``.
  Raises:
    FileNotFoundError, ValueError: as :func:`open_llama2c`.
  """
  src = open_llama2c(path)
  return src.config, src.load(shardings, dtype)
