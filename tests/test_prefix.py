"""Shared-prefix KV reuse (``sample/prefix.py``): the prefix encoded once and broadcast, only
the suffixes prefilled, must give the full-prompt next-token log-probs (float64, to rounding),
for ragged suffixes, several batch shapes, filler rows, truncated prompts, on one device and on
an 8-device mesh; prompts without the prefix fall back (counted); the prefix is encoded once;
curation scores are the same with reuse on and off.

Run with XLA_FLAGS=--xla_force_host_platform_device_count=8 for the mesh tests.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from humpback_jax import curate
from humpback_jax.curate import probe
from humpback_jax.data import templates
from humpback_jax.models.config import LlamaConfig
from humpback_jax.models.llama import init_params
from humpback_jax.sample import prefix as pfx
from humpback_jax.sample.sampler import Sampler, next_token_logprobs
from numerics import check_logits, logit_tol, precision
from test_sampler import ByteTokenizer

CFG = LlamaConfig(vocab_size=1024, hidden_size=32, intermediate_size=64, num_layers=2,
                  num_heads=4, num_kv_heads=2, max_seq_len=1024)
CFG64 = CFG.replace(dtype="float64", param_dtype="float64")
HEAD = "You are a careful judge. Read the rubric, then rate the pair below.\n\n"
SUFFIXES = ["a", "bb cc", "A much longer suffix than the others, with words.", "Q?", "zz top",
            "hello world", "x" * 23]
PROMPTS = [HEAD + s for s in SUFFIXES]


@pytest.fixture(scope="module")
def params():
  """Random weights, kernels scaled x5 (std 0.1) so that attention visibly matters."""
  p = jax.jit(init_params, static_argnums=0)(CFG, jax.random.PRNGKey(0))
  return jax.tree_util.tree_map_with_path(
      lambda path, x: x if "scale" in jax.tree_util.keystr(path) else 5.0 * x, p)


def _f64(tree):
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), tree)


def _left_pad(rows: list[list[int]], width: int):
  tokens = np.zeros((len(rows), width), np.int32)
  for i, r in enumerate(rows):
    if r:
      tokens[i, width - len(r):] = r
  return jnp.asarray(tokens), jnp.asarray([len(r) for r in rows], jnp.int32)


def test_common_prefix_and_template_prefix():
  assert pfx.common_prefix_len([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
  assert pfx.common_prefix_len([[5], [6]]) == 0 and pfx.common_prefix_len([]) == 0
  tok = ByteTokenizer()
  ids = pfx.template_prefix(tok, lambda f: HEAD + f + " tail")
  assert ids == tok.encode(HEAD)  # bytes: the prefix is exactly the head (with BOS)
  with pytest.raises(ValueError):
    pfx.template_prefix(tok, lambda f: f, fillers=("a",))


@pytest.mark.parametrize("suffix_lengths,width,chunk", [
    ([1, 7, 3], 8, None),               # ragged, one single-token suffix
    ([5, 0, 12, 2], 16, None),          # a filler row (length 0) among them
    ([9], 9, None),                     # one row, no padding
    ([4, 4, 11, 6, 1, 0, 0, 3], 24, None),  # 8 rows, wide padding
    ([5, 0, 12, 2], 16, 16),            # caches over one chunk: the "chunked" kernel
])
def test_prefix_logprobs_equal_full_prompt_float64(params, suffix_lengths, width, chunk):
  rs = np.random.RandomState(len(suffix_lengths) * 100 + width)
  prefix = rs.randint(3, CFG.vocab_size, size=37).tolist()
  suffixes = [rs.randint(3, CFG.vocab_size, size=n).tolist() for n in suffix_lengths]
  cfg = CFG64 if chunk is None else CFG64.replace(attention_chunk_size=chunk)
  assert pfx.attention_impl_for(cfg, 37 + width) == ("dot_product" if chunk is None
                                                      else "chunked")
  with precision("float64"):
    p64 = _f64(params)
    kv = pfx.encode_prefix(p64, jnp.asarray([prefix]), config=cfg)
    assert kv[0].shape == (CFG.num_layers, 1, 37, CFG.num_kv_heads, CFG.head_dim)
    got = np.asarray(pfx.prefix_next_token_logprobs(p64, kv, *_left_pad(suffixes, width),
                                                     config=cfg))
    full = [prefix + s for s in suffixes]
    want = np.asarray(next_token_logprobs(p64, *_left_pad(full, 37 + width + 5),
                                          config=CFG64))  # the reference: "dot_product"
    # Negative control: the same suffixes on another prefix.
    other = pfx.encode_prefix(p64, jnp.asarray([prefix[::-1]]), config=cfg)
    wrong = np.asarray(pfx.prefix_next_token_logprobs(p64, other, *_left_pad(suffixes, width),
                                                      config=cfg))
  assert got.dtype == np.float64 and got.shape == (len(suffixes), CFG.vocab_size)
  real = np.asarray(suffix_lengths) > 0
  assert np.isfinite(got).all()  # filler rows too
  tol = logit_tol("float64", CFG.num_layers, float(np.abs(want[real]).max()), runs=2)
  check_logits(got[real], want[real], tol, f"prefix reuse {suffix_lengths}/{width}/{chunk}")
  assert np.abs(wrong[real] - want[real]).max() > 1e6 * tol


CANDS = [ord(c) + 3 for c in "12345"]


def test_scorer_equals_sampler_and_encodes_the_prefix_once(params):
  tok = ByteTokenizer()
  prompts = PROMPTS
  prefix = pfx.template_prefix(tok, lambda f: HEAD + f)
  with precision("float64"):
    p64 = _f64(params)
    for batch_size, bucket in ((4, 8), (3, 16)):
      s = Sampler(CFG64, tok, max_prompt_len=256, batch_size=batch_size, bucket=bucket)
      scorer = pfx.PrefixScorer(s)
      want = Sampler(CFG64, tok, max_prompt_len=256, batch_size=batch_size,
                     bucket=bucket).candidate_logprobs(p64, prompts, CANDS)
      got, reused = scorer.candidate_logprobs(p64, prefix, prompts, CANDS, return_reused=True)
      assert reused.all()
      np.testing.assert_allclose(got, want, rtol=0, atol=4 * np.finfo(np.float32).eps * 10)
      # More calls, other suffix widths (batch shapes): the prefix stays encoded.
      scorer.candidate_logprobs(p64, prefix, prompts[:2], CANDS)
      scorer.candidate_logprobs(p64, prefix, [prompts[2]], CANDS)
      assert scorer.stats["prefix_encodes"] == 1
      assert scorer.stats["prefix_rows"] == len(prompts) + 3
      assert scorer.stats["fallback_rows"] == 0
      assert s.stats["prompts"] == len(prompts) + 3
      # New parameters (another object): encoded again.
      scorer.candidate_logprobs(jax.tree.map(lambda x: x, p64), prefix, prompts[:1], CANDS)
      assert scorer.stats["prefix_encodes"] == 2
  # scorer_for: one scorer per sampler, dropped with it (it holds its parameters' prefix
  # encoding: a stage's sampler must not outlive the stage through it).
  import gc
  import weakref
  assert pfx.scorer_for(s) is pfx.scorer_for(s)
  gone = weakref.ref(s)
  del s, scorer
  gc.collect()
  assert gone() is None


def test_prompts_without_the_prefix_fall_back_and_are_counted(params):
  tok = ByteTokenizer()
  prefix = pfx.template_prefix(tok, lambda f: HEAD + f)
  prompts = [HEAD + "ok", "Another head entirely", HEAD[:-1], HEAD + "fine too", HEAD]
  # HEAD[:-1] is shorter than the prefix; HEAD alone has no suffix token to read after it.
  s = Sampler(CFG, tok, max_prompt_len=256, batch_size=2, bucket=8)
  scorer = pfx.PrefixScorer(s)
  got, reused = scorer.candidate_logprobs(params, prefix, prompts, CANDS, return_reused=True)
  assert reused.tolist() == [True, False, False, True, False]
  assert scorer.stats["fallback_rows"] == 3 and scorer.stats["prefix_rows"] == 2
  assert s.stats["prompts"] == len(prompts)  # each prompt counted once
  want = Sampler(CFG, tok, max_prompt_len=256, batch_size=2, bucket=8).candidate_logprobs(
      params, prompts, CANDS)
  np.testing.assert_allclose(got, want, atol=logit_tol("float32", CFG.num_layers, 10.0, 2))
  # None uses the prefix: no encoding at all.
  none = pfx.PrefixScorer(s)
  none.candidate_logprobs(params, prefix, prompts[1:3], CANDS)
  assert none.stats["prefix_encodes"] == 0 and none.stats["fallback_rows"] == 2


@pytest.mark.parametrize("max_prompt_len,reused", [
    (160, True),   # prefix (70) <= 160 // 2: kept whole, the suffix loses its middle
    (120, False),  # prefix > 120 // 2: fit_prompt cuts into it -> full path (same cut)
])
def test_truncated_prompts_match_the_full_path(params, max_prompt_len, reused):
  tok = ByteTokenizer()
  prefix = pfx.template_prefix(tok, lambda f: HEAD + f)
  assert len(prefix) == 70
  long = HEAD + "".join(f"word{i} " for i in range(40)) + "end?"  # > 160 tokens
  prompts = [long, HEAD + "short", long + " more"]
  with precision("float64"):
    p64 = _f64(params)
    s = Sampler(CFG64, tok, max_prompt_len=max_prompt_len, batch_size=2, bucket=16)
    got, used = pfx.PrefixScorer(s).candidate_logprobs(p64, prefix, prompts, CANDS,
                                                       return_reused=True)
    ref = Sampler(CFG64, tok, max_prompt_len=max_prompt_len, batch_size=2, bucket=16)
    want = ref.candidate_logprobs(p64, prompts, CANDS)
  assert used.tolist() == [reused, True, reused]
  assert s.stats["truncated_prompts"] == ref.stats["truncated_prompts"] == 2
  np.testing.assert_allclose(got, want, rtol=0, atol=4e-6)


@pytest.mark.parametrize("shape", [(2, 2, 2), (8, 1, 1)])
def test_prefix_reuse_on_a_mesh(params, shape):
  """Suffix rows over data x fsdp, heads over tensor, params placed sharded: float64 equal to
  the one-device full-prompt path; the host scorer equals the one-device sampler."""
  if jax.device_count() < 8:
    pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8")
  from humpback_jax import sharding as shd
  mesh = shd.make_mesh(shd.MeshConfig(*shape), jax.devices()[:8])
  tok = ByteTokenizer()
  prompts = PROMPTS
  prefix = pfx.template_prefix(tok, lambda f: HEAD + f)
  with precision("float64"):
    p64 = _f64(params)
    sharded = Sampler(CFG64, tok, max_prompt_len=256, batch_size=8, bucket=16, mesh=mesh)
    placed = sharded.place_params(p64)
    scorer = pfx.PrefixScorer(sharded)
    kv = scorer.prefix_kv(placed, prefix)
    suffixes = [tok.encode(p)[len(prefix):] for p in prompts] + [[]]  # + a filler row
    tokens, lengths = _left_pad(suffixes, 64)
    got = np.asarray(pfx.prefix_next_token_logprobs(
        placed, kv, scorer.put(np.asarray(tokens)), scorer.put(np.asarray(lengths)),
        config=CFG64, sharding=sharded.activation_sharding))
    want = np.asarray(next_token_logprobs(
        p64, *_left_pad([tok.encode(p) for p in prompts], 160), config=CFG64))
    n = len(prompts)
    tol = logit_tol("float64", CFG.num_layers, float(np.abs(want).max()), runs=2)
    check_logits(got[:n], want, tol, f"prefix reuse on mesh {shape}")
    host = scorer.candidate_logprobs(placed, prefix, prompts, CANDS)
    plain = Sampler(CFG64, tok, max_prompt_len=256, batch_size=8, bucket=16)
    np.testing.assert_allclose(host, plain.candidate_logprobs(p64, prompts, CANDS), rtol=0,
                               atol=4e-6)
    assert scorer.stats["prefix_encodes"] == 1


# ------------------------------------------------------------------ curation (read_scores)


class WordTokenizer:
  """Toy BPE-like tokenizer: pieces are a word with its leading whitespace (``"\\n\\nWord"``
  is one piece), a punctuation mark with its leading whitespace, or trailing whitespace; a
  piece in the fixed vocabulary (the words of the rating template) is one token, any other
  piece its UTF-8 bytes. So, as with GPT-2 BPE, what follows the rubric can merge with the
  newlines before it. 0 pad, 1 BOS, 2 EOS, 3..258 bytes, 259.. words."""

  pad_id, bos_id, eos_id = 0, 1, 2
  chat_template = None
  _PIECE = re.compile(r"\s*\w+|\s*[^\w\s]|\s+")

  def __init__(self, vocab_size: int):
    words = sorted(set(self._PIECE.findall(templates.RATING_PROMPT + templates.PLAIN_TEMPLATE
                                           + "Score: 1 2 3 4 5")))
    self.vocab = {w: 259 + i for i, w in enumerate(words[:vocab_size - 259])}
    self.inv = {i: w for w, i in self.vocab.items()}

  def encode(self, text, add_bos=None):
    ids = [] if add_bos is False else [self.bos_id]
    for piece in self._PIECE.findall(text):
      ids.extend([self.vocab[piece]] if piece in self.vocab else
                 [b + 3 for b in piece.encode("utf-8")])
    return ids

  def decode(self, ids, skip_special_tokens=True):
    out, buf = [], b""
    for i in ids:
      if 3 <= i < 259:
        buf += bytes([i - 3])
        continue
      out.append(buf.decode("utf-8", errors="replace"))
      buf = b""
      out.append(self.inv.get(i, ""))
    out.append(buf.decode("utf-8", errors="replace"))
    return "".join(out)


CANDIDATES = [
    {"id": "c0", "instruction": "How do I bake bread?", "response": "Mix flour, water, yeast."},
    {"id": "c1", "instruction": "Name a prime number.", "response": "Seven is prime."},
    {"id": "c2", "instruction": "\nwhy is the sky blue", "response": "Rayleigh scattering."},
    {"id": "c3", "instruction": "Write a haiku", "response": "Old pond / frog jumps in"},
    {"id": "c4", "instruction": "(List) three colours", "response": "Red, green and blue."},
]


def test_rating_prefix_with_the_toy_tokenizer():
  tok = WordTokenizer(CFG.vocab_size)
  prefix = probe.rating_prefix(tok)
  text = templates.rating_prompt(tok, "INS", "OUT")
  # The rubric up to its last line (here also the two newlines before the pair: an unknown
  # piece "\n\n<instruction>" is spelled in bytes).
  assert tok.decode(prefix).endswith('write "Score: <rating>" in the last line.\n\n')
  assert 300 < len(prefix) < len(tok.encode(text))
  for c in CANDIDATES:
    assert tok.encode(templates.rating_prompt(tok, c["instruction"], c["response"]))[
        :len(prefix)] == prefix
  assert probe.rating_prefix(tok) == prefix  # cached per tokenizer


@pytest.mark.parametrize("mode,dtype", [("logprob", "float64"),
                                        ("generate+logprob", "float32")])
def test_score_candidates_same_with_and_without_prefix_reuse(params, mode, dtype):
  """Same records with reuse on and off (generation runs in float32: ``generate`` does not
  trace under 64-bit JAX today)."""
  tok = WordTokenizer(CFG.vocab_size)
  cfg_model = CFG64 if dtype == "float64" else CFG
  with precision(dtype):
    p = _f64(params) if dtype == "float64" else params
    runs = {}
    for reuse in (True, False):
      s = Sampler(cfg_model, tok, max_prompt_len=768, batch_size=2, bucket=32,
                  owner="CurationConfig")
      cfg = curate.CurationConfig(mode=mode, max_new_tokens=6, temperature=1.0,
                                  prefix_reuse=reuse, sanity_pairs=0)
      runs[reuse] = curate.score_candidates(s, p, tok, CANDIDATES, cfg, seed=0)
      scorer = pfx.scorer_for(s)
      assert scorer.stats["prefix_rows"] == (len(CANDIDATES) if reuse else 0)
      assert scorer.stats["prefix_encodes"] == (1 if reuse else 0)
  on, off = runs[True], runs[False]
  assert [r["prefix_reused"] for r in on] == [True] * len(CANDIDATES)
  assert [r["prefix_reused"] for r in off] == [None] * len(CANDIDATES)
  atol = 2e-6 if dtype == "float64" else 2e-5
  for a, b in zip(on, off):
    assert a["rating"] == b["rating"] and a["score"] == b["score"]
    assert a["logprob_score"] == b["logprob_score"]
    np.testing.assert_allclose(a["p_scores"], b["p_scores"], atol=atol)
    assert a["digit_mass"] == pytest.approx(b["digit_mass"], abs=atol)
  if mode == "generate+logprob":
    assert any(r["rating"] for r in on)  # the contexts carried generated reasoning
  st = curate.curation_stats(on)
  assert st["prefix_reused"] == len(CANDIDATES) and st["prefix_fallbacks"] == 0
  assert curate.curation_stats(off)["prefix_reused"] == 0


def test_read_scores_counts_contexts_without_the_prefix(params):
  tok = WordTokenizer(CFG.vocab_size)
  s = Sampler(CFG, tok, max_prompt_len=768, batch_size=4, bucket=32)
  # "\n\nPlease" is one token of the toy vocabulary (it occurs in the rubric): a pair whose
  # instruction starts with "Please" merges with the newlines before it, like a BPE merge.
  contexts = [templates.rating_prompt(tok, c["instruction"], c["response"])
              for c in CANDIDATES[:2]] + ["Not a rating prompt at all.",
                                          templates.rating_prompt(tok, "Please help", "No.")]
  out = probe.read_scores(s, params, tok, contexts)
  assert out.prefix_reused.tolist() == [True, True, False, False]
  assert out.record(2)["prefix_reused"] is False
  ref = probe.read_scores(s, params, tok, contexts, prefix_reuse=False)
  assert ref.prefix_reused is None
  np.testing.assert_allclose(out.p_scores, ref.p_scores, atol=1e-5)


@pytest.mark.parametrize("name", ["gguf_bpe_smollm2", "sentencepiece_llama2", "llama2c_tok512"])
def test_rating_prefix_of_real_tokenizers(name):
  """Every real rating prompt (seed-like pairs, odd first characters too) starts with the
  prefix, which stops before the pair."""
  from test_curate import _tokenizer
  tok = _tokenizer(name)
  prefix = probe.rating_prefix(tok)
  head = templates.rating_prompt(tok, "INS", "OUT").split("INS")[0]
  assert 0.9 * len(tok.encode(head)) < len(prefix) <= len(tok.encode(head))
  for ins, out in [("How do I bake bread?", "Mix flour."), ("1. list", "- a\n- b"),
                   ("  spaced", "x"), ("\u00e9t\u00e9?", "oui"), ("<b>tag</b>", "ok")]:
    ids = tok.encode(templates.rating_prompt(tok, ins, out))
    assert ids[:len(prefix)] == prefix, (name, ins)
  print(f"{name}: rating prefix {len(prefix)} tokens")
