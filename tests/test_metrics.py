"""Tests of train/metrics.py: FLOPs/token, peak FLOP/s, throughput/MFU, TensorBoard scalars."""

import glob
import math
import os
import types

import jax
import numpy as np
import pytest

from humpback_jax.models import llama
from humpback_jax.models.config import LlamaConfig
from humpback_jax.train import metrics

LLAMA2_7B = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                        num_layers=32, num_heads=32, num_kv_heads=32)


def test_7b_flops_per_token_by_hand():
  # Per layer: q,k,v,o 4 * 4096^2 = 67,108,864; gate,up,down 3 * 4096 * 11008 = 135,266,304.
  per_layer = 67_108_864 + 135_266_304
  assert per_layer == 202_375_168
  lm_head = 4096 * 32000  # 131,072,000; the input embedding is a lookup: not counted.
  matmul = 32 * per_layer + lm_head
  assert matmul == 6_607_077_376
  assert metrics.matmul_params(LLAMA2_7B) == matmul
  # Plus the input embedding and the norms gives the published 6.74 B parameters.
  assert matmul + 4096 * 32000 + (2 * 32 + 1) * 4096 == 6_738_415_616
  # 6 * 6,607,077,376 = 39,642,464,256; attention 12 * 32 * 4096 * 2048 = 3,221,225,472.
  assert metrics.model_flops_per_token(LLAMA2_7B, 2048) == 42_863_689_728
  # At 4096: attention 6,442,450,944.
  assert metrics.model_flops_per_token(LLAMA2_7B, 4096) == 46_084_915_200
  # Tying the embedding does not remove the output projection's FLOPs.
  tied = LLAMA2_7B.replace(tie_word_embeddings=True)
  assert metrics.model_flops_per_token(tied, 2048) == 42_863_689_728
  with pytest.raises(ValueError):
    metrics.model_flops_per_token(LLAMA2_7B, 0)


def _kernel_params(config: LlamaConfig) -> tuple[int, int]:
  """(sum of kernel sizes, embedding size) of init_params' abstract shapes."""
  abstract = jax.eval_shape(lambda: llama.init_params(config, jax.random.PRNGKey(0)))
  kernels = embed = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]:
    names = [getattr(p, "key", None) for p in path]
    if names[-1] == "kernel":
      kernels += math.prod(leaf.shape)
    elif names[-1] == "embedding":
      embed += math.prod(leaf.shape)
  return kernels, embed


@pytest.mark.parametrize("tied,head_dim", [(False, None), (True, None), (False, 16)])
def test_flops_match_counted_params(tied, head_dim):
  cfg = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_layers=3,
                    num_heads=4, num_kv_heads=2, head_dim=head_dim, tie_word_embeddings=tied)
  kernels, embed = _kernel_params(cfg)
  # Untied: lm_head is a kernel. Tied: the embedding doubles as the output projection.
  expected_matmul = kernels + (embed if tied else 0)
  assert metrics.matmul_params(cfg) == expected_matmul
  seq = 64
  attention = 12 * 3 * 4 * cfg.head_dim * seq
  assert metrics.model_flops_per_token(cfg, seq) == 6 * expected_matmul + attention


@pytest.mark.parametrize("kind,key", [
    ("TPU v4", "TPU v4"), ("TPU v5 lite", "TPU v5e"), ("TPU v5e", "TPU v5e"),
    ("TPU v5", "TPU v5p"), ("TPU v5p", "TPU v5p"), ("TPU v6 lite", "TPU v6e"),
    ("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA H200", "H200"),
    ("NVIDIA A100-SXM4-80GB", "A100")])
def test_peak_flops_table(kind, key):
  flops, source = metrics.device_peak_flops(types.SimpleNamespace(device_kind=kind))
  assert flops == metrics.PEAK_FLOPS_PER_CHIP[key]
  assert key in source and "hardware.md" in source


def test_peak_flops_measured_on_cpu():
  flops, source = metrics.device_peak_flops()
  assert jax.devices()[0].platform == "cpu"
  assert source == metrics.MEASURED_SOURCE
  assert 1e8 < flops < 1e14
  assert metrics.device_peak_flops() == (flops, source)  # cached
  fake = types.SimpleNamespace(device_kind="TPU v2")
  with pytest.raises(ValueError, match="TPU v2"):
    metrics.device_peak_flops(fake, measured_cpu=False)
  assert metrics.device_peak_flops(fake)[0] > 0


def test_step_throughput():
  out = metrics.step_throughput(tokens=8 * 2048, seconds=2.0, num_devices=8,
                                flops_per_token=4e10, peak_flops_per_device=197e12)
  assert out["tokens_per_second"] == 8192.0
  assert out["tokens_per_second_per_device"] == 1024.0
  assert out["model_flops_per_second"] == 8192.0 * 4e10
  assert out["mfu"] == pytest.approx(8192.0 * 4e10 / (8 * 197e12))
  for bad in [dict(seconds=0.0), dict(num_devices=0), dict(peak_flops_per_device=0.0)]:
    args = {**dict(tokens=1, seconds=1.0, num_devices=1, flops_per_token=1.0,
                   peak_flops_per_device=1.0), **bad}
    with pytest.raises(ValueError):
      metrics.step_throughput(**args)


def _read_scalars(logdir):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  files = glob.glob(os.path.join(logdir, "events.out.tfevents.*"))
  assert len(files) == 1, files
  got = []
  for event in tf.compat.v1.train.summary_iterator(files[0]):
    for v in event.summary.value:
      value = float(tf.make_ndarray(v.tensor)) if v.HasField("tensor") else v.simple_value
      got.append((event.step, v.tag, value))
  return got


@pytest.mark.parametrize("backend", ["default", "core_tf"])
def test_summary_writer_roundtrip(tmp_path, monkeypatch, backend):
  # "default" is clu's writer where tensorboard is installed, else the core-TF fallback;
  # "core_tf" always tests the fallback.
  if backend == "core_tf":
    monkeypatch.setattr(metrics, "_make_backend", metrics._TFScalarWriter)
  logdir = tmp_path / "tensorboard" / "m0"
  with metrics.SummaryWriter(logdir) as w:
    assert w.enabled
    w.write_scalars(1, {"loss": 2.5, "learning_rate": np.float32(1e-5), "tokens": 4096})
    w.write_scalars(2, {"loss": jax.numpy.asarray(2.25), "grad_norm": float("nan"),
                        "mfu": float("inf"), "note": "text", "none": None})
    assert w.skipped == 4 and w.errors == 0
    w.flush()
  assert not w.enabled
  w.write_scalars(3, {"loss": 1.0})  # after close: dropped, no error
  got = _read_scalars(str(logdir))
  assert [(s, t) for s, t, _ in got] == [(1, "loss"), (1, "learning_rate"), (1, "tokens"),
                                         (2, "loss")]
  values = [v for _, _, v in got]
  np.testing.assert_allclose(values, [2.5, 1e-5, 4096.0, 2.25], rtol=1e-6)


def test_summary_writer_other_process_writes_nothing(tmp_path, monkeypatch):
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  logdir = tmp_path / "tb"
  with metrics.SummaryWriter(logdir) as w:
    assert not w.enabled
    w.write_scalars(1, {"loss": 1.0, "bad": float("nan")})
    w.flush()
  assert w.skipped == 1
  assert not logdir.exists()


def test_summary_writer_unwritable_dir_does_not_raise(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  w = metrics.SummaryWriter(blocker / "tb")
  w.write_scalars(1, {"loss": 1.0})
  w.flush()
  w.close()
  assert not w.enabled and w.errors >= 1
