"""Tests for humpback_jax.sample: cached decode vs brute force, EOS handling, HF warper semantics,
next-token scoring and the host-side Sampler. Tiny random models on CPU.

Run with XLA_FLAGS=--xla_force_host_platform_device_count=8 for the mesh test.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from humpback_jax.models.config import LlamaConfig
from humpback_jax.models.llama import Llama, init_params
from humpback_jax.sample import sampler as sampler_lib
from humpback_jax.sample.sampler import Sampler, generate, next_token_logprobs
from humpback_jax.sample.sampling import Greedy, Sampling
from numerics import logit_tol

CFG = LlamaConfig(vocab_size=264, hidden_size=32, intermediate_size=64, num_layers=2,
                  num_heads=4, num_kv_heads=2, max_seq_len=256)
N_NEW = 12


W = 13  # common prompt width of the device-level tests (fewer compiles)
BRUTE_W = 32  # buffer width of the brute-force forward


@pytest.fixture(scope="module")
def params():
  return jax.jit(init_params, static_argnums=0)(CFG, jax.random.PRNGKey(0))


def _prompts(seed: int, lengths: list[int]) -> list[list[int]]:
  rs = np.random.RandomState(seed)
  return [rs.randint(3, CFG.vocab_size, size=n).tolist() for n in lengths]


def _left_pad(prompts: list[list[int]], width: int = W, pad: int = 0):
  tokens = np.full((len(prompts), width), pad, np.int32)
  for i, p in enumerate(prompts):
    if p:
      tokens[i, width - len(p):] = p
  return jnp.asarray(tokens), jnp.asarray([len(p) for p in prompts], jnp.int32)


@jax.jit
def _full_forward(params, tokens, length):
  """No-cache forward over one right-padded sequence int32[BRUTE_W]; logits f32[BRUTE_W, V]."""
  seg = (jnp.arange(tokens.shape[0]) < length).astype(jnp.int32)[None]
  pos = jnp.arange(tokens.shape[0], dtype=jnp.int32)[None]
  return Llama(CFG).apply(params, tokens[None], pos, seg)[0][0]


def _brute_greedy(params, prompt: list[int], n: int) -> list[int]:
  """Full forward over the whole growing sequence each step, arg-max of the last position."""
  assert len(prompt) + n <= BRUTE_W
  seq = list(prompt)
  for _ in range(n):
    buf = np.zeros((BRUTE_W,), np.int32)
    buf[:len(seq)] = seq
    logits = np.asarray(_full_forward(params, jnp.asarray(buf), len(seq)))
    seq.append(int(np.argmax(logits[len(seq) - 1])))
  return seq[len(prompt):]


def _greedy(params, tokens, lengths, n=N_NEW, eos_ids=(), pad_id=0):
  return generate(params, tokens, lengths, config=CFG, max_new_tokens=n, eos_ids=eos_ids,
                  strategy=Greedy(), rng=jax.random.PRNGKey(0), pad_id=pad_id)


def test_greedy_matches_brute_force_no_cache(params):
  prompts = _prompts(1, [7, 3, 11])
  tokens, lengths = _left_pad(prompts)
  out = _greedy(params, tokens, lengths)
  assert out.tokens.shape == (3, N_NEW) and out.tokens.dtype == jnp.int32
  np.testing.assert_array_equal(out.lengths, [N_NEW] * 3)
  assert not np.asarray(out.finished).any() and int(out.steps) == N_NEW
  for b, prompt in enumerate(prompts):
    assert np.asarray(out.tokens[b]).tolist() == _brute_greedy(params, prompt, N_NEW), b


def test_left_padded_row_equals_unpadded_alone(params):
  prompt = _prompts(2, [5])[0]
  others = _prompts(3, [9, 2])
  tokens, lengths = _left_pad([others[0], prompt, others[1]])
  batched = _greedy(params, tokens, lengths)
  alone = _greedy(params, jnp.asarray([prompt], jnp.int32), jnp.asarray([len(prompt)]))
  np.testing.assert_array_equal(batched.tokens[1], alone.tokens[0])
  # Also the next-token distributions, not only the arg-max.
  lp_b = next_token_logprobs(params, tokens, lengths, config=CFG)
  lp_a = next_token_logprobs(params, jnp.asarray([prompt], jnp.int32), jnp.asarray([5]),
                             config=CFG)
  np.testing.assert_allclose(lp_b[1], lp_a[0], atol=logit_tol(
      "float32", CFG.num_layers, float(np.abs(lp_a).max()), runs=2))


def test_eos_masking_lengths_and_early_exit(params):
  prompts = _prompts(4, [6, 4, 8])
  tokens, lengths = _left_pad(prompts)
  ref = np.asarray(_greedy(params, tokens, lengths).tokens)
  # One EOS id per row, taken from the unconstrained greedy run; any of them ends any row.
  eos = tuple(sorted({int(ref[0, 2]), int(ref[1, 5]), int(ref[2, 3])}))
  pad = -1
  out = _greedy(params, tokens, lengths, eos_ids=eos, pad_id=pad)
  first = [int(np.flatnonzero(np.isin(ref[b], eos))[0]) for b in range(3)]
  for b in range(3):
    expected = np.full((N_NEW,), pad)
    expected[:first[b] + 1] = ref[b, :first[b] + 1]
    np.testing.assert_array_equal(out.tokens[b], expected)
  np.testing.assert_array_equal(out.lengths, [f + 1 for f in first])
  np.testing.assert_array_equal(out.content_lengths, first)
  assert np.asarray(out.finished).all()
  assert int(out.steps) == max(first) + 1 < N_NEW


def test_empty_rows_are_inert_and_unfinished_rows_run_to_budget(params):
  prompts = _prompts(5, [6, 4])
  tokens, lengths = _left_pad([prompts[0], [], prompts[1]])
  ref = np.asarray(_greedy(params, tokens, lengths).tokens)
  assert (ref[1] == 0).all()  # empty row: all pad
  # Both real rows finish early; the empty row must not keep the loop alive.
  eos = (int(ref[0, 1]), int(ref[2, 2]))
  out = _greedy(params, tokens, lengths, eos_ids=eos, pad_id=-1)
  first = [int(np.flatnonzero(np.isin(ref[b], eos))[0]) for b in (0, 2)]
  assert int(out.steps) == max(first) + 1 < N_NEW
  np.testing.assert_array_equal(out.lengths, [first[0] + 1, 0, first[1] + 1])
  np.testing.assert_array_equal(out.finished, [True, False, True])
  assert (np.asarray(out.tokens[1]) == -1).all()
  # Rows that never emit EOS: full budget, finished=False, nothing masked.
  never = int(np.setdiff1d(np.arange(3, CFG.vocab_size), ref)[0])
  out = _greedy(params, tokens, lengths, eos_ids=(never,))
  assert int(out.steps) == N_NEW
  np.testing.assert_array_equal(out.lengths, [N_NEW, 0, N_NEW])
  assert not np.asarray(out.finished).any()
  np.testing.assert_array_equal(out.tokens, ref)


def test_sampling_deterministic_per_seed(params):
  tokens, lengths = _left_pad(_prompts(6, [5, 9, 7]))
  run = lambda seed: np.asarray(generate(
      params, tokens, lengths, config=CFG, max_new_tokens=N_NEW, eos_ids=(), strategy=Sampling(),
      rng=jax.random.PRNGKey(seed)).tokens)
  a, b, c = run(1), run(1), run(2)
  np.testing.assert_array_equal(a, b)
  assert (a != c).any()
  assert (a[0] != a[1]).any()  # rows draw independently


# ---------------------------------------------------------------- warpers vs HF semantics


def _np_warp(logits: np.ndarray, temperature: float, top_p: float, top_k: int) -> np.ndarray:
  """Brute-force numpy port of HF Temperature -> TopK -> TopP warpers (min_tokens_to_keep=1)."""
  x = logits.astype(np.float64) / temperature
  if top_k:
    kth = np.sort(x, axis=-1)[:, -min(top_k, x.shape[-1])][:, None]
    x = np.where(x < kth, -np.inf, x)
  if top_p < 1.0:
    for row in x:
      idx = np.argsort(row, kind="stable")  # ascending
      s = row[idx]
      e = np.exp(s - s.max())
      cum = np.cumsum(e / e.sum())
      remove = cum <= 1.0 - top_p
      remove[-1] = False
      row[idx[remove]] = -np.inf
  return x


CASES = [(0.7, 0.9, 0), (1.0, 0.5, 0), (0.7, 1.0, 5), (1.3, 0.8, 10), (0.5, 0.95, 3),
         (2.0, 0.3, 0)]


@pytest.mark.parametrize("temperature,top_p,top_k", CASES)
def test_warp_matches_numpy_hf(temperature, top_p, top_k):
  logits = np.random.RandomState(7).normal(size=(64, 50)).astype(np.float32) * 3
  got = np.asarray(Sampling(temperature, top_p, top_k).warp(jnp.asarray(logits)))
  want = _np_warp(logits, temperature, top_p, top_k)
  np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
  np.testing.assert_allclose(got[np.isfinite(got)], want[np.isfinite(want)], rtol=1e-5)
  assert np.isfinite(got).sum(-1).min() >= 1


def test_warp_matches_transformers():
  torch = pytest.importorskip("torch")
  lp = pytest.importorskip("transformers.generation.logits_process")
  logits = np.random.RandomState(8).normal(size=(32, 40)).astype(np.float32) * 3
  for temperature, top_p, top_k in CASES:
    x = torch.from_numpy(logits.copy())
    x = lp.TemperatureLogitsWarper(temperature)(None, x)
    if top_k:
      x = lp.TopKLogitsWarper(top_k)(None, x)
    if top_p < 1.0:
      x = lp.TopPLogitsWarper(top_p)(None, x)
    got = np.asarray(Sampling(temperature, top_p, top_k).warp(jnp.asarray(logits)))
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(x.numpy()))


@pytest.mark.parametrize("temperature,top_p,top_k", [(0.7, 0.9, 0), (1.3, 0.8, 4)])
def test_sampling_frequencies(temperature, top_p, top_k):
  logits = np.random.RandomState(9).normal(size=(12,)).astype(np.float32) * 1.5
  n = 20000
  draws = np.asarray(Sampling(temperature, top_p, top_k)(
      jnp.broadcast_to(jnp.asarray(logits), (n, 12)), jax.random.PRNGKey(3)))
  assert draws.dtype == np.int32 and draws.shape == (n,)
  w = _np_warp(logits[None], temperature, top_p, top_k)[0]
  probs = np.exp(w - w.max())
  probs /= probs.sum()
  freq = np.bincount(draws, minlength=12) / n
  assert (freq[probs == 0] == 0).all()  # never outside the kept set
  np.testing.assert_allclose(freq, probs, atol=0.015)


def test_greedy_strategy_and_validation():
  logits = jnp.asarray([[0.1, 2.0, -1.0], [3.0, 3.0, 0.0]])
  np.testing.assert_array_equal(Greedy()(logits, None), [1, 0])
  for bad in [dict(temperature=0.0), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-1)]:
    with pytest.raises(ValueError):
      Sampling(**bad)
  hash(Sampling())  # static jit argument


def test_next_token_logprobs_matches_brute_force(params):
  prompts = _prompts(10, [4, 9, 1])
  tokens, lengths = _left_pad(prompts)
  got = np.asarray(next_token_logprobs(params, tokens, lengths, config=CFG))
  assert got.shape == (3, CFG.vocab_size) and got.dtype == np.float32
  for b, p in enumerate(prompts):
    buf = np.zeros((BRUTE_W,), np.int32)
    buf[:len(p)] = p
    logits = np.asarray(_full_forward(params, jnp.asarray(buf), len(p))[len(p) - 1],
                        np.float64)
    want = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
    np.testing.assert_allclose(got[b], want, atol=logit_tol(
        "float32", CFG.num_layers, float(np.abs(want).max()), runs=2))


# ---------------------------------------------------------------- host-side Sampler


class ByteTokenizer:
  """Toy byte-level tokenizer: 0 pad, 1 BOS, 2 EOS, byte b -> b + 3 (ids >= 259 unused)."""

  pad_id, bos_id, eos_id = 0, 1, 2

  def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
    ids = [b + 3 for b in text.encode("utf-8")]
    return ids if add_bos is False else [self.bos_id] + ids

  def decode(self, ids, skip_special_tokens: bool = True) -> str:
    return bytes(i - 3 for i in ids if 3 <= i < 259).decode("utf-8", errors="replace")


PROMPTS = ["Hello there", "x", "A somewhat longer prompt than the others!! (truncated)",
           "What is 2+2?", "Score:", "abc def ghi jkl"]
MAX_PROMPT = 32


def _truncated_ids(tok, text: str) -> list[int]:
  ids = tok.encode(text)  # too long: keep the first 16 and the last 16 tokens
  return ids[:MAX_PROMPT // 2] + ids[-(MAX_PROMPT // 2):] if len(ids) > MAX_PROMPT else ids


def _alone(ids: list[int]):
  """One prompt in row 0, inert empty rows after it (same [4, 32] shape as the Sampler's)."""
  return _left_pad([ids, [], [], []], width=MAX_PROMPT)


def _reference_texts(params, tok):
  """Each prompt alone, manually middle-truncated, through greedy `generate`, in order."""
  texts, finished = [], []
  for text in PROMPTS:
    t, l = _alone(_truncated_ids(tok, text))
    out = generate(params, t, l, config=CFG, max_new_tokens=N_NEW, eos_ids=(tok.eos_id,),
                   strategy=Greedy(), rng=jax.random.PRNGKey(0), pad_id=tok.pad_id)
    texts.append(tok.decode(np.asarray(out.tokens[0, :int(out.content_lengths[0])]).tolist()))
    finished.append(bool(out.finished[0]))
  return texts, finished


def test_sampler_order_truncation_and_filler_rows(params):
  tok = ByteTokenizer()
  # batch_size=4 over 6 prompts: two batches, the second with two filler rows.
  s = Sampler(CFG, tok, max_prompt_len=MAX_PROMPT, batch_size=4, bucket=32)
  texts, finished = s.generate_texts(params, PROMPTS, max_new_tokens=N_NEW, strategy=Greedy(),
                                     seed=0, return_finished=True)
  want_texts, want_finished = _reference_texts(params, tok)
  assert len(set(want_texts)) > 1  # order actually matters
  assert texts == want_texts
  assert finished == want_finished
  assert s.stats["truncated_prompts"] == 1 and s.stats["prompts"] == len(PROMPTS)
  assert s.stats["batches"] == 2


def test_sampler_seed_determinism(params):
  s = Sampler(CFG, ByteTokenizer(), max_prompt_len=MAX_PROMPT, batch_size=4, bucket=32)
  run = lambda seed: s.generate_texts(params, PROMPTS, max_new_tokens=N_NEW,
                                      strategy=Sampling(), seed=seed)
  a, b, c = run(5), run(5), run(6)
  assert a == b and a != c


def test_score_next_token(params):
  tok = ByteTokenizer()
  s = Sampler(CFG, tok, max_prompt_len=MAX_PROMPT, batch_size=4, bucket=32)
  cands = [tok.encode(str(d), add_bos=False)[0] for d in range(1, 6)]
  got = s.score_next_token(params, PROMPTS, cands)
  assert got.shape == (len(PROMPTS), 5) and got.dtype == np.float32
  np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
  for i, text in enumerate(PROMPTS):
    lp = next_token_logprobs(params, *_alone(_truncated_ids(tok, text)), config=CFG)
    want = np.asarray(jax.nn.softmax(lp[0, np.asarray(cands)]))
    np.testing.assert_allclose(got[i], want, atol=1e-5)


@pytest.mark.parametrize("shape", [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 2, 4)])
def test_sampler_on_every_mesh_matches_one_device(params, shape):
  """Greedy texts and next-token scores on a ("data", "fsdp", "tensor") mesh, with the params
  placed sharded once (place_params) and the KV cache and activations constrained, equal the
  one-device results."""
  if jax.device_count() < 8:
    pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8")
  from humpback_jax import sharding as shd
  mesh = shd.make_mesh(shd.MeshConfig(*shape), jax.devices()[:8])
  kw = dict(max_new_tokens=N_NEW, strategy=Greedy(), seed=0)
  plain = Sampler(CFG, ByteTokenizer(), max_prompt_len=MAX_PROMPT, batch_size=8, bucket=16)
  sharded = Sampler(CFG, ByteTokenizer(), max_prompt_len=MAX_PROMPT, batch_size=8, bucket=16,
                    mesh=mesh)
  placed = sharded.place_params(params)
  q = placed["params"]["layers"]["attn"]["q_proj"]["kernel"]
  assert q.sharding.spec == shd.param_shardings(CFG, mesh)["params"]["layers"]["attn"][
      "q_proj"]["kernel"].spec
  assert sharded.generate_texts(placed, PROMPTS, **kw) == plain.generate_texts(
      params, PROMPTS, **kw)
  cands = [ord(c) + 3 for c in "12345"]
  np.testing.assert_allclose(sharded.candidate_logprobs(placed, PROMPTS, cands),
                             plain.candidate_logprobs(params, PROMPTS, cands),
                             atol=logit_tol("float32", CFG.num_layers, 10.0, runs=2))
  with pytest.raises(ValueError, match="not divisible"):
    Sampler(CFG, ByteTokenizer(), max_prompt_len=MAX_PROMPT, batch_size=5, mesh=mesh)


def test_sampler_on_a_one_axis_data_mesh(params):
  if jax.device_count() < 8:
    pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8")
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:8]), ("data",))
  kw = dict(max_new_tokens=N_NEW, strategy=Greedy(), seed=0)
  plain = Sampler(CFG, ByteTokenizer(), max_prompt_len=MAX_PROMPT, batch_size=8, bucket=16)
  sharded = Sampler(CFG, ByteTokenizer(), max_prompt_len=MAX_PROMPT, batch_size=8, bucket=16,
                    mesh=mesh)
  assert sharded.generate_texts(params, PROMPTS, **kw) == plain.generate_texts(
      params, PROMPTS, **kw)


def test_generate_argument_errors(params):
  tokens, lengths = _left_pad(_prompts(11, [3]))
  with pytest.raises(ValueError):
    _greedy(params, tokens, lengths, n=0)
  with pytest.raises(ValueError):
    _greedy(params, tokens[0], lengths)
  assert sampler_lib.SampleOutput is not None


def test_context_length_is_refused(params):
  tok = ByteTokenizer()
  # CFG.max_seq_len = 256: a 250-token prompt budget leaves room for 6 new tokens, not 12.
  s = Sampler(CFG, tok, max_prompt_len=250, batch_size=4, bucket=32)
  with pytest.raises(sampler_lib.ContextLengthError,
                     match=r"max_prompt_len=250 \+ max_new_tokens=12 = 262 .*max_seq_len=256"):
    s.generate_texts(params, ["hi"], max_new_tokens=12, strategy=Greedy(), seed=0)
  assert len(s.generate_texts(params, ["hi"], max_new_tokens=6, strategy=Greedy(), seed=0)) == 1
  with pytest.raises(sampler_lib.ContextLengthError, match="CurationConfig.max_prompt_len=300"):
    Sampler(CFG, tok, max_prompt_len=300, batch_size=4, owner="CurationConfig")


def test_prompt_overflow_policy(params):
  tok = ByteTokenizer()
  strict = Sampler(CFG, tok, max_prompt_len=MAX_PROMPT, batch_size=4, bucket=32,
                   prompt_overflow="error", owner="GenerationConfig")
  with pytest.raises(sampler_lib.PromptTooLongError,
                     match=r"prompt 2 has 55 tokens > GenerationConfig.max_prompt_len=32"):
    strict.encode_prompts(PROMPTS)
  loose = Sampler(CFG, tok, max_prompt_len=MAX_PROMPT, batch_size=4, bucket=32)
  ids = loose.encode_prompts(PROMPTS + [tok.encode(PROMPTS[2])])  # ids pass through too
  assert ids[2] == ids[-1] == _truncated_ids(tok, PROMPTS[2])
  assert loose.stats["truncated_prompts"] == 2
  with pytest.raises(ValueError, match="prompt_overflow"):
    Sampler(CFG, tok, max_prompt_len=MAX_PROMPT, batch_size=4, prompt_overflow="drop")


def test_next_token_probs_per_row_candidates(params):
  tok = ByteTokenizer()
  s = Sampler(CFG, tok, max_prompt_len=MAX_PROMPT, batch_size=4, bucket=32)
  rs = np.random.RandomState(0)
  cands = rs.randint(3, CFG.vocab_size, size=(len(PROMPTS), 5))
  got = s.next_token_probs(params, PROMPTS, cands)
  for i, text in enumerate(PROMPTS):
    lp = np.asarray(next_token_logprobs(params, *_alone(_truncated_ids(tok, text)), config=CFG))
    np.testing.assert_allclose(got[i], np.exp(lp[0, cands[i]]), rtol=1e-5)
  assert np.all(got.sum(-1) < 1)  # not renormalised


def test_scoring_logits_are_float32_for_a_bfloat16_model(params):
  cfg16 = CFG.replace(dtype="bfloat16")
  tokens, lengths = _left_pad(_prompts(3, [5, 9]))
  lp = np.asarray(next_token_logprobs(params, tokens, lengths, config=cfg16))
  # Reference: the bf16 trunk's final-norm output (captured; it must be float32 on this path),
  # projected to the vocabulary by hand in float64.
  from humpback_jax.sample import decode
  seg, pos = decode._prompt_layout(tokens, lengths)
  _, state = Llama(cfg16.replace(logits_dot_in_fp32=True)).apply(
      params, jnp.where(seg > 0, tokens, 0), pos, seg, last_logits_only=True,
      capture_intermediates=True, mutable=["intermediates"])
  normed = state["intermediates"]["final_norm"]["__call__"][0]
  assert normed.dtype == jnp.float32
  p = params["params"]
  w = (np.asarray(p["embed_tokens"]["embedding"], np.float64).T if CFG.tie_word_embeddings
       else np.asarray(p["lm_head"]["kernel"], np.float64))
  logits = np.asarray(normed, np.float64)[:, -1] @ w
  want = logits - logits.max(-1, keepdims=True)
  want -= np.log(np.exp(want).sum(-1, keepdims=True))
  np.testing.assert_allclose(lp, want, atol=1e-5)
  # The bf16 head (today's training/generation path) is visibly coarser.
  lp16 = np.asarray(jax.jit(lambda q: jax.nn.log_softmax(Llama(cfg16).apply(
      q, jnp.where(seg > 0, tokens, 0), pos, seg, last_logits_only=True)[0][:, -1]))(params))
  assert np.abs(lp16 - want).max() > 1e-3


def test_record_keys_derive_from_seed_and_id_only():
  """Independent reference: BLAKE2b-64 of the id, two little-endian uint32 words, folded in."""
  import hashlib

  def ref(seed, rid):
    w = np.frombuffer(hashlib.blake2b(str(rid).encode(), digest_size=8).digest(), "<u4")
    k = jax.random.fold_in(jax.random.PRNGKey(seed), int(w[0]))
    return np.asarray(jax.random.fold_in(k, int(w[1])))

  ids = ["doc#3", "a", 7, "ünï"]
  got = np.asarray(sampler_lib.record_keys(5, ids))
  assert got.shape == (4, 2) and got.dtype == np.uint32
  for g, rid in zip(got, ids):
    np.testing.assert_array_equal(g, ref(5, rid))
  np.testing.assert_array_equal(got[2], np.asarray(sampler_lib.record_keys(5, ["7"]))[0])
  assert not np.array_equal(got, np.asarray(sampler_lib.record_keys(6, ids)))


def test_sampled_text_depends_on_seed_and_record_id_only(params):
  """A resumed or rebatched run (a subset of the prompts, another order, another batch size)
  draws the same text for each record as the whole run did."""
  tok = ByteTokenizer()
  ids = [f"rec{i}" for i in range(len(PROMPTS))]
  kw = dict(max_new_tokens=N_NEW, strategy=Sampling(temperature=1.0, top_p=1.0), seed=3)
  # bucket = MAX_PROMPT: every batch has the same padded width, as within a fixed chunk.
  full = Sampler(CFG, tok, max_prompt_len=MAX_PROMPT, batch_size=4, bucket=MAX_PROMPT)
  want = dict(zip(ids, full.generate_texts(params, PROMPTS, keys=ids, **kw)))
  assert len(set(want.values())) > 1
  for batch_size, order in ((2, [4, 1, 3]), (8, [5, 0, 2, 1, 3, 4]), (1, [2])):
    s = Sampler(CFG, tok, max_prompt_len=MAX_PROMPT, batch_size=batch_size, bucket=MAX_PROMPT)
    got = s.generate_texts(params, [PROMPTS[i] for i in order], keys=[ids[i] for i in order],
                           **kw)
    assert got == [want[ids[i]] for i in order], (batch_size, order)
  # Another id, another draw (same prompt, same position).
  other = full.generate_texts(params, PROMPTS, keys=[i + "x" for i in ids], **kw)
  assert other != [want[i] for i in ids]


# ---------------------------------------------------------------- issue 9: speed, same outputs


class _PerRowOnly:
  """A strategy without ``sample_rows``: the decode loop calls it row by row (the path every
  strategy took before ``sample_rows``)."""

  def __init__(self, inner):
    self.inner = inner

  def __call__(self, logits, rng):
    return self.inner(logits, rng)

  def __hash__(self):
    return hash(("per_row", self.inner))

  def __eq__(self, other):
    return isinstance(other, _PerRowOnly) and other.inner == self.inner


@pytest.mark.parametrize("strategy", [Greedy(), Sampling(), Sampling(1.3, 0.8, 4)])
def test_unrolled_and_scan_loops_and_row_sampling_equal_the_per_row_scan_path(params, strategy):
  """The per-row strategy call inside the model's scanned layer stack is the decode loop as it
  was; the unrolled loop with ``sample_rows`` gives the same tokens."""
  tokens, lengths = _left_pad(_prompts(12, [7, 3, 11, 13, 0]))
  run = lambda strat, loop: np.asarray(generate(
      params, tokens, lengths, config=CFG, max_new_tokens=N_NEW, eos_ids=(5,), strategy=strat,
      rng=jax.random.PRNGKey(4), layer_loop=loop).tokens)
  ref = run(_PerRowOnly(strategy), "scan")
  np.testing.assert_array_equal(run(strategy, "unrolled"), ref)
  if isinstance(strategy, Greedy):
    np.testing.assert_array_equal(run(strategy, "scan"), ref)
    np.testing.assert_array_equal(run(_PerRowOnly(strategy), "unrolled"), ref)


def test_float32_cache_is_the_default_and_a_bfloat16_cache_runs(params):
  tokens, lengths = _left_pad(_prompts(13, [7, 3, 11]))
  run = lambda **kw: generate(params, tokens, lengths, config=CFG, max_new_tokens=N_NEW,
                              eos_ids=(), strategy=Greedy(), rng=jax.random.PRNGKey(0), **kw)
  ref = run()
  np.testing.assert_array_equal(run(cache_dtype=jnp.float32).tokens, ref.tokens)
  np.testing.assert_array_equal(run(cache_dtype="float32", layer_loop="scan").tokens,
                                ref.tokens)
  for loop in ("unrolled", "scan"):
    low = run(cache_dtype=jnp.bfloat16, layer_loop=loop)
    assert low.tokens.shape == ref.tokens.shape and int(low.steps) == N_NEW
    # Keys and values rounded to bfloat16 move the logits a little: the first tokens agree.
    np.testing.assert_array_equal(np.asarray(low.tokens)[:, :2], np.asarray(ref.tokens)[:, :2])
  # The cache really is bfloat16 (half the bytes).
  from humpback_jax.sample import decode
  lowered = decode._generate.lower(
      params, tokens, lengths, jax.random.split(jax.random.PRNGKey(0), 3),
      jnp.full((4,), -1, jnp.int32), jnp.int32(0), config=CFG, max_new_tokens=N_NEW,
      strategy=Greedy(), cache_dtype=jnp.dtype(jnp.bfloat16), layer_loop="unrolled")
  assert "tensor<3x25x2x8xbf16>" in lowered.as_text()  # [B, P + N, KV, Dh] per layer


@pytest.mark.parametrize("tied,fp32_head", [(True, False), (False, True)])
def test_params_cast_once_compute_what_the_model_computes(tied, fp32_head):
  """bfloat16 compute, float32 parameters: the model on ``cast_params`` (every weight cast
  once, as the decode loop holds them) equals the model casting them at each use, bit for
  bit; and the decode loops on them equal the model's own scanned stack."""
  from humpback_jax.sample import decode
  cfg = CFG.replace(dtype="bfloat16", tie_word_embeddings=tied, logits_dot_in_fp32=fp32_head)
  p32 = jax.jit(init_params, static_argnums=0)(cfg.replace(dtype="float32"),
                                               jax.random.PRNGKey(1))
  cast = decode.cast_params(p32, cfg)
  kinds = {jax.tree_util.keystr(k): v.dtype for k, v in
           jax.tree_util.tree_flatten_with_path(cast)[0]}
  assert kinds["['params']['layers']['attn']['q_proj']['kernel']"] == jnp.bfloat16
  assert kinds["['params']['layers']['input_norm']['scale']"] == jnp.float32
  tokens, lengths = _left_pad(_prompts(14, [7, 3, 11]))
  seg, pos = decode._prompt_layout(tokens, lengths)
  fwd = jax.jit(lambda p: Llama(cfg).apply(p, jnp.where(seg > 0, tokens, 0), pos, seg)[0])
  np.testing.assert_array_equal(fwd(cast), fwd(p32))
  run = lambda p, loop: np.asarray(generate(
      p, tokens, lengths, config=cfg, max_new_tokens=N_NEW, eos_ids=(), strategy=Greedy(),
      rng=jax.random.PRNGKey(0), layer_loop=loop).tokens)
  np.testing.assert_array_equal(run(p32, "unrolled"), run(p32, "scan"))
  np.testing.assert_array_equal(run(cast, "unrolled"), run(p32, "unrolled"))


def test_long_prompts_prefill_with_the_chunked_kernel(params):
  """A prompt longer than one attention chunk is prefilled (and scored) with "chunked": the
  same greedy tokens and log-probabilities as the dense kernel."""
  from humpback_jax.sample import decode
  cfg = CFG.replace(attention_chunk_size=4)
  assert decode.prefill_attention_impl(cfg, 12) == "chunked"
  assert decode.prefill_attention_impl(CFG, 12) == "dot_product"
  tokens, lengths = _left_pad(_prompts(15, [7, 3, 11]))
  run = lambda impl: np.asarray(generate(
      params, tokens, lengths, config=cfg, max_new_tokens=N_NEW, eos_ids=(), strategy=Greedy(),
      rng=jax.random.PRNGKey(0), prefill_attention=impl).tokens)
  np.testing.assert_array_equal(run(None), run("dot_product"))
  np.testing.assert_allclose(next_token_logprobs(params, tokens, lengths, config=cfg),
                             next_token_logprobs(params, tokens, lengths, config=CFG),
                             atol=logit_tol("float32", CFG.num_layers, 10.0, runs=2))


def _nucleus_logits(kind: str, b: int, v: int, seed: int) -> np.ndarray:
  rs = np.random.RandomState(seed)
  if kind == "peaked":  # nucleus of a few tokens: the 64 candidates hold it
    return (rs.standard_t(2, size=(b, v)) * 3).astype(np.float32)
  if kind == "medium":  # nucleus of ~100-1000 tokens: wider than the 64 candidates
    x = rs.normal(size=(b, v)).astype(np.float32)
    x[:, :600] += 6
    return x
  return (rs.normal(size=(b, v)) * 0.2).astype(np.float32)  # "flat": most of the vocabulary


@pytest.mark.parametrize("kind,temperature,top_p,top_k", [
    ("peaked", 0.7, 0.9, 0), ("medium", 0.7, 0.9, 0), ("flat", 0.7, 0.9, 0),
    ("mixed", 0.7, 0.9, 0), ("ties", 0.7, 0.9, 0), ("mixed", 1.3, 0.8, 10),
    ("mixed", 0.7, 0.95, 2000)])
def test_sample_rows_equals_the_per_row_draw(kind, temperature, top_p, top_k):
  """``Sampling.sample_rows`` (top-k candidates / bisection, Gumbel noise of the candidates
  only) draws the same tokens as ``Sampling.__call__`` per row with its key, whichever search
  each row needs and whichever its batch-mates need."""
  b, v = 24, 4000
  if kind == "mixed":
    logits = np.concatenate([_nucleus_logits(k, 8, v, 3) for k in ("peaked", "medium", "flat")])
  elif kind == "ties":
    logits = np.round(_nucleus_logits("peaked", b, v, 4))  # many exactly tied logits
  else:
    logits = _nucleus_logits(kind, b, v, 5)
  s = Sampling(temperature, top_p, top_k)
  keys = jax.random.split(jax.random.PRNGKey(6), b)
  fast = jax.jit(s.sample_rows)(jnp.asarray(logits), keys)
  slow = jax.jit(jax.vmap(lambda l, k: s(l[None], k)[0]))(jnp.asarray(logits), keys)
  np.testing.assert_array_equal(fast, slow)
  # A row's draw does not depend on its batch-mates (here: alone vs in the batch).
  alone = jax.jit(s.sample_rows)(jnp.asarray(logits[5:6]), keys[5:6])
  assert int(alone[0]) == int(fast[5])


def test_gumbel_at_is_jax_random_gumbel():
  from humpback_jax.sample.sampling import gumbel_at
  v = 5000
  for seed in range(3):
    key = jax.random.PRNGKey(seed)
    want = jax.jit(lambda k: jax.random.gumbel(k, (1, v))[0])(key)
    got = jax.jit(gumbel_at)(key, jnp.arange(v, dtype=jnp.int32))
    np.testing.assert_array_equal(got, want)


def test_greedy_sample_rows_is_argmax():
  rs = np.random.RandomState(0)
  x = np.round(rs.normal(size=(16, 300)) * 2).astype(np.float32)  # ties: lowest id wins
  x[3, 7] = np.nan
  x[4, :] = -np.inf
  np.testing.assert_array_equal(jax.jit(Greedy().sample_rows)(jnp.asarray(x)),
                                jnp.argmax(jnp.asarray(x), axis=-1))


def test_prompt_width_ladder():
  pw = sampler_lib.prompt_widths
  assert pw(1024) == [64, 128, 256, 512, 1024]
  assert pw(1536) == [64, 128, 256, 512, 1024, 1536]
  assert pw(1000, 64) == [64, 128, 256, 512, 1000]
  assert pw(1024, 64, "pow2_mid") == [64, 96, 128, 192, 256, 384, 512, 768, 1024]
  assert pw(200, 64, "linear") == [64, 128, 192, 256]  # the rule before issue 9
  assert pw(32, 32) == [32] and pw(32, 64) == [32] and pw(32, 16) == [16, 32]
  with pytest.raises(ValueError, match="bucket rule"):
    pw(64, 8, "cubic")
  s = Sampler(CFG, ByteTokenizer(), max_prompt_len=200, batch_size=4, bucket=16)
  assert s.prompt_widths == [16, 32, 64, 128, 200]
  assert [s.prompt_width(n) for n in (0, 1, 16, 17, 33, 129, 200)] == [16, 16, 16, 32, 64,
                                                                        200, 200]


def test_compilations_are_bounded_by_the_ladder(params):
  """Prompts of 1..60 tokens in batches of 4: every batch is padded to a ladder width, so the
  decode program compiles once per width (4 here), however many distinct lengths there are;
  the linear rule of before compiled one program per multiple of the bucket (15 here)."""
  from humpback_jax import compilation
  from humpback_jax.sample import decode
  cfg = CFG.replace(max_seq_len=255)  # a config no other test compiled for: a fresh jit cache
  rs = np.random.RandomState(0)
  prompts = [[int(t) for t in rs.randint(3, 259, size=n)] for n in rs.permutation(60) + 1]
  s = Sampler(cfg, ByteTokenizer(), max_prompt_len=60, batch_size=4, bucket=8)
  assert s.prompt_widths == [8, 16, 32, 60]
  before = decode._generate._cache_size()
  with compilation.counting() as c:
    texts = s.generate_texts(params, prompts, max_new_tokens=4, strategy=Greedy(), seed=0)
  assert len(texts) == 60
  assert decode._generate._cache_size() - before == len(s.prompt_widths) == 4
  assert s.stats["prompt_widths_used"] == 4 and s.stats["batches"] == 15
  assert c["compilations"] >= 4 and c["compile_seconds"] > 0
  assert s.stats["prompt_tokens"] == sum(range(1, 61))
  assert s.stats["prompt_slots"] == 4 * (2 * 8 + 2 * 16 + 4 * 32 + 7 * 60)
  linear = Sampler(cfg, ByteTokenizer(), max_prompt_len=60, batch_size=4, bucket=4,
                   bucket_rule="linear")
  assert len({linear.prompt_width(max(len(p) for p in prompts[i:i + 4]))
              for i in range(0, 60, 4)}) > 4


def test_pipelined_generate_texts_equals_one_batch_at_a_time(params):
  """Batch i+1 is dispatched before batch i is decoded: same texts, same order, as running
  every prompt alone."""
  tok = ByteTokenizer()
  prompts = PROMPTS * 3
  s = Sampler(CFG, tok, max_prompt_len=MAX_PROMPT, batch_size=2, bucket=MAX_PROMPT)
  kw = dict(max_new_tokens=N_NEW, strategy=Sampling(), seed=9)
  together = s.generate_texts(params, prompts, keys=[f"k{i}" for i in range(len(prompts))],
                              **kw)
  one = [s.generate_texts(params, [p], keys=[f"k{i}"], **kw)[0] for i, p in enumerate(prompts)]
  assert together == one
  assert s.stats["batches"] == 9 + len(prompts)


@pytest.mark.parametrize("k,top_p", [(1, 0.3), (4, 0.9), (2, 0.5)])
def test_wide_nucleus_draw_equals_the_bisection_draw(k, top_p):
  """The wide-nucleus draw (best in-nucleus token among the k largest noise-perturbed logits,
  exact bisection for the rows where none is) equals the full-vocabulary draw over the
  bisection's nucleus, row for row; with k=1, top_p 0.3 most rows take the fallback."""
  from humpback_jax.sample import sampling as smp
  logits = jnp.asarray(_nucleus_logits("flat", 32, 3000, 9) / 0.7)
  lse = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
  keys = jax.random.split(jax.random.PRNGKey(2), 32)
  got = jax.jit(lambda w, l, kk: smp._wide_nucleus_draw(w, l, kk, top_p, k))(logits, lse, keys)
  want = jax.jit(lambda w, l, kk: smp._categorical_rows(kk, smp._top_p_bisect(w, l, top_p)))(
      logits, lse, keys)
  np.testing.assert_array_equal(got, want)
