"""Notebook 11's applications: alt text for a folder, a caption spoken to WAV, a video captioned scene by scene."""

import csv
import hashlib
import os
import re
import shutil
import wave
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from labutils import applications as apps
from labutils import checkpoint, decoders, encoders, get_config, train
from labutils.cli import main as cli
from labutils.vocab import Vocabulary

cv2 = pytest.importorskip("cv2")


def size_caption(image):
    """Stub captioner: deterministic, and different for every photo size used here (one needs HTML escaping)."""
    width, height = image.size
    return 'a "wide" <photo> & more' if width > height else f"a photo {width} by {height}"


# ---------------------------------------------------------------------------------------------------------------
# Alt text
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture()
def photo_folder(tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    jpeg = Image.fromarray(skdata.astronaut()).resize((96, 64))
    exif = jpeg.getexif()
    exif[0x0112] = 1  # Orientation: must survive the metadata rewrite
    jpeg.save(folder / "astronaut.jpg", quality=90, exif=exif)
    Image.fromarray(skdata.coffee()).resize((50, 80)).save(folder / "coffee mug.png")
    Image.fromarray(skdata.chelsea()).resize((40, 60)).save(folder / "sub" / "cat.jpg", quality=85)
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (folder / "truncated.jpg").write_bytes((folder / "astronaut.jpg").read_bytes()[:-400])
    return folder


class GalleryParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.unreadable, self.lang, self.headings = [], [], None, []
        self._in = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "html":
            self.lang = attrs.get("lang")
        if tag == "img":
            self.images.append(attrs)
        if tag == "ul" and attrs.get("class") == "unreadable":
            self._in = "unreadable"
        if tag in ("h1", "h2"):
            self._in = tag

    def handle_endtag(self, tag):
        if tag in ("ul", "h1", "h2"):
            self._in = None

    def handle_data(self, text):
        if self._in == "unreadable" and text.strip():
            self.unreadable.append(text)
        elif self._in in ("h1", "h2"):
            self.headings.append(text)


def parse_gallery(path):
    parser = GalleryParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def digest(folder):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_gallery_and_csv_give_every_image_its_alt_and_list_unreadable_files(photo_folder, tmp_path):
    before = digest(photo_folder)
    out = tmp_path / "out"
    report = apps.alt_text_folder(photo_folder, size_caption, out, progress=False, recursive=True)

    page = parse_gallery(out / "index.html")
    assert page.lang == "en" and page.headings[0] == "Alt text for photos"
    alts = {(out / img["src"].replace("%20", " ")).resolve(): img["alt"] for img in page.images}
    assert alts == {(photo_folder / "astronaut.jpg").resolve(): 'a "wide" <photo> & more',
                    (photo_folder / "coffee mug.png").resolve(): "a photo 50 by 80",
                    (photo_folder / "sub" / "cat.jpg").resolve(): "a photo 40 by 60"}
    assert all(not Path(img["src"]).is_absolute() for img in page.images)
    assert sorted(text.split(":")[0] for text in page.unreadable) == ["broken.jpg", "notes.txt", "truncated.jpg"]
    assert "&lt;photo&gt; &amp; more" in (out / "index.html").read_text()  # escaped, not markup

    with open(out / "alt_text.csv", newline="") as handle:
        rows = {row["file"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"astronaut.jpg", "broken.jpg", "coffee mug.png", "notes.txt", "sub/cat.jpg",
                         "truncated.jpg"}
    assert rows["sub/cat.jpg"]["caption"] == "a photo 40 by 60" and rows["sub/cat.jpg"]["status"] == "ok"
    assert rows["truncated.jpg"]["status"] == "unreadable" and "truncated.jpg" in rows["truncated.jpg"]["note"]
    assert [row.file for row in report.unreadable] == ["broken.jpg", "notes.txt", "truncated.jpg"]
    assert digest(photo_folder) == before  # originals untouched
    assert not list(out.glob(".*.tmp")) and not (out / "images").exists()


def test_not_recursive_skips_sub_folders(photo_folder, tmp_path):
    report = apps.alt_text_folder(photo_folder, size_caption, tmp_path / "out", progress=False)
    assert "sub/cat.jpg" not in [row.file for row in report.rows] and len(report.rows) == 5


def jpeg_parts_without_app1(data):
    segments, scan = apps.jpeg_segments(data)
    return [seg for marker, seg in segments if marker != 0xE1], scan


def assert_same_pixels_and_compressed_data(original, copy):
    a, b = original.read_bytes(), copy.read_bytes()
    assert a != b  # the metadata did change
    if original.suffix == ".png":
        idat = [[c for kind, c in apps.png_chunks(x) if kind in (b"IHDR", b"IDAT")] for x in (a, b)]
        assert idat[0] == idat[1]
    else:
        assert jpeg_parts_without_app1(a) == jpeg_parts_without_app1(b)  # quant tables, Huffman tables, scan
    with Image.open(original) as x, Image.open(copy) as y:
        assert np.array_equal(np.asarray(x), np.asarray(y))


def test_metadata_goes_into_copies_with_identical_pixels(photo_folder, tmp_path):
    before = digest(photo_folder)
    out = tmp_path / "out"
    report = apps.alt_text_folder(photo_folder, size_caption, out, write_metadata=True, progress=False,
                                  recursive=True)
    assert digest(photo_folder) == before
    for name in ("astronaut.jpg", "coffee mug.png", "sub/cat.jpg"):
        assert_same_pixels_and_compressed_data(photo_folder / name, out / "images" / name)
    with Image.open(out / "images" / "astronaut.jpg") as image:
        assert image.getexif()[0x010E] == 'a "wide" <photo> & more'
        assert image.getexif()[0x0112] == 1  # the photo's own EXIF is kept
        assert b"&lt;photo&gt; &amp; more</rdf:li>" in image.info["xmp"]
    with Image.open(out / "images" / "coffee mug.png") as image:
        assert image.info["Description"] == "a photo 50 by 80" and "a photo 50 by 80" in image.info["XML:com.adobe.xmp"]
    page = parse_gallery(out / "index.html")
    assert {img["src"].split("/")[0] for img in page.images} == {"images"}  # the gallery shows the copies
    assert all(row.note == "" for row in report.rows if row.status == "ok")


def test_in_place_rewrites_only_metadata_and_unicode_survives(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(skdata.chelsea()).resize((64, 48)).save(folder / "cat.jpg", quality=80)
    original = tmp_path / "original.jpg"
    shutil.copy(folder / "cat.jpg", original)
    apps.alt_text_folder(folder, lambda image: "un chat assis près d'une fenêtre", tmp_path / "out",
                         write_metadata=True, in_place=True, progress=False)
    assert_same_pixels_and_compressed_data(original, folder / "cat.jpg")
    with Image.open(folder / "cat.jpg") as image:
        assert image.getexif()[0x010E] == "un chat assis pres d'une fenetre"  # EXIF is ASCII: accents folded
        assert "près d'une fenêtre".encode() in image.info["xmp"]  # XMP keeps the exact UTF-8 caption


def test_interrupted_run_leaves_the_previous_outputs_whole(photo_folder, tmp_path):
    out = tmp_path / "out"
    apps.alt_text_folder(photo_folder, size_caption, out, progress=False)
    previous = digest(out)

    def crash_on_second(image, calls=[]):  # noqa: B006 - counts calls across this test only
        calls.append(image)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return "new caption"

    with pytest.raises(KeyboardInterrupt):
        apps.alt_text_folder(photo_folder, crash_on_second, out, progress=False)
    assert digest(out) == previous and not list(out.glob(".*"))


# ---------------------------------------------------------------------------------------------------------------
# Speech
# ---------------------------------------------------------------------------------------------------------------
def test_speak_writes_a_real_wav(tmp_path):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install -y espeak-ng, or `make setup`)")
    path = apps.speak("a cat sitting on a sofa", tmp_path / "sub" / "cat.wav")
    assert path.read_bytes()[:4] == b"RIFF" and path.read_bytes()[8:12] == b"WAVE"
    with wave.open(str(path)) as wav:
        seconds = wav.getnframes() / wav.getframerate()
    assert 0.5 < seconds < 10


def test_missing_speech_engine_is_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no espeak-ng on the PATH
    with pytest.raises(apps.SpeechEngineMissingError) as info:
        apps.speak("hello", tmp_path / "x.wav")
    message = str(info.value)
    assert "apt-get install -y espeak-ng" in message and len(message.splitlines()) == 1
    assert message.endswith(".") and not (tmp_path / "x.wav").exists()


# ---------------------------------------------------------------------------------------------------------------
# Video
# ---------------------------------------------------------------------------------------------------------------
PHOTOS = {"astronaut": skdata.astronaut(), "coffee": skdata.coffee(), "cat": skdata.chelsea()}
FPS, SIZE, SECONDS_EACH = 10, (160, 120), 2


def write_video(path, frames_rgb):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, SIZE)
    assert writer.isOpened(), "OpenCV here cannot write MJPG AVI files"
    for frame in frames_rgb:
        writer.write(np.ascontiguousarray(cv2.resize(frame, SIZE)[:, :, ::-1]))  # [H, W, 3] RGB -> BGR
    writer.release()
    return path


@pytest.fixture(scope="module")
def slideshow(tmp_path_factory):
    frames = [photo for photo in PHOTOS.values() for _ in range(FPS * SECONDS_EACH)]
    return write_video(tmp_path_factory.mktemp("video") / "slideshow.avi", frames)


def nearest_photo(image):
    """Stub captioner: the name of the test photo the frame looks most like (sees through MJPG's losses)."""
    frame = np.asarray(image.resize(SIZE)).astype(np.float32)
    return min(PHOTOS, key=lambda name: np.abs(frame - cv2.resize(PHOTOS[name], SIZE)).mean())


def test_slideshow_gives_one_cue_per_photo_at_the_right_times(slideshow):
    calls = []
    every = 0.5
    cues = apps.caption_video(slideshow, lambda image: calls.append(1) or nearest_photo(image), every_s=every)
    assert [cue.text for cue in cues] == ["astronaut", "coffee", "cat"]
    for cue, start in zip(cues, (0, 2, 4), strict=True):
        assert abs(cue.start - start) <= every and abs(cue.end - (start + SECONDS_EACH)) <= every
    assert len(calls) == 3  # one caption per scene, not one per sampled frame (12) or per frame (60)


def test_same_caption_scenes_merge_and_still_video_is_one_cue(slideshow, tmp_path):
    merged = apps.caption_video(slideshow, lambda image: "a picture", every_s=0.5)
    assert [(cue.start, cue.text) for cue in merged] == [(0.0, "a picture")] and merged[0].end == pytest.approx(6)
    still = write_video(tmp_path / "still.avi", [PHOTOS["coffee"]] * 25)
    cues = apps.caption_video(still, nearest_photo, every_s=0.5)
    assert [(cue.start, cue.text) for cue in cues] == [(0.0, "coffee")] and cues[0].end == pytest.approx(2.5)


def test_webvtt_file_format(slideshow, tmp_path):
    cues = [apps.Cue(0, 1.5, "a <b> & c"), apps.Cue(1.5, 3725.25, "two")]
    text = apps.write_webvtt(cues, tmp_path / "out.vtt").read_text()
    assert text.startswith("WEBVTT\n\n")
    times = re.findall(r"^(\d\d:\d\d:\d\d\.\d{3}) --> (\d\d:\d\d:\d\d\.\d{3})$", text, flags=re.M)
    assert times == [("00:00:00.000", "00:00:01.500"), ("00:00:01.500", "01:02:05.250")]
    assert "a &lt;b&gt; &amp; c" in text


@pytest.mark.parametrize("make", [lambda p: p, lambda p: p.write_text("not a video") and p])
def test_unreadable_or_missing_video_is_one_sentence(tmp_path, make):
    path = make(tmp_path / "clip.mp4")
    with pytest.raises(apps.VideoReadError) as info:
        apps.caption_video(path, nearest_photo)
    assert str(path) in str(info.value) and len(str(info.value).splitlines()) == 1


# ---------------------------------------------------------------------------------------------------------------
# The commands, end to end with a real (tiny, untrained) checkpoint
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick_checkpoint(tmp_path_factory):
    cfg = get_config("quick")
    vocab = Vocabulary.build(["a red circle on the left", "two blue squares"])
    torch.manual_seed(0)
    channels = encoders.build_encoder(cfg.encoder, pretrained=False, grid_size=cfg.grid_size).out_channels
    decoder = decoders.build_decoder("attention", len(vocab), channels, cfg)
    return checkpoint.save_checkpoint(tmp_path_factory.mktemp("ckpt") / "attention.pt", decoder.state_dict(),
                                      vocab, cfg.to_dict(), decoder=train.decoder_spec(decoder))


def test_alt_text_and_video_commands_end_to_end(quick_checkpoint, photo_folder, slideshow, tmp_path, capsys):
    out = tmp_path / "gallery"
    model = ["--checkpoint", str(quick_checkpoint), "--beam", "1", "--max-len", "4"]
    assert cli.main(["alt-text", str(photo_folder), *model, "--out", str(out), "--metadata", "--no-progress"]) == 1
    streams = capsys.readouterr()
    assert streams.err.count("unreadable:") == 3 and f"gallery: {out / 'index.html'}" in streams.out
    page = parse_gallery(out / "index.html")
    assert len(page.images) == 2 and all(img["alt"] for img in page.images)
    assert_same_pixels_and_compressed_data(photo_folder / "astronaut.jpg", out / "images" / "astronaut.jpg")

    vtt, html_page = tmp_path / "clip.vtt", tmp_path / "clip.html"
    assert cli.main(["video", str(slideshow), *model, "--out", str(vtt), "--html", str(html_page)]) == 0
    text = vtt.read_text()
    assert text.startswith("WEBVTT") and 1 <= text.count(" --> ") <= 3
    assert 'src="clip.vtt"' in html_page.read_text() and os.path.relpath(slideshow, tmp_path) in html_page.read_text()
    assert cli.main(["video", str(tmp_path / "missing.mp4"), *model]) == 1
    assert capsys.readouterr().err.startswith("error: Video file")


# ---------------------------------------------------------------------------------------------------------------
# What goes wrong: words named but in no reference, and co-occurrence counts
# ---------------------------------------------------------------------------------------------------------------
SHAPE_WORDS = ["a", "two", "red", "blue", "square", "squares", "circle", "circles", "of", "picture"]


def test_unsupported_names_the_content_words_no_reference_has():
    refs = ["A red circle.", "a picture of two blue squares"]
    assert apps.unsupported("a red circle and a green triangle", refs) == ["green", "triangle"]
    # Supported by ANY one reference is enough: "red" and "blue" come from different references.
    assert apps.unsupported("a red circle and blue squares", refs) == []
    # Stop words and framing are never counted, whatever the references say.
    assert apps.unsupported("there is a picture of them on the left", ["a red circle"]) == []
    # Each word once, in the caption's order; whole words, not substrings ("circle" is inside "circles").
    assert apps.unsupported("green green circle", ["two circles"]) == ["green", "circle"]


def test_singular_forms_fold_plurals_only_when_the_singular_is_known():
    forms = apps.singular_forms(SHAPE_WORDS + ["as", "boxes", "box", "dress"])
    assert forms == {"squares": "square", "circles": "circle", "boxes": "box"}  # not "as" -> "a"
    assert apps.unsupported("green green circle", ["two circles"], canonical=forms) == ["green"]


def test_unsupported_words_report_shares_and_counts():
    captions = {1: "a red circle", 2: "two blue squares and a red circle", 3: "a green square"}
    references = {1: ["a red circle"], 2: ["two blue squares", "a blue square above a circle"],
                  3: ["a blue square", "one square"]}
    report = apps.unsupported_words(captions, references)
    assert report.per_image == {1: [], 2: ["red"], 3: ["green"]}
    assert report.caption_share == pytest.approx(2 / 3)
    assert report.named == 2 + 4 + 2  # content words per caption, each once
    assert report.word_share == pytest.approx(2 / 8)
    assert report.counts == {"red": 1, "green": 1}
    with pytest.raises(KeyError, match="no references"):
        apps.unsupported_words({4: "a circle"}, references)


def test_a_measure_that_checked_only_the_first_reference_would_fail_here():
    """The mutation this test catches: comparing with references[0] alone flags "blue", which the second has."""
    refs = ["a red circle", "a blue circle"]
    assert apps.unsupported("a blue circle", refs) == []
    assert apps.unsupported("a blue circle", refs[:1]) == ["blue"]


def test_cooccurrence_counts_each_text_once_per_cell():
    texts = ["A man on a snowboard.", "a woman snowboarding down a hill", "two men talking",
             "a man , a man and a snowboard snowboard", "a dog"]
    rows = {"man": {"man", "men"}, "woman": {"woman", "women"}}
    cols = {"snowboard": {"snowboard", "snowboarding"}, "skateboard": {"skateboard"}}
    table = apps.cooccurrence(texts, rows, cols)
    assert list(table.columns) == ["snowboard", "skateboard", "captions"]
    assert table.loc["man"].tolist() == [2, 0, 3]
    assert table.loc["woman"].tolist() == [1, 0, 1]
