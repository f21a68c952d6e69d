"""The request batching engine behind ``humpback-jax serve``: one worker thread owns the model.

``Engine.submit(GenerationRequest)`` queues a request and returns a
``concurrent.futures.Future`` of its ``GenerationResult``; the HTTP layer (``serve/app.py``)
awaits it.

Batching. The worker takes the first waiting request, then keeps collecting for
``batch_window_s`` (default 5 ms) or until ``batch_size`` requests are waiting. It groups them
by decoding settings (the ``Strategy`` and the generation budget below), sorts each group by
prompt length (longest first) and runs it ``batch_size`` rows at a time through
``decode.generate`` with the arguments and shapes ``Sampler.generate_texts`` uses (the
``Sampler``'s padded-width ladder, a fixed ``batch_size`` of rows with inert filler rows, the
tokenizer's EOS and pad), so a greedy request gets exactly the text
``Sampler.generate_texts(..., strategy=Greedy())`` gives for its prompt alone with the same
budget, whenever its batch has the same padded width (batch-mates with a longer prompt widen
it, which can change the last bits of its logits, as in the Sampler). Requests that arrive
while a batch runs wait for the next collection.

Budgets (``max_new_tokens`` is a static shape: each value compiles its own program). A group's
budget is the smallest entry of ``budget_ladder(max_tokens_cap)`` (16, 32, 64, ... below the
cap, then the cap) that holds its requests' ``max_tokens``; each row is then cut at its own
``max_tokens`` (finish "length" unless its EOS came within them). A row's tokens do not depend
on the budget (it samples step s with its own key folded with s); only the float rounding of
its attention over a longer, partly empty cache can differ in the last bits. ``budgets="exact"``
runs every request with its own ``max_tokens`` instead (one compile per distinct value).

Seeds. Row keys are ``sample.sampler.record_keys(seed, [key])``, as the Sampler's: a request
with ``seed`` s uses ``(s mod 2**32, 0)`` -- so it draws what
``Sampler.generate_texts(..., seed=s, keys=[0])`` draws, whatever its batch-mates; a request
without one uses ``(engine seed, n)`` where n = 0, 1, 2, ... counts the requests submitted
since the engine started (so a server's sampled answers are reproducible from ``--seed`` and
the order of arrival). Greedy ignores keys.

Log-probabilities (``top_logprobs`` not None) come from one teacher-forced pass of the model
over prompt + generated tokens after the generation (``serve/scoring.py``'s
``teacher_forced_logprobs``, re-exported here): the full-softmax log-probability of each
generated token (the terminating EOS included) and the top-k alternatives, with the final
norm, head and log-softmax in float32 (the blocks run in the model's compute dtype: exact
float32 for a float32 model).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from humpback_jax import hosts
from humpback_jax.models.config import LlamaConfig
from humpback_jax.sample import decode
from humpback_jax.sample.sampler import Sampler, record_keys
from humpback_jax.sample.sampling import Greedy, Strategy
from humpback_jax.serve.scoring import continuation_width, teacher_forced_logprobs

Params = Any
MAX_TOP_LOGPROBS = 20  # top-k alternatives computed per generated token
BUDGETS = ("pow2", "exact")
_STOP = object()
_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
  """One completion to generate.

  Attributes:
    prompt_ids: the prompt's token ids (already templated and encoded; 1..max_prompt_len).
    max_tokens: generation budget (tokens, EOS included), 1..max_tokens_cap.
    strategy: ``Greedy()`` or ``Sampling(temperature, top_p)``.
    seed: the request's seed, or None for the engine's seed and request counter.
    top_logprobs: None for no log-probabilities, else how many alternatives (0..20) the
      caller wants (the engine always computes ``MAX_TOP_LOGPROBS``).
  """

  prompt_ids: tuple[int, ...]
  max_tokens: int
  strategy: Strategy = Greedy()
  seed: int | None = None
  top_logprobs: int | None = None


@dataclasses.dataclass
class GenerationResult:
  """What one request generated.

  Attributes:
    tokens: generated ids within ``max_tokens``, the terminating EOS included when there is one.
    finished: the row ended with its EOS within ``max_tokens`` (False: cut by the budget).
    text: the decoded text of ``tokens`` without the EOS (``skip_special_tokens=True``), as
      ``Sampler.generate_texts`` decodes it.
    prompt_tokens: prompt length (tokens).
    logprobs: float32 [G] log P(tokens[g] | prompt, tokens[:g]) (G = len(tokens)), or None.
    top_ids: int32 [G, 20] the most likely tokens at each step, most likely first, or None.
    top_logprobs: float32 [G, 20] their log-probabilities, or None.
    seed: the seed its key was derived from; key: its record id (``record_keys``).
    batch_rows: real rows of the device batch that generated it (1 = ran alone).
  """

  tokens: list[int]
  finished: bool
  text: str
  prompt_tokens: int
  logprobs: np.ndarray | None = None
  top_ids: np.ndarray | None = None
  top_logprobs: np.ndarray | None = None
  seed: int = 0
  key: int = 0
  batch_rows: int = 1


@dataclasses.dataclass
class _Pending:
  request: GenerationRequest
  seed: int
  key: int
  future: concurrent.futures.Future


def budget_ladder(max_tokens_cap: int, smallest: int = 16) -> list[int]:
  """The generation budgets a ``pow2`` engine compiles: smallest, 2x, 4x, ... below the cap,
  then the cap (tokens), ascending.

  Raises:
    ValueError: a non-positive cap.
  """
  if max_tokens_cap < 1:
    raise ValueError(f"max_tokens_cap must be >= 1, got {max_tokens_cap}")
  out, b = [], smallest
  while b < max_tokens_cap:
    out.append(b)
    b *= 2
  return out + [max_tokens_cap]


class Engine:
  """Batches concurrent generation requests onto one model (see the module docstring).

  Attributes:
    sampler: the ``Sampler`` whose padded widths, batch size and tokenizer the engine uses.
    config, tokenizer, batch_size, max_prompt_len, max_tokens_cap, seed: as given.
    stats: running counters (``snapshot()`` reads them consistently): "requests" submitted,
      "completed", "failed", "cancelled", "collections" (worker rounds), "generate_calls"
      (device batches), "rows" (real rows over those calls), "max_rows" (the most real rows of
      one call), "rows_histogram" {rows: calls}, "scoring_calls" / "scored_rows" (logprob
      passes), "generated_tokens", "device_seconds" (wall time of the device work).
  """

  def __init__(self, config: LlamaConfig, params: Params, tokenizer, *, batch_size: int = 8,
               max_prompt_len: int | None = None, max_tokens_cap: int = 1024,
               bucket: int = 64, batch_window_s: float = 0.005, seed: int = 0,
               budgets: str = "pow2", cache_dtype=None, layer_loop: str | None = None,
               start: bool = True):
    """Constructor; starts the worker thread unless ``start=False`` (then call ``start()``).

    Args:
      config: the model; params: its parameters (placed on the default device once).
      tokenizer: the model's tokenizer (``eos_id``, ``pad_id``, ``encode``, ``decode``).
      batch_size: rows per device call (fixed shape; filler rows are inert).
      max_prompt_len: longest prompt accepted (tokens); None = ``max_seq_len - 1``.
      max_tokens_cap: largest ``max_tokens`` accepted (tokens).
      bucket: the smallest padded prompt width (tokens; ``sampler.prompt_widths``).
      batch_window_s: how long the worker waits for more requests after the first (seconds).
      seed: the seed of requests that bring none.
      budgets: "pow2" (``budget_ladder``) or "exact" (see the module docstring).
      cache_dtype, layer_loop: passed to ``decode.generate`` (as the Sampler's).
    Raises:
      ValueError: non-positive sizes, an unknown ``budgets``, or a budget beyond the context.
    """
    if budgets not in BUDGETS:
      raise ValueError(f"budgets={budgets!r}: expected one of {list(BUDGETS)}")
    if max_prompt_len is None:
      max_prompt_len = config.max_seq_len - 1
    if max_tokens_cap < 1 or batch_window_s < 0:
      raise ValueError(f"need max_tokens_cap >= 1 and batch_window_s >= 0, got "
                       f"{max_tokens_cap}, {batch_window_s}")
    self.sampler = Sampler(config, tokenizer, max_prompt_len=max_prompt_len,
                           batch_size=batch_size, bucket=bucket, prompt_overflow="error",
                           owner="serve", cache_dtype=cache_dtype, layer_loop=layer_loop)
    self.config, self.tokenizer = config, tokenizer
    self.batch_size, self.max_prompt_len = batch_size, max_prompt_len
    self.max_tokens_cap, self.seed, self.budgets = max_tokens_cap, int(seed), budgets
    self.batch_window_s = float(batch_window_s)
    self.ladder = budget_ladder(max_tokens_cap)
    self.params = self.sampler.place_params(params)
    self._queue: queue.Queue = queue.Queue()
    self._lock = threading.Lock()
    self._counter = 0
    self._closed = False
    self.stats: dict[str, Any] = {
        "requests": 0, "completed": 0, "failed": 0, "cancelled": 0, "collections": 0,
        "generate_calls": 0, "rows": 0, "max_rows": 0, "rows_histogram": {},
        "scoring_calls": 0, "scored_rows": 0, "generated_tokens": 0, "device_seconds": 0.0}
    self._thread = threading.Thread(target=self._loop, name="humpback-serve-engine",
                                    daemon=True)
    if start:
      self.start()

  def start(self) -> None:
    """Starts the worker thread (once)."""
    if not self._thread.is_alive():
      self._thread.start()

  def close(self, timeout_s: float | None = 10.0) -> None:
    """Stops the worker after the requests already collected; later submits raise."""
    with self._lock:
      self._closed = True
    self._queue.put(_STOP)
    if self._thread.is_alive():
      self._thread.join(timeout_s)

  def snapshot(self) -> dict[str, Any]:
    """A copy of ``stats`` plus "mean_rows" (rows per generate call) and "queued"."""
    with self._lock:
      out = dict(self.stats, rows_histogram=dict(self.stats["rows_histogram"]))
    out["mean_rows"] = out["rows"] / out["generate_calls"] if out["generate_calls"] else 0.0
    out["queued"] = self._queue.qsize()
    return out

  def check(self, request: GenerationRequest) -> None:
    """Validates a request against the engine's limits.

    Raises:
      ValueError: an empty or too long prompt, ``max_tokens`` outside 1..max_tokens_cap,
        prompt + max_tokens beyond the model's context, or ``top_logprobs`` outside 0..20.
    """
    n, m = len(request.prompt_ids), int(request.max_tokens)
    if n < 1:
      raise ValueError("the prompt is empty (0 tokens)")
    if n > self.max_prompt_len:
      raise ValueError(f"the prompt has {n} tokens, more than this server's max_prompt_len "
                       f"of {self.max_prompt_len} tokens")
    if not 1 <= m <= self.max_tokens_cap:
      raise ValueError(f"max_tokens={m} must be in 1..{self.max_tokens_cap} (this server's "
                       "max_tokens_cap)")
    if n + m > self.config.max_seq_len:
      raise ValueError(f"the prompt's {n} tokens + max_tokens={m} = {n + m} tokens exceed the "
                       f"model's context length of {self.config.max_seq_len} tokens")
    if request.top_logprobs is not None and not 0 <= request.top_logprobs <= MAX_TOP_LOGPROBS:
      raise ValueError(f"top_logprobs={request.top_logprobs} must be in 0..{MAX_TOP_LOGPROBS}")

  def submit(self, request: GenerationRequest) -> concurrent.futures.Future:
    """Queues a request (see ``check``); returns a Future of its ``GenerationResult``.

    Raises:
      ValueError: from ``check``.
      RuntimeError: the engine is closed.
    """
    self.check(request)
    future: concurrent.futures.Future = concurrent.futures.Future()
    with self._lock:
      if self._closed:
        raise RuntimeError("the engine is closed")
      if request.seed is None:
        seed, key = self.seed, self._counter
      else:
        seed, key = int(request.seed) % 2**32, 0
      self._counter += 1
      self.stats["requests"] += 1
    self._queue.put(_Pending(request, seed, key, future))
    return future

  def generate(self, request: GenerationRequest,
               timeout_s: float | None = None) -> GenerationResult:
    """``submit(request).result(timeout_s)``."""
    return self.submit(request).result(timeout_s)

  # --------------------------------------------------------------------------- worker thread

  def _collect(self) -> list[_Pending] | None:
    first = self._queue.get()
    if first is _STOP:
      return None
    items = [first]
    deadline = time.monotonic() + self.batch_window_s
    while len(items) < self.batch_size:
      try:
        item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
      except queue.Empty:
        break
      if item is _STOP:
        self._queue.put(_STOP)  # stop after this round
        break
      items.append(item)
    live = []
    for item in items:
      if item.future.set_running_or_notify_cancel():
        live.append(item)
      else:
        self._count(cancelled=1)
    return live

  def _loop(self) -> None:
    while True:
      items = self._collect()
      if items is None:
        return
      self._count(collections=1)
      groups: dict[tuple, list[_Pending]] = collections.defaultdict(list)
      for item in items:
        groups[(item.request.strategy, self._budget(item.request.max_tokens))].append(item)
      for (strategy, budget), group in groups.items():
        group.sort(key=lambda it: -len(it.request.prompt_ids))  # stable
        for start in range(0, len(group), self.batch_size):
          batch = group[start:start + self.batch_size]
          try:
            self._run_batch(strategy, budget, batch)
          except Exception as e:  # pylint: disable=broad-except
            _log.exception("serve engine: a batch of %d requests failed", len(batch))
            for item in batch:
              if not item.future.done():
                item.future.set_exception(e)
            self._count(failed=len(batch))

  def _budget(self, max_tokens: int) -> int:
    if self.budgets == "exact":
      return int(max_tokens)
    return next(b for b in self.ladder if b >= max_tokens)

  def _count(self, **deltas) -> None:
    with self._lock:
      for name, d in deltas.items():
        self.stats[name] += d

  def _run_batch(self, strategy: Strategy, budget: int, batch: list[_Pending]) -> None:
    t0 = time.monotonic()
    ids = [list(it.request.prompt_ids) for it in batch]
    width = self.sampler.prompt_width(max(len(x) for x in ids))
    need = max(it.request.max_tokens for it in batch)
    # The padded prompt width + budget may pass the context; positions never pass
    # prompt + max_tokens <= max_seq_len for the tokens kept.
    budget = max(need, min(budget, self.config.max_seq_len - width))
    b, tok = self.batch_size, self.tokenizer
    tokens = np.full((b, width), tok.pad_id, np.int32)
    lengths = np.zeros((b,), np.int32)
    keys = np.zeros((b, 2), np.uint32)
    for r, (it, row) in enumerate(zip(batch, ids)):
      tokens[r, width - len(row):] = row
      lengths[r] = len(row)
      keys[r] = np.asarray(record_keys(it.seed, [it.key]))[0]
    out = decode.generate(self.params, jnp.asarray(tokens), jnp.asarray(lengths),
                          config=self.config, max_new_tokens=budget, eos_ids=(tok.eos_id,),
                          strategy=strategy, rng=jnp.asarray(keys), pad_id=tok.pad_id,
                          cache_dtype=self.sampler.cache_dtype,
                          layer_loop=self.sampler.layer_loop)
    gen, gen_len, done = hosts.fetch((out.tokens, out.lengths, out.finished))
    results = []
    for r, it in enumerate(batch):
      m = it.request.max_tokens
      n = min(int(gen_len[r]), m)
      finished = bool(done[r]) and int(gen_len[r]) <= m
      row = gen[r, :n].tolist()
      text = tok.decode(row[:n - 1] if finished else row, skip_special_tokens=True)
      results.append(GenerationResult(
          tokens=row, finished=finished, text=text, prompt_tokens=len(ids[r]), seed=it.seed,
          key=it.key, batch_rows=len(batch)))
    with self._lock:
      s = self.stats
      s["generate_calls"] += 1
      s["rows"] += len(batch)
      s["max_rows"] = max(s["max_rows"], len(batch))
      s["rows_histogram"][len(batch)] = s["rows_histogram"].get(len(batch), 0) + 1
      s["generated_tokens"] += sum(len(r.tokens) for r in results)
    scored = [r for r, it in enumerate(batch) if it.request.top_logprobs is not None]
    if scored:
      self._score(tokens, lengths, [results[r] for r in scored], scored)
    self._count(device_seconds=time.monotonic() - t0)
    for it, res in zip(batch, results):
      it.future.set_result(res)
    self._count(completed=len(batch))

  def _score(self, tokens: np.ndarray, lengths: np.ndarray, results: list[GenerationResult],
             rows: Sequence[int]) -> None:
    """Fills the results' log-probabilities by one teacher-forced pass over their rows."""
    b = self.batch_size
    g = continuation_width(max(1, max(len(r.tokens) for r in results)))
    p_tok = np.full((b, tokens.shape[1]), self.tokenizer.pad_id, np.int32)
    p_len = np.zeros((b,), np.int32)
    g_tok = np.zeros((b, g), np.int32)
    g_len = np.zeros((b,), np.int32)
    for i, (r, res) in enumerate(zip(rows, results)):
      p_tok[i], p_len[i] = tokens[r], lengths[r]
      g_tok[i, :len(res.tokens)] = res.tokens
      g_len[i] = len(res.tokens)
    k = min(MAX_TOP_LOGPROBS, self.config.vocab_size)
    lp, top_lp, top_ids = hosts.fetch(teacher_forced_logprobs(
        self.params, p_tok, p_len, g_tok, g_len, config=self.config, k=k))
    for i, res in enumerate(results):
      n = len(res.tokens)
      res.logprobs = np.asarray(lp[i, :n], np.float32)
      res.top_logprobs = np.asarray(top_lp[i, :n], np.float32)
      res.top_ids = np.asarray(top_ids[i, :n], np.int32)
    self._count(scoring_calls=1, scored_rows=len(results))
