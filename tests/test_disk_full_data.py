"""A full disk gives one sentence and loses nothing: the feature cache (fresh build and resume), synthetic dataset
generation and the bulk resize, each on a real, small tmpfs (`small_disk`) that really runs out of space.

The feature-cache builds run in their own process (tests/feature_cache_worker.py): writing through a memory map
to a disk with no room left is answered by the kernel with SIGBUS, which would kill pytest itself.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import feature_cache_worker as worker
import numpy as np
import pytest
from PIL import Image

from labutils.infra import resize, synthetic
from labutils.infra.files import DiskFullError

WIDE = 512  # encoder channels: 16 positions x 512 x 2 bytes = 16 KiB a row, 640 KiB for the 40 training images
ROW = 16 * WIDE * 2


@pytest.fixture(scope="module")
def wide_reference(tiny_cfg, tmp_path_factory, single_torch_thread):
    """features.npy of the wide cache built undisturbed on an ordinary disk."""
    cfg = worker.config(tiny_cfg.data_root, tmp_path_factory.mktemp("wide_reference"))
    return (worker.build(cfg, WIDE).folder / "features.npy").read_bytes()


def run_worker(tiny_cfg, build_dir, signals, name, **spec):
    spec_file = signals / f"{name}.spec.json"
    spec_file.write_text(json.dumps({"data_root": str(tiny_cfg.data_root), "build_dir": str(build_dir),
                                     "name": name, "signals": str(signals), "channels": WIDE, **spec}))
    return subprocess.run([sys.executable, worker.__file__, str(spec_file)], capture_output=True, text=True,
                          timeout=300)


def assert_one_disk_full_sentence(done, disk):
    assert done.returncode == 3, f"exit {done.returncode} (SIGBUS is {-signal.SIGBUS}): {done.stderr[-800:]}"
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"The disk holding {disk}") and "the feature cache" in lines[0]
    assert lines[0].count(". ") == 0 and lines[0].endswith("run it again.")
    assert "Traceback" not in done.stderr


def test_a_fresh_feature_cache_on_a_full_disk_is_one_sentence_not_sigbus(tiny_cfg, tmp_path, small_disk):
    disk = small_disk(256 * 1024)  # the cache needs 640 KiB
    signals = tmp_path / "signals"
    signals.mkdir()
    done = run_worker(tiny_cfg, disk, signals, "fresh")
    assert_one_disk_full_sentence(done, disk)
    feature_dir = disk / "features" / "quick"
    assert [p.name for p in feature_dir.iterdir() if not p.name.endswith(".lock")] == []  # no half-made cache


def sparse_tail(path: Path, keep: int) -> None:
    """Make everything after the first `keep` bytes of `path` a hole, as a file an older labutils wrote is."""
    size = path.stat().st_size
    head = path.read_bytes()[:keep]
    with open(path, "r+b") as f:
        f.truncate(0)
        f.write(head)
        f.truncate(size)


def fill(disk: Path, leave: int) -> Path:
    """A file that takes all but `leave` bytes of the disk's free space."""
    filler = disk / "filler"
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with open(filler, "wb") as f:
        f.write(b"\1" * max(0, free - leave))
    return filler


def test_resuming_a_sparse_feature_cache_on_a_full_disk_keeps_every_committed_row(tiny_cfg, tmp_path, small_disk,
                                                                                   wide_reference):
    disk = small_disk(1024 * 1024)
    cfg = worker.config(tiny_cfg.data_root, disk)

    def stop(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # interrupted after its first commit (here: room enough, no SIGBUS risk)
        worker.build(cfg, WIDE, on_chunk=stop)
    [folder] = [p for p in (disk / "features" / "quick").iterdir() if p.is_dir()]
    features = folder / "features.npy"
    header = len(wide_reference) - 40 * ROW
    committed = header + worker.CHUNK * ROW
    assert json.loads((folder / "progress.json").read_text()) == {"done": worker.CHUNK, "complete": False}
    sparse_tail(features, committed)
    filler = fill(disk, 64 * 1024)  # the 28 rows still to write need 448 KiB

    signals = tmp_path / "signals"
    signals.mkdir()
    done = run_worker(tiny_cfg, disk, signals, "resume")  # its own process: without reserved blocks, SIGBUS
    assert_one_disk_full_sentence(done, disk)
    assert json.loads((folder / "progress.json").read_text()) == {"done": worker.CHUNK, "complete": False}
    assert features.read_bytes()[:committed] == wide_reference[:committed]  # the committed rows are intact

    filler.unlink()  # space freed: the same call finishes the job
    cache = worker.build(cfg, WIDE)
    assert cache.meta["build"]["images_encoded"] == 40 - worker.CHUNK
    assert features.read_bytes() == wide_reference


def test_synthetic_generation_on_a_full_disk_keeps_the_previous_dataset(small_disk):
    disk = small_disk(256 * 1024)
    folder = synthetic.generate(disk / "ds", n_images=4, progress=False)
    before = synthetic.fingerprint(folder)
    with pytest.raises(DiskFullError) as err:
        synthetic.generate(folder, n_images=400, progress=False)
    message = str(err.value)
    assert message.startswith(f"The disk holding {disk} is full") and "the synthetic dataset" in message
    assert message.count(". ") == 0
    assert synthetic.fingerprint(folder) == before  # the previous dataset, byte for byte
    assert sorted(p.name for p in disk.iterdir()) == [".ds.lock", "ds"]  # the half-written one is gone
    assert synthetic.generate(folder, n_images=5, progress=False) == folder  # and the disk is usable again


def test_resize_on_a_full_disk_stops_with_one_sentence_not_a_list_of_corrupt_images(tmp_path, small_disk):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(30):  # noise compresses badly: about 25 KB per resized image, 750 KB in all
        Image.fromarray(rng.integers(0, 256, (100, 150, 3), dtype=np.uint8)).save(src / f"{i:02d}.png")
    disk = small_disk(128 * 1024)
    with pytest.raises(DiskFullError, match=f"^The disk holding {disk}.* while writing the resized images"):
        resize.resize_all(src, disk / "dst", 100, workers=2, progress=False)
    left = [p for p in (disk / "dst").iterdir() if not p.name.startswith(".labutils")]
    assert not [p for p in left if p.name.endswith(".tmp")]  # nothing half-written
    for p in left:  # and what was written is whole
        with Image.open(p) as im:
            im.load()
