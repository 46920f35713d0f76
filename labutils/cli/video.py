"""`python -m labutils video FILE --checkpoint CKPT [--out FILE.vtt]`: caption a video scene by scene as WebVTT.

Frames are sampled every --every seconds, a new caption is made only when the scene changes (colour histogram
distance above --threshold), and the cues go to a .vtt file that a browser's <video><track> shows; --html also
writes a page that plays the video with them.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from urllib.parse import quote

from ..applications import SCENE_THRESHOLD, VideoReadError, caption_video, video_page, write_webvtt
from ..infra.files import DiskFullError, atomic_write_text
from .alt_text import add_model_options, load_caption_fn


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be above 0 seconds, e.g. 0.5")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m labutils video", description=__doc__.splitlines()[0])
    parser.add_argument("video", type=Path, help="the video file (MP4, AVI, ... whatever OpenCV can read)")
    add_model_options(parser)
    parser.add_argument("--out", type=Path, default=None, help="the .vtt file; default FILE.vtt beside the video")
    parser.add_argument("--every", type=_positive, default=0.5, help="seconds between sampled frames; default 0.5")
    parser.add_argument("--threshold", type=float, default=SCENE_THRESHOLD,
                        help=f"histogram distance (0-1) that starts a new scene; default {SCENE_THRESHOLD}")
    parser.add_argument("--html", type=Path, default=None, help="also write a page playing the video with the cues")
    return parser


def _url(target: Path, page: Path) -> str:
    return quote(Path(os.path.relpath(target.resolve(), page.resolve().parent)).as_posix())


def main(argv: list[str] | None = None) -> int:
    """0 when the subtitles were written, 1 when the video could not be read or written, 2 on usage errors."""
    args = build_parser().parse_args(argv)
    caption_fn, _ = load_caption_fn(args)
    if caption_fn is None:
        return 2
    out = args.out or args.video.with_suffix(".vtt")
    try:
        cues = caption_video(args.video, caption_fn, every_s=args.every, threshold=args.threshold)
        write_webvtt(cues, out)
        if args.html:
            atomic_write_text(args.html, video_page(_url(args.video, args.html), _url(out, args.html),
                                                    f"Captions for {args.video.name}"), what="the video page")
    except (VideoReadError, DiskFullError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{len(cues)} cues: {out}")
    return 0
