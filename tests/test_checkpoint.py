"""Checkpoints: one weights_only-loadable file, atomic writes, clear errors, RNG state round trips."""

import pickle
import random

import numpy as np
import pytest
import torch
from PIL import Image

from labutils import checkpoint as ckpt
from labutils.vocab import Vocabulary


def _vocab():
    return Vocabulary.build(["a red circle", "two blue squares"])


def test_round_trip_with_weights_only(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    path = ckpt.save_checkpoint(tmp_path / "sub" / "m.pt", model.state_dict(), _vocab(), {"embed_dim": 8},
                                epoch=3, history=[{"epoch": 1, "loss": np.float32(1.5)}],
                                optimizer=optimizer.state_dict(), shape=(2, 3), array=np.arange(3))
    # The file must load with the safe loader that refuses arbitrary pickled objects.
    raw = torch.load(path, weights_only=True)
    assert raw["epoch"] == 3 and raw["config"] == {"embed_dim": 8}
    loaded = ckpt.load_checkpoint(path)
    assert all(torch.equal(loaded["model_state"][k], v) for k, v in model.state_dict().items())
    assert Vocabulary.from_dict(loaded["vocab"]) == _vocab()
    assert loaded["history"] == [{"epoch": 1, "loss": 1.5}]
    assert loaded["shape"] == [2, 3] and torch.equal(loaded["array"], torch.arange(3))
    fresh = torch.optim.Adam(torch.nn.Linear(3, 2).parameters())
    fresh.load_state_dict(loaded["optimizer"])
    assert fresh.state_dict()["state"][0]["step"] == 1


def test_write_is_atomic_and_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "m.pt"
    ckpt.save_checkpoint(path, {"w": torch.ones(2)}, _vocab(), {}, epoch=1)
    ckpt.save_checkpoint(path, {"w": torch.zeros(2)}, _vocab(), {}, epoch=2)
    assert ckpt.load_checkpoint(path)["epoch"] == 2
    with pytest.raises(Exception):  # noqa: B017 - torch.save's own error type for an unpicklable object
        ckpt.save_checkpoint(path, {"w": torch.full((2,), 7.0)}, _vocab(), {}, epoch=3, bad=lambda: 0)
    assert ckpt.load_checkpoint(path)["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"], "no temporary file may be left behind"


def test_checkpoint_file_mode_follows_the_umask_not_mkstemps_private_mode(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        path = ckpt.save_checkpoint(tmp_path / "m.pt", {"w": torch.ones(1)}, _vocab(), {})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_missing_corrupt_and_foreign_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoint at"):
        ckpt.load_checkpoint(tmp_path / "nothing.pt")
    good = ckpt.save_checkpoint(tmp_path / "good.pt", {"w": torch.ones(1000)}, _vocab(), {})
    for name, data in (("truncated.pt", good.read_bytes()[:2000]), ("empty.pt", b""),
                       ("cut_zip_header.pt", b"PK\x03\x04 cut short")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ckpt.CheckpointError, match="cut short or damaged") as caught:
            ckpt.load_checkpoint(tmp_path / name)
        assert caught.value.kind == "damaged"
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.ones(1)}, foreign)
    with pytest.raises(ckpt.CheckpointError, match="not a labutils checkpoint"):
        ckpt.load_checkpoint(foreign)


@pytest.mark.parametrize(("name", "content", "looks_like"), [
    ("photo.jpg", None, "a JPEG image"),
    ("vocab.json", b'{"itos": ["<pad>", "<start>"]}', "a JSON file"),
    ("notes.txt", b"this is not a checkpoint at all", "some other format"),
    ("model.pkl", pickle.dumps({"w": [1.0]}), "plain Python pickle"),
])
def test_a_file_that_is_not_a_checkpoint_is_named_as_such_and_never_called_dangerous(tmp_path, name, content,
                                                                                     looks_like):
    path = tmp_path / name
    if content is None:
        Image.new("RGB", (32, 32), (10, 200, 30)).save(path)
    else:
        path.write_bytes(content)
    with pytest.raises(ckpt.CheckpointError) as caught:
        ckpt.load_checkpoint(path)
    message = str(caught.value)
    assert caught.value.kind == "not_torch" and looks_like in caught.value.looks_like
    assert "is not a checkpoint" in message and looks_like in message
    # The old message told learners who swapped two arguments to delete their photo ("could run code").
    assert "delete" not in message and "run code" not in message and "\n" not in message


class _CreatesMarkerWhenUnpickled:
    """Unpickling this calls open(marker, "w"): the file appears only if the loader ran the pickle's code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


class _ArbitraryObject:
    pass


def test_a_checkpoint_holding_pickled_objects_is_refused_without_running_them(tmp_path):
    """The weights_only guard: without it torch.load would run the payload (creating the marker) and load both."""
    marker = tmp_path / "code_ran"
    header = {"format": ckpt.CHECKPOINT_FORMAT, "version": ckpt.CHECKPOINT_VERSION, "vocab": {}, "config": {}}
    runs_code = tmp_path / "runs_code.pt"
    torch.save({**header, "model_state": {}, "payload": _CreatesMarkerWhenUnpickled(marker)}, runs_code)
    holds_object = tmp_path / "holds_object.pt"
    torch.save({**header, "model_state": {}, "extra": _ArbitraryObject()}, holds_object)
    for path, culprit in ((runs_code, "open"), (holds_object, "_ArbitraryObject")):
        try:
            ckpt.load_checkpoint(path)
            refusal = None
        except ckpt.CheckpointError as exc:
            refusal = exc
        assert not marker.exists(), "load_checkpoint ran code from the file: torch.load must use weights_only=True"
        assert refusal is not None, f"{path.name} was loaded although it holds a pickled object"
        assert refusal.kind == "pickled" and "refused" in str(refusal) and culprit in str(refusal)
        assert "delete" not in str(refusal)


def test_a_full_disk_is_one_sentence_and_keeps_the_previous_checkpoint(small_disk):
    from labutils.infra.files import DiskFullError

    disk = small_disk(256 * 1024)
    path = ckpt.save_checkpoint(disk / "m.pt", {"w": torch.ones(1000)}, _vocab(), {}, epoch=1)
    with pytest.raises(DiskFullError) as caught:  # 2 MB of weights on a 256 KiB disk
        ckpt.save_checkpoint(path, {"w": torch.zeros(500_000)}, _vocab(), {}, epoch=2)
    message = str(caught.value)
    assert "is full" in message and "m.pt" in message and "\n" not in message
    assert ckpt.load_checkpoint(path)["epoch"] == 1
    assert torch.equal(ckpt.load_checkpoint(path)["model_state"]["w"], torch.ones(1000))
    assert sorted(p.name for p in disk.iterdir()) == ["m.pt"], "the temporary file must be removed"


def test_rng_state_round_trip_through_a_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.normal()  # leaves a cached gaussian in NumPy's legacy state
    path = ckpt.save_checkpoint(tmp_path / "rng.pt", {}, _vocab(), {}, rng=ckpt.rng_state())
    expected = (random.random(), np.random.normal(), np.random.rand(3).tolist(), torch.rand(3))
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    ckpt.set_rng_state(ckpt.load_checkpoint(path)["rng"])
    got = (random.random(), np.random.normal(), np.random.rand(3).tolist(), torch.rand(3))
    assert got[:3] == expected[:3]
    assert torch.equal(got[3], expected[3])
