"""tools/bench_train.py on the tiny random model: one JSON record whose two sides train the same
function (first-step losses, gradient norms and updates agree), whose throughput keys are
positive and whose ``--profile`` summary classifies the traced ops. A check of the script, not a
timing: the numbers of a 4-layer model say nothing."""

import json
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
import bench_train  # noqa: E402

KEYS = ("ours_tok_s", "peer_tok_s", "ratio", "ratio_paired", "ratio_best", "mfu", "peer_mfu",
        "compile_s", "loss_ours", "loss_peer", "loss_rel_diff", "grad_norm_ours",
        "grad_norm_peer", "update_rel_diff", "peak_flops", "batch", "seq_len", "model", "dtype",
        "device", "torch_threads", "versions")


def test_tiny_record(capsys, tmp_path):
  prof = tmp_path / "profile"
  record = bench_train.main(["--model", "tiny", "--steps", "2", "--repeats", "1", "--warmup", "0",
                             "--peak_n", "1024", "--profile", str(prof), "--profile_steps", "1"])
  printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert printed == json.loads(json.dumps(record))
  for k in KEYS:
    assert k in record, k
  assert (record["batch"], record["seq_len"], record["dtype"]) == (4, 256, "float32")
  assert len(record["mesh_devices"]) == 1  # on CPU one device, even with 8 fake ones
  # Both sides compute the same step: same loss, gradient and AdamW update.
  assert record["loss_rel_diff"] < 1e-3
  assert abs(record["loss_ours"] - record["loss_peer"]) < 1e-3 * abs(record["loss_peer"])
  assert record["grad_norm_rel_diff"] < 1e-3
  assert record["update_rel_diff"] < 1e-2
  assert record["grad_norm_ours"] > 1.0  # so clipping at 1.0 took part
  assert record["ratio"] > 0 and record["ours_tok_s"] > 0 and record["peer_tok_s"] > 0
  assert 0 < record["mfu"] and 0 < record["peer_mfu"]
  assert record["compile_s"] > 0
  # --profile: our op time from the jax.profiler trace, classified with the step's HLO.
  ours = record["profile"]["ours"]
  assert "error" not in ours, ours
  assert abs(sum(ours["fraction_by_kind"].values()) - 1) < 0.01
  assert ours["fraction_by_kind"].get("matmul", 0) > 0.1
  assert "unmatched" not in ours["fraction_by_kind"]
  assert set(ours["fraction_by_pass"]) <= {"forward", "backward", "outside_grad"}
  assert ours["top_ops"] and ours["op_time_s_per_step"] > 0
  assert record["profile"]["peer"]["fraction_by_kind"]["matmul"] > 0.1
  assert (prof / "train_step.hlo.txt").exists() and (prof / "peer_ops.txt").exists()
  assert list((prof / "xla_dump").glob("*jit_step*after_optimizations.txt"))


def test_hlo_index_kinds():
  """The profile's op classification on a hand-written optimized-HLO excerpt."""
  hlo = """HloModule jit_step

%fused_computation.1 (param_0: f32[8,64], param_1: f32[64,100]) -> f32[8,100] {
  %param_0 = f32[8,64]{1,0} parameter(0)
  %param_1 = f32[64,100]{1,0} parameter(1)
  ROOT %dot.1 = f32[8,100]{1,0} dot(%param_0, %param_1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_computation.2 (param_0.1: f32[8,100]) -> f32[8] {
  %param_0.1 = f32[8,100]{1,0} parameter(0)
  %constant.1 = f32[] constant(0)
  ROOT %reduce.1 = f32[8]{0} reduce(%param_0.1, %constant.1), dimensions={1}, to_apply=%add
}

%fused_computation.3 () -> f32[30,8,8] {
  %constant.2 = f32[] constant(0)
  ROOT %broadcast.1 = f32[30,8,8]{2,1,0} broadcast(%constant.2), dimensions={}
}

%fused_computation.4 (param_0.2: f32[8,64]) -> f32[64,8] {
  %param_0.2 = f32[8,64]{1,0} parameter(0)
  %neg.1 = f32[8,64]{1,0} negate(%param_0.2)
  ROOT %transpose.1 = f32[64,8]{1,0} transpose(%neg.1), dimensions={1,0}
}

ENTRY %main.1 (x: f32[8,64], w: f32[64,100]) -> f32[8] {
  %x = f32[8,64]{1,0} parameter(0)
  %w = f32[64,100]{1,0} parameter(1)
  %ynn_fusion = f32[8,100]{1,0} fusion(%x, %w), kind=kCustom, calls=%fused_computation.1, metadata={op_name="jit(step)/jvp(Llama)/lm_head/dot_general"}
  %reduce_fusion = f32[8]{0} fusion(%ynn_fusion), kind=kLoop, calls=%fused_computation.2, metadata={op_name="jit(step)/transpose(jvp())/reduce_sum"}
  %copy.1 = f32[8,64]{0,1} copy(%x)
  %wrapped_broadcast = f32[30,8,8]{2,1,0} fusion(), kind=kLoop, calls=%fused_computation.3
  %neg_transpose_fusion = f32[64,8]{1,0} fusion(%x), kind=kLoop, calls=%fused_computation.4, metadata={op_name="jit(step)/transpose(jvp(Llama))/neg"}
  ROOT %multiply.1 = f32[8]{0} multiply(%reduce_fusion, %reduce_fusion), metadata={op_name="jit(step)/mul"}
}
"""
  idx = bench_train.index_hlo(hlo, vocab_size=100, seq_len=8)
  assert (idx["ynn_fusion"]["kind"], idx["ynn_fusion"]["pass"]) == ("matmul", "forward")
  assert (idx["reduce_fusion"]["kind"], idx["reduce_fusion"]["pass"]) == ("reduction", "backward")
  assert idx["copy.1"]["kind"] == "data_movement"
  assert (idx["multiply.1"]["kind"], idx["multiply.1"]["pass"]) == ("elementwise", "outside_grad")
  assert idx["ynn_fusion"]["vocab"] and idx["reduce_fusion"]["vocab"]  # result / operand
  assert not idx["multiply.1"]["vocab"] and not idx["copy.1"]["vocab"]
  assert idx["wrapped_broadcast"]["scores"] and not idx["copy.1"]["scores"]  # [.., 8, 8]
  details = {k: idx[k]["detail"] for k in ("ynn_fusion", "reduce_fusion", "copy.1",
                                           "wrapped_broadcast", "neg_transpose_fusion",
                                           "multiply.1")}
  assert details == {"ynn_fusion": "matmul", "reduce_fusion": "reduction",
                     "copy.1": "copy_slice_other_movement",
                     "wrapped_broadcast": "buffer_init_broadcast",
                     "neg_transpose_fusion": "with_transpose", "multiply.1": "elementwise"}
