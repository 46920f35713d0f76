"""One epoch of decoder training on cached features vs one that runs the frozen encoder on every batch.

Each epoch trains a decoder of the lab (`labutils.decoders`, quick-profile sizes; both Show and Tell and
Show-Attend-Tell are measured) with Adam, cross-entropy and gradient clipping over the quick profile's full
training split, with the same initial weights and the same batches in the same order. The variants differ only
in where the grid features come from:

- cached: `labutils.features` (fp16 memory-mapped file, built once before; its build time is reported too);
- reference_plain (written here, the plain reference): load each JPEG, normalise it, run the frozen pretrained
  encoder (`encoders.build_encoder`, eval mode, `torch.no_grad()`) on every batch, as a training loop without a
  cache does;
- reference_fast: the same with `encoders.inference_copy` (BatchNorm folded, channels_last), the fastest frozen
  encoder we have, to show how much of the gain survives against an optimised encoder.

Each variant runs in its own child process, so its peak memory (ru_maxrss; on CUDA also
torch.cuda.max_memory_allocated) is its own. The first batch's loss is reported for every variant: cached and
reference must agree up to fp16 rounding of the features.

Run from the repository root:  python benchmarks/bench_feature_cache.py [--threads 1] [--device cpu] [--out PATH]
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/machine.py, also when a test imports this file

from machine import machine_info  # noqa: E402  (benchmarks/machine.py, next to this script)

from labutils import coco, course, data, encoders, features  # noqa: E402
from labutils.config import get_config  # noqa: E402
from labutils.decoders import build_decoder  # noqa: E402
from labutils.vocab import Vocabulary  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "feature_cache.json"
VARIANTS = ("cached", "reference_plain", "reference_fast")
DECODERS = ("show_and_tell", "attention")
NOTE = ("Each variant ran in its own process; peak_rss_mib is that process's maximum resident memory. "
        "The machine's cores may have been shared with other jobs: see the load averages per variant.")
THREADS_NOTE = (" Torch threads were fixed with --threads: on a machine shared with other jobs, one thread per "
                "process avoids OpenMP threads waiting on each other and gives far steadier timings.")


def current_rss_mib() -> float:
    """Resident memory now (Linux /proc), else the peak so far."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return peak_rss_mib()


def peak_rss_mib() -> float:
    """Peak resident memory of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def caption_loss(decoder, feats, batch, vocab, alpha_c: float) -> torch.Tensor:
    """Teacher-forced cross-entropy ignoring <pad>, plus the doubly stochastic attention penalty."""
    out = decoder(feats, batch.captions, batch.lengths)
    targets = batch.captions[:, 1:]
    loss = F.cross_entropy(out.logits.reshape(-1, out.logits.size(-1)), targets.reshape(-1),
                           ignore_index=vocab.pad_id)
    if out.alphas is not None:
        mask = (targets != vocab.pad_id).unsqueeze(-1).float()
        loss = loss + alpha_c * ((1.0 - (out.alphas * mask).sum(dim=1)) ** 2).mean()
    return loss


def run_variant(variant: str, kind: str, cache_dir: Path, device: str, max_batches: int | None = None) -> dict:
    """Child process: train one epoch of decoder `kind` the `variant` way; return timings and memory."""
    cfg = get_config("quick", device=device, build_dir=cache_dir)
    torch.manual_seed(cfg.seed)
    splits = coco.load_splits(cfg.split_file)
    captions = coco.captions_by_image(coco.load_captions(cfg))
    vocab = Vocabulary.build((c for i in splits["train"] for c in captions[i]), min_freq=cfg.min_freq)
    encoder = encoders.build_encoder(cfg.encoder, pretrained=True, grid_size=cfg.grid_size, progress=False)
    if variant == "cached":
        cache = features.ensure_features(cfg, encoder, progress=False)  # built by the parent: a cache hit
        source, fwd = cache.source, None
    else:
        file_names = data.file_names_from_captions(cfg.captions_file)
        source = data.ImageFolderSource(cfg.image_dir, file_names, encoder.eval_transform(cfg.encoder_input_size))
        frozen = encoders.inference_copy(encoder) if variant == "reference_fast" else encoder.eval()
        frozen = frozen.to(device)
        layout = torch.channels_last if variant == "reference_fast" else torch.contiguous_format

        def fwd(images):
            with torch.no_grad():
                return frozen(images.to(device).contiguous(memory_format=layout))[0]
    dataset = data.CaptionDataset(splits["train"], captions, vocab, source, mode="sample",
                                  max_len=cfg.max_caption_len, seed=cfg.seed)
    loader = data.make_loader(dataset, cfg, train=True, collate_fn=data.collate_captions)
    torch.manual_seed(cfg.seed)
    decoder = build_decoder(kind, len(vocab), encoder.out_channels, cfg).to(device).train()
    optimizer = torch.optim.Adam(decoder.parameters(), lr=cfg.decoder_lr)

    def step(batch) -> float:
        batch = batch._replace(captions=batch.captions.to(device), lengths=batch.lengths)
        feats = batch.inputs.to(device).float() if fwd is None else fwd(batch.inputs)
        loss = caption_loss(decoder, feats, batch, vocab, cfg.alpha_c)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder.parameters(), cfg.grad_clip)
        optimizer.step()
        return loss.item()

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_before = current_rss_mib()
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    start = time.perf_counter()
    losses = [step(batch) for batch in itertools.islice(loader, max_batches)]
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    out = {"variant": variant, "decoder": kind, "epoch_s": round(seconds, 3), "batches": len(losses), "images": len(dataset),
           "first_batch_loss": round(losses[0], 5), "last_batch_loss": round(losses[-1], 5),
           "rss_before_epoch_mib": round(rss_before, 1), "peak_rss_mib": round(peak_rss_mib(), 1),
           "epoch_rss_increase_mib": round(max(0.0, peak_rss_mib() - rss_before), 1),
           "load_average_1min_before_after": [load_before, os.getloadavg()[0] if load_before is not None else None]}
    if device.startswith("cuda"):
        out["cuda_peak_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def build_cache(cache_dir: Path, device: str) -> dict:
    """Child process: build the quick profile's cache from scratch (all splits) and time it."""
    cfg = get_config("quick", device=device, build_dir=cache_dir)
    encoder = encoders.build_encoder(cfg.encoder, pretrained=True, grid_size=cfg.grid_size, progress=False)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    start = time.perf_counter()
    cache = features.ensure_features(cfg, encoder, progress=False)
    seconds = time.perf_counter() - start
    return {"variant": "build_cache", "images": len(cache), "seconds": round(seconds, 2),
            "images_per_s": round(len(cache) / seconds, 1), "encode_loop_images_per_s": cache.meta["build"]["images_per_s"],
            "cache_mib": round(cache.nbytes / 2**20, 1), "shape": list(cache.shape), "peak_rss_mib": round(peak_rss_mib(), 1),
            "load_average_1min_before_after": [load_before, os.getloadavg()[0] if load_before is not None else None]}


def child(args, variant: str, cache_dir: Path, kind: str | None = None) -> dict:
    """Run one variant in a fresh interpreter and parse its JSON line."""
    cmd = [sys.executable, __file__, "--child", variant, "--cache-dir", str(cache_dir), "--device", args.device]
    if kind:
        cmd += ["--decoder", kind]
    if args.max_batches:
        cmd += ["--max-batches", str(args.max_batches)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    """Parse arguments, run the variants, write the results JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads in every variant (default: torch's own choice, one per core)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--max-batches", type=int, default=None,
                        help="stop each epoch after this many batches (a smoke test; results are then partial)")
    parser.add_argument("--child", choices=(*VARIANTS, "build_cache"), help=argparse.SUPPRESS)
    parser.add_argument("--decoder", choices=DECODERS, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child == "build_cache":
        print(json.dumps(build_cache(args.cache_dir, args.device)))
        return
    if args.child:
        print(json.dumps(run_variant(args.child, args.decoder, args.cache_dir, args.device, args.max_batches)))
        return

    cfg = get_config("quick")
    course.ensure_dataset(cfg, progress=False)
    info = machine_info()
    with tempfile.TemporaryDirectory(prefix="bench-feature-cache-") as tmp:
        build = child(args, "build_cache", Path(tmp))
        runs = {kind: {variant: child(args, variant, Path(tmp), kind) for variant in VARIANTS} for kind in DECODERS}
    summary = {}
    for kind, by_variant in runs.items():
        cached = by_variant["cached"]["epoch_s"]
        plain, fast = by_variant["reference_plain"]["epoch_s"], by_variant["reference_fast"]["epoch_s"]
        summary[kind] = {
            "cached_epoch_s": cached, "reference_plain_epoch_s": plain, "reference_fast_epoch_s": fast,
            "speedup_vs_plain_reference": round(plain / cached, 1),
            "speedup_vs_fast_reference": round(fast / cached, 1),
            "meets_10x_vs_plain_reference": plain / cached >= 10.0,
            "break_even_epochs": round(build["seconds"] / (plain - cached), 2) if plain > cached else None,
            "peak_rss_mib": {v: by_variant[v]["peak_rss_mib"] for v in VARIANTS},
            "epoch_rss_increase_mib": {v: by_variant[v]["epoch_rss_increase_mib"] for v in VARIANTS},
            "first_batch_loss_difference_cached_vs_plain": round(
                abs(by_variant["cached"]["first_batch_loss"] - by_variant["reference_plain"]["first_batch_loss"]), 5),
        }
    command = "python benchmarks/bench_feature_cache.py"
    command += f" --device {args.device}" if args.device != "cpu" else ""
    command += f" --threads {args.threads}" if args.threads else ""
    result = {
        "benchmark": "feature_cache",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "profile": "quick",
        "max_batches": args.max_batches,
        "train_images": runs[DECODERS[0]]["cached"]["images"],
        "batch_size": cfg.batch_size,
        "encoder": f"{cfg.encoder} (pretrained) at {cfg.encoder_input_size} px, grid {cfg.grid_size}x{cfg.grid_size}",
        "device": args.device,
        "torch_threads": args.threads or torch.get_num_threads(),
        "target": "cached epoch >= 10x faster than the plain reference",
        "summary": summary,
        "cache_build": build,
        "epochs": runs,
        "machine": {**info, "load_average_after": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
        "note": NOTE + (THREADS_NOTE if args.threads else ""),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for kind, row in summary.items():
        print(f"{kind}: cached epoch {row['cached_epoch_s']:.1f} s vs plain reference {row['reference_plain_epoch_s']:.1f} s "
              f"({row['speedup_vs_plain_reference']}x) and fast reference {row['reference_fast_epoch_s']:.1f} s "
              f"({row['speedup_vs_fast_reference']}x)")
    print(f"cache built in {build['seconds']:.1f} s ({build['images_per_s']} images/s); written to {args.out}")


if __name__ == "__main__":
    main()
