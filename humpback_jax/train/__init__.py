"""Supervised fine-tuning: config, schedule, loss, sharded step, orbax checkpoints, loop."""

from humpback_jax.train.config import TrainConfig, paper_batch_size
from humpback_jax.train.fingerprint import InputsChangedError
from humpback_jax.train.loop import NonFiniteLossError, train

__all__ = ["InputsChangedError", "NonFiniteLossError", "TrainConfig", "paper_batch_size",
           "train"]
