"""`python -m labutils prepare`: download -> resize once -> feature cache, on both profiles, offline."""

import json
import os
import shutil
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest
import torch
from loopback import closed_port_url
from PIL import Image

from labutils import coco, features, get_config
from labutils.cli import prepare as prep
from labutils.cli.main import main as cli_main
from labutils.infra import mscoco, resize


def one_sentence(message: str) -> bool:
    return message.endswith(".") and ". " not in message and "\n" not in message


def write_official_2014(root: Path, n_train: int = 10, n_val: int = 8) -> None:
    """Official-style 2014 caption files, 16x12 JPEGs and a dataset_coco.json, as if downloaded already."""
    karpathy = []
    for folder, ids in (("train2014", range(9, 9 + 2 * n_train, 2)), ("val2014", range(42, 42 + 2 * n_val, 2))):
        images = [{"id": i, "file_name": f"COCO_{folder}_{i:012d}.jpg", "width": 16, "height": 12} for i in ids]
        anns = [{"id": 10 * i + j, "image_id": i, "caption": f"a photo of thing {i} number {j}"}
                for i in ids for j in range(2)]
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"captions_{folder}.json").write_text(
            json.dumps({"info": {}, "licenses": [], "images": images, "annotations": anns}))
        for k, img in enumerate(images):
            path = root / "images" / folder / img["file_name"]
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (16, 12), (20 * k % 256, 90, 160)).save(path, format="JPEG")
            split = "train" if folder == "train2014" else ("val", "test", "restval")[min(k // 2, 2)]
            karpathy.append({"cocoid": img["id"], "split": split, "filepath": folder, "filename": img["file_name"]})
    (root / "dataset_coco.json").write_text(json.dumps({"images": karpathy, "dataset": "coco"}))


@pytest.fixture
def offline(monkeypatch):
    """No MS-COCO or Karpathy host answers (and none is ever really contacted)."""
    closed = closed_port_url()
    monkeypatch.setattr(mscoco, "COCO_BASE_URL", closed)
    monkeypatch.setattr(mscoco, "KARPATHY_SPLIT_SOURCES", (f"{closed}/caption_datasets.zip",))
    return closed


def small_coco_cfg(tmp_path, **kw):
    """The coco profile at toy sizes: 8-px resize, EfficientNet-Lite0 (pip-installed weights) on 64-px inputs."""
    settings = {"image_size": 8, "encoder": "efficientnet_lite0", "encoder_input_size": 64, "grid_size": 2,
                "batch_size": 8, "num_workers": 0, "device": "cpu", "mixed_precision": False, **kw}
    return get_config("coco", data_root=tmp_path / "data", build_dir=tmp_path / "build", **settings)


def test_prepare_coco_profile_downloads_resizes_then_caches_features_from_the_resized_images(tmp_path, offline,
                                                                                             capsys):
    cfg = small_coco_cfg(tmp_path)
    write_official_2014(cfg.dataset_dir)
    summary = prep.prepare(cfg, progress=False)
    assert summary["image_root"] == str(cfg.dataset_dir / "images_8px") == str(resize.image_root(cfg))
    assert set(summary["seconds"]) == {"download", "resize", "features"}
    assert summary["feature_shape"] == [18, 4, 320]
    cache = features.FeatureCache.load(summary["feature_cache"])
    assert cache.parts["source"] == {"kind": "folder", "resized": 8}  # the key says: built from resized images
    assert "Resizing the 18 images once" in capsys.readouterr().out
    again = prep.prepare(cfg, progress=False)  # everything done: nothing is redone
    assert again["feature_cache"] == summary["feature_cache"] and "Resizing" not in capsys.readouterr().out
    assert prep.plan(cfg) == []


def test_prepare_stops_before_the_features_when_images_are_corrupt(tmp_path, offline, capsys):
    cfg = small_coco_cfg(tmp_path)
    write_official_2014(cfg.dataset_dir)
    bad = cfg.image_dir / "val2014" / "COCO_val2014_000000000044.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(prep.PrepareError) as err:
        prep.prepare(cfg, progress=False)
    assert one_sentence(str(err.value)) and "feature cache was not built" in str(err.value)
    assert f"val2014/{bad.name}" in capsys.readouterr().out  # the resize step named the file
    assert not Path(cfg.feature_dir).exists()


def test_prepare_says_in_one_sentence_when_the_encoder_weights_cannot_be_downloaded(tmp_path, offline, monkeypatch):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError(OSError("Temporary failure in name resolution"))

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    cfg = small_coco_cfg(tmp_path, encoder="resnet18")
    write_official_2014(cfg.dataset_dir)
    with pytest.raises(prep.PrepareError) as err:
        prep.prepare(cfg, progress=False)
    message = str(err.value)
    assert one_sentence(message) and message.startswith("The ImageNet weights of resnet18 could not be downloaded "
                                                         "from https://download.pytorch.org")
    assert "resnet18-" in message and "checkpoints" in message
    assert resize.image_root(cfg) == cfg.dataset_dir / "images_8px"  # the steps before it are done and kept


def test_prepare_cli_on_the_quick_profile_is_an_offline_smoke_test(tmp_path, monkeypatch, capsys):
    def tiny(profile=None, **kw):
        return get_config(profile, data_root=tmp_path / "data", build_dir=tmp_path / "build", n_images=24,
                          split_fractions=(0.5, 0.25, 0.25), **kw)

    monkeypatch.setattr(prep, "get_config", tiny)
    assert prep.main(["--profile", "quick", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "The synthetic dataset is not generated yet" in out and "feature cache" in out
    assert not (tmp_path / "data").exists()  # a dry run writes nothing
    assert prep.main(["--profile", "quick"]) == 0
    out = capsys.readouterr().out
    cfg = tiny("quick")
    assert f"Ready: images read from {cfg.image_dir}; feature cache {cfg.feature_dir}" in out
    assert f"({cfg.n_images}, {cfg.grid_size ** 2}, " in out  # one feature grid per image
    assert prep.main(["--profile", "quick", "--dry-run"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert prep.main(["--profile", "quick", "--subset", "100"]) == 2
    err = capsys.readouterr().err
    assert "--subset only apply to MS-COCO" in err and "--profile coco" in err


@pytest.mark.parametrize("command", [prep.main, lambda argv: cli_main(["dataset", *argv[1:]])],
                         ids=["prepare", "dataset"])
def test_a_former_or_unknown_profile_name_is_one_sentence_and_exit_2(command, tmp_path, monkeypatch, capsys):
    """`--profile full` (renamed `coco`) and an unknown name stop before anything is written, naming what to use."""
    monkeypatch.setenv("LAB_DATA_DIR", str(tmp_path / "data"))
    assert command(["--profile", "full"]) == 2
    err = capsys.readouterr().err.removesuffix("\n")
    assert err.startswith("error: The profile 'full' is now called 'coco' (MS-COCO);") and "--profile coco" in err
    assert one_sentence(err)
    assert command(["--profile", "huge"]) == 2
    err = capsys.readouterr().err.removesuffix("\n")
    assert err == "error: Unknown profile 'huge'; use one of quick, flickr8k, coco."
    assert not (tmp_path / "data").exists()


def test_prepare_cli_keeps_the_prepared_subset_unless_told_otherwise(tmp_path, offline, monkeypatch, capsys):
    cfg = small_coco_cfg(tmp_path)
    write_official_2014(cfg.dataset_dir)
    monkeypatch.setattr(prep, "get_config", lambda profile=None, **kw: small_coco_cfg(tmp_path, **kw))
    assert prep.main(["--profile", "coco", "--no-features", "--subset", "6"]) == 0
    assert mscoco.prepared_subset(cfg) == 6 and len(coco.load_captions(cfg).imgs) == 6
    capsys.readouterr()
    assert prep.main(["--profile", "coco", "--no-features"]) == 0  # a plain re-run
    assert "Keeping the 6-image subset prepared before" in capsys.readouterr().out
    assert mscoco.prepared_subset(cfg) == 6
    assert prep.main(["--profile", "coco", "--no-features", "--subset", "all"]) == 0
    assert mscoco.prepared_subset(cfg) is None and len(coco.load_captions(cfg).imgs) == 18
    assert resize.image_root(cfg) == cfg.dataset_dir / "images_8px"
    with pytest.raises(SystemExit):
        prep.main(["--profile", "coco", "--subset", "lots"])
    assert "'lots' is not a number of images or `all`" in capsys.readouterr().err


def test_prepare_coco_dry_run_offline_names_every_missing_piece_in_one_sentence(tmp_path, monkeypatch, capsys):
    # The message under test must not depend on how full the test machine's disk is, or on its torch cache.
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**14, 0, 10**14))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch-hub"))
    monkeypatch.setenv("LAB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LAB_BUILD_DIR", str(tmp_path / "build"))
    closed = closed_port_url()
    assert prep.main(["--profile", "coco", "--dry-run", "--base-url", closed]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith(f"error: The coco profile is not prepared under {tmp_path / 'data' / 'coco2014'} "
                               "(missing: 2014 caption annotations, Karpathy split (optional), train2014 images, "
                               "val2014 images, resized images, resnet101 weights, feature cache) and "
                               f"{closed}")
    assert one_sentence(lines[0]) and "LAB_PROFILE=quick" in lines[0]
    pieces = [line.removeprefix("  - ") for line in lines[1:]]
    assert len(pieces) == 7 and all(one_sentence(p) for p in pieces)
    assert "train2014.zip (13.5 GB)" in pieces[2] and "images_256px" in pieces[4]
    assert "resnet101-cd907fc2.pth (170.5 MB)" in pieces[5] and "7x7 grid at 224 px" in pieces[6]
    assert not (tmp_path / "data").exists() and not (tmp_path / "build").exists()
    assert prep.main(["--profile", "coco", "--dry-run", "--no-features", "--year", "2017", "--subset", "500",
                      "--base-url", closed]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert f"{tmp_path / 'data' / 'coco2017'} (missing: 2017 caption annotations" in lines[0]
    assert "500 subset images" in lines[0] and "weights" not in lines[0]
    assert "annotations_trainval2017.zip (252.9 MB)" in lines[1] and "/train2017/" in lines[3]


def test_prepare_command_runs_as_a_module(tmp_path):
    env = {**os.environ, "LAB_DATA_DIR": str(tmp_path / "data"), "LAB_BUILD_DIR": str(tmp_path / "build")}
    done = subprocess.run([sys.executable, "-m", "labutils", "prepare", "--profile", "coco", "--dry-run",
                           "--no-features", "--base-url", closed_port_url()],
                          capture_output=True, text=True, env=env, timeout=60, cwd=Path(__file__).parents[1])
    assert done.returncode == 1
    error = done.stderr.splitlines()
    assert error[0].startswith("error: The coco profile is not prepared under") and one_sentence(error[0])
    assert all(one_sentence(line.removeprefix("  - ")) for line in error[1:])
    assert "prepare" in subprocess.run([sys.executable, "-m", "labutils", "--help"], capture_output=True,
                                       text=True, timeout=60, cwd=Path(__file__).parents[1]).stdout


def test_prepare_cli_refuses_a_data_folder_it_did_not_write_in_one_sentence(tmp_path, monkeypatch, capsys):
    def tiny(profile=None, **kw):
        return get_config(profile, data_root=tmp_path / "data", build_dir=tmp_path / "build", n_images=24,
                          split_fractions=(0.5, 0.25, 0.25), **kw)

    monkeypatch.setattr(prep, "get_config", tiny)
    cfg = tiny("quick")
    theirs = Path(cfg.dataset_dir)
    theirs.mkdir(parents=True)
    (theirs / "my_photo.jpg").write_bytes(b"not the lab's")
    assert prep.main(["--profile", "quick"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(theirs) in err and "did not write" in err
    assert "\n" not in err and "Traceback" not in err
    assert (theirs / "my_photo.jpg").read_bytes() == b"not the lab's"
