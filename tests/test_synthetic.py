"""The embedded dataset: deterministic, valid COCO, captions that match the rendered scenes."""

import json
import re

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from waiting import start_and_see_it_wait

from labutils.infra import files, synthetic


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
    assert [p.name for p in tmp_path.iterdir()] == [".ds.lock"]  # the lock file stays, empty of data


def test_interrupted_regeneration_keeps_the_previous_dataset(tmp_path, monkeypatch):
    folder = synthetic.generate(tmp_path / "ds", n_images=6, progress=False)
    before = synthetic.fingerprint(folder)
    real_render, calls = synthetic.render, {"n": 0}

    def failing_render(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_render(*args, **kwargs)

    monkeypatch.setattr(synthetic, "render", failing_render)
    with pytest.raises(KeyboardInterrupt):
        synthetic.generate(folder, n_images=8, progress=False)
    assert synthetic.fingerprint(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ds.lock", "ds"]


def test_a_killed_generation_is_cleaned_up_by_the_next_one(tmp_path):
    folder = synthetic.generate(tmp_path / "ds", n_images=4, progress=False)
    # what a SIGKILL mid-generation leaves: a marked temporary folder beside the dataset
    abandoned = tmp_path / ".ds-abc123"
    (abandoned / "images").mkdir(parents=True)
    files.mark_made_by_lab(abandoned, synthetic.PARTIAL_KIND)
    stranger = tmp_path / ".ds-notes"  # a hidden folder the lab did not make is left alone
    stranger.mkdir()
    synthetic.generate(folder, n_images=5, progress=False)
    assert not abandoned.exists() and stranger.is_dir()
    assert len(list((folder / "images").iterdir())) == 5


def foreign_dataset(folder):
    """A COCO-format dataset in the lab's layout that the lab did not write (e.g. photos converted by hand)."""
    (folder / "images").mkdir(parents=True)
    (folder / "annotations").mkdir()
    Image.new("RGB", (64, 48), "green").save(folder / "images" / "photo_1.jpg")
    (folder / "annotations" / "captions.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "photo_1.jpg", "width": 64, "height": 48}],
        "annotations": [{"id": 1, "image_id": 1, "caption": "a green field"}]}))
    (folder / "splits.json").write_text(json.dumps({"train": [1], "val": [], "test": []}))
    return synthetic.fingerprint(folder)


def test_a_dataset_the_lab_did_not_write_is_never_replaced(tmp_path):
    from labutils import get_config
    from labutils.infra.files import NotLabFolderError

    cfg = get_config("quick", data_root=tmp_path, n_images=6)
    before = foreign_dataset(cfg.dataset_dir)
    with pytest.raises(NotLabFolderError) as err:
        synthetic.ensure_synthetic(cfg, progress=False)
    message = str(err.value)
    assert message.startswith(f"{cfg.dataset_dir} holds files the lab did not write")
    assert message.count(". ") == 0 and message.endswith(".")
    assert synthetic.fingerprint(cfg.dataset_dir) == before
    with pytest.raises(NotLabFolderError):
        synthetic.generate(cfg.dataset_dir, n_images=6, progress=False)
    assert synthetic.fingerprint(cfg.dataset_dir) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".synthetic-")] == []


def test_a_dataset_from_an_older_labutils_is_recognised_by_its_generator_json(tmp_path):
    from labutils import get_config

    cfg = get_config("quick", data_root=tmp_path, n_images=6)
    synthetic.ensure_synthetic(cfg, progress=False)
    (cfg.dataset_dir / files.MARKER_FILE).unlink()  # as an older labutils left it: no ownership marker
    synthetic.ensure_synthetic(cfg.replace(n_images=7), progress=False)  # other parameters: replaced
    assert len(list((cfg.dataset_dir / "images").iterdir())) == 7
    assert files.made_by_lab(cfg.dataset_dir, synthetic.DATASET_KIND)


def test_a_second_writer_waits_for_the_first_and_then_reuses_its_dataset(tmp_path, capsys):

    from labutils import get_config

    cfg = get_config("quick", data_root=tmp_path, n_images=6)
    result = {}
    with files.folder_lock(cfg.dataset_dir, "the synthetic dataset"):  # the first writer (flock: as another process)
        worker = start_and_see_it_wait(lambda: result.update(path=synthetic.ensure_synthetic(cfg, progress=False)),
                                       capsys, "ensure_synthetic")
        # what the first writer does meanwhile: generate the same dataset
        synthetic._generate(cfg.dataset_dir, synthetic._params(6, cfg.image_size, cfg.seed, cfg.split_fractions),
                            progress=False)
        made = (cfg.dataset_dir / "generator.json").stat().st_mtime_ns
    worker.join(30)
    assert result["path"] == cfg.dataset_dir
    assert (cfg.dataset_dir / "generator.json").stat().st_mtime_ns == made  # checked again after waiting: reused
