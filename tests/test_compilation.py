"""Tests for humpback_jax.compilation: XLA compilations counted from jax.monitoring events,
persistent-cache hits counted apart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np

from humpback_jax import compilation


def test_a_new_function_compiles_once_and_a_rerun_does_not():
  x = jax.device_put(np.arange(7, dtype=np.float32))
  f = jax.jit(lambda a: jnp.sin(a) * 3.0 + 0.25)  # a fresh function: not in any cache
  with compilation.counting() as first:
    jax.block_until_ready(f(x))
  assert first["compilations"] == 1, first
  assert first["compile_seconds"] > 0 and first["cache_hits"] == 0
  assert first["trace_seconds"] > 0 and first["lower_seconds"] > 0
  with compilation.counting() as again:
    jax.block_until_ready(f(x))  # in-memory jit cache: no event at all
  assert again["compilations"] == 0 and again["compile_seconds"] == 0
  with compilation.counting() as new_shape:
    jax.block_until_ready(f(jax.device_put(np.arange(9, dtype=np.float32))))
  assert new_shape["compilations"] == 1


def test_snapshots_are_monotonic_and_diff_by_key():
  before = compilation.compile_stats()
  assert set(before) == set(compilation.KEYS)
  jax.block_until_ready(jax.jit(lambda a: a * 5 - 1)(jax.device_put(np.ones(3, np.int32))))
  after = compilation.compile_stats()
  d = compilation.diff(after, before)
  assert d["compilations"] == 1 and isinstance(d["compilations"], int)
  assert after["compile_seconds"] >= before["compile_seconds"]


_CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import jax, jax.numpy as jnp
    from humpback_jax import compilation
    compilation.enable_persistent_cache(sys.argv[1])
    x = jax.device_put(np.arange(11, dtype=np.float32))
    f = jax.jit(lambda a: jnp.cos(a) * 7.0 - jnp.tanh(a))
    with compilation.counting() as c:
      y = np.asarray(f(x))
    print(json.dumps(dict(c, y=y.tolist())))
""")


def test_a_persistent_cache_hit_is_not_a_compilation(tmp_path):
  """Two fresh processes share a persistent cache: the first compiles the function and writes
  it, the second loads it (one cache hit, no compilation) and computes the same values."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  runs = []
  for _ in range(2):
    res = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "cache")], env=env,
                         cwd=root, capture_output=True, text=True, timeout=300, check=True)
    runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
  first, second = runs
  assert first["compilations"] == 1 and first["cache_hits"] == 0, first
  assert second["compilations"] == 0 and second["cache_hits"] == 1, second
  assert second["compile_seconds"] == 0 and second["cache_hit_seconds"] > 0
  assert first["y"] == second["y"]
