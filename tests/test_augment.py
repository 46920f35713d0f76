"""Tests for labutils.augment: OpenCV crops/flips/rotations, affine matrices, normalisation, v2 pipelines,
resize_all."""

import os
import time

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from waiting import start_and_see_it_wait

from labutils import augment as A
from labutils.data import load_image
from labutils.infra import resize as R
from labutils.infra.files import MARKER_FILE


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


# ------------------------------------------------------------------------------------------- resize_all
def make_folder(root):
    """A source folder: 3 good images (one in a subfolder), a truncated JPEG, a text file named .jpg."""
    src = root / "src"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (100, 200, 3), dtype=np.uint8)).save(src / "wide.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (90, 30, 3), dtype=np.uint8)).save(src / "sub" / "tall.png")
    Image.fromarray(rng.integers(0, 256, (40, 40, 4), dtype=np.uint8), "RGBA").save(src / "rgba.PNG")
    good = (src / "wide.jpg").read_bytes()
    (src / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (src / "notes.jpg").write_text("this is not an image")
    (src / "readme.txt").write_text("ignored: not an image suffix")
    return src


def test_resize_all_resizes_skips_and_reports(tmp_path):
    src, dst = make_folder(tmp_path), tmp_path / "dst"
    first = R.resize_all(src, dst, 20, workers=2, progress=False)
    assert first.resized == 4 and first.skipped_existing == 0
    assert first.corrupt == ["notes.jpg"] and first.truncated == ["truncated.jpg"]
    with Image.open(dst / "truncated.jpg") as cut, Image.open(dst / "wide.jpg") as whole:
        # the decodable first half matches the intact image's, the missing rest is filled grey
        top_cut, top_whole = np.asarray(cut)[:8].astype(int), np.asarray(whole)[:8].astype(int)
        assert cut.size == (40, 20) and np.abs(top_cut - top_whole).mean() < 8
        assert np.abs(np.asarray(cut)[-3:].astype(int) - 128).mean() < 8
    with Image.open(dst / "wide.jpg") as im:
        assert im.size == (40, 20) and im.format == "JPEG" and im.mode == "RGB"
    with Image.open(dst / "sub" / "tall.png") as im:
        assert im.size == (20, 60) and im.format == "PNG"
    with Image.open(dst / "rgba.PNG") as im:  # same pixels as the lab's loader gives (alpha over white)
        assert im.size == (20, 20) and im.mode == "RGB"
        expected = R.resize_shorter_side(load_image(src / "rgba.PNG"), 20)
        assert np.array_equal(np.asarray(im), np.asarray(expected))
    assert not list(dst.rglob("*.tmp")) and not (dst / "notes.jpg").exists()

    stamps = {p: p.stat().st_mtime_ns for p in dst.rglob("*") if p.is_file()}
    second = R.resize_all(src, dst, 20, workers=2, progress=False)
    assert (second.resized, second.skipped_existing) == (0, 4)
    assert second.corrupt == first.corrupt and second.truncated == []
    assert stamps == {p: p.stat().st_mtime_ns for p in dst.rglob("*") if p.is_file()}

    later = time.time() + 10  # a source edited after its output was written is redone
    os.utime(src / "wide.jpg", (later, later))
    third = R.resize_all(src, dst, 20, workers=1, progress=False)
    assert (third.resized, third.skipped_existing) == (1, 3)

    other_size = R.resize_all(src, dst, 16, workers=2, progress=False)  # same folder, new size: all redone
    assert (other_size.resized, other_size.skipped_existing) == (4, 0)
    with Image.open(dst / "wide.jpg") as im:
        assert im.size == (32, 16)


def test_resize_all_interrupted_write_leaves_nothing_half_done(tmp_path, monkeypatch):
    src, dst = make_folder(tmp_path), tmp_path / "dst"
    real_save = Image.Image.save

    def crash(self, fp, *args, **kwargs):
        fp.write(b"\xff\xd8 half a jpeg")
        raise RuntimeError("power cut")

    monkeypatch.setattr(Image.Image, "save", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        R.resize_all(src, dst, 20, workers=1, progress=False)
    assert [p.name for p in dst.rglob("*") if p.is_file()] == [MARKER_FILE]  # only the lab's ownership marker
    monkeypatch.setattr(Image.Image, "save", real_save)
    report = R.resize_all(src, dst, 20, workers=2, progress=False)
    assert report.resized == 4  # 3 intact + 1 truncated


def test_resize_all_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        R.resize_all(tmp_path / "missing", tmp_path / "out", 32, progress=False)
    tmp_path.joinpath("same").mkdir()
    with pytest.raises(ValueError, match="overwrite the originals"):
        R.resize_all(tmp_path / "same", tmp_path / "same", 32, progress=False)


def test_list_images_and_resize_shorter_side(tmp_path):
    src = make_folder(tmp_path)
    names = [p.relative_to(src).as_posix() for p in R.list_images(src)]
    assert names == ["notes.jpg", "rgba.PNG", "sub/tall.png", "truncated.jpg", "wide.jpg"]
    assert R.resize_shorter_side(Image.new("RGB", (300, 200)), 100).size == (150, 100)
    assert R.resize_shorter_side(Image.new("RGB", (10, 40)), 20).size == (20, 80)


def test_resize_all_reads_every_format_the_dataset_accepts(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    pixels = np.random.default_rng(1).integers(0, 256, (30, 45, 3), dtype=np.uint8)
    formats = {"a.webp": "WEBP", "b.gif": "PNG", "c.bmp": "BMP", "d.tif": "TIFF", "e.TIFF": "TIFF",
               "f.JPEG": "JPEG", "g.jfif": "JPEG", "h.ppm": "PNG"}
    for name in formats:
        Image.fromarray(pixels).save(src / name)
    frames = [Image.new("RGB", (45, 30), c) for c in ("red", "blue")]  # an animated GIF: its first frame
    frames[0].save(src / "anim.gif", save_all=True, append_images=frames[1:])
    formats["anim.gif"] = "PNG"
    report = R.resize_all(src, dst, 20, workers=2, progress=False)
    assert (report.resized, report.corrupt) == (len(formats), [])
    for name, fmt in formats.items():
        with Image.open(dst / name) as im:  # the name is kept: the captions' file_names still point at it
            assert (im.format, im.size) == (fmt, (30, 20)), name
            if fmt not in ("JPEG", "WEBP"):  # lossless: exactly the pixels the lab's loader gives, resized
                want = R.resize_shorter_side(load_image(src / name), 20)
                assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(want)), name
    with Image.open(dst / "anim.gif") as im:
        assert np.asarray(im.convert("RGB"))[10, 15].tolist() == [255, 0, 0]
    assert R.resize_all(src, dst, 20, workers=2, progress=False).skipped_existing == len(formats)


def test_resize_all_caps_the_long_side_of_extreme_strips(tmp_path, capfd):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    strip = np.random.default_rng(2).integers(0, 256, (10, 10_000, 3), dtype=np.uint8)
    Image.fromarray(strip).save(src / "strip.jpg")  # 224 px high would make it 224,000 px wide: JPEG stops at 65,500
    Image.fromarray(strip.transpose(1, 0, 2)).save(src / "tall.webp")  # WebP stops at 16,383
    Image.fromarray(strip[:, :500]).save(src / "wide.png")  # 50:1 at 224 px: 11,200 wide, under the cap
    capfd.readouterr()
    report = R.resize_all(src, dst, 224, workers=2, progress=False)
    assert (report.resized, report.corrupt, report.capped) == (3, [], ["strip.jpg", "tall.webp"])
    assert capfd.readouterr() == ("", "")  # no raw libjpeg lines for the learner
    with Image.open(dst / "strip.jpg") as a, Image.open(dst / "tall.webp") as b, Image.open(dst / "wide.png") as c:
        assert (a.size, b.size, c.size) == ((R.MAX_SIDE, 16), (16, R.MAX_SIDE), (11_200, 224))
    again = R.resize_all(src, dst, 224, workers=2, progress=False)
    assert (again.resized, again.skipped_existing) == (0, 3)
    assert R.target_size(10_000, 10, 224) == (R.MAX_SIDE, 16) and R.target_size(640, 480, 224) == (299, 224)


def test_resize_all_never_overwrites_a_folder_it_did_not_make(tmp_path):
    from labutils.infra.files import NotLabFolderError

    src, mine = make_folder(tmp_path), tmp_path / "my_photos"
    mine.mkdir()
    (mine / "wide.jpg").write_bytes(b"my only copy")
    with pytest.raises(NotLabFolderError, match=f"^{mine} holds files the lab did not write"):
        R.resize_all(src, mine, 20, progress=False)
    assert [p.name for p in mine.iterdir()] == ["wide.jpg"] and (mine / "wide.jpg").read_bytes() == b"my only copy"


def test_resize_all_waits_for_another_writer_of_the_same_folder(tmp_path, capsys):
    import threading

    from labutils.infra.files import folder_lock

    src, dst = make_folder(tmp_path), tmp_path / "dst"
    done = threading.Event()
    with folder_lock(dst, "resized images"):  # another writer (a flock conflicts across open files, as across processes)
        worker = start_and_see_it_wait(lambda: (R.resize_all(src, dst, 20, progress=False), done.set()), capsys,
                                       "resize_all")
        assert not done.is_set() and not dst.exists()
    worker.join(30)
    assert done.is_set() and (dst / "wide.jpg").is_file()


def test_show_images_builds_a_grid(img):
    import matplotlib

    matplotlib.use("Agg")
    fig = A.show_images([img, img, img], titles=["a", "b", "c"], cols=2)
    assert len(fig.axes) == 4 and fig.axes[1].get_title() == "b"
    import matplotlib.pyplot as plt

    plt.close(fig)
