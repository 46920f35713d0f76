"""Tests for labutils.coco: loading, caption table, splits and leakage, drawing, exercise check, MS-COCO 2014 prep."""

import functools
import http.server
import json
import re
import threading
import zipfile
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from loopback import closed_port_url
from PIL import Image
from waiting import start_and_see_it_wait

from labutils import coco, course, get_config
from labutils.infra import datasets, mscoco, resize

matplotlib.use("Agg")


# ---------------------------------------------------------------------------------------------------------------
# Helpers: fake COCO 2014 files, a loopback HTTP server and a closed port



@pytest.fixture
def server(tmp_path):
    """A loopback HTTP server over a temporary folder; yields (folder, base_url)."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _coco_name(folder: str, image_id: int) -> str:
    return f"COCO_{folder}_{image_id:012d}.jpg"


def fake_coco2014(n_train: int, n_val: int, overlapping_ann_ids: bool = True) -> dict[str, dict]:
    """Official-style 2014 annotation dicts (captions/instances × train/val); ids like the real ones, scaled down."""
    cats = [{"id": 1, "name": "cat", "supercategory": "animal"}, {"id": 18, "name": "dog", "supercategory": "animal"}]
    out = {}
    for folder, ids in (("train2014", range(9, 9 + 2 * n_train, 2)), ("val2014", range(42, 42 + 2 * n_val, 2))):
        images = [{"id": i, "file_name": _coco_name(folder, i), "width": 16, "height": 12,
                   "coco_url": f"http://images.cocodataset.org/{folder}/{_coco_name(folder, i)}"} for i in ids]
        # Real 2014 caption ids are unique across the two files; overlapping ones test the renumbering guard.
        start = 1 if overlapping_ann_ids or folder == "train2014" else 10_000
        captions = [{"id": start + 2 * k + j, "image_id": img["id"], "caption": f"A photo number {img['id']} {j}."}
                    for k, img in enumerate(images) for j in range(2)]
        instances = [{"id": start + k, "image_id": img["id"], "category_id": 1 if img["id"] % 3 else 18,
                      "bbox": [1.0, 1.0, 5.0, 4.0], "segmentation": [[1, 1, 6, 1, 6, 5, 1, 5]], "area": 20.0,
                      "iscrowd": 0} for k, img in enumerate(images)]
        out[f"captions_{folder}"] = {"info": {"year": 2014}, "licenses": [], "images": images,
                                     "annotations": captions}
        out[f"instances_{folder}"] = {"info": {"year": 2014}, "licenses": [], "images": images,
                                      "annotations": instances, "categories": cats}
    return out


def write_fake_official_files(root: Path, data: dict[str, dict], images: bool = True) -> dict[str, dict]:
    """Write fake official files in the layout they unzip to (annotations/*.json, images/<folder>/*.jpg)."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for name, obj in data.items():
        (root / "annotations" / f"{name}.json").write_text(json.dumps(obj))
    if images:
        for name, obj in data.items():
            if name.startswith("captions_"):
                for img in obj["images"]:
                    _write_jpeg(root / "images" / name.removeprefix("captions_") / img["file_name"])
    return data


def write_fake_coco2014(root: Path, n_train: int, n_val: int, images: bool = True, **kw) -> dict[str, dict]:
    """Write fake official 2014 files (annotations/, images/train2014, images/val2014)."""
    return write_fake_official_files(root, fake_coco2014(n_train, n_val, **kw), images)


def _write_jpeg(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 12), (200, 30, 30)).save(path, format="JPEG")


def karpathy_json(data: dict[str, dict], n_val: int, n_test: int) -> dict:
    """A dataset_coco.json like Karpathy's: val2014 images split into val/test/restval, train2014 all train."""
    images = []
    for folder in ("train2014", "val2014"):
        for k, img in enumerate(data[f"captions_{folder}"]["images"]):
            split = "train" if folder == "train2014" else "val" if k < n_val else "test" if k < n_val + n_test \
                else "restval"
            images.append({"filepath": folder, "filename": img["file_name"], "cocoid": img["id"], "split": split,
                           "sentences": [{"raw": "a photo", "tokens": ["a", "photo"]}]})
    return {"images": images, "dataset": "coco"}


def coco_cfg(tmp_path):
    """A coco-profile config whose data lives in tmp_path."""
    return get_config("coco", data_root=tmp_path / "data", build_dir=tmp_path / "build")


# ---------------------------------------------------------------------------------------------------------------
# Loading


def test_ensure_dataset_quick_returns_synthetic_folder_without_regenerating(tiny_cfg):
    marker = tiny_cfg.dataset_dir / "annotations" / "captions.json"
    before = marker.stat().st_mtime_ns
    assert course.ensure_dataset(tiny_cfg, progress=False) == tiny_cfg.dataset_dir
    assert marker.stat().st_mtime_ns == before


def test_ensure_dataset_quick_never_replaces_a_dataset_the_lab_did_not_write(tmp_path):
    from labutils.infra import synthetic
    from labutils.infra.files import NotLabFolderError

    cfg = get_config("quick", data_root=tmp_path / "data", n_images=6)
    photos = cfg.dataset_dir / "images"  # real photos with captions, converted by hand to the lab's layout
    photos.mkdir(parents=True)
    (cfg.dataset_dir / "annotations").mkdir()
    Image.new("RGB", (64, 48), "green").save(photos / "1000268201.jpg")
    (cfg.dataset_dir / "annotations" / "captions.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "1000268201.jpg", "width": 64, "height": 48}],
        "annotations": [{"id": 1, "image_id": 1, "caption": "a child in a pink dress"}]}))
    before = synthetic.fingerprint(cfg.dataset_dir)
    with pytest.raises(NotLabFolderError) as err:
        course.ensure_dataset(cfg, progress=False)
    assert str(err.value).startswith(f"{cfg.dataset_dir} holds files the lab did not write, so it will not "
                                     "replace them with the synthetic dataset;")
    assert str(err.value).count(". ") == 0
    assert synthetic.fingerprint(cfg.dataset_dir) == before


def test_ensure_dataset_coco_offline_fails_with_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setattr(mscoco, "COCO_BASE_URL", closed_port_url())
    monkeypatch.setattr(mscoco, "KARPATHY_SPLIT_URL", closed_port_url())
    with pytest.raises(coco.DatasetUnavailableError) as err:
        course.ensure_dataset(coco_cfg(tmp_path), progress=False)
    message = str(err.value)
    assert "caption annotations" in message and "train2014 images" in message and "val2014 images" in message
    assert "LAB_PROFILE=quick" in message and "Colab" in message
    assert message.count(". ") == 0 and message.endswith(".")
    assert not (tmp_path / "data" / "coco2014" / "annotations" / "captions.json").exists()


def test_load_captions_and_instances_from_config_folder_and_file(tiny_cfg, capsys):
    caps = coco.load_captions(tiny_cfg)
    assert capsys.readouterr().out == ""  # pycocotools' timing prints are silenced
    assert len(caps.getImgIds()) == 60 and len(caps.getAnnIds()) == 300
    assert len(coco.load_captions(tiny_cfg.dataset_dir).anns) == 300
    assert len(coco.load_captions(tiny_cfg.captions_file).anns) == 300
    inst = coco.load_instances(tiny_cfg)
    assert [c["name"] for c in inst.loadCats(inst.getCatIds())] == ["circle", "square", "triangle"]
    assert all(len(a["bbox"]) == 4 for a in inst.loadAnns(inst.getAnnIds()))


def test_missing_or_corrupt_annotations_give_one_clear_sentence(tmp_path):
    with pytest.raises(coco.DatasetUnavailableError, match=r"ensure_dataset\(cfg\).*notebook 00"):
        coco.load_captions(tmp_path / "nowhere.json")
    assert issubclass(coco.DatasetUnavailableError, FileNotFoundError)
    bad = tmp_path / "captions.json"
    bad.write_text('{"images": [')
    with pytest.raises(ValueError, match="not a COCO JSON file"):
        coco.load_captions(bad)


def test_load_results_ingests_predicted_captions_quietly(tiny_cfg, capsys):
    caps = coco.load_captions(tiny_cfg)
    preds = [{"image_id": 1, "caption": "a red circle"}, {"image_id": 2, "caption": "two blue squares"}]
    res = coco.load_results(caps, preds)
    assert capsys.readouterr().out == ""
    assert sorted(res.getImgIds()) == [1, 2]
    assert [a["caption"] for a in res.loadAnns(res.getAnnIds(imgIds=[2]))] == ["two blue squares"]


# ---------------------------------------------------------------------------------------------------------------
# Captions


def test_captions_by_image_all_and_selected(tiny_cfg):
    caps = coco.load_captions(tiny_cfg)
    table = coco.captions_by_image(caps)
    assert sorted(table) == list(range(1, 61))
    assert all(len(v) == 5 and all(isinstance(c, str) and c for c in v) for v in table.values())
    picked = coco.captions_by_image(caps, [7, 3])
    assert list(picked) == [7, 3] and picked[3] == table[3]
    with pytest.raises(KeyError, match="999"):
        coco.captions_by_image(caps, [3, 999])


def _tiny_caption_coco(tmp_path):
    data = {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
            "annotations": [{"id": 10, "image_id": 2, "caption": "Two dogs ."},
                            {"id": 11, "image_id": 1, "caption": " A cat on a mat "},
                            {"id": 12, "image_id": 1, "caption": "a CAT"}]}
    path = tmp_path / "caps.json"
    path.write_text(json.dumps(data))
    return coco.load_captions(path)


def test_caption_table_and_stats_by_hand(tmp_path):
    table = coco.caption_table(_tiny_caption_coco(tmp_path))
    assert list(table.columns) == ["image_id", "ann_id", "caption", "n_words", "n_chars", "file_name"]
    assert table["ann_id"].tolist() == [11, 12, 10]  # sorted by image, then annotation
    assert table["caption"].tolist() == ["A cat on a mat", "a CAT", "Two dogs ."]
    assert table["n_words"].tolist() == [5, 2, 3]
    assert table["file_name"].tolist() == ["a.jpg", "a.jpg", "b.jpg"]
    stats = coco.caption_stats(table)
    assert stats["images"] == 2 and stats["captions"] == 3
    assert (stats["captions_per_image_min"], stats["captions_per_image_mean"], stats["captions_per_image_max"]) \
        == (1, 1.5, 2)
    assert (stats["words_min"], stats["words_median"], stats["words_max"]) == (2, 3.0, 5)
    assert stats["words_mean"] == round(10 / 3, 2)
    assert stats["distinct_words"] == 7  # a cat on mat two dogs .  (lower-cased)


def test_caption_stats_on_synthetic(tiny_cfg):
    table = coco.caption_table(coco.load_captions(tiny_cfg))
    stats = coco.caption_stats(table)
    assert stats["images"] == 60 and stats["captions"] == 300
    assert stats["captions_per_image_min"] == stats["captions_per_image_max"] == 5
    assert 2 <= stats["words_min"] <= stats["words_median"] <= stats["words_p95"] <= stats["words_max"] <= 24
    assert table["n_words"].sum() == sum(len(c.split()) for c in table["caption"])


# ---------------------------------------------------------------------------------------------------------------
# Splits


def _write_split(tmp_path, obj) -> Path:
    path = tmp_path / "splits.json"
    path.write_text(json.dumps(obj))
    return path


def test_load_splits_from_config_sorted_and_disjoint(tiny_cfg):
    splits = coco.load_splits(tiny_cfg)
    assert list(splits) == ["train", "val", "test"]
    assert [len(splits[s]) for s in splits] == [40, 10, 10]
    assert all(ids == sorted(ids) for ids in splits.values())
    assert set().union(*splits.values()) == set(range(1, 61))
    assert coco.load_splits(tiny_cfg.dataset_dir) == splits


def test_split_leakage_names_the_image_and_both_splits(tmp_path):
    path = _write_split(tmp_path, {"train": [1, 2, 3], "val": [4], "test": [5, 2]})
    with pytest.raises(coco.SplitLeakageError) as err:
        coco.load_splits(path)
    assert isinstance(err.value, ValueError)
    assert "Image 2" in str(err.value) and "'train'" in str(err.value) and "'test'" in str(err.value)


@pytest.mark.parametrize("obj, pattern", [
    ({"train": [1], "val": [2], "test": [3], "dev": [4]}, r"Unknown split name.*dev"),
    ({"train": [1], "val": [2]}, r"lacks \['test'\]"),
    ({"train": [1], "val": [], "test": [3]}, r"Split 'val' is empty"),
    ({"train": [1, "2"], "val": [3], "test": [4]}, r"'2'.*not an integer"),
    ({"train": [1, 1], "val": [3], "test": [4]}, r"listed twice in split 'train'"),
    ([1, 2, 3], r"JSON object"),
])
def test_bad_split_files_get_clear_errors(tmp_path, obj, pattern):
    with pytest.raises(coco.SplitError, match=pattern):
        coco.load_splits(_write_split(tmp_path, obj))


def test_missing_or_invalid_split_file(tmp_path):
    with pytest.raises(coco.DatasetUnavailableError, match="ensure_dataset"):
        coco.load_splits(tmp_path / "splits.json")
    (tmp_path / "splits.json").write_text("{")
    with pytest.raises(coco.SplitError, match="not valid JSON"):
        coco.load_splits(tmp_path / "splits.json")


def test_check_split_against_annotations(tiny_cfg):
    caps = coco.load_captions(tiny_cfg)
    splits = coco.load_splits(tiny_cfg)
    assert coco.check_split_against(caps, splits) == []
    partial = {"train": splits["train"][1:], "val": splits["val"], "test": splits["test"]}
    assert coco.check_split_against(caps, partial) == [splits["train"][0]]
    foreign = {"train": splits["train"], "val": splits["val"] + [12345], "test": splits["test"]}
    with pytest.raises(coco.SplitError, match=r"split 'val' \(e.g. 12345\)"):
        coco.check_split_against(caps, foreign)


def test_karpathy_like_split_has_the_standard_sizes_on_the_real_counts():
    train_ids = range(1, 82_783 + 1)
    val_ids = range(1_000_000, 1_000_000 + 40_504)
    splits = mscoco.build_karpathy_like_split(train_ids, val_ids, seed=0)
    assert {k: len(v) for k, v in splits.items()} == mscoco.KARPATHY_SIZES == {"train": 113_287, "val": 5000,
                                                                              "test": 5000}
    assert set(train_ids) <= set(splits["train"])  # every train2014 image stays in train
    assert min(splits["val"] + splits["test"]) >= 1_000_000  # val and test come from val2014 only


def test_karpathy_like_split_is_deterministic_and_disjoint_on_a_scaled_down_fake():
    train_ids, val_ids = list(range(100, 183)), list(range(500, 541))  # 83 + 41, like 82,783 + 40,504 / 1000
    a = mscoco.build_karpathy_like_split(train_ids, val_ids, n_val=5, n_test=5, seed=3)
    assert {k: len(v) for k, v in a.items()} == {"train": 83 + 41 - 10, "val": 5, "test": 5}
    assert coco.validate_splits(a) == a
    assert set().union(*a.values()) == set(train_ids) | set(val_ids)
    assert mscoco.build_karpathy_like_split(reversed(train_ids), val_ids[::-1], n_val=5, n_test=5, seed=3) == a
    assert mscoco.build_karpathy_like_split(train_ids, val_ids, n_val=5, n_test=5, seed=4)["val"] != a["val"]
    with pytest.raises(coco.SplitError, match="Only 41 val2014 images"):
        mscoco.build_karpathy_like_split(train_ids, val_ids, n_val=30, n_test=30)
    with pytest.raises(coco.SplitLeakageError, match="Image 500"):
        mscoco.build_karpathy_like_split(train_ids + [500], val_ids, n_val=5, n_test=5)


def test_karpathy_split_reads_dataset_coco_json_with_restval_in_train(tmp_path):
    data = fake_coco2014(6, 8)
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps(karpathy_json(data, n_val=2, n_test=3)))
    splits = mscoco.karpathy_split(path)
    assert {k: len(v) for k, v in splits.items()} == {"train": 6 + 3, "val": 2, "test": 3}
    assert splits["val"] == [42, 44] and splits["test"] == [46, 48, 50]
    with pytest.raises(coco.DatasetUnavailableError, match="caption_datasets.zip"):
        mscoco.karpathy_split(tmp_path / "absent.json")


def test_subset_split_sizes_and_determinism():
    splits = {"train": list(range(1000)), "val": list(range(2000, 2100)), "test": list(range(3000, 3100))}
    sub = mscoco.subset_split(splits, 200, seed=1)
    assert {k: len(v) for k, v in sub.items()} == {"train": 160, "val": 20, "test": 20}
    assert all(set(sub[k]) <= set(splits[k]) for k in sub)
    assert mscoco.subset_split(splits, 200, seed=1) == sub
    with pytest.raises(coco.SplitError, match="subset"):
        mscoco.subset_split(splits, 2)


# ---------------------------------------------------------------------------------------------------------------
# Drawing and the exercise check


def test_show_image_with_captions_draws_image_captions_and_instances(tiny_cfg):
    import matplotlib.pyplot as plt

    caps, inst = coco.load_captions(tiny_cfg), coco.load_instances(tiny_cfg)
    rng_state = np.random.get_state()
    fig, axes = plt.subplots(1, 2)
    ax = coco.show_image_with_captions(caps, 1, tiny_cfg.image_dir, inst, ax=axes[1])
    assert ax is axes[1]
    assert ax.get_images()[0].get_array().shape == (tiny_cfg.image_size, tiny_cfg.image_size, 3)
    for caption in coco.captions_by_image(caps, [1])[1]:
        assert caption.split()[0] in ax.get_title(loc="left")
    n_objects = len(inst.getAnnIds(imgIds=[1]))
    assert len(ax.collections) == 2  # showAnns: filled + outlined polygons and boxes
    assert len(ax.collections[1].get_paths()) == 2 * n_objects  # one polygon and one box per object
    assert [t.get_text() for t in ax.texts] == [inst.cats[a["category_id"]]["name"]
                                                for a in inst.loadAnns(inst.getAnnIds(imgIds=[1]))]
    assert not axes[0].collections  # drew on the axes it was given, not plt.gca() of the moment
    assert np.array_equal(np.random.get_state()[1], rng_state[1])  # global RNG untouched
    plain = coco.show_image_with_captions(caps, 2, tiny_cfg.image_dir)
    assert not plain.collections
    plt.close("all")
    with pytest.raises(coco.DatasetUnavailableError, match="missing"):
        coco.show_image_with_captions(caps, 1, tiny_cfg.dataset_dir)  # wrong image folder
    with pytest.raises(KeyError, match="getImgIds"):
        coco.show_image_with_captions(caps, 10_000, tiny_cfg.image_dir)


def test_convert_coco2014_writes_the_uniform_layout(tmp_path):
    root = tmp_path / "coco2014"
    data = write_fake_coco2014(root, n_train=30, n_val=20)
    record = mscoco.convert_coco2014(root, n_val=5, n_test=5, seed=0)
    assert record["split_source"] == "rebuilt" and record["sizes"] == {"train": 40, "val": 5, "test": 5}
    caps = coco.load_captions(root)
    assert len(caps.imgs) == 50 and len(caps.anns) == 100
    assert len(caps.anns) == len({a["id"] for a in caps.dataset["annotations"]})  # ids renumbered, unique
    assert caps.imgs[9]["file_name"] == "train2014/COCO_train2014_000000000009.jpg"
    assert caps.imgs[42]["file_name"] == "val2014/COCO_val2014_000000000042.jpg"
    assert coco.captions_by_image(caps, [42])[42] == ["A photo number 42 0.", "A photo number 42 1."]
    assert coco.missing_images(caps, root / "images") == []
    inst = coco.load_instances(root)
    assert [c["name"] for c in inst.loadCats(inst.getCatIds())] == ["cat", "dog"] and len(inst.anns) == 50
    splits = coco.load_splits(root)
    assert coco.check_split_against(caps, splits) == []
    val2014 = {img["id"] for img in data["captions_val2014"]["images"]}
    assert set(splits["val"]) | set(splits["test"]) <= val2014
    assert json.loads((root / "prepared.json").read_text()) == record


def test_convert_coco2014_with_karpathy_split_and_subset(tmp_path):
    root = tmp_path / "coco2014"
    data = write_fake_coco2014(root, n_train=40, n_val=30, images=False, overlapping_ann_ids=False)
    karpathy = tmp_path / "dataset_coco.json"
    karpathy.write_text(json.dumps(karpathy_json(data, n_val=5, n_test=5)))
    splits = mscoco.karpathy_split(karpathy)
    record = mscoco.convert_coco2014(root, splits, subset=20, seed=0)
    assert record["split_source"] == "karpathy" and record["sizes"] == {"train": 16, "val": 2, "test": 2}
    kept = coco.load_splits(root)
    assert all(set(kept[k]) <= set(splits[k]) for k in kept)
    caps = coco.load_captions(root)
    assert sorted(caps.imgs) == sorted(set().union(*kept.values()))
    original = {(a["id"], a["caption"]) for f in ("train2014", "val2014") for a in data[f"captions_{f}"]["annotations"]}
    assert {(a["id"], a["caption"]) for a in caps.dataset["annotations"]} <= original  # unique ids are kept as is


def test_prepare_mscoco_offline_with_files_present_converts_them(tmp_path):
    cfg = coco_cfg(tmp_path)
    data = write_fake_coco2014(cfg.dataset_dir, n_train=12, n_val=10)
    (cfg.dataset_dir / "dataset_coco.json").write_text(json.dumps(karpathy_json(data, n_val=3, n_test=3)))
    closed = closed_port_url()
    assert mscoco.prepare_mscoco(cfg, base_url=closed, karpathy_url=closed, progress=False) == cfg.dataset_dir
    assert json.loads((cfg.dataset_dir / "prepared.json").read_text())["split_source"] == "karpathy"
    assert {k: len(v) for k, v in coco.load_splits(cfg).items()} == {"train": 16, "val": 3, "test": 3}
    assert mscoco.mscoco_status(cfg)["converted"]
    # Run again: already prepared, nothing to fetch, still no network needed.
    assert mscoco.prepare_mscoco(cfg, base_url=closed, karpathy_url=closed, progress=False) == cfg.dataset_dir


def test_prepare_mscoco_offline_without_karpathy_rebuilds_and_says_so(tmp_path, capsys):
    cfg = coco_cfg(tmp_path)
    write_fake_coco2014(cfg.dataset_dir, n_train=12, n_val=10)
    closed = closed_port_url()
    mscoco.prepare_mscoco(cfg, base_url=closed, karpathy_url=closed, progress=False, n_val=2, n_test=2)
    assert "Karpathy-like" in capsys.readouterr().out
    assert {k: len(v) for k, v in coco.load_splits(cfg).items()} == {"train": 18, "val": 2, "test": 2}


def test_prepare_mscoco_offline_with_images_missing_names_them(tmp_path, monkeypatch):
    import shutil

    # The message under test must not depend on how full the test machine's disk is.
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**14, 0, 10**14))
    cfg = coco_cfg(tmp_path)
    write_fake_coco2014(cfg.dataset_dir, n_train=12, n_val=10, images=False)
    closed = closed_port_url()
    with pytest.raises(coco.DatasetUnavailableError, match=r"missing: 22 images in train2014, val2014\)"):
        mscoco.prepare_mscoco(cfg, base_url=closed, karpathy_url="", progress=False, n_val=2, n_test=2)
    with pytest.raises(coco.DatasetUnavailableError, match="22 images"):  # same answer when converted already
        mscoco.prepare_mscoco(cfg, base_url=closed, karpathy_url="", progress=False, n_val=2, n_test=2)


def test_network_available(server):
    _, url = server
    assert mscoco.network_available(url, timeout=2) is True
    assert mscoco.network_available(url + "/no/such/file.zip", timeout=2) is True  # a 404 still means online
    assert mscoco.network_available(closed_port_url(), timeout=2) is False


def _zip(path: Path, files: dict[str, Path | bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, content in files.items():
            zf.writestr(name, content if isinstance(content, bytes) else content.read_bytes())


def test_prepare_mscoco_downloads_archives_from_a_server(tmp_path, server, capsys):
    www, url = server
    staging = tmp_path / "staging"
    data = write_fake_coco2014(staging, n_train=8, n_val=8)
    _zip(www / mscoco.COCO2014_ARCHIVES["annotations"],
         {f"annotations/{p.name}": p for p in (staging / "annotations").glob("*.json")})
    for folder in ("train2014", "val2014"):
        _zip(www / mscoco.COCO2014_ARCHIVES[folder],
             {f"{folder}/{p.name}": p for p in (staging / "images" / folder).glob("*.jpg")})
    _zip(www / "caption_datasets.zip", {"dataset_coco.json": json.dumps(karpathy_json(data, 2, 2)).encode(),
                                        "dataset_flickr8k.json": b"{}"})
    cfg = coco_cfg(tmp_path)
    root = mscoco.prepare_mscoco(cfg, base_url=url, karpathy_url=f"{url}/caption_datasets.zip", progress=False)
    first = capsys.readouterr().out.splitlines()[0]  # size and time are said before anything is fetched
    assert re.match(r"Preparing MS-COCO 2014 \(the whole dataset\) under .*: about 20\.4 GB to download, about "
                    r"\d+ min at 50 MB/s, then unpacked and resized once\. Interrupt now", first), first
    mscoco.announce_download(cfg, base_url=url)  # prepared now: nothing left to fetch, nothing said
    assert capsys.readouterr().out == ""
    assert json.loads((root / "prepared.json").read_text())["split_source"] == "karpathy"
    assert not (root / "dataset_flickr8k.json").exists()  # only dataset_coco.json is taken from that zip
    assert not list((root / "downloads").glob("*"))  # zips removed after unpacking, no .part left
    caps, inst = coco.load_captions(cfg), coco.load_instances(cfg)
    assert len(caps.imgs) == 16 and coco.missing_images(caps, cfg.image_dir) == []
    assert len(inst.anns) == 16
    import matplotlib.pyplot as plt

    coco.show_image_with_captions(caps, 9, cfg.image_dir, inst)
    plt.close("all")


def test_prepare_mscoco_subset_fetches_single_images(tmp_path, server):
    www, url = server
    cfg = coco_cfg(tmp_path)
    write_fake_coco2014(cfg.dataset_dir, n_train=30, n_val=20, images=False)
    for folder, first in (("train2014", 9), ("val2014", 42)):
        for i in range(first, first + 60, 2):
            _write_jpeg(www / folder / _coco_name(folder, i))
    root = mscoco.prepare_mscoco(cfg, subset=10, base_url=url, karpathy_url="", progress=False, n_val=5, n_test=5)
    splits = coco.load_splits(cfg)
    assert {k: len(v) for k, v in splits.items()} == {"train": 8, "val": 1, "test": 1}
    caps = coco.load_captions(cfg)
    files = sorted(p.relative_to(cfg.image_dir).as_posix() for p in cfg.image_dir.rglob("*") if p.is_file())
    assert files == sorted(img["file_name"] for img in caps.imgs.values())  # exactly the subset, no .part files
    assert root == cfg.dataset_dir


def test_download_failures_leave_nothing_that_looks_complete(tmp_path, server):
    www, url = server
    dest = tmp_path / "out" / "thing.zip"
    with pytest.raises(coco.DatasetUnavailableError, match="Could not download"):
        mscoco.download(f"{url}/absent.zip", dest, progress=False)
    assert not dest.exists() and not list(dest.parent.glob("*"))
    (www / "broken.zip").write_bytes(b"this is not a zip archive")
    archive = mscoco.download(f"{url}/broken.zip", dest, progress=False)
    assert archive.read_bytes() == b"this is not a zip archive"
    with pytest.raises(coco.DatasetUnavailableError, match="damaged and has been deleted"):
        mscoco._extract(archive, tmp_path / "unpacked")
    assert not archive.exists()


# ---------------------------------------------------------------------------------------------------------------
# MS-COCO 2017: the same images and ids as 2014 train+val, re-cut and renamed


def fake_coco2017(n_train: int, n_val: int, n_val2017: int) -> dict[str, dict]:
    """The 2014 fakes re-cut like the real 2017 release: val2017 = some val2014 images, train2017 = all others."""
    old = fake_coco2014(n_train, n_val, overlapping_ann_ids=False)
    val2017 = {img["id"] for img in old["captions_val2014"]["images"][:n_val2017]}
    out = {}
    for kind in ("captions", "instances"):
        images = old[f"{kind}_train2014"]["images"] + old[f"{kind}_val2014"]["images"]
        anns = old[f"{kind}_train2014"]["annotations"] + old[f"{kind}_val2014"]["annotations"]
        for folder in ("train2017", "val2017"):
            keep = [{**img, "file_name": f"{img['id']:012d}.jpg",
                     "coco_url": f"http://images.cocodataset.org/{folder}/{img['id']:012d}.jpg"}
                    for img in images if (img["id"] in val2017) == (folder == "val2017")]
            ids = {img["id"] for img in keep}
            out[f"{kind}_{folder}"] = {**old[f"{kind}_train2014"], "info": {"year": 2017}, "images": keep,
                                       "annotations": [a for a in anns if a["image_id"] in ids]}
    return out


def write_fake_coco2017(root: Path, n_train: int, n_val: int, n_val2017: int, images: bool = True) -> dict:
    """Write fake official 2017 files (annotations/, images/train2017, images/val2017)."""
    return write_fake_official_files(root, fake_coco2017(n_train, n_val, n_val2017), images)


def test_coco_year_in_the_config_names_the_dataset_folder():
    assert get_config("coco").coco_year == 2014 and get_config("coco").dataset_name == "coco2014"
    cfg = get_config("coco", coco_year=2017)
    assert cfg.dataset_name == "coco2017" and cfg.dataset_dir.name == "coco2017" and mscoco.coco_year(cfg) == 2017
    assert get_config("coco", coco_year=2017, dataset_name="mine").dataset_name == "mine"
    assert get_config("quick", coco_year=2017).dataset_name == "synthetic"  # the quick profile has no MS-COCO
    with pytest.raises(ValueError, match=r"get_config\('coco', coco_year=2017\)"):
        mscoco.coco_year(get_config("coco").replace(coco_year=2017))  # 2017 files would land in coco2014/
    with pytest.raises(ValueError, match="use 2014 or 2017"):
        mscoco.coco_year(get_config("coco", coco_year=2015))
    assert mscoco.COCO2014_ARCHIVES is mscoco.COCO_ARCHIVES[2014] and mscoco.image_folders(2017) == ("train2017", "val2017")


def test_build_coco2017_split_standard_sizes_determinism_and_no_leakage():
    train_ids, val_ids = list(range(1, 118_288)), list(range(200_001, 205_001))
    split = mscoco.build_coco2017_split(train_ids, val_ids, seed=0)
    assert {k: len(v) for k, v in split.items()} == mscoco.KARPATHY_SIZES  # 113,287 / 5,000 / 5,000
    assert split["test"] == val_ids and set(split["val"]) <= set(train_ids)  # test = all of val2017
    assert sorted(split["train"] + split["val"] + split["test"]) == train_ids + val_ids  # each image exactly once
    coco.validate_splits(split)
    small = mscoco.build_coco2017_split(range(30), range(100, 106), n_val=4, seed=3)
    assert small == mscoco.build_coco2017_split(list(reversed(range(30))), range(100, 106), n_val=4, seed=3)
    assert small["val"] != mscoco.build_coco2017_split(range(30), range(100, 106), n_val=4, seed=4)["val"]
    assert {k: len(v) for k, v in small.items()} == {"train": 26, "val": 4, "test": 6}
    fewer = mscoco.build_coco2017_split(range(30), range(100, 106), n_val=4, n_test=2, seed=3)
    assert set(fewer["test"]) < set(range(100, 106)) and len(fewer["train"]) == 30  # 26 + the 4 other val2017
    with pytest.raises(coco.SplitError, match="Only 6 val2017 images"):
        mscoco.build_coco2017_split(range(30), range(100, 106), n_val=4, n_test=7)
    with pytest.raises(coco.SplitError, match="lower n_val"):
        mscoco.build_coco2017_split(range(30), range(100, 106), n_val=30)
    with pytest.raises(coco.SplitLeakageError, match="Image 100"):
        mscoco.build_coco2017_split([*range(30), 100], range(100, 106), n_val=4)


def test_convert_coco_2017_rebuilt_split_with_2017_file_names(tmp_path):
    root = tmp_path / "coco2017"
    data = write_fake_coco2017(root, n_train=20, n_val=14, n_val2017=6)
    record = mscoco.convert_coco(root, n_val=4, n_test=None, seed=0, year=2017)
    assert record["year"] == 2017 and record["split_source"] == "rebuilt-2017"
    assert record["split_rule"] == ("test = all 6 val2017 images, val = 4 train2017 images drawn with seed 0, "
                                    "train = the other 24 images")
    assert record["sizes"] == {"train": 24, "val": 4, "test": 6}
    splits = coco.load_splits(root)
    assert splits["test"] == sorted(img["id"] for img in data["captions_val2017"]["images"])
    caps = coco.load_captions(root)
    assert caps.imgs[9]["file_name"] == "train2017/000000000009.jpg"
    assert caps.imgs[42]["file_name"] == "val2017/000000000042.jpg"
    assert coco.missing_images(caps, root / "images") == [] and len(coco.load_instances(root).anns) == 34
    assert json.loads((root / "prepared.json").read_text()) == record


def test_karpathy_split_applies_to_2017_file_names(tmp_path):
    root = tmp_path / "coco2017"
    write_fake_coco2017(root, n_train=12, n_val=10, n_val2017=5)
    karpathy = tmp_path / "dataset_coco.json"  # Karpathy's file names are 2014's; only the image ids count
    karpathy.write_text(json.dumps(karpathy_json(fake_coco2014(12, 10), n_val=3, n_test=4)))
    splits = mscoco.karpathy_split(karpathy)
    record = mscoco.convert_coco(root, splits, year=2017)
    assert record["split_source"] == "karpathy" and "split_rule" not in record
    assert coco.load_splits(root) == splits
    caps = coco.load_captions(root)
    test_folders = {caps.imgs[i]["file_name"].split("/")[0] for i in splits["test"]}
    assert test_folders == {"train2017", "val2017"}  # a Karpathy test image may sit in either 2017 folder
    assert coco.missing_images(caps, root / "images") == []


def test_prepare_mscoco_2017_offline_rebuilds_the_standard_split_and_says_so(tmp_path, capsys):
    cfg = get_config("coco", coco_year=2017, data_root=tmp_path / "data", build_dir=tmp_path / "build",
                     image_size=8)
    write_fake_coco2017(cfg.dataset_dir, n_train=12, n_val=10, n_val2017=4)
    closed = closed_port_url()
    mscoco.prepare_mscoco(cfg, base_url=closed, karpathy_url="", progress=False, n_val=3, n_test=None)
    out = capsys.readouterr().out
    assert ("the standard 2017 split is used instead (test = all 4 val2017 images, val = 3 train2017 images drawn "
            "with seed 0, train = the other 15 images)") in out
    assert "not directly comparable" in out
    prepared = json.loads((cfg.dataset_dir / "prepared.json").read_text())
    assert (prepared["year"], prepared["split_source"], prepared["sizes"]) == (
        2017, "rebuilt-2017", {"train": 15, "val": 3, "test": 4})
    assert mscoco.mscoco_status(cfg)["converted"] and mscoco.mscoco_status(cfg)["val2017 images"]
    assert resize.image_root(cfg) == cfg.dataset_dir / "images_8px"
    with pytest.raises(coco.DatasetUnavailableError, match=r"MS-COCO 2017 is incomplete .*missing: 2017 caption"):
        mscoco.prepare_mscoco(get_config("coco", coco_year=2017, data_root=tmp_path / "empty"), base_url=closed,
                            karpathy_url="", progress=False)


# ---------------------------------------------------------------------------------------------------------------
# Resize once: preparation writes images_<size>px/, and the readers switch to it when it is complete


def _prepared_2014(tmp_path, **kw):
    """A coco-profile config (8-px images: fast) on fake 2014 files, prepared offline with the resize step."""
    cfg = get_config("coco", data_root=tmp_path / "data", build_dir=tmp_path / "build", image_size=8, **kw)
    write_fake_coco2014(cfg.dataset_dir, n_train=12, n_val=10)
    mscoco.prepare_mscoco(cfg, base_url=closed_port_url(), karpathy_url="", progress=False, n_val=2, n_test=2)
    return cfg


def test_resize_runs_once_and_every_reader_uses_the_resized_folder(tmp_path, capsys):
    from labutils import data, features

    cfg = _prepared_2014(tmp_path)
    assert "Resizing the 22 images once to 8 px" in capsys.readouterr().out
    resized = cfg.dataset_dir / "images_8px"
    record = resize.resize_record(cfg)
    assert record["complete"] and (record["images"], record["resized"], record["corrupt"]) == (22, 22, [])
    assert resize.image_root(cfg) == resized and mscoco.mscoco_status(cfg)["resized images"]
    caps = coco.load_captions(cfg)
    for img in caps.imgs.values():
        with Image.open(resized / img["file_name"]) as im:
            assert im.size == (11, 8)  # 16x12 with its shorter side at 8 px, aspect ratio kept
    # Running again resizes nothing: a current, complete record makes it a no-op ...
    before = (resized / resize.RESIZE_RECORD).stat().st_mtime_ns
    assert resize.resize_images(cfg, progress=False)["resized"] == 0
    mscoco.prepare_mscoco(cfg, base_url=closed_port_url(), karpathy_url="", progress=False, n_val=2, n_test=2)
    assert (resized / resize.RESIZE_RECORD).stat().st_mtime_ns == before and "Resizing" not in capsys.readouterr().out
    # ... and without the record, resize_all skips every finished image.
    (resized / resize.RESIZE_RECORD).unlink()
    assert resize.image_root(cfg) == cfg.image_dir  # no record: the originals
    again = resize.resize_images(cfg, progress=False)
    assert (again["resized"], again["skipped"], again["complete"]) == (0, 22, True)
    # The readers: the image source, the feature cache's loader (and its key), all through image_root.
    assert data.ImageFolderSource.from_config(cfg).image_dir == resized
    make_loader, fingerprint = features._resolve_images(cfg, None, sorted(caps.imgs))
    assert fingerprint == {"kind": "folder", "resized": 8}
    source = make_loader(None)  # no transform: the images as read, [3, H, W]
    assert source.image_dir == resized and tuple(source(9).shape) == (3, 8, 11)


def test_reconverted_annotations_make_the_resize_record_stale(tmp_path):
    cfg = _prepared_2014(tmp_path)
    assert resize.image_root(cfg) == cfg.dataset_dir / "images_8px"
    mscoco.convert_coco2014(cfg.dataset_dir, subset=10, seed=0, n_val=2, n_test=2)  # another image set
    assert resize.resize_record(cfg) is None and resize.image_root(cfg) == cfg.image_dir
    assert resize.resize_images(cfg, progress=False)["resized"] == 0  # its images were resized already
    assert resize.image_root(cfg) == cfg.dataset_dir / "images_8px"
    assert resize.image_root(cfg.replace(image_size=16)) == cfg.image_dir  # another size: not resized yet


def test_corrupt_image_is_reported_in_one_sentence_and_not_counted_complete(tmp_path, capsys):
    cfg = get_config("coco", data_root=tmp_path / "data", build_dir=tmp_path / "build", image_size=8)
    write_fake_coco2014(cfg.dataset_dir, n_train=12, n_val=10)
    bad = cfg.image_dir / "val2014" / _coco_name("val2014", 44)
    bad.write_bytes(bad.read_bytes()[:300])  # a transfer cut off mid-way
    mscoco.prepare_mscoco(cfg, base_url=closed_port_url(), karpathy_url="", progress=False, n_val=2, n_test=2)
    message = capsys.readouterr().out.strip().splitlines()[-1]
    assert message.startswith("1 image file(s) could not be read, so they were not resized ("
                              f"val2014/{bad.name} under {cfg.image_dir})")
    assert message.count(". ") == 0 and message.endswith("until then the lab reads the original images.")
    record = resize.resize_record(cfg)
    assert not record["complete"] and record["corrupt"] == [f"val2014/{bad.name}"]
    assert (record["images"], record["missing"]) == (21, 1)
    assert resize.image_root(cfg) == cfg.image_dir  # incomplete: the readers keep the originals
    resized = cfg.dataset_dir / "images_8px"
    assert not (resized / "val2014" / bad.name).exists()
    hidden = [p.relative_to(resized).as_posix() for p in resized.rglob(".*") if p.is_file()]
    assert hidden == [".labutils-made.json"]  # no temporary files left behind, only the lab's ownership marker
    _write_jpeg(bad)  # a good copy (what a re-fetch brings)
    assert resize.resize_images(cfg, progress=False)["resized"] == 1
    assert resize.image_root(cfg) == resized


def test_resize_never_writes_into_a_folder_the_lab_did_not_make(tmp_path):
    from labutils.infra.files import NotLabFolderError

    cfg = get_config("coco", data_root=tmp_path / "data", build_dir=tmp_path / "build", image_size=8)
    write_fake_coco2014(cfg.dataset_dir, n_train=12, n_val=10)
    theirs = resize.resized_image_dir(cfg) / "val2014"
    theirs.mkdir(parents=True)
    (theirs / "notes.txt").write_text("my own thumbnails")
    with pytest.raises(NotLabFolderError, match="images_8px holds files the lab did not write"):
        mscoco.prepare_mscoco(cfg, base_url=closed_port_url(), karpathy_url="", progress=False, n_val=2, n_test=2)
    assert [p.name for p in resize.resized_image_dir(cfg).rglob("*")] == ["val2014", "notes.txt"]


def test_a_resized_copy_from_an_older_labutils_is_recognised_by_its_record(tmp_path):
    from labutils.infra.files import MARKER_FILE

    cfg = _prepared_2014(tmp_path)
    resized = resize.resized_image_dir(cfg)
    (resized / MARKER_FILE).unlink()  # as an older labutils left it: resized.json but no ownership marker
    mscoco.convert_coco2014(cfg.dataset_dir, subset=10, seed=0, n_val=2, n_test=2)  # the record is now stale
    assert resize.resize_images(cfg, progress=False)["complete"] and (resized / MARKER_FILE).is_file()


def test_a_second_resize_waits_for_the_first_and_writes_its_record_last(tmp_path, capsys):

    from labutils.infra.files import folder_lock

    cfg = get_config("coco", data_root=tmp_path / "data", build_dir=tmp_path / "build", image_size=8)
    write_fake_coco2014(cfg.dataset_dir, n_train=12, n_val=10)
    mscoco.prepare_mscoco(cfg, base_url=closed_port_url(), karpathy_url="", progress=False, n_val=2, n_test=2,
                        resize=False)
    result = {}
    with folder_lock(resize.resized_image_dir(cfg), "the resized images"):  # another process is resizing
        worker = start_and_see_it_wait(lambda: result.update(record=resize.resize_images(cfg, progress=False)),
                                       capsys, "resize_images")
        assert not resize.resized_image_dir(cfg).exists()
    worker.join(30)
    assert result["record"]["complete"] and resize.image_root(cfg) == resize.resized_image_dir(cfg)
    record_time = (resize.resized_image_dir(cfg) / resize.RESIZE_RECORD).stat().st_mtime_ns
    images = [p for p in resize.resized_image_dir(cfg).rglob("*.jpg")]
    assert len(images) == 22 and max(p.stat().st_mtime_ns for p in images) <= record_time


def test_image_root_is_the_image_folder_on_the_quick_profile(tiny_cfg):
    from labutils import data, features

    assert resize.image_root(tiny_cfg) == tiny_cfg.image_dir
    assert data.ImageFolderSource.from_config(tiny_cfg).image_dir == tiny_cfg.image_dir
    assert features._resolve_images(tiny_cfg, None, [1])[1] == {"kind": "folder"}  # cache keys unchanged


def test_ensure_dataset_keeps_the_prepared_subset(tmp_path, monkeypatch):
    cfg = get_config("coco", data_root=tmp_path / "data", build_dir=tmp_path / "build", image_size=8)
    write_fake_coco2014(cfg.dataset_dir, n_train=12, n_val=10)
    closed = closed_port_url()
    mscoco.prepare_mscoco(cfg, subset=10, base_url=closed, karpathy_url="", progress=False, n_val=2, n_test=2)
    assert mscoco.prepared_subset(cfg) == 10
    calls = []
    real = mscoco.prepare_mscoco
    monkeypatch.setattr(datasets, "prepare_mscoco", lambda cfg, **kw: calls.append(kw) or real(cfg, **kw))
    course.ensure_dataset(cfg, progress=False)  # a notebook's call must not convert (and download) everything
    assert calls[0]["subset"] == 10 and len(coco.load_captions(cfg).imgs) == 10
