"""One feature-cache build in its own process, for the race and full-disk tests (tests/test_cache_races.py,
tests/test_disk_full_data.py). Real processes, because the failures they guard against (two writers of one
cache, SIGBUS on a full disk) only happen between processes or kill the process.

    python tests/feature_cache_worker.py SPEC.json

SPEC (JSON): data_root, build_dir (the tiny dataset of conftest's tiny_cfg and where the cache goes), name (this
process's name in the handshake files), signals (a folder for them), channels (the encoder's width: 6, or more to
make a cache bigger than a small disk), pause_at_batch (optional: before encoding that batch, write
<name>.paused and wait for the file `go`), interrupt_after_chunk (optional: stop with KeyboardInterrupt after the
first commit), start_after (optional: a file name in signals to wait for before building, so a process can
import torch while another one works). On success it writes <name>.json: images encoded, all-zero rows and the SHA-256 of features.npy
as read back from disk by a fresh `FeatureCache.load`. A full disk prints the error's sentence and exits 3.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

CHUNK = 12  # commits after 12, 24, 36 rows; batches of 4, so a pause at batch 5 leaves rows 12-15 uncommitted
BATCH = 4
INPUT = 32
SPEC: dict = {}
SEEN = {"batches": 0, "images": 0}


class Hook(nn.Module):
    """Pass-through first layer: counts the images encoded at the cache's input size and pauses on request."""

    def forward(self, x):
        if x.shape[-1] == INPUT:  # not inference_copy's 64-px self-check
            SEEN["batches"] += 1
            SEEN["images"] += x.shape[0]
            if SPEC.get("pause_at_batch") == SEEN["batches"]:
                signals = Path(SPEC["signals"])
                (signals / f"{SPEC['name']}.paused").touch()
                wait_for(signals / "go")
        return x


def wait_for(path: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def encoder(channels: int = 6):
    """A small deterministic CNN with the Encoder interface (as tests/test_features.py builds one)."""
    from labutils import encoders

    torch.manual_seed(0)
    body = nn.Sequential(Hook(), nn.Conv2d(3, 8, 5, stride=4, padding=2), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, channels, 3, stride=2, padding=1))
    return encoders.Encoder(f"race{channels}", body, None, out_channels=channels, grid_size=4,
                          normalization=encoders.IMAGENET, weights_id="race-v1", input_size=INPUT)


def config(data_root, build_dir):
    from labutils import get_config

    return get_config("quick", data_root=data_root, build_dir=build_dir, n_images=60,
                      split_fractions=(2 / 3, 1 / 6, 1 / 6), encoder_input_size=INPUT, batch_size=BATCH)


def train_ids(cfg) -> list[int]:
    return json.loads(Path(cfg.split_file).read_text())["train"]


def features_digest(folder: Path) -> str:
    return hashlib.sha256((Path(folder) / "features.npy").read_bytes()).hexdigest()


def build(cfg, channels: int = 6, on_chunk=None):
    from labutils import features

    return features.build_feature_cache(cfg, encoder(channels), train_ids(cfg), progress=False, chunk_size=CHUNK,
                                        on_chunk=on_chunk)


def main(spec_path: str) -> int:
    from labutils import features
    from labutils.infra.files import DiskFullError

    SPEC.update(json.loads(Path(spec_path).read_text()))
    torch.set_num_threads(1)
    cfg = config(SPEC["data_root"], SPEC["build_dir"])

    def interrupt(done, total):
        raise KeyboardInterrupt

    if SPEC.get("start_after"):
        wait_for(Path(SPEC["signals"]) / SPEC["start_after"])

    try:
        cache = build(cfg, SPEC.get("channels", 6), interrupt if SPEC.get("interrupt_after_chunk") else None)
    except DiskFullError as err:
        print(err)
        return 3
    except KeyboardInterrupt:
        return 4
    reread = features.FeatureCache.load(cache.folder)  # what any later reader gets
    zero_rows = int((~np.asarray(reread.features).reshape(len(reread), -1).any(axis=1)).sum())
    report = {"encoded": SEEN["images"], "zero_rows": zero_rows, "sha256": features_digest(cache.folder),
              "folder": str(cache.folder)}
    (Path(SPEC["signals"]) / f"{SPEC['name']}.json").write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
