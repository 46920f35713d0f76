"""Does the model look at what it names? Attention mass inside the boxes of the objects a word refers to.

On the synthetic dataset every colour and shape word in a caption points at known objects (the instance boxes).
When the model emits "red" at step t, its attention map alpha_t (a distribution over the encoder's grid cells)
should put its mass on the red objects. We spread each cell's weight evenly over the pixels the cell covers and
sum the weight that falls inside the union of the referred boxes. A model that ignores the image (uniform
attention) scores the boxes' share of the image area; that is the baseline to beat.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .infra.synthetic import COLOURS, PLURALS, SHAPES

SINGULAR = {plural: shape for shape, plural in PLURALS.items()}


def referred_objects(word: str, objects: list[dict]) -> list[dict]:
    """The objects (dicts with `colour`, `shape`, `bbox`) that a colour or shape word refers to."""
    if word in COLOURS:
        return [o for o in objects if o["colour"] == word]
    shape = SINGULAR.get(word, word)
    if shape in SHAPES:
        return [o for o in objects if o["shape"] == shape]
    return []


def box_mask(boxes: list[list[float]], height: int, width: int) -> np.ndarray:
    """Boolean [H, W] mask of the union of COCO boxes [x, y, w, h]."""
    mask = np.zeros((height, width), dtype=bool)
    for x, y, w, h in boxes:
        x0, y0 = max(int(np.floor(x)), 0), max(int(np.floor(y)), 0)
        x1, y1 = min(int(np.ceil(x + w)), width), min(int(np.ceil(y + h)), height)
        mask[y0:y1, x0:x1] = True
    return mask


def cell_coverage(mask: np.ndarray, grid_size: int) -> np.ndarray:
    """Fraction of each grid cell's pixels inside the mask, as a flat [grid*grid] array (row-major like the encoder)."""
    height, width = mask.shape
    rows = np.array_split(np.arange(height), grid_size)
    cols = np.array_split(np.arange(width), grid_size)
    return np.array([mask[np.ix_(r, c)].mean() for r in rows for c in cols])


def mass_inside(alpha: np.ndarray, mask: np.ndarray, grid_size: int) -> float:
    """Share of one attention map's mass (flat [grid*grid], sums to 1) that falls inside the mask."""
    alpha = np.asarray(alpha, dtype=np.float64).reshape(-1)
    return float((alpha * cell_coverage(mask, grid_size)).sum() / max(alpha.sum(), 1e-12))


def objects_from_instances(coco_instances, image_id: int) -> list[dict]:
    """The image's objects as dicts (colour, shape, bbox) from a synthetic-dataset instances COCO object."""
    names = {c["id"]: c["name"] for c in coco_instances.loadCats(coco_instances.getCatIds())}
    anns = coco_instances.loadAnns(coco_instances.getAnnIds(imgIds=image_id))
    return [{"colour": a["attributes"]["color"], "shape": names[a["category_id"]], "bbox": a["bbox"]} for a in anns]


@dataclass
class GroundingResult:
    """Mean attention mass inside the referred boxes for the model and for uniform attention, plus per-word rows."""

    model: float
    uniform: float
    n_words: int
    per_word: pd.DataFrame

    def __str__(self) -> str:
        return (f"attention inside the named objects' boxes: model {self.model:.1%} vs uniform {self.uniform:.1%} "
                f"over {self.n_words} colour/shape words")


def grounding_score(captions: dict[int, tuple[list[str], np.ndarray]], coco_instances,
                    grid_size: int) -> GroundingResult:
    """Score attention grounding over images.

    `captions` maps image id -> (words, alphas [len(words), grid*grid]) where alphas[t] is the attention used to
    emit words[t]. Words that name nothing in the image (a wrong colour, say) are skipped: grounding asks where the
    model looks when it is right about what is there.
    """
    rows = []
    for image_id, (words, alphas) in captions.items():
        info = coco_instances.loadImgs(image_id)[0]
        objects = objects_from_instances(coco_instances, image_id)
        alphas = np.asarray(alphas)
        for t, word in enumerate(words[: len(alphas)]):
            targets = referred_objects(word, objects)
            if not targets:
                continue
            mask = box_mask([o["bbox"] for o in targets], info["height"], info["width"])
            uniform = np.full(grid_size * grid_size, 1.0 / (grid_size * grid_size))
            rows.append({"image_id": image_id, "step": t, "word": word,
                         "model": mass_inside(alphas[t], mask, grid_size),
                         "uniform": mass_inside(uniform, mask, grid_size),
                         "box_area_share": float(mask.mean())})
    table = pd.DataFrame(rows, columns=["image_id", "step", "word", "model", "uniform", "box_area_share"])
    if table.empty:
        return GroundingResult(float("nan"), float("nan"), 0, table)
    return GroundingResult(float(table["model"].mean()), float(table["uniform"].mean()), len(table), table)
