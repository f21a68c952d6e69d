"""Sharding rules, schedule, loss, the sharded train step, checkpoints/resume (``train/``)."""

from __future__ import annotations

import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from humpback_jax import sharding as shd
from numerics import logit_tol, precision
from humpback_jax.models.config import LlamaConfig
from humpback_jax.models.llama import Llama, init_params, param_logical_axes
from humpback_jax.train import TrainConfig, train
from humpback_jax.train.checkpoint import Checkpointer
from humpback_jax.train.loss import weighted_cross_entropy
from humpback_jax.train.schedule import learning_rate_schedule, make_optimizer
from humpback_jax.train.state import TrainState, abstract_state, state_shardings
from humpback_jax.train.step import make_train_step

CFG = LlamaConfig(vocab_size=260, hidden_size=32, intermediate_size=64, num_layers=2,
                  num_heads=4, num_kv_heads=2)
SEQ = 32
MESH_8 = shd.MeshConfig(data=2, fsdp=2, tensor=2)
MESH_1 = shd.MeshConfig(data=1)
@pytest.fixture(scope="module")
def one_device():
  return jax.devices()[:1]


@pytest.fixture(scope="module")
def params0():
  return jax.device_get(jax.jit(lambda k: init_params(CFG, k))(jax.random.PRNGKey(0)))


def synthetic_batch(index: int, rows: int = 8, length: int = SEQ) -> dict[str, np.ndarray]:
  """Two packed examples per row, loss on the second half of each; padding in the last row."""
  rng = np.random.default_rng(index)
  half = length // 2
  tokens = rng.integers(3, CFG.vocab_size, size=(rows, length + 1)).astype(np.int32)
  seg = np.where(np.arange(length) < half, 1, 2)[None].repeat(rows, 0).astype(np.int32)
  seg[-1, -4:] = 0
  pos = np.where(np.arange(length) < half, np.arange(length), np.arange(length) - half)
  pos = (pos[None].repeat(rows, 0) * (seg > 0)).astype(np.int32)
  w = (((pos >= half // 2)) & (seg > 0)).astype(np.int32)
  inp = tokens[:, :-1] * (seg > 0)
  tgt = tokens[:, 1:] * (seg > 0)
  return {"decoder_input_tokens": inp, "decoder_target_tokens": tgt, "decoder_loss_weights": w,
          "decoder_segment_ids": seg, "decoder_positions": pos}


def batches_from(start: int):
  i = start
  while True:
    yield synthetic_batch(i)
    i += 1


def tcfg(**kw) -> TrainConfig:
  base = dict(num_steps=4, sequence_length=SEQ, checkpoint_every=2, keep_checkpoints=2,
              log_every=1, mesh=MESH_1)
  return TrainConfig(**{**base, **kw})


# ---------------------------------------------------------------------------- sharding rules


def test_rules_cover_every_model_axis_and_reject_unknown_names():
  names = {n for spec in jax.tree.leaves(param_logical_axes(CFG),
                                         is_leaf=lambda x: isinstance(x, P)) for n in spec}
  covered = {n for n, _ in shd.DEFAULT_LOGICAL_AXIS_RULES}
  assert names - {None} <= covered
  with pytest.raises(shd.UnknownLogicalAxisError, match="no sharding rule"):
    shd.logical_to_mesh_spec(("embed", "experts"))
  rules = [r for r in shd.DEFAULT_LOGICAL_AXIS_RULES if r[0] != "mlp"]
  mesh = shd.make_mesh(MESH_8)
  with pytest.raises(shd.UnknownLogicalAxisError, match="mlp"):
    shd.param_shardings(CFG, mesh, rules)


def test_mesh_config_and_param_shardings():
  assert shd.MeshConfig().resolve(8) == (8, 1, 1)
  assert shd.MeshConfig(data=-1, tensor=2).resolve(8) == (4, 1, 2)
  with pytest.raises(ValueError):
    shd.MeshConfig(data=3, fsdp=1, tensor=1).resolve(8)
  with pytest.raises(ValueError):
    shd.MeshConfig(data=-1, fsdp=-1).resolve(8)
  mesh = shd.make_mesh(MESH_8)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  s = shd.param_shardings(CFG, mesh)["params"]
  assert s["embed_tokens"]["embedding"].spec == P("tensor", "fsdp")
  assert s["layers"]["attn"]["q_proj"]["kernel"].spec == P(None, "fsdp", "tensor", None)
  assert s["layers"]["mlp"]["down_proj"]["kernel"].spec == P(None, "tensor", "fsdp")
  assert s["final_norm"]["scale"].spec == P(None)
  assert shd.batch_sharding(mesh).spec == P(("data", "fsdp"), None)
  # an indivisible dimension (3 kv heads on tensor=2) is replicated, or rejected when strict
  odd = CFG.replace(num_heads=6, num_kv_heads=3, hidden_size=36)
  k = shd.param_shardings(odd, mesh)["params"]["layers"]["attn"]["k_proj"]["kernel"]
  assert k.spec == P(None, "fsdp", None, None)
  with pytest.raises(ValueError, match="not divisible"):
    shd.param_shardings(odd, mesh, strict=True)


# ---------------------------------------------------------------------------- schedule / loss


def test_schedule_ends_exactly_at_9e6():
  cfg = TrainConfig(num_steps=500)
  lr = learning_rate_schedule(cfg)
  eps = float(np.finfo(np.float32).eps)
  assert abs(float(lr(0)) - 1e-5) <= 1e-5 * eps
  assert abs(float(lr(499)) - 9e-6) <= 9e-6 * eps  # the LAST step uses 9e-6, not ~0
  for k in (1, 100, 250, 498):
    np.testing.assert_allclose(float(lr(k)), 1e-5 - 1e-6 * k / 499, rtol=1e-6)
  assert float(lr(10_000)) == pytest.approx(9e-6)  # never below the end value
  w = learning_rate_schedule(TrainConfig(num_steps=10, warmup_steps=2))
  assert float(w(0)) == 0.0 and float(w(2)) == pytest.approx(1e-5)
  assert float(w(9)) == pytest.approx(9e-6, rel=1e-6)


def test_cosine_schedule_hand_computed():
  """[BF] §2's cosine schedule: lr(k) = end + (peak - end) (1 + cos(pi k / K)) / 2, K = the
  last step; the peak at step 0 and the end rate exactly at the last step."""
  cfg = TrainConfig(num_steps=101, learning_rate=1e-5, end_learning_rate=1e-6,
                    lr_schedule="cosine")
  lr = learning_rate_schedule(cfg)
  for k in (0, 1, 25, 50, 99, 100):
    want = 1e-6 + (1e-5 - 1e-6) * (1 + np.cos(np.pi * k / 100)) / 2
    np.testing.assert_allclose(float(lr(k)), want, rtol=1e-5)
  assert "lr_schedule" in cfg.math_dict()
  assert "lr_schedule" not in TrainConfig(num_steps=5).math_dict()
  with pytest.raises(ValueError, match="lr_schedule"):
    TrainConfig(num_steps=5, lr_schedule="step")


def test_config_fields_added_later_leave_digests_unchanged():
  import dataclasses as dc

  from humpback_jax.pipeline import fingerprints
  d = fingerprints.config_dict(TrainConfig(num_steps=5))
  assert "lr_schedule" not in d and set(d) == {f.name for f in dc.fields(TrainConfig)} - {
      "lr_schedule"}
  assert fingerprints.config_dict(TrainConfig(num_steps=5, lr_schedule="cosine"))[
      "lr_schedule"] == "cosine"


def test_weighted_cross_entropy():
  logits = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 7))
  targets = jnp.array([[1, 2, 3, 4, 5], [6, 0, 1, 2, 3]])
  weights = jnp.array([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]])
  loss, m = weighted_cross_entropy(logits, targets, weights)
  logp = jax.nn.log_softmax(logits)
  ce = -jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(loss, jnp.sum(ce * weights) / 5, rtol=1e-6)
  assert float(m["num_tokens"]) == 5
  acc = jnp.sum((jnp.argmax(logits, -1) == targets) * weights) / 5
  np.testing.assert_allclose(m["accuracy"], acc)
  zero, _ = weighted_cross_entropy(logits, targets, jnp.zeros_like(weights))
  assert float(zero) == 0.0


# ---------------------------------------------------------------------------- sharded step


def _run_steps(params0, mesh_cfg, devices, n=2, dtype="float32", batches=None, **train_kw):
  cfg = tcfg(mesh=mesh_cfg, **train_kw)
  model_cfg = CFG.replace(dtype=dtype, param_dtype=dtype)
  mesh = shd.make_mesh(mesh_cfg, devices)
  opt = make_optimizer(cfg)
  abstract = abstract_state(model_cfg, opt)
  shardings = state_shardings(model_cfg, abstract, mesh)
  step = make_train_step(model_cfg, cfg, opt, mesh, shardings)
  params = jax.device_put(jax.tree.map(lambda x: np.asarray(x, dtype), params0),
                          shardings.params)
  state = TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), shd.replicated(mesh)),
                     params=params,
                     opt_state=jax.jit(opt.init, out_shardings=shardings.opt_state)(params))
  losses = []
  with jax.set_mesh(mesh):
    for i in range(n):
      batch = synthetic_batch(i) if batches is None else batches[i]
      state, m = step(state, batch, jax.random.PRNGKey(cfg.seed))
      losses.append(float(m["loss"]))
  return state, losses


def test_sharded_step_matches_single_device(params0, one_device):
  assert jax.device_count() >= 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
  state8, losses8 = _run_steps(params0, MESH_8, jax.devices()[:8])
  q = state8.params["params"]["layers"]["attn"]["q_proj"]["kernel"]
  assert q.sharding.spec == P(None, "fsdp", "tensor", None)
  assert q.addressable_shards[0].data.shape == (2, 16, 2, 8)  # really split 2 x 2
  mu = state8.opt_state[1][0].mu["params"]["layers"]["attn"]["q_proj"]["kernel"]
  assert mu.sharding.spec == P(None, "fsdp", "tensor", None)  # Adam state sharded alike
  state1, losses1 = _run_steps(params0, MESH_1, one_device)
  # Two float32 roundings of a 2-layer forward (numerics.logit_tol's bound, relative).
  np.testing.assert_allclose(losses8, losses1, rtol=logit_tol("float32", CFG.num_layers, 1.0, 2))
  assert losses1[0] > 0
  # Parameters after two AdamW steps, compared in float64: in float32 a gradient at rounding-
  # noise level can flip sign between layouts and Adam turns that into a full +-lr step, so
  # only float64 makes the comparison exact whatever the machine.
  with precision("float64"):
    state8, _ = _run_steps(params0, MESH_8, jax.devices()[:8], dtype="float64")
    state1, _ = _run_steps(params0, MESH_1, one_device, dtype="float64")
    p8, p1 = jax.device_get(state8.params), jax.device_get(state1.params)
  for a, b, c in zip(jax.tree.leaves(p8), jax.tree.leaves(p1), jax.tree.leaves(params0)):
    assert a.dtype == np.float64
    moved = np.max(np.abs(b - c))
    assert moved > 0
    np.testing.assert_allclose(a, b, atol=1e-9 * moved)


# ---------------------------------------------------------------------------- loop


class Preempted(Exception):
  pass


def test_resume_after_interruption_matches_uninterrupted_run(params0, tmp_path):
  cfg = tcfg(mesh=MESH_8)
  assert cfg.dropout_rate > 0  # the resumed run must redraw the same per-step dropout masks
  full, s_full = train(CFG, params0, batches_from, cfg, tmp_path / "a")
  assert s_full["steps_run"] == 4 and s_full["start_step"] == 0
  lrs = [h["learning_rate"] for h in s_full["history"]]
  np.testing.assert_allclose(lrs, [1e-5, 1e-5 - 1e-6 / 3, 1e-5 - 2e-6 / 3, 9e-6], rtol=1e-6)
  assert s_full["final_loss"] == pytest.approx(s_full["history"][-1]["loss"])
  assert s_full["tokens"] == 4 * (8 * SEQ - 4) and s_full["tokens_per_second"] > 0
  assert Checkpointer(tmp_path / "a", keep=2).all_steps() == [2, 4]

  calls = []

  def preempted(start):
    calls.append(start)
    for i, b in enumerate(batches_from(start)):
      if len(calls) == 1 and start + i == 2:  # the first run dies fetching batch 2
        raise Preempted("preempted")
      yield b

  with pytest.raises(Preempted):
    train(CFG, params0, preempted, cfg, tmp_path / "b")
  assert Checkpointer(tmp_path / "b", keep=2).latest_step() == 2
  # a save interrupted mid-write (orbax temp dir) is never taken for a checkpoint
  os.makedirs(tmp_path / "b" / "4.orbax-checkpoint-tmp-1234" / "state")
  resumed, s_res = train(CFG, params0, preempted, cfg, tmp_path / "b")
  assert calls == [0, 2] and s_res["start_step"] == 2 and s_res["steps_run"] == 2
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  assert s_res["final_loss"] == pytest.approx(s_full["final_loss"], rel=1e-6)
  assert [h["loss"] for h in s_res["history"]] == [h["loss"] for h in s_full["history"]]
  # rerunning a finished run is a no-op that returns the final params
  again, s_again = train(CFG, params0, batches_from, cfg, tmp_path / "b")
  assert s_again["steps_run"] == 0
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(again)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="written with"):
    train(CFG, params0, batches_from, cfg.replace(learning_rate=2e-5), tmp_path / "b")


def test_corrupted_last_checkpoint_and_full_disk_resume_from_the_last_good_state(
    params0, tmp_path, caplog, monkeypatch):
  import errno

  import orbax.checkpoint as ocp

  from humpback_jax.errors import DiskFullError
  cfg = tcfg(mesh=MESH_8)
  full, _ = train(CFG, params0, batches_from, cfg, tmp_path / "a")
  # A full disk while saving step 4: a clear error naming the last complete checkpoint.
  real_save = ocp.CheckpointManager.save

  def save(self, step, *a, **k):
    if step == 4:
      raise OSError(errno.ENOSPC, "No space left on device")
    return real_save(self, step, *a, **k)

  monkeypatch.setattr(ocp.CheckpointManager, "save", save)
  with pytest.raises(DiskFullError, match=r"disk full while saving step 4.*last complete "
                     r"checkpoint is step 2"):
    train(CFG, params0, batches_from, cfg, tmp_path / "b")
  monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)
  resumed, s = train(CFG, params0, batches_from, cfg, tmp_path / "b")
  assert s["start_step"] == 2
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  # The newest checkpoint corrupted (its array files overwritten, then its meta): a warning
  # naming it, and the run resumes from the previous one with the same result.
  for victim in ("state", "meta"):
    ckpt_dir = tmp_path / f"c_{victim}"
    every = cfg.replace(checkpoint_every=1)
    train(CFG, params0, batches_from, every, ckpt_dir)
    assert Checkpointer(ckpt_dir, keep=2).all_steps() == [3, 4]
    files = [f for f in (ckpt_dir / "4" / victim).rglob("*") if f.is_file()]
    assert files
    for f in files:
      f.write_bytes(b"\x00garbage" * 3)
    caplog.clear()
    with caplog.at_level("WARNING"):
      resumed, s = train(CFG, params0, batches_from, every, ckpt_dir)
    assert s["start_step"] == 3, victim
    assert any("step 4 is unreadable" in r.getMessage() and "resuming from step 3" in
               r.getMessage() for r in caplog.records), victim
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
      np.testing.assert_array_equal(a, b)


def test_memorizes_a_tiny_task(params0, tmp_path, one_device):
  """End to end: JSONL -> seqio task -> packed batches -> train; the loss falls."""
  from humpback_jax.data import iterator, tasks
  from test_tasks import RECORDS, ByteTok, write_jsonl

  tok = ByteTok()
  path = write_jsonl(tmp_path / "seed.jsonl", RECORDS[:4])
  task = tasks.register_humpback_tasks(tok, path, prefix="mem_")["seed_forward"]
  cfg = tcfg(num_steps=30, sequence_length=128, learning_rate=1e-2, end_learning_rate=3e-3,
             dropout_rate=0.0, checkpoint_every=100, log_every=5)
  iters = []

  def batches_fn(start):
    iters.append(iterator.make_train_iterator(task, tok, sequence_length=128, batch_size=4,
                                           seed=0, start_step=start))
    return iters[-1]

  params, summary = train(CFG, params0, batches_fn, cfg, None, devices=one_device)
  losses = [h["loss"] for h in summary["history"]]
  assert losses[-1] < 0.5 * losses[0], losses
  assert summary["data"]["examples_per_epoch"] == 4 and summary["data"]["batches"] == 30
  # returned params stay on the mesh with their shardings (never fetched to the host)
  want = shd.param_shardings(CFG, shd.make_mesh(MESH_1, one_device))
  assert all(isinstance(x, jax.Array) and x.sharding.is_equivalent_to(w, x.ndim)
             for x, w in zip(jax.tree.leaves(params), jax.tree.leaves(want)))
  b = next(iterator.make_train_iterator(task, tok, sequence_length=128, batch_size=4, seed=0))
  logits, _ = Llama(CFG).apply(params, b["decoder_input_tokens"], b["decoder_positions"],
                               b["decoder_segment_ids"])
  loss, _ = weighted_cross_entropy(logits, b["decoder_target_tokens"], b["decoder_loss_weights"])
  assert float(loss) < losses[0]


def test_rejects_bad_inputs(params0, one_device):
  bad = jax.tree.map(lambda x: x[..., :1] if x.ndim > 1 else x, params0)
  with pytest.raises(ValueError, match="shape"):
    train(CFG, bad, batches_from, tcfg(), None, devices=one_device)
  with pytest.raises(ValueError, match="sequence length"):
    train(CFG, params0, batches_from, tcfg(sequence_length=64), None, devices=one_device)
  with pytest.raises(ValueError, match="data\\*fsdp"):
    train(CFG, params0, lambda s: (synthetic_batch(i, rows=3) for i in range(s, 99)),
          tcfg(mesh=MESH_8), None)
  with pytest.raises(RuntimeError, match="ended after"):
    train(CFG, params0, lambda s: iter([synthetic_batch(0)]), tcfg(), None, devices=one_device)


def _ref_loss(params, batch, dropout_key=None, dropout_rate=0.0):
  """Independent loss: ``Llama.apply`` then a float64 numpy cross-entropy (nats/token sums)."""
  det = dropout_key is None
  model = Llama(CFG.replace(dropout_rate=dropout_rate), deterministic=det)
  logits, _ = model.apply(params, batch["decoder_input_tokens"], batch["decoder_positions"],
                          batch["decoder_segment_ids"],
                          **({} if det else {"rngs": {"dropout": dropout_key}}))
  logits = np.asarray(logits, np.float64)
  m = logits.max(-1, keepdims=True)
  logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
  ce = -np.take_along_axis(logp, batch["decoder_target_tokens"][..., None], -1)[..., 0]
  w = batch["decoder_loss_weights"].astype(np.float64)
  return float((ce * w).sum()), float(w.sum())


def test_dropout_masks_differ_between_steps(params0, one_device):
  """With lr 0 the params never move: per-step losses on ONE batch differ only by the masks,
  and step s draws them from fold_in(PRNGKey(seed), s)."""
  cfg = tcfg(num_steps=3, learning_rate=0.0, end_learning_rate=0.0, dropout_rate=0.5, seed=5)
  batch = synthetic_batch(0)
  params, s = train(CFG, params0, lambda start: itertools.repeat(batch), cfg, None,
                    devices=one_device)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params0)):
    np.testing.assert_array_equal(a, b)
  losses = [h["loss"] for h in s["history"]]
  assert len(set(losses)) == 3, losses  # the same mask every step would repeat the loss
  for step, loss in enumerate(losses):
    key = jax.random.fold_in(jax.random.PRNGKey(5), step)
    total, n = _ref_loss(params0, batch, key, 0.5)
    assert loss == pytest.approx(total / n, rel=1e-5)


def test_checkpoint_from_other_inputs_is_refused_or_restarted(params0, tmp_path):
  from humpback_jax.train import InputsChangedError
  cfg = tcfg(num_steps=2, mesh=MESH_8)
  fp = {"train_data_sha256": "a" * 64, "base_model_id": "base-A", "direction": "forward"}
  first, _ = train(CFG, params0, batches_from, cfg, tmp_path / "c", fingerprint=fp)
  meta = Checkpointer(tmp_path / "c", keep=2).read_meta(2)
  assert meta["fingerprint"] == fp and meta["train_config"] == cfg.math_dict()
  _, same = train(CFG, params0, batches_from, cfg, tmp_path / "c", fingerprint=dict(fp))
  assert same["steps_run"] == 0  # unchanged inputs: the finished run is reused
  other_data = dict(fp, train_data_sha256="b" * 64)
  with pytest.raises(InputsChangedError,
                     match="training data changed: sha256 aaaaaaaaaaaa… -> bbbbbbbbbbbb…"):
    train(CFG, params0, batches_from, cfg, tmp_path / "c", fingerprint=other_data)
  with pytest.raises(ValueError, match="base model changed: 'base-A' -> 'base-B'"):
    train(CFG, params0, batches_from, cfg, tmp_path / "c",
          fingerprint=dict(fp, base_model_id="base-B"))
  with pytest.raises(ValueError, match="direction changed: 'forward' -> 'backward'"):
    train(CFG, params0, batches_from, cfg, tmp_path / "c",
          fingerprint=dict(fp, direction="backward"))
  with pytest.raises(ValueError, match=r"hyper-parameters changed: seed 0 -> 1"):
    train(CFG, params0, batches_from, cfg.replace(seed=1), tmp_path / "c", fingerprint=fp)
  with pytest.raises(ValueError, match="on_mismatch"):
    train(CFG, params0, batches_from, cfg, tmp_path / "c", fingerprint=fp, on_mismatch="x")
  # restart: the stale checkpoint is deleted and the run starts from the initial params
  other_batches = lambda start: batches_from(start + 100)  # noqa: E731 (the "new data")
  restarted, s = train(CFG, params0, other_batches, cfg, tmp_path / "c",
                       fingerprint=other_data, on_mismatch="restart")
  assert s["start_step"] == 0 and s["steps_run"] == 2
  assert Checkpointer(tmp_path / "c", keep=2).read_meta(2)["fingerprint"] == other_data
  fresh, _ = train(CFG, params0, other_batches, cfg, tmp_path / "d", fingerprint=other_data)
  for a, b, c in zip(jax.tree.leaves(restarted), jax.tree.leaves(fresh),
                     jax.tree.leaves(first)):
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
  # a checkpoint that recorded no fingerprint is not trusted for a fingerprinted run
  train(CFG, params0, batches_from, cfg, tmp_path / "e")
  with pytest.raises(ValueError, match=r"training data changed: sha256 '\(not recorded\)'"):
    train(CFG, params0, batches_from, cfg, tmp_path / "e", fingerprint=fp)


def _poisoned(bad_index):
  """Batches of ``batches_from`` with an out-of-vocabulary token at batch ``bad_index``
  (``jnp.take`` fills out-of-range rows with nan: the loss of that step is nan)."""
  def fn(start):
    for i, b in enumerate(batches_from(start), start):
      if i == bad_index:
        b = dict(b)
        b["decoder_input_tokens"] = b["decoder_input_tokens"].copy()
        b["decoder_input_tokens"][0, 0] = CFG.vocab_size + 7
      yield b
  return fn


@pytest.mark.parametrize("bad_index", [2, 3])
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(params0, tmp_path,
                                                                  one_device, bad_index):
  # the poisoned batch really gives a nan loss
  bad = next(_poisoned(bad_index)(bad_index))
  assert np.isnan(_ref_loss(params0, bad)[0])
  # checkpoints every 2 steps; logging off until the end: step 3 is caught while step 4 runs
  # (before step 4's checkpoint), step 4 right before its own checkpoint
  cfg = tcfg(num_steps=6, log_every=100)
  with pytest.raises(RuntimeError, match=f"non-finite training step {bad_index + 1} of 6") as e:
    train(CFG, params0, _poisoned(bad_index), cfg, tmp_path / "n", devices=one_device)
  assert e.value.step == bad_index + 1 and e.value.checkpoint_step == 2
  assert np.isnan(e.value.loss)
  assert "last good checkpoint is step 2" in str(e.value)
  assert Checkpointer(tmp_path / "n", keep=2).all_steps() == [2]  # the bad state is not saved
  # without checkpoints the error says so
  with pytest.raises(RuntimeError, match="checkpointing is off"):
    train(CFG, params0, _poisoned(bad_index), cfg, None, devices=one_device)


def test_eval_loss_is_the_deterministic_held_out_loss(params0, tmp_path, one_device):
  from humpback_jax.train.checkpoint import abstract_with_shardings
  held = [synthetic_batch(1000), synthetic_batch(1001)]
  cfg = tcfg(num_steps=5, eval_every=2, log_every=100, checkpoint_every=2, keep_checkpoints=3,
             learning_rate=1e-3, end_learning_rate=1e-3, dropout_rate=0.3)
  params, s = train(CFG, params0, batches_from, cfg, tmp_path / "v", devices=one_device,
                    eval_batches=held)
  evals = {h["step"]: h["eval_loss"] for h in s["history"] if "eval_loss" in h}
  assert sorted(evals) == [2, 4, 5]  # every eval_every steps and after the last
  assert [h["step"] for h in s["history"]] == [2, 4, 5]  # (log_every=100: no other entries)

  def reference(p):
    sums = [_ref_loss(p, b) for b in held]
    return sum(t for t, _ in sums) / sum(n for _, n in sums)

  assert s["final_eval_loss"] == evals[5]
  assert evals[5] == pytest.approx(reference(params), rel=1e-5)
  # the intermediate evaluations are of the parameters at that step (restored checkpoints)
  mesh = shd.make_mesh(MESH_1, one_device)
  opt = make_optimizer(cfg)
  abstract = abstract_state(CFG, opt)
  target = abstract_with_shardings(abstract, state_shardings(CFG, abstract, mesh))
  ckpt = Checkpointer(tmp_path / "v", keep=3)
  for step in (2, 4):
    with jax.set_mesh(mesh):
      state, _ = ckpt.restore(step, target)
    assert evals[step] == pytest.approx(reference(jax.device_get(state.params)), rel=1e-5)
  assert len(set(evals.values())) == 3
  # a finished run reports the recorded final eval loss
  _, again = train(CFG, params0, batches_from, cfg, tmp_path / "v", devices=one_device,
                   eval_batches=held)
  assert again["steps_run"] == 0 and again["final_eval_loss"] == evals[5]
  # evaluation off: no eval keys; on without held-out batches: an error
  _, off = train(CFG, params0, batches_from, tcfg(), None, devices=one_device)
  assert off["final_eval_loss"] is None and not any("eval_loss" in h for h in off["history"])
  with pytest.raises(ValueError, match="no held-out batches"):
    train(CFG, params0, batches_from, tcfg(eval_every=2), None, devices=one_device)


def test_fine_tune_reuses_only_what_the_same_inputs_produced(params0, tmp_path):
  """Pipeline level: data hash + base model id in checkpoint and params; held-out eval."""
  from humpback_jax.data import iterator
  from humpback_jax.pipeline import training
  from humpback_jax.train import InputsChangedError
  from test_tasks import RECORDS, ByteTok, write_jsonl

  tok = ByteTok()
  data = write_jsonl(tmp_path / "train.jsonl", RECORDS)
  cfg = tcfg(num_steps=2, sequence_length=128, batch_size=4, mesh=MESH_8, eval_every=1,
             eval_examples=2)
  kw = dict(model_config=CFG, base_params=params0, tokenizer=tok, train_file=str(data),
            direction="forward", train_config=cfg, model_dir=str(tmp_path / "M0"), seed=0)
  s = training.fine_tune(**kw, base_model_id="base-A")
  assert s["steps_run"] == 2 and s["data"]["heldout_examples"] == 2
  # the final eval loss is the deterministic loss of the saved params on the held-out examples
  _, saved = training.load_trained(tmp_path / "M0", CFG)
  held = iterator.make_train_iterator(data, tok, sequence_length=128, batch_size=4, seed=0,
                                   row_multiple=4, holdout=2).eval_batches
  sums = [_ref_loss(saved, b) for b in held]
  assert s["final_eval_loss"] == pytest.approx(sum(t for t, _ in sums) / sum(n for _, n in sums),
                                               rel=1e-5)
  fp = training.read_params_fingerprint(tmp_path / "M0")
  assert fp["train_data_sha256"] == s["train_data_sha256"] and fp["base_model_id"] == "base-A"
  assert not (tmp_path / "M0" / "ckpt").exists()  # optimizer state dropped once params saved
  again = training.fine_tune(**kw, base_model_id="base-A")
  assert again["steps_run"] == 0 and again["reused_params"]  # reused, not retrained
  training.fine_tune(**dict(kw, model_dir=str(tmp_path / "keep"),
                            train_config=cfg.replace(keep_train_state=True)),
                     base_model_id="base-A")
  assert Checkpointer(tmp_path / "keep" / "ckpt", keep=2).all_steps() == [2]

  with pytest.raises(InputsChangedError, match="base model changed: 'base-A' -> 'base-B'"):
    training.fine_tune(**kw, base_model_id="base-B")
  old_sha = s["train_data_sha256"]
  write_jsonl(data, RECORDS[1:])  # the stage's training data changed
  with pytest.raises(InputsChangedError, match=f"training data changed: sha256 {old_sha[:12]}"):
    training.fine_tune(**kw, base_model_id="base-A")
  # the final params alone (checkpoints gone) are not reused either, and are left in place
  with pytest.raises(InputsChangedError, match="params was trained from different inputs"):
    training.fine_tune(**kw, base_model_id="base-A")
  assert training.read_params_fingerprint(tmp_path / "M0")["train_data_sha256"] == old_sha
  s2 = training.fine_tune(**kw, base_model_id="base-A", on_mismatch="restart")
  assert s2["steps_run"] == 2 and s2["train_data_sha256"] != old_sha
  assert training.read_params_fingerprint(tmp_path / "M0")["train_data_sha256"] == \
      s2["train_data_sha256"]
  _, retrained = training.load_trained(tmp_path / "M0", CFG)
  assert any(not np.array_equal(a, b)
             for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(retrained)))
  # params without a recorded fingerprint (an older version wrote them) are not trusted
  (tmp_path / "M0" / "params" / training.FINGERPRINT_FILE).unlink()
  with pytest.raises(InputsChangedError, match="no fingerprint of the inputs was recorded"):
    training.fine_tune(**kw, base_model_id="base-A")


def test_trainer_logs_throughput_mfu_and_tensorboard_scalars(params0, tmp_path, one_device):
  from test_metrics import _read_scalars

  from humpback_jax.train import metrics
  cfg = tcfg(log_every=2)
  _, summary = train(CFG, params0, batches_from, cfg, None, devices=one_device,
                     summary_dir=tmp_path / "tb")
  got = _read_scalars(tmp_path / "tb")
  by_tag = {}
  for step, tag, value in got:
    by_tag.setdefault(tag, []).append((step, value))
  assert [s for s, _ in by_tag["loss"]] == [2, 4]
  for tag in ("learning_rate", "grad_norm", "tokens_per_second_per_device", "mfu"):
    assert len(by_tag[tag]) == 2, tag
  # MFU = padded tokens/s x model FLOPs per token / the (measured CPU) peak.
  peak, source = metrics.device_peak_flops()
  assert summary["peak_flops_per_device"] == peak and summary["peak_flops_source"] == source
  last = dict(by_tag["tokens_per_second_per_device"])[4]
  want = last * metrics.model_flops_per_token(CFG, SEQ) / peak
  assert summary["mfu"] == pytest.approx(want, rel=1e-6) and 0 < summary["mfu"] < 1
