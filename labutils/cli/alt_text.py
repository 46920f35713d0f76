"""`python -m labutils alt-text FOLDER --checkpoint FILE [--out DIR] [--metadata]`: alt text for a folder of photos.

Writes DIR/index.html (an accessible gallery: each caption is its image's alt text), DIR/alt_text.csv and, with
--metadata, copies of the photos under DIR/images/ holding the caption in their EXIF/XMP (pixels untouched).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from ..applications import alt_text_folder
from ..checkpoint import CheckpointError
from ..course import CaptionCommandError, load_captioner
from ..encoders import EncoderWeightsError
from ..infra.files import DiskFullError
from .caption import _at_least, _checkpoint_problem, _device


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a checkpoint saved by notebook 07 / labutils.train")
    parser.add_argument("--beam", type=_at_least(1, "use 1 for greedy decoding or 3-5 for beam search"), default=3,
                        help="beam size (1 = greedy); default 3")
    parser.add_argument("--max-len", type=_at_least(1, "it is the longest caption in words, e.g. 30"), default=30,
                        help="longest caption in words; default 30")
    parser.add_argument("--device", type=_device, default="cpu", help="cpu or cuda; default cpu")


def load_caption_fn(args: argparse.Namespace) -> tuple[Callable | None, int | None]:
    """(caption function for one PIL image, the side to decode photos at), or (None, None) after printing why
    the checkpoint cannot be used."""
    try:
        captioner = load_captioner(args.checkpoint, args.device)
    except (CaptionCommandError, CheckpointError, EncoderWeightsError, ValueError) as exc:
        print(f"error: {_checkpoint_problem(args.checkpoint, exc)}", file=sys.stderr)
        return None, None

    def caption_fn(image):
        return captioner.caption([image], beam=args.beam, max_len=args.max_len)[0]

    return caption_fn, captioner.decode_side


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m labutils alt-text", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="the folder of photos")
    add_model_options(parser)
    parser.add_argument("--out", type=Path, default=None, help="output folder; default FOLDER-alt-text beside it")
    parser.add_argument("--recursive", action="store_true", help="also caption the photos in sub-folders")
    parser.add_argument("--metadata", action="store_true",
                        help="store each caption in a copy's EXIF ImageDescription and XMP (JPEG, PNG)")
    parser.add_argument("--in-place", action="store_true",
                        help="with --metadata: write into the original files instead of copies (pixels unchanged)")
    parser.add_argument("--lang", default="en", help="language of the captions, for the page's lang attribute")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """0 when every file was captioned, 1 when some could not be read (they are listed), 2 on usage errors."""
    args = build_parser().parse_args(argv)
    if not args.folder.is_dir():
        print(f"error: {args.folder} is not a folder; pass the folder that holds the photos.", file=sys.stderr)
        return 2
    if args.in_place and not args.metadata:
        print("error: --in-place only applies to --metadata; add --metadata or drop --in-place.", file=sys.stderr)
        return 2
    caption_fn, side = load_caption_fn(args)
    if caption_fn is None:
        return 2
    out = args.out or args.folder.resolve().with_name(f"{args.folder.resolve().name}-alt-text")
    try:
        report = alt_text_folder(args.folder, caption_fn, out, write_metadata=args.metadata, in_place=args.in_place,
                                 progress=not args.no_progress, recursive=args.recursive, min_side=side,
                                 lang=args.lang)
    except DiskFullError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for row in report.unreadable:
        print(f"unreadable: {row.note}", file=sys.stderr)
    print(f"gallery: {report.html}\ncsv: {report.csv}")
    return 1 if report.unreadable else 0
