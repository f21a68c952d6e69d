"""Stochastic rounding of bfloat16 parameter updates (train/rounding.py), against brute force."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from humpback_jax.train import rounding
from humpback_jax.train.config import TrainConfig
from test_train import one_device, params0  # noqa: F401 (fixtures)


def _neighbours(x: np.ndarray):
  """The two bfloat16 values enclosing each float32 x (brute force through ml_dtypes)."""
  down = x.astype(ml_dtypes.bfloat16)
  down = np.where(down.astype(np.float32) > x, np.nextafter(down, np.array(-np.inf, down.dtype)),
                  down)
  up = np.where(down.astype(np.float32) < x, np.nextafter(down, np.array(np.inf, down.dtype)),
                down)
  return down.astype(np.float32), up.astype(np.float32)


def test_result_is_a_neighbour_and_unbiased():
  rng = np.random.default_rng(0)
  p = rng.normal(0, 0.02, 4096).astype(ml_dtypes.bfloat16).astype(np.float32)
  u = np.full_like(p, 1e-5)  # far below half a spacing of |p| ~ 0.02: nearest loses it
  x = p + u
  down, up = _neighbours(x)
  draws = np.stack([np.asarray(rounding.stochastic_round_bf16(
      jnp.asarray(x), jax.random.PRNGKey(s))).astype(np.float32) for s in range(64)])
  assert np.all((draws == down) | (draws == up))
  # E[round(x)] = x: the mean update over draws and elements matches 1e-5 within 5 sigma
  moved = draws - p
  per_draw = moved.mean(axis=1)
  sigma = np.sqrt(np.mean((up - x) * (x - down))) / np.sqrt(moved.size)
  assert abs(moved.mean() - 1e-5) < 5 * sigma + 1e-9
  nearest = x.astype(ml_dtypes.bfloat16).astype(np.float32) - p
  assert np.mean(nearest != 0) < 0.3 and np.all(per_draw != 0)
  # exact bfloat16 values stay put; non-finite pass through
  exact = jnp.asarray([0.5, -2.0, np.inf, -np.inf], jnp.float32)
  out = np.asarray(rounding.stochastic_round_bf16(exact, jax.random.PRNGKey(1)), np.float32)
  np.testing.assert_array_equal(out, [0.5, -2.0, np.inf, -np.inf])


def test_apply_updates_modes():
  params = {"w": jnp.full((8, 8), 0.02, jnp.bfloat16), "f": jnp.full((3,), 1.0, jnp.float32)}
  updates = {"w": jnp.full((8, 8), 1e-5, jnp.bfloat16), "f": jnp.full((3,), 1e-3, jnp.float32)}
  near = rounding.apply_updates(params, updates)
  assert np.all(np.asarray(near["w"], np.float32) == np.float32(ml_dtypes.bfloat16(0.02)))
  key = jax.random.PRNGKey(3)
  sto = rounding.apply_updates(params, updates, rounding="stochastic", key=key)
  assert sto["w"].dtype == jnp.bfloat16 and np.any(np.asarray(sto["w"]) != np.asarray(near["w"]))
  np.testing.assert_array_equal(sto["f"], near["f"])  # float32 leaves: plain addition
  again = rounding.apply_updates(params, updates, rounding="stochastic", key=key)
  np.testing.assert_array_equal(np.asarray(sto["w"]), np.asarray(again["w"]))  # keyed
  with pytest.raises(ValueError, match="key"):
    rounding.apply_updates(params, updates, rounding="stochastic")
  with pytest.raises(ValueError, match="param_rounding"):
    TrainConfig(num_steps=1, param_rounding="up")
  assert "param_rounding" not in TrainConfig(num_steps=1).math_dict()
  assert TrainConfig(num_steps=1, param_rounding="stochastic").math_dict()["param_rounding"] == "stochastic"


def test_bf16_training_step_moves_weights_only_with_stochastic_rounding(params0, one_device):
  """One AdamW step at lr 1e-5 ([HB] Table 18) on bfloat16 weights. Adam's first update is
  +-lr per weight; for |w| >= 2^-5 half a bfloat16 spacing is 2^-13 = 1.2e-4, so round-to-
  nearest never moves those weights, while stochastic rounding moves each with probability
  1e-5 / 2^-12 = 4% (expected count: 4% of them)."""
  from test_train import MESH_1, _run_steps

  old = np.asarray(params0["params"]["layers"]["mlp"]["up_proj"]["kernel"]).astype(
      ml_dtypes.bfloat16).astype(np.float32)
  big = np.abs(old) >= 2.0 ** -5

  def moved(rounding_mode):
    state, _ = _run_steps(params0, MESH_1, one_device, n=1, dtype="bfloat16",
                          learning_rate=1e-5, end_learning_rate=1e-5, warmup_steps=0,
                          weight_decay=0.0, dropout_rate=0.0, param_rounding=rounding_mode)
    new = np.asarray(state.params["params"]["layers"]["mlp"]["up_proj"]["kernel"], np.float32)
    return int(np.sum(new[big] != old[big]))

  expected = 0.04 * big.sum()
  assert big.sum() > 200
  assert moved("nearest") == 0
  assert 0.4 * expected < moved("stochastic") < 2.0 * expected
