"""The back-and-forth translation stages ([BF] §2): rewrite and distill.

``rewrite_<source>`` -> ``data/rewritten_<source>.jsonl``: the aligned model
(``BFConfig.rewriter``) rewrites each response of ``source`` ("curated": the last A_k, [BF]'s
filter + rewrite; "candidates": every backtranslated pair, rewrite only) given its instruction,
with [BF]'s prompt (``bft.templates.rewrite_prompt``), T = 1.0, p = 0.9; the text between
``[RES]`` and ``[/RES]`` is kept (``bft.rewrite_parse``). A failed parse is resampled with the key
of (seed, ``"<id>#rewrite<attempt>"``) up to ``policy.max_retries`` times, then the draft is kept
or the pair dropped (``RewritePolicy.on_failure``); every status and outcome is counted in the
manifest.

``distill_<source>`` -> ``data/distilled_<source>.jsonl``: the same model answers each
instruction with no draft (the paper's distillation control), same decoding.

Both are sharded, batched and resumable like the other sampling stages: finished chunks of
``RewriteConfig.chunk_size`` pairs go to a partial file; a rerun skips them and gives the same
records (per-record keys, fixed chunks).
"""

from __future__ import annotations

import dataclasses

from humpback_jax import jsonl

__all__ = ["source_file", "rewrite_stage", "distill_stage", "bft_stages"]


def source_file(source: str, iterations: int) -> str:
  """The run file holding ``source``'s pairs."""
  return {"curated": f"data/curated_A{iterations}.jsonl",
          "candidates": "data/candidates.jsonl"}[source]


def _rewriter(ctx):
  """(sampler, placed params, tokenizer) of ``BFConfig.rewriter`` on the run's mesh."""
  from humpback_jax.eval.stages import load_judge_model
  from humpback_jax.sample.sampler import Sampler, check_context_length
  cfg = ctx.config.bft.rewriter
  model_cfg, params, tok = load_judge_model(cfg.model, ctx.data_root, ctx.runtime, cfg.tokenizer)
  max_prompt = min(cfg.max_prompt_len, model_cfg.max_seq_len - cfg.max_new_tokens)
  check_context_length(model_cfg, max_prompt, cfg.max_new_tokens, "RewriteConfig")
  sampler = Sampler(model_cfg, tok, max_prompt_len=max_prompt, batch_size=cfg.batch_size,
                    prompt_overflow="truncate", owner="RewriteConfig", mesh=ctx.runtime.mesh,
                    rules=ctx.runtime.rules)
  return sampler, sampler.place_params(params), tok


def _strategy(cfg):
  from humpback_jax.sample.sampling import Greedy, Sampling
  return Greedy() if cfg.temperature == 0 else Sampling(temperature=cfg.temperature,
                                                         top_p=cfg.top_p)


def rewrite_chunk(sampler, params, tokenizer, chunk: list[dict], cfg, seed: int) -> list[dict]:
  """Rewrites one chunk of pairs with retries; one record per pair (also the dropped ones).

  Returns:
    ``{id, instruction, response (the kept text, or None when dropped), draft, outcome,
    attempts: [RewriteParse.as_record() + {"raw": output}]}`` per pair, in order.
  """
  from humpback_jax.bft import rewrite_parse as rp
  from humpback_jax.bft.templates import rewrite_prompt
  policy = cfg.policy
  attempts: dict[str, list] = {p["id"]: [] for p in chunk}
  raws: dict[str, list] = {p["id"]: [] for p in chunk}
  pending = list(chunk)
  attempt = 0
  while pending:
    prompts = [rewrite_prompt(tokenizer, p["instruction"], p["response"],
                              template=cfg.chat_format) + cfg.response_prefix for p in pending]
    texts, finished = sampler.generate_texts(
        params, prompts, max_new_tokens=cfg.max_new_tokens, strategy=_strategy(cfg), seed=seed,
        keys=[f"{p['id']}#rewrite{attempt}" for p in pending], return_finished=True)
    retry = []
    for p, prompt, text, fin in zip(pending, prompts, texts, finished):
      # The prefix is the start of the model's turn: the parse reads it with the output.
      text = cfg.response_prefix + text
      parse = rp.parse_rewrite(text, p["response"], prompt=prompt, instruction=p["instruction"],
                               finished=fin)
      attempts[p["id"]].append(parse)
      raws[p["id"]].append(text)
      if rp.should_retry(parse, policy, attempt):
        retry.append(p)
    pending, attempt = retry, attempt + 1
  out = []
  for p in chunk:
    text, outcome = rp.resolve(attempts[p["id"]], p["response"], policy)
    out.append({"id": p["id"], "instruction": p["instruction"], "response": text,
                "draft": p["response"], "outcome": outcome,
                "attempts": [dict(a.as_record(), raw=r)
                             for a, r in zip(attempts[p["id"]], raws[p["id"]])]})
  return out


def _resumable(ctx, source: str, out_name: str, run_chunk) -> list[dict]:
  """``run_chunk(pairs) -> records`` over ``source``'s pairs in the fixed chunks of
  ``RewriteConfig.chunk_size``, finished chunks kept in ``data/<out_name>_<source>.partial.jsonl``
  (a rerun skips them); the records in the order of the pairs."""
  pairs = jsonl.read_jsonl(ctx.run_dir / source_file(source, ctx.config.iterations))
  return jsonl.resumable_map(pairs, run_chunk,
                             ctx.path(f"data/{out_name}_{source}.partial.jsonl"),
                             ctx.config.bft.rewriter.chunk_size, progress=bool(ctx.progress),
                             desc=f"{out_name} {source} (chunks)")


def rewrite_stage(source: str):
  """The stage function rewriting ``source``'s responses."""

  def run(ctx) -> dict:
    from humpback_jax.bft import rewrite_parse as rp
    cfg = ctx.config.bft.rewriter
    sampler, params, tok = _rewriter(ctx)
    records = _resumable(ctx, source, "rewritten", lambda chunk: rewrite_chunk(
        sampler, params, tok, chunk, cfg, ctx.config.seed_value))
    kept = [{k: v for k, v in r.items() if k != "attempts"} for r in records
            if r["response"] is not None]
    jsonl.write_jsonl(records, ctx.path(f"data/rewrite_log_{source}.jsonl"))
    jsonl.write_jsonl(kept, ctx.path(f"data/rewritten_{source}.jsonl"))
    summary = rp.summarize(
        ([rp.RewriteParse(**{k: v for k, v in a.items() if k != "raw"}) for a in r["attempts"]],
         r["outcome"]) for r in records)
    return {"count": len(kept), "pairs": len(records), "dropped": len(records) - len(kept),
            "source": source, "rewrite": summary,
            "truncated_prompts": sampler.stats.get("truncated_prompts", 0),
            "policy": dict(dataclasses.asdict(cfg.policy),
                           response_prefix=cfg.response_prefix)}

  return run


def distill_stage(source: str):
  """The stage function: the aligned model answers ``source``'s instructions, no draft."""

  def run(ctx) -> dict:
    from humpback_jax.bft.templates import distill_prompt
    cfg = ctx.config.bft.rewriter
    sampler, params, tok = _rewriter(ctx)

    def answer(chunk):
      texts, finished = sampler.generate_texts(
          params, [distill_prompt(tok, p["instruction"], template=cfg.chat_format)
                   for p in chunk], max_new_tokens=cfg.max_new_tokens,
          strategy=_strategy(cfg), seed=ctx.config.seed_value,
          keys=[f"{p['id']}#distill" for p in chunk], return_finished=True)
      return [{"id": p["id"], "instruction": p["instruction"], "response": t.strip(),
               "finished": bool(f)} for p, t, f in zip(chunk, texts, finished)]

    records = _resumable(ctx, source, "distilled", answer)
    kept = [r for r in records if r["response"]]
    jsonl.write_jsonl(kept, ctx.path(f"data/distilled_{source}.jsonl"))
    return {"count": len(kept), "pairs": len(records), "dropped_empty": len(records) - len(kept),
            "unfinished": sum(not r["finished"] for r in records), "source": source,
            "truncated_prompts": sampler.stats.get("truncated_prompts", 0)}

  return run


def bft_stages(cfg, iterations: int) -> list:
  """The rewrite and distill stages of ``BFConfig`` ``cfg`` (none when it names no source)."""
  from humpback_jax.pipeline.stages import Stage
  if cfg is None:
    return []
  keys = ("bft", "seed_value", "iterations")
  stages = []
  for source in cfg.rewrite:
    stages.append(Stage(f"rewrite_{source}", (source_file(source, iterations),),
                        (f"data/rewritten_{source}.jsonl",), rewrite_stage(source), keys,
                        partials=(f"data/rewritten_{source}.partial.jsonl",)))
  for source in cfg.distill:
    stages.append(Stage(f"distill_{source}", (source_file(source, iterations),),
                        (f"data/distilled_{source}.jsonl",), distill_stage(source), keys,
                        partials=(f"data/distilled_{source}.partial.jsonl",)))
  if cfg.self_instruct.num_instructions:
    stages.append(Stage("self_instruct", ("data/seed.jsonl",), ("data/self_instruct.jsonl",),
                        self_instruct_stage, ("bft", "seed_value"), True))
  return stages


# [BF] §4's datasets: variant -> (the run file of its pairs, the source's name in counts).
VARIANTS = {
    "filter": ("curated_A{T}.jsonl", "filtered web"),
    "rewrite": ("rewritten_candidates.jsonl", "rewritten web"),
    "filter_rewrite": ("rewritten_curated.jsonl", "filtered + rewritten web"),
    "filter_distill": ("distilled_curated.jsonl", "filtered instructions + distilled answers"),
    "self_instruct": ("self_instruct.jsonl", "self-instruct"),
}


def variant_file(variant: str, iterations: int) -> str:
  """The run file of ``variant``'s pairs."""
  return "data/" + VARIANTS[variant][0].format(T=iterations)


def train_variant(variant: str):
  """The stage function training the model ``variant`` from the base on the seed (tag S_a;
  ``PipelineConfig.variant_seed_examples`` of them when set) plus ``variant``'s pairs (tag S_w),
  with ``PipelineConfig.variant_train`` ([BF] §2 step 4: cosine schedule); the counts per source
  go to the manifest."""

  def run(ctx) -> dict:
    from humpback_jax.data import templates
    from humpback_jax.eval.scaling import nested_subset
    from humpback_jax.pipeline.stages import _seed_records, _train
    records = _seed_records(ctx)
    if ctx.config.variant_seed_examples is not None:
      records = nested_subset(records, ctx.config.variant_seed_examples,
                              ctx.config.seed_value + 41)
    n_seed = len(records)
    pairs = jsonl.read_jsonl(ctx.run_dir / variant_file(variant, ctx.config.iterations))
    records += [{"id": p["id"], "instruction": p["instruction"], "response": p["response"],
                 "tags": [templates.TAG_WEB]} for p in pairs]
    out = _train(ctx, variant, records, "forward", ctx.config.variant_train)
    return dict(out, seed_examples=n_seed, augmented_examples=len(pairs),
                sources={"seed": n_seed, VARIANTS[variant][1]: len(pairs)},
                lr_schedule=ctx.config.variant_train.lr_schedule)

  return run


def variant_stages(cfg, iterations: int) -> list:
  """One training stage per ``BFConfig.variants`` entry."""
  from humpback_jax.pipeline.stages import Stage
  if cfg is None:
    return []
  return [Stage(f"train_{v}", ("data/seed.jsonl", variant_file(v, iterations)),
                (f"models/{v}/params",), train_variant(v),
                ("variant_train", "variant_seed_examples", "seed_value", "base", "iterations"),
                True)
          for v in cfg.variants]


def self_instruct_stage(ctx) -> dict:
  """The self-instruct baseline (``bft/self_instruct.py``): the base model grows instructions
  from the seed's and answers them -> ``data/self_instruct.jsonl``."""
  from humpback_jax.bft import self_instruct as si
  from humpback_jax.data import templates
  from humpback_jax.sample.sampler import Sampler, check_context_length
  cfg = ctx.config.bft.self_instruct
  seed = jsonl.read_jsonl(ctx.run_dir / "data/seed.jsonl")
  model_cfg, params = ctx.base_model
  max_prompt = min(1024, model_cfg.max_seq_len - cfg.max_new_tokens)
  check_context_length(model_cfg, max_prompt, cfg.max_new_tokens, "SelfInstructConfig")
  sampler = Sampler(model_cfg, ctx.tokenizer, max_prompt_len=max_prompt,
                    batch_size=cfg.batch_size, prompt_overflow="truncate",
                    owner="SelfInstructConfig", mesh=ctx.runtime.mesh, rules=ctx.runtime.rules)
  params = sampler.place_params(params)
  strategy = _strategy(cfg)

  def generate(prompts, keys):
    return sampler.generate_texts(params, prompts, max_new_tokens=cfg.max_new_tokens,
                                  strategy=strategy, seed=ctx.config.seed_value, keys=keys,
                                  return_finished=True)

  instructions, stats = si.grow_pool(generate, [r["instruction"] for r in seed], cfg,
                                     ctx.config.seed_value)
  answers, finished = generate([templates.forward_prompt(ctx.tokenizer, x) for x in instructions],
                               [f"self_instruct/answer/{j}" for j in range(len(instructions))])
  records = [{"id": f"si{j}", "instruction": x, "response": a.strip(), "finished": bool(f)}
             for j, (x, a, f) in enumerate(zip(instructions, answers, finished))]
  kept = [r for r in records if r["response"]]
  jsonl.write_jsonl(kept, ctx.path("data/self_instruct.jsonl"))
  return {"count": len(kept), **stats, "dropped_empty_answer": len(records) - len(kept),
          "unfinished_answers": sum(not r["finished"] for r in records)}
