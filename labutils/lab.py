"""The one-call path the notebooks use: put the profile's dataset on disk, and (below) get the data, the features
and a trained captioner with one call each, so a notebook spends its cells on its own lesson.
"""

from __future__ import annotations

from .infra.datasets import ensure_dataset  # noqa: F401  (notebooks call lab.ensure_dataset(cfg))
from .infra.resize import image_root  # noqa: F401  (the folder the readers take the images from)
