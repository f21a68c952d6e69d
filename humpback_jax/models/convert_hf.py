"""HF ``LlamaForCausalLM`` checkpoints: ``config.json`` <-> :class:`LlamaConfig`, safetensors in
(lazily, one tensor at a time) and out.

Reading parses each ``*.safetensors`` header itself (8-byte little-endian header length, JSON
header, raw little-endian data), so F32/F16/BF16/F64 tensors are read without torch, a tensor at
a time, straight from the file (bfloat16 widened to float32 exactly). Nothing here imports torch
or transformers.
"""

from __future__ import annotations

import functools
import json
import math
import os
import pathlib
import struct
from typing import Any, Mapping

import numpy as np

from humpback_jax.models.config import LlamaConfig
from humpback_jax.models.convert_tree import CheckpointSource, Params, Shardings

# ----------------------------------------------------------------------------------------------
# Config helpers.


def _rope_theta_from_hf(d: Mapping[str, Any]) -> float:
  """RoPE base from a config dict (transformers 4.x ``rope_theta`` or 5.x ``rope_parameters``)."""
  params = d.get("rope_parameters")
  if isinstance(params, Mapping) and "rope_theta" in params:
    return float(params["rope_theta"])
  return float(d.get("rope_theta", 10000.0))


def config_from_hf_dict(d: Mapping[str, Any]) -> LlamaConfig:
  """Builds a :class:`LlamaConfig` from an HF ``config.json`` dict.

  Args:
    d: the parsed ``config.json`` of a ``LlamaForCausalLM`` (transformers 4.x or 5.x spelling).
  Returns:
    The config (dtype/param_dtype left at float32).
  Raises:
    ValueError: not a LLaMA config, or a feature the model lacks (biases, rope scaling, an
      activation other than SiLU, missing required keys).
  """
  model_type = d.get("model_type")
  archs = d.get("architectures") or []
  if model_type != "llama" and "LlamaForCausalLM" not in archs:
    raise ValueError(f"unsupported architecture: model_type={model_type!r}, architectures={archs}")
  if d.get("attention_bias") or d.get("mlp_bias"):
    raise ValueError("attention/MLP biases are not supported")
  act = d.get("hidden_act", "silu")
  if act not in ("silu", "swish"):
    raise ValueError(f"unsupported hidden_act {act!r} (only silu)")
  scaling = d.get("rope_scaling")
  params = d.get("rope_parameters")
  rope_type = None
  if isinstance(scaling, Mapping):
    rope_type = scaling.get("rope_type", scaling.get("type"))
  if isinstance(params, Mapping):
    rope_type = params.get("rope_type", rope_type)
  if rope_type not in (None, "default"):
    raise ValueError(f"unsupported RoPE scaling {rope_type!r} (only the default RoPE)")
  try:
    num_heads = int(d["num_attention_heads"])
    return LlamaConfig(
        vocab_size=int(d["vocab_size"]),
        hidden_size=int(d["hidden_size"]),
        intermediate_size=int(d["intermediate_size"]),
        num_layers=int(d["num_hidden_layers"]),
        num_heads=num_heads,
        num_kv_heads=int(d.get("num_key_value_heads") or num_heads),
        head_dim=int(d["head_dim"]) if d.get("head_dim") else None,
        rope_theta=_rope_theta_from_hf(d),
        rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        max_seq_len=int(d.get("max_position_embeddings", 2048)),
    )
  except KeyError as e:
    raise ValueError(f"config is missing required key {e.args[0]!r}") from None


def config_to_hf_dict(cfg: LlamaConfig, bos_id: int | None = None, eos_id: int | None = None,
                      pad_id: int | None = None) -> dict:
  """An HF ``config.json`` dict (``LlamaForCausalLM``, float32) for ``cfg``.

  Both spellings of the RoPE base are written (``rope_theta`` for transformers 4.x,
  ``rope_parameters`` for 5.x). Token ids are included when given.
  """
  d = {
      "architectures": ["LlamaForCausalLM"],
      "model_type": "llama",
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.hidden_size,
      "intermediate_size": cfg.intermediate_size,
      "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.head_dim,
      "hidden_act": "silu",
      "max_position_embeddings": cfg.max_seq_len,
      "rms_norm_eps": cfg.rms_norm_eps,
      "rope_theta": cfg.rope_theta,
      "rope_parameters": {"rope_theta": cfg.rope_theta, "rope_type": "default"},
      "rope_scaling": None,
      "attention_bias": False,
      "attention_dropout": 0.0,
      "mlp_bias": False,
      "tie_word_embeddings": cfg.tie_word_embeddings,
      "torch_dtype": "float32",
      "use_cache": True,
  }
  for key, value in (("bos_token_id", bos_id), ("eos_token_id", eos_id), ("pad_token_id", pad_id)):
    if value is not None:
      d[key] = int(value)
  return d


# ----------------------------------------------------------------------------------------------
# Reading safetensors.

_HF_LAYER_KEYS = {
    "input_layernorm.weight": "input_norm",
    "post_attention_layernorm.weight": "post_attn_norm",
    "self_attn.q_proj.weight": "q",
    "self_attn.k_proj.weight": "k",
    "self_attn.v_proj.weight": "v",
    "self_attn.o_proj.weight": "o",
    "mlp.gate_proj.weight": "gate",
    "mlp.up_proj.weight": "up",
    "mlp.down_proj.weight": "down",
}
_HF_GLOBAL_KEYS = {"model.embed_tokens.weight": "embed", "model.norm.weight": "final_norm",
                   "lm_head.weight": "lm_head"}
# safetensors dtype -> numpy dtype of the stored bytes (BF16 read as uint16 and widened).
_ST_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2"}


class SafetensorsFile:
  """The header of one ``.safetensors`` file; :meth:`read` reads one tensor as float32.

  Args:
    path: the file.
  Raises:
    ValueError: not a safetensors file (bad header length, header not JSON, entries out of the
      file), naming the file.
  """

  def __init__(self, path: pathlib.Path):
    self.path = path
    size = path.stat().st_size
    try:
      with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
          raise ValueError(f"{size} bytes, shorter than the header length field")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
          raise ValueError(f"header length {n} exceeds the file size {size}")
        header = json.loads(f.read(n))
      if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
      self._data_start = 8 + n
      self.tensors: dict[str, dict] = {}
      for name, info in header.items():
        if name == "__metadata__":
          continue
        start, end = (int(x) for x in info["data_offsets"])
        if not 0 <= start <= end <= size - self._data_start:
          raise ValueError(f"tensor {name} has data offsets {[start, end]} outside the file")
        self.tensors[name] = {"dtype": str(info["dtype"]),
                              "shape": tuple(int(s) for s in info["shape"]),
                              "start": start, "end": end}
    except (ValueError, KeyError, TypeError) as e:  # JSONDecodeError, UnicodeDecodeError too
      raise ValueError(f"{path}: cannot read safetensors file: {e!r}") from e

  def shape(self, name: str) -> tuple[int, ...]:
    """The stored shape of tensor ``name``, after checking its dtype and byte length.

    Raises:
      ValueError: a dtype other than F32/F16/BF16/F64, or a byte length that does not match the
        shape (names the file and tensor).
    """
    info = self.tensors[name]
    dtype = _ST_DTYPES.get(info["dtype"])
    if dtype is None:
      raise ValueError(f"{self.path}: tensor {name} has unsupported dtype {info['dtype']}")
    nbytes = math.prod(info["shape"]) * np.dtype(dtype).itemsize
    if info["end"] - info["start"] != nbytes:
      raise ValueError(f"{self.path}: tensor {name} has {info['end'] - info['start']} bytes, "
                       f"expected {nbytes} for {info['dtype']} {list(info['shape'])}")
    return info["shape"]

  def read(self, name: str) -> np.ndarray:
    """Tensor ``name`` as a new float32 array of its stored shape (bf16/f16 widened exactly).

    Host memory: the float32 result, plus the stored bytes while widening.
    """
    info = self.tensors[name]
    self.shape(name)
    dtype = np.dtype(_ST_DTYPES[info["dtype"]])
    count = math.prod(info["shape"])
    with open(self.path, "rb") as f:
      f.seek(self._data_start + info["start"])
      raw = np.fromfile(f, dtype=dtype, count=count)
    if raw.size != count:
      raise ValueError(f"{self.path}: tensor {name} is truncated ({raw.size} of {count} values)")
    if info["dtype"] == "BF16":
      wide = raw.astype(np.uint32)
      del raw
      wide <<= 16
      arr = wide.view(np.float32)
    elif dtype == np.float32:
      arr = raw
    else:
      arr = raw.astype(np.float32)
    return arr.reshape(info["shape"])


def _hf_files(root: pathlib.Path) -> list[pathlib.Path]:
  index = root / "model.safetensors.index.json"
  if index.is_file():
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    files = [root / s for s in shards]
  elif (root / "model.safetensors").is_file():
    files = [root / "model.safetensors"]
  else:
    files = sorted(root.glob("*.safetensors"))
  if not files:
    raise ValueError(f"{root}: no *.safetensors weights (PyTorch .bin weights are not supported)")
  for file in files:
    if not file.is_file():
      raise ValueError(f"{root}: shard {file.name} listed in the index is missing")
  return files


def open_hf(path: str | os.PathLike) -> CheckpointSource:
  """Describes an HF ``LlamaForCausalLM`` directory lazily (reads headers, no tensor data).

  Args:
    path: directory holding ``config.json`` and ``model.safetensors`` or a sharded
      ``model.safetensors.index.json`` (any ``*.safetensors`` files are read otherwise).
  Returns:
    A validated :class:`CheckpointSource` (``.config``; ``.load(shardings=, dtype=)``).
  Raises:
    FileNotFoundError: no such directory.
    ValueError: missing ``config.json`` / weights / a tensor, a wrong shape or dtype, an
      unreadable safetensors file, an unsupported config (messages name the file and tensor).
  """
  root = pathlib.Path(path)
  if not root.is_dir():
    raise FileNotFoundError(f"{root}: not a directory")
  config_path = root / "config.json"
  if not config_path.is_file():
    raise ValueError(f"{root}: no config.json")
  try:
    cfg = config_from_hf_dict(json.loads(config_path.read_text()))
  except (ValueError, json.JSONDecodeError) as e:
    raise ValueError(f"{config_path}: {e}") from e

  src = CheckpointSource(cfg, str(root))
  for file in _hf_files(root):
    st = SafetensorsFile(file)
    for name in st.tensors:
      label = f"{file.name}:{name}"
      if name in _HF_GLOBAL_KEYS:
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
          continue
        src.add(_HF_GLOBAL_KEYS[name], functools.partial(st.read, name), st.shape(name),
                tensor=label)
      elif name.startswith("model.layers."):
        idx, _, rest = name[len("model.layers."):].partition(".")
        if rest in _HF_LAYER_KEYS:
          if not idx.isdigit():
            raise ValueError(f"{root}: tensor {label} has no layer index")
          src.add(_HF_LAYER_KEYS[rest], functools.partial(st.read, name), st.shape(name),
                  int(idx), tensor=label)
        # Anything else (e.g. rotary_emb.inv_freq buffers) carries no parameters we need.
  src.validate()
  return src


def load_hf(path: str | os.PathLike, *, shardings: Shardings = None,
            dtype: Any = None) -> tuple[LlamaConfig, Params]:
  """Loads an HF ``LlamaForCausalLM`` directory (see :func:`open_hf`).

  Args:
    path: the directory.
    shardings, dtype: as :meth:`CheckpointSource.load` (None: host float32 numpy arrays).
  Returns:
    ``(config, {"params": ...})``.
  Raises:
    FileNotFoundError, ValueError: as :func:`open_hf`.
  """
  src = open_hf(path)
  return src.config, src.load(shardings, dtype)


# ----------------------------------------------------------------------------------------------
# Writing.


def params_to_hf_state_dict(cfg: LlamaConfig, params: Mapping) -> dict[str, np.ndarray]:
  """HF ``LlamaForCausalLM`` state dict (float32 numpy, (out, in) weights) from our tree.

  Args:
    cfg: the model config.
    params: ``{"params": ...}`` or the inner dict; jax or numpy arrays.
  Returns:
    ``{"model.embed_tokens.weight": ..., ...}``; ``lm_head.weight`` only when untied.
  """
  p = params.get("params", params)
  L, d, h, kv, dh = cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  a = lambda x: np.asarray(x, dtype=np.float32)
  lay = p["layers"]
  q = a(lay["attn"]["q_proj"]["kernel"]).reshape(L, d, h * dh)
  k = a(lay["attn"]["k_proj"]["kernel"]).reshape(L, d, kv * dh)
  v = a(lay["attn"]["v_proj"]["kernel"]).reshape(L, d, kv * dh)
  o = a(lay["attn"]["o_proj"]["kernel"]).reshape(L, h * dh, d)
  gate = a(lay["mlp"]["gate_proj"]["kernel"])
  up = a(lay["mlp"]["up_proj"]["kernel"])
  down = a(lay["mlp"]["down_proj"]["kernel"])
  in_norm = a(lay["input_norm"]["scale"])
  post_norm = a(lay["post_attn_norm"]["scale"])
  c = np.ascontiguousarray
  sd = {"model.embed_tokens.weight": c(a(p["embed_tokens"]["embedding"])),
        "model.norm.weight": c(a(p["final_norm"]["scale"]))}
  for i in range(L):
    pre = f"model.layers.{i}."
    sd[pre + "input_layernorm.weight"] = c(in_norm[i])
    sd[pre + "post_attention_layernorm.weight"] = c(post_norm[i])
    sd[pre + "self_attn.q_proj.weight"] = c(q[i].T)
    sd[pre + "self_attn.k_proj.weight"] = c(k[i].T)
    sd[pre + "self_attn.v_proj.weight"] = c(v[i].T)
    sd[pre + "self_attn.o_proj.weight"] = c(o[i].T)
    sd[pre + "mlp.gate_proj.weight"] = c(gate[i].T)
    sd[pre + "mlp.up_proj.weight"] = c(up[i].T)
    sd[pre + "mlp.down_proj.weight"] = c(down[i].T)
  if not cfg.tie_word_embeddings:
    sd["lm_head.weight"] = c(a(p["lm_head"]["kernel"]).T)
  return sd


def save_hf(config: LlamaConfig, params: Mapping, out_dir: str | os.PathLike,
            tokenizer: Any = None) -> pathlib.Path:
  """Writes an HF ``LlamaForCausalLM`` directory (float32).

  Writes ``config.json`` and ``model.safetensors`` (numpy API, ``format=pt`` metadata) and, when
  ``tokenizer`` is given, its bos/eos/pad ids into the config and its files via
  ``tokenizer.save(out_dir)`` (for tokenizers that can save themselves).

  Args:
    config: the model config.
    params: ``{"params": ...}`` (jax or numpy arrays, any float dtype).
    out_dir: created if missing; existing files of the same names are overwritten.
    tokenizer: optional ``humpback_jax.tokenizers.Tokenizer``.
  Returns:
    ``out_dir`` as a path.
  """
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  ids = {}
  if tokenizer is not None:
    ids = {f"{k}_id": getattr(tokenizer, f"{k}_id", None) for k in ("bos", "eos", "pad")}
  (out / "config.json").write_text(json.dumps(config_to_hf_dict(config, **ids), indent=2) + "\n")
  if ids.get("eos_id") is not None:
    gen = {"bos_token_id": ids["bos_id"], "eos_token_id": ids["eos_id"],
           "pad_token_id": ids["pad_id"]}
    (out / "generation_config.json").write_text(
        json.dumps({k: v for k, v in gen.items() if v is not None}, indent=2) + "\n")
  save_file(params_to_hf_state_dict(config, params), str(out / "model.safetensors"),
            metadata={"format": "pt"})
  if tokenizer is not None and callable(getattr(tokenizer, "save", None)):
    tokenizer.save(out)
  return out
