"""COCO-format data for the lab: load captions and instances with pycocotools, tabulate captions, load and check
the train/val/test split, show an image with its annotations, and prepare real MS-COCO 2014 for the full profile.

Both profiles end in the same on-disk layout under `cfg.dataset_dir`:

    annotations/captions.json    COCO captions; each image's `file_name` is relative to `cfg.image_dir`
    annotations/instances.json   COCO instances (boxes, polygons, categories)
    images/                      the JPEGs (MS-COCO: images/train2014/..., images/val2014/...)
    splits.json                  {"train": [ids], "val": [ids], "test": [ids]}, every image in exactly one split

The quick profile writes it with `labutils.synthetic`; the full profile converts the official 2014 files.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import textwrap
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")

# Official MS-COCO 2014 archives (https://cocodataset.org/#download) and Karpathy & Fei-Fei's split
# (dataset_coco.json inside caption_datasets.zip), the split nearly every captioning paper reports on.
COCO_BASE_URL = "http://images.cocodataset.org"
TRAIN2014_URL = "http://images.cocodataset.org/zips/train2014.zip"
VAL2014_URL = "http://images.cocodataset.org/zips/val2014.zip"
ANNOTATIONS2014_URL = "http://images.cocodataset.org/annotations/annotations_trainval2014.zip"
KARPATHY_SPLIT_URL = "https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip"
# Where dataset_coco.json has lived, tried in order by `prepare_mscoco` (the first that delivers wins): the
# original Stanford zip (reported 404 since 2023, kept in case it returns) and a community copy of the bare JSON on
# GitHub, verified by its size and SHA-256 (labutils.download.KNOWN_FILES). None answering: a rebuilt split.
KARPATHY_SPLIT_SOURCES = (
    KARPATHY_SPLIT_URL,
    "http://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip",
    "https://github.com/Delphboy/karpathy-splits/raw/main/dataset_coco.json",
)
# The same archives relative to a base URL, so tests (and mirrors) can point the lab at another server.
COCO2014_ARCHIVES = {
    "annotations": "annotations/annotations_trainval2014.zip",
    "train2014": "zips/train2014.zip",
    "val2014": "zips/val2014.zip",
}
COCO2014_IMAGES = {"train2014": 82_783, "val2014": 40_504}
KARPATHY_SIZES = {"train": 113_287, "val": 5_000, "test": 5_000}


class DatasetUnavailableError(FileNotFoundError):
    """The dataset (or a piece of it) is not on disk and cannot be fetched now."""


class SplitLeakageError(ValueError):
    """An image appears in two splits, so evaluation would test on training images."""


class SplitError(ValueError):
    """The split file is malformed or does not match the annotations."""


# --------------------------------------------------------------------------------------------------------------
# Loading


def ensure_dataset(cfg, progress: bool = True) -> Path:
    """Make sure the profile's dataset is on disk (synthetic shapes, or MS-COCO 2014) and return its folder."""
    # The dataset name, not the profile, decides: the full profile can run on synthetic data at full sizes.
    if cfg.dataset_name.startswith("coco"):
        return prepare_mscoco(cfg, progress=progress)
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


def check_image_ids_with_category(coco_instances, cat_names: str | Iterable[str], answer) -> bool:
    """Exercise check: are `answer` exactly the images showing at least one of EVERY category in `cat_names`?"""
    names = [cat_names] if isinstance(cat_names, str) else list(cat_names)
    cat_ids = coco_instances.getCatIds(catNms=names)
    if len(cat_ids) != len(names):
        known = [c["name"] for c in coco_instances.loadCats(coco_instances.getCatIds())]
        print(f"❌ Some of {names} are not category names here; the categories are {known}.")
        return False
    expected = set(coco_instances.getImgIds(catIds=cat_ids))
    try:
        given = {int(i) for i in answer}
    except (TypeError, ValueError):
        print("❌ The answer should be a list of integer image ids, e.g. from coco.getImgIds(...).")
        return False
    if given == expected:
        print(f"✅ Right: {len(expected)} images show {' and '.join(names)}.")
        return True
    if given and given <= set(coco_instances.anns) and not given <= set(coco_instances.imgs):
        print("❌ Those look like annotation ids; getImgIds() gives image ids.")
    elif given > expected:
        print(f"❌ {len(given - expected)} of your images lack one of {names} "
              "(getImgIds with several catIds keeps images having ALL of them).")
    else:
        print(f"❌ You have {len(given & expected)} of the {len(expected)} right images and "
              f"{len(given - expected)} wrong ones; try coco.getImgIds(catIds=coco.getCatIds(catNms=...)).")
    return False


# --------------------------------------------------------------------------------------------------------------
# Real MS-COCO 2014 (full profile)
#
# Layout under cfg.dataset_dir: the official files as they unzip (annotations/captions_train2014.json, ...,
# images/train2014/*.jpg, images/val2014/*.jpg, dataset_coco.json from Karpathy's zip), converted once into the
# lab's uniform layout above. Downloads go through labutils.download (resume, retry, checksums, atomic, idempotent).


def network_available(url: str = COCO_BASE_URL, timeout: float = 3.0) -> bool:
    """True when `url`'s server answers a HEAD request within `timeout` seconds (any HTTP status counts)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _raw_files(root: Path) -> dict[str, Path]:
    ann = root / "annotations"
    return {"captions_train2014": ann / "captions_train2014.json", "captions_val2014": ann / "captions_val2014.json",
            "instances_train2014": ann / "instances_train2014.json", "instances_val2014": ann / "instances_val2014.json"}


def find_karpathy_json(root: str | Path) -> Path | None:
    """Karpathy's dataset_coco.json under a dataset folder (top level or caption_datasets/), if present."""
    for candidate in (Path(root) / "dataset_coco.json", Path(root) / "caption_datasets" / "dataset_coco.json"):
        if candidate.is_file():
            return candidate
    return None


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


def mscoco_status(cfg) -> dict[str, bool]:
    """Which pieces of MS-COCO 2014 are already under `cfg.dataset_dir` (raw and converted)."""
    root = Path(cfg.dataset_dir)
    raw = _raw_files(root)
    return {
        "caption annotations": raw["captions_train2014"].is_file() and raw["captions_val2014"].is_file(),
        "instance annotations": raw["instances_train2014"].is_file() and raw["instances_val2014"].is_file(),
        "train2014 images": (Path(cfg.image_dir) / "train2014").is_dir(),
        "val2014 images": (Path(cfg.image_dir) / "val2014").is_dir(),
        "Karpathy split": find_karpathy_json(root) is not None,
        "converted": (root / "prepared.json").is_file() and Path(cfg.captions_file).is_file()
        and Path(cfg.split_file).is_file(),
    }


AVERAGE_IMAGE_BYTES = 161_000  # mean MS-COCO 2014 JPEG: (13.5 GB + 6.6 GB) / 123,287 images


def mscoco_plan(cfg, subset: int | None = None, base_url: str | None = None) -> list[tuple[str, str, int]]:
    """What `prepare_mscoco` still has to fetch: one (short name, sentence, bytes) per missing piece, no network.

    Pieces: the annotation zip, Karpathy's split (optional: a rebuilt split replaces it), the image zips or the
    subset's images, and free disk space when it falls short of the estimated peak use.
    """
    from .download import KNOWN_FILES, human_bytes

    root, image_dir = Path(cfg.dataset_dir), Path(cfg.image_dir)
    base_url = (base_url or COCO_BASE_URL).rstrip("/")
    official = {"annotations": ANNOTATIONS2014_URL, "train2014": TRAIN2014_URL, "val2014": VAL2014_URL}
    size_of = {key: KNOWN_FILES.get(url, {}).get("size", 0) for key, url in official.items()}
    status = mscoco_status(cfg)
    prepared = json.loads((root / "prepared.json").read_text()) if status["converted"] else None
    current = prepared is not None and prepared.get("subset") == subset and prepared.get("seed") == cfg.seed
    pieces: list[tuple[str, str, int]] = []
    zips: list[int] = []

    def archive(short: str, what: str, key: str, where: Path) -> None:
        zips.append(size_of[key])
        pieces.append((short, f"{what} are not under {where}; they come in {base_url}/{COCO2014_ARCHIVES[key]} "
                              f"({human_bytes(size_of[key])}).", size_of[key]))

    def one_by_one(short: str, what: str, n: int) -> None:
        pieces.append((short, f"{what}; they are fetched one by one from {base_url}/train2014/ and "
                              f"{base_url}/val2014/ (about {human_bytes(n * AVERAGE_IMAGE_BYTES)}).",
                       n * AVERAGE_IMAGE_BYTES))

    if not current and not status["caption annotations"]:
        archive("2014 caption annotations", "The 2014 caption annotations", "annotations", root / "annotations")
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
                           f"in {' and '.join(f'{base_url}/{COCO2014_ARCHIVES[f]}' for f in folders)} "
                           f"({human_bytes(sum(size_of[f] for f in folders))}).", sum(size_of[f] for f in folders)))
        elif absent:
            one_by_one(f"{len(absent)} of the {subset} subset images",
                       f"{len(absent)} of the {subset} subset images are not under {image_dir}", len(absent))
    elif subset is None:
        for folder in ("train2014", "val2014"):
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


def _unavailable(missing: list, root: Path, url: str) -> DatasetUnavailableError:
    # `missing`: short names, or mscoco_plan() pieces, whose sentences are listed one per line below the summary.
    shorts = [m[0] if isinstance(m, tuple) else m for m in missing]
    details = "".join(f"\n  - {m[1]}" for m in missing if isinstance(m, tuple))
    return DatasetUnavailableError(
        f"MS-COCO 2014 is incomplete under {root} (missing: {', '.join(shorts)}) and {url} cannot be reached; "
        "run the full profile where there is internet (such as Colab), copy the files there, or use the offline "
        f"quick profile (LAB_PROFILE=quick).{details}")


def _write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(obj, out, separators=(",", ":"))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
                          md5=known.md5, progress=progress)
    _extract(archive, dest, only, progress)
    dl.discard(archive)  # the unpacked files are what count; the zips would double the disk use


def _fetch_karpathy(sources: list[str], root: Path, progress: bool) -> Path | None:
    """dataset_coco.json from the first source that delivers it (its zip, or the bare JSON), else None."""
    from . import download as dl

    try:
        got = dl.try_sources([dl.known_source(url) for url in sources], root / "downloads", progress=progress)
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


def convert_coco2014(dataset_dir: str | Path, splits: Mapping[str, list[int]] | None = None,
                     subset: int | None = None, seed: int = 0, n_val: int = 5000, n_test: int = 5000) -> dict:
    """Turn the official 2014 annotation files into the lab's layout (captions.json, instances.json, splits.json).

    Image `file_name`s become `train2014/...` / `val2014/...` (relative to `images/`). `splits` is Karpathy's
    split when known; without it a Karpathy-like split is rebuilt from the ids. `subset` keeps that many images.
    Returns the record also written to prepared.json.
    """
    root = Path(dataset_dir)
    raw = _raw_files(root)

    def merged(kind: str) -> dict:
        out = {"images": [], "annotations": []}
        for folder in ("train2014", "val2014"):
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
    source = "karpathy"
    if splits is None:
        source = "rebuilt"
        splits = build_karpathy_like_split([i for i, f in folder_of.items() if f == "train2014"],
                                           [i for i, f in folder_of.items() if f == "val2014"],
                                           n_val=n_val, n_test=n_test, seed=seed)
    splits = validate_splits({k: list(v) for k, v in splits.items()})
    absent = sorted(set().union(*splits.values()) - set(folder_of))
    if absent:
        raise SplitError(f"{len(absent)} split image id(s) (e.g. {absent[0]}) are not in the 2014 caption "
                         "annotations; is the split file for MS-COCO 2014?")
    if subset is not None:
        splits = subset_split(splits, subset, seed=seed)
    keep = set().union(*splits.values())

    def restricted(data: dict) -> dict:
        data["images"] = sorted((img for img in data["images"] if img["id"] in keep), key=lambda img: img["id"])
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
        return data

    _write_json_atomic(root / "annotations" / "captions.json", restricted(captions))
    del captions
    has_instances = raw["instances_train2014"].is_file() and raw["instances_val2014"].is_file()
    if has_instances:
        _write_json_atomic(root / "annotations" / "instances.json", restricted(merged("instances")))
    _write_json_atomic(root / "splits.json", splits)
    record = {"source": "MS-COCO 2014", "split_source": source, "subset": subset, "seed": seed,
              "instances": has_instances, "sizes": {k: len(v) for k, v in splits.items()}}
    _write_json_atomic(root / "prepared.json", record)
    return record


def prepare_mscoco(cfg, subset: int | None = None, *, base_url: str | None = None,
                   karpathy_url: str | list[str] | None = None, timeout: float = 5.0, progress: bool = True,
                   n_val: int = 5000, n_test: int = 5000, dry_run: bool = False) -> Path:
    """Bring MS-COCO 2014 into the lab's layout under `cfg.dataset_dir`, using what is on disk and fetching the rest.

    Fetches the 2014 annotation zip and either both image zips (`subset=None`) or only the `subset` images, one by
    one. Uses Karpathy's split when it is on disk or downloadable, else rebuilds a 113,287/5,000/5,000 split.
    Offline with pieces missing, raises `DatasetUnavailableError` naming them, one sentence per piece.
    `dry_run=True` downloads and writes nothing: it prints what is still to fetch (or raises that error offline).
    `base_url`/`karpathy_url` default to the module's COCO_BASE_URL/KARPATHY_SPLIT_SOURCES (read at call time, so a
    mirror can be set once); `karpathy_url` may be one URL or a list tried in order, and `""` skips Karpathy's file.
    Downloads resume, retry, verify and skip what is done (labutils.download), so re-running is always safe.
    """
    root = Path(cfg.dataset_dir)
    image_dir = Path(cfg.image_dir)
    base_url = (base_url or COCO_BASE_URL).rstrip("/")
    karpathy_urls = list(KARPATHY_SPLIT_SOURCES if karpathy_url is None else
                         [karpathy_url] if isinstance(karpathy_url, str) else karpathy_url)
    karpathy_urls = [url for url in karpathy_urls if url]
    status = mscoco_status(cfg)
    want_zips = subset is None and not (status["train2014 images"] and status["val2014 images"])
    online = None

    def need_network(missing: list[str]) -> None:
        nonlocal online
        if online is None:
            online = network_available(base_url, timeout=timeout)
        if not online:
            raise _unavailable(mscoco_plan(cfg, subset, base_url) or missing, root, base_url)

    if dry_run:
        from .download import human_bytes

        pieces = mscoco_plan(cfg, subset, base_url)
        if not pieces:
            print(f"MS-COCO 2014 is ready under {root}; nothing to download.")
            return root
        if not network_available(base_url, timeout=timeout):
            raise _unavailable(pieces, root, base_url)
        print(f"Dry run: preparing MS-COCO 2014 under {root} would fetch about "
              f"{human_bytes(sum(p[2] for p in pieces))}:")
        for _, sentence, _ in pieces:
            print(f"  - {sentence}")
        return root

    prepared = json.loads((root / "prepared.json").read_text()) if status["converted"] else None
    if prepared is None or prepared.get("subset") != subset or prepared.get("seed") != cfg.seed:
        if not status["caption annotations"]:
            missing = ["2014 caption annotations"]
            if want_zips:
                missing += [name for name in ("train2014 images", "val2014 images") if not status[name]]
            need_network(missing)
            _fetch_archive(f"{base_url}/{COCO2014_ARCHIVES['annotations']}", root, root, progress)
        karpathy = find_karpathy_json(root)
        if karpathy is None and karpathy_urls:
            karpathy = _fetch_karpathy(karpathy_urls, root, progress)
        if karpathy is not None:
            print(f"Using Karpathy's split ({karpathy}).")
        else:
            print(f"Karpathy's split file is not available, so a Karpathy-like {n_val}/{n_test} val/test split is "
                  "rebuilt from the official val2014 ids (same sizes, different images than the papers' split).")
        convert_coco2014(root, karpathy_split(karpathy) if karpathy else None, subset=subset, seed=cfg.seed,
                         n_val=n_val, n_test=n_test)

    captions = load_captions(root)
    absent = missing_images(captions, image_dir)
    if absent and subset is None:
        folders = sorted({captions.imgs[i]["file_name"].split("/")[0] for i in absent})
        need_network([f"{len(absent)} images in {', '.join(folders)}"])
        for folder in folders:
            _fetch_archive(f"{base_url}/{COCO2014_ARCHIVES[folder]}", root, image_dir, progress)
        absent = missing_images(captions, image_dir)
    elif absent:
        need_network([f"{len(absent)} of the {subset} subset images"])
        _fetch_images(captions, absent, image_dir, base_url, timeout=max(timeout, 30.0), progress=progress)
        absent = missing_images(captions, image_dir)
    if absent:
        raise DatasetUnavailableError(f"{len(absent)} images (e.g. {captions.imgs[absent[0]]['file_name']}) are "
                                      f"still missing under {image_dir}; run the same call again to fetch them.")
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
