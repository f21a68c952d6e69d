"""The evaluation stages end to end on the real inputs (configs/smoke_eval.gin, stories260K).

Checks the artifacts and manifest lines of answer_*, judge, curation_quality, train_S* and
analyze; that the win rates in results.json are the means of the recorded judgments; that an
interrupted judge resumes from its partial file to the same results; and the report section.
"""

import json
import pathlib

import numpy as np
import pytest

from humpback_jax import jsonl, paths
from humpback_jax.cli import main
from humpback_jax.eval import answers, outputs, winrate

REPO = pathlib.Path(__file__).resolve().parent.parent
SMOKE_EVAL = str(REPO / "configs" / "smoke_eval.gin")
REF = paths.default_data_root() / "eval" / "alpaca_eval_805_ref_text_davinci_003.json"

pytestmark = pytest.mark.skipif(
    not (paths.default_data_root() / "weights" / "stories260K.bin").exists(),
    reason="../shared/data not present")

EVAL_STAGES = ["train_S0", "train_S2", "train_S4", "answer_M0", "answer_M2", "answer_stories",
               "answer_S0", "answer_S2", "answer_S4", "judge", "curation_quality", "analyze"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("smoke_eval_run")
  assert main(["run", f"--gin_file={SMOKE_EVAL}", f"--run_dir={d}", "--no_progress"]) == 0
  return d


def _manifest(d):
  return json.loads((d / "manifest.json").read_text())


def test_eval_stages_done(run_dir):
  stages = _manifest(run_dir)["stages"]
  assert list(stages)[-len(EVAL_STAGES):] == EVAL_STAGES
  for name in EVAL_STAGES:
    assert stages[name]["status"] == "done", name
  prompts = answers.load_prompts(REF, 4, 0)
  for name in ("M0", "M2", "S0", "S2", "S4", "stories"):
    outs = outputs.read_model_outputs(run_dir / f"eval/{name}/model_outputs.json")
    assert [o["instruction"] for o in outs] == [p["instruction"] for p in prompts]
    want = ("stories-weights_stories260K.bin" if name == "stories" else
            f"humpback-jax-{name}-weights_stories260K.bin")
    assert all(o["generator"] == want for o in outs)
    assert stages[f"answer_{name}"]["count"] == 4
    assert not (run_dir / f"eval/{name}/answers.partial.jsonl").exists()
  # Nested subsets of A^(2): S0 is the seed alone, S2 / S4 add (at most) 2 / 4 pairs.
  n_a2 = _manifest(run_dir)["stages"]["curate_M1"]["count"]
  for n in (0, 2, 4):
    assert stages[f"train_S{n}"]["curated_examples"] == min(n, n_a2)
  train = {n: jsonl.read_jsonl(run_dir / f"data/train_S{n}.jsonl") for n in (2, 4)}
  web = {n: [r["id"] for r in train[n] if r["tags"] == ["Answer with knowledge from web search."]]
         for n in (2, 4)}
  assert set(web[2]) <= set(web[4])


def test_results_are_the_means_of_the_judgments(run_dir):
  results = json.loads((run_dir / "eval/results.json").read_text())
  judgments = jsonl.read_jsonl(run_dir / "eval/judgments.jsonl")
  pairs = [r["pair"] for r in results["results"]]
  assert pairs == ["M0_vs_text_davinci_003", "M2_vs_text_davinci_003",
                   "stories_vs_text_davinci_003", "S0_vs_text_davinci_003", "S2_vs_text_davinci_003",
                   "S4_vs_text_davinci_003", "M2_vs_M0"]
  assert len(judgments) == 4 * len(pairs)
  for r in results["results"]:
    mine = [j for j in judgments if j["pair"] == r["pair"]]
    want = winrate.win_rate([j["preference"] for j in mine])
    assert r["win_rate"] == pytest.approx(want["win_rate"])
    assert r["standard_error"] == pytest.approx(want["standard_error"])
    assert r["head_to_head"] == (r["pair"] == "M2_vs_M0")
    assert 0 <= r["order"]["agreement"] <= 1
  assert results["judge_stats"]["judgments"] == 2 * len(judgments)
  assert results["scaling"]["points"][0]["examples"] == 0
  assert (run_dir / "eval/win_rates.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_curation_quality(run_dir):
  q = json.loads((run_dir / "eval/curation_quality.json").read_text())
  labels = jsonl.read_jsonl(run_dir / "eval/reference_labels.jsonl")
  assert q["count"] == len(labels) == 8
  truth = {r["id"]: r["score"] is not None and r["score"] >= q["threshold"] for r in labels}
  for t in (0, 1):
    scores = {r["id"]: r["score"] for r in jsonl.read_jsonl(run_dir / f"data/scores_M{t}.jsonl")}
    sel = {i for i in truth if scores[i] is not None and scores[i] >= q["threshold"]}
    tp = sum(truth[i] for i in sel)
    assert q["iterations"][f"M{t}"]["selected"] == len(sel)
    assert q["iterations"][f"M{t}"]["true_positive"] == tp


def test_interrupted_judge_resumes_to_the_same_results(run_dir, tmp_path):
  import shutil
  d = tmp_path / "copy"
  shutil.copytree(run_dir, d)
  judgments = jsonl.read_jsonl(d / "eval/judgments.jsonl")
  with open(d / "eval/judgments.partial.jsonl", "w") as f:
    for r in judgments[:5]:
      f.write(json.dumps(r) + "\n")
    f.write('{"id": "torn')
  (d / "eval/results.json").unlink()
  m = _manifest(d)
  m["stages"]["judge"]["status"] = "running"
  (d / "manifest.json").write_text(json.dumps(m))
  assert main(["stage", "judge", f"--gin_file={SMOKE_EVAL}", f"--run_dir={d}",
               "--no_progress"]) == 0
  redone = jsonl.read_jsonl(d / "eval/judgments.jsonl")
  assert redone[:5] == judgments[:5]
  np.testing.assert_allclose([r["preference"] for r in redone],
                             [r["preference"] for r in judgments], atol=1e-5)


def test_report_has_the_evaluation(run_dir):
  report = (run_dir / "report.md").read_text()
  for needle in ["## Evaluation", "| M0 | text_davinci_003 |", "| M2 | M0 |", "agreement",
                 "Curation quality", "Data scaling", "![Win rates](eval/win_rates.png)",
                 "Data analyses"]:
    assert needle in report, needle
