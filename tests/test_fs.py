"""Run-directory I/O on an object store (``humpback_jax.fs``), offline.

``gs://`` paths are served by an in-memory fake with GCS semantics: an object appears whole
when its writer is closed (one PUT), objects cannot be appended to and there is no rename. The
fake is plugged in where ``etils.epath`` picks the backend of a ``gs://`` path, so the code under
test runs unchanged, with real ``gs://bucket/...`` strings. For orbax, a minimal GCS JSON API
server over the same objects answers tensorstore's ``gcs`` driver
(``TENSORSTORE_GCS_HTTP_URL``), so a checkpoint is saved to and restored from ``gs://`` too.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import threading
import types
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import fsspec
import pytest
from etils import epath
from etils.epath import backend as epath_backend
from etils.epath import gpath
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFile, MemoryFileSystem

from humpback_jax import fs, jsonl
from humpback_jax.errors import InputError
from humpback_jax.pipeline import fingerprints
from humpback_jax.pipeline.manifest import Manifest

# --------------------------------------------------------------------------- the fake store


class FakeGcs(MemoryFileSystem):
  """In-memory object store: ``bucket/name`` -> bytes, with a generation per write."""

  protocol = ("fakegs",)
  root_marker = ""
  cachable = False

  def __init__(self, *a, **k):
    super().__init__(*a, **k)
    self.store = {}
    self.pseudo_dirs = [""]
    self.puts: list[str] = []  # every object write, in order
    self.generation = 0

  @classmethod
  def _strip_protocol(cls, path):
    return fsspec.utils.stringify_path(path).removeprefix("gs://").strip("/")

  def put_bytes(self, key: str, data: bytes) -> None:
    m = MemoryFile(self, key, data)
    self.generation += 1
    m.generation = self.generation
    self.store[key] = m
    self.puts.append(key)

  def get(self, key: str) -> bytes:  # pylint: disable=arguments-differ
    return self.store[key].getvalue()

  def _open(self, path, mode="rb", **kwargs):
    path = self._strip_protocol(path)
    if "a" in mode or "+" in mode:
      raise OSError(errno.EOPNOTSUPP, f"gs://{path}: an object cannot be appended to")
    if "r" in mode:
      if path not in self.store:
        raise FileNotFoundError(f"gs://{path}")
      return io.BytesIO(self.get(path))
    store = self

    class Upload(io.BytesIO):
      """The object is written when the writer is closed, whole (as a GCS upload)."""

      def close(self):
        if not self.closed:
          store.put_bytes(path, self.getvalue())
        super().close()

    return Upload()

  def mv(self, *a, **k):
    raise NotImplementedError("an object store has no rename")


class FakeBackend(epath_backend._FileSystemSpecBackend):  # pylint: disable=protected-access
  """epath backend: ``gs://`` to the fake, anything else to the local disk."""

  def __init__(self):
    self.gcs = FakeGcs()
    self.local = LocalFileSystem()

  def fs(self, path):
    return self.gcs if os.fspath(path).startswith("gs://") else self.local

  def rename(self, path, dst):
    raise NotImplementedError("an object store has no rename")

  replace = rename


@pytest.fixture
def gcs(monkeypatch) -> FakeGcs:
  """Routes every ``gs://`` epath to a fresh in-memory fake; returns its store."""
  fake = FakeBackend()
  monkeypatch.setattr(gpath._GPath, "_backend", property(  # pylint: disable=protected-access
      lambda self: fake if self._uri_scheme == "gs" else epath_backend.os_backend))
  monkeypatch.setattr(gpath, "_GCS_BACKENDS", frozenset({fake}))
  return fake.gcs


def _ids(records):
  return [r["id"] for r in records]


# --------------------------------------------------------------------------- paths only


def test_gs_paths_are_built_without_touching_storage(monkeypatch, tmp_path):
  def no_io(self):
    raise AssertionError(f"storage touched for {self}")

  monkeypatch.setattr(gpath._GPath, "_backend", property(no_io))  # pylint: disable=protected-access
  run = fs.path("gs://b/run")
  assert isinstance(run, epath.Path)
  assert str(run / "data") == "gs://b/run/data"
  assert os.fspath(run / "data/seed.jsonl") == "gs://b/run/data/seed.jsonl"
  assert str(fs.path(run) / "models" / "M0") == "gs://b/run/models/M0"
  assert str(fs.path(epath.Path("gs://b/run/"))) == "gs://b/run"
  assert str((run / "report.md").parent) == "gs://b/run" and (run / "x.jsonl").name == "x.jsonl"
  assert not fs.is_local(run) and not fs.is_local("gs://b/x") and fs.is_local("rel/x")
  # local paths: made absolute (never a URI)
  monkeypatch.chdir(tmp_path)
  assert str(fs.path("rel/x")) == str(tmp_path / "rel/x")
  assert str(fs.path(tmp_path / "a")) == str(tmp_path / "a") and fs.is_local(fs.path("a"))


# --------------------------------------------------------------------------- JSONL


def test_write_jsonl_is_one_object_write_and_reads_back(gcs):
  recs = [{"id": str(i), "text": f"héllo {i}"} for i in range(5)]
  assert jsonl.write_jsonl(recs, "gs://b/run/data/a.jsonl") == 5
  assert gcs.puts == ["b/run/data/a.jsonl"]  # no temporary object, no rename
  assert jsonl.read_jsonl("gs://b/run/data/a.jsonl") == recs
  assert jsonl.read_jsonl(fs.path("gs://b/run") / "data/a.jsonl") == recs
  # an error midway uploads nothing: the old object stays
  with pytest.raises(InputError, match=r"gs://b/run/data/a\.jsonl: record 2 \(id 'x'\)"):
    jsonl.write_jsonl([{"id": "ok"}, {"id": "x", "t": "bad \ud800"}], "gs://b/run/data/a.jsonl")
  assert gcs.puts == ["b/run/data/a.jsonl"] and jsonl.read_jsonl("gs://b/run/data/a.jsonl") == recs
  gcs.put_bytes("b/bad.jsonl", b'{"id": 1}\n\n{"id": 2\n')
  with pytest.raises(jsonl.JsonlError, match=r"gs://b/bad\.jsonl:3: invalid JSON"):
    jsonl.read_jsonl("gs://b/bad.jsonl")
  with pytest.raises(FileNotFoundError):
    jsonl.read_jsonl("gs://b/none.jsonl")


def test_appender_rewrites_the_whole_object_per_append_and_resumes(gcs):
  p = "gs://b/run/data/part.jsonl"
  with jsonl.JsonlAppender(p) as out:
    out.append([{"id": "a"}, {"id": "b"}])
    assert gcs.get("b/run/data/part.jsonl") == b'{"id": "a"}\n{"id": "b"}\n'
    out.append([{"id": "c"}])
    assert gcs.get("b/run/data/part.jsonl").endswith(b'{"id": "c"}\n')
  assert gcs.puts == ["b/run/data/part.jsonl"] * 2  # one whole-object write per append
  assert _ids(jsonl.read_jsonl(p)) == ["a", "b", "c"]
  # resume: a torn last line (no newline), a duplicate id and a bad byte
  gcs.put_bytes("b/run/data/part.jsonl",
                b'{"id": "a"}\n{"id": "b", "t": "\xff"}\n{"id": "a"}\n{"id": "c", "x":')
  out = jsonl.JsonlAppender(p)
  assert (out.torn_lines, out.duplicate_lines) == (1, 1)
  assert out.done_ids == {"a", "b"}
  assert _ids(jsonl.read_jsonl(p)) == ["a", "b"]  # rewritten without them
  out.append([{"id": "c"}, {"id": "d"}])
  out.close()
  assert _ids(jsonl.read_jsonl(p)) == ["a", "b", "c", "d"]
  assert jsonl.JsonlAppender(p).done_ids == {"a", "b", "c", "d"}
  items = [{"id": i} for i in "abcdefg"]
  assert [j for j, _ in jsonl.pending_chunks(items, jsonl.JsonlAppender(p).done_ids, 2)] == [2, 3]


def test_appender_upload_failure_keeps_the_previous_object(gcs, monkeypatch):
  p = "gs://b/part.jsonl"
  out = jsonl.JsonlAppender(p)
  out.append([{"id": "a"}])

  def fail(local, dst):
    raise OSError(errno.EIO, "upload failed")

  monkeypatch.setattr(fs, "_upload", fail)
  with pytest.raises(OSError, match="upload failed"):
    out.append([{"id": "b"}])
  out.close()
  assert gcs.get("b/part.jsonl") == b'{"id": "a"}\n'


# --------------------------------------------------------------------------- manifest


def test_manifest_on_an_object_store(gcs):
  m = Manifest("gs://b/run")
  assert str(m.path) == "gs://b/run/manifest.json"
  m.start("s1")
  assert json.loads(gcs.get("b/run/manifest.json"))["stages"]["s1"]["status"] == "running"
  m.finish("s1", 1.234, count=7)
  m2 = Manifest("gs://b/run")
  assert m2.is_done("s1") and m2.stage("s1")["count"] == 7
  assert set(gcs.puts) == {"b/run/manifest.json"}  # rewritten whole, never a temporary object
  gcs.put_bytes("b/run/manifest.json", b"{not json")
  with pytest.raises(ValueError, match=r"gs://b/run/manifest\.json: corrupt manifest"):
    Manifest("gs://b/run")


# --------------------------------------------------------------------------- fs operations


def test_atomic_write_replace_rmtree_walk(gcs):
  fs.atomic_write_text("gs://b/x/a.txt", "héllo")
  fs.atomic_write_bytes(fs.path("gs://b/x") / "b.bin", b"\x00\x01")
  assert gcs.get("b/x/a.txt") == "héllo".encode() and gcs.get("b/x/b.bin") == b"\x00\x01"
  with pytest.raises(RuntimeError):
    with fs.atomic_writer("gs://b/x/a.txt") as f:
      f.write("half")
      raise RuntimeError("killed")
  assert gcs.get("b/x/a.txt") == "héllo".encode()
  with fs.open_text("gs://b/x/a.txt") as f:
    assert f.read() == "héllo"
  # replace a file (copy + delete)
  fs.replace("gs://b/x/a.txt", "gs://b/x/c.txt")
  assert not fs.path("gs://b/x/a.txt").exists() and gcs.get("b/x/c.txt") == "héllo".encode()
  # replace a directory: the old one goes, the marker is written last
  for name in ("z_marker.json", "a/1", "a/2", "b"):
    gcs.put_bytes(f"b/run/params.tmp/{name}", name.encode())
  gcs.put_bytes("b/run/params/stale", b"old")
  gcs.puts.clear()
  fs.replace("gs://b/run/params.tmp", "gs://b/run/params", marker="z_marker.json")
  assert fs.walk_files("gs://b/run/params") == ["a/1", "a/2", "b", "z_marker.json"]
  assert gcs.puts[-1] == "b/run/params/z_marker.json"
  assert not fs.path("gs://b/run/params.tmp").exists()
  with pytest.raises(FileNotFoundError):
    fs.replace("gs://b/run/none", "gs://b/run/params")
  # rmtree: a directory, a single object, nothing
  fs.rmtree("gs://b/run/params")
  fs.rmtree("gs://b/x/c.txt")
  fs.rmtree("gs://b/nothing")
  assert not fs.path("gs://b/run/params").exists() and not fs.path("gs://b/x/c.txt").exists()
  assert fs.path("gs://b/x/b.bin").exists()


def test_replace_uploads_a_local_directory(gcs, tmp_path):
  """A tree written locally (e.g. an HF export) moved into a ``gs://`` run directory."""
  (tmp_path / "hf" / "sub").mkdir(parents=True)
  (tmp_path / "hf" / "config.json").write_text("{}")
  (tmp_path / "hf" / "sub" / "w.bin").write_bytes(b"\x01")
  fs.replace(tmp_path / "hf", "gs://b/run/models/M2_hf")
  assert fs.walk_files("gs://b/run/models/M2_hf") == ["config.json", "sub/w.bin"]
  assert gcs.get("b/run/models/M2_hf/sub/w.bin") == b"\x01"
  assert not (tmp_path / "hf").exists()


def test_file_digest_on_an_object_store_equals_the_local_one(gcs, tmp_path):
  files = {"params/a": b"1" * 10, "params/sub/b": b"22", "params/fingerprint.json": b"{}"}
  for rel, data in files.items():
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / rel).write_bytes(data)
    gcs.put_bytes(f"b/run/{rel}", data)
  assert (fingerprints.file_digest("gs://b/run/params/a")
          == fingerprints.file_digest(tmp_path / "params/a")
          == hashlib.sha256(b"1" * 10).hexdigest()[:16])
  assert (fingerprints.file_digest("gs://b/run/params")
          == fingerprints.file_digest(tmp_path / "params"))
  assert fingerprints.file_digest("gs://b/run/none") == "missing"


def test_runner_and_report_on_an_object_store(gcs):
  """A stage on a ``gs://`` run directory: inputs checked, outputs fingerprinted, manifest and
  report written, skipped when up to date, partial files discarded on a forced rerun."""
  from humpback_jax.pipeline import report
  from humpback_jax.pipeline.config import PipelineConfig
  from humpback_jax.pipeline.runner import run_stage
  from humpback_jax.pipeline.stages import Stage

  runs = []

  def work(ctx):
    runs.append(ctx.force)
    src = jsonl.read_jsonl(ctx.run_dir / "data/seed.jsonl")
    with jsonl.JsonlAppender(ctx.run_dir / "data/out.partial.jsonl") as out:
      out.append(r for r in src if r["id"] not in out.done_ids)
    jsonl.write_jsonl(src, ctx.run_dir / "data/out.jsonl")
    return {"count": len(src)}

  run_dir = fs.path("gs://b/run")
  ctx = types.SimpleNamespace(run_dir=run_dir, config=PipelineConfig(), data_root="/nonexistent",
                              force=False)
  stage = Stage("copy", ("data/seed.jsonl",), ("data/out.jsonl",), work,
                partials=("data/out.partial.jsonl",))
  manifest = Manifest(run_dir)
  with pytest.raises(FileNotFoundError, match="missing inputs"):
    run_stage(ctx, manifest, stage)
  jsonl.write_jsonl([{"id": "a", "instruction": "i", "response": "r"}],
                    run_dir / "data/seed.jsonl")
  assert run_stage(ctx, manifest, stage) and not run_stage(ctx, manifest, stage)
  entry = Manifest("gs://b/run").stage("copy")
  assert entry["status"] == "done" and entry["count"] == 1
  assert entry["outputs"]["data/out.jsonl"] == fingerprints.file_digest(run_dir / "data/out.jsonl")
  assert run_stage(ctx, manifest, stage, force=True) and runs == [False, True]
  text = report.write_report(ctx, manifest)
  assert "| copy | done | 1 |" in text
  assert gcs.get("b/run/report.md").decode() == text


# --------------------------------------------------------------------------- local disk


def test_local_atomic_writer_replace_and_appender(tmp_path):
  p = tmp_path / "d" / "f.txt"
  fs.atomic_write_text(p, "one")
  with pytest.raises(RuntimeError):
    with fs.atomic_writer(p) as f:
      f.write("two")
      raise RuntimeError("killed")
  assert p.read_text() == "one" and sorted(os.listdir(p.parent)) == ["f.txt"]
  (tmp_path / "new").mkdir()
  (tmp_path / "new" / "x").write_text("x")
  (tmp_path / "old").mkdir()
  (tmp_path / "old" / "stale").write_text("s")
  fs.replace(tmp_path / "new", tmp_path / "old")
  assert os.listdir(tmp_path / "old") == ["x"] and not (tmp_path / "new").exists()
  assert fs.walk_files(tmp_path) == ["d/f.txt", "old/x"]
  with fs.AppendWriter(tmp_path / "a" / "part.txt") as w:
    w.write("1\n")
    w.sync()
    w.write("2\n")
  assert (tmp_path / "a" / "part.txt").read_text() == "1\n2\n"  # locally the tail reaches disk
  fs.rmtree(tmp_path / "old")
  fs.rmtree(tmp_path / "old")
  fs.rmtree(p)
  assert not (tmp_path / "old").exists() and not p.exists()


# --------------------------------------------------------------------------- orbax on gs://


def _serve_gcs_json_api(store: FakeGcs) -> ThreadingHTTPServer:
  """The part of the GCS JSON API tensorstore's ``gcs`` driver uses: media/metadata GET (with
  Range and generation preconditions), list, media upload, delete."""
  lock = threading.Lock()

  class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
      pass

    def _send(self, code, body=b"", headers=()):
      headers = list(headers)
      if isinstance(body, dict):
        body = json.dumps(body).encode()
        headers.append(("Content-Type", "application/json"))
      self.send_response(code)
      for k, v in headers:
        self.send_header(k, v)
      self.send_header("Content-Length", str(len(body)))
      self.end_headers()
      if self.command != "HEAD":
        self.wfile.write(body)

    def _request(self):
      u = urllib.parse.urlsplit(self.path)
      return u.path.split("/"), {k: v[0] for k, v in urllib.parse.parse_qs(u.query).items()}

    @staticmethod
    def _meta(key):
      bucket, name = key.split("/", 1)
      m = store.store[key]
      return {"kind": "storage#object", "bucket": bucket, "name": name,
              "generation": str(m.generation), "metageneration": "1",
              "size": str(len(m.getvalue()))}

    @staticmethod
    def _failed_precondition(key, q):
      gen = store.store[key].generation if key in store.store else 0
      if "ifGenerationMatch" in q and int(q["ifGenerationMatch"]) != gen:
        return 412
      if "ifGenerationNotMatch" in q and int(q["ifGenerationNotMatch"]) == gen:
        return 304
      return None

    def do_GET(self):  # /storage/v1/b/{bucket}/o[/{object}]
      parts, q = self._request()
      bucket = parts[4]
      with lock:
        if len(parts) == 6:
          prefix = f"{bucket}/{q.get('prefix', '')}"
          items = [self._meta(k) for k in sorted(store.store) if k.startswith(prefix)]
          lo, hi = q.get("startOffset"), q.get("endOffset")
          items = [i for i in items if (lo is None or i["name"] >= lo)
                   and (hi is None or i["name"] < hi)]
          return self._send(200, {"kind": "storage#objects", **({"items": items} if items else {})})
        key = f"{bucket}/{urllib.parse.unquote('/'.join(parts[6:]))}"
        if key not in store.store:
          return self._send(404, {"error": {"code": 404, "message": "No such object"}})
        code = self._failed_precondition(key, q)
        if code:
          return self._send(code)
        headers = [("x-goog-generation", str(store.store[key].generation))]
        if q.get("alt") != "media":
          return self._send(200, self._meta(key), headers)
        data = store.get(key)
      if self.headers.get("Range"):
        a, b = self.headers["Range"].split("=")[1].split("-")
        a, b = int(a), int(b) if b else len(data) - 1
        chunk = data[a:b + 1]
        return self._send(206, chunk, headers + [
            ("Content-Range", f"bytes {a}-{a + len(chunk) - 1}/{len(data)}")])
      return self._send(200, data, headers)

    do_HEAD = do_GET

    def do_POST(self):  # /upload/storage/v1/b/{bucket}/o?uploadType=media&name=...
      parts, q = self._request()
      data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
      key = f"{parts[5]}/{q['name']}"
      with lock:
        if self._failed_precondition(key, q):
          return self._send(412)
        store.put_bytes(key, data)
        meta = self._meta(key)
      return self._send(200, meta)

    def do_DELETE(self):
      parts, q = self._request()
      key = f"{parts[4]}/{urllib.parse.unquote('/'.join(parts[6:]))}"
      with lock:
        if key not in store.store:
          return self._send(404)
        if self._failed_precondition(key, q):
          return self._send(412)
        del store.store[key]
      return self._send(204)

  server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
  server.daemon_threads = True
  threading.Thread(target=server.serve_forever, daemon=True).start()
  return server


@pytest.fixture
def gcs_api(gcs, monkeypatch):
  """``gcs`` also reachable by tensorstore (orbax's array writes) through a local server."""
  from orbax.checkpoint._src.path import gcs_utils
  server = _serve_gcs_json_api(gcs)
  monkeypatch.setenv("TENSORSTORE_GCS_HTTP_URL", f"http://127.0.0.1:{server.server_port}")
  monkeypatch.setenv("GOOGLE_AUTH_TOKEN_FOR_TESTING", "fake-token")  # no credential lookup
  # orbax asks google-cloud-storage (not installed here) whether the bucket has a
  # hierarchical namespace before deleting a step on GCS; the fake has none.
  monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
  yield gcs
  server.shutdown()
  server.server_close()


def test_checkpointer_saves_and_restores_on_gs(gcs_api):
  import jax
  import jax.numpy as jnp
  import numpy as np

  from humpback_jax.train.checkpoint import Checkpointer
  state = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3, jnp.bfloat16)}
  ckpt = Checkpointer("gs://bkt/run/models/M0/ckpt", keep=2)
  assert str(ckpt.directory) == "gs://bkt/run/models/M0/ckpt" and ckpt.all_steps() == []
  for step in (1, 2, 3):
    ckpt.save(step, jax.tree.map(lambda x, s=step: x * s, state), {"step": step})
  ckpt.wait()
  assert ckpt.all_steps() == [2, 3] and ckpt.latest_step() == 3  # step 1 deleted (keep=2)
  assert "bkt/run/models/M0/ckpt/3/commit_success.txt" in gcs_api.store  # orbax's GCS commit
  assert not any(k.startswith("bkt/run/models/M0/ckpt/1/") for k in gcs_api.store)
  ckpt.close()
  again = Checkpointer("gs://bkt/run/models/M0/ckpt", keep=2)
  assert again.latest_step() == 3 and again.read_meta(2) == {"step": 2}
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                          state)
  restored, meta = again.restore(3, abstract)
  assert meta == {"step": 3}
  for k in state:
    np.testing.assert_array_equal(np.asarray(restored[k]), np.asarray(state[k] * 3))
  again.delete_all()
  assert again.all_steps() == []
  again.close()
