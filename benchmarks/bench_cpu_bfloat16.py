"""CPU mixed precision: bfloat16 autocast vs float32 for the two costs of the flickr8k recipe on a CPU.

1. The feature cache: images per second of the flickr8k profile's frozen encoder (EfficientNet-Lite0's head
   convolution, BatchNorm folded, channels_last, as `features.build_feature_cache` runs it) on a batch of 64
   photos at 224 px, and how far its bfloat16 features are from the float32 ones (relative L2 error).
2. A training step: milliseconds per batch of the profile's attention decoder (64 captions of 13 tokens on a 7x7
   grid of 1280 channels: forward, cross-entropy, backward, Adam), float32 weights in both.

The two precisions are timed alternately in one process (median of `--repeats`, with the range), so each speed-up
is a same-run ratio. `infra.environment.native_bfloat16()` says whether this CPU computes bfloat16 in hardware;
where it does not, autocast emulates it and the ratio falls below 1, which is why the lab only turns it on there.
Whether the captions lose anything is measured end to end by `bench_flickr8k_recipe.py` (dev and test scores).

Run from the repository root:  OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_cpu_bfloat16.py [--repeats 5]
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
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine_info, record_run  # noqa: E402

from labutils import get_config  # noqa: E402
from labutils.decoders import build_decoder  # noqa: E402
from labutils.encoders import build_encoder, inference_copy  # noqa: E402
from labutils.infra.environment import native_bfloat16  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "cpu_bfloat16.json"
GOAL = ("on a CPU with hardware bfloat16, bfloat16 autocast faster than float32 (ratio above 1) for the feature cache "
        "and for a training step; what its feature error costs in caption scores is bench_flickr8k_recipe's to show")


def photos(n: int, size: int) -> torch.Tensor:
    """`n` real photos (scikit-image's, cycled), resized and normalised as the encoder's eval transform does."""
    import skimage.data

    from labutils.encoders import TF_LITE, eval_transform_for

    names = ("astronaut", "chelsea", "coffee", "rocket", "camera", "cat")
    transform = eval_transform_for(TF_LITE, size)
    images = []
    for i in range(n):
        array = getattr(skimage.data, names[i % len(names)])()
        if array.ndim == 2:
            array = array[..., None].repeat(3, axis=2)
        images.append(transform(torch.from_numpy(array).permute(2, 0, 1)))
    return torch.stack(images).contiguous(memory_format=torch.channels_last)  # [n, 3, size, size]


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up: oneDNN picks its kernels on the first call
    out = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def summary(seconds: list[float], per_call: int, unit: str) -> dict:
    rates = sorted(per_call / s for s in seconds)
    return {f"{unit}_median": round(statistics.median(rates), 1), f"{unit}_range": [round(rates[0], 1),
                                                                                   round(rates[-1], 1)]}


def encoder_numbers(repeats: int, batch: int, name: str | None = None) -> dict:
    """The profile's encoder, or `name` at the size its weights were trained at."""
    cfg = get_config("flickr8k", device="cpu")
    encoder = build_encoder(name or cfg.encoder, pretrained=True, grid_size=cfg.grid_size).eval()
    size = encoder.input_size if name else cfg.encoder_input_size
    fast, x = inference_copy(encoder), photos(batch, size)
    with torch.inference_mode():
        reference = fast(x)[0].float()  # [B, P, C]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            reduced = fast(x)[0].float()
        times = {"float32": [], "bfloat16": []}
        for _ in range(repeats):  # alternate, so that a burst of load hits both
            times["float32"] += timed(lambda: fast(x), 1)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                times["bfloat16"] += timed(lambda: fast(x), 1)
    return {"encoder": encoder.name, "input_size": size, "batch": batch,
            "float32": summary(times["float32"], batch, "images_per_s"),
            "bfloat16": summary(times["bfloat16"], batch, "images_per_s"),
            "speedup_median": round(statistics.median(times["float32"]) / statistics.median(times["bfloat16"]), 2),
            "relative_l2_error": round(float((reduced - reference).norm() / reference.norm()), 4)}


def training_numbers(repeats: int, batch: int, tokens: int) -> dict:
    cfg = get_config("flickr8k", device="cpu")
    torch.manual_seed(0)
    decoder = build_decoder("attention", 2543, 1280, cfg).train()  # the recipe's vocabulary size and channels
    optimizer = torch.optim.Adam(decoder.parameters(), lr=cfg.decoder_lr)
    features = torch.randn(batch, cfg.grid_size ** 2, 1280)  # [B, P, C]
    captions = torch.randint(4, 2543, (batch, tokens))  # [B, T]
    lengths = torch.full((batch,), tokens)

    def step(dtype):
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            out = decoder(features, captions, lengths)  # logits [B, T-1, V]
            loss = F.cross_entropy(out.logits.reshape(-1, out.logits.size(-1)).float(), captions[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    times = {"float32": [], "bfloat16": []}
    for _ in range(repeats):
        times["float32"] += timed(lambda: step(None), 1)
        times["bfloat16"] += timed(lambda: step(torch.bfloat16), 1)
    return {"decoder": "attention", "batch": batch, "tokens": tokens,
            "float32": summary(times["float32"], 1, "batches_per_s"),
            "bfloat16": summary(times["bfloat16"], 1, "batches_per_s"),
            "speedup_median": round(statistics.median(times["float32"]) / statistics.median(times["bfloat16"]), 2)}


def rate(numbers: dict, unit: str) -> str:
    """`median [min, max]` of one precision's rates, as `summary` recorded them."""
    return f"{numbers[f'{unit}_median']} {numbers[f'{unit}_range']}"


def table(results: dict) -> str:
    rows = ["| run | native bf16 | encoder | px | encoder img/s fp32 | bf16 | ratio | feature error | train batch/s fp32 | bf16 | "
            "ratio |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in results["runs"]:
        enc, tr = run["encoder"], run["training"]
        cells = [run["label"], run["native_bfloat16"], enc["encoder"], enc["input_size"],
                 rate(enc["float32"], "images_per_s"), rate(enc["bfloat16"], "images_per_s"),
                 f"{enc['speedup_median']}x", f"{enc['relative_l2_error']:.1%}",
                 rate(tr["float32"], "batches_per_s"), rate(tr["bfloat16"], "batches_per_s"), f"{tr['speedup_median']}x"]
        rows.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, every core)")
    parser.add_argument("--encoder", default=None, help="another encoder than the flickr8k profile's, e.g. "
                        "efficientnet_lite2_head (at its own input size)")
    parser.add_argument("--label", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--show", action="store_true", help="print the recorded runs as a table; run nothing")
    args = parser.parse_args(argv)
    if args.show:
        print(table(json.loads(args.out.read_text())))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = machine_info()["load_average_1_5_15min"]
    record = {"label": args.label, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "command": "python benchmarks/bench_cpu_bfloat16.py " + " ".join(sys.argv[1:]),
              "native_bfloat16": native_bfloat16(), "repeats": args.repeats,
              "encoder": encoder_numbers(args.repeats, 64, args.encoder), "training": training_numbers(args.repeats, 64, 13),
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "load_average_before": load_before,
              "machine": machine_info()}
    record_run(args.out, record, GOAL)
    print(table({"runs": [record]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
