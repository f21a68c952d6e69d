"""Prompt templates: forward (instruction -> response), backward (response -> instruction),
tag sentences, and the self-curation rating prompt.

One function renders each template; training and inference both call it, so the template a
model is evaluated with is the one it was trained with ([HB]/[BF] reimplementation pitfall,
``method.md`` §5). The chat wrapper comes from the tokenizer: a chat template when the
checkpoint has one (SmolLM2's ChatML), else ``PLAIN_TEMPLATE``.
"""

from __future__ import annotations

import re
from typing import Protocol, Sequence

# [HB] §2.3 "Tagging": one sentence appended to the instruction side of each training example.
TAG_ASSISTANT = "Answer in the style of an AI Assistant."  # S_a, seed examples
TAG_WEB = "Answer with knowledge from web search."  # S_w, augmented examples
# At inference both, S_a then S_w ([HB] Table 5: 66.47 vs 62.69 with S_a alone).
INFERENCE_TAGS = (TAG_ASSISTANT, TAG_WEB)

# [BF] §2 backward prompt (its Llama-2 [INST] wrapper is replaced by the tokenizer's chat
# template or PLAIN_TEMPLATE).
BACKWARD_PROMPT = (
    "Below is a candidate answer to a question or instruction from an user. Write the most "
    "likely question to which the text below would be a great answer.\n\n{response}\n\n"
    "Answer in the style of an AI Assistant.")

# [HB] Table 19, verbatim. Slots: the generated instruction, then the candidate output.
RATING_PROMPT = """Below is an instruction from an user and a candidate answer. Evaluate whether or not the answer is a good example of how AI Assistant should respond to the user's instruction. Please assign a score using the following 5-point scale:
1: It means the answer is incomplete, vague, off-topic, controversial, or not exactly what the user asked for. For example, some content seems missing, numbered list does not start from the beginning, the opening sentence repeats user's question. Or the response is from another person's perspective with their personal experience (e.g. taken from blog posts), or looks like an answer from a forum. Or it contains promotional text, navigation text, or other irrelevant information.
2: It means the answer addresses most of the asks from the user. It does not directly address the user's question. For example, it only provides a high-level methodology instead of the exact solution to user's question.
3: It means the answer is helpful but not written by an AI Assistant. It addresses all the basic asks from the user. It is complete and self contained with the drawback that the response is not written from an AI assistant's perspective, but from other people's perspective. The content looks like an excerpt from a blog post, web page, or web search results. For example, it contains personal experience or opinion, mentions comments section, or share on social media, etc.
4: It means the answer is written from an AI assistant's perspective with a clear focus of addressing the instruction. It provide a complete, clear, and comprehensive response to user's question or instruction without missing or irrelevant information. It is well organized, self-contained, and written in a helpful tone. It has minor room for improvement, e.g. more concise and focused.
5: It means it is a perfect answer from an AI Assistant. It has a clear focus on being a helpful AI Assistant, where the response looks like intentionally written to address the user's question or instruction without any irrelevant sentences. The answer provides high quality content, demonstrating expert knowledge in the area, is very well written, logical, easy-to-follow, engaging and insightful.

Please first provide a brief reasoning you used to derive the rating score, and then write "Score: <rating>" in the last line.

{instruction}
{output}"""

# Used when a tokenizer has no chat template (llama2.c / SentencePiece base models). Our choice.
PLAIN_TEMPLATE = "### Instruction:\n{user}\n\n### Response:\n"


class ChatTokenizer(Protocol):
  """What templates need from a tokenizer (see ``humpback_jax.tokenizers``)."""

  chat_template: str | None

  def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
    ...


def with_tags(instruction: str, tags: Sequence[str]) -> str:
  """Appends tag sentences to an instruction ([HB] §2.3): ``"<x>\\n\\n<S_a> <S_w>"``."""
  return f"{instruction}\n\n{' '.join(tags)}" if tags else instruction


def chat_prompt(tokenizer: ChatTokenizer | None, user_message: str) -> str:
  """Wraps one user turn as the model's prompt (generation prompt included).

  Uses the tokenizer's chat template when it has one, else ``PLAIN_TEMPLATE``. The text does not
  include BOS; tokenizers add it at encode time where the model expects one.
  """
  if tokenizer is not None and getattr(tokenizer, "chat_template", None):
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": user_message}], add_generation_prompt=True)
  return PLAIN_TEMPLATE.format(user=user_message)


def forward_prompt(tokenizer, instruction: str, tags: Sequence[str] = ()) -> str:
  """Prompt of M0/M1/M2: the (tagged) instruction as one user turn."""
  return chat_prompt(tokenizer, with_tags(instruction, tags))


def backward_prompt(tokenizer, response: str) -> str:
  """Prompt of the backward model M_yx: [BF]'s backtranslation prompt around the response."""
  return chat_prompt(tokenizer, BACKWARD_PROMPT.format(response=response))


def rating_prompt(tokenizer, instruction: str, output: str) -> str:
  """Self-curation prompt ([HB] Table 19) as one user turn."""
  return chat_prompt(tokenizer, RATING_PROMPT.format(instruction=instruction, output=output))


_LEAD_IN = re.compile(
    r"^\s*(?:(?:the\s+)?most likely question[^\n]*:|question\s*:)\s*",
    re.IGNORECASE)


def parse_backward_output(text: str) -> str:
  """The instruction x̂ in a backward model's output.

  Removes what a chat model wraps around it when it echoes the [BF] prompt ("The most likely
  question to which ... is:", a "Question:" label, an "Answer: ..." it appends, surrounding
  quotes). An empty result means no instruction (the caller counts and drops it).
  """
  text = _LEAD_IN.sub("", text.strip())
  text = re.split(r"\n\s*(?:\*\*)?answer\s*:", text, maxsplit=1, flags=re.IGNORECASE)[0]
  return text.strip().strip('"\u201c\u201d').strip()


def fit_prompt(ids: Sequence[int], max_len: int) -> list[int]:
  """Shortens a tokenized prompt to ``max_len`` tokens by cutting its MIDDLE.

  Both the head (chat header, task instruction, BOS) and the tail (closing instruction and the
  generation cue) survive; what goes is the end of the long embedded document (the web segment
  or response). Training (``data/tasks.py``, policy "fit") and inference (``sample/sampler.py``)
  both use it, so a model is never trained and prompted with differently cut prompts.

  Returns:
    ``ids`` unchanged if it fits, else ``ids[:max_len // 2] + ids[-(max_len - max_len // 2):]``.
  """
  ids = list(ids)
  if len(ids) <= max_len:
    return ids
  head = max_len // 2
  return ids[:head] + ids[len(ids) - (max_len - head):]
