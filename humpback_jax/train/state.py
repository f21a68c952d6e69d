"""Training state and its shardings (flax ``lm1b`` / EasyLM pattern: shapes from ``eval_shape``)."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from humpback_jax import sharding as shd
from humpback_jax.models.config import LlamaConfig


@flax.struct.dataclass
class TrainState:
  """Everything a training step reads and writes; a plain pytree (checkpointed as is).

  Attributes:
    step: int32 scalar, number of optimizer updates applied so far (= batches consumed).
    params: ``{"params": ...}`` model parameters (``models/llama.py`` layout).
    opt_state: optax state of ``train.schedule.make_optimizer``.
  """

  step: jax.Array
  params: Any
  opt_state: Any


def create_state(params: Any, optimizer: optax.GradientTransformation) -> TrainState:
  """A fresh state at step 0 around ``params`` (arrays or ``ShapeDtypeStruct`` under eval_shape)."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params))


def abstract_state(model_config: LlamaConfig, optimizer: optax.GradientTransformation
                   ) -> TrainState:
  """``TrainState`` of ``ShapeDtypeStruct`` for ``model_config`` (nothing allocated)."""
  return jax.eval_shape(lambda p: create_state(p, optimizer),
                        shd.abstract_params(model_config))


def state_shardings(model_config: LlamaConfig, abstract: TrainState, mesh: Mesh,
                    rules: shd.LogicalRules = shd.DEFAULT_LOGICAL_AXIS_RULES) -> TrainState:
  """``NamedSharding`` per leaf of ``abstract``.

  Parameters follow the logical rules; every optimizer-state subtree shaped like the parameters
  (Adam's mu and nu) gets the parameters' shardings; other optimizer leaves (counts) and the
  step are replicated.
  """
  p_shard = shd.param_shardings(model_config, mesh, rules)
  p_def = jax.tree.structure(abstract.params)
  rep = shd.replicated(mesh)

  def opt_leaf(x):
    return p_shard if jax.tree.structure(x) == p_def else rep

  opt_shard = jax.tree.map(opt_leaf, abstract.opt_state,
                           is_leaf=lambda x: jax.tree.structure(x) == p_def)
  return TrainState(step=rep, params=p_shard, opt_state=opt_shard)
