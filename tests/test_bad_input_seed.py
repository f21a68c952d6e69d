"""Malformed seed / AlpacaEval / eval-prompt files: each gives a clear InputError or a counted skip.

The corpus is built in ``tmp_path`` from code (nothing committed). Every case runs through
``build_seed`` (seed and AlpacaEval files) or ``load_eval_prompts`` (eval files) under an alarm
and declares its outcome: ``("ok", check)``, ``("skip", drop reason)`` or ``("error", substring
naming the file)``. The harness fails on any exception that is not an ``InputError``.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import pathlib
import random
import signal
from collections.abc import Callable
from typing import Any

import pytest

from humpback_jax import jsonl, paths
from humpback_jax.data import seed
from humpback_jax.data.eval_prompts import load_eval_prompts
from humpback_jax.errors import InputError

ALPACA_EVAL = paths.default_data_root() / "eval/alpaca_eval_805_ref_text_davinci_003.json"
AE_NAME = "ae_small.json"  # A valid AlpacaEval file written beside each case.
TIMEOUT_S = 10


def _msg(mid: str, parent: str | None, role: str, text: str, **kw: Any) -> dict:
  """One Open Assistant message (flat format)."""
  return {"message_id": mid, "parent_id": parent, "role": role, "text": text, "lang": "en",
          "rank": 0 if role == "assistant" else None, "deleted": False, "synthetic": False,
          "review_result": True, **kw}


def _tree(root_id: str, q: str = "a question", a: str = "an answer", **prompt_kw: Any) -> dict:
  reply = _msg(root_id + "-a", root_id, "assistant", a)
  prompt = {**_msg(root_id, None, "prompter", q), "replies": [reply], **prompt_kw}
  return {"message_tree_id": root_id, "tree_state": "ready_for_export", "prompt": prompt}


def _lima(cid: Any, q: str = "a question", a: str = "an answer") -> dict:
  return {"dataset": "t", "id": cid,
          "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


def _task(tid: str, q: str = "a task", out: Any = "an output", inp: Any = "") -> dict:
  return {"id": tid, "name": tid, "instruction": q, "instances": [{"input": inp, "output": out}]}


def _jl(*objs: Any) -> str:
  return "".join(json.dumps(o) + "\n" for o in objs)


def _deep(n: int) -> str:
  return "[" * n + "]" * n


@dataclasses.dataclass(frozen=True)
class Case:
  """``make(tmp_path)`` writes the input and returns its path (relative to ``tmp_path``) or, for
  fmt ``"config"``, SeedConfig keyword arguments (``lima_files`` defaults to a one-pair file).
  ``units``: for ok/skip seed cases, the units (trees, conversations, tasks, flat roots and
  detached messages) in all files of the build, each of which must be either output or counted."""

  name: str
  fmt: str  # trees | flat | lima | self_instruct | alpaca | config | eval
  make: Callable[[pathlib.Path], Any]
  expect: tuple[str, Any]
  units: int | None = None


def _write(name: str, data: str | bytes) -> Callable[[pathlib.Path], str]:
  def make(tmp: pathlib.Path) -> str:
    p = tmp / name
    p.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass"))
    return name
  return make


def _symlink_loop(tmp: pathlib.Path) -> str:
  os.symlink(tmp / "loop_b.jsonl", tmp / "loop_a.jsonl")
  os.symlink(tmp / "loop_a.jsonl", tmp / "loop_b.jsonl")
  return "loop_a.jsonl"


def _dangling(tmp: pathlib.Path) -> str:
  os.symlink(tmp / "nowhere.jsonl", tmp / "dangling.jsonl")
  return "dangling.jsonl"


def _directory(tmp: pathlib.Path) -> str:
  (tmp / "lima_dir.jsonl").mkdir()
  return "lima_dir.jsonl"


def _fifo(tmp: pathlib.Path) -> str:
  os.mkfifo(tmp / "fifo.jsonl")  # Opening it for reading would block forever.
  return "fifo.jsonl"


def _validate_first(tmp: pathlib.Path) -> dict:
  (tmp / "bad_json_first.jsonl").write_text('{"id": \n')
  return {"lima_files": ("bad_json_first.jsonl",), "self_instruct_files": ("absent_si.jsonl",)}


def _same_name_two_dirs(tmp: pathlib.Path) -> dict:
  for d in ("a", "b"):
    (tmp / d).mkdir()
    (tmp / d / "lima.jsonl").write_text(_jl(_lima("x", q=f"question from {d}")))
  return {"lima_files": ("a/lima.jsonl", "b/lima.jsonl"), "dedup": False}


def _flat_chain(tmp: pathlib.Path) -> str:
  rows = [_msg("m0", None, "prompter", "q"), _msg("m1", "m0", "assistant", "a")]
  rows += [_msg(f"m{i}", f"m{i - 1}", "prompter" if i % 2 == 0 else "assistant", "t", rank=1)
           for i in range(2, 5000)]
  (tmp / "flat_chain.jsonl").write_text(_jl(*reversed(rows)))
  return "flat_chain.jsonl"


def _check_two_pairs(pairs: list, stats: dict, _tmp: pathlib.Path) -> None:
  assert [p["instruction"] for p in pairs] == ["first q", "second q"]


def _check_gz_source(pairs: list, stats: dict, _tmp: pathlib.Path) -> None:
  assert stats["sources"] == ["oasst:trees_real_gz"] and len(pairs) == 2


def _check_bom_crlf(pairs: list, stats: dict, _tmp: pathlib.Path) -> None:
  assert [(p["instruction"], p["response"]) for p in pairs] == [("first q", "an answer"),
                                                                ("second q", "an answer")]


def _check_decontam_off(pairs: list, stats: dict, _tmp: pathlib.Path) -> None:
  assert stats["decontamination"] == "off" and stats["alpaca_eval_instructions"] == 0
  assert stats["decontamination_rule"] == "" and len(pairs) == 1


def _check_eval(prompts: list, _tmp: pathlib.Path) -> None:
  assert prompts == [{"instruction": "koala q", "dataset": "eval_mixed"},
                     {"instruction": "vicuna q", "dataset": "eval_mixed"},
                     {"instruction": "task\n\nits input", "dataset": "eval_mixed"}]


_TWO_TREES = _jl(_tree("r1", "first q"), _tree("r2", "second q"))
_GOOD_LIMA = _jl(_lima("g1"))
_GARBAGE = random.Random(0).randbytes(4096)

CASES = [
    # --- Bytes and encodings (any format reads through the same line reader).
    Case("trees_invalid_utf8", "trees",
         _write("trees_bad_utf8.jsonl", _jl(_tree("r1")).encode() + b'{"prompt": "caf\xe9"}\n'),
         ("error", "trees_bad_utf8.jsonl: line 2: invalid UTF-8 (byte 0xe9 at byte column 16)")),
    Case("trees_gzip_named_jsonl", "trees", _write("trees_gz.jsonl", gzip.compress(
        _TWO_TREES.encode())), ("ok", _check_two_pairs), units=2),
    Case("trees_jsonl_gz", "trees", _write("trees_real_gz.jsonl.gz", gzip.compress(
        _TWO_TREES.encode())), ("ok", _check_gz_source), units=2),
    Case("trees_gzip_truncated", "trees", _write("trees_trunc_gz.jsonl", gzip.compress(
        _TWO_TREES.encode() * 50)[:60]), ("error", "trees_trunc_gz.jsonl: line 1: corrupt or "
                                                    "truncated gzip")),
    Case("trees_bom_crlf", "trees", _write("trees_bom_crlf.jsonl", b"\xef\xbb\xbf" + _TWO_TREES
                                           .replace("\n", "\r\n").encode()),
         ("ok", _check_bom_crlf), units=2),
    Case("lima_binary_garbage", "lima", _write("binary_garbage.jsonl", _GARBAGE),
         ("error", "binary_garbage.jsonl: line 1: ")),
    Case("lima_nul_bytes", "lima", _write("nul_bytes.jsonl", b"\x00\x00\x00\n"),
         ("error", "nul_bytes.jsonl: line 1: malformed JSON")),
    Case("lima_bom_mid_file", "lima", _write("bom_mid.jsonl", _GOOD_LIMA.encode() + b"\xef\xbb\xbf"
                                             + _jl(_lima("g2")).encode()),
         ("error", "bom_mid.jsonl: line 2: malformed JSON")),
    # --- Lone surrogates: valid JSON, unwritable as UTF-8: counted skips.
    Case("trees_lone_surrogate_text", "trees", _write("trees_surrogate.jsonl", _TWO_TREES + _jl(
        _tree("r3", "bad \ud800 text"))), ("skip", "invalid_unicode"), units=3),
    Case("lima_lone_surrogate_id", "lima", _write("lima_surrogate_id.jsonl", _GOOD_LIMA + _jl(
        _lima("id\udc80"))), ("skip", "invalid_unicode"), units=2),
    Case("si_lone_surrogate_output", "self_instruct", _write("si_surrogate.jsonl", _jl(
        _task("t1"), _task("t2", out="x\udfff"))), ("skip", "invalid_unicode"), units=2),
    # --- JSON structure.
    Case("trees_truncated_last_line", "trees", _write("trees_trunc.jsonl", _TWO_TREES + '{"prom'),
         ("error", "trees_trunc.jsonl: line 3: malformed JSON")),
    Case("trees_deep_nesting", "trees", _write("trees_deep.jsonl", '{"prompt": ' + _deep(10_000)
                                               + "}\n"),
         ("error", "trees_deep.jsonl: line 1: JSON value nested too deeply")),
    Case("lima_deep_nesting_bare", "lima", _write("lima_deep.jsonl", _deep(10_000) + "\n"),
         ("error", "lima_deep.jsonl: line 1: JSON value nested too deeply")),
    Case("trees_huge_int", "trees", _write("trees_huge_int.jsonl", '{"prompt": ' + "9" * 5000
                                           + "}\n"),
         ("error", "trees_huge_int.jsonl: line 1: invalid JSON value")),
    Case("lima_top_level_array", "lima", _write("lima_array.jsonl", "[1, 2]\n"),
         ("error", "lima_array.jsonl: line 1: expected a JSON object, got list")),
    Case("lima_empty_file", "lima", _write("lima_empty.jsonl", b""),
         ("error", "lima_empty.jsonl: file is empty")),
    Case("lima_blank_lines_only", "lima", _write("lima_blank.jsonl", "\n  \r\n\t\n"),
         ("error", "lima_blank.jsonl: file is empty")),
    # --- Fields: missing, null, wrong type.
    Case("trees_prompt_list", "trees", _write("trees_prompt_list.jsonl", _jl({"prompt": []})),
         ("error", "trees_prompt_list.jsonl: line 1: field 'prompt' must be dict, got list")),
    Case("trees_null_text", "trees", _write("trees_null.jsonl", _jl(_tree("r1"), _tree(
        "r2", text=None))), ("error", "trees_null.jsonl: line 2: prompt: field 'text' must be "
                                      "str, got null")),
    Case("trees_rank_string", "trees", _write("trees_rank.jsonl", _jl({"prompt": {
        **_tree("r1")["prompt"],
        "replies": [{**_msg("a", "r1", "assistant", "x"), "rank": "0"}]}})),
         ("error", "trees_rank.jsonl: line 1: prompt.replies[0]: field 'rank' must be int or "
                   "float, got str")),
    Case("trees_replies_object", "trees", _write("trees_replies.jsonl", _jl(_tree("r1", replies={
        "a": 1}))), ("error", "trees_replies.jsonl: line 1: prompt: field 'replies' must be list")),
    Case("lima_messages_string", "lima", _write("lima_msgs.jsonl", _jl({"id": "x", "messages":
                                                                        "hi"})),
         ("error", "lima_msgs.jsonl: line 1: field 'messages' must be list, got str")),
    Case("lima_message_not_object", "lima", _write("lima_msg_obj.jsonl", _jl({"messages": [
        "hi"]})), ("error", "lima_msg_obj.jsonl: line 1: messages[0]: expected a JSON object")),
    Case("lima_id_float", "lima", _write("lima_id_float.jsonl", _jl(_lima(1.5))),
         ("error", "lima_id_float.jsonl: line 1: field 'id' must be str or int, got float")),
    Case("lima_id_bool", "lima", _write("lima_id_bool.jsonl", _jl(_lima(True))),
         ("error", "lima_id_bool.jsonl: line 1: field 'id' must be str or int, got bool")),
    Case("lima_bad_roles", "lima", _write("lima_roles.jsonl", _GOOD_LIMA + _jl({
        "id": "b", "messages": [{"role": "assistant", "content": "a"},
                                {"role": "user", "content": "q"}]})),
         ("skip", "bad_roles"), units=2),
    Case("si_instances_dict", "self_instruct", _write("si_inst.jsonl", _jl({"id": "t",
                                                                           "instruction": "q",
                                                                           "instances": {}})),
         ("error", "si_inst.jsonl: line 1: field 'instances' must be list, got dict")),
    Case("si_output_null", "self_instruct", _write("si_out_null.jsonl", _jl(_task("t", out=None))),
         ("error", "si_out_null.jsonl: line 1: instances[0]: field 'output' must be str, "
                   "got null")),
    Case("si_input_int", "self_instruct", _write("si_input_int.jsonl", _jl(_task("t", inp=3))),
         ("error", "si_input_int.jsonl: line 1: instances[0]: field 'input' must be str, got int")),
    Case("si_no_instances", "self_instruct", _write("si_empty_inst.jsonl", _jl(
        _task("t1"), {"id": "t2", "instruction": "q", "instances": []})),
         ("skip", "no_instances"), units=2),
    # --- Duplicate ids.
    Case("trees_duplicate_root_id", "trees", _write("trees_dup.jsonl", _TWO_TREES + _jl(_tree(
        "r1", "first q, edited"))), ("skip", "duplicate_id"), units=3),
    Case("lima_duplicate_id", "lima", _write("lima_dup.jsonl", _jl(_lima("d", "q one"),
                                                                   _lima("d", "q two"))),
         ("skip", "duplicate_id"), units=2),
    Case("flat_duplicate_id", "flat", _write("flat_dup.jsonl", _jl(
        _msg("r1", None, "prompter", "q"), _msg("a1", "r1", "assistant", "a"),
        _msg("r1", None, "prompter", "q again"))),
         ("error", "flat_dup.jsonl: line 3: duplicate message_id 'r1' (first on line 1)")),
    Case("same_file_name_in_two_dirs", "config", _same_name_two_dirs, ("skip", "duplicate_id"),
         units=2),
    # --- Open Assistant flat: orphans, cycles, long chains.
    Case("flat_orphans", "flat", _write("flat_orphan.jsonl", _jl(
        _msg("r1", None, "prompter", "q"), _msg("a1", "r1", "assistant", "a"),
        _msg("o1", "missing", "assistant", "orphan"), _msg("o2", "o1", "prompter", "child"))),
         ("skip", "oasst_orphan_messages"), units=3),
    Case("flat_cycles", "flat", _write("flat_cycle.jsonl", _jl(
        _msg("r1", None, "prompter", "q"), _msg("a1", "r1", "assistant", "a"),
        _msg("c1", "c2", "prompter", "x"), _msg("c2", "c1", "assistant", "y"),
        _msg("c3", "c2", "prompter", "into the loop"), _msg("s", "s", "prompter", "self"))),
         ("skip", "oasst_cycle_messages"), units=5),
    Case("flat_parent_id_int", "flat", _write("flat_parent_int.jsonl", _jl(_msg("r", 7, "prompter",
                                                                               "q"))),
         ("error", "flat_parent_int.jsonl: line 1: field 'parent_id' must be str, got int")),
    Case("flat_chain_5000_deep", "flat", _flat_chain, ("ok", lambda p, s, t: len(p) == 1),
         units=1),
    # --- Paths.
    Case("path_missing", "lima", lambda t: "no_such_file.jsonl",
         ("error", "no_such_file.jsonl: seed file does not exist")),
    Case("path_directory", "lima", _directory,
         ("error", "lima_dir.jsonl: seed file is a directory")),
    Case("path_symlink_loop", "trees", _symlink_loop,
         ("error", "loop_a.jsonl: seed file is a symlink loop")),
    Case("path_dangling_symlink", "self_instruct", _dangling,
         ("error", "dangling.jsonl: seed file does not exist (dangling symlink)")),
    Case("path_fifo", "flat", _fifo, ("error", "fifo.jsonl: seed file is not a regular file")),
    Case("all_paths_checked_before_reading", "config", _validate_first,
         ("error", "absent_si.jsonl: seed file does not exist")),
    # --- AlpacaEval (decontamination) file.
    Case("alpaca_empty_list", "alpaca", _write("ae_empty_list.json", "[]"),
         ("error", "ae_empty_list.json: contains no instructions; decontamination would be off")),
    Case("alpaca_empty_file", "alpaca", _write("ae_empty.json", b""),
         ("error", "ae_empty.json: contains no instructions; decontamination would be off")),
    Case("alpaca_not_a_list", "alpaca", _write("ae_object.json", '{"instruction": "q"}'),
         ("error", "ae_object.json: expected a JSON array of prompt objects, got dict")),
    Case("alpaca_item_without_instruction", "alpaca", _write("ae_item.json", json.dumps(
        [{"instruction": "q"}, {"output": "o"}])),
         ("error", "ae_item.json: item 2: missing required field 'instruction'")),
    Case("alpaca_invalid_utf8", "alpaca", _write("ae_utf8.json", b'[{"instruction": "\xff"}]'),
         ("error", "ae_utf8.json: line 1: invalid UTF-8 (byte 0xff")),
    Case("alpaca_missing", "alpaca", lambda t: "ae_absent.json",
         ("error", "ae_absent.json: AlpacaEval file does not exist")),
    Case("alpaca_explicitly_off", "config", lambda t: {"alpaca_eval_file": None},
         ("ok", _check_decontam_off), units=1),
    Case("alpaca_empty_path_is_off", "config", lambda t: {"alpaca_eval_file": ""},
         ("ok", _check_decontam_off), units=1),
    # --- Evaluation prompt files (load_eval_prompts).
    Case("eval_not_a_list", "eval", _write("ev_obj.json", '{"a": 1}'),
         ("error", "ev_obj.json: expected a JSON array")),
    Case("eval_item_not_object", "eval", _write("ev_item.json", '["q"]'),
         ("error", "ev_item.json: item 1: expected a JSON object, got str")),
    Case("eval_instruction_int", "eval", _write("ev_int.json", '[{"instruction": 5}]'),
         ("error", "ev_int.json: item 1: field 'instruction' must be str, got int")),
    Case("eval_instruction_blank", "eval", _write("ev_blank.jsonl", _jl({"prompt": " \n"})),
         ("error", "ev_blank.jsonl: line 1: the prompt is empty")),
    Case("eval_turns_empty", "eval", _write("ev_turns.jsonl", _jl({"turns": []})),
         ("error", "ev_turns.jsonl: line 1: field 'turns' must be a non-empty list")),
    Case("eval_surrogate", "eval", _write("ev_sur.json", '[{"instruction": "a \\ud800"}]'),
         ("error", "ev_sur.json: item 1: the prompt holds a lone UTF-16 surrogate")),
    Case("eval_bad_json_line", "eval", _write("ev_bad.jsonl", _jl({"prompt": "q"}) + "{oops\n"),
         ("error", "ev_bad.jsonl: line 2: malformed JSON")),
    Case("eval_bad_json_array", "eval", _write("ev_bad_array.json", '[\n{"instruction": "q"},\n'),
         ("error", "ev_bad_array.json: line 3: malformed JSON")),
    Case("eval_empty_file", "eval", _write("ev_empty.jsonl", b""),
         ("error", "ev_empty.jsonl: contains no prompts")),
    Case("eval_directory", "eval", lambda t: (t / "ev_dir.json").mkdir() or "ev_dir.json",
         ("error", "ev_dir.json: input file is a directory")),
    Case("eval_mixed_formats", "eval", _write("eval_mixed.jsonl", _jl(
        {"id": "k", "prompt": "koala q"}, {"question_id": 1, "turns": ["vicuna q", "second"]},
        {"instruction": "task", "instances": [{"input": "its input", "output": "o"}]})),
         ("ok", _check_eval)),
]

_FIELDS = {"trees": "oasst_tree_files", "flat": "oasst_flat_files", "lima": "lima_files",
           "self_instruct": "self_instruct_files"}


def _run(case: Case, tmp: pathlib.Path) -> Any:
  made = case.make(tmp)
  if case.fmt == "eval":
    return load_eval_prompts(tmp / made)
  (tmp / AE_NAME).write_text(json.dumps([{"instruction": "An unrelated evaluation prompt"}]))
  (tmp / "good_lima.jsonl").write_text(_jl(_lima("ok", q="a good question")))
  kw: dict[str, Any] = {"oasst_tree_files": (), "lima_files": (), "alpaca_eval_file": AE_NAME}
  if case.fmt == "alpaca":
    kw.update(lima_files=("good_lima.jsonl",), alpaca_eval_file=made)
  elif case.fmt == "config":
    kw.update({"lima_files": ("good_lima.jsonl",), **made})
  else:
    kw[_FIELDS[case.fmt]] = (made,)
  return seed.build_seed(seed.SeedConfig(**kw), data_root=tmp)


def _on_alarm(signum, frame):
  raise TimeoutError(f"case took over {TIMEOUT_S} s")


def test_corpus_is_large_and_covers_every_format():
  assert len(CASES) >= 25 and len({c.name for c in CASES}) == len(CASES)
  assert {c.fmt for c in CASES} >= {"trees", "flat", "lima", "self_instruct", "alpaca", "eval"}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input_case(case: Case, tmp_path: pathlib.Path):
  outcome, arg = case.expect
  old = signal.signal(signal.SIGALRM, _on_alarm)
  signal.alarm(TIMEOUT_S)
  try:
    try:
      result = _run(case, tmp_path)
    except InputError as e:
      assert outcome == "error", f"unexpected InputError: {e}"
      assert arg in str(e), f"{arg!r} not in {str(e)!r}"
      assert str(tmp_path) in str(e)  # The message names the file by its full path.
      return
    except Exception as e:  # noqa: BLE001 - the point: nothing but InputError may escape.
      pytest.fail(f"raw {type(e).__name__} escaped: {e}")
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)
  assert outcome != "error", f"expected an error containing {arg!r}, got {result!r}"
  out = tmp_path / "out" / "records.jsonl"
  if case.fmt == "eval":
    prompts = result
    if outcome == "ok":
      arg(prompts, tmp_path)
    assert jsonl.write_jsonl(prompts, out) == len(prompts)
    assert jsonl.read_jsonl(out) == prompts
    return
  pairs, stats = result
  assert len({p["id"] for p in pairs}) == len(pairs)
  for s in stats["sources"]:
    assert stats["kept"][s] + sum(stats["dropped"][s].values()) == stats["seen"][s]
  assert stats["total_seen"] == case.units  # Every unit is either output or counted.
  if outcome == "skip":
    assert sum(d.get(arg, 0) for d in stats["dropped"].values()) >= 1, stats["dropped"]
  else:
    assert arg(pairs, stats, tmp_path) is not False
  json.dumps(stats)
  assert jsonl.write_jsonl(pairs, out) == len(pairs)
  assert jsonl.read_jsonl(out) == pairs
  assert not out.with_name(out.name + ".tmp").exists()


# ------------------------------------------------------------------------------------------
# Decontamination: near-duplicates of an AlpacaEval prompt are caught.

# A real AlpacaEval 1.0 prompt (helpful_base), and one with hyphens for the dash variant.
_P = ("Hi, my sister and her girlfriends want me to play kickball with them. Can you explain how "
      "the game is played, so they don't take advantage of me?")
_P_DASH = "What is a good day-to-day routine for a well-balanced life?"


def _variants() -> list[str]:
  mid = _P.index("kickball") + 4
  zw = [_P[:mid] + c + _P[mid:] for c in ("\u200b", "\u200c", "\u200d", "\u2060", "\u00ad")]
  return [
      _P[:-1],                                   # Final "?" dropped.
      _P[:-1] + ".",                             # "?" -> ".".
      _P + ".",                                  # "." added.
      _P.replace("'", "\u2019"),                 # Curly apostrophe.
      "\u201c" + _P + "\u201d",                  # Curly double quotes around it.
      '"' + _P + '"',                            # ASCII quotes around it.
      *zw,                                       # Zero-width / format characters, soft hyphen.
      "\ufeff" + _P,                             # BOM in front.
      "  " + _P.upper().replace(" ", "  ") + "\n",  # Case and whitespace.
      _P_DASH.replace("-", "\u2013"),            # En dashes.
  ]


def test_decontamination_catches_all_13_variants_and_keeps_a_different_instruction(tmp_path):
  variants = _variants()
  assert len(variants) >= 13 and len(set(variants)) == len(variants)
  if ALPACA_EVAL.exists():  # The real file holds _P; _P_DASH is added beside it.
    real = json.loads(ALPACA_EVAL.read_text(encoding="utf-8"))
    assert _P in {d["instruction"] for d in real}
    items = real + [{"instruction": _P_DASH, "dataset": "t"}]
  else:
    items = [{"instruction": _P}, {"instruction": _P_DASH}]
  (tmp_path / "ae.json").write_text(json.dumps(items))
  different = _P.replace("sister", "brother")
  rows = [_lima(f"v{i}", q=v) for i, v in enumerate(variants)] + [_lima("diff", q=different)]
  (tmp_path / "l.jsonl").write_text(_jl(*rows))
  cfg = seed.SeedConfig(oasst_tree_files=(), lima_files=("l.jsonl",), alpaca_eval_file="ae.json")
  pairs, stats = seed.build_seed(cfg, tmp_path)
  assert [p["instruction"] for p in pairs] == [different]
  assert stats["decontaminated"] == len(variants)
  assert stats["dropped"]["lima:l"] == {"alpaca_eval_overlap": len(variants)}
  assert stats["decontamination"] == "on"
  assert stats["decontamination_rule"] == seed.DECONTAMINATION_RULE != ""


def test_normalize_instruction_rule():
  n = seed.normalize_instruction
  assert n("\u201cDon\u2019t \u2014 stop!\u201d") == "don't - stop"
  assert n("'Quoted' and \"double\"?!.") == "'quoted' and \"double\""
  assert n("a\u200b\u200c\u200d\u2060\ufeff\u00adb \u200e c") == "ab c"
  assert n("?!") == "" and n("What?") == n("what") != n("what not")
  assert n('"\'nested\'"') == "nested"


def test_seed_config_rejects_wrong_types_as_input_error():
  for kw in ({"lima_files": None}, {"lima_files": (3,)}, {"alpaca_eval_file": 5},
             {"max_examples": "10"}, {"max_examples": True}, {"min_chars": -1},
             {"dedup": "yes"}):
    with pytest.raises(InputError):
      seed.SeedConfig(**kw)


# ------------------------------------------------------------------------------------------
# Evaluation prompts on the real files.

_EVAL_FILES = {"alpaca_eval_805_ref_text_davinci_003.json": 805, "koala_test_set_180.jsonl": 180,
               "vicuna_bench_questions_80.jsonl": 80, "mt_bench_questions_80.jsonl": 80,
               "self_instruct_user_oriented_252.jsonl": 252}


@pytest.mark.skipif(not ALPACA_EVAL.exists(), reason="data root not available")
def test_load_eval_prompts_real_files():
  root = ALPACA_EVAL.parent
  alpaca = load_eval_prompts(ALPACA_EVAL)
  assert alpaca[0] == {"instruction": "What are the names of some famous actors that started "
                                      "their careers on Broadway?", "dataset": "helpful_base"}
  keys = {seed.normalize_instruction(p["instruction"]) for p in alpaca}
  for name, count in _EVAL_FILES.items():
    prompts = load_eval_prompts(root / name)
    assert len(prompts) == count
    assert all(isinstance(p["instruction"], str) and p["instruction"].strip() for p in prompts)
  # AlpacaEval's selfinstruct prompts are the user-oriented tasks with their input appended.
  si = load_eval_prompts(root / "self_instruct_user_oriented_252.jsonl")
  assert all(seed.normalize_instruction(p["instruction"]) in keys for p in si)
  assert load_eval_prompts(ALPACA_EVAL, limit=3) == alpaca[:3]
  assert load_eval_prompts(ALPACA_EVAL, limit=0) == []
  with pytest.raises(ValueError):
    load_eval_prompts(ALPACA_EVAL, limit=-1)
  with pytest.raises(InputError, match=r"oasst1_en_validation_2022msgs\.jsonl: line 1: missing"):
    load_eval_prompts(root / "oasst1_en_validation_2022msgs.jsonl")
