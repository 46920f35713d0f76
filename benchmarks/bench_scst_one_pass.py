"""How SCST keeps the gradient of a Transformer's samples: drawn without a graph and scored again in one causal
pass over the words that count (`scst.sample_with_log_probs`, the library's way for a decoder with
`teacher_forced`), against keeping the graph of every sampling step (`one_pass=False`, the way the LSTMs keep it).

Both give the same samples, the same log p and the same gradient (tests/test_scst.py); they differ in the work
the backward pass does: one step per word, each a set of small matrix products over the batch's rows, against a
few large ones over all the words at once, with the padding after `<end>` left out of the output layer.

What is timed: `bench_scst_sampling.scst_step_seconds` (the flickr8k profile's SCST batch, then the backward pass,
under the profile's mixed precision) for each way, alternating, `--repeats` pairs, on the same weights and seeds
(they draw the same tokens: checked at every pair). Random weights and features: every row runs all `--max-len`
tokens here, so the padding a trained model leaves after `<end>` is not skipped; SCST's batches per minute on the
real checkpoints are in results/beyond.json.

    python benchmarks/bench_scst_one_pass.py --label cpu-2cores
    python benchmarks/bench_scst_one_pass.py --repeats 2 --images 8 --out /tmp/t.json --label smoke

Run from the repository root.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scst_sampling import (  # noqa: E402
    add_run_arguments,
    add_step_arguments,
    alternate,
    measure_and_record,
    ratio_summary,
    scst_step_seconds,
)

from labutils import decoders, scst, train  # noqa: E402
from labutils.vocab import Vocabulary  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "scst_one_pass.json"
GOAL = "SCST step of the Transformer with its samples scored in one pass faster than with the steps' graph " \
       "(ratio > 1), same tokens"
WAYS = {"one pass": True, "steps' graph": False}


def measure(layers: int, cfg, args) -> dict:
    """Seconds per SCST step of a Transformer of `layers` layers each way, alternating, and the ratio
    steps' graph / one pass of each pair."""
    cfg = cfg.replace(transformer_layers=layers)
    torch.manual_seed(0)
    vocab = Vocabulary([f"w{i}" for i in range(args.vocab_size - 4)])  # + <pad> <start> <end> <unk>
    decoder = scst.policy_copy(decoders.build_decoder("transformer", len(vocab), args.feature_dim, cfg)).train()
    features = torch.randn(args.images, cfg.grid_size ** 2, args.feature_dim)  # [B, P, C]
    amp = train.MixedPrecision.for_config(cfg, "cpu")

    def step(name, seed, warm_up):
        return scst_step_seconds(decoder, features[:2] if warm_up else features, vocab, args, amp, seed, WAYS[name])

    def check(seed):
        with torch.no_grad(), amp.autocast():
            drawn = [scst.sample_with_log_probs(decoder, features, vocab, args.samples, args.max_len,
                                                torch.Generator().manual_seed(seed), one_pass).tokens
                     for one_pass in WAYS.values()]
        if not torch.equal(*drawn):
            raise RuntimeError("the two ways sampled different captions from the same seed")

    with train.cpu_threads(cfg.cpu_threads):
        times = alternate(step, list(WAYS), args.repeats, check)
    return {"decoder": "transformer", "layers": layers, "rows": args.images * args.samples,
            "vocab_size": len(vocab), **ratio_summary(times, "steps' graph", "one pass", "steps_over_one_pass")}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_step_arguments(parser)
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 3], help="Transformer layer counts to time")
    add_run_arguments(parser, RESULTS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    return measure_and_record(argv, args, args.layers, measure, "bench_scst_one_pass.py", GOAL)


if __name__ == "__main__":
    raise SystemExit(main())
