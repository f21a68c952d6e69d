"""Tests for humpback_jax.data.seed on the real seed/eval files, with brute-force cross-checks."""

from __future__ import annotations

import collections
import json
import pathlib
import re
import statistics
import unicodedata

import pytest

from humpback_jax import paths
from humpback_jax.data import seed
from humpback_jax.errors import InputError

DATA_ROOT = paths.default_data_root()
TREES_100 = "seed/oasst_en_100_trees.jsonl"
TREES_551 = "seed/oasst2_filtered_551_trees.jsonl"
FLAT_VAL = "eval/oasst1_en_validation_2022msgs.jsonl"
LIMA = "seed/lima_train_1030.jsonl"
SELF_INSTRUCT = "seed/self_instruct_seed_tasks_175.jsonl"
ALPACA_EVAL = "eval/alpaca_eval_805_ref_text_davinci_003.json"

needs_data = pytest.mark.skipif(
    not (DATA_ROOT / TREES_100).exists(), reason=f"data root {DATA_ROOT} not available")


def _lines(rel: str) -> list[dict]:
  with open(DATA_ROOT / rel, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _norm(s: str) -> str:
  """Independent re-implementation of the documented normalization."""
  return " ".join(unicodedata.normalize("NFKC", s).casefold().split())


def _alpaca() -> set[str]:
  with open(DATA_ROOT / ALPACA_EVAL, encoding="utf-8") as f:
    return {_norm(d["instruction"]) for d in json.load(f)}


def _clean(m: dict) -> bool:
  return (m["lang"] == "en" and not m.get("deleted") and not m.get("synthetic")
          and m.get("review_result") is not False and bool(m["text"].strip()))


def _brute_tree_pairs(rel: str, *, clean: bool = True,
                      unique: bool = True) -> list[tuple[str, str, str]]:
  """(root id, instruction, response) for English root + rank-0 assistant reply, by brute force;
  with ``unique``, a root id already kept is skipped (the reader counts it as duplicate_id)."""
  out = []
  for tree in _lines(rel):
    p = tree["prompt"]
    if p["role"] != "prompter" or p["lang"] != "en":
      continue
    r0 = [r for r in p.get("replies", []) if r["role"] == "assistant" and r.get("rank") == 0]
    if not r0 or r0[0]["lang"] != "en":
      continue
    if clean and not (_clean(p) and _clean(r0[0])):
      continue
    if unique and p["message_id"] in {i for i, _, _ in out}:
      continue
    out.append((p["message_id"], p["text"].strip(), r0[0]["text"].strip()))
  return out


def _walk(msg: dict):
  yield msg
  for r in msg.get("replies", []):
    yield from _walk(r)


# ------------------------------------------------------------------------------------------
# Open Assistant trees.


@needs_data
def test_trees_100_counts_match_readme_and_brute_force():
  # README: 99 first-turn rank-0 pairs (before dropping synthetic ones and decontamination).
  assert len(_brute_tree_pairs(TREES_100, clean=False)) == 99
  expected = _brute_tree_pairs(TREES_100)
  assert len(expected) == 94  # 5 of the 99 are synthetic (model-written) trees.
  records, drops = seed.read_oasst_trees(DATA_ROOT / TREES_100)
  got = [(r["id"].rsplit("/", 1)[1], r["instruction"], r["response"]) for r in records]
  assert got == expected
  assert drops == {"prompt_synthetic": 5, "no_rank0_reply": 1}
  assert len(got) + sum(drops.values()) == 100


@needs_data
def test_trees_100_synthetic_messages_never_appear():
  synthetic_texts, synthetic_ids, human_texts = set(), set(), set()
  for tree in _lines(TREES_100):
    for m in _walk(tree["prompt"]):
      (synthetic_texts if m["synthetic"] else human_texts).add(m["text"].strip())
      if m["synthetic"]:
        synthetic_ids.add(m["message_id"])
  assert len(synthetic_ids) == 22  # README: 22 synthetic messages.
  assert not synthetic_texts & human_texts  # So a text match below means a synthetic message.
  records, _ = seed.read_oasst_trees(DATA_ROOT / TREES_100)
  for r in records:
    assert r["instruction"] not in synthetic_texts
    assert r["response"] not in synthetic_texts
    assert r["id"].rsplit("/", 1)[1] not in synthetic_ids


@needs_data
def test_trees_551_counts_match_brute_force():
  trees = _lines(TREES_551)
  assert len(trees) == 551
  assert sum(t["prompt"]["lang"] == "en" for t in trees) == 208  # README.
  assert len(_brute_tree_pairs(TREES_551, unique=False)) == 49  # README: "about 49".
  expected = _brute_tree_pairs(TREES_551)
  assert len(expected) == 48  # The file repeats 38 root ids; one repeat is a kept English pair.
  records, drops = seed.read_oasst_trees(DATA_ROOT / TREES_551)
  got = [(r["id"].rsplit("/", 1)[1], r["instruction"], r["response"]) for r in records]
  assert got == expected
  assert len({i for i, _, _ in got}) == len(got)
  assert drops["duplicate_id"] == 1
  assert drops["prompt_not_english"] == 343
  assert len(got) + sum(drops.values()) == 551


@needs_data
def test_alpaca_eval_overlap_counts():
  alpaca = _alpaca()
  assert len(alpaca) == 805
  assert len(seed.load_alpaca_eval_instructions(DATA_ROOT / ALPACA_EVAL)) == 805
  # Independent count of English roots that are AlpacaEval prompts.
  for rel, want in ((TREES_100, 6), (TREES_551, 2)):
    assert sum(_norm(i) in alpaca for _, i, _ in _brute_tree_pairs(rel)) == want
  pairs, stats = seed.build_seed(seed.SeedConfig(), DATA_ROOT)
  assert stats["dropped"]["oasst:oasst_en_100_trees"]["alpaca_eval_overlap"] == 6
  assert stats["dropped"]["oasst:oasst2_filtered_551_trees"]["alpaca_eval_overlap"] == 2
  assert "alpaca_eval_overlap" not in stats["dropped"]["lima:lima_train_1030"]  # README.
  assert not any(_norm(p["instruction"]) in alpaca for p in pairs)


def test_normalize_instruction():
  assert seed.normalize_instruction("  Hello\u00a0 WORLD\n\tﬁne ") == "hello world fine"
  assert seed.normalize_instruction("Straße") == seed.normalize_instruction("STRASSE")


# ------------------------------------------------------------------------------------------
# Open Assistant flat format.


@needs_data
def test_flat_reader_matches_brute_force_root_rank0_pairs():
  msgs = _lines(FLAT_VAL)
  assert len(msgs) == 2022
  children = collections.defaultdict(list)
  for m in msgs:
    if m["parent_id"] is not None:
      children[m["parent_id"]].append(m)
  roots = [m for m in msgs if m["parent_id"] is None]
  assert len(roots) == 188
  expected = []
  for root in roots:
    r0 = [c for c in children[root["message_id"]] if c["role"] == "assistant" and c["rank"] == 0]
    if r0 and _clean(root) and _clean(r0[0]):
      expected.append((root["message_id"], root["text"].strip(), r0[0]["text"].strip()))
  assert len(expected) == 186
  # Messages whose parent is not in the file (the split cut their tree): counted, not ignored.
  ids = {m["message_id"] for m in msgs}
  orphans = [m for m in msgs if m["parent_id"] is not None and m["parent_id"] not in ids]
  assert len(orphans) == 3 and not any(m["parent_id"] in {o["message_id"] for o in orphans}
                                       for m in msgs)
  records, drops = seed.read_oasst_flat(DATA_ROOT / FLAT_VAL)
  got = [(r["id"].rsplit("/", 1)[1], r["instruction"], r["response"]) for r in records]
  assert got == expected
  assert drops == {"no_rank0_reply": 2, "oasst_orphan_messages": 3}
  # All 188 roots are AlpacaEval prompts, so decontamination removes every pair.
  alpaca = _alpaca()
  assert all(_norm(r["text"]) in alpaca for r in roots)
  cfg = seed.SeedConfig(oasst_tree_files=(), oasst_flat_files=(FLAT_VAL,), lima_files=())
  pairs, stats = seed.build_seed(cfg, DATA_ROOT)
  assert pairs == []
  src = "oasst:oasst1_en_validation_2022msgs"
  assert stats["dropped"][src] == {"alpaca_eval_overlap": 186, "no_rank0_reply": 2,
                                   "oasst_orphan_messages": 3}
  assert stats["seen"][src] == 188 + 3
  assert stats["decontaminated"] == 186 and stats["decontamination"] == "on"


def test_flat_reader_rules_on_synthetic_file(tmp_path: pathlib.Path):
  def msg(mid, parent, role, text, **kw):
    base = {"message_id": mid, "parent_id": parent, "role": role, "text": text, "lang": "en",
            "rank": None, "deleted": False, "synthetic": False, "review_result": True}
    return {**base, **kw}

  rows = [
      msg("a1", "r1", "assistant", "answer one", rank=0),  # Child before its root.
      msg("r1", None, "prompter", "question one"),
      msg("a1b", "r1", "assistant", "worse answer", rank=1),
      msg("r2", None, "prompter", "question two"),
      msg("a2", "r2", "assistant", "deleted answer", rank=0, deleted=True),
      msg("r3", None, "prompter", "pregunta", lang="es"),
      msg("r4", None, "prompter", "synthetic q", synthetic=True),
      msg("r5", None, "prompter", "question five"),
      msg("a5", "r5", "assistant", "answer five", rank=0, synthetic=True),
      msg("x", "missing-parent", "assistant", "orphan", rank=0),
  ]
  path = tmp_path / "flat.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  records, drops = seed.read_oasst_flat(path, source="t")
  assert [(r["instruction"], r["response"], r["id"]) for r in records] == [
      ("question one", "answer one", "t/r1")]
  assert drops == {"reply_deleted": 1, "prompt_not_english": 1, "prompt_synthetic": 1,
                   "reply_synthetic": 1, "oasst_orphan_messages": 1}


# ------------------------------------------------------------------------------------------
# LIMA and self-instruct.


@needs_data
def test_lima_keeps_exactly_single_turn():
  convs = _lines(LIMA)
  single = [c["id"] for c in convs if len(c["messages"]) == 2]
  assert len(convs) == 1030 and len(single) == 1000
  records, drops = seed.read_lima(DATA_ROOT / LIMA)
  records = list(records)
  assert [r["id"].rsplit("/", 1)[1] for r in records] == single
  assert drops == {"multi_turn": 30}
  by_id = {c["id"]: c for c in convs}
  for r in records[:50]:
    m = by_id[r["id"].rsplit("/", 1)[1]]["messages"]
    assert (r["instruction"], r["response"]) == (m[0]["content"].strip(), m[1]["content"].strip())


@needs_data
def test_self_instruct_first_instance_with_blank_line():
  tasks = _lines(SELF_INSTRUCT)
  records, drops = seed.read_self_instruct(DATA_ROOT / SELF_INSTRUCT)
  records = list(records)
  assert len(records) == len(tasks) == 175 and not drops
  for t, r in zip(tasks, records):
    inst, inp = t["instruction"].strip(), t["instances"][0]["input"].strip()
    assert r["instruction"] == (f"{inst}\n\n{inp}" if inp else inst)
    assert r["response"] == t["instances"][0]["output"].strip()


# ------------------------------------------------------------------------------------------
# Builder.


@needs_data
def test_build_seed_default_stats_add_up():
  pairs, stats = seed.build_seed(seed.SeedConfig(), DATA_ROOT)
  line_counts = {"oasst:oasst_en_100_trees": 100, "oasst:oasst2_filtered_551_trees": 551,
                 "lima:lima_train_1030": 1030}
  assert stats["sources"] == list(line_counts)
  assert stats["seen"] == line_counts
  for s in stats["sources"]:
    assert stats["kept"][s] + sum(stats["dropped"][s].values()) == stats["seen"][s]
    assert stats["kept"][s] == sum(p["source"] == s for p in pairs)
  assert stats["total"] == len(pairs) == sum(stats["kept"].values())
  assert stats["total_seen"] == stats["total"] + stats["total_dropped"] == 1681
  assert stats["kept"] == {"oasst:oasst_en_100_trees": 88, "oasst:oasst2_filtered_551_trees": 45,
                           "lima:lima_train_1030": 999}
  # One tree occurs in both oasst files, one twice in the 551 file (same root id: duplicate_id);
  # "Who are you?" is in the 551 file and in LIMA.
  assert stats["dropped"]["oasst:oasst2_filtered_551_trees"]["duplicate_instruction"] == 1
  assert stats["dropped"]["oasst:oasst2_filtered_551_trees"]["duplicate_id"] == 1
  assert stats["dropped"]["lima:lima_train_1030"]["duplicate_instruction"] == 1
  # Order: sources in config order, records in file order; ids unique; no duplicates.
  order = [stats["sources"].index(p["source"]) for p in pairs]
  assert order == sorted(order)
  assert len({p["id"] for p in pairs}) == len(pairs)
  assert len({_norm(p["instruction"]) for p in pairs}) == len(pairs)
  # Length stats (characters, population std), recomputed independently.
  ins = [len(p["instruction"]) for p in pairs]
  res = [len(p["response"]) for p in pairs]
  assert stats["lengths"] == {
      "count": len(pairs),
      "instruction_chars_mean": round(statistics.fmean(ins), 1),
      "instruction_chars_std": round(statistics.pstdev(ins), 1),
      "response_chars_mean": round(statistics.fmean(res), 1),
      "response_chars_std": round(statistics.pstdev(res), 1),
  }
  json.dumps(stats)  # Serializable.
  assert seed.build_seed(seed.SeedConfig(), DATA_ROOT) == (pairs, stats)  # Deterministic.


@needs_data
def test_build_seed_max_examples_min_chars_and_dedup_off():
  full, _ = seed.build_seed(seed.SeedConfig(), DATA_ROOT)
  capped, stats = seed.build_seed(seed.SeedConfig(max_examples=100), DATA_ROOT)
  assert capped == full[:100]
  assert sum(d.get("over_max_examples", 0) for d in stats["dropped"].values()) == len(full) - 100
  assert stats["total"] == 100
  for s in stats["sources"]:
    assert stats["kept"][s] + sum(stats["dropped"][s].values()) == stats["seen"][s]
  short, stats = seed.build_seed(seed.SeedConfig(min_chars=20), DATA_ROOT)
  assert all(len(p["instruction"]) >= 20 and len(p["response"]) >= 20 for p in short)
  too_short = sum(d.get("instruction_too_short", 0) + d.get("response_too_short", 0)
                  for d in stats["dropped"].values())
  assert too_short > 0 and len(short) + too_short >= len(full)
  nodedup, stats = seed.build_seed(seed.SeedConfig(dedup=False), DATA_ROOT)
  assert len(nodedup) == len(full) + 2  # The repeated root id stays dropped (ids stay unique).
  assert len({p["id"] for p in nodedup}) == len(nodedup)
  with pytest.raises(ValueError):
    seed.SeedConfig(max_examples=-1)


def test_build_seed_with_relative_paths_under_custom_root(tmp_path: pathlib.Path):
  (tmp_path / "s").mkdir()
  (tmp_path / "s" / "l.jsonl").write_text(
      json.dumps({"id": "a", "messages": [{"role": "user", "content": "Say hi"},
                                          {"role": "assistant", "content": "hi"}]}) + "\n"
      + json.dumps({"id": "b", "messages": [{"role": "user", "content": "  say   HI "},
                                            {"role": "assistant", "content": "hello"}]}) + "\n")
  (tmp_path / "ae.json").write_text(json.dumps([{"instruction": "Unrelated"}]))
  cfg = seed.SeedConfig(oasst_tree_files=(), lima_files=("s/l.jsonl",), alpaca_eval_file="ae.json")
  pairs, stats = seed.build_seed(cfg, tmp_path)
  assert [p["id"] for p in pairs] == ["lima:l/a"]
  assert stats["dropped"]["lima:l"] == {"duplicate_instruction": 1}
  assert stats["lengths"] == {"count": 1, "instruction_chars_mean": 6.0,
                              "instruction_chars_std": 0.0, "response_chars_mean": 2.0,
                              "response_chars_std": 0.0}


def test_length_stats_empty():
  assert seed.length_stats([]) == {"count": 0, "instruction_chars_mean": 0.0,
                                   "instruction_chars_std": 0.0, "response_chars_mean": 0.0,
                                   "response_chars_std": 0.0}


# ------------------------------------------------------------------------------------------
# Bad input.


_GOOD_TREE = {"message_tree_id": "t", "prompt": {
    "message_id": "p", "role": "prompter", "text": "q", "lang": "en", "synthetic": False,
    "replies": [{"message_id": "a", "role": "assistant", "text": "r", "lang": "en", "rank": 0,
                 "synthetic": False, "replies": []}]}}


@pytest.mark.parametrize("reader,good", [
    (seed.read_oasst_trees, _GOOD_TREE),
    (seed.read_oasst_flat, {"message_id": "p", "parent_id": None, "role": "prompter",
                            "text": "q", "lang": "en"}),
    (seed.read_lima, {"id": "x", "messages": [{"role": "user", "content": "q"},
                                              {"role": "assistant", "content": "r"}]}),
    (seed.read_self_instruct, {"id": "x", "instruction": "q",
                               "instances": [{"input": "", "output": "r"}]}),
])
def test_malformed_json_line_raises_with_file_and_line(tmp_path, reader, good):
  path = tmp_path / "broken_input.jsonl"
  path.write_text(json.dumps(good) + "\n\n" + '{"prompt": {"text": "unterminated\n')
  records, _ = reader(path)
  with pytest.raises(seed.SeedFormatError, match=r"broken_input\.jsonl.*line 3.*malformed JSON"):
    list(records)


@pytest.mark.parametrize("reader,bad,field", [
    (seed.read_oasst_trees, {"message_tree_id": "t"}, "prompt"),
    (seed.read_oasst_trees, {"prompt": {k: v for k, v in _GOOD_TREE["prompt"].items()
                                        if k != "text"}}, "text"),
    (seed.read_oasst_trees, {"prompt": {**_GOOD_TREE["prompt"], "replies": [
        {"message_id": "a", "role": "assistant", "text": "r", "rank": 0}]}}, "lang"),
    (seed.read_oasst_flat, {"message_id": "p", "role": "prompter", "text": "q", "lang": "en"},
     "parent_id"),
    (seed.read_lima, {"id": "x", "messages": [{"role": "user"}]}, "content"),
    (seed.read_self_instruct, {"id": "x", "instances": []}, "instruction"),
])
def test_missing_field_raises_with_file_and_line(tmp_path, reader, bad, field):
  path = tmp_path / "missing_field.jsonl"
  good = _GOOD_TREE if reader is seed.read_oasst_trees else None
  lines = [json.dumps(good)] if good else []
  lines.append(json.dumps(bad))
  path.write_text("\n".join(lines) + "\n")
  records, _ = reader(path)
  lineno = len(lines)
  with pytest.raises(seed.SeedFormatError,
                     match=rf"missing_field\.jsonl: line {lineno}: .*{re.escape(repr(field))}"):
    list(records)


def test_wrong_type_is_format_error_but_rule_failure_is_a_counted_drop(tmp_path):
  path = tmp_path / "t.jsonl"
  path.write_text(json.dumps({"prompt": {**_GOOD_TREE["prompt"], "text": 3}}) + "\n")
  with pytest.raises(seed.SeedFormatError, match=r"t\.jsonl: line 1: prompt: field 'text'"):
    list(seed.read_oasst_trees(path)[0])
  deleted_reply = {"prompt": {**_GOOD_TREE["prompt"], "replies": [
      {**_GOOD_TREE["prompt"]["replies"][0], "deleted": True}]}}
  path.write_text(json.dumps(_GOOD_TREE) + "\n" + json.dumps(deleted_reply) + "\n")
  records, drops = seed.read_oasst_trees(path)
  assert len(list(records)) == 1 and drops == {"reply_deleted": 1}


def test_missing_file_raises_input_error_naming_it(tmp_path):
  with pytest.raises(InputError, match=r"nope\.jsonl: input file does not exist"):
    list(seed.read_lima(tmp_path / "nope.jsonl")[0])
