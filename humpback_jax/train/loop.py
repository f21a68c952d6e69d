"""The fine-tuning loop: shard, (resume,) step, log, checkpoint, return host parameters.

Used for every model of the pipeline: the backward model M_yx (backward task), the seed model M0
(seed forward task) and M1/M2 (seed + curated forward task), each from the base LM's weights
([HB] §2.3: every M_t starts from the base model).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from humpback_jax import sharding as shd
from humpback_jax.models.config import LlamaConfig
from humpback_jax.train.checkpoint import Checkpointer, abstract_with_shardings
from humpback_jax.train.config import TrainConfig
from humpback_jax.train.schedule import make_optimizer
from humpback_jax.train.state import TrainState, abstract_state, state_shardings
from humpback_jax.train.step import BATCH_KEYS, make_train_step

Batch = dict[str, np.ndarray]
BatchesFn = Callable[[int], Iterator[Batch]]


def _check_params(params: Any, abstract: Any) -> Any:
  """Checks ``params`` against the model's abstract parameters; casts to its dtypes."""
  got, want = jax.tree.structure(params), jax.tree.structure(abstract)
  if got != want:
    raise ValueError(f"init_params do not match the model config's parameter tree:\n"
                     f"got {got}\nwant {want}")

  def check(path, p, a):
    if tuple(p.shape) != tuple(a.shape):
      raise ValueError(f"init_params{jax.tree_util.keystr(path)} has shape {p.shape}, "
                       f"the model config needs {a.shape}")
    return p if p.dtype == a.dtype else np.asarray(p).astype(a.dtype)

  return jax.tree_util.tree_map_with_path(check, params, abstract)


def _check_batch(batch: Batch, index: int, cfg: TrainConfig, row_multiple: int) -> None:
  missing = [k for k in BATCH_KEYS if k not in batch]
  if missing:
    raise ValueError(f"batch {index} lacks {missing} (has {sorted(batch)})")
  rows, length = batch["decoder_input_tokens"].shape
  if length != cfg.sequence_length:
    raise ValueError(f"batch {index} has sequence length {length}, TrainConfig.sequence_length "
                     f"is {cfg.sequence_length}")
  if rows % row_multiple:
    raise ValueError(f"batch {index} has {rows} rows, not divisible by the mesh's data*fsdp "
                     f"= {row_multiple}; build the iterator with row_multiple={row_multiple}")


@functools.lru_cache(maxsize=8)
def _compiled(model_config: LlamaConfig, train_config: TrainConfig, mesh: Mesh,
              rules: tuple) -> tuple[Any, TrainState, TrainState, Any]:
  """(optimizer, abstract state, state shardings, jitted step), cached so that rerunning or
  resuming a run in the same process (or training M1 then M2 with one config) compiles once."""
  optimizer = make_optimizer(train_config)
  abstract = abstract_state(model_config, optimizer)
  shardings = state_shardings(model_config, abstract, mesh, rules)
  step_fn = make_train_step(model_config, train_config, optimizer, mesh, shardings, rules)
  return optimizer, abstract, shardings, step_fn


def train(model_config: LlamaConfig, init_params: Any, batches_fn: BatchesFn,
          train_config: TrainConfig, ckpt_dir: str | os.PathLike | None, *,
          progress: bool = False, devices: Any = None,
          rules: shd.LogicalRules = shd.DEFAULT_LOGICAL_AXIS_RULES
          ) -> tuple[Any, dict]:
  """Fine-tunes ``init_params`` for ``train_config.num_steps`` steps, resuming if possible.

  Args:
    model_config: the model's architecture (its ``dropout_rate`` is replaced by the config's).
    init_params: ``{"params": ...}`` starting weights (host numpy or jax arrays; not modified
      or donated), e.g. the base LM converted by ``models/convert.py``.
    batches_fn: ``batches_fn(start_step)`` returns an iterator over training batches starting
      at batch index ``start_step`` (the data already consumed by the restored checkpoint is
      skipped deterministically); each batch maps ``BATCH_KEYS`` to int32 [rows,
      sequence_length] numpy arrays (``data.tasks.make_train_iterator``). It must yield at
      least ``num_steps - start_step`` batches. If the iterator has a ``stats`` dict attribute
      it is copied into the summary.
    train_config: hyper-parameters, mesh and checkpoint cadence.
    ckpt_dir: orbax checkpoint directory; if it holds a complete checkpoint the run resumes from
      the newest one. None disables checkpointing.
    progress: show a tqdm progress bar.
    devices: devices for the mesh (default all).
    rules: logical axis rules.
  Returns:
    (params, summary): params as a host (numpy) pytree ``{"params": ...}`` usable by
    ``Llama.apply`` on any device layout; summary with ``steps`` (total), ``start_step``,
    ``steps_run``, ``final_loss`` (loss of the last step, nats/token), ``tokens`` (non-padding
    tokens this run), ``target_tokens`` (loss-weighted tokens this run), ``tokens_per_second``
    (after the first, compiling, step), ``seconds`` (wall time of this call), ``history``
    (metrics every ``log_every`` steps) and ``data`` (iterator stats, if any).
  Raises:
    ValueError: params that do not fit the config, malformed batches, or a checkpoint written
      with different hyper-parameters.
    RuntimeError: the batch iterator ends early.
  """
  t_start = time.perf_counter()
  cfg = train_config
  mesh = shd.make_mesh(cfg.mesh, devices)
  row_multiple = shd.batch_parallel_size(mesh)
  rules = tuple((name, tuple(a) if isinstance(a, list) else a) for name, a in rules)
  # Checkpoint/logging cadence does not change the step: share one compiled step across them.
  step_cfg = cfg.replace(checkpoint_every=1, keep_checkpoints=1, log_every=1)
  optimizer, abstract, shardings, step_fn = _compiled(model_config, step_cfg, mesh, rules)
  rep = shd.replicated(mesh)
  batch_shard = shd.batch_sharding(mesh, rules)
  base_key = jax.device_put(jax.random.PRNGKey(cfg.seed), rep)

  ckpt = Checkpointer(ckpt_dir, keep=cfg.keep_checkpoints) if ckpt_dir is not None else None
  history: list[dict] = []
  summary: dict[str, Any] = {}
  try:
    with jax.set_mesh(mesh):
      start = (ckpt.latest_step() if ckpt else None) or 0
      if start:
        state, meta = ckpt.restore(start, abstract_with_shardings(abstract, shardings))
        if meta.get("train_config") != cfg.math_dict():
          raise ValueError(
              f"checkpoint {ckpt.directory} step {start} was written with "
              f"{meta.get('train_config')}, this run is {cfg.math_dict()}; use another ckpt_dir")
        history = list(meta.get("history", []))
        logging.info("resuming from %s step %d", ckpt.directory, start)
      else:
        params = _check_params(init_params, abstract.params)
        # may_alias=False: the state is donated, so never alias the caller's arrays.
        params = jax.device_put(params, shardings.params, may_alias=False)
        opt_state = jax.jit(optimizer.init, out_shardings=shardings.opt_state)(params)
        state = TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), rep), params=params,
                           opt_state=opt_state)

      it = batches_fn(start) if start < cfg.num_steps else iter(())
      tokens = target_tokens = 0
      tokens_after_first = 0
      t_first = None
      metrics = None
      last_loss = meta.get("final_loss") if start else None
      bar = tqdm(total=cfg.num_steps, initial=start, disable=not progress, desc="train",
                 unit="step")
      for step in range(start, cfg.num_steps):
        try:
          batch = next(it)
        except StopIteration:
          raise RuntimeError(
              f"the batch iterator ended after {step - start} batches (from step {start}); "
              f"{cfg.num_steps - start} were needed: repeat the data (num_epochs=None)") from None
        _check_batch(batch, step, cfg, row_multiple)
        n_tok = int(np.count_nonzero(batch["decoder_segment_ids"]))
        n_tgt = int(np.sum(batch["decoder_loss_weights"]))
        device_batch = {k: jax.device_put(np.asarray(batch[k], np.int32), batch_shard)
                        for k in BATCH_KEYS}
        state, metrics = step_fn(state, device_batch, base_key)
        tokens += n_tok
        target_tokens += n_tgt
        if t_first is None:
          jax.block_until_ready(metrics)
          t_first = time.perf_counter()
        else:
          tokens_after_first += n_tok
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.num_steps:
          m = {k: float(v) for k, v in jax.device_get(metrics).items()}
          m["step"] = done
          history.append(m)
          last_loss = m["loss"]
          bar.set_postfix(loss=f"{m['loss']:.4f}", lr=f"{m['learning_rate']:.3g}")
        bar.update(1)
        if ckpt and (done % cfg.checkpoint_every == 0 or done == cfg.num_steps):
          last_loss = float(metrics["loss"])
          ckpt.save(done, state, {"train_config": cfg.math_dict(), "final_loss": last_loss,
                                  "history": history})
      bar.close()
      if metrics is not None:
        last_loss = float(metrics["loss"])
      params = jax.device_get(state.params)
      t_end = time.perf_counter()
      steps_run = cfg.num_steps - start
      timed = (t_end - t_first) if t_first is not None else 0.0
      summary = {
          "steps": cfg.num_steps,
          "start_step": start,
          "steps_run": steps_run,
          "final_loss": last_loss,
          "tokens": tokens,
          "target_tokens": target_tokens,
          "tokens_per_second": (tokens_after_first / timed) if steps_run > 1 and timed > 0
                               else (tokens / max(t_end - t_start, 1e-9)),
          "seconds": t_end - t_start,
          "history": history,
      }
      stats = getattr(it, "stats", None)
      if isinstance(stats, dict):
        summary["data"] = dict(stats)
  finally:
    if ckpt:
      ckpt.close()
  return params, summary
