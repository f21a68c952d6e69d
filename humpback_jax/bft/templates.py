"""Prompts of instruction back-and-forth translation ([BF] §2, App.; ``method.md`` §2).

Three prompts, each a user message with slots:

- ``BF_BACKWARD_PROMPT`` (slot ``{response}``): the backward model M_yx writes the instruction a
  web document answers. [BF] prints it in Llama-2's chat format, ``[INST] ... [/INST]``.
- ``REWRITE_PROMPT`` (slots ``{response}``: the web "draft", ``{instruction}``): an aligned chat
  model (Llama-2-70B-chat in [BF]) rewrites the draft for the instruction and returns it between
  ``[RES]`` and ``[/RES]`` (parsed by ``bft.rewrite_parse``).
- ``DISTILL_PROMPT`` (slot ``{instruction}``): [BF]'s distillation control, the same aligned
  model answering the instruction alone (no draft).

Wrappers. ``LLAMA2_CHAT_TEMPLATE`` renders one user turn as Llama-2-chat does,
``[INST] {content} [/INST]`` (Meta's ``chat_completion`` and the ``meta-llama/Llama-2-*-chat-hf``
chat template: content stripped, one space either side, no text after ``[/INST]``). Like every
template in the project it carries no BOS text: tokenizers prepend the BOS *id* at encode time
(``Tokenizer.encode``), which is what Meta's reference code does (``encode(..., bos=True)``).
With Llama-2's SentencePiece model the prompt then starts ``[1, 518, 25580, 29962]``
(BOS, "▁[", "INST", "]"), as Meta's code tokenizes it. (Rendering ``<s>[INST]`` as text and
tokenizing it with transformers' ``LlamaTokenizer`` gave "[" = 29961, without the "▁", after
BOS in transformers 5.24: a different token sequence from the one Meta's code feeds Llama-2-chat.)

Training and sampling must call the same function for a model (``method.md`` §5: a model
evaluated with a template that differs from training).
"""

from __future__ import annotations

from humpback_jax.data import templates
from humpback_jax.tokenizers import render_chat_template

# [BF] §2 / App., the backward (backtranslation) prompt: the text inside [INST] ... [/INST],
# verbatim ("from an user" is the paper's wording). The same words as the project's
# ``data.templates.BACKWARD_PROMPT``.
BF_BACKWARD_PROMPT = (
    "Below is a candidate answer to a question or instruction from an user. Write the most "
    "likely question to which the text below would be a great answer.\n\n{response}\n\n"
    "Answer in the style of an AI Assistant.")

# [BF] §2 / App., the rewrite prompt for the aligned model: the text inside [INST] ... [/INST],
# verbatim. Slots: {response} = the web response (the draft), {instruction} = its backtranslated
# instruction.
REWRITE_PROMPT = (
    "Given the draft response to the provided question below, rewrite the draft to improve it, "
    "so it is a high quality response to the given question.\n\n"
    "Draft Response: {response}\n\n"
    "Question: {instruction}\n\n"
    "Given the above question, rewrite the draft response to be an improvement over the draft "
    "response. It should be as similar as possible, copying text where possible, while making the "
    "flow more clear, useful, relevant and providing a direct answer to the question. It should be "
    "written to be impeccably tailored to the user's question as if written by an AI Assistant, "
    "without extraneous information, reflecting expert knowledge, and demonstrating a "
    "high-quality, engaging, and insightful answer. Try not to add new facts that are not already "
    "in the draft response. Return the rewritten response between [RES] and [/RES].")

# [BF] §4 distillation baseline: "the same aligned LLM answers the instruction" with no draft.
# The paper prints no prompt for it; the instruction alone as the user turn is our reading.
DISTILL_PROMPT = "{instruction}"

# The rewrite model's answer is the text between these ([BF] §2: "Return the rewritten response
# between [RES] and [/RES]").
RES_OPEN = "[RES]"
RES_CLOSE = "[/RES]"

# Llama-2-chat's prompt for ONE user turn, optionally after a system message (Meta's
# llama/generation.py ``chat_completion``; the meta-llama/Llama-2-*-chat-hf chat template):
#   [INST] {content.strip()} [/INST]
#   [INST] {("<<SYS>>\n" + system + "\n<</SYS>>\n\n" + content).strip()} [/INST]
# No BOS text (the tokenizer adds the BOS id), nothing after [/INST] (Llama-2 has no assistant
# header, so add_generation_prompt changes nothing). Multi-turn prompts and assistant turns are
# refused: Llama-2 opens every later turn with a BOS id and closes answers with an EOS id, which
# template text cannot carry through the project's SentencePiece encoder.
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system_block = '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' %}"
    "{% set turns = messages[1:] %}"
    "{% else %}"
    "{% set system_block = '' %}"
    "{% set turns = messages %}"
    "{% endif %}"
    "{% if turns | length != 1 or turns[0]['role'] != 'user' %}"
    "{{ raise_exception('LLAMA2_CHAT_TEMPLATE renders one user turn (after an optional system "
    "message)') }}"
    "{% endif %}"
    "{{ '[INST] ' + (system_block + turns[0]['content']).strip() + ' [/INST]' }}")

# bf_backward_prompt's ``template`` values.
BACKWARD_TEMPLATES = ("bf", "bf_chat", "hb")
# rewrite_prompt's / distill_prompt's ``template`` values.
CHAT_TEMPLATES = ("chat", "llama2")


def llama2_chat_prompt(user_message: str, system: str | None = None) -> str:
  """One user turn in Llama-2-chat's format (``LLAMA2_CHAT_TEMPLATE``), without BOS text.

  Args:
    user_message: the user turn.
    system: an optional system message (placed in ``<<SYS>>`` ... ``<</SYS>>``).
  Returns:
    ``"[INST] " + user_message.strip() + " [/INST]"`` (with the system block first when given).
  """
  messages = [{"role": "user", "content": user_message}]
  if system is not None:
    messages.insert(0, {"role": "system", "content": system})
  return render_chat_template(LLAMA2_CHAT_TEMPLATE, messages, add_generation_prompt=True)


def _wrap(tokenizer, user_message: str, template: str) -> str:
  if template == "chat":
    return templates.chat_prompt(tokenizer, user_message)
  if template == "llama2":
    return llama2_chat_prompt(user_message)
  raise ValueError(f"template={template!r}: expected one of {', '.join(CHAT_TEMPLATES)}")


def bf_backward_prompt(tokenizer, response: str, *, template: str = "bf") -> str:
  """The backward model's prompt around a web response.

  Args:
    tokenizer: the backward model's tokenizer (``humpback_jax.tokenizers``); unused by "bf".
    response: the web document (or segment) y.
    template: how the prompt is wrapped:
      "bf" -- what [BF] used and prints (§2, App.): ``BF_BACKWARD_PROMPT`` in Llama-2's chat
        format, ``[INST] ... [/INST]``, whatever the tokenizer's own chat template. [BF]'s
        backward model is a fine-tuned Llama-2 base model, so the wrapper is plain text it
        learns in fine-tuning.
      "bf_chat" -- the same words inside the tokenizer's own chat template (``PLAIN_TEMPLATE``
        when it has none; ``data.templates.chat_prompt``).
      "hb" -- the project's existing backward prompt, ``data.templates.backward_prompt`` (the
        tokenizer's chat template around ``data.templates.BACKWARD_PROMPT``). Its words are
        [BF]'s, so today it renders as "bf_chat" does.
  Returns:
    The prompt text (no BOS).
  Raises:
    ValueError: an unknown ``template``.
  """
  if template == "bf":
    return llama2_chat_prompt(BF_BACKWARD_PROMPT.format(response=response))
  if template == "bf_chat":
    return templates.chat_prompt(tokenizer, BF_BACKWARD_PROMPT.format(response=response))
  if template == "hb":
    return templates.backward_prompt(tokenizer, response)
  raise ValueError(f"template={template!r}: expected one of {', '.join(BACKWARD_TEMPLATES)}")


def rewrite_prompt(tokenizer, instruction: str, draft: str, *, template: str = "chat") -> str:
  """The aligned model's rewrite prompt ([BF] §2, ``REWRITE_PROMPT``) for one pair.

  Args:
    tokenizer: the aligned (rewrite) model's tokenizer.
    instruction: the backtranslated instruction x̂.
    draft: the web response y to rewrite.
    template: "chat" -- the aligned model's own chat template (``data.templates.chat_prompt``;
      ``PLAIN_TEMPLATE`` when the tokenizer has none); "llama2" -- Llama-2-chat's format
      (``LLAMA2_CHAT_TEMPLATE``), for a Llama-2-chat model whose tokenizer (a bare
      ``tokenizer.model``) carries no chat template. [BF] used Llama-2-70B-chat in its own
      format, which both give for a Llama-2-chat tokenizer that has the template.
  Returns:
    The prompt text (no BOS).
  Raises:
    ValueError: an unknown ``template``.
  """
  return _wrap(tokenizer, REWRITE_PROMPT.format(response=draft, instruction=instruction), template)


def distill_prompt(tokenizer, instruction: str, *, template: str = "chat") -> str:
  """The distillation control's prompt ([BF] §4): the instruction alone, as one user turn.

  Args:
    tokenizer: the aligned model's tokenizer.
    instruction: the backtranslated instruction x̂.
    template: "chat" or "llama2", as in :func:`rewrite_prompt`.
  Returns:
    The prompt text (no BOS).
  Raises:
    ValueError: an unknown ``template``.
  """
  return _wrap(tokenizer, DISTILL_PROMPT.format(instruction=instruction), template)
