"""Does a text read as an instruction? A documented surface heuristic for backtranslated x̂.

The backward model M_yx ([HB] §2.1) should write, for a web segment y, the instruction x a user
could have asked. A small or barely trained M_yx often writes something else: a summary of the
segment ("This article discusses ..."), a letter ("Dear User, I hope this message finds you
well ..."), a continuation of the page ("P.S. Don't forget to check out ..."), or a fragment cut
by the token budget ("What is the latest feature of the e-tron car that is not available to").
``looks_like_instruction`` tells these apart from questions and requests with a few rules over
words and punctuation only (no model). It is a diagnostic for reports and for choosing
settings, not a filter of the pipeline ([HB] curates with the model's own rating).

Rules, in order (``looks_like_instruction``):

1. **Length**: after normalizing whitespace, at least ``MIN_WORDS`` words and at most
   ``MAX_CHARS`` characters.
2. **Not a letter**: rejected if it opens with a salutation (``LETTER_OPENERS``: "Dear ...",
   "To whom it may concern", "Subject:") or contains letter furniture anywhere (``LETTER_MARKS``:
   "I hope this message finds you well", a "Sincerely," / "Best regards," line, "P.S.",
   "[Your Name]").
3. **Not an echo of the backward prompt** (``PROMPT_ECHO``: "What is the most likely question to
   which the text below would be a great answer?" is a question, but the task's own words, not
   an instruction about the segment).
4. **Not a fragment**: rejected if it stops mid-phrase: its last word is a function word
   (``DANGLING_WORDS``: "to", "the", "of", "and", "that", ...) with no closing punctuation, or
   it ends with a comma, a dash or an opening bracket.
5. **At least one asking sentence**: the text is split into sentences (after ``.``, ``!``, ``?``,
   ``;`` and at newlines; list numbers, bullets, quotes and markdown marks are stripped, and a
   leading greeting such as "Hi," / "Hello there!" is skipped). A sentence *asks* if it

   * ends with ``?`` (**question**), or
   * after leading fillers (``FILLERS``: "so", "and", "also", "now", "ok", ...) starts with an
     interrogative word or an auxiliary verb (``QUESTION_WORDS``: what, how, why, who, when,
     where, which, can, could, should, is, are, do, does, will, would, ...; "How to ..."
     titles included), except a wh-word followed by a subject (``SUBJECTS``: "When I was
     young, ...", "How I learned to code") (**question**), or
   * starts with a base-form task verb (``IMPERATIVE_VERBS``: write, explain, describe, list,
     give, tell, summarize, create, compare, suggest, provide, help, find, translate, generate,
     ...) or a request phrase (``REQUEST_PHRASES``: "please", "I need", "I want you to",
     "I would like", "I'm looking for", "I was wondering", "let's", "act as", ...)
     (**imperative**).

   The opener test is also applied to the clause after the sentence's first comma, so
   "Given the code below, refactor it" and "As a tourist, what should I visit" ask (but not a
   relative clause: "Alibaba, which is set to ..." does not). A sentence
   never asks if it is a pleasantry (``PLEASANTRIES``: "How are you?", "Thank you ...") or a
   web page's call to action (``CALL_TO_ACTION``: "visit our website", "click here",
   "subscribe", "contact us", "check out", "don't forget", ...), and a sentence that opens like
   a summary of a document (``SUMMARY_OPENER``: "This article ...", "The text ...",
   "In this post ...", "In summary ...") asks only if it ends with ``?``.

Web-page calls to action are why "visit", "click", "subscribe", "check", "read", "learn",
"join" and "follow" are NOT in ``IMPERATIVE_VERBS``; nouns that often open a statement
("state", "order", "group", "code", "guide", "rate", "program") are left out too.

Examples: "Hi, I just moved here. Can you suggest places to meet people?" asks (second
sentence); "Hi there! I hope you're doing well." does not; "This passage is from an old book.
Please extract the coherent text." asks (second sentence); "This article explains the history of
the e-tron." does not.

Measured on real human instructions (``tests/test_instructions.py`` checks a floor of 90% on the
first 500 LIMA ones): accepted are 97.2% of the first 500 LIMA training instructions (93.7% of
all 1,030: LIMA's WritingPrompts scenarios such as "You are stuck as a propaganda writer ..."
fail), 97% / 94% of the English first turns of the two Open Assistant tree files, 96.9% of the
demo's 512 seed pairs. Rejected are mostly topic-only titles ("Tracing XML request/responses
with JAX-WS"), statements, and bare greetings ("Hello, nice to meet you!").

Known limits: only surface form is checked, not whether the instruction fits the segment; a
how-to page's own imperative steps ("Choose a ripe avocado.") pass; a question cut mid-phrase
by the token budget passes unless it ends on a ``DANGLING_WORDS`` word (check the generation's
EOS as well, as the augment stage does).
"""

from __future__ import annotations

import re

MIN_WORDS = 3
MAX_CHARS = 4000

# Interrogative words and auxiliary verbs that open a question ("How to ..." included).
QUESTION_WORDS = frozenset("""
what what's whats how how's why who who's whom whose when where where's which
can can't cannot could couldn't should shouldn't shall is isn't are aren't was wasn't were
weren't do don't does doesn't did didn't will won't would wouldn't may might must has hasn't
have haven't had am
""".split())

# Words that open a relative clause after a comma rather than a question.
RELATIVES = frozenset("which who whom whose where when".split())

# A wh-word followed by a subject opens a subordinate clause or a title, not a question
# ("When I looked at her, ...", "How I learned to code"), unless the sentence ends with "?".
WH_WORDS = frozenset("what how why who whom whose when where which".split())
SUBJECTS = frozenset("""
i you he she it we they there the a an this that these those my your his her our their its
""".split())

# Base-form task verbs that open an imperative instruction (see the module docstring for what
# is deliberately absent).
IMPERATIVE_VERBS = frozenset("""
write rewrite draft compose create generate make produce design develop build implement
explain describe define detail elaborate clarify illustrate interpret discuss outline
list enumerate name identify mention specify give tell show teach walk share offer provide
summarize summarise paraphrase rephrase reword translate convert transform format edit fix
correct proofread improve refactor optimize debug complete fill finish solve calculate compute
estimate determine predict prove simplify derive evaluate analyze analyse assess review critique
compare contrast classify categorize categorise sort rank organize organise
choose pick select recommend suggest propose brainstorm plan prepare help assist find extract
answer respond reply argue convince persuade imagine pretend assume suppose consider
roleplay role-play expand shorten condense invent think decide surprise pen re-write
print output return replace detect repeat justify reverse count label tag
""".split())

# "I want to ..." is a request unless it announces what the writer is about to do (a letter or
# a blog post: "I want to share my experience").
NOT_REQUESTS = re.compile(
    r"^(?:i|we) (?:want|would like|'d like|wanted) to (?:share|thank|tell you|let you|"
    r"introduce|announce|express|take this|take a moment|talk about my|welcome|invite|remind|"
    r"apologize|apologise|start by|begin by|congratulate|say)\b")

# Multi-word openers of a request (matched on whole words at a sentence or clause start).
REQUEST_PHRASES = (
    "please", "kindly", "help me", "let's", "lets", "let us", "let me know",
    "i need", "we need", "i want", "we want", "i require",
    "i'd like", "i would like", "i'd love", "i would love", "we'd like", "we would like",
    "i'm looking for", "i am looking for", "im looking for", "we're looking for",
    "we are looking for", "i was wondering", "i'm wondering", "i am wondering", "i wonder",
    "i have a question", "my question is", "i'm curious", "i am curious",
    "your task is", "your job is", "you are a", "you are an", "you're a",
    "act as", "act like", "come up with",
    "in what", "for what", "to what", "on what", "from what", "with what", "at what",
    "in which", "by how",
)

# Words skipped at a sentence start before the opener test.
FILLERS = frozenset("""
so and but also now ok okay then well additionally finally lastly oh hmm hm yes
first second third next plus moreover furthermore anyway basically just
""".split())

LETTER_OPENERS = re.compile(r"^\s*(?:dear\b|to whom it may concern|subject\s*:)",
                            re.IGNORECASE)
LETTER_MARKS = re.compile(
    r"\bhope (?:this|that|my) (?:message|email|e-mail|letter|note) finds you\b"
    r"|(?:^|\n)\s*(?:sincerely|best regards|kind regards|warm regards|regards|yours truly|"
    r"yours sincerely|best wishes|with gratitude)\s*,?\s*(?:\n|$)"
    r"|(?:^|\s)P\.\s?S\.?(?:\s|:)"
    r"|\[your name\]",
    re.IGNORECASE)

# Words of the [BF] backward prompt (``templates.BACKWARD_PROMPT``) that a model echoes.
PROMPT_ECHO = re.compile(
    r"\bmost likely question\b|\bthe text below\b|\bcandidate answer\b|"
    r"\bwould be a great answer\b", re.IGNORECASE)

# A text that stops on one of these words (and no closing punctuation) was cut mid-phrase.
DANGLING_WORDS = frozenset("""
a an the to of and or but nor that which whose with without from into onto at by as than
if because while although though unless whether between via per including my your our their
his her its such very
""".split())

# A greeting opening a sentence is skipped ("Hi, can you ..." asks; "Hi there!" does not).
GREETINGS = re.compile(
    r"^(?:hi|hello|hey|hiya|howdy|greetings|good (?:morning|afternoon|evening|day))\b"
    r"(?:\s+(?:there|all|everyone|everybody|guys|folks|friend|again|assistant|chatgpt|"
    r"open ?assistant))?\s*[!,.:;-]*\s*", re.IGNORECASE)

# Pleasantries never ask, whatever their punctuation.
PLEASANTRIES = re.compile(
    r"^(?:how are you(?: doing)?(?: today)?|how's it going|how is it going|what's up|"
    r"how do you do|thanks?\b.*|thank you\b.*|many thanks\b.*|"
    r"i hope you(?:'re| are) (?:doing )?(?:well|good|great|fine)\b.*)\W*$", re.IGNORECASE)

SUMMARY_OPENER = re.compile(
    r"^(?:(?:this|the|that|these|in this|in the)\s+(?:\w+\s+)?(?:article|text|passage|post|"
    r"blog|document|essay|story|page|section|paper|piece|report|excerpt|segment|content|"
    r"author|writer|video|book|chapter|guide|tutorial|review|study|letter|email|message|"
    r"web ?page|website|site)s?\b"
    r"|in summary\b|in conclusion\b|to summarize\b|to sum up\b|overall\b|in short\b|summary\b)",
    re.IGNORECASE)

# A web page's call to action, at a sentence or clause start.
CALL_TO_ACTION = re.compile(
    r"^(?:please\s+|be sure to\s+|make sure to\s+|remember to\s+|why not\s+)?"
    r"(?:visit|click|tap|subscribe|sign up|contact us|check (?:out|back)|follow us|stay tuned|"
    r"call us|email us|share this|read more|learn more|find out more|buy|order now|shop|"
    r"register|join|leave a comment|don'?t forget|do not forget|download|get in touch)\b",
    re.IGNORECASE)

_SENTENCE_SPLIT = re.compile(r"(?<=[.!?;])\s+|\n+")
_JUNK = "\\s>*_#`\"'\u201c\u201d\u2018\u2019(\\[-"
_LEADING_JUNK = re.compile(rf"^[{_JUNK}]*(?:\d+[.)]\s+)?[{_JUNK}]*")
_WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")


def _words(text: str) -> list[str]:
  return _WORD.findall(text.lower().replace("\u2019", "'"))


def _opener(clause: str, after_comma: bool = False) -> str | None:
  """Kind of a clause's opening words: "question", "imperative" or None.

  After a comma, a relative pronoun (``RELATIVES``: "..., which has been") opens no question.
  """
  words = _words(_LEADING_JUNK.sub("", clause))
  while words and words[0] in FILLERS:
    words = words[1:]
  if after_comma and words and words[0] in RELATIVES:
    return None
  if words[:2] in (["try", "to"], ["try", "and"]):
    words = words[2:]
  if not words:
    return None
  head = " ".join(words[:6]) + " "
  if NOT_REQUESTS.match(head) or CALL_TO_ACTION.match(head):
    return None
  if any(head.startswith(p + " ") for p in REQUEST_PHRASES):
    return "imperative"
  if words[0] in QUESTION_WORDS:
    if words[0] in WH_WORDS and len(words) > 1 and words[1] in SUBJECTS:
      return None  # "When I was young, ...", "How I learned to ..." (no "?"): not a question
    return "question"
  if words[0] in IMPERATIVE_VERBS:
    return "imperative"
  return None


def _sentence_kind(sentence: str) -> str | None:
  """Kind of one sentence: "question", "imperative" or None (it does not ask)."""
  s = GREETINGS.sub("", _LEADING_JUNK.sub("", sentence).strip()).strip()
  if not s or PLEASANTRIES.match(s):
    return None
  if s.rstrip("\"')]*_\u201d\u2019 ").endswith("?"):
    return "question"
  if SUMMARY_OPENER.match(s):
    return None
  kind = _opener(s)
  if kind is None and "," in s:
    kind = _opener(s.split(",", 1)[1], after_comma=True)
  return kind


def _normalize(text: str) -> str:
  text = (text or "").replace("\r", "")
  text = re.sub(r"[ \t]+", " ", text)
  return re.sub(r"\n\s*\n+", "\n", text).strip()


def _rejection(text: str) -> str | None:
  """Why a normalized text cannot be an instruction (rules 1-4), or None."""
  if len(_words(text)) < MIN_WORDS:
    return "too_short"
  if len(text) > MAX_CHARS:
    return "too_long"
  if LETTER_OPENERS.match(text) or LETTER_MARKS.search(text):
    return "letter"
  if PROMPT_ECHO.search(text):
    return "prompt_echo"
  end = text.rstrip("*_ ")
  if end.endswith((",", "-", "(", "[", "\u2014", "\u2013")):
    return "fragment"
  tail = _words(end[-40:])
  if tail and tail[-1] in DANGLING_WORDS and end[-1].isalnum():
    return "fragment"
  return None


def rejection_reason(text: str) -> str:
  """Why ``looks_like_instruction(text)`` is False, for reports.

  Args:
    text: a candidate instruction.
  Returns:
    "" if it looks like an instruction, else "too_short", "too_long", "letter", "prompt_echo",
    "fragment" or "no_asking_sentence".
  """
  text = _normalize(text)
  reason = _rejection(text)
  if reason:
    return reason
  if any(_sentence_kind(s) for s in _SENTENCE_SPLIT.split(text)):
    return ""
  return "no_asking_sentence"


def instruction_kind(text: str) -> str:
  """Classifies a candidate instruction.

  Args:
    text: the instruction (e.g. ``templates.parse_backward_output`` of a backward generation).
  Returns:
    "question" or "imperative" (the kind of its first asking sentence) if the text reads as an
    instruction under the module's rules, else "other".
  """
  text = _normalize(text)
  if _rejection(text):
    return "other"
  for sentence in _SENTENCE_SPLIT.split(text):
    kind = _sentence_kind(sentence)
    if kind:
      return kind
  return "other"


def looks_like_instruction(text: str) -> bool:
  """True if ``text`` reads as a question or a request to an assistant (module rules 1-5).

  Args:
    text: a candidate instruction.
  Returns:
    Whether it passes the length, letter and fragment checks and has an asking sentence.
  """
  return instruction_kind(text) != "other"
