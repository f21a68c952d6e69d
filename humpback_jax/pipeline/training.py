"""Glue between a stage and the trainer: JSONL of pairs -> seqio task -> ``train.loop.train``.

Layout of a trained model directory ``models/<name>/``::

  ckpt/     orbax CheckpointManager of the train state (resume point of an interrupted run)
  params/   the final parameters only (orbax StandardCheckpointer), read by later stages
"""

from __future__ import annotations

import os
import pathlib
import shutil

import jax
import numpy as np


def _params_dir(model_dir) -> pathlib.Path:
  return pathlib.Path(model_dir) / "params"


def fine_tune(*, model_config, base_params, tokenizer, train_file: str, direction: str,
              train_config, model_dir: str, seed: int, progress: bool = False) -> dict:
  """Fine-tunes the base LM on a JSONL of pairs and saves the final params.

  Args:
    model_config: ``LlamaConfig`` of the base LM.
    base_params: ``{"params": ...}`` of the base LM (every M_t starts from it, [HB] §2.3).
    tokenizer: the base LM's tokenizer (``humpback_jax.tokenizers``).
    train_file: JSONL of ``{"id", "instruction", "response", "tags"}``.
    direction: "forward" (M0/M1/M2) or "backward" (M_yx).
    train_config: ``train.config.TrainConfig``.
    model_dir: output directory (``ckpt/`` and ``params/`` inside).
    seed: data-order seed.
  Returns:
    The trainer's summary (steps, final_loss, tokens_per_second, seconds, data stats).
  Raises:
    ValueError: unknown direction, or what the data pipeline / trainer raise.
  """
  if direction not in ("forward", "backward"):
    raise ValueError(f"direction must be forward or backward, got {direction!r}")
  from humpback_jax import sharding
  from humpback_jax.data.tasks import make_train_iterator
  from humpback_jax.train.loop import train

  row_multiple = sharding.batch_parallel_size(sharding.make_mesh(train_config.mesh))

  def batches_fn(start_step: int):
    return make_train_iterator(
        train_file, tokenizer, sequence_length=train_config.sequence_length,
        batch_size=train_config.batch_size, seed=seed, start_step=start_step,
        row_multiple=row_multiple, kind=direction)

  model_dir = pathlib.Path(model_dir)
  params, summary = train(model_config, base_params, batches_fn, train_config,
                          str((model_dir / "ckpt").absolute()), progress=progress)
  save_params(params, _params_dir(model_dir))
  summary = {k: v for k, v in summary.items() if k != "history"}
  return summary


def save_params(params, directory) -> None:
  """Writes ``{"params": ...}`` with orbax, atomically (temp dir + rename)."""
  import orbax.checkpoint as ocp
  directory = pathlib.Path(directory).absolute()
  tmp = directory.with_name(directory.name + ".tmp")
  shutil.rmtree(tmp, ignore_errors=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(tmp, jax.tree.map(np.asarray, params))
    ckptr.wait_until_finished()
  shutil.rmtree(directory, ignore_errors=True)
  os.replace(tmp, directory)


def load_trained(model_dir, model_config, base_params):
  """(LlamaConfig, params) of a model trained by ``fine_tune``.

  Raises:
    FileNotFoundError: the model has no final params (its training stage did not finish).
  """
  import orbax.checkpoint as ocp
  directory = _params_dir(model_dir).absolute()
  if not directory.exists():
    raise FileNotFoundError(f"{directory}: no trained parameters; run its training stage")
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype),
                          base_params)
  with ocp.StandardCheckpointer() as ckptr:
    params = ckptr.restore(directory, abstract)
  return model_config, params
