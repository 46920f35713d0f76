"""Checkpoints: one weights_only-loadable file, atomic writes, clear errors, RNG state round trips."""

import random

import numpy as np
import pytest
import torch

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
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(ckpt.CheckpointError, match="truncated or corrupt"):
        ckpt.load_checkpoint(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(ckpt.CheckpointError, match="delete it and train again"):
        ckpt.load_checkpoint(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.ones(1)}, foreign)
    with pytest.raises(ckpt.CheckpointError, match="not a labutils checkpoint"):
        ckpt.load_checkpoint(foreign)


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
