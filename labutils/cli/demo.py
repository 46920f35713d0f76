"""`python -m labutils demo --checkpoint FILE`: a local web page to caption a photo and watch the model look.

A person uploads, drops or takes (webcam) a photo and gets the caption (beam search by default, as the caption
command does; greedy; or a sampled alternative with temperature and top-p), the word-by-word attention figure,
and the caption read aloud. The page is Gradio, which Colab already ships and displays inline; it listens on
127.0.0.1 unless --host says otherwise.

Everything the page shows comes from `caption_for_page`, a plain function (tested without a browser): a photo
that cannot be used is one sentence in the page's status line, never a stack trace, and the server keeps serving.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from dataclasses import dataclass
from itertools import count
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .. import decode
from ..applications import SpeechEngineMissingError, SpeechError, speak
from ..checkpoint import CheckpointError
from ..course import CaptionCommandError, Captioner, load_captioner
from ..encoders import EncoderWeightsError
from ..infra.images import shrink_to_min_side, to_rgb
from ..viz import attention_mosaic

# Limits on what a visitor may send. 25 MB holds any phone photo (a 48-megapixel JPEG is 10-20 MB) while keeping
# one upload from filling memory; 50 megapixels admits those 48 MP photos and refuses panoramas and
# "decompression bombs" (a small PNG declaring 30000 x 30000 pixels would need 2.7 GB once decoded). The pixel
# count is read from the file's header, before any pixel is decoded.
MAX_BYTES = 25 * 2**20
MAX_PIXELS = 50_000_000
# Gradio's own upload limit, far above MAX_BYTES: only a backstop against filling the server's disk, so that a
# file between the two still reaches caption_for_page and gets its sentence.
UPLOAD_LIMIT = "200mb"
METHODS = ("greedy", "beam", "sample")
FIGURE_TOP_BAND = 30  # pixels
ACCEPTED = "upload a JPEG, PNG or WebP photo"


class PhotoRefused(Exception):
    """A photo the page will not caption; the message is the one sentence shown to the visitor."""


@dataclass
class PageResult:
    """What the page shows for one photo: caption, attention figure (None when there is none) and status line."""

    caption: str
    figure: Image.Image | None
    status: str
    seconds: float = 0.0


# ---------------------------------------------------------------------------------------------------------------
# Reading a visitor's photo: bytes, a path, an array (webcam) or a PIL image, with one sentence for each refusal
# ---------------------------------------------------------------------------------------------------------------
def _as_file(source) -> tuple[io.BufferedIOBase | io.BytesIO, int]:
    """An open binary file for `source` (bytes or path) and its size in bytes."""
    if isinstance(source, (bytes, bytearray)):
        return io.BytesIO(source), len(source)
    path = Path(source)
    if not path.is_file():
        raise PhotoRefused(f"The uploaded file did not arrive ({path.name} is missing); {ACCEPTED} again.")
    return path.open("rb"), path.stat().st_size


def _check_pixels(image: Image.Image) -> None:
    if image.width * image.height > MAX_PIXELS:
        raise PhotoRefused(f"This photo is {image.width} x {image.height} pixels, more than the "
                           f"{MAX_PIXELS // 1_000_000} megapixels the page accepts; resize it and try again.")


def _from_memory(source) -> Image.Image:
    """A PIL image or an array (H x W or H x W x 3/4 of 0-255 values, as a webcam frame) as upright RGB."""
    try:
        image = source if isinstance(source, Image.Image) else Image.fromarray(np.asarray(source).astype(np.uint8))
    except (TypeError, ValueError):
        shape = getattr(source, "shape", None)
        raise PhotoRefused(f"This array (shape {shape}) is not a picture; give H x W x 3 values from 0 to "
                           "255.") from None
    _check_pixels(image)
    return to_rgb(image)


def _decode(file, min_side: int | None) -> Image.Image:
    """Decode an image file upright and RGB, refusing it by its header before any pixel is decoded if too big."""
    with Image.open(file) as image:
        _check_pixels(image)
        if min_side:  # JPEG: decode at 1/2, 1/4 or 1/8 scale straight away (see labutils.infra.images)
            image.draft(None, (min_side, min_side))
        upright = ImageOps.exif_transpose(image)  # phone photos: apply the EXIF rotation, as viewers do
        upright.load()  # decode now, inside the caller's try: truncated data raises here
        rgb = to_rgb(upright)
    return shrink_to_min_side(rgb, min_side) if min_side else rgb


def read_photo(source, min_side: int | None = None) -> Image.Image:
    """The visitor's photo as an upright RGB PIL image, or `PhotoRefused` with the sentence to show."""
    if source is None:
        raise PhotoRefused(f"No photo yet: {ACCEPTED}, drop one here, or take one with the webcam.")
    if isinstance(source, Image.Image | np.ndarray):
        return _from_memory(source)
    file, size = _as_file(source)
    with file:
        if size > MAX_BYTES:
            raise PhotoRefused(f"This file is {size / 2**20:.0f} MB, more than the {MAX_BYTES // 2**20} MB the "
                               "page accepts; send a smaller copy of the photo.")
        try:
            return _decode(file, min_side)
        except Image.DecompressionBombError:
            raise PhotoRefused("This image declares more pixels than can be decoded safely; resize it and try "
                               "again.") from None
        except (OSError, SyntaxError, ValueError, EOFError):  # what Pillow raises for a file it cannot read
            raise PhotoRefused(f"This file is not a readable image (it is corrupt, cut short, or not a picture "
                               f"at all); {ACCEPTED}.") from None


# ---------------------------------------------------------------------------------------------------------------
# Captioning one photo for the page
# ---------------------------------------------------------------------------------------------------------------
def decode_one(captioner: Captioner, image: Image.Image, method: str = "beam", beam: int = 3,
               temperature: float = 1.0, top_p: float = 0.9, seed: int | None = None,
               max_len: int = 30) -> decode.Caption:
    """One Caption: greedy, beam search with `beam` beams, or one sample (a different alternative each call
    unless `seed` is given)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}.")
    if method != "sample":
        return captioner.caption([image], beam=int(beam) if method == "beam" else 1, max_len=max_len)[0]
    features = captioner.features([image])  # [1, P, C]
    return decode.sample(captioner.decoder, features, captioner.vocab, temperature=float(temperature),
                         top_p=float(top_p), generator=seed, max_len=max_len)[0]


def figure_for(captioner: Captioner, image: Image.Image, caption: decode.Caption) -> Image.Image | None:
    """The word-by-word attention mosaic over the encoder's view of the photo; None for a decoder without
    attention (Show and Tell)."""
    if caption.alphas is None or not caption.words:
        return None
    # The square centre crop the encoder saw, so each heat map lies over the pixels it was computed from.
    seen = ImageOps.fit(image, (captioner.input_size, captioner.input_size), method=Image.BILINEAR)
    mosaic = attention_mosaic(seen, list(caption.words), caption.alphas.numpy(), captioner.encoder.grid_size)
    # A white band on top for Gradio's label and buttons, which float over the image's top corners and would
    # otherwise hide the first words' labels.
    return ImageOps.expand(mosaic, border=(0, FIGURE_TOP_BAND, 0, 0), fill="white")


def caption_for_page(captioner: Captioner, photo, method: str = "beam", beam: int = 3, temperature: float = 1.0,
                     top_p: float = 0.9, seed: int | None = None, max_len: int = 30) -> PageResult:
    """Everything the page shows for `photo` (bytes, path, array or PIL image); never raises for a bad photo."""
    start = time.perf_counter()
    try:
        image = read_photo(photo, captioner.decode_side)
    except PhotoRefused as refused:
        return PageResult("", None, str(refused), time.perf_counter() - start)
    caption = decode_one(captioner, image, method, beam, temperature, top_p, seed, max_len)
    figure = figure_for(captioner, image, caption)
    seconds = time.perf_counter() - start
    how = {"greedy": "greedy", "beam": f"beam search, {int(beam)} beams",
           "sample": f"sampled at temperature {temperature:g}, top-p {top_p:g}"}[method]
    status = f"Captioned in {seconds:.2f} s ({how})."
    if not caption.text:
        status = f"The model ended the caption before any word ({how}); try another photo or decoding."
    elif figure is None:
        status += " This checkpoint's decoder has no attention to draw."
    return PageResult(caption.text, figure, status, seconds)


def speech_for_page(text: str, wav_path: Path) -> tuple[str | None, str]:
    """(path of the caption read aloud, or None; the sentence to add to the status when it could not be)."""
    if not text:
        return None, ""
    try:
        return str(speak(text, wav_path)), ""
    except (SpeechEngineMissingError, SpeechError) as exc:  # the rest of the page still works without sound
        return None, str(exc)
    except OSError as exc:
        return None, f"The caption could not be read aloud ({exc.strerror or exc}); the rest of the page works."


# ---------------------------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------------------------
def _photo_input(gr):
    """An image input that hands the uploaded file's path to caption_for_page unopened.

    gr.Image itself opens every upload with Pillow before our function runs, so a corrupt file would become
    Gradio's generic "Error" pop-up instead of our sentence; the webcam's base64 frames still go through it.
    """

    class PhotoInput(gr.Image):
        def preprocess(self, payload):
            if payload is None or (payload.url or "").startswith("data:"):
                return super().preprocess(payload)
            return payload.path

        def get_block_name(self) -> str:
            return "image"  # drawn by Gradio's own image widget in the browser

    return PhotoInput(sources=["upload", "webcam", "clipboard"], type="filepath", label="Your photo",
                      elem_id="photo", height=320)


def _handler(captioner: Captioner, speech_dir: Path):
    """The function behind the page: photo and decoding settings in, caption/figure/audio/status out."""
    names = count()

    def on_photo(photo, method, beam, temperature, top_p):
        result = caption_for_page(captioner, photo, method, int(beam), float(temperature), float(top_p))
        # Eight rotating file names: Gradio copies each answer's audio into its cache, so older files may go.
        audio, speech_problem = speech_for_page(result.caption, speech_dir / f"caption_{next(names) % 8}.wav")
        status = " ".join(part for part in (result.status, speech_problem) if part)
        return result.caption, result.figure, audio, status

    return on_photo


def build_demo(captioner: Captioner, title: str = "Caption a photo and watch the model look"):
    """The Gradio page for `captioner` (not launched: call `.launch()` or pass it to a test)."""
    try:
        import gradio as gr  # optional extra: only this command needs it
    except ModuleNotFoundError:
        raise CaptionCommandError("The demo needs Gradio, which is not installed; run `pip install "
                                  "'labutils[demo]'` (Colab already has it).") from None
    speech_dir = Path(tempfile.mkdtemp(prefix="labutils-demo-speech-"))
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 3600)) as page:
        gr.Markdown(f"## {title}\nUpload or drop a photo, or take one with the webcam.")
        with gr.Row():
            with gr.Column():
                photo = _photo_input(gr)
                method = gr.Radio(list(METHODS), value="beam", label="Decoding", elem_id="method")
                beam = gr.Slider(2, 8, value=3, step=1, label="Beam size (beam)")
                temperature = gr.Slider(0.1, 2.0, value=1.0, step=0.1, label="Temperature (sample)")
                top_p = gr.Slider(0.1, 1.0, value=0.9, step=0.05, label="Top-p (sample)")
                again = gr.Button("Caption again", elem_id="again")
            with gr.Column():
                caption = gr.Textbox(label="Caption", elem_id="caption", interactive=False)
                status = gr.Markdown(elem_id="status")
                figure = gr.Image(label="Where the model looked, word by word", type="pil", format="png",
                                  elem_id="figure", interactive=False)
                audio = gr.Audio(label="The caption read aloud", type="filepath", elem_id="speech",
                                 interactive=False)
        inputs, outputs = [photo, method, beam, temperature, top_p], [caption, figure, audio, status]
        on_photo = _handler(captioner, speech_dir)
        photo.change(on_photo, inputs, outputs)  # upload, drop, webcam snapshot, paste or clear
        again.click(on_photo, inputs, outputs)  # same photo, other decoding: e.g. another sample
    return page


def serve(page, host: str = "127.0.0.1", port: int = 7860, share: bool = False, block: bool = True) -> str:
    """Launch the page on host:port and return its address; `block=False` returns at once (tests, notebooks)."""
    page.queue(default_concurrency_limit=1)  # one photo at a time: the model is shared, and a CPU has no room
    # ssr_mode off: server-side rendering needs Node.js, which a laptop or Colab may lack. show_error off:
    # caption_for_page already turns every bad photo into a sentence; anything else is a bug, not for visitors.
    # quiet: Gradio's own banner suggests `launch(share=True)`, which means nothing to someone at the command line.
    page.launch(server_name=host, server_port=port, share=share, max_file_size=UPLOAD_LIMIT, ssr_mode=False,
                show_error=False, quiet=True, prevent_thread_lock=True)
    if block:
        public = f" and {page.share_url} (a public link through Gradio's servers)" if page.share_url else ""
        print(f"The demo page is at {page.local_url}{public}; stop it with Ctrl+C.", flush=True)
        page.block_thread()
    return page.local_url


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m labutils demo", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a checkpoint saved by notebook 07 / labutils.train")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on; default 127.0.0.1 (this computer only); 0.0.0.0 opens the page "
                             "to your network")
    parser.add_argument("--port", type=int, default=7860, help="port; default 7860")
    parser.add_argument("--share", action="store_true",
                        help="also publish a temporary public link through Gradio's servers (off by default)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Load the checkpoint, serve the page until Ctrl+C; 2 when the checkpoint or Gradio is missing."""
    args = build_parser().parse_args(argv)
    try:
        captioner = load_captioner(args.checkpoint, "cpu")
        page = build_demo(captioner)
    except (CaptionCommandError, CheckpointError, EncoderWeightsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    serve(page, args.host, args.port, share=args.share)
    return 0
