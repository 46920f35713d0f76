"""Real MS-COCO for the coco profile: the official archives (2014, or 2017 as an option) and Karpathy's split,
downloaded with `labutils.infra.download`, converted once into the lab's COCO-format layout
(`labutils.infra.coco_format`), with a per-image subset mode for a small classroom copy.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from . import download as dl
from .coco_format import (
    SPLITS,
    DatasetUnavailableError,
    SplitError,
    SplitLeakageError,
    load_captions,
    missing_images,
    validate_splits,
)
from .download import KNOWN_FILES, _marker_path, extract_zip, fetch_images_by_url, human_bytes
from .files import atomic_write_json
from .resize import image_root, resize_images

# Official MS-COCO archives (https://cocodataset.org/#download) and Karpathy & Fei-Fei's split
# (dataset_coco.json inside caption_datasets.zip), the split nearly every captioning paper reports on.
COCO_BASE_URL = "http://images.cocodataset.org"


TRAIN2014_URL = "http://images.cocodataset.org/zips/train2014.zip"


VAL2014_URL = "http://images.cocodataset.org/zips/val2014.zip"


ANNOTATIONS2014_URL = "http://images.cocodataset.org/annotations/annotations_trainval2014.zip"


TRAIN2017_URL = "http://images.cocodataset.org/zips/train2017.zip"


VAL2017_URL = "http://images.cocodataset.org/zips/val2017.zip"


ANNOTATIONS2017_URL = "http://images.cocodataset.org/annotations/annotations_trainval2017.zip"


KARPATHY_SPLIT_URL = "https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip"


# Where dataset_coco.json has lived, tried in order by `prepare_mscoco` (the first that delivers wins): the
# original Stanford zip (reported 404 since 2023, kept in case it returns) and a community copy of the bare JSON on
# GitHub, verified by its size and SHA-256 (labutils.infra.download.KNOWN_FILES). None answering: a rebuilt split.
KARPATHY_SPLIT_SOURCES = (
    KARPATHY_SPLIT_URL,
    "http://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip",
    "https://github.com/Delphboy/karpathy-splits/raw/main/dataset_coco.json",
)


# The archives of each release relative to a base URL, so tests (and mirrors) can point the lab at another server.
# 2017 holds the same 123,287 images under the same ids as 2014 train+val, re-cut (val2017 is 5,000 of val2014)
# and renamed (train2017/000000XXXXXX.jpg); Karpathy's split is by image id, so it applies to both.
COCO_YEARS = (2014, 2017)


COCO_ARCHIVES = {
    2014: {"annotations": "annotations/annotations_trainval2014.zip",
           "train2014": "zips/train2014.zip",
           "val2014": "zips/val2014.zip"},
    2017: {"annotations": "annotations/annotations_trainval2017.zip",
           "train2017": "zips/train2017.zip",
           "val2017": "zips/val2017.zip"},
}


COCO2014_ARCHIVES = COCO_ARCHIVES[2014]


COCO2017_ARCHIVES = COCO_ARCHIVES[2017]


COCO_IMAGES = {2014: {"train2014": 82_783, "val2014": 40_504}, 2017: {"train2017": 118_287, "val2017": 5_000}}


COCO2014_IMAGES = COCO_IMAGES[2014]


KARPATHY_SIZES = {"train": 113_287, "val": 5_000, "test": 5_000}


_OFFICIAL_URL = "http://images.cocodataset.org"  # KNOWN_FILES is keyed by the official URLs, whatever the mirror


def build_karpathy_like_split(train_ids: Iterable[int], val_ids: Iterable[int], n_val: int = 5000,
                              n_test: int = 5000, seed: int = 0) -> dict[str, list[int]]:
    """Karpathy-style split rebuilt from the official ids: `n_val` + `n_test` val2014 images, the rest train.

    With MS-COCO 2014's 82,783 train + 40,504 val images this gives the standard 113,287 / 5,000 / 5,000 sizes
    (not Karpathy's exact image choice, which only dataset_coco.json records). Same ids and seed, same split.
    """
    val_ids = sorted({int(i) for i in val_ids})
    train_ids = sorted({int(i) for i in train_ids})
    if len(val_ids) < n_val + n_test:
        raise SplitError(f"Only {len(val_ids)} val2014 images for {n_val} val + {n_test} test; "
                         "lower n_val/n_test.")
    overlap = set(train_ids) & set(val_ids)
    if overlap:
        raise SplitLeakageError(f"Image {min(overlap)} is in both the train and the val image lists; "
                                "the official train2014 and val2014 ids never overlap, so check the inputs.")
    order = np.random.default_rng(seed).permutation(len(val_ids))
    shuffled = [val_ids[i] for i in order]
    return {"train": sorted(train_ids + shuffled[n_val + n_test:]),
            "val": sorted(shuffled[:n_val]),
            "test": sorted(shuffled[n_val:n_val + n_test])}


def build_coco2017_split(train_ids: Iterable[int], val_ids: Iterable[int], n_val: int = 5000,
                         n_test: int | None = None, seed: int = 0) -> dict[str, list[int]]:
    """The standard-sized split of MS-COCO 2017 without Karpathy's file: test = val2017, val drawn from train2017.

    `n_test` val2017 images (None: all of them; the real val2017 has exactly 5,000) form the test split, `n_val`
    train2017 images drawn with `seed` form val, and everything else is train: 113,287 / 5,000 / 5,000 on the
    real 118,287 + 5,000 images. Same ids and seed, same split; not Karpathy's choice of images.
    """
    val_ids = sorted({int(i) for i in val_ids})
    train_ids = sorted({int(i) for i in train_ids})
    overlap = set(train_ids) & set(val_ids)
    if overlap:
        raise SplitLeakageError(f"Image {min(overlap)} is in both the train2017 and the val2017 image lists; "
                                "the official ids never overlap, so check the inputs.")
    n_test = len(val_ids) if n_test is None else n_test
    if not 0 < n_test <= len(val_ids):
        raise SplitError(f"Only {len(val_ids)} val2017 images for a {n_test}-image test split; lower n_test.")
    if not 0 < n_val < len(train_ids):
        raise SplitError(f"Only {len(train_ids)} train2017 images for a {n_val}-image val split and a train "
                         "split; lower n_val.")
    rng = np.random.default_rng(seed)
    train_order = [train_ids[i] for i in rng.permutation(len(train_ids))]
    val_order = [val_ids[i] for i in rng.permutation(len(val_ids))]
    return {"train": sorted(train_order[n_val:] + val_order[n_test:]),
            "val": sorted(train_order[:n_val]),
            "test": sorted(val_order[:n_test])}


def karpathy_split(path: str | Path) -> dict[str, list[int]]:
    """Read Karpathy's dataset_coco.json: {train: train + restval, val, test} as sorted COCO image ids."""
    path = Path(path)
    if not path.is_file():
        raise DatasetUnavailableError(f"No Karpathy split at {path}; it comes in {KARPATHY_SPLIT_URL} "
                                      "(or build one with `build_karpathy_like_split`).")
    images = json.loads(path.read_text())["images"]
    named = {"train": "train", "restval": "train", "val": "val", "test": "test"}
    raw: dict[str, list[int]] = {name: [] for name in SPLITS}
    for image in images:
        if image["split"] not in named:
            raise SplitError(f"{path} has an image in unknown split {image['split']!r}; is it dataset_coco.json?")
        raw[named[image["split"]]].append(int(image["cocoid"]))
    return validate_splits(raw)


def subset_split(splits: Mapping[str, list[int]], n_images: int, seed: int = 0) -> dict[str, list[int]]:
    """A smaller split for short workshops: `n_images` in all, a tenth each for val and test, drawn per seed."""
    n_eval = max(1, n_images // 10)
    sizes = {"val": n_eval, "test": n_eval, "train": n_images - 2 * n_eval}
    if sizes["train"] < 1 or any(sizes[name] > len(splits[name]) for name in SPLITS):
        raise SplitError(f"Cannot draw a {n_images}-image subset ({sizes}) from splits of sizes "
                         f"{ {k: len(v) for k, v in splits.items()} }; choose a size between 3 and the split sizes.")
    rng = np.random.default_rng(seed)
    return {name: sorted(rng.choice(sorted(splits[name]), size=sizes[name], replace=False).tolist())
            for name in SPLITS}


def image_folders(year: int = 2014) -> tuple[str, str]:
    """The official image folders of a release: ("train2014", "val2014") or ("train2017", "val2017")."""
    return f"train{year}", f"val{year}"


def coco_year(cfg) -> int:
    """`cfg.coco_year`, checked: a known release whose files go to the matching `coco<year>` dataset folder."""
    year = int(getattr(cfg, "coco_year", 2014))
    if year not in COCO_ARCHIVES:
        raise ValueError(f"coco_year={year} is not an MS-COCO release the lab knows; use 2014 or 2017.")
    name = str(cfg.dataset_name)
    if re.fullmatch(r"coco\d{4}", name) and name != f"coco{year}":
        raise ValueError(f"cfg.dataset_name is {name!r} but cfg.coco_year is {year}; build the config with "
                         f"get_config('coco', coco_year={year}), which names the dataset 'coco{year}'.")
    return year


def network_available(url: str = COCO_BASE_URL, timeout: float = 3.0) -> bool:
    """True when `url`'s server answers a HEAD request within `timeout` seconds (any HTTP status counts)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _raw_files(root: Path, year: int = 2014) -> dict[str, Path]:
    ann = root / "annotations"
    return {f"{kind}_{folder}": ann / f"{kind}_{folder}.json"
            for kind in ("captions", "instances") for folder in image_folders(year)}


def find_karpathy_json(root: str | Path) -> Path | None:
    """Karpathy's dataset_coco.json under a dataset folder (top level or caption_datasets/), if present.

    A file that cannot be that JSON (an HTML page an older lab saved under its name) is passed over with a
    sentence, so the split is fetched again instead of every run stopping at a bare JSONDecodeError.
    """
    for candidate in (Path(root) / "dataset_coco.json", Path(root) / "caption_datasets" / "dataset_coco.json"):
        if candidate.is_file():
            if _json_object_ends(candidate):
                return candidate
            print(f"{candidate} is not Karpathy's JSON file (it does not start with '{{' and end with '}}'); "
                  "it is ignored, and replaced if the split can be fetched again.")
    return None


def _json_object_ends(path: Path, probe: int = 4096) -> bool:
    """Cheap look at both ends of a (400 MB) JSON file: '{' first and '}' last, as a complete object has."""
    with path.open("rb") as f:
        head = f.read(probe).lstrip(b"\xef\xbb\xbf \t\r\n")
        f.seek(max(0, path.stat().st_size - probe))
        tail = f.read().rstrip()
    return head.startswith(b"{") and tail.endswith(b"}")


def _prepared(cfg) -> dict | None:
    """prepared.json of the converted dataset (None until converted)."""
    root = Path(cfg.dataset_dir)
    if not ((root / "prepared.json").is_file() and Path(cfg.captions_file).is_file()
            and Path(cfg.split_file).is_file()):
        return None
    try:
        return json.loads((root / "prepared.json").read_text())
    except (OSError, ValueError):
        return None


def _is_current(prepared: dict | None, subset: int | None, seed: int, year: int) -> bool:
    # prepared.json files from before the 2017 option carry no year: they are 2014 conversions.
    return (prepared is not None and prepared.get("subset") == subset and prepared.get("seed") == seed
            and prepared.get("year", 2014) == year)


def prepared_subset(cfg) -> int | None:
    """The `subset` the dataset under `cfg.dataset_dir` was prepared with (None: all images, or not prepared)."""
    prepared = _prepared(cfg)
    if prepared is None or prepared.get("seed") != cfg.seed or prepared.get("year", 2014) != coco_year(cfg):
        return None
    return prepared.get("subset")


def mscoco_status(cfg) -> dict[str, bool]:
    """Which pieces of MS-COCO (`cfg.coco_year`) are already under `cfg.dataset_dir` (raw, converted, resized)."""
    root = Path(cfg.dataset_dir)
    year = coco_year(cfg)
    train, val = image_folders(year)
    raw = _raw_files(root, year)
    return {
        "caption annotations": raw[f"captions_{train}"].is_file() and raw[f"captions_{val}"].is_file(),
        "instance annotations": raw[f"instances_{train}"].is_file() and raw[f"instances_{val}"].is_file(),
        f"{train} images": (Path(cfg.image_dir) / train).is_dir(),
        f"{val} images": (Path(cfg.image_dir) / val).is_dir(),
        "Karpathy split": find_karpathy_json(root) is not None,
        "converted": _prepared(cfg) is not None,
        "resized images": image_root(cfg) != Path(cfg.image_dir),
    }


AVERAGE_IMAGE_BYTES = 161_000  # mean MS-COCO 2014 JPEG: (13.5 GB + 6.6 GB) / 123,287 images (2017: 163 kB)


# Not a measurement: the rate that turns a size into the "about N minutes" said before a download starts.
ASSUMED_DOWNLOAD_BYTES_PER_S = 50e6


def announce_download(cfg, subset: int | None = None, base_url: str | None = None) -> int:
    """Say, before anything is fetched, how much MS-COCO will download and roughly how long; return the bytes."""
    total = sum(size for _, _, size in mscoco_plan(cfg, subset, base_url))
    if total:
        minutes = max(1, round(total / ASSUMED_DOWNLOAD_BYTES_PER_S / 60))
        what = f"a {subset:,}-image subset" if subset else "the whole dataset"
        print(f"Preparing MS-COCO {coco_year(cfg)} ({what}) under {cfg.dataset_dir}: about {human_bytes(total)} to "
              f"download, about {minutes} min at {ASSUMED_DOWNLOAD_BYTES_PER_S / 1e6:.0f} MB/s, then unpacked and "
              f"resized once. Interrupt now to use the flickr8k profile (1 GB) instead.")
    return total


def mscoco_plan(cfg, subset: int | None = None, base_url: str | None = None) -> list[tuple[str, str, int]]:
    """What `prepare_mscoco` still has to fetch: one (short name, sentence, bytes) per missing piece, no network.

    Pieces: the annotation zip, Karpathy's split (optional: a rebuilt split replaces it), the image zips or the
    subset's images, and free disk space when it falls short of the estimated peak use.
    """

    root, image_dir = Path(cfg.dataset_dir), Path(cfg.image_dir)
    year = coco_year(cfg)
    archives = COCO_ARCHIVES[year]
    train, val = image_folders(year)
    base_url = (base_url or COCO_BASE_URL).rstrip("/")
    size_of = {key: KNOWN_FILES.get(f"{_OFFICIAL_URL}/{path}", {}).get("size", 0) for key, path in archives.items()}
    status = mscoco_status(cfg)
    current = _is_current(_prepared(cfg), subset, cfg.seed, year)
    pieces: list[tuple[str, str, int]] = []
    zips: list[int] = []

    def archive(short: str, what: str, key: str, where: Path) -> None:
        zips.append(size_of[key])
        pieces.append((short, f"{what} are not under {where}; they come in {base_url}/{archives[key]} "
                              f"({human_bytes(size_of[key])}).", size_of[key]))

    def one_by_one(short: str, what: str, n: int) -> None:
        pieces.append((short, f"{what}; they are fetched one by one from {base_url}/{train}/ and "
                              f"{base_url}/{val}/ (about {human_bytes(n * AVERAGE_IMAGE_BYTES)}).",
                       n * AVERAGE_IMAGE_BYTES))

    if not current and not status["caption annotations"]:
        archive(f"{year} caption annotations", f"The {year} caption annotations", "annotations", root / "annotations")
    if not current and not status["Karpathy split"]:
        pieces.append(("Karpathy split (optional)", f"Karpathy's split file dataset_coco.json is not under {root} "
                       f"(optional: without it a Karpathy-like split is rebuilt from the official ids).", 0))
    if current:
        captions = load_captions(root)
        absent = missing_images(captions, image_dir)
        if absent and subset is None:
            folders = sorted({captions.imgs[i]["file_name"].split("/")[0] for i in absent})
            zips += [size_of[f] for f in folders]
            pieces.append((f"{len(absent)} images in {', '.join(folders)}",
                           f"{len(absent)} of the {len(captions.imgs)} images are not under {image_dir}; they come "
                           f"in {' and '.join(f'{base_url}/{archives[f]}' for f in folders)} "
                           f"({human_bytes(sum(size_of[f] for f in folders))}).", sum(size_of[f] for f in folders)))
        elif absent:
            one_by_one(f"{len(absent)} of the {subset} subset images",
                       f"{len(absent)} of the {subset} subset images are not under {image_dir}", len(absent))
    elif subset is None:
        for folder in (train, val):
            if not status[f"{folder} images"]:
                archive(f"{folder} images", f"The {folder} images", folder, image_dir / folder)
    else:
        one_by_one(f"{subset} subset images", f"The {subset} subset images are not fetched yet (they are chosen "
                   "when the annotations are converted)", subset)
    # Each zip is deleted once unpacked, so the peak is everything unpacked plus the largest zip at once.
    peak = sum(p[2] for p in pieces) + max(zips, default=0)
    where = next(p for p in (root, *root.parents) if p.exists())
    free = shutil.disk_usage(where).free
    if peak > free:
        pieces.append(("disk space", f"The disk under {where} has {human_bytes(free)} free but preparing needs "
                                     f"about {human_bytes(peak)} at its peak; free up {human_bytes(peak - free)} or "
                                     "set LAB_DATA_DIR to a folder on a bigger disk.", 0))
    return pieces


def _unavailable(missing: list, root: Path, url: str, year: int = 2014) -> DatasetUnavailableError:
    # `missing`: short names, or mscoco_plan() pieces, whose sentences are listed one per line below the summary.
    shorts = [m[0] if isinstance(m, tuple) else m for m in missing]
    details = "".join(f"\n  - {m[1]}" for m in missing if isinstance(m, tuple))
    return DatasetUnavailableError(
        f"MS-COCO {year} is incomplete under {root} (missing: {', '.join(shorts)}) and {url} cannot be reached; "
        "run the coco profile where there is internet (such as Colab), copy the files there, or use the offline "
        f"quick profile (LAB_PROFILE=quick).{details}")


def _write_json_atomic(path: Path, obj) -> None:

    atomic_write_json(path, obj, separators=(",", ":"))


def download(url: str, dest: str | Path, timeout: float = 30.0, progress: bool = True, **checks) -> Path:
    """Fetch `url` to `dest`: resumable, retried, verified and atomic (see `labutils.infra.download.download`)."""

    return dl.download(url, dest, timeout=timeout, progress=progress, **checks)


def _extract(archive: Path, dest: Path, only: str | None = None, progress: bool = False) -> None:

    extract_zip(archive, dest, members=None if only is None else [only], progress=progress)


def _fetch_archive(url: str, root: Path, dest: Path, progress: bool, only: str | None = None) -> None:

    known = dl.known_source(url)  # the official archives are checked against their published size and MD5
    archive = dl.download(url, root / "downloads" / url.rsplit("/", 1)[-1], sha256=known.sha256, size=known.size,
                          md5=known.md5, progress=progress, expect="zip")  # a mirror's: at least a real zip
    _extract(archive, dest, only, progress)
    dl.discard(archive)  # the unpacked files are what count; the zips would double the disk use


def _fetch_karpathy(sources: list[str], root: Path, progress: bool) -> Path | None:
    """dataset_coco.json from the first source that delivers it (its zip, or the bare JSON), else None."""

    # Each source is checked as what its name says (caption_datasets.zip a zip, dataset_coco.json JSON that
    # parses), so a captive portal's HTML page is never saved as the split file.
    checked = [dataclasses.replace(dl.known_source(url), expect=dl.expected_kind(url)) for url in sources]
    try:
        got = dl.try_sources(checked, root / "downloads", progress=progress)
        if zipfile.is_zipfile(got.path):
            _extract(got.path, root, "dataset_coco.json", progress)
        else:
            os.replace(got.path, root / "dataset_coco.json")
        dl.discard(got.path)
    except DatasetUnavailableError as err:
        print(f"Karpathy's split could not be fetched:\n{err}")
        return None
    print(f"Fetched Karpathy's split from {got.url}.")
    return find_karpathy_json(root)


def convert_coco(dataset_dir: str | Path, splits: Mapping[str, list[int]] | None = None,
                 subset: int | None = None, seed: int = 0, n_val: int = 5000, n_test: int | None = 5000,
                 year: int = 2014) -> dict:
    """Turn the official `year` annotation files into the lab's layout (captions.json, instances.json, splits.json).

    Image `file_name`s become `train2014/...` / `val2014/...` (2017: `train2017/...`, relative to `images/`).
    `splits` is Karpathy's split when known (by image id, so it fits 2014 and 2017 alike); without it a split of
    the standard sizes is rebuilt from the ids (2014: `build_karpathy_like_split`, 2017: `build_coco2017_split`).
    `subset` keeps that many images. Returns the record also written to prepared.json.
    """
    if year not in COCO_ARCHIVES:
        raise ValueError(f"year={year} is not an MS-COCO release the lab knows; use 2014 or 2017.")
    root = Path(dataset_dir)
    raw = _raw_files(root, year)
    train_folder, val_folder = image_folders(year)

    def merged(kind: str) -> dict:
        out = {"images": [], "annotations": []}
        for folder in (train_folder, val_folder):
            data = json.loads(raw[f"{kind}_{folder}"].read_text())
            for image in data["images"]:
                image["file_name"] = f"{folder}/{Path(image['file_name']).name}"
            out["images"] += data["images"]
            out["annotations"] += data["annotations"]
            out.setdefault("info", data.get("info", {}))
            out.setdefault("licenses", data.get("licenses", []))
            if "categories" in data:
                out.setdefault("categories", data["categories"])
        if len({a["id"] for a in out["annotations"]}) != len(out["annotations"]):
            for new_id, ann in enumerate(out["annotations"], start=1):  # keep annotation ids unique after merging
                ann["id"] = new_id
        return out

    captions = merged("captions")
    folder_of = {img["id"]: img["file_name"].split("/")[0] for img in captions["images"]}
    train_ids = [i for i, f in folder_of.items() if f == train_folder]
    val_ids = [i for i, f in folder_of.items() if f == val_folder]
    source, rule = "karpathy", None
    if splits is None and year == 2017:
        source = "rebuilt-2017"
        splits = build_coco2017_split(train_ids, val_ids, n_val=n_val, n_test=n_test, seed=seed)
        n = {k: len(v) for k, v in splits.items()}
        test = f"all {n['test']:,}" if n["test"] == len(val_ids) else f"{n['test']:,} of the {len(val_ids):,}"
        rule = (f"test = {test} val2017 images, val = {n['val']:,} train2017 images drawn with seed {seed}, "
                f"train = the other {n['train']:,} images")
    elif splits is None:
        source = "rebuilt"
        n_test = KARPATHY_SIZES["test"] if n_test is None else n_test
        splits = build_karpathy_like_split(train_ids, val_ids, n_val=n_val, n_test=n_test, seed=seed)
        rule = (f"val = {n_val:,} and test = {n_test:,} val2014 images drawn with seed {seed}, train = the other "
                f"{len(splits['train']):,} images")
    splits = validate_splits({k: list(v) for k, v in splits.items()})
    absent = sorted(set().union(*splits.values()) - set(folder_of))
    if absent:
        raise SplitError(f"{len(absent)} split image id(s) (e.g. {absent[0]}) are not in the {year} caption "
                         "annotations; is the split file for MS-COCO?")
    if subset is not None:
        splits = subset_split(splits, subset, seed=seed)
    keep = set().union(*splits.values())

    def restricted(data: dict) -> dict:
        data["images"] = sorted((img for img in data["images"] if img["id"] in keep), key=lambda img: img["id"])
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
        return data

    _write_json_atomic(root / "annotations" / "captions.json", restricted(captions))
    del captions
    has_instances = raw[f"instances_{train_folder}"].is_file() and raw[f"instances_{val_folder}"].is_file()
    if has_instances:
        _write_json_atomic(root / "annotations" / "instances.json", restricted(merged("instances")))
    _write_json_atomic(root / "splits.json", splits)
    record = {"source": f"MS-COCO {year}", "year": year, "split_source": source, "subset": subset, "seed": seed,
              "instances": has_instances, "sizes": {k: len(v) for k, v in splits.items()}}
    if rule is not None:
        record["split_rule"] = rule
    _write_json_atomic(root / "prepared.json", record)
    return record


def convert_coco2014(dataset_dir: str | Path, splits: Mapping[str, list[int]] | None = None,
                     subset: int | None = None, seed: int = 0, n_val: int = 5000, n_test: int = 5000) -> dict:
    """`convert_coco(..., year=2014)`: the official 2014 files into the lab's layout (see `convert_coco`)."""
    return convert_coco(dataset_dir, splits, subset=subset, seed=seed, n_val=n_val, n_test=n_test, year=2014)


# Missing images of a folder whose zip was already unpacked (deleted by hand, e.g. a corrupt one) are fetched
# one by one up to this many; more than that, and the zip is fetched again.
REFETCH_ONE_BY_ONE = 2000


def prepare_mscoco(cfg, subset: int | None = None, *, base_url: str | None = None,
                   karpathy_url: str | list[str] | None = None, timeout: float = 5.0, progress: bool = True,
                   n_val: int = 5000, n_test: int | None = 5000, dry_run: bool = False,
                   resize: bool = True) -> Path:
    """Bring MS-COCO (`cfg.coco_year`: 2014, or 2017) into the lab's layout under `cfg.dataset_dir`.

    Uses what is on disk and fetches the rest: the annotation zip and either both image zips (`subset=None`) or
    only the `subset` images, one by one. Uses Karpathy's split when it is on disk or downloadable, else rebuilds
    a 113,287/5,000/5,000 split (2014: `n_val` + `n_test` val2014 images; 2017: test = `n_test` val2017 images,
    None meaning all of them, and `n_val` train2017 images for val).
    Then (`resize=True`) resizes every image once to `cfg.image_size` px (`resize_images`), which the readers use
    from then on (`image_root`).
    Offline with pieces missing, raises `DatasetUnavailableError` naming them, one sentence per piece.
    `dry_run=True` downloads and writes nothing: it prints what is still to fetch (or raises that error offline).
    `base_url`/`karpathy_url` default to the module's COCO_BASE_URL/KARPATHY_SPLIT_SOURCES (read at call time, so a
    mirror can be set once); `karpathy_url` may be one URL or a list tried in order, and `""` skips Karpathy's file.
    Downloads resume, retry, verify and skip what is done (labutils.infra.download), so re-running is always safe.
    """
    root = Path(cfg.dataset_dir)
    image_dir = Path(cfg.image_dir)
    year = coco_year(cfg)
    archives = COCO_ARCHIVES[year]
    train_folder, val_folder = image_folders(year)
    base_url = (base_url or COCO_BASE_URL).rstrip("/")
    karpathy_urls = list(KARPATHY_SPLIT_SOURCES if karpathy_url is None else
                         [karpathy_url] if isinstance(karpathy_url, str) else karpathy_url)
    karpathy_urls = [url for url in karpathy_urls if url]
    status = mscoco_status(cfg)
    want_zips = subset is None and not (status[f"{train_folder} images"] and status[f"{val_folder} images"])
    online = None

    def need_network(missing: list[str]) -> None:
        nonlocal online
        if online is None:
            online = network_available(base_url, timeout=timeout)
        if not online:
            raise _unavailable(mscoco_plan(cfg, subset, base_url) or missing, root, base_url, year)

    if dry_run:

        pieces = mscoco_plan(cfg, subset, base_url)
        if not pieces:
            print(f"MS-COCO {year} is ready under {root}; nothing to download.")
            return root
        if not network_available(base_url, timeout=timeout):
            raise _unavailable(pieces, root, base_url, year)
        print(f"Dry run: preparing MS-COCO {year} under {root} would fetch about "
              f"{human_bytes(sum(p[2] for p in pieces))}:")
        for _, sentence, _ in pieces:
            print(f"  - {sentence}")
        return root

    if not _is_current(_prepared(cfg), subset, cfg.seed, year):
        announce_download(cfg, subset, base_url)
        if not status["caption annotations"]:
            missing = [f"{year} caption annotations"]
            if want_zips:
                missing += [f"{name} images" for name in (train_folder, val_folder)
                            if not status[f"{name} images"]]
            need_network(missing)
            _fetch_archive(f"{base_url}/{archives['annotations']}", root, root, progress)
        karpathy = find_karpathy_json(root)
        if karpathy is None and karpathy_urls:
            karpathy = _fetch_karpathy(karpathy_urls, root, progress)
        if karpathy is not None:
            print(f"Using Karpathy's split ({karpathy}).")
        elif year == 2014:
            print(f"Karpathy's split file is not available, so a Karpathy-like {n_val}/{n_test} val/test split is "
                  "rebuilt from the official val2014 ids (same sizes, different images than the papers' split).")
        record = convert_coco(root, karpathy_split(karpathy) if karpathy else None, subset=subset, seed=cfg.seed,
                              n_val=n_val, n_test=n_test, year=year)
        if karpathy is None and year == 2017:
            print(f"Karpathy's split file is not available, so the standard 2017 split is used instead "
                  f"({record['split_rule']}): the sizes of Karpathy's split, but not the papers' images, so "
                  "scores are not directly comparable.")

    captions = load_captions(root)
    absent = missing_images(captions, image_dir)
    if absent and subset is None:

        folders = sorted({captions.imgs[i]["file_name"].split("/")[0] for i in absent})
        need_network([f"{len(absent)} images in {', '.join(folders)}"])
        for folder in folders:
            ids = [i for i in absent if captions.imgs[i]["file_name"].split("/")[0] == folder]
            marker = _marker_path(Path(archives[folder]), image_dir)  # "this zip was unpacked here"
            if marker.is_file() and len(ids) <= REFETCH_ONE_BY_ONE:
                _fetch_images(captions, ids, image_dir, base_url, timeout=max(timeout, 30.0), progress=progress)
            else:
                marker.unlink(missing_ok=True)  # it vouches for files that are gone: unpack the zip again
                _fetch_archive(f"{base_url}/{archives[folder]}", root, image_dir, progress)
        absent = missing_images(captions, image_dir)
    elif absent:
        need_network([f"{len(absent)} of the {subset} subset images"])
        _fetch_images(captions, absent, image_dir, base_url, timeout=max(timeout, 30.0), progress=progress)
        absent = missing_images(captions, image_dir)
    if absent:
        raise DatasetUnavailableError(f"{len(absent)} images (e.g. {captions.imgs[absent[0]]['file_name']}) are "
                                      f"still missing under {image_dir}; run the same call again to fetch them.")
    if resize:
        resize_images(cfg, captions=captions, progress=progress)
    return root


def _fetch_images(coco, image_ids: list[int], image_dir: Path, base_url: str, timeout: float,
                  progress: bool, workers: int = 16) -> None:

    # `base_url/file_name` is each image's official `coco_url` (http://images.cocodataset.org/train2014/...), or
    # the same path on a mirror or test server.
    entries = [(f"{base_url}/{coco.imgs[i]['file_name']}", image_dir / coco.imgs[i]["file_name"]) for i in image_ids]
    report = fetch_images_by_url(entries, workers=workers, timeout=timeout, progress=progress)
    if report.failed:
        why = next(iter(report.failed.values())).rstrip(".")
        raise DatasetUnavailableError(f"{len(report.failed)} of {len(image_ids)} images failed ({why}); "
                                      "run the same call again to retry them.")
