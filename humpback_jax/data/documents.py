"""Whole-document corpus for [BF] (Nguyen et al. 2024, §2 step 1): the context-limit cut.

[BF] backtranslates whole cleaned documents and drops "documents near the context limit"
(~25% of its Dolma pool) rather than truncating them. Documents come from
``web.build_segments`` with ``WebConfig(unit="documents")``; this module drops those whose
backward prompt would not fit the backward model's prompt budget, counting every one.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Sequence


def _nearest_rank(sorted_values: Sequence[int], q: float) -> int | None:
  """The ``q``-quantile (0 < q <= 1) by the nearest-rank rule: the smallest value with at least
  ``q`` of the values at or below it (an observed value); ``None`` when there is none."""
  if not sorted_values:
    return None
  return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def drop_over_context(records: Iterable[dict], tokenizer: Any, *, max_prompt_tokens: int,
                      render: Callable[[str], str]) -> tuple[list[dict], dict]:
  """Drops the documents whose rendered backward prompt exceeds the prompt budget ([BF] §2).

  A document is kept iff ``len(tokenizer.encode(render(record["text"]))) <= max_prompt_tokens``
  (the token count follows the tokenizer's own BOS default, as the sampler encodes prompts);
  the others are dropped whole, never truncated ([BF] dropped the ~25% of documents near the
  context limit). Pass as ``max_prompt_tokens`` the prompt budget the backward model will
  sample with (its context minus the tokens reserved for the generated instruction), so that
  no kept prompt is truncated by the sampler.

  Args:
    records: documents (``web.build_segments`` records with ``WebConfig(unit="documents")``,
      or any dicts with a ``"text"``), in order; not modified.
    tokenizer: anything with ``encode(text) -> list[int]``.
    max_prompt_tokens: the prompt budget, tokens (>= 1).
    render: the backward prompt of a response text (e.g. [BF]'s Llama-2 chat prompt); must
      return a ``str``.

  Returns:
    ``(kept, stats)``: the kept records (the same dict objects, in order) and
    ``{"documents": n, "kept": k, "dropped_over_context": n - k, "share_dropped": (n - k) / n
    (0.0 when n = 0), "max_prompt_tokens", "prompt_tokens": {"p50", "p90", "max"}}``, where
    ``prompt_tokens`` is the distribution of the rendered prompts' token counts over all ``n``
    documents (nearest-rank percentiles, so observed values; ``None`` when n = 0).

  Raises:
    ValueError: ``max_prompt_tokens < 1``.
    KeyError: a record has no ``"text"`` (names its position and id).
    TypeError: ``render`` returned something other than a ``str``.
  """
  if max_prompt_tokens < 1:
    raise ValueError(f"max_prompt_tokens must be >= 1, got {max_prompt_tokens}")
  kept: list[dict] = []
  counts: list[int] = []
  for i, record in enumerate(records):
    if "text" not in record:
      raise KeyError(f"document {i} (id {record.get('id')!r}) has no 'text'")
    prompt = render(record["text"])
    if not isinstance(prompt, str):
      raise TypeError(f"render must return a str, got {type(prompt).__name__} for document "
                      f"{i} (id {record.get('id')!r})")
    n_tokens = len(tokenizer.encode(prompt))
    counts.append(n_tokens)
    if n_tokens <= max_prompt_tokens:
      kept.append(record)
  n, k = len(counts), len(kept)
  ordered = sorted(counts)
  stats = {
      "documents": n,
      "kept": k,
      "dropped_over_context": n - k,
      "share_dropped": (n - k) / n if n else 0.0,
      "max_prompt_tokens": max_prompt_tokens,
      "prompt_tokens": {"p50": _nearest_rank(ordered, 0.5), "p90": _nearest_rank(ordered, 0.9),
                        "max": ordered[-1] if ordered else None},
  }
  return kept, stats
