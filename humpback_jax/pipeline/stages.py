"""The Humpback pipeline stages ([HB] §2), each a small unit with declared inputs and outputs.

``prepare_seed -> prepare_web -> train_backward -> augment -> train_M0 -> curate_M0 -> train_M1
-> curate_M1 -> train_M2`` (for ``iterations = 2``). A stage reads its inputs from the run
directory and writes its outputs there (atomically, or as resumable append-only partial files),
and returns the extras recorded in the manifest (``count`` at least).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable

from humpback_jax import curate, fs, hosts, jsonl
from humpback_jax.data import templates
from humpback_jax.pipeline.context import RunContext

log = logging.getLogger(__name__)


def _no_files(config) -> tuple[str, ...]:
  return ()


@dataclasses.dataclass(frozen=True)
class Stage:
  """A pipeline step: ``run(ctx) -> manifest extras``; paths are relative to RUN_DIR.

  Attributes:
    name: stage name (``humpback-jax stages`` lists them).
    inputs: files or directories of the run it reads (written by earlier stages).
    outputs: what it writes; the stage is done when its status is "done", these exist and its
      fingerprint (``fingerprints.stage_fingerprint``) is unchanged.
    run: the work.
    config_keys: the ``PipelineConfig`` fields it reads (part of its fingerprint).
    uses_base_model: it loads the base model (its identity is part of the fingerprint).
    external_files: ``config -> paths`` of the inputs it reads outside the run (relative to
      the data root), part of the fingerprint by content.
    partials: resumable partial files; discarded when the stage reruns from other inputs.
  """

  name: str
  inputs: tuple[str, ...]
  outputs: tuple[str, ...]
  run: Callable[[RunContext], dict]
  config_keys: tuple[str, ...] = ()
  uses_base_model: bool = False
  external_files: Callable[..., tuple[str, ...]] = _no_files
  partials: tuple[str, ...] = ()


# --------------------------------------------------------------------------- data stages


def prepare_seed(ctx: RunContext) -> dict:
  """Reads, cleans and decontaminates the seed data; process 0 alone (``hosts.on_writer``),
  the others wait for its file."""
  from humpback_jax.data.seed import build_seed

  def build():
    pairs, stats = build_seed(ctx.config.seed, data_root=ctx.data_root)
    if not pairs:
      from humpback_jax.errors import InputError
      raise InputError(f"no seed pairs left of {stats.get('total_seen')} records read from "
                       f"{stats.get('sources')}; drops: {stats.get('dropped')}")
    return pairs, stats

  pairs, stats = hosts.on_writer(build, "prepare_seed") or ([], {})
  jsonl.write_jsonl(pairs, ctx.path("data/seed.jsonl"))
  ctx.write_json("data/seed_stats.json", stats)
  return {"count": len(pairs), "lengths": stats.get("lengths"), "dropped": stats.get("dropped"),
          **{k: stats.get(k) for k in ("seen", "total_seen", "total_dropped", "decontamination",
                                       "decontamination_rule", "decontaminated")}}


def prepare_web(ctx: RunContext) -> dict:
  """Reads and cleans the web corpus into segments on process 0 alone (its extraction workers
  start on that host only: ``hosts.on_writer``); the others wait for its file."""
  from humpback_jax.data.web import build_segments
  # build_segments raises WebInputError itself when nothing is left (naming why).
  segments, stats = hosts.on_writer(lambda: build_segments(
      ctx.config.web, data_root=ctx.data_root, progress=ctx.progress), "prepare_web") or ([], {})
  jsonl.write_jsonl(segments, ctx.path("data/segments.jsonl"))
  ctx.write_json("data/web_stats.json", stats)
  return {"count": len(segments), "stats": stats}


# --------------------------------------------------------------------------- training


def _train(ctx: RunContext, name: str, records: list[dict], direction: str, train_cfg) -> dict:
  """Fine-tunes the base model on ``records`` and saves ``models/<name>``.

  ``direction``: "forward" (instruction+tags -> response) or "backward" (response ->
  instruction). Every M_t starts from the base LM ([HB] §2.3). A checkpoint or final params
  made from other inputs (training data, base model, hyper-parameters) are refused with a
  message naming what changed, or, when the stage is rerun with ``--force``, discarded and
  trained again.
  """
  from humpback_jax.pipeline.training import fine_tune
  train_file = ctx.path(f"data/train_{name}.jsonl")
  jsonl.write_jsonl(records, train_file)
  model_cfg, base_params = ctx.base_model
  summary = fine_tune(
      model_config=model_cfg, base_params=base_params, tokenizer=ctx.tokenizer,
      train_file=str(train_file), direction=direction, train_config=train_cfg,
      model_dir=str(ctx.path(f"models/{name}/x").parent), seed=ctx.config.seed_value,
      progress=ctx.progress, base_model_id=ctx.base_model_id,
      on_mismatch="restart" if ctx.force else "error",
      summary_dir=str(ctx.run_dir / "tensorboard" / name), runtime=ctx.runtime)
  summary["train_seconds"] = summary.pop("seconds", None)
  return dict(summary, count=len(records))


def _load_trained(ctx: RunContext, name: str):
  """(LlamaConfig, params) of ``models/<name>``, read straight onto the run's mesh (each
  process reads only its shards)."""
  from humpback_jax.pipeline.training import load_trained
  model_cfg = ctx.base_config
  return load_trained(str(ctx.run_dir / "models" / name), model_cfg,
                      ctx.runtime.param_shardings(model_cfg))


def _backward_kind(ctx: RunContext) -> str:
  """The training direction of M_yx for ``PipelineConfig.backward_template``."""
  return {"chat": "backward", "llama2": "backward_llama2"}[ctx.config.backward_template]


def train_backward(ctx: RunContext) -> dict:
  seed = jsonl.read_jsonl(ctx.run_dir / "data/seed.jsonl")
  records = [{"id": r["id"], "instruction": r["instruction"], "response": r["response"],
              "tags": []} for r in seed]
  return dict(_train(ctx, "M_yx", records, _backward_kind(ctx), ctx.config.backward_train),
              backward_template=ctx.config.backward_template)


def train_backward_round(r: int) -> Callable[[RunContext], dict]:
  """Iterative augmentation (beyond the papers; both list it as an open question): the backward
  model of round r >= 2, ``M_yx_r<r>``, is fine-tuned from the base on the seed plus the curated
  pairs A^(r-1), reversed (response -> instruction), with ``backward_train``."""

  def run(ctx: RunContext) -> dict:
    seed = jsonl.read_jsonl(ctx.run_dir / "data/seed.jsonl")
    curated = jsonl.read_jsonl(ctx.run_dir / f"data/curated_A{r - 1}.jsonl")
    records = [{"id": x["id"], "instruction": x["instruction"], "response": x["response"],
                "tags": []} for x in seed + curated]
    out = _train(ctx, f"M_yx_r{r}", records, _backward_kind(ctx), ctx.config.backward_train)
    return dict(out, seed_examples=len(seed), augmented_examples=len(curated))

  return run


def candidates_file(t: int, augment_rounds: int) -> str:
  """The candidate pool M_t curates: round min(t + 1, augment_rounds)'s (round 1 is
  ``data/candidates.jsonl``; round r >= 2 is ``data/candidates_r<r>.jsonl``)."""
  r = min(t + 1, augment_rounds)
  return "data/candidates.jsonl" if r == 1 else f"data/candidates_r{r}.jsonl"


def _seed_records(ctx) -> list[dict]:
  seed = jsonl.read_jsonl(ctx.run_dir / "data/seed.jsonl")
  return [{"id": r["id"], "instruction": r["instruction"], "response": r["response"],
           "tags": [templates.TAG_ASSISTANT]} for r in seed]


def train_forward(t: int) -> Callable[[RunContext], dict]:
  """M_t on seed (tag S_a) + A_k^(t) (tag S_w); M0 on the seed alone."""

  def run(ctx: RunContext) -> dict:
    records = _seed_records(ctx)
    n_seed = len(records)
    if t > 0:
      curated = jsonl.read_jsonl(ctx.run_dir / f"data/curated_A{t}.jsonl")
      records += [{"id": c["id"], "instruction": c["instruction"], "response": c["response"],
                   "tags": [templates.TAG_WEB]} for c in curated]
    out = _train(ctx, f"M{t}", records, "forward", ctx.config.forward_train)
    return dict(out, seed_examples=n_seed, augmented_examples=len(records) - n_seed)

  return run


# --------------------------------------------------------------------------- sampling stages


def _sampler(ctx: RunContext, model_cfg, cfg, owner: str, params, tokenizer=None):
  """A ``Sampler`` on the run's mesh with ``cfg``'s prompt budget, batch size, overflow
  policy and batching (``GenerationConfig.batching``; bucketed for configs without one), and ``params`` placed on the mesh once (sharded by the logical rules). Refuses
  budgets beyond the model's context length (naming ``owner``'s fields).

  ``tokenizer``: the model's own when it is not the run's (an imported checkpoint).

  Returns:
    (sampler, placed params).
  """
  from humpback_jax.sample.sampler import Sampler, check_context_length
  check_context_length(model_cfg, cfg.max_prompt_len, cfg.max_new_tokens, owner)
  mesh = ctx.runtime.mesh
  batching = getattr(cfg, "batching", "bucketed")
  if batching == "auto":
    batching = "continuous" if mesh is None or mesh.size == 1 else "bucketed"
  sampler = Sampler(model_cfg, tokenizer or ctx.tokenizer, max_prompt_len=cfg.max_prompt_len,
                    batch_size=cfg.batch_size, prompt_overflow=cfg.prompt_overflow, owner=owner,
                    mesh=mesh, rules=ctx.runtime.rules, batching=batching,
                    cache_dtype=getattr(cfg, "cache_dtype", None))
  return sampler, sampler.place_params(params)


def augment(ctx: RunContext) -> dict:
  """Self-augmentation by M_yx into ``data/candidates.jsonl`` (``augment_with``)."""
  return augment_with("M_yx", "candidates")(ctx)


def augment_with(model: str, out_name: str) -> Callable[[RunContext], dict]:
  """The stage function: ``models/<model>`` augments into ``data/<out_name>.jsonl``."""
  return lambda ctx: _augment(ctx, model, out_name)


def _augment(ctx: RunContext, model: str, out_name: str) -> dict:
  """Self-augmentation ([HB] §2.1): M_yx writes one instruction x̂ per segment y.

  Resumable: finished chunks are appended to ``candidates.partial.jsonl``; a rerun skips them.
  Segment s samples with the key of (seed, s["id"]) in its fixed chunk of
  ``GenerationConfig.chunk_size`` (``jsonl.pending_chunks``), so the candidates are the same
  byte for byte however often the stage was killed and resumed.
  Dropped and counted: empty instructions, and (``GenerationConfig.drop_unfinished``)
  generations that hit ``max_new_tokens`` before an EOS (cut-off instructions). The share of
  kept candidates that read as an instruction (``data.instructions.looks_like_instruction``:
  a question or an imperative) is reported.
  """
  from humpback_jax.data.instructions import looks_like_instruction
  from humpback_jax.data.tasks import backward_prompt_for
  from humpback_jax.sample.sampling import Sampling
  cfg = ctx.config.augment
  segments = jsonl.read_jsonl(ctx.run_dir / "data/segments.jsonl")
  context = None
  if cfg.over_context == "drop":
    from humpback_jax.data.documents import drop_over_context
    segments, context = drop_over_context(
        segments, ctx.tokenizer, max_prompt_tokens=cfg.max_prompt_len,
        render=lambda t: backward_prompt_for(_backward_kind(ctx), ctx.tokenizer, t))
    if not segments:
      from humpback_jax.errors import InputError
      raise InputError(f"augment: every one of {context['documents']} segments/documents is "
                       f"over GenerationConfig.max_prompt_len={cfg.max_prompt_len} tokens "
                       f"with its backward prompt (prompt tokens {context['prompt_tokens']})")
  if cfg.max_segments is not None:  # after the drop: the first N that fit
    segments = segments[:cfg.max_segments]
  model_cfg, params = _load_trained(ctx, model)
  sampler, params = _sampler(ctx, model_cfg, cfg, "GenerationConfig", params)
  strategy = Sampling(temperature=cfg.temperature, top_p=cfg.top_p)

  def backtranslate(chunk):
    prompts = [backward_prompt_for(_backward_kind(ctx), ctx.tokenizer, s["text"]) for s in chunk]
    texts, finished = sampler.generate_texts(
        params, prompts, max_new_tokens=cfg.max_new_tokens, strategy=strategy,
        seed=ctx.config.seed_value, keys=[s["id"] for s in chunk], return_finished=True)
    return [{"id": s["id"], "instruction": templates.parse_backward_output(x),
             "response": s["text"], "header": s.get("header"), "source": s.get("source"),
             "finished": f, "raw_output": x} for s, x, f in zip(chunk, texts, finished)]

  records = jsonl.resumable_map(segments, backtranslate,
                                ctx.path(f"data/{out_name}.partial.jsonl"), cfg.chunk_size,
                                progress=bool(ctx.progress), desc="augment (chunks)")
  empty = [r for r in records if not r["instruction"]]
  unfinished = [r for r in records if r["instruction"] and not r.get("finished", True)]
  kept = [r for r in records if r["instruction"]
          and (r.get("finished", True) or not cfg.drop_unfinished)]
  if not kept:
    raise ValueError(f"augment: no candidate left of {len(records)} generations "
                     f"({len(empty)} empty, {len(unfinished)} cut at "
                     f"GenerationConfig.max_new_tokens={cfg.max_new_tokens})")
  jsonl.write_jsonl(kept, ctx.path(f"data/{out_name}.jsonl"))
  like = sum(looks_like_instruction(r["instruction"]) for r in kept)
  return {"count": len(kept), "segments": len(segments),
          "dropped_empty_instruction": len(empty),
          "unfinished": len(unfinished),
          "dropped_unfinished": len(unfinished) if cfg.drop_unfinished else 0,
          "instruction_like": like,
          "instruction_like_share": round(like / len(kept), 4),
          "truncated_prompts": sampler.stats.get("truncated_prompts", 0),
          **({"over_context": context} if context is not None else {})}


def _sanity_sample(ctx: RunContext, n: int) -> list[dict]:
  """``n`` seed pairs for the judge sanity check, a fixed sample given the run's seed."""
  import numpy as np
  seed = jsonl.read_jsonl(ctx.run_dir / "data/seed.jsonl")
  order = np.random.default_rng(ctx.config.seed_value).permutation(len(seed))
  return [seed[i] for i in order[:n]]


def curate_with(t: int, cand_file: str = "data/candidates.jsonl"
                ) -> Callable[[RunContext], dict]:
  """Self-curation by M_t: rate every candidate of A, keep score >= k -> A_k^(t+1).

  Also checks that the judge carries signal (``curate.sanity``: AUC of real seed pairs over
  the same instructions with shuffled responses) and warns when it does not.
  """

  def run(ctx: RunContext) -> dict:
    from humpback_jax.curate import rate, sanity
    cfg = ctx.config.curation
    candidates = jsonl.read_jsonl(ctx.run_dir / cand_file)
    model_cfg, params = _load_trained(ctx, f"M{t}")
    sampler, params = _sampler(ctx, model_cfg, cfg, "CurationConfig", params)
    scores = rate.rate_pairs(
        candidates, sampler=sampler, params=params, tokenizer=ctx.tokenizer, cfg=cfg,
        seed=ctx.config.seed_value + 1000 * (t + 1), progress=ctx.progress,
        partial_path=ctx.path(f"data/scores_M{t}.partial.jsonl"), desc=f"curate M{t} (chunks)")
    jsonl.write_jsonl(scores, ctx.path(f"data/scores_M{t}.jsonl"))
    by_id = {r["id"]: r["score"] for r in scores}
    curated = curate.select(candidates, by_id, cfg.threshold)
    jsonl.write_jsonl(curated, ctx.path(f"data/curated_A{t + 1}.jsonl"))
    extras = {"count": len(curated), "threshold": cfg.threshold, "mode": cfg.mode,
              **curate.curation_stats(scores)}
    if cfg.sanity_pairs:
      check = sanity.judge_sanity_check(sampler, params, ctx.tokenizer,
                                        _sanity_sample(ctx, cfg.sanity_pairs),
                                        n=cfg.sanity_pairs, seed=ctx.config.seed_value + t)
      ctx.write_json(f"data/judge_sanity_M{t}.json", check)
      if check["warning"]:
        log.warning("curate_M%d: %s", t, check["warning"])
      extras["judge_sanity"] = check
    return extras

  return run


def answer_final(ctx: RunContext) -> dict:
  """The final model answers the first N AlpacaEval instructions, tagged S_a then S_w ([HB]
  §2.3: the best inference setting), decoded with T = 0.7, p = 0.9 ([HB] §3.1). Output in
  AlpacaEval's ``model_outputs.json`` schema ``{instruction, output, generator, dataset}``."""
  import json

  from humpback_jax import paths
  from humpback_jax.sample.sampling import Sampling
  cfg = ctx.config
  from humpback_jax.data.eval_prompts import load_eval_prompts
  items = load_eval_prompts(paths.resolve(cfg.eval_file, ctx.data_root), cfg.final_samples)
  name = f"M{cfg.iterations}"
  model_cfg, params = _load_trained(ctx, name)
  sampler, params = _sampler(ctx, model_cfg, dataclasses.replace(
      cfg.augment, max_new_tokens=cfg.final_max_new_tokens), "GenerationConfig", params)
  prompts = [templates.forward_prompt(ctx.tokenizer, it["instruction"], templates.INFERENCE_TAGS)
             for it in items]
  texts, finished = sampler.generate_texts(
      params, prompts, max_new_tokens=cfg.final_max_new_tokens,
      strategy=Sampling(temperature=0.7, top_p=0.9), seed=cfg.seed_value,
      keys=[f"eval{i}" for i in range(len(items))], return_finished=True)
  generator = f"humpback-jax-{name}-{cfg.base.checkpoint.replace('/', '_')}"
  outputs = [{"instruction": it["instruction"], "output": t.strip(), "generator": generator,
              "dataset": it["dataset"]} for it, t in zip(items, texts)]
  if hosts.is_writer():
    fs.atomic_write_text(ctx.path("data/final_outputs.json"),
                         json.dumps(outputs, indent=2, ensure_ascii=False))
  return {"count": len(outputs), "unfinished": int(sum(not f for f in finished))}


def export_final(ctx: RunContext) -> dict:
  """Writes the last M_t as an HF directory that ``transformers.LlamaForCausalLM`` loads."""
  from humpback_jax.models.convert import save_hf
  name = f"M{ctx.config.iterations}"
  model_cfg, params = _load_trained(ctx, name)
  # The HF format is written by one host: the one place the whole model comes to the hosts
  # (all-gathered: a collective, so every process takes part).
  params = hosts.fetch(params)
  rel = f"models/{name}_hf"
  out = ctx.path(rel)
  if not hosts.is_writer():
    return {"count": 1, "path": rel}
  if fs.is_local(out):
    tmp = out.with_name(out.name + ".tmp")
    fs.rmtree(tmp)
    save_hf(model_cfg, params, str(tmp), tokenizer=ctx.tokenizer)
    fs.replace(tmp, out)
  else:  # save_hf writes local files: stage them, then copy (config.json last)
    import tempfile
    with tempfile.TemporaryDirectory() as d:
      save_hf(model_cfg, params, d + "/hf", tokenizer=ctx.tokenizer)
      fs.replace(d + "/hf", out, marker="config.json")
  return {"count": 1, "path": rel}


def _seed_files(config) -> tuple[str, ...]:
  c = config.seed
  files = (*c.oasst_tree_files, *c.oasst_flat_files, *c.lima_files, *c.self_instruct_files)
  return files + ((c.alpaca_eval_file,) if c.alpaca_eval_file else ())


def _web_files(config) -> tuple[str, ...]:
  return tuple(config.web.sources)


def _eval_files(config) -> tuple[str, ...]:
  return (config.eval_file,)


def pipeline_stages(iterations: int = 2, export_hf: bool = True,
                    final_samples: int = 0, evaluation=None, bft=None,
                    augment_rounds: int = 1) -> list[Stage]:
  """The stage list of [HB] §2 for ``iterations`` rounds of curation, then the evaluation
  stages of ``evaluation`` (an ``eval.config.EvalConfig``; ``eval.stages.eval_stages``)."""
  train = ("seed_value", "base")
  stages = [
      Stage("prepare_seed", (), ("data/seed.jsonl",), prepare_seed, ("seed",),
            external_files=_seed_files),
      Stage("prepare_web", (), ("data/segments.jsonl",), prepare_web, ("web",),
            external_files=_web_files),
      Stage("train_backward", ("data/seed.jsonl",), ("models/M_yx/params",), train_backward,
            ("backward_train", "backward_template") + train, True),
      Stage("augment", ("data/segments.jsonl", "models/M_yx/params"), ("data/candidates.jsonl",),
            augment, ("augment", "backward_template") + train, True,
            partials=("data/candidates.partial.jsonl",)),
      Stage("train_M0", ("data/seed.jsonl",), ("models/M0/params",), train_forward(0),
            ("forward_train",) + train, True),
  ]
  for t in range(iterations):
    pool = candidates_file(t, augment_rounds)
    if t >= 1 and t + 1 <= augment_rounds:  # iterative augmentation: a new pool for M_t
      r = t + 1
      stages.append(Stage(f"train_backward_r{r}", ("data/seed.jsonl", f"data/curated_A{t}.jsonl"),
                          (f"models/M_yx_r{r}/params",), train_backward_round(r),
                          ("backward_train", "backward_template") + train, True))
      stages.append(Stage(f"augment_r{r}", ("data/segments.jsonl", f"models/M_yx_r{r}/params"),
                          (pool,), augment_with(f"M_yx_r{r}", f"candidates_r{r}"),
                          ("augment", "backward_template") + train, True,
                          partials=(f"data/candidates_r{r}.partial.jsonl",)))
    stages.append(Stage(f"curate_M{t}", (pool, f"models/M{t}/params"),
                        (f"data/scores_M{t}.jsonl", f"data/curated_A{t + 1}.jsonl"),
                        curate_with(t, pool), ("curation",) + train, True,
                        partials=(f"data/scores_M{t}.partial.jsonl",)))
    stages.append(Stage(f"train_M{t + 1}", ("data/seed.jsonl", f"data/curated_A{t + 1}.jsonl"),
                        (f"models/M{t + 1}/params",), train_forward(t + 1),
                        ("forward_train",) + train, True))
  if final_samples:
    stages.append(Stage("answer_final", (f"models/M{iterations}/params",),
                        ("data/final_outputs.json",), answer_final,
                        ("augment", "final_samples", "final_max_new_tokens", "eval_file",
                         "iterations") + train, True, external_files=_eval_files))
  if export_hf:
    stages.append(Stage("export_hf", (f"models/M{iterations}/params",),
                        (f"models/M{iterations}_hf",), export_final, ("base", "iterations"),
                        True))
  from humpback_jax.bft.stages import bft_stages, variant_stages
  stages += bft_stages(bft, iterations) + variant_stages(bft, iterations)
  from humpback_jax.eval.stages import eval_stages
  stages += eval_stages(evaluation, iterations, augment_rounds)
  return stages
