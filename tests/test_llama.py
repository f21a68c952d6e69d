"""The Flax LLaMA against itself only where the reference is a brute-force recomputation:
cached decode == full forward, packed segments == separate examples, left padding invisible.
(Golden logits against transformers' PyTorch LLaMA live in test_convert.py.)

Each identity is checked in float32 and, exactly up to float64 rounding, in float64
(``jax.enable_x64`` inside the test only). Tolerances are relative to the logit scale, with the
rounding bound of ``numerics.logit_tol`` (derivation there), not absolute numbers.
"""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from humpback_jax.models.config import LlamaConfig
from humpback_jax.models.llama import Llama, init_cache, init_params, param_logical_axes
from numerics import logit_tol

CFG = LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=48, num_layers=2,
                  num_heads=4, num_kv_heads=2, rope_theta=1000.0)


@pytest.fixture(scope="module")
def params():
  return init_params(CFG, jax.random.PRNGKey(0))


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
  """The compute dtype; 64-bit JAX is on for the float64 test only (it does not leak)."""
  with jax.enable_x64(True) if request.param == "float64" else contextlib.nullcontext():
    yield request.param
  assert jnp.zeros(()).dtype == jnp.float32


def assert_logits_close(got, want, dtype):
  """max |got - want| within two independent roundings (``numerics.logit_tol``)."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  tol = logit_tol(dtype, CFG.num_layers, float(np.abs(want).max()), runs=2)
  diff = np.abs(got - want).max()
  print(f"{dtype}: max |logit diff| {diff:.2e} = {diff / tol:.3f} x tol {tol:.2e}")
  assert diff <= tol, (diff, tol)


def _cfg(dtype="float32"):
  return CFG.replace(dtype=dtype, param_dtype=dtype)


def _cast(params, dtype):
  return jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), params)


def _fwd(params, toks, pos=None, seg=None, dtype="float32", **kw):
  toks = jnp.asarray(toks)
  if pos is None:
    pos = jnp.broadcast_to(jnp.arange(toks.shape[1]), toks.shape)
  out = Llama(_cfg(dtype)).apply(_cast(params, dtype), toks, pos, seg, **kw)[0]
  assert out.dtype == np.dtype(dtype)
  return out


def test_cached_decode_equals_full_forward(params, dtype):
  toks = np.random.RandomState(1).randint(0, 61, (3, 9))
  full = _fwd(params, toks, dtype=dtype)
  cache = init_cache(_cfg(dtype), 3, 12)
  m = Llama(_cfg(dtype))
  p = _cast(params, dtype)
  pos = np.broadcast_to(np.arange(9), (3, 9))
  out, cache = m.apply(p, toks[:, :5], pos[:, :5], cache=cache)
  outs = [out]
  for t in range(5, 9):
    out, cache = m.apply(p, toks[:, t:t + 1], pos[:, t:t + 1], cache=cache)
    outs.append(out)
  assert_logits_close(np.concatenate(outs, 1), full, dtype)
  assert int(cache["index"]) == 9


def test_packed_segments_do_not_attend_across(params, dtype):
  rs = np.random.RandomState(2)
  a, b = rs.randint(0, 61, 5), rs.randint(0, 61, 4)
  packed = np.concatenate([a, b, [0, 0]])[None]
  seg = np.array([[1] * 5 + [2] * 4 + [0, 0]])
  pos = np.array([list(range(5)) + list(range(4)) + [0, 0]])
  out = _fwd(params, packed, pos, seg, dtype=dtype)
  assert_logits_close(out[0, :5], _fwd(params, a[None], dtype=dtype)[0], dtype)
  assert_logits_close(out[0, 5:9], _fwd(params, b[None], dtype=dtype)[0], dtype)


def test_left_padding_is_invisible_and_last_logits_only(params, dtype):
  toks = np.random.RandomState(3).randint(1, 61, 6)
  padded = np.concatenate([[0, 0, 0], toks])[None]
  seg = np.array([[0, 0, 0] + [1] * 6])
  pos = np.array([[0, 0, 0] + list(range(6))])
  out = _fwd(params, padded, pos, seg, dtype=dtype)
  ref = _fwd(params, toks[None], dtype=dtype)
  assert_logits_close(out[0, 3:], ref[0], dtype)
  last = _fwd(params, padded, pos, seg, dtype=dtype, last_logits_only=True)
  assert last.shape == (1, 1, 61)
  assert_logits_close(last[0, 0], ref[0, -1], dtype)


def test_dropout_only_when_not_deterministic(params):
  toks = jnp.ones((2, 7), jnp.int32)
  pos = jnp.broadcast_to(jnp.arange(7), (2, 7))
  cfg = CFG.replace(dropout_rate=0.5)
  det = Llama(cfg).apply(params, toks, pos)[0]
  np.testing.assert_array_equal(det, _fwd(params, toks))  # the very same computation
  drop = Llama(cfg, deterministic=False).apply(params, toks, pos,
                                                 rngs={"dropout": jax.random.PRNGKey(1)})[0]
  assert not np.allclose(drop, det)


def test_logical_axes_named_on_every_param():
  axes = param_logical_axes(CFG)["params"]
  assert tuple(axes["embed_tokens"]["embedding"]) == ("vocab", "embed")
  assert tuple(axes["layers"]["attn"]["k_proj"]["kernel"]) == (
      "layers", "embed", "kv_heads", "head_dim")
  assert tuple(axes["layers"]["mlp"]["down_proj"]["kernel"]) == ("layers", "mlp", "embed")
  assert tuple(axes["lm_head"]["kernel"]) == ("embed", "vocab")
  for spec in jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)):
    assert all(name is not None for name in spec)


def test_bad_head_config():
  with pytest.raises(ValueError, match="num_kv_heads"):
    LlamaConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_layers=1, num_heads=3,
                num_kv_heads=2)
