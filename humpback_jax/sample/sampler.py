"""Host side of batched generation and next-token scoring: strings in, strings out.

  ``Sampler``             tokenize, truncate, sort by length, bucket, batch, generate on the
                          device (``sample/decode.py``), decode, restore the caller's order.
  ``prompt_widths``       the fixed ladder of padded prompt widths (so of compiled shapes).
  ``record_keys``         per-record sampling keys from (global seed, record id).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from humpback_jax import hosts
from humpback_jax.data import templates
from humpback_jax.models.config import LlamaConfig
from humpback_jax.sample.decode import (  # re-exported: the public API of this module
    SampleOutput, SamplingState, _round_up, generate, next_token_logprobs)
from humpback_jax.sample.sampling import Greedy, Sampling, Strategy

__all__ = [
    "BUCKET_RULES", "ContextLengthError", "Greedy", "PromptTooLongError", "Sampling",
    "SampleOutput", "SamplingState", "Sampler", "check_context_length", "generate",
    "next_token_logprobs", "prompt_widths", "record_keys",
]

BUCKET_RULES = ("pow2", "pow2_mid", "linear")
BATCHINGS = ("bucketed", "continuous")

Params = Any

_log = logging.getLogger(__name__)


class Tokenizer(Protocol):
  """The tokenizer interface the host ``Sampler`` needs."""

  eos_id: int
  pad_id: int
  bos_id: int | None

  def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
    ...

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
    ...


def record_key_words(record_id: str | int) -> np.ndarray:
  """Two uint32 words of BLAKE2b-64 of ``str(record_id)`` (UTF-8): a stable, process- and
  platform-independent integer identity of a record (Python's ``hash`` is salted per process).

  Returns:
    uint32 [2].
  """
  digest = hashlib.blake2b(str(record_id).encode("utf-8"), digest_size=8).digest()
  return np.frombuffer(digest, dtype="<u4").astype(np.uint32)


@jax.jit
def _fold_words(base: jax.Array, words: jax.Array) -> jax.Array:
  return jax.vmap(lambda w: jax.random.fold_in(jax.random.fold_in(base, w[0]), w[1]))(words)


def record_keys(seed: int, record_ids: Sequence[str | int]) -> jax.Array:
  """Per-record sampling keys derived from the global seed and each record's id only.

  Key of record r = ``fold_in(fold_in(PRNGKey(seed), w0), w1)`` with ``(w0, w1) =
  record_key_words(r)``. It depends on nothing else (not the batch, the chunk, the batch size,
  what was already done before a restart, or the process), so a resumed, rebatched or
  host-split run draws the same random numbers for every record.

  Args:
    seed: the run's global seed.
    record_ids: N record ids (strings or ints; ``7`` and ``"7"`` give the same key).
  Returns:
    uint32 [N, 2] raw PRNG keys.
  """
  words = np.stack([record_key_words(r) for r in record_ids]) if len(record_ids) else \
      np.zeros((0, 2), np.uint32)
  return _fold_words(jax.random.PRNGKey(seed), jnp.asarray(words))


@dataclasses.dataclass(frozen=True)
class _Batch:
  index: int                # batch number in sorted order
  rows: np.ndarray          # int64 [n] original prompt indices of the real rows
  tokens: np.ndarray        # int32 [B, P] left-padded
  lengths: np.ndarray       # int32 [B]; 0 on filler rows



def prompt_widths(max_prompt_len: int, bucket: int = 64, rule: str = "pow2") -> list[int]:
  """The padded prompt widths a ``Sampler`` uses, ascending; a batch is padded to the smallest
  one that holds its longest prompt, so a run compiles at most ``len(...)`` prompt shapes per
  (batch size, generation budget, strategy).

  Rules (``bucket`` = b, ``max_prompt_len`` = M):
    "pow2":     b, 2b, 4b, 8b, ... below M, then M (at most 2x padding; log2(M / b) + 1
                widths: 5 for b=64, M=1024).
    "pow2_mid": the same plus the midpoints 1.5b, 3b, 6b, ... (at most 1.5x padding, about
                twice the widths).
    "linear":   b, 2b, 3b, ... up to the first multiple of b >= M (the rule before issue 9:
                M / b widths).

  Raises:
    ValueError: unknown rule or non-positive sizes.
  """
  if rule not in BUCKET_RULES:
    raise ValueError(f"bucket rule {rule!r}: expected one of {list(BUCKET_RULES)}")
  if max_prompt_len < 1 or bucket < 1:
    raise ValueError(f"need positive sizes: max_prompt_len={max_prompt_len}, bucket={bucket}")
  if rule == "linear":
    return list(range(bucket, _round_up(max_prompt_len, bucket) + 1, bucket))
  widths, w = set(), bucket
  while w < max_prompt_len:
    widths.add(w)
    if rule == "pow2_mid" and w % 2 == 0 and w + w // 2 < max_prompt_len:
      widths.add(w + w // 2)
    w *= 2
  widths.add(max_prompt_len)
  return sorted(widths)


def one_ahead(batches, dispatch, collect) -> None:
  """Runs ``collect(*dispatch(batch))`` for every batch with one batch in flight ahead:
  batch i+1 is dispatched to the device (JAX's asynchronous dispatch) before batch i is
  fetched and post-processed on the host, so host work overlaps device work."""
  pending = None
  for batch in batches:
    started = dispatch(batch)
    if pending is not None:
      collect(*pending)
    pending = started
  if pending is not None:
    collect(*pending)


def candidate_array(candidate_token_ids, n: int) -> np.ndarray:
  """int32 [n, K]: candidate ids given as [K] (the same for every prompt) or [n, K].

  Raises:
    ValueError: another shape, or K = 0.
  """
  cand = np.asarray(candidate_token_ids, np.int32)
  if cand.ndim == 1:
    cand = np.broadcast_to(cand, (n, cand.size))
  if cand.ndim != 2 or cand.shape[0] != n or cand.shape[1] == 0:
    raise ValueError(f"candidate_token_ids must be [K] or [N={n}, K] with K >= 1, "
                     f"got shape {np.shape(candidate_token_ids)}")
  return cand


class ContextLengthError(ValueError):
  """A prompt budget plus a generation budget exceeds the model's context length."""


class PromptTooLongError(ValueError):
  """A prompt is longer than the budget and the overflow policy is "error"."""


def check_context_length(config: LlamaConfig, max_prompt_len: int, max_new_tokens: int = 0,
                         owner: str = "Sampler") -> None:
  """Refuses budgets the model was not trained for (RoPE would silently extrapolate).

  Args:
    config: the model; ``config.max_seq_len`` is its context length (tokens).
    max_prompt_len: prompt budget (tokens).
    max_new_tokens: generation budget (tokens); 0 for next-token scoring.
    owner: the config class whose fields these are, named in the error (e.g.
      "CurationConfig").
  Raises:
    ContextLengthError: ``max_prompt_len + max_new_tokens > config.max_seq_len``; the message
      names the three values.
  """
  if max_prompt_len + max_new_tokens > config.max_seq_len:
    raise ContextLengthError(
        f"{owner}.max_prompt_len={max_prompt_len} + max_new_tokens={max_new_tokens} = "
        f"{max_prompt_len + max_new_tokens} tokens exceeds the model's context length "
        f"LlamaConfig.max_seq_len={config.max_seq_len}; lower {owner}.max_prompt_len "
        f"(longer prompts are then middle-truncated and counted) or max_new_tokens")


class Sampler:
  """Host-side batched text generation and next-token scoring.

  Prompts are tokenized, truncated to ``max_prompt_len`` tokens if needed, sorted by length
  (longest first, so similar lengths share a batch and the biggest shape compiles first),
  batched ``batch_size`` rows at a time with inert filler rows in the last batch, each batch
  left-padded to the smallest width of the fixed ladder ``prompt_widths(max_prompt_len,
  bucket, bucket_rule)`` that holds its longest prompt (default: powers of two times
  ``bucket``, then ``max_prompt_len``: at most 5 prompt shapes for 64..1024, so a stage
  compiles a handful of executables whatever its prompts), and the results are returned in
  the caller's order. ``generate_texts`` dispatches batch i+1 to the device before it fetches
  and detokenizes batch i (JAX's asynchronous dispatch), so detokenization overlaps the
  device work.

  Truncation is a last resort that the caller should avoid by building prompts that fit:
  with ``prompt_overflow="truncate"`` it cuts the MIDDLE of the prompt (``templates.fit_prompt``:
  the head with BOS and the task, and the tail with the generation cue survive) and counts it
  in ``stats["truncated_prompts"]``; with ``prompt_overflow="error"`` it raises
  ``PromptTooLongError``. ``max_prompt_len + max_new_tokens`` may never exceed the model's
  context length (``check_context_length``).

  Determinism: prompt i samples with its own key ``record_keys(seed, [keys[i]])`` (``keys``
  defaults to the prompt's position in the call), so its draws do not depend on the batch
  size, its batch-mates or the order of the call. Its logits can still differ in the last bits
  with its batch's padded width (reduction order), so callers that need byte-identical reruns
  (the resumable stages) also keep the composition of each call fixed (``chunks``).

  Attributes:
    stats: running counters: "prompts", "truncated_prompts", "batches", "generated_tokens"
      (including EOS), "unfinished" (rows cut by the budget before an EOS), "prompt_tokens"
      (real prompt tokens of the batches run) and "prompt_slots" (batch_size x padded width,
      summed: prompt_tokens / prompt_slots is the padding efficiency), "prompt_widths_used"
      (distinct padded widths so far), "decode_steps" (lockstep decode steps run: each moves
      every row of a batch by one token).
    prompt_widths: the ladder of padded widths (``prompt_widths``).
  """

  def __init__(self, config: LlamaConfig, tokenizer: Tokenizer, *, max_prompt_len: int,
               batch_size: int, bucket: int = 64, mesh: jax.sharding.Mesh | None = None,
               rules: tuple | None = None, prompt_overflow: str = "truncate",
               owner: str = "Sampler", bucket_rule: str = "pow2", cache_dtype=None,
               layer_loop: str | None = None, batching: str = "bucketed",
               refill_rows: int | None = None):
    """Constructor.

    Args:
      config: model configuration.
      tokenizer: see ``Tokenizer``.
      max_prompt_len: longest prompt kept (tokens); longer ones lose their middle.
      batch_size: rows per device call (fixed; the last batch is filled).
      bucket: the smallest padded prompt width and the step of the width ladder (tokens;
        ``prompt_widths``).
      mesh: a ``("data", "fsdp", "tensor")`` mesh (``sharding.make_mesh``; a mesh with a
        subset of these axes works too). Batches are sharded by ``rules``' ``batch`` entry
        (rows over data x fsdp), activations and the KV cache by their ``activation_*`` and
        ``cache_*`` entries (heads over tensor). Parameters should already be placed on the
        mesh (``place_params``); host arrays work but are uploaded at every call.
      rules: logical axis rules (default ``sharding.DEFAULT_LOGICAL_AXIS_RULES``).
      prompt_overflow: "truncate" (cut the middle, count it) or "error" for a prompt longer
        than ``max_prompt_len``.
      owner: the config class the budgets come from, named in errors.
      bucket_rule: "pow2" (default), "pow2_mid" or "linear" (``prompt_widths``).
      cache_dtype: KV cache dtype of ``generate`` (None: the compute dtype; e.g.
        ``jnp.bfloat16`` halves the cache of a float32 model).
      layer_loop: ``generate``'s decode layer loop, "unrolled" or "scan" (None: its default,
        ``decode.default_layer_loop``).
      batching: how ``generate_texts`` batches: "bucketed" (sorted batches, each run until its
        longest row ends) or "continuous" (``sample/continuous.py``: finished rows are refilled
        from the queue; same tokens; one device only, so not with a ``mesh``).
      refill_rows: prompts prefilled per refill with continuous batching (None:
        ``batch_size // 4``).
    Raises:
      ValueError: on non-positive sizes, an unknown ``prompt_overflow`` or ``bucket_rule``, or
        batch_size not divisible by the number of batch shards.
      ContextLengthError: ``max_prompt_len`` alone exceeds ``config.max_seq_len``.
    """
    from humpback_jax import sharding as shd
    if max_prompt_len < 1 or batch_size < 1 or bucket < 1:
      raise ValueError(f"need positive sizes: max_prompt_len={max_prompt_len}, "
                       f"batch_size={batch_size}, bucket={bucket}")
    if batching not in BATCHINGS:
      raise ValueError(f"{owner}: batching={batching!r}: expected one of {list(BATCHINGS)}")
    if batching == "continuous" and mesh is not None and mesh.size > 1:
      raise ValueError(f"{owner}: batching='continuous' runs on one device; this mesh has "
                       f"{mesh.size} (use 'bucketed')")
    if bucket_rule not in BUCKET_RULES:
      raise ValueError(f"{owner}: bucket_rule={bucket_rule!r}: expected one of "
                       f"{list(BUCKET_RULES)}")
    if prompt_overflow not in ("truncate", "error"):
      raise ValueError(f"{owner}.prompt_overflow={prompt_overflow!r}: expected 'truncate' or "
                       "'error'")
    check_context_length(config, max_prompt_len, 0, owner)
    self.prompt_overflow = prompt_overflow
    self.owner = owner
    self.config = config
    self.tokenizer = tokenizer
    self.max_prompt_len = max_prompt_len
    self.batch_size = batch_size
    self.bucket = bucket
    self.bucket_rule = bucket_rule
    self.prompt_widths = prompt_widths(max_prompt_len, bucket, bucket_rule)
    self.cache_dtype = cache_dtype
    self.layer_loop = layer_loop
    self.batching = batching
    self.refill_rows = refill_rows
    self._widths_used: set[int] = set()
    self.mesh = mesh
    self.activation_sharding = None
    self._rows = None  # mesh axes of the batch dimension
    if mesh is not None:
      rules = tuple(shd.DEFAULT_LOGICAL_AXIS_RULES if rules is None else rules)
      known = set(mesh.axis_names)
      rules = tuple((name, _keep_axes(axes, known)) for name, axes in rules)
      self._rows = shd.logical_to_mesh_spec(("batch",), rules, mesh=mesh)[0]
      shards = shd.batch_parallel_size(mesh) if {"data", "fsdp"} <= known else int(
          np.prod([mesh.shape[a] for a in _axes_tuple(self._rows)]))
      if batch_size % shards:
        raise ValueError(f"{owner}.batch_size={batch_size} is not divisible by the {shards} "
                         f"batch shards of the mesh {dict(mesh.shape)}")
      self.activation_sharding = shd.ActivationSharding(mesh, rules)
    self.stats: dict[str, int] = {"prompts": 0, "truncated_prompts": 0, "batches": 0,
                                  "generated_tokens": 0, "unfinished": 0, "prompt_tokens": 0,
                                  "prompt_slots": 0, "prompt_widths_used": 0,
                                  "decode_steps": 0}

  def encode_prompts(self, prompts: Sequence[str | Sequence[int]]) -> list[list[int]]:
    """Tokenizes (strings; token id lists pass through) and, as a last resort, cuts the
    middle of a too-long prompt (``templates.fit_prompt``, as in training); counts
    truncations in ``stats``.

    Raises:
      PromptTooLongError: a prompt is too long and ``prompt_overflow="error"``.
    """
    out, truncated = [], 0
    for n, text in enumerate(prompts):
      ids = list(self.tokenizer.encode(text)) if isinstance(text, str) else [int(t) for t in text]
      if len(ids) > self.max_prompt_len:
        if self.prompt_overflow == "error":
          raise PromptTooLongError(
              f"prompt {n} has {len(ids)} tokens > {self.owner}.max_prompt_len="
              f"{self.max_prompt_len} (set {self.owner}.prompt_overflow='truncate' to cut its "
              "middle)")
        truncated += 1
        ids = templates.fit_prompt(ids, self.max_prompt_len)
      out.append(ids)
    if truncated:
      _log.warning("Sampler: middle-truncated %d of %d prompts to %d tokens", truncated,
                   len(prompts), self.max_prompt_len)
    self.stats["prompts"] += len(prompts)
    self.stats["truncated_prompts"] += truncated
    return out

  def prompt_width(self, length: int) -> int:
    """The padded width of a batch whose longest prompt has ``length`` tokens: the smallest
    ladder width >= length (a length beyond the ladder, possible only for prompts that were
    not encoded by this Sampler, is rounded up to a multiple of ``bucket``)."""
    length = max(1, length)
    for w in self.prompt_widths:
      if w >= length:
        return w
    return _round_up(length, self.bucket)

  def _batches(self, ids: list[list[int]]) -> list[_Batch]:
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # stable: ties keep order
    pad = self.tokenizer.pad_id
    batches = []
    for n, start in enumerate(range(0, len(order), self.batch_size)):
      rows = np.asarray(order[start:start + self.batch_size], np.int64)
      width = self.prompt_width(max(len(ids[i]) for i in rows))
      tokens = np.full((self.batch_size, width), pad, np.int32)
      lengths = np.zeros((self.batch_size,), np.int32)
      for r, i in enumerate(rows):
        if ids[i]:
          tokens[r, width - len(ids[i]):] = ids[i]
        lengths[r] = len(ids[i])
      batches.append(_Batch(n, rows, tokens, lengths))
    return batches

  def _count_batch(self, batch: _Batch) -> None:
    width = batch.tokens.shape[1]
    self._widths_used.add(width)
    self.stats["batches"] += 1
    self.stats["prompt_tokens"] += int(batch.lengths.sum())
    self.stats["prompt_slots"] += int(batch.tokens.size)
    self.stats["prompt_widths_used"] = len(self._widths_used)

  def _put(self, x: np.ndarray) -> jax.Array:
    """A host batch array (rows first) onto the device(s): rows split over the batch axes."""
    if self.mesh is None:
      return jnp.asarray(x)
    spec = jax.sharding.PartitionSpec(self._rows, *([None] * (np.ndim(x) - 1)))
    return hosts.put_global(x, jax.sharding.NamedSharding(self.mesh, spec))

  def place_params(self, params: Params) -> Params:
    """Puts ``params`` onto the mesh with their logical shardings (``sharding.param_shardings``)
    once, so that no call re-uploads the model; without a mesh, onto the default device."""
    if self.mesh is None:
      return jax.device_put(params)
    from humpback_jax import sharding as shd
    return jax.device_put(params, shd.param_shardings(
        self.config, self.mesh, self.activation_sharding.rules))

  def generate_texts(self, params: Params, prompts: Sequence[str], *, max_new_tokens: int,
                     strategy: Strategy, seed: int, keys: Sequence[str | int] | None = None,
                     progress: bool = False,
                     return_finished: bool = False) -> list[str] | tuple[list[str], list[bool]]:
    """Generates one continuation per prompt.

    Args:
      params: model parameters (placed/sharded by the caller).
      prompts: N prompt strings (already templated).
      max_new_tokens: budget per prompt (tokens).
      strategy: ``Greedy()`` or ``Sampling(...)``.
      seed: the global seed.
      keys: N record ids; prompt i samples with ``record_keys(seed, [keys[i]])`` (default:
        its position ``i`` in this call).
      progress: show a tqdm bar over batches.
      return_finished: also return, per prompt, whether it ended with an EOS (False = cut by
        the budget, i.e. probably an incomplete text).
    Returns:
      N decoded texts (EOS and everything after it excluded) in the order of ``prompts``;
      with ``return_finished``, a pair (texts, finished flags).
    Raises:
      ContextLengthError: ``max_prompt_len + max_new_tokens`` exceeds the model's context.
    """
    check_context_length(self.config, self.max_prompt_len, max_new_tokens, self.owner)
    texts: list[str] = [""] * len(prompts)
    finished: list[bool] = [False] * len(prompts)
    if keys is None:
      keys = range(len(prompts))
    if len(keys) != len(prompts):
      raise ValueError(f"got {len(keys)} keys for {len(prompts)} prompts")
    ids = self.encode_prompts(prompts)
    row_keys = np.asarray(record_keys(seed, list(keys)))
    if self.batching == "continuous":
      from humpback_jax.sample.continuous import generate_continuous
      tokens, finished, run = generate_continuous(
          params, ids, row_keys, config=self.config, batch_size=self.batch_size,
          max_new_tokens=max_new_tokens, eos_ids=(self.tokenizer.eos_id,), strategy=strategy,
          pad_id=self.tokenizer.pad_id, widths=self.prompt_widths,
          refill_rows=self.refill_rows, cache_dtype=self.cache_dtype,
          layer_loop=self.layer_loop)
      texts = [self.tokenizer.decode(t, skip_special_tokens=True) for t in tokens]
      self.stats["batches"] += run["inserts"]
      self.stats["generated_tokens"] += run["generated_tokens"]
      self.stats["unfinished"] += sum(1 for i, f in enumerate(finished) if ids[i] and not f)
      self.stats["decode_steps"] += run["decode_steps"]
      return (texts, finished) if return_finished else texts
    batches = self._batches(ids)

    def dispatch(batch: _Batch):
      """Starts the batch on the device; returns without waiting (async dispatch)."""
      batch_keys = np.zeros((self.batch_size, 2), np.uint32)
      batch_keys[:len(batch.rows)] = row_keys[batch.rows]
      out = generate(params, self._put(batch.tokens), self._put(batch.lengths),
                     config=self.config, max_new_tokens=max_new_tokens,
                     eos_ids=(self.tokenizer.eos_id,), strategy=strategy,
                     rng=self._put(batch_keys),
                     pad_id=self.tokenizer.pad_id, sharding=self.activation_sharding,
                     cache_dtype=self.cache_dtype, layer_loop=self.layer_loop)
      return batch, out

    def collect(batch: _Batch, out: SampleOutput) -> None:
      """Waits for the batch, decodes its texts into place."""
      tokens, lengths, done, steps = hosts.fetch((out.tokens, out.lengths, out.finished,
                                                  out.steps))
      self.stats["decode_steps"] += int(steps)
      for r, i in enumerate(batch.rows):
        n = int(lengths[r]) - int(done[r])
        texts[i] = self.tokenizer.decode(tokens[r, :n].tolist(), skip_special_tokens=True)
        finished[i] = bool(done[r])
      real = slice(0, len(batch.rows))
      self._count_batch(batch)
      self.stats["generated_tokens"] += int(lengths[real].sum())
      self.stats["unfinished"] += int((~done[real]).sum())

    # (Each batch's KV cache lives inside its program, so two batches in flight do not hold
    # two caches.)
    one_ahead(_maybe_tqdm(batches, progress, "generate"), dispatch, collect)
    return (texts, finished) if return_finished else texts

  def next_token_probs(self, params: Params, prompts: Sequence[str | Sequence[int]],
                       candidate_token_ids: Sequence[int] | np.ndarray, *,
                       progress: bool = False) -> np.ndarray:
    """Probabilities of K candidate next tokens, NOT renormalized (one forward pass a row).

    Args, raises: as ``candidate_logprobs``.
    Returns:
      float32 [N, K]: P(candidate | prompt) under the full softmax; row sums are the mass the
      model puts on the candidates.
    """
    return np.exp(self.candidate_logprobs(params, prompts, candidate_token_ids,
                                          progress=progress))

  def candidate_logprobs(self, params: Params, prompts: Sequence[str | Sequence[int]],
                         candidate_token_ids: Sequence[int] | np.ndarray, *,
                         progress: bool = False) -> np.ndarray:
    """Log-probabilities of K candidate next tokens (one forward pass a row).

    Args:
      params: model parameters.
      prompts: N prompts (strings, or token id lists already encoded), each ending where the
        candidate token would follow.
      candidate_token_ids: int [K] ids shared by every row, or int [N, K] ids per row.
      progress: show a tqdm bar over batches.
    Returns:
      float32 [N, K]: log P(candidate | prompt) under the full softmax (computed in float32),
      in the order of ``prompts``.
    Raises:
      ValueError: no candidates, or a candidate array of the wrong shape.
    """
    cand = candidate_array(candidate_token_ids, len(prompts))
    out = np.zeros(cand.shape, np.float32)

    def dispatch(batch: _Batch):
      logp = next_token_logprobs(params, self._put(batch.tokens), self._put(batch.lengths),
                                 config=self.config, sharding=self.activation_sharding)
      rows_cand = np.zeros((self.batch_size, cand.shape[1]), np.int32)
      rows_cand[:len(batch.rows)] = cand[batch.rows]
      return batch, jnp.take_along_axis(logp, self._put(rows_cand), axis=-1)

    def collect(batch: _Batch, lp: jax.Array) -> None:
      out[batch.rows] = np.asarray(hosts.fetch(lp), np.float32)[:len(batch.rows)]
      self._count_batch(batch)

    one_ahead(_maybe_tqdm(self._batches(self.encode_prompts(prompts)), progress, "score"),
              dispatch, collect)
    return out

  def score_next_token(self, params: Params, prompts: Sequence[str | Sequence[int]],
                       candidate_token_ids: Sequence[int] | np.ndarray, *,
                       progress: bool = False) -> np.ndarray:
    """``next_token_probs`` renormalized over the K candidates (rows sum to 1).

    Returns:
      float32 [N, K].
    """
    lp = self.candidate_logprobs(params, prompts, candidate_token_ids, progress=progress)
    return np.asarray(jax.nn.softmax(lp, axis=-1), np.float32)


def _axes_tuple(axes) -> tuple:
  return () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))


def _keep_axes(axes, known: set):
  """A rule's mesh axes restricted to those the mesh has (a 1-axis ``("data",)`` mesh drops
  ``fsdp``/``tensor``)."""
  kept = tuple(a for a in _axes_tuple(axes) if a in known)
  return None if not kept else (kept[0] if len(kept) == 1 else kept)


def _maybe_tqdm(items, progress: bool, desc: str):
  if not progress:
    return items
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(items, desc=desc, unit="batch")
