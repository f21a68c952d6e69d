"""Training throughput, model FLOPs utilization (MFU) and TensorBoard scalar summaries.

MFU follows MaxText's convention (docs/hardware.md): model FLOPs per token over the chips' dense
bf16 peak. Model FLOPs are the matmuls a training step needs, not those executed (remat's
recomputation is not counted), so MFU is comparable across remat settings.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from humpback_jax.models.config import LlamaConfig

# Dense bf16 peak FLOP/s per chip, no sparsity. Source: docs/hardware.md (Google Cloud TPU
# system-architecture pages; NVIDIA A100/H100/H200 SXM datasheets).
PEAK_FLOPS_PER_CHIP: dict[str, float] = {
    "TPU v4": 275e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v6e": 918e12,
    "A100": 312e12, "H100": 989e12, "H200": 989e12}

MEASURED_SOURCE = "measured float32 matmul on cpu"
# (lower-case part of device_kind, table key), first match wins: "v5 lite" before "v5".
_KIND_PARTS = (("h200", "H200"), ("h100", "H100"), ("a100", "A100"), ("v6", "TPU v6e"),
               ("v5 lite", "TPU v5e"), ("v5e", "TPU v5e"), ("v5", "TPU v5p"), ("v4", "TPU v4"))


def _table_key(device_kind: str) -> str | None:
  """Maps a ``jax.Device.device_kind`` to a ``PEAK_FLOPS_PER_CHIP`` key (None: not listed).
  JAX reports v5e as "TPU v5 lite", v5p as "TPU v5" (or "TPU v5p"), Trillium as "TPU v6 lite".
  Every H100/A100 variant maps to the SXM figure (PCIe parts peak lower: MFU then reads low).
  """
  kind = device_kind.lower()
  return next((key for part, key in _KIND_PARTS
               if part in kind and ("tpu" in kind or not key.startswith("TPU"))), None)


@functools.lru_cache(maxsize=None)
def _measured_matmul_flops(device: Any = None, n: int = 1024, repeats: int = 5) -> float:
  """Best-of-``repeats`` FLOP/s of a jitted float32 [n, n] @ [n, n] matmul (2 n^3 FLOPs)."""
  a = jax.device_put(jnp.ones((n, n), jnp.float32), device)
  mm = jax.jit(jnp.matmul)
  mm(a, a).block_until_ready()  # compile
  best = math.inf
  for _ in range(repeats):
    t0 = time.perf_counter()
    mm(a, a).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2.0 * n ** 3 / max(best, 1e-9)


def device_peak_flops(device: Any = None, measured_cpu: bool = True) -> tuple[float, str]:
  """Peak FLOP/s of one device (the MFU denominator).

  Args:
    device: a ``jax.Device`` or any object with a ``device_kind`` string attribute (default
      ``jax.devices()[0]``).
    measured_cpu: for a kind not in ``PEAK_FLOPS_PER_CHIP`` (CPU, an unlisted chip), time a
      jitted float32 1024x1024 matmul (best of 5, cached per device) instead of raising. CPU
      devices from ``--xla_force_host_platform_device_count`` share the host's cores: this
      is the whole host's rate.
  Returns:
    (flops_per_second, source): e.g. ``(197e12, "TPU v5e dense bf16 peak (docs/hardware.md)")``
    or ``(2.1e11, "measured float32 matmul on cpu")``.
  Raises ValueError for a kind not in the table when ``measured_cpu`` is False.
  """
  device = jax.devices()[0] if device is None else device
  kind = str(getattr(device, "device_kind", ""))
  key = _table_key(kind)
  if key is not None:
    return PEAK_FLOPS_PER_CHIP[key], f"{key} dense bf16 peak (docs/hardware.md)"
  if not measured_cpu:
    raise ValueError(f"device kind {kind!r} is not in PEAK_FLOPS_PER_CHIP "
                     f"({sorted(PEAK_FLOPS_PER_CHIP)}); pass measured_cpu=True to measure it")
  platform = getattr(device, "platform", "cpu")
  source = MEASURED_SOURCE if platform == "cpu" else f"measured float32 matmul on {platform}"
  return _measured_matmul_flops(device if isinstance(device, jax.Device) else None), source


def matmul_params(config: LlamaConfig) -> int:
  """Number of parameters that take part in a matmul per token (see ``model_flops_per_token``).
  Per layer: q_proj D*H*Dh, k_proj and v_proj D*KV*Dh each, o_proj H*Dh*D, gate/up/down
  3*D*F; plus the output projection D*V (``lm_head``, or the tied embedding used as one).
  Excluded: the input embedding (a lookup, no FLOPs) and the RMSNorm scales (elementwise).
  """
  c = config
  attn = c.hidden_size * c.head_dim * (2 * c.num_heads + 2 * c.num_kv_heads)
  return (c.num_layers * (attn + 3 * c.hidden_size * c.intermediate_size)
          + c.hidden_size * c.vocab_size)


def model_flops_per_token(config: LlamaConfig, seq_len: int) -> float:
  """Training FLOPs per token (forward + backward), MaxText's / PaLM's convention.

  ``6 * matmul_params(config) + 12 * L * H * Dh * seq_len``: 2 FLOPs per multiply-add in the
  forward, twice that in the backward; the attention term is QK^T and PV over the full
  (non-causal) [seq_len, seq_len] score matrix (MaxText's newer releases halve it for causal
  masks; docs/hardware.md and PaLM do not). ``seq_len``: tokens per packed row
  (``TrainConfig.sequence_length``). Returns FLOPs/token (Llama-2-7B: 4.286e10 at 2048).
  Raises ValueError for ``seq_len < 1``.
  """
  if seq_len < 1:
    raise ValueError(f"seq_len must be >= 1, got {seq_len}")
  attention = 12 * config.num_layers * config.num_heads * config.head_dim * seq_len
  return float(6 * matmul_params(config) + attention)


def step_throughput(tokens: int, seconds: float, num_devices: int, flops_per_token: float,
                    peak_flops_per_device: float) -> dict[str, float]:
  """Throughput and MFU of ``tokens`` processed in ``seconds`` on ``num_devices`` devices.

  Args:
    tokens: tokens the step(s) computed on. For hardware MFU pass rows x sequence_length (the
      model spends FLOPs on padding too); the loop's ``tokens`` (non-padding) gives a "useful" MFU.
    seconds: wall-clock seconds (> 0); num_devices: devices sharing the work (>= 1).
    flops_per_token: ``model_flops_per_token(...)`` (FLOPs/token).
    peak_flops_per_device: FLOP/s, e.g. ``device_peak_flops()[0]``.
  Returns:
    ``tokens_per_second`` (tokens/s), ``tokens_per_second_per_device`` (tokens/s/device),
    ``model_flops_per_second`` (FLOP/s, all devices), ``mfu`` (fraction, 0..1 for a real run).
  Raises ValueError for ``seconds <= 0``, ``num_devices < 1`` or ``peak_flops_per_device <= 0``.
  """
  if not (seconds > 0 and num_devices >= 1 and peak_flops_per_device > 0):
    raise ValueError(f"need seconds > 0, num_devices >= 1, peak_flops_per_device > 0; got "
                     f"{seconds}, {num_devices}, {peak_flops_per_device}")
  tps, flops = tokens / seconds, tokens / seconds * flops_per_token  # flops: FLOP/s, all devices
  return {"tokens_per_second": tps, "tokens_per_second_per_device": tps / num_devices,
          "model_flops_per_second": flops, "mfu": flops / (num_devices * peak_flops_per_device)}


class _TFScalarWriter:
  """clu's SummaryWriter.write_scalars through core TF: same events (float32, "scalars")."""

  def __init__(self, logdir: str):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from tensorflow.core.framework import summary_pb2  # pylint: disable=import-outside-toplevel
    self._tf = tf
    self._md = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
    self._writer = tf.summary.create_file_writer(logdir)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    with self._writer.as_default():
      for k, v in scalars.items():
        self._tf.summary.write(k, self._tf.constant(v, self._tf.float32), step=step,
                               metadata=self._md)

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


def _make_backend(logdir: str) -> Any:
  """clu's TF ``SummaryWriter`` (needs tensorboard), else ``_TFScalarWriter``."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  try:  # summaries only: keep TF off the accelerators JAX owns
    tf.config.set_visible_devices([], "GPU")
  except Exception:  # pylint: disable=broad-except  # TF already initialized its devices
    pass
  try:
    from clu import metric_writers  # pylint: disable=import-outside-toplevel
  except ImportError:  # clu's TF writer imports tensorboard, which tensorflow no longer pulls in
    return _TFScalarWriter(logdir)
  return metric_writers.SummaryWriter(logdir)


class SummaryWriter:
  """TensorBoard scalars of one run stage, e.g. ``RUN_DIR/tensorboard/<stage>``.

  Only process 0 (``jax.process_index() == 0``) writes event files; others write nothing and never
  import TensorFlow. Events go through clu's ``metric_writers.SummaryWriter`` (its
  ``create_default_writer`` would also log every scalar) or, without the ``tensorboard`` package
  clu's writer needs, the same events through core TF. ``logdir``: a local path (created if
  missing) or any URL ``tf.io.gfile`` opens, e.g. ``gs://b/run/tensorboard/m0`` (untested here).
  Never raises: values that are not finite numbers (nan, inf, str, None, arrays of >1 element)
  are skipped and counted in ``skipped`` (one warning per name); a failing backend (unwritable
  directory, full disk) is logged, counted in ``errors`` and disables writing (``enabled``).
  """

  def __init__(self, logdir: str | os.PathLike):
    self.logdir = os.fspath(logdir)
    self.skipped = self.errors = 0
    self._backend, self._warned = None, set()
    if jax.process_index() == 0:
      try:
        self._backend = _make_backend(self.logdir)
      except Exception as e:  # pylint: disable=broad-except
        self._disable("open", e)

  @property
  def enabled(self) -> bool:
    return self._backend is not None

  def _disable(self, what: str, e: Exception) -> None:
    self.errors += 1
    self._backend = None
    logging.error("TensorBoard summaries to %s disabled: %s failed: %s: %s", self.logdir, what,
                  type(e).__name__, e)

  def _call(self, method: str, *args) -> None:
    if self._backend is not None:
      try:
        getattr(self._backend, method)(*args)
      except Exception as e:  # pylint: disable=broad-except
        self._disable(method, e)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Writes ``{name: value}`` at ``step`` (int, e.g. the 1-based training step)."""
    clean = {}
    for name, value in scalars.items():
      try:
        arr = np.asarray(value)
        ok = arr.dtype.kind in "biuf" and arr.size == 1 and bool(np.isfinite(arr).all())
      except Exception:  # pylint: disable=broad-except
        ok = False
      if ok:
        clean[str(name)] = float(arr.reshape(()))
        continue
      self.skipped += 1
      if name not in self._warned:
        self._warned.add(name)
        logging.warning("summary %r at step %s skipped: %r is not a finite number (further "
                        "skips of it are only counted)", name, step, value)
    if clean:
      self._call("write_scalars", int(step), clean)

  def flush(self) -> None:
    """Writes buffered events to ``logdir``."""
    self._call("flush")

  def close(self) -> None:
    """Flushes and closes; later writes are dropped. Idempotent."""
    self._call("close")
    self._backend = None

  def __enter__(self) -> "SummaryWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
