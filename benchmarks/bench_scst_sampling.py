"""Drawing SCST's samples: `decode.draw` (one uniform number per row, placed on the cumulative sums) against
`torch.multinomial(probs, 1)` (an exponential number for every word of every row), inside the sampling step that
self-critical training runs on every batch.

What is timed, for each decoder: `scst.sample_with_log_probs` (the flickr8k profile's SCST batch: `--images`
images x `--samples` samples, up to `--max-len` tokens, with the gradient of their log p as the library keeps it:
recorded when both decoders kept the graph of every step) and the backward pass of a
policy-gradient loss on it, under the profile's mixed precision; the same thing with `torch.multinomial` put in
place of `decode.draw`. The two alternate, `--repeats` times, so a change of load hits both; the ratio of each
pair is recorded, with its median and range. The decoders have the profile's sizes and random weights (timing
does not depend on what they learned, except that a trained model ends captions earlier: all rows run
`--max-len` steps here), the features are random, the vocabulary has `--vocab-size` words (default: the size
the flickr8k recipe's last recorded run built, in results/flickr8k_recipe.json).

What it buys end to end shows in results/beyond.json: the SCST batches that fit in the same 10 minutes.

    python benchmarks/bench_scst_sampling.py --label cpu-2cores
    python benchmarks/bench_scst_sampling.py --repeats 2 --images 8 --out /tmp/s.json --label smoke

Run from the repository root.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_flickr8k_recipe import parse_overrides  # noqa: E402
from machine import machine_info, record_run  # noqa: E402

from labutils import decode, decoders, get_config, scst, train  # noqa: E402
from labutils.vocab import Vocabulary  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "scst_sampling.json"
RECIPE_RESULTS = ROOT / "benchmarks" / "results" / "flickr8k_recipe.json"
GOAL = "SCST's sampling step with decode.draw faster than with torch.multinomial (ratio > 1), same distribution (tests)"
SAMPLERS = {"decode.draw": decode.draw,
            "torch.multinomial": lambda probs, generator=None: torch.multinomial(probs, 1,
                                                                                generator=generator).squeeze(1)}


def scst_step_seconds(decoder, features, vocab, args, amp, seed: int, one_pass: bool | None = None) -> float:
    """Seconds of one SCST sampling step: `args.samples` samples per image with the gradient of their log p (as
    `one_pass` asks, by default as the library chooses), then the backward pass of a policy-gradient loss with
    random advantages (what SCST's loss costs, whatever the rewards)."""
    started = time.perf_counter()
    with amp.autocast():
        samples = scst.sample_with_log_probs(decoder, features, vocab, args.samples, args.max_len,
                                             torch.Generator().manual_seed(seed), one_pass)
        advantage = torch.randn(samples.log_prob.shape, generator=torch.Generator().manual_seed(seed))  # [R]
        loss = -(advantage * samples.log_prob).mean()
    loss.backward()
    seconds = time.perf_counter() - started
    decoder.zero_grad(set_to_none=True)
    return seconds


def one_step(decoder, features, vocab, args, amp, sampler: str, seed: int) -> float:
    """Seconds of one SCST sampling step using `sampler`."""
    original = decode.draw
    decode.draw = SAMPLERS[sampler]
    try:
        return scst_step_seconds(decoder, features, vocab, args, amp, seed)
    finally:
        decode.draw = original


def alternate(step, names, repeats: int, check=None) -> dict[str, list[float]]:
    """Seconds of `step(name, seed, warm_up)` for each of `names`: one warm-up call each (first calls allocate),
    then `repeats` rounds, each led by the next name in turn (two names: the order flips every round), so a change
    of load hits all; `check(seed)` runs before each round (shared with the other SCST-step benchmarks)."""
    for name in names:
        step(name, 0, True)
    times = {name: [] for name in names}
    for repeat in range(repeats):
        if check is not None:
            check(repeat)
        lead = repeat % len(names)
        for name in names[lead:] + names[:lead]:
            times[name].append(step(name, repeat, False))
    return times


def ratio_summary(times: dict[str, list[float]], slower: str, faster: str, key: str) -> dict:
    """Every time, the medians, and the median and range of the ratio `slower` / `faster` of each pair."""
    ratios = [a / b for a, b in zip(times[slower], times[faster], strict=True)]
    return {"seconds_per_step": {name: [round(t, 4) for t in ts] for name, ts in times.items()},
            "median_seconds": {name: round(statistics.median(ts), 4) for name, ts in times.items()},
            f"{key}_median": round(statistics.median(ratios), 3),
            f"{key}_min_max": [round(min(ratios), 3), round(max(ratios), 3)]}


def measure(kind: str, cfg, args) -> dict:
    """Seconds per step with each sampler, alternating, and the ratio multinomial / draw of each pair."""
    torch.manual_seed(0)
    vocab = Vocabulary([f"w{i}" for i in range(args.vocab_size - 4)])  # + <pad> <start> <end> <unk>
    decoder = scst.policy_copy(decoders.build_decoder(kind, len(vocab), args.feature_dim, cfg)).train()
    features = torch.randn(args.images, cfg.grid_size ** 2, args.feature_dim)  # [B, P, C]
    amp = train.MixedPrecision.for_config(cfg, "cpu")

    def step(name, seed, warm_up):
        return one_step(decoder, features[:2] if warm_up else features, vocab, args, amp, name, seed)

    with train.cpu_threads(cfg.cpu_threads):
        times = alternate(step, list(SAMPLERS), args.repeats)
    return {"decoder": kind, "rows": args.images * args.samples, "vocab_size": len(vocab),
            **ratio_summary(times, "torch.multinomial", "decode.draw", "multinomial_over_draw")}


def with_defaults(args: argparse.Namespace, cfg) -> argparse.Namespace:
    """Fill the sizes not given from the profile (batch size, SCST sample length) and the recipe's record (words)."""
    args.images = args.images or cfg.batch_size
    args.max_len = args.max_len or int(cfg.scst_max_len or cfg.max_caption_len)
    args.vocab_size = args.vocab_size or json.loads(RECIPE_RESULTS.read_text())["runs"][-1]["vocab_size"]
    return args


def add_step_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the SCST step's sizes and config (shared with bench_decoder_state.py)."""
    parser.add_argument("--profile", default="flickr8k")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a config override")
    parser.add_argument("--images", type=int, default=None, help="images per SCST batch (default: the profile's "
                                                                    "batch size)")
    parser.add_argument("--samples", type=int, default=5, help="samples per image")
    parser.add_argument("--max-len", type=int, default=None, help="tokens per sample (default: the profile's "
                                                                  "scst_max_len)")
    parser.add_argument("--vocab-size", type=int, default=None, help="words in the vocabulary (default: the last "
                                                                     "recorded flickr8k recipe run's)")
    parser.add_argument("--feature-dim", type=int, default=1280, help="channels of the grid (EfficientNet-Lite0's "
                                                                      "head: the flickr8k profile's encoder)")


def add_run_arguments(parser: argparse.ArgumentParser, results: Path) -> None:
    """The options of how many pairs to time and where to record them (shared with the other SCST-step
    benchmarks)."""
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--label", required=True)
    parser.add_argument("--out", type=Path, default=results)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_step_arguments(parser)
    parser.add_argument("--kinds", nargs="+", default=["attention", "transformer"],
                        choices=["attention", "transformer"])
    add_run_arguments(parser, RESULTS)
    return parser.parse_args(argv)


def measure_and_record(argv, args, items, measure, script: str, goal: str) -> int:
    """Measure each of `items` (`measure(item, cfg, args)`) on the config of `args`, print each record and add the
    run to `args.out` (shared with bench_decoder_state.py)."""
    cfg = get_config(args.profile, device="cpu", **parse_overrides(args.set))
    with_defaults(args, cfg)
    runs = []
    for item in items:
        runs.append(measure(item, cfg, args))
        print(json.dumps({k: v for k, v in runs[-1].items() if k != "seconds_per_step"}), flush=True)
    record_run(args.out, {"label": args.label, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                          "command": f"python benchmarks/{script} " + " ".join(
                              argv if argv is not None else sys.argv[1:]),
                          "profile": cfg.profile, "mixed_precision": bool(cfg.mixed_precision),
                          "machine": machine_info(), "runs": runs}, goal)
    print(f"written to {args.out}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    return measure_and_record(argv, args, args.kinds, measure, "bench_scst_sampling.py", GOAL)


if __name__ == "__main__":
    raise SystemExit(main())
