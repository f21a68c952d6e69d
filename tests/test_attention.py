"""Attention kernels (``LlamaConfig.attention_impl``) and ``scan_layers`` against the reference.

"chunked" and ``scan_layers=False`` are checked in float64 (``jax.enable_x64`` inside the test
only) against "dot_product" / ``scan_layers=True``, so anything beyond float64 rounding fails;
"xla" (whose softmax always runs in float32) in float32. Logit tolerances are
``numerics.logit_tol``; gradients get the same bound relative to max |gradient|.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from humpback_jax.models import attention
from humpback_jax.models.config import ATTENTION_IMPLS, LlamaConfig
from humpback_jax.models.llama import Llama, init_cache, init_params
from humpback_jax.pipeline.config import BaseModelConfig, build_config
from humpback_jax.train.config import MATH_FIELDS, TrainConfig
from numerics import check_logits, logit_tol, precision

CFG = LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=48, num_layers=2,
                  num_heads=4, num_kv_heads=2, rope_theta=1000.0)  # GQA: G = 2


@pytest.fixture(scope="module")
def params():
  """Random parameters of ``init_params``' structure (numpy: no eager initialization to run):
  normal(0.02) weights, 1 + normal(0.1) norm scales."""
  rs = np.random.RandomState(0)
  shapes = jax.eval_shape(lambda: init_params(CFG, jax.random.PRNGKey(0)))
  return jax.tree_util.tree_map_with_path(
      lambda path, x: (1.0 + 0.1 * rs.randn(*x.shape) if "scale" in jax.tree_util.keystr(path)
                       else 0.02 * rs.randn(*x.shape)).astype(np.float32), shapes)


def _cfg(dtype, **kw):
  return CFG.replace(dtype=dtype, param_dtype=dtype, **kw)


def _cast(tree, dtype):
  return jax.tree.map(lambda x: jnp.asarray(x, dtype), tree)


def _packed_batch():
  """3 rows of 12: two packed examples + trailing padding; left padding; all padding."""
  rs = np.random.RandomState(0)
  seg = np.array([[1] * 5 + [2] * 4 + [0] * 3, [0] * 3 + [1] * 9, [0] * 12])
  pos = np.array([list(range(5)) + list(range(4)) + [0] * 3, [0] * 3 + list(range(9)),
                  [0] * 12])
  toks = rs.randint(1, 61, seg.shape) * (seg != 0)
  return toks, pos, seg, rs.randn(*seg.shape, 61)


def _logits_and_grads(cfg, params, toks, pos, seg, w):
  """Logits and d(sum(logits * w))/d params, every position (padding too) weighted."""
  model = Llama(cfg)

  def loss(p):
    logits = model.apply(p, toks, pos, seg)[0]
    return jnp.sum(logits * w), logits

  (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return np.asarray(logits, np.float64), jax.tree.map(lambda g: np.asarray(g, np.float64), grads)


def _check_grads(got, want, dtype, what):
  flat_got, flat_want = jax.tree.leaves(got), jax.tree.leaves(want)
  scale = max(float(np.abs(g).max()) for g in flat_want)
  tol = logit_tol(dtype, CFG.num_layers, scale, runs=2)
  diff = max(float(np.abs(a - b).max()) for a, b in zip(flat_got, flat_want))
  print(f"{what}: max |grad diff| {diff:.2e} = {diff / tol:.3f} x tol {tol:.2e}")
  assert diff <= tol, (what, diff, tol)


@pytest.fixture(scope="module")
def reference_f64(params):
  """dot_product logits and gradients of the packed batch, in float64."""
  with precision("float64"):
    toks, pos, seg, w = _packed_batch()
    return _logits_and_grads(_cfg("float64"), _cast(params, jnp.float64), toks, pos, seg, w)


@pytest.mark.parametrize("chunk", [4, 5, 16])  # divides 12; does not; longer than the rows
def test_chunked_equals_dot_product_training(params, reference_f64, chunk):
  ref_logits, ref_grads = reference_f64
  with precision("float64"):
    toks, pos, seg, w = _packed_batch()
    cfg = _cfg("float64", attention_impl="chunked", attention_chunk_size=chunk)
    logits, grads = _logits_and_grads(cfg, _cast(params, jnp.float64), toks, pos, seg, w)
  assert np.isfinite(logits).all()  # the all-padding row included
  tol = logit_tol("float64", CFG.num_layers, float(np.abs(ref_logits).max()), runs=2)
  check_logits(logits, ref_logits, tol, f"chunked({chunk}) logits")
  _check_grads(grads, ref_grads, "float64", f"chunked({chunk})")


def _prefill_and_decode(cfg, params):
  """Left-padded prompts prefilled into a 10-slot cache, then 3 decode steps: logits [2, 9, V]."""
  rs = np.random.RandomState(1)
  seg = np.array([[0, 0] + [1] * 4, [1] * 6])
  pos = np.array([[0, 0, 0, 1, 2, 3], list(range(6))])
  toks = rs.randint(1, 61, (2, 9))
  model = Llama(cfg)
  apply = jax.jit(lambda p, t, ps, s, c: model.apply(p, t, ps, s, cache=c))
  out, cache = apply(params, toks[:, :6], pos, seg, init_cache(cfg, 2, 10))
  outs = [out]
  for i in range(3):
    out, cache = apply(params, toks[:, 6 + i:7 + i], pos[:, -1:] + 1 + i,
                       np.ones((2, 1), np.int32), cache)
    outs.append(out)
  return np.concatenate([np.asarray(o, np.float64) for o in outs], axis=1)


def test_chunked_prefill_and_decode_equal_dot_product(params):
  with precision("float64"):
    want = _prefill_and_decode(_cfg("float64"), _cast(params, jnp.float64))
    # chunks of 4 over 10 cache slots: 2 full chunks + 2 slots
    cfg = _cfg("float64", attention_impl="chunked", attention_chunk_size=4)
    got = _prefill_and_decode(cfg, _cast(params, jnp.float64))
  tol = logit_tol("float64", CFG.num_layers, float(np.abs(want).max()), runs=2)
  check_logits(got, want, tol, "chunked prefill+decode")


def test_xla_equals_dot_product(params, reference_f64):
  """Against the float64 reference with float32's tolerance: jax.nn.dot_product_attention
  runs its softmax in float32 whatever the input dtype."""
  ref_logits, ref_grads = reference_f64
  with precision("float64"):
    toks, pos, seg, w = _packed_batch()
    logits, grads = _logits_and_grads(_cfg("float64", attention_impl="xla"),
                                      _cast(params, jnp.float64), toks, pos, seg, w)
  tol = logit_tol("float32", CFG.num_layers, float(np.abs(ref_logits).max()), runs=2)
  check_logits(logits, ref_logits, tol, "xla logits")
  _check_grads(grads, ref_grads, "float32", "xla")


def test_scan_layers_false_equals_true(params, reference_f64):
  ref_logits, ref_grads = reference_f64
  cfg = _cfg("float64", scan_layers=False)
  # Same stacked parameter layout (leading L axis) whether scanned or unrolled.
  shapes = lambda c: jax.tree.map(lambda x: x.shape, jax.eval_shape(
      lambda: init_params(c, jax.random.PRNGKey(0))))
  assert shapes(CFG.replace(scan_layers=False)) == shapes(CFG)
  with precision("float64"):
    toks, pos, seg, w = _packed_batch()
    p = _cast(params, jnp.float64)
    hlo = jax.jit(lambda p: Llama(cfg).apply(p, toks, pos, seg)[0]).lower(p).as_text()
    assert "while" not in hlo  # unrolled: no loop over layers
    logits, grads = _logits_and_grads(cfg, p, toks, pos, seg, w)
  tol = logit_tol("float64", CFG.num_layers, float(np.abs(ref_logits).max()), runs=2)
  check_logits(logits, ref_logits, tol, "scan_layers=False logits")
  _check_grads(grads, ref_grads, "float64", "scan_layers=False")


def test_splash_kernel_in_interpreter_equals_dot_product():
  """The TPU kernel's wiring (layout, GQA, scale, segment ids, VJP), run by the Pallas
  interpreter on CPU: equal to dot_product on every non-padding row (padding rows differ by
  design, see ``models/attention.py``)."""
  rs = np.random.RandomState(2)
  b, t, h, kv, dh = 2, 128, 4, 2, 8
  q = jnp.asarray(rs.randn(b, t, h, dh), jnp.float32)
  k, v = (jnp.asarray(rs.randn(b, t, kv, dh), jnp.float32) for _ in range(2))
  seg = jnp.asarray([[1] * 60 + [2] * 60 + [0] * 8, [0] * 28 + [1] * 100], jnp.int32)
  slots = jnp.arange(t, dtype=jnp.int32)
  spec = attention.MaskSpec.build("dot_product", seg, seg, slots, slots)
  real = np.asarray(seg != 0)[:, :, None, None]

  def run(fn):
    loss = lambda q, k, v: jnp.sum(jnp.where(real, jnp.sin(fn(q, k, v)), 0.0))
    return jax.jit(jax.value_and_grad(lambda *a: (loss(*a), fn(*a)), argnums=(0, 1, 2),
                                      has_aux=True))(q, k, v)

  (_, want), want_g = run(lambda q, k, v: attention.dot_product_attention(
      q, k, v, spec.dense, jnp.float32))
  (_, got), got_g = run(lambda q, k, v: attention.splash_attention(
      q, k, v, seg, jnp.float32, interpret=True))
  np.testing.assert_allclose(np.where(real, got, 0), np.where(real, want, 0), atol=2e-5)
  for a, b_ in zip(got_g, want_g):
    np.testing.assert_allclose(a, b_, atol=5e-5)


def test_kernels_unavailable_on_this_platform_raise(params):
  """"cudnn" off a GPU and "splash" off a TPU raise when traced, naming the platform."""
  toks = jnp.ones((1, 128), jnp.int32)
  for impl in ("cudnn", "splash"):
    if jax.default_backend() in {"cudnn": ("gpu", "cuda"), "splash": ("tpu",)}[impl]:
      continue
    with pytest.raises(ValueError, match=f"{impl}.*{jax.default_backend()}"):
      jax.eval_shape(lambda p: Llama(CFG.replace(attention_impl=impl)).apply(p, toks, toks),
                     params)


def test_splash_with_a_cache_is_chunked():
  """Documented fallback: with KV-cache keys (prefill into a cache, decode) "splash" runs
  "chunked" on every platform (splash has no decode kernel)."""
  rs = np.random.RandomState(3)
  q = jnp.asarray(rs.randn(2, 1, 4, 8), jnp.float32)
  k, v = (jnp.asarray(rs.randn(2, 10, 2, 8), jnp.float32) for _ in range(2))
  spec = attention.MaskSpec.build("splash", jnp.ones((2, 1), jnp.int32),
                                  jnp.asarray([[0, 0] + [1] * 5 + [0] * 3, [1] * 7 + [0] * 3]),
                                  jnp.asarray([6]), jnp.arange(10))
  assert spec.dense is None
  got, want = jax.jit(lambda q, k, v: [
      attention.attend(q, k, v, spec, impl, 4, jnp.float32, cached=True)
      for impl in ("splash", "chunked")])(q, k, v)
  np.testing.assert_array_equal(got, want)


def test_invalid_settings_raise():
  assert ATTENTION_IMPLS == ("dot_product", "chunked", "xla", "cudnn", "splash")
  for kw, match in (({"attention_impl": "flash"}, "attention_impl"),
                    ({"attention_chunk_size": 0}, "attention_chunk_size"),
                    ({"scan_layers": "no"}, "scan_layers")):
    with pytest.raises(ValueError, match=match):
      CFG.replace(**kw)
    with pytest.raises(ValueError, match="TrainConfig." + match):
      TrainConfig(num_steps=1, **kw)
    with pytest.raises(ValueError, match="BaseModelConfig." + match):
      BaseModelConfig(**kw)


def test_gin_binds_execution_settings():
  cfg = build_config(gin_params=[
      "TrainConfig.num_steps = 3",
      "forward/TrainConfig.attention_impl = 'chunked'",
      "forward/TrainConfig.attention_chunk_size = 256",
      "forward/TrainConfig.scan_layers = False",
      "BaseModelConfig.attention_impl = 'xla'",
      "BaseModelConfig.dtype = 'bfloat16'"])
  train = cfg.forward_train.apply(CFG)
  assert (train.attention_impl, train.attention_chunk_size, train.scan_layers) == (
      "chunked", 256, False)
  assert cfg.backward_train.attention_impl == "dot_product"
  base = cfg.base.apply(CFG)
  assert (base.attention_impl, base.dtype, base.param_dtype, base.scan_layers) == (
      "xla", "bfloat16", "float32", True)
  # Execution, not math: no resume or training fingerprint depends on them.
  assert not {"attention_impl", "attention_chunk_size", "scan_layers"} & set(MATH_FIELDS)
  assert train.to_dict() == CFG.to_dict() and "remat_policy" in CFG.to_dict()


def test_chunked_never_holds_the_score_tensor(params):
  """Compiled forward at T=2048 (1 layer): XLA's temp buffers with "chunked" (256-key chunks)
  are a fraction of "dot_product"'s, whose [B, KV, G, T, T] float32 scores are 64 MiB."""
  cfg = CFG.replace(num_layers=1)
  p = jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))
  toks = jax.ShapeDtypeStruct((1, 2048), jnp.int32)

  def temp_bytes(**kw):
    model = Llama(cfg.replace(**kw))
    compiled = jax.jit(lambda p, t: model.apply(p, t, t)[0]).lower(p, toks).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  dense = temp_bytes(attention_impl="dot_product")
  chunked = temp_bytes(attention_impl="chunked", attention_chunk_size=256)
  print(f"T=2048 forward temp bytes: dot_product {dense / 2**20:.1f} MiB, "
        f"chunked(256) {chunked / 2**20:.1f} MiB, ratio {dense / chunked:.1f}")
  assert dense >= 64 * 2**20
  assert chunked * 5 < dense
