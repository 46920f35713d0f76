"""Robust image loading: any image file a dataset may hold (grayscale, RGBA, CMYK, palette, 16-bit, EXIF-rotated
phone photos) as an upright 8-bit RGB `PIL.Image`, or one sentence naming the file. One colour policy for the
whole lab: the Datasets, the feature cache, the bulk resize and the caption command all read images through here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


class ImageLoadError(ValueError):
    """An image file that is missing, truncated or not an image; the message names the file and the fix."""


WHITE = (255, 255, 255)


def _composite_on_white(image: Image.Image) -> Image.Image:
    # Plain .convert("RGB") just drops alpha and shows whatever colour sits under fully transparent pixels
    # (often black, sometimes garbage), so a logo on a transparent background would become a black box.
    # Blending over white shows the picture the way a viewer or a web page on white displays it.
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, WHITE + (255,))
    background.alpha_composite(rgba)
    return background.convert("RGB")


def _high_bit_depth_to_rgb(image: Image.Image) -> Image.Image:
    # PIL's own convert("L"/"RGB") CLIPS 16-bit values at 255, so a 16-bit PNG comes out almost all white.
    # Scale the full range instead: 0 -> 0, 65535 -> 255 (v / 257 is exactly 65535 -> 255).
    values = np.asarray(image).astype(np.float64)
    if image.mode.startswith("I;16") or (values.min() >= 0 and values.max() <= 65535 and image.mode == "I"):
        scaled = values / 257.0
    elif image.mode == "F" and values.min() >= 0 and values.max() <= 1:
        scaled = values * 255.0  # float images stored in [0, 1]
    else:  # other 32-bit integer or float data: stretch what is there to 0..255
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    gray = np.clip(np.round(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL image mode to 8-bit RGB correctly (alpha over white, 16-bit scaled, CMYK, palettes)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        return _composite_on_white(image)
    if mode == "P":
        # A palette image may mark one palette entry (or several, via a tRNS alpha table) as transparent.
        return _composite_on_white(image) if "transparency" in image.info else image.convert("RGB")
    if mode.startswith("I") or mode == "F":
        return _high_bit_depth_to_rgb(image)
    # L, 1, CMYK, YCbCr, LAB, HSV: PIL's conversions are right for these (CMYK JPEGs from Adobe software are
    # stored inverted; PIL's JPEG reader already undoes that).
    return image.convert("RGB")


def load_image(path: str | Path, min_side: int | None = None) -> Image.Image:
    """Open an image file as an upright 8-bit RGB `PIL.Image`, or raise `ImageLoadError` naming the file.

    `min_side`: the caller only needs this many pixels on the shorter side, so a bigger image comes back smaller
    (never below `min_side`): a JPEG is decoded at 1/2, 1/4 or 1/8 scale straight from its DCT coefficients
    (Pillow's draft mode: a fraction of the time and memory), other formats are shrunk by an integer factor after
    decoding. The caption command uses twice the encoder's input size, which keeps the encoder's view the same.
    """
    path = Path(path)
    if path.is_dir():
        raise ImageLoadError(f"{path} is a folder, not an image file; pass the path of one image.")
    if not path.is_file():
        raise ImageLoadError(f"Image file {path} does not exist; check the path and that the dataset was "
                             "downloaded/generated completely (labutils.course.ensure_dataset).")
    try:
        with Image.open(path) as image:
            if min_side:
                # Before any pixel is decoded; a square request keeps the shorter side >= min_side in either
                # orientation, so it stays right after the EXIF rotation below.
                image.draft(None, (min_side, min_side))
            # Phone cameras store the sensor's pixels plus an EXIF "Orientation" tag instead of rotating them.
            # Viewers apply the tag, PIL does not; without this, portrait photos reach the model lying sideways.
            upright = ImageOps.exif_transpose(image)
            upright.load()  # decode now, inside the try: truncated data raises here, not later in a worker
            rgb = to_rgb(upright)
            return shrink_to_min_side(rgb, min_side) if min_side else rgb
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"Image {path} is too large to decode safely ({exc}); resize it or remove it "
                             "from the dataset.") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageLoadError(f"Image {path} is corrupt or not an image ({reason}); download or regenerate it, or "
                             "leave it out (count_bad_images lists all such files).") from exc


def shrink_to_min_side(image: Image.Image, min_side: int) -> Image.Image:
    """Shrink by the largest whole factor that keeps the shorter side >= `min_side` (a box filter: no aliasing)."""
    factor = min(image.size) // min_side
    return image.reduce(factor) if factor >= 2 else image
