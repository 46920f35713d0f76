"""Figures for notebooks 08-09: an image with its predicted and reference captions, and word-by-word attention."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image


def as_array(image) -> np.ndarray:
    """An RGB uint8 array from a PIL image, an array, or a path."""
    if isinstance(image, (str, Path)):
        from .data import load_image

        image = load_image(image)
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
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
        _, ax = plt.subplots(figsize=(4, 4.6))
    ax.imshow(as_array(image))
    ax.set_axis_off()
    ax.set_title("\n".join(textwrap.wrap(predicted, width)), fontsize=10, fontweight="bold")
    if references:
        text = "\n".join(textwrap.shorten(ref, width + 10, placeholder="…") for ref in references)
        ax.text(0.0, -0.02, text, transform=ax.transAxes, va="top", fontsize=8, color="0.3")
    return ax


def plot_attention(image, words: list[str], alphas, grid_size: int, cols: int = 5, smooth: bool = True,
                   save_to: str | Path | None = None, title: str | None = None):
    """A grid with the image and one attention overlay per emitted word; optionally saved to a file."""
    picture = as_array(image)
    height, width = picture.shape[:2]
    alphas = np.asarray(alphas)
    panels = len(words) + 1
    rows = int(np.ceil(panels / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    axes.flat[0].imshow(picture)
    axes.flat[0].set_title(title or "input", fontsize=9)
    # One colour scale for all panels: per-panel scaling would make a near-uniform map look as sharp as a peaked one.
    heats = [upsample_attention(alphas[i], grid_size, height, width, smooth=smooth) for i in range(len(words))]
    top = max((float(h.max()) for h in heats), default=1.0)
    for i, word in enumerate(words):
        ax = axes.flat[i + 1]
        ax.imshow(picture)
        ax.imshow(heats[i], cmap="magma", alpha=0.6, extent=(0, width, height, 0), vmin=0.0, vmax=top)
        ax.set_title(f"{word}  ({alphas[i].max():.2f})", fontsize=9)
    fig.tight_layout()
    if save_to is not None:
        save_figure(fig, save_to)
    return fig


def save_figure(fig, path: str | Path, dpi: int = 90) -> Path:
    """Save a figure (creating folders) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path
