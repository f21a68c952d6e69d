"""The jitted, sharded training step."""

from __future__ import annotations

from typing import Callable

import jax
import optax
from jax.sharding import Mesh

from humpback_jax import sharding as shd
from humpback_jax.models.config import LlamaConfig
from humpback_jax.models.llama import Llama
from humpback_jax.train.config import TrainConfig
from humpback_jax.train.loss import weighted_cross_entropy
from humpback_jax.train.schedule import learning_rate_schedule
from humpback_jax.train.state import TrainState

# Keys of a training batch (seqio / T5X decoder schema), each int32 [rows, sequence_length].
BATCH_KEYS = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
              "decoder_segment_ids", "decoder_positions")

TrainStep = Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]


def train_step_fn(model_config: LlamaConfig, train_config: TrainConfig,
                  optimizer: optax.GradientTransformation) -> TrainStep:
  """The un-jitted step ``(state, batch, rng) -> (new state, metrics)``.

  Dropout is on (``train_config.dropout_rate``, ``deterministic=False``). ``rng`` is the dropout
  key of this step; the loop derives it from ``(seed, step)`` so a resumed run draws the same
  masks. Metrics: ``loss``, ``loss_sum``, ``num_tokens``, ``accuracy`` (see ``loss.py``),
  ``grad_norm`` (before clipping) and ``learning_rate`` (the rate this update used).
  """
  model = Llama(model_config.replace(dropout_rate=train_config.dropout_rate),
                deterministic=False)
  schedule = learning_rate_schedule(train_config)

  def step(state: TrainState, batch: dict, rng: jax.Array):
    def loss_fn(params):
      logits, _ = model.apply(params, batch["decoder_input_tokens"], batch["decoder_positions"],
                              batch["decoder_segment_ids"], rngs={"dropout": rng})
      return weighted_cross_entropy(logits, batch["decoder_target_tokens"],
                                    batch["decoder_loss_weights"])

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads),
                   learning_rate=schedule(state.step))
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return step


def make_train_step(model_config: LlamaConfig, train_config: TrainConfig,
                    optimizer: optax.GradientTransformation, mesh: Mesh,
                    state_shardings: TrainState,
                    rules: shd.LogicalRules = shd.DEFAULT_LOGICAL_AXIS_RULES) -> TrainStep:
  """``jax.jit`` of ``train_step_fn`` with explicit shardings, donating the old state.

  Args:
    state_shardings: ``TrainState`` of ``NamedSharding`` (``state.state_shardings``).
  Returns:
    ``train_step(state, batch, rng) -> (state, metrics)``; ``batch`` maps ``BATCH_KEYS`` to
    int32 [rows, T] arrays with rows divisible by ``data * fsdp``; metrics are replicated f32
    scalars.
  """
  rep = shd.replicated(mesh)
  batch_shard = {k: shd.batch_sharding(mesh, rules) for k in BATCH_KEYS}
  return jax.jit(train_step_fn(model_config, train_config, optimizer),
                 in_shardings=(state_shardings, batch_shard, rep),
                 out_shardings=(state_shardings, rep),
                 donate_argnums=0)
