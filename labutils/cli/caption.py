"""`python -m labutils caption IMAGE... --checkpoint FILE`: caption your own images (and see, and hear, them).

Options: `--beam K`, `--attention-out PNG` (the word-by-word attention figure), `--speak DIR` (the caption aloud).

Images are read one batch at a time, decoded at reduced size (twice the encoder's input is all it needs) and each
caption is printed as soon as its batch is done, so memory stays bounded however many photos are given.
`--speak DIR` also reads each caption aloud into a WAV (cat.jpg -> DIR/cat.wav) with the offline engine
espeak-ng (labutils.applications.speak); without espeak-ng the captions are still printed, one sentence says how
to install it, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path

from ..applications import SpeechEngineMissingError, SpeechError, speak
from ..checkpoint import CheckpointError
from ..course import CaptionCommandError, Captioner, load_captioner
from ..encoders import EncoderWeightsError
from ..infra.files import DiskFullError, atomic_write_bytes
from ..infra.images import ImageLoadError, load_image
from ..viz import attention_mosaic, encode_image

DEFAULT_BATCH_SIZE = 16
_FIGURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


# ---------------------------------------------------------------------------------------------------------------
# Streaming: read, caption and hand back one batch at a time
# ---------------------------------------------------------------------------------------------------------------
def read_images(names: Iterable[str], min_side: int | None,
                failed: list[str]) -> Iterator[tuple[tuple[int, str], object]]:
    """Yield ((position, name), upright RGB image) lazily; an unreadable file is reported on stderr and added to
    `failed`."""
    for position, name in enumerate(names):
        try:
            image = load_image(name, min_side=min_side)
        except ImageLoadError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            failed.append(name)
            continue
        yield (position, name), image


def caption_stream(captioner: Captioner, keyed_images: Iterable[tuple[object, object]], batch_size: int,
                   beam: int = 1, max_len: int = 30) -> Iterator[tuple[object, object, object]]:
    """Yield (key, image, Caption) in input order, pulling at most `batch_size` images ahead of the caller."""
    keyed_images = iter(keyed_images)
    while batch := list(islice(keyed_images, batch_size)):
        captions = captioner.caption([image for _, image in batch], beam=beam, max_len=max_len)
        for (key, image), caption in zip(batch, captions, strict=True):
            yield key, image, caption
        del batch, captions  # free this batch's images before the next one is read


def attention_figure(captioner: Captioner, image, caption, suffix: str, title: str) -> bytes:
    """The word-by-word attention of one caption over the view of the photo that the encoder had, encoded."""
    from PIL import Image, ImageOps

    # ImageOps.fit = shorter side to size + centre crop: the same view the encoder got (bilinear: Pillow's
    # resize filters all antialias, and bicubic cost a tenth of the figure's time for no visible difference).
    seen = ImageOps.fit(image, (captioner.input_size, captioner.input_size), method=Image.BILINEAR)
    mosaic = attention_mosaic(seen, list(caption.words), caption.alphas.cpu().numpy(), captioner.encoder.grid_size,
                              title=title)
    return encode_image(mosaic, suffix)


def _attention_path(base: Path, index: int, total: int) -> Path:
    return base if total == 1 else base.with_name(f"{base.stem}_{index + 1}{base.suffix}")


class FigureFiles:
    """Writes figures on one background thread, so the disk's wait (the atomic write's fsync, which can take longer
    than drawing the figure) overlaps with captioning the next photos; at most `ahead` files wait.

    Each "attention figure: PATH" line is printed, in order, once its file is complete; a file that cannot be
    written is one sentence on stderr and counts in `close()`'s result.
    """

    def __init__(self, ahead: int = 8):
        from concurrent.futures import ThreadPoolExecutor

        self.ahead, self.failed = ahead, 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="figure-files")
        self._pending: deque = deque()

    def write(self, path: Path, data: bytes) -> None:
        self._pending.append((path, self._pool.submit(atomic_write_bytes, path, data,
                                                      f"the attention figure {path.name}")))
        self._report(keep=self.ahead)

    def close(self) -> int:
        """Wait for the last files; return how many could not be written."""
        self._report(keep=0)
        self._pool.shutdown()
        return self.failed

    def _report(self, keep: int) -> None:
        """Report finished files in order, waiting for the oldest while more than `keep` are pending."""
        while self._pending and (len(self._pending) > keep or self._pending[0][1].done()):
            path, job = self._pending.popleft()
            try:
                job.result()
            except DiskFullError as exc:  # its message is already the whole sentence
                print(f"error: {exc}", file=sys.stderr, flush=True)
                self.failed += 1
                continue
            except OSError as exc:
                print(f"error: could not write {path}: {exc.strerror or exc}", file=sys.stderr, flush=True)
                self.failed += 1
                continue
            print(f"  attention figure: {path}", flush=True)


class CaptionSpeech:
    """Reads each caption aloud into `folder`/<photo stem>.wav and prints "speech: PATH" once the file is complete.

    A stem that several arguments share is numbered by position (cat_1.wav, cat_3.wav), so no WAV overwrites
    another. A missing engine is said once (its sentence says how to install it) and no more WAVs are tried; a WAV
    that cannot be written is one sentence for that photo. Every photo left unspoken counts in `unspoken`.
    """

    def __init__(self, folder: Path, names: Sequence[str]):
        self.folder, self.unspoken, self.engine_missing = folder, 0, False
        self._stems = Counter(Path(name).stem for name in names)

    def path(self, position: int, name: str) -> Path:
        stem = Path(name).stem
        return self.folder / (f"{stem}.wav" if self._stems[stem] == 1 else f"{stem}_{position + 1}.wav")

    def say(self, position: int, name: str, text: str) -> None:
        if self.engine_missing:
            self.unspoken += 1
            return
        path = self.path(position, name)
        try:
            speak(text, path)
        except SpeechEngineMissingError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            self.engine_missing, self.unspoken = True, self.unspoken + 1
            return
        except SpeechError as exc:  # its message names the file and what to check
            print(f"error: {exc}", file=sys.stderr, flush=True)
            self.unspoken += 1
            return
        except OSError as exc:  # the folder could not be created
            print(f"error: could not write {path}: {exc.strerror or exc}", file=sys.stderr, flush=True)
            self.unspoken += 1
            return
        print(f"  speech: {path}", flush=True)


# ---------------------------------------------------------------------------------------------------------------
# Arguments: every mistake is an argument error (exit 2) with one sentence
# ---------------------------------------------------------------------------------------------------------------
def _at_least(minimum: int, meaning: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; {meaning}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is too small, it must be at least {minimum}; {meaning}")
        return value

    return parse


def _device(text: str) -> str:
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; use cpu, or cuda on a machine with an "
                                         "NVIDIA GPU") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise argparse.ArgumentTypeError(f"{text!r} needs a CUDA GPU, and PyTorch sees none on this machine; "
                                             "use --device cpu (or leave --device out)")
        if device.index is not None and device.index >= count:
            raise argparse.ArgumentTypeError(f"{text!r} names GPU {device.index}, but this machine has {count} "
                                             f"(cuda:0 to cuda:{count - 1})")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError("'mps' needs an Apple-silicon Mac with PyTorch's MPS support; use "
                                             "--device cpu")
    elif device.type != "cpu":
        raise argparse.ArgumentTypeError(f"{text!r} is not a device this command runs on; use cpu or cuda")
    return text


def _figure_path(text: str) -> str:
    if Path(text).suffix.lower() not in _FIGURE_SUFFIXES:
        raise argparse.ArgumentTypeError(f"{text!r} has no image suffix; end it with .png (or .jpg / .webp)")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m labutils caption", description=__doc__.splitlines()[0],
                                     epilog="exit status: 0 when every photo was captioned and every figure and "
                                            "WAV written; 1 when some were not (an unreadable photo, a file that "
                                            "could not be written, espeak-ng not installed), the captions that "
                                            "could be made still printed; 2 on usage or checkpoint errors.")
    parser.add_argument("images", nargs="+", help="image files (JPEG, PNG, WebP, ...)")
    parser.add_argument("--checkpoint", required=True, help="a checkpoint saved by notebook 07 / labutils.train")
    parser.add_argument("--beam", type=_at_least(1, "use 1 for greedy decoding or 3-5 for beam search"), default=3,
                        help="beam size (1 = greedy); default 3")
    parser.add_argument("--max-len", type=_at_least(1, "it is the longest caption in words, e.g. 30"), default=30,
                        help="longest caption in words; default 30")
    parser.add_argument("--batch-size", type=_at_least(1, "it is how many photos are captioned together, e.g. 16"),
                        default=DEFAULT_BATCH_SIZE, help=f"photos captioned together; default {DEFAULT_BATCH_SIZE}")
    parser.add_argument("--attention-out", type=_figure_path, default=None,
                        help="save the word-by-word attention figure here (.png, or .jpg: about 20x quicker to "
                             "write for many photos); numbered when several images")
    parser.add_argument("--speak", metavar="DIR", default=None,
                        help="also read each caption aloud into a WAV in DIR (cat.jpg -> DIR/cat.wav; DIR is "
                             "created if needed, --speak . for the current folder) with the offline engine "
                             "espeak-ng")
    parser.add_argument("--device", type=_device, default="cpu", help="cpu or cuda; default cpu")
    return parser


def _checkpoint_problem(path: str, exc: Exception) -> str:
    """The sentence for a checkpoint that cannot be used; a photo or JSON given by mistake gets its own hint."""
    if getattr(exc, "kind", None) == "not_torch":
        return (f"{path} is {exc.looks_like}, not a checkpoint: give the .pt file that notebook 07 saved "
                "(build/checkpoints/<profile>/attention.pt) as --checkpoint, and your photos before it.")
    return str(exc)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry; returns 0 when every image was captioned (and every figure and WAV written), 1 when some
    could not be (an unreadable photo, an unwritable file, espeak-ng missing for --speak), 2 on usage errors."""
    args = build_parser().parse_args(argv)

    try:
        captioner = load_captioner(args.checkpoint, args.device)
    except (CaptionCommandError, CheckpointError, EncoderWeightsError, ValueError) as exc:
        print(f"error: {_checkpoint_problem(args.checkpoint, exc)}", file=sys.stderr)
        return 2
    if args.attention_out and not getattr(captioner.decoder, "uses_attention", False):
        print("error: this checkpoint's decoder (Show and Tell) has no attention to draw; "
              "drop --attention-out or use an attention checkpoint.", file=sys.stderr)
        return 2

    failed: list[str] = []
    figures = FigureFiles() if args.attention_out else None
    voice = CaptionSpeech(Path(args.speak), args.images) if args.speak else None
    images = read_images(args.images, captioner.decode_side, failed)
    try:
        for (position, name), image, caption in caption_stream(captioner, images, args.batch_size, beam=args.beam,
                                                               max_len=args.max_len):
            # flush: piped into a file or another program, stdout is block-buffered and would hold every caption.
            print(f"{name}: {caption.text}", flush=True)
            if voice:
                voice.say(position, name, caption.text)
            if figures:
                # Numbered by position among all the arguments: an unreadable file before it shifts nothing.
                out = _attention_path(Path(args.attention_out), position, len(args.images))
                figures.write(out, attention_figure(captioner, image, caption, out.suffix, Path(name).name))
    finally:
        unwritten = figures.close() if figures else 0
    return 1 if failed or unwritten or (voice and voice.unspoken) else 0

