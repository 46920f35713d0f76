"""Batched beam search (labutils.decode.beam_search) vs the library's per-image search (beam_search_one_image).

`labutils.decode.beam_search_one_image` is the readable search notebook 08 shows, structured like seed 002
(sgrvinod's a-PyTorch-Tutorial-to-Image-Captioning, caption.py): ONE image at a time, its live beams are the batch,
the beam count shrinks as beams emit <end>, finished captions are kept in a Python list.
`labutils.decode.beam_search` runs the same search for all images and all beams at once: one `decoder.step` call
per time step for everything. Both break score ties the same way (a stable descending sort: lower beam, then lower
word) and rank by raw log-prob (length_penalty=0), so they must pick the same best caption for every image.

Each repeat times both searches back to back; the speed-up's median and spread (min, max) over the repeats are
recorded with the torch thread count, OMP_WAIT_POLICY and the load average, one run per thread setting. A run
replaces the recorded run of the same model variant and thread count and keeps the others, so the thread settings
can be measured one process each (OpenMP reads OMP_WAIT_POLICY when torch starts):

  OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_beam_search.py --threads 2
  OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_beam_search.py --threads 1
  python benchmarks/bench_beam_search.py --images 8 --repeats 1 --out /tmp/bs.json   # a quick try, nothing recorded

Run from the repository root.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/machine.py, also when a test imports this file

from machine import machine_info  # noqa: E402  (benchmarks/machine.py, next to this script)

from labutils import decode  # noqa: E402
from labutils.decoders import ShowAttendTell  # noqa: E402
from labutils.vocab import Vocabulary  # noqa: E402

CHECKPOINT = ROOT / "build" / "checkpoints" / "quick" / "attention.pt"
RESULTS = ROOT / "benchmarks" / "results" / "beam_search.json"
# What a recorded run must share with a new one for both to sit in one results file.
SETUP_KEYS = ("model", "decoder_sizes", "features", "images", "beam_size", "max_len", "length_penalty")


class LengthPrior(torch.nn.Module):
    """Wraps a random-init decoder so that <end> becomes likely after about `length` words, as in a trained model.

    An untrained decoder almost never emits <end>, so every search runs to max_len and nothing can stop early:
    the worst case for the batched search. This wrapper (same step interface; the extra state is a per-row step
    counter) adds `slope * (step - length)` to the <end> logit, giving captions of trained-model length.
    """

    def __init__(self, decoder, end_id: int, length: float = 10.0, slope: float = 1.5):
        super().__init__()
        self.decoder, self.end_id, self.length, self.slope = decoder, end_id, length, slope
        self.vocab_size, self.uses_attention = decoder.vocab_size, decoder.uses_attention

    def init_state(self, features):
        return (*self.decoder.init_state(features), torch.zeros(features.size(0)))

    def step(self, tokens, state):
        logits, inner, alpha = self.decoder.step(tokens, state[:-1])
        steps = state[-1] + 1
        logits[:, self.end_id] += self.slope * (steps - self.length)
        return logits, (*inner, steps), alpha


def load_model(seed: int, random_init: bool = False):
    """The quick profile's trained attention decoder if its checkpoint exists, else a seeded random one."""
    if CHECKPOINT.is_file() and not random_init:
        from labutils.checkpoint import load_checkpoint
        from labutils.train import decoder_from_checkpoint

        data = load_checkpoint(CHECKPOINT)
        return decoder_from_checkpoint(data).eval(), Vocabulary.from_dict(data["vocab"]), \
            f"trained checkpoint {CHECKPOINT.relative_to(ROOT)} (epoch {data.get('epoch')})"
    torch.manual_seed(seed)
    # The quick profile's sizes: 36 words + 4 specials, EfficientNet-Lite0's 1280 channels on a 4x4 grid.
    vocab = Vocabulary([f"word{i:02d}" for i in range(36)])
    decoder = ShowAttendTell(len(vocab), feature_dim=1280, embed_dim=64, hidden_dim=256, attention_dim=128)
    return decoder.eval(), vocab, f"random init (torch.manual_seed({seed}))"


def load_features(n_images: int, seed: int, channels: int, trained: bool) -> tuple[torch.Tensor, str]:
    """Cached encoder features of the first test images when a trained model and its cache exist, else random."""
    if trained:
        try:
            from labutils.config import get_config
            from labutils.features import FeatureCache

            cfg = get_config("quick")
            test_ids = json.loads(Path(cfg.split_file).read_text())["test"][:n_images]
            for folder in sorted(Path(cfg.feature_dir).glob("*")):
                try:
                    cache = FeatureCache.load(folder)
                except (FileNotFoundError, ValueError):
                    continue
                if cache.channels == channels and all(i in cache for i in test_ids):
                    feats = cache.batch(test_ids)
                    return feats, f"cached quick-profile features of the first {len(test_ids)} test images " \
                                  f"({folder.relative_to(ROOT)})"
            print("(no complete feature cache matches the checkpoint; using random features)")
        except (OSError, ValueError, KeyError) as exc:
            print(f"(cached features unavailable: {type(exc).__name__}: {exc}; using random features)")
    gen = torch.Generator().manual_seed(seed)
    # Non-negative like the encoder's post-activation grid.
    feats = torch.randn(n_images, 16, channels, generator=gen).relu()
    return feats, f"random relu(N(0,1)) features, seed {seed}"


def time_searches(decoder, vocab, feats, beam: int, max_len: int, repeats: int):
    """(per-image seconds, batched seconds) of every repeat, and the captions of the last one."""
    decode.beam_search_one_image(decoder, feats[0], vocab, beam_size=beam, max_len=max_len)  # warm-up
    decode.beam_search(decoder, feats[:8], vocab, beam_size=beam, max_len=max_len)  # warm-up
    per_image_s, batched_s = [], []
    for _ in range(repeats):  # back to back, so a load change hits both sides of a ratio alike
        start = time.perf_counter()
        per_image = [decode.beam_search_one_image(decoder, f, vocab, beam_size=beam, max_len=max_len) for f in feats]
        per_image_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        batched = decode.best_of(decode.beam_search(decoder, feats, vocab, beam_size=beam, max_len=max_len))
        batched_s.append(time.perf_counter() - start)
    return per_image_s, batched_s, per_image, batched


def run_once(decoder, vocab, feats, beam: int, max_len: int, repeats: int) -> dict:
    """Time both searches `repeats` times; the speed-up's median and spread; do their best captions agree?"""
    load_before = os.getloadavg()
    per_image_s, batched_s, per_image, batched = time_searches(decoder, vocab, feats, beam, max_len, repeats)
    speedups = [p / b for p, b in zip(per_image_s, batched_s, strict=True)]
    same = [one.tokens == out.tokens for one, out in zip(per_image, batched, strict=True)]
    return {
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset (the OpenMP runtime's default)"),
        "repeats": repeats,
        "per_image_s_all": [round(t, 3) for t in per_image_s],
        "batched_s_all": [round(t, 3) for t in batched_s],
        "per_image_s_median": round(statistics.median(per_image_s), 3),
        "batched_s_median": round(statistics.median(batched_s), 3),
        "speedup_median": round(statistics.median(speedups), 2),
        "speedup_min_max": [round(min(speedups), 2), round(max(speedups), 2)],
        "identical_best_captions": int(sum(same)),
        "images": len(same),
        "mismatched_images": [i for i, ok in enumerate(same) if not ok][:20],
        "max_abs_log_prob_difference": max(abs(one.log_prob - out.log_prob)
                                           for one, out in zip(per_image, batched, strict=True)),
        "finished_captions": int(sum(out.finished for out in batched)),
        "mean_caption_tokens": round(sum(len(out) for out in batched) / len(batched), 2),
        "load_average_1_5_15min_before": [round(x, 2) for x in load_before],
        "load_average_1_5_15min_after": [round(x, 2) for x in os.getloadavg()],
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def merge_runs(out: Path, result: dict) -> dict:
    """`result` with the runs already recorded in `out` for the same setup kept, unless this run redoes them."""
    try:
        recorded = json.loads(out.read_text())
    except (OSError, ValueError):
        return result
    if any(recorded.get(key) != result[key] for key in SETUP_KEYS):
        print(f"({out} was recorded with another setup; its runs are replaced, not merged)")
        return result
    redone = {(run["model_variant"], run["torch_threads"]) for run in result["runs"]}
    kept = [run for run in recorded.get("runs", [])
            if (run.get("model_variant"), run.get("torch_threads")) not in redone]
    return {**result, "runs": sorted(kept + result["runs"], key=lambda r: (r["model_variant"], r["torch_threads"]))}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--max-len", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs of both searches (the speed-up's median and spread are recorded)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="torch CPU thread counts to run, one run each (e.g. --threads 2)")
    parser.add_argument("--prior-length", type=float, default=10.0,
                        help="for a random-init model, also run it wrapped in LengthPrior(length=this) so captions "
                             "end as a trained model's do (0 to skip)")
    parser.add_argument("--random-init", action="store_true",
                        help="ignore the trained checkpoint: random-init decoder with 1280-channel random features")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="results file; runs of the same setup already in it are kept (a tiny try: /tmp/...)")
    parser.add_argument("--show", action="store_true", help="print the recorded results as a table; run nothing")
    return parser.parse_args(argv)


def table(results: dict) -> str:
    """The recorded runs as a Markdown table (what benchmarks/README.md points at)."""
    rows = ["| model | torch threads | OMP_WAIT_POLICY | per-image (median) | batched (median) | speed-up "
            "[min, max] | same best caption | load avg 1 min | date |", "|---|---|---|---|---|---|---|---|---|"]
    for run in results["runs"]:
        low, high = run["speedup_min_max"]
        rows.append(f"| {run['model_variant']} | {run['torch_threads']} | {run.get('omp_wait_policy') or '-'} | "
                    f"{run['per_image_s_median']:.2f} s | {run['batched_s_median']:.3f} s | "
                    f"**{run['speedup_median']:.1f}x** [{low:.1f}, {high:.1f}] | "
                    f"{run['identical_best_captions']} / {run['images']} | "
                    f"{run['load_average_1_5_15min_before'][0]:.2f} | {run['date'][:10]} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.show:
        print(table(json.loads(args.out.read_text())))
        return 0
    decoder, vocab, model_note = load_model(args.seed, args.random_init)
    trained = CHECKPOINT.is_file() and not args.random_init
    feats, feature_note = load_features(args.images, args.seed, decoder.feature_dim, trained=trained)
    variants = [("as is", decoder)]
    if not trained and args.prior_length:
        variants.append((f"random init + LengthPrior(length={args.prior_length}): <end> likely after about "
                         f"{args.prior_length:g} words, like a trained model",
                         LengthPrior(decoder, vocab.end_id, args.prior_length).eval()))
    command = "python benchmarks/bench_beam_search.py " + " ".join(argv if argv is not None else sys.argv[1:])
    runs = []
    for name, model in variants:
        for threads in args.threads:
            torch.set_num_threads(threads)
            run = {"model_variant": name, "command": command,
                   **run_once(model, vocab, feats, args.beam, args.max_len, args.repeats)}
            print(json.dumps({k: run[k] for k in ("model_variant", "torch_threads", "omp_wait_policy",
                                                  "per_image_s_median", "batched_s_median", "speedup_median",
                                                  "speedup_min_max", "identical_best_captions",
                                                  "load_average_1_5_15min_after")}))
            runs.append(run)
    result = {
        "benchmark": f"beam search k={args.beam} over {args.images} images: batched labutils.decode.beam_search "
                     "vs the per-image labutils.decode.beam_search_one_image (benchmarks/bench_beam_search.py)",
        "model": model_note,
        "decoder_sizes": {"vocab": len(vocab), "positions": feats.shape[1], "channels": feats.shape[2],
                          "embed": decoder.embedding.embedding_dim, "hidden": decoder.hidden_dim,
                          "attention": decoder.full_att.in_features},
        "features": feature_note, "images": len(feats),
        "beam_size": args.beam, "max_len": args.max_len, "length_penalty": 0.0,
        "runs": runs,
        "machine": {k: v for k, v in machine_info().items() if k not in ("load_average_1_5_15min", "torch_threads")},
        "note": "CPU only. Each run records its own load averages; each speed-up compares the two searches timed "
                "back to back in the same process, and its spread over the repeats shows how noisy the machine was.",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(merge_runs(args.out, result), indent=2) + "\n")
    print(f"written to {args.out}")
    return 0 if all(r["identical_best_captions"] == r["images"] for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
