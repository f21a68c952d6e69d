"""The jitted, sharded training step."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from humpback_jax import sharding as shd
from humpback_jax.models.config import LlamaConfig
from humpback_jax.models.llama import Llama
from humpback_jax.train.config import TrainConfig
from humpback_jax.train.loss import weighted_cross_entropy
from humpback_jax.train.rounding import apply_updates
from humpback_jax.train.schedule import learning_rate_schedule
from humpback_jax.train.state import TrainState

# Keys of a training batch (seqio / T5X decoder schema), each int32 [rows, sequence_length].
BATCH_KEYS = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
              "decoder_segment_ids", "decoder_positions")

TrainStep = Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]
EvalStep = Callable[[dict, dict], dict]


def _all_finite(tree) -> jax.Array:
  """bool scalar: every element of every leaf of ``tree`` is finite."""
  return jax.tree.reduce(jnp.logical_and,
                         jax.tree.map(lambda x: jnp.all(jnp.isfinite(x)), tree),
                         jnp.array(True))


_ROUNDING_STREAM = 0x7FFF_FFFF  # fold_in data of the rounding key; dropout uses 0..micro-1


def train_step_fn(model_config: LlamaConfig, train_config: TrainConfig,
                  optimizer: optax.GradientTransformation,
                  sharding: shd.ActivationSharding | None = None) -> TrainStep:
  """The un-jitted step ``(state, batch, rng) -> (new state, metrics)``.

  With ``train_config.micro_batches = A > 1`` the batch's rows are processed A micro-batches
  at a time (gradient accumulation; rows must divide by A x data x fsdp) and the update is
  the same as one pass over all rows; micro-batch i draws its dropout masks from
  ``fold_in(fold_in(rng, step), i)``.

  ``sharding`` constrains the model's activations (residual stream, attention, MLP, logits) to
  their logical shardings on the mesh (``models/llama.py``); None leaves them to XLA.

  The model runs with ``train_config``'s ``remat_policy``, ``attention_impl``,
  ``attention_chunk_size`` and ``scan_layers`` (``TrainConfig.apply``).

  Dropout is on (``train_config.dropout_rate``, ``deterministic=False``). ``rng`` is the run's
  base dropout key (the loop passes ``PRNGKey(train_config.seed)`` at every step); the step
  draws its masks from ``jax.random.fold_in(rng, state.step)``, so every step has its own masks
  and a run resumed from a checkpoint (which restores ``state.step``) draws the same ones as an
  uninterrupted run.

  Metrics (f32 scalars unless said): ``loss``, ``loss_sum``, ``num_tokens``, ``accuracy`` (see
  ``loss.py``), ``grad_norm`` (before clipping), ``learning_rate`` (the rate this update used)
  and ``finite`` (bool: loss, grad_norm and every updated parameter are finite; the loop stops
  on False and never checkpoints such a state).
  """
  model = Llama(train_config.apply(model_config).replace(dropout_rate=train_config.dropout_rate),
                deterministic=False, sharding=sharding)
  schedule = learning_rate_schedule(train_config)

  micro = train_config.micro_batches

  def loss_fn(params, batch, rng):
    logits, _ = model.apply(params, batch["decoder_input_tokens"], batch["decoder_positions"],
                            batch["decoder_segment_ids"], rngs={"dropout": rng})
    return weighted_cross_entropy(logits, batch["decoder_target_tokens"],
                                  batch["decoder_loss_weights"])

  def sum_fn(params, batch, rng):  # the micro-batch's summed token loss (normalised later)
    _, m = loss_fn(params, batch, rng)
    return m["loss_sum"], m

  def accumulated(params, batch, step_rng):
    """Gradient of the mean token loss of the whole batch, ``micro`` rows at a time: the sum
    of the micro-batches' gradients of their summed token losses over the global count of
    target tokens (exactly the full batch's gradient). Micro-batch i takes rows i, i + micro,
    ..., so each device's rows feed every micro-batch."""
    def split(x):
      rows = x.shape[0]
      x = x.reshape(rows // micro, micro, *x.shape[1:]).swapaxes(0, 1)
      return x if sharding is None else sharding.constrain(
          x, (None, "activation_batch") + (None,) * (x.ndim - 2))

    def body(carry, xs):
      grads, sums = carry
      i, mb = xs
      g, m = jax.grad(sum_fn, has_aux=True)(params, mb, jax.random.fold_in(step_rng, i))
      grads = jax.tree.map(jnp.add, grads, g)
      sums = {k: sums[k] + m[k] * (m["num_tokens"] if k == "accuracy" else 1.0) for k in sums}
      return (grads, sums), None

    acc = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.promote_types(p.dtype, jnp.float32)),
                       params)
    zero = jnp.zeros((), jnp.promote_types(model_config.compute_dtype, jnp.float32))
    sums = {"loss_sum": zero, "num_tokens": zero, "accuracy": zero}
    (grads, sums), _ = jax.lax.scan(
        body, (acc, sums), (jnp.arange(micro), jax.tree.map(split, batch)))
    denom = jnp.maximum(sums["num_tokens"], 1.0)
    grads = jax.tree.map(lambda g, p: (g / denom).astype(p.dtype), grads, params)
    metrics = {"loss": sums["loss_sum"] / denom, "loss_sum": sums["loss_sum"],
               "num_tokens": sums["num_tokens"], "accuracy": sums["accuracy"] / denom}
    return grads, metrics

  def step(state: TrainState, batch: dict, rng: jax.Array):
    step_rng = jax.random.fold_in(rng, state.step)
    if micro == 1:
      (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch,
                                                                       step_rng)
    else:
      grads, metrics = accumulated(state.params, batch, step_rng)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    # Stochastic rounding (bfloat16 params) draws from its own key of (seed, step).
    params = apply_updates(state.params, updates, rounding=train_config.param_rounding,
                           key=jax.random.fold_in(step_rng, _ROUNDING_STREAM))
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm) & _all_finite(params)
    metrics = dict(metrics, grad_norm=grad_norm, learning_rate=schedule(state.step),
                   finite=finite)
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
    int32 [rows, T] arrays with rows divisible by ``data * fsdp``; ``rng`` is the run's base
    dropout key (the same at every step; the step folds in ``state.step``); metrics are
    replicated f32 scalars, except ``finite`` (bool).
  """
  rep = shd.replicated(mesh)
  batch_shard = {k: shd.batch_sharding(mesh, rules) for k in BATCH_KEYS}
  sharding = shd.ActivationSharding(mesh, tuple(rules))
  return jax.jit(train_step_fn(model_config, train_config, optimizer, sharding),
                 in_shardings=(state_shardings, batch_shard, rep),
                 out_shardings=(state_shardings, rep),
                 donate_argnums=0)


def eval_step_fn(model_config: LlamaConfig,
                 sharding: shd.ActivationSharding | None = None,
                 train_config: TrainConfig | None = None) -> EvalStep:
  """The un-jitted evaluation step ``(params, batch) -> sums`` (dropout off).

  With ``train_config`` the model runs with its attention kernel, chunk, layer scan and remat
  policy (``TrainConfig.apply``), as the train step does; without, as ``model_config`` says.

  Returns:
    f32 scalars ``loss_sum`` (sum of weighted token cross-entropies, nats), ``num_tokens`` (sum
    of loss weights) and ``correct`` (weighted argmax hits); the loop sums them over the
    held-out batches, so the evaluation loss is a token-level mean like the training loss.
  """
  if train_config is not None:
    model_config = train_config.apply(model_config)
  model = Llama(model_config.replace(dropout_rate=0.0), deterministic=True, sharding=sharding)

  def step(params, batch: dict):
    logits, _ = model.apply(params, batch["decoder_input_tokens"], batch["decoder_positions"],
                            batch["decoder_segment_ids"])
    _, m = weighted_cross_entropy(logits, batch["decoder_target_tokens"],
                                  batch["decoder_loss_weights"])
    return {"loss_sum": m["loss_sum"], "num_tokens": m["num_tokens"],
            "correct": m["accuracy"] * jnp.maximum(m["num_tokens"], 1.0)}

  return step


def make_eval_step(model_config: LlamaConfig, mesh: Mesh, param_shardings,
                   rules: shd.LogicalRules = shd.DEFAULT_LOGICAL_AXIS_RULES,
                   train_config: TrainConfig | None = None) -> EvalStep:
  """``jax.jit`` of ``eval_step_fn`` (params are not donated).

  Args:
    param_shardings: ``NamedSharding`` tree of ``{"params": ...}`` (``TrainState.params``).
    train_config: its execution settings (attention kernel, ...) apply, see ``eval_step_fn``.
  Returns:
    ``eval_step(params, batch) -> sums``; ``batch`` as for the train step; replicated outputs.
  """
  rep = shd.replicated(mesh)
  batch_shard = {k: shd.batch_sharding(mesh, rules) for k in BATCH_KEYS}
  sharding = shd.ActivationSharding(mesh, tuple(rules))
  return jax.jit(eval_step_fn(model_config, sharding, train_config),
                 in_shardings=(param_shardings, batch_shard), out_shardings=rep)
