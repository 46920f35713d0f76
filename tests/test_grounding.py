"""Grounding: attention mass inside the referred objects' boxes."""

import numpy as np
import pytest
from pycocotools.coco import COCO

from labutils import grounding


def test_box_mask_and_cell_coverage():
    mask = grounding.box_mask([[0, 0, 64, 64]], 128, 128)
    assert mask.sum() == 64 * 64
    cover = grounding.cell_coverage(mask, 2)
    assert cover.tolist() == [1.0, 0.0, 0.0, 0.0]
    cover4 = grounding.cell_coverage(grounding.box_mask([[16, 0, 32, 32]], 128, 128), 4)
    assert cover4[0] == pytest.approx(0.5) and cover4[1] == pytest.approx(0.5) and cover4[4:].sum() == 0


def test_mass_inside_peaked_vs_uniform():
    mask = grounding.box_mask([[0, 0, 32, 32]], 128, 128)  # exactly cell 0 of a 4x4 grid
    peaked = np.zeros(16)
    peaked[0] = 1.0
    assert grounding.mass_inside(peaked, mask, 4) == pytest.approx(1.0)
    assert grounding.mass_inside(np.full(16, 1 / 16), mask, 4) == pytest.approx(1 / 16)
    away = np.zeros(16)
    away[15] = 1.0
    assert grounding.mass_inside(away, mask, 4) == 0.0


def test_referred_objects_by_colour_singular_and_plural():
    objects = [{"colour": "red", "shape": "circle", "bbox": [0, 0, 1, 1]},
               {"colour": "blue", "shape": "circle", "bbox": [5, 5, 1, 1]},
               {"colour": "red", "shape": "square", "bbox": [9, 9, 1, 1]}]
    assert len(grounding.referred_objects("red", objects)) == 2
    assert len(grounding.referred_objects("circles", objects)) == 2
    assert len(grounding.referred_objects("square", objects)) == 1
    assert grounding.referred_objects("above", objects) == []
    assert grounding.referred_objects("green", objects) == []


def test_grounding_score_on_the_synthetic_dataset(tiny_cfg):
    inst = COCO(str(tiny_cfg.instances_file))
    image_id = inst.getImgIds()[0]
    objects = grounding.objects_from_instances(inst, image_id)
    words = [objects[0]["colour"], objects[0]["shape"], "above"]
    mask = grounding.box_mask([o["bbox"] for o in grounding.referred_objects(words[0], objects)], 128, 128)
    oracle = grounding.cell_coverage(mask, 4)
    oracle = oracle / oracle.sum()
    alphas = np.stack([oracle, np.full(16, 1 / 16), np.full(16, 1 / 16)])
    result = grounding.grounding_score({image_id: (words, alphas)}, inst, grid_size=4)
    assert result.n_words == 2  # "above" names no object
    first = result.per_word.iloc[0]
    assert first["model"] > first["uniform"]
    assert result.per_word.iloc[1]["model"] == pytest.approx(result.per_word.iloc[1]["uniform"])
    assert "model" in str(result)


def _instances(objects: list[tuple[str, str, list[float]]], size: int = 128) -> COCO:
    """A synthetic-format instances file in memory: one `size` x `size` image holding (colour, shape, box)."""
    shapes = sorted({shape for _, shape, _ in objects})
    inst = COCO()
    inst.dataset = {
        "images": [{"id": 1, "width": size, "height": size, "file_name": "1.jpg"}],
        "categories": [{"id": n, "name": shape} for n, shape in enumerate(shapes, start=1)],
        "annotations": [{"id": n, "image_id": 1, "category_id": shapes.index(shape) + 1, "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0, "attributes": {"color": colour}}
                        for n, (colour, shape, box) in enumerate(objects, start=1)],
    }
    inst.createIndex()
    return inst


def test_grounding_counts_only_the_named_objects_boxes():
    # A red circle in the top-left cell and a blue square in the bottom-right cell of a 4x4 grid; the model looks
    # only at the blue square. Saying "red" there is looking at the wrong object: 0, whereas the union of every
    # object's boxes would count it as a perfect 1.
    inst = _instances([("red", "circle", [0, 0, 32, 32]), ("blue", "square", [96, 96, 32, 32])])
    at_square = np.zeros(16)
    at_square[15] = 1.0
    result = grounding.grounding_score({1: (["red", "square", "circles"], np.stack([at_square] * 3))}, inst, 4)
    rows = result.per_word.set_index("word")
    assert rows.loc["red", "model"] == 0.0 and rows.loc["square", "model"] == 1.0
    assert rows.loc["circles", "model"] == 0.0  # a plural names the same objects as its singular
    # Uniform attention scores the named box's share of the image (1 cell of 16), not both boxes' (2 of 16).
    assert rows["uniform"].tolist() == pytest.approx([1 / 16] * 3)
    assert rows["box_area_share"].tolist() == pytest.approx([1 / 16] * 3)
    assert result.model == pytest.approx(1 / 3)
