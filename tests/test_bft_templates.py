"""[BF] prompts (humpback_jax.bft.templates) rendered exactly as the paper prints them.

The expected strings are literals typed from ``method.md`` §2 ([BF] §2 / App.), not built from
the module's constants; Llama-2's tokenization is checked against the ``sentencepiece`` library
and the Llama-2 chat wrapper against ``transformers``' chat-template rendering.
"""

from __future__ import annotations

import json
import re

import pytest

from humpback_jax import paths
from humpback_jax import tokenizers as toks
from humpback_jax.bft import templates as bft
from humpback_jax.data import templates
from humpback_jax.models import convert

SP_MODEL = paths.default_data_root() / "weights" / "llama2_tokenizer.model"
SMOL = convert.find_smollm2_gguf()
METHOD_MD = paths.default_data_root().parent / "docs" / "method.md"
needs_sp = pytest.mark.skipif(not SP_MODEL.exists(), reason=f"{SP_MODEL} not available")
needs_smol = pytest.mark.skipif(SMOL is None, reason="SmolLM2 GGUF not installed")

# method.md §2, the two prompt blocks as printed ([BF]; "<response>", "<instruction>" = slots).
PAPER_BACKWARD = """[INST] Below is a candidate answer to a question or instruction from an user. Write the most likely question to which the text below would be a great answer.

<response>

Answer in the style of an AI Assistant. [/INST]"""

PAPER_REWRITE = """[INST] Given the draft response to the provided question below, rewrite the draft to improve it, so it is a high quality response to the given question.

Draft Response: <response>

Question: <instruction>

Given the above question, rewrite the draft response to be an improvement over the draft response. It should be as similar as possible, copying text where possible, while making the flow more clear, useful, relevant and providing a direct answer to the question. It should be written to be impeccably tailored to the user's question as if written by an AI Assistant, without extraneous information, reflecting expert knowledge, and demonstrating a high-quality, engaging, and insightful answer. Try not to add new facts that are not already in the draft response. Return the rewritten response between [RES] and [/RES]. [/INST]"""

RESPONSE = ("Preheat the oven to 220 C.\n\n1. Mix flour, water and {salt}.\n"
            "2. Bake for 25 minutes.")
INSTRUCTION = "How do I bake a simple flatbread?"

# The paper's backward prompt with RESPONSE in the slot, typed out.
BF_BACKWARD = (
    "[INST] Below is a candidate answer to a question or instruction from an user. Write the "
    "most likely question to which the text below would be a great answer.\n\n"
    "Preheat the oven to 220 C.\n\n1. Mix flour, water and {salt}.\n2. Bake for 25 minutes."
    "\n\nAnswer in the style of an AI Assistant. [/INST]")
BF_BACKWARD_WORDS = BF_BACKWARD[len("[INST] "):-len(" [/INST]")]
SMOL_SYSTEM = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
               "Hugging Face<|im_end|>\n")

# Llama-2-chat's chat template as the meta-llama/Llama-2-*-chat-hf tokenizer_config carries it
# (its structure: BOS, "[INST] ", stripped content with an optional <<SYS>> block, " [/INST]",
# answers " {answer} </s>"), typed for this test as an independent reference.
HF_LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}"
    "{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}")


def fill(paper: str, **slots: str) -> str:
  for name, value in slots.items():
    paper = paper.replace(f"<{name}>", value)
  return paper


def test_prompts_are_the_papers_words():
  assert "[INST] " + bft.BF_BACKWARD_PROMPT.format(response="<response>") + " [/INST]" == (
      PAPER_BACKWARD)
  assert "[INST] " + bft.REWRITE_PROMPT.format(
      response="<response>", instruction="<instruction>") + " [/INST]" == PAPER_REWRITE
  assert bft.DISTILL_PROMPT.format(instruction=INSTRUCTION) == INSTRUCTION
  # The project's [HB]-stage backward prompt already uses [BF]'s words.
  assert bft.BF_BACKWARD_PROMPT == templates.BACKWARD_PROMPT
  assert bft.RES_OPEN + bft.RES_CLOSE == "[RES][/RES]"


@pytest.mark.skipif(not METHOD_MD.exists(), reason=f"{METHOD_MD} not available")
def test_literals_match_method_md():
  """The literals above are method.md §2's blocks (guards against a typo in this test)."""
  section = METHOD_MD.read_text().split("## 2. Back-and-forth translation", 1)[1]
  blocks = re.findall(r"```\n(.*?)\n\s*```", section.split("## 3.", 1)[0], re.DOTALL)
  dedent = lambda b: "\n".join(line.strip() for line in b.splitlines())
  assert [dedent(b) for b in blocks] == [PAPER_BACKWARD, PAPER_REWRITE]


def test_bf_backward_is_llama2_format_whatever_the_tokenizer():
  assert fill(PAPER_BACKWARD, response=RESPONSE) == BF_BACKWARD
  assert bft.bf_backward_prompt(None, RESPONSE) == BF_BACKWARD  # default template="bf"
  assert bft.bf_backward_prompt(None, RESPONSE, template="bf") == BF_BACKWARD
  # Whitespace at the ends of the response stays inside the prompt (only the turn is stripped).
  assert bft.bf_backward_prompt(None, "\n x \n") == fill(PAPER_BACKWARD, response="\n x \n")


@needs_sp
def test_llama2_sentencepiece_tokenization():
  import sentencepiece as spm

  tok = toks.load_tokenizer(SP_MODEL)
  sp = spm.SentencePieceProcessor(model_file=str(SP_MODEL))
  prompt = bft.bf_backward_prompt(tok, RESPONSE, template="bf")
  assert prompt == BF_BACKWARD
  ids = tok.encode(prompt)
  assert ids[0] == 1 == sp.bos_id()
  assert ids == [sp.bos_id()] + sp.encode(prompt)
  # "[INST]" after BOS and "[/INST]" at the end as Meta's chat_completion tokenizes them.
  assert [sp.id_to_piece(i) for i in ids[1:4]] == ["▁[", "INST", "]"]
  assert ids[1:4] == sp.encode("[INST]") == [518, 25580, 29962]
  assert ids[-4:] == sp.encode("[/INST]") == [518, 29914, 25580, 29962]
  assert tok.decode(ids) == prompt

  # A bare tokenizer.model has no chat template: "bf_chat" / "hb" fall back to PLAIN_TEMPLATE.
  plain = f"### Instruction:\n{BF_BACKWARD_WORDS}\n\n### Response:\n"
  assert bft.bf_backward_prompt(tok, RESPONSE, template="bf_chat") == plain
  assert bft.bf_backward_prompt(tok, RESPONSE, template="hb") == plain


@needs_smol
def test_smollm2_chatml():
  tok = toks.load_tokenizer(SMOL)
  assert bft.bf_backward_prompt(tok, RESPONSE) == BF_BACKWARD
  chatml = f"{SMOL_SYSTEM}<|im_start|>user\n{BF_BACKWARD_WORDS}<|im_end|>\n<|im_start|>assistant\n"
  assert bft.bf_backward_prompt(tok, RESPONSE, template="bf_chat") == chatml
  assert bft.bf_backward_prompt(tok, RESPONSE, template="hb") == chatml
  # "[INST]" is plain text for SmolLM2 (no special token), no BOS added.
  ids = tok.encode(BF_BACKWARD)
  assert [tok.id_to_token(i) for i in ids[:3]] == ["[", "INST", "]"]
  assert tok.decode(ids) == BF_BACKWARD

  rewrite_words = fill(PAPER_REWRITE, response=RESPONSE, instruction=INSTRUCTION)
  rewrite_words = rewrite_words[len("[INST] "):-len(" [/INST]")]
  assert bft.rewrite_prompt(tok, INSTRUCTION, RESPONSE) == (
      f"{SMOL_SYSTEM}<|im_start|>user\n{rewrite_words}<|im_end|>\n<|im_start|>assistant\n")
  assert bft.distill_prompt(tok, INSTRUCTION) == (
      f"{SMOL_SYSTEM}<|im_start|>user\n{INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n")


def test_rewrite_prompt_verbatim_in_llama2_format():
  expected = fill(PAPER_REWRITE, response=RESPONSE, instruction=INSTRUCTION)
  assert expected.startswith("[INST] Given the draft response")
  assert "Draft Response: Preheat the oven" in expected
  assert "Question: How do I bake a simple flatbread?\n\nGiven the above" in expected
  assert bft.rewrite_prompt(None, INSTRUCTION, RESPONSE, template="llama2") == expected
  assert bft.distill_prompt(None, INSTRUCTION, template="llama2") == f"[INST] {INSTRUCTION} [/INST]"
  # No chat template: the project's PLAIN_TEMPLATE around the same words.
  assert bft.rewrite_prompt(None, INSTRUCTION, RESPONSE) == templates.PLAIN_TEMPLATE.format(
      user=expected[len("[INST] "):-len(" [/INST]")])


@needs_sp
def test_llama2_chat_tokenizer_with_the_template():
  """A Llama-2-chat tokenizer given LLAMA2_CHAT_TEMPLATE: "chat" renders as the paper prints."""
  tok = toks.SentencePieceTokenizer(SP_MODEL, chat_template=bft.LLAMA2_CHAT_TEMPLATE)
  expected = fill(PAPER_REWRITE, response=RESPONSE, instruction=INSTRUCTION)
  assert bft.rewrite_prompt(tok, INSTRUCTION, RESPONSE) == expected
  assert bft.bf_backward_prompt(tok, RESPONSE, template="bf_chat") == BF_BACKWARD
  assert bft.distill_prompt(tok, INSTRUCTION) == f"[INST] {INSTRUCTION} [/INST]"
  assert tok.encode(expected)[:4] == [1, 518, 25580, 29962]


def test_llama2_chat_template():
  assert bft.llama2_chat_prompt(" \n Hi there \n") == "[INST] Hi there [/INST]"
  assert bft.llama2_chat_prompt("Hi", system="Be brief.") == (
      "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]")
  render = lambda msgs: toks.render_chat_template(bft.LLAMA2_CHAT_TEMPLATE, msgs)
  for bad in ([], [{"role": "assistant", "content": "a"}],
              [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
              [{"role": "system", "content": "s"}]):
    with pytest.raises(ValueError, match="one user turn"):
      render(bad)


def test_unknown_template():
  with pytest.raises(ValueError, match="bf, bf_chat, hb"):
    bft.bf_backward_prompt(None, RESPONSE, template="llama2")
  with pytest.raises(ValueError, match="chat, llama2"):
    bft.rewrite_prompt(None, INSTRUCTION, RESPONSE, template="bf")
  with pytest.raises(ValueError, match="chat, llama2"):
    bft.distill_prompt(None, INSTRUCTION, template="hb")


@needs_sp
def test_transformers_renders_the_same(tmp_path):
  """transformers' apply_chat_template, with Llama-2-chat's template in a tokenizer_config and
  with ours passed as a string, agrees with ours (its output has BOS text, ours leaves BOS to
  the encoder)."""
  transformers = pytest.importorskip("transformers")
  toks.load_tokenizer(SP_MODEL).save(tmp_path)
  cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
  cfg["chat_template"] = HF_LLAMA2_TEMPLATE
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
  hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))

  rewrite_words = bft.REWRITE_PROMPT.format(response=RESPONSE, instruction=INSTRUCTION)
  cases = [
      ([{"role": "user", "content": BF_BACKWARD_WORDS}], BF_BACKWARD),
      ([{"role": "user", "content": rewrite_words}],
       fill(PAPER_REWRITE, response=RESPONSE, instruction=INSTRUCTION)),
      ([{"role": "user", "content": "  padded \n"}], "[INST] padded [/INST]"),
      ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
       "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]"),
  ]
  for messages, ours in cases:
    reference = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert reference == "<s>" + ours
    theirs = hf.apply_chat_template(messages, chat_template=bft.LLAMA2_CHAT_TEMPLATE,
                                    tokenize=False, add_generation_prompt=True)
    assert theirs == ours
    system = messages[0]["content"] if len(messages) == 2 else None
    assert bft.llama2_chat_prompt(messages[-1]["content"], system=system) == ours
