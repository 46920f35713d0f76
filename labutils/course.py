"""The one-call path the notebooks use: put the profile's dataset on disk, and (below) get the data, the features
and a trained captioner with one call each, so a notebook spends its cells on its own lesson.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from . import checkpoint as ckpt
from . import coco, data, decode, encoders, features, metrics, train
from .checkpoint import load_checkpoint
from .decoders import build_decoder, canonical_kind
from .infra.datasets import ensure_dataset
from .infra.mscoco import network_available  # noqa: F401  (notebook 08: is there a network for SPICE's models?)
from .infra.resize import image_root  # noqa: F401  (the folder the readers take the images from)
from .train import (
    CFG_SETTINGS,
    RESUMED_CFG_SETTINGS,
    caption_loader,
    decoder_from_checkpoint,
    decoder_from_spec,
)
from .vocab import Vocabulary


# -- a trained captioner from one checkpoint (notebook 09, the caption command, the demo) ----------------------
class CaptionCommandError(ValueError):
    """A problem the user can fix (missing checkpoint, mismatched files); its message says how."""


@dataclass
class Captioner:
    """A trained encoder + decoder + vocabulary, ready to caption PIL images."""

    encoder: object
    decoder: object
    vocab: object
    input_size: int
    device: str = "cpu"

    @property
    def decode_side(self) -> int:
        """Shorter side to decode photos at: twice the encoder input, so the encoder's own resize still
        averages over several pixels and the caption does not change (benchmarks/bench_caption_cli.py checks it)."""
        return 2 * self.input_size

    def features(self, images) -> object:
        """Grid features [N, P, C] for a list of PIL images."""
        import torch

        transform = self.encoder.eval_transform(self.input_size)
        batch = torch.stack([transform(image) for image in images]).to(self.device)
        with torch.inference_mode():
            grid, _ = self.encoder(batch)
        return grid.float()

    def caption(self, images, beam: int = 1, max_len: int = 30):
        """Decode one Caption per image: greedy for beam <= 1, else beam search with `beam` beams."""
        feats = self.features(images)
        if beam <= 1:
            return decode.greedy(self.decoder, feats, self.vocab, max_len=max_len)
        return [best[0] for best in decode.beam_search(self.decoder, feats, self.vocab, beam_size=beam,
                                                       max_len=max_len)]


# What a checkpoint must hold to caption, and what each part is, for the one sentence when a part is missing.
_REQUIRED = {"model_state": "the decoder's weights", "vocab": "the vocabulary",
             "decoder": "the description of its decoder", "config": "the encoder settings"}
_REQUIRED_INSIDE = {"decoder": ("kind", "vocab_size", "feature_dim"),
                    "config": ("encoder", "grid_size", "encoder_input_size")}


def _check_complete(path: Path, saved: dict) -> None:
    fix = ("use the checkpoint that labutils.train writes (notebook 07 saves build/checkpoints/<profile>/"
           "attention.pt), not one saved by hand")
    for key, what in _REQUIRED.items():
        if not isinstance(saved.get(key), dict):
            raise CaptionCommandError(f"{path} lacks {what} (key {key!r}), so it cannot caption; {fix}.")
    for key, names in _REQUIRED_INSIDE.items():
        missing = [name for name in names if name not in saved[key]]
        if missing:
            raise CaptionCommandError(f"{path} lacks {', '.join(map(repr, missing))} in {_REQUIRED[key]} "
                                      f"(key {key!r}), so it cannot caption; {fix}.")


def load_captioner(checkpoint_path: str | Path, device: str = "cpu") -> Captioner:
    """Rebuild encoder, decoder and vocabulary from one checkpoint, with one clear error for each way it can fail."""
    path = Path(checkpoint_path)
    if not path.is_file():
        raise CaptionCommandError(f"No checkpoint at {path}; train one with notebook 07 (it saves "
                                  "build/checkpoints/<profile>/attention.pt) or pass the right --checkpoint path.")
    saved = load_checkpoint(path)
    _check_complete(path, saved)
    try:
        vocab = Vocabulary.from_dict(saved["vocab"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CaptionCommandError(f"{path} holds a vocabulary that cannot be read ({type(exc).__name__}: "
                                  f"{exc}); use a checkpoint written by labutils.train.") from exc
    spec = saved["decoder"]
    if spec.get("vocab_size") != len(vocab):
        raise CaptionCommandError(
            f"{path} does not match its vocabulary: the decoder predicts {spec.get('vocab_size')} words but the "
            f"vocabulary has {len(vocab)}; use a checkpoint written by labutils.train, not one edited by hand.")
    try:
        decoder = decoder_from_checkpoint(saved)
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise CaptionCommandError(f"{path} does not match the decoder it names ({str(exc).splitlines()[0][:120]}); "
                                  "retrain with the current labutils.") from exc
    cfg = saved["config"]
    encoder = encoders.build_encoder(cfg["encoder"], pretrained=True, grid_size=int(cfg["grid_size"]))
    if encoder.out_channels != spec.get("feature_dim"):
        raise CaptionCommandError(f"{path} was trained on {spec.get('feature_dim')}-channel features but encoder "
                                  f"{cfg['encoder']} gives {encoder.out_channels}; the checkpoint's config is damaged.")
    return Captioner(encoder.to(device), decoder.to(device), vocab, int(cfg["encoder_input_size"]), device)


# -- data, features and a trained captioner, one call each (notebooks 06-09) -----------------------------------
@dataclass
class LabData:
    """Everything a captioner trains on: vocabulary, split ids, references, feature source and data loaders."""

    cfg: object
    vocab: object
    splits: dict
    captions: dict  # image id -> reference captions
    source: Callable  # image id -> features [P, C]
    feature_dim: int
    loaders: dict  # "train" (CaptionBatch), "val" and "test" (EvalBatch)


def prepare_data(cfg, caption_mode: str = "sample", source: Callable | None = None,
                 feature_dim: int | None = None, progress: bool = True) -> LabData:
    """Dataset on disk, vocabulary from the training captions, cached encoder features, and the three loaders."""
    ensure_dataset(cfg, progress=progress)
    captions = coco.captions_by_image(coco.load_captions(cfg))
    splits = coco.load_splits(cfg)
    vocab = Vocabulary.build((c for i in splits["train"] for c in captions[i]), min_freq=cfg.min_freq)
    if source is None:  # the frozen pretrained encoder's features, computed once and cached on disk
        cache = features.ensure_features(cfg, splits=("train", "val", "test"), progress=progress)
        source, feature_dim = cache.source, cache.channels
    if feature_dim is None:
        feature_dim = int(source(splits["train"][0]).shape[-1])
    train_set = data.CaptionDataset(splits["train"], captions, vocab, source, mode=caption_mode,
                                    max_len=cfg.max_caption_len, seed=cfg.seed)
    loaders = {"train": data.make_loader(train_set, cfg, train=True, collate_fn=data.collate_captions)}
    for name in ("val", "test"):
        loaders[name] = data.make_loader(data.EvalDataset(splits[name], captions, source), cfg, train=False,
                                         collate_fn=data.collate_eval)
    return LabData(cfg, vocab, splits, captions, source, int(feature_dim), loaders)


def checkpoint_path_for(cfg, kind: str) -> Path:
    """Where the learner's run of decoder `kind` saves its checkpoint: cfg.checkpoint_dir / f"{kind}.pt"."""
    return Path(cfg.checkpoint_dir) / f"{canonical_kind(kind)}.pt"


def instructor_checkpoint_path(cfg, kind: str) -> Path:
    """Where an instructor puts a trained fallback of decoder `kind`: cfg.checkpoint_dir / "instructor" / f"{kind}.pt".

    Nothing in the lab writes there (training saves to `checkpoint_path_for`, a different file), so a learner's
    run can never overwrite the fallback; `load_trained` uses it when the learner has no finished run of their own.
    """
    return Path(cfg.checkpoint_dir) / "instructor" / f"{canonical_kind(kind)}.pt"


@train.on_cfg_threads
def train_quick_captioner(cfg, kind: str = "attention", progress: bool = True, lab_data: LabData | None = None,
                          caption_mode: str = "sample", resume: bool = False, **train_kwargs):
    """Prepare the data, build decoder `kind`, train it, score the test split; return (decoder, vocab, result, path).

    The checkpoint (best validation epoch) is saved to `cfg.checkpoint_dir / f"{kind}.pt"`, where notebooks 08
    and 09 find it. `result.test_metric` is the greedy BLEU-4 on the test split. Settings of the config change
    through it (`cfg.replace(epochs=3)`); extra keyword arguments are `train`'s own (e.g. `patience=...`). With
    `resume=True` the run saved there continues where it stopped, with the decoder, epochs, learning rates and
    training options it was started with (keyword arguments given here win) and `cfg.time_budget_s` as its
    safety limit.
    """
    kind = canonical_kind(kind)
    lab_data = lab_data or prepare_data(cfg, caption_mode=caption_mode, progress=progress)
    path = checkpoint_path_for(cfg, kind)
    if resume:
        saved = ckpt.load_checkpoint(path)
        decoder = decoder_from_spec(saved["decoder"])  # train() loads the weights to resume from
        settings = saved.get("settings", {})
        cfg = cfg.replace(**{key: settings[key] for key in RESUMED_CFG_SETTINGS if key in settings})
        if "scheduler" in settings:  # checkpoints from before the schedule was a config setting
            cfg = cfg.replace(lr_schedule=settings["scheduler"] or "none")
        own = {key: value for key, value in settings.items() if key not in (*CFG_SETTINGS, "scheduler")}
        train_kwargs = {**own, **train_kwargs, "resume_from": path}
    else:
        train.seed_everything(cfg.seed)
        decoder = build_decoder(kind, len(lab_data.vocab), lab_data.feature_dim, cfg)
    result = train.train(cfg, decoder, lab_data.loaders, lab_data.vocab, checkpoint_path=path, progress=progress,
                   **train_kwargs)
    predictions, references = caption_loader(decoder, lab_data.loaders["test"], lab_data.vocab, cfg.device,
                                             cfg.max_caption_len, progress=progress, desc="test captions")
    result.test_metric = metrics.bleu4(predictions, references)
    result.test_samples = dict(list(predictions.items())[:8])
    saved = ckpt.load_checkpoint(path)
    saved["test_metric"] = result.test_metric
    ckpt.save_checkpoint(path, saved.pop("model_state"), saved.pop("vocab"), saved.pop("config"),
                         **{k: v for k, v in saved.items() if k not in ("format", "version")})
    return decoder.eval(), lab_data.vocab, result, path


def _matches(saved_cfg: Mapping, cfg) -> bool:
    keys = ("dataset_name", "n_images", "image_size", "encoder", "encoder_input_size", "grid_size", "seed")
    now = cfg.to_dict()
    return all(saved_cfg.get(k) == now.get(k) for k in keys)


def _why_train_anew(saved: Mapping | None, cfg) -> str | None:
    """Why `load_trained` cannot use or resume this checkpoint (None: it can)."""
    if saved is None:
        return "no checkpoint yet"
    if not _matches(saved["config"], cfg):
        return "the checkpoint was trained on other data/features"
    if "finished" not in saved or saved.get("resume") is None:
        return "the checkpoint does not say whether its run finished, so it may be from a cut-short run"
    return None


def _instructor_fallback(cfg, kind: str, why: str):
    """The instructor's checkpoint for `kind` when there is one trained on this data and features, else None."""
    path = instructor_checkpoint_path(cfg, kind)
    if not path.is_file():
        return None
    saved = ckpt.load_checkpoint(path)
    if not _matches(saved["config"], cfg):
        print(f"Not using the instructor's checkpoint {path}: it was trained on other data/features than the "
              f"{cfg.profile} profile's.")
        return None
    print(f"Using the instructor's trained {kind} captioner ({path}), because {why}. Your own run is used as "
          f"soon as notebook 07 finishes it.")
    return saved


def load_trained(cfg, kind: str = "attention", progress: bool = True, use_instructor: bool = True,
                 train: bool = True):
    """Load the checkpoint of a finished run that `train_quick_captioner` saved for `kind`.

    Without one it uses the instructor's fallback (`instructor_checkpoint_path`) when there is one and
    `use_instructor`, and says so; otherwise it trains first, and says so before it starts: from scratch when
    there is no usable checkpoint, and by resuming the run when its checkpoint is from a run that was interrupted
    (a Colab disconnect in notebook 07, say) or cut short by the safety time limit: a learner expects the model
    notebook 07 was training, and the resume continues that very run (exactly, epoch for epoch) without redoing
    the epochs already done. A resumed run gets `cfg.time_budget_s` as its safety limit, not the one it was
    started with. With `train=False` it never trains: a missing, mismatched or unfinished checkpoint is a
    FileNotFoundError (for a caller that must use the very model a run left, and must not overwrite it). Returns (decoder in eval mode on cfg.device, vocabulary, checkpoint dict with its file as
    `"checkpoint_file"`).
    """
    kind = canonical_kind(kind)
    path = checkpoint_path_for(cfg, kind)
    saved = ckpt.load_checkpoint(path) if path.is_file() else None
    reason = _why_train_anew(saved, cfg)
    unfinished = reason is None and (not saved["finished"] or saved.get("stopped") == "time_budget")
    if use_instructor and (reason is not None or unfinished):
        fallback = _instructor_fallback(cfg, kind, reason or f"your run in {path} has not finished")
        if fallback is not None:
            fallback["checkpoint_file"] = str(instructor_checkpoint_path(cfg, kind))
            return decoder_from_checkpoint(fallback).to(cfg.device), Vocabulary.from_dict(fallback["vocab"]), fallback
    if not train and (reason is not None or unfinished):
        raise FileNotFoundError(f"There is no finished {kind} checkpoint for these settings at {path} "
                                f"({reason or 'its run has not finished'}); train it first, or give the settings "
                                "it was trained with (its seed, profile and encoder).")
    if reason is not None:
        print(f"Training the {kind} captioner first, for at most {cfg.epochs} epochs as notebook 07 does "
              f"({reason}: {path}).")
        train_quick_captioner(cfg, kind, progress=progress)
        saved = ckpt.load_checkpoint(path)
    elif not saved["finished"] or saved.get("stopped") == "time_budget":
        planned = saved.get("settings", {}).get("epochs", cfg.epochs)
        why = "the safety time limit cut short" if saved["finished"] else "stopped before it finished"
        print(f"Resuming the {kind} captioner's training at epoch {int(saved['epoch']) + 1} of at most {planned}, "
              f"because {path} is from a run that {why}.")
        train_quick_captioner(cfg, kind, progress=progress, resume=True)
        saved = ckpt.load_checkpoint(path)
    saved["checkpoint_file"] = str(path)  # which file this is: the caption command and load_captioner take a path
    return decoder_from_checkpoint(saved).to(cfg.device), Vocabulary.from_dict(saved["vocab"]), saved
