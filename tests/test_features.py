"""Tests for labutils.features: cache keys, reuse without re-encoding, resume after interruption, fp16 storage."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from labutils import data, encoders, features, get_config


class Counting(nn.Module):
    """Pass-through layer that counts encoder calls and can fail on a chosen call (to simulate a crash)."""

    calls = 0  # class attributes: shared by the deep copy the cache makes of the encoder
    fail_on_call = None

    def forward(self, x):
        """Count this call, maybe raise, else return x unchanged."""
        Counting.calls += 1
        if Counting.fail_on_call == Counting.calls:
            raise KeyboardInterrupt
        return x


@pytest.fixture(autouse=True)
def reset_counter():
    Counting.calls, Counting.fail_on_call = 0, None


def tiny_encoder(grid_size=2, name="tiny", weights_id="tiny-v1"):
    """A small deterministic CNN with the Encoder interface (fast enough for many builds)."""
    torch.manual_seed(0)
    body = nn.Sequential(Counting(), nn.Conv2d(3, 8, 5, stride=4, padding=2), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 6, 3, stride=2, padding=1))
    return encoders.Encoder(name, body, None, out_channels=6, grid_size=grid_size,
                          normalization=encoders.IMAGENET, weights_id=weights_id, input_size=32)


@pytest.fixture
def cfg(tiny_cfg, tmp_path):
    """The shared tiny dataset, but a private build folder per test and small images for speed."""
    return tiny_cfg.replace(build_dir=tmp_path / "build", encoder_input_size=32, batch_size=8)


@pytest.fixture
def ids(cfg):
    return json.loads(cfg.split_file.read_text())["train"]


def test_cache_key_changes_with_everything_the_features_depend_on(cfg, ids):
    base = features.cache_key(features.cache_parts(cfg, tiny_encoder(), ids))
    assert base.startswith("tiny-32px-g2-")
    variants = [
        features.cache_parts(cfg, tiny_encoder(grid_size=3), ids),
        features.cache_parts(cfg.replace(encoder_input_size=64), tiny_encoder(), ids),
        features.cache_parts(cfg, tiny_encoder(name="other"), ids),
        features.cache_parts(cfg, tiny_encoder(weights_id="tiny-v2"), ids),
        features.cache_parts(cfg, tiny_encoder(), ids[:-1]),
    ]
    keys = {features.cache_key(p) for p in variants}
    assert base not in keys and len(keys) == len(variants)
    # the same images in another order are the same cache
    assert features.build_feature_cache(cfg, tiny_encoder(), reversed(ids), progress=False).key == base


def test_bfloat16_features_are_another_cache_and_close_to_float32_ones(cfg, ids, monkeypatch):
    # On a CPU with hardware bfloat16 the cache is built under autocast: its key says so, and its rows are the
    # float32 features to bfloat16's precision (not zeros, not another image's).
    from labutils.infra import environment

    monkeypatch.setattr(environment, "native_bfloat16", lambda: True)
    mixed = cfg.replace(mixed_precision=True)
    plain_parts, mixed_parts = (features.cache_parts(c, tiny_encoder(), ids) for c in (cfg, mixed))
    assert "precision" not in plain_parts and mixed_parts == plain_parts | {"precision": "bfloat16"}
    plain = features.build_feature_cache(cfg, tiny_encoder(), ids, progress=False)
    reduced = features.build_feature_cache(mixed, tiny_encoder(), ids, progress=False)
    assert reduced.key != plain.key
    a, b = plain.batch(ids).float(), reduced.batch(ids).float()
    assert not torch.equal(a, b) and torch.allclose(a, b, rtol=0.02, atol=0.02 * float(a.abs().max()))


def test_a_changed_dataset_gets_a_new_cache(cfg, ids, tmp_path):
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(cfg.data_root, copy)
    moved = cfg.replace(data_root=copy)
    assert features.cache_parts(moved, tiny_encoder(), ids) == features.cache_parts(cfg, tiny_encoder(), ids)
    marker = moved.dataset_dir / "generator.json"
    params = json.loads(marker.read_text())
    marker.write_text(json.dumps({**params, "seed": params["seed"] + 1}))
    assert features.cache_parts(moved, tiny_encoder(), ids) != features.cache_parts(cfg, tiny_encoder(), ids)


def test_second_build_reuses_the_cache_without_encoding(cfg, ids):
    first = features.build_feature_cache(cfg, tiny_encoder(), ids, progress=False)
    # one call per batch, plus two for inference_copy's self-check (original and copy)
    assert Counting.calls == -(-len(ids) // 8) + 2
    Counting.calls = 0
    second = features.build_feature_cache(cfg, tiny_encoder(), ids, progress=False)
    assert Counting.calls == 0
    assert second.folder == first.folder
    np.testing.assert_array_equal(np.asarray(second.features), np.asarray(first.features))
    assert features.find_cache(cfg, tiny_encoder(), ids).folder == first.folder
    assert features.find_cache(cfg, tiny_encoder(grid_size=1), ids) is None


def test_features_are_fp16_on_disk_and_float32_grids_when_read(cfg, ids):
    encoder = tiny_encoder()
    cache = features.build_feature_cache(cfg, encoder, ids, progress=False)
    on_disk = np.load(cache.folder / features.FEATURES_FILE, mmap_mode="r")  # a self-describing .npy
    assert on_disk.dtype == np.float16 and on_disk.shape == (len(ids), 4, 6) == cache.shape
    one = cache.source(ids[3])
    assert one.dtype == torch.float32 and one.shape == (4, 6)
    assert cache.batch(ids[:5]).shape == (5, 4, 6)
    torch.testing.assert_close(cache.batch(ids[3:4])[0], one)
    assert ids[0] in cache and 10_000 not in cache
    with pytest.raises(KeyError, match="not in this feature cache"):
        cache.source(10_000)
    # and they are what the encoder computes on the transformed image (up to fp16 rounding)
    from labutils.data import load_image

    name = data.file_names_from_captions(cfg.captions_file)[ids[3]]
    image = encoder.eval_transform(32)(load_image(cfg.image_dir / name))
    with torch.no_grad():
        want, _ = encoder(image[None])
    torch.testing.assert_close(one, want[0], rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("how", ["callback", "encoder"])
def test_interrupted_build_resumes_and_matches_an_uninterrupted_one(cfg, ids, tmp_path, how):
    def stop_after_first_chunk(done, total):
        raise KeyboardInterrupt

    chunk_size = 16
    if how == "encoder":
        # self-check, two batches, then a crash inside the third batch; no chunk was committed yet, so the
        # two finished batches survive only through the commit on the way out
        Counting.fail_on_call, chunk_size = 2 + 3, 10_000
    with pytest.raises(KeyboardInterrupt):
        features.build_feature_cache(cfg, tiny_encoder(), ids, chunk_size=chunk_size, progress=False,
                                     on_chunk=stop_after_first_chunk if how == "callback" else None)
    folder = cfg.feature_dir / features.cache_key(features.cache_parts(cfg, tiny_encoder(), ids))
    state = json.loads((folder / features.PROGRESS_FILE).read_text())
    assert state == {"done": 16, "complete": False}
    with pytest.raises(features.CacheNotFoundError, match="unfinished"):
        features.FeatureCache.load(folder)

    Counting.calls, Counting.fail_on_call = 0, None
    resumed = features.build_feature_cache(cfg, tiny_encoder(), ids, chunk_size=16, progress=False)
    assert Counting.calls == 2 + -(-(len(ids) - 16) // 8)  # only the images not yet encoded
    assert resumed.meta["build"]["images_encoded"] == len(ids) - 16

    fresh = features.build_feature_cache(cfg.replace(build_dir=tmp_path / "fresh"), tiny_encoder(), ids,
                                         progress=False)
    np.testing.assert_array_equal(np.asarray(resumed.features), np.asarray(fresh.features))


def test_fine_tunable_encoders_are_refused(cfg, ids):
    encoder = encoders.build_encoder("resnet18", pretrained=False, fine_tune=True)
    with pytest.raises(features.FeatureCacheError, match="fine_tune=False"):
        features.build_feature_cache(cfg, encoder, ids, progress=False)


def test_images_from_a_mapping_or_a_callable(cfg, ids):
    from labutils.data import load_image

    names = data.file_names_from_captions(cfg.captions_file)
    paths = {i: str(cfg.image_dir / names[i]) for i in ids[:6]}
    by_path = features.build_feature_cache(cfg, tiny_encoder(), ids[:6], paths, progress=False)
    by_call = features.build_feature_cache(cfg, tiny_encoder(), ids[:6], lambda i: load_image(paths[i]),
                                           progress=False)
    assert by_path.folder != by_call.folder  # different sources, different caches
    np.testing.assert_array_equal(np.asarray(by_path.features), np.asarray(by_call.features))


def test_missing_images_and_empty_id_lists_are_clear_errors(cfg, ids):
    with pytest.raises(features.FeatureCacheError, match="No image ids"):
        features.build_feature_cache(cfg, tiny_encoder(), [], progress=False)
    with pytest.raises(FileNotFoundError, match="No image folder"):
        features.build_feature_cache(cfg, tiny_encoder(), ids, cfg.data_root / "nowhere", progress=False)
    with pytest.raises(features.FeatureCacheError, match="not in the captions file"):
        features.build_feature_cache(cfg, tiny_encoder(), [99_999], progress=False)


def test_cache_works_as_a_caption_dataset_source_and_travels_to_workers(cfg, ids):
    from labutils.coco import captions_by_image, load_captions
    from labutils.data import CaptionDataset
    from labutils.vocab import Vocabulary

    cache = features.build_feature_cache(cfg, tiny_encoder(), ids, progress=False)
    captions = captions_by_image(load_captions(cfg))
    vocab = Vocabulary.build(c for i in ids for c in captions[i])
    item = CaptionDataset(ids, captions, vocab, cache.source)[0]
    assert item[0].shape == (4, 6) and item[0].dtype == torch.float32
    # what a "spawn" DataLoader worker receives: the path, not the feature array
    state = cache.__getstate__()
    assert set(state) == {"folder", "meta"}
    clone = features.FeatureCache.__new__(features.FeatureCache)
    clone.__setstate__(state)
    torch.testing.assert_close(clone.source(ids[0]), cache.source(ids[0]))


def test_ensure_features_builds_the_profile_cache_once_with_the_real_encoder(tiny_cfg, tmp_path):
    cfg = tiny_cfg.replace(build_dir=tmp_path / "build")
    encoder = encoders.build_encoder(cfg.encoder, grid_size=cfg.grid_size)
    cache = features.ensure_features(cfg, encoder, progress=False)
    splits = json.loads(cfg.split_file.read_text())
    assert len(cache) == sum(len(v) for v in splits.values())
    assert cache.shape[1:] == (cfg.grid_size ** 2, encoder.out_channels)
    assert np.isfinite(np.asarray(cache.features, dtype=np.float32)).all()
    again = features.ensure_features(cfg, encoder, progress=False)
    assert again.folder == cache.folder and again.meta["build"] == cache.meta["build"]
    with pytest.raises(features.FeatureCacheError, match="not in"):
        features.ensure_features(cfg, encoder, splits=("train", "dev"), progress=False)


def cache_folder(cfg, ids, encoder=None):
    return cfg.feature_dir / features.cache_key(features.cache_parts(cfg, encoder or tiny_encoder(), ids))


def test_a_folder_the_lab_did_not_write_is_never_replaced(cfg, ids):
    from labutils.infra.files import NotLabFolderError

    folder = cache_folder(cfg, ids)
    folder.mkdir(parents=True)
    (folder / "features.npy").write_bytes(b"someone else's array")
    with pytest.raises(NotLabFolderError, match=f"^{folder} holds files the lab did not write"):
        features.build_feature_cache(cfg, tiny_encoder(), ids, progress=False)
    assert [p.name for p in folder.iterdir()] == ["features.npy"]
    assert (folder / "features.npy").read_bytes() == b"someone else's array"


def test_a_cache_from_an_older_labutils_is_recognised_by_its_meta(cfg, ids):
    from labutils.infra.files import MARKER_FILE

    with pytest.raises(KeyboardInterrupt):
        features.build_feature_cache(cfg, tiny_encoder(), ids, chunk_size=8, progress=False,
                                     on_chunk=lambda done, total: (_ for _ in ()).throw(KeyboardInterrupt))
    folder = cache_folder(cfg, ids)
    (folder / MARKER_FILE).unlink()  # an older labutils wrote no ownership marker
    (folder / features.PROGRESS_FILE).write_text(json.dumps({"done": 0, "complete": False}))  # nothing to resume
    cache = features.build_feature_cache(cfg, tiny_encoder(), ids, progress=False)  # replaced, not refused
    assert cache.meta["build"]["images_encoded"] == len(ids) and (folder / MARKER_FILE).is_file()


def test_rows_that_were_never_written_keep_a_cache_from_being_complete(cfg, ids):
    def clobber_row_0(done, total):  # what a second writer that recreated the file used to do
        rows = np.load(cache_folder(cfg, ids) / features.FEATURES_FILE, mmap_mode="r+")
        rows[0] = 0
        rows.flush()

    with pytest.raises(features.FeatureCacheError, match=rf"read back as never written \(first: image {ids[0]}\)"):
        features.build_feature_cache(cfg, tiny_encoder(), ids, chunk_size=8, progress=False, on_chunk=clobber_row_0)
    folder = cache_folder(cfg, ids)
    assert json.loads((folder / features.PROGRESS_FILE).read_text()) == {"done": 0, "complete": False}
    with pytest.raises(features.CacheNotFoundError, match="unfinished"):
        features.FeatureCache.load(folder)
    cache = features.build_feature_cache(cfg, tiny_encoder(), ids, progress=False)  # the next run rebuilds it
    assert np.asarray(cache.features).reshape(len(ids), -1).any(axis=1).all()


def test_a_cache_marked_complete_with_empty_rows_is_refused_and_rebuilt(cfg, ids):
    cache = features.build_feature_cache(cfg, tiny_encoder(), ids, progress=False)
    good = np.array(cache.features)
    rows = np.load(cache.folder / features.FEATURES_FILE, mmap_mode="r+")
    rows[len(ids) // 2:] = 0  # as the old race left it: complete, the second half never written
    rows.flush()
    del rows
    with pytest.raises(features.CacheDamagedError, match=rf"features of image {ids[len(ids) // 2]} were never written"):
        features.FeatureCache.load(cache.folder)
    assert features.find_cache(cfg, tiny_encoder(), ids) is None
    rebuilt = features.build_feature_cache(cfg, tiny_encoder(), ids, progress=False)
    np.testing.assert_array_equal(np.asarray(rebuilt.features), good)


def test_an_image_whose_features_really_are_zero_is_not_mistaken_for_an_unwritten_row(cfg, ids):
    body = nn.Sequential(nn.Conv2d(3, 6, 5, stride=8, padding=2, bias=False), nn.ReLU())
    encoder = encoders.Encoder("nobias", body, None, out_channels=6, grid_size=2, normalization=encoders.IMAGENET,
                             weights_id="nobias-v1", input_size=32)
    rng = torch.Generator().manual_seed(0)
    black = ids[len(ids) // 2]  # features of a black image through a conv without bias: exactly zero

    def tensors(image_id):
        return torch.zeros(3, 32, 32) if image_id == black else torch.rand(3, 32, 32, generator=rng)

    cache = features.build_feature_cache(cfg, encoder, ids, tensors, chunk_size=8, progress=False)
    assert not cache.source(black).any() and cache.source(ids[0]).any()
    state = json.loads((cache.folder / features.PROGRESS_FILE).read_text())
    assert state["zero_rows"] == [len(ids) // 2] and state["complete"]
    assert features.FeatureCache.load(cache.folder).key == cache.key


def test_the_cache_key_follows_the_images_not_when_the_captions_file_was_written(tmp_path):
    """Rewriting identical annotations (or editing a caption) keeps a real dataset's cache; renaming an image,
    which may point at another photo, gives another key."""
    import os

    cfg = get_config("quick", data_root=tmp_path / "data", dataset_name="photos")
    cfg.captions_file.parent.mkdir(parents=True)
    captions = {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
                "annotations": [{"id": 1, "image_id": 1, "caption": "a dog"}]}
    cfg.captions_file.write_text(json.dumps(captions))
    before = features.dataset_fingerprint(cfg)
    os.utime(cfg.captions_file, ns=(1, 1))  # an older file with the same content
    captions["annotations"][0]["caption"] = "a brown dog"
    cfg.captions_file.write_text(json.dumps(captions))
    assert features.dataset_fingerprint(cfg) == before
    captions["images"][1]["file_name"] = "c.jpg"
    cfg.captions_file.write_text(json.dumps(captions))
    assert features.dataset_fingerprint(cfg) != before
