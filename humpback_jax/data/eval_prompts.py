"""Evaluation prompts (AlpacaEval and the other prompt sets the papers use), read strictly.

:func:`load_eval_prompts` reads the formats of the files in ``<data root>/eval``:

* a JSON array of objects with an ``instruction`` string (AlpacaEval 1.0/2.0 files, also any
  ``model_outputs.json``), optional ``dataset`` string;
* JSONL, one object per line, whose prompt is the first of these present (checked in this order):
  ``instruction`` (self-instruct user-oriented; when the object has a non-empty
  ``instances[0].input``, it is appended after a blank line, the way AlpacaEval's ``selfinstruct``
  prompts are written), ``prompt`` (Koala), ``turns`` (Vicuna bench, MT-bench: the first turn;
  single-turn evaluation as in [HB] §4, our choice for MT-bench's second turn).

A file whose name ends in ``.json`` must be a JSON array; otherwise a file whose first
non-whitespace character is ``[`` is read as a JSON array and anything else as JSONL. Bytes are
read as in :mod:`humpback_jax.data.seed_io` (UTF-8, BOM skipped, gzip decompressed).
"""

from __future__ import annotations

from typing import Any

from humpback_jax.data.seed_io import (PathLike, SeedFormatError, default_source,
                                       has_lone_surrogate, iter_json_lines, parse_json,
                                       read_text)

__all__ = ["load_eval_prompts"]


def _prompt_of(item: Any, path: PathLike, where: str) -> str:
  """The prompt text of one item; ``where`` is ``"item <i>: "`` or ``"line <n>: "``."""
  loc = f"{path}: {where}"
  if not isinstance(item, dict):
    raise SeedFormatError(f"{loc}expected a JSON object, got {type(item).__name__}")
  if "instruction" in item:
    text = item["instruction"]
    if not isinstance(text, str):
      raise SeedFormatError(f"{loc}field 'instruction' must be str, got {type(text).__name__}")
    instances = item.get("instances")
    if isinstance(instances, list) and instances and isinstance(instances[0], dict):
      inp = instances[0].get("input")
      if inp is not None and not isinstance(inp, str):
        raise SeedFormatError(
            f"{loc}instances[0]: field 'input' must be str, got {type(inp).__name__}")
      if inp and inp.strip():
        text = f"{text.strip()}\n\n{inp.strip()}"
  elif "prompt" in item:
    text = item["prompt"]
    if not isinstance(text, str):
      raise SeedFormatError(f"{loc}field 'prompt' must be str, got {type(text).__name__}")
  elif "turns" in item:
    turns = item["turns"]
    if not isinstance(turns, list) or not turns:
      raise SeedFormatError(f"{loc}field 'turns' must be a non-empty list")
    text = turns[0]
    if not isinstance(text, str):
      raise SeedFormatError(f"{loc}turns[0] must be str, got {type(text).__name__}")
  else:
    raise SeedFormatError(f"{loc}missing required field 'instruction' (or 'prompt' or 'turns')")
  if not text.strip():
    raise SeedFormatError(f"{loc}the prompt is empty")
  if has_lone_surrogate(text):
    raise SeedFormatError(f"{loc}the prompt holds a lone UTF-16 surrogate (invalid Unicode)")
  return text


def _dataset_of(item: dict, path: PathLike, where: str, default: str) -> str:
  value = item.get("dataset")
  if value is None:
    return default
  if not isinstance(value, str) or has_lone_surrogate(value):
    raise SeedFormatError(f"{path}: {where}field 'dataset' must be a valid str")
  return value


def _is_json_array(path: PathLike) -> bool:
  """Whether to read ``path`` as one JSON array (see the module docstring)."""
  name = str(path)
  if name.endswith(".json") or name.endswith(".json.gz"):
    return True
  if name.endswith(".jsonl") or name.endswith(".jsonl.gz"):
    return False
  return read_text(path).lstrip().startswith("[")


def load_eval_prompts(path: PathLike, limit: int | None = None, *, allow_empty: bool = False
                      ) -> list[dict[str, str]]:
  """Reads evaluation prompts, in file order.

  Args:
    path: the prompt file (formats in the module docstring).
    limit: return at most this many (the first ones); ``None`` returns all. The whole file is
      validated either way.
    allow_empty: if false, a file with no prompt (empty file, ``[]``) is an error.

  Returns:
    ``[{"instruction": str, "dataset": str}]``; ``dataset`` is the item's ``dataset`` string, else
    the file stem (e.g. ``"koala_test_set_180"``). Instructions are returned as written (not
    stripped).

  Raises:
    SeedFormatError (an ``InputError``): the path is not a readable regular file; invalid UTF-8 or
      gzip; malformed JSON; a ``.json`` file that is not an array; an item that is not an object,
      has no prompt field, a non-string or empty prompt, or a lone surrogate; no prompt at all
      (unless ``allow_empty``). The message names the file and the 1-based item index (JSON
      array) or line (JSONL).
    ValueError: ``limit`` is negative.
  """
  if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
    raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")
  stem = default_source("", path)[1:]
  out: list[dict[str, str]] = []
  if _is_json_array(path):
    text = read_text(path)
    if text.strip():
      items = parse_json(text, path, "")
      if not isinstance(items, list):
        raise SeedFormatError(f"{path}: expected a JSON array of prompt objects, "
                              f"got {type(items).__name__}")
      for i, item in enumerate(items, start=1):
        where = f"item {i}: "
        out.append({"instruction": _prompt_of(item, path, where),
                    "dataset": _dataset_of(item, path, where, stem)})
  else:
    for lineno, item in iter_json_lines(path, allow_empty=True):
      where = f"line {lineno}: "
      out.append({"instruction": _prompt_of(item, path, where),
                  "dataset": _dataset_of(item, path, where, stem)})
  if not out and not allow_empty:
    raise SeedFormatError(f"{path}: contains no prompts")
  return out if limit is None else out[:limit]
