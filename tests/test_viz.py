"""Figures: attention upsampling and saved files."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from labutils import viz  # noqa: E402


def test_raw_upsampling_keeps_cells_and_smooth_peaks_in_the_right_cell():
    alpha = np.zeros(16)
    alpha[5] = 1.0  # row 1, column 1 of a 4x4 grid
    raw = viz.upsample_attention(alpha, 4, 128, 128, smooth=False)
    assert raw.shape == (128, 128) and raw[32:64, 32:64].min() == 1.0 and raw.sum() == 32 * 32
    smooth = viz.upsample_attention(alpha, 4, 128, 128, smooth=True)
    y, x = np.unravel_index(smooth.argmax(), smooth.shape)
    assert 32 <= y < 64 and 32 <= x < 64


def test_plot_attention_saves_one_panel_per_word(tmp_path):
    image = Image.new("RGB", (128, 128), (200, 30, 30))
    alphas = np.full((3, 16), 1 / 16)
    fig = viz.plot_attention(image, ["a", "red", "circle"], alphas, grid_size=4, cols=2,
                             save_to=tmp_path / "fig" / "att.png")
    assert (tmp_path / "fig" / "att.png").stat().st_size > 1000
    titled = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titled[0] == "input" and titled[2].startswith("red")
    assert len(fig.axes) == 4


def test_show_caption_and_as_array(tmp_path):
    ax = viz.show_caption(np.zeros((8, 8, 3)), "a red circle", ["a red circle on the left"])
    assert ax.get_title() == "a red circle"
    path = viz.save_figure(ax.figure, tmp_path / "c.png")
    assert path.exists()
    assert viz.as_array(np.ones((2, 2, 3))).max() == 255
    with pytest.raises(ValueError):
        viz.as_array(tmp_path / "missing.jpg")
