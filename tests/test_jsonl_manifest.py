"""JSONL artifacts and the run manifest: atomic writes, resumable appends, clear errors."""

import json

import pytest

from humpback_jax import jsonl
from humpback_jax.pipeline.manifest import Manifest


def test_roundtrip_and_datasets_reads_it(tmp_path):
  recs = [{"id": str(i), "text": f"héllo {i}"} for i in range(5)]
  p = tmp_path / "a.jsonl"
  assert jsonl.write_jsonl(recs, p) == 5
  assert jsonl.read_jsonl(p) == recs
  datasets = pytest.importorskip("datasets")
  ds = datasets.load_dataset("json", data_files=str(p), split="train")
  assert ds["text"] == [r["text"] for r in recs]


def test_bad_line_names_file_and_line(tmp_path):
  p = tmp_path / "bad.jsonl"
  p.write_text('{"id": 1}\n\n{"id": 2\n')
  with pytest.raises(jsonl.JsonlError, match=r"bad\.jsonl:3: invalid JSON"):
    jsonl.read_jsonl(p)
  p.write_text('[1, 2]\n')
  with pytest.raises(jsonl.JsonlError, match=r"bad\.jsonl:1: expected a JSON object"):
    jsonl.read_jsonl(p)


def test_appender_resumes_and_drops_torn_tail(tmp_path):
  p = tmp_path / "part.jsonl"
  with jsonl.JsonlAppender(p) as out:
    out.append([{"id": "a"}, {"id": "b"}])
  with open(p, "a") as f:
    f.write('{"id": "c", "x":')  # the process died mid-line
  out = jsonl.JsonlAppender(p)
  assert out.torn_lines == 1
  assert out.done_ids == {"a", "b"}
  out.append([{"id": "c"}])
  out.close()
  assert [r["id"] for r in jsonl.read_jsonl(p)] == ["a", "b", "c"]


def test_manifest_records_stages(tmp_path):
  m = Manifest(tmp_path)
  m.start("s1")
  assert json.loads((tmp_path / "manifest.json").read_text())["stages"]["s1"]["status"] == "running"
  m.finish("s1", 1.234, count=7)
  m2 = Manifest(tmp_path)
  assert m2.is_done("s1")
  assert m2.stage("s1")["count"] == 7 and m2.stage("s1")["seconds"] == 1.23
  m2.start("s2")
  m2.fail("s2", "boom")
  assert not Manifest(tmp_path).is_done("s2")
  (tmp_path / "manifest.json").write_text("{not json")
  with pytest.raises(ValueError, match="corrupt manifest"):
    Manifest(tmp_path)
