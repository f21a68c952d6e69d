"""Multi-host helpers: who writes, barriers, and fetching arrays that span processes.

One process per host runs the same program on a global mesh (SPMD). Every process computes
the same records in lockstep; process 0 alone writes artifacts, the manifest and the report
(``is_writer``); ``sync`` is a barrier so that the others read a file only after it was
written; ``fetch`` brings a (possibly process-spanning) array to every host as numpy.

None of these imports JAX if the program has not (the data stages run without it).
"""

from __future__ import annotations

import sys
from typing import Any


def _jax():
  return sys.modules.get("jax")


def process_index() -> int:
  """This process's index (0 without JAX or with one process)."""
  jax = _jax()
  return 0 if jax is None else jax.process_index()


def process_count() -> int:
  """Number of processes of the run (1 without JAX)."""
  jax = _jax()
  return 1 if jax is None else jax.process_count()


def is_writer() -> bool:
  """True on process 0, the only one that writes files."""
  return process_index() == 0


def sync(name: str) -> None:
  """Barrier across processes (no-op with one process)."""
  if process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def on_writer(fn, name: str) -> Any:
  """Runs ``fn()`` on process 0 alone (work whose result only process 0 writes, such as
  reading and cleaning the web corpus: its workers start on that host only); the others wait.

  Every process must call it at the same point (it is a collective). Inside ``fn`` no other
  collective may run (``sync``, ``write_jsonl``): the others are not there to meet it.

  Returns:
    ``fn()``'s result on process 0; None on the others.
  Raises:
    Whatever ``fn`` raised, on process 0; ``RuntimeError`` naming ``name`` on the others, so
    that no process waits forever for a failed one.
  """
  if process_count() == 1:
    return fn()
  import numpy as np
  from jax.experimental import multihost_utils
  error, result = None, None
  if is_writer():
    try:
      result = fn()
    except BaseException as e:  # pylint: disable=broad-except
      error = e
  failed = int(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
  if error is not None:
    raise error
  if failed:
    raise RuntimeError(f"{name} failed on process 0 (its log has the error)")
  return result


def fetch(tree: Any) -> Any:
  """``jax.device_get`` that also works for arrays sharded over other processes' devices:
  those are all-gathered (every host gets the whole array, as numpy)."""
  import jax
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils

  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return multihost_utils.process_allgather(x, tiled=True)
    return jax.device_get(x)

  return jax.tree.map(one, tree)


def put_global(x: Any, sharding: Any) -> Any:
  """A host array that every process holds whole (the same values on each) as one global
  ``jax.Array`` on ``sharding``: each process uploads only the shards of its own devices
  (``jax.make_array_from_callback``), so nothing crosses between hosts.

  Args:
    x: numpy array, identical on every process (e.g. a batch built from the same data).
    sharding: a ``jax.sharding.Sharding`` over the global mesh.
  Returns:
    ``jax.Array`` of ``x.shape`` and dtype.
  """
  import jax
  import numpy as np
  if jax.process_count() == 1:
    return jax.device_put(x, sharding)
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
