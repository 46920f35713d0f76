"""Shared fixtures: a tiny synthetic dataset and a quick config pointing at it."""

import os

import pytest

os.environ.setdefault("LAB_PROFILE", "quick")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def tiny_cfg(tmp_path_factory):
    """Quick-profile config on a 60-image synthetic dataset in a temporary folder (40/10/10 split)."""
    from labutils import get_config, synthetic

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
