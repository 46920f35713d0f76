"""The COCO-format dataset on disk, as every profile leaves it under `cfg.dataset_dir`:

    annotations/captions.json    COCO captions; each image's `file_name` is relative to `cfg.image_dir`
    annotations/instances.json   COCO instances (boxes, polygons, categories)
    images/                      the photos (MS-COCO: images/train2014/..., images/val2014/...)
    splits.json                  {"train": [ids], "val": [ids], "test": [ids]}, every image in exactly one split

Reading and checking these files is shared by the lesson (`labutils.coco`, notebook 01) and by the code that
writes them (`labutils.infra.mscoco`, `labutils.infra.synthetic`), so it lives here, below both.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

SPLITS = ("train", "val", "test")


class DatasetUnavailableError(FileNotFoundError):
    """The dataset (or a piece of it) is not on disk and cannot be fetched now."""


class SplitLeakageError(ValueError):
    """An image appears in two splits, so evaluation would test on training images."""


class SplitError(ValueError):
    """The split file is malformed or does not match the annotations."""


def _annotation_path(cfg_or_path, kind: str) -> Path:
    if hasattr(cfg_or_path, "dataset_dir"):
        return Path(cfg_or_path.dataset_dir) / "annotations" / f"{kind}.json"
    path = Path(cfg_or_path)
    return path / "annotations" / f"{kind}.json" if path.is_dir() else path


def _load_coco(path: Path, verbose: bool):
    from pycocotools.coco import COCO

    if not path.is_file():
        raise DatasetUnavailableError(
            f"No annotation file at {path}; run `labutils.course.ensure_dataset(cfg)` (or notebook 00) first.")
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    try:
        with quiet:
            return COCO(str(path))
    except (json.JSONDecodeError, UnicodeDecodeError, AssertionError):
        raise ValueError(f"{path} is not a COCO JSON file (perhaps a cut-off download); delete it and run "
                         "`labutils.course.ensure_dataset(cfg)` again.") from None


def load_captions(cfg_or_path, verbose: bool = False):
    """Caption annotations as a `pycocotools.coco.COCO` (from a config, a dataset folder or a JSON file)."""
    return _load_coco(_annotation_path(cfg_or_path, "captions"), verbose)


def load_instances(cfg_or_path, verbose: bool = False):
    """Instance annotations (boxes, polygons, categories) as a `pycocotools.coco.COCO`."""
    return _load_coco(_annotation_path(cfg_or_path, "instances"), verbose)


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
            f"No split file at {path}; run `labutils.course.ensure_dataset(cfg)` (or notebook 00) first.")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise SplitError(f"{path} is not valid JSON; delete it and run `labutils.course.ensure_dataset(cfg)` "
                         "again.") from None
    return validate_splits(raw)


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
