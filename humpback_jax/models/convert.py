"""Checkpoints <-> the parameter tree of ``models/llama.py``: the public entry points.

Readers return ``(LlamaConfig, params)`` where ``params`` is ``{"params": {...}}`` laid out
exactly as ``Llama.init`` lays it out (block parameters stacked on a leading L axis, see the
table in ``models/llama.py``): plain float32 numpy arrays by default, or, given ``shardings=``,
``jax.Array`` s written shard by shard straight from the file, one source tensor on the host at a
time (``convert_tree``). Supported formats:

* HF directories (``config.json`` + ``*.safetensors``, sharded or not): :func:`load_hf`
  (``convert_hf``; bfloat16 tensors are widened to float32 without torch).
* GGUF files with ``general.architecture == "llama"``: :func:`load_gguf` (``convert_gguf``),
  dequantized with ``gguf.quants.dequantize``. llama.cpp stores Q/K rows permuted for interleaved
  RoPE; this undoes it, so the result is HF's half-split layout.
* llama2.c legacy v0 ``.bin`` checkpoints: :func:`load_llama2c` (``convert_llama2c``;
  interleaved RoPE, permuted the same way HF's ``convert_llama_weights_to_hf.py`` does).

:func:`open_checkpoint` describes a checkpoint without reading its tensors (its ``.config`` gives
the shapes needed to build shardings); :func:`load_checkpoint` reads it. :func:`save_hf` writes
an HF ``LlamaForCausalLM`` directory that ``transformers`` loads as is. Nothing here imports torch
or transformers.

Example (each device gets only its shards; bfloat16 parameters)::

  cfg, params = load_checkpoint(
      path, shardings=lambda cfg: sharding.param_shardings(cfg, mesh), dtype="bfloat16")
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

from humpback_jax.models.config import LlamaConfig
from humpback_jax.models.convert_gguf import (SMOLLM2_GGUF, find_smollm2_gguf, gguf_field,
                                              gguf_reader, load_gguf, open_gguf)
from humpback_jax.models.convert_hf import (SafetensorsFile, config_from_hf_dict,
                                            config_to_hf_dict, load_hf, open_hf,
                                            params_to_hf_state_dict, save_hf)
from humpback_jax.models.convert_llama2c import load_llama2c, open_llama2c
from humpback_jax.models.convert_tree import (CheckpointSource, Params, Shardings,
                                              expected_shapes, half_to_interleaved,
                                              interleaved_to_half)

__all__ = [
    "CheckpointSource", "Params", "SMOLLM2_GGUF", "SafetensorsFile", "Shardings",
    "config_from_hf_dict", "config_to_hf_dict", "expected_shapes", "find_smollm2_gguf",
    "gguf_field", "gguf_reader", "half_to_interleaved", "interleaved_to_half",
    "load_checkpoint", "load_gguf", "load_hf", "load_llama2c", "open_checkpoint", "open_gguf",
    "open_hf", "open_llama2c", "params_to_hf_state_dict", "save_hf",
]


def open_checkpoint(path: str | os.PathLike) -> CheckpointSource:
  """Describes any supported checkpoint without reading its tensors, by path: a directory (HF,
  or one holding exactly one ``.gguf``), ``*.gguf``, ``*.bin`` (llama2.c).

  Every tensor's presence and shape is checked here (metadata only), before anything is loaded.

  Returns:
    A :class:`CheckpointSource`: ``.config`` (:class:`LlamaConfig`, float32 dtypes) and
    ``.load(shardings=None, dtype=None)``.
  Raises:
    FileNotFoundError: no such path.
    ValueError: an unrecognized path or a malformed checkpoint (the message names the file and,
      where one is at fault, the tensor).
  """
  p = pathlib.Path(path)
  if not p.exists():
    raise FileNotFoundError(f"{p}: no such file or directory")
  if p.is_dir():
    if (p / "config.json").is_file():
      return open_hf(p)
    ggufs = sorted(p.glob("*.gguf"))
    if len(ggufs) == 1:
      return open_gguf(ggufs[0])
    raise ValueError(f"{p}: directory has no config.json (HF) and not exactly one .gguf file")
  suffix = p.suffix.lower()
  if suffix == ".gguf":
    return open_gguf(p)
  if suffix == ".bin":
    return open_llama2c(p)
  raise ValueError(f"{p}: unrecognized checkpoint format (expected an HF directory, .gguf or "
                   "llama2.c .bin)")


def load_checkpoint(path: str | os.PathLike, *, shardings: Shardings = None,
                    dtype: Any = None) -> tuple[LlamaConfig, Params]:
  """Loads any supported checkpoint (see :func:`open_checkpoint` for the paths accepted).

  Args:
    path: the checkpoint.
    shardings: None: host numpy arrays (the whole tree on the host). Otherwise the sharding of
      every leaf, and each leaf is a ``jax.Array`` built shard by shard, one source tensor on the
      host at a time (each process builds only its addressable shards): a pytree of
      ``jax.sharding.Sharding`` with the structure of ``{"params": ...}`` (or its inner dict),
      one ``Sharding`` for all leaves, or a callable ``LlamaConfig -> either`` (the config is
      only known once the checkpoint is opened), e.g.
      ``lambda cfg: sharding.param_shardings(cfg, mesh, rules)``.
    dtype: element type of every leaf (``"float32"`` default, ``"bfloat16"``, ...), rounded from
      the float32 values.
  Returns:
    ``(config, {"params": ...})``; ``config`` keeps float32 ``dtype``/``param_dtype`` whatever
    ``dtype`` is (set them with ``config.replace``).
  Raises:
    FileNotFoundError: no such path.
    ValueError: an unrecognized path, a malformed checkpoint (names the file and tensor; raised
      before any tensor is read where the metadata shows it), or shardings that do not match
      the model's parameters.
  """
  src = open_checkpoint(path)
  return src.config, src.load(shardings, dtype)
