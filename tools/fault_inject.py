"""Fault injection: SIGKILL the pipeline at random moments in every stage, resume, compare.

  python tools/fault_inject.py --kills 20 [--gin_file configs/smoke.gin] [--work_dir DIR]

1. A reference run, uninterrupted (or ``--reference DIR``, an existing finished run made with
   the same config).
2. The faulted run: ``humpback-jax run`` in a fresh process; the kills are spread over the
   stages in pipeline order (``--kills`` split as evenly as possible). For each kill the tool
   waits until the target stage is running (the manifest says so), sleeps a random fraction of
   that stage's reference duration, and SIGKILLs the whole process group; then it starts the
   same command again, which must resume. After the last kill the run goes to the end.
3. Comparison with the reference (TensorBoard event files, named by time, excepted): every
   JSONL file byte for byte (partial files included, so a record written twice shows), every
   JSON file with its wall-clock fields removed, and every
   model's parameters array for array (exact equality). Records are counted by id: an id of
   the reference missing from the faulted run is lost; an id written twice in one file is
   duplicated.

Prints one JSON object: ``kills``, ``survived`` (kills after which the rerun resumed and the
run finished), ``records_lost``, ``records_duplicated``, ``identical`` (bool), ``differences``
(what differed), ``kills_per_stage``, ``restarts``, ``wall_seconds``, ``reference_seconds``.
Exit status 0 iff every kill was survived and the artifacts are identical.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
# Fields of JSON artifacts that measure wall-clock time, not results.
_VOLATILE = {"wall_seconds", "seconds", "train_seconds", "eval_seconds", "tokens_per_second",
             "started", "finished", "attempts", "compilations", "compile_seconds",
             "compile_cache_hits", "compile_last_run"}  # a resumed run compiles again


def _command(gin_files, gin_params, run_dir) -> list[str]:
  cmd = [sys.executable, "-m", "humpback_jax.cli", "run", f"--run_dir={run_dir}",
         "--no_progress"]
  cmd += [f"--gin_file={g}" for g in gin_files] + [f"--gin_param={p}" for p in gin_params]
  return cmd


def _manifest(run_dir: pathlib.Path) -> dict:
  try:
    return json.loads((run_dir / "manifest.json").read_text())
  except (OSError, ValueError):
    return {}


def _start(cmd, log_path: pathlib.Path) -> subprocess.Popen:
  log = open(log_path, "ab")
  return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                          start_new_session=True)


def run_reference(gin_files, gin_params, run_dir: pathlib.Path) -> float:
  """Runs the pipeline uninterrupted into ``run_dir``; returns its wall time (seconds).

  Raises:
    RuntimeError: the run failed (its log is named).
  """
  t0 = time.time()
  run_dir.mkdir(parents=True, exist_ok=True)
  log = run_dir.parent / f"{run_dir.name}.log"
  proc = _start(_command(gin_files, gin_params, run_dir), log)
  if proc.wait() != 0:
    raise RuntimeError(f"reference run failed (exit {proc.returncode}); see {log}")
  return time.time() - t0


def _plan(stages: list[str], kills: int) -> list[str]:
  """``kills`` target stages, spread evenly over ``stages`` in pipeline order."""
  return [stages[i * len(stages) // kills] for i in range(kills)] if kills else []


def run_faulted(gin_files, gin_params, run_dir: pathlib.Path, reference: dict, kills: int,
                seed: int, attempt_timeout: float) -> dict:
  """The faulted run (see the module docstring). Returns counters of what happened."""
  rng = random.Random(seed)
  stages = list(reference["stages"])
  durations = {k: float(v.get("seconds") or 1.0) for k, v in reference["stages"].items()}
  cmd = _command(gin_files, gin_params, run_dir)
  log = run_dir.parent / f"{run_dir.name}.log"
  run_dir.mkdir(parents=True, exist_ok=True)
  done_kills, restarts, failures = [], 0, []
  for target in _plan(stages, kills):
    proc = _start(cmd, log)
    restarts += 1
    deadline = time.time() + attempt_timeout
    while proc.poll() is None and time.time() < deadline:  # wait for the target stage
      st = _manifest(run_dir).get("stages", {})
      running = [k for k, v in st.items() if v.get("status") == "running"]
      if st.get(target, {}).get("status") == "done" or (running and stages.index(running[0])
                                                          > stages.index(target)):
        break  # resumed past it already: kill in whatever runs now
      if target in running:
        break
      time.sleep(0.02)
    time.sleep(rng.uniform(0.0, durations.get(target, 1.0)))
    if proc.poll() is None:
      st = _manifest(run_dir).get("stages", {})
      where = next((k for k, v in st.items() if v.get("status") == "running"), "between stages")
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
      done_kills.append(where)
    elif proc.returncode != 0:
      failures.append(f"attempt {restarts} exited with {proc.returncode} before its kill")
  proc = _start(cmd, log)  # the last attempt runs to the end
  restarts += 1
  try:
    rc = proc.wait(timeout=attempt_timeout)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    rc = "timeout"
  if rc != 0:
    failures.append(f"final attempt exited with {rc}")
  return {"kills": len(done_kills), "kills_per_stage": dict(collections.Counter(done_kills)),
          "restarts": restarts, "failures": failures}


def _strip(obj):
  if isinstance(obj, dict):
    return {k: _strip(v) for k, v in obj.items() if k not in _VOLATILE}
  if isinstance(obj, list):
    return [_strip(v) for v in obj]
  return obj


def _ids(path: pathlib.Path) -> list:
  ids = []
  for line in path.read_text(encoding="utf-8").splitlines():
    try:
      ids.append(json.loads(line).get("id"))
    except (ValueError, AttributeError):
      ids.append(("unparsable", line[:40]))
  return ids


def _params(path: pathlib.Path):
  import jax
  from humpback_jax.pipeline.training import read_params
  return jax.tree.leaves(read_params(path.absolute()))


def compare(reference: pathlib.Path, faulted: pathlib.Path) -> dict:
  """Compares two finished run directories (see the module docstring)."""
  import numpy as np
  diffs, lost, duplicated = [], 0, 0
  for ref in sorted(reference.rglob("*")):
    rel = ref.relative_to(reference)
    skipped_dirs = (".jax_cache", "models", "tensorboard")  # caches; models below; timed logs
    if not ref.is_file() or rel.parts[0] in skipped_dirs or rel.name in (
        "manifest.json", "report.md", "config.gin"):
      continue
    other = faulted / rel
    if not other.exists():
      diffs.append(f"{rel}: missing")
      continue
    if ref.suffix == ".jsonl":
      want, got = _ids(ref), _ids(other)
      lost += len(set(want) - set(got))
      duplicated += len(got) - len(set(got))
      if ref.read_bytes() != other.read_bytes():
        diffs.append(f"{rel}: bytes differ")
    elif ref.suffix == ".json":
      if _strip(json.loads(ref.read_text())) != _strip(json.loads(other.read_text())):
        diffs.append(f"{rel}: content differs")
  for params in sorted((reference / "models").glob("*/params")):
    rel = params.relative_to(reference)
    try:
      a, b = _params(params), _params(faulted / rel)
    except Exception as e:  # pylint: disable=broad-except
      diffs.append(f"{rel}: unreadable ({type(e).__name__}: {e})")
      continue
    if len(a) != len(b) or any(x.shape != y.shape or not np.array_equal(x, y)
                               for x, y in zip(a, b)):
      diffs.append(f"{rel}: parameters differ")
  for hf in sorted((reference / "models").glob("*_hf/*.safetensors")):
    rel = hf.relative_to(reference)
    other = faulted / rel
    if not other.exists() or hf.read_bytes() != other.read_bytes():
      diffs.append(f"{rel}: differs")
  ref_stages = {k: _strip(v) for k, v in _manifest(reference).get("stages", {}).items()}
  got_stages = {k: _strip(v) for k, v in _manifest(faulted).get("stages", {}).items()}
  for name, entry in ref_stages.items():
    got = got_stages.get(name, {})
    if got.get("status") != "done":
      diffs.append(f"manifest: stage {name} is {got.get('status')}")
    for key in ("count", "fingerprint", "outputs"):
      if entry.get(key) != got.get(key):
        diffs.append(f"manifest: stage {name} {key} differs")
  return {"records_lost": lost, "records_duplicated": duplicated, "identical": not diffs,
          "differences": diffs}


def fault_inject(kills: int, *, gin_files=(str(REPO / "configs" / "smoke.gin"),),
                 gin_params=(), work_dir=None, reference_dir=None, seed: int = 0,
                 attempt_timeout: float = 900.0) -> dict:
  """Runs the whole experiment; returns the JSON summary (see the module docstring)."""
  t0 = time.time()
  work = pathlib.Path(work_dir or tempfile.mkdtemp(prefix="fault_inject_"))
  work.mkdir(parents=True, exist_ok=True)
  ref_seconds = None
  if reference_dir is None:
    reference_dir = work / "reference"
    ref_seconds = round(run_reference(gin_files, gin_params, reference_dir), 1)
  reference_dir = pathlib.Path(reference_dir)
  reference = _manifest(reference_dir)
  faulted_dir = work / "faulted"
  t1 = time.time()
  counters = run_faulted(gin_files, gin_params, faulted_dir, reference, kills, seed,
                         attempt_timeout)
  result = compare(reference_dir, faulted_dir)
  survived = counters["kills"] if not counters["failures"] else 0
  return {"kills": counters["kills"], "survived": survived,
          "records_lost": result["records_lost"],
          "records_duplicated": result["records_duplicated"],
          "identical": result["identical"], "differences": result["differences"],
          "failures": counters["failures"], "kills_per_stage": counters["kills_per_stage"],
          "restarts": counters["restarts"], "faulted_seconds": round(time.time() - t1, 1),
          "reference_seconds": ref_seconds, "wall_seconds": round(time.time() - t0, 1),
          "work_dir": str(work)}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--kills", type=int, default=20)
  p.add_argument("--gin_file", action="append", default=None)
  p.add_argument("--gin_param", action="append", default=[])
  p.add_argument("--work_dir", default=None, help="default: a new temporary directory")
  p.add_argument("--reference", default=None, help="a finished run of the same config")
  p.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
  p.add_argument("--attempt_timeout", type=float, default=900.0, help="seconds per attempt")
  args = p.parse_args(argv)
  out = fault_inject(args.kills, gin_files=args.gin_file or (str(REPO / "configs/smoke.gin"),),
                     gin_params=args.gin_param, work_dir=args.work_dir,
                     reference_dir=args.reference, seed=args.seed,
                     attempt_timeout=args.attempt_timeout)
  print(json.dumps(out))
  return 0 if out["survived"] == out["kills"] == args.kills and out["identical"] else 1


if __name__ == "__main__":
  sys.exit(main())
