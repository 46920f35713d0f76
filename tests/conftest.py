"""Shared fixtures: a tiny synthetic dataset and a quick config pointing at it."""

import os

import pytest

os.environ.setdefault("LAB_PROFILE", "quick")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def tiny_cfg(tmp_path_factory):
    """Quick-profile config on a 60-image synthetic dataset in a temporary folder (40/10/10 split)."""
    from labutils import get_config
    from labutils.infra import synthetic

    root = tmp_path_factory.mktemp("lab")
    cfg = get_config("quick", data_root=root / "data", build_dir=root / "build", n_images=60,
                     split_fractions=(2 / 3, 1 / 6, 1 / 6))
    synthetic.ensure_synthetic(cfg, progress=False)
    return cfg


@pytest.fixture(scope="module")
def single_torch_thread():
    """Tiny tensors: a second OpenMP thread only adds synchronisation (very slow on a busy machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def small_disk(tmp_path):
    """Factory: `small_disk(bytes)` mounts a real tmpfs of that size and returns its path (unmounted afterwards).

    A full disk must be a real ENOSPC from the kernel (and SIGBUS for an unreserved memory map), which no mock
    reproduces. Mounting needs root, as CI and the lab's build machine have; elsewhere the test is skipped and says
    why.
    """
    import subprocess

    mounts = []

    def make(size: int):
        point = tmp_path / f"disk{len(mounts)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(size)}", "tmpfs", str(point)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"a full-disk test needs a small tmpfs and `mount` refused: {done.stderr.strip()}")
        mounts.append(point)
        return point

    yield make
    for point in reversed(mounts):
        subprocess.run(["umount", "-l", str(point)], check=False)
