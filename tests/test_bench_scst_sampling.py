"""The sampling benchmark times both samplers on the same step and leaves the library's own sampler in place."""

import json
import statistics

from benchmark_scripts import load_benchmark

from labutils import decode, get_config
from labutils.config import QUICK


def test_both_samplers_are_timed_alternately_and_the_ratio_is_read_off_the_pairs(tmp_path):
    bench, original = load_benchmark("bench_scst_sampling"), decode.draw
    out = tmp_path / "sampling.json"
    steps, timed = [], bench.one_step

    def counted(decoder, features, vocab, args, amp, sampler, seed):
        steps.append(sampler)
        return timed(decoder, features, vocab, args, amp, sampler, seed)

    bench.one_step = counted
    assert bench.main(["--profile", "quick", "--kinds", "attention", "transformer", "--images", "2",
                       "--samples", "2", "--max-len", "3", "--vocab-size", "12", "--feature-dim", "8",
                       "--repeats", "3", "--label", "tiny", "--out", str(out)]) == 0
    assert decode.draw is original, "the library's sampler must be back in place after the benchmark"
    # Per decoder: one warm-up step each, then the repeats alternating which sampler goes first.
    per_decoder = ["decode.draw", "torch.multinomial"] * 2 + ["torch.multinomial", "decode.draw"]
    per_decoder += ["decode.draw", "torch.multinomial"]
    assert steps == per_decoder * 2
    [run] = json.loads(out.read_text())["runs"]
    assert run["label"] == "tiny" and [r["decoder"] for r in run["runs"]] == ["attention", "transformer"]
    for record in run["runs"]:
        times = record["seconds_per_step"]
        assert len(times["decode.draw"]) == len(times["torch.multinomial"]) == 3 and record["rows"] == 4
        ratios = [m / d for m, d in zip(times["torch.multinomial"], times["decode.draw"], strict=True)]
        assert abs(record["multinomial_over_draw_median"] - statistics.median(ratios)) < 0.01
        assert record["multinomial_over_draw_min_max"][0] <= record["multinomial_over_draw_median"]


def test_sizes_not_given_come_from_the_profile_and_the_recipes_record():
    bench = load_benchmark("bench_scst_sampling")
    cfg = get_config("flickr8k", device="cpu")
    recorded = json.loads(bench.RECIPE_RESULTS.read_text())["runs"][-1]["vocab_size"]
    args = bench.with_defaults(bench.parse_args(["--label", "x"]), cfg)
    assert (args.images, args.max_len, args.vocab_size) == (cfg.batch_size, cfg.scst_max_len, recorded)
    given = bench.with_defaults(bench.parse_args(["--label", "x", "--images", "3", "--max-len", "5",
                                                  "--vocab-size", "9"]), cfg)
    assert (given.images, given.max_len, given.vocab_size) == (3, 5, 9)
    quick = bench.with_defaults(bench.parse_args(["--label", "x"]), get_config("quick", device="cpu"))
    assert quick.max_len == (QUICK.scst_max_len or QUICK.max_caption_len)  # no scst_max_len: the caption limit
