"""seqio tasks of fine-tuning and the causal-LM feature converter (the training iterator over
them is ``data/iterator.py``).

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

TF/seqio notes: importing this module imports TensorFlow (~5-10 s) and hides every GPU from TF
(its CPU pipeline must not reserve accelerator memory JAX needs). The training package
(``humpback_jax.train``) does not import TF. Tokenization (``tf.numpy_function`` into the Python
tokenizer) runs once per task, before training, in ``iterator.make_train_iterator``.
"""

from __future__ import annotations

import dataclasses
import functools
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


# Training directions (kinds of task) -> the backward template they render
# (``bft.templates.bf_backward_prompt``): "backward" wraps [BF]'s backward words in the
# tokenizer's chat template ("hb", the default); "backward_llama2" renders them exactly as [BF]
# prints them, in Llama-2's ``[INST] ... [/INST]`` format ("bf").
BACKWARD_KINDS = {"backward": "hb", "backward_llama2": "bf"}
KINDS = ("forward",) + tuple(BACKWARD_KINDS)


def backward_prompt_for(kind: str, tokenizer: Tokenizer, response: str) -> str:
  """The backward prompt a model of training direction ``kind`` is trained and sampled with.

  Raises:
    ValueError: ``kind`` is not a backward kind.
  """
  if kind not in BACKWARD_KINDS:
    raise ValueError(f"backward kind must be one of {tuple(BACKWARD_KINDS)}, got {kind!r}")
  from humpback_jax.bft.templates import bf_backward_prompt  # pylint: disable=g-import-not-at-top
  return bf_backward_prompt(tokenizer, response, template=BACKWARD_KINDS[kind])


def render_backward(dataset: tf.data.Dataset, tokenizer: Tokenizer,
                    kind: str = "backward") -> tf.data.Dataset:
  """Preprocessor: ``inputs`` = backward prompt of the response (``backward_prompt_for``
  ``kind``), ``targets`` = instruction."""
  backward_prompt_for(kind, tokenizer, "")  # fail early on an unknown kind

  def render(y) -> bytes:
    return backward_prompt_for(kind, tokenizer, _py_str(y)).encode()

  def fn(ex):
    prompt = tf.numpy_function(render, [ex["response"]], tf.string, stateful=False)
    prompt.set_shape([])
    return {"inputs": prompt, "targets": ex["instruction"]}
  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def _register(name: str, kind: str, sources: Sequence[JsonlSource], tokenizer: Tokenizer
              ) -> seqio.Task:
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  sources = tuple(JsonlSource(os.fspath(s.path), tuple(s.default_tags)) for s in sources)
  vocab = TokenizerVocabulary(tokenizer)
  render = (render_forward if kind == "forward" else
            functools.partial(render_backward, kind=kind))
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


def backward_task(name: str, jsonl_path: str | os.PathLike, tokenizer: Tokenizer,
                  kind: str = "backward") -> seqio.Task:
  """Registers (replacing any previous) the backward task (response -> instruction) with the
  backward template of ``kind`` (``BACKWARD_KINDS``)."""
  return _register(name, kind, [JsonlSource(os.fspath(jsonl_path))], tokenizer)


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
