"""Test isolation for process-global JAX settings."""

import pytest

_BASELINE = {}


def pytest_configure(config):
  del config
  import jax
  _BASELINE["dir"] = jax.config.jax_compilation_cache_dir


@pytest.fixture(autouse=True)
def _no_leaked_compilation_cache():
  """A test that runs the command line in-process turns on JAX's persistent compilation cache
  in its run directory (``cli._enable_compilation_cache``), a process-wide setting. After each
  test it is set back to what the session started with, so that no later test writes
  executables into another test's (possibly deleted, or fake-GCS) directory."""
  import jax
  from jax._src import compilation_cache
  yield
  if jax.config.jax_compilation_cache_dir != _BASELINE["dir"]:
    jax.config.update("jax_compilation_cache_dir", _BASELINE["dir"])
    compilation_cache.reset_cache()
