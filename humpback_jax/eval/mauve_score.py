"""MAUVE between two sets of texts, on features from the run's own model ([BF] §4).

[BF] §4 measures how far apart data sets are with MAUVE (Pillutla et al. 2021): texts are
embedded (GPT-2 features in the paper: the last layer's hidden state at the last token), the
union of embeddings is quantized with k-means, and MAUVE is the area under the divergence
curve between the two cluster histograms (1 = same distribution, near 0 = disjoint). [BF]
reports, on 10K-sample sets: distilled vs distilled 0.960, distilled vs rewritten 0.340,
distilled vs raw web 0.034.

Offline there is no GPT-2, so the features here come from OUR model (any ``Llama`` checkpoint
of the run): ``hidden_state_features`` takes the final hidden state (after the final RMSNorm,
before the LM head) at each text's last token, the same read-out as MAUVE's GPT-2 featurizer.
Absolute MAUVE values therefore differ from the paper's; comparisons between pairs of sets
under one featurizer are what carry over. ``mauve_between`` runs ``mauve.compute_mauve`` on
precomputed features (the ``mauve-text`` package; k-means with faiss).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import numpy as np

from humpback_jax import hosts


@functools.lru_cache(maxsize=8)
def _last_hidden_fn(config):
  """A jitted ``(params, tokens, segment_ids, lengths) -> float32 [B, D]``: the final hidden
  state at column ``lengths - 1`` of each right-padded row."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from humpback_jax.models.llama import Llama  # pylint: disable=g-import-not-at-top

  model = Llama(config)

  def fn(params, tokens, segment_ids, lengths):
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
    hidden, _ = model.apply(params, tokens, positions, segment_ids, return_hidden=True)
    last = jnp.take_along_axis(hidden, (lengths - 1)[:, None, None], axis=1)[:, 0]
    return last.astype(jnp.float32)

  return jax.jit(fn)


def _bucket(n: int, max_len: int) -> int:
  """Padded width for a batch whose longest text has ``n`` tokens: the next power of two
  (at least 8), capped at ``max_len``; few widths, few compilations."""
  width = 8
  while width < n:
    width *= 2
  return min(width, max_len)


def hidden_state_features(params: Any, config: Any, tokenizer: Any, texts: Sequence[str], *,
                          max_len: int = 256, batch_size: int = 8) -> np.ndarray:
  """The model's final hidden state (after the final RMSNorm) at each text's last token.

  Each text is ``tokenizer.encode(text)`` (the tokenizer's default BOS handling), truncated to
  its first ``max_len`` tokens (MAUVE's GPT-2 featurizer truncates the same way, at 1,024).
  Batches of ``batch_size`` rows are right-padded to a power-of-two width (at most
  ``max_len``) with segment id 0 on the padding: a causal model's token never sees later
  columns and the segment ids keep padding out of every attention, so a text's feature does not
  depend on its batch-mates or the padding. A short last batch is filled with one-token rows
  that are dropped.

  Args:
    params: ``{"params": ...}`` of a ``Llama`` (plain arrays; ``models.llama.init_params`` or a
      loaded checkpoint).
    config: its ``LlamaConfig`` (hashable; one compiled function per config and width).
    tokenizer: ``encode(text) -> list[int]`` (``humpback_jax.tokenizers``).
    texts: the texts.
    max_len: tokens kept per text (the first ones).
    batch_size: rows per forward pass.

  Returns:
    float32 numpy [N, D] (N = ``len(texts)``, D = ``config.hidden_size``); [0, D] for no
    texts.

  Raises:
    ValueError: ``max_len`` or ``batch_size`` < 1, or a text encodes to no tokens (names its
      index; drop empty texts first).
  """
  if max_len < 1 or batch_size < 1:
    raise ValueError(f"max_len and batch_size must be >= 1, got {max_len}, {batch_size}")
  ids = []
  for i, t in enumerate(texts):
    toks = list(tokenizer.encode(t))[:max_len]
    if not toks:
      raise ValueError(f"text {i} encodes to no tokens ({t[:40]!r}); drop empty texts first")
    ids.append(toks)
  dim = config.hidden_size
  if not ids:
    return np.zeros((0, dim), np.float32)
  fn = _last_hidden_fn(config)
  out = []
  for start in range(0, len(ids), batch_size):
    chunk = ids[start:start + batch_size]
    width = _bucket(max(len(x) for x in chunk), max_len)
    tokens = np.zeros((batch_size, width), np.int32)
    segments = np.zeros((batch_size, width), np.int32)
    lengths = np.ones((batch_size,), np.int32)
    segments[:, 0] = 1  # filler rows: one token, dropped below
    for r, x in enumerate(chunk):
      tokens[r, :len(x)] = x
      segments[r, :len(x)] = 1
      lengths[r] = len(x)
    feats = hosts.fetch(fn(params, tokens, segments, lengths))
    out.append(np.asarray(feats, np.float32)[:len(chunk)])
  return np.concatenate(out, axis=0)


def make_featurizer(params: Any, config: Any, tokenizer: Any, *, max_len: int = 256,
                    batch_size: int = 8,
                    name: str = "llama_final_hidden") -> Callable[[Sequence[str]], np.ndarray]:
  """``texts -> float32 [N, D]`` by ``hidden_state_features`` with these arguments bound, for
  ``mauve_between`` and ``run_analyses.analyze_run(mauve_features=...)``; its ``__name__`` is
  ``name`` (reported as ``featurizer``)."""

  def featurize(texts: Sequence[str]) -> np.ndarray:
    return hidden_state_features(params, config, tokenizer, texts, max_len=max_len,
                                 batch_size=batch_size)

  featurize.__name__ = name
  return featurize


def _features(featurize, texts, side: str) -> np.ndarray:
  if not len(texts):
    raise ValueError(f"{side}_texts is empty")
  f = np.asarray(featurize(texts), dtype=np.float32)
  if f.ndim != 2 or f.shape[0] != len(texts):
    raise ValueError(f"featurize returned shape {f.shape} for {len(texts)} {side} texts; "
                     "expected [N, D]")
  if not np.all(np.isfinite(f)):
    raise ValueError(f"featurize returned non-finite {side} features")
  return f


def mauve_between(p_texts: Sequence[str], q_texts: Sequence[str],
                  featurize: Callable[[Sequence[str]], np.ndarray], *, seed: int = 0,
                  num_buckets: int | str = "auto",
                  kmeans_explained_var: float = 0.9) -> dict:
  """MAUVE between two sets of texts on the features ``featurize`` gives ([BF] §4).

  Calls ``mauve.compute_mauve(p_features=..., q_features=...)`` with the package's defaults
  otherwise (scaling factor c = 5, 25-point divergence curve, k-means 5 restarts of up to 500
  iterations, features l2-normalized then PCA keeping ``kmeans_explained_var`` of the
  variance). ``num_buckets="auto"`` = max(2, round(min(n_p, n_q) / 10)) clusters, the
  package's rule; use sets of a few hundred texts or more for a stable value ([BF]: 10K).

  Args:
    p_texts, q_texts: the two sets (non-empty).
    featurize: texts -> float32 [N, D] (``make_featurizer``; or any embedding).
    seed: k-means seed.
    num_buckets: clusters, or "auto".
    kmeans_explained_var: PCA variance kept before k-means (0-1].

  Returns:
    ``{"mauve": float in [0, 1], "frontier_integral": float (lower = closer), "num_buckets":
    int, "n_p", "n_q": texts, "feature_dim": D, "featurizer": featurize's ``__name__``}``.

  Raises:
    ValueError: an empty set; features not [N, D] with one row per text, not finite, or of
      different D for p and q.
  """
  import mauve  # pylint: disable=g-import-not-at-top  (imports faiss, sklearn)
  p = _features(featurize, p_texts, "p")
  q = _features(featurize, q_texts, "q")
  if p.shape[1] != q.shape[1]:
    raise ValueError(f"p and q features differ in dimension: {p.shape[1]} vs {q.shape[1]}")
  res = mauve.compute_mauve(p_features=p, q_features=q, num_buckets=num_buckets,
                            kmeans_explained_var=kmeans_explained_var, seed=seed,
                            verbose=False)
  return {"mauve": float(res.mauve), "frontier_integral": float(res.frontier_integral),
          "num_buckets": int(res.num_buckets), "n_p": int(p.shape[0]), "n_q": int(q.shape[0]),
          "feature_dim": int(p.shape[1]),
          "featurizer": getattr(featurize, "__name__", type(featurize).__name__)}
