"""Notebook 11's applications: alt text for a folder, a caption spoken to WAV, a video captioned scene by scene."""

import csv
import hashlib
import os
import re
import shutil
import wave
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin
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


# --- a photo's own XMP (rating, creator, ...) survives: the caption is merged in -------------------------------
XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"  # what starts a JPEG's XMP segment (APP1), by the XMP standard
XMP_KEY = "XML:com.adobe.xmp"  # the keyword of a PNG's XMP iTXt chunk
NS = {"rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#", "dc": "http://purl.org/dc/elements/1.1/",
      "xmp": "http://ns.adobe.com/xap/1.0/", "Iptc4xmpCore": "http://iptc.org/std/Iptc4xmpCore/1.0/xmlns/"}
OLD_DESCRIPTION = {  # an older caption, as an element or as an attribute: both are valid XMP
    "element": ("", '<dc:description><rdf:Alt><rdf:li xml:lang="x-default">an old caption</rdf:li></rdf:Alt>'
                    "</dc:description>"),
    "attribute": (' dc:description="an old caption"', "")}


def lightroom_xmp(old_description="element") -> bytes:
    """A packet as photo software writes one: a rating (attribute), a creator (element), an old description."""
    attribute, element = OLD_DESCRIPTION[old_description]
    return ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n<x:xmpmeta xmlns:x="adobe:ns:meta/">'
            '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" '
            f'xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/" xmp:Rating="5"'
            f'{attribute}><dc:creator><rdf:Seq><rdf:li>Ada Lovelace</rdf:li></rdf:Seq></dc:creator>{element}'
            '</rdf:Description></rdf:RDF></x:xmpmeta>\n' + " " * 200 + '\n<?xpacket end="w"?>').encode()


def photo_with_xmp(path, packet: bytes):
    image = Image.fromarray(skdata.chelsea()).resize((64, 48))
    if path.suffix == ".png":
        info = PngImagePlugin.PngInfo()
        info.add_itxt(XMP_KEY, packet.decode(), zip=True)  # compressed, as exiftool may write it
        image.save(path, pnginfo=info)
    else:
        image.save(path, quality=85, xmp=packet)
    return path


def xmp_packets(path) -> list[bytes]:
    """Every XMP packet stored in the file (there must be one): JPEG APP1 segments, PNG iTXt chunks."""
    data = path.read_bytes()
    if path.suffix == ".png":
        found = [kind for kind, chunk in apps.png_chunks(data) if chunk[8:].startswith(XMP_KEY.encode() + b"\0")]
        with Image.open(path) as image:
            return [image.info[XMP_KEY].encode()] * len(found)
    segments, _ = apps.jpeg_segments(data)
    return [seg[4 + len(XMP_HEADER):] for marker, seg in segments if marker == 0xE1 and seg[4:].startswith(XMP_HEADER)]


def xmp_fields(packet: bytes) -> dict:
    """What a reader finds in the packet (parsed whole, wrapper included, so it must be well-formed)."""
    assert packet.startswith(b"<?xpacket begin=") and packet.rstrip().endswith(b'<?xpacket end="w"?>')
    root = ET.fromstring(packet)
    descriptions = root.findall(".//rdf:RDF/rdf:Description", NS)
    alt = lambda tag: [li.text for d in descriptions for li in d.findall(f"{tag}/rdf:Alt/rdf:li", NS)]  # noqa: E731
    return {"rating": descriptions[0].get(f"{{{NS['xmp']}}}Rating"),
            "creator": [li.text for li in descriptions[0].findall("dc:creator/rdf:Seq/rdf:li", NS)],
            "description": alt("dc:description") + [d.get(f"{{{NS['dc']}}}description") for d in descriptions
                                                    if d.get(f"{{{NS['dc']}}}description") is not None],
            "alt_text": alt("Iptc4xmpCore:AltTextAccessibility")}


@pytest.mark.parametrize("old_description", ["element", "attribute"])
@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_caption_merges_into_the_photos_xmp_keeping_rating_and_creator(tmp_path, suffix, old_description):
    original = photo_with_xmp(tmp_path / f"cat{suffix}", lightroom_xmp(old_description))
    copy = tmp_path / "out" / f"cat{suffix}"
    assert apps.write_caption_metadata(original, copy, "a cat & a <window>") == ""
    [packet] = xmp_packets(copy)
    assert xmp_fields(packet) == {"rating": "5", "creator": ["Ada Lovelace"],
                                  "description": ["a cat & a <window>"], "alt_text": ["a cat & a <window>"]}
    assert b'xmp:Rating="5"' in packet and b"<dc:creator>" in packet  # the packet's own prefixes are kept
    assert_same_pixels_and_compressed_data(original, copy)


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_xmp_that_is_not_xml_is_replaced_by_a_fresh_packet(tmp_path, suffix):
    broken = b'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta><rdf:RDF>cut off<?xpacket end="w"?>'
    path = photo_with_xmp(tmp_path / f"cat{suffix}", broken)
    apps.write_caption_metadata(path, path, "a cat")
    assert xmp_packets(path) == [apps.xmp_packet("a cat")]
    assert xmp_fields(apps.xmp_packet("a cat")) == {"rating": None, "creator": [], "description": ["a cat"],
                                                    "alt_text": ["a cat"]}


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_writing_a_caption_twice_leaves_one_description_and_one_xmp_packet(tmp_path, suffix):
    path = photo_with_xmp(tmp_path / f"cat{suffix}", lightroom_xmp())
    original = tmp_path / f"original{suffix}"
    shutil.copy(path, original)
    apps.write_caption_metadata(path, path, "first caption")
    apps.write_caption_metadata(path, path, "second caption")
    [packet] = xmp_packets(path)
    assert xmp_fields(packet) == {"rating": "5", "creator": ["Ada Lovelace"], "description": ["second caption"],
                                  "alt_text": ["second caption"]}
    assert_same_pixels_and_compressed_data(original, path)


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


def test_a_hung_speech_engine_is_one_sentence_and_keeps_the_previous_wav_whole(tmp_path, monkeypatch):
    engine = tmp_path / "bin" / "espeak-ng"  # writes the start of a WAV where -w says, then hangs
    engine.parent.mkdir()
    engine.write_text(f'#!/bin/sh\nwhile [ "$1" != "-w" ]; do shift; done\nprintf RIFF-partial > "$2"\n'
                      f'exec {shutil.which("sleep")} 30\n')
    engine.chmod(0o755)
    monkeypatch.setenv("PATH", str(engine.parent))
    monkeypatch.setattr(apps, "SPEECH_TIMEOUT_S", 1)
    previous = tmp_path / "out" / "cat.wav"
    previous.parent.mkdir()
    previous.write_bytes(b"RIFF....WAVE the last run's complete file")
    with pytest.raises(apps.SpeechError) as info:
        apps.speak("a cat on a sofa", previous)
    assert "took over 1 s" in str(info.value) and len(str(info.value).splitlines()) == 1
    assert previous.read_bytes() == b"RIFF....WAVE the last run's complete file"
    assert sorted(p.name for p in previous.parent.iterdir()) == ["cat.wav"]  # no scratch file left behind


# ---------------------------------------------------------------------------------------------------------------
# Video
# ---------------------------------------------------------------------------------------------------------------
PHOTOS = {"astronaut": skdata.astronaut(), "coffee": skdata.coffee(), "cat": skdata.chelsea()}
FPS, SIZE, SECONDS_EACH = 10, (160, 120), 2


@pytest.fixture(scope="module")
def slideshow(tmp_path_factory):
    """The three photos, 2 s each, as WebM/VP8: the format a browser's <video> plays (tests/test_video_browser.py)."""
    return apps.write_slideshow(PHOTOS.values(), tmp_path_factory.mktemp("video") / "slideshow.webm", FPS,
                                SECONDS_EACH, SIZE)


def nearest_photo(image):
    """Stub captioner: the name of the test photo the frame looks most like (sees through the codec's losses)."""
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
    still = apps.write_slideshow([PHOTOS["coffee"]], tmp_path / "still.avi", FPS, 2.5, SIZE)  # 25 MJPG frames
    cues = apps.caption_video(still, nearest_photo, every_s=0.5)
    assert [(cue.start, cue.text) for cue in cues] == [(0.0, "coffee")] and cues[0].end == pytest.approx(2.5)


READ_BACK_CODEC = {".webm": {"VP80"}, ".avi": {"MJPG"}, ".mp4": {"FMP4", "mp4v", "MP4V"}}  # FFmpeg: "FMP4"


def read_frames(path):
    """The codec's fourcc, the frame size and every frame (BGR) of a video, as OpenCV reads it back."""
    video = cv2.VideoCapture(str(path))
    try:
        fourcc = int(video.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode()
        size = (int(video.get(cv2.CAP_PROP_FRAME_WIDTH)), int(video.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        frames, (ok, frame) = [], video.read()
        while ok:
            frames.append(frame)
            ok, frame = video.read()
    finally:
        video.release()
    return fourcc, size, frames


@pytest.mark.parametrize("suffix", [".webm", ".avi", ".mp4"])
def test_slideshow_suffix_picks_the_codec_and_each_photo_fills_its_seconds(tmp_path, suffix):
    path = apps.write_slideshow(PHOTOS.values(), tmp_path / f"clip{suffix}", fps=10, seconds_each=0.5,
                                size=(64, 48))
    fourcc, size, frames = read_frames(path)
    assert fourcc in READ_BACK_CODEC[suffix] and size == (64, 48) and len(frames) == 3 * 5
    shown = [nearest_photo(Image.fromarray(np.ascontiguousarray(frame[:, :, ::-1]))) for frame in frames]
    assert shown == [name for name in PHOTOS for _ in range(5)]  # in order, 5 frames (0.5 s at 10 fps) each
    for frame, photo in zip(frames[::5], PHOTOS.values(), strict=True):  # RGB in, so BGR as OpenCV reads it
        assert np.abs(frame.reshape(-1, 3).mean(0)[::-1] - photo.reshape(-1, 3).mean(0)).max() < 12
    assert [p.name for p in tmp_path.iterdir()] == [f"clip{suffix}"]  # the temporary name is gone


@pytest.mark.parametrize("name, photos, codecs, says", [
    ("clip.gif", [PHOTOS["cat"]], {}, "name it .webm"),  # no codec for that suffix
    ("clip.gif", [PHOTOS["cat"]], {".gif": "MJPG"}, "cannot write MJPG"),  # OpenCV opens no writer
    ("clip.webm", [PHOTOS["cat"][:, :, 0]], {}, "[H, W, 3]"),  # a grey photo
    ("clip.webm", [], {}, "at least one"),
])
def test_a_slideshow_that_cannot_be_written_is_one_sentence_and_leaves_no_file(tmp_path, monkeypatch, name,
                                                                               photos, codecs, says):
    for suffix, fourcc in codecs.items():
        monkeypatch.setitem(apps.VIDEO_CODECS, suffix, fourcc)
    with pytest.raises(ValueError) as info:
        apps.write_slideshow(photos, tmp_path / name)
    message = str(info.value)
    assert says in message and len(message.splitlines()) == 1 and message.endswith(".")
    assert list(tmp_path.iterdir()) == []


def test_interrupted_slideshow_leaves_the_previous_video_whole(tmp_path):
    path = apps.write_slideshow([PHOTOS["cat"]], tmp_path / "clip.webm", seconds_each=0.5, size=(64, 48))
    before = path.read_bytes()

    def photos_then_interrupt():
        yield PHOTOS["astronaut"]
        raise KeyboardInterrupt

    for target in (path, tmp_path / "new.webm"):
        with pytest.raises(KeyboardInterrupt):
            apps.write_slideshow(photos_then_interrupt(), target, seconds_each=0.5, size=(64, 48))
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["clip.webm"]


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


def test_word_forms_fold_plurals_and_verb_forms_onto_a_real_word_of_the_list():
    forms = apps.word_forms(SHAPE_WORDS + ["as", "boxes", "box", "dress", "jumps", "jumping", "jump", "stands"])
    assert forms == {"squares": "square", "circles": "circle", "boxes": "box", "jumps": "jump", "jumping": "jump"}
    # "stands" has no other form in the list, "dress" is not the plural of anything, and "as" is not "a"'s plural.
    assert apps.unsupported("green green circle", ["two circles"], canonical=forms) == ["green"]
    assert apps.unsupported("a boy jumps into the air", ["a boy jumping in the air"], canonical=forms) == []


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
