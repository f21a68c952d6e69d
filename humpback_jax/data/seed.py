"""Seed set S: human-written (instruction, response) pairs ([HB] §3.1).

The paper's seed is 3,200 Open Assistant (oasst1) pairs: the first turn of each conversation tree
(root prompt + one assistant reply), English, the reply ranked 0. This module reads the real
formats that data comes in and builds the seed:

* Open Assistant **tree** files (one tree per line; both the March-2023 manual-eval export and the
  full Hugging Face oasst1/oasst2 tree export): :func:`read_oasst_trees`.
* Open Assistant **flat** message files (the Hugging Face ``OpenAssistant/oasst1`` export, one
  message per line): :func:`read_oasst_flat`.
* LIMA (single-turn conversations only): :func:`read_lima`.
* Self-instruct seed tasks (optional): :func:`read_self_instruct`.

Every reader returns ``(records, drops)``: ``records`` is a lazy iterator of
``{"instruction", "response", "source", "id"}`` dicts in file order and ``drops`` is a
:class:`collections.Counter` of per-reason drop counts that fills in while ``records`` is
consumed. One *unit* (a tree, a root message, a conversation, a task) gives at most one pair, and
each unit that gives none is counted under exactly one reason, so after full iteration
``yielded + sum(drops.values())`` equals the number of units in the file.

:func:`build_seed` chains the readers, removes pairs whose instruction is an AlpacaEval prompt
(decontamination: the papers evaluate on AlpacaEval), drops too-short and duplicate instructions,
optionally caps the total and returns the pairs with Table-2-style statistics.

Bad input (a malformed JSON line, a record missing a required field or with a field of the wrong
type) raises :class:`SeedFormatError` naming the file and 1-based line number. A valid record that
fails a selection rule is a counted drop, never an error.

All lengths are in characters (Unicode code points, ``len(str)``).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import pathlib
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from humpback_jax import paths
from humpback_jax.errors import InputError

__all__ = [
    "SeedFormatError",
    "SeedConfig",
    "normalize_instruction",
    "load_alpaca_eval_instructions",
    "read_oasst_trees",
    "read_oasst_flat",
    "read_lima",
    "read_self_instruct",
    "length_stats",
    "build_seed",
]

PathLike = str | os.PathLike

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
DROP_ALPACA_EVAL_OVERLAP = "alpaca_eval_overlap"
DROP_INSTRUCTION_TOO_SHORT = "instruction_too_short"
DROP_RESPONSE_TOO_SHORT = "response_too_short"
DROP_DUPLICATE_INSTRUCTION = "duplicate_instruction"
DROP_OVER_MAX_EXAMPLES = "over_max_examples"

_WHITESPACE = re.compile(r"\s+")


class SeedFormatError(InputError):
  """A seed or evaluation file is malformed (bad JSON, missing or mistyped required field)."""


# --------------------------------------------------------------------------------------------
# Helpers.


def normalize_instruction(text: str) -> str:
  """Normalizes an instruction for overlap and duplicate matching.

  Unicode NFKC, then ``str.casefold``, then every whitespace run collapsed to one space, then
  stripped. The rule is this project's choice (the papers do not describe their decontamination).

  Args:
    text: the instruction.

  Returns:
    The normalized string (possibly empty).
  """
  return _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def _default_source(kind: str, path: PathLike) -> str:
  """``"<kind>:<file name without .jsonl/.json>"``, e.g. ``"oasst:oasst_en_100_trees"``."""
  name = pathlib.Path(path).name
  for suffix in (".jsonl", ".json"):
    if name.endswith(suffix):
      name = name[: -len(suffix)]
      break
  return f"{kind}:{name}"


def _iter_json_lines(path: PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
  """Yields ``(1-based line number, object)`` for each non-blank line of a JSONL file.

  Raises:
    FileNotFoundError: the file does not exist.
    SeedFormatError: a line is not valid JSON or not a JSON object.
  """
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise SeedFormatError(f"{path}: line {lineno}: malformed JSON: {e.msg} "
                              f"(column {e.colno})") from e
      if not isinstance(obj, dict):
        raise SeedFormatError(
            f"{path}: line {lineno}: expected a JSON object, got {type(obj).__name__}")
      yield lineno, obj


def _get(obj: Mapping[str, Any], field: str, types: type | tuple[type, ...], path: PathLike,
         lineno: int, where: str = "", *, required: bool = True, default: Any = None,
         nullable: bool = False) -> Any:
  """Returns ``obj[field]`` after checking presence and type.

  Raises:
    SeedFormatError: the field is missing (and ``required``) or has the wrong type.
  """
  loc = f"{path}: line {lineno}: {where}"
  types = _as_tuple(types)
  want = " or ".join(t.__name__ for t in types)
  if field not in obj:
    if required:
      raise SeedFormatError(f"{loc}missing required field {field!r}")
    return default
  value = obj[field]
  if value is None:
    if nullable:
      return None
    if not required:
      return default
    raise SeedFormatError(f"{loc}field {field!r} must be {want}, got null")
  if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
    raise SeedFormatError(f"{loc}field {field!r} must be {want}, got {type(value).__name__}")
  return value


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
  """``types`` as a tuple."""
  return types if isinstance(types, tuple) else (types,)


def _record(instruction: str, response: str, source: str, native_id: str) -> dict[str, str]:
  return {"instruction": instruction, "response": response, "source": source,
          "id": f"{source}/{native_id}"}


# --------------------------------------------------------------------------------------------
# Open Assistant.


def _oasst_message(msg: Any, path: PathLike, lineno: int, where: str) -> dict[str, Any]:
  """Validates one Open Assistant message and returns its normalized fields.

  Required: ``message_id``, ``role``, ``text`` (strings), ``lang`` (string; null allowed and
  treated as unknown). Optional: ``rank`` (int or null), ``deleted``, ``synthetic`` (bool,
  default false), ``review_result`` (bool or null, default null = not reviewed yet).

  Raises:
    SeedFormatError: a required field is missing or a field has the wrong type.
  """
  if not isinstance(msg, dict):
    raise SeedFormatError(
        f"{path}: line {lineno}: {where}expected a JSON object, got {type(msg).__name__}")
  return {
      "message_id": _get(msg, "message_id", str, path, lineno, where),
      "role": _get(msg, "role", str, path, lineno, where),
      "text": _get(msg, "text", str, path, lineno, where),
      "lang": _get(msg, "lang", str, path, lineno, where, nullable=True),
      "rank": _get(msg, "rank", (int, float), path, lineno, where, required=False),
      "deleted": bool(_get(msg, "deleted", bool, path, lineno, where, required=False,
                           default=False)),
      "synthetic": bool(_get(msg, "synthetic", bool, path, lineno, where, required=False,
                             default=False)),
      "review_result": _get(msg, "review_result", bool, path, lineno, where, required=False),
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
    path: the JSONL file.
    source: the ``source`` tag of the records; default ``"oasst:<file stem>"``.

  Returns:
    ``(records, drops)``: a lazy iterator of one pair per kept tree, in file order, and the
    per-reason drop counter (one count per dropped tree), complete once ``records`` is exhausted.

  Raises (while iterating):
    FileNotFoundError: the file does not exist.
    SeedFormatError: malformed JSON, missing ``prompt``, or a root / direct reply missing
      ``message_id``, ``role``, ``text`` or ``lang`` (message names file and line).
  """
  source = source or _default_source("oasst", path)
  drops: collections.Counter[str] = collections.Counter()

  def gen() -> Iterator[dict[str, str]]:
    for lineno, tree in _iter_json_lines(path):
      raw_prompt = _get(tree, "prompt", dict, path, lineno)
      prompt = _oasst_message(raw_prompt, path, lineno, "prompt: ")
      raw_replies = _get(raw_prompt, "replies", list, path, lineno, "prompt: ", required=False,
                         default=[])
      replies = [_oasst_message(r, path, lineno, f"prompt.replies[{i}]: ")
                 for i, r in enumerate(raw_replies)]
      reply, reason = _oasst_first_turn(prompt, replies)
      if reply is None:
        drops[reason] += 1
        continue
      yield _record(prompt["text"].strip(), reply["text"].strip(), source, prompt["message_id"])

  return gen(), drops


def read_oasst_flat(path: PathLike, *, source: str | None = None
                    ) -> tuple[Iterator[dict[str, str]], collections.Counter[str]]:
  """Reads first-turn pairs from an Open Assistant flat message file (HF ``oasst1`` export).

  One message per line (``message_id, parent_id, role, text, lang, rank, deleted, synthetic,
  review_result, labels, ...``). Roots are the messages with ``parent_id`` null; each root's direct
  children are its replies. The same [HB] §3.1 rule as :func:`read_oasst_trees` applies. The whole
  file is read (and validated) before the first record is yielded, since children may come in
  any order; roots are yielded in file order. Messages whose parent is absent from the file are
  ignored (they are not roots).

  Args:
    path: the JSONL file.
    source: the ``source`` tag of the records; default ``"oasst:<file stem>"``.

  Returns:
    ``(records, drops)`` as in :func:`read_oasst_trees`; one unit per root message.

  Raises (while iterating):
    FileNotFoundError: the file does not exist.
    SeedFormatError: malformed JSON, a message missing ``message_id``, ``parent_id`` (the key;
      null is allowed), ``role``, ``text`` or ``lang``, or a duplicate ``message_id``.
  """
  source = source or _default_source("oasst", path)
  drops: collections.Counter[str] = collections.Counter()

  def gen() -> Iterator[dict[str, str]]:
    roots: list[dict[str, Any]] = []
    children: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    seen_ids: dict[str, int] = {}
    for lineno, raw in _iter_json_lines(path):
      msg = _oasst_message(raw, path, lineno, "")
      if "parent_id" not in raw:
        raise SeedFormatError(f"{path}: line {lineno}: missing required field 'parent_id'")
      parent_id = _get(raw, "parent_id", str, path, lineno, nullable=True)
      if msg["message_id"] in seen_ids:
        raise SeedFormatError(
            f"{path}: line {lineno}: duplicate message_id {msg['message_id']!r} "
            f"(first on line {seen_ids[msg['message_id']]})")
      seen_ids[msg["message_id"]] = lineno
      if parent_id is None:
        roots.append(msg)
      else:
        children[parent_id].append(msg)
    for prompt in roots:
      reply, reason = _oasst_first_turn(prompt, children.get(prompt["message_id"], ()))
      if reply is None:
        drops[reason] += 1
        continue
      yield _record(prompt["text"].strip(), reply["text"].strip(), source, prompt["message_id"])

  return gen(), drops


# --------------------------------------------------------------------------------------------
# LIMA and self-instruct.


def read_lima(path: PathLike, *, source: str | None = None
              ) -> tuple[Iterator[dict[str, str]], collections.Counter[str]]:
  """Reads single-turn pairs from a LIMA file (``{dataset, id, messages: [{role, content}]}``).

  Kept: exactly two messages, roles ``user`` then ``assistant``, both non-empty after stripping.
  Conversations with more messages are counted as ``multi_turn``; two messages with other roles
  as ``bad_roles``. Texts are stripped.

  Args:
    path: the JSONL file.
    source: the ``source`` tag; default ``"lima:<file stem>"``.

  Returns:
    ``(records, drops)`` as in :func:`read_oasst_trees`; one unit per conversation. The record id
    is the file's ``id`` (or ``line<N>`` when absent).

  Raises (while iterating):
    FileNotFoundError: the file does not exist.
    SeedFormatError: malformed JSON, missing ``messages`` list, or a message that is not an object
      with string ``role`` and ``content``.
  """
  source = source or _default_source("lima", path)
  drops: collections.Counter[str] = collections.Counter()

  def gen() -> Iterator[dict[str, str]]:
    for lineno, conv in _iter_json_lines(path):
      messages = _get(conv, "messages", list, path, lineno)
      turns = []
      for i, m in enumerate(messages):
        where = f"messages[{i}]: "
        if not isinstance(m, dict):
          raise SeedFormatError(
              f"{path}: line {lineno}: {where}expected a JSON object, got {type(m).__name__}")
        turns.append((_get(m, "role", str, path, lineno, where),
                      _get(m, "content", str, path, lineno, where)))
      native_id = _get(conv, "id", (str, int), path, lineno, required=False,
                       default=f"line{lineno}")
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
      yield _record(instruction, response, source, str(native_id))

  return gen(), drops


def read_self_instruct(path: PathLike, *, source: str | None = None
                       ) -> tuple[Iterator[dict[str, str]], collections.Counter[str]]:
  """Reads the self-instruct seed tasks (``{id, name, instruction, instances: [{input, output}]}``).

  Instruction = the task instruction, plus ``"\\n\\n"`` and the first instance's input when that
  input is non-empty; response = the first instance's output. Tasks without instances count as
  ``no_instances``. Texts are stripped.

  Args:
    path: the JSONL file.
    source: the ``source`` tag; default ``"self_instruct:<file stem>"``.

  Returns:
    ``(records, drops)`` as in :func:`read_oasst_trees`; one unit per task.

  Raises (while iterating):
    FileNotFoundError: the file does not exist.
    SeedFormatError: malformed JSON, missing ``instruction`` or ``instances``, or a first instance
      without a string ``output`` (``input`` may be absent or null).
  """
  source = source or _default_source("self_instruct", path)
  drops: collections.Counter[str] = collections.Counter()

  def gen() -> Iterator[dict[str, str]]:
    for lineno, task in _iter_json_lines(path):
      instruction = _get(task, "instruction", str, path, lineno).strip()
      instances = _get(task, "instances", list, path, lineno)
      native_id = _get(task, "id", (str, int), path, lineno, required=False,
                       default=f"line{lineno}")
      if not instances:
        drops[DROP_NO_INSTANCES] += 1
        continue
      first = instances[0]
      if not isinstance(first, dict):
        raise SeedFormatError(f"{path}: line {lineno}: instances[0]: expected a JSON object, "
                              f"got {type(first).__name__}")
      inp = (_get(first, "input", str, path, lineno, "instances[0]: ", required=False,
                  default="") or "").strip()
      output = _get(first, "output", str, path, lineno, "instances[0]: ").strip()
      if not instruction:
        drops[DROP_EMPTY_INSTRUCTION] += 1
        continue
      if not output:
        drops[DROP_EMPTY_RESPONSE] += 1
        continue
      full = f"{instruction}\n\n{inp}" if inp else instruction
      yield _record(full, output, source, str(native_id))

  return gen(), drops


# --------------------------------------------------------------------------------------------
# Decontamination and statistics.


def load_alpaca_eval_instructions(path: PathLike) -> frozenset[str]:
  """Loads the AlpacaEval instructions, normalized with :func:`normalize_instruction`.

  Args:
    path: a JSON array of objects with an ``instruction`` string (the AlpacaEval 1.0 file has
      805), or a JSONL file of such objects.

  Returns:
    The set of normalized instructions.

  Raises:
    FileNotFoundError: the file does not exist.
    SeedFormatError: not valid JSON / JSONL, or an item without a string ``instruction`` (the
      message gives the 1-based item index for a JSON array, the line for JSONL).
  """
  text = pathlib.Path(path).read_text(encoding="utf-8")
  if text.lstrip().startswith("["):
    try:
      items = json.loads(text)
    except json.JSONDecodeError as e:
      raise SeedFormatError(f"{path}: line {e.lineno}: malformed JSON: {e.msg}") from e
    out = set()
    for i, item in enumerate(items, start=1):
      if not isinstance(item, dict) or not isinstance(item.get("instruction"), str):
        raise SeedFormatError(f"{path}: item {i}: missing required string field 'instruction'")
      out.add(normalize_instruction(item["instruction"]))
    return frozenset(out)
  return frozenset(normalize_instruction(_get(obj, "instruction", str, path, lineno))
                   for lineno, obj in _iter_json_lines(path))


def length_stats(pairs: Iterable[Mapping[str, str]]) -> dict[str, float | int]:
  """Table-2-style length statistics of (instruction, response) pairs ([HB] Table 2).

  Lengths are in characters (``len(str)``); std is the population standard deviation (the paper
  does not say which). The paper's seed: instruction 148 ± 322, response 1,072 ± 818 chars.

  Args:
    pairs: mappings with ``instruction`` and ``response`` strings.

  Returns:
    ``{"count", "instruction_chars_mean", "instruction_chars_std", "response_chars_mean",
    "response_chars_std"}``; means and stds rounded to 1 decimal, all 0.0 when there are no pairs.
  """
  ins, res = [], []
  for p in pairs:
    ins.append(len(p["instruction"]))
    res.append(len(p["response"]))

  def mean_std(xs: list[int]) -> tuple[float, float]:
    if not xs:
      return 0.0, 0.0
    m = sum(xs) / len(xs)
    return round(m, 1), round(math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs)), 1)

  im, isd = mean_std(ins)
  rm, rsd = mean_std(res)
  return {"count": len(ins), "instruction_chars_mean": im, "instruction_chars_std": isd,
          "response_chars_mean": rm, "response_chars_std": rsd}


# --------------------------------------------------------------------------------------------
# Builder.


@dataclasses.dataclass(frozen=True)
class SeedConfig:
  """What goes into the seed. Paths are relative to the data root (or absolute).

  Attributes:
    oasst_tree_files: Open Assistant tree files (:func:`read_oasst_trees`).
    oasst_flat_files: Open Assistant flat message files (:func:`read_oasst_flat`). Empty by
      default: the only local one is the oasst1 *validation* split, evaluation data whose roots are
      all AlpacaEval prompts; point it at an ``OpenAssistant/oasst1`` train export when available.
    lima_files: LIMA files (:func:`read_lima`).
    self_instruct_files: self-instruct seed task files (:func:`read_self_instruct`); off by default.
    alpaca_eval_file: AlpacaEval prompts to decontaminate against; ``None`` disables the filter.
    max_examples: keep at most this many pairs (the first ones in build order); ``None`` keeps all.
      The paper's seed has 3,200 ([HB] §3.1).
    min_chars: minimum stripped length, in characters, of both instruction and response.
    dedup: drop pairs whose normalized instruction already occurred (first one wins).
  """

  oasst_tree_files: tuple[str, ...] = ("seed/oasst_en_100_trees.jsonl",
                                       "seed/oasst2_filtered_551_trees.jsonl")
  oasst_flat_files: tuple[str, ...] = ()
  lima_files: tuple[str, ...] = ("seed/lima_train_1030.jsonl",)
  self_instruct_files: tuple[str, ...] = ()
  alpaca_eval_file: str | None = "eval/alpaca_eval_805_ref_text_davinci_003.json"
  max_examples: int | None = None
  min_chars: int = 1
  dedup: bool = True

  def __post_init__(self) -> None:
    """Coerces file lists to tuples and validates numbers.

    Raises:
      ValueError: ``max_examples`` or ``min_chars`` is negative.
    """
    for name in ("oasst_tree_files", "oasst_flat_files", "lima_files", "self_instruct_files"):
      value = getattr(self, name)
      if isinstance(value, (str, os.PathLike)):
        value = (value,)
      object.__setattr__(self, name, tuple(str(v) for v in value))
    if self.max_examples is not None and self.max_examples < 0:
      raise ValueError(f"max_examples must be >= 0 or None, got {self.max_examples}")
    if self.min_chars < 0:
      raise ValueError(f"min_chars must be >= 0, got {self.min_chars}")


def build_seed(config: SeedConfig, data_root: PathLike | None = None
               ) -> tuple[list[dict[str, str]], dict[str, Any]]:
  """Builds the seed set S ([HB] §3.1) from the files named in ``config``.

  Order is deterministic: sources in config order (oasst trees, oasst flat, LIMA, self-instruct;
  files in tuple order), records in file order. After each reader's own rules, pairs are dropped,
  in this order, for: AlpacaEval overlap (normalized instruction equal to an AlpacaEval prompt),
  instruction or response shorter than ``min_chars`` characters, duplicate normalized instruction
  (if ``dedup``), beyond ``max_examples``. The cap only truncates: the capped build is a prefix
  of the uncapped one and every other drop count is unchanged.

  Args:
    config: the seed configuration.
    data_root: root for relative paths; default :func:`humpback_jax.paths.default_data_root`.

  Returns:
    ``(pairs, stats)``. ``pairs`` are ``{"instruction", "response", "source", "id"}`` dicts.
    ``stats`` (JSON-serializable) has ``sources`` (list, build order), ``files`` (source -> list
    of resolved paths), ``seen`` (source -> units read), ``kept`` (source -> pairs kept),
    ``dropped`` (source -> {reason: count}), ``total`` (pairs kept), ``total_seen``,
    ``total_dropped``, ``alpaca_eval_instructions`` (size of the decontamination set, 0 if
    disabled) and ``lengths`` (:func:`length_stats` of the kept pairs). For every source
    ``seen == kept + sum(dropped.values())``. Two files with the same source tag are merged.

  Raises:
    FileNotFoundError: a configured file does not exist.
    SeedFormatError: a configured file is malformed.
  """
  readers = ([(read_oasst_trees, "oasst", f) for f in config.oasst_tree_files]
             + [(read_oasst_flat, "oasst", f) for f in config.oasst_flat_files]
             + [(read_lima, "lima", f) for f in config.lima_files]
             + [(read_self_instruct, "self_instruct", f) for f in config.self_instruct_files])
  alpaca = (load_alpaca_eval_instructions(paths.resolve(config.alpaca_eval_file, data_root))
            if config.alpaca_eval_file else frozenset())

  sources: list[str] = []
  files: dict[str, list[str]] = {}
  seen: collections.Counter[str] = collections.Counter()
  kept: collections.Counter[str] = collections.Counter()
  dropped: dict[str, collections.Counter[str]] = {}
  seen_instructions: set[str] = set()
  pairs: list[dict[str, str]] = []

  for reader, kind, rel in readers:
    path = paths.resolve(rel, data_root)
    source = _default_source(kind, path)
    if source not in dropped:
      sources.append(source)
      dropped[source] = collections.Counter()
    records, reader_drops = reader(path, source=source)
    for rec in records:
      seen[source] += 1
      key = normalize_instruction(rec["instruction"])
      if key in alpaca:
        dropped[source][DROP_ALPACA_EVAL_OVERLAP] += 1
      elif len(rec["instruction"]) < config.min_chars:
        dropped[source][DROP_INSTRUCTION_TOO_SHORT] += 1
      elif len(rec["response"]) < config.min_chars:
        dropped[source][DROP_RESPONSE_TOO_SHORT] += 1
      elif config.dedup and key in seen_instructions:
        dropped[source][DROP_DUPLICATE_INSTRUCTION] += 1
      else:
        if config.dedup:  # Registered even when over the cap, so the cap only truncates.
          seen_instructions.add(key)
        if config.max_examples is not None and len(pairs) >= config.max_examples:
          dropped[source][DROP_OVER_MAX_EXAMPLES] += 1
        else:
          pairs.append(rec)
          kept[source] += 1
    dropped[source].update(reader_drops)
    seen[source] += sum(reader_drops.values())
    files.setdefault(source, []).append(str(path))

  return pairs, {
      "sources": sources,
      "files": files,
      "seen": {s: seen[s] for s in sources},
      "kept": {s: kept[s] for s in sources},
      "dropped": {s: dict(sorted(dropped[s].items())) for s in sources},
      "total": len(pairs),
      "total_seen": sum(seen.values()),
      "total_dropped": sum(sum(c.values()) for c in dropped.values()),
      "alpaca_eval_instructions": len(alpaca),
      "lengths": length_stats(pairs),
  }

