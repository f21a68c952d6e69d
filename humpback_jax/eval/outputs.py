"""AlpacaEval's ``model_outputs.json``: read strictly, written atomically, and seeded subsets.

The schema (AlpacaEval 1.0/2.0, ``method.md`` §4): a JSON array of objects, each with the
strings ``instruction``, ``output``, ``generator`` (the model's name) and ``dataset`` (the
prompt's source set, e.g. ``"helpful_base"``, ``"oasst"``). The reference files in
``<data root>/eval`` (text-davinci-003, GPT-4-Turbo) have the same schema, so a file written
here is scored by the official ``alpaca_eval`` tool where a GPT-4 key exists::

    alpaca_eval --model_outputs DIR/model_outputs.json --annotators_config alpaca_eval_gpt4

Extra keys are allowed (AlpacaEval ignores them); we add none.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np

from humpback_jax import fs, hosts
from humpback_jax.data.seed_io import PathLike, SeedFormatError, parse_json, read_text

__all__ = ["MODEL_OUTPUT_FIELDS", "validate_model_outputs", "read_model_outputs",
           "write_model_outputs", "subset_indices"]

# The four string fields of an AlpacaEval model_outputs.json record.
MODEL_OUTPUT_FIELDS = ("instruction", "output", "generator", "dataset")


def validate_model_outputs(items: Any, source: str = "model_outputs") -> list[dict]:
  """Checks ``items`` against AlpacaEval's ``model_outputs.json`` schema.

  Args:
    items: the parsed JSON.
    source: named in errors (a path).
  Returns:
    ``items`` (a list of dicts), unchanged.
  Raises:
    SeedFormatError (an ``InputError``): not a JSON array; an item that is not an object, lacks
      one of ``MODEL_OUTPUT_FIELDS`` or holds a non-string there; an empty instruction. The
      message names ``source`` and the 1-based item index.
  """
  if not isinstance(items, list):
    raise SeedFormatError(f"{source}: expected a JSON array of model outputs, got "
                          f"{type(items).__name__}")
  for i, item in enumerate(items, start=1):
    if not isinstance(item, dict):
      raise SeedFormatError(f"{source}: item {i}: expected a JSON object, got "
                            f"{type(item).__name__}")
    for key in MODEL_OUTPUT_FIELDS:
      if key not in item:
        raise SeedFormatError(f"{source}: item {i}: missing required field {key!r}")
      if not isinstance(item[key], str):
        raise SeedFormatError(f"{source}: item {i}: field {key!r} must be str, got "
                              f"{type(item[key]).__name__}")
    if not item["instruction"].strip():
      raise SeedFormatError(f"{source}: item {i}: the instruction is empty")
  return items


def read_model_outputs(path: PathLike) -> list[dict]:
  """Reads and validates a ``model_outputs.json`` (or an AlpacaEval reference file).

  Raises:
    SeedFormatError: unreadable, invalid UTF-8 or JSON, or not the schema (see
      ``validate_model_outputs``); the message names the file.
  """
  text = read_text(path)
  return validate_model_outputs(parse_json(text, path, ""), str(path))


def write_model_outputs(items: Sequence[dict], path: PathLike) -> None:
  """Validates and writes ``items`` as an indented JSON array (UTF-8, atomic; process 0 only).

  Raises:
    SeedFormatError: an item does not fit the schema (nothing is written).
  """
  items = validate_model_outputs(list(items), str(path))
  if hosts.is_writer():
    fs.atomic_write_text(fs.path(path), json.dumps(items, indent=2, ensure_ascii=False) + "\n")


def subset_indices(total: int, num: int | None, seed: int) -> list[int]:
  """A seeded subset of prompt indices, in increasing order.

  ``num`` of ``range(total)`` drawn without replacement by ``numpy.random.default_rng(seed)``
  (the same subset on every host and every rerun); ``None`` or ``num >= total`` gives all.
  Nested: the first ``m`` of the permutation are drawn for every ``num``, so a smaller subset
  of the same seed is contained in a larger one.

  Raises:
    ValueError: ``num`` negative.
  """
  if num is None or num >= total:
    return list(range(total))
  if num < 0:
    raise ValueError(f"num must be >= 0 or None, got {num}")
  order = np.random.default_rng(seed).permutation(total)
  return sorted(int(i) for i in order[:num])
