"""Continuous batching (sample/continuous.py) against the bucketed reference: every request must
get the tokens ``decode.generate`` gives it alone (float64: greedy and sampled, same per-record
keys), through refills, filler rows and cache compactions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from humpback_jax.models.config import LlamaConfig
from humpback_jax.models.llama import init_params
from humpback_jax.sample import continuous, decode
from humpback_jax.sample.sampling import Greedy, Sampling

CFG = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_layers=2,
                  num_heads=4, num_kv_heads=2, max_seq_len=512, dtype="float64",
                  param_dtype="float64")
EOS = 7
WIDTHS = [8, 16, 32]


@pytest.fixture(scope="module")
def params():
  with jax.enable_x64(True):
    p = jax.jit(init_params, static_argnums=0)(CFG, jax.random.PRNGKey(3))
    # Kernels x4 so that attention and EOS both visibly matter.
    return jax.tree_util.tree_map_with_path(
        lambda path, x: x if "scale" in jax.tree_util.keystr(path) else 4.0 * x, p)


def _reference(params, prompt, key, n, strategy):
  """``decode.generate`` on the prompt alone (width = its length, one row)."""
  out = decode.generate(params, jnp.asarray([prompt], jnp.int32),
                        jnp.asarray([len(prompt)], jnp.int32), config=CFG, max_new_tokens=n,
                        eos_ids=(EOS,), strategy=strategy, rng=jnp.asarray(key)[None],
                        pad_id=0)
  m = int(out.content_lengths[0])
  return np.asarray(out.tokens[0, :m]).tolist(), bool(out.finished[0])


@pytest.mark.parametrize("strategy,batch,refill,layer_loop", [
    (Greedy(), 4, 2, "unrolled"),
    (Sampling(temperature=1.0, top_p=0.95), 4, 1, "unrolled"),
    (Sampling(temperature=0.8, top_p=1.0), 3, 3, "scan"),
])
def test_every_request_gets_what_it_gets_alone(params, strategy, batch, refill, layer_loop):
  rs = np.random.RandomState(0)
  lengths = [1, 5, 31, 12, 3, 17, 8, 2, 26, 9, 14, 6, 20, 4]
  prompts = [rs.randint(8, CFG.vocab_size, size=n).tolist() for n in lengths]
  keys = np.asarray(jax.random.split(jax.random.PRNGKey(11), len(prompts)))
  n = 10
  with jax.enable_x64(True):
    got, finished, stats = continuous.generate_continuous(
        params, prompts, keys, config=CFG, batch_size=batch, max_new_tokens=n,
        eos_ids=(EOS,), strategy=strategy, pad_id=0, widths=WIDTHS, refill_rows=refill,
        layer_loop=layer_loop)
    for i, prompt in enumerate(prompts):
      want, want_finished = _reference(params, prompt, keys[i], n, strategy)
      assert got[i] == want, (i, got[i], want)
      assert finished[i] == want_finished, i
  # The run needed refills and at least one compaction (slots = 32 + 2 * 10 = 52, while the
  # write index passes ~31 + total decode steps).
  assert stats["compactions"] >= 1, stats
  assert stats["inserts"] >= len(prompts) // refill
  assert stats["generated_tokens"] == sum(len(g) + f for g, f in zip(got, finished))
  # Some requests stop at EOS, some at the budget: both ends are exercised.
  assert any(finished) and not all(finished)


def test_refill_beats_lockstep_steps_on_ragged_outputs(params):
  """With outputs of very different lengths, continuous batching needs fewer decode steps than
  batches that each run until their longest row ends (the bucketed sampler)."""
  rs = np.random.RandomState(1)
  prompts = [rs.randint(8, CFG.vocab_size, size=rs.randint(2, 16)).tolist() for _ in range(16)]
  keys = np.asarray(jax.random.split(jax.random.PRNGKey(5), len(prompts)))
  n, b = 24, 4
  eos = tuple(range(1, 31))  # 10% of the vocabulary ends a request: lengths ~ geometric
  with jax.enable_x64(True):
    got, finished, stats = continuous.generate_continuous(
        params, prompts, keys, config=CFG, batch_size=b, max_new_tokens=n, eos_ids=eos,
        strategy=Sampling(temperature=1.0, top_p=1.0), pad_id=0, widths=WIDTHS, refill_rows=1)
  need = [len(g) + f for g, f in zip(got, finished)]
  order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
  lockstep = sum(max(need[i] for i in order[s:s + b]) for s in range(0, len(order), b))
  assert sum(need) / b <= stats["decode_steps"] < lockstep, (stats, lockstep, need)


def test_bad_sizes_raise():
  with pytest.raises(ValueError, match="exceeds the widest width"):
    continuous.generate_continuous({}, [[1] * 40], np.zeros((1, 2), np.uint32), config=CFG,
                                   batch_size=2, max_new_tokens=4, eos_ids=(EOS,),
                                   strategy=Greedy(), pad_id=0, widths=WIDTHS)
  with pytest.raises(ValueError, match="refill_rows"):
    continuous.generate_continuous({}, [[1]], np.zeros((1, 2), np.uint32), config=CFG,
                                   batch_size=2, max_new_tokens=4, eos_ids=(EOS,),
                                   strategy=Greedy(), pad_id=0, widths=WIDTHS, refill_rows=3)


def test_sampler_continuous_texts_equal_bucketed(params):
  """``Sampler(batching="continuous").generate_texts`` returns the bucketed Sampler's texts and
  finished flags (same record keys), counting fewer or equal decode steps."""
  from humpback_jax.sample.sampler import Sampler
  from test_sampler import ByteTokenizer
  tok = ByteTokenizer()
  cfg = CFG.replace(vocab_size=300)
  prompts = ["Hello there", "x", "A somewhat longer prompt than the others!!", "What is 2+2?",
             "Score:", "abc def ghi jkl", "zz", "The quick brown fox jumps over"]
  out = {}
  with jax.enable_x64(True):
    for batching in ("bucketed", "continuous"):
      s = Sampler(cfg, tok, max_prompt_len=48, batch_size=4, bucket=16, batching=batching,
                  refill_rows=2)
      out[batching] = (s.generate_texts(params, prompts, max_new_tokens=12,
                                        strategy=Sampling(temperature=1.0, top_p=0.9), seed=4,
                                        keys=[f"r{i}" for i in range(len(prompts))],
                                        return_finished=True), dict(s.stats))
  (texts_b, fin_b), stats_b = out["bucketed"]
  (texts_c, fin_c), stats_c = out["continuous"]
  assert texts_c == texts_b and fin_c == fin_b
  assert stats_c["generated_tokens"] == stats_b["generated_tokens"]
  assert stats_c["unfinished"] == stats_b["unfinished"]
  assert 0 < stats_c["decode_steps"] <= stats_b["decode_steps"] + 1


def test_sampler_continuous_needs_one_device():
  from humpback_jax import sharding as shd
  from humpback_jax.sample.sampler import Sampler
  from test_sampler import ByteTokenizer
  mesh = shd.make_mesh(shd.MeshConfig(data=-1))
  if mesh.size == 1:
    pytest.skip("needs several devices")
  with pytest.raises(ValueError, match="one device"):
    Sampler(CFG, ByteTokenizer(), max_prompt_len=16, batch_size=8, mesh=mesh,
            batching="continuous")


def test_generation_config_batching_and_cache_dtype_are_checked():
  from humpback_jax.pipeline.config import GenerationConfig
  assert GenerationConfig().batching == "auto"
  with pytest.raises(ValueError, match="GenerationConfig.batching"):
    GenerationConfig(batching="paged")
  with pytest.raises(ValueError, match="GenerationConfig.cache_dtype"):
    GenerationConfig(cache_dtype="int8")
