"""hosts.on_writer across two real processes (jax.distributed on loopback, gloo on CPU)."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                               process_id=int(sys.argv[2]))
    from humpback_jax import hosts
    calls = []

    def work():
      calls.append(jax.process_index())
      return "built"

    out = {"result": hosts.on_writer(work, "work"), "calls": calls}
    def bad():
      raise ValueError("bad corpus line 7")
    try:
      hosts.on_writer(bad, "prepare_web")
    except BaseException as e:
      out["error"] = f"{type(e).__name__}: {e}"
    print("RESULT " + json.dumps(out), flush=True)
""")


def test_on_writer_runs_on_process_0_and_fails_everywhere(tmp_path):
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  script = tmp_path / "on_writer.py"
  script.write_text(SCRIPT)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             PYTHONPATH=REPO)
  procs = [subprocess.Popen([sys.executable, str(script), f"localhost:{port}", str(i)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True) for i in (0, 1)]
  outs = []
  for p in procs:
    try:
      text, _ = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      pytest.fail("a process hung in hosts.on_writer")
    line = [l for l in text.splitlines() if l.startswith("RESULT ")]
    assert p.returncode == 0 and line, text[-2000:]
    outs.append(json.loads(line[0][len("RESULT "):]))
  assert outs[0] == {"result": "built", "calls": [0],
                     "error": "ValueError: bad corpus line 7"}
  assert outs[1] == {"result": None, "calls": [],
                     "error": "RuntimeError: prepare_web failed on process 0 (its log has the "
                              "error)"}
