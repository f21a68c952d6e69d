"""Orbax checkpoints of the training state: save every N steps and at the end, keep K, resume.

Each checkpoint is a step directory holding the ``TrainState`` (``state``) and a small JSON
(``meta``: the run's ``TrainConfig.math_dict()`` as ``train_config``, the caller's
``fingerprint`` of the other inputs (``train/fingerprint.py``) and the summary so far).
Only finite states are saved (``train.loop`` checks every step before saving). Orbax writes a step
into a temporary directory and renames it when complete (atomic finalize), so a save interrupted
by a crash or preemption leaves the previous complete step as ``latest_step()``; leftover
temporary directories are removed when the manager is next opened.

The directory may be local or on an object store (``gs://bucket/...``): it is handed to orbax
as an ``etils.epath`` path (``humpback_jax.fs.path``: local paths made absolute, URIs kept as
given). On GCS orbax writes a step in place and marks it complete with a commit file instead of
renaming it; ``latest_step()`` likewise ignores incomplete steps. Orbax coordinates the
processes of a multi-host run itself (every process calls ``save``; process 0 finalizes).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from humpback_jax import fs


class Checkpointer:
  """Thin wrapper around ``ocp.CheckpointManager`` for ``TrainState`` + JSON metadata.

  Args:
    directory: checkpoint root (created if missing); one subdirectory per saved step. Local
      (made absolute) or a ``gs://`` URI; ``self.directory`` is its ``epath.Path``.
    keep: number of most recent checkpoints to keep.
    async_save: write in a background thread after the blocking device-to-host copy.
  """

  def __init__(self, directory: str | os.PathLike, *, keep: int, async_save: bool = True):
    self.directory = fs.path(directory)
    self._mngr = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save))

  def latest_step(self) -> int | None:
    """The newest *complete* checkpoint's step, or None."""
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._mngr.all_steps())

  def save(self, step: int, state: Any, meta: dict) -> None:
    """Saves ``state`` (a pytree of jax arrays) and ``meta`` (JSON-able) as ``step``.

    Raises:
      DiskFullError: the disk filled up (now, or during the previous asynchronous save); the
        incomplete step is never taken for a checkpoint (orbax finalizes by rename), so a
        rerun resumes from the last complete one.
    """
    try:
      self._mngr.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
    except Exception as e:  # pylint: disable=broad-except
      raise self._disk_full(e, f"saving step {step}") or e

  def _disk_full(self, e: BaseException, what: str) -> Exception | None:
    from humpback_jax.errors import DiskFullError, is_disk_full
    if not is_disk_full(e):
      return None
    last = self._mngr.latest_step()
    err = DiskFullError(28, f"{self.directory}: disk full while {what} ({e}); the last "
                        f"complete checkpoint is {'step %d' % last if last else 'none'}; "
                        "free space and rerun to resume from it")
    err.__cause__ = e
    return err

  def delete(self, step: int) -> None:
    """Deletes one checkpoint step (e.g. an unreadable one)."""
    self._mngr.wait_until_finished()
    self._mngr.delete(step)
    self._mngr.reload()

  def read_meta(self, step: int) -> dict:
    """The JSON meta of step ``step`` alone (the state is not read)."""
    return self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def delete_all(self) -> None:
    """Deletes every checkpoint step (only the manager's step directories, nothing else)."""
    self._mngr.wait_until_finished()
    for step in self._mngr.all_steps():
      self._mngr.delete(step)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """Restores step ``step`` onto the shardings of ``abstract_state``.

    Args:
      abstract_state: pytree of ``jax.ShapeDtypeStruct`` with ``sharding`` set; restored arrays
        are placed (resharded if needed) accordingly.
    Returns:
      (state, meta).
    """
    out = self._mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return out["state"], out["meta"]

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are committed.

    Raises:
      DiskFullError: an asynchronous save ran out of disk space.
    """
    try:
      self._mngr.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._disk_full(e, "writing a checkpoint") or e

  def close(self) -> None:
    self.wait()
    self._mngr.close()


def abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
  """``ShapeDtypeStruct`` tree carrying ``shardings`` (restore targets)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)
