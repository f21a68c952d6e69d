"""The fine-tuning loop: shard, (resume,) step, check, log, evaluate, checkpoint, return params.

Used for every model of the pipeline: the backward model M_yx (backward task), the seed model M0
(seed forward task) and M1/M2 (seed + curated forward task), each from the base LM's weights
([HB] §2.3: every M_t starts from the base model).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from humpback_jax import hosts
from humpback_jax import sharding as shd
from humpback_jax.models.config import LlamaConfig
from humpback_jax.train import metrics as metrics_lib
from humpback_jax.train.checkpoint import Checkpointer, abstract_with_shardings
from humpback_jax.train.config import TrainConfig
from humpback_jax.train.fingerprint import (InputsChangedError, check_on_mismatch,
                                            describe_changes, normalize)
from humpback_jax.train.schedule import make_optimizer
from humpback_jax.train.state import TrainState, abstract_state, state_shardings
from humpback_jax.train.step import BATCH_KEYS, make_eval_step, make_train_step

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
    if p.dtype == a.dtype:
      return p
    # A jax.Array (e.g. a sharded base model) is cast where it lives, never fetched to a host.
    return p.astype(a.dtype) if isinstance(p, jax.Array) else np.asarray(p).astype(a.dtype)

  return jax.tree_util.tree_map_with_path(check, params, abstract)


class NonFiniteLossError(RuntimeError):
  """Training stopped: a step's loss, gradient norm or updated parameters were not finite.

  The bad state is never checkpointed; the newest checkpoint (if any) is the last good one.

  Attributes:
    step: 1-based number of the offending update (as ``history[i]["step"]`` and checkpoint
      steps); it consumed batch ``step - 1``.
    loss: that step's training loss (nats/token; nan or inf when it is the culprit).
    grad_norm: that step's global gradient norm before clipping.
    checkpoint_step: step of the last checkpoint written or resumed from, or None.
  """

  def __init__(self, message: str, *, step: int, loss: float, grad_norm: float,
               checkpoint_step: int | None):
    super().__init__(message)
    self.step, self.loss, self.grad_norm = step, loss, grad_norm
    self.checkpoint_step = checkpoint_step


def _check_batch(batch: Batch, index: int | str, cfg: TrainConfig, row_multiple: int) -> None:
  what = index if isinstance(index, str) else f"batch {index}"
  missing = [k for k in BATCH_KEYS if k not in batch]
  if missing:
    raise ValueError(f"{what} lacks {missing} (has {sorted(batch)})")
  rows, length = np.shape(batch["decoder_input_tokens"])
  if length != cfg.sequence_length:
    raise ValueError(f"{what} has sequence length {length}, TrainConfig.sequence_length "
                     f"is {cfg.sequence_length}")
  if rows % row_multiple:
    raise ValueError(f"{what} has {rows} rows, not divisible by the mesh's data*fsdp times "
                     f"TrainConfig.micro_batches = {row_multiple}; build the iterator with "
                     f"row_multiple={row_multiple}")


@functools.lru_cache(maxsize=8)
def _compiled(model_config: LlamaConfig, train_config: TrainConfig, mesh: Mesh,
              rules: tuple) -> tuple[Any, TrainState, TrainState, Any, Any]:
  """(optimizer, abstract state, state shardings, jitted step, jitted eval step), cached so that
  rerunning or resuming a run in the same process (or training M1 then M2 with one config)
  compiles once."""
  optimizer = make_optimizer(train_config)
  abstract = abstract_state(model_config, optimizer)
  shardings = state_shardings(model_config, abstract, mesh, rules)
  step_fn = make_train_step(model_config, train_config, optimizer, mesh, shardings, rules)
  eval_fn = make_eval_step(model_config, mesh, shardings.params, rules,
                           train_config=train_config)
  return optimizer, abstract, shardings, step_fn, eval_fn


def _eval_batches_checked(eval_batches: Sequence[Batch], cfg: TrainConfig,
                          row_multiple: int) -> list[Batch]:
  """Validates held-out batches (one shared shape, so the eval step compiles once).

  Raises:
    ValueError: no batch, a malformed batch (``_check_batch``) or batches of several shapes.
  """
  batches = list(eval_batches)
  if not batches:
    raise ValueError("eval_batches is empty")
  for i, b in enumerate(batches):
    _check_batch(b, f"eval batch {i}", cfg, row_multiple)
    shape = np.shape(batches[0]["decoder_input_tokens"])
    if any(np.shape(b[k]) != shape for k in BATCH_KEYS):
      raise ValueError(f"eval batch {i} is not shaped {shape} like eval batch 0; pad the "
                       f"held-out batches to one shape (data.tasks does)")
  return batches


def _drop_unreadable(ckpt: Checkpointer, step: int, error: BaseException) -> int:
  """Deletes checkpoint ``step`` that cannot be read (a corrupted or half-copied file) and
  returns the step to try next (the previous one, or 0: train from the start).

  Raises:
    DiskFullError: the read failed for lack of disk space (nothing is deleted then).
  """
  from humpback_jax.errors import DiskFullError, is_disk_full
  if is_disk_full(error):
    raise DiskFullError(28, f"{ckpt.directory}: disk full while reading checkpoint step "
                        f"{step} ({error})") from error
  detail = " ".join(f"{type(error).__name__}: {error}".split())[:300]
  ckpt.delete(step)
  previous = ckpt.latest_step() or 0
  logging.warning("checkpoint %s step %d is unreadable (%s); deleted it and resuming from %s",
                  ckpt.directory, step, detail,
                  f"step {previous}" if previous else "the start (no older checkpoint)")
  return previous


def train(model_config: LlamaConfig, init_params: Any, batches_fn: BatchesFn,
          train_config: TrainConfig, ckpt_dir: str | os.PathLike | None, *,
          progress: bool = False, devices: Any = None,
          rules: shd.LogicalRules = shd.DEFAULT_LOGICAL_AXIS_RULES,
          fingerprint: Mapping[str, Any] | None = None, on_mismatch: str = "error",
          eval_batches: Sequence[Batch] | None = None,
          summary_dir: str | os.PathLike | None = None, mesh: Mesh | None = None
          ) -> tuple[Any, dict]:
  """Fine-tunes ``init_params`` for ``train_config.num_steps`` steps, resuming if possible.

  Dropout: step ``s`` (0-based) uses the key ``fold_in(PRNGKey(train_config.seed), s)`` (derived
  inside the jitted step), so the masks differ from step to step and a resumed run is bitwise
  identical to an uninterrupted one.

  Non-finite values: every step reports on the device whether its loss, gradient norm and
  updated parameters are finite; the loop fetches that one bool of step ``s`` after dispatching
  step ``s + 1`` (so the device never idles for it), and of the current step before any
  checkpoint, log or evaluation. A non-finite step stops the run with ``NonFiniteLossError``;
  its state is never checkpointed, so the newest checkpoint stays the last good one.

  Args:
    model_config: the model's architecture (its ``dropout_rate`` is replaced by the config's).
    init_params: ``{"params": ...}`` starting weights (host numpy or jax arrays; not modified
      or donated), e.g. the base LM converted by ``models/convert.py``.
    batches_fn: ``batches_fn(start_step)`` returns an iterator over training batches starting
      at batch index ``start_step`` (the data already consumed by the restored checkpoint is
      skipped deterministically); each batch maps ``BATCH_KEYS`` to int32 [rows,
      sequence_length] numpy arrays (``data.iterator.make_train_iterator``). It must yield at
      least ``num_steps - start_step`` batches. If the iterator has a ``stats`` dict attribute
      it is copied into the summary; if it has a non-None ``eval_batches`` attribute (a
      ``TrainIterator`` built with ``holdout``) and ``eval_batches`` is None, those are the
      held-out batches.
    train_config: hyper-parameters, mesh, checkpoint, log and evaluation cadence.
    ckpt_dir: orbax checkpoint directory; if it holds a complete checkpoint the run resumes from
      the newest one. None disables checkpointing.
    progress: show a tqdm progress bar.
    devices: devices for the mesh (default all); ignored when ``mesh`` is given.
    mesh: the mesh to train on (the run's ``Runtime.mesh``); None builds one from
      ``train_config.mesh`` over ``devices``.
    summary_dir: TensorBoard log directory (``train.metrics.SummaryWriter``, process 0 only):
      at every log step, loss, learning rate, grad norm, evaluation loss, tokens/s/device and
      MFU (``train.metrics``); None writes none. The summary gets ``tokens_per_second_per_device``
      and ``mfu`` either way.
    rules: logical axis rules.
    fingerprint: JSON-able ``{name: value}`` of the inputs, other than ``train_config``, that
      determine the result (training data hash, base model identity, ...; see
      ``train/fingerprint.py`` for the names given readable messages). Recorded in every
      checkpoint's meta with ``train_config.math_dict()`` and compared on resume.
    on_mismatch: what to do with a checkpoint whose recorded inputs differ from this run's:
      "error" (default) raises ``InputsChangedError``; "restart" deletes its checkpoint steps
      and trains from ``init_params``.
    eval_batches: held-out batches (same keys/dtypes as training batches, all one shape [rows,
      sequence_length], rows divisible by data*fsdp; all-padding rows allowed), evaluated with
      dropout off every ``train_config.eval_every`` steps and after the last step.
  Returns:
    (params, summary): params ``{"params": ...}`` as ``jax.Array``s sharded on ``mesh`` by
    the logical rules (``sharding.param_shardings``; never gathered onto one host: save them
    with orbax, or ``jax.device_get`` them on one process); summary with ``steps`` (total), ``start_step``,
    ``steps_run``, ``final_loss`` (loss of the last step, nats/token; training loss, with
    dropout), ``final_eval_loss`` (held-out loss of the final params, nats/token, dropout off;
    None if evaluation is off), ``tokens`` (non-padding tokens this run), ``target_tokens``
    (loss-weighted tokens this run), ``tokens_per_second`` (after the first, compiling, step,
    evaluation time excluded), ``seconds`` (wall time of this call), ``eval_seconds``,
    ``history`` (one entry per logged or evaluated step: the step's metrics, ``step`` (1-based)
    and, at evaluation steps, ``eval_loss``, ``eval_accuracy``, ``eval_tokens``) and ``data``
    (iterator stats, if any).
  Raises:
    ValueError: params that do not fit the config, malformed batches, ``eval_every > 0``
      without held-out batches, or a bad ``on_mismatch``.
    InputsChangedError (a ValueError): with ``on_mismatch="error"``, a checkpoint written with
      other hyper-parameters or other ``fingerprint`` values; the message names each change.
    NonFiniteLossError (a RuntimeError): a step's loss, gradient norm or parameters became
      nan/inf; the message names the step and the last good checkpoint.
    RuntimeError: the batch iterator ends early.
  """
  t_start = time.perf_counter()
  cfg = train_config
  check_on_mismatch(on_mismatch)
  mesh = shd.make_mesh(cfg.mesh, devices) if mesh is None else mesh
  row_multiple = shd.batch_parallel_size(mesh) * cfg.micro_batches
  rules = tuple((name, tuple(a) if isinstance(a, list) else a) for name, a in rules)
  # Checkpoint/logging/eval cadence does not change the step: share one compiled step.
  step_cfg = cfg.replace(checkpoint_every=1, keep_checkpoints=1, log_every=1, eval_every=0)
  optimizer, abstract, shardings, step_fn, eval_fn = _compiled(model_config, step_cfg, mesh,
                                                               rules)
  rep = shd.replicated(mesh)
  batch_shard = shd.batch_sharding(mesh, rules)
  base_key = jax.device_put(jax.random.PRNGKey(cfg.seed), rep)
  caller_fp = normalize(fingerprint)
  current_fp = {"train_config": normalize(cfg.math_dict()), **caller_fp}

  # MFU denominators, outside the mesh context (the CPU peak is measured by a small matmul).
  flops_per_token = metrics_lib.model_flops_per_token(model_config, cfg.sequence_length)
  peak, peak_source = metrics_lib.device_peak_flops(mesh.devices.flat[0])
  # Fake CPU devices share one host's cores, whose peak was measured as a whole.
  mfu_devices = 1 if mesh.devices.flat[0].platform == "cpu" else mesh.size

  ckpt = Checkpointer(ckpt_dir, keep=cfg.keep_checkpoints) if ckpt_dir is not None else None
  history: list[dict] = []
  summary: dict[str, Any] = {}
  try:
    with jax.set_mesh(mesh):
      start = (ckpt.latest_step() if ckpt else None) or 0
      meta: dict = {}
      while start:
        try:
          recorded = ckpt.read_meta(start)
        except Exception as e:  # pylint: disable=broad-except
          start = _drop_unreadable(ckpt, start, e)
          continue
        changes = describe_changes(
            {"train_config": recorded.get("train_config"), **recorded.get("fingerprint", {})},
            current_fp)
        if changes and on_mismatch == "error":
          raise InputsChangedError(
              f"checkpoint {ckpt.directory} step {start} was written with different inputs: "
              f"{'; '.join(changes)}. Pass on_mismatch='restart' to delete it and train from "
              f"scratch, or use another ckpt_dir", changes)
        if changes:
          logging.warning("discarding checkpoint %s (steps %s): %s", ckpt.directory,
                          ckpt.all_steps(), "; ".join(changes))
          ckpt.delete_all()
          start = 0
          break
        try:
          state, meta = ckpt.restore(start, abstract_with_shardings(abstract, shardings))
        except Exception as e:  # pylint: disable=broad-except
          start = _drop_unreadable(ckpt, start, e)
          continue
        history = list(meta.get("history", []))
        logging.info("resuming from %s step %d", ckpt.directory, start)
        break
      if not start:
        params = _check_params(init_params, abstract.params)
        # may_alias=False: the state is donated, so never alias the caller's arrays.
        params = jax.device_put(params, shardings.params, may_alias=False)
        opt_state = jax.jit(optimizer.init, out_shardings=shardings.opt_state)(params)
        state = TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), rep), params=params,
                           opt_state=opt_state)

      it = batches_fn(start) if start < cfg.num_steps else iter(())
      device_eval: list[dict] = []
      if cfg.eval_every and start < cfg.num_steps:
        if eval_batches is None:
          eval_batches = getattr(it, "eval_batches", None)
        if eval_batches is None:
          raise ValueError(f"eval_every={cfg.eval_every} but there are no held-out batches: "
                           f"pass eval_batches, or hold out TrainConfig.eval_examples examples "
                           f"(data.iterator.make_train_iterator(holdout=...))")
        device_eval = [{k: hosts.put_global(np.asarray(b[k], np.int32), batch_shard)
                        for k in BATCH_KEYS}
                       for b in _eval_batches_checked(eval_batches, cfg, row_multiple)]

      def evaluate(params) -> dict:
        sums = jax.device_get([eval_fn(params, b) for b in device_eval])
        loss_sum = sum(float(s["loss_sum"]) for s in sums)
        n = sum(float(s["num_tokens"]) for s in sums)
        correct = sum(float(s["correct"]) for s in sums)
        return {"eval_loss": loss_sum / max(n, 1.0), "eval_accuracy": correct / max(n, 1.0),
                "eval_tokens": n}

      last_ckpt = start or None

      def check_finite(done: int, metrics: dict) -> None:
        if bool(metrics["finite"]):
          return
        loss, gnorm = (float(v) for v in jax.device_get((metrics["loss"],
                                                         metrics["grad_norm"])))
        where = (f"the last good checkpoint is step {last_ckpt} in {ckpt.directory}"
                 if ckpt and last_ckpt else
                 f"no checkpoint was written yet in {ckpt.directory}" if ckpt else
                 "checkpointing is off")
        raise NonFiniteLossError(
            f"non-finite training step {done} of {cfg.num_steps} (batch index {done - 1}): "
            f"loss={loss}, grad_norm={gnorm} (or a parameter became nan/inf); stopped without "
            f"saving this state; {where}", step=done, loss=loss, grad_norm=gnorm,
            checkpoint_step=last_ckpt)

      writer = metrics_lib.SummaryWriter(summary_dir) if summary_dir is not None else None
      window = [time.perf_counter(), 0]  # (start time, padded tokens) since the last log
      tokens = target_tokens = 0
      tokens_after_first = 0
      t_first = None
      eval_seconds = 0.0
      metrics = None
      pending = None  # (done, metrics) of the newest step whose finiteness is not checked yet
      last_loss = meta.get("final_loss") if start else None
      last_eval = meta.get("final_eval_loss") if start else None
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
        device_batch = {k: hosts.put_global(np.asarray(batch[k], np.int32), batch_shard)
                        for k in BATCH_KEYS}
        state, metrics = step_fn(state, device_batch, base_key)
        done = step + 1
        if pending is not None:  # the previous step, while this one runs
          check_finite(*pending)
        pending = (done, metrics)
        tokens += n_tok
        target_tokens += n_tgt
        window[1] += int(np.size(batch["decoder_input_tokens"]))  # padded: hardware MFU
        if t_first is None:
          jax.block_until_ready(metrics)
          t_first = time.perf_counter()
          window[:] = [t_first, 0]  # throughput excludes the first step's compilation
        else:
          tokens_after_first += n_tok
        is_last = done == cfg.num_steps
        do_log = done % cfg.log_every == 0 or is_last
        do_eval = bool(cfg.eval_every) and (done % cfg.eval_every == 0 or is_last)
        do_ckpt = ckpt is not None and (done % cfg.checkpoint_every == 0 or is_last)
        if do_log or do_eval or do_ckpt:
          check_finite(*pending)
          pending = None
        if do_log or do_eval:
          m = {k: float(v) for k, v in jax.device_get(metrics).items() if k != "finite"}
          m["step"] = done
          now = time.perf_counter()
          m.update({k: v for k, v in metrics_lib.step_throughput(
              window[1], max(now - window[0], 1e-9), mfu_devices, flops_per_token,
              peak).items() if k in ("tokens_per_second_per_device", "mfu")})
          window[:] = [now, 0]
          if do_eval:
            t_eval = time.perf_counter()
            m.update(evaluate(state.params))
            eval_seconds += time.perf_counter() - t_eval
            last_eval = m["eval_loss"]
          if do_eval:
            window[0] = time.perf_counter()  # evaluation time is not training throughput
          history.append(m)
          if writer is not None:
            writer.write_scalars(done, {k: v for k, v in m.items() if k != "step"})
          last_loss = m["loss"]
          bar.set_postfix(loss=f"{m['loss']:.4f}", lr=f"{m['learning_rate']:.3g}",
                          **({"eval": f"{last_eval:.4f}"} if last_eval is not None else {}))
        bar.update(1)
        if do_ckpt:
          last_loss = float(metrics["loss"])
          ckpt.save(done, state, {"train_config": cfg.math_dict(), "fingerprint": caller_fp,
                                  "final_loss": last_loss, "final_eval_loss": last_eval,
                                  "history": history})
          last_ckpt = done
      if pending is not None:
        check_finite(*pending)
      bar.close()
      if metrics is not None:
        last_loss = float(metrics["loss"])
      params = state.params  # stays sharded: never gathered onto one host or device
      t_end = time.perf_counter()
      steps_run = cfg.num_steps - start
      timed = (t_end - t_first - eval_seconds) if t_first is not None else 0.0
      summary = {
          "steps": cfg.num_steps,
          "start_step": start,
          "steps_run": steps_run,
          "final_loss": last_loss,
          "final_eval_loss": last_eval if cfg.eval_every else None,
          "tokens": tokens,
          "target_tokens": target_tokens,
          "tokens_per_second": (tokens_after_first / timed) if steps_run > 1 and timed > 0
                               else (tokens / max(t_end - t_start, 1e-9)),
          "seconds": t_end - t_start,
          "eval_seconds": eval_seconds,
          "history": history,
      }
      last = history[-1] if history else {}
      summary["tokens_per_second_per_device"] = last.get("tokens_per_second_per_device")
      summary["mfu"] = last.get("mfu")
      summary["peak_flops_per_device"] = peak
      summary["peak_flops_source"] = peak_source
      if writer is not None:
        writer.close()
      stats = getattr(it, "stats", None)
      if isinstance(stats, dict):
        summary["data"] = dict(stats)
  finally:
    if ckpt:
      ckpt.close()
  return params, summary
