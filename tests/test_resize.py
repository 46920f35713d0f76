"""Tests for labutils.infra.resize: resize a folder once (parallel, resumable, idempotent, every format, never a
folder the lab did not make, one writer at a time)."""

import os
import time

import numpy as np
import pytest
from PIL import Image
from waiting import start_and_see_it_wait

from labutils.infra import resize as R
from labutils.infra.files import MARKER_FILE
from labutils.infra.images import load_image


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
