"""Seed set S: human-written (instruction, response) pairs ([HB] §3.1).

The paper's seed is 3,200 Open Assistant (oasst1) pairs: the first turn of each conversation tree
(root prompt + one assistant reply), English, the reply ranked 0. The per-format readers live in
:mod:`humpback_jax.data.seed_formats` (re-exported here: :func:`read_oasst_trees`,
:func:`read_oasst_flat`, :func:`read_lima`, :func:`read_self_instruct`), safe file reading in
:mod:`humpback_jax.data.seed_io` and evaluation prompt files in
:mod:`humpback_jax.data.eval_prompts`. This module holds the configuration, the instruction
normalisation, the AlpacaEval decontamination and :func:`build_seed`.

:func:`build_seed` checks every configured file first, chains the readers, removes pairs whose
instruction is an AlpacaEval prompt (decontamination: the papers evaluate on AlpacaEval), drops
repeated ids, too-short and duplicate instructions, optionally caps the total and returns the
pairs with Table-2-style statistics.

Bad input raises :class:`SeedFormatError` (an :class:`~humpback_jax.errors.InputError`) naming
the file and 1-based line (or item); a valid record that fails a selection rule is a counted drop,
never an error. All lengths are in characters (Unicode code points, ``len(str)``).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import re
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any

from humpback_jax import paths
from humpback_jax.data.eval_prompts import load_eval_prompts
from humpback_jax.data.seed_formats import (  # noqa: F401 - re-exported names.
    DROP_BAD_ROLES, DROP_DUPLICATE_ID, DROP_EMPTY_INSTRUCTION, DROP_EMPTY_RESPONSE,
    DROP_INVALID_UNICODE, DROP_MULTI_TURN, DROP_NO_INSTANCES, DROP_NO_RANK0_REPLY,
    DROP_OASST_CYCLE, DROP_OASST_ORPHAN, DROP_PROMPT_DELETED, DROP_PROMPT_NOT_ENGLISH,
    DROP_PROMPT_REVIEW_FAILED, DROP_PROMPT_SYNTHETIC, DROP_REPLY_DELETED, DROP_REPLY_NOT_ENGLISH,
    DROP_REPLY_REVIEW_FAILED, DROP_REPLY_SYNTHETIC, DROP_ROOT_NOT_PROMPTER, OASST_LANG,
    OASST_RANK, read_lima, read_oasst_flat, read_oasst_trees, read_self_instruct)
from humpback_jax.data.seed_io import PathLike, SeedFormatError, check_input_file
from humpback_jax.data.seed_io import default_source as _default_source
from humpback_jax.errors import InputError

__all__ = [
    "SeedFormatError",
    "SeedConfig",
    "normalize_instruction",
    "DECONTAMINATION_RULE",
    "load_alpaca_eval_instructions",
    "read_oasst_trees",
    "read_oasst_flat",
    "read_lima",
    "read_self_instruct",
    "length_stats",
    "build_seed",
]

# Drop reasons added by build_seed (the readers' reasons are in seed_formats; build_seed also
# counts DROP_DUPLICATE_ID for an id already produced by an earlier file with the same source tag).
DROP_ALPACA_EVAL_OVERLAP = "alpaca_eval_overlap"
DROP_INSTRUCTION_TOO_SHORT = "instruction_too_short"
DROP_RESPONSE_TOO_SHORT = "response_too_short"
DROP_DUPLICATE_INSTRUCTION = "duplicate_instruction"
DROP_OVER_MAX_EXAMPLES = "over_max_examples"

_WHITESPACE = re.compile(r"\s+")
# Our choice: typographic quotes, primes and dashes that NFKC leaves alone, mapped to ASCII.
_TO_ASCII = str.maketrans({
    **dict.fromkeys("\u2018\u2019\u201a\u201b\u2032\u2035\u2039\u203a", "'"),
    **dict.fromkeys("\u201c\u201d\u201e\u201f\u2033\u2036\u00ab\u00bb", '"'),
    **dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d", "-"),
})
_SURROUNDING_QUOTES = "\"'`"
_TRAILING_PUNCTUATION = ".?!"

# Short description of normalize_instruction, recorded in the seed stats.
DECONTAMINATION_RULE = ("exact match after NFKC, casefold, curly quotes/primes/dashes to ASCII, "
                        "format chars (Cf) removed, whitespace collapsed, surrounding quotes and "
                        "trailing .?! stripped")


def normalize_instruction(text: str) -> str:
  """Normalizes an instruction for AlpacaEval-overlap and duplicate matching.

  The rule is this project's choice (the papers do not describe their decontamination), meant to
  catch copies of a prompt that differ only in typography: Unicode NFKC, then ``str.casefold``;
  curly quotes and primes mapped to ``'`` / ``"``, Unicode dashes and minus to ``-``; every
  format character (category Cf: zero-width space/joiners U+200B-U+200D, word joiner U+2060, BOM
  U+FEFF, soft hyphen U+00AD, bidi marks) removed; whitespace runs collapsed to one space; then,
  repeatedly until nothing changes, surrounding whitespace stripped, trailing ``.``, ``?``, ``!``
  stripped and one matching pair of surrounding quotes (``"``, ``'`` or backtick) removed.
  Two instructions match when their normalized forms are equal.

  Args:
    text: the instruction.

  Returns:
    The normalized string (possibly empty, e.g. for ``"?"``).
  """
  s = unicodedata.normalize("NFKC", text).casefold().translate(_TO_ASCII)
  s = "".join(c for c in s if unicodedata.category(c) != "Cf")
  s = _WHITESPACE.sub(" ", s)
  prev = None
  while s != prev:
    prev = s
    s = s.strip().rstrip(_TRAILING_PUNCTUATION).rstrip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in _SURROUNDING_QUOTES:
      s = s[1:-1]
  return s


def load_alpaca_eval_instructions(path: PathLike) -> frozenset[str]:
  """Loads the AlpacaEval instructions, normalized with :func:`normalize_instruction`.

  Args:
    path: any file :func:`~humpback_jax.data.eval_prompts.load_eval_prompts` reads (the
      AlpacaEval 1.0 JSON array has 805 instructions).

  Returns:
    The set of non-empty normalized instructions.

  Raises:
    SeedFormatError: as ``load_eval_prompts`` (message names file and item or line), or the file
      holds no instruction ("contains no instructions; decontamination would be off").
  """
  keys = frozenset(k for k in (normalize_instruction(p["instruction"])
                               for p in load_eval_prompts(path, allow_empty=True)) if k)
  if not keys:
    raise SeedFormatError(f"{path}: contains no instructions; decontamination would be off "
                          "(set SeedConfig.alpaca_eval_file to None to switch it off explicitly)")
  return keys


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

_FILE_FIELDS = ("oasst_tree_files", "oasst_flat_files", "lima_files", "self_instruct_files")


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
    alpaca_eval_file: AlpacaEval prompts to decontaminate against; ``None`` or ``""`` switches the
      filter off explicitly (recorded as ``decontamination: "off"`` in the stats).
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
    """Coerces file lists to tuples of str and validates types and numbers.

    Raises:
      InputError (a ValueError): a file list is not a path or a sequence of paths,
        ``alpaca_eval_file`` is not a path or None, ``max_examples`` / ``min_chars`` is not an
        int or is negative, ``dedup`` is not a bool.
    """
    for name in _FILE_FIELDS:
      value = getattr(self, name)
      if isinstance(value, (str, os.PathLike)):
        value = (value,)
      if not isinstance(value, (tuple, list)) or not all(
          isinstance(v, (str, os.PathLike)) for v in value):
        raise InputError(f"SeedConfig.{name} must be a path or a list of paths, got {value!r}")
      object.__setattr__(self, name, tuple(str(v) for v in value))
    if self.alpaca_eval_file is not None:
      if not isinstance(self.alpaca_eval_file, (str, os.PathLike)):
        raise InputError(f"SeedConfig.alpaca_eval_file must be a path or None, "
                         f"got {self.alpaca_eval_file!r}")
      object.__setattr__(self, "alpaca_eval_file", str(self.alpaca_eval_file))
    if self.max_examples is not None and (
        isinstance(self.max_examples, bool) or not isinstance(self.max_examples, int)
        or self.max_examples < 0):
      raise InputError(f"max_examples must be an int >= 0 or None, got {self.max_examples!r}")
    if isinstance(self.min_chars, bool) or not isinstance(self.min_chars, int) or (
        self.min_chars < 0):
      raise InputError(f"min_chars must be an int >= 0, got {self.min_chars!r}")
    if not isinstance(self.dedup, bool):
      raise InputError(f"dedup must be a bool, got {self.dedup!r}")


def build_seed(config: SeedConfig, data_root: PathLike | None = None
               ) -> tuple[list[dict[str, str]], dict[str, Any]]:
  """Builds the seed set S ([HB] §3.1) from the files named in ``config``.

  Every configured file (and the AlpacaEval file) is checked to be an existing, readable regular
  file before any is read. Order is deterministic: sources in config order (oasst trees, oasst
  flat, LIMA, self-instruct; files in tuple order), records in file order. After each reader's own
  rules, pairs are dropped, in this order, for: an id already produced by an earlier record (two
  files with the same name give the same source tag; ``duplicate_id``), AlpacaEval overlap
  (:func:`normalize_instruction` equal to an AlpacaEval prompt's), instruction or response shorter
  than ``min_chars`` characters, duplicate normalized instruction (if ``dedup``), beyond
  ``max_examples``. The cap only truncates: the capped build is a prefix of the uncapped one and
  every other drop count is unchanged. Output ids are unique (checked).

  Args:
    config: the seed configuration.
    data_root: root for relative paths; default :func:`humpback_jax.paths.default_data_root`.

  Returns:
    ``(pairs, stats)``. ``pairs`` are ``{"instruction", "response", "source", "id"}`` dicts.
    ``stats`` (JSON-serializable) has ``sources`` (list, build order), ``files`` (source -> list
    of resolved paths), ``seen`` (source -> units read), ``kept`` (source -> pairs kept),
    ``dropped`` (source -> {reason: count}; reasons of the readers, incl. ``invalid_unicode``,
    ``oasst_orphan_messages``, ``oasst_cycle_messages``, and of this function, incl.
    ``duplicate_id``), ``total`` (pairs kept), ``total_seen``, ``total_dropped``,
    ``decontamination`` (``"on"`` or ``"off"``), ``decontamination_rule`` (how instructions are
    matched, :data:`DECONTAMINATION_RULE`; ``""`` when off), ``decontaminated`` (pairs removed as
    AlpacaEval prompts), ``alpaca_eval_instructions`` (size of the decontamination set, 0 if off)
    and ``lengths`` (:func:`length_stats` of the kept pairs). For every source
    ``seen == kept + sum(dropped.values())``. Two files with the same source tag are merged.

  Raises:
    SeedFormatError (an InputError): a configured file is missing, not a readable regular file,
      or malformed; or the AlpacaEval file holds no instruction while decontamination is on.
  """
  readers = ([(read_oasst_trees, "oasst", f) for f in config.oasst_tree_files]
             + [(read_oasst_flat, "oasst", f) for f in config.oasst_flat_files]
             + [(read_lima, "lima", f) for f in config.lima_files]
             + [(read_self_instruct, "self_instruct", f) for f in config.self_instruct_files])
  resolved = [paths.resolve(rel, data_root) for _, _, rel in readers]
  alpaca_path = (paths.resolve(config.alpaca_eval_file, data_root)
                 if config.alpaca_eval_file else None)
  for path in resolved:
    check_input_file(path, "seed file")
  if alpaca_path is not None:
    check_input_file(alpaca_path, "AlpacaEval file")
  alpaca = load_alpaca_eval_instructions(alpaca_path) if alpaca_path else frozenset()

  sources: list[str] = []
  files: dict[str, list[str]] = {}
  seen: collections.Counter[str] = collections.Counter()
  kept: collections.Counter[str] = collections.Counter()
  dropped: dict[str, collections.Counter[str]] = {}
  seen_instructions: set[str] = set()
  seen_ids: set[str] = set()
  pairs: list[dict[str, str]] = []

  for (reader, kind, _), path in zip(readers, resolved):
    source = _default_source(kind, path)
    if source not in dropped:
      sources.append(source)
      dropped[source] = collections.Counter()
    records, reader_drops = reader(path, source=source)
    for rec in records:
      seen[source] += 1
      key = normalize_instruction(rec["instruction"])
      if rec["id"] in seen_ids:
        dropped[source][DROP_DUPLICATE_ID] += 1
        continue
      seen_ids.add(rec["id"])
      if key and key in alpaca:
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

  if len({p["id"] for p in pairs}) != len(pairs):  # Post-condition; cannot fail on any input.
    raise AssertionError("build_seed: output ids are not unique")
  return pairs, {
      "sources": sources,
      "files": files,
      "seen": {s: seen[s] for s in sources},
      "kept": {s: kept[s] for s in sources},
      "dropped": {s: dict(sorted(dropped[s].items())) for s in sources},
      "total": len(pairs),
      "total_seen": sum(seen.values()),
      "total_dropped": sum(sum(c.values()) for c in dropped.values()),
      "decontamination": "on" if alpaca_path else "off",
      "decontamination_rule": DECONTAMINATION_RULE if alpaca_path else "",
      "decontaminated": sum(c[DROP_ALPACA_EVAL_OVERLAP] for c in dropped.values()),
      "alpaca_eval_instructions": len(alpaca),
      "lengths": length_stats(pairs),
  }
