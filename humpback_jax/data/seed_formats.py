"""Per-format readers of human-written seed pairs ([HB] §3.1).

* Open Assistant **tree** files (one tree per line; both the March-2023 manual-eval export and the
  full Hugging Face oasst1/oasst2 tree export): :func:`read_oasst_trees`.
* Open Assistant **flat** message files (the Hugging Face ``OpenAssistant/oasst1`` export, one
  message per line): :func:`read_oasst_flat`.
* LIMA (single-turn conversations only): :func:`read_lima`.
* Self-instruct seed tasks: :func:`read_self_instruct`.

Every reader returns ``(records, drops)``: ``records`` is a lazy iterator of
``{"instruction", "response", "source", "id"}`` dicts in file order and ``drops`` is a
:class:`collections.Counter` of per-reason drop counts that fills in while ``records`` is
consumed. One *unit* (a tree, a root message, a conversation, a task; for flat files also each
message not attached to any root) gives at most one pair, and each unit that gives none is counted
under exactly one reason, so after full iteration ``yielded + sum(drops.values())`` equals the
number of units in the file.

Bad input raises :class:`~humpback_jax.data.seed_io.SeedFormatError` naming the file and 1-based
line: a path that is not a readable regular file, invalid UTF-8, corrupt gzip, a malformed or
too-deeply nested JSON line, an empty file, a record missing a required field or with a field of
the wrong type, or (flat files) a ``message_id`` that occurs twice (both lines named). A valid
record that fails a selection rule is a counted drop, never an error. Also counted drops (our
choice; one bad unit should not stop a large build): a unit passing the rules whose id was already
yielded from the same file (``duplicate_id``, first one wins; the real
``oasst2_filtered_551_trees.jsonl`` repeats 38 message ids), and a pair whose instruction,
response or id holds a lone UTF-16 surrogate (``invalid_unicode``: valid JSON, from a ``\ud800``
escape, but it cannot be written as UTF-8).

All lengths are in characters (Unicode code points, ``len(str)``).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator
from typing import Any

from humpback_jax.data.seed_io import (PathLike, SeedFormatError, default_source, get_field,
                                       has_lone_surrogate, iter_json_lines)

# [HB] §3.1: the seed is English Open Assistant data.
OASST_LANG = "en"
# [HB] §3.1: "the reply with rank 0" (the highest-ranked assistant reply to the root prompt).
OASST_RANK = 0

# Drop reasons (keys of the per-reason counters).
DROP_ROOT_NOT_PROMPTER = "root_not_prompter"
DROP_PROMPT_NOT_ENGLISH = "prompt_not_english"
DROP_PROMPT_DELETED = "prompt_deleted"
DROP_PROMPT_SYNTHETIC = "prompt_synthetic"
DROP_PROMPT_REVIEW_FAILED = "prompt_review_failed"
DROP_NO_RANK0_REPLY = "no_rank0_reply"
DROP_REPLY_NOT_ENGLISH = "reply_not_english"
DROP_REPLY_DELETED = "reply_deleted"
DROP_REPLY_SYNTHETIC = "reply_synthetic"
DROP_REPLY_REVIEW_FAILED = "reply_review_failed"
DROP_EMPTY_INSTRUCTION = "empty_instruction"
DROP_EMPTY_RESPONSE = "empty_response"
DROP_MULTI_TURN = "multi_turn"
DROP_BAD_ROLES = "bad_roles"
DROP_NO_INSTANCES = "no_instances"
DROP_INVALID_UNICODE = "invalid_unicode"
DROP_DUPLICATE_ID = "duplicate_id"
DROP_OASST_ORPHAN = "oasst_orphan_messages"
DROP_OASST_CYCLE = "oasst_cycle_messages"

def _record(drops: collections.Counter[str], yielded: set[str], instruction: str, response: str,
            source: str, native_id: str) -> dict[str, str] | None:
  """The output record of a unit that passed the selection rules, or ``None``, counted as
  ``duplicate_id`` if a record with this id was already yielded from the file (first one wins),
  else as ``invalid_unicode`` if a field holds a lone surrogate."""
  rec = {"instruction": instruction, "response": response, "source": source,
         "id": f"{source}/{native_id}"}
  if native_id in yielded:
    drops[DROP_DUPLICATE_ID] += 1
    return None
  if has_lone_surrogate(instruction, response, rec["id"]):
    drops[DROP_INVALID_UNICODE] += 1
    return None
  yielded.add(native_id)
  return rec


# --------------------------------------------------------------------------------------------
# Open Assistant.


def _oasst_message(msg: Any, path: PathLike, lineno: int, where: str) -> dict[str, Any]:
  """Validates one Open Assistant message and returns its normalized fields.

  Required: ``message_id``, ``role``, ``text`` (strings), ``lang`` (string; null allowed and
  treated as unknown). Optional: ``rank`` (int or float, or null), ``deleted``, ``synthetic``
  (bool, default false), ``review_result`` (bool or null, default null = not reviewed yet).

  Raises:
    SeedFormatError: a required field is missing or a field has the wrong type.
  """
  if not isinstance(msg, dict):
    raise SeedFormatError(
        f"{path}: line {lineno}: {where}expected a JSON object, got {type(msg).__name__}")
  return {
      "message_id": get_field(msg, "message_id", str, path, lineno, where),
      "role": get_field(msg, "role", str, path, lineno, where),
      "text": get_field(msg, "text", str, path, lineno, where),
      "lang": get_field(msg, "lang", str, path, lineno, where, nullable=True),
      "rank": get_field(msg, "rank", (int, float), path, lineno, where, required=False),
      "deleted": bool(get_field(msg, "deleted", bool, path, lineno, where, required=False,
                                default=False)),
      "synthetic": bool(get_field(msg, "synthetic", bool, path, lineno, where, required=False,
                                  default=False)),
      "review_result": get_field(msg, "review_result", bool, path, lineno, where,
                                 required=False),
  }


def _oasst_first_turn(prompt: dict[str, Any],
                      replies: Iterable[dict[str, Any]]) -> tuple[dict[str, Any] | None, str]:
  """Applies the [HB] §3.1 first-turn rule to a validated root and its direct replies.

  Returns:
    ``(reply, "")`` for the chosen rank-0 reply, or ``(None, reason)``. Checks run in a fixed
    order and the first failing one names the reason: root role, prompt language, deleted,
    synthetic, review, empty text; then presence of an assistant reply with rank 0 (the first such
    reply in file order); then that reply's language, deleted, synthetic, review, empty text.
  """
  if prompt["role"] != "prompter":
    return None, DROP_ROOT_NOT_PROMPTER
  if prompt["lang"] != OASST_LANG:
    return None, DROP_PROMPT_NOT_ENGLISH
  if prompt["deleted"]:
    return None, DROP_PROMPT_DELETED
  if prompt["synthetic"]:
    return None, DROP_PROMPT_SYNTHETIC
  if prompt["review_result"] is False:
    return None, DROP_PROMPT_REVIEW_FAILED
  if not prompt["text"].strip():
    return None, DROP_EMPTY_INSTRUCTION
  reply = next((r for r in replies
                if r["role"] == "assistant" and r["rank"] is not None and r["rank"] == OASST_RANK),
               None)
  if reply is None:
    return None, DROP_NO_RANK0_REPLY
  if reply["lang"] != OASST_LANG:
    return None, DROP_REPLY_NOT_ENGLISH
  if reply["deleted"]:
    return None, DROP_REPLY_DELETED
  if reply["synthetic"]:
    return None, DROP_REPLY_SYNTHETIC
  if reply["review_result"] is False:
    return None, DROP_REPLY_REVIEW_FAILED
  if not reply["text"].strip():
    return None, DROP_EMPTY_RESPONSE
  return reply, ""


def read_oasst_trees(path: PathLike, *, source: str | None = None
                     ) -> tuple[Iterator[dict[str, str]], collections.Counter[str]]:
  """Reads first-turn pairs from an Open Assistant tree file (one tree per line).

  Accepts both the March-2023 export (``{message_tree_id, tree_state, prompt: {..., replies}}``,
  no ``labels``) and the full Hugging Face oasst1/oasst2 tree export (with ``labels``,
  ``deleted``, ``review_result``). Rule, [HB] §3.1: root prompt + its assistant reply with
  ``rank == 0``, both ``lang == "en"``; drop if either side is deleted, synthetic, has
  ``review_result`` false, or has empty text. Deeper turns are ignored (and not validated).
  Texts are stripped of leading/trailing whitespace.

  Args:
    path: the JSONL file (may be gzip-compressed).
    source: the ``source`` tag of the records; default ``"oasst:<file stem>"``.

  Returns:
    ``(records, drops)``: a lazy iterator of one pair per kept tree, in file order, and the
    per-reason drop counter (one count per dropped tree), complete once ``records`` is exhausted.

  Raises (while iterating):
    SeedFormatError: the file problems listed in the module docstring; missing ``prompt``; a root
      or direct reply missing ``message_id``, ``role``, ``text`` or ``lang``. A repeated root
      ``message_id`` is a counted ``duplicate_id`` drop, not an error.
  """
  source = source or default_source("oasst", path)
  drops: collections.Counter[str] = collections.Counter()

  def gen() -> Iterator[dict[str, str]]:
    yielded: set[str] = set()
    for lineno, tree in iter_json_lines(path):
      raw_prompt = get_field(tree, "prompt", dict, path, lineno)
      prompt = _oasst_message(raw_prompt, path, lineno, "prompt: ")
      raw_replies = get_field(raw_prompt, "replies", list, path, lineno, "prompt: ",
                              required=False, default=[])
      replies = [_oasst_message(r, path, lineno, f"prompt.replies[{i}]: ")
                 for i, r in enumerate(raw_replies)]
      reply, reason = _oasst_first_turn(prompt, replies)
      if reply is None:
        drops[reason] += 1
        continue
      rec = _record(drops, yielded, prompt["text"].strip(), reply["text"].strip(), source,
                    prompt["message_id"])
      if rec is not None:
        yield rec

  return gen(), drops


def _detached_messages(parent_of: dict[str, str | None]) -> tuple[int, int]:
  """Counts messages not connected to a root: ``(orphans, in_cycles)``.

  A message's chain of ``parent_id`` links either reaches a root (``parent_id`` null: attached),
  reaches an id absent from the file (orphan), or loops (cycle; a message whose chain runs into a
  loop counts as a cycle message too). Iterative and memoized: O(messages), never recursive, so a
  cycle or a very long chain cannot hang or overflow the stack.
  """
  status: dict[str, str] = {}
  for start in parent_of:
    chain: list[str] = []
    on_chain: set[str] = set()
    node: str | None = start
    while True:
      if node in status:
        result = status[node]
        break
      if node not in parent_of:
        result = "orphan"
        break
      if node in on_chain:
        result = "cycle"
        break
      chain.append(node)
      on_chain.add(node)
      node = parent_of[node]
      if node is None:
        result = "attached"
        break
    for n in chain:
      status[n] = result
  counts = collections.Counter(status.values())
  return counts["orphan"], counts["cycle"]


def read_oasst_flat(path: PathLike, *, source: str | None = None
                    ) -> tuple[Iterator[dict[str, str]], collections.Counter[str]]:
  """Reads first-turn pairs from an Open Assistant flat message file (HF ``oasst1`` export).

  One message per line (``message_id, parent_id, role, text, lang, rank, deleted, synthetic,
  review_result, labels, ...``). Roots are the messages with ``parent_id`` null; each root's direct
  children are its replies. The same [HB] §3.1 rule as :func:`read_oasst_trees` applies. The whole
  file is read (and validated) before the first record is yielded, since children may come in
  any order; roots are yielded in file order.

  Units are the roots plus every message not connected to a root, which is counted (never
  silently ignored) under ``oasst_orphan_messages`` (its ``parent_id`` chain ends at an id absent
  from the file) or ``oasst_cycle_messages`` (the chain loops, e.g. a message that is its own
  parent); see :func:`_detached_messages`.

  Args:
    path: the JSONL file (may be gzip-compressed).
    source: the ``source`` tag of the records; default ``"oasst:<file stem>"``.

  Returns:
    ``(records, drops)`` as in :func:`read_oasst_trees`.

  Raises (while iterating):
    SeedFormatError: the file problems listed in the module docstring; a message missing
      ``message_id``, ``parent_id`` (the key; null is allowed), ``role``, ``text`` or ``lang``; a
      duplicate ``message_id`` (both lines named).
  """
  source = source or default_source("oasst", path)
  drops: collections.Counter[str] = collections.Counter()

  def gen() -> Iterator[dict[str, str]]:
    roots: list[dict[str, Any]] = []
    children: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    parent_of: dict[str, str | None] = {}
    seen_ids: dict[str, int] = {}
    for lineno, raw in iter_json_lines(path):
      msg = _oasst_message(raw, path, lineno, "")
      if "parent_id" not in raw:
        raise SeedFormatError(f"{path}: line {lineno}: missing required field 'parent_id'")
      parent_id = get_field(raw, "parent_id", str, path, lineno, nullable=True)
      if msg["message_id"] in seen_ids:
        raise SeedFormatError(
            f"{path}: line {lineno}: duplicate message_id {msg['message_id']!r} "
            f"(first on line {seen_ids[msg['message_id']]})")
      seen_ids[msg["message_id"]] = lineno
      parent_of[msg["message_id"]] = parent_id
      if parent_id is None:
        roots.append(msg)
      else:
        children[parent_id].append(msg)
    orphans, in_cycles = _detached_messages(parent_of)
    if orphans:
      drops[DROP_OASST_ORPHAN] += orphans
    if in_cycles:
      drops[DROP_OASST_CYCLE] += in_cycles
    for prompt in roots:
      reply, reason = _oasst_first_turn(prompt, children.get(prompt["message_id"], ()))
      if reply is None:
        drops[reason] += 1
        continue
      rec = _record(drops, set(), prompt["text"].strip(), reply["text"].strip(), source,
                    prompt["message_id"])
      if rec is not None:
        yield rec

  return gen(), drops


# --------------------------------------------------------------------------------------------
# LIMA and self-instruct.


def read_lima(path: PathLike, *, source: str | None = None
              ) -> tuple[Iterator[dict[str, str]], collections.Counter[str]]:
  """Reads single-turn pairs from a LIMA file (``{dataset, id, messages: [{role, content}]}``).

  Kept: exactly two messages, roles ``user`` then ``assistant``, both non-empty after stripping.
  Conversations with more messages are counted as ``multi_turn``; two or fewer messages with other
  roles as ``bad_roles``. Texts are stripped.

  Args:
    path: the JSONL file (may be gzip-compressed).
    source: the ``source`` tag; default ``"lima:<file stem>"``.

  Returns:
    ``(records, drops)`` as in :func:`read_oasst_trees`; one unit per conversation. The record id
    is the file's ``id`` (or ``line<N>`` when absent).

  Raises (while iterating):
    SeedFormatError: the file problems listed in the module docstring; missing ``messages`` list;
      a message that is not an object with string ``role`` and ``content``; an ``id`` that is not
      a string or integer. A repeated id is a counted ``duplicate_id`` drop.
  """
  source = source or default_source("lima", path)
  drops: collections.Counter[str] = collections.Counter()

  def gen() -> Iterator[dict[str, str]]:
    yielded: set[str] = set()
    for lineno, conv in iter_json_lines(path):
      messages = get_field(conv, "messages", list, path, lineno)
      turns = []
      for i, m in enumerate(messages):
        where = f"messages[{i}]: "
        if not isinstance(m, dict):
          raise SeedFormatError(
              f"{path}: line {lineno}: {where}expected a JSON object, got {type(m).__name__}")
        turns.append((get_field(m, "role", str, path, lineno, where),
                      get_field(m, "content", str, path, lineno, where)))
      native_id = str(get_field(conv, "id", (str, int), path, lineno, required=False,
                                default=f"line{lineno}"))
      if len(turns) > 2:
        drops[DROP_MULTI_TURN] += 1
        continue
      if [r for r, _ in turns] != ["user", "assistant"]:
        drops[DROP_BAD_ROLES] += 1
        continue
      instruction, response = turns[0][1].strip(), turns[1][1].strip()
      if not instruction:
        drops[DROP_EMPTY_INSTRUCTION] += 1
        continue
      if not response:
        drops[DROP_EMPTY_RESPONSE] += 1
        continue
      rec = _record(drops, yielded, instruction, response, source, native_id)
      if rec is not None:
        yield rec

  return gen(), drops


def read_self_instruct(path: PathLike, *, source: str | None = None
                       ) -> tuple[Iterator[dict[str, str]], collections.Counter[str]]:
  """Reads the self-instruct seed tasks (``{id, name, instruction, instances: [{input, output}]}``).

  Instruction = the task instruction, plus ``"\\n\\n"`` and the first instance's input when that
  input is non-empty; response = the first instance's output. Tasks without instances count as
  ``no_instances``. Texts are stripped.

  Args:
    path: the JSONL file (may be gzip-compressed).
    source: the ``source`` tag; default ``"self_instruct:<file stem>"``.

  Returns:
    ``(records, drops)`` as in :func:`read_oasst_trees`; one unit per task.

  Raises (while iterating):
    SeedFormatError: the file problems listed in the module docstring; missing ``instruction`` or
      ``instances``; a first instance without a string ``output`` (``input`` may be absent or
      null); an ``id`` that is not a string or integer. A repeated id is a counted
      ``duplicate_id`` drop.
  """
  source = source or default_source("self_instruct", path)
  drops: collections.Counter[str] = collections.Counter()

  def gen() -> Iterator[dict[str, str]]:
    yielded: set[str] = set()
    for lineno, task in iter_json_lines(path):
      instruction = get_field(task, "instruction", str, path, lineno).strip()
      instances = get_field(task, "instances", list, path, lineno)
      native_id = str(get_field(task, "id", (str, int), path, lineno, required=False,
                                default=f"line{lineno}"))
      if not instances:
        drops[DROP_NO_INSTANCES] += 1
        continue
      first = instances[0]
      if not isinstance(first, dict):
        raise SeedFormatError(f"{path}: line {lineno}: instances[0]: expected a JSON object, "
                              f"got {type(first).__name__}")
      inp = (get_field(first, "input", str, path, lineno, "instances[0]: ", required=False,
                       default="") or "").strip()
      output = get_field(first, "output", str, path, lineno, "instances[0]: ").strip()
      if not instruction:
        drops[DROP_EMPTY_INSTRUCTION] += 1
        continue
      if not output:
        drops[DROP_EMPTY_RESPONSE] += 1
        continue
      full = f"{instruction}\n\n{inp}" if inp else instruction
      rec = _record(drops, yielded, full, output, source, native_id)
      if rec is not None:
        yield rec

  return gen(), drops
