"""Quiet, explicit platform selection for CPU-only machines.

Why. On a machine without an accelerator, the first ``jax.devices()`` probes every backend JAX
knows (``Unable to initialize backend 'tpu': ... libtpu.so ...``), and TensorFlow, imported by
seqio, probes CUDA (``cudart_stub.cc ... Could not find cuda drivers``, ``failed call to
cuInit``). None of these is a failure, but a newcomer reads them as one. ``configure_platform``
(run by ``import humpback_jax``, i.e. before any entry point - CLI, tools, library code - imports
JAX or TensorFlow through this package) makes the choice explicit instead:

* **No accelerator detected** (no ``/dev/nvidia*``, no ``/dev/kfd`` (ROCm), no TPU device
  ``/dev/accel*`` or numbered ``/dev/vfio/N``, no ``libtpu`` package; see ``detect_accelerators``):

  - ``JAX_PLATFORMS=cpu`` is set in ``os.environ`` unless the user set ``JAX_PLATFORMS`` (or the
    deprecated ``JAX_PLATFORM_NAME``), even to an empty string. If JAX was imported before
    this package (``tools/*.py`` do that) and no backend is initialized yet,
    ``jax.config.update("jax_platforms", "cpu")`` does the same, again only if unset.
  - TensorFlow's import is wrapped (a one-shot import hook; nothing happens unless something
    imports ``tensorflow`` later): while it imports and lists its physical devices, file
    descriptor 2 goes through a small filter process that forwards every line at once to the
    real stderr *except* the CUDA probe's lines and TensorFlow's import-time INFO lines
    (``I...`` in absl/TF format, the ``All log messages before absl::InitializeLog()`` banner;
    see ``filter_probe_lines``). Every other line - TensorFlow warnings and errors, Python
    warnings, tracebacks - goes through unchanged. ``TF_CPP_MIN_LOG_LEVEL`` is not used:
    TensorFlow >= 2.19 ignores it for import-time messages, the ``cuInit`` line is an ERROR
    (level 3 would hide every TensorFlow error), and jaxlib honours the same variable, so it
    would also hide XLA's own warnings and errors.

* **An accelerator is detected**: nothing is changed; JAX and TensorFlow probe as usual (their
  messages are then meaningful).

Opting out: set ``JAX_PLATFORMS`` yourself (respected as is), and/or
``HUMPBACK_SHOW_PROBE_LOGS=1`` to see TensorFlow's import output unfiltered.
``configure_platform`` returns (and ``humpback_jax.platform.DECISION`` keeps) a
``PlatformDecision`` saying what was detected and what was changed.
"""

from __future__ import annotations

import dataclasses
import importlib.abc
import importlib.util
import os
import re
import subprocess
import sys
from typing import Callable, Iterable, MutableMapping

SHOW_PROBE_LOGS_ENV = "HUMPBACK_SHOW_PROBE_LOGS"


@dataclasses.dataclass(frozen=True)
class PlatformDecision:
  """What ``configure_platform`` found and did.

  accelerators: evidence of an accelerator (device paths, ``libtpu``); empty on CPU-only.
  env_set: the environment variables this call set (only ones the user had not set).
  jax_config_set: JAX was already imported and ``jax_platforms`` was set to "cpu" in its config.
  tf_filter: TensorFlow's import-time probe output will be filtered (hook installed).
  reason: one line for humans.
  """
  accelerators: tuple[str, ...]
  env_set: dict[str, str]
  jax_config_set: bool
  tf_filter: bool
  reason: str

  @property
  def cpu_only(self) -> bool:
    return not self.accelerators


DECISION: PlatformDecision | None = None


def _libtpu_installed() -> bool:
  try:
    return importlib.util.find_spec("libtpu") is not None
  except (ImportError, ValueError):
    return False


def detect_accelerators(dev_root: str = "/dev",
                        libtpu_installed: Callable[[], bool] = _libtpu_installed
                        ) -> tuple[str, ...]:
  """Evidence of a GPU or TPU on this machine (empty tuple: CPU only).

  Looks for NVIDIA device nodes (``nvidia0``, ``nvidiactl``, ...), the ROCm ``kfd`` node, TPU
  device nodes (``accel*`` on TPU v2-v4 VMs, numbered IOMMU groups ``vfio/N`` on v5e and later;
  ``vfio/vfio`` alone is the VFIO control node present on many hosts and does not count) and an
  installed ``libtpu`` package. ``dev_root`` and ``libtpu_installed`` are injectable for tests.
  """
  found = []
  try:
    names = sorted(os.listdir(dev_root))
  except OSError:
    names = []
  for name in names:
    if name.startswith("nvidia") or name.startswith("accel") or name == "kfd":
      found.append(os.path.join(dev_root, name))
  vfio = os.path.join(dev_root, "vfio")
  try:
    groups = sorted(n for n in os.listdir(vfio) if n.isdigit())
  except OSError:
    groups = []
  found.extend(os.path.join(vfio, g) for g in groups)
  if libtpu_installed():
    found.append("libtpu (Python package)")
  return tuple(found)


# --- TensorFlow's import-time output --------------------------------------------------------

# absl:  I0000 00:00:1796162356.848402    4042 cudart_stub.cc:31] Could not find cuda drivers ...
_ABSL_LINE = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ (\S+?):\d+\] (.*)$")
# TF (older): 2025-09-17 14:44:05.157831: I external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] ...
_TF_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: ([IWEF]) (\S+?):\d+\] (.*)$")
_ABSL_BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
# The second line of cpu_feature_guard.cc's INFO message.
_CONTINUATIONS = ("To enable the following instructions:",)


class _ProbeLineFilter:
  """The line-by-line rule of ``filter_probe_lines`` (it remembers whether the last line went)."""

  def __init__(self):
    self._previous_dropped = False

  def keep(self, line: str) -> bool:
    text = line.rstrip("\r\n")
    match = _ABSL_LINE.match(text) or _TF_LINE.match(text)
    drop = False
    if text == _ABSL_BANNER:
      drop = True
    elif match:
      severity, _, message = match.groups()
      drop = severity == "I" or message.startswith("failed call to cuInit")
    elif self._previous_dropped and text.startswith(_CONTINUATIONS):
      drop = True
    self._previous_dropped = drop
    return not drop


def filter_probe_lines(lines: Iterable[str]) -> tuple[list[str], list[str]]:
  """Splits TensorFlow's import-time stderr (CPU-only machine) into (kept, dropped) lines.

  Dropped: C++ INFO lines (absl or TF format; e.g. ``Could not find cuda drivers``, oneDNN and
  CPU-feature notes) and the continuation line of a dropped one, the absl pre-init banner, and
  the ``failed call to cuInit`` ERROR (no NVIDIA device exists, so the probe must fail). Kept:
  everything else, in order - C++ warnings/errors, Python warnings, tracebacks, plain text.
  """
  rule = _ProbeLineFilter()
  kept, dropped = [], []
  for line in lines:
    (kept if rule.keep(line) else dropped).append(line)
  return kept, dropped


def _filter_stream(inp, out) -> None:
  """Copies binary lines from ``inp`` to ``out`` as they come, without the dropped ones."""
  rule = _ProbeLineFilter()
  for line in inp:
    if rule.keep(line.decode("utf-8", errors="replace")):
      out.write(line)
      out.flush()


class _FilteredStderr:
  """Context manager: file descriptor 2 goes through a filter process while it is active.

  The filter is a child process (``python -I platform.py --filter-stderr``) that reads a pipe
  and forwards each kept line at once to the real stderr: nothing is held back, so even if this
  process dies inside the block (a crash, not an exception) everything it printed that the
  filter keeps still arrives; and a separate process cannot deadlock on the GIL while C++ code
  writes. On exit fd 2 is restored and the filter drained before the program goes on, so the
  order of stderr is kept. If the filter cannot start, stderr is left alone.
  """

  def __enter__(self):
    self._saved = self._proc = None
    try:
      sys.stderr.flush()
    except (AttributeError, OSError, ValueError):
      pass
    try:
      saved = os.dup(2)
    except OSError:  # no fd 2 (daemon): nothing to filter
      return self
    try:
      read_end, write_end = os.pipe()
      try:
        self._proc = subprocess.Popen(
            [sys.executable, "-I", os.path.abspath(__file__), "--filter-stderr"],
            stdin=read_end, stdout=subprocess.DEVNULL, stderr=saved)
      finally:
        os.close(read_end)
    except (OSError, ValueError, subprocess.SubprocessError):
      os.close(saved)
      try:
        os.close(write_end)
      except (OSError, UnboundLocalError):
        pass
      return self
    os.dup2(write_end, 2)
    os.close(write_end)
    self._saved = saved
    return self

  def __exit__(self, exc_type, exc, tb):
    if self._saved is None:
      return False
    try:
      sys.stderr.flush()
    except (AttributeError, OSError, ValueError):
      pass
    os.dup2(self._saved, 2)  # closes our last write end of the pipe: the filter sees EOF
    os.close(self._saved)
    try:
      self._proc.wait(timeout=30)
    except subprocess.TimeoutExpired:  # a grandchild still holds the pipe: let it run
      pass
    return False


class _FilteringLoader(importlib.abc.Loader):
  """Wraps TensorFlow's loader: import + device listing under ``_FilteredStderr``."""

  def __init__(self, loader):
    self._loader = loader

  def create_module(self, spec):
    return self._loader.create_module(spec)

  def exec_module(self, module):
    with _FilteredStderr():
      try:
        self._loader.exec_module(module)
      finally:
        # Leave no trace of the wrapper on the imported module.
        module.__loader__ = self._loader
        if getattr(module, "__spec__", None) is not None:
          module.__spec__.loader = self._loader
      # The CUDA probe (cuInit) runs when TensorFlow first lists its devices; do it here, where
      # its output is filtered. Listing does not initialize TF's context: visible devices,
      # threading and memory settings can still be changed afterwards.
      try:
        module.config.list_physical_devices()
      except Exception:  # pylint: disable=broad-except
        pass

  def __getattr__(self, name):
    return getattr(self._loader, name)


class _TensorFlowImportHook(importlib.abc.MetaPathFinder):
  """One-shot ``sys.meta_path`` finder: wraps the loader of the top-level ``tensorflow``."""

  def find_spec(self, fullname, path, target=None):
    if fullname != "tensorflow":
      return None
    self.remove()
    for finder in sys.meta_path:
      find_spec = getattr(finder, "find_spec", None)
      if find_spec is None:
        continue
      spec = find_spec(fullname, path, target)
      if spec is not None:
        break
    else:
      return None
    if spec.loader is not None and hasattr(spec.loader, "exec_module"):
      spec.loader = _FilteringLoader(spec.loader)
    return spec

  def remove(self):
    try:
      sys.meta_path.remove(self)
    except ValueError:
      pass


def _install_tf_filter() -> bool:
  if "tensorflow" in sys.modules:  # too late: its import-time output is already printed
    return False
  if any(isinstance(f, _TensorFlowImportHook) for f in sys.meta_path):
    return True
  sys.meta_path.insert(0, _TensorFlowImportHook())
  return True


# --- the decision ---------------------------------------------------------------------------


def configure_platform(environ: MutableMapping[str, str] | None = None,
                       dev_root: str = "/dev",
                       libtpu_installed: Callable[[], bool] = _libtpu_installed,
                       install_tf_filter: bool = True) -> PlatformDecision:
  """Selects the CPU platform explicitly on CPU-only machines; never overrides the user.

  On a machine where ``detect_accelerators`` finds nothing: sets ``JAX_PLATFORMS=cpu`` in
  ``environ`` (default ``os.environ``) unless ``JAX_PLATFORMS`` or ``JAX_PLATFORM_NAME`` is
  already present; if JAX is already imported with no backend initialized and its
  ``jax_platforms`` unset, sets it in ``jax.config`` too; and (``install_tf_filter``, unless
  ``HUMPBACK_SHOW_PROBE_LOGS`` is set non-empty) installs the TensorFlow import filter described
  in the module docstring. Elsewhere changes nothing. Idempotent. Returns a ``PlatformDecision``
  (also stored in ``humpback_jax.platform.DECISION`` when ``environ`` is ``os.environ``).
  """
  global DECISION
  real_env = environ is None
  env = os.environ if environ is None else environ
  accelerators = detect_accelerators(dev_root, libtpu_installed)
  env_set: dict[str, str] = {}
  jax_config_set = False
  tf_filter = False
  if accelerators:
    reason = f"accelerator present ({', '.join(accelerators)}): JAX and TensorFlow choose"
  else:
    user_choice = [k for k in ("JAX_PLATFORMS", "JAX_PLATFORM_NAME") if k in env]
    if user_choice:
      reason = f"CPU only; {user_choice[0]}={env[user_choice[0]]!r} set by the user, kept"
    else:
      env["JAX_PLATFORMS"] = "cpu"
      env_set["JAX_PLATFORMS"] = "cpu"
      reason = "CPU only: JAX_PLATFORMS=cpu"
      if real_env and "jax" in sys.modules:
        jax_config_set = _set_jax_config_cpu()
    if install_tf_filter and not env.get(SHOW_PROBE_LOGS_ENV) and real_env:
      tf_filter = _install_tf_filter()
    if tf_filter:
      reason += "; TensorFlow's CUDA probe and import INFO lines filtered from stderr"
  decision = PlatformDecision(accelerators, env_set, jax_config_set, tf_filter, reason)
  if real_env:
    DECISION = decision
  return decision


def _set_jax_config_cpu() -> bool:
  """JAX imported before us: JAX_PLATFORMS was read at its import; set the config instead."""
  try:
    import jax  # pylint: disable=import-outside-toplevel
    from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel
    if xla_bridge.backends_are_initialized() or jax.config.jax_platforms:
      return False
    jax.config.update("jax_platforms", "cpu")
    return True
  except Exception:  # pylint: disable=broad-except  (private API moved: keep JAX's default)
    return False


if __name__ == "__main__" and sys.argv[1:] == ["--filter-stderr"]:
  _filter_stream(sys.stdin.buffer, sys.stderr.buffer)
