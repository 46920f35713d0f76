"""The feature cache: run the frozen encoder ONCE over every image, keep the grid features on disk.

With a frozen encoder, every epoch would otherwise recompute exactly the same features; that is most of the
time of a training step. `build_feature_cache` stores them as float16 in a memory-mapped `.npy` file
(self-describing: `np.load(path, mmap_mode="r")` opens it anywhere) under
`cfg.feature_dir / <encoder>-<size>px-g<grid>-<key>/`, where `<key>` hashes everything the features depend on:
encoder name, weights, normalisation, input size, grid size, the image ids and a fingerprint of the dataset
(the synthetic generator's parameters, or the captions file's size and modification time). Change any of
them and you get a new folder, so a stale cache is never reused.

Extraction commits its progress in chunks (`progress.json`, replaced atomically after the features it counts
are flushed), so an interrupted run (Ctrl-C, a Colab disconnect, a kill) resumes where it stopped; the cache is
marked complete only at the very end, once `done` (rows actually written) equals the number of images and no
row reads back as never written. One process writes a cache at a time (`infra.files.folder_lock`): a second one
waits, saying so, and then finds the cache complete. The file's disk blocks are reserved before anything is
written through the memory map (`infra.files.preallocate`), so a full disk is one sentence, never SIGBUS. `FeatureCache.source(image_id)` returns the features of one image as a
float32 tensor [P, C]: pass it as the `image_source` of `labutils.data.CaptionDataset`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from .data import ImageFolderSource, file_names_from_captions
from .encoders import build_encoder, inference_copy
from .infra.environment import autocast_dtype
from .infra.files import (
    DiskFullError,
    atomic_write_json,
    disk_full_as_error,
    folder_lock,
    made_by_lab,
    mark_made_by_lab,
    preallocate,
    remove_lab_folder,
)
from .infra.resize import image_root

CACHE_VERSION = 1
META_FILE = "meta.json"
PROGRESS_FILE = "progress.json"
FEATURES_FILE = "features.npy"
CACHE_KIND = "feature-cache"  # the ownership marker's kind
WHAT = "the feature cache"
SAMPLE_ROWS = 64  # rows read back when a cache is opened (plus the last one), see `_unwritten_rows`


class FeatureCacheError(ValueError):
    """A feature cache that cannot be built or opened as asked."""


class CacheNotFoundError(FileNotFoundError):
    """No complete feature cache in the folder."""


class CacheDamagedError(CacheNotFoundError):
    """A cache marked complete holds rows that were never written (made by an older labutils, or tampered with)."""


# ------------------------------------------------------------------------------------------ small helpers
def _write_json_atomic(path: Path, obj) -> None:
    atomic_write_json(path, obj, what=WHAT)


def _read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def dataset_fingerprint(cfg) -> dict:
    """What identifies the dataset's images by content: generator.json (synthetic), else the image id -> file name
    table of the captions file. Features depend on the images, not on the captions or on when a file was
    written, so rewriting identical annotations (or editing a caption) keeps the cache."""
    marker = Path(cfg.dataset_dir) / "generator.json"
    if marker.is_file():
        return {"generator": _read_json(marker)}
    captions = Path(cfg.captions_file)
    if captions.is_file():
        names = sorted(file_names_from_captions(captions).items())
        return {"file_names_sha256": hashlib.sha256(json.dumps(names).encode()).hexdigest()[:16]}
    return {"dataset_dir": str(cfg.dataset_dir)}


class _ImageFiles(torch.utils.data.Dataset):
    """Dataset of image ids -> transformed tensors, for a DataLoader (module-level so workers can pickle it).

    `loader` gives a ready tensor (an `ImageFolderSource` already applies the encoder's transform) or, for a
    caller's own callable, a PIL image that `transform` turns into one.
    """

    def __init__(self, image_ids: list[int], loader: Callable, transform: Callable):
        self.image_ids, self.loader, self.transform = image_ids, loader, transform

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, i: int) -> torch.Tensor:
        item = self.loader(self.image_ids[i])
        return item if isinstance(item, torch.Tensor) else self.transform(item)


def _folder_source(image_dir: Path, file_names: Mapping[int, str], image_ids: list[int],
                   transform: Callable) -> ImageFolderSource:
    """The lesson's `ImageFolderSource`, after checking that every id to encode has a file name."""
    missing = [i for i in image_ids if i not in file_names]
    if missing:
        raise FeatureCacheError(f"Image id {missing[0]} is not in the captions file; "
                                "pass only ids from the dataset's split file.")
    return ImageFolderSource(image_dir, file_names, transform)


def _resolve_images(cfg, images, image_ids: list[int]) -> tuple[Callable[[Callable], Callable], dict]:
    """A factory `transform -> loader` (image_id -> tensor or PIL image), and a fingerprint of the images' origin.

    The loader is made only when something must be encoded: a cache hit reads no captions file and needs no
    image folder (on Colab you may even delete the images once their features are cached). `images=None` reads
    the dataset's images where `labutils.infra.resize.image_root` says: the copy resized once by the
    preparation when it is complete (part of the cache key), else `cfg.image_dir`.
    """
    if images is None or isinstance(images, (str, Path)):
        fingerprint = {"kind": "folder"}
        if images is None:
            image_dir = image_root(cfg)
            if image_dir != Path(cfg.image_dir):
                fingerprint["resized"] = int(cfg.image_size)  # features of resized images differ slightly
        else:
            image_dir = Path(images)

        def folder_loader(transform: Callable) -> ImageFolderSource:
            if not image_dir.is_dir():
                raise FileNotFoundError(f"No image folder at {image_dir}; run labutils.course.ensure_dataset(cfg) "
                                        "first.")
            return _folder_source(image_dir, file_names_from_captions(cfg.captions_file), image_ids, transform)

        return folder_loader, fingerprint
    if isinstance(images, Mapping):
        names = {int(k): str(v) for k, v in images.items()}
        digest = hashlib.sha256(json.dumps(sorted((k, Path(names[k]).name) for k in image_ids if k in names))
                                .encode()).hexdigest()[:16]
        # The mapping holds whole paths, and Path() / "/a/b.jpg" is "/a/b.jpg".
        fingerprint = {"kind": "files", "names": digest}
        return (lambda transform: _folder_source(Path(), names, image_ids, transform)), fingerprint
    if callable(images):
        # A callable source decides its own images; it may expose `cache_fingerprint` to tell versions apart.
        tag = getattr(images, "cache_fingerprint", None) or type(images).__qualname__
        return (lambda transform: images), {"kind": "callable", "tag": str(tag)}
    raise FeatureCacheError("`images` must be None (the dataset's image folder), a folder, a mapping "
                            "{image_id: path} or a callable image_id -> image.")


def cache_parts(cfg, encoder, image_ids: Iterable[int], source_fingerprint: dict | None = None) -> dict:
    """Everything the cached features depend on (hashed into the cache key); the order of the ids does not matter.

    `source_fingerprint` None: that of the dataset's own images (`images=None` in `build_feature_cache`), so
    `cache_parts(cfg, encoder, ids)` names the cache the default build made, resized images included.
    """
    image_ids = _normalise_ids(image_ids)
    if source_fingerprint is None:
        source_fingerprint = _resolve_images(cfg, None, image_ids)[1]
    ids_digest = hashlib.sha256(np.asarray(image_ids, dtype=np.int64).tobytes()).hexdigest()[:16]
    parts = {
        "version": CACHE_VERSION,
        "encoder": encoder.name,
        "weights_id": encoder.weights_id,
        "normalization": encoder.normalization.to_dict(),
        "input_size": int(cfg.encoder_input_size),
        "grid_size": int(encoder.grid_size),
        "channels": int(encoder.out_channels),
        "n_images": len(image_ids),
        "image_ids_sha256": ids_digest,
        "dataset": dataset_fingerprint(cfg),
        "source": source_fingerprint,
    }
    # Features computed under autocast differ from float32 ones in the third digit: they are another cache.
    dtype = autocast_dtype(torch.device(cfg.device).type, bool(cfg.mixed_precision), decoder_only=False)
    if dtype is not None:
        parts["precision"] = str(dtype).removeprefix("torch.")
    return parts


def cache_key(parts: dict) -> str:
    """Readable prefix + 12 hex digits of the parts' hash, e.g. `efficientnet_lite0-128px-g4-1a2b3c4d5e6f`."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]
    return f"{parts['encoder']}-{parts['input_size']}px-g{parts['grid_size']}-{digest}"


def _normalise_ids(image_ids: Iterable[int]) -> list[int]:
    ids = sorted({int(i) for i in image_ids})
    if not ids:
        raise FeatureCacheError("No image ids given; pass the ids of the split(s) to encode.")
    return ids


# ------------------------------------------------------------------------------------------ the cache
class FeatureCache:
    """Read access to a complete cache: `source(image_id) -> float32 [P, C]`, also `cache[image_id]`."""

    def __init__(self, folder: str | Path, meta: dict):
        self.folder = Path(folder)
        self.meta = meta
        self.key = meta["key"]
        self.parts = meta["parts"]
        self.image_ids: list[int] = meta["image_ids"]
        self.index = {image_id: row for row, image_id in enumerate(self.image_ids)}
        self.features = np.load(self.folder / FEATURES_FILE, mmap_mode="r")  # float16 [N, P, C], memory-mapped

    @classmethod
    def load(cls, folder: str | Path) -> FeatureCache:
        """Open the complete cache in `folder` (raises CacheNotFoundError when missing, unfinished or damaged)."""
        folder = Path(folder)
        meta_path, progress_path = folder / META_FILE, folder / PROGRESS_FILE
        if not meta_path.is_file() or not progress_path.is_file():
            raise CacheNotFoundError(f"No feature cache in {folder}; build it with "
                                     "labutils.features.build_feature_cache(cfg, encoder, image_ids).")
        state, meta = _read_json(progress_path), _read_json(meta_path)
        if not state.get("complete") or state.get("done") != len(meta["image_ids"]):
            raise CacheNotFoundError(f"The feature cache in {folder} is unfinished; run build_feature_cache again "
                                     "to resume it.")
        cache = cls(folder, meta)
        bad = _unwritten_rows(cache.features, _sample_rows(len(cache)), state.get("zero_rows", ()))
        if bad:
            raise CacheDamagedError(f"The feature cache in {folder} is damaged (the features of image "
                                    f"{cache.image_ids[bad[0]]} were never written); run build_feature_cache "
                                    "again to rebuild it.")
        return cache

    # -- shapes
    @property
    def shape(self) -> tuple[int, int, int]:
        """(N images, P positions, C channels)."""
        return tuple(self.features.shape)

    @property
    def num_positions(self) -> int:
        """P, positions per image (grid_size**2)."""
        return self.features.shape[1]

    @property
    def channels(self) -> int:
        """C, channels per position."""
        return self.features.shape[2]

    @property
    def nbytes(self) -> int:
        """Size of the features on disk in bytes."""
        return int(self.features.nbytes)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __contains__(self, image_id) -> bool:
        return int(image_id) in self.index

    def _row(self, image_id) -> int:
        try:
            return self.index[int(image_id)]
        except KeyError:
            raise KeyError(f"Image {image_id} is not in this feature cache ({len(self)} images); build the cache "
                           "with every split you use.") from None

    def source(self, image_id) -> torch.Tensor:
        """Features of one image as float32 [P, C] (a CaptionDataset `image_source`)."""
        return torch.from_numpy(self.features[self._row(image_id)].astype(np.float32))

    __call__ = source
    __getitem__ = source

    def batch(self, image_ids: Iterable[int]) -> torch.Tensor:
        """Features of several images as float32 [B, P, C]."""
        rows = [self._row(i) for i in image_ids]
        return torch.from_numpy(self.features[rows].astype(np.float32))

    def __getstate__(self):
        # DataLoader workers started with "spawn" (macOS, Windows) pickle the dataset: send the path, not the
        # gigabytes behind the memory map.
        return {"folder": str(self.folder), "meta": self.meta}

    def __setstate__(self, state):
        self.__init__(state["folder"], state["meta"])

    def __repr__(self) -> str:
        n, p, c = self.shape
        return f"FeatureCache({self.key!r}, images={n}, positions={p}, channels={c}, {self.nbytes / 2**20:.1f} MiB)"


def find_cache(cfg, encoder, image_ids: Iterable[int], images=None) -> FeatureCache | None:
    """The complete cache for these settings if one exists, else None (never builds)."""
    ids = _normalise_ids(image_ids)
    _, source_fp = _resolve_images(cfg, images, ids)
    folder = Path(cfg.feature_dir) / cache_key(cache_parts(cfg, encoder, ids, source_fp))
    try:
        return FeatureCache.load(folder)
    except CacheNotFoundError:
        return None


def _sample_rows(n: int) -> list[int]:
    """Up to SAMPLE_ROWS evenly spaced rows, always the first and the last."""
    return sorted({int(r) for r in np.linspace(0, n - 1, min(n, SAMPLE_ROWS)).round()}) if n else []


def _unwritten_rows(features: np.ndarray, rows: Iterable[int], zero_rows: Iterable[int] = ()) -> list[int]:
    """The rows among `rows` that read back as all zeros although the encoder did not give zeros for them.

    The file starts zero-filled and rows are written in order, so a row no writer reached (a crash, a second
    process that replaced the file) reads back as exact zeros, and such rows come in long runs: the sample
    `load` checks (64 rows, the last included) catches them for the price of reading 64 rows, where a checksum
    would have to read the whole cache (23 GiB for MS-COCO with ResNet-101) at every open. A real encoder's grid of a real image is
    never all zero; if one is, the build records its row in progress.json ("zero_rows") so it is not mistaken.
    """
    rows, known = [int(r) for r in rows], {int(r) for r in zero_rows}
    rows = [r for r in rows if r not in known]
    if not rows:
        return []
    empty = ~np.asarray(features[rows]).reshape(len(rows), -1).any(axis=1)
    return [r for r, e in zip(rows, empty, strict=True) if e]


def _all_unwritten_rows(path: Path, zero_rows: Iterable[int], block: int = 1024) -> list[int]:
    """Every unwritten row of the features file at `path`, read back from disk in blocks."""
    features = np.load(path, mmap_mode="r")
    bad: list[int] = []
    for start in range(0, len(features), block):
        bad += _unwritten_rows(features, range(start, min(start + block, len(features))), zero_rows)
    return bad


def _reusable(folder: Path, parts: dict, ids: list[int]) -> FeatureCache | None:
    """The complete, undamaged cache in `folder` made for exactly these parts and ids, else None."""
    try:
        cache = FeatureCache.load(folder)
    except (CacheNotFoundError, OSError, ValueError, KeyError):
        return None
    return cache if cache.parts == parts and cache.image_ids == ids else None


def _resumable(folder: Path, parts: dict, ids: list[int], shape: tuple) -> tuple[dict, int, list[int]] | None:
    """(meta, rows done, known zero rows) of an unfinished cache that can be continued, else None."""
    try:
        meta, state = _read_json(folder / META_FILE), _read_json(folder / PROGRESS_FILE)
        rows = np.load(folder / FEATURES_FILE, mmap_mode="r")
    except (OSError, ValueError):
        return None
    done = int(state.get("done", 0))
    if (meta.get("parts") != parts or meta.get("image_ids") != ids or state.get("complete")
            or not 0 < done < len(ids) or rows.shape != shape or rows.dtype != np.float16):
        return None  # a complete cache that `_reusable` refused is damaged: it is rebuilt
    return meta, done, list(state.get("zero_rows", []))


def _claim(folder: Path) -> None:
    """Remove `folder` for a fresh build, but only if the lab made it; else NotLabFolderError naming it."""
    try:  # caches from before the ownership marker: their meta.json, named by the folder's key, is the proof
        legacy = _read_json(folder / META_FILE).get("key") == folder.name
    except (OSError, ValueError, AttributeError):
        legacy = False
    if legacy and not made_by_lab(folder, CACHE_KIND):
        mark_made_by_lab(folder, CACHE_KIND, key=folder.name)
    remove_lab_folder(folder, CACHE_KIND, WHAT)


def _start_fresh(folder: Path, key: str, parts: dict, ids: list[int], shape: tuple) -> dict:
    """An empty cache folder whose features file has every disk block reserved; returns its meta."""
    _claim(folder)
    folder.mkdir(parents=True)
    mark_made_by_lab(folder, CACHE_KIND, key=key)
    feat_path = folder / FEATURES_FILE
    try:
        with disk_full_as_error(folder, WHAT):
            np.lib.format.open_memmap(feat_path, mode="w+", dtype=np.float16, shape=shape).flush()
        preallocate(feat_path, feat_path.stat().st_size, WHAT)
        meta = {"key": key, "parts": parts, "image_ids": ids, "shape": list(shape), "dtype": "float16"}
        _write_json_atomic(folder / META_FILE, meta)
        _write_json_atomic(folder / PROGRESS_FILE, {"done": 0, "complete": False})
    except DiskFullError:
        remove_lab_folder(folder, CACHE_KIND, WHAT)  # it held nothing yet: leave no half-made cache behind
        raise
    return meta


@torch.inference_mode()
def build_feature_cache(cfg, encoder, image_ids: Iterable[int], images=None, batch_size: int | None = None,
                        progress: bool = True, chunk_size: int = 512,
                        on_chunk: Callable[[int, int], None] | None = None) -> FeatureCache:
    """Encode `image_ids` once with the frozen `encoder` into a memory-mapped fp16 cache; reuse or resume it.

    `encoder`: an `Encoder` (None: the profile's pretrained `cfg.encoder` at `cfg.grid_size`). `images`: None (the
    dataset's images from `coco.image_root(cfg)`, i.e. resized once when prepared so, and its captions file), a
    folder, a mapping {image_id: path}, or a callable image_id -> PIL image (transformed here with the encoder's
    normalisation at `cfg.encoder_input_size`) or -> ready tensor [3, H, W]. Progress is committed every
    `chunk_size` images; `on_chunk(done, total)` is called after each commit. One process builds a cache at a
    time: another one waits (saying so once) and then returns the finished cache. A full disk raises
    `infra.files.DiskFullError` (one sentence) and keeps every committed row.
    """
    if encoder is None:
        encoder = build_encoder(cfg.encoder, pretrained=True, grid_size=cfg.grid_size, progress=progress)
    if any(p.requires_grad for p in encoder.parameters()):
        raise FeatureCacheError("A feature cache stores a FROZEN encoder's output; build the encoder with "
                                "fine_tune=False (fine-tuning needs the images in every batch).")
    ids = _normalise_ids(image_ids)
    make_loader, source_fp = _resolve_images(cfg, images, ids)
    parts = cache_parts(cfg, encoder, ids, source_fp)
    key = cache_key(parts)
    folder = Path(cfg.feature_dir) / key
    cache = _reusable(folder, parts, ids)
    if cache is not None:
        return cache
    # Fails here, before any file is written, if the images are missing.
    loader_fn = make_loader(encoder.eval_transform(cfg.encoder_input_size))
    with folder_lock(folder, WHAT):
        cache = _reusable(folder, parts, ids)  # another process may have finished it while this one waited
        if cache is not None:
            return cache
        shape = (len(ids), encoder.num_positions, encoder.out_channels)
        resume = _resumable(folder, parts, ids, shape)
        if resume is None:
            meta, done, zero_rows = _start_fresh(folder, key, parts, ids, shape), 0, []
        else:
            meta, done, zero_rows = resume
            # A file from an older labutils (or a filesystem without fallocate) may be sparse: reserve its blocks
            # before writing through the map, or a full disk kills the process with SIGBUS.
            preallocate(folder / FEATURES_FILE, (folder / FEATURES_FILE).stat().st_size, WHAT)
        return _encode(cfg, encoder, ids, folder, meta, done, zero_rows, loader_fn, batch_size, progress,
                       chunk_size, on_chunk)


def _encode(cfg, encoder, ids: list[int], folder: Path, meta: dict, done: int, zero_rows: list[int],
            loader_fn: Callable, batch_size: int | None, progress: bool, chunk_size: int,
            on_chunk: Callable[[int, int], None] | None) -> FeatureCache:
    """Fill rows `done:` of the cache in `folder` (its lock held) and mark it complete once all are on disk."""
    from tqdm.auto import tqdm

    progress_path, feat_path = folder / PROGRESS_FILE, folder / FEATURES_FILE
    rows = np.load(feat_path, mmap_mode="r+")  # the memory-mapped [N, P, C] array we fill
    inode = os.stat(feat_path).st_ino
    device = torch.device(cfg.device)
    fast = inference_copy(encoder).to(device)  # BatchNorm folded, channels_last: faster on CPU
    dtype = autocast_dtype(device.type, bool(cfg.mixed_precision), decoder_only=False)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
    dataset = _ImageFiles(ids[done:], loader_fn, encoder.eval_transform(cfg.encoder_input_size))
    batches = torch.utils.data.DataLoader(dataset, batch_size=batch_size or cfg.batch_size, shuffle=False,
                                          num_workers=cfg.num_workers, pin_memory=device.type == "cuda")
    committed, started = done, time.perf_counter()

    def commit(complete: bool = False) -> None:
        nonlocal committed
        rows.flush()  # the rows must be on disk before the counter that vouches for them
        if os.stat(feat_path).st_ino != inode:  # what we wrote is not the file readers would open
            raise FeatureCacheError(f"The feature cache file {feat_path} was replaced while this process was "
                                    "writing it; run build_feature_cache again.")
        state = {"done": done, "complete": complete} | ({"zero_rows": zero_rows} if zero_rows else {})
        _write_json_atomic(progress_path, state)
        committed = done

    bar = tqdm(total=len(ids), initial=done, unit="img", desc=f"encoding ({encoder.name})", disable=not progress)
    try:
        for x in batches:
            with autocast:
                grid, _ = fast(x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last))
            half = grid.to(torch.float16)
            if not bool(torch.isfinite(half).all()):  # training on inf/NaN features fails silently (BLEU-4 0)
                raise FeatureCacheError(
                    f"The {encoder.name} encoder ({encoder.weights_id}) gave features that are NaN or beyond float16's "
                    "±65,504 for one of images "
                    f"{ids[done]}..{ids[done + len(x) - 1]}; check that its weights file is the real pretrained one, "
                    "or delete it to download it again.")
            block = half.cpu().numpy()
            zero_rows += [done + i for i in np.flatnonzero(~block.reshape(len(x), -1).any(axis=1)).tolist()]
            rows[done:done + len(x)] = block
            done += len(x)
            bar.update(len(x))
            if done - committed >= chunk_size:
                commit()
                if on_chunk is not None:
                    on_chunk(done, len(ids))
    except BaseException:
        # Keep every fully written batch: the next call resumes after it.
        commit()
        raise
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    meta["build"] = {"seconds": round(seconds, 3), "images_encoded": len(dataset),
                     "images_per_s": round(len(dataset) / max(seconds, 1e-9), 1), "device": str(device)}
    commit()
    _check_every_row_written(folder, ids, done, zero_rows)
    _write_json_atomic(folder / META_FILE, meta)
    commit(complete=True)  # only now, with every row on disk and read back, does the cache count as complete
    return FeatureCache(folder, meta)


def _check_every_row_written(folder: Path, ids: list[int], done: int, zero_rows: list[int]) -> None:
    """Refuse to mark complete a cache with fewer rows written than images, or with a row that reads back empty."""
    if done != len(ids):
        raise FeatureCacheError(f"Only {done} of {len(ids)} images were encoded into {folder}; run "
                                "build_feature_cache again to finish it.")
    bad = _all_unwritten_rows(folder / FEATURES_FILE, zero_rows)
    if bad:
        _write_json_atomic(folder / PROGRESS_FILE, {"done": bad[0], "complete": False})
        raise FeatureCacheError(f"The features of {len(bad)} image(s) in {folder} read back as never written "
                                f"(first: image {ids[bad[0]]}); run build_feature_cache again to encode them.")


def ensure_features(cfg, encoder=None, splits: Iterable[str] = ("train", "val", "test"),
                    progress: bool = True) -> FeatureCache:
    """The profile's cache over the given splits: built once (pretrained `cfg.encoder`), then reused instantly."""
    split_file = Path(cfg.split_file)
    if not split_file.is_file():
        raise FileNotFoundError(f"No split file at {split_file}; run labutils.course.ensure_dataset(cfg) first.")
    table = _read_json(split_file)
    unknown = [s for s in splits if s not in table]
    if unknown:
        raise FeatureCacheError(f"Split(s) {unknown} are not in {split_file}; choose from {sorted(table)}.")
    ids = [i for s in splits for i in table[s]]
    return build_feature_cache(cfg, encoder, ids, progress=progress)
