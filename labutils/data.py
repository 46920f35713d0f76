"""From files to batches: robust image loading, the caption Datasets, the collate functions and the DataLoader.

The pieces, in the order data flows through them:

* `load_image(path)` turns any image file a dataset may hold (grayscale, RGBA, CMYK, palette, 16-bit, EXIF-rotated
  phone photos) into an RGB `PIL.Image`, or raises `ImageLoadError` with one sentence naming the file.
* An *image source* is any callable `image_id -> Tensor`: `ImageFolderSource` loads and transforms the image, a
  feature cache (`labutils.features`) returns pre-computed encoder features. The Datasets do not care which.
* `CaptionDataset` (training: image + one encoded caption) and `EvalDataset` (image + all reference strings).
* `collate_captions` pads captions with `<pad>`=0 into a `CaptionBatch`; `make_loader` builds the DataLoader,
  optionally with a `LengthGroupedBatchSampler` (random batches of captions of similar length: less padding).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset, Sampler

from . import coco
from .infra.coco_format import SPLITS
from .infra.images import ImageLoadError, load_image, shrink_to_min_side, to_rgb  # noqa: F401  (data.load_image etc.)
from .infra.resize import image_root
from .vocab import Vocabulary, tokenize_all

# ---------------------------------------------------------------------------------------------------------------
# Robust image loading
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class BadImageReport:
    """Result of `count_bad_images`: how many files were checked and which ones could not be read, and why."""

    n_checked: int = 0
    bad: dict[str, str] = field(default_factory=dict)

    @property
    def n_bad(self) -> int:
        """Number of unreadable files."""
        return len(self.bad)

    @property
    def n_ok(self) -> int:
        """Number of files that load as images."""
        return self.n_checked - self.n_bad

    def __str__(self) -> str:
        return f"{self.n_ok}/{self.n_checked} images readable, {self.n_bad} bad"


def _try_load(path: Path) -> str | None:
    try:
        load_image(path)
    except ImageLoadError as exc:
        return str(exc)
    return None


def count_bad_images(paths: Iterable[str | Path], progress: bool = False, workers: int = 1) -> BadImageReport:
    """Fully decode every file, skipping and recording the unreadable ones instead of raising (bulk checks)."""
    from tqdm.auto import tqdm

    paths = [Path(p) for p in paths]
    report = BadImageReport(n_checked=len(paths))
    # PIL releases the GIL while decoding, so threads give a real speed-up on big folders.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(_try_load, paths)
        for path, error in tqdm(zip(paths, results, strict=True), total=len(paths), desc="check images", disable=not progress):
            if error is not None:
                report.bad[str(path)] = error
    return report


# ---------------------------------------------------------------------------------------------------------------
# Image sources
# ---------------------------------------------------------------------------------------------------------------
def file_names_from_captions(captions_file: str | Path) -> dict[int, str]:
    """image id -> file_name from a COCO captions JSON (plain json: fast, no pycocotools index building)."""
    path = Path(captions_file)
    if not path.is_file():
        raise FileNotFoundError(f"No captions file at {path}; run labutils.course.ensure_dataset(cfg) first.")
    images = json.loads(path.read_text(encoding="utf-8"))["images"]
    return {int(img["id"]): img["file_name"] for img in images}


def _plain_to_tensor():
    from torchvision.transforms import v2

    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])


class ImageFolderSource:
    """Image source that loads `image_dir / file_names[image_id]` with `load_image` and applies `transform`.

    `transform` maps a PIL image to a tensor (e.g. `labutils.augment.eval_transform(size)`); None gives the
    un-normalised float tensor in [0, 1]. Picklable, so DataLoader workers can use it.
    """

    def __init__(self, image_dir: str | Path, file_names: Mapping[int, str], transform: Callable | None = None):
        """Remember where the images are; nothing is read until an image is asked for."""
        self.image_dir = Path(image_dir)
        self.file_names = {int(k): str(v) for k, v in file_names.items()}
        self.transform = transform if transform is not None else _plain_to_tensor()

    @classmethod
    def from_config(cls, cfg, transform: Callable | None = None) -> ImageFolderSource:
        """The source for `cfg`'s dataset: file names from its captions file, images from `coco.image_root(cfg)`."""
        # The copy resized once by the preparation when it is complete, else cfg.image_dir (quick profile).
        return cls(image_root(cfg), file_names_from_captions(cfg.captions_file), transform)

    def path(self, image_id: int) -> Path:
        """File path of an image id."""
        try:
            return self.image_dir / self.file_names[int(image_id)]
        except KeyError:
            raise KeyError(f"Image id {image_id} is not in this dataset's annotation file; use an id from the "
                           "split file.") from None

    def __call__(self, image_id: int) -> torch.Tensor:
        """Load and transform one image."""
        return self.transform(load_image(self.path(image_id)))

    def __len__(self) -> int:
        """Number of images this source knows."""
        return len(self.file_names)

    def __repr__(self) -> str:
        return f"ImageFolderSource({str(self.image_dir)!r}, {len(self)} images)"


# ---------------------------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------------------------
def _check_ids(image_ids: Sequence[int], captions_by_image: Mapping[int, Sequence[str]]) -> list[int]:
    ids = [int(i) for i in image_ids]
    if not ids:
        raise ValueError("No image ids given; pass the ids of a split, e.g. labutils.coco.load_splits(cfg)['train'].")
    missing = [i for i in ids if not captions_by_image.get(i)]
    if missing:
        raise ValueError(f"Image {missing[0]} (and {len(missing) - 1} more) has no captions; pass only image ids "
                         "from the same annotation file as the captions.")
    return ids


class CaptionDataset(Dataset):
    """Training pairs (image tensor, encoded caption, image id) for teacher forcing.

    `mode="sample"`: one item per image; each `__getitem__` picks one of the image's captions, at random but
    reproducibly from (seed, epoch, index). Call `set_epoch(epoch)` before each epoch to get fresh picks; the
    epoch lives in shared memory, so DataLoader workers (persistent ones included) see the new value.
    An epoch then shows every image once, and over epochs the model still sees every caption.
    `mode="all"`: one item per (image, caption) pair; 5x longer epochs on COCO with the same images repeated.

    Captions are tokenized and encoded once here (`max_len` caps their length, specials included).
    """

    MODES = ("sample", "all")

    def __init__(self, image_ids: Sequence[int], captions_by_image: Mapping[int, Sequence[str]],
                 vocab: Vocabulary, image_source: Callable[[int], torch.Tensor], mode: str = "sample",
                 max_len: int | None = None, seed: int = 0, progress: bool = False):
        """Encode every caption of `image_ids` with `vocab`; images come from `image_source(image_id)`."""
        if mode not in self.MODES:
            raise ValueError(f"mode={mode!r} is not a CaptionDataset mode; use 'sample' or 'all'.")
        self.image_ids = _check_ids(image_ids, captions_by_image)
        self.vocab = vocab
        self.image_source = image_source
        self.mode = mode
        self.max_len = max_len
        self.seed = int(seed)
        self._epoch = torch.zeros(1, dtype=torch.long).share_memory_()

        texts = [text for i in self.image_ids for text in captions_by_image[i]]
        counts = [len(captions_by_image[i]) for i in self.image_ids]
        encoded = [vocab.encode(tokens, max_len=max_len) for tokens in tokenize_all(texts, progress=progress)]
        # One flat int32 array + offsets instead of 100k small Python lists: compact, and cheap to hand to workers.
        lengths = np.array([len(ids) for ids in encoded], dtype=np.int64)
        self._tokens = np.fromiter((t for ids in encoded for t in ids), dtype=np.int32, count=int(lengths.sum()))
        self._caption_start = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        self._caption_len = lengths
        self._n_captions = np.array(counts, dtype=np.int64)
        self._first_caption = np.concatenate([[0], np.cumsum(self._n_captions)[:-1]]).astype(np.int64)
        self._caption_image = np.repeat(np.arange(len(self.image_ids)), self._n_captions)

    @property
    def epoch(self) -> int:
        """The epoch the caption picks of `mode="sample"` are drawn for."""
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        """Draw new caption picks for `epoch` (call before iterating the DataLoader, like DistributedSampler)."""
        self._epoch.fill_(int(epoch))

    @property
    def n_captions(self) -> int:
        """Total number of captions of this dataset's images."""
        return len(self._caption_len)

    def __len__(self) -> int:
        """Images in `sample` mode, (image, caption) pairs in `all` mode."""
        return len(self.image_ids) if self.mode == "sample" else self.n_captions

    def caption_index(self, index: int) -> int:
        """Which caption (global position) item `index` uses in the current epoch."""
        if self.mode == "all":
            return index
        n = int(self._n_captions[index])
        pick = np.random.default_rng([self.seed, self.epoch, index]).integers(n) if n > 1 else 0
        return int(self._first_caption[index] + pick)

    def item_lengths(self) -> np.ndarray:
        """Token count of the caption each item uses in the current epoch (what `LengthGroupedBatchSampler` sorts)."""
        if self.mode == "all":
            return self._caption_len.copy()
        return self._caption_len[[self.caption_index(i) for i in range(len(self))]]

    def caption_ids(self, caption: int) -> torch.Tensor:
        """Encoded caption number `caption` (global position) as a LongTensor."""
        start = self._caption_start[caption]
        return torch.from_numpy(self._tokens[start:start + self._caption_len[caption]].astype(np.int64))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(image tensor or features, caption ids `[<start>, ..., <end>]`, image id)."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} items")
        caption = self.caption_index(index)
        image_id = self.image_ids[int(self._caption_image[caption])]
        return self.image_source(image_id), self.caption_ids(caption), image_id

    def __repr__(self) -> str:
        return (f"CaptionDataset({len(self.image_ids)} images, {self.n_captions} captions, mode={self.mode!r}, "
                f"{len(self)} items)")


class EvalDataset(Dataset):
    """Evaluation items (image tensor, list of reference caption strings, image id): one per image."""

    def __init__(self, image_ids: Sequence[int], captions_by_image: Mapping[int, Sequence[str]],
                 image_source: Callable[[int], torch.Tensor]):
        """Keep the raw references: the metrics tokenize them their own way (`labutils.metrics`)."""
        self.image_ids = _check_ids(image_ids, captions_by_image)
        self.references = {i: [str(c) for c in captions_by_image[i]] for i in self.image_ids}
        self.image_source = image_source

    def __len__(self) -> int:
        """Number of images."""
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, list[str], int]:
        """(image tensor or features, reference captions, image id)."""
        image_id = self.image_ids[index]
        return self.image_source(image_id), list(self.references[image_id]), image_id

    def __repr__(self) -> str:
        return f"EvalDataset({len(self)} images)"


# ---------------------------------------------------------------------------------------------------------------
# Collate
# ---------------------------------------------------------------------------------------------------------------
class CaptionBatch(NamedTuple):
    """A padded training batch: inputs [B, ...], captions [B, T] (0 = `<pad>`), lengths [B], image ids."""

    inputs: torch.Tensor
    captions: torch.Tensor
    lengths: torch.Tensor
    image_ids: list[int]

    def to(self, device, non_blocking: bool = False) -> CaptionBatch:
        """Move inputs and captions to `device`; lengths stay on the CPU (pack_padded_sequence wants them there)."""
        return CaptionBatch(self.inputs.to(device, non_blocking=non_blocking),
                            self.captions.to(device, non_blocking=non_blocking), self.lengths, self.image_ids)


class EvalBatch(NamedTuple):
    """An evaluation batch: inputs [B, ...], reference strings per image, image ids."""

    inputs: torch.Tensor
    references: list[list[str]]
    image_ids: list[int]


def collate_captions(batch: Sequence[tuple[torch.Tensor, torch.Tensor, int]], sort: bool = False) -> CaptionBatch:
    """Stack the inputs and pad the captions with 0 (`<pad>`) to the longest caption of the batch.

    `sort=True` orders the batch by caption length, longest first: `pack_padded_sequence(...,
    enforce_sorted=True)` expects that order, and Show-and-Tell style loops can then shrink the batch at each
    time step as short captions finish. The order is stable, so equal lengths keep their batch order.
    """
    if not batch:
        raise ValueError("collate_captions() got an empty batch; the dataset or sampler yielded nothing.")
    inputs, captions, image_ids = zip(*batch, strict=True)
    lengths = torch.tensor([len(c) for c in captions], dtype=torch.long)
    padded = pad_sequence([torch.as_tensor(c, dtype=torch.long) for c in captions], batch_first=True,
                          padding_value=0)
    stacked = torch.stack(inputs)
    image_ids = [int(i) for i in image_ids]
    if sort:
        order = torch.sort(lengths, descending=True, stable=True).indices
        stacked, padded, lengths = stacked[order], padded[order], lengths[order]
        image_ids = [image_ids[i] for i in order.tolist()]
    return CaptionBatch(stacked, padded, lengths, image_ids)


def collate_captions_sorted(batch: Sequence[tuple[torch.Tensor, torch.Tensor, int]]) -> CaptionBatch:
    """`collate_captions(batch, sort=True)` as a plain function (picklable for worker processes)."""
    return collate_captions(batch, sort=True)


def collate_eval(batch: Sequence[tuple[torch.Tensor, list[str], int]]) -> EvalBatch:
    """Stack the inputs; keep the references as lists of strings (images have different numbers of them)."""
    if not batch:
        raise ValueError("collate_eval() got an empty batch; the dataset or sampler yielded nothing.")
    inputs, references, image_ids = zip(*batch, strict=True)
    return EvalBatch(torch.stack(inputs), [list(r) for r in references], [int(i) for i in image_ids])


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Random batches whose captions have similar lengths, so a teacher-forced step computes little padding.

    Each epoch: shuffle all items, cut the order into pools of `pool_batches` batches, sort each pool by the
    length of the caption each item uses this epoch, cut it into batches and shuffle the batches. Every item is
    still seen once per epoch and which items share a batch is still random; only their lengths are alike. All
    randomness comes from `generator` (the DataLoader's), so a resumed run continues the same order.
    """

    def __init__(self, dataset: CaptionDataset, batch_size: int, generator: torch.Generator, pool_batches: int = 50):
        if not hasattr(dataset, "item_lengths"):
            raise TypeError(f"LengthGroupedBatchSampler needs a dataset with item_lengths(), got {type(dataset).__name__}.")
        self.dataset, self.batch_size, self.generator = dataset, int(batch_size), generator
        self.pool = self.batch_size * int(pool_batches)

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.dataset), generator=self.generator).numpy()
        lengths = self.dataset.item_lengths()  # after set_epoch: this epoch's caption picks
        batches = []
        for start in range(0, len(order), self.pool):
            pool = order[start:start + self.pool]
            pool = pool[np.argsort(lengths[pool], kind="stable")]
            batches += [pool[i:i + self.batch_size].tolist() for i in range(0, len(pool), self.batch_size)]
        for k in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[k]


def make_loader(dataset: Dataset, cfg, train: bool, collate_fn: Callable | None = None,
                batch_size: int | None = None, seed: int | None = None) -> DataLoader:
    """DataLoader with the lab's settings: shuffle when training, `cfg.num_workers` workers, pinned memory on CUDA.

    `collate_fn` defaults to `collate_eval` for an `EvalDataset` and `collate_captions` otherwise. The shuffle
    order comes from a generator seeded with `cfg.seed` (or `seed`), so a run is repeatable. With
    `cfg.group_by_length`, a training loader of a `CaptionDataset` batches captions of similar length together.
    """
    if collate_fn is None:
        collate_fn = collate_eval if isinstance(dataset, EvalDataset) else collate_captions
    workers = int(cfg.num_workers)
    kwargs = {}
    if workers > 0:
        # Keep workers alive between epochs: starting them (and importing torch in each) costs seconds per epoch.
        kwargs.update(persistent_workers=True, prefetch_factor=2)
    generator = torch.Generator().manual_seed(int(cfg.seed if seed is None else seed))
    batch_size = int(batch_size or cfg.batch_size)
    if train and getattr(cfg, "group_by_length", False) and hasattr(dataset, "item_lengths"):
        kwargs["batch_sampler"] = LengthGroupedBatchSampler(dataset, batch_size, generator)
    else:
        kwargs.update(batch_size=batch_size, shuffle=bool(train), drop_last=False)
    return DataLoader(
        dataset,
        num_workers=workers,
        collate_fn=collate_fn,
        # Page-locked host memory makes host->GPU copies faster and lets them overlap compute (non_blocking=True);
        # on a CPU-only run it only costs memory.
        pin_memory=str(cfg.device).startswith("cuda"),
        generator=generator,
        **kwargs,
    )


# ---------------------------------------------------------------------------------------------------------------
# Reading a COCO-format dataset (through labutils.coco: pycocotools plus the split leakage check)
# ---------------------------------------------------------------------------------------------------------------
def _read_captions(cfg) -> dict[int, list[str]]:
    return coco.captions_by_image(coco.load_captions(cfg))




def _read_splits(cfg) -> dict[str, list[int]]:
    return coco.load_splits(cfg)


def _split_sources(cfg, image_source, splits: Sequence[str]) -> list[tuple[str, list[int], Callable]]:
    """(split, image ids, image source) per requested split; `image_source` may be one callable or a dict per split."""
    split_ids = _read_splits(cfg)
    out = []
    for split in splits:
        if split not in split_ids:
            raise KeyError(f"Split {split!r} is not in {cfg.split_file}; it has {sorted(split_ids)}.")
        out.append((split, split_ids[split], image_source[split] if isinstance(image_source, Mapping) else image_source))
    return out


def build_caption_datasets(cfg, vocab: Vocabulary, image_source, mode: str = "sample",
                           splits: Sequence[str] = SPLITS, progress: bool = False) -> dict[str, CaptionDataset]:
    """A `CaptionDataset` per split of `cfg`'s dataset (captions capped at `cfg.max_caption_len`).

    `image_source` is one callable for all splits or a dict `split -> callable` (e.g. augmenting transforms for
    train only, or one feature cache per split).
    """
    captions = _read_captions(cfg)
    return {split: CaptionDataset(ids, captions, vocab, source, mode=mode, max_len=cfg.max_caption_len,
                                  seed=cfg.seed, progress=progress)
            for split, ids, source in _split_sources(cfg, image_source, splits)}


def build_eval_datasets(cfg, image_source, splits: Sequence[str] = ("val", "test")) -> dict[str, EvalDataset]:
    """An `EvalDataset` (images with all their reference captions) per split of `cfg`'s dataset."""
    captions = _read_captions(cfg)
    return {split: EvalDataset(ids, captions, source)
            for split, ids, source in _split_sources(cfg, image_source, splits)}
