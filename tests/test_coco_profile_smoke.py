"""Smoke test of the coco-profile (MS-COCO) code path of the notebooks, offline on CPU ("same functions, bigger sizes").

Only the two things that need the network are faked, honestly and outside the library:
- the ResNet-101 ImageNet weights: a randomly initialised state dict (BatchNorm statistics calibrated on noise)
  saved under the file name torchvision's weight enum downloads to, in a temporary TORCH_HOME (`torch.hub.load_state_dict_from_url` checks the hash only of a
  file it downloads, not of one already in its cache);
- MS-COCO 2014: an already-prepared `coco2014` folder (converted annotations with `train2014/...`/`val2014/...`
  file names, splits.json, and the prepared.json `prepare_mscoco` writes) built from the synthetic generator at the
  coco profile's 256 px, so `course.ensure_dataset(cfg)` finds it converted and complete and only resizes it once.
Everything else (encoder, 7x7 grid, 512-wide decoder, batch 128, 20 epochs, min_freq 5, ...) is the coco profile.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

N_IMAGES = 80  # 64 / 8 / 8 train / val / test
# All of them, in order: 05 builds the feature cache, 06 and 07 read it, 07 writes the checkpoints that 08-11 load.
NOTEBOOKS = ("00_setup", "01_coco_api", "02_augmentation", "03_vocabulary", "04_dataset", "05_encoder",
             "06_decoder", "07_training", "08_evaluation", "09_attention", "10_beyond", "11_applications")
# 64 training images make one batch of 128 per epoch: a handful of optimiser steps (early stopping ends the run after
# 5 epochs) cannot reach the BLEU-4 that 07-09 ask of a run on MS-COCO, so here training and its checks need only run.
EDITS = {name: [("cfg = labutils.get_config(PROFILE)", "cfg = labutils.get_config(PROFILE, min_bleu4=0.0)")]
         for name in ("07_training", "08_evaluation", "09_attention", "10_beyond", "11_applications")}


def build_fake_coco2014(dataset_dir: Path, n_images: int = N_IMAGES, image_size: int = 256) -> dict:
    """Write an already-prepared MS-COCO 2014 folder (lab layout) from synthetic scenes; return prepared.json."""
    from labutils.infra import synthetic

    source = synthetic.generate(dataset_dir.parent / "synthetic_src", n_images=n_images, image_size=image_size,
                                progress=False)
    splits = json.loads((source / "splits.json").read_text())
    # As convert_coco does: Karpathy's train comes from train2014 (+ restval), val and test from val2014.
    folder_of = {i: "train2014" for i in splits["train"]} | {i: "val2014" for s in ("val", "test") for i in splits[s]}
    file_names = {}
    for image_id, folder in folder_of.items():
        name = f"{folder}/COCO_{folder}_{image_id:012d}.jpg"
        (dataset_dir / "images" / folder).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / "images" / f"synthetic_{image_id:06d}.jpg", dataset_dir / "images" / name)
        file_names[image_id] = name
    (dataset_dir / "annotations").mkdir(parents=True, exist_ok=True)
    for kind in ("captions", "instances"):
        data = json.loads((source / "annotations" / f"{kind}.json").read_text())
        for image in data["images"]:
            image["file_name"] = file_names[image["id"]]
            image["coco_url"] = f"http://images.cocodataset.org/{file_names[image['id']]}"
        (dataset_dir / "annotations" / f"{kind}.json").write_text(json.dumps(data))
    (dataset_dir / "splits.json").write_text(json.dumps(splits))
    record = {"source": "MS-COCO 2014", "year": 2014, "split_source": "karpathy", "subset": None, "seed": 0,
              "instances": True, "sizes": {k: len(v) for k, v in splits.items()}}
    (dataset_dir / "prepared.json").write_text(json.dumps(record))
    shutil.rmtree(source)
    return record


def fake_resnet101_weights(torch_home: Path) -> Path:
    """Save random ResNet-101 weights where torchvision's DEFAULT weights would be downloaded to."""
    import torch
    import torchvision

    url = torchvision.models.ResNet101_Weights.DEFAULT.url
    target = torch_home / "hub" / "checkpoints" / Path(url).name
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = torchvision.models.resnet101(weights=None)
    # Freshly initialised BatchNorm statistics (mean 0, variance 1) let eval-mode activations grow through the 33
    # blocks past float16's 65,504, so 5 % of the cached features would be inf. Trained weights keep them small:
    # calibrate the statistics on a batch of noise first, as a trained network's would be on its data.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average: one batch sets the statistics
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 224, 224))
    torch.save(model.state_dict(), target)
    return target


@pytest.fixture(scope="module")
def coco_env(tmp_path_factory):
    """Environment variables of an offline coco-profile run on the fake MS-COCO and fake weights."""
    root = tmp_path_factory.mktemp("coco")
    build_fake_coco2014(root / "data" / "coco2014")
    fake_resnet101_weights(root / "torch")
    env = {"LAB_PROFILE": "coco", "LAB_DATA_DIR": str(root / "data"), "LAB_BUILD_DIR": str(root / "build"),
           "TORCH_HOME": str(root / "torch"), "TQDM_DISABLE": "1", "MPLBACKEND": "Agg",
           # Nothing may come from the network: any attempt fails at once instead of waiting for a timeout.
           "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "no_proxy": ""}
    return root, env


def test_fake_dataset_is_prepared_offline(coco_env, monkeypatch):
    """ensure_dataset on the coco profile accepts the prepared folder without the network and resizes it once."""
    root, env = coco_env
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from labutils import course, get_config
    from labutils.infra import mscoco, resize

    cfg = get_config("coco")
    assert cfg.dataset_dir == root / "data" / "coco2014" and cfg.encoder == "resnet101"
    assert mscoco.mscoco_plan(cfg) == []  # nothing left to fetch
    assert course.ensure_dataset(cfg, progress=False) == cfg.dataset_dir
    status = mscoco.mscoco_status(cfg)
    assert status["converted"] and status["resized images"] and status["train2014 images"]
    assert resize.image_root(cfg) == cfg.dataset_dir / "images_256px"


@pytest.mark.slow
def test_notebooks_run_on_the_coco_profile(coco_env, monkeypatch):
    """The coco-profile notebooks run top to bottom offline, cache 7x7x2048 ResNet-101 features and train."""
    import nbformat
    from nbclient import NotebookClient

    root, env = coco_env
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # the kernels inherit this process's environment
    notebooks = Path(__file__).resolve().parents[1] / "notebooks"
    from labutils.infra.runner import lab_notebooks

    assert tuple(p.stem for p in lab_notebooks(notebooks)) == NOTEBOOKS  # a new notebook joins this run
    timings, outputs = {}, {}
    for name in NOTEBOOKS:
        path = notebooks / f"{name}.ipynb"
        notebook = nbformat.read(path, as_version=4)
        for before, after in EDITS.get(name, []):
            cells = [c for c in notebook.cells if before in c.source]
            assert len(cells) == 1, f"{name} no longer has the line {before!r}; update EDITS"
            cells[0].source = cells[0].source.replace(before, after)
        monkeypatch.setenv("LAB_NOTEBOOK", name)
        client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                                resources={"metadata": {"path": str(notebooks)}})
        start = time.perf_counter()
        client.execute()  # raises CellExecutionError naming the cell on the first failure
        timings[name] = round(time.perf_counter() - start, 1)
        outputs[name] = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code"
                                for o in c.get("outputs", []) if o.get("output_type") == "stream")
    print("coco-profile notebook seconds:", timings)

    assert "dataset ready" in outputs["00_setup"] and "coco2014" in outputs["00_setup"]
    assert "resnet101 | weights: ResNet101_Weights.IMAGENET1K_V2 | output channels: 2048" in outputs["05_encoder"]
    # The notebook's own key for the settings it built with finds that cache (resized images and all).
    assert "as built: resnet101-224px-g7-<hash>  reuses the cache: True" in outputs["05_encoder"]
    assert "skipped on the coco profile" in outputs["09_attention"]

    # The feature cache holds a 7x7 grid of 2048 ResNet-101 channels for every image.
    import numpy as np

    caches = [p for p in (root / "build" / "features" / "coco").iterdir() if p.name.startswith("resnet101-224px-g7-")]
    assert len(caches) == 1
    meta = json.loads((caches[0] / "progress.json").read_text())
    assert meta["complete"]
    arrays = [p for p in caches[0].iterdir() if p.suffix == ".npy"]
    shapes = {np.load(p, mmap_mode="r").shape for p in arrays}
    assert (N_IMAGES, 49, 2048) in shapes, shapes

    # The trained checkpoint records the coco profile's encoder and sizes.
    from labutils import checkpoint

    saved = checkpoint.load_checkpoint(root / "build" / "checkpoints" / "coco" / "attention.pt")
    assert saved["config"]["profile"] == "coco"
    assert saved["config"]["encoder"] == "resnet101" and saved["config"]["grid_size"] == 7
    assert saved["config"]["hidden_dim"] == 512 and saved["config"]["batch_size"] == 128
    assert os.path.isfile(root / "build" / "figures" / "attention_example.png")


def test_features_beyond_float16_are_refused_not_cached(tiny_cfg, tmp_path):
    """An encoder whose activations overflow the fp16 cache (wrong weights) fails loudly instead of caching inf."""
    import torch
    from torch import nn

    from labutils import encoders, features

    cfg = tiny_cfg.replace(build_dir=tmp_path / "build", encoder_input_size=32, batch_size=8)
    ids = json.loads(cfg.split_file.read_text())["train"]
    conv = nn.Conv2d(3, 4, 8, stride=8)
    with torch.no_grad():
        conv.weight.fill_(1e4)  # sums of 192 inputs of about 1: far beyond float16's 65,504
    encoder = encoders.Encoder("huge", nn.Sequential(conv), None, out_channels=4, grid_size=2,
                             normalization=encoders.IMAGENET, weights_id="huge-v1", input_size=32)
    with pytest.raises(features.FeatureCacheError, match="float16"):
        features.build_feature_cache(cfg, encoder, ids, progress=False)
    folder = cfg.feature_dir / features.cache_key(features.cache_parts(cfg, encoder, ids))
    assert json.loads((folder / features.PROGRESS_FILE).read_text()) == {"done": 0, "complete": False}
