"""Counting XLA compilations: how many executables a run built and the seconds it spent.

JAX reports every backend compile through ``jax.monitoring``: the duration event
``/jax/core/compile/backend_compile_duration`` wraps ``compiler.compile_or_get_cached``, so it
fires both for a real XLA compile and for an executable read back from the persistent
compilation cache; a persistent-cache hit additionally records the event
``/jax/compilation_cache/cache_hits`` (on the same thread, just before the duration event).
This module listens to both (process-wide, installed once on import) and keeps running totals:

  ``compile_stats()``  -> {"compilations": int, "compile_seconds": float, "cache_hits": int,
                           "cache_hit_seconds": float, "trace_seconds": float,
                           "lower_seconds": float}
  ``diff(after, before)``  the same keys, after - before (per stage: snapshot, run, diff).
  ``counting()``       a context manager yielding a dict filled with the diff on exit.

``compilations`` counts executables XLA actually compiled (a persistent-cache hit is not one;
an in-memory ``jax.jit`` cache hit fires no event at all), ``compile_seconds`` their XLA
compile time; ``cache_hits``/``cache_hit_seconds`` the executables loaded from the persistent
cache and the seconds that took; ``trace_seconds``/``lower_seconds`` the time spent tracing
Python to jaxprs and lowering them to StableHLO (each jit cache miss, whether or not XLA then
compiles). Totals are per process (each host of a multi-host run counts its own) and
monotonic; call ``reset()`` only in tests.

``enable_persistent_cache(directory)`` turns on JAX's persistent compilation cache there.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import jax

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"
LOWER_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"

KEYS = ("compilations", "compile_seconds", "cache_hits", "cache_hit_seconds", "trace_seconds",
        "lower_seconds")

_lock = threading.Lock()
_local = threading.local()  # .pending_hit: a cache hit announced, its duration not yet seen
_totals: dict[str, float] = dict.fromkeys(KEYS, 0)
_installed = False


def _on_event(event: str, **kwargs) -> None:
  del kwargs
  if event == CACHE_HIT_EVENT:
    _local.pending_hit = True


def _on_duration(event: str, duration: float, **kwargs) -> None:
  del kwargs
  with _lock:
    if event == BACKEND_COMPILE_EVENT:
      if getattr(_local, "pending_hit", False):
        _local.pending_hit = False
        _totals["cache_hits"] += 1
        _totals["cache_hit_seconds"] += duration
      else:
        _totals["compilations"] += 1
        _totals["compile_seconds"] += duration
    elif event == TRACE_EVENT:
      _totals["trace_seconds"] += duration
    elif event == LOWER_EVENT:
      _totals["lower_seconds"] += duration


def install() -> None:
  """Registers the listeners (idempotent; done on import)."""
  global _installed
  with _lock:
    if _installed:
      return
    jax.monitoring.register_event_listener(_on_event)
    jax.monitoring.register_event_duration_secs_listener(_on_duration)
    _installed = True


def compile_stats() -> dict:
  """Process totals since import: ``{"compilations": int, "compile_seconds": float,
  "cache_hits": int, "cache_hit_seconds": float, "trace_seconds": float,
  "lower_seconds": float}`` (see the module docstring)."""
  with _lock:
    out = dict(_totals)
  out["compilations"] = int(out["compilations"])
  out["cache_hits"] = int(out["cache_hits"])
  return out


def diff(after: dict, before: dict) -> dict:
  """``after - before`` key by key (two ``compile_stats()`` snapshots); seconds rounded to ms."""
  out = {}
  for k in KEYS:
    d = after.get(k, 0) - before.get(k, 0)
    out[k] = int(d) if k in ("compilations", "cache_hits") else round(float(d), 3)
  return out


@contextlib.contextmanager
def counting() -> Iterator[dict]:
  """``with counting() as c: ...`` -> ``c`` holds ``diff`` of the block on exit."""
  before = compile_stats()
  result: dict = {}
  try:
    yield result
  finally:
    result.update(diff(compile_stats(), before))


def reset() -> None:
  """Zeroes the totals (tests only: stage diffs need monotonic totals)."""
  with _lock:
    for k in KEYS:
      _totals[k] = 0


def enable_persistent_cache(directory: str, min_compile_time_secs: float = 0.0) -> None:
  """JAX's persistent compilation cache in ``directory`` (local path or a URI JAX's cache
  understands, e.g. gs://): executables compiled for more than ``min_compile_time_secs`` are
  written there and later runs load them (counted in ``cache_hits``, not ``compilations``)."""
  jax.config.update("jax_compilation_cache_dir", str(directory))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_secs))
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


install()
