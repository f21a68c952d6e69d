"""seqio tasks, the causal-LM feature converter and the training iterator (``data/tasks.py``)."""

from __future__ import annotations

import contextlib
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from humpback_jax.data import iterator, tasks, templates
from humpback_jax.models.config import LlamaConfig
from humpback_jax.models.llama import Llama, init_params
from numerics import logit_tol

WEIGHTS = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "weights"


class ByteTok:
  """Toy byte tokenizer. 'z' maps to id 0 to prove id 0 survives packing."""

  vocab_size = 259
  bos_id, eos_id, pad_id = 1, 2, 0
  add_bos = True
  chat_template = None

  def encode(self, text, add_bos=None):
    ids = [0 if b == ord("z") else b + 3 for b in text.encode()]
    return ([self.bos_id] + ids) if (self.add_bos if add_bos is None else add_bos) else ids

  def decode(self, ids):
    return bytes(ord("z") if i == 0 else i - 3 for i in ids if i == 0 or i >= 3).decode(
        errors="replace")


RECORDS = [
    {"instruction": "Say zebra.", "response": "zebra zone"},
    {"instruction": "Count to three", "response": "one two three"},
    {"instruction": "Hi", "response": "Hello! How can I help?"},
    {"instruction": "Name a colour", "response": "blue"},
    {"instruction": "What is 2+2?", "response": "4"},
    {"instruction": "Spell cat", "response": "c-a-t"},
    {"instruction": "A long one", "response": "lorem ipsum " * 3},
    {"instruction": "Own tags", "response": "tagged", "tags": ["custom tag."]},
]


def write_jsonl(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return path


@pytest.fixture(scope="module")
def tok():
  return ByteTok()


@pytest.fixture(scope="module")
def seed_path(tmp_path_factory):
  return write_jsonl(tmp_path_factory.mktemp("data") / "seed.jsonl", RECORDS)


@pytest.fixture(scope="module")
def aug_path(tmp_path_factory):
  return write_jsonl(tmp_path_factory.mktemp("data") / "aug.jsonl", [
      {"instruction": "Web question", "response": "web answer z"},
      {"instruction": "Another", "response": "more text"}])


def expected_forward(tok, rec, default_tags):
  prompt = templates.forward_prompt(tok, rec["instruction"], rec.get("tags", default_tags))
  return tok.encode(prompt, add_bos=False), tok.encode(rec["response"], add_bos=False)


def all_batches(it):
  return list(it)


def segments(batch):
  """Yields (row, segment id, slice) for every packed example."""
  seg = batch["decoder_segment_ids"]
  for r in range(seg.shape[0]):
    for s in range(1, seg[r].max() + 1):
      idx = np.nonzero(seg[r] == s)[0]
      assert np.all(np.diff(idx) == 1), "segment not contiguous"
      yield r, s, slice(idx[0], idx[-1] + 1)


def check_rows(batches, expected_examples, tok, seq_len):
  """Brute force: every packed example is one expected example, with exact features."""
  seen = []
  for b in batches:
    for k in tasks.MODEL_FEATURE_KEYS:
      assert b[k].dtype == np.int32 and b[k].shape[1] == seq_len
    pad = b["decoder_segment_ids"] == 0
    for k in ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
              "decoder_positions"):
      assert np.all(b[k][pad] == 0), k
    # padding only at the end of a row
    for r in range(pad.shape[0]):
      first_pad = np.argmax(pad[r]) if pad[r].any() else seq_len
      assert pad[r][first_pad:].all()
    for r, _, sl in segments(b):
      inp = b["decoder_input_tokens"][r, sl]
      tgt = b["decoder_target_tokens"][r, sl]
      w = b["decoder_loss_weights"][r, sl]
      np.testing.assert_array_equal(b["decoder_positions"][r, sl], np.arange(len(inp)))
      np.testing.assert_array_equal(inp[1:], tgt[:-1])  # shifted by one
      full = np.concatenate([inp, tgt[-1:]]).tolist()
      match = [i for i, (p, y) in enumerate(expected_examples)
               if full == [tok.bos_id] + p + y + [tok.eos_id]]
      assert len(match) == 1, f"packed example not found: {tok.decode(full)!r}"
      p, y = expected_examples[match[0]]
      # weight 1 exactly on targets that are response tokens or EOS: the first weighted
      # position is the last prompt token (predicting the first response token).
      want_w = [0] * len(p) + [1] * (len(y) + 1)  # len(full) - 1 = 1 + len(p) + len(y)
      np.testing.assert_array_equal(w, want_w)
      np.testing.assert_array_equal(tgt[w == 1], y + [tok.eos_id])
      seen.append(match[0])
  return seen


def test_packing_features_are_exact(tok, seed_path):
  task = tasks.forward_task("test_seed_fwd", [(str(seed_path), (templates.TAG_ASSISTANT,))],
                            tok)
  seq_len = 160
  it = iterator.make_train_iterator(task, tok, sequence_length=seq_len, batch_size=4, seed=3,
                                 num_epochs=1, rows_per_batch=1)
  batches = all_batches(it)
  expected = [expected_forward(tok, r, (templates.TAG_ASSISTANT,)) for r in RECORDS]
  seen = check_rows(batches, expected, tok, seq_len)
  assert sorted(seen) == list(range(len(RECORDS)))  # one epoch = each example exactly once
  assert max(b["decoder_segment_ids"].max() for b in batches) >= 2  # really packed
  assert it.stats["examples_seen"] == len(RECORDS)
  assert it.stats["truncated_per_epoch"] == it.stats["dropped_per_epoch"] == 0
  # id 0 ('z') is a real token and survives packing
  assert any((b["decoder_target_tokens"][b["decoder_segment_ids"] > 0] == 0).any()
             for b in batches)


def test_tags_in_forward_inputs_and_seed_plus_augmented(tok, seed_path, aug_path):
  ts = tasks.register_humpback_tasks(tok, seed_path, aug_path, prefix="t_")
  assert set(ts) == {"seed_forward", "seed_backward", "augmented_forward",
                     "seed_augmented_forward"}
  ts2 = tasks.register_humpback_tasks(tok, seed_path, aug_path, prefix="t_")  # re-register
  assert ts2["seed_forward"].name == "t_seed_forward"
  inputs, targets = iterator.tokenized_examples(ts["seed_augmented_forward"])
  assert len(inputs) == len(RECORDS) + 2
  prompts = [tok.decode(i) for i in inputs]
  for p, rec in zip(prompts[:len(RECORDS)], RECORDS):
    if "tags" in rec:
      assert "custom tag." in p and templates.TAG_ASSISTANT not in p
    else:
      assert templates.TAG_ASSISTANT in p and templates.TAG_WEB not in p
    assert p == templates.forward_prompt(tok, rec["instruction"],
                                         rec.get("tags", (templates.TAG_ASSISTANT,)))
  for p in prompts[len(RECORDS):]:
    assert templates.TAG_WEB in p and templates.TAG_ASSISTANT not in p
  # tokens: prompt and response tokenized separately, without BOS/EOS
  assert list(inputs[0]) == tok.encode(prompts[0], add_bos=False)
  assert list(targets[0]) == tok.encode(RECORDS[0]["response"], add_bos=False)


def test_backward_task_loss_on_instruction_only(tok, seed_path):
  task = tasks.backward_task("test_seed_bwd", seed_path, tok)
  seq_len = 320
  it = iterator.make_train_iterator(task, tok, sequence_length=seq_len, batch_size=4, seed=0,
                                 num_epochs=1, rows_per_batch=1)
  batches = all_batches(it)
  expected = [(tok.encode(templates.backward_prompt(tok, r["response"]), add_bos=False),
               tok.encode(r["instruction"], add_bos=False)) for r in RECORDS]
  seen = check_rows(batches, expected, tok, seq_len)
  assert sorted(seen) == list(range(len(RECORDS)))
  for b in batches:
    for r, _, sl in segments(b):
      w = b["decoder_loss_weights"][r, sl]
      weighted = tok.decode(b["decoder_target_tokens"][r, sl][w == 1][:-1])
      prompt = tok.decode(b["decoder_input_tokens"][r, sl][w == 0])
      assert weighted in [r_["instruction"] for r_ in RECORDS]
      assert "Write the most likely question" in prompt
      assert templates.TAG_WEB not in prompt and "custom tag." not in prompt


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_packed_loss_equals_sum_of_unpacked_losses(tok, seed_path, dtype):
  """Runs the real Llama on the packed row and on each example alone: no cross-segment
  attention, and positions restart per example. In float64 (64-bit JAX inside this test only)
  the two agree to float64 rounding; tolerances are rounding bounds, not absolute numbers."""
  task = tasks.forward_task("test_seed_fwd2", [(str(seed_path), (templates.TAG_ASSISTANT,))],
                            tok)
  it = iterator.make_train_iterator(task, tok, sequence_length=400, batch_size=4, seed=1,
                                 num_epochs=1, rows_per_batch=1)
  batch = max(all_batches(it), key=lambda b: b["decoder_segment_ids"].max())
  assert batch["decoder_segment_ids"].max() >= 3
  cfg = LlamaConfig(vocab_size=259, hidden_size=32, intermediate_size=64, num_layers=2,
                    num_heads=4, num_kv_heads=2)
  params = init_params(cfg, jax.random.PRNGKey(0))
  eps = float(np.finfo(dtype).eps)
  with jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext():
    cfg = cfg.replace(dtype=dtype, param_dtype=dtype)
    params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), params)
    model = Llama(cfg)

    @jax.jit
    def token_losses(inp, tgt, pos, seg):
      logits, _ = model.apply(params, inp[None], pos[None], seg[None])
      return logits[0], optax.softmax_cross_entropy_with_integer_labels(logits[0], tgt)

    b = {k: v[0] for k, v in batch.items()}
    length = b["decoder_input_tokens"].shape[0]
    packed_logits, packed_ce = token_losses(b["decoder_input_tokens"],
                                            b["decoder_target_tokens"], b["decoder_positions"],
                                            b["decoder_segment_ids"])
    assert packed_logits.dtype == np.dtype(dtype)
    w = b["decoder_loss_weights"]
    packed_sum = float(jnp.sum(packed_ce * w))
    # Two independently rounded forward passes.
    tol = logit_tol(dtype, cfg.num_layers, float(jnp.abs(packed_logits).max()), runs=2)
    alone_sum = 0.0
    for _, _, sl in segments(batch):
      n = sl.stop - sl.start
      alone = lambda x: np.pad(x[sl], (0, length - n))  # the example alone at row start
      logits, ce = token_losses(alone(b["decoder_input_tokens"]),
                                alone(b["decoder_target_tokens"]),
                                np.pad(np.arange(n, dtype=np.int32), (0, length - n)),
                                np.pad(np.ones(n, np.int32), (0, length - n)))
      diff = float(jnp.abs(packed_logits[sl] - logits[:n]).max())
      print(f"{dtype}: max |logit diff| {diff:.2e} = {diff / tol:.3f} x tol")
      assert diff <= tol, (diff, tol)
      alone_sum += float(jnp.sum(ce[:n] * w[sl]))
  # Each weighted cross-entropy moves by <= 2 tol (logsumexp and the target logit each by <= tol);
  # each sum of <= `length` terms rounds by <= length * eps * sum (the worst case, any order).
  bound = 2 * tol * float(w.sum()) + 2 * length * eps * abs(packed_sum)
  print(f"{dtype}: logits tol {tol:.2e}; |packed - alone| loss sum "
        f"{abs(packed_sum - alone_sum):.2e} <= {bound:.2e} of {packed_sum:.1f}")
  assert abs(packed_sum - alone_sum) <= bound, (packed_sum, alone_sum, bound)


def test_length_policies_are_counted(tok, tmp_path):
  recs = [{"instruction": "short", "response": "ok"},
          {"instruction": "fits prompt", "response": "x" * 200},  # response too long
          {"instruction": "p" * 300, "response": "y"}]  # prompt alone too long
  path = write_jsonl(tmp_path / "long.jsonl", recs)
  seq_len = 96
  prompt1 = tok.encode(templates.forward_prompt(tok, recs[1]["instruction"]), add_bos=False)
  it = iterator.make_train_iterator(path, tok, sequence_length=seq_len, batch_size=1, seed=0,
                                 num_epochs=1, rows_per_batch=1, length_policy="truncate")
  batches = all_batches(it)
  assert it.stats["truncated_per_epoch"] == 1 and it.stats["dropped_per_epoch"] == 1
  assert it.stats["examples_per_epoch"] == 2 and it.stats["examples_seen"] == 2
  trunc = [b for b in batches if b["decoder_segment_ids"].min() == 1]
  assert len(trunc) == 1  # the truncated example fills its row exactly
  t = {k: v[0] for k, v in trunc[0].items()}
  assert tok.eos_id not in t["decoder_target_tokens"].tolist()  # cut response: no EOS
  assert t["decoder_loss_weights"].sum() == seq_len - len(prompt1)
  assert t["decoder_loss_weights"][-1] == 1

  it = iterator.make_train_iterator(path, tok, sequence_length=seq_len, batch_size=1, seed=0,
                                 num_epochs=1, rows_per_batch=1, length_policy="drop")
  assert len(all_batches(it)) == 1
  assert it.stats["dropped_per_epoch"] == 2 and it.stats["examples_seen"] == 1
  with pytest.raises(ValueError, match="length_policy"):
    iterator.make_train_iterator(path, tok, sequence_length=seq_len, batch_size=1, seed=0,
                              length_policy="left")


def test_fit_policy_cuts_the_prompt_middle_and_keeps_the_target(tok, tmp_path):
  # Backward model: the prompt embeds a long response; the target (instruction) is short.
  recs = [{"instruction": "What is X?", "response": "A" * 150 + "B" * 150}]
  path = write_jsonl(tmp_path / "back.jsonl", recs)
  seq_len = 96
  it = iterator.make_train_iterator(path, tok, sequence_length=seq_len, batch_size=1, seed=0,
                                 num_epochs=1, rows_per_batch=1, kind="backward")
  (b,) = all_batches(it)
  assert it.stats["truncated_per_epoch"] == 1 and it.stats["dropped_per_epoch"] == 0
  prompt = tok.encode(templates.backward_prompt(tok, recs[0]["response"]), add_bos=False)
  target = tok.encode("What is X?", add_bos=False) + [tok.eos_id]
  n_bos = int(tok.add_bos)
  budget = seq_len - n_bos - len(target) + 1
  expected_prompt = prompt[:budget // 2] + prompt[len(prompt) - (budget - budget // 2):]
  full = ([tok.bos_id] if tok.add_bos else []) + expected_prompt + target
  assert len(full) == seq_len + 1
  assert b["decoder_input_tokens"][0].tolist() == full[:-1]
  assert b["decoder_target_tokens"][0].tolist() == full[1:]
  w = b["decoder_loss_weights"][0]
  assert w.sum() == len(target) and w[-len(target):].all()  # the whole instruction + EOS
  assert templates.fit_prompt(prompt, budget) == expected_prompt


def test_iterator_is_deterministic_and_resumable(tok, seed_path, aug_path):
  task = tasks.register_humpback_tasks(tok, seed_path, aug_path, prefix="d_")[
      "seed_augmented_forward"]
  kw = dict(sequence_length=128, batch_size=4, seed=7)
  a = iterator.make_train_iterator(task, tok, **kw)
  first = [next(a) for _ in range(6)]  # crosses epoch boundaries (10 examples / epoch)
  b = iterator.make_train_iterator(task, tok, **kw)
  again = [next(b) for _ in range(6)]
  c = iterator.make_train_iterator(task, tok, start_step=4, **kw)
  resumed = [next(c) for _ in range(2)]
  for x, y in zip(first, again):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  for x, y in zip(first[4:], resumed):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  other = iterator.make_train_iterator(task, tok, **dict(kw, seed=8))
  assert any(not np.array_equal(x["decoder_input_tokens"], next(other)["decoder_input_tokens"])
             for x in first)
  # rows per batch respect the mesh multiple; ~batch_size examples per step
  d = iterator.make_train_iterator(task, tok, row_multiple=4, **kw)
  assert d.rows_per_batch % 4 == 0 and next(d)["decoder_input_tokens"].shape[0] == \
      d.rows_per_batch


def test_unpacked_rows_hold_one_example(tok, seed_path):
  task = tasks.forward_task("test_seed_fwd3", [(str(seed_path), ())], tok)
  it = iterator.make_train_iterator(task, tok, sequence_length=128, batch_size=4, seed=0,
                                 num_epochs=1, pack=False)
  batches = all_batches(it)
  assert len(batches) == len(RECORDS) // 4
  expected = [expected_forward(tok, r, ()) for r in RECORDS]
  check_rows(batches, expected, tok, 128)
  for b in batches:
    assert b["decoder_input_tokens"].shape == (4, 128)
    assert b["decoder_segment_ids"].max(axis=1).tolist() == [1, 1, 1, 1]


def test_vocabulary_and_seqio_get_dataset(tok, seed_path):
  import seqio
  import tensorflow as tf
  vocab = tasks.TokenizerVocabulary(tok)
  ids = vocab.encode_tf(tf.constant("hi z"))
  assert ids.numpy().tolist() == tok.encode("hi z", add_bos=False)
  assert vocab.decode_tf(ids).numpy().decode() == "hi z"
  assert vocab.vocab_size == 259 and vocab.eos_id == 2
  task = tasks.forward_task("test_seed_fwd4", [(str(seed_path), ())], tok)
  conv = tasks.CausalLMFeatureConverter(bos_id=tok.bos_id, eos_id=tok.eos_id)
  ds = seqio.get_dataset(task.name, task_feature_lengths={"inputs": 256, "targets": 256},
                         dataset_split="train", shuffle=False, feature_converter=conv)
  rows = list(ds.as_numpy_iterator())
  assert sum(int(r["decoder_segment_ids"].max()) for r in rows) == len(RECORDS)
  check_rows([{k: v[None] for k, v in r.items()} for r in rows],
             [expected_forward(tok, r, ()) for r in RECORDS], tok, 256)


@pytest.mark.skipif(not (WEIGHTS / "tok512.bin").exists(), reason="no tok512.bin")
def test_llama2c_tokenizer_task(seed_path):
  from humpback_jax.tokenizers import Llama2cTokenizer
  tok = Llama2cTokenizer(WEIGHTS / "tok512.bin")
  task = tasks.forward_task("test_l2c_fwd", [(str(seed_path), (templates.TAG_ASSISTANT,))], tok)
  it = iterator.make_train_iterator(task, tok, sequence_length=256, batch_size=4, seed=0,
                                 num_epochs=1, rows_per_batch=1)
  expected = [expected_forward(tok, r, (templates.TAG_ASSISTANT,)) for r in RECORDS]
  seen = check_rows(all_batches(it), expected, tok, 256)
  assert sorted(seen) == list(range(len(RECORDS)))


# ---------------------------------------------------------------------------- held-out split


def _examples_in(batches):
  """The set of packed examples (their decoder input tokens) of ``batches``."""
  return {tuple(b["decoder_input_tokens"][r, sl].tolist()) for b in batches
          for r, _, sl in segments(b)}


def test_holdout_examples_are_never_trained_on(tok, seed_path, tmp_path):
  kw = dict(sequence_length=128, batch_size=4, seed=3, kind="forward")
  full = iterator.make_train_iterator(seed_path, tok, **kw)
  everything = _examples_in([next(full) for _ in range(12)])
  assert len(everything) == len(RECORDS)
  it = iterator.make_train_iterator(seed_path, tok, holdout=3, **kw)
  assert it.stats["heldout_examples"] == 3 and it.stats["examples_per_epoch"] == 5
  held = _examples_in(it.eval_batches)
  trained = _examples_in([next(it) for _ in range(12)])  # several epochs
  assert len(held) == 3 and held | trained == everything and not held & trained
  for b in it.eval_batches:  # the training batches' shape; the last one padded with zero rows
    for k in tasks.MODEL_FEATURE_KEYS:
      assert b[k].shape == (it.rows_per_batch, 128) and b[k].dtype == np.int32
  check_rows(it.eval_batches, [expected_forward(tok, r, ()) for r in RECORDS], tok, 128)
  # deterministic given the seed; another seed holds out other examples
  again = iterator.make_train_iterator(seed_path, tok, holdout=3, **kw)
  assert _examples_in(again.eval_batches) == held
  others = [_examples_in(iterator.make_train_iterator(seed_path, tok, holdout=3,
                                                   **dict(kw, seed=s)).eval_batches)
            for s in (4, 5, 6)]
  assert any(o != held for o in others)
  # a verbatim copy of a held-out example is not trained on either
  dup = write_jsonl(tmp_path / "dup.jsonl", RECORDS + RECORDS)
  d = iterator.make_train_iterator(dup, tok, holdout=1, **kw)
  assert d.stats["heldout_duplicates_excluded"] == 1 and d.stats["examples_per_epoch"] == 14
  assert not _examples_in(d.eval_batches) & _examples_in([next(d) for _ in range(12)])
  with pytest.raises(ValueError, match="nothing to train on"):
    iterator.make_train_iterator(seed_path, tok, holdout=len(RECORDS), **kw)


def test_holdout_zero_keeps_the_training_batches(tok, seed_path):
  kw = dict(sequence_length=128, batch_size=4, seed=7, kind="forward")
  a = iterator.make_train_iterator(seed_path, tok, **kw)
  b = iterator.make_train_iterator(seed_path, tok, holdout=0, **kw)
  assert b.eval_batches is None and b.stats["heldout_examples"] == 0
  for _ in range(5):
    x, y = next(a), next(b)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def _example_list(batch):
  """The batch's examples in packing order, each as a tuple of its feature slices."""
  out = []
  for r, _, sl in segments(batch):
    out.append(tuple(tuple(batch[k][r, sl].tolist()) for k in
                     ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
                      "decoder_positions")))
  return out


def test_first_fit_by_hand():
  assert iterator.first_fit([5, 4, 3, 2, 1], 6) == [0, 1, 2, 1, 0]
  assert iterator.first_fit([6, 6, 1], 6) == [0, 1, 2]
  assert iterator.first_fit([], 6) == []
  with pytest.raises(ValueError, match="does not fit"):
    iterator.first_fit([7], 6)


def test_pack_examples_copies_each_example_and_falls_back():
  rng = np.random.default_rng(0)
  lengths = [5, 3, 4, 2, 6]
  keys = tasks.MODEL_FEATURE_KEYS
  one = {k: np.zeros((5, 8), np.int32) for k in keys}
  for i, n in enumerate(lengths):
    for k in ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights"):
      one[k][i, :n] = rng.integers(1, 50, n)
    one["decoder_segment_ids"][i, :n] = 1
    one["decoder_positions"][i, :n] = np.arange(n)
  packed = iterator.pack_examples(one, rows=4)
  assert packed["decoder_segment_ids"].shape == (4, 8)
  # first-fit into rows of 8: 5 -> row 0, 3 -> row 0 (full), 4 -> row 1, 2 -> row 1, 6 -> row 2
  assert packed["decoder_segment_ids"].tolist()[0] == [1] * 5 + [2] * 3
  assert packed["decoder_segment_ids"].tolist()[1] == [1] * 4 + [2] * 2 + [0] * 2
  assert packed["decoder_segment_ids"].tolist()[3] == [0] * 8  # filler row
  # every example, in order, equals its own row's first n positions (brute force)
  want = [tuple(tuple(one[k][i, :n].tolist()) for k in
                ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
                 "decoder_positions")) for i, n in enumerate(lengths)]
  assert sorted(_example_list(packed)) == sorted(want)
  # too few rows: one row per example, rounded up to the multiple
  small = iterator.pack_examples(one, rows=2, row_multiple=4)
  assert small["decoder_segment_ids"].shape == (8, 8)
  assert small["decoder_segment_ids"].max(axis=1).tolist() == [1] * 5 + [0] * 3
  assert sorted(_example_list(small)) == sorted(want)


@pytest.mark.parametrize("pack", [True, False])
def test_exact_batch_examples_do_not_depend_on_the_row_multiple(tok, seed_path, aug_path,
                                                                 pack):
  """Every step holds exactly batch_size examples, the same ones for any row multiple (mesh);
  only the filler rows differ."""
  task = tasks.register_humpback_tasks(tok, seed_path, aug_path, prefix="x_")[
      "seed_augmented_forward"]
  kw = dict(sequence_length=128, batch_size=3, seed=5, pack=pack)
  runs = {m: iterator.make_train_iterator(task, tok, row_multiple=m, **kw) for m in (1, 4, 8)}
  steps = {m: [next(it) for _ in range(7)] for m, it in runs.items()}  # crosses epochs
  for m, batches in steps.items():
    for b in batches:
      rows = b["decoder_segment_ids"].shape[0]
      assert rows % m == 0 and rows == runs[m].rows_per_batch
      assert int(b["decoder_segment_ids"].max(axis=1).sum()) == 3  # examples in the step
  for i in range(7):
    ref = _example_list(steps[1][i])
    assert len(ref) == 3
    for m in (4, 8):
      assert _example_list(steps[m][i]) == ref
  assert runs[8].stats["mean_examples_per_batch"] == 3.0
  assert runs[1].stats["exact_batch"] is True


def test_backward_llama2_kind_renders_the_paper_prompt(tok, seed_path):
  """direction "backward_llama2": [BF]'s backward prompt as the paper prints it (Llama-2
  [INST] format, whatever the tokenizer's chat template), typed here by hand."""
  task = tasks.backward_task("test_seed_bwd_llama2", seed_path, tok, kind="backward_llama2")
  inputs, targets = iterator.tokenized_examples(task)
  r = RECORDS[0]
  want = ("[INST] Below is a candidate answer to a question or instruction from an user. Write "
          "the most likely question to which the text below would be a great answer.\n\n"
          f"{r['response'].strip()}\n\nAnswer in the style of an AI Assistant. [/INST]")
  assert tok.decode(list(inputs[0])) == want
  assert tasks.backward_prompt_for("backward_llama2", tok, r["response"]) == want
  assert list(targets[0]) == tok.encode(r["instruction"], add_bos=False)
  # the default kind is unchanged: the tokenizer's chat template around the same words
  assert tasks.backward_prompt_for("backward", tok, "y") == templates.backward_prompt(tok, "y")
  with pytest.raises(ValueError, match="backward kind"):
    tasks.backward_prompt_for("forward", tok, "y")
