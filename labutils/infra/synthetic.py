"""The embedded offline dataset: rendered scenes of coloured shapes in MS-COCO format, byte-identical per seed.

Each image holds one or two *groups* of identical objects (same colour and shape), 1-4 objects in all. Captions
name every group with its count, colour and shape and, for two groups, where one lies relative to the other
(left/right or above/below); a lone object is placed on the left or right and the caption says which. So a
captioner must learn colour, shape, count and position, and the instance boxes tell later notebooks where
attention should look when the model says "red" or "circles".

Generation is one writer at a time (`infra.files.folder_lock` on the dataset folder) and replaces a folder only
when the lab made it (its ownership marker, or the `generator.json` an older labutils wrote): a folder holding
another dataset stops it with one sentence. The new dataset is written beside the old one and swapped in at the
end, so an interruption or a full disk (`infra.files.DiskFullError`) leaves the previous data as it was.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .files import (
    check_replaceable,
    disk_full_as_error,
    folder_lock,
    made_by_lab,
    mark_made_by_lab,
    remove_lab_folder,
)

GENERATOR_VERSION = 1
DATASET_KIND = "synthetic-dataset"  # the ownership marker's kind
PARTIAL_KIND = "synthetic-dataset-partial"  # a generation in progress (removed if its writer was killed)
WHAT = "the synthetic dataset"

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 170),
    "orange": (245, 130, 20),
}
SHAPES = {"circle": "round", "square": "polygon", "triangle": "polygon"}  # shape -> COCO supercategory
COUNT_WORDS = {1: "a", 2: "two", 3: "three", 4: "four"}
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles"}


@dataclass(frozen=True)
class SceneObject:
    """One rendered shape: its colour, shape, centre, radius (pixels) and rotation (degrees)."""

    colour: str
    shape: str
    cx: float
    cy: float
    radius: float
    angle: float


def noun_phrase(count: int, colour: str, shape: str) -> str:
    """English noun phrase for a group, e.g. `a red circle`, `two blue squares`."""
    noun = shape if count == 1 else PLURALS[shape]
    article = "an" if count == 1 and colour[0] in "aeiou" else COUNT_WORDS[count]
    return f"{article} {colour} {noun}"


def _be(count: int) -> str:
    return "is" if count == 1 else "are"


def describe_scene(groups: list[tuple[int, str, str]], layout: str) -> list[str]:
    """Five paraphrased captions for a scene.

    `groups` lists (count, colour, shape) in reading order; `layout` is `left`/`right` for a lone object,
    `many` for one group of several, and `horizontal`/`vertical` for two groups (first group left of / above
    the second).
    """
    if len(groups) == 1:
        count, colour, shape = groups[0]
        np_ = noun_phrase(count, colour, shape)
        if count == 1:
            side = layout
            return [
                f"{np_} on the {side}",
                f"there is {np_} on the {side}",
                f"a picture of {np_} on the {side} side",
                f"an image showing a single {colour} {shape} on the {side}",
                f"on the {side} is {np_}",
            ]
        plural = PLURALS[shape]
        return [
            np_,
            f"there are {np_}",
            f"a picture of {np_}",
            f"an image showing {np_}",
            f"{COUNT_WORDS[count]} {plural} , all of them {colour}",
        ]
    (ca, cola, sha), (cb, colb, shb) = groups
    a, b = noun_phrase(ca, cola, sha), noun_phrase(cb, colb, shb)
    if layout == "horizontal":
        rel, inv, side_a, side_b = "to the left of", "to the right of", "on the left", "on the right"
    else:
        rel, inv, side_a, side_b = "above", "below", "at the top", "at the bottom"
    return [
        f"{a} {rel} {b}",
        f"{b} {inv} {a}",
        f"there {_be(ca)} {a} {side_a} and {b} {side_b}",
        f"an image showing {a} {rel} {b}",
        f"{side_a} {_be(ca)} {a} , {side_b} {_be(cb)} {b}",
    ]


def _place(rng: np.random.Generator, count: int, box: tuple[float, float, float, float], size: int,
           placed: list[tuple[float, float, float]]) -> list[tuple[float, float, float]]:
    """Non-overlapping (cx, cy, r) for `count` objects inside `box` = (x0, y0, x1, y1) in pixels."""
    x0, y0, x1, y1 = box
    out: list[tuple[float, float, float]] = []
    for _ in range(count):
        for _attempt in range(200):
            r = rng.uniform(0.075, 0.12) * size
            if x1 - x0 < 2 * r + 2 or y1 - y0 < 2 * r + 2:
                continue
            cx, cy = rng.uniform(x0 + r + 1, x1 - r - 1), rng.uniform(y0 + r + 1, y1 - r - 1)
            if all(math.hypot(cx - px, cy - py) > r + pr + 3 for px, py, pr in placed + out):
                out.append((cx, cy, r))
                break
        else:  # could not fit: caller retries the whole scene
            raise RuntimeError("no room")
    return out


def sample_scene(rng: np.random.Generator, size: int) -> tuple[list[SceneObject], list[str]]:
    """Draw a random scene layout and its five captions."""
    colours, shapes = list(COLOURS), list(SHAPES)
    while True:
        try:
            if rng.random() < 0.4:  # one group
                count = int(rng.choice([1, 2, 3, 4], p=[0.4, 0.25, 0.2, 0.15]))
                colour, shape = str(rng.choice(colours)), str(rng.choice(shapes))
                if count == 1:
                    layout = "left" if rng.random() < 0.5 else "right"
                    box = (0, 0, 0.42 * size, size) if layout == "left" else (0.58 * size, 0, size, size)
                else:
                    layout, box = "many", (0, 0, size, size)
                spots = _place(rng, count, box, size, [])
                groups = [(count, colour, shape)]
                objects = [SceneObject(colour, shape, *s, float(rng.uniform(-20, 20))) for s in spots]
            else:  # two groups, first left of / above the second
                ca = int(rng.integers(1, 4))
                cb = int(rng.integers(1, 5 - ca))
                kind_a = (str(rng.choice(colours)), str(rng.choice(shapes)))
                kind_b = kind_a
                while kind_b == kind_a:
                    kind_b = (str(rng.choice(colours)), str(rng.choice(shapes)))
                layout = "horizontal" if rng.random() < 0.5 else "vertical"
                gap = 0.04 * size
                if layout == "horizontal":
                    box_a, box_b = (0, 0, size / 2 - gap, size), (size / 2 + gap, 0, size, size)
                else:
                    box_a, box_b = (0, 0, size, size / 2 - gap), (0, size / 2 + gap, size, size)
                spots_a = _place(rng, ca, box_a, size, [])
                spots_b = _place(rng, cb, box_b, size, spots_a)
                groups = [(ca, *kind_a), (cb, *kind_b)]
                objects = [SceneObject(*kind_a, *s, float(rng.uniform(-20, 20))) for s in spots_a]
                objects += [SceneObject(*kind_b, *s, float(rng.uniform(-20, 20))) for s in spots_b]
            return objects, describe_scene(groups, layout)
        except RuntimeError:
            continue


def polygon(obj: SceneObject) -> list[tuple[float, float]]:
    """Outline of an object as (x, y) vertices; circles use 24 vertices."""
    n, phase = {"circle": (24, 0.0), "square": (4, 45.0), "triangle": (3, -90.0)}[obj.shape]
    # Squares and triangles are drawn with the radius of their circumscribed circle shrunk so that all shapes
    # of one radius look about the same size.
    scale = {"circle": 1.0, "square": 1.2, "triangle": 1.25}[obj.shape]
    return [
        (obj.cx + scale * obj.radius * math.cos(math.radians(phase + obj.angle + 360 * k / n)),
         obj.cy + scale * obj.radius * math.sin(math.radians(phase + obj.angle + 360 * k / n)))
        for k in range(n)
    ]


def render(objects: list[SceneObject], size: int, rng: np.random.Generator) -> Image.Image:
    """Render objects on a lightly textured background."""
    base = rng.integers(190, 246, size=3)
    canvas = np.empty((size, size, 3), dtype=np.float32)
    canvas[:] = base
    canvas += rng.normal(0, 6, size=(size, size, 3))
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for obj in objects:
        jitter = rng.integers(-15, 16, size=3)
        fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[obj.colour], jitter, strict=True))
        if obj.shape == "circle":
            r = obj.radius
            draw.ellipse((obj.cx - r, obj.cy - r, obj.cx + r, obj.cy + r), fill=fill)
        else:
            draw.polygon(polygon(obj), fill=fill)
    return image


def _bbox(points: list[tuple[float, float]], size: int) -> list[float]:
    xs = [min(max(x, 0.0), size) for x, _ in points]
    ys = [min(max(y, 0.0), size) for _, y in points]
    return [round(min(xs), 2), round(min(ys), 2), round(max(xs) - min(xs), 2), round(max(ys) - min(ys), 2)]


def _polygon_area(points: list[tuple[float, float]]) -> float:
    return 0.5 * abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1], strict=True)))


def _params(n_images: int, image_size: int, seed: int, split_fractions) -> dict:
    return {"version": GENERATOR_VERSION, "n_images": n_images, "image_size": image_size, "seed": seed,
            "split_fractions": list(split_fractions)}


def generate(out_dir: str | Path, n_images: int = 3000, image_size: int = 128, seed: int = 0,
             split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), progress: bool = True) -> Path:
    """Write the synthetic COCO-format dataset to `out_dir` (atomically) and return the folder.

    Layout: `images/*.jpg`, `annotations/captions.json`, `annotations/instances.json`, `splits.json`,
    `generator.json` (the parameters, used to skip regeneration). An existing `out_dir` is replaced only if the
    lab made it (else `infra.files.NotLabFolderError`); a full disk raises `infra.files.DiskFullError` and keeps
    the previous dataset.
    """
    out_dir = Path(out_dir)
    with folder_lock(out_dir, WHAT):
        return _generate(out_dir, _params(n_images, image_size, seed, split_fractions), progress)


def _generate(out_dir: Path, params: dict, progress: bool) -> Path:
    """`generate` with the folder's lock held."""
    _check_ours(out_dir)  # before minutes of rendering, not after
    _remove_abandoned(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        with disk_full_as_error(out_dir.parent, WHAT):
            mark_made_by_lab(tmp, PARTIAL_KIND)
            _write_dataset(tmp, params, progress)
            mark_made_by_lab(tmp, DATASET_KIND, **params)
            _swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _is_legacy(folder: Path) -> bool:
    """A dataset an older labutils generated: no marker, but the lab's own generator.json."""
    try:
        params = json.loads((folder / "generator.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(params, dict) and set(params) == {"version", "n_images", "image_size", "seed", "split_fractions"}


def _check_ours(out_dir: Path) -> None:
    """Stop with one sentence unless `out_dir` is missing, empty or a dataset the lab generated."""
    if _is_legacy(out_dir) and not made_by_lab(out_dir, DATASET_KIND):
        mark_made_by_lab(out_dir, DATASET_KIND, **json.loads((out_dir / "generator.json").read_text()))
    check_replaceable(out_dir, DATASET_KIND, WHAT)


def _remove_abandoned(out_dir: Path) -> None:
    """Delete half-written generations of `out_dir` whose writer was killed (we hold the lock: none is live)."""
    for leftover in out_dir.parent.glob(f".{out_dir.name}-*"):
        if leftover.is_dir() and made_by_lab(leftover, PARTIAL_KIND):
            shutil.rmtree(leftover, ignore_errors=True)


def _swap_in(tmp: Path, out_dir: Path) -> None:
    """Put the finished `tmp` in place of `out_dir`; the old dataset is deleted only once the new one is there."""
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    mark_made_by_lab(old, PARTIAL_KIND)  # if we are killed in between, the next run removes it
    os.replace(out_dir, old / "previous")
    os.replace(tmp, out_dir)
    remove_lab_folder(old, PARTIAL_KIND, WHAT)


def _write_dataset(tmp: Path, params: dict, progress: bool) -> None:
    """Render the images and write the annotations, split and generator.json into the empty folder `tmp`."""
    from tqdm.auto import tqdm

    n_images, image_size, seed = params["n_images"], params["image_size"], params["seed"]
    split_fractions = params["split_fractions"]
    (tmp / "images").mkdir()
    (tmp / "annotations").mkdir()
    rng = np.random.default_rng(seed)
    categories = [{"id": i + 1, "name": shape, "supercategory": sup} for i, (shape, sup) in enumerate(SHAPES.items())]
    cat_id = {c["name"]: c["id"] for c in categories}
    images, captions, instances = [], [], []
    for image_id in tqdm(range(1, n_images + 1), desc="rendering scenes", disable=not progress):
        objects, texts = sample_scene(rng, image_size)
        file_name = f"synthetic_{image_id:06d}.jpg"
        buffer = io.BytesIO()
        render(objects, image_size, rng).save(buffer, format="JPEG", quality=92)
        (tmp / "images" / file_name).write_bytes(buffer.getvalue())
        images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size,
                       "license": 1, "coco_url": "", "date_captured": "2026-01-01 00:00:00"})
        for text in texts:
            captions.append({"id": len(captions) + 1, "image_id": image_id, "caption": text})
        for obj in objects:
            points = polygon(obj)
            instances.append({
                "id": len(instances) + 1, "image_id": image_id, "category_id": cat_id[obj.shape],
                "bbox": _bbox(points, image_size),
                "segmentation": [[round(v, 2) for xy in points for v in xy]],
                "area": round(_polygon_area(points), 2), "iscrowd": 0,
                "attributes": {"color": obj.colour},
            })
    info = {"description": "labutils synthetic shapes (COCO format)", "version": str(GENERATOR_VERSION),
            "year": 2026, "contributor": "labutils.infra.synthetic", "date_created": "2026-01-01"}
    licenses = [{"id": 1, "name": "CC0 1.0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}]
    _write_json(tmp / "annotations" / "captions.json",
                {"info": info, "licenses": licenses, "images": images, "annotations": captions})
    _write_json(tmp / "annotations" / "instances.json",
                {"info": info, "licenses": licenses, "images": images, "annotations": instances,
                 "categories": categories})
    order = np.random.default_rng(seed + 1).permutation(n_images) + 1
    n_train = int(round(split_fractions[0] * n_images))
    n_val = int(round(split_fractions[1] * n_images))
    splits = {"train": sorted(order[:n_train].tolist()), "val": sorted(order[n_train:n_train + n_val].tolist()),
              "test": sorted(order[n_train + n_val:].tolist())}
    _write_json(tmp / "splits.json", splits)
    _write_json(tmp / "generator.json", params)


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, separators=(",", ":")))


def is_generated(out_dir: str | Path, n_images: int, image_size: int, seed: int,
                 split_fractions=(0.8, 0.1, 0.1)) -> bool:
    """True when `out_dir` already holds a complete dataset made with these parameters."""
    marker = Path(out_dir) / "generator.json"
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()) == _params(n_images, image_size, seed, split_fractions)
    except ValueError:
        return False


def ensure_synthetic(cfg, progress: bool = True) -> Path:
    """Generate the profile's synthetic dataset unless an identical one is already on disk; return its folder.

    A folder at `cfg.dataset_dir` that holds data the lab did not generate is never replaced: it stops with
    `infra.files.NotLabFolderError`, one sentence naming the folder.
    """
    args = dict(n_images=cfg.n_images, image_size=cfg.image_size, seed=cfg.seed,
                split_fractions=tuple(cfg.split_fractions))
    folder = Path(cfg.dataset_dir)
    if is_generated(folder, **args):
        return cfg.dataset_dir
    with folder_lock(folder, WHAT):
        if not is_generated(folder, **args):  # another process may have generated it while this one waited
            _generate(folder, _params(**args), progress)
    return cfg.dataset_dir


def fingerprint(folder: str | Path) -> str:
    """SHA-256 over every file's relative path and bytes, to show two generations are byte-identical."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()
