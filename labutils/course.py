"""The one-call path the notebooks use: put the profile's dataset on disk, and (below) get the data, the features
and a trained captioner with one call each, so a notebook spends its cells on its own lesson.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import decode, models
from .checkpoint import load_checkpoint
from .infra.datasets import ensure_dataset  # noqa: F401  (notebooks call course.ensure_dataset(cfg))
from .infra.mscoco import network_available  # noqa: F401  (notebook 08: is there a network for SPICE's models?)
from .infra.resize import image_root  # noqa: F401  (the folder the readers take the images from)
from .train import decoder_from_checkpoint
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
    encoder = models.build_encoder(cfg["encoder"], pretrained=True, grid_size=int(cfg["grid_size"]))
    if encoder.out_channels != spec.get("feature_dim"):
        raise CaptionCommandError(f"{path} was trained on {spec.get('feature_dim')}-channel features but encoder "
                                  f"{cfg['encoder']} gives {encoder.out_channels}; the checkpoint's config is damaged.")
    return Captioner(encoder.to(device), decoder.to(device), vocab, int(cfg["encoder_input_size"]), device)
