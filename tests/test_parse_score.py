"""Reading the 1..5 score from a rating model's free text ([HB] Table 19, method.md §5).

Each case is a model output as a small chat model writes it for the Table 19 rating prompt
(``templates.RATING_PROMPT``), the score it must parse to, and the rule that must decide it
(see ``parse_score_detail``'s docstring for the rules).
"""

import pytest

from humpback_jax import curate
from humpback_jax.curate import parse
from humpback_jax.data import templates

# The rubric lines of the prompt ("1: It means ..." .. "5: It means ..."), verbatim.
RUBRIC = "\n".join(line for line in templates.RATING_PROMPT.splitlines()
                   if line[:1] in "12345" and line[1:3] == ": ")
# The prompt's last instruction, verbatim (contains the placeholder "Score: <rating>").
INSTRUCTION = next(line for line in templates.RATING_PROMPT.splitlines()
                   if line.startswith("Please first provide"))

S, R, B, P, A, N = "score_line", "rating_line", "bare_digit", "prose", "ambiguous", "none"

CASES = [
  # --- Kept from tests/test_curate.py (all expectations unchanged). ---
  ("The answer is good.\nScore: 5", 5, S),
  ("Reasoning...\nScore: 4", 4, S),
  ("**Score:** 3", 3, S),
  ("Score = 4/5", 4, S),
  ("I would give it a score of 2.", 2, P),
  ("Rating: 5 out of 5", 5, R),
  ("It is fine. 4/5", 4, P),
  ("Score: 4.5", 5, S),  # [HB]: A_5 is "score >= 4.5"
  ("Earlier I said Score: 2 but on reflection\nScore: 4", 4, S),  # the line wins over prose
  ("blah\n5", 5, B),
  ("a score of 5 out of 10", None, P),  # another scale
  ("Score: 7/10", None, S),
  ("Score: 3/5", 3, S),
  ("Score: 8", None, S),  # out of range (method.md §5: "8", "91")
  ("Score: 91", None, S),
  ("Score: <rating>", None, N),  # the placeholder, echoed
  ("no score here", None, N),
  ("", None, N),

  # --- The paper's format: reasoning, then "Score: N" on the last line. ---
  ("The answer provides a clear, step-by-step explanation of how to reset a TP-Link router. It "
   "is written from an AI assistant's perspective and addresses the user's question directly. "
   "It could be a little more concise.\n\nScore: 4", 4, S),
  # Score first, then the reasoning.
  ("Score: 5\n\nThe response is a perfect answer. It explains the difference between a list and a "
   "tuple in Python with 2 short examples and has no irrelevant sentences.", 5, S),
  # Chatty, repeats the question, numbers in the reasoning.
  ("Sure! The user asked: \"How long should I boil an egg?\" The answer says to boil water, add "
   "the egg and wait 9 minutes, then cool it for 2 minutes. It is helpful and written like an "
   "AI Assistant.\nScore: 5", 5, S),
  # A number from the instruction quoted in the reasoning, the score after it on the same line.
  ("The user asked for 5 tips for saving money. The list has 5 items. Score: 3", 3, S),
  ("The answer has 3 steps and 2 examples, everything the user asked for. Score: 5.", 5, S),

  # --- Markdown, punctuation, whitespace, newlines. ---
  ("**Reasoning:** The answer is helpful but reads like a blog post (\"I tried this last "
   "summer\").\n\n**Score: 3**", 3, S),
  ("### Reasoning\nThe answer is on topic but only gives a high-level methodology.\n\n"
   "### Score: 2", 2, S),
  ("## Evaluation\nThe answer is accurate and well organized.\n\n## Score\n4", 4, S),
  ("The answer is complete.\nScore:\n**5**", 5, S),  # value on the line after "Score:"
  ("**Final Score:** 4/5", 4, S),
  ("The response is correct and friendly.\nScore: **4**", 4, S),
  ("> Score: 4", 4, S),
  ("Score: 4.", 4, S),
  ("Score:4", 4, S),
  ("SCORE: 2", 2, S),
  ("Score - 4", 4, S),
  ("Score: [4]", 4, S),
  ("Score: \"3\"", 3, S),
  ("Score (1-5): 4", 4, S),
  ("Score: 4 (good)", 4, S),
  ("Score: 4 out of 5 stars", 4, S),
  ("My final score is 3.", 3, S),
  ("Score: 3.\n\nExplanation: the answer is copied from a forum post and mentions the comments "
   "section.", 3, S),
  ("Rating: 4 out of 5. The answer is detailed but too long.", 4, R),
  ("The answer is complete and well organized.\r\nIt uses a numbered list.\r\nScore: 4\r\n", 4, S),
  ("\n\n   Score: 5   \n\n", 5, S),
  ("Reasoning:\n- The answer addresses the question.\n- It is written in a helpful tone.\n"
   "- It ends with an irrelevant link to a shop.\n\nScore: 3", 3, S),
  ("- Relevance: good\n- Clarity: good\n- Completeness: missing the last step\n- Score: 4", 4, S),
  ("1. The answer is accurate.\n2. It is concise.\n3. Score: 5", 5, S),
  ("Overall, I think this is a solid answer.\nRating: 4/5", 4, R),
  ("The answer is excellent and engaging.\n\n**5**", 5, B),
  ("At first glance it looks like a 4/5, but the last paragraph is promotional.\n3", 3, B),

  # --- Decimals: round half up, 1 <= value <= 5. ---
  ("Score: 3.49", 3, S),
  ("Score: 4.0", 4, S),
  ("Score: 2.5", 3, S),  # half up (Python's round(2.5) is 2)
  ("Score: 4.5/5", 5, S),
  ("Score: 5.5", None, S),
  ("Score: 0.5", None, S),  # below 1 before rounding

  # --- Other scales and out-of-range values are invalid. ---
  ("Score: 4.7/10", None, S),
  ("Score: 5 out of 10", None, S),
  ("Score: 10/10", None, S),
  ("I would rate this answer 8/10.", None, P),
  ("Score: 0", None, S),
  ("Score: 6", None, S),
  ("Score: 45", None, S),  # not "4"
  ("Score: 3 out of 5", 3, S),

  # --- Word boundaries (the old parser read "rating" in "separating", "score" in "underscore").
  ("The recipe says to start by separating 2 eggs, which matches the user's request for a "
   "meringue. The answer is complete and clear.\n\n4", 4, B),
  ("In the example the helper function is prefixed with an underscore 5 times in a row, which is "
   "confusing. I would rate it 2.", 2, P),
  ("The variable uses an underscore 5 characters long.", None, N),

  # --- Several scores: the explicit line wins over prose; among lines the last. ---
  ("Score: 4\n\nThe answer is clear and written from an AI assistant's perspective. A score of 5 "
   "would need more detail on the side effects.", 4, S),
  ("Score: 4 - a score of 5 would need more examples.", 4, P),  # one line, not a bare statement
  ("A 5 would be too generous since the answer repeats the question.\nScore: 4", 4, S),
  ("Score: 3\n\nWait, on second thought the answer does address every part of the question.\n"
   "Score: 4", 4, S),
  ("Score: 4\nScore: 4", 4, S),
  ("Score: 4\nHmm, let me reconsider.\nScore: 6", None, S),  # the last line is invalid: None
  ("Score: 4-5", None, S),  # a range is not a score
  ("Rating: 3\nScore: 5", 5, S),  # the prompt's word "Score" beats "Rating"
  ("Score: 5\nRating: 3", 5, S),

  # --- Prose only: read only when unambiguous; negations and hypotheticals do not count. ---
  ("The answer is good but not a 5 because the last paragraph is promotional. I would rate it "
   "4.", 4, P),
  ("I'd give this a 4/5. A perfect score of 5 would require citing sources.", 4, P),
  ("This is not a 5/5 answer, but it is close. I'd give it a 4.", 4, P),
  ("I wouldn't rate it 5, but it is a solid 4/5.", 4, P),
  ("To earn a 5 the answer would need to drop the personal anecdote. I rate it 3 out of 5.",
   3, P),
  ("On a scale of 1 to 5, I would rate this response a 4.", 4, P),
  ("The response deserves a 2 because it only gives a high-level overview.", 2, P),
  ("The answer gets a score of 4 from me. A score of 4 seems fair.", 4, P),
  ("The first half deserves a 5 but the second half deserves a 2.", None, A),
  ("The answer is between a 3 and a 4. I would rate it 3, maybe a score of 4.", None, A),
  ("I would give it a five.", None, N),  # number words only on a Score/Rating line
  ("Score: N/A - the answer is empty.", None, N),
  ("The answer is fine overall.\n6", None, N),  # a bare 6 is not a score

  # --- Number words on the explicit line. ---
  ("Score: five", 5, S),
  ("The answer is mostly complete.\nScore: Four.", 4, S),
  ("Score: ten", None, S),

  # --- Non-ASCII digits and colon. ---
  ("Score: ٤", 4, S),  # Arabic-Indic four
  ("Score：４", 4, S),  # full-width colon and four
  ("The answer is clear.\nScore: ३", 3, S),  # Devanagari three

  # --- The prompt echoed back. ---
  (RUBRIC, None, N),
  (RUBRIC + "\n\nThe answer is written from an AI assistant's perspective.\nScore: 4", 4, S),
  ("Let me recall the scale:\n" + RUBRIC + "\n\nThe answer mentions the comments section, so it "
   "reads like a blog post. I would rate it 3.", 3, P),
  (INSTRUCTION, None, N),
  (INSTRUCTION + "\nThe answer is complete and helpful.\nScore: 5", 5, S),
  ("Score: <rating>\n\nThe answer is good.", None, N),
  ("   \n  \n", None, N),
]


@pytest.mark.parametrize("text,expected,rule", CASES)
def test_parse_score_detail(text, expected, rule):
  assert parse.parse_score_detail(text) == (expected, rule)
  assert curate.parse_score(text) == expected


def test_table_is_large_and_unique():
  assert len(CASES) >= 40
  assert len({text for text, _, _ in CASES}) == len(CASES)


def test_parse_score_does_not_read_the_scale_description():
  # The prompt itself mentions "5-point scale" and "Score: <rating>": no score in it.
  assert curate.parse_score(templates.RATING_PROMPT.format(instruction="x", output="y")) is None


def test_detail_is_a_named_pair():
  score, rule = parse.parse_score_detail("Reasoning.\nScore: 4")
  assert (score, rule) == (4, "score_line")
  assert parse.parse_score_detail("Score: 4").rule == "score_line"
