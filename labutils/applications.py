"""Notebook 11: putting a captioner to work: alt text for a folder of photos, a caption spoken aloud, a video
captioned scene by scene.

Nothing here knows how a caption is made: every function takes a `caption_fn(image: PIL.Image) -> str` (or a
function returning a `Caption`, whose `.text` is used), so a trained `Captioner`, a stub in a test or any other
model plugs in the same way. `python -m labutils alt-text` / `video` wire a checkpoint into it.
"""

from __future__ import annotations

import csv
import html
import io
import os
import re
import shutil
import struct
import subprocess
import tempfile
import unicodedata
import xml.etree.ElementTree as ET
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import numpy as np
from PIL import Image

from .infra.files import atomic_write_bytes, atomic_write_text
from .infra.images import ImageLoadError, load_image
from .vocab import tokenize

if TYPE_CHECKING:
    import pandas

CaptionFn = Callable[[Image.Image], object]  # returns a str, or a Caption (its .text is used)


class SpeechEngineMissingError(RuntimeError):
    """No offline speech engine (espeak-ng) is installed; the message says how to install it."""


class SpeechError(RuntimeError):
    """The speech engine ran but did not produce a WAV file; the message holds its own reason."""


# ---------------------------------------------------------------------------------------------------------------
# Speech: a caption read aloud into a WAV file
# ---------------------------------------------------------------------------------------------------------------
SPEECH_ENGINE = "espeak-ng"
SPEECH_TIMEOUT_S = 120  # a caption takes well under a second; minutes mean a hung engine


def speak(text: str, wav_path: str | Path, voice: str = "en", speed_wpm: int = 160) -> Path:
    """Speak `text` into the WAV file `wav_path` with espeak-ng (offline: no network, no model download)."""
    binary = shutil.which(SPEECH_ENGINE)
    if binary is None:
        raise SpeechEngineMissingError(
            f"The offline speech engine {SPEECH_ENGINE} is not installed; install it with `apt-get install -y "
            f"espeak-ng` (in Colab: `!apt-get install -y espeak-ng`), or `make setup` on the lab machine.")
    wav_path = Path(wav_path)
    wav_path.parent.mkdir(parents=True, exist_ok=True)
    # espeak-ng writes as it speaks: a scratch name until it has finished, so a killed run leaves no short WAV
    # under the real name.
    partial = wav_path.with_name(f".{wav_path.name}.{os.getpid()}.partial.wav")
    # A list of arguments, never a shell string: a caption is untrusted text. "--" stops a caption that starts
    # with "-" from being read as an option.
    try:
        result = subprocess.run([binary, "-v", voice, "-s", str(speed_wpm), "-w", str(partial), "--", text or " "],
                                capture_output=True, text=True, timeout=SPEECH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        partial.unlink(missing_ok=True)
        raise SpeechError(f"{SPEECH_ENGINE} took over {SPEECH_TIMEOUT_S} s to speak {len(text)} characters into "
                          f"{wav_path}; give it a shorter text, or check that the machine is not overloaded.") from None
    if result.returncode != 0 or not partial.is_file() or partial.stat().st_size <= 44:
        partial.unlink(missing_ok=True)
        reason = (result.stderr or result.stdout).strip().splitlines()[:1] or [f"exit code {result.returncode}"]
        raise SpeechError(f"{SPEECH_ENGINE} could not write {wav_path} ({reason[0]}); check that the folder is "
                          f"writable and that the voice '{voice}' is installed (espeak-ng --voices).")
    os.replace(partial, wav_path)
    return wav_path


# ---------------------------------------------------------------------------------------------------------------
# Alt text for a folder: a gallery page, a CSV and (optionally) the caption stored in each image's metadata
# ---------------------------------------------------------------------------------------------------------------
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass
class AltTextRow:
    file: str  # path relative to the folder, with "/" separators
    caption: str = ""
    status: str = "ok"  # "ok" or "unreadable"
    note: str = ""  # why unreadable, or why the metadata was not written


@dataclass
class AltTextReport:
    rows: list[AltTextRow] = field(default_factory=list)
    html: Path | None = None
    csv: Path | None = None

    @property
    def unreadable(self) -> list[AltTextRow]:
        return [row for row in self.rows if row.status != "ok"]


def caption_text(result: object) -> str:
    """The words of what a caption function returned: a str as is, a Caption's `.text`."""
    return str(getattr(result, "text", result)).strip()


def folder_files(folder: Path, recursive: bool = False, skip: Path | None = None) -> Iterator[Path]:
    """Every visible file of `folder`, sorted, lazily; files that are not images are listed too, so that the
    report names them instead of hiding them. `skip` (the output folder, when it sits inside) is left out."""
    entries = sorted(folder.rglob("*") if recursive else folder.iterdir())
    for path in entries:
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if skip is not None and path.resolve().is_relative_to(skip.resolve()):
            continue
        yield path


# --- the caption inside the file, without touching the compressed pixels --------------------------------------
# Re-saving with Pillow would decode and re-encode the JPEG (a second lossy pass: different pixels). Instead the
# file's segments (JPEG) or chunks (PNG) are copied byte for byte and only the metadata ones are replaced.
_EXIF_HEADER = b"Exif\x00\x00"
_XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
IMAGE_DESCRIPTION = 0x010E  # EXIF/TIFF tag


def xmp_packet(caption: str) -> bytes:
    """An XMP packet holding the caption as dc:description and IPTC's accessibility alt text field."""
    text = html.escape(caption, quote=False)
    alt = f'<rdf:Alt><rdf:li xml:lang="x-default">{text}</rdf:li></rdf:Alt>'
    return ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
            '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" '
            'xmlns:Iptc4xmpCore="http://iptc.org/std/Iptc4xmpCore/1.0/xmlns/">'
            f'<dc:description>{alt}</dc:description>'
            f'<Iptc4xmpCore:AltTextAccessibility>{alt}</Iptc4xmpCore:AltTextAccessibility>'
            '</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>').encode()


_XMP_NAMESPACES = {"x": "adobe:ns:meta/", "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
                   "dc": "http://purl.org/dc/elements/1.1/",
                   "Iptc4xmpCore": "http://iptc.org/std/Iptc4xmpCore/1.0/xmlns/"}
_RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"  # ElementTree's {namespace}name form
_CAPTION_TAGS = ("{http://purl.org/dc/elements/1.1/}description",
                 "{http://iptc.org/std/Iptc4xmpCore/1.0/xmlns/}AltTextAccessibility")
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"


def _parse_xmp(body: bytes) -> ET.Element | None:
    """The root element of an XMP packet's XML, or None when it is not well-formed XML. Every prefix the packet
    declares is registered with ElementTree, so that writing it back keeps "xmp:", "crs:", ... as they were."""
    root, prefixes = None, {}
    try:
        for event, item in ET.iterparse(io.BytesIO(body), events=("start-ns", "start")):
            if event == "start-ns":
                prefixes[item[0]] = item[1]
            elif root is None:
                root = item
    except ET.ParseError:
        return None
    # ElementTree's names are global: the packet's own prefixes first, then the four this module writes.
    for prefix, uri in [*prefixes.items(), *_XMP_NAMESPACES.items()]:
        if prefix and not re.fullmatch(r"ns\d+", prefix):  # "" and ns0, ns1 ... are ElementTree's own
            ET.register_namespace(prefix, uri)
    return root


def _set_caption(rdf: ET.Element, caption: str) -> None:
    """Remove dc:description and the alt text (as elements or as attributes) from every top-level
    rdf:Description, then add both, as an x-default rdf:Alt, to the first one; everything else stays."""
    descriptions = rdf.findall(f"{_RDF}Description") or [
        ET.SubElement(rdf, f"{_RDF}Description", {f"{_RDF}about": ""})]
    for description in descriptions:
        for tag in _CAPTION_TAGS:
            description.attrib.pop(tag, None)
            for old in description.findall(tag):
                description.remove(old)
    for tag in _CAPTION_TAGS:
        alt = ET.SubElement(ET.SubElement(descriptions[0], tag), f"{_RDF}Alt")
        ET.SubElement(alt, f"{_RDF}li", {_XML_LANG: "x-default"}).text = caption


def xmp_with_caption(packet: bytes | None, caption: str) -> bytes:
    """`packet` (an image's existing XMP, or None) with the caption merged in as dc:description and the IPTC alt
    text: a rating, a creator, GPS, edits, a title are all kept, and so is the <?xpacket?> wrapper.

    The one case where old XMP is dropped: a packet that is not well-formed XML (or holds no rdf:RDF) cannot be
    edited safely, so it is replaced by a fresh one holding only the caption, as when there is no packet."""
    packet = packet or b""
    start = packet.find(b"?>") + 2 if packet.lstrip().startswith(b"<?xpacket begin") else 0
    end = packet.rfind(b"<?xpacket end")
    end = end if end >= start else len(packet)
    root = _parse_xmp(packet[start:end].strip()) if packet.strip() else None
    rdf = None if root is None else root if root.tag == f"{_RDF}RDF" else root.find(f".//{_RDF}RDF")
    if rdf is None:
        return xmp_packet(caption)
    _set_caption(rdf, caption)
    head = packet[:start] or xmp_packet("").split(b"?>")[0] + b"?>"
    return head + ET.tostring(root, encoding="unicode").encode("utf-8") + (packet[end:] or b'<?xpacket end="w"?>')


def _exif_segment(data: bytes, caption: str) -> bytes:
    # The file's own EXIF (orientation, camera, date) is kept: only ImageDescription is set. EXIF text is ASCII
    # by the standard, so accents are folded there; XMP carries the exact UTF-8 caption.
    with Image.open(io.BytesIO(data)) as image:
        exif = image.getexif()
    exif[IMAGE_DESCRIPTION] = unicodedata.normalize("NFKD", caption).encode("ascii", "ignore").decode()
    payload = exif.tobytes()
    return payload if payload.startswith(_EXIF_HEADER) else _EXIF_HEADER + payload


def jpeg_segments(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Split a JPEG into its header segments [(marker, whole segment bytes)] and the rest (scan data onwards)."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG file (no start-of-image marker)")
    segments, pos = [], 2
    while pos + 4 <= len(data) and data[pos] == 0xFF and data[pos + 1] != 0xDA:  # 0xDA: start of scan
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        segments.append((data[pos + 1], data[pos:pos + 2 + length]))
        pos += 2 + length
    if pos + 4 > len(data) or data[pos] != 0xFF:
        raise ValueError("JPEG header segments are damaged")
    return segments, data[pos:]


def _app1(payload: bytes) -> bytes:
    if len(payload) + 2 > 0xFFFF:
        raise ValueError("the metadata is larger than one JPEG segment can hold")
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def jpeg_with_caption(data: bytes, caption: str) -> bytes:
    """The JPEG bytes with EXIF ImageDescription set to `caption` and the caption merged into its XMP
    (`xmp_with_caption`); every other byte is copied as is."""
    segments, scan = jpeg_segments(data)
    old_xmp = next((seg[4 + len(_XMP_HEADER):] for marker, seg in segments
                    if marker == 0xE1 and seg[4:].startswith(_XMP_HEADER)), None)
    kept = [seg for marker, seg in segments
            if not (marker == 0xE1 and seg[4:].startswith((_EXIF_HEADER, _XMP_HEADER)))]
    # JFIF (APP0) must stay first when present; the new EXIF and XMP segments go right after it.
    head = 1 if segments and segments[0][0] == 0xE0 else 0
    new = [_app1(_exif_segment(data, caption)), _app1(_XMP_HEADER + xmp_with_caption(old_xmp, caption))]
    return b"\xff\xd8" + b"".join(kept[:head] + new + kept[head:]) + scan


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """A PNG's chunks as [(type, whole chunk bytes: length, type, data, CRC)]."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file (bad signature)")
    chunks, pos = [], 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        chunks.append((data[pos + 4:pos + 8], data[pos:pos + 12 + length]))
        pos += 12 + length
    return chunks


def _itxt(keyword: str, text: bytes) -> bytes:
    body = b"iTXt" + keyword.encode("latin-1") + b"\x00\x00\x00\x00\x00" + text  # uncompressed, no language
    return struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))


def _itxt_text(chunk: bytes) -> bytes | None:
    """The text of a whole iTXt chunk (inflated when compressed), or None when it is damaged."""
    try:
        _keyword, rest = chunk[8:-4].split(b"\x00", 1)
        compressed, rest = rest[0], rest[2:]  # flag, method (0: zlib, the only one PNG defines)
        _language, _translated, text = rest.split(b"\x00", 2)
        return zlib.decompress(text) if compressed else text
    except (ValueError, IndexError, zlib.error):
        return None


def png_with_caption(data: bytes, caption: str) -> bytes:
    """The PNG bytes with a "Description" text chunk set to `caption` and the caption merged into its XMP
    (`xmp_with_caption`; XMP is read from the iTXt chunk the XMP standard puts it in); image chunks copied as is."""
    replaced, chunks = (b"Description\x00", b"XML:com.adobe.xmp\x00"), png_chunks(data)
    old_xmp = next((_itxt_text(chunk) for kind, chunk in chunks
                    if kind == b"iTXt" and chunk[8:].startswith(replaced[1])), None)
    chunks = [(kind, chunk) for kind, chunk in chunks
              if not (kind in (b"iTXt", b"tEXt", b"zTXt") and chunk[8:].startswith(replaced))]
    new = (_itxt("Description", caption.encode("utf-8"))
           + _itxt("XML:com.adobe.xmp", xmp_with_caption(old_xmp, caption)))
    # Right after IHDR, which the PNG standard requires to be first.
    return data[:8] + chunks[0][1] + new + b"".join(chunk for _, chunk in chunks[1:])


METADATA_WRITERS = {".jpg": jpeg_with_caption, ".jpeg": jpeg_with_caption, ".png": png_with_caption}


def write_caption_metadata(source: Path, target: Path, caption: str) -> str:
    """Copy `source` to `target` (they may be the same file) with the caption in its metadata, atomically.
    Returns "" when written, else why not (the format has no writer here: the file is copied unchanged)."""
    data = source.read_bytes()
    writer = METADATA_WRITERS.get(source.suffix.lower())
    try:
        new, note = (writer(data, caption), "") if writer else (data, "")
    except (ValueError, OSError, struct.error) as exc:
        new, note = data, f"metadata not written ({exc})"
    if writer is None:
        note = f"metadata not written ({source.suffix or 'no suffix'} files are not supported: only JPEG and PNG)"
    if target != source or new != data:
        atomic_write_bytes(target, new, what=f"the copy of {source.name}")
    return note


# --- the gallery page and the CSV ----------------------------------------------------------------------------
_STYLE = ("body{font-family:system-ui,sans-serif;margin:2rem;line-height:1.4}"
          "ul.gallery{list-style:none;padding:0;display:grid;gap:1rem;"
          "grid-template-columns:repeat(auto-fill,minmax(16rem,1fr))}"
          "figure{margin:0}img{max-width:100%;height:auto}figcaption{font-size:.95rem}"
          ".file{display:block;color:#444;font-size:.85rem}")


def _figure(row: AltTextRow, src: str) -> str:
    # The caption is the alt text, which a screen reader reads; the visible copy in <figcaption> is hidden from
    # it (aria-hidden) so it is not read twice, while the file name stays readable.
    alt = html.escape(row.caption or f"photo {row.file} (no caption)")
    return (f'<li><figure><img src="{html.escape(src)}" alt="{alt}" loading="lazy">'
            f'<figcaption><span aria-hidden="true">{alt}</span>'
            f'<span class="file">{html.escape(row.file)}</span></figcaption></figure></li>')


def gallery_html(rows: list[AltTextRow], sources: dict[str, str], title: str, lang: str = "en") -> str:
    """An accessible page: every readable image with its caption as alt text, then the files that could not be
    read. `sources` maps each row's file to the relative URL the page should load it from."""
    good = [row for row in rows if row.status == "ok"]
    bad = [row for row in rows if row.status != "ok"]
    parts = [f'<!DOCTYPE html>\n<html lang="{html.escape(lang)}">\n<head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n<body><main>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p>{len(good)} image{'s' * (len(good) != 1)}, each described by a caption a model wrote; "
             "the captions can be wrong.</p>",
             '<ul class="gallery">', *(_figure(row, sources[row.file]) for row in good), "</ul>"]
    if bad:
        parts += [f"<h2>Files that could not be read ({len(bad)})</h2>", '<ul class="unreadable">',
                  *(f"<li>{html.escape(row.file)}: {html.escape(row.note)}</li>" for row in bad), "</ul>"]
    return "\n".join(parts + ["</main></body>\n</html>\n"])


def rows_csv(rows: list[AltTextRow]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["file", "caption", "status", "note"])
    writer.writerows([row.file, row.caption, row.status, row.note] for row in rows)
    return out.getvalue()


def _url(target: Path, page_folder: Path) -> str:
    return quote(Path(os.path.relpath(target, page_folder)).as_posix())


def _alt_text_one(path: Path, folder: Path, caption_fn: CaptionFn, min_side: int | None) -> AltTextRow:
    row = AltTextRow(path.relative_to(folder).as_posix())
    try:
        image = load_image(path, min_side=min_side)
    except ImageLoadError as exc:
        row.status, row.note = "unreadable", str(exc)
        return row
    row.caption = caption_text(caption_fn(image))
    if not row.caption:  # alt="" would tell a screen reader the image is decoration, so say what happened
        row.note = "the model returned an empty caption"
    return row


def alt_text_folder(folder: str | Path, caption_fn: CaptionFn, out_dir: str | Path, write_metadata: bool = False,
                    progress: bool = True, recursive: bool = False, in_place: bool = False,
                    min_side: int | None = None, lang: str = "en") -> AltTextReport:
    """Caption every image of `folder` one at a time into out_dir/index.html (alt text) and out_dir/alt_text.csv.

    write_metadata: also store each caption in a copy under out_dir/images/ (EXIF ImageDescription + XMP), the
    gallery then shows the copies; in_place=True writes it into the originals instead. Pixels never change.
    Unreadable files are listed (CSV status "unreadable", a section of the page) and the run goes on.
    """
    from tqdm.auto import tqdm

    folder, out_dir = Path(folder), Path(out_dir)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder; pass the folder that holds the images.")
    report, sources = AltTextReport(), {}
    files = list(folder_files(folder, recursive, skip=out_dir))
    for path in tqdm(files, desc="alt text", unit="file", disable=not progress):
        row = _alt_text_one(path, folder, caption_fn, min_side)
        target = path
        if row.status == "ok" and write_metadata:
            target = path if in_place else out_dir / "images" / row.file
            row.note = write_caption_metadata(path, target, row.caption) or row.note
        sources[row.file] = _url(target, out_dir)
        report.rows.append(row)
    report.csv = atomic_write_text(out_dir / "alt_text.csv", rows_csv(report.rows), what="the alt-text CSV")
    report.html = atomic_write_text(out_dir / "index.html", gallery_html(report.rows, sources,
                                                                         f"Alt text for {folder.name}", lang),
                                    what="the alt-text gallery")
    return report


# ---------------------------------------------------------------------------------------------------------------
# Video: one caption per scene, as WebVTT subtitles
# ---------------------------------------------------------------------------------------------------------------
class VideoReadError(ValueError):
    """A video file that is missing or that OpenCV cannot decode; the message names the file and the fix."""


class VideoWriteError(ValueError):
    """OpenCV cannot write a video of that kind (file suffix, codec); the message says which kind to use."""


# The suffix picks the container and the codec. A browser's <video> plays WebM/VP8 (checked in headless Chromium by
# tests/test_video_browser.py) but neither Motion JPEG in AVI nor OpenCV's MPEG-4 part 2 ("mp4v") in MP4.
VIDEO_CODECS = {".webm": "VP80", ".avi": "MJPG", ".mp4": "mp4v"}


def _encode_slideshow(path: Path, photos: Iterable[np.ndarray], fourcc: str, fps: float, frames_each: int,
                      size: tuple[int, int]) -> int:
    """Write each photo `frames_each` times into the video `path`; returns how many photos were written."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    try:
        if not writer.isOpened():
            raise VideoWriteError(f"OpenCV on this machine cannot write {fourcc} video into a {path.suffix} "
                                  "file; name the video .webm (VP8, plays in browsers) or .avi (Motion JPEG).")
        count = 0
        for count, photo in enumerate(photos, 1):
            photo = np.asarray(photo)
            if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
                raise ValueError(f"photo {count} has shape {photo.shape} and dtype {photo.dtype}; pass RGB photos "
                                 "as uint8 arrays of shape [H, W, 3].")
            frame = cv2.resize(photo, size, interpolation=cv2.INTER_AREA)[:, :, ::-1]  # [h, w, 3] RGB -> BGR
            for _ in range(frames_each):
                writer.write(np.ascontiguousarray(frame))
        return count
    finally:
        writer.release()


def write_slideshow(photos: Iterable[np.ndarray], path: str | Path, fps: float = 10, seconds_each: float = 1.5,
                    size: tuple[int, int] = (256, 256)) -> Path:
    """Write RGB photos ([H, W, 3] uint8, each resized to `size` = (width, height)) as a video showing each for
    `seconds_each` seconds. The suffix picks the codec (VIDEO_CODECS): .webm (VP8) is the one browsers play.

    The video is written under a temporary name in the same folder and renamed to `path` only once complete."""
    path = Path(path)
    fourcc = VIDEO_CODECS.get(path.suffix.lower())
    if fourcc is None:
        raise VideoWriteError(f"{path.name} has no video suffix OpenCV writes here; name it .webm (VP8, plays in "
                              "browsers), .avi (Motion JPEG) or .mp4 (MPEG-4 part 2).")
    frames_each = max(1, round(fps * seconds_each))
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not infra.files.atomic_write: it hands out an open file, and OpenCV needs a path whose suffix names the
    # container. A hidden scratch folder beside `path` is removed whatever happens, and the rename stays atomic.
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as scratch:
        partial = Path(scratch) / f"partial{path.suffix}"
        if _encode_slideshow(partial, photos, fourcc, fps, frames_each, size) == 0:
            raise ValueError(f"no photos were given for {path.name}; pass at least one RGB photo.")
        with open(partial, "rb") as done:  # on disk before the rename, as infra.files.atomic_write does
            os.fsync(done.fileno())
        os.replace(partial, path)
    return path


@dataclass
class Cue:
    start: float  # seconds
    end: float
    text: str


# Why a colour histogram: it describes what is in the frame (which colours, how much of each) but not where, so
# a person walking, a camera shaking or compression noise barely move it, while a cut to another scene changes it
# a lot. A pixel-by-pixel difference fires on every movement. Bhattacharyya distance between normalised histograms
# lies in [0, 1] (0: same colours), so one threshold fits every resolution and frame rate.
SCENE_THRESHOLD = 0.35
_HIST_BINS = [8, 8, 8]  # per BGR channel: 512 bins, coarse enough to ignore noise and small lighting changes


def colour_histogram(frame_bgr: np.ndarray) -> np.ndarray:
    import cv2

    hist = cv2.calcHist([frame_bgr], [0, 1, 2], None, _HIST_BINS, [0, 256] * 3)  # [8, 8, 8]
    return cv2.normalize(hist, hist, alpha=1.0, norm_type=cv2.NORM_L1)


def scene_distance(hist_a: np.ndarray, hist_b: np.ndarray) -> float:
    import cv2

    return float(cv2.compareHist(hist_a, hist_b, cv2.HISTCMP_BHATTACHARYYA))


def sample_frames(path: str | Path, every_s: float = 0.5) -> Iterator[tuple[float, np.ndarray]]:
    """Yield (time in seconds, BGR frame [H, W, 3]) every `every_s` seconds; the last item is (duration, None), so
    the caller knows when the last scene ends."""
    import cv2  # here, not at the top: cv2 is optional (pyproject.toml says why) and speech/alt text need none

    path = Path(path)
    if not path.is_file():
        raise VideoReadError(f"Video file {path} does not exist; check the path.")
    video = cv2.VideoCapture(str(path))
    fps = video.get(cv2.CAP_PROP_FPS)
    if not video.isOpened() or not fps or fps <= 0:
        video.release()
        raise VideoReadError(f"OpenCV cannot read {path} as a video; convert it to MP4 (H.264) or AVI, e.g. with "
                             "`ffmpeg -i INPUT out.mp4`.")
    step, index, next_time = 1.0 / fps, 0, 0.0
    try:
        while video.grab():  # grab() only demuxes; frames between samples are never converted to BGR
            time = index * step
            if time + step / 2 >= next_time:
                ok, frame = video.retrieve()
                if ok:
                    yield time, frame
                next_time += every_s
            index += 1
    finally:
        video.release()
    if index == 0:
        raise VideoReadError(f"{path} holds no frame OpenCV can decode; check that the file is complete.")
    yield index * step, None


def scene_starts(samples, threshold: float = SCENE_THRESHOLD) -> Iterator[tuple[float, np.ndarray | None]]:
    """From (time, frame) samples, yield the first frame of each scene: a sample whose histogram is farther than
    `threshold` from the current scene's first frame. Comparing with the scene's first frame, not the previous
    sample, also catches a slow change (a pan, a fade) that no single step would. The final (duration, None) is
    passed through."""
    key = None
    for time, frame in samples:
        if frame is None:
            yield time, None
            return
        hist = colour_histogram(frame)
        if key is None or scene_distance(key, hist) > threshold:
            key = hist
            yield time, frame


def caption_video(path: str | Path, caption_fn: CaptionFn, every_s: float = 0.5,
                  threshold: float = SCENE_THRESHOLD) -> list[Cue]:
    """Caption a video scene by scene: frames sampled every `every_s` s, the first frame of each scene captioned,
    consecutive scenes with the same caption merged into one cue."""
    cues: list[Cue] = []
    for time, frame in scene_starts(sample_frames(path, every_s), threshold):
        if cues:
            cues[-1].end = time
        if frame is None:
            break
        rgb = Image.fromarray(np.ascontiguousarray(frame[:, :, ::-1]))  # [H, W, 3] BGR -> RGB
        text = caption_text(caption_fn(rgb))
        if not cues or cues[-1].text != text:
            cues.append(Cue(time, time, text))
    return cues


def vtt_time(seconds: float) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    return f"{hours:02d}:{minutes:02d}:{millis // 1000:02d}.{millis % 1000:03d}"


def webvtt(cues: list[Cue]) -> str:
    """WebVTT text: the header, then one numbered cue per scene (text escaped: &, <, > are markup in WebVTT)."""
    blocks = ["WEBVTT\n"]
    for number, cue in enumerate(cues, 1):
        text = html.escape(cue.text, quote=False).replace("-->", "--&gt;") or "(no caption)"
        blocks.append(f"{number}\n{vtt_time(cue.start)} --> {vtt_time(cue.end)}\n{text}\n")
    return "\n".join(blocks)


def write_webvtt(cues: list[Cue], path: str | Path) -> Path:
    return atomic_write_text(path, webvtt(cues), what="the WebVTT subtitles")


def video_page(video_src: str, vtt_src: str, title: str, lang: str = "en") -> str:
    """A page whose <video> shows the subtitles (browsers play MP4/H.264 or WebM; the .vtt works with either)."""
    return (f'<!DOCTYPE html>\n<html lang="{html.escape(lang)}">\n<head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title></head>\n<body><main><h1>{html.escape(title)}</h1>\n"
            f'<video controls src="{html.escape(video_src)}" style="max-width:100%">'
            f'<track kind="captions" src="{html.escape(vtt_src)}" srclang="{html.escape(lang)}" '
            f'label="Model captions" default></video>\n</main></body>\n</html>\n')


# ---------------------------------------------------------------------------------------------------------------
# What goes wrong: words a caption names that no reference supports, and who is said to do what in the data
# ---------------------------------------------------------------------------------------------------------------
# Words that name no object and no attribute: articles, pronouns, prepositions, numbers, positions, and the
# framing the captions use ("a picture of", "there is"). What is left are the words a caption can be wrong about
# the picture with: on the shapes, colours and shapes; on photos, nouns, adjectives and verbs.
STOPWORDS = frozenset("""
a an the this that these those some all any each other another them it its he his she her they their there here
of on in at to and or but with without for from by into onto over under above below near next front behind
beside between around through up down out off while as is are was were be being been has have had who which
what one two three four five six single many several both left right top bottom side middle centre center
image picture photo showing shows shown
""".split())


def word_forms(words: Iterable[str]) -> dict[str, str]:
    """Each word of `words` that shares its Porter stem with another of them -> the shortest of that group
    ("squares" -> "square", "jumping" and "jumps" -> "jump"), so that the forms of one word count as one word.
    The mapped-to word is a real word of the list, never a stem such as "squar", so reports stay readable."""
    # Imported here: nltk takes over a second to import, and only this function needs it.
    from nltk.stem.porter import PorterStemmer

    stem = PorterStemmer().stem
    groups: dict[str, list[str]] = {}
    for word in sorted(set(words)):
        groups.setdefault(stem(word), []).append(word)
    forms = {}
    for group in (g for g in groups.values() if len(g) > 1):
        shortest = min(group, key=len)
        forms.update({word: shortest for word in group if word != shortest})
    return forms


def content_words(text: str, stopwords: Iterable[str] = STOPWORDS,
                  canonical: Mapping[str, str] | None = None) -> list[str]:
    """The words of `text` (tokenized as the metrics do) that are not stop words, mapped through `canonical`
    (e.g. `word_forms`), each once, in the order they first appear."""
    stop, canonical = set(stopwords), canonical or {}
    words = (canonical.get(word, word) for word in tokenize(text) if word not in stop)
    return list(dict.fromkeys(words))  # an ordered set


def unsupported(caption: str, references: Sequence[str], stopwords: Iterable[str] = STOPWORDS,
                canonical: Mapping[str, str] | None = None) -> list[str]:
    """The content words of `caption` that appear in NONE of `references`: named, but no annotator said them."""
    stopwords = set(stopwords)
    supported = {word for ref in references for word in content_words(ref, stopwords, canonical)}
    return [word for word in content_words(caption, stopwords, canonical) if word not in supported]


@dataclass
class UnsupportedReport:
    """Per image, the content words its caption names that none of its references names; totals over images."""

    per_image: dict  # image id -> list of unsupported words (empty: every content word is in some reference)
    named: int  # content words named over all captions (each word once per caption)

    @property
    def counts(self) -> Counter:
        """How many captions name each unsupported word."""
        return Counter(word for words in self.per_image.values() for word in words)

    @property
    def caption_share(self) -> float:
        """Share of captions naming at least one unsupported word (like CHAIR-s, Rohrbach et al. 2018)."""
        return sum(bool(words) for words in self.per_image.values()) / max(len(self.per_image), 1)

    @property
    def word_share(self) -> float:
        """Unsupported content words over all content words named (like CHAIR-i)."""
        return sum(map(len, self.per_image.values())) / max(self.named, 1)


def unsupported_words(captions: Mapping, references: Mapping, stopwords: Iterable[str] = STOPWORDS,
                      canonical: Mapping[str, str] | None = None) -> UnsupportedReport:
    """`unsupported` for every image of `captions` (image id -> str or Caption) against its `references`
    (image id -> reference captions): a proxy for hallucination that needs no object annotations. It
    over-counts synonyms ("puppy" against "dog") and misses errors the references do not contradict."""
    stopwords = set(stopwords)
    per_image, named = {}, 0
    for image_id, caption in captions.items():
        text = caption_text(caption)
        if image_id not in references:
            raise KeyError(f"image {image_id} has a caption but no references; pass the references of the same "
                           "split as the captions.")
        per_image[image_id] = unsupported(text, references[image_id], stopwords, canonical)
        named += len(content_words(text, stopwords, canonical))
    return UnsupportedReport(per_image, named)


def cooccurrence(texts: Iterable[str], rows: Mapping[str, Iterable[str]],
                 cols: Mapping[str, Iterable[str]]) -> pandas.DataFrame:
    """How many of `texts` mention a row group and a column group together, e.g. rows {"man": {"man", "men"},
    ...} and columns {"snowboard": {"snowboard", "snowboarder"}, ...}. A text counts once per cell whatever
    it repeats; the last column, "captions", counts the texts mentioning the row at all."""
    rows = {name: set(forms) for name, forms in rows.items()}
    cols = {name: set(forms) for name, forms in cols.items()}
    counts = Counter()  # (row, column) -> texts
    for text in texts:
        words = set(tokenize(caption_text(text)))
        for row in (row for row, forms in rows.items() if words & forms):
            counts[row, "captions"] += 1
            counts.update((row, col) for col, forms in cols.items() if words & forms)
    # Imported here: pandas adds a quarter second to every command that imports this module (caption --speak,
    # demo, alt-text, video), and only this table needs it.
    import pandas as pd

    return pd.DataFrame([[counts[row, col] for col in [*cols, "captions"]] for row in rows],
                        index=list(rows), columns=[*cols, "captions"])
