"""One-file checkpoints: weights + vocabulary + config (+ training state to resume), plain types only, no pickle.

A checkpoint is a dict saved with `torch.save` and read back with `torch.load(..., weights_only=True)`, which
refuses arbitrary Python objects: so everything in it is a tensor, a number, a string, a list or a dict. That
keeps it loadable on a CPU-only machine, by any later labutils, and safe to open when someone sends it to you.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from .infra.files import atomic_write

CHECKPOINT_FORMAT = "labutils.checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a readable labutils checkpoint; `kind` says why, for callers that add their own advice.

    kinds: 'not_torch' (a photo, a JSON file, ...: `looks_like` names it), 'damaged' (truncated or corrupt),
    'pickled' (holds Python objects, refused), 'foreign' (a PyTorch file of something else), 'version', 'other'.
    """

    def __init__(self, message: str, kind: str = "other", looks_like: str | None = None):
        super().__init__(message)
        self.kind = kind
        self.looks_like = looks_like


def save_checkpoint(path: str | Path, model_state: dict, vocab, cfg_dict: dict, **extra) -> Path:
    """Write ONE checkpoint file atomically (temporary file in the same folder, then `os.replace`).

    `vocab` is a `Vocabulary` (stored as `vocab.to_dict()`) or such a dict; `cfg_dict` the config as plain types
    (`cfg.to_dict()`); `extra` holds anything else made of tensors and plain types (epoch, history, optimizer
    state, RNG state, ...). A crash or a full disk while writing leaves the previous checkpoint intact and no
    temporary file; a full disk raises `DiskFullError` (one sentence).
    """
    path = Path(path)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_state": {k: v.detach().cpu() for k, v in model_state.items()},
        "vocab": vocab if isinstance(vocab, dict) else vocab.to_dict(),
        "config": to_plain(cfg_dict),
        **{key: to_plain(value) for key, value in extra.items()},
    }
    with atomic_write(path, "wb", what=f"the checkpoint {path.name}") as out:
        try:
            torch.save(payload, out)
        except RuntimeError as exc:
            # A failed write inside torch.save surfaces as a bare RuntimeError ("unexpected pos ...") raised
            # while closing the archive; the real OSError (ENOSPC) is its context. Re-raise that one, which
            # atomic_write turns into DiskFullError.
            cause = _os_error_behind(exc)
            if cause is None:
                raise
            raise cause from exc
    return path


def _os_error_behind(exc: BaseException) -> OSError | None:
    seen = exc.__context__ or exc.__cause__
    while seen is not None and not isinstance(seen, OSError):
        seen = seen.__context__ or seen.__cause__
    return seen


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Read a checkpoint written by `save_checkpoint` with `weights_only=True`; clear errors if missing or corrupt.

    `weights_only=True` is the safety of the whole format: a file holding pickled Python objects (which could run
    code while being read) is refused, never opened with the full unpickler.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}; train a model first (labutils.course.train_quick_captioner) "
                                "or check the path.")
    _check_is_torch_file(path)
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found is None:
            raise _damaged(path) from exc
        raise CheckpointError(
            f"{path} holds a pickled Python object ({found.group(1)}), which a labutils checkpoint never contains "
            "and which could run code when opened, so it was refused (torch.load with weights_only=True); use a "
            "checkpoint written by labutils.checkpoint.save_checkpoint (notebook 07 trains one).",
            kind="pickled") from exc
    except Exception as exc:  # a damaged file can fail anywhere inside the unpickler (IndexError, EOFError, ...)
        raise _damaged(path) from exc
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is a PyTorch file but not a labutils checkpoint; save one with "
                              "labutils.checkpoint.save_checkpoint (notebook 07 trains one).", kind="foreign")
    if data.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint version {data.get('version')}, this labutils reads "
                              f"version {CHECKPOINT_VERSION}; train again to write a current checkpoint.",
                              kind="version")
    return data


# -- telling a checkpoint from the files people pass by mistake -------------------------------------------------
# torch.save writes a zip archive (since PyTorch 1.6) or, in the legacy format, a pickle that starts with this
# magic number; anything else cannot be a checkpoint, whatever torch.load's error says about it.
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_KNOWN_FORMATS = ((b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG", "a PNG image"), (b"GIF8", "a GIF image"),
                  (b"BM", "a BMP image"), (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"),
                  (b"%PDF", "a PDF document"), (b"\x80", "a plain Python pickle (not PyTorch's format)"))


def describe_file(head: bytes) -> str:
    """What a file that is not a PyTorch checkpoint looks like, from its first bytes ('a JPEG image', ...)."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image"
    for magic, name in _KNOWN_FORMATS:
        if head.startswith(magic):
            return name
    if head.lstrip()[:1] in (b"{", b"["):
        return "a JSON file (a vocabulary or captions file?)"
    if head.startswith(_ZIP_MAGIC):
        return "a zip archive"
    return "a file in some other format (not PyTorch's)"


def _check_is_torch_file(path: Path) -> None:
    """Raise `CheckpointError` (kind 'not_torch' or 'damaged') for a file torch.save cannot have written whole."""
    with open(path, "rb") as stream:
        head = stream.read(64)
    if not head:
        raise _damaged(path)
    if head.startswith(_LEGACY_MAGIC):
        return
    if head.startswith(_ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as archive:
                if any(name.endswith("/data.pkl") for name in archive.namelist()):
                    return
        except zipfile.BadZipFile as exc:  # the zip's directory sits at its end: a cut-short file has none
            raise _damaged(path) from exc
    raise CheckpointError(f"{path} is not a checkpoint: it is {describe_file(head)}; pass the .pt file that "
                          "notebook 07 / labutils.train saved (build/checkpoints/<profile>/attention.pt).",
                          kind="not_torch", looks_like=describe_file(head))


def _damaged(path: Path) -> CheckpointError:
    return CheckpointError(f"{path} is a checkpoint file that is cut short or damaged (an interrupted save, copy "
                           "or download); copy it again, or train again to write a new one.", kind="damaged")


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
