"""The one-pass benchmark times the Transformer's SCST step with its samples scored in one pass against the graph
of its steps, alternating, and reads its ratio off the pairs."""

import json
import statistics

import pytest
from benchmark_scripts import load_benchmark

TINY = ["--profile", "quick", "--set", "transformer_dim=16", "--set", "num_heads=4", "--images", "2", "--samples",
        "2", "--max-len", "3", "--vocab-size", "12", "--feature-dim", "8"]


def test_both_ways_are_timed_alternately_and_the_ratio_is_read_off_the_pairs(tmp_path):
    bench = load_benchmark("bench_scst_one_pass")
    out, ways, timed = tmp_path / "one_pass.json", [], bench.scst_step_seconds

    def counted(decoder, features, vocab, args, amp, seed, one_pass):
        ways.append(one_pass)
        return timed(decoder, features, vocab, args, amp, seed, one_pass)

    bench.scst_step_seconds = counted
    assert bench.main([*TINY, "--layers", "1", "2", "--repeats", "3", "--label", "tiny", "--out", str(out)]) == 0
    assert ways == [True, False, True, False, False, True, True, False] * 2  # warm-up, then the first in turn
    [run] = json.loads(out.read_text())["runs"]
    assert run["label"] == "tiny" and [r["layers"] for r in run["runs"]] == [1, 2]
    for record in run["runs"]:
        times = record["seconds_per_step"]
        ratios = [s / o for s, o in zip(times["steps' graph"], times["one pass"], strict=True)]
        assert len(ratios) == 3 and abs(record["steps_over_one_pass_median"] - statistics.median(ratios)) < 0.01


def test_ways_that_sample_other_captions_stop_the_benchmark(tmp_path, monkeypatch):
    bench = load_benchmark("bench_scst_one_pass")
    honest = bench.scst.sample_with_log_probs

    def drifting(decoder, features, vocab, n_samples, max_len, generator, one_pass=None):
        samples = honest(decoder, features, vocab, n_samples, max_len, generator, one_pass)
        return samples if one_pass else samples._replace(tokens=samples.tokens.roll(1, dims=0))

    monkeypatch.setattr(bench.scst, "sample_with_log_probs", drifting)
    with pytest.raises(RuntimeError, match="different captions"):
        bench.main([*TINY, "--layers", "1", "--repeats", "1", "--label", "tiny",
                    "--out", str(tmp_path / "one_pass.json")])
    assert not (tmp_path / "one_pass.json").exists(), "nothing is recorded from a comparison of different work"
