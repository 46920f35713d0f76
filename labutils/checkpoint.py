"""One-file checkpoints: weights + vocabulary + config (+ training state to resume), plain types only, no pickle.

A checkpoint is a dict saved with `torch.save` and read back with `torch.load(..., weights_only=True)`, which
refuses arbitrary Python objects: so everything in it is a tensor, a number, a string, a list or a dict. That
keeps it loadable on a CPU-only machine, by any later labutils, and safe to open when someone sends it to you.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

CHECKPOINT_FORMAT = "labutils.checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a readable labutils checkpoint (truncated, corrupt, or something else)."""


def save_checkpoint(path: str | Path, model_state: dict, vocab, cfg_dict: dict, **extra) -> Path:
    """Write ONE checkpoint file atomically (temporary file in the same folder, then `os.replace`).

    `vocab` is a `Vocabulary` (stored as `vocab.to_dict()`) or such a dict; `cfg_dict` the config as plain types
    (`cfg.to_dict()`); `extra` holds anything else made of tensors and plain types (epoch, history, optimizer
    state, RNG state, ...). A crash while writing leaves the previous checkpoint intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_state": {k: v.detach().cpu() for k, v in model_state.items()},
        "vocab": vocab if isinstance(vocab, dict) else vocab.to_dict(),
        "config": to_plain(cfg_dict),
        **{key: to_plain(value) for key, value in extra.items()},
    }
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private (0600); a checkpoint is an ordinary file
        with os.fdopen(handle, "wb") as out:
            torch.save(payload, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Read a checkpoint written by `save_checkpoint` with `weights_only=True`; clear errors if missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}; train a model first (labutils.train.train_quick_captioner) "
                                "or check the path.")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower():
            raise CheckpointError(f"{path} holds Python objects beyond tensors and plain types, so it was not "
                                  "written by labutils and is not loaded (that could run code); delete it and "
                                  "train again.") from exc
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt); delete it and train "
                              "again.") from exc
    except Exception as exc:  # a damaged file can fail anywhere inside the unpickler (IndexError, EOFError, ...)
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt: "
                              f"{type(exc).__name__}); delete it and train again.") from exc
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a labutils checkpoint; save one with labutils.checkpoint.save_checkpoint.")
    if data.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint version {data.get('version')}, this labutils reads "
                              f"version {CHECKPOINT_VERSION}; train again to write a current checkpoint.")
    return data


def to_plain(value):
    """Recursively turn numpy arrays/scalars, tuples and paths into tensors and plain Python types."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.array(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(item) for item in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


# -- random number generator state ------------------------------------------------------------------------------
def rng_state() -> dict:
    """The state of Python's, NumPy's and torch's (CPU and CUDA) global generators, as tensors and plain types."""
    py_version, py_internal, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": {"version": py_version, "internal": torch.tensor(py_internal, dtype=torch.int64),
                   "gauss_next": py_gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict) -> None:
    """Restore the generators saved by `rng_state`."""
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["internal"].tolist()), py["gauss_next"]))
    npst = state["numpy"]
    np.random.set_state((npst["name"], npst["keys"].numpy().astype(np.uint32), int(npst["pos"]),
                         int(npst["has_gauss"]), float(npst["cached_gaussian"])))
    torch.set_rng_state(state["torch"].to(torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.to(torch.uint8) for s in state["cuda"]])
