"""COCO-format data for the lab: load captions and instances with pycocotools, tabulate captions, load and check
the train/val/test split, show an image with its annotations, and prepare real MS-COCO (2014, or 2017 as an
option) for the full profile.

Both profiles end in the same on-disk layout under `cfg.dataset_dir`:

    annotations/captions.json    COCO captions; each image's `file_name` is relative to `cfg.image_dir`
    annotations/instances.json   COCO instances (boxes, polygons, categories)
    images/                      the JPEGs (MS-COCO: images/train2014/..., images/val2014/...)
    splits.json                  {"train": [ids], "val": [ids], "test": [ids]}, every image in exactly one split

The quick profile writes it with `labutils.synthetic`; the full profile converts the official files and also
keeps a copy of the images resized once to `cfg.image_size` px (`images_<size>px/`, see `image_root`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import textwrap
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")

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
# GitHub, verified by its size and SHA-256 (labutils.download.KNOWN_FILES). None answering: a rebuilt split.
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


class DatasetUnavailableError(FileNotFoundError):
    """The dataset (or a piece of it) is not on disk and cannot be fetched now."""


class SplitLeakageError(ValueError):
    """An image appears in two splits, so evaluation would test on training images."""


class SplitError(ValueError):
    """The split file is malformed or does not match the annotations."""


# --------------------------------------------------------------------------------------------------------------
# Loading


def ensure_dataset(cfg, progress: bool = True) -> Path:
    """Make sure the profile's dataset is on disk (synthetic shapes, or MS-COCO) and return its folder.

    A folder at `cfg.dataset_dir` holding a dataset the lab did not write (say, your own photos converted to this
    layout) is never replaced by the synthetic shapes: that stops with `infra.files.NotLabFolderError`.
    """
    # The dataset name, not the profile, decides: the full profile can run on synthetic data at full sizes.
    if cfg.dataset_name.startswith("coco"):
        # Keep the subset an instructor prepared (`python -m labutils prepare --subset N`) instead of
        # converting, and downloading, the whole dataset in every notebook.
        return prepare_mscoco(cfg, subset=prepared_subset(cfg), progress=progress)
    from . import synthetic

    return synthetic.ensure_synthetic(cfg, progress=progress)


def _annotation_path(cfg_or_path, kind: str) -> Path:
    if hasattr(cfg_or_path, "dataset_dir"):
        return Path(cfg_or_path.dataset_dir) / "annotations" / f"{kind}.json"
    path = Path(cfg_or_path)
    return path / "annotations" / f"{kind}.json" if path.is_dir() else path


def _load_coco(path: Path, verbose: bool):
    from pycocotools.coco import COCO

    if not path.is_file():
        raise DatasetUnavailableError(
            f"No annotation file at {path}; run `labutils.coco.ensure_dataset(cfg)` (or notebook 00) first.")
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    try:
        with quiet:
            return COCO(str(path))
    except (json.JSONDecodeError, UnicodeDecodeError, AssertionError):
        raise ValueError(f"{path} is not a COCO JSON file (perhaps a cut-off download); delete it and run "
                         "`labutils.coco.ensure_dataset(cfg)` again.") from None


def load_captions(cfg_or_path, verbose: bool = False):
    """Caption annotations as a `pycocotools.coco.COCO` (from a config, a dataset folder or a JSON file)."""
    return _load_coco(_annotation_path(cfg_or_path, "captions"), verbose)


def load_instances(cfg_or_path, verbose: bool = False):
    """Instance annotations (boxes, polygons, categories) as a `pycocotools.coco.COCO`."""
    return _load_coco(_annotation_path(cfg_or_path, "instances"), verbose)


def load_results(coco, results, verbose: bool = False):
    """`coco.loadRes(results)` (a list of {"image_id", "caption"} dicts or a JSON file) without its timing prints."""
    results = str(results) if isinstance(results, Path) else results  # loadRes treats anything but str as a list
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        return coco.loadRes(results)


# --------------------------------------------------------------------------------------------------------------
# Captions


def captions_by_image(coco, image_ids: Iterable[int] | None = None) -> dict[int, list[str]]:
    """Map each image id (all, or `image_ids` in that order) to its captions in annotation order."""
    ids = sorted(coco.imgs) if image_ids is None else [int(i) for i in image_ids]
    unknown = [i for i in ids if i not in coco.imgs]
    if unknown:
        raise KeyError(f"Image id {unknown[0]} is not in these annotations ({len(unknown)} unknown id(s) in all); "
                       "check that the ids come from the same dataset.")
    return {i: [coco.anns[a]["caption"].strip() for a in sorted(coco.getAnnIds(imgIds=[i]))] for i in ids}


def caption_table(coco):
    """One row per caption: image_id, ann_id, caption, n_words (whitespace words), n_chars, file_name."""
    import pandas as pd

    rows = [{"image_id": ann["image_id"], "ann_id": ann["id"], "caption": ann["caption"].strip()}
            for ann in coco.dataset["annotations"]]
    table = pd.DataFrame(rows, columns=["image_id", "ann_id", "caption"])
    table["n_words"] = table["caption"].str.split().str.len().astype("int64")
    table["n_chars"] = table["caption"].str.len().astype("int64")
    table["file_name"] = table["image_id"].map({i: img["file_name"] for i, img in coco.imgs.items()})
    return table.sort_values(["image_id", "ann_id"], ignore_index=True)


def caption_stats(table) -> dict:
    """Summary of a caption table: counts, captions per image and caption length in words (plain numbers)."""
    per_image = table.groupby("image_id").size()
    words = table["n_words"]
    distinct = {w for caption in table["caption"] for w in caption.lower().split()}
    return {
        "images": int(per_image.size),
        "captions": int(len(table)),
        "captions_per_image_min": int(per_image.min()),
        "captions_per_image_mean": round(float(per_image.mean()), 2),
        "captions_per_image_max": int(per_image.max()),
        "words_min": int(words.min()),
        "words_mean": round(float(words.mean()), 2),
        "words_median": float(words.median()),
        "words_p95": float(words.quantile(0.95)),
        "words_max": int(words.max()),
        "distinct_words": len(distinct),
    }


# --------------------------------------------------------------------------------------------------------------
# Splits


def _split_path(cfg_or_path) -> Path:
    if hasattr(cfg_or_path, "split_file"):
        return Path(cfg_or_path.split_file)
    path = Path(cfg_or_path)
    return path / "splits.json" if path.is_dir() else path


def validate_splits(raw) -> dict[str, list[int]]:
    """Check a {split: ids} mapping (names, non-empty, integer ids, no image in two splits); return sorted ids."""
    if not isinstance(raw, Mapping):
        raise SplitError("A split file must hold a JSON object like {\"train\": [...], \"val\": [...], \"test\": [...]}.")
    unknown = sorted(set(raw) - set(SPLITS))
    if unknown:
        raise SplitError(f"Unknown split name(s) {unknown}; a split file has exactly {list(SPLITS)}.")
    missing = [name for name in SPLITS if name not in raw]
    if missing:
        raise SplitError(f"The split file lacks {missing}; a split file has exactly {list(SPLITS)}.")
    owner: dict[int, str] = {}
    splits = {}
    for name in SPLITS:
        ids = raw[name]
        if not isinstance(ids, list) or not ids:
            raise SplitError(f"Split {name!r} is empty (or not a list); every split needs at least one image id.")
        for image_id in ids:
            if isinstance(image_id, bool) or not isinstance(image_id, int):
                raise SplitError(f"Split {name!r} holds {image_id!r}, which is not an integer image id.")
            if image_id in owner:
                first = owner[image_id]
                if first == name:
                    raise SplitError(f"Image {image_id} is listed twice in split {name!r}; list each image once.")
                raise SplitLeakageError(
                    f"Image {image_id} is in both {first!r} and {name!r}; every image must belong to exactly one "
                    "split, or the scores measure memory instead of captioning.")
            owner[image_id] = name
        splits[name] = sorted(ids)
    return splits


def load_splits(cfg_or_path) -> dict[str, list[int]]:
    """Read splits.json (from a config, a dataset folder or the file) and return {split: sorted ids}, checked."""
    path = _split_path(cfg_or_path)
    if not path.is_file():
        raise DatasetUnavailableError(
            f"No split file at {path}; run `labutils.coco.ensure_dataset(cfg)` (or notebook 00) first.")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise SplitError(f"{path} is not valid JSON; delete it and run `labutils.coco.ensure_dataset(cfg)` "
                         "again.") from None
    return validate_splits(raw)


def check_split_against(coco, splits: Mapping[str, Iterable[int]]) -> list[int]:
    """Raise if a split names an image the annotations lack; return the annotated ids that are in no split."""
    assigned = set()
    for name, ids in splits.items():
        ids = set(ids)
        absent = sorted(ids - set(coco.imgs))
        if absent:
            raise SplitError(f"{len(absent)} image id(s) of split {name!r} (e.g. {absent[0]}) are not in the "
                             "annotations; the split file belongs to another dataset, so regenerate it with "
                             "`labutils.coco.ensure_dataset(cfg)`.")
        assigned |= ids
    return sorted(set(coco.imgs) - assigned)


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


# --------------------------------------------------------------------------------------------------------------
# Showing


def show_image_with_captions(coco_caps, image_id: int, image_dir: str | Path, coco_instances=None, ax=None,
                             draw_bbox: bool = True, wrap: int = 48):
    """Draw one image with its captions as the title and, given instances, pycocotools' `showAnns` overlay."""
    import matplotlib.pyplot as plt
    from PIL import Image

    if image_id not in coco_caps.imgs:
        raise KeyError(f"Image id {image_id} is not in the caption annotations; pick one from coco.getImgIds().")
    path = Path(image_dir) / coco_caps.imgs[image_id]["file_name"]
    if not path.is_file():
        raise DatasetUnavailableError(f"Image file {path} is missing; run `labutils.coco.ensure_dataset(cfg)` "
                                      "(or notebook 00) and check that image_dir is cfg.image_dir.")
    with Image.open(path) as img:
        pixels = np.asarray(img.convert("RGB"))
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(pixels)
    ax.set_axis_off()
    captions = captions_by_image(coco_caps, [image_id])[image_id]
    ax.set_title("\n".join(textwrap.fill(c, wrap) for c in captions), fontsize=8, loc="left")
    if coco_instances is not None:
        anns = coco_instances.loadAnns(coco_instances.getAnnIds(imgIds=[image_id]))
        # showAnns draws on plt.gca() with colours from the global NumPy RNG: aim it at `ax`, and keep the
        # colours the same on every run without disturbing anyone else's random stream.
        plt.sca(ax)
        state = np.random.get_state()
        np.random.seed(image_id)
        try:
            coco_instances.showAnns(anns, draw_bbox=draw_bbox)
        finally:
            np.random.set_state(state)
        if anns:  # showAnns adds a filled then an outlined collection; thin the fill so object colours stay true
            ax.collections[-2].set_alpha(0.12)
        for ann in anns:
            x, y = ann["bbox"][:2]
            ax.text(x, y, coco_instances.cats[ann["category_id"]]["name"], fontsize=7, va="bottom",
                    color="white", bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "linewidth": 0})
    return ax


# --------------------------------------------------------------------------------------------------------------
# Exercise checks


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
                         f"get_config('full', coco_year={year}), which names the dataset 'coco{year}'.")
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


def missing_images(coco, image_dir: str | Path, image_ids: Iterable[int] | None = None) -> list[int]:
    """Ids of images (all, or `image_ids`) whose file is not under `image_dir`."""
    image_dir = Path(image_dir)
    present: dict[Path, set[str]] = {}
    absent = []
    for image_id in sorted(coco.imgs) if image_ids is None else image_ids:
        rel = Path(coco.imgs[image_id]["file_name"])
        folder = image_dir / rel.parent
        if folder not in present:  # one directory listing instead of 100k stat calls
            present[folder] = {e.name for e in os.scandir(folder)} if folder.is_dir() else set()
        if rel.name not in present[folder]:
            absent.append(image_id)
    return absent


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


def mscoco_plan(cfg, subset: int | None = None, base_url: str | None = None) -> list[tuple[str, str, int]]:
    """What `prepare_mscoco` still has to fetch: one (short name, sentence, bytes) per missing piece, no network.

    Pieces: the annotation zip, Karpathy's split (optional: a rebuilt split replaces it), the image zips or the
    subset's images, and free disk space when it falls short of the estimated peak use.
    """
    from .download import KNOWN_FILES, human_bytes

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
        "run the full profile where there is internet (such as Colab), copy the files there, or use the offline "
        f"quick profile (LAB_PROFILE=quick).{details}")


def _write_json_atomic(path: Path, obj) -> None:
    from .infra.files import atomic_write_json

    atomic_write_json(path, obj, separators=(",", ":"))


def download(url: str, dest: str | Path, timeout: float = 30.0, progress: bool = True, **checks) -> Path:
    """Fetch `url` to `dest`: resumable, retried, verified and atomic (see `labutils.download.download`)."""
    from .download import download as _download

    return _download(url, dest, timeout=timeout, progress=progress, **checks)


def _extract(archive: Path, dest: Path, only: str | None = None, progress: bool = False) -> None:
    from .download import extract_zip

    extract_zip(archive, dest, members=None if only is None else [only], progress=progress)


def _fetch_archive(url: str, root: Path, dest: Path, progress: bool, only: str | None = None) -> None:
    from . import download as dl

    known = dl.known_source(url)  # the official archives are checked against their published size and MD5
    archive = dl.download(url, root / "downloads" / url.rsplit("/", 1)[-1], sha256=known.sha256, size=known.size,
                          md5=known.md5, progress=progress, expect="zip")  # a mirror's: at least a real zip
    _extract(archive, dest, only, progress)
    dl.discard(archive)  # the unpacked files are what count; the zips would double the disk use


def _fetch_karpathy(sources: list[str], root: Path, progress: bool) -> Path | None:
    """dataset_coco.json from the first source that delivers it (its zip, or the bare JSON), else None."""
    import dataclasses

    from . import download as dl

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
    Downloads resume, retry, verify and skip what is done (labutils.download), so re-running is always safe.
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
        from .download import human_bytes

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
        from .download import _marker_path

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
    from .download import fetch_images_by_url

    # `base_url/file_name` is each image's official `coco_url` (http://images.cocodataset.org/train2014/...), or
    # the same path on a mirror or test server.
    entries = [(f"{base_url}/{coco.imgs[i]['file_name']}", image_dir / coco.imgs[i]["file_name"]) for i in image_ids]
    report = fetch_images_by_url(entries, workers=workers, timeout=timeout, progress=progress)
    if report.failed:
        why = next(iter(report.failed.values())).rstrip(".")
        raise DatasetUnavailableError(f"{len(report.failed)} of {len(image_ids)} images failed ({why}); "
                                      "run the same call again to retry them.")


# --------------------------------------------------------------------------------------------------------------
# Resized once: every reader takes the images from `image_root(cfg)`
#
# The encoder sees 224-px crops, but MS-COCO's JPEGs are about 640x480: decoding them costs most of the time of a
# feature-cache build. So preparation writes a copy resized once to `cfg.image_size` px (shorter side) into
# <dataset>/images_<size>px/, and a record, resized.json, once every image of the dataset is there. Until then
# (and on the quick profile, whose images are rendered at that size) the readers use `cfg.image_dir`.

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

    Uses `labutils.augment.resize_all` per image folder (parallel, atomic writes, finished images skipped), then
    writes resized.json: complete only when every image of `captions` (default: the dataset's) is there.
    Unreadable images are listed in the record and reported in one sentence, never raised; the readers keep
    using the originals until the record is complete. A complete, current record makes this a no-op. Returns the
    record, with `resized` = images written by this call. One process resizes at a time (the folder's lock:
    another waits, saying so, then finds the work done), and only into a folder the lab made.
    """
    from .augment import resize_all
    from .infra.files import atomic_write_json, folder_lock

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
    from .augment import RESIZED_KIND
    from .infra.files import check_replaceable, made_by_lab, mark_made_by_lab

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
            "run `labutils.coco.prepare_mscoco(cfg)` to fetch them, and until then the lab reads the originals.")
