"""One call that puts a profile's dataset on disk, whichever it is: the synthetic shapes, Flickr8k or MS-COCO."""

from __future__ import annotations

from pathlib import Path

from . import synthetic
from .flickr8k import prepare_flickr8k
from .mscoco import prepare_mscoco, prepared_subset
from .resize import resize_images


def ensure_dataset(cfg, progress: bool = True) -> Path:
    """Make sure the profile's dataset is on disk (synthetic shapes, Flickr8k or MS-COCO) and return its folder.

    A folder at `cfg.dataset_dir` holding a dataset the lab did not write (say, your own photos converted to this
    layout) is never replaced by the synthetic shapes: that stops with `infra.files.NotLabFolderError`.
    """
    # The dataset name, not the profile, decides: the coco profile can run on synthetic data at its full sizes.
    if cfg.dataset_name.startswith("coco"):
        # Keep the subset an instructor prepared (`python -m labutils prepare --subset N`) instead of
        # converting, and downloading, the whole dataset in every notebook.
        return prepare_mscoco(cfg, subset=prepared_subset(cfg), progress=progress)
    if cfg.dataset_name == "flickr8k":
        # Any complete conversion will do, such as one an instructor made from a local copy (`prepare --from`).
        root = prepare_flickr8k(cfg, progress=progress)
        resize_images(cfg, progress=progress)
        return root
    return synthetic.ensure_synthetic(cfg, progress=progress)
