"""Data analyses ([HB] Table 2, Figures 2 and 4; [BF] §4): known answers on hand-made sets.

Covers ``eval/analyses.py``, ``eval/verb_noun.py``, ``eval/run_analyses.py``,
``eval/plots.py``, ``eval/mauve_score.py`` and ``Llama``'s ``return_hidden``. Verb-noun
extraction runs on hand-built spaCy ``Doc``s (no trained model exists offline); MAUVE's
plumbing on synthetic features; the featurizer on a tiny random model.
"""

import functools
import json
import math
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from spacy.tokens import Doc
from spacy.vocab import Vocab

from humpback_jax import hosts
from humpback_jax.errors import InputError
from humpback_jax.eval import analyses, mauve_score, plots, run_analyses
from humpback_jax.eval import verb_noun as verb_noun_lib
from humpback_jax.models.config import LlamaConfig
from humpback_jax.models.llama import Llama, init_params
from test_sampler import ByteTokenizer

PNG = b"\x89PNG\r\n\x1a\n"
TOK = ByteTokenizer()
CFG = LlamaConfig(vocab_size=272, hidden_size=32, intermediate_size=64, num_layers=2,
                  num_heads=4, num_kv_heads=2, max_seq_len=256)


def _is_png(path) -> bool:
  with open(path, "rb") as f:
    data = f.read()
  return len(data) > len(PNG) and data.startswith(PNG)


# ----------------------------------------------------------------------------------------------
# dataset_summary


def test_dataset_summary_tokens_and_chars():
  records = [{"id": 1, "instruction": "ab", "response": "hello"},
             {"id": 2, "instruction": "abcd", "response": "hi"},
             {"id": 3, "instruction": "é", "response": "x", "extra": 7}]  # é: 1 char, 2 bytes
  s = analyses.dataset_summary(records, TOK)
  assert s["count"] == 3
  # Byte tokenizer, no BOS: tokens = UTF-8 bytes.
  assert s["instruction_tokens"]["mean"] == pytest.approx(8 / 3)
  assert s["instruction_tokens"]["median"] == 2.0
  assert s["instruction_tokens"]["std"] == pytest.approx(np.std([2, 4, 2]))
  assert s["instruction_chars"]["mean"] == pytest.approx(7 / 3)
  assert s["instruction_chars"]["median"] == 2.0
  assert s["response_tokens"] == s["response_chars"]  # ASCII: one byte per character
  assert s["response_chars"]["mean"] == pytest.approx(8 / 3)
  assert s["response_chars"]["std"] == pytest.approx(math.sqrt(((5 - 8 / 3) ** 2 + (2 - 8 / 3) ** 2
                                                                + (1 - 8 / 3) ** 2) / 3))
  none = analyses.dataset_summary(records, None)
  assert none["instruction_tokens"] == {"mean": None, "std": None, "median": None}
  assert none["instruction_chars"] == s["instruction_chars"]
  empty = analyses.dataset_summary([], TOK)
  assert empty["count"] == 0 and empty["response_chars"]["mean"] is None
  with pytest.raises(InputError, match=r"record 2 \(id 'b'\): 'response'"):
    analyses.dataset_summary([{"id": "a", "instruction": "x", "response": "y"},
                              {"id": "b", "instruction": "x"}], TOK)


# ----------------------------------------------------------------------------------------------
# scores


def test_score_histogram_and_read_scores(tmp_path):
  h = analyses.score_histogram([5, 5, 4, None, 1, 3, 5, None, np.int64(2)])
  assert h == {"1": 1, "2": 1, "3": 1, "4": 1, "5": 3, "unscored": 2}
  assert analyses.score_histogram([]) == {"1": 0, "2": 0, "3": 0, "4": 0, "5": 0,
                                          "unscored": 0}
  for bad in (0, 6, 4.5, True, "5"):
    with pytest.raises(ValueError):
      analyses.score_histogram([bad])
  p = tmp_path / "scores_M0.jsonl"
  p.write_text("\n".join(json.dumps(r) for r in [
      {"id": 1, "score": 5}, {"id": 2, "score": None, "rating": "?"}, {"id": 3, "score": 2}])
               + "\n")
  assert analyses.read_scores(p) == [5, None, 2]
  p.write_text('{"id": 1, "score": 5}\n{"id": 2}\n')
  with pytest.raises(InputError, match=r"scores_M0.jsonl:2: record has no 'score'"):
    analyses.read_scores(p)
  p.write_text('{"id": 1, "score": 9}\n')
  with pytest.raises(InputError, match=r":1: score must be"):
    analyses.read_scores(p)


# ----------------------------------------------------------------------------------------------
# n-gram diversity


def test_words_and_trigram_counts_by_hand():
  assert analyses.words("Don't STOP-me_now, 2 go!") == ["don", "t", "stop", "me_now", "2", "go"]
  texts = ["The cat sat on the mat.",  # the cat sat | cat sat on | sat on the | on the mat
           "THE CAT SAT!",             # the cat sat (again)
           "Hi there"]                 # fewer than 3 words: no trigram
  d = analyses.ngram_diversity(texts)
  assert d == {"n": 3, "texts": 3, "unique": 4, "total": 5, "distinct_ratio": 0.8}
  # N-grams do not cross text boundaries: "there the cat" is never formed.
  assert analyses.ngram_diversity(["a b", "c d"], n=3)["total"] == 0
  uni = analyses.ngram_diversity(texts, n=1)
  assert uni["total"] == 6 + 3 + 2 and uni["unique"] == 7  # the cat sat on mat hi there
  assert analyses.ngram_diversity([])["distinct_ratio"] == 0.0
  assert analyses.ngram_diversity(iter(["a b c", "a b c"]))["distinct_ratio"] == 0.5
  with pytest.raises(ValueError):
    analyses.ngram_diversity(texts, n=0)


# ----------------------------------------------------------------------------------------------
# verb-noun on hand-built parses

VOCAB = Vocab()
# text -> (words, pos, deps, heads (absolute), lemmas)
PARSES = {
    "Write a poem about cats.": (
        ["Write", "a", "poem", "about", "cats", "."],
        ["VERB", "DET", "NOUN", "ADP", "NOUN", "PUNCT"],
        ["ROOT", "det", "dobj", "prep", "pobj", "punct"],
        [0, 2, 0, 2, 3, 0],
        ["write", "a", "poem", "about", "cat", "."]),
    "Write stories for kids.": (
        ["Write", "stories", "for", "kids", "."],
        ["VERB", "NOUN", "ADP", "NOUN", "PUNCT"],
        ["ROOT", "dobj", "prep", "pobj", "punct"],
        [0, 0, 0, 2, 0],
        ["write", "story", "for", "kid", "."]),
    "What is the capital of France?": (  # AUX root: no verb
        ["What", "is", "the", "capital", "of", "France", "?"],
        ["PRON", "AUX", "DET", "NOUN", "ADP", "PROPN", "PUNCT"],
        ["attr", "ROOT", "det", "nsubj", "prep", "pobj", "punct"],
        [1, 1, 3, 1, 3, 4, 1],
        ["what", "be", "the", "capital", "of", "France", "?"]),
    "Can you explain it?": (  # pronoun object: a verb, no noun
        ["Can", "you", "explain", "it", "?"],
        ["AUX", "PRON", "VERB", "PRON", "PUNCT"],
        ["aux", "nsubj", "ROOT", "dobj", "punct"],
        [2, 2, 2, 2, 2],
        ["can", "you", "explain", "it", "?"]),
    "A story describing a dragon": (  # NOUN root: the verb nearest the root (acl) counts
        ["A", "story", "describing", "a", "dragon"],
        ["DET", "NOUN", "VERB", "DET", "NOUN"],
        ["det", "ROOT", "acl", "det", "dobj"],
        [1, 1, 1, 4, 2],
        ["a", "story", "describe", "a", "dragon"]),
    "Hello there. Write code.": (  # first sentence only: no verb there
        ["Hello", "there", ".", "Write", "code", "."],
        ["INTJ", "ADV", "PUNCT", "VERB", "NOUN", "PUNCT"],
        ["ROOT", "advmod", "punct", "ROOT", "dobj", "punct"],
        [0, 0, 0, 3, 3, 3],
        ["hello", "there", ".", "write", "code", "."]),
    "Summarize Paris": (  # no lemmatizer: lowercased text; PROPN object counts
        ["Summarize", "Paris"], ["VERB", "PROPN"], ["ROOT", "obj"], [0, 0], None),
}


def _doc(text: str) -> Doc:
  words, pos, deps, heads, lemmas = PARSES[text]
  return Doc(VOCAB, words=words, pos=pos, deps=deps, heads=heads, lemmas=lemmas)


def test_extract_verb_noun_on_hand_built_docs():
  expected = {
      "Write a poem about cats.": ("write", "poem"),
      "Write stories for kids.": ("write", "story"),
      "What is the capital of France?": (None, None),
      "Can you explain it?": ("explain", None),
      "A story describing a dragon": ("describe", "dragon"),
      "Hello there. Write code.": (None, None),
      "Summarize Paris": ("summarize", "paris"),
  }
  for text, want in expected.items():
    assert analyses.extract_verb_noun(_doc(text)) == want, text
  assert analyses.extract_verb_noun(Doc(VOCAB, words=[])) == (None, None)


def test_verb_noun_counts_with_a_callable_and_a_pipe():
  texts = (["Write a poem about cats."] * 3 + ["Write stories for kids."] * 2
           + ["Can you explain it?", "What is the capital of France?",
              "A story describing a dragon", "Summarize Paris"])
  calls = []

  def nlp(text):
    calls.append(text)
    return _doc(text)

  r = analyses.verb_noun(texts, nlp=nlp, top=3)
  assert len(calls) == len(texts)
  assert r["available"] is True
  assert (r["parsed"], r["with_verb"], r["with_pair"]) == (9, 8, 7)
  # Ties broken by name: ("describe", "dragon") before ("summarize", "paris").
  assert r["top_pairs"] == [["write", "poem", 3], ["write", "story", 2],
                            ["describe", "dragon", 1]]
  assert r["top_verbs"] == [["write", 5], ["describe", 1], ["explain", 1]]
  assert r["nouns_by_verb"] == {"write": [["poem", 3], ["story", 2]],
                                "describe": [["dragon", 1]], "explain": []}

  class Pipeline:  # a spaCy-like object: its pipe() is used, on truncated texts
    def __init__(self):
      self.seen = []

    def __call__(self, text):
      raise AssertionError("pipe() should be used")

    def pipe(self, texts, batch_size):
      for t in texts:
        self.seen.append(t)
        yield _doc(t if t in PARSES else "Write a poem about cats.")

  pipe = Pipeline()
  r2 = analyses.verb_noun(["Write a poem about cats." + "x" * 50], nlp=pipe, max_chars=24)
  assert pipe.seen == ["Write a poem about cats."] and r2["top_pairs"] == [["write", "poem", 1]]


def test_verb_noun_without_a_model_never_raises(monkeypatch):
  import spacy

  def missing(name, **kw):
    raise OSError(f"[E050] Can't find model '{name}'.")

  monkeypatch.setattr(spacy, "load", missing)
  verb_noun_lib._default_nlp.cache_clear()
  try:
    r = analyses.verb_noun(["Write a poem."])
  finally:
    verb_noun_lib._default_nlp.cache_clear()
  assert r["available"] is False
  assert "python -m spacy download en_core_web_sm" in r["reason"] and "internet" in r["reason"]
  assert "E050" in r["reason"]
  assert r["top_pairs"] == [] and r["top_verbs"] == [] and r["parsed"] == 0
  # A pipeline without a parser (no DEP annotation) is reported, not raised.
  r = analyses.verb_noun(["a b"], nlp=lambda t: Doc(VOCAB, words=t.split()))
  assert r["available"] is False and "dependency parser" in r["reason"]
  # Whatever this machine has installed: a dict, never an exception.
  assert analyses.verb_noun(["Write a poem."])["available"] in (True, False)


# ----------------------------------------------------------------------------------------------
# scaling fit


def test_fit_scaling_exact_line_and_polyfit():
  n = np.array([100, 200, 400, 800, 1600, 3200])
  fit = analyses.fit_scaling(n, 5.0 * np.log(n) + 10.0)
  assert fit["alpha"] == pytest.approx(5.0, abs=1e-9) and fit["C"] == pytest.approx(10.0, abs=1e-8)
  assert fit["r2"] == pytest.approx(1.0) and fit["alpha_se"] == pytest.approx(0.0, abs=1e-6)
  assert fit["n_points"] == 6 and fit["log"] == "natural"

  w = np.array([41.0, 47.5, 50.1, 58.3, 60.2, 66.9])
  fit = analyses.fit_scaling(list(n), list(w))
  slope, intercept = np.polyfit(np.log(n), w, 1)
  assert fit["alpha"] == pytest.approx(slope) and fit["C"] == pytest.approx(intercept)
  x = np.log(n)
  resid = w - (slope * x + intercept)
  se = math.sqrt(np.sum(resid ** 2) / (len(n) - 2) / np.sum((x - x.mean()) ** 2))
  assert fit["alpha_se"] == pytest.approx(se)
  assert fit["r2"] == pytest.approx(1 - np.sum(resid ** 2) / np.sum((w - w.mean()) ** 2))

  two = analyses.fit_scaling([100, 1000], [50.0, 60.0])  # exact, no residual dof
  assert two["alpha"] == pytest.approx(10 / math.log(10)) and two["alpha_se"] is None
  assert analyses.fit_scaling([1, 2, 4], [5.0, 5.0, 5.0])["r2"] is None
  for bad_n, bad_w in (([100, 100], [1.0, 2.0]), ([0, 10], [1.0, 2.0]), ([1, 2], [1.0]),
                       ([1, 2], [1.0, float("nan")])):
    with pytest.raises(ValueError):
      analyses.fit_scaling(bad_n, bad_w)


# ----------------------------------------------------------------------------------------------
# plots


def test_every_plot_writes_a_png(tmp_path):
  hist = {"1": 3, "2": 1, "3": 5, "4": 2, "5": 9, "unscored": 1}
  summary = analyses.dataset_summary([{"instruction": "ab", "response": "hello"}], TOK)
  fit = analyses.fit_scaling([100, 400, 1600], [40.0, 50.0, 61.0])
  out = {
      "hist": plots.plot_score_histograms({"M0": hist, "M1": dict(hist, unscored=0)},
                                          tmp_path / "hist.png"),
      "lengths": plots.plot_lengths({"seed": summary, "empty": analyses.dataset_summary([], TOK)},
                                    tmp_path / "lengths.png"),
      "chars": plots.plot_lengths({"seed": summary}, tmp_path / "chars.png", unit="chars"),
      "win": plots.plot_win_rates([{"name": "M1", "win_rate": 55.0, "standard_error": 1.7},
                                   {"name": "M2", "win_rate": 61.2, "standard_error": None}],
                                  tmp_path / "win.png"),
      "len": plots.plot_winrate_vs_length(
          [{"name": "M1", "win_rate": 55.0, "mean_output_tokens": 210.0},
           {"name": "M2", "win_rate": 61.2, "mean_output_tokens": 305.5}], tmp_path / "wl.png"),
      "scaling": plots.plot_scaling([100, 400, 1600], [40.0, 50.0, 61.0], [2.0, 2.1, 1.9], fit,
                                    tmp_path / "sub" / "scaling.png"),
      "scaling_bare": plots.plot_scaling([100], [40.0], None, None, tmp_path / "s1.png"),
      "scaling_nofit": plots.plot_scaling([100, 200], [40.0, 45.0], [0.0, 0.0], {},
                                          tmp_path / "s2.png"),
      "vn": plots.plot_verb_noun([["write", "poem", 3], ["write", "story", 2]],
                                 tmp_path / "vn.png"),
      "empty_hist": plots.plot_score_histograms({}, tmp_path / "e1.png"),
      "empty_win": plots.plot_win_rates([], tmp_path / "e2.png"),
      "empty_vn": plots.plot_verb_noun([], tmp_path / "e3.png"),
  }
  for name, p in out.items():
    assert isinstance(p, str) and _is_png(p), name
  assert out["scaling"] == str(tmp_path / "sub" / "scaling.png")
  with pytest.raises(ValueError):
    plots.plot_lengths({}, tmp_path / "x.png", unit="words")
  with pytest.raises(ValueError):
    plots.plot_scaling([100, 200], [1.0], None, None, tmp_path / "x.png")


# ----------------------------------------------------------------------------------------------
# analyze_run on a hand-made run directory


def _write(path, records):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _toy_nlp(text: str) -> Doc:
  """A stand-in parser: first word the root VERB, second its NOUN object, the rest attached
  to the root."""
  words = text.split()
  n = len(words)
  return Doc(VOCAB, words=words, pos=["VERB"] + ["NOUN"] * (n > 1) + ["X"] * max(0, n - 2),
             deps=["ROOT"] + ["dobj"] * (n > 1) + ["dep"] * max(0, n - 2), heads=[0] * n,
             lemmas=[w.lower() for w in words])


def _hash_features(texts):
  """Deterministic synthetic features: 4 floats seeded by each text's CRC32."""
  return np.stack([np.random.default_rng(zlib.crc32(t.encode())).normal(size=4)
                   for t in texts]).astype(np.float32)


def _make_run(root):
  data = root / "data"
  _write(data / "seed.jsonl", [
      {"id": "s1", "instruction": "Write a poem", "response": "Roses are red"},
      {"id": "s2", "instruction": "Explain gravity", "response": "Mass attracts mass"},
      {"id": "s3", "instruction": "Write a poem", "response": "the cat sat on the mat"}])
  _write(data / "candidates.jsonl", [
      {"id": f"c{i}", "instruction": f"List facts {i}", "response": f"fact number {i} here",
       "segment_id": i} for i in range(4)])
  _write(data / "curated_A1.jsonl", [
      {"id": "c0", "instruction": "List facts 0", "response": "fact number 0 here"},
      {"id": "c3", "instruction": "List facts 3", "response": "fact number 3 here"}])
  _write(data / "scores_M0.jsonl", [{"id": f"c{i}", "score": s}
                                    for i, s in enumerate([5, 4, None, 5])])
  _write(data / "scores_M0.partial.jsonl", [{"id": "c0", "score": 1}])  # never read
  _write(data / "scores_M2.jsonl", [{"id": "c0", "score": 3}])  # discovered
  _write(data / "rewritten.jsonl", [
      {"id": "r1", "instruction": "Write code", "response": "print('hi')"}])
  (data / "bad.jsonl").write_text('{"id": 1, "instruction": "x", "response": "y"}\nnot json\n')


def test_analyses_re_exports_the_split_modules():
  assert analyses.verb_noun is verb_noun_lib.verb_noun
  assert analyses.extract_verb_noun is verb_noun_lib.extract_verb_noun
  with pytest.raises(AttributeError):
    analyses.no_such_name  # pylint: disable=pointless-statement


def test_analyze_run_on_a_tiny_run(tmp_path):
  run = tmp_path / "run"
  _make_run(run)
  res = run_analyses.analyze_run(
      run, TOK, nlp=_toy_nlp, mauve_features=_hash_features,
      datasets={"rewritten": "data/rewritten.jsonl", "ghost": "data/ghost.jsonl",
                "bad": "data/bad.jsonl"})
  ds = res["datasets"]
  assert list(ds) == ["seed", "candidates", "A1", "A2", "rewritten", "ghost", "bad"]
  assert sorted(res["absent"]) == ["A2", "ghost", "scores_M1"]
  assert ds["A2"] == {"path": "data/curated_A2.jsonl", "present": False}
  assert ds["bad"]["present"] and "bad.jsonl:2" in ds["bad"]["error"]
  seed = ds["seed"]
  assert seed["summary"]["count"] == 3
  assert seed["summary"]["instruction_tokens"]["mean"] == pytest.approx((12 + 15 + 12) / 3)
  assert seed["summary"]["response_chars"]["median"] == 18.0
  # Trigrams of the seed responses: roses are red | mass attracts mass | 4 of the cat sentence.
  assert seed["diversity"]["response"] == {"n": 3, "texts": 3, "unique": 6, "total": 6,
                                           "distinct_ratio": 1.0}
  assert seed["diversity"]["instruction"]["total"] == 2 and seed["diversity"]["instruction"][
      "unique"] == 1  # "write a poem" twice
  assert res["matched_n"] == 1  # the smallest present dataset (rewritten)
  assert seed["diversity_matched"]["response"]["texts"] == 1
  assert seed["verb_noun"]["top_pairs"] == [["write", "a", 2], ["explain", "gravity", 1]]
  assert ds["candidates"]["verb_noun"]["top_verbs"] == [["list", 4]]
  assert list(res["scores"]) == ["M0", "M1", "M2"]
  m0 = res["scores"]["M0"]
  assert m0["histogram"] == {"1": 0, "2": 0, "3": 0, "4": 1, "5": 2, "unscored": 1}
  assert (m0["total"], m0["fraction_5"], m0["fraction_ge4"]) == (4, 0.5, 0.75)
  assert res["scores"]["M1"] == {"path": "data/scores_M1.jsonl", "present": False}
  assert res["scores"]["M2"]["histogram"]["3"] == 1
  (mv,) = res["mauve"]  # default pair: seed vs the last present curated set (A1)
  assert (mv["p"], mv["q"], mv["field"], mv["computed"]) == ("seed", "A1", "response", True)
  assert (mv["n_p"], mv["n_q"], mv["feature_dim"]) == (3, 2, 4)
  assert 0.0 <= mv["mauve"] <= 1.0 and mv["featurizer"] == "_hash_features"

  out = run / "eval"
  assert set(res["plots"]) == {"lengths", "score_histograms", "verb_noun_seed",
                               "verb_noun_candidates", "verb_noun_A1", "verb_noun_rewritten"}
  assert res["plots"]["lengths"] == "eval/lengths.png"  # relative to the run directory
  assert res["analyses_json"] == "eval/analyses.json"
  for rel in res["plots"].values():
    assert _is_png(run / rel)
  assert json.loads((out / "analyses.json").read_text()) == res


def test_analyze_run_reports_what_it_cannot_do(tmp_path, monkeypatch):
  run = tmp_path / "run"
  _make_run(run)
  res = run_analyses.analyze_run(run, None, nlp=_toy_nlp, out_dir=tmp_path / "elsewhere",
                             mauve_pairs=[("seed", "A1"), ("seed", "A2"),
                                          ("seed", "A1", "title")])
  assert res["datasets"]["seed"]["summary"]["instruction_tokens"]["mean"] is None
  reasons = [(m["computed"], m["reason"]) for m in res["mauve"]]
  assert reasons[0] == (False, "no featurizer given (mauve_features=None)")
  assert reasons[1][0] is False and "A2" in reasons[1][1]
  assert reasons[2][0] is False and "field" in reasons[2][1]
  assert (tmp_path / "elsewhere" / "analyses.json").exists()
  assert res["plots"]["lengths"] == str(tmp_path / "elsewhere" / "lengths.png")  # outside run
  assert _is_png(res["plots"]["lengths"])
  # Not process 0: computes the same, writes nothing.
  monkeypatch.setattr(hosts, "is_writer", lambda: False)
  other = run_analyses.analyze_run(run, None, nlp=_toy_nlp, out_dir=tmp_path / "other")
  assert not (tmp_path / "other").exists() and set(other["plots"]) == set(res["plots"])
  assert other["datasets"] == res["datasets"]
  # An empty run directory: everything absent, nothing raised.
  monkeypatch.setattr(hosts, "is_writer", lambda: True)
  empty = run_analyses.analyze_run(tmp_path / "nothing", TOK, nlp=_toy_nlp, write=False)
  assert sorted(empty["absent"]) == ["A1", "A2", "candidates", "scores_M0", "scores_M1", "seed"]
  assert empty["plots"] == {} and empty["mauve"][0]["computed"] is False
  assert not (tmp_path / "nothing").exists()


# ----------------------------------------------------------------------------------------------
# MAUVE


def _clouds(texts):
  """"p..." texts around +3 e0, "q..." around -3 e0 (D=8), noise seeded by the text."""
  out = []
  for t in texts:
    v = np.random.default_rng(zlib.crc32(t.encode())).normal(size=8)
    v[0] += 3.0 if t.startswith("p") else -3.0
    out.append(v)
  return np.asarray(out, np.float32)


def test_mauve_between_identical_and_separated():
  p = [f"p{i}" for i in range(100)]
  q = [f"q{i}" for i in range(100)]
  same = mauve_score.mauve_between(p, p, _clouds)
  assert same["mauve"] == pytest.approx(1.0, abs=1e-6)
  assert (same["n_p"], same["n_q"], same["feature_dim"], same["num_buckets"]) == (100, 100, 8, 10)
  assert same["featurizer"] == "_clouds"
  near = mauve_score.mauve_between(p, [f"p{i}" for i in range(100, 200)], _clouds)
  far = mauve_score.mauve_between(p, q, _clouds, num_buckets=4)
  assert near["mauve"] > 0.9 and far["mauve"] < 0.05 and far["num_buckets"] == 4
  with pytest.raises(ValueError, match="empty"):
    mauve_score.mauve_between([], p, _clouds)
  with pytest.raises(ValueError, match="shape"):
    mauve_score.mauve_between(p, q, lambda ts: np.zeros((3, 2), np.float32))


# ----------------------------------------------------------------------------------------------
# Llama return_hidden and the hidden-state featurizer


@pytest.fixture(scope="module")
def params():
  return jax.jit(init_params, static_argnums=0)(CFG, jax.random.PRNGKey(0))


@functools.partial(jax.jit, static_argnames=("cfg", "last_logits_only", "return_hidden"))
def _apply(params, tokens, positions, cache=None, *, cfg, last_logits_only=False,
           return_hidden=False):
  return Llama(cfg).apply(params, tokens, positions, cache=cache,
                          last_logits_only=last_logits_only, return_hidden=return_hidden)


@functools.partial(jax.jit, static_argnames="cfg")
def _final_norm_out(params, tokens, cfg):
  positions = jnp.arange(tokens.shape[1], dtype=jnp.int32)[None]
  _, state = Llama(cfg).apply(params, tokens, positions, capture_intermediates=True,
                              mutable=["intermediates"])
  return state["intermediates"]["final_norm"]["__call__"][0][0]


def _captured_final_norm(params, cfg, ids):
  """The final RMSNorm's output [T, D] for one unpadded sequence, read from Flax's captured
  intermediates: independent of ``return_hidden``."""
  return np.asarray(_final_norm_out(params, jnp.asarray([ids], jnp.int32), cfg=cfg))


def test_llama_return_hidden(params):
  ids = TOK.encode("Hello, hidden states!")
  tokens = jnp.asarray([ids, ids[::-1]], jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(len(ids), dtype=jnp.int32), tokens.shape)
  logits, none = _apply(params, tokens, positions, cfg=CFG)
  hidden, none2 = _apply(params, tokens, positions, cfg=CFG, return_hidden=True)
  assert none is None and none2 is None
  assert hidden.shape == (2, len(ids), CFG.hidden_size) and hidden.dtype == jnp.float32
  np.testing.assert_allclose(hidden[0], _captured_final_norm(params, CFG, ids), rtol=1e-6,
                             atol=1e-6)
  kernel = params["params"]["lm_head"]["kernel"]
  np.testing.assert_allclose(hidden @ kernel, logits, rtol=1e-5, atol=1e-5)
  last, _ = _apply(params, tokens, positions, cfg=CFG, last_logits_only=True,
                   return_hidden=True)
  np.testing.assert_allclose(last, hidden[:, -1:], rtol=1e-6, atol=1e-6)
  # With a KV cache: the same cache as the logits call.
  from humpback_jax.models.llama import init_cache
  cache = init_cache(CFG, 2, 32)
  _, c1 = _apply(params, tokens, positions, cache, cfg=CFG)
  h2, c2 = _apply(params, tokens, positions, cache, cfg=CFG, return_hidden=True)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), c1, c2))
  np.testing.assert_allclose(h2, hidden, rtol=1e-5, atol=1e-5)
  # Tied embeddings: hidden @ E^T are the logits.
  tied = CFG.replace(tie_word_embeddings=True)
  tp = jax.jit(init_params, static_argnums=0)(tied, jax.random.PRNGKey(1))
  tl, _ = _apply(tp, tokens, positions, cfg=tied)
  th, _ = _apply(tp, tokens, positions, cfg=tied, return_hidden=True)
  np.testing.assert_allclose(th @ tp["params"]["embed_tokens"]["embedding"].T, tl, rtol=1e-5,
                             atol=1e-5)


def test_hidden_state_features_padding_invariant(params):
  texts = ["short", "a much longer text than the first one, with words.", "mid-size text",
           "x" * 40]
  alone = [mauve_score.hidden_state_features(params, CFG, TOK, [t], batch_size=1)[0]
           for t in texts]
  batched = mauve_score.hidden_state_features(params, CFG, TOK, texts, batch_size=3)
  assert batched.shape == (4, CFG.hidden_size) and batched.dtype == np.float32
  for i, t in enumerate(texts):
    want = _captured_final_norm(params, CFG, TOK.encode(t))[-1]
    np.testing.assert_allclose(alone[i], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(batched[i], want, rtol=1e-5, atol=1e-5)
  # max_len keeps the first tokens.
  trunc = mauve_score.hidden_state_features(params, CFG, TOK, [texts[1]], max_len=16)[0]
  np.testing.assert_allclose(trunc, _captured_final_norm(params, CFG, TOK.encode(texts[1])[:16])
                             [-1], rtol=1e-5, atol=1e-5)
  assert mauve_score.hidden_state_features(params, CFG, TOK, []).shape == (0, CFG.hidden_size)

  class NoBos(ByteTokenizer):
    def encode(self, text, add_bos=None):
      return super().encode(text, add_bos=False)

  with pytest.raises(ValueError, match="text 1 encodes to no tokens"):
    mauve_score.hidden_state_features(params, CFG, NoBos(), ["a", ""])


def test_mauve_with_the_model_featurizer(params):
  feat = mauve_score.make_featurizer(params, CFG, TOK, max_len=32, batch_size=8)
  texts = [f"sample text number {i} about topic {i % 5}" for i in range(40)]
  r = mauve_score.mauve_between(texts, texts, feat)
  assert r["mauve"] == pytest.approx(1.0, abs=1e-6)
  assert r["feature_dim"] == CFG.hidden_size and r["featurizer"] == "llama_final_hidden"
