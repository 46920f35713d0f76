"""The state-layout benchmark compares the library's Transformer with a stacked-state reference that computes the
same thing, and reads its ratio off alternating pairs."""

import json
import statistics

import pytest
import torch
from benchmark_scripts import load_benchmark

from labutils import get_config
from labutils.decoders import CaptionTransformer


def _pair(layers=2):
    bench = load_benchmark("bench_transformer_state")
    cfg = get_config("quick", device="cpu", transformer_layers=layers, transformer_dim=16, num_heads=4)
    torch.manual_seed(0)
    return bench, bench.pair_of_decoders(cfg, vocab_size=12, feature_dim=8), cfg


def test_the_stacked_reference_steps_like_the_library_with_its_layers_stacked():
    bench, models, cfg = _pair(layers=3)
    library, stacked = models["per layer"].eval(), models["stacked"].eval()
    assert type(library) is CaptionTransformer and isinstance(stacked, bench.StackedStateTransformer)
    features = torch.randn(2, cfg.grid_size ** 2, 8)
    tokens = torch.tensor([[1, 1], [5, 7], [9, 4], [6, 6]])  # <start>, then three words per row
    with torch.no_grad():
        state, reference_state = library.init_state(features), stacked.init_state(features)
        assert len(state) == 12 and len(reference_state) == 4 and reference_state[0].shape[1] == 3
        for step_tokens in tokens:
            logits, state, alpha = library.step(step_tokens, state)
            want, reference_state, want_alpha = stacked.step(step_tokens, reference_state)
            torch.testing.assert_close(logits, want)
            torch.testing.assert_close(alpha, want_alpha)
    for layer in range(3):  # the same cache, laid out differently
        torch.testing.assert_close(state[4 * layer + 2], reference_state[2][:, layer])


def test_both_layouts_are_timed_alternately_and_the_ratio_is_read_off_the_pairs(tmp_path):
    bench = load_benchmark("bench_transformer_state")
    out, steps, timed = tmp_path / "state.json", [], bench.scst_step_seconds

    def counted(decoder, features, vocab, args, amp, seed):
        steps.append(type(decoder).__name__)
        return timed(decoder, features, vocab, args, amp, seed)

    bench.scst_step_seconds = counted
    assert bench.main(["--profile", "quick", "--set", "transformer_dim=16", "--set", "num_heads=4", "--layers", "1",
                       "2", "--images", "2", "--samples", "2", "--max-len", "3", "--vocab-size", "12",
                       "--feature-dim", "8", "--repeats", "3", "--label", "tiny", "--out", str(out)]) == 0
    per, ref = "CaptionTransformer", "StackedStateTransformer"
    assert steps == [per, ref, per, ref, ref, per, per, ref] * 2  # warm-up, then the first in turn
    [run] = json.loads(out.read_text())["runs"]
    assert run["label"] == "tiny" and [r["layers"] for r in run["runs"]] == [1, 2]
    for record in run["runs"]:
        times = record["seconds_per_step"]
        ratios = [s / p for s, p in zip(times["stacked"], times["per layer"], strict=True)]
        assert len(ratios) == 3 and abs(record["stacked_over_per_layer_median"] - statistics.median(ratios)) < 0.01


def test_a_reference_that_samples_other_captions_stops_the_benchmark(tmp_path):
    bench = load_benchmark("bench_transformer_state")
    honest = bench.StackedStateTransformer.step

    def off(self, tokens, state):
        logits, state, alpha = honest(self, tokens, state)
        return logits.roll(1, dims=1), state, alpha  # another word scores highest

    bench.StackedStateTransformer.step = off
    with pytest.raises(RuntimeError, match="different captions"):
        bench.main(["--profile", "quick", "--set", "transformer_dim=16", "--set", "num_heads=4", "--layers", "2",
                    "--images", "4", "--samples", "2", "--max-len", "4", "--vocab-size", "12", "--feature-dim", "8",
                    "--repeats", "1", "--label", "tiny", "--out", str(tmp_path / "state.json")])
    assert not (tmp_path / "state.json").exists(), "nothing is recorded from a comparison of different work"
