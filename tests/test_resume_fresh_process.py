"""Exact resume across processes: a run killed after epoch K and resumed by a NEW interpreter, with data loaders built
from scratch, ends bit for bit where an uninterrupted run ends.

A resume in the same process reuses the loaders whose shuffling generator has already advanced, so it hides a
resume that forgets to restore that generator (or any other state a fresh process starts without). Here every run
is its own interpreter, as after a Colab disconnect. Run as a script, this file is that interpreter.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from labutils import checkpoint as ckpt

EPOCHS, KILLED_AFTER = 4, 2
# Tiny model and batches, so that each process spends its few seconds mostly importing torch.
MODEL = dict(cpu_threads=1, embed_dim=8, hidden_dim=16, attention_dim=8, dropout=0.1, batch_size=8, decoder_lr=1e-2,
             time_budget_s=None, max_caption_len=16, grid_size=4, alpha_c=1.0)
TRAIN = dict(patience=None, restore_best=False, progress=False, scheduled_sampling=0.3, ss_ramp_epochs=2)


def _colour_grid_source(cfg):
    """Each image's mean colour on a 4x4 grid, [16, 3]: real image features, far cheaper than the encoder's."""
    from labutils import coco, data

    images = data.ImageFolderSource.from_config(cfg)
    splits = coco.load_splits(cfg)
    grids = {i: torch.nn.functional.adaptive_avg_pool2d(images(i), 4).flatten(1).T.contiguous()
             for name in ("train", "val", "test") for i in splits[name]}
    return grids.__getitem__


def _worker(mode: str, cfg_overrides: dict, checkpoint: str, out: str) -> None:
    """One process of the experiment: `straight` (all epochs), `kill` (SIGKILL after epoch K) or `resume`."""
    torch.set_num_threads(1)
    from labutils import course, get_config
    from labutils import train as T
    from labutils.decoders import build_decoder

    cfg_overrides["split_fractions"] = tuple(cfg_overrides["split_fractions"])
    cfg = get_config("quick", **cfg_overrides).replace(**MODEL, epochs=EPOCHS)
    lab = course.prepare_data(cfg, source=_colour_grid_source(cfg), feature_dim=3, progress=False)
    callbacks = []
    if mode == "kill":
        def die(epoch, row):
            if epoch == KILLED_AFTER:  # after the epoch's checkpoint, like a disconnect, with no clean-up at all
                os.kill(os.getpid(), signal.SIGKILL)
        callbacks.append(die)
    # The resumed process starts from other weights and other random state; the checkpoint must override both.
    torch.manual_seed(2 if mode != "resume" else 99)
    decoder = build_decoder("attention", len(lab.vocab), lab.feature_dim, cfg)
    result = T.train(cfg, decoder, lab.loaders, lab.vocab, checkpoint_path=checkpoint, callbacks=callbacks,
                     resume_from=checkpoint if mode == "resume" else None, **TRAIN)
    torch.save({"weights": decoder.state_dict(),
                "history": result.history.drop(columns=["seconds"]).to_dict("records")}, out)


def _run(mode: str, cfg_overrides: dict, checkpoint: Path, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LAB_PROFILE": "quick", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, __file__, mode, json.dumps(cfg_overrides), str(checkpoint), str(out)],
                          capture_output=True, text=True, env=env, timeout=300)


def test_a_run_killed_and_resumed_in_a_fresh_process_equals_an_uninterrupted_one(tiny_cfg, tmp_path):
    overrides = {"data_root": str(tiny_cfg.data_root), "build_dir": str(tiny_cfg.build_dir),
                 "n_images": tiny_cfg.n_images, "split_fractions": list(tiny_cfg.split_fractions)}
    straight = _run("straight", overrides, tmp_path / "straight.pt", tmp_path / "straight.out")
    assert straight.returncode == 0, straight.stderr[-3000:]

    path = tmp_path / "interrupted.pt"
    killed = _run("kill", overrides, path, tmp_path / "never.out")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    saved = ckpt.load_checkpoint(path)
    assert saved["epoch"] == KILLED_AFTER and saved["finished"] is False and saved["stopped"] is None

    resumed = _run("resume", overrides, path, tmp_path / "resumed.out")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    expected, got = torch.load(tmp_path / "straight.out"), torch.load(tmp_path / "resumed.out")
    assert len(got["history"]) == EPOCHS and got["history"] == expected["history"]
    for name, weight in expected["weights"].items():
        assert torch.equal(weight, got["weights"][name]), f"{name} differs after resuming in a new process"
    full, finished = ckpt.load_checkpoint(tmp_path / "straight.pt"), ckpt.load_checkpoint(path)
    assert finished["finished"] is True and finished["stopped"] == "epochs"
    assert finished["best_epoch"] == full["best_epoch"]
    assert all(torch.equal(full["model_state"][k], v) for k, v in finished["model_state"].items())


if __name__ == "__main__":
    _worker(sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4])
