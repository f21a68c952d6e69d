"""Evaluation core: win rate and standard error against hand-computed values, the both-orders
logic, the length-controlled GLM against an independent fit, the two-token read-out on every
tokenizer family, the local judge against a direct forward pass, model_outputs.json against
AlpacaEval's files, seeded subsets, resumable answers, and curation precision / recall.
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from humpback_jax import paths
from humpback_jax.curate import probe
from humpback_jax.data import templates
from humpback_jax.data.seed_io import SeedFormatError
from humpback_jax.eval import answers, compare, judge, outputs, winrate
from humpback_jax.eval.config import EvalConfig
from humpback_jax.eval.stages import precision_recall
from humpback_jax.models.config import LlamaConfig
from humpback_jax.models.llama import Llama, init_params
from humpback_jax.sample.sampler import Sampler
from numerics import precision
from test_sampler import ByteTokenizer

DATA = paths.default_data_root()
REF = DATA / "eval" / "alpaca_eval_805_ref_text_davinci_003.json"
needs_data = pytest.mark.skipif(not REF.exists(), reason="../shared/data not present")

CFG = LlamaConfig(vocab_size=272, hidden_size=32, intermediate_size=64, num_layers=2,
                  num_heads=4, num_kv_heads=2, max_seq_len=2048)


# --------------------------------------------------------------------------- win rates


def test_win_rate_and_standard_error_hand_computed():
  r = winrate.win_rate([1.0, 0.0, 0.5, 1.0])
  # mean 0.625; deviations .375 -.625 -.125 .375 -> sum of squares .6875, /3, sqrt, /sqrt(4)
  assert r["win_rate"] == pytest.approx(62.5)
  assert r["standard_error"] == pytest.approx(100 * math.sqrt(0.6875 / 3) / 2)
  assert (r["wins"], r["losses"], r["ties"], r["n"]) == (2, 1, 1, 4)
  assert r["discrete_win_rate"] == pytest.approx(62.5)
  soft = winrate.win_rate([0.9, 0.6, 0.2])
  assert soft["win_rate"] == pytest.approx(100 * 1.7 / 3)
  assert soft["standard_error"] == pytest.approx(100 * np.std([0.9, 0.6, 0.2], ddof=1) / 3 ** .5)
  assert soft["discrete_win_rate"] == pytest.approx(100 * 2 / 3)
  assert winrate.win_rate([0.7])["standard_error"] is None
  near = winrate.win_rate([0.5004, 0.4996, 0.502])  # within 1e-3 of 0.5: ties
  assert (near["wins"], near["losses"], near["ties"]) == (1, 0, 2)
  assert winrate.win_rate([])["win_rate"] is None
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    winrate.win_rate([1.2])


def test_both_orders_cancel_a_position_biased_judge():
  # A judge that always prefers position A: P(first better) = 1 in both orders -> 50%.
  pref = winrate.combine_orders(np.ones(5), np.ones(5))
  assert np.allclose(pref, 0.5) and winrate.win_rate(pref)["win_rate"] == pytest.approx(50)
  agree = winrate.order_agreement(np.ones(5), np.ones(5))
  assert agree["agreement"] == 0 and agree["position_bias"] == pytest.approx(0.5)
  # A consistent judge: the model wins 0.8 first, and the other wins 0.2 when first.
  pref = winrate.combine_orders([0.8, 0.3], [0.2, 0.7])
  assert np.allclose(pref, [0.8, 0.3])
  agree = winrate.order_agreement([0.8, 0.3], [0.2, 0.7])
  assert agree["agreement"] == 1 and agree["position_bias"] == pytest.approx(0.0)


class _FirstPositionBackend:
  """Always puts all mass on the first identifier."""

  def choice_logprobs(self, msgs, choices, system=None):
    return np.tile([0.0, -np.inf], (len(msgs), 1)), None


class _LongerBackend:
  """Prefers the longer answer, whatever its position (reads the rendered prompt)."""

  def choice_logprobs(self, msgs, choices, system=None):
    out = []
    for m in msgs:
      a = m.split("## Answer m\n\n")[1].split("\n\n## Answer M")[0]
      b = m.split("## Answer M\n\n")[1].split("\n\n## Task")[0]
      out.append([math.log(0.9), math.log(0.1)] if len(a) > len(b) else
                 [math.log(0.1), math.log(0.9)])
    return np.asarray(out), None


def test_pairwise_judge_both_orders_end_to_end():
  tok = ByteTokenizer()
  biased = judge.PairwiseJudge(_FirstPositionBackend(), tok)
  recs = biased.compare(["q1", "q2", "q3"], ["a", "bb", "c"], ["x", "y", "zzz"])
  assert [r["preference"] for r in recs] == [0.5, 0.5, 0.5]
  assert compare.summarize(
      [dict(r, len_evaluated=1, len_other=1) for r in recs],
      length_controlled=False)["win_rate"] == pytest.approx(50)
  longer = judge.PairwiseJudge(_LongerBackend(), tok)
  recs = longer.compare(["q1", "q2"], ["a long answer", "a"], ["short", "a longer one"])
  assert [r["preference"] for r in recs] == pytest.approx([0.9, 0.1])
  assert longer.stats["judgments"] == 4 and longer.stats["unreadable"] == 0


def test_unreadable_judgments_count_as_ties():
  class _Absent:

    def choice_logprobs(self, msgs, choices, system=None):
      return np.full((len(msgs), 2), -np.inf), None

  j = judge.PairwiseJudge(_Absent(), ByteTokenizer())
  assert [r["preference"] for r in j.compare(["q"], ["a"], ["b"])] == [0.5]
  assert j.stats["unreadable"] == 2


def test_outputs_are_cut_to_the_judge_budget():
  j = judge.PairwiseJudge(_FirstPositionBackend(), ByteTokenizer(),
                          judge.JudgeConfig(max_output_tokens=4))
  text, cut = judge.truncate_output(ByteTokenizer(), "abcdefgh", 4)
  assert (text, cut) == ("abcd [...]", True)
  j.compare(["q"], ["abcdefgh"], ["ab"])
  assert j.stats["truncated_outputs"] == 2  # the long one, in both orders


def test_length_controlled_against_an_independent_fit():
  from scipy.optimize import minimize
  rng = np.random.default_rng(0)
  n = 400
  lm, lo = rng.integers(20, 400, n), rng.integers(20, 400, n)
  z = np.tanh((lm - lo) / np.std(lm - lo))
  theta, phi = -0.4, 1.5
  p = 1 / (1 + np.exp(-(theta + phi * z)))
  pref = rng.binomial(1, p).astype(float) * 0.8 + 0.1  # soft, in (0, 1)
  lc = winrate.length_controlled(pref, lm, lo)

  def nll(w):  # the fractional-logit likelihood, fitted independently
    q = 1 / (1 + np.exp(-(w[0] + w[1] * z)))
    return -np.sum(pref * np.log(q) + (1 - pref) * np.log(1 - q))

  w = minimize(nll, [0.0, 0.0], method="BFGS", options={"gtol": 1e-10}).x
  assert lc["intercept"] == pytest.approx(w[0], abs=1e-4)
  assert lc["length_coef"] == pytest.approx(w[1], abs=1e-4)
  assert lc["lc_win_rate"] == pytest.approx(100 / (1 + math.exp(-w[0])), abs=1e-3)
  assert lc["lc_standard_error"] > 0
  # Equal lengths: no length term; the LC win rate is the plain mean.
  same = winrate.length_controlled([0.2, 0.9, 0.7, 0.6], [5] * 4, [3] * 4)
  assert same["length_coef"] is None
  assert same["lc_win_rate"] == pytest.approx(60.0, abs=1e-6)
  assert winrate.length_controlled([1, 1, 1], [1, 2, 3], [3, 2, 1])["lc_win_rate"] is None


# --------------------------------------------------------------------------- read-out


def _families():
  from humpback_jax import tokenizers as toks
  from humpback_jax.models import convert
  out = [("byte", ByteTokenizer())]
  for name, path in (("sentencepiece", DATA / "weights" / "llama2_tokenizer.model"),
                     ("llama2c", DATA / "weights" / "tok512.bin")):
    if path.exists():
      out.append((name, toks.load_tokenizer(path)))
  smol = convert.find_smollm2_gguf()
  if smol:
    gguf = toks.load_tokenizer(smol)
    out.append(("gguf-bpe", gguf))
    import tempfile
    d = tempfile.mkdtemp(prefix="hf_tok_")
    gguf.save(d)  # tokenizer.json + tokenizer_config.json, as in an HF directory
    out.append(("hf-json", toks.load_tokenizer(d)))
  return out


@pytest.mark.parametrize("family,tok", _families(), ids=lambda x: x if isinstance(x, str) else "")
def test_two_token_readout_on_each_tokenizer_family(family, tok):
  msg = judge.render_prompt("Name a colour.", "Blue.", "The sky is blue, so blue.")
  context = templates.chat_prompt(tok, msg)
  prefix, ids = probe.choice_probe(tok, context, "", ("m", "M"))
  assert ids[0] != ids[1]
  for c, i in zip(("m", "M"), ids):
    assert list(tok.encode(context + c)) == prefix + [i]
    assert tok.decode([i], skip_special_tokens=False).strip() == c
  # the prompt head is the shared prefix that the local judge reuses
  from humpback_jax.sample.prefix import template_prefix
  head = template_prefix(tok, lambda f: templates.chat_prompt(
      tok, judge.render_prompt(f, f, f)))
  assert len(head) > 20 and prefix[:len(head)] == head, family


def test_choice_probe_refuses_merging_choices():
  class _Merging(ByteTokenizer):  # "xy" becomes one token: "x" + "y" is not prefix + 1 token

    def encode(self, text, add_bos=None):
      ids = super().encode(text.replace("xy", "\x01"), add_bos)
      return ids

  with pytest.raises(probe.ProbeError, match="decodes to"):
    probe.choice_probe(_Merging(), "ctx x", "", ("y", "z"))
  with pytest.raises(probe.ProbeError, match="shared prefix"):  # "zz" is two tokens
    probe.choice_probe(ByteTokenizer(), "ctx", "", ("y", "zz"))
  with pytest.raises(ValueError, match="distinct"):
    probe.choice_probe(ByteTokenizer(), "ctx", "", ("a", "a"))


@pytest.fixture(scope="module")
def tiny():
  p = jax.jit(init_params, static_argnums=0)(CFG, jax.random.PRNGKey(1))
  return jax.tree_util.tree_map_with_path(
      lambda path, x: x if "scale" in jax.tree_util.keystr(path) else 4.0 * x, p)


def test_local_judge_equals_a_direct_forward_pass(tiny):
  tok = ByteTokenizer()
  sampler = Sampler(CFG, tok, max_prompt_len=1024, batch_size=4)
  params = sampler.place_params(tiny)
  render = lambda f: judge.render_prompt(f, f, f)  # noqa
  with_reuse = judge.LocalChoiceBackend(sampler, params, tok, prefix_template=render)
  without = judge.LocalChoiceBackend(sampler, params, tok)
  msgs = [judge.render_prompt(x, a, b) for x, a, b in
          [("Say hi.", "hi", "hello there"), ("2+2?", "4", "five"), ("Why?", "Because.", "x")]]
  lp_reuse, _ = with_reuse.choice_logprobs(msgs, ("m", "M"))
  lp_full, _ = without.choice_logprobs(msgs, ("m", "M"))
  assert with_reuse.stats["prefix_reused"] == 3
  ref = []
  for m in msgs:  # independent: the whole prompt through Llama.apply, log_softmax at the end
    ids = tok.encode(templates.chat_prompt(tok, m))
    logits, _ = Llama(CFG).apply(tiny, jnp.asarray([ids]), jnp.arange(len(ids))[None])
    logp = jax.nn.log_softmax(logits[0, -1].astype(jnp.float32))
    ref.append([float(logp[ord("m") + 3]), float(logp[ord("M") + 3])])
  np.testing.assert_allclose(lp_full, ref, atol=2e-4)
  np.testing.assert_allclose(lp_reuse, ref, atol=2e-4)


# --------------------------------------------------------------------------- outputs


@needs_data
def test_model_outputs_schema_matches_alpaca_eval_files(tmp_path):
  ref = json.loads(REF.read_text())
  assert len(outputs.read_model_outputs(REF)) == 805
  ours = [{"instruction": r["instruction"], "output": "o", "generator": "g",
           "dataset": r["dataset"]} for r in ref[:3]]
  outputs.write_model_outputs(ours, tmp_path / "model_outputs.json")
  back = json.loads((tmp_path / "model_outputs.json").read_text(encoding="utf-8"))
  assert back == ours and set(back[0]) == set(ref[0]) == set(outputs.MODEL_OUTPUT_FIELDS)
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps([ours[0], {"instruction": "x", "output": 3, "generator": "g",
                                       "dataset": "d"}]))
  with pytest.raises(SeedFormatError, match=r"bad.json: item 2: field 'output' must be str"):
    outputs.read_model_outputs(bad)
  bad.write_text(json.dumps([{"instruction": "x", "output": "y"}]))
  with pytest.raises(SeedFormatError, match="item 1: missing required field 'generator'"):
    outputs.read_model_outputs(bad)
  with pytest.raises(SeedFormatError, match="JSON array"):
    outputs.validate_model_outputs({"a": 1}, "x.json")


def test_subset_indices_seeded_and_nested():
  a = outputs.subset_indices(805, 32, seed=0)
  assert a == outputs.subset_indices(805, 32, seed=0) and len(set(a)) == 32 and a == sorted(a)
  assert set(outputs.subset_indices(805, 16, seed=0)) <= set(a)
  assert outputs.subset_indices(805, 32, seed=1) != a
  assert outputs.subset_indices(5, None, 0) == list(range(5)) == outputs.subset_indices(5, 9, 0)


@needs_data
def test_load_prompts_carries_the_references():
  ps = answers.load_prompts(REF, 4, 0)
  ref = json.loads(REF.read_text())
  for p in ps:
    assert p["id"] == f"alpaca{p['index']}"
    assert p["instruction"] == ref[p["index"]]["instruction"]
    assert p["reference"] == ref[p["index"]]["output"]


def test_answers_resume_and_do_not_depend_on_the_subset(tiny, tmp_path):
  with precision("float64"):
    _answers_resume(tiny, tmp_path)


def _answers_resume(tiny, tmp_path):
  cfg64 = CFG.replace(dtype="float64", param_dtype="float64")
  params = jax.tree.map(lambda x: jnp.asarray(np.asarray(x), jnp.float64), tiny)
  assert jax.tree.leaves(params)[0].dtype == jnp.float64
  tok = ByteTokenizer()
  cfg = EvalConfig(max_new_tokens=6, chunk_size=2, batch_size=2, tags=())
  prompts = [{"id": f"alpaca{i}", "index": i, "instruction": f"Question {i}?",
              "dataset": "d"} for i in range(5)]
  sampler = Sampler(cfg64, tok, max_prompt_len=64, batch_size=2)
  full, stats = answers.generate_answers(sampler, params, tok, prompts, cfg=cfg, seed=3,
                                         generator="g")
  assert stats["count"] == 5 and [r["instruction"] for r in full] == [
      p["instruction"] for p in prompts]
  # Interrupted after the first chunk: the rerun appends the rest, same outputs.
  partial = tmp_path / "answers.partial.jsonl"
  answers.generate_answers(sampler, params, tok, prompts[:2], cfg=cfg, seed=3, generator="g",
                           partial_path=partial)
  resumed, _ = answers.generate_answers(sampler, params, tok, prompts, cfg=cfg, seed=3,
                                        generator="g", partial_path=partial)
  assert resumed == full
  # A prompt's answer is the same in another subset (its key is its AlpacaEval index).
  alone, _ = answers.generate_answers(sampler, params, tok, [prompts[3]], cfg=cfg, seed=3,
                                      generator="g")
  assert alone[0] == full[3]


def test_precision_recall_hand_computed():
  truth = {"a": True, "b": True, "c": False, "d": False, "e": True}
  pred = {"a": True, "b": False, "c": True, "d": False, "e": True}
  assert precision_recall(pred, truth) == {"selected": 3, "relevant": 3, "true_positive": 2,
                                           "precision": 2 / 3, "recall": 2 / 3}
  none = precision_recall({k: False for k in truth}, truth)
  assert none["precision"] is None and none["recall"] == 0


def test_eval_config_checks_head_to_head():
  EvalConfig(models=("M0", "M1"), head_to_head=(("M1", "M0"),))
  with pytest.raises(ValueError, match="head_to_head"):
    EvalConfig(models=("M0",), head_to_head=(("M1", "M0"),))


@needs_data
def test_eval_command_writes_outputs_and_win_rate(tmp_path, capsys):
  from humpback_jax.cli import main
  args = ["eval", "--model=weights/stories260K.bin", "--tokenizer=weights/tok512.bin",
          f"--output={tmp_path}", "--num_prompts=3", "--seed=1", "--no_progress",
          "--judge=weights/stories260K.bin", "--judge_tokenizer=weights/tok512.bin",
          "--gin_param=EvalConfig.max_new_tokens=8", "--gin_param=EvalConfig.max_prompt_len=256",
          "--gin_param=EvalConfig.judge_settings=@JudgeConfig()",
          "--gin_param=JudgeConfig.max_prompt_len=496"]
  assert main(args) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  outs = outputs.read_model_outputs(tmp_path / "model_outputs.json")
  want = [p["instruction"] for p in answers.load_prompts(REF, 3, 1)]
  assert [o["instruction"] for o in outs] == want and summary["count"] == 3
  judgments = [json.loads(x) for x in (tmp_path / "judgments.jsonl").read_text().splitlines()]
  assert len(judgments) == 3
  pref = [j["preference"] for j in judgments]
  assert summary["win_rate"] == pytest.approx(100 * np.mean(pref), abs=1e-9)
  for j in judgments:
    assert j["preference"] == pytest.approx((j["p_model_first"] + 1 - j["p_model_second"]) / 2,
                                            abs=2e-6)
  result = json.loads((tmp_path / "results.json").read_text())
  assert result["n"] == 3 and result["judge_stats"]["judgments"] == 6
  assert not list(tmp_path.glob("*.partial.jsonl"))
  # A second run with the same arguments resumes nothing and gives the same outputs.
  assert main(args) == 0
  assert outputs.read_model_outputs(tmp_path / "model_outputs.json") == outs


def test_endpoint_reference_labels_parse_the_written_score(tmp_path, monkeypatch):
  import types

  from humpback_jax.curate import CurationConfig
  from humpback_jax.eval import openai_backend, stages
  seen = []

  class _Endpoint:

    def __init__(self, base_url, model, api_key=None):
      seen.append((base_url, model, api_key))

    def generate(self, msgs, *, max_tokens, temperature, seed):
      assert temperature == 0.0 and all("Score: <rating>" in m for m in msgs)
      return ["Clear and helpful.\nScore: 4" if "xyzzy" in m else "No score here" for m in msgs]

  monkeypatch.setattr(openai_backend, "OpenAIChoiceBackend", _Endpoint)
  monkeypatch.setenv("MY_KEY", "sk-test")
  ctx = types.SimpleNamespace(
      config=types.SimpleNamespace(
          evaluation=EvalConfig(judge_endpoint="http://127.0.0.1:1/v1", judge_model_name="ref",
                                judge_api_key_env="MY_KEY"),
          curation=CurationConfig(chunk_size=1), seed_value=0),
      path=lambda rel: tmp_path / rel)
  sample = [{"id": "a", "instruction": "q", "response": "xyzzy answer"},
            {"id": "b", "instruction": "q", "response": "bad"}]
  partial = tmp_path / "eval/reference_labels.partial.jsonl"
  labels = stages._endpoint_reference_labels(ctx, sample, partial)
  assert [(r["id"], r["score"]) for r in labels] == [("a", 4), ("b", None)]
  assert seen[0] == ("http://127.0.0.1:1/v1", "ref", "sk-test")
  # resumable: a rerun reads the partial file and asks nothing
  assert stages._endpoint_reference_labels(ctx, sample, partial) == labels and len(seen) == 2


def test_each_candidate_pool_gets_its_own_reference_labels():
  from humpback_jax.eval.stages import labels_file, quality_pools
  # augment_rounds R: M_t curates round min(t + 1, R)'s pool (PipelineConfig.augment_rounds).
  assert quality_pools(2, 1) == {"data/candidates.jsonl": [0, 1]}
  assert quality_pools(2, 2) == {"data/candidates.jsonl": [0], "data/candidates_r2.jsonl": [1]}
  assert quality_pools(3, 2) == {"data/candidates.jsonl": [0], "data/candidates_r2.jsonl": [1, 2]}
  assert labels_file("data/candidates.jsonl") == "eval/reference_labels.jsonl"
  assert labels_file("data/candidates_r2.jsonl", partial=True) == (
      "eval/reference_labels_r2.partial.jsonl")

