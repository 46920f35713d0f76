"""Notebook 01's lesson, the COCO API: load captions and instances with pycocotools, tabulate the captions,
load and check the train/val/test split, and show an image with its annotations.

The files themselves (layout, loading, split checks) are `labutils.infra.coco_format`, shared with the code that
writes them; getting a dataset onto disk is `labutils.infra.datasets.ensure_dataset`.
"""

from __future__ import annotations

import contextlib
import io
import textwrap
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from .config import get_config
from .infra.coco_format import (  # noqa: F401  (the lesson's API: notebook 01 calls these as coco.<name>)
    SPLITS,
    DatasetUnavailableError,
    SplitError,
    SplitLeakageError,
    load_captions,
    load_instances,
    load_splits,
    missing_images,
    validate_splits,
)
from .infra.images import to_rgb
from .infra.synthetic import ensure_synthetic


def objects_config(cfg):
    """The config whose dataset has object annotations: `cfg` itself, or for a caption-only dataset (Flickr8k) the
    shapes of the quick profile, generated in seconds, so the object half of the COCO API still has objects."""
    if cfg.instances_file.is_file() or not cfg.captions_file.is_file():
        return cfg  # has objects, or is not prepared yet: load_instances will say what to do
    shapes = get_config("quick").replace(data_root=cfg.data_root, build_dir=cfg.build_dir)
    ensure_synthetic(shapes, progress=False)
    print(f"{cfg.dataset_name} has captions only (no object annotations), so the object sections use the "
          f"synthetic shapes under {shapes.dataset_dir}.")
    return shapes


def load_results(coco, results, verbose: bool = False):
    """`coco.loadRes(results)` (a list of {"image_id", "caption"} dicts or a JSON file) without its timing prints."""
    results = str(results) if isinstance(results, Path) else results  # loadRes treats anything but str as a list
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        return coco.loadRes(results)


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


def check_split_against(coco, splits: Mapping[str, Iterable[int]]) -> list[int]:
    """Raise if a split names an image the annotations lack; return the annotated ids that are in no split."""
    assigned = set()
    for name, ids in splits.items():
        ids = set(ids)
        absent = sorted(ids - set(coco.imgs))
        if absent:
            raise SplitError(f"{len(absent)} image id(s) of split {name!r} (e.g. {absent[0]}) are not in the "
                             "annotations; the split file belongs to another dataset, so regenerate it with "
                             "`labutils.course.ensure_dataset(cfg)`.")
        assigned |= ids
    return sorted(set(coco.imgs) - assigned)


def show_image_with_captions(coco_caps, image_id: int, image_dir: str | Path, coco_instances=None, ax=None,
                             draw_bbox: bool = True, wrap: int = 48):
    """Draw one image with its captions as the title and, given instances, pycocotools' `showAnns` overlay."""
    import matplotlib.pyplot as plt
    from PIL import Image

    if image_id not in coco_caps.imgs:
        raise KeyError(f"Image id {image_id} is not in the caption annotations; pick one from coco.getImgIds().")
    path = Path(image_dir) / coco_caps.imgs[image_id]["file_name"]
    if not path.is_file():
        raise DatasetUnavailableError(f"Image file {path} is missing; run `labutils.course.ensure_dataset(cfg)` "
                                      "(or notebook 00) and check that image_dir is cfg.image_dir.")
    with Image.open(path) as img:  # stored pixels, no EXIF rotation: COCO's boxes are in these coordinates
        pixels = np.asarray(to_rgb(img))
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
