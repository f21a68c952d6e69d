"""The rewrite stage's retry loop on scripted model outputs (no model): each attempt samples with
its own key, failed rows are resampled up to the policy's limit, then the draft is kept or the
pair dropped; the variant configs name the data they need; the cosine schedule is selected.
"""

from __future__ import annotations

import pytest

from humpback_jax.bft import rewrite_parse as rp
from humpback_jax.bft.config import BFConfig, RewriteConfig
from humpback_jax.bft.stages import VARIANTS, rewrite_chunk, variant_file
from humpback_jax.bft.templates import rewrite_prompt
from test_sampler import ByteTokenizer


class _ScriptedSampler:
  """``generate_texts`` answers from a table keyed by the record key (``<id>#rewrite<k>``)."""

  def __init__(self, script):
    self.script, self.calls = script, []

  def generate_texts(self, params, prompts, *, max_new_tokens, strategy, seed, keys,
                     return_finished):
    self.calls.append(list(keys))
    self.prompts = list(prompts)
    outs = [self.script[k] for k in keys]
    return [t for t, _ in outs], [f for _, f in outs]


PAIRS = [{"id": "a", "instruction": "Why is the sky blue?", "response": "draft a"},
         {"id": "b", "instruction": "Name a fruit.", "response": "draft b"},
         {"id": "c", "instruction": "Say hi.", "response": "draft c"}]
SCRIPT = {
    "a#rewrite0": ("Sure! Here it is:\n[RES] Rayleigh scattering. [/RES]", True),
    "b#rewrite0": ("An apple.", True),  # no tags: retried
    "b#rewrite1": ("[RES]An apple.[/RES] I kept it short.", True),
    "c#rewrite0": ("[RES] Hello", False),  # cut: unterminated
    "c#rewrite1": ("", True),
    "c#rewrite2": ("[RES][/RES]", True),
}


@pytest.mark.parametrize("on_failure", ["keep_draft", "drop"])
def test_rewrite_chunk_retries_then_applies_the_policy(on_failure):
  cfg = RewriteConfig(policy=rp.RewritePolicy(max_retries=2, on_failure=on_failure))
  sampler = _ScriptedSampler(SCRIPT)
  out = rewrite_chunk(sampler, None, ByteTokenizer(), PAIRS, cfg, seed=0)
  # attempt 0: every row; attempt 1: the two failures; attempt 2: c alone
  assert sampler.calls == [["a#rewrite0", "b#rewrite0", "c#rewrite0"],
                           ["b#rewrite1", "c#rewrite1"], ["c#rewrite2"]]
  assert [r["id"] for r in out] == ["a", "b", "c"]
  assert out[0]["response"] == "Rayleigh scattering." and out[0]["outcome"] == rp.REWRITTEN
  assert out[1]["response"] == "An apple." and len(out[1]["attempts"]) == 2
  assert [a["status"] for a in out[2]["attempts"]] == [rp.UNTERMINATED, rp.MISSING, rp.EMPTY]
  assert out[2]["attempts"][0]["raw"] == "[RES] Hello"
  if on_failure == "keep_draft":
    assert (out[2]["response"], out[2]["outcome"]) == ("draft c", rp.KEPT_DRAFT)
  else:
    assert (out[2]["response"], out[2]["outcome"]) == (None, rp.DROPPED)
  summary = rp.summarize(([rp.RewriteParse(**{k: v for k, v in a.items() if k != "raw"})
                           for a in r["attempts"]], r["outcome"]) for r in out)
  assert summary["rows"] == 3 and summary["attempts"] == 6 and summary["retried_rows"] == 2
  assert summary["first_attempt_statuses"]["ok"] == 1


def test_accepting_unterminated_rewrites_stops_the_retries():
  cfg = RewriteConfig(policy=rp.RewritePolicy(max_retries=2, accept_unterminated=True))
  sampler = _ScriptedSampler(SCRIPT)
  out = rewrite_chunk(sampler, None, ByteTokenizer(), PAIRS, cfg, seed=0)
  assert sampler.calls[1] == ["b#rewrite1"]
  assert (out[2]["response"], out[2]["outcome"]) == ("Hello", rp.REWRITTEN_UNTERMINATED)


def test_response_prefix_opens_the_turn_and_is_parsed_with_the_output():
  # SmolLM2-135M-Instruct's behaviour with the prefix "[RES]": the rewrite, then EOS, no [/RES].
  script = {"a#rewrite0": (" Light scatters off air molecules.", True),
            "b#rewrite0": (" An apple[/RES]", True),
            "c#rewrite0": (" Hello, how are", False),  # cut by the budget: not accepted
            "c#rewrite1": (" Hi there.", True)}
  cfg = RewriteConfig(response_prefix="[RES]", policy=rp.RewritePolicy(
      max_retries=1, accept_unterminated=True, accept_cut=False))
  sampler = _ScriptedSampler(script)
  out = rewrite_chunk(sampler, None, ByteTokenizer(), PAIRS, cfg, seed=0)
  assert sampler.calls == [["a#rewrite0", "b#rewrite0", "c#rewrite0"], ["c#rewrite1"]]
  assert sampler.prompts == [rewrite_prompt(ByteTokenizer(), "Say hi.", "draft c") + "[RES]"]
  assert [(r["response"], r["outcome"]) for r in out] == [
      ("Light scatters off air molecules.", rp.REWRITTEN_UNTERMINATED),
      ("An apple", rp.REWRITTEN), ("Hi there.", rp.REWRITTEN_UNTERMINATED)]
  assert out[0]["attempts"][0]["raw"] == "[RES] Light scatters off air molecules."
  # Without the prefix the same outputs have no opening tag.
  out = rewrite_chunk(_ScriptedSampler(script), None, ByteTokenizer(), PAIRS,
                      RewriteConfig(policy=rp.RewritePolicy(max_retries=0)), seed=0)
  assert out[0]["attempts"][0]["status"] == rp.MISSING


def test_variants_name_the_data_they_need():
  assert variant_file("filter", 2) == "data/curated_A2.jsonl"
  assert variant_file("filter_rewrite", 2) == "data/rewritten_curated.jsonl"
  assert set(VARIANTS) == {"filter", "rewrite", "filter_rewrite", "filter_distill",
                           "self_instruct"}
  with pytest.raises(ValueError, match="num_instructions"):
    BFConfig(variants=("self_instruct",))
  BFConfig(rewrite=("curated",), distill=("curated",),
           variants=("filter", "filter_rewrite", "filter_distill"))
  with pytest.raises(ValueError, match="needs BFConfig.rewrite to include 'candidates'"):
    BFConfig(rewrite=("curated",), variants=("rewrite",))
  with pytest.raises(ValueError, match="unknown"):
    BFConfig(variants=("distill_only",))
  with pytest.raises(ValueError, match="unknown sources"):
    BFConfig(rewrite=("web",))


def test_self_instruct_parse_and_filters():
  from humpback_jax.bft import self_instruct as si
  prompt = si.build_prompt(["Say hi.", "Name a  colour."])
  assert prompt == ("Come up with a series of tasks:\n\nTask 1: Say hi.\nTask 2: Name a colour."
                    "\nTask 3:")
  assert si.parse_tasks(" Write a poem about rain.\nTask 4: List three fruits.\nTask 5: Expl") \
      == ["Write a poem about rain.", "List three fruits.", "Expl"]
  assert si.parse_tasks(" Write a poem.\nTask 4: Expl", finished=False) == ["Write a poem."]
  assert si.filter_reason("Write a short poem about rain.") is None
  assert si.filter_reason("Hi there") == "length"
  assert si.filter_reason("Draw a picture of a cat for me.") == "blocked_word"
  assert si.filter_reason("- list three fruits please") == "bad_start"


def test_self_instruct_pool_dedupes_by_rouge_and_is_deterministic():
  from humpback_jax.bft import self_instruct as si
  seeds = [f"Explain topic number {i} to a child." for i in range(8)]
  calls = []

  def generate(prompts, keys):
    calls.append(keys)
    r = len(calls) - 1
    # round 0: one new task and a near copy of a seed task; round 1: two new tasks
    outs = {0: " Write a haiku about the sea.\nTask 8: Explain topic number 3 to a child.",
            1: " List five rivers in Europe.\nTask 9: Translate 'thank you' into French."}
    return [outs[r]] * len(prompts), [True] * len(prompts)

  cfg = si.SelfInstructConfig(num_instructions=3, batch_size=2, seed_in_context=6,
                              machine_in_context=2)
  new, stats = si.grow_pool(generate, seeds, cfg, seed=0)
  assert new == ["Write a haiku about the sea.", "List five rivers in Europe.",
                 "Translate 'thank you' into French."]
  # round 0: 2 rows x 2 tasks: the haiku kept once, its copy and the seed copies dropped
  assert stats["dropped"]["near_duplicate"] == 3 and stats["rounds"] == 2
  assert calls[0] == ["self_instruct/0/0", "self_instruct/0/1"]
  calls.clear()
  assert si.grow_pool(generate, seeds, cfg, seed=0) == (new, stats)


def test_an_interrupted_rewrite_resumes_to_the_same_records(tmp_path):
  """``_resumable``: finished chunks are kept in the partial file and skipped by a rerun; each
  row's sampling key depends only on its id and attempt, so the resumed records equal an
  uninterrupted run's."""
  import types

  from humpback_jax import jsonl
  from humpback_jax.bft.stages import _resumable
  script = {f"{c}#rewrite{k}": (f"[RES] {c} v{k} [/RES]" if k else "no tags", True)
            for c in "abcde" for k in range(2)}
  pairs = [{"id": c, "instruction": f"q {c}", "response": f"draft {c}"} for c in "abcde"]

  def ctx_for(run_dir):
    jsonl.write_jsonl(pairs, run_dir / "data/curated_A1.jsonl")
    return types.SimpleNamespace(
        run_dir=run_dir, path=lambda rel: run_dir / rel, progress=False,
        config=types.SimpleNamespace(iterations=1, bft=BFConfig(rewriter=cfg)))

  cfg = RewriteConfig(chunk_size=2, policy=rp.RewritePolicy(max_retries=1))
  (tmp_path / "a" / "data").mkdir(parents=True)
  (tmp_path / "b" / "data").mkdir(parents=True)
  whole = _resumable(ctx_for(tmp_path / "a"), "curated", "rewritten", lambda chunk: rewrite_chunk(
      _ScriptedSampler(script), None, ByteTokenizer(), chunk, cfg, seed=0))
  assert [r["response"] for r in whole] == [f"{c} v1" for c in "abcde"]

  ctx = ctx_for(tmp_path / "b")
  calls = []

  def dies_on_the_second_chunk(chunk):
    calls.append([p["id"] for p in chunk])
    if len(calls) == 2:
      raise KeyboardInterrupt
    return rewrite_chunk(_ScriptedSampler(script), None, ByteTokenizer(), chunk, cfg, seed=0)

  with pytest.raises(KeyboardInterrupt):
    _resumable(ctx, "curated", "rewritten", dies_on_the_second_chunk)
  assert [r["id"] for r in jsonl.read_jsonl(
      tmp_path / "b/data/rewritten_curated.partial.jsonl")] == ["a", "b"]
  calls.clear()
  resumed = _resumable(ctx, "curated", "rewritten", lambda chunk: (
      calls.append([p["id"] for p in chunk]) or rewrite_chunk(
          _ScriptedSampler(script), None, ByteTokenizer(), chunk, cfg, seed=0)))
  assert calls == [["c", "d"], ["e"]]
  assert resumed == whole
