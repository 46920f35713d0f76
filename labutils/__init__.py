"""labutils: the tested helpers behind the Image Captioning in PyTorch lab notebooks.

Three floors, imports pointing only downwards (`tests/test_layout.py` checks it):

* `labutils.config` and `labutils.infra`: settings and plumbing (files, downloads, datasets on disk, resizing,
  image loading, the notebook runner, reference outputs, the run summary). Nothing here imports a lesson.
* the lessons, one module per notebook idea: `coco`, `augment`, `vocab`, `data`, `encoders`,
  `features`, `decoders`, `checkpoint`, `train`, `decode`, `metrics`, `grounding`, `evaluation`, `viz`.
* the course: `course` (the one-call path the notebooks use), `exercises` and `solutions`; and `labutils.cli`, the
  commands (`python -m labutils ...`).
"""

from importlib import import_module

from . import config
from .config import LabConfig, get_config
from .infra import summary  # every notebook records its numbers: labutils.summary.record(...)

__version__ = "0.1.0"

# Submodules load on first use (`labutils.coco`, `labutils.encoders`, ...) so `import labutils` stays fast and a
# notebook that needs no torch does not pay for it.
_LAZY = {"augment", "checkpoint", "coco", "data", "decode", "decoders", "features", "metrics", "encoders", "train",
         "viz", "vocab", "grounding", "evaluation", "course", "exercises", "solutions", "infra", "cli"}


def __getattr__(name):
    if name in _LAZY:
        return import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'labutils' has no attribute {name!r}")


__all__ = ["LabConfig", "get_config", "config", "summary", *sorted(_LAZY)]
