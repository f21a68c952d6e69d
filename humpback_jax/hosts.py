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
