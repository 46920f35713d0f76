"""Tests for labutils.augment: OpenCV crops/flips/rotations, affine matrices, normalisation, v2 pipelines."""


import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from labutils import augment as A


@pytest.fixture
def img():
    """A 48x64 random RGB image (non-square so width/height mix-ups show)."""
    return np.random.default_rng(0).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)


def coords_image(h, w):
    """An image whose pixel (y, x) stores y in channel 0 and x in channel 1, to locate crops exactly."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([yy, xx, np.zeros_like(yy)], axis=-1).astype(np.uint8)


def halves_image(w=80, h=60):
    """PIL image: left half red, right half blue."""
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[:, : w // 2] = (255, 0, 0)
    arr[:, w // 2:] = (0, 0, 255)
    return Image.fromarray(arr)


# ------------------------------------------------------------------------------------------ crops and flips
def test_center_crop_takes_the_middle(img):
    out = A.center_crop(coords_image(48, 64), (20, 30))
    assert out.shape == (20, 30, 3)
    assert out[0, 0, 0] == 14 and out[0, 0, 1] == 17  # (48-20)//2, (64-30)//2
    assert A.center_crop(img, 48).shape == (48, 48, 3)


def test_crop_too_large_is_a_clear_error(img):
    with pytest.raises(ValueError, match="Cannot crop 50x50"):
        A.center_crop(img, 50)
    with pytest.raises(ValueError, match="HxWx3"):
        A.center_crop(img[..., 0], 10)


def test_random_crop_is_a_window_and_seeded():
    src = coords_image(40, 50)
    a = A.random_crop(src, 16, rng=3)
    b = A.random_crop(src, 16, rng=np.random.default_rng(3))
    assert np.array_equal(a, b)
    top, left = int(a[0, 0, 0]), int(a[0, 0, 1])
    assert np.array_equal(a, src[top:top + 16, left:left + 16])
    corners = {tuple(A.random_crop(src, 16, rng=s)[0, 0, :2]) for s in range(30)}
    assert len(corners) > 10  # positions really vary
    assert all(0 <= t <= 24 and 0 <= left <= 34 for t, left in corners)


def test_horizontal_flip_mirrors_columns(img):
    assert np.array_equal(A.horizontal_flip(img), img[:, ::-1])


def test_rotate_keeps_size_and_matches_rot90(img):
    square = img[:, :48]
    assert A.rotate(img, 17).shape == img.shape
    assert np.array_equal(A.rotate(square, 90), np.rot90(square))  # counter-clockwise
    assert np.array_equal(A.rotate(square, -90), np.rot90(square, -1))
    assert np.array_equal(A.rotate(img, 0), img)


def test_rotate_reflect_border_has_no_black_corners():
    bright = np.full((64, 64, 3), 200, dtype=np.uint8)
    reflected = A.rotate(bright, 45)
    black = A.rotate(bright, 45, border=cv2.BORDER_CONSTANT)
    assert reflected.min() == 200
    assert black[0, 0].max() == 0 and black[-1, -1].max() == 0


# ------------------------------------------------------------------------------------------ affine matrices
@pytest.mark.parametrize("degrees", [0.0, 30.0, -45.0, 90.0, 123.4])
@pytest.mark.parametrize("center", [(0.0, 0.0), (31.5, 23.5), (10.0, 200.0)])
def test_rotation_matrix_matches_opencv(degrees, center):
    M = A.rotation_matrix(degrees, center)
    assert M.shape == (2, 3) and M.dtype == np.float64
    assert np.allclose(M, cv2.getRotationMatrix2D(center, degrees, 1.0))


def test_matrices_move_points_where_expected():
    assert np.allclose(A.transform_points(A.translation_matrix(5, -2), [(1, 1), (0, 0)]), [(6, -1), (5, -2)])
    S = A.scale_matrix(2, 3, center=(10, 10))
    assert np.allclose(A.transform_points(S, [(10, 10), (11, 12)]), [(10, 10), (12, 16)])
    R = A.rotation_matrix(90, center=(0, 0))  # on screen (y down): +x axis turns to -y (up)
    assert np.allclose(A.transform_points(R, [(1, 0), (0, 1)]), [(0, -1), (1, 0)])
    H = A.shear_matrix(0.5, 0.0, center=(4, 4))
    assert np.allclose(A.transform_points(H, [(4, 4), (4, 6), (7, 4)]), [(4, 4), (5, 6), (7, 4)])
    V = A.shear_matrix(0.0, 0.25)
    assert np.allclose(A.transform_points(V, [(8, 1)]), [(8, 3)])


def test_compose_applies_in_the_order_given():
    T, R = A.translation_matrix(10, 0), A.rotation_matrix(90)
    p = [(1.0, 0.0)]
    first_t = A.compose(T, R)  # translate to (11, 0), then rotate about the origin -> (0, -11)
    first_r = A.compose(R, T)  # rotate to (0, -1), then translate -> (10, -1)
    assert np.allclose(A.transform_points(first_t, p), [(0, -11)])
    assert np.allclose(A.transform_points(first_r, p), [(10, -1)])
    assert first_t.shape == (2, 3)
    assert np.allclose(A.compose(T), T)
    # rotating about a centre is: move the centre to the origin, rotate, move back
    c = (20.0, 7.0)
    manual = A.compose(A.translation_matrix(-c[0], -c[1]), R, A.translation_matrix(*c))
    assert np.allclose(manual, A.rotation_matrix(90, c))
    with pytest.raises(ValueError):
        A.compose()
    with pytest.raises(ValueError, match="2x3"):
        A.compose(np.eye(2))


def test_apply_affine_shifts_pixels(img):
    out = A.apply_affine(img, A.translation_matrix(5, 3), border=cv2.BORDER_CONSTANT)
    assert out.shape == img.shape
    assert np.array_equal(out[3:, 5:], img[:-3, :-5])
    assert out[:3].max() == 0
    half = A.apply_affine(img, A.scale_matrix(0.5, 0.5), size=(24, 32))
    assert half.shape == (24, 32, 3)


# ----------------------------------------------------------------------------------- ImageNet normalisation
def test_normalize_round_trip_and_values():
    x = torch.rand(2, 3, 5, 7)
    assert torch.allclose(A.imagenet_denormalize(A.imagenet_normalize(x)), x, atol=1e-6)
    mean_image = torch.tensor(A.IMAGENET_MEAN).view(3, 1, 1).expand(3, 4, 4)
    assert torch.allclose(A.imagenet_normalize(mean_image), torch.zeros(3, 4, 4), atol=1e-6)
    ones = A.imagenet_normalize(torch.ones(3, 1, 1)).flatten()
    expected = [(1 - m) / s for m, s in zip(A.IMAGENET_MEAN, A.IMAGENET_STD, strict=True)]
    assert torch.allclose(ones, torch.tensor(expected))


def test_normalize_rejects_bad_input():
    with pytest.raises(ValueError, match="float"):
        A.imagenet_normalize(torch.zeros(3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        A.imagenet_normalize(torch.zeros(4, 4, 3))


def test_to_numpy_image_inverts_the_eval_transform():
    arr = np.random.default_rng(1).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    x = A.eval_transform(32)(Image.fromarray(arr))
    assert np.array_equal(A.to_numpy_image(x), arr)


# -------------------------------------------------------------------------------------- v2 pipelines
def test_eval_transform_shape_and_determinism():
    pil = Image.fromarray(np.random.default_rng(2).integers(0, 256, (60, 100, 3), dtype=np.uint8))
    t = A.eval_transform(32)
    a, b = t(pil), t(pil)
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b)


def test_train_transform_is_caption_safe_by_default():
    torch.manual_seed(0)
    t = A.train_transform(32)
    names = [type(s).__name__ for s in t.transforms]
    assert "RandomHorizontalFlip" not in names and "ColorJitter" not in names and "RandomRotation" not in names
    pil = halves_image()
    for _ in range(20):
        x = A.to_numpy_image(t(pil)).astype(int)
        assert x.shape == (32, 32, 3)
        assert x[:, :4, 0].mean() > 200 and x[:, :4, 2].mean() < 50  # red stays on the left
        assert x[:, -4:, 2].mean() > 200 and x[:, -4:, 0].mean() < 50  # blue stays on the right


def test_train_transform_zooms_and_flips_when_asked():
    torch.manual_seed(0)
    pil = Image.fromarray(coords_image(64, 64) * 3)
    outs = [A.train_transform(32)(pil) for _ in range(10)]
    assert all(o.shape == (3, 32, 32) and o.dtype == torch.float32 for o in outs)
    assert any(not torch.equal(outs[0], o) for o in outs[1:])  # random crops differ
    flipping = A.train_transform(32, flip=True)
    left_is_red = [A.to_numpy_image(flipping(halves_image()))[:, 0, 0].mean() > 200 for _ in range(30)]
    assert any(left_is_red) and not all(left_is_red)
    extra = A.train_transform(32, max_rotation=5, color_jitter=0.1)
    assert {"RandomRotation", "ColorJitter"} <= {type(s).__name__ for s in extra.transforms}
    assert extra(halves_image()).shape == (3, 32, 32)



def test_show_images_builds_a_grid(img):
    import matplotlib

    matplotlib.use("Agg")
    fig = A.show_images([img, img, img], titles=["a", "b", "c"], cols=2)
    assert len(fig.axes) == 4 and fig.axes[1].get_title() == "b"
    import matplotlib.pyplot as plt

    plt.close(fig)
