"""Benchmark: SFT training-step throughput of our jitted step vs a PyTorch AdamW step, with MFU.

What is measured. One supervised fine-tuning optimizer step on a dense batch of ``--batch`` rows
x ``--seq_len`` tokens (random token ids, seeded; the targets are the inputs shifted by one, every
position weighted, one segment per row), float32 parameters, activations and optimizer state,
dropout 0 on both sides (the only difference from a real run's step: dropout masks are
random, so with them the two sides could not be compared number for number).

* Ours: ``train.step.make_train_step`` (value_and_grad of the weighted token cross-entropy,
  ``optax.clip_by_global_norm(1.0)`` + AdamW of ``train.schedule.make_optimizer`` with
  ``TrainConfig``'s defaults: lr 1e-5, betas (0.9, 0.95), eps 1e-8, weight decay 0.1 except the
  RMSNorm scales), jitted on a ``("data", "fsdp", "tensor")`` mesh over the chosen devices (on
  CPU one device), the state donated as in training. ``--remat_policy`` and
  ``--attention_impl`` are ``TrainConfig``'s.
* Peer: ``transformers.LlamaForCausalLM`` holding the same weights, in training mode with its
  default attention (``sdpa``); forward, the same loss (mean cross-entropy over the weighted
  target tokens, computed from the float32 logits), ``backward``,
  ``clip_grad_norm_(1.0)``, ``torch.optim.AdamW`` (same hyper-parameters, no decay on the norm
  weights; ``fused=True`` by default, the HF Trainer's default ``adamw_torch_fused`` on
  torch >= 2.8) ``step`` and ``zero_grad``. torch's intra-op threads default to the cores this
  process may use (the same cores XLA:CPU uses).

Checks. Both sides first run one step from the same weights on the same batch: the losses must
agree (relative difference < 1e-3, else the script raises after printing its record) and the
gradient norms before clipping and the parameter updates are compared too
(``grad_norm_rel_diff``, ``update_rel_diff`` = ||update_ours - update_peer|| / ||update_peer||).

Units. ``ours_tok_s`` / ``peer_tok_s``: trained tokens per second, ``batch * seq_len * steps /
seconds`` of ``--steps`` consecutive steps, the median over ``--repeats`` such runs per side;
ours and the peer's runs are interleaved (ours, peer, ours, ...) so that load from other
processes on a shared machine hits both alike. One untimed warm-up step per side precedes them
(after the check step). ``ratio`` = ``ours_tok_s / peer_tok_s`` (> 1: ours is faster); on a
busy machine also read ``ratio_paired`` (median over the repeats of peer time / our time of the
adjacent runs, which cancels slow load drifts) and ``ratio_best`` (fastest run of each side),
and the per-run seconds ``ours_step_s_all`` / ``peer_step_s_all``. ``compile_s``: our
``lower().compile()`` time (seconds, not in the throughput). ``mfu``:
``model_flops_per_token`` (``train/metrics.py``: 6 x matmul parameters + attention, remat not
counted) x tokens/s over ``peak_flops``, the FLOP/s of a float32 ``--peak_n`` x ``--peak_n``
matmul jitted by JAX on the same device (default 2048 on CPU, 8192 on an accelerator), measured
in this run: the best of 5 calls after each pair of timed runs, the median of those
(``peak_flops_samples``, GFLOP/s), so that it sees the same load as the steps. ``peer_mfu`` is
the peer's tokens/s over the same peak; ``peer_matmul_flops`` is the same matmul timed with
torch. ``mfu_vs_train_loop_peak`` divides by what the training loop's MFU uses
(``metrics.device_peak_flops``: the datasheet bf16 peak on TPU/GPU, a 1024 matmul on CPU).

Profile. ``--profile DIR`` writes a ``jax.profiler`` trace of ``--profile_steps`` of our steps
(``DIR/trace``, open with TensorBoard / xprof or Perfetto), the optimized HLO of the step
(``DIR/train_step.hlo.txt``), an XLA dump (``DIR/xla_dump``; run as a script the flags go into
``XLA_FLAGS`` before JAX is imported, imported as a module they are passed as compile options),
a ``torch.profiler`` table of the peer (``DIR/peer_ops.txt``), and adds a ``profile`` object to
the record: our op time per step by kind (matmul / reduction / elementwise / data movement),
a finer split of the rest (transposing fusions, buffer zero-fills, ...), by pass (forward /
backward / outside the gradient: optimizer, metrics), the shares of ops on
the vocabulary dimension (LM head, logits, loss) and on [seq_len, seq_len] attention scores, the
top ops, and the peer's op-time split (``index_hlo`` and ``summarize_trace`` say how).

Run (from the repository root; prints one JSON object on stdout)::

  .venv/bin/python tools/bench_train.py                      # SmolLM2-135M, batch 4 x 256
  .venv/bin/python tools/bench_train.py --attention_impl chunked
  .venv/bin/python tools/bench_train.py --remat_policy full
  .venv/bin/python tools/bench_train.py --profile /tmp/bench_train_profile
  .venv/bin/python tools/bench_train.py --model tiny --steps 2 --repeats 1   # seconds
  .venv/bin/python tools/bench_train.py --device gpu         # on an accelerator (tpu likewise)
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import statistics
import sys
import time
from typing import Any

DUMP_SUBDIR = "xla_dump"
# The jitted step is ``train_step_fn``'s inner ``step``: XLA names its module ``jit_step``.
STEP_MODULE_RE = "jit_step"


def _dump_flags(profile_dir: str) -> list[str]:
  return [f"--xla_dump_to={os.path.join(os.path.abspath(profile_dir), DUMP_SUBDIR)}",
          "--xla_dump_hlo_as_text", f"--xla_dump_hlo_module_re={STEP_MODULE_RE}"]


def _profile_dir_from_argv(argv: list[str]) -> str | None:
  for i, a in enumerate(argv):
    if a == "--profile" and i + 1 < len(argv):
      return argv[i + 1]
    if a.startswith("--profile="):
      return a.split("=", 1)[1]
  return None


# XLA reads XLA_FLAGS once, when JAX's backend starts: the dump flags of ``--profile`` must be in
# the environment before ``import jax`` (below). Only when run as a script: an importer (a test)
# has JAX imported already, and ``main`` then passes the same options to the compiler instead.
if __name__ == "__main__":
  _early = _profile_dir_from_argv(sys.argv[1:])
  if _early:
    os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", "")] + _dump_flags(_early))

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position

import bench_forward as bf  # pylint: disable=wrong-import-position
from humpback_jax import sharding as shd  # pylint: disable=wrong-import-position
from humpback_jax.models import convert  # pylint: disable=wrong-import-position
from humpback_jax.models.config import (  # pylint: disable=wrong-import-position
    ATTENTION_IMPLS, REMAT_POLICIES)
from humpback_jax.train import metrics as tm  # pylint: disable=wrong-import-position
from humpback_jax.train.config import TrainConfig  # pylint: disable=wrong-import-position
from humpback_jax.train.schedule import make_optimizer  # pylint: disable=wrong-import-position
from humpback_jax.train.state import (  # pylint: disable=wrong-import-position
    abstract_state, create_state, state_shardings)
from humpback_jax.train.step import make_train_step  # pylint: disable=wrong-import-position

LOSS_RTOL = 1e-3


# ------------------------------------------------------------------------------------------------
# Devices and the matmul peak.


def _platform(device: str | None) -> str:
  """``--device`` (cpu, gpu, tpu) or the platform JAX picked by default."""
  if device is None:
    return jax.default_backend()
  return {"cuda": "gpu", "rocm": "gpu"}.get(device, device)


def choose_devices(platform: str, batch: int, num_devices: int | None) -> list:
  """The devices of the mesh: one on CPU (fake host devices share the same cores), else as many
  of the platform's devices as divide ``batch`` (rows are split over ``data``)."""
  devices = jax.devices(platform)
  if num_devices is None:
    num_devices = 1 if platform == "cpu" else max(
        n for n in range(1, len(devices) + 1) if batch % n == 0)
  if not 1 <= num_devices <= len(devices) or batch % num_devices:
    raise SystemExit(f"--num_devices {num_devices}: need 1..{len(devices)} {platform} devices "
                     f"dividing --batch {batch}")
  return devices[:num_devices]


class MatmulPeak:
  """FLOP/s of a float32 [n, n] @ [n, n] matmul (2 n^3 FLOPs), JAX (jitted, on ``device``) or
  torch (on ``torch_device``): ``train/metrics.py``'s measurement (best of a few calls), repeated
  between the timed runs so that the peak sees the same machine load as the steps."""

  def __init__(self, n: int, device=None, torch_device: str | None = None):
    self.n = n
    if torch_device is None:
      a = jax.device_put(jnp.ones((n, n), jnp.float32), device)
      mm = jax.jit(jnp.matmul)
      self._call = lambda: mm(a, a).block_until_ready()
    else:
      import torch  # pylint: disable=g-import-not-at-top
      a = torch.ones((n, n), dtype=torch.float32, device=torch_device)
      sync = torch.cuda.synchronize if torch_device.startswith("cuda") else (lambda: None)

      def call():
        with torch.no_grad():
          torch.mm(a, a)
        sync()
      self._call = call
    self._call()  # compile / warm up
    self.samples: list[float] = []

  def measure(self, calls: int = 5) -> float:
    """Best FLOP/s of ``calls`` calls; recorded in ``samples``."""
    best = min(bf.timed(self._call) for _ in range(calls))
    self.samples.append(2.0 * self.n ** 3 / max(best, 1e-9))
    return self.samples[-1]

  @property
  def median(self) -> float:
    return statistics.median(self.samples)


# ------------------------------------------------------------------------------------------------
# The batch.


def make_batch(vocab_size: int, batch: int, seq_len: int, seed: int) -> dict[str, np.ndarray]:
  """Random token ids, inputs and next-token targets, all weighted, one segment per row."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, vocab_size, size=(batch, seq_len + 1), dtype=np.int32)
  ones = np.ones((batch, seq_len), np.int32)
  return {"decoder_input_tokens": ids[:, :-1].copy(),
          "decoder_target_tokens": ids[:, 1:].copy(),
          "decoder_loss_weights": ones,
          "decoder_segment_ids": ones,
          "decoder_positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32),
                                               (batch, seq_len)).copy()}


# ------------------------------------------------------------------------------------------------
# The peer: HF transformers + torch.optim.AdamW.


class PeerTrainer:
  """``LlamaForCausalLM`` + ``torch.optim.AdamW``, one SFT step per ``step()`` call."""

  def __init__(self, hf_model, batch: dict[str, np.ndarray], tcfg: TrainConfig, device: str,
               optimizer_impl: str):
    import torch  # pylint: disable=g-import-not-at-top
    self.torch = torch
    self.device = device
    self.model = hf_model.to(device).train()
    params = dict(self.model.named_parameters())  # tied weights appear once
    decay = [p for n, p in params.items() if "norm" not in n]
    no_decay = [p for n, p in params.items() if "norm" in n]  # RMSNorm weights, as decay_mask
    self.params = list(params.values())
    kw = {"fused": True} if optimizer_impl == "fused" else (
        {"foreach": True} if optimizer_impl == "foreach" else {"foreach": False})
    self.optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": tcfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=tcfg.learning_rate, betas=(tcfg.adam_b1, tcfg.adam_b2), eps=tcfg.adam_eps, **kw)
    self.grad_clip = tcfg.grad_clip
    t = lambda k, dt: torch.from_numpy(batch[k].astype(dt)).to(device)
    self.inputs = t("decoder_input_tokens", np.int64)
    self.targets = t("decoder_target_tokens", np.int64)
    self.weights = t("decoder_loss_weights", np.float32)

  def step(self) -> tuple[float, float]:
    """One optimizer step; returns (loss, gradient norm before clipping) as torch scalars."""
    torch = self.torch
    logits = self.model(input_ids=self.inputs, use_cache=False).logits
    token_loss = torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), self.targets.reshape(-1),
        reduction="none")
    w = self.weights.reshape(-1)
    loss = (token_loss * w).sum() / w.sum().clamp(min=1.0)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
    self.optimizer.step()
    self.optimizer.zero_grad(set_to_none=True)
    return loss.detach(), grad_norm.detach()

  def sync(self) -> None:
    if self.device.startswith("cuda"):
      self.torch.cuda.synchronize()

  def run(self, steps: int) -> None:
    for _ in range(steps):
      self.step()
    self.sync()

  def state_dict_numpy(self) -> dict[str, np.ndarray]:
    return {k: v.detach().float().cpu().numpy().copy()
            for k, v in self.model.state_dict().items()}


def update_rel_diff(cfg, old: dict[str, np.ndarray], ours_new_params: Any,
                    peer_new: dict[str, np.ndarray]) -> float:
  """||update_ours - update_peer|| / ||update_peer|| over every parameter (HF names)."""
  ours_new = convert.params_to_hf_state_dict(cfg, jax.device_get(ours_new_params))
  num = den = 0.0
  for k, v in ours_new.items():
    d_peer = peer_new[k].astype(np.float64) - old[k]
    num += float(np.sum((v.astype(np.float64) - peer_new[k]) ** 2))
    den += float(np.sum(d_peer ** 2))
  return float(np.sqrt(num / max(den, 1e-300)))


# ------------------------------------------------------------------------------------------------
# Profile analysis.

_COMP_RE = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s*->\s*.*\{\s*$")
_INSTR_RE = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s([a-z][a-z0-9\-]*)\(")
_OPERAND_RE = re.compile(r"%([\w.\-]+)")
_CALLS_RE = re.compile(r"(?:calls|to_apply|body|condition|branch_computations)=\{?%?([\w.\-]+)")
_OPNAME_RE = re.compile(r'op_name="([^"]*)"')
_MATMUL_OPS = {"dot", "convolution"}
_REDUCE_OPS = {"reduce", "reduce-window", "all-reduce", "reduce-scatter", "sort"}
_MOVE_OPS = {"copy", "transpose", "concatenate", "slice", "dynamic-slice", "dynamic-update-slice",
             "gather", "scatter", "pad", "broadcast", "reshape", "bitcast", "iota",
             "copy-start", "copy-done", "all-gather", "all-to-all", "collective-permute"}
# Ops whose trace events enclose their children's (counted through the children).
_CONTROL_OPS = {"while", "conditional", "call"}


def index_hlo(hlo_text: str, vocab_size: int, seq_len: int) -> dict[str, dict]:
  """Per instruction of an optimized HLO module: opcode, kind, pass, op_name and two flags.

  ``kind``: ``matmul`` (a dot/convolution, or a fusion / custom call containing one),
  ``reduction`` (contains a reduce), ``data_movement`` (copies, transposes, slices, broadcasts,
  scatters, ... only), else ``elementwise``. ``pass``: ``backward`` (op_name under
  ``transpose(...)``), ``forward`` (under ``jvp(...)``; the loss included) or ``outside_grad``
  (the optimizer, metrics, buffers without an op_name). ``vocab``: its result or an operand has
  a ``vocab_size`` dimension (LM head, logits, loss). ``scores``: ... ends in ``[seq_len,
  seq_len]`` (attention scores/probabilities, with dot_product attention). ``detail``: the
  kind, with the non-matmul ops split further: ``buffer_init_broadcast`` (a fusion that only
  broadcasts a constant: zero-filling a buffer, e.g. the stacked per-layer residuals and
  gradients of the layer scan), ``with_transpose`` (an elementwise fusion that also transposes,
  typically to feed a weight-gradient matmul), ``dynamic_update_slice``, ``reduction``,
  ``copy_slice_other_movement``, ``elementwise``.
  """
  comps: dict[str, list[tuple[str, str, list[str]]]] = collections.defaultdict(list)
  instrs: dict[str, dict] = {}
  current = None
  vocab_pat = re.compile(rf"[\[,]{vocab_size}[\],]")
  scores_pat = re.compile(rf",{seq_len},{seq_len}\]")
  for line in hlo_text.splitlines():
    m = _COMP_RE.match(line)
    if m and "=" not in line.split("(", 1)[0]:
      current = m.group(1)
      continue
    m = _INSTR_RE.match(line)
    if not m or current is None:
      continue
    name, shape, op = m.group(1), m.group(2), m.group(3)
    calls = _CALLS_RE.findall(line)
    comps[current].append((name, op, calls))
    opname = _OPNAME_RE.search(line)
    target = re.search(r'custom_call_target="([^"]*)"', line)
    instrs[name] = {"op": op, "calls": calls, "op_name": opname.group(1) if opname else "",
                    "vocab_out": bool(vocab_pat.search(shape)),
                    "scores_out": bool(scores_pat.search(shape)),
                    "operands": _OPERAND_RE.findall(line[m.end(3):].split(", metadata=")[0]),
                    "target": target.group(1) if target else ""}
  # An op touches the vocabulary dimension if its result or one of its operands has it (the
  # optimized HLO text does not print operand shapes).
  for info in instrs.values():
    for flag in ("vocab", "scores"):
      info[flag] = info[flag + "_out"] or any(
          instrs.get(o, {}).get(flag + "_out", False) for o in info["operands"])

  memo: dict[str, set[str]] = {}

  def ops_in(comp: str, depth: int = 0) -> set[str]:
    if comp in memo or depth > 50:
      return memo.get(comp, set())
    memo[comp] = set()
    out: set[str] = set()
    for _, op, calls in comps.get(comp, []):
      out.add(op)
      for c in calls:
        out |= ops_in(c, depth + 1)
    memo[comp] = out
    return out

  for info in instrs.values():
    ops = {info["op"]}
    for c in info["calls"]:
      ops |= ops_in(c)
    target = info["target"].lower()
    if ops & _MATMUL_OPS or any(s in target for s in ("matmul", "gemm", "dot", "conv")):
      kind = "matmul"
    elif ops & _REDUCE_OPS:
      kind = "reduction"
    elif info["op"] in _MOVE_OPS or (info["op"] == "fusion" and ops - {"fusion", "parameter"}
                                     <= _MOVE_OPS | {"parameter", "constant", "tuple",
                                                     "get-tuple-element"}):
      kind = "data_movement"
    else:
      kind = "elementwise"
    name = info["op_name"]
    info["kind"] = kind
    # A finer split of the non-matmul time (the usual suspects of XLA:CPU).
    core = ops - {"parameter", "constant", "bitcast", "fusion", "tuple", "get-tuple-element"}
    info["detail"] = (
        "matmul" if kind == "matmul" else
        "buffer_init_broadcast" if core <= {"broadcast"} else
        "with_transpose" if "transpose" in ops else
        "dynamic_update_slice" if "dynamic-update-slice" in ops else
        "reduction" if kind == "reduction" else
        "copy_slice_other_movement" if kind == "data_movement" else "elementwise")
    info["pass"] = ("backward" if "transpose(" in name else
                    "forward" if "jvp(" in name else "outside_grad")
  return instrs


def summarize_trace(trace_dir: str, hlo_text: str, vocab_size: int, seq_len: int, steps: int,
                    top: int = 12) -> dict:
  """Op-level time of our step from a ``jax.profiler`` trace (XLA:CPU thunks or device ops).

  Sums the durations of the trace events that carry an ``hlo_op`` stat of the step's module
  (``while``/``call`` events, which enclose their body's events, are left out), per op, then
  per kind, pass and vocabulary flag (``index_hlo``). Fractions are of the summed op time;
  on CPU ops may overlap on several threads, so the sum can exceed the wall time.
  """
  files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))
  if not files:
    return {"error": f"no .xplane.pb under {trace_dir}"}
  data = jax.profiler.ProfileData.from_file(files[-1])
  instrs = index_hlo(hlo_text, vocab_size, seq_len)
  per_op: dict[str, float] = collections.defaultdict(float)
  counts: dict[str, int] = collections.defaultdict(int)
  modules = collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      for ev in line.events:
        stats = dict(ev.stats)
        op = stats.get("hlo_op")
        if op is None:
          continue
        modules[str(stats.get("hlo_module", ""))] += 1
        if str(stats.get("hlo_module", "")).split(".")[0] != STEP_MODULE_RE:
          continue
        if instrs.get(op, {}).get("op") in _CONTROL_OPS:
          continue
        per_op[op] += ev.duration_ns * 1e-9
        counts[op] += 1
  total = sum(per_op.values())
  if not total:
    return {"error": f"no op events of module {STEP_MODULE_RE} in {files[-1]} "
                     f"(modules seen: {dict(modules)})"}
  by = {k: collections.defaultdict(float) for k in ("kind", "pass", "detail")}
  vocab = scores = 0.0
  for op, s in per_op.items():
    info = instrs.get(op)
    if info is None:
      for d in by.values():
        d["unmatched"] += s
      continue
    for k, d in by.items():
      d[info[k]] += s
    vocab += s if info["vocab"] else 0.0
    scores += s if info["scores"] else 0.0
  frac = lambda d: {k: round(v / total, 3) for k, v in sorted(d.items(), key=lambda x: -x[1])}
  top_ops = []
  for op, s in sorted(per_op.items(), key=lambda x: -x[1])[:top]:
    info = instrs.get(op, {})
    top_ops.append({"op": op, "kind": info.get("kind", "unmatched"),
                    "pass": info.get("pass", "unmatched"), "vocab": info.get("vocab", False),
                    "scores": info.get("scores", False),
                    "ms_per_step": round(1e3 * s / steps, 1), "fraction": round(s / total, 3),
                    "calls_per_step": counts[op] // steps,
                    "op_name": info.get("op_name", "")[-120:]})
  return {"op_time_s_per_step": round(total / steps, 3),
          "fraction_by_kind": frac(by["kind"]), "fraction_by_detail": frac(by["detail"]),
          "fraction_by_pass": frac(by["pass"]),
          "fraction_vocab_dim": round(vocab / total, 3),
          "fraction_attention_scores": round(scores / total, 3), "top_ops": top_ops}


def profile_peer(peer: PeerTrainer, steps: int, out_path: str, top: int = 12) -> dict:
  """``torch.profiler`` of ``steps`` peer steps: self CPU time per aten op, by kind."""
  from torch.profiler import ProfilerActivity, profile  # pylint: disable=g-import-not-at-top
  activities = [ProfilerActivity.CPU]
  if peer.device.startswith("cuda"):
    activities.append(ProfilerActivity.CUDA)
  with profile(activities=activities) as prof:
    peer.run(steps)
  table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40)
  with open(out_path, "w", encoding="utf-8") as f:
    f.write(table)
  events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
  total = sum(e.self_cpu_time_total for e in events)

  def kind(name: str) -> str:
    n = name.lower()
    if "scaled_dot_product" in n or "flash_attention" in n:
      return "attention_kernel"
    if any(s in n for s in ("::mm", "addmm", "bmm", "matmul", "linear", "mkldnn")):
      return "matmul"
    if any(s in n for s in ("adam", "foreach", "_fused")):
      return "optimizer"
    if any(s in n for s in ("softmax", "nll_loss", "cross_entropy", "sum", "mean", "norm",
                            "max", "reduce")):
      return "reduction_softmax_loss"
    if any(s in n for s in ("copy", "clone", "contiguous", "cat", "transpose", "index",
                            "embedding", "fill", "zero", "empty", "view", "reshape", "to")):
      return "data_movement"
    return "elementwise_other"

  by_kind: dict[str, float] = collections.defaultdict(float)
  for e in events:
    by_kind[kind(e.key)] += e.self_cpu_time_total
  return {"cpu_op_time_s_per_step": round(total * 1e-6 / steps, 3),
          "fraction_by_kind": {k: round(v / total, 3)
                               for k, v in sorted(by_kind.items(), key=lambda x: -x[1])},
          "top_ops": [{"op": e.key, "ms_per_step": round(e.self_cpu_time_total * 1e-3 / steps, 1),
                       "fraction": round(e.self_cpu_time_total / total, 3)}
                      for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]],
          "table": out_path}


# ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
  parser.add_argument("--model", default="smollm2",
                      help="smollm2 | tiny | checkpoint path (HF dir, .gguf, llama2.c .bin)")
  parser.add_argument("--batch", type=int, default=4, help="rows per step")
  parser.add_argument("--seq_len", type=int, default=256, help="tokens per row")
  parser.add_argument("--steps", type=int, default=1, help="consecutive steps per timed run")
  parser.add_argument("--repeats", type=int, default=5, help="timed runs per side (median)")
  parser.add_argument("--warmup", type=int, default=1,
                      help="untimed steps per side after the check step")
  parser.add_argument("--remat_policy", default="none", choices=sorted(REMAT_POLICIES))
  parser.add_argument("--attention_impl", default="dot_product", choices=ATTENTION_IMPLS)
  parser.add_argument("--attention_chunk_size", type=int, default=512)
  parser.add_argument("--unroll_layers", action="store_true",
                      help="TrainConfig.scan_layers=False (unrolled layers)")
  parser.add_argument("--device", default=None, choices=("cpu", "gpu", "tpu"),
                      help="JAX platform of our step (default: the one JAX picks)")
  parser.add_argument("--num_devices", type=int, default=None,
                      help="mesh size (default: 1 on CPU, else all devices dividing --batch)")
  parser.add_argument("--torch_threads", type=int, default=None,
                      help="torch intra-op threads (default: the cores this process may use)")
  parser.add_argument("--peer_optimizer", default="fused", choices=("fused", "foreach", "for_loop"),
                      help="torch.optim.AdamW implementation")
  parser.add_argument("--peak_n", type=int, default=None,
                      help="size of the peak matmul (default 2048 on CPU, 8192 on accelerators)")
  parser.add_argument("--profile", default=None, metavar="DIR",
                      help="write a jax.profiler trace, the step's HLO, an XLA dump and a "
                           "torch.profiler table to DIR; add a 'profile' object to the record")
  parser.add_argument("--profile_steps", type=int, default=2)
  parser.add_argument("--seed", type=int, default=0)
  return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
  args = parse_args(argv)
  if args.steps < 1 or args.repeats < 1 or args.warmup < 0:
    raise SystemExit("--steps and --repeats must be >= 1, --warmup >= 0")
  platform = _platform(args.device)
  devices = choose_devices(platform, args.batch, args.num_devices)
  import torch  # pylint: disable=g-import-not-at-top
  torch_threads = args.torch_threads or len(os.sched_getaffinity(0))
  torch.set_num_threads(torch_threads)
  peer_device = "cuda" if platform == "gpu" and torch.cuda.is_available() else "cpu"

  # Model, the same weights on both sides.
  with jax.default_device(devices[0]):
    cfg, params = bf.load_model(args.model, "float32", args.seed)
  params_host = jax.device_get(params)
  del params
  hf_model = bf.build_hf_model(cfg, params_host, "float32")

  tcfg = TrainConfig(num_steps=1000, sequence_length=args.seq_len, batch_size=args.batch,
                     dropout_rate=0.0, remat_policy=args.remat_policy,
                     attention_impl=args.attention_impl,
                     attention_chunk_size=args.attention_chunk_size,
                     scan_layers=not args.unroll_layers)
  batch_np = make_batch(cfg.vocab_size, args.batch, args.seq_len, args.seed)

  # Ours: the training step on the mesh, state donated.
  mesh = shd.make_mesh(shd.MeshConfig(data=-1), devices)
  optimizer = make_optimizer(tcfg)
  shardings = state_shardings(cfg, abstract_state(cfg, optimizer), mesh)
  state = jax.jit(lambda p: create_state(p, optimizer), out_shardings=shardings)(
      jax.device_put(params_host, shardings.params))
  batch = {k: jax.device_put(v, shd.batch_sharding(mesh)) for k, v in batch_np.items()}
  rng = jax.device_put(jax.random.PRNGKey(args.seed), shd.replicated(mesh))
  step_fn = make_train_step(cfg, tcfg, optimizer, mesh, shardings)

  compiler_options = None
  dump_dir = None
  if args.profile:
    os.makedirs(args.profile, exist_ok=True)
    dump_dir = os.path.join(os.path.abspath(args.profile), DUMP_SUBDIR)
    in_env = re.search(r"--xla_dump_to=(\S+)", os.environ.get("XLA_FLAGS", ""))
    if in_env:  # set before JAX started (run as a script, or by the caller)
      dump_dir = in_env.group(1)
    else:
      compiler_options = {"xla_dump_to": dump_dir, "xla_dump_hlo_as_text": True}
  t0 = time.perf_counter()
  lowered = step_fn.lower(state, batch, rng)
  compiled = (lowered.compile(compiler_options=compiler_options) if compiler_options
              else lowered.compile())
  compile_s = time.perf_counter() - t0

  def run_ours(n: int):
    nonlocal state
    m = None
    for _ in range(n):
      state, m = compiled(state, batch, rng)
    jax.block_until_ready((state, m))
    return m

  peer = PeerTrainer(hf_model, batch_np, tcfg, peer_device, args.peer_optimizer)

  # The check step: same weights, same batch, one step on each side.
  old_sd = peer.state_dict_numpy()
  m = run_ours(1)
  loss_ours, gn_ours = float(m["loss"]), float(m["grad_norm"])
  loss_pt, gn_pt = peer.step()
  peer.sync()
  loss_peer, gn_peer = float(loss_pt), float(gn_pt)
  upd_diff = update_rel_diff(cfg, {k: v.astype(np.float64) for k, v in old_sd.items()},
                             state.params, peer.state_dict_numpy())
  del old_sd

  # Warm-up, then interleaved timed runs.
  run_ours(args.warmup)
  peer.run(args.warmup)
  peak_n = args.peak_n or (2048 if platform == "cpu" else 8192)
  jax_peak = MatmulPeak(peak_n, device=devices[0])
  torch_peak = MatmulPeak(peak_n, torch_device=peer_device)
  runs: dict[str, list[float]] = {"ours": [], "peer": []}
  for _ in range(args.repeats):  # interleaved: ours, peer, the two matmul peaks, ...
    runs["ours"].append(bf.timed(lambda: run_ours(args.steps)))
    runs["peer"].append(bf.timed(lambda: peer.run(args.steps)))
    jax_peak.measure()
    torch_peak.measure()
  times = {k: statistics.median(v) for k, v in runs.items()}
  tokens = args.batch * args.seq_len * args.steps
  ours_tok_s, peer_tok_s = tokens / times["ours"], tokens / times["peer"]

  peak = jax_peak.median
  flops_tok = tm.model_flops_per_token(cfg, args.seq_len)
  n_dev = len(devices)
  mfu = tm.step_throughput(tokens, times["ours"], n_dev, flops_tok, peak)["mfu"]
  # The peer runs on one device (a GPU, or the host's cores): the same one-device peak.
  peer_mfu = tm.step_throughput(tokens, times["peer"], 1, flops_tok, peak)["mfu"]
  # What the training loop's MFU divides by (datasheet bf16 peak on TPU/GPU, a 1024 matmul on CPU).
  loop_peak, loop_source = tm.device_peak_flops(devices[0])

  rel = abs(loss_ours - loss_peer) / max(abs(loss_peer), 1e-12)
  info = bf.machine_info()
  record = {
      "benchmark": "train",
      "model": args.model,
      "batch": args.batch,
      "seq_len": args.seq_len,
      "dtype": "float32",
      "dropout": 0.0,
      "remat_policy": args.remat_policy,
      "attention_impl": args.attention_impl,
      "scan_layers": not args.unroll_layers,
      "ours_tok_s": round(ours_tok_s, 1),
      "peer_tok_s": round(peer_tok_s, 1),
      "ratio": round(ours_tok_s / peer_tok_s, 3),
      "ratio_paired": round(statistics.median(p / o for o, p in zip(runs["ours"], runs["peer"])),
                            3),
      "ratio_best": round(min(runs["peer"]) / min(runs["ours"]), 3),
      "mfu": round(mfu, 4),
      "peer_mfu": round(peer_mfu, 4),
      "compile_s": round(compile_s, 2),
      "ours_step_s": round(times["ours"] / args.steps, 3),
      "peer_step_s": round(times["peer"] / args.steps, 3),
      "loss_ours": loss_ours,
      "loss_peer": loss_peer,
      "loss_rel_diff": rel,
      "grad_norm_ours": gn_ours,
      "grad_norm_peer": gn_peer,
      "grad_norm_rel_diff": abs(gn_ours - gn_peer) / max(abs(gn_peer), 1e-12),
      "update_rel_diff": upd_diff,
      "model_flops_per_token": flops_tok,
      "peak_flops": peak,
      "peak_source": (f"jax float32 {peak_n}x{peak_n} matmul on {devices[0].platform}, median "
                      f"over the repeats of the best of 5"),
      "peak_flops_samples": [round(x / 1e9, 1) for x in jax_peak.samples],
      "peer_matmul_flops": torch_peak.median,
      "mfu_vs_train_loop_peak": round(tm.step_throughput(
          tokens, times["ours"], n_dev, flops_tok, loop_peak)["mfu"], 4),
      "train_loop_peak_flops": loop_peak,
      "train_loop_peak_source": loop_source,
      "ours_step_s_all": [round(t / args.steps, 3) for t in runs["ours"]],
      "peer_step_s_all": [round(t / args.steps, 3) for t in runs["peer"]],
      "steps": args.steps,
      "repeats": args.repeats,
      "warmup": args.warmup,
      "optimizer": {"lr": tcfg.learning_rate, "betas": [tcfg.adam_b1, tcfg.adam_b2],
                    "eps": tcfg.adam_eps, "weight_decay": tcfg.weight_decay,
                    "grad_clip": tcfg.grad_clip, "peer_impl": args.peer_optimizer},
      "hf_attn_implementation": getattr(peer.model.config, "_attn_implementation", None),
      "device": info["device"],
      "mesh_devices": [str(d) for d in devices],
      "peer_device": peer_device,
      "torch_threads": torch.get_num_threads(),
      "versions": {"jax": jax.__version__, "torch": torch.__version__,
                   "transformers": __import__("transformers").__version__},
  }

  if args.profile:
    hlo_text = compiled.as_text()
    with open(os.path.join(args.profile, "train_step.hlo.txt"), "w", encoding="utf-8") as f:
      f.write(hlo_text)
    trace_dir = os.path.join(args.profile, "trace")
    run_ours(1)
    with jax.profiler.trace(trace_dir):
      t0 = time.perf_counter()
      run_ours(args.profile_steps)
      wall = time.perf_counter() - t0
    ours_prof = summarize_trace(trace_dir, hlo_text, cfg.vocab_size, args.seq_len,
                                args.profile_steps)
    ours_prof["wall_s_per_step_traced"] = round(wall / args.profile_steps, 3)
    peer_prof = profile_peer(peer, args.profile_steps, os.path.join(args.profile, "peer_ops.txt"))
    record["profile"] = {"dir": os.path.abspath(args.profile), "trace_dir": trace_dir,
                         "xla_dump": dump_dir, "ours": ours_prof, "peer": peer_prof}

  print(json.dumps(record))
  if not rel < LOSS_RTOL:
    raise RuntimeError(f"first-step losses disagree: ours {loss_ours}, peer {loss_peer} "
                       f"(relative difference {rel:.2e} >= {LOSS_RTOL})")
  return record


if __name__ == "__main__":
  main()
