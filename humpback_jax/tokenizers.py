"""One tokenizer interface over the formats the project's checkpoints come with.

* :class:`GGUFTokenizer` -- byte-level BPE (GPT-2 style) from a GGUF file's metadata, e.g.
  SmolLM2-135M-Instruct: built with the HF ``tokenizers`` library.
* :class:`HFTokenizer` -- a directory with ``tokenizer.json`` (and ``tokenizer_config.json``).
* :class:`SentencePieceTokenizer` -- a SentencePiece ``.model`` (LLaMA-1/2).
* :class:`Llama2cTokenizer` -- llama2.c's ``tok*.bin`` (re-implements llama2.c's encoder).

All of them expose ``vocab_size``, ``bos_id``, ``eos_id`` (the id that ends a generated response:
the end-of-turn token for chat models), ``pad_id``, ``chat_template``, ``add_bos`` and
``encode`` / ``decode`` / ``apply_chat_template`` / ``save``. :func:`load_tokenizer` picks the
class from a path. Chat templates are rendered with jinja2 the way ``transformers`` does.
"""

from __future__ import annotations

import abc
import datetime
import functools
import heapq
import json
import os
import pathlib
import re
import shutil
import struct
from typing import Any, Iterable, Mapping, Sequence

# ----------------------------------------------------------------------------------------------
# Chat templates (transformers-compatible rendering).


def _raise_exception(message: str):
  raise ValueError(f"chat template error: {message}")


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
  # transformers' override: no HTML escaping, json.dumps options exposed.
  return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                    sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
  return datetime.datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=16)
def _compile_template(template: str):
  import jinja2  # pylint: disable=g-import-not-at-top
  from jinja2 import ext, nodes  # pylint: disable=g-import-not-at-top
  from jinja2.sandbox import ImmutableSandboxedEnvironment  # pylint: disable=g-import-not-at-top

  class _GenerationTag(ext.Extension):
    """Accepts transformers' ``{% generation %}...{% endgeneration %}`` and renders the body."""

    tags = {"generation"}

    def parse(self, parser):
      lineno = next(parser.stream).lineno
      body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
      return nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
      return caller()

  env = ImmutableSandboxedEnvironment(
      trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, ext.loopcontrols])
  env.filters["tojson"] = _tojson
  env.globals["raise_exception"] = _raise_exception
  env.globals["strftime_now"] = _strftime_now
  try:
    return env.from_string(template)
  except jinja2.TemplateSyntaxError as e:
    raise ValueError(f"invalid chat template: {e}") from e


def render_chat_template(template: str, messages: Sequence[Mapping[str, Any]],
                         add_generation_prompt: bool = True, **special_tokens: Any) -> str:
  """Renders a jinja2 chat template as ``transformers``' ``apply_chat_template(tokenize=False)``.

  Args:
    template: the jinja2 source.
    messages: ``[{"role": ..., "content": ...}, ...]``.
    add_generation_prompt: append the assistant-turn header.
    **special_tokens: template variables such as ``bos_token``, ``eos_token``.
  Returns:
    The rendered prompt text.
  Raises:
    ValueError: a syntax error, or the template called ``raise_exception``.
  """
  messages = [dict(m) for m in messages]
  return _compile_template(template).render(
      messages=messages, add_generation_prompt=add_generation_prompt, **special_tokens)


# ----------------------------------------------------------------------------------------------
# Base class.


class Tokenizer(abc.ABC):
  """Common interface.

  Attributes:
    vocab_size: number of ids (V), added/special tokens included.
    bos_id: beginning-of-sequence id, or None.
    eos_id: the id that ends a generated response (end of turn for chat models).
    pad_id: a filler id for padded batches (mask padding with segment ids, not by value).
    chat_template: jinja2 chat template, or None (then ``data.templates.PLAIN_TEMPLATE``).
    add_bos: whether prompts for this model start with BOS (``encode``'s default).
  """

  vocab_size: int
  bos_id: int | None
  eos_id: int
  pad_id: int
  chat_template: str | None
  add_bos: bool

  @abc.abstractmethod
  def _encode(self, text: str) -> list[int]:
    """Ids of ``text`` without BOS/EOS."""

  @abc.abstractmethod
  def id_to_token(self, token_id: int) -> str:
    """The vocabulary string of one id (its raw spelling, e.g. ``Ġthe`` or ``▁the``)."""

  @abc.abstractmethod
  def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
    """Text of ``ids``; special tokens (BOS, EOS, control tokens) dropped when skipped."""

  def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
    """Token ids of ``text``.

    Special-token strings in ``text`` (e.g. ``<|im_start|>``) encode to their single ids for
    tokenizers that have them (GGUF/HF); never adds EOS.

    Args:
      text: the text.
      add_bos: prepend BOS; None means ``self.add_bos``.
    Returns:
      list of int ids.
    """
    ids = self._encode(text)
    if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
      ids = [self.bos_id] + ids
    return ids

  @property
  def bos_token(self) -> str | None:
    return None if self.bos_id is None else self.id_to_token(self.bos_id)

  @property
  def eos_token(self) -> str:
    return self.id_to_token(self.eos_id)

  def _template_tokens(self) -> dict:
    return {"bos_token": self.bos_token or "", "eos_token": self.eos_token,
            "pad_token": self.id_to_token(self.pad_id), "unk_token": ""}

  def apply_chat_template(self, messages: Sequence[Mapping[str, Any]],
                          add_generation_prompt: bool = True) -> str:
    """Renders ``messages`` with ``chat_template`` (as transformers does, ``tokenize=False``).

    Raises:
      ValueError: the tokenizer has no chat template, or the template raised.
    """
    if not self.chat_template:
      raise ValueError(f"{type(self).__name__} has no chat template")
    return render_chat_template(self.chat_template, messages, add_generation_prompt,
                                **self._template_tokens())

  def save(self, out_dir: str | os.PathLike) -> None:
    """Writes the tokenizer files into ``out_dir``; no-op for formats that cannot be saved."""
    del out_dir

  def _tokenizer_config(self) -> dict:
    cfg = {"bos_token": self.bos_token, "eos_token": self.eos_token,
           "pad_token": self.id_to_token(self.pad_id), "add_bos_token": self.add_bos,
           "add_eos_token": False}
    if self.chat_template:
      cfg["chat_template"] = self.chat_template
    return cfg

  def __repr__(self) -> str:
    return (f"{type(self).__name__}(vocab_size={self.vocab_size}, bos_id={self.bos_id}, "
            f"eos_id={self.eos_id}, pad_id={self.pad_id}, add_bos={self.add_bos}, "
            f"chat_template={'yes' if self.chat_template else 'no'})")


def _write_json(path: pathlib.Path, obj: Any) -> None:
  path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------------------------
# HF `tokenizers` based (GGUF and tokenizer.json).


class _HFBackendTokenizer(Tokenizer):
  """Shared code of the tokenizers backed by a ``tokenizers.Tokenizer`` (``self._tok``)."""

  _tok: Any

  def _encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def id_to_token(self, token_id: int) -> str:
    tok = self._tok.id_to_token(int(token_id))
    if tok is None:
      raise ValueError(f"id {token_id} is outside the vocabulary (size {self.vocab_size})")
    return tok

  def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def save(self, out_dir: str | os.PathLike) -> None:
    """Writes ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``
    (loadable by :class:`HFTokenizer` and ``transformers.AutoTokenizer``)."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    self._tok.save(str(out / "tokenizer.json"))
    cfg = self._tokenizer_config()
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["clean_up_tokenization_spaces"] = False
    _write_json(out / "tokenizer_config.json", cfg)
    _write_json(out / "special_tokens_map.json",
                {k: v for k, v in cfg.items() if k.endswith("_token") and v is not None})


def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2's reversible byte -> printable unicode character map."""
  bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1)))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, map(chr, cs)))


# llama.cpp pre-tokenizer names (``tokenizer.ggml.pre``) -> how to split before byte-level BPE.
# "digits": each digit alone, then the GPT-2 regex (llama.cpp's STARCODER/SMOLLM/... case, and
# the ``Digits(individual_digits=True)`` + ``ByteLevel`` of SmolLM2's own tokenizer.json).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_GGUF_PRE = {
    "default": "gpt2", "gpt2": "gpt2", "gpt-2": "gpt2", "mpt": "gpt2", "olmo": "gpt2",
    "jais": "gpt2",
    "smollm": "digits", "starcoder": "digits", "refact": "digits", "command-r": "digits",
    "codeshell": "digits", "exaone": "digits", "minerva-7b": "digits",
    "llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT, "falcon3": _LLAMA3_SPLIT, "dbrx": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT,
}


def _gguf_pre_tokenizer(pre: str | None):
  from tokenizers import Regex, pre_tokenizers  # pylint: disable=g-import-not-at-top

  kind = _GGUF_PRE.get(pre or "default")
  if kind is None:
    raise ValueError(f"unsupported GGUF pre-tokenizer {pre!r} (known: {sorted(_GGUF_PRE)})")
  if kind == "gpt2":
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  if kind == "digits":
    return pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
  return pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(kind), behavior="isolated"),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


class GGUFTokenizer(_HFBackendTokenizer):
  """Byte-level BPE tokenizer described by a GGUF file's ``tokenizer.ggml.*`` metadata.

  Only ``tokenizer.ggml.model == "gpt2"`` (byte-level BPE) is supported. Tokens typed CONTROL
  (3) are registered as special tokens and USER_DEFINED (4) as added tokens, so their text
  (``<|im_start|>``) encodes to their single ids. The pre-tokenizer follows llama.cpp's
  ``tokenizer.ggml.pre``; for SmolLM2 (``smollm``) digits are split individually before the
  GPT-2 regex, as in SmolLM2's own ``tokenizer.json`` and llama.cpp. (``transformers``' GGUF
  loader ignores ``smollm`` and differs from both only where whitespace precedes a digit, e.g.
  ``"a  1"``.)

  SmolLM2-135M-Instruct: vocab 49152, bos 1 ``<|im_start|>``, eos 2 ``<|im_end|>``, pad 2, no
  BOS added, ChatML template.

  Args:
    path: a ``.gguf`` file.
  Raises:
    FileNotFoundError: no such file.
    ValueError: no or an unsupported tokenizer in the file.
  """

  def __init__(self, path: str | os.PathLike):
    # pylint: disable=g-import-not-at-top
    from tokenizers import AddedToken, Tokenizer as _Tok, decoders, models, processors

    from humpback_jax.models.convert import gguf_field, gguf_reader
    # pylint: enable=g-import-not-at-top

    self.path = pathlib.Path(path)
    reader = gguf_reader(self.path)
    field = lambda key, default=None: gguf_field(reader, f"tokenizer.{key}", default)
    model = field("ggml.model")
    if model != "gpt2":
      raise ValueError(f"{self.path}: unsupported GGUF tokenizer model {model!r} "
                       "(only byte-level BPE 'gpt2')")
    tokens = field("ggml.tokens")
    merges = field("ggml.merges")
    if not tokens or merges is None:
      raise ValueError(f"{self.path}: GGUF tokenizer lacks tokenizer.ggml.tokens/merges")
    types = field("ggml.token_type") or [1] * len(tokens)

    spelling = _bytes_to_unicode()
    alphabet = set(spelling.values())
    in_alphabet = [set(t) <= alphabet for t in tokens]
    vocab = {}
    for i, t in enumerate(tokens):
      vocab[t if in_alphabet[i] else "".join(spelling[b] for b in t.encode("utf-8"))] = i
    bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges], dropout=None,
                     continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False)
    tok = _Tok(bpe)
    try:
      tok.pre_tokenizer = _gguf_pre_tokenizer(field("ggml.pre"))
    except ValueError as e:
      raise ValueError(f"{self.path}: {e}") from None
    tok.decoder = decoders.ByteLevel()
    special = [AddedToken(t, normalized=False, special=True)
               for t, ty, ok in zip(tokens, types, in_alphabet) if ty == 3 and ok]
    user = [AddedToken(t, normalized=False, special=False)
            for t, ty in zip(tokens, types) if ty == 4]
    if special:
      tok.add_special_tokens(special)
    if user:
      tok.add_tokens(user)

    self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
    self.bos_id = field("ggml.bos_token_id")
    eos = field("ggml.eos_token_id")
    if eos is None:
      raise ValueError(f"{self.path}: GGUF tokenizer has no tokenizer.ggml.eos_token_id")
    self.eos_id = int(eos)
    pad = field("ggml.padding_token_id")
    self.pad_id = int(pad) if pad is not None else self.eos_id
    self.add_bos = bool(field("ggml.add_bos_token", False)) and self.bos_id is not None
    self.chat_template = field("chat_template")
    if self.add_bos:  # so a saved tokenizer.json adds BOS under transformers too
      bos = tokens[self.bos_id]
      tok.post_processor = processors.TemplateProcessing(
          single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
          special_tokens=[(bos, self.bos_id)])
    self._tok = tok


def _token_content(value: Any) -> str | None:
  if isinstance(value, Mapping):
    return value.get("content")
  return value


class HFTokenizer(_HFBackendTokenizer):
  """A ``tokenizer.json`` directory (HF ``tokenizers``), e.g. one written by ``save``.

  Special tokens, ``add_bos_token`` and the chat template come from ``tokenizer_config.json``
  (``chat_template.jinja`` wins when present); without ``add_bos_token`` the default is whether
  ``tokenizer.json``'s post-processor adds BOS.

  Args:
    path: the directory, or its ``tokenizer.json``.
  Raises:
    FileNotFoundError: no ``tokenizer.json``.
    ValueError: no EOS token can be determined.
  """

  def __init__(self, path: str | os.PathLike):
    from tokenizers import Tokenizer as _Tok  # pylint: disable=g-import-not-at-top

    p = pathlib.Path(path)
    root = p.parent if p.is_file() else p
    file = p if p.is_file() else root / "tokenizer.json"
    if not file.is_file():
      raise FileNotFoundError(f"{file}: no such file")
    self.path = root
    self._tok = _Tok.from_file(str(file))
    cfg = _read_json(root / "tokenizer_config.json")
    smap = _read_json(root / "special_tokens_map.json")
    gen = _read_json(root / "generation_config.json")

    def tid(name: str) -> int | None:
      content = _token_content(cfg.get(name)) or _token_content(smap.get(name))
      return None if content is None else self._tok.token_to_id(content)

    self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
    self.bos_id = tid("bos_token")
    if self.bos_id is None and isinstance(gen.get("bos_token_id"), int):
      self.bos_id = gen["bos_token_id"]
    eos = tid("eos_token")
    if eos is None:
      gen_eos = gen.get("eos_token_id")
      eos = gen_eos[0] if isinstance(gen_eos, list) and gen_eos else gen_eos
    if eos is None:
      raise ValueError(f"{root}: cannot determine the EOS token (no eos_token in "
                       "tokenizer_config.json / special_tokens_map.json)")
    self.eos_id = int(eos)
    pad = tid("pad_token")
    self.pad_id = self.eos_id if pad is None else pad
    if "add_bos_token" in cfg:
      self.add_bos = bool(cfg["add_bos_token"]) and self.bos_id is not None
    else:
      probe = self._tok.encode("a", add_special_tokens=True).ids
      self.add_bos = self.bos_id is not None and bool(probe) and probe[0] == self.bos_id
    self.chat_template = _chat_template_from(root, cfg)


def _read_json(path: pathlib.Path) -> dict:
  if not path.is_file():
    return {}
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: invalid JSON: {e}") from e


def _chat_template_from(root: pathlib.Path, cfg: Mapping[str, Any]) -> str | None:
  jinja_file = root / "chat_template.jinja"
  if jinja_file.is_file():
    return jinja_file.read_text()
  template = cfg.get("chat_template")
  if isinstance(template, list):  # [{"name": ..., "template": ...}, ...]
    named = {t.get("name"): t.get("template") for t in template}
    template = named.get("default") or next(iter(named.values()), None)
  return template


# ----------------------------------------------------------------------------------------------
# SentencePiece.


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece ``.model`` (e.g. LLaMA-2's: vocab 32000, bos 1, eos 2).

  Prompts start with BOS by default (``add_bos=True``); ``pad_id`` is the SentencePiece pad id
  when the model has one, else ``<unk>`` (0 for LLaMA), which byte-fallback encoding never emits.

  Args:
    path: the ``.model`` file.
    chat_template: optional jinja2 template (base models have none).
    add_bos: default for ``encode``.
  Raises:
    FileNotFoundError: no such file.
    ValueError: not a SentencePiece model, or one without EOS.
  """

  def __init__(self, path: str | os.PathLike, chat_template: str | None = None,
               add_bos: bool = True):
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top

    self.path = pathlib.Path(path)
    if not self.path.is_file():
      raise FileNotFoundError(f"{self.path}: no such file")
    try:
      self._sp = spm.SentencePieceProcessor(model_file=str(self.path))
    except (RuntimeError, OSError) as e:
      raise ValueError(f"{self.path}: not a SentencePiece model: {e}") from e
    sp = self._sp
    self.vocab_size = sp.get_piece_size()
    self.bos_id = sp.bos_id() if sp.bos_id() >= 0 else None
    if sp.eos_id() < 0:
      raise ValueError(f"{self.path}: SentencePiece model has no EOS id")
    self.eos_id = sp.eos_id()
    self.pad_id = sp.pad_id() if sp.pad_id() >= 0 else max(sp.unk_id(), 0)
    self.add_bos = add_bos and self.bos_id is not None
    self.chat_template = chat_template

  def _encode(self, text: str) -> list[int]:
    return list(self._sp.encode(text, out_type=int))

  def id_to_token(self, token_id: int) -> str:
    return self._sp.id_to_piece(int(token_id))

  def _is_special(self, i: int) -> bool:
    return self._sp.is_control(i) or self._sp.is_unknown(i)

  def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
    ids = [int(i) for i in ids]
    if skip_special_tokens:
      return self._sp.decode([i for i in ids if not self._is_special(i)])
    out, run = [], []
    for i in ids:
      if self._sp.is_control(i):
        out.append(self._sp.decode(run))
        out.append(self._sp.id_to_piece(i))
        run = []
      else:
        run.append(i)
    out.append(self._sp.decode(run))
    return "".join(out)

  def save(self, out_dir: str | os.PathLike) -> None:
    """Copies the model to ``tokenizer.model`` and writes ``tokenizer_config.json``."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / "tokenizer.model"
    if target.resolve() != self.path.resolve():
      shutil.copyfile(self.path, target)
    cfg = self._tokenizer_config()
    cfg.update(tokenizer_class="LlamaTokenizer", unk_token=self._sp.id_to_piece(self._sp.unk_id()))
    _write_json(out / "tokenizer_config.json", cfg)


# ----------------------------------------------------------------------------------------------
# llama2.c.

_BYTE_PIECE = re.compile(rb"^<0x([0-9A-Fa-f]{2})>$")


class Llama2cTokenizer(Tokenizer):
  """llama2.c's tokenizer format (``tok512.bin``; ``tokenizer.bin``).

  File: int32 ``max_token_length``, then per token float32 score, int32 byte length, bytes.
  Ids 0 ``<unk>``, 1 BOS, 2 EOS, byte-fallback pieces ``<0xXX>``. Encoding is llama2.c's
  ``encode``: a dummy-prefix space, one id per UTF-8 character (its bytes' ``<0xXX>`` ids when
  the character is not a token), then repeatedly merge the adjacent pair whose concatenation is
  the best-scoring token (leftmost on ties) -- done with a heap, same result. Decoding maps byte
  pieces to bytes and drops the dummy space at the start and after BOS (so
  ``decode(encode(s)) == s``).

  Args:
    path: the ``.bin`` file.
    chat_template: optional jinja2 template (the stories models have none).
    add_bos: default for ``encode`` (llama2.c prompts start with BOS).
  Raises:
    FileNotFoundError: no such file.
    ValueError: truncated or malformed file.
  """

  UNK_ID, BOS_ID, EOS_ID = 0, 1, 2

  def __init__(self, path: str | os.PathLike, chat_template: str | None = None,
               add_bos: bool = True):
    self.path = pathlib.Path(path)
    if not self.path.is_file():
      raise FileNotFoundError(f"{self.path}: no such file")
    data = self.path.read_bytes()
    if len(data) < 4:
      raise ValueError(f"{self.path}: too short for a llama2.c tokenizer")
    (self.max_token_length,) = struct.unpack_from("<i", data, 0)
    pieces: list[bytes] = []
    scores: list[float] = []
    off = 4
    while off < len(data):
      if off + 8 > len(data):
        raise ValueError(f"{self.path}: truncated at token {len(pieces)} (byte {off})")
      score, n = struct.unpack_from("<fi", data, off)
      off += 8
      if n < 0 or off + n > len(data):
        raise ValueError(f"{self.path}: truncated or bad length {n} at token {len(pieces)}")
      pieces.append(data[off:off + n])
      scores.append(score)
      off += n
    if len(pieces) < 3:
      raise ValueError(f"{self.path}: only {len(pieces)} tokens")
    self.pieces = pieces
    self.scores = scores
    self._lookup: dict[bytes, int] = {}
    for i, piece in enumerate(pieces):
      self._lookup.setdefault(piece, i)
    self._byte_value: dict[int, int] = {}
    self._byte_id: dict[int, int] = {}
    for i, piece in enumerate(pieces):
      m = _BYTE_PIECE.match(piece)
      if m:
        self._byte_value[i] = int(m.group(1), 16)
        self._byte_id.setdefault(int(m.group(1), 16), i)
    self.vocab_size = len(pieces)
    self.bos_id = self.BOS_ID
    self.eos_id = self.EOS_ID
    self.pad_id = self.UNK_ID
    self.add_bos = add_bos
    self.chat_template = chat_template

  def id_to_token(self, token_id: int) -> str:
    return self.pieces[int(token_id)].decode("utf-8", errors="replace")

  def _initial_ids(self, text: str) -> list[int]:
    ids = []
    if text:
      space = self._lookup.get(b" ")
      if space is not None:  # dummy prefix, as sentencepiece's add_dummy_prefix
        ids.append(space)
    for ch in text:
      raw = ch.encode("utf-8", errors="surrogatepass")
      tid = self._lookup.get(raw)
      if tid is not None:
        ids.append(tid)
      else:
        for b in raw:
          bid = self._byte_id.get(b)
          ids.append(bid if bid is not None else b + 3)
    return ids

  def _encode(self, text: str) -> list[int]:
    ids = self._initial_ids(text)
    n = len(ids)
    if n < 2:
      return ids
    pieces = [self.pieces[i] for i in ids]
    prev = list(range(-1, n - 1))
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    alive = [True] * n
    version = [0] * n
    heap: list[tuple[float, int, int, int, int]] = []
    lookup, scores = self._lookup, self.scores

    def push(left: int, right: int):
      # Key (-score, left position): best score first, leftmost on ties, as llama2.c's scan.
      merged = lookup.get(pieces[left] + pieces[right])
      if merged is not None:
        heapq.heappush(heap, (-scores[merged], left, right, version[left], version[right]))

    for i in range(n - 1):
      push(i, i + 1)
    while heap:
      _, left, right, vl, vr = heapq.heappop(heap)
      if (not alive[left] or not alive[right] or nxt[left] != right or version[left] != vl
          or version[right] != vr):
        continue
      merged = pieces[left] + pieces[right]
      ids[left] = lookup[merged]
      pieces[left] = merged
      version[left] += 1
      alive[right] = False
      nxt[left] = nxt[right]
      if nxt[right] != -1:
        prev[nxt[right]] = left
      if prev[left] != -1:
        push(prev[left], left)
      if nxt[left] != -1:
        push(left, nxt[left])
    return [ids[i] for i in range(n) if alive[i]]

  def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
    out = bytearray()
    prev: int | None = None
    for i in ids:
      i = int(i)
      if not 0 <= i < self.vocab_size:
        raise ValueError(f"id {i} is outside the vocabulary (size {self.vocab_size})")
      if skip_special_tokens and i in (self.UNK_ID, self.BOS_ID, self.EOS_ID):
        prev = i
        continue
      if i in self._byte_value:
        out.append(self._byte_value[i])
      else:
        piece = self.pieces[i]
        if (prev is None or prev == self.BOS_ID) and piece.startswith(b" "):
          piece = piece[1:]
        out += piece
      prev = i
    return out.decode("utf-8", errors="replace")

  def save(self, out_dir: str | os.PathLike) -> None:
    """Copies the file to ``tokenizer.bin`` (+ ``tokenizer_config.json`` with the template)."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / "tokenizer.bin"
    if target.resolve() != self.path.resolve():
      shutil.copyfile(self.path, target)
    cfg = self._tokenizer_config()
    cfg["tokenizer_class"] = "Llama2cTokenizer"
    _write_json(out / "tokenizer_config.json", cfg)


# ----------------------------------------------------------------------------------------------
# Dispatch.


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
  """Opens a tokenizer by path.

  Files: ``*.gguf`` -> :class:`GGUFTokenizer`, ``*.model`` -> :class:`SentencePieceTokenizer`,
  ``*.bin`` -> :class:`Llama2cTokenizer`, ``tokenizer.json`` -> :class:`HFTokenizer`.
  Directories, first match: ``tokenizer.json``, ``tokenizer.model``, ``tokenizer.bin``, a single
  ``*.gguf``; a ``tokenizer_config.json`` there supplies the chat template and ``add_bos_token``
  of the SentencePiece/llama2.c kinds.

  Raises:
    FileNotFoundError: no such path.
    ValueError: nothing recognizable.
  """
  p = pathlib.Path(path)
  if not p.exists():
    raise FileNotFoundError(f"{p}: no such file or directory")
  if p.is_dir():
    cfg = _read_json(p / "tokenizer_config.json")
    kw = {"chat_template": _chat_template_from(p, cfg)}
    if "add_bos_token" in cfg:
      kw["add_bos"] = bool(cfg["add_bos_token"])
    if (p / "tokenizer.json").is_file():
      return HFTokenizer(p)
    if (p / "tokenizer.model").is_file():
      return SentencePieceTokenizer(p / "tokenizer.model", **kw)
    if (p / "tokenizer.bin").is_file():
      return Llama2cTokenizer(p / "tokenizer.bin", **kw)
    ggufs = sorted(p.glob("*.gguf"))
    if len(ggufs) == 1:
      return GGUFTokenizer(ggufs[0])
    raise ValueError(f"{p}: no tokenizer.json / tokenizer.model / tokenizer.bin / single .gguf")
  suffix = p.suffix.lower()
  if suffix == ".gguf":
    return GGUFTokenizer(p)
  if suffix == ".model":
    return SentencePieceTokenizer(p)
  if suffix == ".bin":
    return Llama2cTokenizer(p)
  if p.name.endswith(".json"):
    return HFTokenizer(p)
  raise ValueError(f"{p}: unrecognized tokenizer format (expected .gguf, .model, .bin, "
                   "tokenizer.json or a directory)")
