"""Malformed web inputs through ``build_segments`` (humpback_jax/data/web*.py).

Every input is built here, in ``tmp_path`` (no data files are committed). Each case declares
its outcome: ``ok`` (segments, with a check of the decoded text or stats), ``skip`` (a stats
counter is set) or ``error`` (a ``WebInputError`` whose message names the file). For every
case: no other exception type, bounded time, and every entry (file, tar member, WARC record)
accounted for in the stats.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import gzip
import io
import os
import signal
import tarfile
import time
from typing import Any, Callable

import pytest

from humpback_jax.data import web
from humpback_jax.errors import InputError

EN = ["The garden behind the old library was planted by volunteers last spring.",
      "Tomatoes need at least six hours of direct sunlight to ripen properly.",
      "Adding compost improves clay soils and feeds the earthworms as well.",
      "Drip irrigation wastes far less water than the old sprinklers did."]
JA = "日本語のテキストです。東京は大きな都市です。庭の手入れには毎日の水やりが大切です。"
ZH = "中文网页的内容。北京是中国的首都。花园里的西红柿需要每天六个小时的阳光。"
RU = "Привет, мир! Москва - столица России. Помидорам нужно шесть часов солнца каждый день."
KO = "한국어 웹 페이지입니다. 서울은 대한민국의 수도입니다. 토마토는 매일 여섯 시간의 햇빛이 필요합니다."
WESTERN = "jalapeño café était très “bien” — 5 €"  # cp1250 would read "jalapeńo", "cafť ťtait trŤs"

# Low thresholds so that the segments of tiny pages, in any language, survive the filters.
CONFIG = web.WebConfig(min_chars=20, min_ascii_letter_frac=0.0, min_stopword_frac=0.0)
CASE_SECONDS = 30  # per-case limit (pytest-timeout is not installed)


def page(extra: str = "", meta: str = "", header: str = "Watering the garden") -> str:
  return (f"<!DOCTYPE html><html><head>{meta}<title>Garden notes</title></head><body><article>"
          f"<h1>{header}</h1><p>{EN[0]} {EN[1]} {extra}</p><p>{EN[2]} {EN[3]}</p>"
          "</article></body></html>")


def tar_bytes(members: list[tuple[Any, bytes]], mode: str = "w") -> bytes:
  """``members``: ``(name or TarInfo, data)``."""
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode=mode) as tf:
    for info, data in members:
      if isinstance(info, str):
        info = tarfile.TarInfo(info)
        info.size = len(data)
      tf.addfile(info, io.BytesIO(data) if info.isfile() else None)
  return buf.getvalue()


def warc_bytes(records: list[tuple[str, str, str, bytes]], gz: bool = False) -> bytes:
  """``records``: ``(type, uri, content-type or HTTP status + content-type, body)``; a
  ``response`` gets HTTP headers ``"<status>|<content-type>"``."""
  from warcio.statusandheaders import StatusAndHeaders  # pylint: disable=g-import-not-at-top
  from warcio.warcwriter import WARCWriter  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  writer = WARCWriter(buf, gzip=gz)
  for rec_type, uri, ctype, body in records:
    if rec_type == "warcinfo":
      writer.write_record(writer.create_warcinfo_record("x.warc", {"software": "test"}))
      continue
    http = None
    if rec_type == "response":
      status, _, ctype = ctype.partition("|")
      http = StatusAndHeaders(status, [("Content-Type", ctype)], protocol="HTTP/1.1")
    elif rec_type == "request":
      http = StatusAndHeaders("GET / HTTP/1.1", [("Host", "x.org")], is_http_request=True)
    writer.write_record(writer.create_warc_record(
        uri, rec_type, payload=io.BytesIO(body), http_headers=http,
        warc_content_type=None if http else ctype))
  return buf.getvalue()


def html_resp(uri: str, body: bytes, ctype: str = "text/html") -> tuple[str, str, str, bytes]:
  return ("response", uri, f"200 OK|{ctype}", body)


# ------------------------------------------------------------------------------------------------
# Cases
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Case:
  name: str
  build: Callable[[Any], str]  # tmp_path -> source (relative to tmp_path)
  expect: tuple  # ("ok", check) | ("skip", "stats.key") | ("error", "message substring")
  entries: int | tuple[int, int] | None  # files/members/records built (None: validation error)


def write(name: str, data: bytes | str) -> Callable[[Any], str]:
  def build(tmp):
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return name
  return build


def has(*fragments: str, **stat_values: Any) -> Callable[[list, dict], None]:
  """Check: every fragment is in some kept segment (header or text); stats values (dotted
  keys with ``__``) equal."""
  def check(segs, stats):
    texts = " ".join(s["header"] + "\n" + s["text"] for s in segs)
    for f in fragments:
      assert f in texts, (f, texts[:300])
    for key, value in stat_values.items():
      assert _get(stats, key.replace("__", ".")) == value, (key, stats)
  return check


def _get(stats: dict, key: str) -> Any:
  value: Any = stats
  for part in key.split("."):
    value = value.get(part, 0) if isinstance(value, dict) else 0
  return value


def _utf16_no_bom(order: str, with_meta: bool) -> bytes:
  meta = f'<meta charset="utf-16{order}">' if with_meta else ""
  return page(WESTERN, meta).encode(f"utf-16-{order}")


def _truncated_tar(mode: str) -> bytes:
  members = [(f"p{i}.html", page(f"Member {i}.").encode() + b" " * 3000) for i in range(4)]
  data = tar_bytes(members, mode)
  return data[: len(data) // 2]


def _unsafe_tar() -> bytes:
  def info(name, kind, link=""):
    t = tarfile.TarInfo(name)
    t.type, t.linkname = kind, link
    return t
  good = page("Safe member.").encode()
  return tar_bytes([("../evil.html", good), ("/abs/evil.html", good),
                    (info("link.html", tarfile.SYMTYPE, "/etc/passwd"), b""),
                    (info("hard.html", tarfile.LNKTYPE, "safe.html"), b""),
                    (info("dev.html", tarfile.CHRTYPE), b""),
                    (info("fifo.html", tarfile.FIFOTYPE), b""),
                    ("safe.html", good)])


def _nested_tar() -> bytes:
  inner = tar_bytes([("in.html", page("Inner.").encode())], "w:gz")
  warc = warc_bytes([html_resp("http://x.org/n", page("Nested warc.").encode())])
  return tar_bytes([("dir/inner.tar.gz", inner), ("dir/pages.warc", warc),
                    ("dir/outer.html", page("Outer page.").encode()),
                    ("dir/logo.png", b"\x89PNG\r\n\x1a\n\x00\x00"), ("dir/README", b"hello")])


def _truncated_warc(gz: bool) -> bytes:
  body = page("First record.").encode()
  big = page("Second record. " + " ".join(f"word{i}" for i in range(2000))).encode()
  data = warc_bytes([html_resp("http://x.org/a", body), html_resp("http://x.org/b", big)], gz)
  return data[: len(data) - 4000]


def _mixed_warc() -> bytes:
  return warc_bytes([
      ("warcinfo", "", "", b""),
      ("request", "http://x.org/a", "", b""),
      html_resp("http://x.org/a", page("Mixed warc.").encode()),
      ("metadata", "http://x.org/a", "application/warc-fields", b"via: http://x.org/\r\n"),
      html_resp("http://x.org/logo.jpg", b"\xff\xd8\xff\xe0JFIF\x00", "image/jpeg"),
      ("response", "http://x.org/gone", "404 Not Found|text/html", b"<html>gone</html>"),
      ("resource", "http://x.org/r", "text/plain", b"plain resource")])


def _deep(depth: int) -> str:
  return ("<html><head><title>Deep page</title></head><body><article>" + "<div>" * depth +
          f"<h1>Deep header</h1><p>{EN[0]} {EN[1]}</p><h2>Deeper part</h2><p>{EN[2]}</p>" +
          "</div>" * depth + "</article></body></html>")


def _dir(files: dict[str, bytes]) -> Callable[[Any], str]:
  def build(tmp):
    root = tmp / "site"
    root.mkdir()
    for name, data in files.items():
      (root / name).parent.mkdir(parents=True, exist_ok=True)
      (root / name).write_bytes(data)
    return "site"
  return build


def _dir_with(special: str) -> Callable[[Any], str]:
  def build(tmp):
    root = tmp / "site"
    root.mkdir()
    (root / "good.html").write_text(page("Good page."))
    if special == "loop":
      os.symlink("loop.html", root / "loop.html")
    elif special == "fifo":
      os.mkfifo(root / "pipe.html")
    elif special == "dirlink":
      os.symlink(root, root / "again")
    return "site"
  return build


def _special_source(kind: str) -> Callable[[Any], str]:
  def build(tmp):
    if kind == "loop":
      os.symlink("a.html", tmp / "b.html")
      os.symlink("b.html", tmp / "a.html")
      return "a.html"
    if kind == "dangling":
      os.symlink("nowhere.tar", tmp / "dangling.tar")
      return "dangling.tar"
    if kind == "fifo":
      os.mkfifo(tmp / "pipe.html")
      return "pipe.html"
    if kind == "dir_as_tar":
      (tmp / "pages.tar").mkdir()
      return "pages.tar"
    if kind == "empty_dir":
      (tmp / "empty").mkdir()
      return "empty"
    if kind == "missing":
      return "missing.warc.gz"
    raise ValueError(kind)
  return build


WS = "\r\n"
CASES = [
    # --- decoding: every common encoding, with and without label/BOM -------------------------
    Case("utf8_no_label.html", write("utf8_no_label.html", page(WESTERN).encode()),
         ("ok", has(WESTERN, documents_decoded_by_guess__utf__8=0)), 1),
    Case("utf8_bom.html", write("utf8_bom.html", codecs.BOM_UTF8 + page(WESTERN).encode()),
         ("ok", has(WESTERN)), 1),
    Case("utf16le_bom.html", write("utf16le_bom.html", page(WESTERN).encode("utf-16")),
         ("ok", has(WESTERN)), 1),
    Case("utf16be_bom.html", write("utf16be_bom.html",
                                   codecs.BOM_UTF16_BE + page(WESTERN).encode("utf-16-be")),
         ("ok", has(WESTERN)), 1),
    Case("utf16le_meta_no_bom.html",  # defect 2
         write("utf16le_meta_no_bom.html", _utf16_no_bom("le", True)), ("ok", has(WESTERN)), 1),
    Case("utf16be_no_bom_no_meta.html",
         write("utf16be_no_bom_no_meta.html", _utf16_no_bom("be", False)),
         ("ok", has(WESTERN, **{"documents_decoded_by_guess__utf-16-sniffed": 1})), 1),
    Case("cp1252_no_label.html",  # defect 1
         write("cp1252_no_label.html", page(WESTERN).encode("cp1252")),
         ("ok", has(WESTERN, documents_decoded_by_guess__cp1252=1)), 1),
    Case("cp1252_meta.html", write("cp1252_meta.html", page(
        WESTERN, '<meta http-equiv="Content-Type" content="text/html; charset=windows-1252">'
    ).encode("cp1252")), ("ok", has(WESTERN)), 1),
    Case("latin1_meta.html", write("latin1_meta.html", page(
        "naïve façade Ålesund", '<meta charset="iso-8859-1">').encode("latin-1")),
         ("ok", has("naïve façade Ålesund")), 1),
    Case("shift_jis_meta.html", write("shift_jis_meta.html", page(
        JA, '<meta charset="shift_jis">').encode("shift_jis")), ("ok", has(JA)), 1),
    Case("shift_jis_no_label.html", write("shift_jis_no_label.html",
                                          page(JA).encode("shift_jis")), ("ok", has(JA)), 1),
    Case("gb2312_meta.html", write("gb2312_meta.html", page(
        ZH, '<meta charset="gb2312">').encode("gb2312")), ("ok", has(ZH)), 1),
    Case("gbk_no_label.html", write("gbk_no_label.html", page(ZH).encode("gbk")),
         ("ok", has(ZH, documents_decoded_by_guess__charset_normalizer=1)), 1),
    Case("koi8r_meta.html", write("koi8r_meta.html", page(
        RU, '<meta charset="koi8-r">').encode("koi8-r")), ("ok", has(RU)), 1),
    Case("koi8r_no_label.html", write("koi8r_no_label.html", page(RU).encode("koi8-r")),
         ("ok", has(RU)), 1),
    Case("euckr_meta.html", write("euckr_meta.html", page(
        KO, '<meta charset="euc-kr">').encode("euc-kr")), ("ok", has(KO)), 1),
    Case("euckr_no_label.html", write("euckr_no_label.html", page(KO).encode("euc-kr")),
         ("ok", has(KO)), 1),
    Case("bad_utf8_declared.html", write("bad_utf8_declared.html", page(
        "café \xff\xfe ok", '<meta charset="utf-8">').encode("utf-8").replace(
            "\xff\xfe".encode("utf-8"), b"\xff\xfe")),
         ("ok", has("café \ufffd\ufffd ok", documents_decoded_lossy=1)), 1),
    Case("utf16_label_on_ascii.html", write("utf16_label_on_ascii.html", page(
        "plain ascii", '<meta charset="utf-16">').encode()), ("ok", has("plain ascii")), 1),
    Case("unknown_label.html", write("unknown_label.html", page(
        WESTERN, '<meta charset="x-no-such-charset">').encode()), ("ok", has(WESTERN)), 1),
    Case("crlf.html", write("crlf.html", page(WESTERN).replace("><", ">\r\n<").encode()),
         ("ok", has(WESTERN)), 1),
    # --- broken files ---------------------------------------------------------------------
    Case("garbage.html", write("garbage.html", bytes(range(256)) * 40),
         ("skip", "documents_failed.binary"), 1),
    Case("nul_only.html", write("nul_only.html", b"\x00" * 100),
         ("skip", "documents_failed.binary"), 1),
    Case("empty.html", write("empty.html", b""), ("skip", "documents_failed.empty"), 1),
    Case("blank.htm", write("blank.htm", b" \r\n\t\r\n"), ("skip", "documents_failed.empty"), 1),
    Case("not_gzip.html.gz", write("not_gzip.html.gz", page().encode()),
         ("skip", "documents_failed.gzip_error"), 1),
    Case("cut.html.gz", write("cut.html.gz", gzip.compress(page(WESTERN * 50).encode())[:200]),
         ("skip", "documents_failed.gzip_error"), 1),
    Case("bomb.html.gz", write("bomb.html.gz", gzip.compress(b"<p>" + b"a" * (21 << 20))),
         ("skip", "documents_failed.too_large"), 1),
    Case("huge_single_line.html", write("huge_single_line.html", "<html><body><p>" + (
        "All work and no play. " * ((20 << 20) // 22)) + "</p></body></html>"),
         ("skip", "documents_failed.too_large"), 1),
    Case("script_only.html", write("script_only.html", "<html><head><script>var a = 1;" * 20 +
                                   "</script></head><body><script>go()</script></body></html>"),
         ("skip", "documents_no_content"), 1),
    Case("deep_300.html", write("deep_300.html", _deep(300)),  # defect 6
         ("ok", has("Deep header", EN[2], documents_too_deep=1)), 1),
    Case("deep_10000.html", write("deep_10000.html", _deep(10_000)),
         ("ok", has(EN[0], documents_too_deep=1)), 1),
    # --- archives -------------------------------------------------------------------------
    Case("zero.warc", write("zero.warc", b""), ("skip", "sources_empty"), 0),
    Case("zero.tar", write("zero.tar", b""), ("skip", "sources_empty"), 0),
    Case("not_a_warc.warc.gz", write("not_a_warc.warc.gz", b"hello, this is no WARC\n" * 9),
         ("error", "no document could be read from sources ['not_a_warc.warc.gz']"), 0),
    Case("not_a_tar.tar", write("not_a_tar.tar", b"x" * 1500),
         ("skip", "sources_failed.not_a_tar.tar"), 0),
    Case("truncated.tar", write("truncated.tar", _truncated_tar("w")),  # defect 3
         ("ok", has("Member 0.", documents_failed__truncated_member=1)), (2, 4)),
    Case("truncated.tar.gz", write("truncated.tar.gz", _truncated_tar("w:gz")),
         ("skip", "sources_failed.truncated.tar.gz"), (0, 4)),
    Case("nested.tar", write("nested.tar", _nested_tar()),
         ("ok", has("Outer page.", members_skipped__nested_archive=2,
                    members_skipped__non_html=2)), 5),
    Case("unsafe.tar", write("unsafe.tar", _unsafe_tar()),  # defect 8
         ("ok", has("Safe member.", members_skipped__unsafe_member=6)), 7),
    Case("truncated.warc", write("truncated.warc", _truncated_warc(False)),
         ("ok", has("First record.", documents_failed__warc_truncated_record=1)), 2),
    Case("truncated.warc.gz", write("truncated.warc.gz", _truncated_warc(True)),
         ("skip", "documents_failed.warc_truncated_record"), (1, 2)),
    Case("mixed.warc.gz", write("mixed.warc.gz", _mixed_warc()),
         ("ok", has("Mixed warc.", members_skipped__warc_non_response=4,
                    members_skipped__non_html=1, documents_failed__http_status=1)), 7),
    Case("sjis_http_charset.warc", write("sjis_http_charset.warc", warc_bytes([html_resp(
        "http://x.org/j", page(JA).encode("shift_jis"), "text/html; charset=Shift_JIS")])),
         ("ok", has(JA)), 1),
    # --- directories ----------------------------------------------------------------------
    Case("empty_dir", _special_source("empty_dir"), ("skip", "sources_empty"), 0),
    Case("dir_no_html", _dir({"a.txt": b"text", "b/c.png": b"\x89PNG", "d.tar.gz": b"x"}),
         ("skip", "members_skipped.non_html"), 3),
    Case("dir_symlink_loop", _dir_with("loop"),
         ("ok", has("Good page.", documents_failed__symlink_loop=1)), 2),
    Case("dir_fifo", _dir_with("fifo"),
         ("ok", has("Good page.", documents_failed__not_regular_file=1)), 2),
    Case("dir_link_to_itself", _dir_with("dirlink"),
         ("ok", has("Good page.", members_skipped__symlinked_directory=1)), 2),
    # --- bad sources (validation) -----------------------------------------------------------
    Case("missing.warc.gz", _special_source("missing"), ("error", "not found at"), None),
    Case("a.html", _special_source("loop"), ("error", "symbolic link loop"), None),  # defect 5
    Case("dangling.tar", _special_source("dangling"), ("error", "broken symbolic link"), None),
    Case("pipe.html", _special_source("fifo"), ("error", "neither a regular file"), None),
    Case("pages.tar", _special_source("dir_as_tar"), ("error", "is a directory"), None),
    Case("notes.txt", write("notes.txt", "hello"), ("error", "unsupported type"), None),
    # --- nothing survives -----------------------------------------------------------------
    Case("all_filtered.html", write("all_filtered.html", page(header="ADVERTISEMENT")),
         ("error", "1 documents read from sources ['all_filtered.html'], 0 segments survived"),
         1),
]


@contextlib.contextmanager
def deadline(seconds: int):
  def handler(signum, frame):
    raise TimeoutError(f"case took more than {seconds} s")
  old = signal.signal(signal.SIGALRM, handler)
  signal.alarm(seconds)
  try:
    yield
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def run_case(case: Case, tmp_path) -> tuple[str, list, dict | None, Any]:
  """``(source, segments, stats, WebInputError or None)``."""
  src = case.build(tmp_path)
  cfg = dataclasses.replace(CONFIG, sources=(src,))
  with deadline(CASE_SECONDS):
    try:
      segs, stats = web.build_segments(cfg, data_root=tmp_path)
      return src, segs, stats, None
    except web.WebInputError as e:  # any other exception fails the test
      return src, [], e.stats, e


def test_corpus_is_large_enough():
  assert len(CASES) >= 35
  assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, tmp_path):
  t0 = time.perf_counter()
  src, segs, stats, err = run_case(case, tmp_path)
  kind, arg = case.expect
  if err is not None:
    assert isinstance(err, InputError)
    assert repr(src) in str(err) or f"'{src}'" in str(err), str(err)  # names the file
  if kind == "ok":
    assert err is None, str(err)
    arg(segs, stats)
  elif kind == "skip":
    assert stats is not None, str(err)
    value = _get(stats, arg) if not arg.startswith("sources_failed.") else (
        stats["sources_failed"].get(arg.split(".", 1)[1]))
    if arg == "sources_empty":
      assert stats["sources_empty"] == [src]
    else:
      assert value, (arg, stats)
  else:
    assert err is not None and arg in str(err), str(err)
  if case.entries is not None:
    assert stats is not None
    seen = (stats["documents_read"] + stats["documents_failed_total"] +
            sum(stats["members_skipped"].values()))
    assert seen == stats["entries_total"]
    lo, hi = case.entries if isinstance(case.entries, tuple) else (case.entries, case.entries)
    assert lo <= seen <= hi, (seen, stats)
    if lo != hi:  # entries were lost: the loss is reported
      assert stats["sources_failed"] or stats["documents_failed"], stats
    assert stats["segments_before_filters"] == stats["kept"] + sum(stats["dropped"].values())
  assert time.perf_counter() - t0 < CASE_SECONDS


# ------------------------------------------------------------------------------------------------
# Targeted checks
# ------------------------------------------------------------------------------------------------


def test_validation_names_every_bad_source_before_reading(tmp_path, monkeypatch):
  (tmp_path / "good.html").write_text(page("Good."))
  (tmp_path / "notes.txt").write_text("x")
  (tmp_path / "pages.tar").mkdir()
  os.symlink("loop.html", tmp_path / "loop.html")

  def no_reading(*args, **kwargs):
    raise AssertionError("a document was read before all sources were validated")

  monkeypatch.setattr(web, "iter_documents", no_reading)
  sources = ("good.html", "missing.tar", "loop.html", "pages.tar", "notes.txt")
  with pytest.raises(web.WebInputError) as e:
    web.build_segments(dataclasses.replace(CONFIG, sources=sources), data_root=tmp_path)
  msg = str(e.value)
  assert msg.startswith("4 bad web sources: ")
  assert f"web source 'missing.tar' not found at {tmp_path / 'missing.tar'}" in msg
  for part in ["'loop.html' at", "symbolic link loop", "'pages.tar' at", "is a directory",
               "'notes.txt' at", "unsupported type"]:
    assert part in msg, (part, msg)
  assert "good.html" not in msg
  assert isinstance(e.value, InputError) and e.value.stats is None


def test_missing_source_message(tmp_path):
  with pytest.raises(web.WebInputError, match=r"^web source 'x\.tar' not found at /") as e:
    web.build_segments(dataclasses.replace(CONFIG, sources=("x.tar",)), data_root=tmp_path)
  assert str(tmp_path / "x.tar") in str(e.value)


def test_decoding_order_and_fallbacks():
  dec = web.decode_html_ex
  # Unlabelled Western page: cp1252 (WHATWG default), not charset_normalizer's cp1250 guess.
  d = dec("jalapeño, café était très".encode("cp1252"))
  assert (d.text, d.method) == ("jalapeño, café était très", "cp1252")
  # Bytes undefined in cp1252 (0x81, 0x8D, 0x8F, 0x90, 0x9D): charset_normalizer guesses.
  assert dec("<p>日本語のテキストです。東京</p>".encode("shift_jis")).method == "charset_normalizer"
  # Labels win over fallbacks: HTTP charset, then meta.
  assert dec("<p>café</p>".encode("cp1252"), "windows-1252").method == "http_charset"
  meta = '<meta charset="koi8-r"><p>Привет</p>'.encode("koi8-r")
  assert dec(meta).text.endswith("Привет</p>") and dec(meta).method == "meta_charset"
  assert dec("<p>café</p>".encode()).method == "utf-8"
  assert dec(codecs.BOM_UTF8 + b"<p>x</p>") == ("<p>x</p>", "bom", False)
  # UTF-16 without a BOM, labelled inside (invisible to a byte regex) or not at all.
  le = '<html><head><meta charset="utf-16le"></head><p>café</p></html>'.encode("utf-16-le")
  assert dec(le).text.endswith("<p>café</p></html>") and dec(le).method == "meta_charset"
  be = "<html><p>café ok</p></html>".encode("utf-16-be")
  assert dec(be) == ("<html><p>café ok</p></html>", "utf-16-sniffed", False)
  # A UTF-8 label on slightly broken UTF-8: kept, lossy.
  d = dec(b'<meta charset="utf-8"><p>caf\xc3\xa9 \xff ' + b"x" * 200 + b"</p>")
  assert "café \ufffd" in d.text and d.lossy
  with pytest.raises(web.UndecodableError) as e:
    dec(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00")
  assert e.value.reason == "binary"


def test_contained_segments_dropped_inner_one(tmp_path, monkeypatch):
  """A child segment's text is part of its parent's: the inner one is dropped as
  ``contained``; segments of other documents are not compared."""
  b = web.Block
  blocks = [b("head", 1, "Garden"), b("text", 0, f"{EN[0]} {EN[1]}"),
            b("head", 2, "Soil"), b("text", 0, EN[2]),
            b("head", 3, "Compost"), b("text", 0, EN[3])]
  monkeypatch.setattr(web, "extract_blocks", lambda html, **kw: (None, list(blocks)))
  (tmp_path / "a.html").write_text("<p>a</p>")
  segs, stats = web.build_segments(
      dataclasses.replace(CONFIG, sources=("a.html",)), data_root=tmp_path)
  assert [s["header"] for s in segs] == ["Garden"]
  assert stats["dropped"]["contained"] == 2  # "Soil" (holds "Compost") and "Compost"
  assert stats["segments_before_filters"] == stats["kept"] + sum(stats["dropped"].values())
  assert web.FILTERS[-1] == "contained"
  # The outer segment filtered out (too long): the inner ones are kept, not "contained".
  segs, stats = web.build_segments(dataclasses.replace(
      CONFIG, sources=("a.html",), max_chars=len(f"{EN[2]}\n\nCompost\n\n{EN[3]}")),
                                   data_root=tmp_path)
  assert [s["header"] for s in segs] == ["Soil"]
  assert stats["dropped"] == {**dict.fromkeys(web.FILTERS, 0), "length": 1, "contained": 1}


def test_truncated_tar_reports_where(tmp_path):
  (tmp_path / "cut.tar").write_bytes(_truncated_tar("w"))
  segs, stats = web.build_segments(
      dataclasses.replace(CONFIG, sources=("cut.tar",)), data_root=tmp_path)
  # Members of ~3.5 KB, archive cut at half: p0, p1 whole, p2 cut off, p3 lost.
  assert stats["documents_read"] == 2 and stats["documents_failed"] == {"truncated_member": 1}
  assert stats["sources_failed"]["cut.tar"].startswith(
      "archive truncated or corrupt after 2 entries: ReadError")
  assert {s["doc_id"] for s in segs} == {"cut.tar:p0.html", "cut.tar:p1.html"}


def test_no_document_vs_no_segment_messages(tmp_path):
  (tmp_path / "bin.html").write_bytes(bytes(range(256)) * 4)
  (tmp_path / "ad.html").write_text(page(header="ADVERTISEMENT"))
  with pytest.raises(web.WebInputError, match=r"^no document could be read from sources "
                     r"\['bin.html'\] \(failures: \{'binary': 1\}"):
    web.build_segments(dataclasses.replace(CONFIG, sources=("bin.html",)), data_root=tmp_path)
  with pytest.raises(web.WebInputError, match=r"^1 documents read from sources \['bin.html', "
                     r"'ad.html'\], 0 segments survived the filters \(drops: \{'uppercase_header'"):
    web.build_segments(dataclasses.replace(CONFIG, sources=("bin.html", "ad.html")),
                       data_root=tmp_path)
