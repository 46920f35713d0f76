"""Resize a folder of images once (shorter side to `size` px), in parallel, resumable and idempotent: the
preparation step that spares every later epoch from decoding full-size photos; and the dataset's copy resized
once, which every reader then takes the images from (`image_root`).

The encoder sees 224-px crops, but MS-COCO's JPEGs are about 640x480, and decoding them costs most of a
feature-cache build. So preparation writes a copy resized once to `cfg.image_size` px (shorter side) into
<dataset>/images_<size>px/, and a record, resized.json, once every image of the dataset is there. Until then (and
on the quick profile, whose images are rendered at that size) the readers use `cfg.image_dir`.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps
from tqdm.auto import tqdm

from .coco_format import load_captions, missing_images
from .files import (
    DiskFullError,
    atomic_write,
    atomic_write_json,
    check_replaceable,
    disk_full_error,
    folder_lock,
    is_disk_full,
    made_by_lab,
    mark_made_by_lab,
)
from .images import to_rgb

# The photo formats the lab's Dataset and caption command read (anything Pillow opens) and resize_all resizes,
# as far as this Pillow installation supports them: .jpg .jpeg .png .webp .gif .bmp .tif .tiff .ppm .tga ...
_PHOTO_FORMATS = {"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "DIB", "TIFF", "PPM", "TGA", "AVIF", "JPEG2000"}


IMAGE_SUFFIXES = tuple(sorted(ext for ext, fmt in Image.registered_extensions().items() if fmt in _PHOTO_FORMATS))


# The longest side resize_all writes: WebP's limit (16,383 px), below JPEG's 65,500. An image longer than
# 16383/size : 1 (73:1 at 224 px) gets this long side and a shorter side below `size`; the transforms scale that
# up when they crop, so a strip is still read, where an uncapped output could not be written at all.
MAX_SIDE = 16_383


RESIZED_KIND = "resized-images"  # the ownership marker's kind


# ------------------------------------------------------------------------------------------- resize_all
@dataclass
class ResizeReport:
    """What `resize_all` did: images written, skipped as already done, unreadable, and cut short but decodable."""

    resized: int = 0
    skipped_existing: int = 0
    corrupt: list[str] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)  # resized from their readable part (counted in `resized`)
    capped: list[str] = field(default_factory=list, repr=False)  # long side cut to MAX_SIDE (counted in `resized`)


def list_images(folder: str | Path) -> list[Path]:
    """Every image file (any of IMAGE_SUFFIXES, in any letter case) under `folder`, recursively, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Image folder {folder} does not exist; check the path (or prepare the dataset).")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not p.name.startswith("."))


def target_size(width: int, height: int, size: int, max_side: int = MAX_SIDE) -> tuple[int, int]:
    """(width, height) with the shorter side `size`, aspect ratio kept, unless the long side would pass `max_side`."""
    scale = size / min(width, height)
    if max(width, height) * scale > max_side:
        scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize_shorter_side(image: Image.Image, size: int, max_side: int = MAX_SIDE) -> Image.Image:
    """Resize a PIL image so its shorter side is `size`, keeping the aspect ratio (long side at most `max_side`)."""
    new = target_size(*image.size, size, max_side)
    return image if new == image.size else image.resize(new, Image.Resampling.LANCZOS)


def _is_capped(width: int, height: int, size: int) -> bool:
    return max(width, height) * size / min(width, height) > MAX_SIDE


def _open_rgb(path: Path, size: int) -> Image.Image:
    """Fully decode an image as upright RGB, like `labutils.data.load_image`; raises OSError/ValueError if unreadable."""

    with Image.open(path) as im:
        if im.format == "JPEG":
            im.draft("RGB", (size, size))  # let the JPEG decoder downscale by 2/4/8 while staying >= size
        im = ImageOps.exif_transpose(im)  # an animated GIF/WebP gives its first frame, as load_image does
        im.load()  # decode now so a truncated file fails here, not later
        return to_rgb(im)


def _resize_truncated(src: Path, dst: Path, size: int, quality: int) -> bool:
    """Resize a JPEG whose end is missing from the part that decodes (Pillow fills the rest grey); False if none."""
    from PIL import ImageFile

    # A process-wide Pillow switch, so resize_all calls this only after its worker threads have finished.
    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        return _resize_one(src, dst, size, quality) == "resized"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        if is_disk_full(exc):
            raise
        return False
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before


def _is_done(src: Path, dst: Path, size: int) -> bool:
    """True when `dst` exists, is newer than `src` and has the size `src` resizes to (headers only, no decoding)."""
    # Outputs only ever appear complete (written atomically below), so a header check is enough; it also
    # catches a rerun with a different `size` into the same folder. The long side may differ by a pixel from
    # `target_size` (JPEG draft decoding), so only the side that was set exactly is compared.
    if not dst.is_file() or dst.stat().st_mtime < src.stat().st_mtime:
        return False
    try:
        with Image.open(src) as original, Image.open(dst) as im:
            if _is_capped(*original.size, size):
                return max(im.size) == MAX_SIDE
            return min(im.size) == size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return False


def _output_format(dst: Path) -> tuple[str, dict]:
    """The format written under `dst`'s name, and its options.

    The file keeps its name (the captions' `file_name`s point at it) and its format where Pillow writes that
    format faithfully; GIF (a 256-colour palette would band the resized pixels) and the rarer formats get
    lossless PNG bytes, which every reader of the lab opens by content, whatever the suffix.
    """
    fmt = Image.registered_extensions().get(dst.suffix.lower())
    if fmt in ("JPEG", "MPO"):
        return "JPEG", {}
    if fmt in ("PNG", "WEBP", "BMP", "TIFF"):
        return fmt, {}
    return "PNG", {}


def _resize_one(src: Path, dst: Path, size: int, quality: int) -> str:
    """Resize one file into `dst` atomically; returns "resized", "capped" or "skipped"; raises on unreadable input."""
    if _is_done(src, dst, size):
        return "skipped"
    original = _open_rgb(src, size)
    image = resize_shorter_side(original, size)
    fmt, options = _output_format(dst)
    if fmt in ("JPEG", "WEBP"):
        options["quality"] = quality
    # Written beside `dst` and renamed over it, so an interrupted run never leaves a half-written image under the
    # final name for the next run to skip as "done"; a full disk raises DiskFullError.
    with atomic_write(dst, what="the resized images") as out:
        image.save(out, format=fmt, **options)
    return "capped" if min(image.size) < size else "resized"


def resize_all(src_dir: str | Path, dst_dir: str | Path, size: int, workers: int | None = None,
               progress: bool = True, quality: int = 95, lock: bool = True) -> ResizeReport:
    """Resize every image under `src_dir` to shorter side `size` into `dst_dir` (same relative paths), in parallel.

    Keeps the aspect ratio (no squashing, no cropping): the square crop happens later in the transforms, where it
    can be random for training and central for evaluation. Every format of IMAGE_SUFFIXES is read (an animated
    GIF or WebP: its first frame); each output keeps its file name. The long side never passes MAX_SIDE
    (16,383 px), so a 10000x10 strip is resized (listed in `report.capped`), not reported unreadable.
    Idempotent: an output that exists, is newer than its source and already has its target size is skipped,
    and outputs are written atomically. Unreadable files are listed in `report.corrupt` (paths relative to
    `src_dir`) instead of stopping the run; JPEGs that end early but decode in part are resized from that part
    and listed in `report.truncated`. A full disk raises `infra.files.DiskFullError` (one sentence).

    One writer at a time: `lock` takes `dst_dir`'s folder lock (another process waits, saying so), and
    `dst_dir` must be new, empty or made by `resize_all` (its ownership marker), so files the lab did not write
    are never overwritten. `lock=False` is for a caller that holds the lock of `dst_dir` or a folder above it
    and has checked that folder is the lab's.
    """
    src_dir, dst_dir = Path(src_dir), Path(dst_dir)
    if src_dir.resolve() == dst_dir.resolve():
        raise ValueError("resize_all would overwrite the originals; choose a dst_dir different from src_dir.")
    if size <= 0:
        raise ValueError(f"size must be a positive number of pixels, got {size}.")
    files = list_images(src_dir)
    with folder_lock(dst_dir, "resized images") if lock else nullcontext():
        if lock:
            check_replaceable(dst_dir, RESIZED_KIND, "resized images")
            dst_dir.mkdir(parents=True, exist_ok=True)
            if not made_by_lab(dst_dir, RESIZED_KIND):
                mark_made_by_lab(dst_dir, RESIZED_KIND)
        return _resize_files(files, src_dir, dst_dir, size, workers, progress, quality)


def _resize_files(files: list[Path], src_dir: Path, dst_dir: Path, size: int, workers: int | None,
                  progress: bool, quality: int) -> ResizeReport:
    dst_dir.mkdir(parents=True, exist_ok=True)
    # Threads, not processes: Pillow releases the GIL while decoding, resizing and encoding, so threads run in
    # parallel without pickling, and they behave the same in Jupyter on Linux, macOS and Windows.
    workers = workers or min(8, os.cpu_count() or 1)
    report = ResizeReport()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        jobs = {pool.submit(_resize_one, f, dst_dir / f.relative_to(src_dir), size, quality): f for f in files}
        for job in tqdm(as_completed(jobs), total=len(jobs), desc="resizing", disable=not progress):
            name = jobs[job].relative_to(src_dir).as_posix()
            try:
                outcome = job.result()
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
                if is_disk_full(exc):  # not the image's fault: stop, and say so in one sentence
                    for other in jobs:
                        other.cancel()
                    if isinstance(exc, DiskFullError):
                        raise
                    raise disk_full_error(dst_dir, "the resized images") from exc
                report.corrupt.append(name)
                continue
            if outcome == "skipped":
                report.skipped_existing += 1
            else:
                report.resized += 1
                if outcome == "capped":
                    report.capped.append(name)
    # MS-COCO 2014 itself holds a JPEG cut short (train2014/COCO_train2014_000000167126.jpg): keep what decodes,
    # say so, and leave only files with nothing readable as corrupt.
    for name in sorted(report.corrupt):
        src = src_dir / name
        if src.suffix.lower() in (".jpg", ".jpeg") and _resize_truncated(src, dst_dir / name, size, quality):
            report.truncated.append(name)
            report.resized += 1
    report.corrupt = sorted(set(report.corrupt) - set(report.truncated))
    report.capped.sort()
    if report.truncated:
        print(f"{len(report.truncated)} JPEG file(s) end early ({report.truncated[0]}...); resized from the part "
              "that decodes, the rest filled grey.")
    return report


# -- the dataset's copy, resized once -------------------------------------------------------------------------
RESIZE_RECORD = "resized.json"


def resized_image_dir(cfg) -> Path:
    """Where the images resized once to `cfg.image_size` px go: `<dataset_dir>/images_<size>px`."""
    return Path(cfg.dataset_dir) / f"images_{int(cfg.image_size)}px"


def _captions_stamp(cfg) -> dict | None:
    # A re-conversion (another subset, seed or year) rewrites captions.json, which makes an older record stale.
    try:
        st = Path(cfg.captions_file).stat()
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def resize_record(cfg) -> dict | None:
    """The record of the last resize pass, if it was made for the current annotations and `cfg.image_size`."""
    try:
        record = json.loads((resized_image_dir(cfg) / RESIZE_RECORD).read_text())
    except (OSError, ValueError):
        return None
    if (not isinstance(record, dict) or record.get("size") != int(cfg.image_size)
            or record.get("captions") != _captions_stamp(cfg)):
        return None
    return record


def image_root(cfg) -> Path:
    """The folder to read the dataset's images from: the resized copy once complete, else `cfg.image_dir`.

    COCO `file_name`s are relative to either. Drawing boxes or polygons needs `cfg.image_dir`: the instance
    annotations are in the original images' pixels.
    """
    record = resize_record(cfg)
    return resized_image_dir(cfg) if record is not None and record.get("complete") else Path(cfg.image_dir)


def resize_images(cfg, captions=None, workers: int | None = None, progress: bool = True) -> dict:
    """Resize the dataset's images once to `cfg.image_size` px (shorter side) into `resized_image_dir(cfg)`.

    Uses `resize_all` per image folder (parallel, atomic writes, finished images skipped), then
    writes resized.json: complete only when every image of `captions` (default: the dataset's) is there.
    Unreadable images are listed in the record and reported in one sentence, never raised; the readers keep
    using the originals until the record is complete. A complete, current record makes this a no-op. Returns the
    record, with `resized` = images written by this call. One process resizes at a time (the folder's lock:
    another waits, saying so, then finds the work done), and only into a folder the lab made.
    """

    src, dst, size = Path(cfg.image_dir), resized_image_dir(cfg), int(cfg.image_size)
    captions = captions if captions is not None else load_captions(cfg)
    finished = _finished_resize(cfg, captions, dst)
    if finished is not None:
        return finished
    with folder_lock(dst, "the resized images"):
        finished = _finished_resize(cfg, captions, dst)  # another process may have done it while this one waited
        if finished is not None:
            return finished
        _claim_resize_dir(dst)
        # No record while the pass runs: an interrupted pass leaves a partial folder that nobody reads.
        (dst / RESIZE_RECORD).unlink(missing_ok=True)
        folders = sorted({Path(img["file_name"]).parent.as_posix() for img in captions.imgs.values()})
        print(f"Resizing the {len(captions.imgs)} images once to {size} px (shorter side) into {dst}; "
              "finished images are skipped if this is interrupted and run again.")
        resized = skipped = 0
        corrupt: list[str] = []
        for folder in folders:
            if not (src / folder).is_dir():
                continue  # its images count as missing below
            report = resize_all(src / folder, dst / folder, size, workers=workers, progress=progress, lock=False)
            resized += report.resized
            skipped += report.skipped_existing
            corrupt += [(Path(folder) / name).as_posix() for name in report.corrupt]
        absent = missing_images(captions, dst)
        record = {"size": size, "source": str(src), "folders": folders, "images": len(captions.imgs) - len(absent),
                  "missing": len(absent), "corrupt": corrupt, "complete": not absent,
                  "captions": _captions_stamp(cfg), "resized": resized, "skipped": skipped}
        # Last, with every image renamed into place: a record that says complete never precedes its files.
        atomic_write_json(dst / RESIZE_RECORD, record, what="the resize record", separators=(",", ":"))
    if absent:
        print(resize_problem(record))
    return record


def _finished_resize(cfg, captions, dst: Path) -> dict | None:
    """The current, complete record (as `resize_images` returns it) when every image is there, else None."""
    record = resize_record(cfg)
    if record is not None and record.get("complete") and not missing_images(captions, dst):
        return {**record, "resized": 0}
    return None


def _claim_resize_dir(dst: Path) -> None:
    """Stop with one sentence unless `dst` is new, empty or the lab's resized copy; mark it as the lab's."""

    if not made_by_lab(dst, RESIZED_KIND) and _has_resize_record(dst):
        mark_made_by_lab(dst, RESIZED_KIND)  # a copy an older labutils made: its resized.json is the lab's proof
    check_replaceable(dst, RESIZED_KIND, "the resized images")
    dst.mkdir(parents=True, exist_ok=True)
    if not made_by_lab(dst, RESIZED_KIND):
        mark_made_by_lab(dst, RESIZED_KIND)


def _has_resize_record(dst: Path) -> bool:
    try:
        record = json.loads((dst / RESIZE_RECORD).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and {"size", "source", "complete"} <= set(record)


def resize_problem(record: dict) -> str:
    """One sentence on why a resize pass is incomplete (unreadable or missing originals) and what to do."""
    corrupt = record.get("corrupt") or []
    if corrupt:
        more = f" and {len(corrupt) - 1} more" if len(corrupt) > 1 else ""
        return (f"{len(corrupt)} image file(s) could not be read, so they were not resized ({corrupt[0]}{more} "
                f"under {record['source']}); delete them and run the same preparation again to fetch them afresh, "
                "and until then the lab reads the original images.")
    return (f"{record['missing']} images are not under {record['source']} yet, so the resized copy is incomplete; "
            "run `labutils.infra.mscoco.prepare_mscoco(cfg)` to fetch them, and until then the lab reads the originals.")
