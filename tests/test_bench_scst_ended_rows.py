"""The ended-rows benchmark times the SCST step with ended samples dropped at a quarter, kept, and dropped at every
end, in turn, on decoders whose random weights end their samples after about the length asked for."""

import json
import statistics

import pytest
import torch
from benchmark_scripts import load_benchmark

from labutils import get_config, scst
from labutils.vocab import Vocabulary

TINY = ["--profile", "quick", "--set", "transformer_dim=16", "--set", "num_heads=4", "--images", "3", "--samples",
        "2", "--max-len", "6", "--vocab-size", "12", "--feature-dim", "8", "--mean-length", "3"]


def test_each_way_is_timed_in_turn_and_compared_with_the_librarys(tmp_path, monkeypatch):
    bench = load_benchmark("bench_scst_ended_rows")
    out, ways, timed = tmp_path / "ended.json", [], bench.step_with

    def counted(drop_at, *args, **kwargs):
        ways.append(drop_at)
        return timed(drop_at, *args, **kwargs)

    monkeypatch.setattr(bench, "step_with", counted)
    assert bench.main([*TINY, "--kinds", "transformer", "attention", "--repeats", "3", "--label", "tiny",
                       "--out", str(out)]) == 0
    # A warm-up of each, then three rounds, each led by the next way.
    assert ways == [0.25, 1.0, 0.0, 0.25, 1.0, 0.0, 1.0, 0.0, 0.25, 0.0, 0.25, 1.0] * 2
    [run] = json.loads(out.read_text())["runs"]
    assert run["label"] == "tiny" and [r["decoder"] for r in run["runs"]] == ["transformer", "attention"]
    for record in run["runs"]:
        times = record["seconds_per_step"]
        for way in ("kept", "dropped at every end"):
            ratios = [t / lib for t, lib in zip(times[way], times["dropped at a quarter"], strict=True)]
            assert len(ratios) == 3
            assert abs(record[f"{way} / dropped at a quarter"]["median"] - statistics.median(ratios)) < 0.01
        assert set(record["mean_length_drawn"]) == set(bench.WAYS)


@pytest.mark.parametrize("kind", ["transformer", "attention"])
def test_the_raised_end_bias_ends_samples_after_about_the_length_asked(kind):
    bench = load_benchmark("bench_scst_ended_rows")
    cfg = get_config("quick", transformer_dim=16, num_heads=4, embed_dim=8, hidden_dim=16, attention_dim=8)
    vocab = Vocabulary([f"w{i}" for i in range(40)])
    torch.manual_seed(0)
    features = torch.randn(50, cfg.grid_size ** 2, 8)  # [B, P, C]
    decoder = bench.ending_decoder(kind, vocab, cfg, features, mean_length=4.0)
    rows = torch.arange(50).repeat_interleave(8)  # [400]
    with torch.no_grad():
        state = tuple(t.index_select(0, rows) for t in decoder.init_state(features))
        mask = scst.draw_captions(decoder, state, vocab, 40, torch.Generator().manual_seed(0))[2]  # [R, T]
    assert 3.4 < float(mask.sum(1).mean()) < 4.6  # geometric, mean 4; without the bias most run far longer


def test_a_mean_length_without_words_is_refused():
    bench = load_benchmark("bench_scst_ended_rows")
    with pytest.raises(SystemExit):
        bench.parse_args(["--mean-length", "1", "--label", "x"])
