"""`python -m labutils caption IMAGE... --checkpoint FILE [--beam K] [--attention-out PNG]`: caption your own images."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path


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
        from . import decode

        feats = self.features(images)
        if beam <= 1:
            return decode.greedy(self.decoder, feats, self.vocab, max_len=max_len)
        return [best[0] for best in decode.beam_search(self.decoder, feats, self.vocab, beam_size=beam,
                                                       max_len=max_len)]


def load_captioner(checkpoint_path: str | Path, device: str = "cpu") -> Captioner:
    """Rebuild encoder, decoder and vocabulary from one checkpoint, with one clear error for each way it can fail."""
    from . import models
    from .checkpoint import load_checkpoint
    from .train import decoder_from_checkpoint
    from .vocab import Vocabulary

    path = Path(checkpoint_path)
    if not path.is_file():
        raise CaptionCommandError(f"No checkpoint at {path}; train one with notebook 07 (it saves "
                                  "build/checkpoints/<profile>/attention.pt) or pass the right --checkpoint path.")
    saved = load_checkpoint(path)
    vocab = Vocabulary.from_dict(saved["vocab"])
    spec = saved.get("decoder", {})
    if spec.get("vocab_size") != len(vocab):
        raise CaptionCommandError(
            f"{path} does not match its vocabulary: the decoder predicts {spec.get('vocab_size')} words but the "
            f"vocabulary has {len(vocab)}; use a checkpoint written by labutils.train, not one edited by hand.")
    try:
        decoder = decoder_from_checkpoint(saved)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise CaptionCommandError(f"{path} does not match the decoder it names ({str(exc).splitlines()[0][:120]}); "
                                  "retrain with the current labutils.") from exc
    cfg = saved["config"]
    encoder = models.build_encoder(cfg["encoder"], pretrained=True, grid_size=int(cfg["grid_size"]))
    if encoder.out_channels != spec.get("feature_dim"):
        raise CaptionCommandError(f"{path} was trained on {spec.get('feature_dim')}-channel features but encoder "
                                  f"{cfg['encoder']} gives {encoder.out_channels}; the checkpoint's config is damaged.")
    return Captioner(encoder.to(device), decoder.to(device), vocab, int(cfg["encoder_input_size"]), device)


def _attention_path(base: Path, index: int, total: int) -> Path:
    return base if total == 1 else base.with_name(f"{base.stem}_{index + 1}{base.suffix}")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry; returns 0 when every image was captioned, 1 when some could not be read, 2 on usage errors."""
    parser = argparse.ArgumentParser(prog="python -m labutils caption", description=__doc__)
    parser.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    parser.add_argument("--checkpoint", required=True, help="a checkpoint saved by notebook 07 / labutils.train")
    parser.add_argument("--beam", type=int, default=3, help="beam size (1 = greedy); default 3")
    parser.add_argument("--max-len", type=int, default=30, help="longest caption in words")
    parser.add_argument("--attention-out", default=None,
                        help="save the word-by-word attention figure here (PNG; numbered when several images)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args(argv)

    from .data import ImageLoadError, load_image
    from .models import EncoderWeightsError

    try:
        captioner = load_captioner(args.checkpoint, args.device)
    except (CaptionCommandError, EncoderWeightsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.attention_out and not getattr(captioner.decoder, "uses_attention", False):
        print("error: this checkpoint's decoder (Show and Tell) has no attention to draw; "
              "drop --attention-out or use an attention checkpoint.", file=sys.stderr)
        return 2

    images, paths, failed = [], [], 0
    for name in args.images:
        try:
            images.append(load_image(name))
            paths.append(name)
        except ImageLoadError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
    if images:
        captions = captioner.caption(images, beam=args.beam, max_len=args.max_len)
        for index, (name, image, caption) in enumerate(zip(paths, images, captions, strict=True)):
            print(f"{name}: {caption.text}")
            if args.attention_out:
                import matplotlib

                matplotlib.use("Agg")
                import matplotlib.pyplot as plt
                from PIL import ImageOps

                from .viz import plot_attention

                out = _attention_path(Path(args.attention_out), index, len(images))
                words = list(caption.words)
                # ImageOps.fit = shorter side to size + centre crop: the same view the encoder got.
                seen = ImageOps.fit(image, (captioner.input_size, captioner.input_size))
                fig = plot_attention(seen, words,
                                     caption.alphas.cpu().numpy(), captioner.encoder.grid_size, save_to=out,
                                     title=Path(name).name)
                plt.close(fig)
                print(f"  attention figure: {out}")
    return 1 if failed else 0
