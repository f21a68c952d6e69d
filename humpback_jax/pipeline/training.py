"""Glue between a stage and the trainer: JSONL of pairs -> seqio task -> ``train.loop.train``.

Layout of a trained model directory ``models/<name>/``::

  ckpt/     orbax CheckpointManager of the train state (resume point of an interrupted run)
  params/   the final parameters only (orbax StandardCheckpointer), read by later stages, with
            ``humpback_fingerprint.json``: the inputs they were trained from

Reuse. A run's *fingerprint* (``training_fingerprint``) is the sha256 of the training file, the
base model's identity (``base_model_id``) and ``LlamaConfig``, the direction, the data seed, the
tokenizer's ids and chat template, and ``TrainConfig.math_dict()`` (which holds the sequence
length, the dropout seed and ``eval_examples``). It is recorded in every checkpoint's meta and
inside ``params/`` (written into the temporary directory before the atomic rename, so params
never exist without it). ``fine_tune`` resumes or reuses only what was produced from the same
fingerprint; otherwise, by default, it raises ``InputsChangedError`` naming the changed inputs
(``on_mismatch="restart"`` deletes ``params/`` and the checkpoint steps and trains afresh).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import jax
import numpy as np
from etils import epath

from humpback_jax import fs

from humpback_jax.train.fingerprint import (InputsChangedError, check_on_mismatch,
                                            describe_changes, file_sha256, normalize)

FINGERPRINT_FILE = "humpback_fingerprint.json"


def _params_dir(model_dir) -> epath.Path:
  return fs.path(model_dir) / "params"


def _tokenizer_id(tokenizer) -> dict:
  """What of the tokenizer shapes the training rows (ids and chat template), JSON-able."""
  template = getattr(tokenizer, "chat_template", None)
  return {
      "vocab_size": int(tokenizer.vocab_size),
      "bos_id": getattr(tokenizer, "bos_id", None),
      "eos_id": getattr(tokenizer, "eos_id", None),
      "add_bos": bool(getattr(tokenizer, "add_bos", False)),
      "chat_template_sha256": (hashlib.sha256(template.encode()).hexdigest()
                               if isinstance(template, str) else None),
  }


def training_fingerprint(*, model_config, tokenizer, train_file: str, direction: str,
                         train_config, seed: int, base_model_id: str | None) -> dict:
  """The JSON-able inputs that determine ``fine_tune``'s result (see the module docstring).

  Reads ``train_file`` once (sha256); never reads parameters.

  Returns:
    ``{"train_config": math_dict, "train_data_sha256": hex, "base_model_id": str | None,
    "model_config": dict, "direction": str, "data_seed": int, "tokenizer": dict}``.
  Raises:
    FileNotFoundError: ``train_file`` does not exist.
  """
  cfg_dict = model_config.to_dict() if hasattr(model_config, "to_dict") else repr(model_config)
  return normalize({
      "train_config": train_config.math_dict(),
      "train_data_sha256": file_sha256(train_file),
      "base_model_id": base_model_id,
      "model_config": cfg_dict,
      "direction": direction,
      "data_seed": int(seed),
      "tokenizer": _tokenizer_id(tokenizer),
  })


def read_params_fingerprint(model_dir) -> dict | None:
  """The fingerprint recorded in ``model_dir/params``, or None if absent or unreadable."""
  path = _params_dir(model_dir) / FINGERPRINT_FILE
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def fine_tune(*, model_config, base_params, tokenizer, train_file: str, direction: str,
              train_config, model_dir: str, seed: int, progress: bool = False,
              base_model_id: str | None = None, on_mismatch: str = "error",
              summary_dir: str | None = None, runtime=None) -> dict:
  """Fine-tunes the base LM on a JSONL of pairs and saves the final params.

  Args:
    model_config: ``LlamaConfig`` of the base LM.
    base_params: ``{"params": ...}`` of the base LM (every M_t starts from it, [HB] §2.3).
    tokenizer: the base LM's tokenizer (``humpback_jax.tokenizers``).
    train_file: JSONL of ``{"id", "instruction", "response", "tags"}``. With
      ``train_config.eval_examples = k > 0``, k of its examples are held out of training and
      evaluated every ``train_config.eval_every`` steps (``data.iterator.make_train_iterator``).
    direction: "forward" (M0/M1/M2), or "backward" / "backward_llama2" (M_yx, with the
      backward template of ``data.tasks.BACKWARD_KINDS``).
    train_config: ``train.config.TrainConfig``.
    model_dir: output directory (``ckpt/`` and ``params/`` inside).
    seed: data-order (and held-out split) seed.
    progress: show a progress bar.
    base_model_id: identity of the base model's weights, e.g. its checkpoint spec or path
      (recorded in the fingerprint with ``model_config``; parameters are not hashed, so a
      different checkpoint with the same config is only detected through this). None records
      None.
    on_mismatch: ``"error"`` (default): a checkpoint or final params in ``model_dir`` produced
      from other inputs raise ``InputsChangedError``; ``"restart"``: they are deleted and the
      model is trained from the base weights.
    summary_dir: TensorBoard directory of this run's scalars (``train.loop.train``).
    runtime: the run's ``runtime.Runtime`` (its mesh and rules); None builds a mesh from
      ``train_config.mesh`` over every device.
  Once the params are saved, the optimizer-state checkpoints in ``model_dir/ckpt`` are deleted
  (``TrainConfig.keep_train_state`` keeps them). Params already trained from the same inputs
  are reused as they are (summary ``reused_params: True``, ``steps_run: 0``).

  Returns:
    The trainer's summary without ``history`` (steps, final_loss, final_eval_loss,
    tokens_per_second, seconds, data stats) plus ``train_data_sha256``.
  Raises:
    ValueError: unknown direction or ``on_mismatch``, ``eval_every > 0`` with
      ``eval_examples == 0``, or what the data pipeline / trainer raise.
    InputsChangedError (a ValueError): see ``on_mismatch``; the message names what changed,
      e.g. "training data changed: sha256 3a7bd3e2360a… -> 9f86d081884c…".
    NonFiniteLossError (a RuntimeError): the loss diverged (``train.loop.train``).
  """
  from humpback_jax.data.tasks import KINDS
  if direction not in KINDS:
    raise ValueError(f"direction must be one of {KINDS}, got {direction!r}")
  check_on_mismatch(on_mismatch)
  if train_config.eval_every and not train_config.eval_examples:
    raise ValueError(f"eval_every={train_config.eval_every} needs held-out examples: set "
                     f"TrainConfig.eval_examples > 0")
  from humpback_jax.data.iterator import make_train_iterator
  from humpback_jax.train.loop import train

  model_dir = fs.path(model_dir)  # local or gs://
  params_dir = _params_dir(model_dir)
  fingerprint = training_fingerprint(
      model_config=model_config, tokenizer=tokenizer, train_file=train_file,
      direction=direction, train_config=train_config, seed=seed, base_model_id=base_model_id)
  if params_dir.exists():
    changes = describe_changes(read_params_fingerprint(model_dir), fingerprint)
    if changes and on_mismatch == "error":
      raise InputsChangedError(
          f"{params_dir} was trained from different inputs: {'; '.join(changes)}. Pass "
          f"on_mismatch='restart' to delete it (and its checkpoints) and retrain", changes)
    if changes:  # never leave stale params for later stages should the retraining fail
      from humpback_jax import hosts
      if hosts.is_writer():
        fs.rmtree(params_dir)
      hosts.sync(f"drop {params_dir}")
    else:  # already trained from these very inputs: reuse, never retrain
      _drop_train_state(model_dir, train_config)
      return {"steps": train_config.num_steps, "start_step": train_config.num_steps,
              "steps_run": 0, "reused_params": True,
              "train_data_sha256": fingerprint["train_data_sha256"]}

  if runtime is None:
    from humpback_jax.runtime import Runtime
    runtime = Runtime.create(train_config.mesh)
  row_multiple = runtime.batch_parallel_size * train_config.micro_batches

  def batches_fn(start_step: int):
    return make_train_iterator(
        train_file, tokenizer, sequence_length=train_config.sequence_length,
        batch_size=train_config.batch_size, seed=seed, start_step=start_step,
        row_multiple=row_multiple, kind=direction, holdout=train_config.eval_examples)

  loop_fp = {k: v for k, v in fingerprint.items() if k != "train_config"}
  params, summary = train(model_config, base_params, batches_fn, train_config,
                          os.fspath(model_dir / "ckpt"), progress=progress,
                          fingerprint=loop_fp, on_mismatch=on_mismatch,
                          summary_dir=summary_dir, mesh=runtime.mesh, rules=runtime.rules)
  save_params(params, params_dir, fingerprint=fingerprint)
  _drop_train_state(model_dir, train_config)
  summary = {k: v for k, v in summary.items() if k != "history"}
  summary["train_data_sha256"] = fingerprint["train_data_sha256"]
  return summary


def _drop_train_state(model_dir: epath.Path, train_config) -> None:
  """Deletes ``model_dir/ckpt`` (full train state: params + Adam moments, ~3x the params)
  once the final params are saved, unless ``TrainConfig.keep_train_state``. Process 0 only."""
  import jax
  ckpt = model_dir / "ckpt"
  if train_config.keep_train_state or not ckpt.exists() or jax.process_index() != 0:
    return
  fs.rmtree(ckpt)


def save_params(params, directory, *, fingerprint: dict[str, Any] | None = None) -> None:
  """Writes ``{"params": ...}`` with orbax, atomically (temp dir + rename).

  Args:
    params: host (numpy) or ``jax.Array`` pytree; sharded arrays are written shard by shard by
      the processes that hold them (nothing is gathered).
    directory: destination; replaced if it exists.
    fingerprint: JSON-able dict written as ``FINGERPRINT_FILE`` inside the directory before
      the rename (so the params never exist without it).
  """
  import orbax.checkpoint as ocp

  from humpback_jax import hosts
  directory = fs.path(directory)
  tmp = directory.with_name(directory.name + ".tmp")
  if hosts.is_writer():
    fs.rmtree(tmp)
  hosts.sync(f"save_params {directory} start")
  with ocp.StandardCheckpointer() as ckptr:  # collective: every process writes its shards
    ckptr.save(tmp, params)
    ckptr.wait_until_finished()
  if hosts.is_writer():
    if fingerprint is not None:
      fs.atomic_write_text(tmp / FINGERPRINT_FILE, json.dumps(normalize(fingerprint),
                                                              sort_keys=True, indent=1))
    # Locally an atomic rename; on an object store a copy whose marker (the fingerprint,
    # which readers require) is written last.
    fs.replace(tmp, directory, marker=FINGERPRINT_FILE if fingerprint is not None else None)
  hosts.sync(f"save_params {directory} done")


def read_params(directory) -> Any:
  """The parameters saved in an orbax params directory as host numpy arrays, whatever mesh
  and number of processes wrote them (shapes and dtypes from the checkpoint's metadata).

  For one process and small models (tests, tools); ``load_trained`` with ``shardings`` reads
  onto a mesh instead.
  """
  import orbax.checkpoint as ocp
  is_array = lambda x: hasattr(x, "shape") and hasattr(x, "dtype")
  with ocp.StandardCheckpointer() as ckptr:
    meta = ckptr.metadata(directory)
    meta = getattr(meta, "item_metadata", meta)
    target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), meta, is_leaf=is_array)
    params = ckptr.restore(directory, target)
  return jax.tree.map(np.asarray, params)


def load_trained(model_dir, model_config, shardings=None):
  """(LlamaConfig, params) of a model trained by ``fine_tune``.

  Args:
    model_dir: the model's directory (``params/`` inside).
    model_config: its ``LlamaConfig`` (the base model's, with the run's dtypes): the shapes and
      dtypes read.
    shardings: a ``NamedSharding`` tree of ``{"params": ...}`` (``Runtime.param_shardings``):
      every process reads only its shards, straight onto its devices (orbax reshards when the
      checkpoint was written on another mesh). None: host numpy arrays (one process, small
      models, tests).
  Returns:
    (model_config, ``{"params": ...}``).
  Raises:
    FileNotFoundError: the model has no final params (its training stage did not finish).
  """
  import orbax.checkpoint as ocp

  from humpback_jax import sharding as shd
  directory = _params_dir(model_dir)
  if not directory.exists():
    raise FileNotFoundError(f"{directory}: no trained parameters; run its training stage")
  abstract = shd.abstract_params(model_config)
  if shardings is None:
    return model_config, read_params(directory)
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)
  with ocp.StandardCheckpointer() as ckptr:
    params = ckptr.restore(directory, target)
  return model_config, params
