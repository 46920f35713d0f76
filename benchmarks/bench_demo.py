"""Demo page: seconds per photo on CPU, from the photo's bytes to the caption and the attention figure.

Measures `labutils.cli.demo.caption_for_page` (read and check the upload, encode, decode, draw the word-by-word
figure: everything the page waits for except the speech) for greedy decoding and beam search with 3 beams, the
speech (espeak-ng) separately, and the whole round trip through the running page's HTTP API with gradio_client
(upload, queue, caption, figure, speech, the answer's files), which is what a visitor waits for.

Photos: `flickr8k`, the first `--n` real photos of the local Flickr8k copy (224x224 there), and `camera`, a few
scikit-image photos upscaled to 4032x3024 JPEG q90 (a 12-megapixel phone photo: decoding it is part of the cost).
Models: the quick profile's checkpoint and, when present, the Flickr8k one (224-pixel input, a larger decoder);
`--checkpoint` adds others. Each photo is captioned `--repeats` times after one warm-up; a photo's time is its
median, and the summary is the median (and the slowest) over photos.

Run from the repository root:
    python benchmarks/bench_demo.py                # about 2 minutes on 2 cores
    python benchmarks/bench_demo.py --threads 1 --n 20
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/machine.py

RESULTS = ROOT / "benchmarks" / "results" / "demo_latency.json"
DEFAULT_PHOTOS = ROOT.parent / "shared" / "flickr8k" / "Flicker8k_Dataset"
CHECKPOINTS = {"quick": ROOT / "build" / "checkpoints" / "quick" / "attention.pt",
               "flickr8k": ROOT / "build" / "checkpoints" / "flickr8k" / "attention.pt"}
CAMERA_SIZE = (4032, 3024)
METHODS = {"greedy": ("greedy", 1), "beam3": ("beam", 3)}


def flickr_photos(folder: Path, n: int) -> list[bytes]:
    return [path.read_bytes() for path in sorted(folder.glob("*.jpg"))[:n]]


def camera_photos() -> list[bytes]:
    """Phone-sized JPEGs of scikit-image's photos (bicubic upscaling: smooth, like a real photo's detail)."""
    from PIL import Image
    from skimage import data

    out = []
    for name in ("chelsea", "astronaut", "coffee", "rocket", "cat"):
        buffer = io.BytesIO()
        Image.fromarray(getattr(data, name)()).resize(CAMERA_SIZE, Image.BICUBIC).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def summary(seconds: list[float]) -> dict:
    return {"median": round(statistics.median(seconds), 4), "max": round(max(seconds), 4), "photos": len(seconds)}


def time_page(captioner, photos: list[bytes], method: str, beam: int, repeats: int) -> tuple[dict, list[str]]:
    """Median over photos of each photo's median seconds in caption_for_page; and the captions."""
    from labutils.cli.demo import caption_for_page

    caption_for_page(captioner, photos[0], method, beam)  # warm-up: first-call allocations, lazy imports
    per_photo, captions = [], []
    for photo in photos:
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            result = caption_for_page(captioner, photo, method, beam)
            runs.append(time.perf_counter() - start)
        assert result.figure is not None, result.status
        per_photo.append(statistics.median(runs))
        captions.append(result.caption)
    return summary(per_photo), captions


def time_speech(captions: list[str], folder: Path) -> dict | str:
    from labutils.cli.demo import speech_for_page

    seconds = []
    for index, text in enumerate(captions):
        start = time.perf_counter()
        audio, problem = speech_for_page(text, folder / f"speech_{index}.wav")
        if audio is None:
            return problem
        seconds.append(time.perf_counter() - start)
    return summary(seconds)


def time_round_trip(captioner, photos: list[bytes], folder: Path, repeats: int) -> dict:
    """Upload -> caption, figure and speech back, through the running page's HTTP API (greedy)."""
    from gradio_client import Client, handle_file

    from labutils.cli.demo import build_demo, serve

    page = build_demo(captioner)
    try:
        client = Client(serve(page, "127.0.0.1", _free_port(), block=False), verbose=False,
                        download_files=str(folder / "downloads"), analytics_enabled=False)
        paths = []
        for index, photo in enumerate(photos):
            paths.append(folder / f"upload_{index}.jpg")
            paths[-1].write_bytes(photo)
        client.predict(handle_file(str(paths[0])), "greedy", 3, 1.0, 0.9, api_name="/on_photo")  # warm-up
        per_photo = []
        for path in paths:
            runs = []
            for _ in range(repeats):
                start = time.perf_counter()
                caption, figure, _audio, status = client.predict(handle_file(str(path)), "greedy", 3, 1.0, 0.9,
                                                                 api_name="/on_photo")
                runs.append(time.perf_counter() - start)
            assert caption and figure, status
            per_photo.append(statistics.median(runs))
        return summary(per_photo)
    finally:
        page.close()


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def measure_model(path: Path, sets: dict, args, work: Path) -> dict:
    from labutils.course import load_captioner

    captioner = load_captioner(path)
    out = {"path": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
           "input_size": captioner.input_size, "seconds_per_photo": {}}
    for set_name, photos in sets.items():
        for label, (method, beam) in METHODS.items():
            print(f"  {set_name} {label} ...", flush=True)
            timing, captions = time_page(captioner, photos, method, beam, args.repeats)
            out["seconds_per_photo"][f"{set_name}/{label}"] = timing
        out["seconds_per_photo"][f"{set_name}/speech"] = time_speech(captions, work)
    print("  round trip through the page's HTTP API ...", flush=True)
    out["round_trip_greedy_seconds"] = {name: time_round_trip(captioner, photos, work / name, args.repeats)
                                        for name, photos in sets.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS, help="a folder of .jpg photos")
    parser.add_argument("--n", type=int, default=10, help="Flickr8k photos (default 10)")
    parser.add_argument("--repeats", type=int, default=3, help="captions of each photo (median); default 3")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--checkpoint", type=Path, action="append", default=[], help="another checkpoint")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import torch
    from machine import machine_info

    if args.threads:
        torch.set_num_threads(args.threads)
    sets = {"flickr8k": flickr_photos(args.photos, args.n), "camera": camera_photos()}
    sets = {name: photos for name, photos in sets.items() if photos}
    models = {name: path for name, path in CHECKPOINTS.items() if path.is_file()}
    models.update({path.stem: path for path in args.checkpoint})
    started, results = time.time(), {}
    with tempfile.TemporaryDirectory(prefix="bench_demo_") as tmp:
        for name, path in models.items():
            print(f"{name}: {path}", flush=True)
            results[name] = measure_model(path, sets, args, Path(tmp) / name)
    record = {"benchmark": "demo_latency", "date": dt.date.today().isoformat(), "machine": machine_info(),
              "settings": {"repeats": args.repeats, "threads": args.threads, "max_len": 30,
                           "speech_engine": shutil.which("espeak-ng")},
              "photos": {"flickr8k": f"first {len(sets.get('flickr8k', []))} of {args.photos} (224x224 JPEG)",
                         "camera": f"{len(sets['camera'])} scikit-image photos upscaled to "
                                   f"{CAMERA_SIZE[0]}x{CAMERA_SIZE[1]} JPEG q90"},
              "models": results, "minutes": round((time.time() - started) / 60, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    for name, model in results.items():
        print(name, json.dumps(model["seconds_per_photo"]), json.dumps(model["round_trip_greedy_seconds"]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
