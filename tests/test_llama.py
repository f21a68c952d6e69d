"""The Flax LLaMA against itself only where the reference is a brute-force recomputation:
cached decode == full forward, packed segments == separate examples, left padding invisible.
(Golden logits against transformers' PyTorch LLaMA live in test_convert.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from humpback_jax.models.config import LlamaConfig
from humpback_jax.models.llama import Llama, init_cache, init_params, param_logical_axes

CFG = LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=48, num_layers=2,
                  num_heads=4, num_kv_heads=2, rope_theta=1000.0)


@pytest.fixture(scope="module")
def params():
  return init_params(CFG, jax.random.PRNGKey(0))


def _fwd(params, toks, pos=None, seg=None, **kw):
  toks = jnp.asarray(toks)
  if pos is None:
    pos = jnp.broadcast_to(jnp.arange(toks.shape[1]), toks.shape)
  return Llama(CFG).apply(params, toks, pos, seg, **kw)[0]


def test_cached_decode_equals_full_forward(params):
  toks = np.random.RandomState(1).randint(0, 61, (3, 9))
  full = _fwd(params, toks)
  cache = init_cache(CFG, 3, 12)
  m = Llama(CFG)
  pos = np.broadcast_to(np.arange(9), (3, 9))
  out, cache = m.apply(params, toks[:, :5], pos[:, :5], cache=cache)
  outs = [out]
  for t in range(5, 9):
    out, cache = m.apply(params, toks[:, t:t + 1], pos[:, t:t + 1], cache=cache)
    outs.append(out)
  np.testing.assert_allclose(np.concatenate(outs, 1), full, atol=1e-5)
  assert int(cache["index"]) == 9


def test_packed_segments_do_not_attend_across(params):
  rs = np.random.RandomState(2)
  a, b = rs.randint(0, 61, 5), rs.randint(0, 61, 4)
  packed = np.concatenate([a, b, [0, 0]])[None]
  seg = np.array([[1] * 5 + [2] * 4 + [0, 0]])
  pos = np.array([list(range(5)) + list(range(4)) + [0, 0]])
  out = _fwd(params, packed, pos, seg)
  np.testing.assert_allclose(out[0, :5], _fwd(params, a[None])[0], atol=1e-5)
  np.testing.assert_allclose(out[0, 5:9], _fwd(params, b[None])[0], atol=1e-5)


def test_left_padding_is_invisible_and_last_logits_only(params):
  toks = np.random.RandomState(3).randint(1, 61, 6)
  padded = np.concatenate([[0, 0, 0], toks])[None]
  seg = np.array([[0, 0, 0] + [1] * 6])
  pos = np.array([[0, 0, 0] + list(range(6))])
  out = _fwd(params, padded, pos, seg)
  ref = _fwd(params, toks[None])
  np.testing.assert_allclose(out[0, 3:], ref[0], atol=1e-5)
  last = _fwd(params, padded, pos, seg, last_logits_only=True)
  assert last.shape == (1, 1, 61)
  np.testing.assert_allclose(last[0, 0], ref[0, -1], atol=1e-5)


def test_dropout_only_when_not_deterministic(params):
  toks = jnp.ones((2, 7), jnp.int32)
  pos = jnp.broadcast_to(jnp.arange(7), (2, 7))
  cfg = CFG.replace(dropout_rate=0.5)
  det = Llama(cfg).apply(params, toks, pos)[0]
  np.testing.assert_allclose(det, _fwd(params, toks), atol=1e-6)
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
