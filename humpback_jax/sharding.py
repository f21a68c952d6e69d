"""Device meshes and logical-axis sharding rules (MaxText / flax ``lm1b`` vocabulary).

Parameters carry *logical* axis names (``models/llama.py``: ``vocab``, ``embed``, ``mlp``,
``heads``, ``kv_heads``, ``head_dim``, ``layers``, ``norm``); activations and batches use
``batch`` and ``length``. ``DEFAULT_LOGICAL_AXIS_RULES`` maps each name to mesh axes of a 3-axis
mesh ``("data", "fsdp", "tensor")``:

  * ``data``: pure data parallelism (parameters replicated);
  * ``fsdp``: data parallelism with parameters, gradients and optimizer state sharded over the
    ``embed`` dimension (ZeRO-3 style; XLA all-gathers them per layer);
  * ``tensor``: Megatron-style tensor parallelism over ``mlp``/``heads``/``kv_heads``/``vocab``.

Unlike ``flax.linen.logical_to_mesh_axes``, a logical name with no rule is an error, never a
silent replication (``architecture.md``: the catch-all rule is what the anchors show to avoid).
A dimension whose size the mesh axes do not divide (e.g. SmolLM2-135M's 9 heads on ``tensor=2``)
is replicated with a logged warning, or raises with ``strict=True``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from humpback_jax.models.config import LlamaConfig
from humpback_jax.models.llama import init_params

MESH_AXES = ("data", "fsdp", "tensor")

MeshAxes = str | tuple[str, ...] | None
LogicalRules = Sequence[tuple[str, MeshAxes]]

DEFAULT_LOGICAL_AXIS_RULES: tuple[tuple[str, MeshAxes], ...] = (
    # Batches (host data).
    ("batch", ("data", "fsdp")),
    ("length", None),
    # Activations inside the model (models/llama.py, ActivationSharding): rows over data x
    # fsdp, the model width replicated (fsdp shards the batch, not the activations' embed),
    # heads / MLP width / vocabulary over tensor (MaxText's activation_* names).
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    # KV cache of the sampler: [B, S, KV, Dh] per layer.
    ("cache_batch", ("data", "fsdp")),
    ("cache_sequence", None),
    ("cache_heads", "tensor"),
    # Parameters (names from models/llama.py).
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
)


_WARNED: set[str] = set()


class UnknownLogicalAxisError(KeyError):
  """A logical axis name has no entry in the sharding rules."""


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Sizes of the ``("data", "fsdp", "tensor")`` mesh axes.

  Attributes:
    data: data-parallel replicas; -1 means "every device the other axes leave".
    fsdp: parameter-sharded data parallelism (ZeRO-3); -1 as above.
    tensor: tensor (model) parallelism; -1 as above.
  At most one axis may be -1; the product must equal the number of devices.
  """

  data: int = -1
  fsdp: int = 1
  tensor: int = 1

  def resolve(self, num_devices: int) -> tuple[int, int, int]:
    """Concrete (data, fsdp, tensor) sizes for ``num_devices`` devices.

    Raises:
      ValueError: more than one -1, a size < 1, or a product that is not ``num_devices``.
    """
    sizes = [self.data, self.fsdp, self.tensor]
    if sizes.count(-1) > 1:
      raise ValueError(f"at most one mesh axis may be -1, got {self}")
    if any(s == 0 or s < -1 for s in sizes):
      raise ValueError(f"mesh axis sizes must be >= 1 or -1, got {self}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
      if num_devices % known:
        raise ValueError(f"{num_devices} devices are not divisible by {known} ({self})")
      sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
      raise ValueError(
          f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
          f"have {num_devices}")
    return tuple(sizes)


def make_mesh(cfg: MeshConfig = MeshConfig(), devices: Sequence[Any] | None = None) -> Mesh:
  """A ``Mesh`` with axes ``("data", "fsdp", "tensor")`` (Auto axis types).

  Args:
    cfg: axis sizes.
    devices: devices to use (default ``jax.devices()``), laid out row-major so ``tensor``
      neighbours are adjacent devices.
  Raises:
    ValueError: the sizes do not multiply to the number of devices.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = cfg.resolve(len(devices))
  return Mesh(np.array(devices, dtype=object).reshape(shape), MESH_AXES)


def batch_parallel_size(mesh: Mesh) -> int:
  """Number of shards of the batch dimension (``data * fsdp``); batches must divide by it."""
  return int(mesh.shape["data"] * mesh.shape["fsdp"])


def _rules_dict(rules: LogicalRules) -> dict[str, MeshAxes]:
  out: dict[str, MeshAxes] = {}
  for name, axes in rules:
    if name in out:
      raise ValueError(f"logical axis {name!r} has two rules")
    out[name] = axes
  return out


def logical_to_mesh_spec(logical: PartitionSpec | Sequence[str | None],
                         rules: LogicalRules = DEFAULT_LOGICAL_AXIS_RULES,
                         *, shape: Sequence[int] | None = None, mesh: Mesh | None = None,
                         strict: bool = False, name: str = "") -> PartitionSpec:
  """Maps a spec of logical names to a spec of mesh axes.

  Args:
    logical: one logical name (or None) per array dimension.
    rules: ``(logical name, mesh axes)`` pairs; mesh axes are a name, a tuple of names or None.
    shape, mesh: when both are given, a dimension whose size is not divisible by the product of
      its mesh axes' sizes is replicated (warning) or rejected (``strict``); mesh axes of size 1
      are dropped.
    strict: raise instead of replicating an indivisible dimension.
    name: parameter path, for messages.
  Returns:
    A ``PartitionSpec`` of mesh axis names.
  Raises:
    UnknownLogicalAxisError: a logical name has no rule.
    ValueError: a mesh axis would be used twice, or (strict) a dimension is indivisible.
  """
  table = _rules_dict(rules)
  out: list[MeshAxes] = []
  used: set[str] = set()
  for dim, logical_name in enumerate(logical):
    if logical_name is None:
      out.append(None)
      continue
    if logical_name not in table:
      raise UnknownLogicalAxisError(
          f"logical axis {logical_name!r} of {name or 'an array'} has no sharding rule; "
          f"add one to the rules (known: {sorted(table)})")
    axes = table[logical_name]
    axes_t = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
    if mesh is not None:
      axes_t = tuple(a for a in axes_t if mesh.shape[a] > 1)
    if shape is not None and mesh is not None and axes_t:
      parts = math.prod(mesh.shape[a] for a in axes_t)
      if shape[dim] % parts:
        msg = (f"{name or 'array'}: dimension {dim} ({logical_name}, size {shape[dim]}) is not "
               f"divisible by mesh axes {axes_t} (size {parts})")
        if strict:
          raise ValueError(msg)
        if msg not in _WARNED:  # once per message, not at every trace
          _WARNED.add(msg)
          logging.warning("%s; replicating this dimension", msg)
        axes_t = ()
    for a in axes_t:
      if a in used:
        raise ValueError(f"{name or 'array'}: mesh axis {a!r} used twice in {logical}")
      used.add(a)
    out.append(None if not axes_t else (axes_t[0] if len(axes_t) == 1 else axes_t))
  return PartitionSpec(*out)


def _path_name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def logical_shardings(logical_specs: Any, abstract: Any, mesh: Mesh,
                      rules: LogicalRules = DEFAULT_LOGICAL_AXIS_RULES,
                      strict: bool = False) -> Any:
  """``NamedSharding`` per leaf of ``abstract`` given a matching tree of logical specs.

  Args:
    logical_specs: pytree of ``PartitionSpec`` of logical names (``nn.get_partition_spec``).
    abstract: pytree of arrays / ``ShapeDtypeStruct`` with the same structure.
  """
  def one(path, spec, leaf):
    return NamedSharding(mesh, logical_to_mesh_spec(
        spec, rules, shape=leaf.shape, mesh=mesh, strict=strict, name=_path_name(path)))
  return jax.tree_util.tree_map_with_path(
      one, logical_specs, abstract, is_leaf=lambda x: isinstance(x, PartitionSpec))


def abstract_params(model_config: LlamaConfig, boxed: bool = False) -> Any:
  """Shapes/dtypes of ``init_params(model_config, ...)`` without allocating anything."""
  return jax.eval_shape(lambda: init_params(model_config, jax.random.PRNGKey(0), boxed=boxed))


def param_shardings(model_config: LlamaConfig, mesh: Mesh,
                    rules: LogicalRules = DEFAULT_LOGICAL_AXIS_RULES,
                    strict: bool = False) -> Any:
  """Pytree of ``NamedSharding`` matching ``init_params(model_config, ...)`` (``{"params": ..}``).

  Raises:
    UnknownLogicalAxisError: a parameter uses a logical name the rules do not cover.
  """
  import flax.linen as nn  # local: keeps the module's import surface small

  boxed = abstract_params(model_config, boxed=True)
  return logical_shardings(nn.get_partition_spec(boxed), nn.unbox(boxed), mesh, rules, strict)


def batch_sharding(mesh: Mesh, rules: LogicalRules = DEFAULT_LOGICAL_AXIS_RULES
                   ) -> NamedSharding:
  """Sharding of an int32 [batch, length] batch array: rows split over ``data`` x ``fsdp``."""
  return NamedSharding(mesh, logical_to_mesh_spec(("batch", "length"), rules))


def replicated(mesh: Mesh) -> NamedSharding:
  """Fully replicated sharding on ``mesh`` (scalars, RNG keys, metrics)."""
  return NamedSharding(mesh, PartitionSpec())


@dataclasses.dataclass(frozen=True)
class ActivationSharding:
  """Constrains a model's activations to their logical shardings on ``mesh``.

  Passed to ``Llama(config, sharding=...)``; hashable, so it can be part of a jitted
  function's static configuration. Uses the same strict rules as the parameters: a logical
  name without a rule raises ``UnknownLogicalAxisError`` (never a silent replication); a
  dimension the mesh axes do not divide is replicated with one warning.

  Attributes:
    mesh: the device mesh.
    rules: logical axis rules (``DEFAULT_LOGICAL_AXIS_RULES``), a tuple of pairs.
  """

  mesh: Mesh
  rules: tuple = DEFAULT_LOGICAL_AXIS_RULES

  def spec(self, names: Sequence[str | None], shape: Sequence[int]) -> PartitionSpec:
    """The mesh ``PartitionSpec`` of an activation with these logical names and shape."""
    return logical_to_mesh_spec(names, self.rules, shape=shape, mesh=self.mesh,
                                name="activation " + "/".join(str(n) for n in names))

  def constrain(self, x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """``jax.lax.with_sharding_constraint`` of ``x`` to ``names`` (one per dimension)."""
    return jax.lax.with_sharding_constraint(
        x, NamedSharding(self.mesh, self.spec(names, x.shape)))
