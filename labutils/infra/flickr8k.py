"""Flickr8k for the flickr8k profile: 8,000 real photos with five captions each, converted once into the lab's
COCO-format layout (`labutils.infra.coco_format`).

Two ways in, one result:

* downloaded: the two archives of the widely used public mirror (`Flickr8k_Dataset.zip`, about 1 GB, and
  `Flickr8k_text.zip`) go through `labutils.infra.download` (resume, retry, checksum, one sentence offline) into
  `<dataset_dir>/downloads/` and are unpacked there;
* local: a folder laid out like the unpacked archives (`python -m labutils prepare --profile flickr8k --from DIR`):

      Flicker8k_Dataset/            the JPEGs (the official archive misspells the folder name)
      Flickr8k_text/
        Flickr8k.token.txt          "<image>.jpg#<n><TAB><caption>", five captions per image
        Flickr_8k.trainImages.txt   one image name per line: the official train split
        Flickr_8k.devImages.txt     the official dev split (the lab's "val")
        Flickr_8k.testImages.txt    the official test split

Either way the conversion writes annotations/captions.json, splits.json and images/ under `cfg.dataset_dir`, then
prepared.json last: a conversion cut short leaves no record and is redone by the next call.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

from PIL import Image

from . import download as dl
from .coco_format import SPLITS, DatasetUnavailableError, SplitError, SplitLeakageError, validate_splits
from .download import NetworkUnavailableError, _marker_path, extract_zip
from .files import atomic_write_json, check_replaceable, folder_lock, made_by_lab, mark_made_by_lab

# Jason Brownlee's GitHub release, the copy most tutorials download; read at call time, so a mirror can be set once.
FLICKR8K_BASE_URL = "https://github.com/jbrownlee/Datasets/releases/download/Flickr8k"
DATASET_ZIP = "Flickr8k_Dataset.zip"
TEXT_ZIP = "Flickr8k_text.zip"

# The MD5s that mlverse/torchvision checks for these two URLs (R/dataset-flickr.R, `resources`, commit ce3b0a1e);
# a CMake fetch script found in a public repository pins the same two values (EXPECTED_MD5). No byte sizes are
# published beside them that could be cited, so the size is not checked: the MD5 covers it. A mirror's files (or a
# test server's) are not held to these; they are checked by structure instead: a zip that opens and passes its
# CRCs, holding the four text files by name and a Flicker8k_Dataset/ folder with every split's photos.
KNOWN_FILES: dict[str, dict] = {
    f"{FLICKR8K_BASE_URL}/{DATASET_ZIP}": {"md5": "f18a1e2920de5bd84dae7cf08ec78978"},
    f"{FLICKR8K_BASE_URL}/{TEXT_ZIP}": {"md5": "bf6c1abcb8e4a833b7f922104de18627"},
}

IMAGE_FOLDERS = ("Flicker8k_Dataset", "Flickr8k_Dataset")  # the archive's spelling first; the corrected one too
TEXT_FOLDER = "Flickr8k_text"
TOKEN_FILE = "Flickr8k.token.txt"
SPLIT_FILES = {"train": "Flickr_8k.trainImages.txt", "val": "Flickr_8k.devImages.txt",
               "test": "Flickr_8k.testImages.txt"}
DATASET_KIND = "flickr8k-dataset"  # the ownership marker's kind
RECORD_FILE = "prepared.json"
ID_RULE = "image ids 1..N follow the sorted file names of the images listed in the three split files"
_TOKEN_LINE = re.compile(r"^(?P<name>[^\t#]+)#(?P<n>\d+)\t(?P<caption>.*)$")
_LAYOUT = (f"a folder laid out like the Flickr8k archives ({IMAGE_FOLDERS[0]}/ with the photos and "
           f"{TEXT_FOLDER}/ with {TOKEN_FILE} and {', '.join(SPLIT_FILES.values())})")


class CaptionFileError(ValueError):
    """A line of the token file does not read `<image>#<n><TAB><caption>`."""


# --------------------------------------------------------------------------------------------------------------
# Reading the archive layout


def find_layout(folder: str | Path) -> tuple[Path, Path]:
    """(photo folder, text folder) of a folder laid out like the unpacked archives; one sentence if a piece lacks.

    The text files may sit in `Flickr8k_text/` or one level deeper (`Flickr8k_text/Flickr8k_text/`, which is
    what unpacking the official text zip into a folder of that name gives when the zip holds the folder itself).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetUnavailableError(f"There is no folder {folder}; give {_LAYOUT}.")
    images = next((folder / name for name in IMAGE_FOLDERS if (folder / name).is_dir()), None)
    if images is None:
        raise DatasetUnavailableError(f"{folder} has no {IMAGE_FOLDERS[0]}/ folder of photos; give {_LAYOUT}.")
    candidates = (folder / TEXT_FOLDER, folder / TEXT_FOLDER / TEXT_FOLDER, folder)
    text = next((c for c in candidates if (c / TOKEN_FILE).is_file()), None)
    if text is None:
        raise DatasetUnavailableError(f"{folder} has no {TEXT_FOLDER}/{TOKEN_FILE}; give {_LAYOUT}.")
    for name in SPLIT_FILES.values():
        if not (text / name).is_file():
            raise DatasetUnavailableError(f"{text} has no {name} (an official split file); give {_LAYOUT}.")
    return images, text


def read_split_files(text_dir: str | Path) -> dict[str, list[str]]:
    """{"train"|"val"|"test": image names} from the three official split files (dev becomes the lab's val)."""
    splits = {}
    for split, name in SPLIT_FILES.items():
        lines = (Path(text_dir) / name).read_text(encoding="utf-8").splitlines()
        splits[split] = [line.strip() for line in lines if line.strip()]
        if not splits[split]:
            raise SplitError(f"{Path(text_dir) / name} lists no image; each official split file names its photos, "
                             "one per line.")
    return splits


def read_token_file(path: str | Path, keep: Iterable[str]) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Captions of the images in `keep`, as written, in the order of their `#n`; and counts of what was left out.

    Lines naming an image outside `keep` are counted, not used (the official file has a few stray names with no
    photo), and so are captions that are empty; blank lines are skipped. Any other line that does not read
    `<image>#<n><TAB><caption>` stops the conversion with `CaptionFileError`, naming the line.
    """
    keep = set(keep)
    found: dict[str, list[tuple[int, str]]] = {}
    skipped = {"other_images": 0, "empty_captions": 0}
    with Path(path).open(encoding="utf-8", newline="") as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            match = _TOKEN_LINE.match(line)
            if match is None:
                raise CaptionFileError(f"Line {number} of {path} does not read '<image>.jpg#<n><TAB><caption>' "
                                       f"({line[:60]!r}); fix or delete that line and run this again.")
            name, caption = match["name"].strip(), match["caption"]
            if name not in keep:
                skipped["other_images"] += 1
            elif not caption.strip():
                skipped["empty_captions"] += 1
            else:
                found.setdefault(name, []).append((int(match["n"]), caption))
    return {name: [c for _, c in sorted(pairs, key=lambda p: p[0])] for name, pairs in found.items()}, skipped


def image_ids(splits: Mapping[str, list[str]]) -> dict[str, int]:
    """The stable id mapping: the sorted file names of every split image, numbered 1..N."""
    return {name: i for i, name in enumerate(sorted(set().union(*splits.values())), start=1)}


def _split_ids(splits: Mapping[str, list[str]], ids: Mapping[str, int]) -> dict[str, list[int]]:
    """Splits by id, checked by `validate_splits`; its sentence names the photo instead of the bare id."""
    names = {i: name for name, i in ids.items()}
    try:
        return validate_splits({split: [ids[name] for name in splits[split]] for split in SPLITS})
    except (SplitError, SplitLeakageError) as err:
        text = re.sub(r"Image (\d+)", lambda m: f"Photo {names[int(m[1])]}", str(err), count=1)
        raise type(err)(text.replace("'val'", "'val' (the dev list)")) from None


# --------------------------------------------------------------------------------------------------------------
# Converting into the lab's layout


def _place_image(src: Path, dst: Path) -> bool:
    """Hard-link `src` as `dst` (a copy where linking is impossible); True when linked. `src` is never written."""
    if dst.is_file() and dst.samefile(src):
        return True  # linked by an earlier, interrupted run (renaming a link over itself would do nothing)
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
        linked = True
    except OSError:  # another disk, or a filesystem without hard links
        shutil.copyfile(src, tmp)
        linked = False
    os.replace(tmp, dst)  # a rerun replaces a file left by an interrupted one
    return linked


def _place_images(names: list[str], photos: Path, image_dir: Path) -> int:
    """Put every photo of `names` under `image_dir`; one sentence for those missing; returns how many were linked."""
    absent = [name for name in names if not (photos / name).is_file()]
    if absent:
        raise DatasetUnavailableError(
            f"{len(absent)} photo(s) listed in the split files have no file in {photos} (e.g. {absent[0]}); "
            "complete that folder (or download the archives again) and run this again.")
    image_dir.mkdir(parents=True, exist_ok=True)
    return sum(_place_image(photos / name, image_dir / name) for name in names)


def _image_entry(image_id: int, name: str, image_dir: Path) -> dict:
    with Image.open(image_dir / name) as im:  # reads the header only
        width, height = im.size
    return {"id": image_id, "file_name": name, "width": width, "height": height}


def build_captions_json(ids: Mapping[str, int], captions: Mapping[str, list[str]], image_dir: Path) -> dict:
    """The COCO captions dict: images sorted by id, annotations numbered 1..M by (image id, caption number)."""
    missing = [name for name in ids if name not in captions]
    if missing:
        raise DatasetUnavailableError(f"{len(missing)} photo(s) in the split files have no caption in {TOKEN_FILE} "
                                      f"(e.g. {missing[0]}); use the complete token file and run this again.")
    by_id = sorted(ids.items(), key=lambda item: item[1])
    images = [_image_entry(i, name, image_dir) for name, i in by_id]
    pairs = [(i, caption) for name, i in by_id for caption in captions[name]]
    annotations = [{"id": k, "image_id": i, "caption": c} for k, (i, c) in enumerate(pairs, start=1)]
    info = {"description": "Flickr8k (Hodosh, Young & Hockenmaier, JAIR 2013), converted by labutils",
            "id_rule": ID_RULE}
    return {"info": info, "licenses": [], "images": images, "annotations": annotations}


def convert_flickr8k(cfg, folder: str | Path, source: str) -> dict:
    """Convert `folder` (laid out like the archives) into the lab's layout; returns the record written last.

    Reads `cfg.dataset_dir`, `cfg.captions_file`, `cfg.split_file` and `cfg.image_dir`. `source` is what the
    record names as the origin (a folder or the archives' base URL).
    """
    root = Path(cfg.dataset_dir)
    photos, text = find_layout(folder)
    names = read_split_files(text)
    ids = image_ids(names)
    splits = _split_ids(names, ids)
    captions, skipped = read_token_file(text / TOKEN_FILE, ids)
    (root / RECORD_FILE).unlink(missing_ok=True)  # no record while files change: an interruption is redone
    linked = _place_images(sorted(ids), photos, Path(cfg.image_dir))
    coco = build_captions_json(ids, captions, Path(cfg.image_dir))
    atomic_write_json(cfg.captions_file, coco, what="the Flickr8k captions", separators=(",", ":"))
    atomic_write_json(cfg.split_file, splits, what="the Flickr8k split")
    record = {"dataset": "flickr8k", "source": source, "complete": True, "images": len(ids),
              "captions": len(coco["annotations"]), "sizes": {k: len(v) for k, v in splits.items()},
              "split_files": {k: SPLIT_FILES[k] for k in SPLITS}, "id_rule": ID_RULE,
              "hard_linked": linked, "skipped_lines": skipped}
    atomic_write_json(root / RECORD_FILE, record, what="the Flickr8k record", indent=1)  # last: complete now
    return record


# --------------------------------------------------------------------------------------------------------------
# Downloading and the one call


def prepared_record(cfg, source: str | None = None) -> dict | None:
    """The record of a complete conversion under `cfg.dataset_dir` (from `source`, when given), else None."""
    try:
        record = json.loads((Path(cfg.dataset_dir) / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("dataset") != "flickr8k" or not record.get("complete"):
        return None
    if source is not None and record.get("source") != source:
        return None
    files = (Path(cfg.captions_file), Path(cfg.split_file))
    return record if all(p.is_file() for p in files) and Path(cfg.image_dir).is_dir() else None


def _archive_url(base_url: str, name: str) -> str:
    return f"{base_url.rstrip('/')}/{name}"


def download_flickr8k(root: Path, base_url: str, progress: bool = True) -> Path:
    """Fetch and unpack the two archives into `root/downloads` (skipping what is unpacked); returns that folder."""
    downloads = root / "downloads"
    # The text zip must hold the four text files by name (its structure check); the photo zip is unpacked whole.
    targets = {DATASET_ZIP: (downloads, None),
               TEXT_ZIP: (downloads / TEXT_FOLDER, [TOKEN_FILE, *SPLIT_FILES.values()])}
    for name, (dest, members) in targets.items():
        archive = downloads / name
        if _marker_path(archive, dest).is_file():
            continue  # unpacked completely by an earlier call
        url = _archive_url(base_url, name)
        known = KNOWN_FILES.get(url, {})
        try:
            dl.download(url, archive, md5=known.get("md5"), size=known.get("size"), expect="zip", progress=progress)
        except NetworkUnavailableError as err:
            raise NetworkUnavailableError(
                f"Flickr8k is not prepared under {root} and {dl._host(url)} cannot be reached ({_cause(err)}); "
                "connect to the internet, give a local copy (`python -m labutils prepare --profile flickr8k --from "
                "DIR`), or use the offline quick profile (LAB_PROFILE=quick).") from None
        extract_zip(archive, dest, members=members, progress=progress)
        dl.discard(archive)  # the unpacked files are what count; the zip would double the disk use
    return downloads


def _cause(err: Exception) -> str:
    match = re.search(r"\(([^()]*)\)", str(err))
    return match[1] if match else "no connection"


def prepare_flickr8k(cfg_like, source: str | Path | None = None, base_url: str | None = None,
                     progress: bool = True) -> Path:
    """Put Flickr8k into the lab's COCO-format layout under `cfg_like.dataset_dir`, once; returns that folder.

    Reads exactly four attributes of `cfg_like` (a `LabConfig` or anything with them): `dataset_dir` (the
    dataset's folder: downloads/, prepared.json and the ownership marker go there), `captions_file` (COCO
    captions JSON to write), `split_file` (splits.json to write) and `image_dir` (where the photos go; the
    `file_name`s are relative to it).
    `source`: a folder laid out like the unpacked archives, whose photos are hard-linked (copied across disks)
    and which is never written; None downloads the two archives from `base_url` (default `FLICKR8K_BASE_URL`,
    read at call time). Splits: the official train / dev (as "val") / test lists. Image ids: see `ID_RULE`.
    A complete record makes this return at once (from the same `source`, when one is given); anything less is
    converted again. One
    process converts at a time (the folder's lock), and only into a folder that is new, empty or the lab's own.
    The resized copy is a separate step: `labutils.infra.resize.resize_images(cfg)`.
    """
    root = Path(cfg_like.dataset_dir)
    base_url = (base_url or FLICKR8K_BASE_URL).rstrip("/")
    label = str(Path(source).resolve()) if source is not None else base_url
    # Without a source any complete conversion will do (say, one an instructor made from a local copy).
    wanted = None if source is None else label
    if prepared_record(cfg_like, wanted) is not None:
        return root
    with folder_lock(root, "the Flickr8k dataset"):
        if prepared_record(cfg_like, wanted) is not None:  # another process finished it while this one waited
            return root
        check_replaceable(root, DATASET_KIND, "the Flickr8k dataset")
        root.mkdir(parents=True, exist_ok=True)
        if not made_by_lab(root, DATASET_KIND):
            mark_made_by_lab(root, DATASET_KIND)
        folder = Path(source) if source is not None else download_flickr8k(root, base_url, progress)
        record = convert_flickr8k(cfg_like, folder, label)
    if progress:
        print(f"Flickr8k is ready under {root}: {record['images']:,} photos, {record['captions']:,} captions "
              f"(train {record['sizes']['train']:,} / val {record['sizes']['val']:,} / "
              f"test {record['sizes']['test']:,}).")
    return root
