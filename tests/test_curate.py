"""Score parsing, selection and histograms of self-curation ([HB] §2.2, method.md §5)."""

import math

import numpy as np
import pytest

from humpback_jax import curate
from humpback_jax.data import templates


@pytest.mark.parametrize("text,expected", [
    ("The answer is good.\nScore: 5", 5),
    ("Reasoning...\nScore: 4", 4),
    ("**Score:** 3", 3),
    ("Score = 4/5", 4),
    ("I would give it a score of 2.", 2),
    ("Rating: 5 out of 5", 5),
    ("It is fine. 4/5", 4),
    ("Score: 4.5", 5),  # [HB]: A_5 is "score >= 4.5"
    ("Earlier I said Score: 2 but on reflection\nScore: 4", 4),  # the last one wins
    ("blah\n5", 5),
    ("a score of 5 out of 10", None),  # another scale
    ("Score: 7/10", None),
    ("Score: 3/5", 3),
    ("Score: 8", None),  # out of range (method.md §5: "8", "91")
    ("Score: 91", None),
    ("Score: <rating>", None),
    ("no score here", None),
    ("", None),
])
def test_parse_score(text, expected):
  assert curate.parse_score(text) == expected


def test_parse_score_does_not_read_the_scale_description():
  # The prompt itself mentions "5-point scale" and "Score: <rating>": no score in it.
  assert curate.parse_score(templates.RATING_PROMPT.format(instruction="x", output="y")) is None


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


def test_expected_scores():
  probs = np.array([[0.1, 0.1, 0.1, 0.2, 0.5], [0.6, 0.1, 0.1, 0.1, 0.1]], np.float32)
  best, mean = curate.expected_scores(probs)
  assert best.tolist() == [5, 1]
  np.testing.assert_allclose(mean, [0.1 + 0.2 + 0.3 + 0.8 + 2.5, 0.6 + 0.2 + 0.3 + 0.4 + 0.5],
                             rtol=1e-6)


def test_config_validation():
  with pytest.raises(ValueError, match="mode"):
    curate.CurationConfig(mode="vibes")
  with pytest.raises(ValueError, match="threshold"):
    curate.CurationConfig(threshold=6)


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
