"""Reading the 5-point score out of a rating model's free text ([HB] Table 19, method.md §5).

The rating prompt (``templates.RATING_PROMPT``) ends: 'Please first provide a brief reasoning you
used to derive the rating score, and then write "Score: <rating>" in the last line.' Models
(especially small ones) do not always comply: they bold the line, add "/5", put it first, write
it twice, echo the rubric back, or only say "I would rate it 4". ``parse_score`` reads the score
conservatively: it prefers the explicit ``Score: N`` line the prompt asks for, and returns None
(an invalid rating, counted in the validity rate) rather than guess. See ``parse_score_detail``
for the rules.
"""

from __future__ import annotations

import decimal
import re
import unicodedata
from typing import NamedTuple

SCORES = (1, 2, 3, 4, 5)

# Rules reported by ``parse_score_detail``.
SCORE_LINE = "score_line"
RATING_LINE = "rating_line"
BARE_DIGIT = "bare_digit"
PROSE = "prose"
AMBIGUOUS = "ambiguous"
NONE = "none"

_WORDS = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
          "eight": 8, "nine": 9, "ten": 10}
_WORD = r"zero|one|two|three|four|five|six|seven|eight|nine|ten"
# A number that is a whole token: not part of "45", "v4", "4th", "4.5.1", "a4".
_NUM = r"(?<![\w.])\d+(?:\.\d+)?(?![\w%]|\.\d)"
_DEN = r"\s*(?:/|\bout\s+of\b)\s*(?P<den>\d+|five|ten)\b"
_RANGE = r"\s*(?:-|–|—|\bto\b)\s*\d"

# An explicit score statement occupying a whole line (or a whole sentence of a line), after
# markdown emphasis (* _ `) is removed: optional bullet / header / list number, optional
# "The" / "My" and "Final" / "Overall" / "Total", the keyword, an optional "(1-5)", a separator
# (":", "=", "-", "is", or none), the value (bracketed or not, "N", "N.N", a number word, a range
# "N-M", optional "/D" or "out of D"), then only punctuation, "points"/"stars" or one
# parenthetical remark ("Score: 4 (good)").
_SCORE_LINE = re.compile(
    r"^(?:[-+•>#]+\s*|\d+[.)]\s+)*"
    r"(?:(?:the|my)\s+)?(?:(?:final|overall|total)\s+)?(?P<key>score|rating)\b"
    r"(?:\s*\([^()]*\))?\s*(?:[:=\-–—]|\bis\b)?\s*"
    r"[\[(<{\"']?\s*(?P<num>\d+(?:\.\d+)?|" + _WORD + r")\b(?!\.\d)"
    r"(?:\s*(?:-|–|\bto\b)\s*(?P<num2>\d+(?:\.\d+)?))?"
    r"(?:" + _DEN + r")?"
    r"\s*[\])>}\"']?\s*(?:points?|stars?)?\s*[.!]?\s*(?:\([^()]*\))?\s*[.!]?\s*$",
    re.IGNORECASE)
# "Score:" alone on a line, its value on the next non-empty line.
_KEY_ALONE = re.compile(r"^(?:[-+•>#]+\s*)*(?:(?:the|my)\s+)?(?:(?:final|overall|total)\s+)?"
                        r"(?:score|rating)\s*[:=\-–—]?\s*$", re.IGNORECASE)
# Lines of the prompt echoed back: the rubric ("5: It means it is a perfect answer ...") and the
# placeholder ('write "Score: <rating>"').
_ECHO = re.compile(r"^\W*[1-5]\s*[:.)\-–]\s*(?:it\s+)?means\b|<rating>", re.IGNORECASE)
_BARE = re.compile(r"[\[(<]?\s*(?P<num>[1-5])\s*(?:/\s*5)?\s*[\])>]?\.?")

# Weaker forms inside prose; group "num" is the value, "den" an optional denominator.
_VALUE = r"[\[(<\"'*]*\s*(?P<num>" + _NUM + r")(?:" + _DEN + r")?"
_OBJECT = r"(?:it|this|that|the)(?:\s+(?:candidate\s+)?(?:answer|response|output|one))?"
_PROSE = tuple(re.compile(p, re.IGNORECASE) for p in (
    r"\b(?:score|rating)\s*(?:[:=]|\bis\b|\bof\b|\bwould\s+be\b|\bwill\s+be\b)\s*" + _VALUE,
    r"\brat(?:e|ed|ing)\s+" + _OBJECT + r"\s+(?:(?:as|at)\s+)?(?:an?\s+)?" + _VALUE,
    r"\bgiv(?:e|ing)\s+" + _OBJECT + r"\s+(?:an?\s+)?(?:(?:score|rating)\s+of\s+)?" + _VALUE,
    r"\b(?:deserves?|earns?|merits?)\s+(?:an?\s+)?" + _VALUE,
    r"(?P<num>" + _NUM + r")" + _DEN,  # a bare "4/5", "3 out of 5" (only /5, /10, /100 count)
))
# A prose mention that is negated ("not a 5", "wouldn't rate it 5", "rather than 5/5"; at most
# two words between the negation and the mention) ...
_NEGATED_BEFORE = re.compile(r"(?:\bnot|n't|\bnever|\bhardly|\bthan)\s+(?:[\w']+\s+){0,2}$",
                             re.IGNORECASE)
# ... or a condition right before its number ("for a score of 5", "to earn a 5", "to get a
# perfect 5/5"; not "go for a 4/5") ...
_CONDITION_BEFORE = re.compile(
    r"(?:(?<!\bgo\s)\bfor|\bto\s+(?:get|earn|reach|achieve|receive|deserve|merit))\s+"
    r"(?:an?\s+)?(?:(?:perfect|higher|full|top)\s+)?(?:(?:score|rating)\s+(?:of\s+)?)?"
    r"[\[(<\"'*]*\s*$", re.IGNORECASE)
# ... or a hypothetical / a description of a level right after it ("a score of 5 would need",
# "a 5 means", "a 4 is reserved for").
_HYPOTHETICAL_AFTER = re.compile(
    r"^[\])>\"'*]*\s*,?\s*(?:would|could|might|should|requires?|required|needs?|needed|means|"
    r"indicates|is\s+reserved|are\s+reserved|is\s+for|if)\b", re.IGNORECASE)


class ScoreParse(NamedTuple):
  """What ``parse_score_detail`` read.

  Attributes:
    score: 1..5, or None when the output has no valid score.
    rule: which rule decided: "score_line", "rating_line", "bare_digit" or "prose" (with a
      score; "score_line", "rating_line" and "prose" also with None when the value found is
      off the 1..5 scale), "ambiguous" (prose mentions disagree) or "none" (nothing
      score-like). Useful to report why outputs were invalid.
  """

  score: int | None
  rule: str


def _ascii_digits(text: str) -> str:
  """Maps every Unicode decimal digit ("４", "٤", "४") to ASCII and "：" to ":"."""
  out = []
  for ch in text:
    if ch.isdecimal() and not ch.isascii():
      out.append(str(unicodedata.decimal(ch)))
    else:
      out.append(":" if ch == "：" else ch)
  return "".join(out)


def _to_score(num: str, den: str | None = None, num2: str | None = None) -> int | None:
  """The 1..5 score a value denotes, or None when it is off the 5-point scale.

  Args:
    num: "4", "4.5", or a number word ("four").
    den: the denominator of "N/D" / "N out of D", if any; only 5 ("five") is the 5-point scale.
    num2: the upper end of a range "N-M", if any; a range is not a score.

  Returns:
    round-half-up of num when 1 <= num <= 5 (4.5 -> 5, [HB]'s "score >= 4.5"), else None.
  """
  if num2 is not None or (den is not None and den.lower() not in ("5", "five")):
    return None
  value = decimal.Decimal(_WORDS[num.lower()] if num.lower() in _WORDS else num)
  if not 1 <= value <= 5:
    return None
  return int(value.quantize(decimal.Decimal(1), rounding=decimal.ROUND_HALF_UP))


def _segments(line: str):
  """A line, then its sentences when it has several ("Score: 4. The answer is clear.")."""
  yield line
  parts = re.split(r"(?<=[.!?])\s+", line)
  if len(parts) > 1:
    yield from parts


def _prose(text: str) -> ScoreParse:
  """Reads the weaker forms; the score only when all kept mentions agree."""
  found: dict[int, int | None] = {}  # number position -> score (None: off-scale)
  dropped: set[int] = set()
  for pattern in _PROSE:
    for m in pattern.finditer(text):
      pos = m.start("num")
      den = m.group("den")
      if pattern is _PROSE[-1] and den.lower() not in ("5", "five", "10", "ten", "100"):
        continue  # "2 out of 3 steps", "1/2 cup": not a rating
      if re.match(_RANGE, text[m.end("num"):]):
        continue  # "a score of 1 to 5": the scale, not a rating
      sentence_start = max(text.rfind(c, 0, m.start()) for c in ".!?\n") + 1
      if (_NEGATED_BEFORE.search(text[sentence_start:m.start()]) or
          _CONDITION_BEFORE.search(text[sentence_start:m.start("num")]) or
          _HYPOTHETICAL_AFTER.match(text[m.end():])):
        dropped.add(pos)
      found[pos] = _to_score(m.group("num"), den)
  values = {v for pos, v in found.items() if pos not in dropped}
  if not values:
    return ScoreParse(None, NONE)
  if len(values) > 1:
    return ScoreParse(None, AMBIGUOUS)
  return ScoreParse(values.pop(), PROSE)


def parse_score_detail(text: str) -> ScoreParse:
  """Reads the 5-point score from a rating model's output, naming the rule that decided.

  Rules, in order; the first that applies decides (later ones are not consulted, even when
  the earlier one found an invalid value):

  1. ``score_line``: the LAST line (or sentence of a line) that is just a score statement:
     "Score: 4", "**Score:** 4", "### Score: 4", "- Score: 4", "Final score: 4", "Overall
     score is 4", "Score - 4", "Score 4", "Score: [4]", "Score: <4>", "Score: 4.", "Score: 4/5",
     "Score: 4 out of 5", "Score: 4 (good)", "Score (1-5): 4", "Score: four", or "Score:" with
     the value alone on the next line. When a model writes two different Score lines, the last
     wins: the prompt asks for the score on the last line, and a later line is the model's
     correction. A line with more text after the value ("Score: 5 would need ...") is prose.
  2. ``rating_line``: the same with "Rating" instead of "Score" (the prompt's word is Score).
  3. ``bare_digit``: the last non-empty line is just a digit 1-5 (or "N/5"), maybe bracketed,
     bold or followed by a period.
  4. ``prose`` (no explicit line): weaker forms anywhere: "score of 4", "score is 4", "rating:
     4", "I would rate it 4", "I'd give this a 4/5", "deserves a 4", a bare "4/5" / "4 out of 5".
     Mentions that are negated or hypothetical ("not a 5", "rather than 5/5", "to earn a 5",
     "for a score of 5", "a score of 5 would need", "a 5 means") and scale descriptions ("a
     score of 1 to 5") are ignored. The score is read only when the remaining mentions agree on
     exactly one value; otherwise ``ambiguous`` (None): conservative, a guess would bias the
     curated set. Bare "N/D" counts only for D in 5, 10, 100 ("1/2 cup" is not a rating).
  5. ``none``: nothing score-like.

  Values: a whole token (word boundaries: "underscore 5", "separating 2 eggs", "Score: 45" do
  not read 5, 2, 4). Decimals round half up after checking 1 <= value <= 5 (4.5 -> 5 as [HB]'s
  "A_5 = score >= 4.5"; 3.49 -> 3; 5.5, 0.5 invalid). Values outside 1..5 ("0", "6", "8",
  "91"), other scales ("7/10", "5 out of 10", "4.7/10") and ranges ("Score: 4-5") are invalid:
  score None, rule as above. "N/5" and "N out of 5" are the 5-point scale. Number words
  ("five") are read on Score/Rating lines only, never in prose ("one of the best"). Unicode
  decimal digits ("４", "٤") count as their ASCII digits; Windows newlines are newlines.

  Echoes of the prompt never count: rubric lines ("5: It means it is a perfect answer ...")
  and anything on a line with the placeholder "<rating>" are dropped before reading.

  Args:
    text: the generated rating (reasoning and score), without the prompt.

  Returns:
    ``ScoreParse(score, rule)``; score is 1..5 or None.
  """
  text = _ascii_digits(text.replace("\r\n", "\n").replace("\r", "\n"))
  raw_lines = [line.strip() for line in text.split("\n")]
  lines = [line for line in raw_lines if line and not _ECHO.search(line)]
  # "Score:" alone, its value on the next line: read as one line.
  merged = []
  for line in lines:
    if merged and _KEY_ALONE.match(re.sub(r"[*_`]", "", merged[-1])):
      merged[-1] = merged[-1] + " " + line
    else:
      merged.append(line)
  last: dict[str, ScoreParse] = {}  # rule -> its last explicit line
  for line in merged:
    for segment in _segments(re.sub(r"[*_`]", "", line).strip()):
      m = _SCORE_LINE.match(segment)
      if m:
        rule = SCORE_LINE if m.group("key").lower() == "score" else RATING_LINE
        last[rule] = ScoreParse(_to_score(m.group("num"), m.group("den"), m.group("num2")), rule)
  for rule in (SCORE_LINE, RATING_LINE):
    if rule in last:
      return last[rule]
  non_empty = [line for line in raw_lines if line]
  if non_empty:
    m = _BARE.fullmatch(re.sub(r"[*_`#]", "", non_empty[-1]).strip())
    if m:
      return ScoreParse(int(m.group("num")), BARE_DIGIT)
  return _prose("\n".join(lines))


def parse_score(text: str) -> int | None:
  """Reads the 5-point score (1..5) from a rating model's output; None when invalid.

  See ``parse_score_detail`` for the rules (an explicit last ``Score: N`` line first, then
  ``Rating: N``, a bare digit on the last line, and unambiguous prose).
  """
  return parse_score_detail(text).score
