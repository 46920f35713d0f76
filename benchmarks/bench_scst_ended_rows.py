"""SCST's ended samples leaving the batch: `scst.draw_captions` as the library runs it (the rows that ended leave
once they are a quarter of those still in it) against the same loop keeping every row to the last step
(`drop_at=1`, how the library sampled before) and dropping them at every step that ended one (`drop_at=0`).

A trained captioner ends most of its samples well before the longest one; a kept row spends every later step on
padding. Dropping rows costs a copy of the state each time (the Transformer's holds every layer's memory keys and
values for every sample), so how often to drop is a trade, timed here.

What is timed, for each decoder: `bench_scst_sampling.scst_step_seconds` (the flickr8k profile's SCST batch and the
backward pass, log p kept the library's way: one pass for the Transformer, the steps' graph for the LSTM) each
way, in turn, each round led by the next way, `--repeats` rounds, on the same weights. Random weights would run
every row to `--max-len`: the output layer's bias for `<end>` is raised so that a sample ends after about
`--mean-length` tokens (a trained decoder's captions, results/beyond.json's `words`, plus `<end>`), once at every
step with the same chance (calibrated on the first step), so some run to the end. The mean length each way drew is recorded beside its times:
the ways draw the same distribution but not the same tokens (a row that left takes no more random numbers).
What it buys end to end shows in results/beyond.json: the SCST batches that fit in the same 10 minutes.

    python benchmarks/bench_scst_ended_rows.py --label cpu-2cores
    python benchmarks/bench_scst_ended_rows.py --repeats 2 --images 8 --out /tmp/e.json --label smoke

Run from the repository root.
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import sys
from pathlib import Path

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scst_sampling import (  # noqa: E402
    add_run_arguments,
    add_step_arguments,
    alternate,
    measure_and_record,
    scst_step_seconds,
)

from labutils import decode, decoders, scst, train  # noqa: E402
from labutils.vocab import Vocabulary  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "scst_ended_rows.json"
GOAL = "SCST step with ended samples leaving the batch at a quarter faster than keeping them (ratio > 1)"
WAYS = {"dropped at a quarter": 0.25, "kept": 1.0, "dropped at every end": 0.0}
LIBRARY = "dropped at a quarter"


def ending_decoder(kind: str, vocab, cfg, features: Tensor, mean_length: float):
    """A decoder of `kind` with random weights whose samples from `features` [B, P, C] end after about
    `mean_length` tokens: its `<end>` bias is raised so that `<end>` is drawn with chance 1 / `mean_length` at the
    first step (of the median row; later steps' logits are alike), so a sample's length is about geometric with
    that mean, before `max_len` cuts it."""
    decoder = scst.policy_copy(decoders.build_decoder(kind, len(vocab), features.size(-1), cfg)).train()
    start = torch.full((features.size(0),), vocab.start_id, dtype=torch.long)  # [B]
    with torch.no_grad():
        logits = decode.words_only(decoder.step(start, decoder.init_state(features))[0].float(), vocab)  # [B, V]
        end = logits[:, vocab.end_id]  # [B]
        others = logits.index_fill(1, torch.tensor([vocab.end_id]), float("-inf")).logsumexp(1)  # [B]
        # p(<end>) = 1 / (1 + exp(others - end - bias)) = 1 / mean_length  <=>  bias = others - end - log(m - 1)
        decoder.fc.bias[vocab.end_id] += float((others - end).median()) - math.log(mean_length - 1)
    return decoder


def step_with(drop_at: float, *args, **kwargs) -> float:
    """`scst_step_seconds` with the sampler dropping ended rows at `drop_at`."""
    original = scst.draw_captions
    scst.draw_captions = functools.partial(original, drop_at=drop_at)
    try:
        return scst_step_seconds(*args, **kwargs)
    finally:
        scst.draw_captions = original


def measure(kind: str, cfg, args) -> dict:
    """Seconds per SCST step each way (`bench_scst_sampling.alternate`: `--repeats` rounds, each led by the next
    way), the ratio of each other way to the library's, and the mean sample length each way drew."""
    torch.manual_seed(0)
    vocab = Vocabulary([f"w{i}" for i in range(args.vocab_size - 4)])  # + <pad> <start> <end> <unk>
    features = torch.randn(args.images, cfg.grid_size ** 2, args.feature_dim)  # [B, P, C]
    decoder = ending_decoder(kind, vocab, cfg, features, args.mean_length)
    amp = train.MixedPrecision.for_config(cfg, "cpu")
    lengths = {name: [] for name in WAYS}

    def step(name, seed, warm_up):
        return step_with(WAYS[name], decoder, features[:2] if warm_up else features, vocab, args, amp, seed)

    def drawn_lengths(seed):
        rows = torch.arange(args.images).repeat_interleave(args.samples)  # [R]
        with torch.no_grad(), amp.autocast():
            state = decode.select_rows(decoder.init_state(features), rows)
            for name, drop_at in WAYS.items():
                mask = scst.draw_captions(decoder, state, vocab, args.max_len, torch.Generator().manual_seed(seed),
                                          drop_at)[2]  # [R, T]
                lengths[name].append(float(mask.sum(1).mean()))

    with train.cpu_threads(cfg.cpu_threads):
        times = alternate(step, list(WAYS), args.repeats, drawn_lengths)
    ratios = {name: [t / lib for t, lib in zip(times[name], times[LIBRARY], strict=True)]
              for name in WAYS if name != LIBRARY}
    return {"decoder": kind, "rows": args.images * args.samples, "vocab_size": len(vocab),
            "mean_length_asked": args.mean_length,
            "mean_length_drawn": {name: round(statistics.mean(ls), 2) for name, ls in lengths.items()},
            "seconds_per_step": {name: [round(t, 4) for t in ts] for name, ts in times.items()},
            "median_seconds": {name: round(statistics.median(ts), 4) for name, ts in times.items()},
            **{f"{name} / {LIBRARY}": {"median": round(statistics.median(rs), 3),
                                       "min_max": [round(min(rs), 3), round(max(rs), 3)]}
               for name, rs in ratios.items()}}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_step_arguments(parser)
    parser.add_argument("--kinds", nargs="+", default=["attention", "transformer"],
                        choices=["attention", "transformer"])
    parser.add_argument("--mean-length", type=float, default=10.0,
                        help="tokens a sample runs to on average, <end> included, before --max-len cuts it")
    add_run_arguments(parser, RESULTS)
    args = parser.parse_args(argv)
    if args.mean_length <= 1:
        parser.error(f"--mean-length must be above 1 (a sample is at least <end>), got {args.mean_length}.")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    return measure_and_record(argv, args, args.kinds, measure, "bench_scst_ended_rows.py", GOAL)


if __name__ == "__main__":
    raise SystemExit(main())
