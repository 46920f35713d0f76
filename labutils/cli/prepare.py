"""`python -m labutils prepare`: get a profile's data ready before the workshop, in one re-runnable command.

    coco profile:   MS-COCO download (zips, or a --subset image by image) -> resize once -> feature cache
    quick profile:  synthetic dataset -> feature cache (a minute or two on 2 CPU cores, offline: a smoke test)

Every step skips what is already done and resumes what was interrupted, so running the command again is always
safe. `--dry-run` changes nothing: it lists what is still missing, one sentence per piece, and fails fast with
that list when the pieces cannot be fetched from here.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .. import encoders
from ..config import PROFILES, get_config
from ..encoders import EncoderWeightsError
from ..features import ensure_features
from ..infra import flickr8k, mscoco, resize
from ..infra.datasets import ensure_dataset
from ..infra.download import human_bytes
from ..infra.files import DiskFullError, FolderBusyError, NotLabFolderError

RESIZE_IMAGES_PER_S = 95  # measured: infra.resize.resize_all on 2 shared cores, 640x480 JPEGs to 256 px (INSTRUCTORS.md)


class PrepareError(RuntimeError):
    """A preparation step that cannot go on; the message says what to do."""


def _is_mscoco(cfg) -> bool:
    return cfg.dataset_name.startswith("coco")


def _host(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"


def encoder_weights(name: str) -> tuple[Path, str | None]:
    """(file the pretrained weights of encoder `name` are loaded from, URL they download from or None if pip-installed)."""
    key = name.lower().replace("-", "_")
    if key in encoders.TORCHVISION_ENCODERS:
        import torch
        from torchvision.models import get_model_weights

        url = get_model_weights(key).DEFAULT.url
        return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name, url
    return encoders.lite_weights_file(int(key[len("efficientnet_lite")])), None


def _build_encoder(cfg, progress: bool):
    try:
        return encoders.build_encoder(cfg.encoder, pretrained=True, grid_size=cfg.grid_size, progress=progress)
    except encoders.EncoderWeightsError:
        try:
            target, url = encoder_weights(cfg.encoder)
        except encoders.EncoderWeightsError as err:  # the pip-installed weights are missing
            raise PrepareError(str(err)) from None
        raise PrepareError(f"The ImageNet weights of {cfg.encoder} could not be downloaded from {_host(url or '')}, "
                           f"so the feature cache was not built; run the command again where there is internet, or "
                           f"copy {target.name} into {target.parent} first.") from None


def _feature_cache_built(cfg) -> bool:
    """True when a complete cache for this encoder, input size and grid exists (the dry run's best guess)."""
    import json

    prefix = f"{cfg.encoder}-{cfg.encoder_input_size}px-g{cfg.grid_size}-"
    folder = Path(cfg.feature_dir)
    for candidate in folder.glob(f"{prefix}*") if folder.is_dir() else []:
        try:
            if json.loads((candidate / "progress.json").read_text()).get("complete"):
                return True
        except (OSError, ValueError):
            continue
    return False


def plan(cfg, subset: int | None = None, features: bool = True,
         base_url: str | None = None) -> list[tuple[str, str, str | None]]:
    """What `prepare` still has to do: (short name, one sentence, host it needs or None) per missing piece."""
    pieces: list[tuple[str, str, str | None]] = []
    if _is_mscoco(cfg):
        coco_host = _host((base_url or mscoco.COCO_BASE_URL).rstrip("/"))
        for short, sentence, _ in mscoco.mscoco_plan(cfg, subset, base_url):
            local = short in ("disk space", "Karpathy split (optional)")
            pieces.append((short, sentence, None if local else coco_host))
        record = resize.resize_record(cfg)
        if record is None or not record.get("complete"):
            n = subset or sum(mscoco.COCO_IMAGES[mscoco.coco_year(cfg)].values())
            minutes = max(1, round(n / RESIZE_IMAGES_PER_S / 60))
            pieces.append(("resized images", f"The images are not resized to {cfg.image_size} px yet; preparing "
                           f"writes them once into {resize.resized_image_dir(cfg)} (about {minutes} min for {n:,} "
                           f"images at the {RESIZE_IMAGES_PER_S} images/s measured on 2 CPU cores).", None))
    elif cfg.dataset_name == "flickr8k":
        if flickr8k.prepared_record(cfg) is None:
            pieces.append(("Flickr8k", f"Flickr8k is not converted yet; preparing downloads its two archives (about "
                           f"1 GB) from {flickr8k.FLICKR8K_BASE_URL} and converts them once into {cfg.dataset_dir}, "
                           "or takes a local copy with --from DIR.", _host(flickr8k.FLICKR8K_BASE_URL)))
        record = resize.resize_record(cfg)
        if record is None or not record.get("complete"):
            pieces.append(("resized images", f"The photos are not resized to {cfg.image_size} px yet; preparing "
                           f"writes them once into {resize.resized_image_dir(cfg)}.", None))
    elif not Path(cfg.captions_file).is_file():
        pieces.append(("synthetic dataset", f"The synthetic dataset is not generated yet; preparing renders its "
                       f"{cfg.n_images} images into {cfg.dataset_dir} (seconds, offline).", None))
    if features:
        try:
            target, url = encoder_weights(cfg.encoder)
        except EncoderWeightsError as err:
            target, url = None, None
            pieces.append((f"{cfg.encoder} weights", str(err), "https://pypi.org"))
        if target is not None and url is not None and not target.is_file():
            size = ""
            try:
                from torchvision.models import get_model_weights

                size = f" ({human_bytes(get_model_weights(cfg.encoder).DEFAULT.meta['_file_size'] * 1e6)})"
            except (KeyError, ValueError):
                pass
            pieces.append((f"{cfg.encoder} weights", f"The ImageNet weights of {cfg.encoder} are not in "
                           f"{target.parent}; they download from {url}{size} when the feature cache is built.",
                           _host(url)))
        if not _feature_cache_built(cfg):
            pieces.append(("feature cache", f"The {cfg.encoder} feature cache ({cfg.grid_size}x{cfg.grid_size} grid "
                           f"at {cfg.encoder_input_size} px) is not built yet; preparing encodes every image once "
                           f"into {cfg.feature_dir}.", None))
    return pieces


def _dry_run(cfg, subset: int | None, features: bool, base_url: str | None, timeout: float) -> dict:
    pieces = plan(cfg, subset, features, base_url)
    if not pieces:
        print(f"The {cfg.profile} profile is prepared under {cfg.dataset_dir}; nothing to do.")
        return {"profile": cfg.profile, "missing": []}
    hosts = sorted({host for _, _, host in pieces if host})
    unreachable = [host for host in hosts if not mscoco.network_available(host, timeout=timeout)]
    lines = "".join(f"\n  - {sentence}" for _, sentence, _ in pieces)
    if unreachable:
        raise PrepareError(
            f"The {cfg.profile} profile is not prepared under {cfg.dataset_dir} (missing: "
            f"{', '.join(short for short, _, _ in pieces)}) and {' and '.join(unreachable)} cannot be reached; run "
            f"`python -m labutils prepare --profile {cfg.profile}` where there is internet (such as Colab), or use "
            f"the offline quick profile (LAB_PROFILE=quick).{lines}")
    print(f"Dry run: preparing the {cfg.profile} profile would do {len(pieces)} thing(s):{lines}")
    return {"profile": cfg.profile, "missing": [short for short, _, _ in pieces]}


def prepare(cfg, subset: int | None = None, *, dry_run: bool = False, features: bool = True,
            base_url: str | None = None, timeout: float = 5.0, progress: bool = True,
            source: str | Path | None = None) -> dict:
    """Download, resize once and build the feature cache for `cfg` (each step skipped when done); return a summary.

    The coco profile (an MS-COCO `cfg.dataset_name`): `mscoco.prepare_mscoco(cfg, subset)` without its resize, then
    `resize.resize_images`, then `features.ensure_features` with the pretrained `cfg.encoder`. Other datasets (the
    quick profile's synthetic shapes): `ensure_dataset`, then the feature cache. Flickr8k: converted from `source`
    (a local copy laid out like its archives) when given, else downloaded, then resized once. `dry_run=True` changes
    nothing: it prints what is missing, or raises `PrepareError` listing it when a needed server cannot be reached.
    Failures raise with one sentence saying what to do; re-running resumes where it stopped.
    """
    if dry_run:
        return _dry_run(cfg, subset, features, base_url, timeout)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    if _is_mscoco(cfg):
        mscoco.prepare_mscoco(cfg, subset, base_url=base_url, timeout=timeout, progress=progress, resize=False)
        seconds["download"] = time.perf_counter() - started
        started = time.perf_counter()
        record = resize.resize_images(cfg, progress=progress)
        seconds["resize"] = time.perf_counter() - started
        if not record.get("complete"):
            raise PrepareError("The feature cache was not built because the resized images are incomplete (see the "
                               "message above); fix those images and run the same command again.")
    else:
        if source is not None:  # before ensure_dataset, which would otherwise download it
            flickr8k.prepare_flickr8k(cfg, source=source, progress=progress)
        ensure_dataset(cfg, progress=progress)
        seconds["dataset"] = time.perf_counter() - started
    summary = {"profile": cfg.profile, "dataset_dir": str(cfg.dataset_dir), "image_root": str(resize.image_root(cfg)),
               "feature_cache": None, "seconds": seconds}
    if features:
        encoder = _build_encoder(cfg, progress)
        started = time.perf_counter()
        cache = ensure_features(cfg, encoder, progress=progress)
        seconds["features"] = time.perf_counter() - started
        summary["feature_cache"] = str(cache.folder)
        summary["feature_shape"] = list(cache.shape)
    return summary


def _subset(text: str) -> int | str:
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of images or `all`") from None


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: 0 when everything is ready (or the dry run could list it), 1 on a failure, 2 on usage errors."""
    parser = argparse.ArgumentParser(prog="python -m labutils prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    # No argparse `choices`: get_config rejects a name, so a renamed profile can say what it is called now.
    parser.add_argument("--profile", default=None,
                        help=f"{', '.join(PROFILES)} (default: $LAB_PROFILE, else flickr8k with a CUDA GPU and "
                             "quick without)")
    parser.add_argument("--from", dest="source", type=Path, default=None, metavar="DIR",
                        help="flickr8k profile: a local copy laid out like the Flickr8k archives (Flicker8k_Dataset/, "
                             "Flickr8k_text/) instead of the download")
    parser.add_argument("--subset", type=_subset, default=None, metavar="N",
                        help="coco profile: only N MS-COCO images, fetched one by one; `all`: the whole dataset, "
                             "as zips (default: the subset prepared before, else all)")
    parser.add_argument("--year", type=int, choices=mscoco.COCO_YEARS, default=None,
                        help="coco profile: MS-COCO release (default 2014; 2017 goes to data/coco2017)")
    parser.add_argument("--dry-run", action="store_true", help="change nothing; list what is missing")
    parser.add_argument("--no-features", action="store_true", help="skip the feature cache (and the encoder weights)")
    parser.add_argument("--base-url", default=None, metavar="URL",
                        help=f"coco profile: MS-COCO mirror (default {mscoco.COCO_BASE_URL})")
    args = parser.parse_args(argv)

    overrides = {"coco_year": args.year} if args.year is not None else {}
    try:
        cfg = get_config(args.profile, **overrides)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    coco_only = [flag for flag, value in (("--subset", args.subset), ("--year", args.year),
                                          ("--base-url", args.base_url)) if value is not None]
    if args.source is not None and cfg.dataset_name != "flickr8k":
        print(f"error: --from only applies to the flickr8k profile, but this is the {cfg.profile} profile; add "
              "--profile flickr8k.", file=sys.stderr)
        return 2
    if coco_only and not _is_mscoco(cfg):
        print(f"error: {', '.join(coco_only)} only apply to MS-COCO (the coco profile), but this is the "
              f"{cfg.profile} profile; add --profile coco.", file=sys.stderr)
        return 2
    subset = None if args.subset == "all" else args.subset
    if subset is not None and subset < 3:
        print("error: --subset needs at least 3 images (train, val and test get at least one each).", file=sys.stderr)
        return 2
    if args.subset is None and _is_mscoco(cfg):
        # Like the notebooks' ensure_dataset: a plain re-run keeps the subset prepared before.
        subset = mscoco.prepared_subset(cfg)
        if subset is not None:
            print(f"Keeping the {subset}-image subset prepared before (--subset all: the whole dataset).")
    print(f"Preparing the {cfg.profile} profile: {cfg.dataset_dir}" + ("" if args.no_features else
          f", feature cache in {cfg.feature_dir}"))
    try:
        summary = prepare(cfg, subset, dry_run=args.dry_run, features=not args.no_features,
                          base_url=args.base_url, source=args.source)
    except (PrepareError, FileNotFoundError, ValueError, ConnectionError, DiskFullError, FolderBusyError,
            NotLabFolderError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Interrupted; run the same command again to continue where it stopped.", file=sys.stderr)
        return 130
    if not args.dry_run:
        times = ", ".join(f"{step} {s:.1f} s" for step, s in summary["seconds"].items())
        print(f"Ready: images read from {summary['image_root']}"
              + (f"; feature cache {summary['feature_cache']} {tuple(summary['feature_shape'])}"
                 if summary["feature_cache"] else "") + f" ({times}).")
    return 0
