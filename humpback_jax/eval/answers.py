"""A model answers the evaluation prompts: AlpacaEval ``model_outputs.json`` records.

Decoding is the papers' ([HB] §3.1, [BF] §4: T = 0.7, p = 0.9, from ``EvalConfig``), the prompt
is the forward template the models were trained with plus the inference tags ([HB] §2.3:
S_a then S_w), and prompt i of the AlpacaEval file samples with the key of
(seed, ``"alpaca<i>"``): an answer does not depend on which subset, chunk or batch it was in,
nor on how often the work was interrupted (finished chunks are appended to a partial file and
skipped on a rerun).
"""

from __future__ import annotations

from typing import Sequence

from humpback_jax import fs, jsonl
from humpback_jax.data import templates
from humpback_jax.data.eval_prompts import load_eval_prompts
from humpback_jax.eval import outputs as outputs_lib

__all__ = ["EvalPrompt", "load_prompts", "generate_answers"]

EvalPrompt = dict  # {"id": "alpaca<i>", "index": i, "instruction", "dataset", "reference"}


def load_prompts(path, num_prompts: int | None, subset_seed: int) -> list[EvalPrompt]:
  """The evaluation prompts (a seeded subset) with their reference outputs.

  Args:
    path: an AlpacaEval file (``model_outputs.json`` schema: the reference outputs are its
      ``output`` fields), or any prompt file ``data.eval_prompts`` reads (no references).
    num_prompts, subset_seed: ``outputs.subset_indices``.
  Returns:
    ``[{"id", "index", "instruction", "dataset", "reference", "reference_generator"}]`` in file
    order; ``reference`` is None for files without outputs.
  Raises:
    SeedFormatError: the file is malformed (named, with the item).
  """
  items = load_eval_prompts(path)
  refs: list[dict] | None = None
  try:
    refs = outputs_lib.read_model_outputs(path)
  except outputs_lib.SeedFormatError:
    refs = None  # a prompt-only file (JSONL prompt sets)
  keep = outputs_lib.subset_indices(len(items), num_prompts, subset_seed)
  return [{"id": f"alpaca{i}", "index": i, "instruction": items[i]["instruction"],
           "dataset": items[i]["dataset"],
           "reference": refs[i]["output"] if refs else None,
           "reference_generator": refs[i]["generator"] if refs else None} for i in keep]


def generate_answers(sampler, params, tokenizer, prompts: Sequence[EvalPrompt], *, cfg,
                     seed: int, generator: str, partial_path=None,
                     progress: bool = False) -> tuple[list[dict], dict]:
  """Answers every prompt; resumable through ``partial_path``.

  Args:
    sampler: a ``Sampler`` of the answering model (its prompt budget and batching).
    params: the model's parameters (placed).
    tokenizer: its tokenizer (its chat template renders the forward prompt).
    prompts: from ``load_prompts``.
    cfg: ``EvalConfig`` (temperature, top_p, max_new_tokens, chunk_size, tags).
    seed: the run's seed (keys: (seed, prompt id)).
    generator: the ``generator`` field written.
    partial_path: append-only JSONL of finished chunks (None: nothing kept).
  Returns:
    (records in ``prompts`` order ``{instruction, output, generator, dataset}`` — the
    ``model_outputs.json`` schema — and stats ``{count, unfinished, empty, output_tokens_mean}``).
  """
  from humpback_jax.sample.sampling import Greedy, Sampling
  strategy = Greedy() if cfg.temperature == 0 else Sampling(temperature=cfg.temperature,
                                                               top_p=cfg.top_p)

  def run_chunk(chunk):
    texts, finished = sampler.generate_texts(
        params, [templates.forward_prompt(tokenizer, p["instruction"], cfg.tags) for p in chunk],
        max_new_tokens=cfg.max_new_tokens, strategy=strategy, seed=seed,
        keys=[p["id"] for p in chunk], return_finished=True)
    return [{"id": p["id"], "output": t.strip(), "finished": bool(f)}
            for p, t, f in zip(chunk, texts, finished)]

  rows = {r["id"]: r for r in jsonl.resumable_map(
      list(prompts), run_chunk, partial_path, cfg.chunk_size, progress=progress,
      desc=f"answer {generator} (chunks)")}
  records = [{"instruction": p["instruction"], "output": rows[p["id"]]["output"],
              "generator": generator, "dataset": p["dataset"]} for p in prompts]
  lengths = [len(tokenizer.encode(r["output"], add_bos=False)) for r in records]
  stats = {"count": len(records),
           "unfinished": sum(not rows[p["id"]]["finished"] for p in prompts),
           "empty": sum(not r["output"] for r in records),
           "output_tokens_mean": round(sum(lengths) / max(1, len(lengths)), 1)}
  return records, stats


def remove_partial(partial_path) -> None:
  """Deletes a finished stage's partial file (process 0; missing is fine)."""
  from humpback_jax import hosts
  if partial_path is not None and hosts.is_writer():
    fs.path(partial_path).unlink(missing_ok=True)
