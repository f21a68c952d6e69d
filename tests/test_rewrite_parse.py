"""Parsing [BF]'s rewrite outputs and the retry / failure policy (humpback_jax.bft.rewrite_parse).

Each case is an output as a chat model (Llama-2-chat, SmolLM2-Instruct) writes it for the rewrite
prompt (``bft.templates.REWRITE_PROMPT``), with the status and text it must parse to.
"""

from __future__ import annotations

import json

import pytest

from humpback_jax import tokenizers as toks
from humpback_jax.bft import rewrite_parse as rp
from humpback_jax.bft import templates as bft

INSTRUCTION = "How do I make a sourdough starter from scratch?"
DRAFT = ("Posted by admin on March 3, 2019\n\nSourdough starter is just flour and water left to "
         "ferment. Mix 50 g of flour with 50 g of water in a jar, cover it loosely and keep it at "
         "room temperature. Feed it the same amounts every day. After 5-7 days it should be bubbly "
         "and smell sour, which means it is ready to bake with.\n\nLeave a comment below!")
REWRITTEN = ("To make a sourdough starter from scratch, you only need flour and water:\n\n"
             "1. Mix 50 g of flour with 50 g of water in a jar.\n"
             "2. Cover it loosely and keep it at room temperature.\n"
             "3. Feed it the same amounts every day.\n\n"
             "After 5-7 days the starter should be bubbly and smell sour, which means it is ready "
             "to bake with.")
SHORT = "Mix equal weights of flour and water, feed it daily, and use it once it is bubbly."
CUT = ("To make a sourdough starter from scratch, you only need flour and water:\n\n"
       "1. Mix 50 g of flour with 50 g of wa")

# (name, output, finished, status, text, flags that must be True)
CASES = [
    ("llama2_preamble_and_explanation",
     f"  Sure! Here is the rewritten response:\n\n[RES]\n{REWRITTEN}\n[/RES]\n\nI removed the "
     "post date and the comment request, and turned the steps into a numbered list.",
     True, rp.OK, REWRITTEN, ()),
    ("bare_block", f"[RES] {REWRITTEN} [/RES]", True, rp.OK, REWRITTEN, ()),
    ("markdown_inside",
     "[RES]\n**Making a sourdough starter**\n\n- Mix *equal* weights of flour and water.\n"
     "- Feed it daily.\n[/RES]",
     True, rp.OK,
     "**Making a sourdough starter**\n\n- Mix *equal* weights of flour and water.\n"
     "- Feed it daily.", ()),
    ("no_tags",
     f"Sure! Here's a rewritten version of the draft response:\n\n{REWRITTEN}",
     True, rp.MISSING, None, ()),
    ("cut_mid_sentence", f"[RES] {CUT}", False, rp.UNTERMINATED, CUT, ("cut",)),
    ("cut_inside_closing_tag", f"[RES]\n{SHORT}\n[/RE", False, rp.UNTERMINATED, SHORT, ("cut",)),
    ("eos_without_closing_tag", f"Here you go:\n[RES]\n{SHORT}\n", True, rp.UNTERMINATED, SHORT,
     ()),
    ("opening_tag_only", "Here is the rewritten response:\n\n[RES]\n", False, rp.UNTERMINATED,
     None, ("cut",)),
    ("empty_tags", "[RES][/RES]", True, rp.EMPTY, None, ()),
    ("blank_block_and_apology",
     "[RES]\n\n[/RES]\n\nI'm sorry, but I cannot rewrite this response.", True, rp.EMPTY, None,
     ()),
    ("nested_stutter", f"[RES] [RES] {SHORT} [/RES]", True, rp.NESTED, None, ()),
    ("two_blocks",
     f"Here is the rewritten response:\n[RES]\n{REWRITTEN}\n[/RES]\n\nAlternatively, a more "
     f"concise version:\n[RES]\n{SHORT}\n[/RES]",
     True, rp.OK, REWRITTEN, ("multiple",)),
    ("blank_block_then_real_one", f"[RES] [/RES]\n[RES] {SHORT} [/RES]", True, rp.OK, SHORT,
     ("multiple",)),
    ("prompt_echoed_in_block",
     "[RES] Given the draft response to the provided question below, rewrite the draft to "
     "improve it, so it is a high quality response to the given question. [/RES]",
     True, rp.COPIED_PROMPT,
     "Given the draft response to the provided question below, rewrite the draft to improve it, "
     "so it is a high quality response to the given question.", ()),
    ("prompt_sentence_echoed_in_block",
     "[RES] It should be as similar as possible, copying text where possible, while making the "
     "flow more clear. [/RES]",
     True, rp.COPIED_PROMPT,
     "It should be as similar as possible, copying text where possible, while making the flow "
     "more clear.", ()),
    ("chat_markup_in_block", f"[RES] {SHORT} [/INST] [/RES]", True, rp.COPIED_PROMPT,
     f"{SHORT} [/INST]", ()),
    ("prompt_echoed_then_block",
     "[INST] Given the above question, rewrite the draft response. Return the rewritten "
     f"response between [RES] and [/RES]. [/INST]\n\n[RES] {SHORT} [/RES]",
     True, rp.OK, SHORT, ()),
    ("only_the_prompt_sentence",
     "I will return the rewritten response between [RES] and [/RES].", True, rp.MISSING, None,
     ()),
    ("tags_mentioned_in_preamble",
     f"Here's the rewritten response in [RES] tags:\n\n[RES]\n{SHORT}\n[/RES]", True, rp.OK,
     SHORT, ()),
    ("lowercase_tags", f"[res]\n{SHORT}\n[/res]", True, rp.OK, SHORT, ("tag_variant",)),
    ("spaces_in_tags", f"[ RES ] {SHORT} [ /RES ]", True, rp.OK, SHORT, ("tag_variant",)),
    ("bold_tags", f"**[RES]**\n{SHORT}\n**[/RES]**", True, rp.OK, SHORT, ("tag_variant",)),
    ("code_span_tags", f"`[RES]` {SHORT} `[/RES]`", True, rp.OK, SHORT, ("tag_variant",)),
    ("draft_copied_verbatim", f"[RES]\n{DRAFT}\n[/RES]", True, rp.OK, DRAFT,
     ("identical_to_draft",)),
    ("draft_copied_rewrapped", "[RES] " + " ".join(DRAFT.split()) + " [/RES]", True, rp.OK,
     " ".join(DRAFT.split()), ("identical_to_draft",)),
    ("closing_tag_only", f"{SHORT}\n[/RES]", True, rp.MISSING, None, ()),
    ("block_then_cut_second_block",
     f"[RES] {SHORT} [/RES]\n\nOr, in more detail:\n[RES] {CUT}", False, rp.OK, SHORT, ("cut",)),
    ("response_tag_is_not_res", f"[RESPONSE] {SHORT} [/RESPONSE]", True, rp.MISSING, None, ()),
]
FLAGS = ("identical_to_draft", "multiple", "tag_variant", "cut")


@pytest.mark.parametrize("name,output,finished,status,text,flags", CASES,
                         ids=[c[0] for c in CASES])
def test_parse_rewrite(name, output, finished, status, text, flags):
  del name
  prompt = bft.rewrite_prompt(None, INSTRUCTION, DRAFT, template="llama2")
  for kw in ({}, {"prompt": prompt, "instruction": INSTRUCTION}):
    parse = rp.parse_rewrite(output, DRAFT, finished=finished, **kw)
    assert (parse.status, parse.text) == (status, text), parse.detail
    for flag in FLAGS:
      assert bool(getattr(parse, flag)) == (flag in flags), (flag, parse)
    assert parse.ok == (status == rp.OK)
    assert json.loads(json.dumps(parse.as_record()))["status"] == status


def test_cases_cover_every_status():
  assert {c[3] for c in CASES} == set(rp.STATUSES)
  assert len(CASES) >= 15


def test_details():
  parse = lambda out, **kw: rp.parse_rewrite(out, DRAFT, **kw)
  assert parse(f"[RES] {CUT}", finished=False).detail == (
      "[RES] without [/RES] (cut by the token budget)")
  assert parse(f"[RES] {CUT}").cut is None  # finished unknown
  assert parse(f"[RES] {SHORT} [/RES] [RES] {SHORT}.. [/RES]").detail == (
      "2 blocks; the first non-blank taken")
  assert "a later unterminated block ignored" in parse(f"[RES] {SHORT} [/RES] [RES] {CUT}").detail
  assert "1 stray [/RES] ignored" in parse(f"[RES] {SHORT} [/RES] trailing [/RES]").detail
  assert "mention(s) of the tags ignored" in parse(
      f"Between [RES] and [/RES]:\n[RES]{SHORT}[/RES]").detail
  assert "contains the prompt's 'rewrite the draft'" in parse(
      "[RES] Given the draft, rewrite the draft. [/RES]").detail
  assert "repeats the prompt's text" in parse(
      "[RES] It should be as similar as possible, copying text where possible, ok [/RES]").detail


def test_restating_the_instruction_is_not_a_prompt_copy():
  """A marker phrase the instruction (or the draft) itself contains does not count."""
  instruction = "How should I rewrite the draft of my cover letter?"
  draft = "Read it aloud, cut every sentence that does not show a result, keep it to one page."
  out = ("[RES] To rewrite the draft of your cover letter, read it aloud, cut every sentence "
         "that does not show a result, and keep it to one page. [/RES]")
  assert rp.parse_rewrite(out, DRAFT).status == rp.COPIED_PROMPT
  prompt = bft.rewrite_prompt(None, instruction, draft, template="llama2")
  parse = rp.parse_rewrite(out, draft, prompt=prompt, instruction=instruction)
  assert parse.status == rp.OK
  # The model restating a whole long question is fine too.
  long_q = "What is the best way to keep a sourdough starter alive while I am on a long holiday?"
  out = ("[RES] The best way to keep a sourdough starter alive while you are on a long holiday "
         "is to refrigerate it. [/RES]")
  assert rp.parse_rewrite(out, SHORT, instruction=long_q).status == rp.OK


class _ChatML:
  """A tokenizer with a ChatML template that has a system prompt (like SmolLM2's)."""

  chat_template = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
                   "Hugging Face<|im_end|>\n{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
                   "{{ m['content'] }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n")

  def apply_chat_template(self, messages, add_generation_prompt=True):
    return toks.render_chat_template(self.chat_template, messages, add_generation_prompt)


def test_system_prompt_echo_needs_the_prompt():
  prompt = bft.rewrite_prompt(_ChatML(), INSTRUCTION, DRAFT)
  assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
  out = ("[RES] I am a helpful AI assistant named SmolLM, trained by Hugging Face. "
         f"{SHORT} [/RES]")
  assert rp.parse_rewrite(out, DRAFT).status == rp.OK  # REWRITE_PROMPT's words only
  parse = rp.parse_rewrite(out, DRAFT, prompt=prompt, instruction=INSTRUCTION)
  assert parse.status == rp.COPIED_PROMPT
  assert parse.detail == (
      "repeats the prompt's text 'a helpful ai assistant named smollm trained by hugging face'")
  # Copying the draft, which is part of the prompt, is not a copy of the prompt.
  parse = rp.parse_rewrite(f"[RES]{DRAFT}[/RES]", DRAFT, prompt=prompt, instruction=INSTRUCTION)
  assert (parse.status, parse.identical_to_draft) == (rp.OK, True)


def test_bad_arguments():
  with pytest.raises(TypeError, match="must be str"):
    rp.parse_rewrite(None, DRAFT)
  with pytest.raises(TypeError, match="must be str"):
    rp.parse_rewrite("[RES]x[/RES]", None)
  with pytest.raises(ValueError, match="max_retries"):
    rp.RewritePolicy(max_retries=-1)
  with pytest.raises(ValueError, match="keep_draft, drop"):
    rp.RewritePolicy(on_failure="accept_unterminated")
  with pytest.raises(ValueError, match="attempt=-1"):
    rp.should_retry(rp.parse_rewrite("x", DRAFT), rp.RewritePolicy(), -1)
  with pytest.raises(ValueError, match="no attempts"):
    rp.resolve([], DRAFT, rp.RewritePolicy())


def run_row(outputs, policy, finished=True):
  """The rewrite stage's loop for one row: parse, retry while asked, resolve."""
  attempts = []
  for attempt, out in enumerate(outputs):
    attempts.append(rp.parse_rewrite(out, DRAFT, finished=finished))
    if not rp.should_retry(attempts[-1], policy, attempt):
      break
  return attempts, rp.resolve(attempts, DRAFT, policy)


OK_OUT = f"[RES] {SHORT} [/RES]"
BAD = ["no tags at all", "[RES][/RES]", f"[RES] [RES] {SHORT} [/RES]", "[RES] Return the "
       "rewritten response between the tags [/RES]"]


def test_retry_then_success():
  policy = rp.RewritePolicy()
  attempts, (text, outcome) = run_row([BAD[0], OK_OUT, "never generated"], policy)
  assert [p.status for p in attempts] == [rp.MISSING, rp.OK]
  assert (text, outcome) == (SHORT, rp.REWRITTEN)


@pytest.mark.parametrize("on_failure,expected", [("keep_draft", (DRAFT, rp.KEPT_DRAFT)),
                                                 ("drop", (None, rp.DROPPED))])
def test_retries_exhausted(on_failure, expected):
  policy = rp.RewritePolicy(max_retries=2, on_failure=on_failure)
  attempts, result = run_row(BAD + [OK_OUT], policy)
  assert [p.status for p in attempts] == [rp.MISSING, rp.EMPTY, rp.NESTED]  # 1 + 2 retries
  assert result == expected
  attempts, result = run_row(BAD, rp.RewritePolicy(max_retries=0, on_failure=on_failure))
  assert len(attempts) == 1 and result == expected
  attempts, result = run_row([BAD[3]], rp.RewritePolicy(max_retries=0, on_failure=on_failure))
  assert attempts[0].status == rp.COPIED_PROMPT and result == expected


def test_accept_unterminated():
  cut_out = f"[RES] {CUT}"
  strict = rp.RewritePolicy(max_retries=1)
  attempts, result = run_row([cut_out, cut_out], strict, finished=False)
  assert len(attempts) == 2 and result == (DRAFT, rp.KEPT_DRAFT)

  lenient = rp.RewritePolicy(max_retries=1, accept_unterminated=True)
  attempts, result = run_row([cut_out, OK_OUT], lenient, finished=False)
  assert len(attempts) == 1 and result == (CUT, rp.REWRITTEN_UNTERMINATED)
  # Nothing after [RES]: never accepted.
  attempts, result = run_row(["[RES]", OK_OUT], lenient, finished=False)
  assert [p.status for p in attempts] == [rp.UNTERMINATED, rp.OK]
  assert result == (SHORT, rp.REWRITTEN)

  # accept_cut=False: only an unterminated block that ended with EOS (or unknown) is accepted.
  no_cut = rp.RewritePolicy(max_retries=1, accept_unterminated=True, accept_cut=False)
  attempts, result = run_row([cut_out, cut_out], no_cut, finished=False)
  assert len(attempts) == 2 and result == (DRAFT, rp.KEPT_DRAFT)
  attempts, result = run_row([f"[RES] {SHORT}"], no_cut, finished=True)
  assert result == (SHORT, rp.REWRITTEN_UNTERMINATED)
  assert no_cut.accepts(rp.parse_rewrite(f"[RES] {SHORT}", DRAFT))


def test_summarize():
  keep = rp.RewritePolicy(max_retries=2)
  drop = rp.RewritePolicy(max_retries=1, on_failure="drop")
  lenient = rp.RewritePolicy(max_retries=2, accept_unterminated=True)
  rows = [
      run_row([OK_OUT], keep),  # ok at once
      run_row([f"[res]{SHORT}[/res]"], keep),  # ok, tag variant
      run_row([f"[RES]{DRAFT}[/RES]"], keep),  # ok, identical to the draft
      run_row([BAD[0], f"[RES]{SHORT}[/RES][RES]x[/RES]"], keep),  # retried, two blocks
      run_row(BAD, keep),  # 3 failures, draft kept
      run_row(BAD, drop),  # 2 failures, dropped
      run_row([f"[RES] {CUT}"], lenient, finished=False),  # unterminated accepted
  ]
  summary = rp.summarize([(attempts, outcome) for attempts, (_, outcome) in rows])
  assert summary == {
      "rows": 7,
      "outcomes": {rp.REWRITTEN: 4, rp.REWRITTEN_UNTERMINATED: 1, rp.KEPT_DRAFT: 1,
                   rp.DROPPED: 1},
      "attempts": 11,
      "retried_rows": 3,
      "statuses": {rp.OK: 4, rp.MISSING: 3, rp.EMPTY: 2, rp.UNTERMINATED: 1, rp.NESTED: 1,
                   rp.COPIED_PROMPT: 0},
      "first_attempt_statuses": {rp.OK: 3, rp.MISSING: 3, rp.EMPTY: 0, rp.UNTERMINATED: 1,
                                 rp.NESTED: 0, rp.COPIED_PROMPT: 0},
      "final_statuses": {rp.OK: 4, rp.MISSING: 0, rp.EMPTY: 1, rp.UNTERMINATED: 1,
                         rp.NESTED: 1, rp.COPIED_PROMPT: 0},
      "first_attempt_ok_rate": 3 / 7,
      "failed_attempts": 6,  # 11 attempts, 5 accepted (one per rewritten row)
      "failure_rate": 6 / 11,
      "cut_attempts": 1,
      "identical_to_draft": 1,
      "multiple_blocks": 1,
      "tag_variants": 1,
  }
  json.dumps(summary)
  assert rp.summarize([])["first_attempt_ok_rate"] is None
  assert rp.summarize([])["failure_rate"] is None
  with pytest.raises(ValueError, match="unknown outcome"):
    rp.summarize([(rows[0][0], "rewrote")])
  with pytest.raises(ValueError, match="without attempts"):
    rp.summarize([([], rp.DROPPED)])
