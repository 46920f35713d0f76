"""Caption command: peak memory and seconds per photo for 200+ photos, streaming vs the old load-everything path.

`python -m labutils caption` used to decode every photo at full size, keep them all, caption them in ONE batch,
print nothing until all were done, and draw each attention figure with matplotlib. It now decodes at reduced size
(twice the encoder input; JPEG draft mode), captions in batches of 16 as the photos stream in, prints each caption
when its batch is done, and composes the attention figures with NumPy/Pillow on a background thread.

The plain reference, `reference_old_command`, is the old command's code path rebuilt here (same loader, same
`Captioner`, the old matplotlib figure). Every variant runs in a fresh child process, which reports its peak
resident memory (VmHWM: it starts afresh at `exec`, unlike ru_maxrss) and its wall and CPU seconds per photo
counted from the moment the model is loaded. The captions of both paths are compared photo by photo.

Two folders of `--n` photos each:
  * `flickr8k`: the first photos of the local Flickr8k copy (`--photos`, default ../shared/flickr8k; real photos,
    224x224 there), or synthetic 224x224 pictures when that folder is absent;
  * `large`: the same pictures upscaled to 1600x1200 JPEG (quality 90) in a temporary folder, the size range
    where reduced-size decoding matters (a phone photo is 4032x3024). Nothing is copied into the repository.

The model: `build/checkpoints/quick/attention.pt` if a finished quick run left one, else a quick-profile
Show-Attend-Tell trained here for about a minute into build/bench_caption_cli/ (captions of shapes: the timings do
not depend on what the captions say).

Run from the repository root:
    python benchmarks/bench_caption_cli.py --threads 1                 # about 15 minutes on 2 cores
    python benchmarks/bench_caption_cli.py --photos DIR --n 300 --repeats 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/machine.py

RESULTS = ROOT / "benchmarks" / "results" / "caption_cli.json"
DEFAULT_PHOTOS = ROOT.parent / "shared" / "flickr8k"
LARGE_SIZE = (1600, 1200)
BEAM, MAX_LEN = 3, 30
VARIANTS = {  # name -> (code path, figure suffix or None)
    "before": ("reference", None),
    "after": ("command", None),
    "after_png_figures": ("command", ".png"),
    "after_jpg_figures": ("command", ".jpg"),
}
OLD_FIGURE_VARIANTS = {"before_subset": ("reference", None), "before_png_figures_subset": ("reference", ".png")}


# ------------------------------------------------------------------------------------------- the old code path
def reference_plot_attention(image, words, alphas, grid_size, save_to, title, cols=5):
    """labutils.viz.plot_attention and save_figure as they were: matplotlib, tight_layout, bbox_inches='tight'."""
    import matplotlib.pyplot as plt
    import numpy as np

    from labutils.viz import as_array, upsample_attention

    picture = as_array(image)
    height, width = picture.shape[:2]
    panels = len(words) + 1
    rows = int(np.ceil(panels / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    axes.flat[0].imshow(picture)
    axes.flat[0].set_title(title or "input", fontsize=9)
    heats = [upsample_attention(alphas[i], grid_size, height, width) for i in range(len(words))]
    top = max((float(h.max()) for h in heats), default=1.0)
    for i, word in enumerate(words):
        ax = axes.flat[i + 1]
        ax.imshow(picture)
        ax.imshow(heats[i], cmap="magma", alpha=0.6, extent=(0, width, height, 0), vmin=0.0, vmax=top)
        ax.set_title(f"{word}  ({alphas[i].max():.2f})", fontsize=9)
    fig.tight_layout()
    Path(save_to).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(save_to, dpi=90, bbox_inches="tight")
    plt.close(fig)


def reference_old_command(paths, checkpoint, figures: Path | None, marks: dict) -> int:
    """The old `main`: decode every photo at full size, caption all in one batch, then print and draw."""
    from PIL import ImageOps

    from labutils.course import load_captioner
    from labutils.data import load_image

    captioner = load_captioner(checkpoint)
    marks["loaded"] = time.perf_counter(), _cpu()
    images = [load_image(path) for path in paths]
    captions = captioner.caption(images, beam=BEAM, max_len=MAX_LEN)
    for index, (name, image, caption) in enumerate(zip(paths, images, captions, strict=True)):
        print(f"{name}: {caption.text}")
        if figures:
            seen = ImageOps.fit(image, (captioner.input_size, captioner.input_size))
            reference_plot_attention(seen, list(caption.words), caption.alphas.cpu().numpy(),
                                     captioner.encoder.grid_size, figures.with_name(f"att_{index + 1}{figures.suffix}"),
                                     Path(name).name)
    return 0


# ------------------------------------------------------------------------------------------- one child process
def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _vmhwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_child(args) -> None:
    """Run one variant on the photos listed in `args.list`; captions to stdout, measurements to `args.report`."""
    import matplotlib

    matplotlib.use("Agg")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from labutils.cli import caption as caption_cli

    paths = Path(args.list).read_text().split("\n")
    figures = Path(args.figures) if args.figures else None
    marks: dict = {}
    if args.child == "reference":
        code = reference_old_command(paths, args.checkpoint, figures, marks)
    else:
        load = caption_cli.load_captioner

        def timed_load(*a, **k):
            captioner = load(*a, **k)
            marks["loaded"] = time.perf_counter(), _cpu()
            return captioner

        caption_cli.load_captioner = timed_load
        draw = caption_cli.attention_figure

        def timed_figure(*a, **k):  # the drawing and encoding, on the main thread (the file write is not)
            started = time.perf_counter()
            data = draw(*a, **k)
            marks.setdefault("figures", []).append(time.perf_counter() - started)
            return data

        caption_cli.attention_figure = timed_figure
        argv = [*paths, "--checkpoint", str(args.checkpoint), "--beam", str(BEAM), "--max-len", str(MAX_LEN)]
        code = caption_cli.main(argv + (["--attention-out", str(figures)] if figures else []))
    sys.stdout.flush()
    wall, cpu = time.perf_counter() - marks["loaded"][0], _cpu() - marks["loaded"][1]
    report = {"exit_code": code, "photos": len(paths), "peak_rss_mib": _vmhwm_mib(),
              "seconds_per_photo": wall / len(paths), "cpu_seconds_per_photo": cpu / len(paths)}
    if "figures" in marks:  # the first figure pays one-off imports (matplotlib's colour map, fonts)
        report["drawing_seconds_per_photo"] = sum(marks["figures"]) / len(paths)
        report["drawing_share_of_time"] = sum(marks["figures"]) / wall
        report["drawing_first_seconds"] = marks["figures"][0]
        report["drawing_median_seconds"] = statistics.median(marks["figures"])
    Path(args.report).write_text(json.dumps(report))


def measure(variant: str, paths: list[Path], checkpoint: Path, work: Path, threads: int | None) -> tuple[dict, dict]:
    """Run `variant` in a fresh process; return (its report, {photo: caption})."""
    child, suffix = {**VARIANTS, **OLD_FIGURE_VARIANTS}[variant]
    listing, report = work / f"{variant}.list", work / f"{variant}.report.json"
    listing.write_text("\n".join(map(str, paths)))
    figures = work / f"{variant}_figures" / f"att{suffix}" if suffix else None
    cmd = [sys.executable, __file__, "--child", child, "--list", str(listing), "--report", str(report),
           "--checkpoint", str(checkpoint)] + (["--figures", str(figures)] if figures else [])
    if threads:
        cmd += ["--threads", str(threads)]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{done.stderr[-3000:]}")
    captions = dict(line.split(": ", 1) for line in done.stdout.splitlines() if not line.startswith("  "))
    result = json.loads(report.read_text())
    if figures:
        made = list(figures.parent.iterdir())
        result["figures"] = len(made)
        result["figure_kib_mean"] = round(sum(p.stat().st_size for p in made) / len(made) / 1024, 1)
        for path in made:
            path.unlink()
    return result, captions


# ------------------------------------------------------------------------------------------- photos and model
def photo_folder(photos: Path, n: int, work: Path) -> tuple[list[Path], str]:
    """The first `n` photos of a folder (or of its Flickr8k image folder); synthetic pictures when it is absent."""
    folder = photos / "Flicker8k_Dataset" if (photos / "Flicker8k_Dataset").is_dir() else photos
    found = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")) \
        if folder.is_dir() else []
    if len(found) >= n:
        return found[:n], f"real photos from {folder}"
    return synthetic_photos(work / "synthetic", n, (224, 224)), f"synthetic pictures ({folder} has fewer than {n})"


def synthetic_photos(folder: Path, n: int, size: tuple[int, int]) -> list[Path]:
    """Photo-like JPEGs: smooth random colour fields with a few ellipses (no real photos needed)."""
    import numpy as np
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for index in range(n):
        field = Image.fromarray((rng.random((6, 8, 3)) * 255).astype(np.uint8)).resize(size, Image.BICUBIC)
        draw = ImageDraw.Draw(field)
        for _ in range(3):
            x, y = rng.integers(0, size[0]), rng.integers(0, size[1])
            r = rng.integers(size[0] // 12, size[0] // 4)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        paths.append(folder / f"synthetic_{index:04d}.jpg")
        field.save(paths[-1], quality=90)
    return paths


def upscaled(paths: list[Path], folder: Path) -> list[Path]:
    from PIL import Image

    from labutils.data import load_image

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for path in paths:
        out.append(folder / f"{path.stem}_large.jpg")
        load_image(path).resize(LARGE_SIZE, Image.BICUBIC).save(out[-1], quality=90)
    return out


def find_or_train_checkpoint(given: Path | None) -> tuple[Path, dict]:
    from labutils import checkpoint, course, get_config

    finished = [given] if given else [course.checkpoint_path_for(get_config("quick"), "attention")]
    for path in finished:
        if path and path.is_file():
            saved = checkpoint.load_checkpoint(path)
            return path, {"path": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
                          "trained_here": False, "test_bleu4": saved.get("test_metric")}
    cfg = get_config("quick", build_dir=ROOT / "build" / "bench_caption_cli", time_budget_s=60)
    path = course.checkpoint_path_for(cfg, "attention")
    if not path.is_file():
        print(f"No quick checkpoint: training a small one for about a minute into {path} ...", flush=True)
        course.train_quick_captioner(cfg, "attention", progress=False)
    saved = checkpoint.load_checkpoint(path)
    return path, {"path": str(path.relative_to(ROOT)), "trained_here": True, "test_bleu4": saved.get("test_metric")}


def decoding_check(paths: list[Path], checkpoint: Path) -> dict:
    """Does reduced-size decoding change captions more than an imperceptible change of the photo does?

    Captions of full-size decodes against (a) reduced-size decodes and (b) a control: the full-size photo made one
    pixel narrower and shorter. Also how far reduced decoding moves the encoder's input (pixels in [-1, 1]).
    """
    from PIL import Image

    from labutils.course import load_captioner
    from labutils.data import load_image

    captioner = load_captioner(checkpoint)
    transform = captioner.encoder.eval_transform(captioner.input_size)

    def captions(load) -> list[str]:
        texts = []
        for start in range(0, len(paths), 16):
            images = [load(path) for path in paths[start:start + 16]]
            texts += [c.text for c in captioner.caption(images, beam=BEAM, max_len=MAX_LEN)]
        return texts

    def one_pixel_smaller(path):
        image = load_image(path)
        return image.resize((image.width - 1, image.height - 1), Image.BILINEAR)

    full = captions(load_image)
    reduced = captions(lambda p: load_image(p, min_side=captioner.decode_side))
    control = captions(one_pixel_smaller)
    diffs = [float((transform(load_image(p)) - transform(load_image(p, min_side=captioner.decode_side))).abs().mean())
             for p in paths[:40]]
    return {"photos": len(paths), "decode_side": captioner.decode_side,
            "reduced_same_caption_as_full": sum(a == b for a, b in zip(full, reduced, strict=True)),
            "control_one_pixel_smaller_same_caption_as_full": sum(a == b for a, b in zip(full, control, strict=True)),
            "input_mean_abs_difference": round(statistics.mean(diffs), 5),
            "input_mean_abs_difference_worst_photo": round(max(diffs), 5), "input_difference_photos": len(diffs)}


# ------------------------------------------------------------------------------------------- the comparison
def summarise(runs: list[dict]) -> dict:
    keys = [key for key in ("seconds_per_photo", "cpu_seconds_per_photo", "peak_rss_mib",
                            "drawing_seconds_per_photo", "drawing_share_of_time", "drawing_first_seconds",
                            "drawing_median_seconds") if key in runs[0]]
    out = {key: {"median": round(statistics.median(r[key] for r in runs), 4),
                 "min": round(min(r[key] for r in runs), 4), "max": round(max(r[key] for r in runs), 4),
                 "runs": [round(r[key], 4) for r in runs]} for key in keys}
    for extra in ("figures", "figure_kib_mean"):
        if extra in runs[0]:
            out[extra] = runs[0][extra]
    return out


def compare_folder(name: str, paths: list[Path], checkpoint: Path, work: Path, args) -> dict:
    variants, captions = {}, {}
    for variant in VARIANTS:
        runs = []
        for _ in range(args.repeats):
            report, captions[variant] = measure(variant, paths, checkpoint, work, args.threads)
            runs.append(report)
            print(f"  {name} {variant}: {report['seconds_per_photo'] * 1000:.1f} ms/photo, "
                  f"{report['peak_rss_mib']:.0f} MiB", flush=True)
        variants[variant] = summarise(runs)
    subset = paths[: args.old_figures]
    for variant in OLD_FIGURE_VARIANTS:
        report, _ = measure(variant, subset, checkpoint, work, args.threads)
        print(f"  {name} {variant}: {report['seconds_per_photo'] * 1000:.1f} ms/photo", flush=True)
        variants[variant] = summarise([report])
    same = sum(captions["before"][str(p)] == captions["after"][str(p)] for p in paths)
    differing = [{"photo": p.name, "before": captions["before"][str(p)], "after": captions["after"][str(p)]}
                 for p in paths if captions["before"][str(p)] != captions["after"][str(p)]]
    return {"photos": len(paths), "variants": variants, "captions_identical": f"{same}/{len(paths)}",
            "captions_differing": differing[:10], "ratios": ratios(variants)}


def ratios(v: dict) -> dict:
    def med(name, key="seconds_per_photo"):
        return v[name][key]["median"]

    def share(with_figures, without, key):
        return round(1 - med(without, key) / med(with_figures, key), 3)

    return {
        "peak_memory_before_over_after": round(med("before", "peak_rss_mib") / med("after", "peak_rss_mib"), 2),
        "seconds_per_photo_before_over_after": round(med("before") / med("after"), 2),
        "figure_share_of_time_png": share("after_png_figures", "after", "seconds_per_photo"),
        "figure_share_of_time_jpg": share("after_jpg_figures", "after", "seconds_per_photo"),
        "figure_share_of_cpu_png": share("after_png_figures", "after", "cpu_seconds_per_photo"),
        "figure_share_of_cpu_jpg": share("after_jpg_figures", "after", "cpu_seconds_per_photo"),
        "old_figure_share_of_time": share("before_png_figures_subset", "before_subset", "seconds_per_photo"),
        "old_figure_seconds": round(med("before_png_figures_subset") - med("before_subset"), 3),
        "new_png_figure_seconds": round(med("after_png_figures") - med("after"), 4),
        "new_jpg_figure_seconds": round(med("after_jpg_figures") - med("after"), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS, help="a folder of photos (Flickr8k layout ok)")
    parser.add_argument("--n", type=int, default=240, help="photos per folder (default 240)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each variant (median, min, max)")
    parser.add_argument("--old-figures", type=int, default=12,
                        help="photos for the old matplotlib figures (about 2 s each), default 12")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process (default: torch's)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="an attention checkpoint to use")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", choices=("reference", "command"), help=argparse.SUPPRESS)
    parser.add_argument("--list", help=argparse.SUPPRESS)
    parser.add_argument("--report", help=argparse.SUPPRESS)
    parser.add_argument("--figures", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args)
        return

    from machine import machine_info

    from labutils.cli.caption import DEFAULT_BATCH_SIZE

    checkpoint, model = find_or_train_checkpoint(args.checkpoint)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bench_caption_cli_") as tmp:
        work = Path(tmp)
        photos, source = photo_folder(args.photos, args.n, work)
        large = upscaled(photos, work / "large")
        folders = {"flickr8k": (photos, source), "large": (large, f"{source}, upscaled to "
                                                                  f"{LARGE_SIZE[0]}x{LARGE_SIZE[1]} JPEG q90")}
        results = {}
        for name, (paths, described) in folders.items():
            print(f"{name}: {len(paths)} photos ({described})", flush=True)
            results[name] = {"source": described, **compare_folder(name, paths, checkpoint, work, args)}
        print("large: reduced-size decoding against full-size decoding and a one-pixel control ...", flush=True)
        results["large"]["decoding_check"] = decoding_check(large, checkpoint)
    record = {
        "benchmark": "caption_cli", "date": dt.date.today().isoformat(), "machine": machine_info(),
        "settings": {"beam": BEAM, "max_len": MAX_LEN, "batch_size": DEFAULT_BATCH_SIZE, "threads": args.threads,
                     "repeats": args.repeats, "old_figure_photos": args.old_figures},
        "model": model, "folders": results, "minutes": round((time.time() - started) / 60, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    for name, folder in results.items():
        print(name, json.dumps(folder["ratios"]), "captions identical:", folder["captions_identical"])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
