"""End to end: the whole pipeline on real inputs with stories260K (configs/smoke.gin).

Checks every stage's artifacts and manifest line, that a rerun skips finished stages, that an
interrupted curation resumes from its partial file without redoing finished work, and that the
exported HF directory loads in transformers with the same logits as our params.
"""

import json
import pathlib

import numpy as np
import pytest

from humpback_jax import jsonl, paths
from humpback_jax.cli import main
from numerics import logit_tol
from test_fs import gcs, gcs_api  # noqa: F401 (fixtures of the gs:// run)

REPO = pathlib.Path(__file__).resolve().parent.parent
SMOKE = str(REPO / "configs" / "smoke.gin")

pytestmark = pytest.mark.skipif(
    not (paths.default_data_root() / "weights" / "stories260K.bin").exists(),
    reason="../shared/data not present")

STAGES = ["prepare_seed", "prepare_web", "train_backward", "augment", "train_M0", "curate_M0",
          "train_M1", "curate_M1", "train_M2", "answer_final", "export_hf"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("smoke_run")
  assert main(["run", f"--gin_file={SMOKE}", f"--run_dir={d}", "--no_progress"]) == 0
  return d


def _manifest(d):
  return json.loads((d / "manifest.json").read_text())


def test_every_stage_done_with_counts(run_dir):
  stages = _manifest(run_dir)["stages"]
  assert list(stages) == STAGES
  for name in STAGES:
    assert stages[name]["status"] == "done", name
    assert stages[name]["seconds"] >= 0
  assert stages["prepare_seed"]["count"] == 48
  assert stages["prepare_web"]["count"] > 0
  n_cand = stages["augment"]["count"]
  assert n_cand > 0
  aug = stages["augment"]
  assert n_cand + aug["dropped_empty_instruction"] + aug["dropped_unfinished"] == aug["segments"]
  assert aug["dropped_unfinished"] == 0 and 0 <= aug["unfinished"] <= n_cand  # smoke keeps them
  assert 0 <= aug["instruction_like"] <= n_cand
  for t in (0, 1):
    c = stages[f"curate_M{t}"]
    assert c["scored"] == n_cand
    assert sum(c["histogram"].values()) == n_cand
    # The rating prompt (~1,500 tok512 tokens) does not fit stories260K's 512: all are cut.
    assert c["truncated_prompts"] == n_cand
    assert 0 < c["mean_digit_mass"] <= 1
    sanity = c["judge_sanity"]
    assert sanity["n"] == 8 and 0 <= sanity["ci_low"] <= sanity["auc"] <= sanity["ci_high"] <= 1
    assert json.loads((run_dir / f"data/judge_sanity_M{t}.json").read_text()) == sanity
    for r in jsonl.read_jsonl(run_dir / f"data/scores_M{t}.jsonl"):
      assert len(r["p_scores"]) == 5 and abs(sum(r["p_scores"]) - 1) < 1e-4
      assert 1 <= r["expected_score"] <= 5 and 0 < r["digit_mass"] <= 1
      assert r["source"] in ("parse", "logprob")
    curated = jsonl.read_jsonl(run_dir / f"data/curated_A{t + 1}.jsonl")
    assert len(curated) == c["count"]
    assert all(r["score"] >= c["threshold"] for r in curated)
    scores = {r["id"]: r["score"] for r in jsonl.read_jsonl(run_dir / f"data/scores_M{t}.jsonl")}
    assert c["count"] == sum(1 for s in scores.values() if s is not None and s >= c["threshold"])
  for name in ("train_backward", "train_M0", "train_M1", "train_M2"):
    assert np.isfinite(stages[name]["final_eval_loss"]), name  # held-out, dropout off
    assert stages[name]["data"]["heldout_examples"] == 4
  # M_t trains on seed (tag S_a) + A^(t) (tag S_w).
  train_m1 = jsonl.read_jsonl(run_dir / "data/train_M1.jsonl")
  assert stages["train_M1"]["augmented_examples"] == stages["curate_M0"]["count"]
  assert sum(r["tags"] == ["Answer in the style of an AI Assistant."] for r in train_m1) == 48
  assert sum(r["tags"] == ["Answer with knowledge from web search."]
             for r in train_m1) == stages["curate_M0"]["count"]


@pytest.mark.slow
def test_killed_and_resumed_run_equals_the_uninterrupted_one(run_dir, tmp_path):
  """tools/fault_inject.py with 3 SIGKILLs (in prepare_seed, augment and train_M1), each
  followed by a resume: byte-identical JSONL, equal parameters, nothing lost or duplicated.
  (The old per-batch sampling seeds fail this: a resumed augment or curation drew other
  random numbers.)"""
  import sys
  sys.path.insert(0, str(REPO / "tools"))
  import fault_inject
  out = fault_inject.fault_inject(3, gin_files=(SMOKE,), work_dir=tmp_path,
                                  reference_dir=run_dir, seed=1)
  assert out["kills"] == 3 and out["survived"] == 3, out
  assert out["records_lost"] == 0 and out["records_duplicated"] == 0, out
  assert out["identical"], out["differences"]


@pytest.mark.slow
def test_two_processes_run_the_pipeline_as_one(run_dir, tmp_path):
  """Two local processes (jax.distributed on loopback, 4 fake CPU devices each, one global
  8-device mesh) run the smoke pipeline as two TPU hosts would: the candidates, curated
  datasets and final answers equal the one-process run's byte for byte, the parameters up to
  float32 all-reduce order, and process 0 alone writes (each record once, each stage once)."""
  import os
  import socket
  import subprocess
  import sys

  sys.path.insert(0, str(REPO / "tools"))
  import fault_inject
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  d = tmp_path / "two"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  procs = [subprocess.Popen(
      [sys.executable, "-m", "humpback_jax.cli", "run", f"--gin_file={SMOKE}", f"--run_dir={d}",
       "--no_progress", f"--coordinator_address=localhost:{port}", "--num_processes=2",
       f"--process_id={i}"], cwd=REPO, env=env, stdout=open(tmp_path / f"p{i}.log", "w"),
      stderr=subprocess.STDOUT) for i in (0, 1)]
  rcs = [p.wait(timeout=900) for p in procs]
  assert rcs == [0, 0], (tmp_path / "p0.log").read_text()[-3000:]
  for rel in ("seed.jsonl", "segments.jsonl", "candidates.jsonl", "candidates.partial.jsonl",
              "curated_A1.jsonl", "curated_A2.jsonl", "final_outputs.json"):
    assert (d / "data" / rel).read_bytes() == (run_dir / "data" / rel).read_bytes(), rel
  for t in (0, 1):
    one = jsonl.read_jsonl(run_dir / f"data/scores_M{t}.jsonl")
    two = jsonl.read_jsonl(d / f"data/scores_M{t}.jsonl")
    assert [r["score"] for r in two] == [r["score"] for r in one]
    np.testing.assert_allclose([r["p_scores"] for r in two], [r["p_scores"] for r in one],
                               atol=1e-5)
  for name in ("M_yx", "M0", "M1", "M2"):
    for a, b in zip(fault_inject._params(run_dir / "models" / name / "params"),
                    fault_inject._params(d / "models" / name / "params")):
      np.testing.assert_allclose(b, a, atol=1e-6)
  result = fault_inject.compare(run_dir, d)
  assert result["records_lost"] == 0 and result["records_duplicated"] == 0
  assert {v["attempts"] for v in _manifest(d)["stages"].values()} == {1}
  assert not list(d.rglob("*.tmp"))


def test_final_answers_in_alpaca_eval_schema(run_dir):
  outs = json.loads((run_dir / "data/final_outputs.json").read_text())
  ref = json.loads((paths.default_data_root() / "eval" /
                    "alpaca_eval_805_ref_text_davinci_003.json").read_text())
  assert len(outs) == _manifest(run_dir)["stages"]["answer_final"]["count"] == 4
  for o, r in zip(outs, ref):
    assert set(o) == {"instruction", "output", "generator", "dataset"}
    assert o["instruction"] == r["instruction"] and o["dataset"] == r["dataset"]
    assert o["generator"].startswith("humpback-jax-M2")


def test_report(run_dir):
  report = (run_dir / "report.md").read_text()
  for needle in ["## Stages", "Iteration 1: scored by M0", "Iteration 2: scored by M1",
                 "parse-validity rate", "| seed |", "candidates A", "mean digit mass",
                 "parse/log-prob agreement", "judge sanity check", "read as an instruction",
                 "cut at max_new_tokens", "final held-out loss"]:
    assert needle in report, needle


def test_rerun_skips_finished_stages(run_dir):
  before = _manifest(run_dir)["stages"]
  assert main(["run", f"--gin_file={SMOKE}", f"--run_dir={run_dir}", "--no_progress"]) == 0
  after = _manifest(run_dir)["stages"]
  assert {k: v["attempts"] for k, v in after.items()} == {k: v["attempts"] for k, v in
                                                            before.items()}


def test_interrupted_curation_resumes(run_dir):
  # Simulate a crash in curate_M1 after part of the candidates were scored: keep the first
  # chunk's records in the partial file plus a torn line, mark the stage "running".
  scores = jsonl.read_jsonl(run_dir / "data/scores_M1.jsonl")
  keep = scores[:8]
  partial = run_dir / "data/scores_M1.partial.jsonl"
  with open(partial, "w") as f:
    for r in keep:
      f.write(json.dumps(r) + "\n")
    f.write('{"id": "torn')
  (run_dir / "data/scores_M1.jsonl").unlink()
  m = _manifest(run_dir)
  m["stages"]["curate_M1"]["status"] = "running"
  (run_dir / "manifest.json").write_text(json.dumps(m))
  assert main(["stage", "curate_M1", f"--gin_file={SMOKE}", f"--run_dir={run_dir}",
               "--no_progress"]) == 0
  redone = jsonl.read_jsonl(run_dir / "data/scores_M1.jsonl")
  assert [r["id"] for r in redone] == [r["id"] for r in scores]
  assert redone[:8] == keep  # finished work was not redone
  # ... and the rest equals the uninterrupted run's (per-record keys, fixed chunks)
  assert redone == scores
  assert _manifest(run_dir)["stages"]["curate_M1"]["status"] == "done"


def test_score_command_rates_a_users_pairs(run_dir, tmp_path, capsys):
  pairs = tmp_path / "pairs.jsonl"
  pairs.write_text("".join(json.dumps({"instruction": f"Tell a story about {w}.",
                                       "response": f"Once upon a time there was a {w}."}) + "\n"
                           for w in ("cat", "dog", "bird")))
  out = tmp_path / "scores.jsonl"
  # A run's trained model directory: base model and tokenizer come from the run's manifest.
  assert main(["score", f"--model={run_dir / 'models' / 'M0'}", f"--input={pairs}",
               f"--output={out}", "--mode=logprob", "--sanity_check", "--sanity_pairs=3",
               "--no_progress", "--gin_param=CurationConfig.batch_size = 4"]) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  recs = jsonl.read_jsonl(out)
  assert [r["id"] for r in recs] == ["1", "2", "3"]
  for r in recs:
    assert {"id", "score", "source", "p_scores", "digit_mass", "expected_score"} <= set(r)
    assert r["source"] == "logprob" and r["score"] == r["logprob_score"]
  assert summary["scored"] == 3 and summary["judge_sanity"]["n"] == 3
  assert summary["max_prompt_len"] == 512  # lowered to the model's context (logprob: no budget)
  assert not (tmp_path / "scores.jsonl.partial").exists()


def test_export_loads_in_transformers(run_dir):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  import jax
  from humpback_jax.models.convert import load_llama2c
  from humpback_jax.models.llama import Llama
  from humpback_jax.pipeline.training import load_trained

  cfg, base = load_llama2c(paths.default_data_root() / "weights" / "stories260K.bin")
  _, params = load_trained(run_dir / "models" / "M2", cfg)
  hf = transformers.LlamaForCausalLM.from_pretrained(run_dir / "models" / "M2_hf").eval()
  toks = np.random.RandomState(0).randint(3, 512, (2, 17))
  with torch.no_grad():
    ref = hf(torch.tensor(toks)).logits.numpy()
  pos = np.broadcast_to(np.arange(17), toks.shape)
  ours = np.asarray(Llama(cfg).apply(jax.tree.map(np.asarray, params), toks, pos)[0])
  np.testing.assert_allclose(ours, ref, atol=logit_tol("float32", cfg.num_layers,
                                                      float(np.abs(ref).max()), runs=2))
  # M2 was trained: it differs from the base checkpoint.
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(params),
                                                   jax.tree.leaves(base)))


def _attempts(d):
  return {k: v["attempts"] for k, v in _manifest(d)["stages"].items()}


def test_changed_config_reruns_exactly_the_affected_stages(run_dir, tmp_path, capsys):
  import shutil
  d = tmp_path / "copy"
  shutil.copytree(run_dir, d)
  run = lambda *extra: main(["run", f"--gin_file={SMOKE}", f"--run_dir={d}", "--no_progress",
                             *extra])
  before = _attempts(d)
  # --on_change=error: one line naming the change, exit status 2, nothing run.
  assert run("--on_change=error", "--gin_param=CurationConfig.threshold = 5") == 2
  err = capsys.readouterr().err
  assert "Traceback" not in err
  assert err.strip().splitlines()[-1].startswith(
      "humpback-jax: error: stage curate_M0 is out of date: config.curation changed")
  assert _attempts(d) == before
  # A web-config change that yields the same segments reruns prepare_web only.
  assert run("--gin_param=WebConfig.max_segments = 100000") == 0
  after = _attempts(d)
  assert {k for k in after if after[k] != before[k]} == {"prepare_web"}
  # A curation change reruns the curation stages, and the training stages whose data changed.
  curated = (d / "data/curated_A1.jsonl").read_bytes()
  before = after
  assert run("--gin_param=WebConfig.max_segments = 100000",
             "--gin_param=CurationConfig.threshold = 5") == 0
  after = _attempts(d)
  ran = {k for k in after if after[k] != before[k]}
  assert {"curate_M0", "curate_M1"} <= ran
  assert not ran & {"prepare_seed", "prepare_web", "train_backward", "augment", "train_M0"}
  assert ("train_M1" in ran) == ((d / "data/curated_A1.jsonl").read_bytes() != curated)
  assert _manifest(d)["config"]["curation"]["threshold"] == 5  # the latest config


def test_failed_stage_prints_one_line_and_still_writes_the_report(run_dir, tmp_path, capsys):
  import shutil
  d = tmp_path / "copy"
  shutil.copytree(run_dir, d)
  before = _manifest(d)["stages"]
  bad = tmp_path / "eval.json"
  bad.write_text('[{"instruction": "ok"}, {"instruction": 3}]')
  (d / "report.md").unlink()
  assert main(["run", f"--gin_file={SMOKE}", f"--run_dir={d}", "--no_progress",
               f"--gin_param=PipelineConfig.eval_file = '{bad}'"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert not any("Traceback" in line for line in err)
  assert err[-1].startswith("humpback-jax: error: stage answer_final: ") and "eval.json" in err[-1]
  after = _manifest(d)["stages"]
  assert after["answer_final"]["status"] == "failed" and "count" not in after["answer_final"]
  for name in STAGES[:STAGES.index("answer_final")]:
    assert after[name] == before[name], name  # earlier stages untouched
  report = (d / "report.md").read_text()
  assert "**Stage answer_final failed**" in report and "eval.json" in report


@pytest.mark.slow
def test_pipeline_on_a_gs_run_directory_equals_the_local_run(run_dir, monkeypatch, request):
  """The whole smoke pipeline with ``--run_dir=gs://bkt/run`` on an offline fake GCS (epath
  backend + a loopback GCS JSON API that tensorstore/orbax write to; tests/test_fs.py): every
  dataset, the final answers and the trained parameters equal the local run's, and nothing is
  written outside the bucket (no local ``gs:`` directory). TensorBoard goes through TF's own
  GCS client (the network), so its writer is stubbed out here."""
  from humpback_jax.train import metrics

  fake = request.getfixturevalue("gcs_api")
  store = fake.store

  class NoSummaries:
    def __init__(self, logdir):
      self.logdir = logdir

    def write_scalars(self, step, scalars):
      pass

    def close(self):
      pass

  monkeypatch.setattr(metrics, "SummaryWriter", NoSummaries)
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(run_dir / ".jax_cache"))
  monkeypatch.chdir(run_dir.parent)
  assert main(["run", f"--gin_file={SMOKE}", "--run_dir=gs://bkt/run", "--no_progress"]) == 0
  assert not (run_dir.parent / "gs:").exists()
  for rel in ("seed.jsonl", "segments.jsonl", "candidates.jsonl", "curated_A1.jsonl",
              "curated_A2.jsonl", "final_outputs.json"):
    assert fake.get(f"bkt/run/data/{rel}") == (run_dir / "data" / rel).read_bytes(), rel
  manifest = json.loads(fake.get("bkt/run/manifest.json"))
  assert [s["status"] for s in manifest["stages"].values()] == ["done"] * len(STAGES)
  assert "bkt/run/report.md" in store and "bkt/run/models/M2_hf/config.json" in store
  assert not any("/ckpt/" in k for k in store)  # optimizer state dropped after training
  from humpback_jax.pipeline.training import load_trained
  from humpback_jax.models.convert import load_llama2c
  cfg, _ = load_llama2c(paths.default_data_root() / "weights" / "stories260K.bin")
  _, local = load_trained(run_dir / "models" / "M2", cfg)
  _, remote = load_trained("gs://bkt/run/models/M2", cfg)
  import jax
  for a, b in zip(jax.tree.leaves(local), jax.tree.leaves(remote)):
    np.testing.assert_array_equal(a, b)
