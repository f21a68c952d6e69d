"""seqio tasks of fine-tuning, the causal-LM feature converter, and the training iterator.

Tasks (seqio / T5X schema; sources are JSONL files of ``{"instruction", "response", ...}``):

  * forward (M0, M1, M2): ``inputs`` = ``templates.forward_prompt(tok, instruction, tags)``,
    ``targets`` = response. Tags: a record's own ``"tags"`` list when present, else its source's
    default: ``S_a`` for the seed, ``S_w`` for augmented (curated) pairs ([HB] §2.3).
  * backward (M_yx): ``inputs`` = ``templates.backward_prompt(tok, response)`` ([BF] §2 prompt,
    no tags), ``targets`` = instruction.

Seed + curated data (M1/M2) is ONE forward task over several JSONL sources, each with its default
tag: every seed and every curated example appears exactly once per epoch, i.e. the union S ∪ A_k
of [HB] §2.3 (a seqio ``Mixture`` would instead sample by rate). ``register_humpback_tasks``
registers ``seed_forward``, ``seed_backward``, ``augmented_forward`` and
``seed_augmented_forward`` (names optionally prefixed, e.g. per iteration).

Causal-LM features (``CausalLMFeatureConverter``). Each example becomes
``full = [BOS if tokenizer.add_bos] + prompt_ids + target_ids + [EOS]`` and

  decoder_input_tokens  = full[:-1]
  decoder_target_tokens = full[1:]
  decoder_loss_weights  = 1 where decoder_target_tokens is a target token or the final EOS, else 0

so the first weighted position is the LAST prompt token (it predicts the first target token) and
the last weighted position predicts EOS ([HB] §3.1: loss on output tokens only). Prompt and
targets are tokenized separately (without BOS), exactly as at inference, where the prompt is
encoded alone and the model continues it. Examples are packed into rows of ``sequence_length``
with ``seqio.utils.trim_and_pack_dataset``: ``decoder_segment_ids`` 1..n per example in a row, 0
on padding; ``decoder_positions`` restart at 0 per example. ``models/llama.py`` never attends
across segments. seqio's packer finds an example's end by counting non-zero ids, so token id 0
(a real token in many vocabularies) would be corrupted: every packed feature is shifted by +1
before packing and back after.

Length policy (the papers report no maximum length; LIMA §3, whose setup [HB] follows, trims
texts longer than 2048 tokens). An example needs ``len(full) - 1`` model positions.
  * ``"fit"`` (default): the target keeps up to half the row; a prompt too long for the rest
    loses its middle (``templates.fit_prompt``: the chat header, the task instruction and the
    closing cue survive, the end of the embedded document goes), exactly the cut the sampler
    makes at inference. A target longer than half the row is then cut at the end (no EOS).
    Needed for the backward model, whose prompt is the long response and whose target (the
    instruction) comes last.
  * ``"truncate"``: keep the first ``sequence_length + 1`` tokens of ``full``: the
    response is cut at the end and has no EOS (the model is never taught to stop mid-answer);
    an example whose prompt alone leaves no target position is dropped.
  * ``"drop"``: drop every example that does not fit.
All are counted exactly before training (``TrainIterator.stats``) and logged: never silent.

Batching ("batch 32", [HB] Table 18, counts examples). With ``pack=False`` a batch is exactly
``batch_size`` rows = ``batch_size`` examples. With ``pack=True`` (default) a batch is
``rows_per_batch`` packed rows, chosen so that a step holds about ``batch_size`` examples on
average: ``round(batch_size / mean examples per packed row)``, the mean from simulating the packer
on the real lengths, rounded up to a multiple of the mesh's ``data * fsdp``. The realized mean is
reported in ``stats["mean_examples_per_batch"]``. The loss is the mean over the batch's target
tokens (``train/loss.py``), so packing changes only how examples share a step, not the
objective's per-token weighting.

Held-out evaluation split (``holdout=k``). ``k`` of the examples that survive the length policy
are held out of training: the first ``k`` of a stateless permutation with seed ``(seed, -1)``
(training epochs use ``(seed, e)``, e >= 0), so the split depends only on the data, the length
policy, the sequence length and the seed. Training never sees them, nor any other copy of the
same (prompt, target) tokens. ``TrainIterator.eval_batches`` holds them, in file order,
converted and packed like the training data into batches of ``rows_per_batch`` rows (the last
one padded with all-zero rows).

TF/seqio notes: importing this module imports TensorFlow (~5-10 s) and hides every GPU from TF
(its CPU pipeline must not reserve accelerator memory JAX needs). The training package
(``humpback_jax.train``) does not import TF. Tokenization (``tf.numpy_function`` into the Python
tokenizer) runs once per task, before training, in ``make_train_iterator``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
from typing import Mapping, Protocol, Sequence

import numpy as np
import seqio
import tensorflow as tf

from humpback_jax.data import templates
from humpback_jax.jsonl import JsonlError, iter_jsonl

try:  # Keep TF off the accelerators; fails harmlessly if TF already initialized its devices.
  tf.config.set_visible_devices([], "GPU")
except (RuntimeError, ValueError):  # pragma: no cover
  pass

SPLIT = "train"
LENGTH_POLICIES = ("fit", "truncate", "drop")
MODEL_FEATURE_KEYS = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
                      "decoder_segment_ids", "decoder_positions")


class Tokenizer(Protocol):
  """What this module needs from ``humpback_jax.tokenizers`` objects."""

  vocab_size: int
  eos_id: int
  bos_id: int | None
  pad_id: int | None
  add_bos: bool
  chat_template: str | None

  def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
    ...

  def decode(self, ids: Sequence[int]) -> str:
    ...


# --------------------------------------------------------------------------------------------
# Vocabulary


class TokenizerVocabulary(seqio.Vocabulary):
  """A ``seqio.Vocabulary`` over our tokenizer interface (``humpback_jax.tokenizers``).

  ``encode`` never adds BOS or EOS (the feature converter adds them once per example). The TF
  ops call the Python tokenizer through ``tf.numpy_function`` (serialized by the GIL).
  """

  def __init__(self, tokenizer: Tokenizer):
    super().__init__(extra_ids=0)
    self.tokenizer = tokenizer

  @property
  def bos_id(self) -> int | None:
    return self.tokenizer.bos_id

  @property
  def eos_id(self) -> int | None:
    return self.tokenizer.eos_id

  @property
  def pad_id(self) -> int:
    pad = getattr(self.tokenizer, "pad_id", None)
    return 0 if pad is None else int(pad)

  @property
  def unk_id(self) -> int | None:
    return None

  @property
  def _base_vocab_size(self) -> int:
    return int(self.tokenizer.vocab_size)

  def _encode(self, s: str) -> Sequence[int]:
    return list(self.tokenizer.encode(s, add_bos=False))

  def _decode(self, ids) -> str:
    return self.tokenizer.decode([int(i) for i in ids])

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    """string scalar -> int32 [n] (no BOS/EOS)."""
    def enc(b: bytes) -> np.ndarray:
      return np.asarray(self.tokenizer.encode(_py_str(b), add_bos=False), np.int32)
    if s.shape.rank not in (0, None):
      raise ValueError(f"TokenizerVocabulary.encode_tf takes a scalar string, got {s.shape}")
    out = tf.numpy_function(enc, [s], tf.int32, stateful=False)
    out.set_shape([None])
    return out

  def decode(self, ids) -> str:
    """Text of ``ids`` up to (not including) the first EOS."""
    ids = [int(i) for i in ids]
    if self.eos_id is not None and self.eos_id in ids:
      ids = ids[:ids.index(self.eos_id)]
    return self._decode(ids)

  def decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """int32 [..., n] -> string [...], each row up to its first EOS. Unlike seqio's default,
    id 0 is not treated as padding (it is a real token in many vocabularies)."""
    return self._decode_tf(ids)

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    def dec(a: np.ndarray) -> np.ndarray:
      a = np.asarray(a)
      flat = a.reshape(-1, a.shape[-1]) if a.ndim else a.reshape(1, 1)
      out = [self.decode(row).encode("utf-8") for row in flat]
      return np.asarray(out, dtype=object).reshape(a.shape[:-1])
    out = tf.numpy_function(dec, [ids], tf.string, stateful=False)
    out.set_shape(ids.shape[:-1])
    return out

  def __eq__(self, other) -> bool:
    return isinstance(other, TokenizerVocabulary) and other.tokenizer is self.tokenizer

  def __hash__(self) -> int:
    return id(self.tokenizer)


# --------------------------------------------------------------------------------------------
# Sources, preprocessors, tasks


@dataclasses.dataclass(frozen=True)
class JsonlSource:
  """One JSONL file of pairs and the tags of records that carry no ``"tags"`` list."""

  path: str
  default_tags: tuple[str, ...] = ()


def _read_pairs(sources: Sequence[JsonlSource]) -> tuple[list[str], list[str], list[list[str]]]:
  """Reads (instruction, response, tags) from every source, in order.

  Raises:
    FileNotFoundError: a source file is missing.
    JsonlError: a record lacks a string ``instruction``/``response`` or has a bad ``tags``.
  """
  instructions, responses, tags = [], [], []
  for src in sources:
    for i, rec in enumerate(iter_jsonl(src.path), 1):
      x, y = rec.get("instruction"), rec.get("response")
      if not isinstance(x, str) or not isinstance(y, str):
        raise JsonlError(f"{src.path}: record {i} needs string 'instruction' and 'response'")
      t = rec.get("tags", src.default_tags)
      if not isinstance(t, (list, tuple)) or not all(isinstance(s, str) for s in t):
        raise JsonlError(f"{src.path}: record {i}: 'tags' must be a list of strings, got {t!r}")
      instructions.append(x)
      responses.append(y)
      tags.append(list(t))
  return instructions, responses, tags


def _pairs_dataset_fn(split: str, shuffle_files: bool, seed: int | None = None, *,
                      sources: tuple[JsonlSource, ...]) -> tf.data.Dataset:
  """seqio ``FunctionDataSource`` fn: records as {"instruction", "response": str, "tags": [n]}.

  Files are read when the dataset is built (not at registration), in source order; shuffling is
  done downstream (``make_train_iterator``) so ``shuffle_files``/``seed`` are ignored.
  """
  del split, shuffle_files, seed
  x, y, t = _read_pairs(sources)
  flat = [s for row in t for s in row]
  tags = tf.RaggedTensor.from_row_lengths(
      tf.constant(flat, tf.string, shape=[len(flat)]),
      tf.constant([len(r) for r in t], tf.int64, shape=[len(t)]))
  return tf.data.Dataset.from_tensor_slices({
      "instruction": tf.constant(x, tf.string, shape=[len(x)]),
      "response": tf.constant(y, tf.string, shape=[len(y)]),
      "tags": tags})


def _py_str(b) -> str:
  """A ``tf.numpy_function`` string argument (bytes, or a 0-d object array eagerly) as str."""
  if isinstance(b, np.ndarray):
    b = b.item()
  return b.decode("utf-8") if isinstance(b, bytes) else str(b)


def render_forward(dataset: tf.data.Dataset, tokenizer: Tokenizer) -> tf.data.Dataset:
  """Preprocessor: ``inputs`` = forward prompt of (instruction, tags), ``targets`` = response."""
  def render(x, tags) -> bytes:
    return templates.forward_prompt(tokenizer, _py_str(x), [_py_str(t) for t in tags]).encode()

  def fn(ex):
    prompt = tf.numpy_function(render, [ex["instruction"], ex["tags"]], tf.string,
                               stateful=False)
    prompt.set_shape([])
    return {"inputs": prompt, "targets": ex["response"]}
  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def render_backward(dataset: tf.data.Dataset, tokenizer: Tokenizer) -> tf.data.Dataset:
  """Preprocessor: ``inputs`` = backward prompt of the response, ``targets`` = instruction."""
  def render(y) -> bytes:
    return templates.backward_prompt(tokenizer, _py_str(y)).encode()

  def fn(ex):
    prompt = tf.numpy_function(render, [ex["response"]], tf.string, stateful=False)
    prompt.set_shape([])
    return {"inputs": prompt, "targets": ex["instruction"]}
  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def _register(name: str, kind: str, sources: Sequence[JsonlSource], tokenizer: Tokenizer
              ) -> seqio.Task:
  if kind not in ("forward", "backward"):
    raise ValueError(f"kind must be 'forward' or 'backward', got {kind!r}")
  sources = tuple(JsonlSource(os.fspath(s.path), tuple(s.default_tags)) for s in sources)
  vocab = TokenizerVocabulary(tokenizer)
  render = render_forward if kind == "forward" else render_backward
  seqio.TaskRegistry.remove(name)  # re-registration safe
  return seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(
          functools.partial(_pairs_dataset_fn, sources=sources), splits=[SPLIT],
          caching_permitted=False),
      preprocessors=[functools.partial(render, tokenizer=tokenizer),
                     functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False)],
      output_features={"inputs": seqio.Feature(vocab, add_eos=False),
                       "targets": seqio.Feature(vocab, add_eos=False)})


def forward_task(name: str, sources: Sequence[JsonlSource | tuple[str, Sequence[str]]],
                 tokenizer: Tokenizer) -> seqio.Task:
  """Registers (replacing any previous) a forward task over one or more JSONL sources.

  Args:
    name: registry name.
    sources: ``JsonlSource``s or ``(path, default_tags)`` pairs, concatenated in order.
    tokenizer: renders the chat template and tokenizes.
  """
  return _register(name, "forward", [s if isinstance(s, JsonlSource) else JsonlSource(*s)
                                     for s in sources], tokenizer)


def backward_task(name: str, jsonl_path: str | os.PathLike, tokenizer: Tokenizer
                  ) -> seqio.Task:
  """Registers (replacing any previous) the backward task (response -> instruction)."""
  return _register(name, "backward", [JsonlSource(os.fspath(jsonl_path))], tokenizer)


def register_humpback_tasks(tokenizer: Tokenizer, seed_jsonl: str | os.PathLike,
                            augmented_jsonl: str | os.PathLike | None = None, *,
                            prefix: str = "") -> dict[str, seqio.Task]:
  """Registers the tasks of one Humpback iteration.

  Returns:
    ``{"seed_forward", "seed_backward"[, "augmented_forward", "seed_augmented_forward"]}`` ->
    task, registered as ``prefix + key``. ``seed_augmented_forward`` is the M1/M2 data: seed
    with ``S_a`` + curated pairs with ``S_w`` ([HB] §2.3), each once per epoch.
  """
  seed = JsonlSource(os.fspath(seed_jsonl), (templates.TAG_ASSISTANT,))
  out = {"seed_forward": forward_task(prefix + "seed_forward", [seed], tokenizer),
         "seed_backward": backward_task(prefix + "seed_backward", seed_jsonl, tokenizer)}
  if augmented_jsonl is not None:
    aug = JsonlSource(os.fspath(augmented_jsonl), (templates.TAG_WEB,))
    out["augmented_forward"] = forward_task(prefix + "augmented_forward", [aug], tokenizer)
    out["seed_augmented_forward"] = forward_task(
        prefix + "seed_augmented_forward", [seed, aug], tokenizer)
  return out


# --------------------------------------------------------------------------------------------
# Length policy and feature conversion


def length_status(prompt_len: int, target_len: int, sequence_length: int, add_bos: bool,
                  policy: str) -> str:
  """"ok", "truncated" or "dropped" for an example (mirrors ``CausalLMFeatureConverter``).

  ``len(full) = add_bos + prompt_len + target_len + 1`` needs ``len(full) - 1`` positions.
  """
  if policy not in LENGTH_POLICIES:
    raise ValueError(f"length_policy must be one of {LENGTH_POLICIES}, got {policy!r}")
  prefix = int(add_bos) + prompt_len
  if prefix < 1:
    return "dropped"  # nothing to condition the first target on
  if prefix + target_len <= sequence_length:
    return "ok"
  if policy == "fit" and sequence_length - sequence_length // 2 > int(add_bos):
    return "truncated"
  if policy == "truncate" and prefix <= sequence_length:
    return "truncated"
  return "dropped"


class CausalLMFeatureConverter(seqio.FeatureConverter):
  """{"inputs", "targets"} token ids -> packed decoder-only features (see module docstring).

  Task features: ``inputs`` (prompt ids) and ``targets`` (response ids), int32, no BOS/EOS.
  Model features: ``MODEL_FEATURE_KEYS``, int32 [sequence_length], with segment ids and positions
  also when not packing (one example per row). ``task_feature_lengths`` must give the same length
  L for both features: the model length L. Over-long examples are handled by ``length_policy``
  (so seqio's per-feature length check is off by default).

  Args:
    bos_id: prepended to every example, or None for none.
    eos_id: appended to every example's targets (weighted).
    length_policy: "fit", "truncate" or "drop".
    pack: pack several examples per row (seqio ``trim_and_pack_dataset``).
  """

  TASK_FEATURES = {"inputs": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
                   "targets": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)}
  MODEL_FEATURES = {k: seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)
                    for k in MODEL_FEATURE_KEYS}
  PACKING_FEATURE_DTYPES = {}  # segment ids / positions are MODEL_FEATURES (always emitted)

  def __init__(self, *, bos_id: int | None, eos_id: int, length_policy: str = "fit",
               pack: bool = True, apply_length_check: bool = False):
    if length_policy not in LENGTH_POLICIES:
      raise ValueError(f"length_policy must be one of {LENGTH_POLICIES}, got {length_policy!r}")
    super().__init__(pack=pack, apply_length_check=apply_length_check,
                     bos_id=0 if bos_id is None else bos_id)
    self._bos = bos_id
    self._eos = int(eos_id)
    self._policy = length_policy

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]
                                ) -> Mapping[str, int]:
    lengths = set(task_feature_lengths.values())
    if len(lengths) != 1:
      raise ValueError(f"give inputs and targets the same length (the model length), got "
                       f"{dict(task_feature_lengths)}")
    length = lengths.pop()
    return {k: length for k in MODEL_FEATURE_KEYS}

  def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
                        ) -> tf.data.Dataset:
    length = self.get_model_feature_lengths(task_feature_lengths)["decoder_input_tokens"]
    n_bos = 0 if self._bos is None else 1
    bos = tf.constant([self._bos] if self._bos is not None else [], tf.int32, shape=[n_bos])
    eos = tf.constant([self._eos], tf.int32)
    policy = self._policy

    def keep(ex):
      prefix = n_bos + tf.size(ex["inputs"])
      fits = prefix + tf.size(ex["targets"]) <= length
      if policy == "truncate":
        fits = prefix <= length
      if policy == "fit":
        fits = tf.constant(length - length // 2 > n_bos)
      return tf.logical_and(prefix >= 1, fits)

    def fit(inp, tgt):
      # Target room: all of it up to half the row; the prompt loses its middle to make room
      # (templates.fit_prompt, the same cut the sampler makes at inference).
      budget = length - n_bos - tf.minimum(tf.size(tgt), length // 2)
      head = budget // 2
      return tf.cond(tf.size(inp) <= budget, lambda: inp,
                     lambda: tf.concat([inp[:head], inp[tf.size(inp) - (budget - head):]], 0))

    def build(ex):
      inp, tgt = ex["inputs"], ex["targets"]
      if policy == "fit":
        inp = fit(inp, tgt)
      full = tf.concat([bos, inp, tgt, eos], 0)[:length + 1]
      weights = tf.concat([tf.zeros([n_bos + tf.size(inp)], tf.int32),
                           tf.ones([tf.size(tgt) + 1], tf.int32)], 0)[:length + 1]
      # +1: seqio's packer treats id 0 as padding (see module docstring).
      return {"decoder_input_tokens": full[:-1] + 1, "decoder_target_tokens": full[1:] + 1,
              "decoder_loss_weights": weights[1:] + 1}

    ds = ds.filter(keep).map(build, num_parallel_calls=tf.data.AUTOTUNE)
    keys = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")
    lengths = {k: length for k in keys}
    if self.pack:
      ds = seqio.utils.trim_and_pack_dataset(ds, lengths)

      def unshift(ex):
        seg = ex["decoder_input_tokens_segment_ids"]
        out = {k: tf.where(seg > 0, ex[k] - 1, 0) for k in keys}
        out["decoder_segment_ids"] = seg
        out["decoder_positions"] = ex["decoder_input_tokens_positions"]
        return out
    else:
      ds = seqio.utils.trim_and_pad_dataset(ds, lengths)

      def unshift(ex):
        real = tf.cast(ex["decoder_input_tokens"] > 0, tf.int32)
        out = {k: tf.where(real > 0, ex[k] - 1, 0) for k in keys}
        out["decoder_segment_ids"] = real
        out["decoder_positions"] = tf.range(length, dtype=tf.int32) * real
        return out
    return ds.map(unshift, num_parallel_calls=tf.data.AUTOTUNE)


# --------------------------------------------------------------------------------------------
# Training iterator


def _resolve_task(task: str | os.PathLike | seqio.Task, tokenizer: Tokenizer, kind: str,
                  default_tags: Sequence[str]) -> seqio.Task:
  if isinstance(task, seqio.Task):
    return task
  task = os.fspath(task)
  if task in seqio.TaskRegistry.names():
    return seqio.TaskRegistry.get(task)
  if os.path.exists(task):
    key = hashlib.sha1(f"{os.path.abspath(task)}|{kind}|{list(default_tags)}".encode())
    name = f"jsonl_{kind}_{key.hexdigest()[:12]}"
    if kind == "backward":
      return backward_task(name, task, tokenizer)
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
               eval_batches: list[dict[str, np.ndarray]] | None = None):
    self._it = dataset.as_numpy_iterator()
    self.rows_per_batch = rows_per_batch
    self.eval_batches = eval_batches
    self.stats = stats
    self.stats.update(batches=0, examples_seen=0, tokens_seen=0, target_tokens_seen=0,
                      mean_examples_per_batch=0.0)

  def __iter__(self) -> "TrainIterator":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = {k: np.asarray(v, np.int32) for k, v in next(self._it).items()}
    seg = batch["decoder_segment_ids"]
    s = self.stats
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
    pack: pack examples into rows (else one example per row and ``batch_size`` rows).
    length_policy: "fit", "truncate" or "drop" (module docstring).
    start_step: skip this many batches (resume after a checkpoint at that step).
    rows_per_batch: override the packed rows per batch.
    row_multiple: rows per batch are rounded up to a multiple of this (the mesh's
      ``data * fsdp``, ``sharding.batch_parallel_size``).
    holdout: examples held out of training for evaluation (module docstring), returned as
      ``TrainIterator.eval_batches``; 0 = none (then the batches are those of earlier versions).
  Returns:
    A ``TrainIterator``; the same arguments always give the same batches.
  Raises:
    ValueError: unknown task / policy, a task whose every example is dropped, ``holdout``
      leaving nothing to train on, or ``batch_size`` (pack=False) not divisible by
      ``row_multiple``.
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

  if pack:
    order0 = [train_idx[j] for j in _epoch_permutation(len(train_idx), seed, 0).numpy()]
    lens_in_order = [min(int(add_bos) + len(inputs[k]) + len(targets[k]), sequence_length)
                     for k in order0 if k in kept_set]
    per_row = len(train_kept) / _simulate_packing(lens_in_order, sequence_length)
    rows = rows_per_batch or max(1, round(batch_size / per_row))
  else:
    per_row = 1.0
    rows = rows_per_batch or batch_size
    if rows % row_multiple:
      raise ValueError(f"batch_size={rows} rows is not divisible by row_multiple={row_multiple}")
  rows = -(-rows // row_multiple) * row_multiple
  if pack and rows_per_batch is None and abs(rows * per_row - batch_size) > 0.25 * batch_size:
    logging.warning("task %s: %d packed rows/batch hold ~%.1f examples, batch_size is %d",
                    task.name, rows, rows * per_row, batch_size)

  stats = {
      "task": task.name, "dataset_examples": n, "examples_per_epoch": len(train_kept),
      "heldout_examples": len(heldout), "heldout_duplicates_excluded": duplicates,
      "truncated_per_epoch": truncated, "dropped_per_epoch": dropped,
      "length_policy": length_policy, "sequence_length": sequence_length,
      "mean_positions_per_example": float(np.mean(positions)),
      "max_prompt_tokens": int(max(len(i) for i in inputs)),
      "max_target_tokens": int(max(len(t) for t in targets)),
      "estimated_examples_per_row": per_row, "rows_per_batch": rows, "pack": pack,
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
  converter = CausalLMFeatureConverter(bos_id=tokenizer.bos_id if add_bos else None,
                                       eos_id=tokenizer.eos_id, length_policy=length_policy,
                                       pack=pack)
  lengths = {"inputs": sequence_length, "targets": sequence_length}
  options = tf.data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = 4  # leave the host's cores to JAX
  ds = _example_order(len(train_idx), seed, num_epochs).map(
      lambda j: example(tf.gather(train_idx_t, j)))
  ds = converter(ds, lengths)
  ds = ds.batch(rows, drop_remainder=True).skip(start_step).prefetch(2)
  ds = ds.with_options(options)
  eval_batches = None
  if heldout:
    eds = tf.data.Dataset.from_tensor_slices(tf.constant(heldout, tf.int64)).map(example)
    eds = converter(eds, lengths).batch(rows).with_options(options)
    eval_batches = []
    for b in eds.as_numpy_iterator():
      pad = rows - len(b["decoder_input_tokens"])
      eval_batches.append({k: np.pad(np.asarray(v, np.int32), ((0, pad), (0, 0)))
                           for k, v in b.items()})
  return TrainIterator(ds, rows, stats, eval_batches)
