"""Reference solutions to the notebook exercises, in one place for instructors.

Learners do not import from here directly: each notebook's exercise cell holds a stub, and the checker in
`labutils.exercises` falls back to these functions when the stub is not filled in yet (or is still wrong), so
every notebook runs top to bottom either way. Each function is the short answer an instructor would write on the
board; the lesson modules hold the production versions the checkers compare against.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .vocab import tokenize


def split_sizes(splits):
    """00 · Map each split name to the number of image ids in it."""
    return {name: len(ids) for name, ids in splits.items()}


def images_with_all(coco_instances, names):
    """01 · Ids of the images showing at least one object of EVERY category in `names`."""
    return coco_instances.getImgIds(catIds=coco_instances.getCatIds(catNms=list(names)))


def flip_matrix(width):
    """02 · The 2x3 affine matrix mirroring an image `width` pixels wide left-right: x -> (width - 1) - x."""
    return np.array([[-1.0, 0.0, width - 1.0],
                     [0.0, 1.0, 0.0]])


def encode(text, vocab, max_len):
    """03 · Caption text -> ids: <start>, the known words (unknown -> <unk>), cut to fit, <end>."""
    words = [vocab.stoi.get(word, vocab.unk_id) for word in tokenize(text)]
    return [vocab.start_id, *words[: max_len - 2], vocab.end_id]


def pad(captions):
    """04 · A list of 1-D id tensors -> (padded [B, T] filled with 0 = <pad> on the right, lengths [B])."""
    lengths = torch.tensor([len(c) for c in captions], dtype=torch.long)
    padded = torch.zeros(len(captions), int(lengths.max()), dtype=torch.long)
    for row, caption in enumerate(captions):
        padded[row, : len(caption)] = caption
    return padded, lengths


def to_grid(feature_map, grid_size):
    """05 · [B, C, H, W] feature map -> [B, grid_size**2, C], one C-vector per region."""
    pooled = F.adaptive_avg_pool2d(feature_map, grid_size)  # [B, C, g, g]
    return pooled.flatten(2).transpose(1, 2)  # [B, C, P] -> [B, P, C]
