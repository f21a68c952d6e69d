"""Training on several meshes: gradient accumulation, agreement across mesh shapes, and
resuming a checkpoint on another mesh (tiny model, 8 fake CPU devices). The helpers and
fixtures are test_train.py's."""

import jax
import numpy as np
import pytest

from humpback_jax import sharding as shd
from humpback_jax.train import train
from numerics import logit_tol, precision
from test_train import (CFG, MESH_1, MESH_8, Preempted, _run_steps,  # noqa: F401 (fixtures)
                        batches_from, one_device, params0, tcfg)


@pytest.mark.parametrize("mesh_cfg,micro", [(MESH_1, 2), (MESH_1, 8), (MESH_8, 2)])
def test_gradient_accumulation_equals_the_whole_batch(params0, one_device, mesh_cfg, micro):
  """micro_batches = A: the same update as one pass over all rows (float64, dropout off: the
  masks are drawn per micro-batch). The last row holds padding, so micro-batches have unequal
  target-token counts: normalising each by its own count would differ."""
  devices = one_device if mesh_cfg is MESH_1 else jax.devices()[:8]
  with precision("float64"):
    whole, l1 = _run_steps(params0, mesh_cfg, devices, dtype="float64", dropout_rate=0.0)
    acc, la = _run_steps(params0, mesh_cfg, devices, dtype="float64", dropout_rate=0.0,
                         micro_batches=micro)
    a, b = jax.device_get(whole.params), jax.device_get(acc.params)
  np.testing.assert_allclose(la, l1, rtol=1e-12)
  for x, y, z in zip(jax.tree.leaves(a), jax.tree.leaves(b), jax.tree.leaves(params0)):
    moved = np.max(np.abs(x - z))
    assert moved > 0
    np.testing.assert_allclose(y, x, atol=1e-9 * moved)
  with pytest.raises(ValueError, match="micro_batches"):
    tcfg(micro_batches=0)


@pytest.mark.parametrize("mesh_cfg", [shd.MeshConfig(data=1, fsdp=8, tensor=1),
                                      shd.MeshConfig(data=8, fsdp=1, tensor=1),
                                      shd.MeshConfig(data=1, fsdp=2, tensor=4)])
def test_losses_agree_across_meshes(params0, one_device, mesh_cfg):
  """The same rows per step on every mesh: losses (float32 tolerance) and parameters (float64)
  after two steps equal the one-device run's."""
  _, l8 = _run_steps(params0, mesh_cfg, jax.devices()[:8])
  _, l1 = _run_steps(params0, MESH_1, one_device)
  np.testing.assert_allclose(l8, l1, rtol=logit_tol("float32", CFG.num_layers, 1.0, 2))
  with precision("float64"):
    s8, _ = _run_steps(params0, mesh_cfg, jax.devices()[:8], dtype="float64")
    s1, _ = _run_steps(params0, MESH_1, one_device, dtype="float64")
    for a, b in zip(jax.tree.leaves(jax.device_get(s8.params)),
                    jax.tree.leaves(jax.device_get(s1.params))):
      np.testing.assert_allclose(a, b, atol=1e-9 * max(np.max(np.abs(b)), 1e-30))


def test_checkpoint_from_8_devices_resumes_on_4(params0, tmp_path):
  """Saved on a 2 x 2 x 2 mesh, restored (resharded by orbax) onto a 1 x 4 x 1 mesh of other
  devices: training continues with the same loss curve as the uninterrupted 8-device run."""
  cfg8 = tcfg(mesh=MESH_8)
  full, s_full = train(CFG, params0, batches_from, cfg8, tmp_path / "a")

  def stop_at_2(start):
    for i, b in enumerate(batches_from(start)):
      if start + i == 2:
        raise Preempted("preempted")
      yield b

  with pytest.raises(Preempted):
    train(CFG, params0, stop_at_2, cfg8, tmp_path / "b")
  cfg4 = tcfg(mesh=shd.MeshConfig(data=1, fsdp=4, tensor=1))
  resumed, s_res = train(CFG, params0, batches_from, cfg4, tmp_path / "b",
                         devices=jax.devices()[4:8])
  assert s_res["start_step"] == 2
  np.testing.assert_allclose([h["loss"] for h in s_res["history"]],
                             [h["loss"] for h in s_full["history"]],
                             rtol=logit_tol("float32", CFG.num_layers, 1.0, 2))
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
    np.testing.assert_allclose(a, b, atol=5e-5)  # 5 x lr: Adam may turn rounding into steps


@pytest.mark.parametrize("mesh_cfg", [shd.MeshConfig(data=2, fsdp=2, tensor=2)])
def test_exact_batches_train_alike_on_every_mesh(params0, one_device, mesh_cfg, tmp_path):
  """The data iterator's exact batches (batch_size examples per step, packed into rows that are
  a multiple of the mesh's data x fsdp, filler rows making up the rest) give the one-device
  run's parameters after three steps (float64, dropout off: its masks follow the row layout)."""
  from humpback_jax.data import iterator, tasks
  from test_tasks import RECORDS, ByteTok, write_jsonl

  tok = ByteTok()
  path = write_jsonl(tmp_path / "seed.jsonl", RECORDS)
  task = tasks.register_humpback_tasks(tok, path, prefix="exact_")["seed_forward"]

  def batches(row_multiple):
    it = iterator.make_train_iterator(task, tok, sequence_length=64, batch_size=5, seed=0,
                                      row_multiple=row_multiple)
    return it.rows_per_batch, [next(it) for _ in range(3)]

  rows1, b1 = batches(1)
  rows8, b8 = batches(8)
  assert rows8 % 8 == 0 and rows8 > rows1  # filler rows on the mesh
  with precision("float64"):
    s1, l1 = _run_steps(params0, MESH_1, one_device, n=3, dtype="float64", batches=b1,
                        sequence_length=64, dropout_rate=0.0)
    s8, l8 = _run_steps(params0, mesh_cfg, jax.devices()[:8], n=3, dtype="float64",
                        batches=b8, sequence_length=64, dropout_rate=0.0)
    np.testing.assert_allclose(l8, l1, rtol=1e-12)
    for a, b in zip(jax.tree.leaves(jax.device_get(s8.params)),
                    jax.tree.leaves(jax.device_get(s1.params))):
      np.testing.assert_allclose(a, b, atol=1e-9 * max(np.max(np.abs(b)), 1e-30))
