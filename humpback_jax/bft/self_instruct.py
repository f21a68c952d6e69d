"""A self-instruct baseline from the same seed and base model (both papers' reviews ask how
backtranslation compares with it).

Self-Instruct (Wang et al., ACL 2023, §2.2) grows an instruction pool from seed tasks: the LM
sees 8 in-context instructions (6 human-written seed tasks and 2 of its own, once it has some) in
the prompt ``SELF_INSTRUCT_PROMPT`` and continues the list; a new instruction is kept when its
ROUGE-L F against every instruction already in the pool is below 0.7 (``rouge-score``) and it
passes the paper's heuristics (length 3-150 words, no task the LM cannot do -- "image",
"graph", "picture", "file", "map", "draw", "plot", "go to" --, not starting with punctuation or
a non-ASCII letter). The same base model then answers each kept instruction (the forward
template, no tags). Every drop is counted per reason.

Determinism: round r samples with the key of (seed, ``"self_instruct/<r>"``) and its in-context
examples are drawn by ``numpy.random.default_rng((seed, r))``; the pool grows in a fixed order,
so a rerun writes the same records (the stage is cheap enough not to need a partial file).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

__all__ = ["SelfInstructConfig", "SELF_INSTRUCT_PROMPT", "parse_tasks", "filter_reason",
           "grow_pool"]

# Self-Instruct's instruction-generation prompt (its repository's `prompt_instruction.txt`
# shape): a header, then numbered tasks; the model continues after "Task <k+1>:".
SELF_INSTRUCT_PROMPT = "Come up with a series of tasks:\n\n"
BLOCKED_WORDS = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files",
                 "map", "maps", "draw", "plot", "go to")


@dataclasses.dataclass(frozen=True)
class SelfInstructConfig:
  """The baseline's size and decoding.

  Attributes:
    num_instructions: how many new instructions to grow (0: no baseline).
    max_rounds: cap on generation rounds (each one prompt per row of a batch).
    seed_in_context, machine_in_context: in-context examples per prompt (Self-Instruct: 6 human
      + 2 machine-generated once the pool has them).
    rouge_threshold: ROUGE-L F at or above which a new instruction counts as a near duplicate
      (Self-Instruct: 0.7).
    temperature, top_p: decoding of the instructions and the answers (Self-Instruct: T = 0.7,
      p = 0.5 for instructions; we use one setting, default [HB]'s T = 0.7, p = 0.9).
    max_new_tokens: budget of one generation (tokens) for the task list and for an answer.
    batch_size: prompts per round.
  """

  num_instructions: int = 0
  max_rounds: int = 50
  seed_in_context: int = 6
  machine_in_context: int = 2
  rouge_threshold: float = 0.7
  temperature: float = 0.7
  top_p: float = 0.9
  max_new_tokens: int = 192
  batch_size: int = 8


def build_prompt(examples: list[str]) -> str:
  """The prompt listing ``examples`` as tasks 1..k and opening task k+1."""
  lines = [f"Task {i}: {' '.join(x.split())}" for i, x in enumerate(examples, start=1)]
  return SELF_INSTRUCT_PROMPT + "\n".join(lines) + f"\nTask {len(examples) + 1}:"


_TASK = re.compile(r"\n\s*Task\s+\d+\s*:")


def parse_tasks(continuation: str, finished: bool = True) -> list[str]:
  """The new tasks in a continuation of ``build_prompt``: the text up to the next "Task N:"
  line, then each following task. A last task cut by the token budget (``finished`` False and
  no later "Task N:") is left out."""
  parts = _TASK.split("\n" + continuation.lstrip(" "))
  tasks = [p.strip() for p in parts]
  if not finished and tasks:
    tasks = tasks[:-1]
  return [t for t in tasks if t]


def filter_reason(text: str) -> str | None:
  """Self-Instruct's heuristics: None when ``text`` is kept, else the reason."""
  words = text.split()
  if not 3 <= len(words) <= 150:
    return "length"
  low = text.lower()
  if any(re.search(rf"\b{re.escape(w)}\b", low) for w in BLOCKED_WORDS):
    return "blocked_word"
  if not text[0].isascii() or not (text[0].isalnum()):
    return "bad_start"
  return None


def grow_pool(generate, seed_instructions: list[str], cfg: SelfInstructConfig,
              seed: int) -> tuple[list[str], dict]:
  """Grows ``cfg.num_instructions`` new instructions.

  Args:
    generate: ``(prompts, keys) -> (texts, finished)``: the base model's sampler call.
    seed_instructions: the human seed tasks.
    cfg: ``SelfInstructConfig``.
    seed: the run's seed.
  Returns:
    (new instructions in the order they were kept, stats ``{rounds, generated, kept,
    dropped: {reason: n}}``).
  Raises:
    ValueError: fewer seed instructions than ``cfg.seed_in_context``.
  """
  from rouge_score import rouge_scorer
  if len(seed_instructions) < cfg.seed_in_context:
    raise ValueError(f"self-instruct needs >= {cfg.seed_in_context} seed instructions, got "
                     f"{len(seed_instructions)}")
  scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
  pool = [" ".join(x.split()) for x in seed_instructions]
  new: list[str] = []
  dropped = {"length": 0, "blocked_word": 0, "bad_start": 0, "near_duplicate": 0}
  generated = rounds = 0
  while len(new) < cfg.num_instructions and rounds < cfg.max_rounds:
    rng = np.random.default_rng((seed, rounds))
    prompts = []
    for _ in range(cfg.batch_size):
      ex = [pool[i] for i in rng.choice(len(seed_instructions), cfg.seed_in_context,
                                        replace=False)]
      if len(new) >= cfg.machine_in_context:
        ex += [new[i] for i in rng.choice(len(new), cfg.machine_in_context, replace=False)]
      prompts.append(build_prompt(ex))
    texts, finished = generate(prompts, [f"self_instruct/{rounds}/{b}"
                                         for b in range(len(prompts))])
    rounds += 1
    for text, fin in zip(texts, finished):
      for task in parse_tasks(text, fin):
        generated += 1
        task = " ".join(task.split())
        why = filter_reason(task)
        if why is None and max(scorer.score(p, task)["rougeL"].fmeasure
                               for p in pool) >= cfg.rouge_threshold:
          why = "near_duplicate"
        if why:
          dropped[why] += 1
          continue
        pool.append(task)
        new.append(task)
        if len(new) >= cfg.num_instructions:
          break
      if len(new) >= cfg.num_instructions:
        break
  return new, {"rounds": rounds, "generated": generated, "kept": len(new), "dropped": dropped}
