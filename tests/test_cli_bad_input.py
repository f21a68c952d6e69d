"""Every bad input of the two corpora (tests/test_bad_input_web.py, tests/test_bad_input_seed.py)
through the command line, as a user meets it: ``humpback-jax stage prepare_web|prepare_seed``.

Each case ends with exit status 0 (handled, skips counted in the manifest and the report) or 2
with ONE line ``humpback-jax: error: stage NAME: ...`` naming the file, never a traceback; the
manifest records the failure and the report is written; an earlier stage's entry and outputs
are untouched.
"""

import dataclasses
import json

import pytest

import test_bad_input_seed as seed_corpus
import test_bad_input_web as web_corpus
from humpback_jax.cli import main
from test_pipeline_e2e import SMOKE

_EARLIER = {"status": "done", "count": 1, "fingerprint": {"config.x": "0"}}


def _prepare_run(tmp_path):
  run = tmp_path / "run"
  (run / "data").mkdir(parents=True)
  (run / "data" / "earlier.jsonl").write_text('{"id": "kept"}\n')
  (run / "manifest.json").write_text(json.dumps({"stages": {"earlier_stage": _EARLIER}}))
  return run


def _check(run, stage, rc, err, expect_error, names):
  lines = [l for l in err.strip().splitlines() if l.startswith("humpback-jax:")]
  assert "Traceback" not in err
  manifest = json.loads((run / "manifest.json").read_text())
  assert manifest["stages"]["earlier_stage"] == _EARLIER
  assert (run / "data" / "earlier.jsonl").read_text() == '{"id": "kept"}\n'
  report = (run / "report.md").read_text()
  entry = manifest["stages"][stage]
  if expect_error:
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"humpback-jax: error: stage {stage}: "), err
    assert names in lines[0], (names, lines[0])
    assert entry["status"] == "failed" and "count" not in entry
    assert f"**Stage {stage} failed**" in report
  else:
    assert rc == 0 and not lines, err
    assert entry["status"] == "done" and entry["count"] >= 1


def _gin(cls, **kw):
  return [f"--gin_param={cls}.{k} = {v!r}" for k, v in kw.items()]


@pytest.mark.parametrize("case", web_corpus.CASES, ids=[c.name for c in web_corpus.CASES])
def test_web_case_through_the_cli(case, tmp_path, capsys):
  src = case.build(tmp_path)
  run = _prepare_run(tmp_path)
  cfg = web_corpus.CONFIG
  params = _gin("WebConfig", sources=(src,), min_chars=cfg.min_chars,
                min_ascii_letter_frac=cfg.min_ascii_letter_frac,
                min_stopword_frac=cfg.min_stopword_frac)
  params += _gin("PipelineConfig", data_root=str(tmp_path))
  with web_corpus.deadline(web_corpus.CASE_SECONDS):
    rc = main(["stage", "prepare_web", f"--run_dir={run}", "--no_progress",
               f"--gin_file={SMOKE}", "--gin_param=WebConfig.max_documents = None", *params])
  err = capsys.readouterr().err
  expect_error = case.expect[0] == "error"
  if case.expect[0] == "skip" and rc == 2 and ("no document could be read" in err or
                                               "0 segments survived" in err):
    expect_error = True  # everything was a counted skip: the stage refuses an empty corpus
  _check(run, "prepare_web", rc, err, expect_error, src)
  if case.expect[0] == "skip" and rc == 0:
    report = (run / "report.md").read_text()
    assert "failed or skipped per reason" in report


SEED_CASES = [c for c in seed_corpus.CASES if c.fmt not in ("eval", "config")]


@pytest.mark.parametrize("case", SEED_CASES, ids=lambda c: c.name)
def test_seed_case_through_the_cli(case, tmp_path, capsys):
  made = case.make(tmp_path)
  (tmp_path / seed_corpus.AE_NAME).write_text(
      json.dumps([{"instruction": "An unrelated evaluation prompt"}]))
  (tmp_path / "good_lima.jsonl").write_text(seed_corpus._jl(seed_corpus._lima(
      "ok", q="a good question")))
  kw = {"oasst_tree_files": (), "lima_files": (), "alpaca_eval_file": seed_corpus.AE_NAME}
  if case.fmt == "alpaca":
    kw.update(lima_files=("good_lima.jsonl",), alpaca_eval_file=made)
  else:
    kw[seed_corpus._FIELDS[case.fmt]] = (made,)
  run = _prepare_run(tmp_path)
  params = _gin("SeedConfig", **kw) + _gin("PipelineConfig", data_root=str(tmp_path))
  rc = main(["stage", "prepare_seed", f"--run_dir={run}", "--no_progress",
             f"--gin_file={SMOKE}", "--gin_param=SeedConfig.max_examples = None", *params])
  err = capsys.readouterr().err
  expect_error = case.expect[0] == "error"
  if not expect_error and rc == 2 and "no seed pairs left" in err:
    expect_error = True  # every record was a counted skip: the stage refuses an empty seed
  _check(run, "prepare_seed", rc, err, expect_error, str(tmp_path))
