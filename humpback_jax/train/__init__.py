"""Supervised fine-tuning: config, schedule, loss, sharded step, orbax checkpoints, loop."""

from humpback_jax.train.config import TrainConfig, paper_batch_size
from humpback_jax.train.loop import train

__all__ = ["TrainConfig", "paper_batch_size", "train"]
