"""tools/bench_generate.py and tools/bench_curate.py on the tiny random model: one JSON record
each with the keys the issue names, both sides producing what they claim (every row the whole
budget; the prefix and full read-outs and the HF peer agreeing). A check of the scripts, not a
timing: the numbers of a 4-layer model say nothing."""

import json
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
import bench_generate  # noqa: E402


def test_generate_tiny_record(capsys):
  record = bench_generate.main(["--model", "tiny", "--batches", "1,4", "--prompt_len", "24",
                                "--new_tokens", "6", "--repeats", "1", "--bw_mib", "8"])
  printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert printed == json.loads(json.dumps(record))
  assert [r["batch"] for r in record["results"]] == [1, 4]
  for row in record["results"]:
    assert {"batch", "ours_tok_s", "peer_tok_s", "ratio"} <= set(row)
    assert row["ours_tok_s"] > 0 and row["peer_tok_s"] > 0
    assert row["ratio"] == pytest.approx(row["ours_tok_s"] / row["peer_tok_s"], rel=0.02)
  assert record["results"][0]["ours_compilations"] >= 1  # the first call compiled
  roof = record["roofline"]
  assert roof["bandwidth_bytes_per_s"] > 1e8 and roof["param_bytes_per_step"] > 0
  assert roof["roofline_tok_s"] == pytest.approx(
      roof["bandwidth_bytes_per_s"] / roof["param_bytes_per_step"], rel=0.01)
  assert record["strategy"] == {"temperature": 0.7, "top_p": 0.9, "top_k": 0}
  assert record["peer"]["name"] == "transformers.generate"


def test_param_bytes_per_step_counts_what_a_step_reads():
  """Hand count for the tiny model: every block kernel and norm, the final norm and the head;
  the embedding table only when the head is tied to it."""
  import bench_forward as bf
  cfg, params = bf.load_model("tiny", "float32", 0)
  d, f, l, v = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers, cfg.vocab_size
  q = cfg.num_heads * cfg.head_dim
  kv = cfg.num_kv_heads * cfg.head_dim
  per_layer = d * q + 2 * d * kv + q * d + 3 * d * f + 2 * d
  want = 4 * (l * per_layer + d + v * d)
  assert bench_generate.param_bytes_per_step(cfg, params) == want


@pytest.mark.slow
def test_curate_tiny_record(capsys):
  import bench_curate
  record = bench_curate.main(["--model", "tiny", "--pairs", "12", "--stage_pairs", "6"])
  printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert printed == json.loads(json.dumps(record))
  for k in ("parse_pairs_s", "logprob_pairs_s", "logprob_prefix_pairs_s", "speedup",
            "peer_logprob_pairs_s", "stage_compiles", "stage_compile_s"):
    assert record[k] > 0, k
  assert record["speedup"] == pytest.approx(
      record["logprob_prefix_pairs_s"] / record["parse_pairs_s"], rel=0.01)
  assert record["pairs"] == 12 and record["prefix_tokens"] > 100
  # The shared-prefix read-out equals the full one, and ours the peer's (to the recorded
  # 6 decimals plus float32 rounding).
  assert record["prefix_reused"] == 12 and record["prefix_fallbacks"] == 0
  assert record["max_abs_p_scores_diff_prefix_vs_full"] < 1e-3
  assert record["max_abs_p_scores_diff_vs_peer"] < 1e-3
