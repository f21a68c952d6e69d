"""Back-and-forth translation end to end on the real inputs (configs/smoke_bft.gin,
stories260K): whole documents with the context-limit drop counted, [BF]'s backward prompt in
Llama-2 format, rewrite / distill with their counts, the four variants trained on the mixtures
they name (counts per source in the manifest, the train files), evaluated, and reported.
"""

import json
import pathlib

import numpy as np
import pytest

from humpback_jax import jsonl, paths
from humpback_jax.cli import main

REPO = pathlib.Path(__file__).resolve().parent.parent
SMOKE_BFT = str(REPO / "configs" / "smoke_bft.gin")

pytestmark = pytest.mark.skipif(
    not (paths.default_data_root() / "weights" / "stories260K.bin").exists(),
    reason="../shared/data not present")

VARIANT_FILES = {"filter": "curated_A2.jsonl", "rewrite": "rewritten_candidates.jsonl",
                 "filter_rewrite": "rewritten_curated.jsonl",
                 "filter_distill": "distilled_curated.jsonl",
                 "self_instruct": "self_instruct.jsonl"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("smoke_bft_run")
  assert main(["run", f"--gin_file={SMOKE_BFT}", f"--run_dir={d}", "--no_progress"]) == 0
  return d


def _stages(d):
  return json.loads((d / "manifest.json").read_text())["stages"]


def test_documents_and_the_context_drop(run_dir):
  stages = _stages(run_dir)
  assert all(e["status"] == "done" for e in stages.values())
  segs = jsonl.read_jsonl(run_dir / "data/segments.jsonl")
  assert segs and all(s["id"].endswith("#doc") for s in segs)
  web = stages["prepare_web"]["stats"]
  assert web["unit"] == "documents" and web["kept"] == len(segs)
  ctx = stages["augment"]["over_context"]
  assert ctx["documents"] == len(segs)
  assert ctx["kept"] + ctx["dropped_over_context"] == ctx["documents"]
  assert ctx["kept"] == stages["augment"]["segments"] and ctx["dropped_over_context"] > 0
  assert stages["train_backward"]["backward_template"] == "llama2"


def test_iterative_augmentation(run_dir):
  stages = _stages(run_dir)
  seed = jsonl.read_jsonl(run_dir / "data/seed.jsonl")
  a1 = jsonl.read_jsonl(run_dir / "data/curated_A1.jsonl")
  train = jsonl.read_jsonl(run_dir / "data/train_M_yx_r2.jsonl")
  assert [r["id"] for r in train] == [r["id"] for r in seed + a1]
  assert stages["train_backward_r2"]["augmented_examples"] == len(a1)
  pool = jsonl.read_jsonl(run_dir / "data/candidates_r2.jsonl")
  assert stages["augment_r2"]["count"] == len(pool)
  scored = [r["id"] for r in jsonl.read_jsonl(run_dir / "data/scores_M1.jsonl")]
  assert scored == [r["id"] for r in pool]  # M1 curated the second round's pool
  assert stages["curate_M1"]["scored"] == len(pool)


def test_curation_quality_compares_each_iteration_with_labels_of_its_own_pool(run_dir):
  q = json.loads((run_dir / "eval/curation_quality.json").read_text())
  # augment_rounds = 2: M0 curated round 1's pool, M1 round 2's (same segment ids, new
  # instructions): each pool was sampled and labelled on its own.
  assert set(q["pools"]) == {"data/candidates.jsonl", "data/candidates_r2.jsonl"}
  for t, pool, labels_rel in [(0, "data/candidates.jsonl", "eval/reference_labels.jsonl"),
                              (1, "data/candidates_r2.jsonl", "eval/reference_labels_r2.jsonl")]:
    labels = jsonl.read_jsonl(run_dir / labels_rel)
    by_id = {r["id"]: r for r in jsonl.read_jsonl(run_dir / pool)}
    assert labels and all(r["instruction"] == by_id[r["id"]]["instruction"] for r in labels)
    truth = {r["id"]: r["score"] is not None and r["score"] >= q["threshold"] for r in labels}
    scores = {r["id"]: r["score"] for r in jsonl.read_jsonl(run_dir / f"data/scores_M{t}.jsonl")}
    sel = {i for i in truth if scores.get(i) is not None and scores[i] >= q["threshold"]}
    e = q["iterations"][f"M{t}"]
    assert e["pool"] == pool and e["selected"] == len(sel)
    assert e["true_positive"] == sum(truth[i] for i in sel)
  assert q["count"] == sum(p["count"] for p in q["pools"].values())


def test_rewrite_and_distill_counts(run_dir):
  stages = _stages(run_dir)
  for source, src_file in (("curated", "curated_A2.jsonl"), ("candidates", "candidates.jsonl")):
    e = stages[f"rewrite_{source}"]
    log = jsonl.read_jsonl(run_dir / f"data/rewrite_log_{source}.jsonl")
    pairs = jsonl.read_jsonl(run_dir / "data" / src_file)
    assert [r["id"] for r in log] == [p["id"] for p in pairs]
    assert e["rewrite"]["rows"] == len(log) == e["pairs"]
    kept = jsonl.read_jsonl(run_dir / f"data/rewritten_{source}.jsonl")
    assert len(kept) == e["count"] == sum(r["response"] is not None for r in log)
    assert sum(e["rewrite"]["outcomes"].values()) == len(log)
    assert e["rewrite"]["attempts"] == sum(len(r["attempts"]) for r in log)
    accepted = sum(r["outcome"] in ("rewritten", "rewritten_unterminated") for r in log)
    assert e["rewrite"]["failed_attempts"] == e["rewrite"]["attempts"] - accepted
    for r in log:  # keep_draft: a pair whose every attempt failed keeps its draft
      if r["outcome"] == "kept_draft":
        assert r["response"] == r["draft"] and len(r["attempts"]) == 2  # max_retries = 1
  si = stages["self_instruct"]
  assert si["count"] == len(jsonl.read_jsonl(run_dir / "data/self_instruct.jsonl"))
  assert si["generated"] == si["kept"] + sum(si["dropped"].values())
  assert si["rounds"] == 3 and si["kept"] == si["count"] + si["dropped_empty_answer"]
  d = stages["distill_curated"]
  assert d["pairs"] == len(jsonl.read_jsonl(run_dir / "data/curated_A2.jsonl"))


def test_each_variant_trains_on_the_mixture_it_names(run_dir):
  stages = _stages(run_dir)
  all_seed = jsonl.read_jsonl(run_dir / "data/seed.jsonl")
  # PipelineConfig.variant_seed_examples = 20: the first 20 of numpy's permutation with seed
  # seed_value + 41 (smoke: seed_value 0), the same for every variant.
  seed = [all_seed[i] for i in np.random.default_rng(41).permutation(len(all_seed))[:20]]
  assert len(all_seed) > 20
  for variant, rel in VARIANT_FILES.items():
    e = stages[f"train_{variant}"]
    pairs = jsonl.read_jsonl(run_dir / "data" / rel)
    assert sum(e["sources"].values()) == e["count"] == len(seed) + len(pairs)
    assert e["sources"]["seed"] == len(seed) and e["lr_schedule"] == "cosine"
    train = jsonl.read_jsonl(run_dir / f"data/train_{variant}.jsonl")
    assert [r["id"] for r in train[:len(seed)]] == [r["id"] for r in seed]
    assert [r["response"] for r in train[:len(seed)]] == [r["response"] for r in seed]
    assert [r["response"] for r in train[len(seed):]] == [p["response"] for p in pairs]
    assert all(r["tags"] == ["Answer with knowledge from web search."]
               for r in train[len(seed):])


def test_variants_evaluated_and_reported(run_dir):
  results = json.loads((run_dir / "eval/results.json").read_text())
  pairs = [r["pair"] for r in results["results"]]
  for v in VARIANT_FILES:
    assert f"{v}_vs_text_davinci_003" in pairs
  assert "filter_rewrite_vs_filter" in pairs and "filter_rewrite_vs_filter_distill" in pairs
  report = (run_dir / "report.md").read_text()
  for needle in ["## Back-and-forth translation", "| rewrite_candidates |", "first-attempt ok",
                 "| filter_distill |", "cosine", "## Evaluation"]:
    assert needle in report, needle
