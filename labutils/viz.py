"""Figures for notebooks 08-09: an image with its predicted and reference captions, and word-by-word attention."""

from __future__ import annotations

import functools
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .infra.files import atomic_write_bytes
from .infra.images import load_image, to_rgb


def as_array(image) -> np.ndarray:
    """An RGB uint8 array from a PIL image, an array, or a path."""
    if isinstance(image, (str, Path)):
        image = load_image(image)
    if isinstance(image, Image.Image):
        return np.asarray(to_rgb(image))
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = np.clip(array * (255 if array.max() <= 1.0 else 1), 0, 255).astype(np.uint8)
    return array


def upsample_attention(alpha, grid_size: int, height: int, width: int, smooth: bool = True) -> np.ndarray:
    """Turn a flat attention vector [grid*grid] into an [H, W] map over the image.

    `smooth=True` resizes with a Gaussian-smoothed interpolation (as the Show, Attend and Tell visualisations do) so
    the eye sees a soft spotlight; `smooth=False` shows the raw cells, which is what the model actually weighs.
    """
    from skimage.transform import resize

    cells = np.asarray(alpha, dtype=np.float64).reshape(grid_size, grid_size)
    if not smooth:
        rows = np.repeat(np.arange(grid_size), int(np.ceil(height / grid_size)))[:height]
        cols = np.repeat(np.arange(grid_size), int(np.ceil(width / grid_size)))[:width]
        return cells[np.ix_(rows, cols)]
    from scipy.ndimage import gaussian_filter

    upsampled = resize(cells, (height, width), order=1, mode="edge", anti_aliasing=False)
    return gaussian_filter(upsampled, sigma=max(height, width) / grid_size / 3)


def show_caption(image, predicted: str, references: list[str] | None = None, ax=None, width: int = 48):
    """Show an image with its predicted caption (bold) and the reference captions below it."""
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(4, 4.6))
    ax.imshow(as_array(image))
    ax.set_axis_off()
    ax.set_title("\n".join(textwrap.wrap(predicted, width)), fontsize=10, fontweight="bold")
    if references:
        text = "\n".join(textwrap.shorten(ref, width + 10, placeholder="…") for ref in references)
        ax.text(0.0, -0.02, text, transform=ax.transAxes, va="top", fontsize=8, color="0.3")
    return ax


def attention_heats(alphas, grid_size: int, height: int, width: int, smooth: bool = True) -> np.ndarray:
    """`upsample_attention` for every word at once: [words, grid*grid] -> [words, H, W], the same maps.

    Linear upsampling and Gaussian smoothing both act on rows and columns separately, so each map is
    `rows @ cells @ cols.T` with two small matrices built once per size: no Gaussian filter over every full-size
    map, and no SciPy/scikit-image import in the caption command.
    """
    sigma = max(height, width) / grid_size / 3
    rows = _axis_upsampler(grid_size, height, sigma if smooth else None)
    cols = _axis_upsampler(grid_size, width, sigma if smooth else None)
    cells = np.asarray(alphas, dtype=np.float64).reshape(-1, grid_size, grid_size)
    return rows @ cells @ cols.T


@functools.lru_cache(maxsize=32)
def _axis_upsampler(cells: int, size: int, sigma: float | None) -> np.ndarray:
    """[size, cells]: what `upsample_attention` does along one axis, as a matrix."""
    if sigma is None:  # raw cells: each output pixel repeats its cell
        picked = np.repeat(np.arange(cells), int(np.ceil(size / cells)))[:size]
        return np.eye(cells)[picked]
    # skimage's order-1 resize with mode="edge": pixel centres mapped onto the grid, clamped at the border.
    source = np.clip((np.arange(size) + 0.5) * cells / size - 0.5, 0, cells - 1)
    low = np.floor(source).astype(int)
    high = np.minimum(low + 1, cells - 1)
    linear = np.zeros((size, cells))
    np.add.at(linear, (np.arange(size), low), 1 - (source - low))
    np.add.at(linear, (np.arange(size), high), source - low)
    # scipy's gaussian_filter: truncated at 4 sigma, normalised, "reflect" border (d c b a | a b c d).
    radius = int(4.0 * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    weights /= weights.sum()
    taps = (np.arange(size)[:, None] + offsets[None, :]) % (2 * size)
    taps = np.where(taps >= size, 2 * size - 1 - taps, taps)
    smoothing = np.zeros((size, size))
    np.add.at(smoothing, (np.repeat(np.arange(size), len(offsets)), taps.ravel()), np.tile(weights, size))
    return smoothing @ linear


def _colour_top(heats) -> float:
    # One colour scale for all panels: per-panel scaling would make a near-uniform map look as sharp as a peaked one.
    return max((float(h.max()) for h in heats), default=1.0) or 1.0


def encoder_view(image, size: int) -> Image.Image:
    """The square the encoder saw of `image` (path, PIL image or array): shorter side to `size`, centre crop.

    Attention cells are cells of THIS square. Drawn over a whole non-square photo, the map would be stretched
    past the edges the crop cut off (the synthetic shapes and the shared Flickr8k copy are square, real photos
    are not).
    """
    if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
        image = load_image(image)  # upright (EXIF) and RGB
    elif not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image))
    return ImageOps.fit(to_rgb(image), (size, size))


def plot_attention(image, words: list[str], alphas, grid_size: int, cols: int = 5, smooth: bool = True,
                   save_to: str | Path | None = None, title: str | None = None, max_side: int = 320):
    """A grid with the image and one attention overlay per emitted word; optionally saved to a file.

    The picture is shown at most `max_side` pixels on its longer side (a panel is about 200 pixels on screen), so a
    large photo does not multiply the cost of every overlay. For many figures in a row (the caption command) use
    `attention_mosaic`, which draws the same panels without matplotlib, far faster (benchmarks/results/caption_cli.json).
    """
    picture = as_array(_fit_within(_as_image(image), max_side))
    height, width = picture.shape[:2]
    alphas = np.asarray(alphas)
    panels = len(words) + 1
    rows = int(np.ceil(panels / cols))
    import matplotlib.pyplot as plt  # here, not at the top: the caption command's figures do not need pyplot

    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    axes.flat[0].imshow(picture)
    axes.flat[0].set_title(title or "input", fontsize=9)
    heats = attention_heats(alphas[: len(words)], grid_size, height, width, smooth=smooth)
    top = _colour_top(heats)
    for i, word in enumerate(words):
        ax = axes.flat[i + 1]
        ax.imshow(picture)
        ax.imshow(heats[i], cmap="magma", alpha=0.6, extent=(0, width, height, 0), vmin=0.0, vmax=top)
        ax.set_title(f"{word}  ({alphas[i].max():.2f})", fontsize=9)
    # Fixed spacing instead of tight_layout: the panels are alike, and tight_layout measured every title and
    # axis of the grid (about a quarter of the old drawing time).
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.94, wspace=0.05, hspace=0.2)
    if save_to is not None:
        save_figure(fig, save_to)
    return fig


def attention_mosaic(image, words: list[str], alphas, grid_size: int, cols: int = 5, smooth: bool = True,
                     title: str | None = None, panel: int = 128) -> Image.Image:
    """The panels of `plot_attention` (image, then one overlay per word) composed directly as one RGB image.

    `image` is the square view the encoder had (the caption command passes its centre crop); each panel shows it
    at `panel` x `panel` pixels.

    Same maps, colour map, shared colour scale and 0.6 opacity as `plot_attention`, drawn with NumPy and Pillow
    in a few milliseconds: a matplotlib figure spent 1-3 s per caption creating axes, laying out titles and
    rendering, which made drawing 90 % of the caption command's time.
    """
    picture = as_array(_as_image(image).resize((panel, panel), Image.BILINEAR))
    alphas = np.asarray(alphas)[: len(words)]
    heats = attention_heats(alphas, grid_size, panel, panel, smooth=smooth).astype(np.float32)
    levels = np.clip(heats * np.float32(255.0 / _colour_top(heats)), 0, 255).astype(np.uint8)
    # One 4-byte lookup per pixel instead of three 1-byte ones (a third of the time), then back to RGB bytes.
    colours = np.take(_magma_60_packed(), levels).view(np.uint8).reshape(*levels.shape, 4)[..., :3]
    dimmed = (picture * 0.4).astype(np.uint8)
    labels = [title or "input"] + [f"{word}  ({alpha.max():.2f})" for word, alpha in zip(words, alphas, strict=True)]
    label_h, gap = 18, 4
    rows = -(-len(labels) // cols)
    cell_w, cell_h = panel + gap, panel + label_h + gap
    canvas = np.full((rows * cell_h + gap, cols * cell_w + gap, 3), 255, dtype=np.uint8)
    for index in range(len(labels)):
        x, y = gap + (index % cols) * cell_w, gap + (index // cols) * cell_h + label_h
        if index == 0:
            canvas[y:y + panel, x:x + panel] = picture
        else:  # 0.4 * picture + 0.6 * colour in integers: both rounded down, the sum cannot exceed 255
            np.add(dimmed, colours[index - 1], out=canvas[y:y + panel, x:x + panel])
    for index, label in enumerate(labels):
        ink = _label_ink(label, panel)  # dark text on white: the label's pixels are min(white, text)
        x = gap + (index % cols) * cell_w + (panel - ink.shape[1]) // 2
        y = gap + (index // cols) * cell_h + (label_h - ink.shape[0]) // 2
        np.minimum(canvas[y:y + ink.shape[0], x:x + ink.shape[1]], ink[..., None],
                   out=canvas[y:y + ink.shape[0], x:x + ink.shape[1]])
    return Image.fromarray(canvas)


@functools.lru_cache(maxsize=1)
def _magma_60_packed() -> np.ndarray:
    """matplotlib's magma colour map times the overlay's 0.6 opacity: 256 RGB0 byte quadruples, one uint32 each."""
    from matplotlib import colormaps

    rgb0 = np.zeros((256, 4), dtype=np.uint8)
    rgb0[:, :3] = colormaps["magma"](np.linspace(0.0, 1.0, 256))[:, :3] * 255 * 0.6
    return rgb0.view(np.uint32).ravel()


def save_attention_mosaic(image, words: list[str], alphas, grid_size: int, path: str | Path, **options) -> Path:
    """`attention_mosaic` written atomically to `path` (format from the suffix: .png, .jpg, .webp); returns the path.

    A full disk raises `DiskFullError` and leaves no partial file.
    """
    path = Path(path)
    data = encode_image(attention_mosaic(image, words, alphas, grid_size, **options), path.suffix)
    return atomic_write_bytes(path, data, what=f"the attention figure {path.name}")


_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def encode_image(image: Image.Image, suffix: str) -> bytes:
    """The file contents of `image` in the format of `suffix` ('.png', '.jpg', ...).

    JPEG (quality 90) is written much faster than PNG, whose per-row filtering and zlib dominate a figure's cost
    (benchmarks/results/caption_cli.json); PNG uses zlib's fastest level (slightly larger files, several times
    faster to write).
    """
    import io

    # The common suffixes without Image.registered_extensions(), which loads every Pillow plugin.
    kind = _FORMATS.get(suffix.lower()) or Image.registered_extensions().get(suffix.lower())
    if kind is None:
        raise ValueError(f"{suffix!r} is not an image suffix Pillow knows; use .png or .jpg.")
    settings = {"PNG": {"compress_level": 1}, "JPEG": {"quality": 90}}.get(kind, {})
    buffer = io.BytesIO()
    image.save(buffer, format=kind, **settings)
    return buffer.getvalue()


def _as_image(image) -> Image.Image:
    return image if isinstance(image, Image.Image) and image.mode == "RGB" else Image.fromarray(as_array(image))


def _fit_within(image: Image.Image, max_side: int) -> Image.Image:
    if max(image.size) <= max_side:
        return image
    scale = max_side / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)


@functools.lru_cache(maxsize=1)
def _label_font():
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=12)
    except (TypeError, OSError):  # Pillow < 10.1 or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _label_ink(text: str, width: int) -> np.ndarray:
    """A panel label as grey levels (0 = ink, 255 = paper), at most `width` pixels wide.

    Rendering text was the largest cost of a mosaic, so each word and each "(0.37)" is rendered once (`_ink`) and
    the two are placed side by side; all pieces share one line height, so their baselines line up.
    """
    word, _, weight = text.rpartition("  ")
    if not word or not weight.startswith("("):
        return _ink(text, width)
    tail = _ink("  " + weight, width)
    return np.hstack([_ink(word, max(1, width - tail.shape[1])), tail])


@functools.lru_cache(maxsize=4096)
def _ink(text: str, width: int) -> np.ndarray:
    from PIL import ImageDraw

    font = _label_font()
    scratch = ImageDraw.Draw(Image.new("L", (1, 1)))
    while len(text) > 1 and scratch.textlength(text, font=font) > width:
        text = text[:-2] + "…"
    ascent, descent = font.getmetrics()
    ink = Image.new("L", (max(1, round(scratch.textlength(text, font=font))), ascent + descent), 255)
    ImageDraw.Draw(ink).text((0, 0), text, fill=0, font=font)
    return np.asarray(ink)


def save_figure(fig, path: str | Path, dpi: int = 90) -> Path:
    """Save a figure (creating folders) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path
