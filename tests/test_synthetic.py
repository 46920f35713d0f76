"""The embedded dataset: deterministic, valid COCO, captions that match the rendered scenes."""

import json
import re

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from labutils import synthetic


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return synthetic.generate(tmp_path_factory.mktemp("syn") / "ds", n_images=50, seed=3, progress=False)


def test_same_seed_gives_byte_identical_files(small, tmp_path):
    again = synthetic.generate(tmp_path / "again", n_images=50, seed=3, progress=False)
    assert synthetic.fingerprint(again) == synthetic.fingerprint(small)
    other = synthetic.generate(tmp_path / "other", n_images=50, seed=4, progress=False)
    assert synthetic.fingerprint(other) != synthetic.fingerprint(small)


def test_layout_and_split_cover_every_image_once(small):
    splits = json.loads((small / "splits.json").read_text())
    ids = splits["train"] + splits["val"] + splits["test"]
    assert sorted(ids) == list(range(1, 51))
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == (40, 5, 5)
    assert len(list((small / "images").glob("*.jpg"))) == 50


def test_pycocotools_reads_captions_and_instances(small, capsys):
    caps = COCO(str(small / "annotations" / "captions.json"))
    inst = COCO(str(small / "annotations" / "instances.json"))
    assert all(len(caps.getAnnIds(imgIds=i)) == 5 for i in caps.getImgIds())
    cats = inst.loadCats(inst.getCatIds())
    assert {c["name"] for c in cats} == {"circle", "square", "triangle"}
    assert {c["supercategory"] for c in cats} == {"round", "polygon"}
    for ann in inst.loadAnns(inst.getAnnIds()):
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 128 and y + h <= 128 and w > 5 and h > 5
        assert len(ann["segmentation"][0]) >= 6 and ann["area"] > 0
        assert ann["attributes"]["color"] in synthetic.COLOURS
    counts = [len(inst.getAnnIds(imgIds=i)) for i in inst.getImgIds()]
    assert min(counts) >= 1 and max(counts) <= 4


def test_captions_name_the_objects_in_the_image(small):
    caps = COCO(str(small / "annotations" / "captions.json"))
    inst = COCO(str(small / "annotations" / "instances.json"))
    names = {c["id"]: c["name"] for c in inst.loadCats(inst.getCatIds())}
    for image_id in caps.getImgIds():
        anns = inst.loadAnns(inst.getAnnIds(imgIds=image_id))
        kinds = {(a["attributes"]["color"], names[a["category_id"]]) for a in anns}
        first = caps.loadAnns(caps.getAnnIds(imgIds=image_id))[0]["caption"]
        for colour, shape in kinds:
            assert re.search(rf"\b{colour} {shape}", first), (first, kinds)
        mentioned = {w for w in first.split() if w in synthetic.COLOURS}
        assert mentioned == {c for c, _ in kinds}


def test_caption_relation_matches_object_positions(small):
    caps = COCO(str(small / "annotations" / "captions.json"))
    inst = COCO(str(small / "annotations" / "instances.json"))
    checked = 0
    for image_id in caps.getImgIds():
        first = caps.loadAnns(caps.getAnnIds(imgIds=image_id))[0]["caption"]
        anns = inst.loadAnns(inst.getAnnIds(imgIds=image_id))
        match = re.match(r"(?:an?|two|three) (\w+) \w+ (to the left of|above) (?:an?|two|three) (\w+)", first)
        if not match:
            continue
        colour_a, relation, colour_b = match.groups()
        centre = 0 if relation == "to the left of" else 1
        def centres(colour, axis=centre, objects=anns):
            return [a["bbox"][axis] + a["bbox"][axis + 2] / 2 for a in objects if a["attributes"]["color"] == colour]

        if colour_a != colour_b:
            assert max(centres(colour_a)) < min(centres(colour_b)), first
            checked += 1
    assert checked > 5


def test_noun_phrase_grammar():
    assert synthetic.noun_phrase(1, "orange", "circle") == "an orange circle"
    assert synthetic.noun_phrase(1, "red", "square") == "a red square"
    assert synthetic.noun_phrase(3, "blue", "triangle") == "three blue triangles"
    caps = synthetic.describe_scene([(1, "red", "circle"), (2, "blue", "square")], "vertical")
    assert caps[0] == "a red circle above two blue squares"
    assert caps[1] == "two blue squares below a red circle"
    assert len(set(caps)) == 5


def test_object_colour_is_rendered_where_the_box_is(small):
    inst = COCO(str(small / "annotations" / "instances.json"))
    ann = inst.loadAnns(inst.getAnnIds(imgIds=1))[0]
    image = np.asarray(Image.open(small / "images" / "synthetic_000001.jpg").convert("RGB")).astype(int)
    x, y, w, h = ann["bbox"]
    centre = image[int(y + h / 2), int(x + w / 2)]
    target = np.array(synthetic.COLOURS[ann["attributes"]["color"]])
    assert np.abs(centre - target).max() < 50


def test_ensure_synthetic_skips_existing_and_regenerates_on_change(tmp_path):
    from labutils import get_config

    cfg = get_config("quick", data_root=tmp_path, n_images=12)
    folder = synthetic.ensure_synthetic(cfg, progress=False)
    marker = (folder / "generator.json").stat().st_mtime_ns
    synthetic.ensure_synthetic(cfg, progress=False)
    assert (folder / "generator.json").stat().st_mtime_ns == marker
    synthetic.ensure_synthetic(cfg.replace(n_images=14), progress=False)
    assert len(list((folder / "images").iterdir())) == 14


def test_interrupted_generation_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_render = synthetic.render

    def failing_render(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_render(*args, **kwargs)

    monkeypatch.setattr(synthetic, "render", failing_render)
    with pytest.raises(KeyboardInterrupt):
        synthetic.generate(tmp_path / "ds", n_images=10, progress=False)
    assert not (tmp_path / "ds").exists()
    assert list(tmp_path.iterdir()) == []
