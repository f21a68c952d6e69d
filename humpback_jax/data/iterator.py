"""The training iterator: a seqio task -> shuffled, packed, sharding-ready batches.

Batching ("batch 32", [HB] Table 18, counts examples). Every optimizer step holds exactly
``batch_size`` examples, on any mesh. With ``pack=True`` (default) the step's examples are packed
first-fit, in order, into ``rows_per_batch`` rows of ``sequence_length`` (``pack_examples``):
the fewest rows that held every step of the first epochs (simulated on the real lengths),
rounded up to a multiple of ``row_multiple`` (the mesh's data x fsdp x micro-batches); rows left
empty are filler (segment id 0, loss weight 0). A later step whose examples need more rows
(rare) gets one row per example instead, also rounded up, so a run compiles at most two batch
shapes (``stats["overflow_batches"]`` counts those steps). With ``pack=False`` every example has
its own row, and the ``batch_size`` rows are padded with filler rows to the multiple. The loss is
the mean over the batch's target tokens (``train/loss.py``), so filler rows and packing change
nothing in the objective: the same examples give the same loss and gradients on every mesh.

``rows_per_batch=R`` selects stream packing instead (seqio's packer fills R rows per step with
however many examples fit; the count per step varies; kept for experiments and tests).

Held-out evaluation split (``holdout=k``). ``k`` of the examples that survive the length policy
are held out of training: the first ``k`` of a stateless permutation with seed ``(seed, -1)``
(training epochs use ``(seed, e)``, e >= 0), so the split depends only on the data, the length
policy, the sequence length and the seed. Training never sees them, nor any other copy of the
same (prompt, target) tokens. ``TrainIterator.eval_batches`` holds them, in file order,
converted and packed like the training data into batches of ``rows_per_batch`` rows (the last
one padded with all-zero rows).
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Sequence

import numpy as np
import seqio
import tensorflow as tf

from humpback_jax.data.tasks import (LENGTH_POLICIES, SPLIT, CausalLMFeatureConverter,
                                     JsonlSource, Tokenizer, TokenizerVocabulary,
                                     backward_task, forward_task, length_status)


def _resolve_task(task: str | os.PathLike | seqio.Task, tokenizer: Tokenizer, kind: str,
                  default_tags: Sequence[str]) -> seqio.Task:
  if isinstance(task, seqio.Task):
    return task
  task = os.fspath(task)
  if task in seqio.TaskRegistry.names():
    return seqio.TaskRegistry.get(task)
  from humpback_jax import fs
  if fs.path(task).exists():  # local or gs://
    key = hashlib.sha1(f"{fs.path(task)}|{kind}|{list(default_tags)}".encode())
    name = f"jsonl_{kind}_{key.hexdigest()[:12]}"
    if kind != "forward":
      return backward_task(name, task, tokenizer, kind)
    return forward_task(name, [JsonlSource(task, tuple(default_tags))], tokenizer)
  raise ValueError(f"{task!r} is neither a registered seqio task nor an existing JSONL file")


def tokenized_examples(task: seqio.Task) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """Runs the task once (source -> render -> tokenize); returns (prompt ids, target ids)."""
  ds = task.get_dataset(sequence_length=None, split=SPLIT, shuffle=False, num_epochs=1,
                        use_cached=False)
  inputs, targets = [], []
  for ex in ds.as_numpy_iterator():
    inputs.append(np.asarray(ex["inputs"], np.int32))
    targets.append(np.asarray(ex["targets"], np.int32))
  return inputs, targets


def _simulate_packing(lengths: Sequence[int], sequence_length: int) -> int:
  """Rows seqio's packer makes from examples of ``lengths`` (model positions), in order.

  Mirrors ``seqio.utils.trim_and_pack_dataset``: windows of ``sequence_length`` examples, each
  packed greedily in order, every window closing its last row.
  """
  rows = 0
  for start in range(0, len(lengths), sequence_length):
    used = None
    for n in lengths[start:start + sequence_length]:
      if used is None or used + n > sequence_length:
        rows += 1
        used = 0
      used += n
  return rows


def first_fit(lengths: Sequence[int], sequence_length: int) -> list[int]:
  """Row of each example when packing ``lengths`` (positions) first-fit, in order.

  Example i goes to the first row that still has ``lengths[i]`` free positions, else a new row.

  Returns:
    ``rows[i]`` (0-based), one per example; ``max(rows) + 1`` rows in all.
  Raises:
    ValueError: an example longer than ``sequence_length``.
  """
  free: list[int] = []
  rows = []
  for n in lengths:
    if n > sequence_length:
      raise ValueError(f"an example of {n} positions does not fit sequence_length="
                       f"{sequence_length}")
    for r, room in enumerate(free):
      if n <= room:
        free[r] -= n
        rows.append(r)
        break
    else:
      free.append(sequence_length - n)
      rows.append(len(free) - 1)
  return rows


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def pack_examples(batch: dict[str, np.ndarray], rows: int, row_multiple: int = 1
                  ) -> dict[str, np.ndarray]:
  """Packs one row per example into at most ``rows`` rows (first-fit, in order).

  Args:
    batch: ``MODEL_FEATURE_KEYS`` -> int32 [N, L], one example per row at positions
      ``[0, n_i)`` (``n_i`` = its non-zero segment ids), as the unpacked converter emits them.
    rows: rows of the packed batch; if the examples need more, each keeps its own row and the
      result has ``N`` rows rounded up to ``row_multiple``.
    row_multiple: the fallback row count's multiple.
  Returns:
    ``MODEL_FEATURE_KEYS`` -> int32 [rows (or the fallback), L]: example i copied to its row at
    the next free positions with segment id = its 1-based slot in that row, positions as
    given (restarting at 0 per example); unused positions and rows are 0 (filler).
  """
  seg = batch["decoder_segment_ids"]
  n, length = seg.shape
  lengths = np.count_nonzero(seg, axis=1).tolist()
  where = first_fit(lengths, length)
  if where and max(where) + 1 > rows:
    where, rows = list(range(n)), _round_up(n, row_multiple)
  out = {k: np.zeros((rows, length), np.int32) for k in batch}
  used = [0] * rows
  slots = [0] * rows
  for i, (r, m) in enumerate(zip(where, lengths)):
    if not m:
      continue
    a, slots[r] = used[r], slots[r] + 1
    for k, v in batch.items():
      out[k][r, a:a + m] = v[i, :m]
    out["decoder_segment_ids"][r, a:a + m] = slots[r]
    used[r] = a + m
  return out


def _rows_for_exact_batches(order: Sequence[int], lengths: dict[int, int], batch_size: int,
                            sequence_length: int, limit: int = 200_000) -> int:
  """Most rows any step of ``batch_size`` consecutive examples of ``order`` needs (first-fit);
  at most ``limit`` examples are simulated."""
  most = 1
  stop = min(len(order), limit) // batch_size * batch_size
  for start in range(0, stop, batch_size):
    group = [lengths[k] for k in order[start:start + batch_size]]
    most = max(most, max(first_fit(group, sequence_length)) + 1)
  return most


def _epoch_permutation(n: int, seed: int, epoch: tf.Tensor | int) -> tf.Tensor:
  """int64 [n]: the example order of ``epoch`` (stateless, so the same on every run)."""
  seeds = tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)])
  keys = tf.random.stateless_uniform([n], seed=seeds, dtype=tf.float32)
  return tf.cast(tf.argsort(keys, stable=True), tf.int64)


def heldout_indices(kept: Sequence[int], seed: int, holdout: int) -> list[int]:
  """The example indices held out for evaluation (see the module docstring).

  Args:
    kept: indices of the examples that survive the length policy, ascending.
    seed: the data seed.
    holdout: how many to hold out.
  Returns:
    ``holdout`` indices of ``kept``, ascending; the same for the same arguments on every run.
  Raises:
    ValueError: ``holdout`` is negative or leaves no example to train on.
  """
  if holdout < 0:
    raise ValueError(f"holdout must be >= 0, got {holdout}")
  if holdout == 0:
    return []
  if holdout >= len(kept):
    raise ValueError(f"holdout={holdout} leaves nothing to train on: only {len(kept)} examples "
                     f"fit the sequence length")
  perm = _epoch_permutation(len(kept), seed, -1).numpy()[:holdout]
  return sorted(int(kept[p]) for p in perm)


def _example_order(n: int, seed: int, num_epochs: int | None) -> tf.data.Dataset:
  """Dataset of example indices: a fresh permutation per epoch (pure TF: no Python in the
  input pipeline's threads, which can deadlock interpreter shutdown)."""
  epochs = tf.data.Dataset.range(num_epochs) if num_epochs is not None else (
      tf.data.Dataset.range(2**62))
  return epochs.flat_map(
      lambda e: tf.data.Dataset.from_tensor_slices(_epoch_permutation(n, seed, e)))


class TrainIterator:
  """Iterator of int32 numpy batches ``{MODEL_FEATURE_KEYS: [rows_per_batch, L]}``.

  Attributes:
    rows_per_batch: rows of every batch.
    eval_batches: with ``holdout > 0``, the held-out examples as a list of batches shaped like
      the training batches (int32 [rows_per_batch, L] per key; the last batch padded with
      all-zero rows: segment id 0, loss weight 0); else None.
    stats: dict with the dataset audit (``dataset_examples``, ``examples_per_epoch`` (trained
      examples), ``heldout_examples``, ``heldout_duplicates_excluded``,
      ``truncated_per_epoch``, ``dropped_per_epoch``, ``length_policy``, token-length
      summaries, ``estimated_examples_per_row``) and running counts over the batches yielded
      (``batches``, ``examples_seen``, ``tokens_seen`` (non-padding), ``target_tokens_seen``,
      ``mean_examples_per_batch``), plus ``start_step``.
  """

  def __init__(self, dataset: tf.data.Dataset, rows_per_batch: int, stats: dict,
               eval_batches: list[dict[str, np.ndarray]] | None = None,
               row_multiple: int | None = None, pack: bool = True):
    self._it = dataset.as_numpy_iterator()
    self.rows_per_batch = rows_per_batch
    self.eval_batches = eval_batches
    self.stats = stats
    # Set: exact batches of one-example rows, packed (or padded with filler rows) here.
    self._row_multiple, self._pack = row_multiple, pack
    self.stats.update(batches=0, examples_seen=0, tokens_seen=0, target_tokens_seen=0,
                      mean_examples_per_batch=0.0, overflow_batches=0)

  def __iter__(self) -> "TrainIterator":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = {k: np.asarray(v, np.int32) for k, v in next(self._it).items()}
    if self._row_multiple is not None and self._pack:
      batch = pack_examples(batch, self.rows_per_batch, self._row_multiple)
    elif self._row_multiple is not None:
      pad = self.rows_per_batch - len(batch["decoder_segment_ids"])
      batch = {k: np.pad(v, ((0, pad), (0, 0))) for k, v in batch.items()}
    seg = batch["decoder_segment_ids"]
    s = self.stats
    s["overflow_batches"] += int(len(seg) != self.rows_per_batch)
    s["batches"] += 1
    s["examples_seen"] += int(seg.max(axis=1).sum())
    s["tokens_seen"] += int(np.count_nonzero(seg))
    s["target_tokens_seen"] += int(batch["decoder_loss_weights"].sum())
    s["mean_examples_per_batch"] = s["examples_seen"] / s["batches"]
    return batch


def make_train_iterator(task: str | os.PathLike | seqio.Task, tokenizer: Tokenizer, *,
                        sequence_length: int, batch_size: int, seed: int,
                        num_epochs: int | None = None, pack: bool = True,
                        length_policy: str = "fit", start_step: int = 0,
                        rows_per_batch: int | None = None, row_multiple: int = 1,
                        kind: str = "forward", default_tags: Sequence[str] = (),
                        holdout: int = 0) -> TrainIterator:
  """Deterministic training batches of a task.

  Args:
    task: a ``seqio.Task``, a registered task name, or a JSONL path (then registered as a
      ``kind`` task; forward records without ``tags`` get ``default_tags``).
    tokenizer: the task's tokenizer (BOS per ``tokenizer.add_bos``, EOS ``tokenizer.eos_id``).
    sequence_length: L, tokens per row.
    batch_size: examples per step ([HB] Table 18: 32); see the module docstring for packing.
    seed: data order seed; epoch e is the argsort of ``tf.random.stateless_uniform`` with seed
      ``(seed, e)`` (stateless: identical on every run).
    num_epochs: passes over the data; None repeats forever.
    pack: pack examples into rows (else one example per row); either way exactly
      ``batch_size`` examples per step (module docstring).
    length_policy: "fit", "truncate" or "drop" (module docstring).
    start_step: skip this many batches (resume after a checkpoint at that step).
    rows_per_batch: stream packing: this many packed rows per step, however many examples
      they hold (module docstring); None (default): exact batches.
    row_multiple: rows per batch are a multiple of this (the mesh's ``data * fsdp`` times
      ``TrainConfig.micro_batches``), filler rows making up the difference.
    holdout: examples held out of training for evaluation (module docstring), returned as
      ``TrainIterator.eval_batches``; 0 = none (then the batches are those of earlier versions).
  Returns:
    A ``TrainIterator``; the same arguments always give the same batches.
  Raises:
    ValueError: unknown task / policy, a task whose every example is dropped, or ``holdout``
      leaving nothing to train on.
  """
  if length_policy not in LENGTH_POLICIES:
    raise ValueError(f"length_policy must be one of {LENGTH_POLICIES}, got {length_policy!r}")
  task = _resolve_task(task, tokenizer, kind, default_tags)
  vocab = task.output_features["targets"].vocabulary
  if isinstance(vocab, TokenizerVocabulary):
    t = vocab.tokenizer
    if (t.vocab_size, t.eos_id, t.bos_id) != (tokenizer.vocab_size, tokenizer.eos_id,
                                              tokenizer.bos_id):
      raise ValueError(f"task {task.name} was registered with a different tokenizer")
  add_bos = bool(tokenizer.add_bos)
  if add_bos and tokenizer.bos_id is None:
    raise ValueError("tokenizer.add_bos is set but tokenizer.bos_id is None")

  inputs, targets = tokenized_examples(task)
  n = len(inputs)
  status = [length_status(len(i), len(t), sequence_length, add_bos, length_policy)
            for i, t in zip(inputs, targets)]
  kept = [k for k, s in enumerate(status) if s != "dropped"]
  if not kept:
    raise ValueError(f"task {task.name}: all {n} examples are dropped at sequence_length="
                     f"{sequence_length} (policy {length_policy})")
  heldout = heldout_indices(kept, seed, holdout)
  # Training examples: all but the held-out ones and their verbatim copies (dropped ones stay:
  # the converter filters them, as without a hold-out).
  held_content = {(inputs[k].tobytes(), targets[k].tobytes()) for k in heldout}
  train_idx = [k for k in range(n)
               if not held_content or (inputs[k].tobytes(), targets[k].tobytes()) not in
               held_content]
  duplicates = n - len(train_idx) - len(heldout)
  kept_set = set(kept)
  train_kept = [k for k in train_idx if k in kept_set]
  if not train_kept:
    raise ValueError(f"task {task.name}: holdout={holdout} and its copies leave nothing to "
                     f"train on")
  status = [status[k] for k in train_idx]
  truncated, dropped = status.count("truncated"), status.count("dropped")
  if truncated or dropped:
    logging.warning("task %s: %d of %d examples exceed sequence_length=%d: %d truncated, %d "
                    "dropped (length_policy=%s)", task.name, truncated + dropped, n,
                    sequence_length, truncated, dropped, length_policy)
  positions = [min(int(add_bos) + len(inputs[k]) + len(targets[k]), sequence_length)
               for k in train_kept]

  stream = pack and rows_per_batch is not None
  order0 = [train_idx[j] for j in _epoch_permutation(len(train_idx), seed, 0).numpy()]
  if stream:  # seqio's packer over the example stream: R rows, a varying example count
    lens_in_order = [min(int(add_bos) + len(inputs[k]) + len(targets[k]), sequence_length)
                     for k in order0 if k in kept_set]
    per_row = len(train_kept) / _simulate_packing(lens_in_order, sequence_length)
    rows = _round_up(rows_per_batch, row_multiple)
  elif pack:  # exactly batch_size examples per step, packed into a fixed number of rows
    lens = dict(zip(train_kept, positions))
    order = [k for e in range(3) for k in
             ([train_idx[j] for j in _epoch_permutation(len(train_idx), seed, e).numpy()]
              if e else order0) if k in kept_set]
    rows = _round_up(_rows_for_exact_batches(order, lens, batch_size, sequence_length),
                     row_multiple)
    per_row = batch_size / rows
  else:
    per_row = 1.0
    rows = _round_up(batch_size, row_multiple)

  stats = {
      "task": task.name, "dataset_examples": n, "examples_per_epoch": len(train_kept),
      "heldout_examples": len(heldout), "heldout_duplicates_excluded": duplicates,
      "truncated_per_epoch": truncated, "dropped_per_epoch": dropped,
      "length_policy": length_policy, "sequence_length": sequence_length,
      "mean_positions_per_example": float(np.mean(positions)),
      "max_prompt_tokens": int(max(len(i) for i in inputs)),
      "max_target_tokens": int(max(len(t) for t in targets)),
      "estimated_examples_per_row": per_row, "rows_per_batch": rows, "pack": pack,
      "exact_batch": not stream, "row_multiple": row_multiple,
      "batch_size": batch_size, "seed": seed, "start_step": start_step,
  }

  def ragged(arrs):
    return tf.RaggedTensor.from_row_lengths(
        tf.constant(np.concatenate(arrs) if arrs else np.zeros([0], np.int32), tf.int32),
        tf.constant([len(a) for a in arrs], tf.int64))
  inputs_rt, targets_rt = ragged(inputs), ragged(targets)
  train_idx_t = tf.constant(train_idx, tf.int64, shape=[len(train_idx)])

  def example(i):
    return {"inputs": inputs_rt[i], "targets": targets_rt[i]}
  def converter(packed: bool):
    return CausalLMFeatureConverter(bos_id=tokenizer.bos_id if add_bos else None,
                                    eos_id=tokenizer.eos_id, length_policy=length_policy,
                                    pack=packed)
  lengths = {"inputs": sequence_length, "targets": sequence_length}
  options = tf.data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = 4  # leave the host's cores to JAX
  ds = _example_order(len(train_idx), seed, num_epochs).map(
      lambda j: example(tf.gather(train_idx_t, j)))
  ds = converter(stream)(ds, lengths)
  # Exact batches: batch_size one-example rows per step, packed by TrainIterator.
  ds = ds.batch(rows if stream else batch_size, drop_remainder=True)
  ds = ds.skip(start_step).prefetch(2)
  ds = ds.with_options(options)
  eval_batches = None
  if heldout:
    eds = tf.data.Dataset.from_tensor_slices(tf.constant(heldout, tf.int64)).map(example)
    eds = converter(pack)(eds, lengths).batch(rows).with_options(options)
    eval_batches = []
    for b in eds.as_numpy_iterator():
      pad = rows - len(b["decoder_input_tokens"])
      eval_batches.append({k: np.pad(np.asarray(v, np.int32), ((0, pad), (0, 0)))
                           for k, v in b.items()})
  return TrainIterator(ds, rows, stats, eval_batches,
                       row_multiple=None if stream else row_multiple, pack=pack)
