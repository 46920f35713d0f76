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


@pytest.mark.parametrize("smooth", [True, False])
@pytest.mark.parametrize(("grid", "height", "width"), [(6, 90, 130), (8, 128, 128), (4, 3, 200), (7, 480, 640)])
def test_attention_heats_are_exactly_the_per_word_upsampled_maps(smooth, grid, height, width):
    """The matrix form (no SciPy, no per-word filter) must equal the readable per-word definition."""
    alphas = np.random.default_rng(3).dirichlet(np.ones(grid * grid), size=5)
    expected = np.stack([viz.upsample_attention(a, grid, height, width, smooth=smooth) for a in alphas])
    np.testing.assert_allclose(viz.attention_heats(alphas, grid, height, width, smooth=smooth), expected,
                               atol=1e-12)


def _panel(mosaic, index, cols=2, panel=128, label_h=18, gap=4):
    """The pixels of panel `index` of an attention_mosaic (its label strip excluded)."""
    x = gap + (index % cols) * (panel + gap)
    y = gap + (index // cols) * (panel + label_h + gap) + label_h
    return np.asarray(mosaic)[y:y + panel, x:x + panel].astype(int)


def test_attention_mosaic_shows_the_photo_then_each_word_on_one_colour_scale():
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8))
    peaked = np.zeros(16)
    peaked[5] = 1.0  # row 1, column 1 of a 4x4 grid
    alphas = np.stack([peaked, np.full(16, 1 / 16), peaked])
    mosaic = viz.attention_mosaic(photo, ["a", "red", "circle"], alphas, grid_size=4, cols=2, title="mine")
    assert mosaic.size == (2 * (128 + 4) + 4, 2 * (128 + 18 + 4) + 4)
    assert np.array_equal(_panel(mosaic, 0), np.asarray(photo).astype(int))
    brightness = [_panel(mosaic, i).sum(axis=2) - 0.4 * _panel(mosaic, 0).sum(axis=2) for i in (1, 2)]
    y, x = np.unravel_index(brightness[0].argmax(), brightness[0].shape)
    assert 32 <= y < 64 and 32 <= x < 64, "the overlay must light up the attended cell"
    # Shared scale: the uniform map (1/16 everywhere) stays dark next to the peaked one instead of saturating.
    assert brightness[1].max() < 0.5 * brightness[0].max()
    labels = np.asarray(mosaic)[4:22, 4:132]
    assert labels.min() < 100, "the panel's label (title) must be drawn"


def test_attention_mosaic_is_fast_enough_to_draw_for_every_caption(tmp_path):
    """The matplotlib figure took 1-3 s per caption; the mosaic must stay within milliseconds (CPU time)."""
    import time

    photo = Image.new("RGB", (128, 128), (120, 90, 60))
    words = "a man in a red shirt rides a bike down the street <end>".split()
    alphas = np.random.default_rng(0).dirichlet(np.ones(64), size=len(words))
    viz.save_attention_mosaic(photo, words, alphas, 8, tmp_path / "warm.jpg")
    started = time.process_time()
    for index in range(5):
        viz.save_attention_mosaic(photo, words, alphas, 8, tmp_path / f"a{index}.jpg")
    assert (time.process_time() - started) / 5 < 0.1


def test_saved_mosaics_follow_the_suffix_and_a_full_disk_leaves_no_partial_file(tmp_path, small_disk):
    from labutils.infra.files import DiskFullError

    photo = Image.new("RGB", (128, 128), (200, 30, 30))
    alphas = np.full((2, 16), 1 / 16)
    for suffix, kind in ((".png", "PNG"), (".jpg", "JPEG"), (".webp", "WEBP")):
        path = viz.save_attention_mosaic(photo, ["a", "b"], alphas, 4, tmp_path / "sub" / f"att{suffix}")
        assert Image.open(path).format == kind
    disk = small_disk(16 * 1024)
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8))
    with pytest.raises(DiskFullError, match="is full"):
        viz.save_attention_mosaic(noisy, list("abcdefgh"), np.full((8, 16), 1 / 16), 4, disk / "att.png")
    assert list(disk.iterdir()) == []


def test_encoder_view_is_the_centre_square_the_encoder_saw(tmp_path):
    from PIL import Image

    from labutils import viz

    wide = np.zeros((10, 30, 3), np.uint8)
    wide[:, :10] = (0, 0, 255)
    wide[:, 10:20] = (255, 0, 0)  # the centre square: what a shorter-side resize + centre crop keeps
    wide[:, 20:] = (0, 0, 255)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    for source in (tmp_path / "wide.png", wide, Image.fromarray(wide)):
        seen = np.asarray(viz.encoder_view(source, 20))
        assert seen.shape == (20, 20, 3) and (seen[:, :, 0] > 200).all() and (seen[:, :, 2] < 60).all()
