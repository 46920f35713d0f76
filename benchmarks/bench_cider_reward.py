"""The SCST reward: labutils.scst.CiderD (vectorised, built once) vs pycocoevalcap's Cider on the same captions.

Self-critical training scores every sampled caption with CIDEr-D at every step, so the reward must not cost more
than the step. The plain way is pycocoevalcap's `Cider().compute_score` on each batch: it re-counts every
reference's n-grams and the document frequencies on every call, in Python dicts. `CiderD` counts the training
references once and scores a batch with integer-coded n-grams and numpy gathers.

Data: Flickr8k's real captions (the local copy in ../shared/flickr8k, see its README). The candidates are, for
each of the first `--images` training images, a reference caption of ANOTHER random training image (a plausible
but wrong caption, like a sample from a half-trained model), PTB-tokenised as the lab's vocabulary words are.
Both scorers get the same tokens; references are tokenised beforehand (`vocab.tokenize`), outside the timing.

Two batch sizes are timed, `repeats` times each, the two scorers back to back so a load change hits both sides:
all candidates in one call, and SCST-sized calls (`--batch-images` images x `--samples` samples per image).
`CiderD` is built on all 6,000 training images (the SCST setup: document frequencies from the training set) and
timed without its one-off build (recorded separately). An equality check builds `CiderD` on exactly the images
pycocoevalcap sees and records the largest per-caption difference.

  python benchmarks/bench_cider_reward.py              # ~1 minute on one core; writes results/cider_reward.json
  python benchmarks/bench_cider_reward.py --images 500 --repeats 1 --out /tmp/c.json   # a quick try

Run from the repository root.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/machine.py, also when a test imports this file

from machine import machine_info  # noqa: E402  (benchmarks/machine.py, next to this script)
from pycocoevalcap.cider.cider import Cider  # noqa: E402

from labutils.scst import CiderD  # noqa: E402
from labutils.vocab import tokenize  # noqa: E402

FLICKR8K = ROOT.parent / "shared" / "flickr8k"
RESULTS = ROOT / "benchmarks" / "results" / "cider_reward.json"


def load_flickr8k_train(folder: Path) -> dict[str, list[str]]:
    """{image name: [5 captions]} of the training split of a Flickr8k folder laid out as the official archives."""
    text = folder / "Flickr8k_text"
    if not (text / "Flickr8k.token.txt").is_file():
        raise SystemExit(f"No Flickr8k captions at {text}; pass --flickr8k with the folder holding Flickr8k_text/.")
    train = set((text / "Flickr_8k.trainImages.txt").read_text().split())
    captions: dict[str, list[str]] = defaultdict(list)
    for line in (text / "Flickr8k.token.txt").read_text().splitlines():
        key, caption = line.split("\t", 1)
        if key.split("#")[0] in train:
            captions[key.split("#")[0]].append(caption)
    return dict(captions)


def make_candidates(references: dict[str, list[list[str]]], n_images: int, seed: int):
    """(image ids, candidate word lists): for each image, a reference of another random image."""
    rng = random.Random(seed)
    names = sorted(references)
    ids = names[:n_images]
    others = [(k + rng.randrange(1, len(names))) % len(names) for k in range(len(ids))]  # never the image itself
    return ids, [rng.choice(references[names[other]]) for other in others]


def time_both(cider: CiderD, tokens: dict, ids: list, candidates: list, batch: int) -> tuple[float, float]:
    """Seconds of CiderD and of pycocoevalcap's Cider to score all candidates, `batch` candidates per call."""
    start = time.perf_counter()
    for b in range(0, len(ids), batch):
        cider.scores(ids[b:b + batch], candidates[b:b + batch])
    ours = time.perf_counter() - start
    start = time.perf_counter()
    for b in range(0, len(ids), batch):
        # pycocoevalcap keys by image: a batch of several samples per image goes as several "images".
        keys = range(b, min(b + batch, len(ids)))
        Cider().compute_score({k: [" ".join(r) for r in tokens[ids[k]]] for k in keys},
                              {k: [" ".join(candidates[k])] for k in keys})
    return ours, time.perf_counter() - start


def summary(ours: list[float], coco: list[float], n: int) -> dict:
    ratios = [c / o for o, c in zip(ours, coco, strict=True)]
    return {"ciderd_s_all": [round(t, 4) for t in ours], "pycocoevalcap_s_all": [round(t, 3) for t in coco],
            "ciderd_captions_per_s_median": round(n / statistics.median(ours)),
            "ciderd_captions_per_s_min_max": [round(n / max(ours)), round(n / min(ours))],
            "pycocoevalcap_captions_per_s_median": round(n / statistics.median(coco)),
            "pycocoevalcap_captions_per_s_min_max": [round(n / max(coco)), round(n / min(coco))],
            "speedup_median": round(statistics.median(ratios), 1),
            "speedup_min_max": [round(min(ratios), 1), round(max(ratios), 1)]}


def equality_check(tokens: dict, ids: list, candidates: list) -> float:
    """Largest |CiderD - pycocoevalcap| per caption when both take df from exactly the scored images."""
    gts = {k: [" ".join(r) for r in tokens[i]] for k, i in enumerate(ids)}
    coco = Cider().compute_score(gts, {k: [" ".join(c)] for k, c in enumerate(candidates)})[1]
    ours = CiderD({k: [r.split() for r in refs] for k, refs in gts.items()}).scores(list(gts), candidates)
    return float(np.abs(ours - coco).max())


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flickr8k", type=Path, default=FLICKR8K)
    parser.add_argument("--images", type=int, default=5000, help="candidates: one per training image")
    parser.add_argument("--batch-images", type=int, default=50, help="images per SCST batch")
    parser.add_argument("--samples", type=int, default=5, help="samples per image in an SCST batch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    captions = load_flickr8k_train(args.flickr8k)
    tokens = {name: [tokenize(c) for c in caps] for name, caps in captions.items()}
    start = time.perf_counter()
    cider = CiderD(tokens)  # df from the whole training split, as in SCST
    build_s = time.perf_counter() - start
    ids, candidates = make_candidates(tokens, args.images, args.seed)
    # An SCST batch: batch_images images, `samples` captions each (the candidates of other images stand in).
    batch_ids = [i for i in ids[: len(ids) // args.samples] for _ in range(args.samples)]
    settings = {"all candidates in one call": (ids, candidates, len(ids)),
                f"SCST batches of {args.batch_images} images x {args.samples} samples":
                    (batch_ids, candidates[: len(batch_ids)], args.batch_images * args.samples)}
    runs = []
    for name, (run_ids, run_candidates, batch) in settings.items():
        time_both(cider, tokens, run_ids[:batch], run_candidates[:batch], batch)  # warm-up
        load_before = os.getloadavg()
        times = [time_both(cider, tokens, run_ids, run_candidates, batch) for _ in range(args.repeats)]
        run = {"setting": name, "candidates": len(run_ids), "candidates_per_call": batch, "repeats": args.repeats,
               **summary([t[0] for t in times], [t[1] for t in times], len(run_ids)),
               "load_average_1_5_15min_before": [round(x, 2) for x in load_before],
               "load_average_1_5_15min_after": [round(x, 2) for x in os.getloadavg()]}
        print(json.dumps({k: v for k, v in run.items() if not k.endswith("_s_all")}))
        runs.append(run)
    result = {
        "benchmark": "CIDEr-D reward for SCST: labutils.scst.CiderD.scores vs pycocoevalcap Cider().compute_score "
                     "on the same tokenised captions (benchmarks/bench_cider_reward.py)",
        "command": "python benchmarks/bench_cider_reward.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "data": f"Flickr8k training split ({len(tokens)} images, {sum(map(len, tokens.values()))} references); "
                "each candidate is a reference caption of another random training image",
        "ciderd_build_s": round(build_s, 3),
        "max_abs_difference_same_df": equality_check(tokens, ids, candidates),
        "runs": runs,
        "machine": {k: v for k, v in machine_info().items() if k != "load_average_1_5_15min"},
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "note": "CPU, one process; numpy and pycocoevalcap are single-threaded here. CiderD is built once on all "
                "training references (ciderd_build_s, references already tokenised) and not counted in the "
                "per-call times; pycocoevalcap recomputes its reference side on every call, which is its design.",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")
    return 0 if result["max_abs_difference_same_df"] < 1e-9 else 1


if __name__ == "__main__":
    raise SystemExit(main())
