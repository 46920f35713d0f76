"""labutils: the tested helpers behind the Image Captioning in PyTorch lab notebooks."""

from importlib import import_module

from . import config, summary, synthetic
from .config import LabConfig, get_config

__version__ = "0.1.0"

# Submodules load on first use (`labutils.coco`, `labutils.models`, ...) so `import labutils` stays fast and a
# notebook that needs no torch does not pay for it.
_LAZY = {"augment", "checkpoint", "coco", "data", "decode", "decoders", "features", "metrics", "models", "train",
         "viz", "vocab", "grounding", "download", "environment", "runner", "notebook_refs", "evaluation", "caption_cli",
         "prepare"}


def __getattr__(name):
    if name in _LAZY:
        return import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'labutils' has no attribute {name!r}")


__all__ = ["LabConfig", "get_config", "config", "summary", "synthetic", *sorted(_LAZY)]
