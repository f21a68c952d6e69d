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


def test_appender_drops_a_last_line_without_newline_and_duplicate_ids(tmp_path):
  p = tmp_path / "part.jsonl"
  # A kill between the record and its newline leaves valid JSON without "\n": appending to it
  # would glue the next record onto that line.
  p.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "a"}\n{"id": "c"}')
  out = jsonl.JsonlAppender(p)
  assert (out.torn_lines, out.duplicate_lines) == (1, 1)
  assert out.done_ids == {"a", "b"}
  out.append([{"id": "c"}, {"id": "d"}])
  out.close()
  assert [r["id"] for r in jsonl.read_jsonl(p)] == ["a", "b", "c", "d"]


def test_disk_full_is_a_clear_error_and_keeps_what_was_written(tmp_path, monkeypatch):
  import errno
  import os

  from humpback_jax.errors import DiskFullError

  def full(fd):
    raise OSError(errno.ENOSPC, "No space left on device")

  p = tmp_path / "part.jsonl"
  with jsonl.JsonlAppender(p) as out:
    out.append([{"id": "a"}])
    monkeypatch.setattr(jsonl.os, "fsync", full)
    with pytest.raises(DiskFullError, match=r"part\.jsonl: disk full.*rerun to resume"):
      out.append([{"id": "b"}])
  final = tmp_path / "final.jsonl"
  final.write_text('{"id": "old"}\n')
  with pytest.raises(DiskFullError, match=r"final\.jsonl: disk full"):
    jsonl.write_jsonl([{"id": "new"}], final)
  assert final.read_text() == '{"id": "old"}\n'  # untouched
  assert not (tmp_path / "final.jsonl.tmp").exists()
  monkeypatch.setattr(jsonl.os, "fsync", os.fsync)
  assert "a" in jsonl.JsonlAppender(p).done_ids


def test_lone_surrogate_is_an_input_error_and_leaves_no_tmp(tmp_path):
  from humpback_jax.errors import InputError
  with pytest.raises(InputError, match=r"out\.jsonl: record 2 \(id 'x'\)"):
    jsonl.write_jsonl([{"id": "ok", "t": "fine"}, {"id": "x", "t": "bad \ud800"}],
                      tmp_path / "out.jsonl")
  assert not list(tmp_path.iterdir())


def test_pending_chunks_are_fixed_by_position_in_the_whole_input():
  items = [{"id": i} for i in range(10)]
  got = [(j, [r["id"] for r in c]) for j, c in jsonl.pending_chunks(items, {0, 1, 2, 3, 5}, 4)]
  # chunk 0 (0-3) is done; chunk 1 (4-7) is half done and comes back whole; chunk 2 (8, 9).
  assert got == [(1, [4, 5, 6, 7]), (2, [8, 9])]
  with pytest.raises(ValueError):
    list(jsonl.pending_chunks(items, set(), 0))


def test_resumable_map_skips_finished_chunks_and_returns_items_in_order(tmp_path):
  items = [{"id": f"x{i}"} for i in range(7)]
  seen = []

  def run_chunk(chunk):
    seen.append([r["id"] for r in chunk])
    if len(seen) == 3:
      raise KeyboardInterrupt
    return [{"id": r["id"], "value": r["id"].upper()} for r in reversed(chunk)]

  partial = tmp_path / "out.partial.jsonl"
  with pytest.raises(KeyboardInterrupt):
    jsonl.resumable_map(items, run_chunk, partial, 3)
  assert [r["id"] for r in jsonl.read_jsonl(partial)] == ["x2", "x1", "x0", "x5", "x4", "x3"]
  # the rerun computes only the unfinished chunk; records come back in the items' order
  seen.clear()
  out = jsonl.resumable_map(items, lambda c: seen.append([r["id"] for r in c]) or [
      {"id": r["id"], "value": "new " + r["id"]} for r in c], partial, 3)
  assert seen == [["x6"]]
  assert [r["value"] for r in out] == ["X0", "X1", "X2", "X3", "X4", "X5", "new x6"]
  assert len(jsonl.read_jsonl(partial)) == 7
  # no partial file: every chunk runs, nothing written
  out = jsonl.resumable_map(items, lambda c: [{"id": r["id"], "n": 1} for r in c], None, 4)
  assert [r["id"] for r in out] == [r["id"] for r in items]
  with pytest.raises(KeyError):
    jsonl.resumable_map(items, lambda c: c[:1], None, 2)


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
