"""The Runtime: the one device mesh and sharding rules every compute stage of a run uses.

Built once per run (``RunContext.runtime``) from the config: the ``("data", "fsdp",
"tensor")`` mesh over every device of every process (``-1`` fills the remaining devices), the
logical axis rules of parameters, activations and caches (``sharding.py``; an unmatched name
is an error, never a silent replication), and the process index and count (``hosts.py``: only
process 0 writes). Training, sampling and scoring take their mesh from here, so a checkpoint
written by one stage is read onto the same shardings by the next.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from humpback_jax import hosts
from humpback_jax import sharding as shd


@dataclasses.dataclass(frozen=True)
class Runtime:
  """Mesh + logical axis rules + process topology of a run.

  Attributes:
    mesh: the global device mesh, axes ``sharding.MESH_AXES``.
    rules: logical axis rules (``sharding.DEFAULT_LOGICAL_AXIS_RULES`` by default).
  """

  mesh: Any
  rules: tuple = shd.DEFAULT_LOGICAL_AXIS_RULES

  @classmethod
  def create(cls, mesh_config: shd.MeshConfig = shd.MeshConfig(),
             rules: shd.LogicalRules = shd.DEFAULT_LOGICAL_AXIS_RULES,
             devices: Sequence[Any] | None = None) -> "Runtime":
    """Builds the mesh over ``devices`` (default: every device of every process).

    Raises:
      ValueError: the mesh sizes do not fit the devices (``MeshConfig.resolve``).
    """
    return cls(shd.make_mesh(mesh_config, devices), tuple(rules))

  @property
  def process_index(self) -> int:
    return hosts.process_index()

  @property
  def process_count(self) -> int:
    return hosts.process_count()

  @property
  def is_writer(self) -> bool:
    """True on process 0, the only one that writes files."""
    return hosts.is_writer()

  @property
  def batch_parallel_size(self) -> int:
    """Shards of the batch dimension (data x fsdp): batch rows must divide by it."""
    return shd.batch_parallel_size(self.mesh)

  @property
  def activation_sharding(self) -> shd.ActivationSharding:
    """Constraints for the model's activations and KV cache on this mesh."""
    return shd.ActivationSharding(self.mesh, self.rules)

  def param_shardings(self, model_config) -> Any:
    """``NamedSharding`` tree of ``{"params": ...}`` for ``model_config``."""
    return shd.param_shardings(model_config, self.mesh, self.rules)
