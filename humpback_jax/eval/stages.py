"""The evaluation stages of a run: answer, judge, curation quality, analyses.

``answer_<name>`` (one per ``EvalConfig.models``) -> ``eval/<name>/model_outputs.json``;
``judge`` -> ``eval/judgments.jsonl`` and ``eval/results.json`` (every model against the
reference, and the ``head_to_head`` pairs); ``curation_quality`` -> precision / recall of each
A_k against the reference judge's labels ([HB] §4.3); ``analyze`` -> ``eval/analyses.json`` and
plots. Each reads only its inputs in the run directory and is resumable like the other
sampling stages (partial files of finished chunks).
"""

from __future__ import annotations

import dataclasses
import logging

from humpback_jax import hosts, jsonl, paths
from humpback_jax.eval import answers as answers_lib
from humpback_jax.eval import compare, outputs

log = logging.getLogger(__name__)

__all__ = ["eval_stages", "load_judge_model", "make_judge"]


def _outputs_path(name: str) -> str:
  return f"eval/{name}/model_outputs.json"


def _prompts(ctx):
  cfg = ctx.config.evaluation
  return answers_lib.load_prompts(paths.resolve(cfg.prompts_file, ctx.data_root),
                                  cfg.num_prompts, cfg.subset_seed)


def _generator(ctx, name: str) -> str:
  return f"humpback-jax-{name}-{ctx.config.base.checkpoint.replace('/', '_')}"


def answer_stage(name: str):
  """The stage function: model ``name`` ("M<t>" of the run, or "base") answers the prompts."""

  def run(ctx) -> dict:
    from humpback_jax.pipeline.stages import _load_trained, _sampler
    cfg = ctx.config.evaluation
    prompts = _prompts(ctx)
    imported = {e[0]: e[1:] for e in cfg.imported}
    tokenizer, generator = ctx.tokenizer, _generator(ctx, name)
    if name in imported:  # a checkpoint from outside the run: its own tokenizer, no tags
      spec, tok_spec = imported[name][0], (imported[name][1:] or (None,))[0]
      model_cfg, params, tokenizer = load_judge_model(spec, ctx.data_root, ctx.runtime,
                                                      tok_spec)
      cfg = dataclasses.replace(cfg, tags=())
      generator = f"{name}-{spec.replace('/', '_')}"
    elif name == "base":
      model_cfg, params = ctx.base_model
    else:
      model_cfg, params = _load_trained(ctx, name)
    sampler, params = _sampler(ctx, model_cfg, cfg, "EvalConfig", params,
                               tokenizer=tokenizer)
    partial = ctx.path(f"eval/{name}/answers.partial.jsonl")
    records, stats = answers_lib.generate_answers(
        sampler, params, tokenizer, prompts, cfg=cfg, seed=ctx.config.seed_value,
        generator=generator, partial_path=partial, progress=ctx.progress)
    outputs.write_model_outputs(records, ctx.path(_outputs_path(name)))
    answers_lib.remove_partial(partial)
    return dict(stats, truncated_prompts=sampler.stats.get("truncated_prompts", 0),
                temperature=cfg.temperature, top_p=cfg.top_p)

  return run


def load_judge_model(spec: str, data_root, runtime=None, tokenizer: str | None = None):
  """(LlamaConfig, params, tokenizer) of a judge given by model spec, its parameters read
  straight into their shardings on ``runtime``'s mesh where one is given (a run's
  ``RUN_DIR/models/<name>`` is read by ``pipeline.context.load_model``)."""
  from humpback_jax import fs
  from humpback_jax.pipeline.context import load_model, resolve_model_path
  if (spec.startswith("hf://") or (fs.path(spec) / "params").is_dir() or runtime is None
      or spec.endswith(".bin")):
    return load_model(spec, data_root, tokenizer=tokenizer)
  from humpback_jax.models.convert import load_checkpoint, open_checkpoint
  from humpback_jax.tokenizers import load_tokenizer
  path = resolve_model_path(spec, data_root)
  cfg = open_checkpoint(path).config
  _, params = load_checkpoint(path, shardings=runtime.param_shardings(cfg))
  return cfg, params, load_tokenizer(resolve_model_path(tokenizer, data_root) if tokenizer
                                     else path)


def make_judge(cfg, *, data_root=None, runtime=None, tokenizer_for_endpoint=None):
  """The ``PairwiseJudge`` of ``EvalConfig`` ``cfg``: the local model ``cfg.judge``, or the
  OpenAI-compatible endpoint ``cfg.judge_endpoint`` (key from ``$<judge_api_key_env>``).

  Returns:
    (judge, tokenizer used for lengths, description string for reports).
  """
  import os

  from humpback_jax.eval.judge import LocalChoiceBackend, PairwiseJudge, render_prompt
  js = cfg.judge_settings
  if cfg.judge_endpoint:
    from humpback_jax.eval.openai_backend import OpenAIChoiceBackend
    backend = OpenAIChoiceBackend(cfg.judge_endpoint, cfg.judge_model_name or "default",
                                  api_key=os.environ.get(cfg.judge_api_key_env))
    tok = tokenizer_for_endpoint
    return (PairwiseJudge(backend, tok, js), tok,
            f"{cfg.judge_endpoint} ({cfg.judge_model_name})")
  from humpback_jax.sample.sampler import Sampler
  model_cfg, params, tok = load_judge_model(cfg.judge, data_root, runtime, cfg.judge_tokenizer)
  mesh = runtime.mesh if runtime is not None else None
  sampler = Sampler(model_cfg, tok, max_prompt_len=min(js.max_prompt_len, model_cfg.max_seq_len),
                    batch_size=js.batch_size, prompt_overflow="truncate", owner="JudgeConfig",
                    mesh=mesh, rules=runtime.rules if runtime is not None else None)
  params = sampler.place_params(params)
  backend = LocalChoiceBackend(sampler, params, tok,
                               prefix_template=lambda f: render_prompt(f, f, f, js.choices))
  return PairwiseJudge(backend, tok, js), tok, cfg.judge


def judge_stage(ctx) -> dict:
  """Every model against the reference, then the head-to-head pairs; both orders each."""
  cfg = ctx.config.evaluation
  prompts = _prompts(ctx)
  if any(p["reference"] is None for p in prompts):
    from humpback_jax.errors import InputError
    raise InputError(f"{cfg.prompts_file}: holds no reference outputs (an AlpacaEval file "
                     "with an 'output' per instruction is needed to judge against it)")
  judge, tok, judge_name = make_judge(cfg, data_root=ctx.data_root, runtime=ctx.runtime,
                                      tokenizer_for_endpoint=ctx.tokenizer)
  outs = {n: [r["output"] for r in outputs.read_model_outputs(ctx.run_dir / _outputs_path(n))]
          for n in cfg.evaluated}
  refs = [p["reference"] for p in prompts]
  comparisons = [(n, cfg.reference_name, outs[n], refs) for n in cfg.evaluated]
  comparisons += [(a, b, outs[a], outs[b]) for a, b in cfg.head_to_head]
  length_fn = lambda t: len(tok.encode(t, add_bos=False))  # noqa: E731
  results = []
  all_judgments = []
  with jsonl.JsonlAppender(ctx.path("eval/judgments.partial.jsonl")) as app:
    for a, b, ea, eb in comparisons:
      pair = f"{a}_vs_{b}"
      js = compare.judge_outputs(judge, pair, prompts, ea, eb, appender=app,
                                 chunk_size=cfg.chunk_size, length_fn=length_fn,
                                 progress=ctx.progress)
      all_judgments += js
      results.append({"evaluated": a, "against": b, "pair": pair,
                      "head_to_head": b != cfg.reference_name,
                      "identical_outputs": sum(x == y for x, y in zip(ea, eb)),
                      **compare.summarize(js, length_controlled=cfg.length_controlled)})
  jsonl.write_jsonl(all_judgments, ctx.path("eval/judgments.jsonl"))
  summary = {"judge": judge_name, "reference": cfg.reference_name, "prompts": len(prompts),
             "prompts_file": cfg.prompts_file, "num_prompts": cfg.num_prompts,
             "subset_seed": cfg.subset_seed, "judge_stats": dict(judge.stats),
             "results": results}
  if cfg.scaling_sizes:
    from humpback_jax.eval import scaling
    sizes = {scaling.scale_name(n): ctx.read_json("manifest.json")["stages"][
        f"train_{scaling.scale_name(n)}"]["curated_examples"] for n in cfg.scaling_sizes}
    summary["scaling"] = scaling.scaling_summary(results, sizes)
  ctx.write_json("eval/results.json", summary)
  if hosts.is_writer():
    from humpback_jax.eval.report import write_result_plots
    write_result_plots(ctx.run_dir, summary)
    (ctx.run_dir / "eval/judgments.partial.jsonl").unlink(missing_ok=True)
  return {"count": len(all_judgments), "judge": judge_name,
          "win_rates": {r["pair"]: [round(r["win_rate"], 2), round(r["standard_error"] or 0, 2)]
                        for r in results},
          **{k: v for k, v in judge.stats.items()}}


def labels_file(pool: str, partial: bool = False) -> str:
  """The reference labels of candidate pool ``pool`` (``data/candidates.jsonl`` ->
  ``eval/reference_labels.jsonl``; ``data/candidates_r<r>.jsonl`` ->
  ``eval/reference_labels_r<r>.jsonl``)."""
  stem = pool.rsplit("/", 1)[-1][:-len(".jsonl")].replace("candidates", "reference_labels")
  return f"eval/{stem}{'.partial' if partial else ''}.jsonl"


def quality_pools(iterations: int, augment_rounds: int) -> dict[str, list[int]]:
  """Candidate pool file -> the iterations t whose M_t curates it
  (``pipeline.stages.candidates_file``: one pool unless ``augment_rounds`` > 1)."""
  from humpback_jax.pipeline.stages import candidates_file
  pools: dict[str, list[int]] = {}
  for t in range(iterations):
    pools.setdefault(candidates_file(t, augment_rounds), []).append(t)
  return pools


def curation_quality_stage(ctx) -> dict:
  """Precision / recall of each iteration's selection A_k^(t+1) (M_t's score >= k) against
  the reference judge's labels (its score >= k) on a seeded sample of the candidates M_t
  curated ([HB] §4.3: M0 0.44 / 0.09, M1 0.52 / 0.44, GPT-4 0.88 / 0.92 on 250 labelled pairs).
  With iterative augmentation (``PipelineConfig.augment_rounds`` > 1) each pool is sampled and
  labelled on its own (``eval/reference_labels[_r<r>].jsonl``): M_t's scores are compared with
  labels of the instructions it scored. The reference is ``EvalConfig.judge`` (same prompt,
  log-prob read-out) or the endpoint ``EvalConfig.judge_endpoint`` (its written score,
  parsed). The top-level ``count`` / ``unlabelled`` / ``reference_positive`` sum the pools."""
  import numpy as np
  cfg = ctx.config.evaluation
  k = ctx.config.curation.threshold
  out = {"count": 0, "threshold": k,
         "reference": cfg.judge or f"{cfg.judge_endpoint} ({cfg.judge_model_name})",
         "unlabelled": 0, "reference_positive": 0, "pools": {}, "iterations": {}}
  for pool, iterations in quality_pools(ctx.config.iterations,
                                        ctx.config.augment_rounds).items():
    candidates = jsonl.read_jsonl(ctx.run_dir / pool)
    order = np.random.default_rng(ctx.config.seed_value + 7).permutation(len(candidates))
    sample = [candidates[i] for i in sorted(order[:cfg.quality_sample])]
    partial = ctx.path(labels_file(pool, partial=True))
    if cfg.judge:
      labels = _local_reference_labels(ctx, sample, partial)
    else:  # an OpenAI-compatible endpoint writes its rating; the parsed score is the label
      labels = _endpoint_reference_labels(ctx, sample, partial)
    by_id = {c["id"]: c for c in sample}
    labels = [dict(r, instruction=by_id[r["id"]]["instruction"]) for r in labels]
    jsonl.write_jsonl(labels, ctx.path(labels_file(pool)))
    if hosts.is_writer():
      partial.unlink(missing_ok=True)
    truth = {r["id"]: r["score"] is not None and r["score"] >= k for r in labels}
    entry = {"count": len(sample), "labels": labels_file(pool),
             "unlabelled": sum(1 for r in labels if r["score"] is None),
             "reference_positive": int(sum(truth.values())),
             "curated_by": [f"M{t}" for t in iterations]}
    out["pools"][pool] = entry
    for key in ("count", "unlabelled", "reference_positive"):
      out[key] += entry[key]
    for t in iterations:
      scores = {r["id"]: r.get("score") for r in
                jsonl.read_jsonl(ctx.run_dir / f"data/scores_M{t}.jsonl")}
      pred = {i: scores.get(i) is not None and scores[i] >= k for i in truth}
      out["iterations"][f"M{t}"] = dict(precision_recall(pred, truth), pool=pool)
  ctx.write_json("eval/curation_quality.json", out)
  return out


def _local_reference_labels(ctx, sample: list[dict], partial) -> list[dict]:
  """The reference model ``EvalConfig.judge`` rates ``sample`` with the curation prompt and
  the log-prob read-out (``CurationConfig``, mode "logprob"); resumable."""
  from humpback_jax.curate import rate
  from humpback_jax.sample.sampler import Sampler
  cfg, cur = ctx.config.evaluation, ctx.config.curation
  model_cfg, params, tok = load_judge_model(cfg.judge, ctx.data_root, ctx.runtime,
                                            cfg.judge_tokenizer)
  sampler = Sampler(model_cfg, tok, max_prompt_len=min(cur.max_prompt_len, model_cfg.max_seq_len),
                    batch_size=cur.batch_size, prompt_overflow="truncate",
                    owner="CurationConfig", mesh=ctx.runtime.mesh, rules=ctx.runtime.rules)
  params = sampler.place_params(params)
  return rate.rate_pairs(sample, sampler=sampler, params=params, tokenizer=tok,
                         cfg=dataclasses.replace(cur, mode="logprob"),
                         seed=ctx.config.seed_value, progress=ctx.progress,
                         partial_path=partial,
                         desc="reference labels (chunks)")


def _endpoint_reference_labels(ctx, sample: list[dict], partial) -> list[dict]:
  """``EvalConfig.judge_endpoint`` answers the curation prompt ([HB] Table 19) greedily, up to
  512 tokens; its "Score: N" is parsed (``curate.parse``; None when there is none, counted as
  ``unlabelled``). Resumable by chunks of ``CurationConfig.chunk_size``."""
  import os

  from humpback_jax.curate.parse import parse_score
  from humpback_jax.data.templates import RATING_PROMPT
  from humpback_jax.eval.openai_backend import OpenAIChoiceBackend
  cfg, cur = ctx.config.evaluation, ctx.config.curation
  backend = OpenAIChoiceBackend(cfg.judge_endpoint, cfg.judge_model_name or "default",
                                api_key=os.environ.get(cfg.judge_api_key_env))

  def rate(chunk):
    texts = backend.generate([RATING_PROMPT.format(instruction=c["instruction"],
                                                   output=c["response"]) for c in chunk],
                             max_tokens=512, temperature=0.0, seed=ctx.config.seed_value)
    return [{"id": c["id"], "score": parse_score(t), "raw_output": t}
            for c, t in zip(chunk, texts)]

  return jsonl.resumable_map(sample, rate, partial, cur.chunk_size)


def precision_recall(predicted: dict, truth: dict) -> dict:
  """Precision and recall of boolean selections ``predicted`` against labels ``truth`` (same
  keys): ``{selected, relevant, true_positive, precision, recall}`` (None when undefined)."""
  tp = sum(1 for i, p in predicted.items() if p and truth[i])
  sel = sum(1 for p in predicted.values() if p)
  rel = sum(1 for t in truth.values() if t)
  return {"selected": sel, "relevant": rel, "true_positive": tp,
          "precision": tp / sel if sel else None, "recall": tp / rel if rel else None}


def analyze_stage(ctx) -> dict:
  """The data analyses of the run's datasets (``eval.run_analyses.analyze_run``): counts and
  lengths ([HB] Table 2), score histograms per iteration, trigram diversity, verb-noun
  structure ([HB] Fig. 4), MAUVE seed vs A_last on the base model's hidden states."""
  from humpback_jax.eval import mauve_score, run_analyses
  model_cfg, params = ctx.base_model
  featurize = mauve_score.make_featurizer(params, model_cfg, ctx.tokenizer,
                                          name=f"{ctx.config.base.checkpoint} final hidden state")
  cfg = ctx.config.evaluation
  result = run_analyses.analyze_run(ctx.run_dir, ctx.tokenizer, mauve_features=featurize,
                                    datasets=dict(cfg.analysis_datasets) or None,
                                    mauve_pairs=[tuple(p) for p in cfg.mauve_pairs] or None,
                                    out_dir=ctx.run_dir / "eval")
  return {"count": len(result.get("datasets", {})), "analyses": "eval/analyses.json"}


def _prompts_file(config) -> tuple[str, ...]:
  return (config.evaluation.prompts_file,)


def eval_stages(cfg, iterations: int, augment_rounds: int = 1) -> list:
  """The evaluation stages for ``EvalConfig`` ``cfg`` (none when it names no model) of a run
  with ``iterations`` curation rounds and ``augment_rounds`` candidate pools."""
  from humpback_jax.pipeline.stages import Stage
  if cfg is None or not cfg.models:
    return []
  keys = ("evaluation", "seed_value", "base")
  stages = []
  from humpback_jax.eval import scaling
  for n in cfg.scaling_sizes:
    stages.append(Stage(f"train_{scaling.scale_name(n)}",
                        ("data/seed.jsonl", f"data/curated_A{iterations}.jsonl"),
                        (f"models/{scaling.scale_name(n)}/params",),
                        scaling.train_scale(n, iterations),
                        ("forward_train", "iterations", "seed_value", "base"),
                        True))
  for name in cfg.evaluated:
    imported = {e[0] for e in cfg.imported}
    inputs = () if name == "base" or name in imported else (f"models/{name}/params",)
    stages.append(Stage(f"answer_{name}", inputs, (_outputs_path(name),), answer_stage(name),
                        keys, True, external_files=_prompts_file,
                        partials=(f"eval/{name}/answers.partial.jsonl",)))
  if cfg.judged:
    stages.append(Stage("judge", tuple(_outputs_path(n) for n in cfg.evaluated),
                        ("eval/judgments.jsonl", "eval/results.json"), judge_stage, keys, False,
                        external_files=_prompts_file,
                        partials=("eval/judgments.partial.jsonl",)))
  if cfg.quality_sample and cfg.judged:
    pools = quality_pools(iterations, augment_rounds)
    stages.append(Stage("curation_quality",
                        tuple(pools) + tuple(f"data/scores_M{t}.jsonl" for t in range(iterations)),
                        ("eval/curation_quality.json",), curation_quality_stage,
                        keys + ("curation", "iterations", "augment_rounds"), False,
                        partials=tuple(labels_file(p, partial=True) for p in pools)))
  if cfg.analyses:
    inputs = ("data/seed.jsonl", "data/candidates.jsonl") + tuple(
        f"data/scores_M{t}.jsonl" for t in range(iterations)) + tuple(
            f"data/curated_A{t + 1}.jsonl" for t in range(iterations)) + tuple(
                rel for _, rel in cfg.analysis_datasets)
    stages.append(Stage("analyze", inputs, ("eval/analyses.json",), analyze_stage,
                        ("evaluation", "base", "iterations"), True))
  return stages
