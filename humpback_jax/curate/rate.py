"""Rating a whole dataset, resumably: the shared loop of the curate stages and ``humpback-jax
score``.

Pairs are rated ``chunk_size`` at a time; each finished chunk is appended to a partial JSONL
file before the next starts, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import os
from typing import Sequence

from humpback_jax import jsonl
from humpback_jax.curate import CurationConfig, score_candidates


def read_pairs(path: str | os.PathLike) -> list[dict]:
  """Reads a JSONL of ``{"instruction", "response"}`` pairs (optional ``id``).

  A record without ``id`` gets its 1-based line number as id (a string).

  Returns:
    The records, each with a string ``id``.
  Raises:
    FileNotFoundError: no such file.
    jsonl.JsonlError: a line is not a JSON object; a record lacks a non-empty string
      ``instruction`` or ``response``; two records share an id. The message names the file
      and line.
  """
  pairs, seen = [], {}
  for lineno, record in jsonl.iter_jsonl_numbered(path):
    for key in ("instruction", "response"):
      if not isinstance(record.get(key), str) or not record[key].strip():
        raise jsonl.JsonlError(f"{path}:{lineno}: field {key!r} must be a non-empty string, got "
                               f"{type(record.get(key)).__name__}")
    rid = str(record.get("id", lineno))
    if rid in seen:
      raise jsonl.JsonlError(f"{path}:{lineno}: id {rid!r} already used on line {seen[rid]}")
    seen[rid] = lineno
    pairs.append(dict(record, id=rid))
  return pairs


def rate_pairs(pairs: Sequence[dict], *, sampler, params, tokenizer, cfg: CurationConfig,
               seed: int, partial_path: str | os.PathLike, progress: bool = False,
               desc: str = "rate") -> list[dict]:
  """Rates every pair (``curate.score_candidates``), resuming from ``partial_path``.

  Args:
    pairs: ``{"id", "instruction", "response"}`` dicts with unique ids.
    sampler, params, tokenizer: the rating model.
    cfg: curation config (mode, budgets, ``chunk_size``).
    seed: sampling seed; pair p samples with ``sampler.record_keys(seed, [p["id"]])``, and
      pairs are rated in fixed chunks of ``cfg.chunk_size`` (``jsonl.pending_chunks``), so a
      resumed run writes exactly what an uninterrupted one would.
    partial_path: append-only file of finished records (kept for resume).
      With ``cfg.prefix_reuse`` the rating prompt's head is encoded once for all chunks (the
      sampler's ``sample.prefix.scorer_for`` keeps it while ``params`` is the same object).
    progress: tqdm bar over chunks.
    desc: the bar's label.
  Returns:
    One record per pair, in the order of ``pairs``.
  """
  return jsonl.resumable_map(
      pairs, lambda chunk: score_candidates(sampler, params, tokenizer, chunk, cfg, seed=seed),
      partial_path, cfg.chunk_size, progress=progress, desc=desc)
