"""The state benchmark compares each decoder with a reference layout that computes the same thing, and reads its
ratio off alternating pairs."""

import json
import statistics

import pytest
import torch
from benchmark_scripts import load_benchmark

from labutils import get_config, scst
from labutils.decoders import CaptionTransformer, ShowAttendTell
from labutils.vocab import Vocabulary

TINY = ["--profile", "quick", "--set", "transformer_dim=16", "--set", "num_heads=4", "--images", "2", "--samples",
        "2", "--max-len", "3", "--vocab-size", "12", "--feature-dim", "8"]


def _pair(kind, layers=3):
    bench = load_benchmark("bench_decoder_state")
    cfg = get_config("quick", device="cpu", transformer_layers=layers, transformer_dim=16, num_heads=4)
    torch.manual_seed(0)
    return bench, bench.pair_of_decoders(kind, cfg, vocab_size=12, feature_dim=8), cfg


def _steps(model, features, tokens):
    """Logits and alphas of feeding `tokens` [steps, B] word by word, and the last state."""
    state, outputs = model.init_state(features), []
    for step_tokens in tokens:
        logits, state, alpha = model.step(step_tokens, state)
        outputs.append((logits, alpha))
    return outputs, state


TOKENS = torch.tensor([[1, 1], [5, 7], [9, 4], [6, 6]])  # <start>, then three words for each of two images


def test_the_stacked_reference_steps_like_the_library_with_its_layers_stacked():
    bench, models, cfg = _pair("transformer")
    library, stacked = models["library"].eval(), models["reference"].eval()
    assert type(library) is CaptionTransformer and isinstance(stacked, bench.StackedStateTransformer)
    features = torch.randn(2, cfg.grid_size ** 2, 8)
    with torch.no_grad():
        got, state = _steps(library, features, TOKENS)
        want, reference_state = _steps(stacked, features, TOKENS)
    torch.testing.assert_close(got, want)
    assert len(state) == 12 and len(reference_state) == 4 and reference_state[0].shape[1] == 3
    for layer in range(3):  # the same cache, laid out differently
        torch.testing.assert_close(state[4 * layer + 2], reference_state[2][:, layer])


def test_the_stacked_reference_scores_samples_in_one_pass_like_the_library():
    bench, models, cfg = _pair("transformer")
    vocab = Vocabulary([f"w{i}" for i in range(8)])
    features = torch.randn(2, cfg.grid_size ** 2, 8)
    got, want = (scst.sample_with_log_probs(models[name], features, vocab, 2, 4, torch.Generator().manual_seed(1))
                 for name in ("library", "reference"))
    assert torch.equal(got.tokens, want.tokens)
    torch.testing.assert_close(got.log_prob, want.log_prob)


def test_the_float32_grid_reference_gives_the_librarys_numbers_under_autocast():
    bench, models, cfg = _pair("attention")
    library, reference = models["library"].eval(), models["reference"].eval()
    assert type(library) is ShowAttendTell and isinstance(reference, bench.GridCastEveryStep)
    features = torch.randn(2, cfg.grid_size ** 2, 8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got, state = _steps(library, features, TOKENS)
        want, reference_state = _steps(reference, features, TOKENS)
    torch.testing.assert_close(got, want, rtol=0, atol=0)  # autocast casts the grid the same way, only more often
    assert (state[2].dtype, reference_state[2].dtype) == (torch.bfloat16, torch.float32)


def test_both_layouts_are_timed_alternately_and_the_ratio_is_read_off_the_pairs(tmp_path):
    bench = load_benchmark("bench_decoder_state")
    out, steps, timed = tmp_path / "state.json", [], bench.scst_step_seconds

    def counted(decoder, features, vocab, args, amp, seed, one_pass):
        assert one_pass is False, "both layouts are timed with the graph of their steps, as recorded"
        steps.append("library" if type(decoder) in (CaptionTransformer, ShowAttendTell) else "reference")
        return timed(decoder, features, vocab, args, amp, seed, one_pass)

    bench.scst_step_seconds = counted
    assert bench.main([*TINY, "--layers", "1", "2", "--repeats", "3", "--label", "tiny", "--out", str(out)]) == 0
    lib, ref = "library", "reference"
    assert steps == [lib, ref, lib, ref, ref, lib, lib, ref] * 3  # warm-up, then the first in turn
    [run] = json.loads(out.read_text())["runs"]
    assert run["label"] == "tiny"
    assert [(r["decoder"], r["layers"], r["reference"]) for r in run["runs"]] == [
        ("attention", None, "GridCastEveryStep"), ("transformer", 1, "StackedStateTransformer"),
        ("transformer", 2, "StackedStateTransformer")]
    for record in run["runs"]:
        times = record["seconds_per_step"]
        ratios = [r / lib for r, lib in zip(times["reference"], times["library"], strict=True)]
        assert len(ratios) == 3 and abs(record["reference_over_library_median"] - statistics.median(ratios)) < 0.01


def test_a_reference_that_samples_other_captions_stops_the_benchmark(tmp_path):
    bench = load_benchmark("bench_decoder_state")
    honest = bench.StackedStateTransformer.step

    def off(self, tokens, state):
        logits, state, alpha = honest(self, tokens, state)
        return logits.roll(1, dims=1), state, alpha  # another word scores highest

    bench.StackedStateTransformer.step = off
    with pytest.raises(RuntimeError, match="different captions"):
        bench.main([*TINY, "--kinds", "transformer", "--layers", "2", "--repeats", "1", "--label", "tiny",
                    "--out", str(tmp_path / "state.json")])
    assert not (tmp_path / "state.json").exists(), "nothing is recorded from a comparison of different work"


def test_the_float32_grid_reference_leaves_the_grid_float32_in_teacher_forcing_too(monkeypatch):
    bench, models, cfg = _pair("attention")
    library, reference = models["library"].eval(), models["reference"].eval()
    features, lengths = torch.randn(2, cfg.grid_size ** 2, 8), torch.tensor([4, 3])
    captions = torch.tensor([[1, 5, 9, 2], [1, 7, 2, 0]])
    casts, cast = [], bench.decoders.in_autocast_dtype

    def spy(grid):
        casts.append(grid.dtype)
        return cast(grid)

    monkeypatch.setattr(bench.decoders, "in_autocast_dtype", spy)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = library(features, captions, lengths).logits
        assert casts == [torch.float32], "the library casts the grid once"
        got = reference(features, captions, lengths).logits
    assert len(casts) == 1, "the reference's forward never casts it"
    assert bench.decoders.in_autocast_dtype is spy, "and puts the library's function back afterwards"
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_the_cross_entropy_step_is_timed_alternately_for_the_attention_lstm_alone(tmp_path):
    bench = load_benchmark("bench_decoder_state")
    out, steps, timed = tmp_path / "state.json", [], bench.xe_step_seconds

    def counted(decoder, features, captions, lengths, pad_id, amp):
        steps.append("library" if type(decoder) is ShowAttendTell else "reference")
        assert (captions[:, 1:] == pad_id).any(), "captions are padded after their length"
        return timed(decoder, features, captions, lengths, pad_id, amp)

    bench.xe_step_seconds = counted
    assert bench.main([*TINY, "--steps", "xe", "--repeats", "2", "--label", "tiny", "--out", str(out)]) == 0
    assert steps == ["library", "reference", "library", "reference", "reference", "library"]
    [record] = json.loads(out.read_text())["runs"][0]["runs"]
    assert (record["decoder"], record["step"], record["reference"]) == ("attention", "cross-entropy",
                                                                        "GridCastEveryStep")
