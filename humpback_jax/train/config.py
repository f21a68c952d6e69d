"""Fine-tuning hyper-parameters ([HB] §3.1, Table 18) with the unreported ones chosen and named."""

from __future__ import annotations

import dataclasses

from humpback_jax.sharding import MeshConfig

# Fields that change the trained parameters; a resumed run must agree on all of them.
# ``eval_examples`` is one of them: the held-out examples are not trained on.
MATH_FIELDS = ("learning_rate", "end_learning_rate", "warmup_steps", "weight_decay",
               "dropout_rate", "batch_size", "num_steps", "sequence_length", "adam_b1",
               "adam_b2", "adam_eps", "grad_clip", "seed", "eval_examples", "micro_batches",
               "param_rounding", "lr_schedule")
# Not math fields, like ``remat_policy``: ``attention_impl``, ``attention_chunk_size`` and
# ``scan_layers`` choose how the same function is executed (memory, speed, compile time). The
# kernels differ only in rounding order (float64: ~1e-15 relative, tests/test_attention.py),
# which is below the run-to-run nondeterminism a resumed run already accepts (XLA reductions,
# another mesh); so a run may resume with another kernel, e.g. after moving from GPU to TPU.


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """One supervised fine-tuning run (M_yx, M0, M1 or M2).

  Attributes:
    num_steps: optimizer steps. [HB] §3.1 / Table 18 (7B data scaling): 3,200 examples ->
      500 steps, 6,400-12,800 -> 600, 25,600 -> 1,200, 51,200 -> 1,600.
    sequence_length: tokens per packed row (model input length). Not reported by [HB]; 2048
      follows LIMA §3 ("texts longer than 2048 tokens are trimmed"), the setup [HB] builds on.
    learning_rate: peak (initial) learning rate, 1e-5 ([HB] §3.1).
    end_learning_rate: learning rate of the last step, 9e-6 ([HB] §3.1: "linearly decays to
      9e-6 at the end of training"); reached exactly at step ``num_steps - 1``.
    warmup_steps: linear warm-up from 0; 0 = none. Not reported; 0 as in LIMA §3.
    weight_decay: AdamW decoupled weight decay, 0.1 ([HB] Table 18). Applied to every parameter
      except RMSNorm scales (our choice, as HF Trainer's default exempts norm weights).
    dropout_rate: residual dropout in training, 0.1 ([HB] Table 18).
    batch_size: training examples per optimizer step, 32 ([HB] Table 18; 8 below 3,000
      examples, see ``paper_batch_size``). With packing the data pipeline picks the number of
      rows so that a step holds about this many examples (``data/iterator.py``).
    adam_b1, adam_b2, adam_eps: AdamW moments. Not reported by [HB]; 0.9 / 0.95 from LIMA §3
      (also LLaMA pre-training), eps 1e-8 (optax default).
    grad_clip: global-norm gradient clipping; 1.0 (not reported; LLaMA pre-training's value).
      0 disables it.
    checkpoint_every: save an orbax checkpoint every this many steps (and always at the end).
    keep_checkpoints: how many recent checkpoints to keep.
    seed: dropout RNG seed (the data order has its own seed in ``data/iterator.py``). Step ``s``
      (0-based) draws its dropout masks from ``fold_in(PRNGKey(seed), s)``.
    log_every: fetch and record metrics every this many steps.
    eval_every: every this many steps (and after the last step) compute the evaluation loss
      (dropout off, nats/token) on the held-out examples and record it as ``eval_loss`` in the
      history (``train.loop.train``); 0 = never. Needs held-out batches (``eval_examples``).
      Does not change the trained parameters.
    eval_examples: examples of the training file held out of training for the evaluation
      (chosen deterministically from the data seed, ``data.iterator.make_train_iterator``'s
      ``holdout``); 0 = none. Changes the training data, so it is a math field.
    mesh: device mesh axis sizes.
    remat_policy: what each decoder block keeps for the backward pass
      (``models.config.REMAT_POLICIES``: "none", "full", "dots_saveable",
      "dots_with_no_batch_dims_saveable"). Memory, not math: not a math field, so a run may
      resume with another policy. "full" is what lets Llama-2-7B train on 16 GiB chips
      (``tools/memory_plan.py``).
    attention_impl: the attention kernel for training and evaluation
      (``models.config.ATTENTION_IMPLS``: "dot_product", "chunked", "xla", "cudnn", "splash";
      ``models/attention.py``). "chunked" (any platform) and "splash" (TPU) never materialize
      the [rows, heads, T, T] scores; "cudnn" needs a CUDA GPU, "splash" a TPU (else a
      ``ValueError`` when the step is traced). Not a math field (see ``MATH_FIELDS``).
    attention_chunk_size: keys per chunk of "chunked" (>= 1). Not a math field.
    scan_layers: True: the decoder blocks run under one ``nn.scan`` (fast compile); False:
      unrolled (parameters keep their stacked layout, checkpoints are interchangeable). Not a
      math field.
    micro_batches: gradient accumulation: each optimizer step runs its batch as this many
      micro-batches (rows must divide by ``micro_batches x data x fsdp``), summing gradients
      and normalising by the step's total target tokens, so the update equals one pass over
      the whole batch while activations shrink by this factor. A math field only because
      dropout masks are drawn per micro-batch.
    lr_schedule: "linear" ([HB] §3.1: 1e-5 -> 9e-6 linearly) or "cosine" ([BF] §2: a cosine
      decay from ``learning_rate`` to ``end_learning_rate``; [BF] does not give the final rate).
    param_rounding: how the update is added to bfloat16 parameters (``train/rounding.py``):
      "nearest" (default) or "stochastic" (unbiased; needed when bfloat16 weights train at
      lr ~1e-5, whose updates round-to-nearest mostly loses). float32 parameters are
      unaffected either way. A math field.
    keep_train_state: keep the full train-state checkpoints (params + Adam moments) of a
      finished fine-tuning stage; by default only the final params stay (the demo's 135M
      model left 2.8 GB of checkpoints per model; 7B ~100 GB per kept step).
  """

  num_steps: int
  sequence_length: int = 2048
  learning_rate: float = 1e-5
  end_learning_rate: float = 9e-6
  warmup_steps: int = 0
  weight_decay: float = 0.1
  dropout_rate: float = 0.1
  batch_size: int = 32
  adam_b1: float = 0.9
  adam_b2: float = 0.95
  adam_eps: float = 1e-8
  grad_clip: float = 1.0
  checkpoint_every: int = 100
  keep_checkpoints: int = 2
  seed: int = 0
  log_every: int = 10
  eval_every: int = 0
  eval_examples: int = 0
  mesh: MeshConfig = MeshConfig()
  remat_policy: str = "none"
  attention_impl: str = "dot_product"
  attention_chunk_size: int = 512
  scan_layers: bool = True
  micro_batches: int = 1
  param_rounding: str = "nearest"
  # (metadata: fingerprints.IF_SET, written out to avoid importing the pipeline here)
  lr_schedule: str = dataclasses.field(default="linear", metadata={"fingerprint": "if_set"})
  keep_train_state: bool = False

  def __post_init__(self):
    if self.micro_batches < 1:
      raise ValueError(f"TrainConfig.micro_batches must be >= 1, got {self.micro_batches}")
    from humpback_jax.train.rounding import PARAM_ROUNDINGS
    if self.lr_schedule not in ("linear", "cosine"):
      raise ValueError(f"TrainConfig.lr_schedule={self.lr_schedule!r}: expected 'linear' or "
                       "'cosine'")
    if self.param_rounding not in PARAM_ROUNDINGS:
      raise ValueError(f"TrainConfig.param_rounding={self.param_rounding!r}: expected one of "
                       f"{list(PARAM_ROUNDINGS)}")
    from humpback_jax.models.config import REMAT_POLICIES, check_execution
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"TrainConfig.remat_policy={self.remat_policy!r}: expected one of "
                       f"{sorted(REMAT_POLICIES)}")
    check_execution("TrainConfig", self.attention_impl, self.attention_chunk_size,
                    self.scan_layers)
    if self.num_steps < 1:
      raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
    if not 0 <= self.warmup_steps < self.num_steps:
      raise ValueError(f"warmup_steps must be in [0, num_steps), got {self.warmup_steps}")
    if self.checkpoint_every < 1 or self.keep_checkpoints < 1 or self.log_every < 1:
      raise ValueError("checkpoint_every, keep_checkpoints and log_every must be >= 1")
    if self.eval_every < 0 or self.eval_examples < 0:
      raise ValueError(f"eval_every and eval_examples must be >= 0, got {self.eval_every} and "
                       f"{self.eval_examples}")

  def replace(self, **kw) -> "TrainConfig":
    return dataclasses.replace(self, **kw)

  def apply(self, model_config):
    """``model_config`` (a ``LlamaConfig``) with this run's execution settings: remat policy,
    attention kernel and chunk, layer scan. Dropout is not among them (the train step sets it,
    the evaluation step turns it off)."""
    return model_config.replace(remat_policy=self.remat_policy,
                                attention_impl=self.attention_impl,
                                attention_chunk_size=self.attention_chunk_size,
                                scan_layers=self.scan_layers)

  def math_dict(self) -> dict:
    """The fields that determine the trained parameters (checked when resuming).

    Returns:
      ``{field: value}`` for ``MATH_FIELDS`` (JSON-able: ints, floats and strings);
      ``param_rounding`` only when not "nearest", so fingerprints of runs made before the
      field existed stay valid.
    """
    out = {k: getattr(self, k) for k in MATH_FIELDS}
    if out["param_rounding"] == "nearest":
      del out["param_rounding"]
    if out["lr_schedule"] == "linear":
      del out["lr_schedule"]
    return out


def paper_batch_size(num_examples: int) -> int:
  """[HB] Table 18: batch 32 examples, 8 for training sets below 3,000 examples."""
  return 8 if num_examples < 3000 else 32
