"""Learning-rate schedule and optimizer of fine-tuning ([HB] §3.1, Table 18)."""

from __future__ import annotations

import jax
import optax

from humpback_jax.train.config import TrainConfig


def learning_rate_schedule(cfg: TrainConfig) -> optax.Schedule:
  """Linear (or, ``lr_schedule="cosine"``, cosine) decay from ``learning_rate`` to
  ``end_learning_rate``, hit exactly at the last step.

  [HB] §3.1: "lr 1e-5 which linearly decays to 9e-6 at the end of training". The decay is over
  ``num_steps - 1 - warmup_steps`` transitions, so step 0 (after warm-up) uses 1e-5 and the last
  update, step ``num_steps - 1``, uses exactly 9e-6: an absolute end value, not a multiplier
  floor (the ``method.md`` §5 pitfall that decays to ~0). With ``warmup_steps > 0`` the rate
  first rises linearly from 0 (not used by default).

  Returns:
    ``step (int) -> float32 learning rate``; optax evaluates it at the update's 0-based index.
  """
  decay_steps = max(cfg.num_steps - 1 - cfg.warmup_steps, 1)
  if cfg.lr_schedule == "cosine":  # [BF] §2; alpha: the end rate as a fraction of the peak
    decay = optax.cosine_decay_schedule(
        cfg.learning_rate, decay_steps, alpha=cfg.end_learning_rate / cfg.learning_rate
        if cfg.learning_rate else 0.0)
  else:
    decay = optax.linear_schedule(cfg.learning_rate, cfg.end_learning_rate, decay_steps)
  if cfg.warmup_steps == 0:
    return decay
  warmup = optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)
  return optax.join_schedules([warmup, decay], [cfg.warmup_steps])


def decay_mask(params):
  """True for parameters that get weight decay: everything but RMSNorm ``scale`` vectors."""
  def keep(path, _):
    return not any(getattr(k, "key", None) == "scale" for k in path)
  return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
  """Global-norm clipping then AdamW with the schedule above (betas: see ``TrainConfig``)."""
  adamw = optax.adamw(learning_rate_schedule(cfg), b1=cfg.adam_b1, b2=cfg.adam_b2,
                      eps=cfg.adam_eps, weight_decay=cfg.weight_decay, mask=decay_mask)
  if cfg.grad_clip and cfg.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw)
  return adamw
