"""humpback_jax.platform: explicit CPU platform and no device-probe noise on CPU-only machines."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

from humpback_jax import platform

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE_NOISE = re.compile(r"cuInit|CUDA|cuda|libtpu|TPU")


def _no_libtpu():
  return False


def _clean_env(**extra):
  """A fresh shell's environment: none of the JAX/XLA/TF variables the Makefile or CI set."""
  env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
  env.update(extra)
  return env


def _run(code, env, timeout=300):
  return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout, check=False)


# --- detection with fake device trees ---------------------------------------------------------


def _touch(root, *names):
  for name in names:
    path = os.path.join(root, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "w").close()


def test_detect_cpu_only(tmp_path):
  _touch(tmp_path, "null", "tty0", "vfio/vfio", "dri/card0")  # vfio control node alone: no TPU
  assert platform.detect_accelerators(str(tmp_path), _no_libtpu) == ()


def test_detect_missing_dev_root(tmp_path):
  assert platform.detect_accelerators(str(tmp_path / "absent"), _no_libtpu) == ()


@pytest.mark.parametrize("node", ["nvidia0", "nvidiactl", "accel0", "kfd", "vfio/0"])
def test_detect_device_nodes(tmp_path, node):
  _touch(tmp_path, "null", "vfio/vfio", node)
  assert platform.detect_accelerators(str(tmp_path), _no_libtpu) == (str(tmp_path / node),)


def test_detect_libtpu(tmp_path):
  assert platform.detect_accelerators(str(tmp_path), lambda: True) == ("libtpu (Python package)",)


# --- the decision, on a fake environment --------------------------------------------------------


def test_cpu_only_sets_jax_platforms(tmp_path):
  env = {"PATH": "/bin"}
  d = platform.configure_platform(env, str(tmp_path), _no_libtpu)
  assert env == {"PATH": "/bin", "JAX_PLATFORMS": "cpu"}
  assert d.cpu_only and d.accelerators == () and d.env_set == {"JAX_PLATFORMS": "cpu"}
  assert not d.tf_filter  # hooks are only installed for the real os.environ


@pytest.mark.parametrize("user", [{"JAX_PLATFORMS": "tpu"}, {"JAX_PLATFORMS": ""},
                                  {"JAX_PLATFORMS": "cuda,cpu"}, {"JAX_PLATFORM_NAME": "cpu"}])
def test_user_setting_is_kept(tmp_path, user):
  env = dict(user)
  d = platform.configure_platform(env, str(tmp_path), _no_libtpu)
  assert env == user and d.env_set == {}
  assert "set by the user" in d.reason


def test_accelerator_changes_nothing(tmp_path):
  _touch(tmp_path, "nvidia0")
  env = {}
  d = platform.configure_platform(env, str(tmp_path), _no_libtpu)
  assert env == {} and d.env_set == {} and not d.cpu_only and not d.tf_filter
  env = {}
  assert platform.configure_platform(env, str(tmp_path / "x"), lambda: True).env_set == {}
  assert env == {}


# --- the stderr filter ---------------------------------------------------------------------------

CAPTURED = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796162356.848402    4042 port.cc:153] oneDNN custom operations are on. You may see slightly different numerical results.
I0000 00:00:1796162356.850194    4042 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
I0000 00:00:1796162592.397049    7125 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use available CPU instructions.
To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the appropriate compiler flags.
W0000 00:00:1796162774.783609    9067 port.cc:148] TF_ENABLE_ONEDNN_OPTS is not set to either '0', 'false', '1', or 'true'.
/x/site-packages/tensorflow/foo.py:3: DeprecationWarning: a real Python warning
  import bar
E0000 00:00:1796162356.850194    4042 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)
E0000 00:00:1796162356.850194    4042 op_kernel.cc:1838] a real TensorFlow error
2025-09-17 14:44:05.157831: I external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] Could not find cuda drivers on your machine, GPU will not be used.
2025-09-17 14:44:05.176998: E external/local_xla/xla/stream_executor/cuda/cuda_driver.cc:152] failed call to cuInit: UNKNOWN ERROR (303)
2025-09-17 14:44:05.176998: W tensorflow/core/kernels/foo.cc:12] a real TensorFlow warning
To enable the following instructions: (not a continuation here: kept)
Traceback (most recent call last):
"""


def test_filter_drops_probe_and_info_lines_only():
  kept, dropped = platform.filter_probe_lines(CAPTURED.splitlines(keepends=True))
  assert "".join(kept) == textwrap.dedent("""\
      W0000 00:00:1796162774.783609    9067 port.cc:148] TF_ENABLE_ONEDNN_OPTS is not set to either '0', 'false', '1', or 'true'.
      /x/site-packages/tensorflow/foo.py:3: DeprecationWarning: a real Python warning
        import bar
      E0000 00:00:1796162356.850194    4042 op_kernel.cc:1838] a real TensorFlow error
      2025-09-17 14:44:05.176998: W tensorflow/core/kernels/foo.cc:12] a real TensorFlow warning
      To enable the following instructions: (not a continuation here: kept)
      Traceback (most recent call last):
      """)
  assert len(dropped) == 8
  assert not any(PROBE_NOISE.search(line) for line in kept)


# --- end to end, in fresh interpreters ------------------------------------------------------------

cpu_only = pytest.mark.skipif(bool(platform.detect_accelerators()),
                              reason="this machine has an accelerator: probing is meaningful")


@cpu_only
def test_fresh_process_prints_no_probe_noise():
  """The README's situation: a fresh shell on a CPU-only machine, logging at INFO like the CLI."""
  r = _run("""
      import logging
      logging.basicConfig(level=logging.INFO)
      import humpback_jax
      import jax
      import seqio
      import tensorflow as tf
      print(jax.devices()[0].platform, jax.device_count())
      print(tf.config.list_physical_devices(), tf.constant(1).device)
      print(humpback_jax.platform.DECISION.env_set)
      """, _clean_env())
  assert r.returncode == 0, r.stderr
  lines = r.stdout.splitlines()
  assert lines[0] == "cpu 1"
  assert "GPU" not in lines[1] and lines[1].endswith("device:CPU:0")
  assert lines[2] == "{'JAX_PLATFORMS': 'cpu'}"
  assert not PROBE_NOISE.search(r.stderr), r.stderr


@cpu_only
def test_jax_imported_first_is_configured_too():
  """tools/*.py import jax before humpback_jax; the backend is not initialized by then."""
  r = _run("""
      import logging
      logging.basicConfig(level=logging.INFO)
      import jax
      import humpback_jax
      print(jax.devices()[0].platform, humpback_jax.platform.DECISION.jax_config_set)
      """, _clean_env())
  assert r.returncode == 0, r.stderr
  assert r.stdout.split() == ["cpu", "True"]
  assert not PROBE_NOISE.search(r.stderr), r.stderr


def test_user_jax_platforms_is_respected():
  """A user's JAX_PLATFORMS wins, even an impossible one: JAX then fails loudly, as asked."""
  r = _run("""
      import os
      import humpback_jax
      import jax
      print(os.environ["JAX_PLATFORMS"], humpback_jax.platform.DECISION.env_set, flush=True)
      jax.devices()
      """, _clean_env(JAX_PLATFORMS="tpu"))
  assert r.stdout.splitlines() == ["tpu {}"]
  assert r.returncode != 0 and "tpu" in r.stderr


def test_filtered_stderr_keeps_order_and_survives_a_crash():
  """Kept lines arrive in order, and still arrive if the process dies inside the block."""
  r = _run("""
      import os, sys
      from humpback_jax.platform import _FilteredStderr
      print("before", file=sys.stderr, flush=True)
      with _FilteredStderr():
        os.write(2, b"I0000 00:00:1796162356.848402    4042 cudart_stub.cc:31] Could not find cuda drivers\\n")
        print("python warning inside", file=sys.stderr, flush=True)
        os.write(2, b"W0000 00:00:1796162356.848402    4042 foo.cc:1] a C++ warning\\n")
      print("after", file=sys.stderr, flush=True)
      with _FilteredStderr():
        os.write(2, b"F0000 00:00:1796162356.848402    4042 bar.cc:9] Check failed: the last words\\n")
        os.abort()
      """, _clean_env(), timeout=60)
  assert r.returncode != 0
  assert r.stderr.splitlines() == [
      "before", "python warning inside",
      "W0000 00:00:1796162356.848402    4042 foo.cc:1] a C++ warning", "after",
      "F0000 00:00:1796162356.848402    4042 bar.cc:9] Check failed: the last words"]
