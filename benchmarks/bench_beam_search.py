"""Batched beam search (labutils.decode.beam_search) vs a per-image reference written the way seed 002 does it.

Seed 002 (sgrvinod's a-PyTorch-Tutorial-to-Image-Captioning, caption.py) captions ONE image at a time: the k beams
of that image are the batch, the search shrinks k as beams emit <end>, and finished sequences are kept in Python
lists. `reference_beam_search` below re-implements that structure on the decoders' step interface (written here,
not copied). `labutils.decode.beam_search` runs the same search for all images and all beams at once: one
`decoder.step` call per time step for everything.

Both break score ties the same way (a stable descending sort: lowest flat index first) and rank by raw log-prob
(length_penalty=0), so they must pick the same best caption for every image.

Run from the repository root:  python benchmarks/bench_beam_search.py [--images 256] [--beam 5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/machine.py, also when a test imports this file

from machine import machine_info  # noqa: E402  (benchmarks/machine.py, next to this script)

from labutils import decode  # noqa: E402
from labutils.decoders import ShowAttendTell  # noqa: E402
from labutils.vocab import Vocabulary  # noqa: E402

CHECKPOINT = ROOT / "build" / "checkpoints" / "quick" / "attention.pt"
RESULTS = ROOT / "benchmarks" / "results" / "beam_search.json"


def stable_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of a 1-D tensor with ties broken by the lower index (topk's own tie order is unspecified)."""
    values, indices = scores.sort(descending=True, stable=True)
    return values[:k], indices[:k]


def reference_beam_search(decoder, features: torch.Tensor, vocab, beam_size: int, max_len: int):
    """Seed-002-style beam search for ONE image (features [1, P, C]); call it with the decoder in eval mode.

    Returns (tokens, raw log-prob, finished, attention [len, P] or None) of the best caption.
    """
    k = beam_size
    vocab_size = decoder.vocab_size
    # Treat the problem as a batch of k identical images, as the seed does.
    encoder_out = features.expand(k, *features.shape[1:])
    state = decoder.init_state(encoder_out)
    k_prev_words = torch.full((k,), vocab.start_id, dtype=torch.long)
    seqs = torch.empty(k, 0, dtype=torch.long)
    seqs_alpha = None
    top_k_scores = torch.zeros(k, 1)
    complete_seqs, complete_seqs_alpha, complete_seqs_scores = [], [], []
    step = 1
    recompute_projection = hasattr(decoder, "encoder_att")
    while True:
        if recompute_projection:
            # Seed 002's Attention.forward applies encoder_att to the features at EVERY step; so does this
            # reference (same numbers, the seed's cost). labutils computes it once, in init_state.
            h, c, feats, _ = state
            state = (h, c, feats, decoder.encoder_att(feats))
        logits, state, alpha = decoder.step(k_prev_words, state)
        scores = top_k_scores.expand(-1, vocab_size) + F.log_softmax(logits.float(), dim=1)
        if step == 1:  # all k rows are the same image with the same history: expand row 0 only
            top_k_scores, top_k_words = stable_topk(scores[0], k)
        else:
            top_k_scores, top_k_words = stable_topk(scores.view(-1), k)
        prev_word_inds = top_k_words // vocab_size
        next_word_inds = top_k_words % vocab_size
        seqs = torch.cat([seqs[prev_word_inds], next_word_inds.unsqueeze(1)], dim=1)
        if alpha is not None:
            new_alpha = alpha[prev_word_inds].unsqueeze(1)
            seqs_alpha = new_alpha if seqs_alpha is None else torch.cat([seqs_alpha[prev_word_inds], new_alpha], 1)

        incomplete_inds = [ind for ind, word in enumerate(next_word_inds) if word != vocab.end_id]
        complete_inds = [ind for ind, word in enumerate(next_word_inds) if word == vocab.end_id]
        if complete_inds:
            complete_seqs.extend(seqs[complete_inds].tolist())
            complete_seqs_scores.extend(top_k_scores[complete_inds].tolist())
            if seqs_alpha is not None:
                complete_seqs_alpha.extend(seqs_alpha[complete_inds])
        k -= len(complete_inds)
        if k == 0 or step >= max_len:
            break
        seqs = seqs[incomplete_inds]
        if seqs_alpha is not None:
            seqs_alpha = seqs_alpha[incomplete_inds]
        keep = prev_word_inds[incomplete_inds]
        state = tuple(t[keep] for t in state)
        top_k_scores = top_k_scores[incomplete_inds].unsqueeze(1)
        k_prev_words = next_word_inds[incomplete_inds]
        step += 1

    if complete_seqs:
        best = complete_seqs_scores.index(max(complete_seqs_scores))
        alphas = complete_seqs_alpha[best] if complete_seqs_alpha else None
        return complete_seqs[best], complete_seqs_scores[best], True, alphas
    # Nothing finished within max_len: the best unfinished beam (the sort keeps the live beams best first).
    first = incomplete_inds[0]
    alphas = seqs_alpha[first] if seqs_alpha is not None else None
    return seqs[first].tolist(), float(top_k_scores[first]), False, alphas


class LengthPrior(torch.nn.Module):
    """Wraps a random-init decoder so that <end> becomes likely after about `length` words, as in a trained model.

    An untrained decoder almost never emits <end>, so every search runs to max_len and nothing can stop early:
    the worst case for the batched search. This wrapper (same step interface; the extra state is a per-row step
    counter) adds `slope * (step - length)` to the <end> logit, giving captions of trained-model length.
    """

    def __init__(self, decoder, end_id: int, length: float = 10.0, slope: float = 1.5):
        super().__init__()
        self.decoder, self.end_id, self.length, self.slope = decoder, end_id, length, slope
        self.vocab_size, self.uses_attention = decoder.vocab_size, decoder.uses_attention

    def init_state(self, features):
        return (*self.decoder.init_state(features), torch.zeros(features.size(0)))

    def step(self, tokens, state):
        logits, inner, alpha = self.decoder.step(tokens, state[:-1])
        steps = state[-1] + 1
        logits[:, self.end_id] += self.slope * (steps - self.length)
        return logits, (*inner, steps), alpha


def load_model(seed: int, random_init: bool = False):
    """The quick profile's trained attention decoder if its checkpoint exists, else a seeded random one."""
    if CHECKPOINT.is_file() and not random_init:
        from labutils.checkpoint import load_checkpoint
        from labutils.train import decoder_from_checkpoint

        data = load_checkpoint(CHECKPOINT)
        return decoder_from_checkpoint(data).eval(), Vocabulary.from_dict(data["vocab"]), \
            f"trained checkpoint {CHECKPOINT.relative_to(ROOT)} (epoch {data.get('epoch')})"
    torch.manual_seed(seed)
    # The quick profile's sizes: 36 words + 4 specials, EfficientNet-Lite0's 1280 channels on a 4x4 grid.
    vocab = Vocabulary([f"word{i:02d}" for i in range(36)])
    decoder = ShowAttendTell(len(vocab), feature_dim=1280, embed_dim=64, hidden_dim=256, attention_dim=128)
    return decoder.eval(), vocab, f"random init (torch.manual_seed({seed}))"


def load_features(n_images: int, seed: int, channels: int, trained: bool) -> tuple[torch.Tensor, str]:
    """Cached encoder features of the first test images when a trained model and its cache exist, else random."""
    if trained:
        try:
            from labutils.config import get_config
            from labutils.features import FeatureCache

            cfg = get_config("quick")
            test_ids = json.loads(Path(cfg.split_file).read_text())["test"][:n_images]
            for folder in sorted(Path(cfg.feature_dir).glob("*")):
                try:
                    cache = FeatureCache.load(folder)
                except (FileNotFoundError, ValueError):
                    continue
                if cache.channels == channels and all(i in cache for i in test_ids):
                    feats = cache.batch(test_ids)
                    return feats, f"cached quick-profile features of the first {len(test_ids)} test images " \
                                  f"({folder.relative_to(ROOT)})"
            print("(no complete feature cache matches the checkpoint; using random features)")
        except (OSError, ValueError, KeyError) as exc:
            print(f"(cached features unavailable: {type(exc).__name__}: {exc}; using random features)")
    gen = torch.Generator().manual_seed(seed)
    # Non-negative like the encoder's post-activation grid.
    feats = torch.randn(n_images, 16, channels, generator=gen).relu()
    return feats, f"random relu(N(0,1)) features, seed {seed}"


def run_once(decoder, vocab, feats, beam: int, max_len: int, repeats: int) -> dict:
    """Time the reference once and the batched search `repeats` times (median); compare their best captions."""
    with torch.inference_mode():
        reference_beam_search(decoder, feats[:1], vocab, beam, max_len)  # warm-up
        start = time.perf_counter()
        reference = [reference_beam_search(decoder, feats[i:i + 1], vocab, beam, max_len) for i in range(len(feats))]
        reference_s = time.perf_counter() - start
    decode.beam_search(decoder, feats[:8], vocab, beam_size=beam, max_len=max_len)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        batched = decode.beam_search(decoder, feats, vocab, beam_size=beam, max_len=max_len)
        times.append(time.perf_counter() - start)
    best = [options[0] for options in batched]
    same = [ref[0] == out.tokens for ref, out in zip(reference, best, strict=True)]
    attention_agrees = all(ref[3] is None and out.alphas is None or torch.allclose(ref[3], out.alphas, atol=1e-5)
                         for ref, out, ok in zip(reference, best, same, strict=True) if ok)
    return {
        "torch_threads": torch.get_num_threads(),
        "reference_s": round(reference_s, 3),
        "batched_s_median": round(statistics.median(times), 3),
        "batched_s_all": [round(t, 3) for t in times],
        "speedup": round(reference_s / statistics.median(times), 2),
        "identical_best_captions": int(sum(same)),
        "images": len(same),
        "mismatched_images": [i for i, ok in enumerate(same) if not ok][:20],
        "attention_maps_agree_atol_1e-5": bool(attention_agrees),
        "max_abs_log_prob_difference": max(abs(ref[1] - out.log_prob) for ref, out in zip(reference, best, strict=True)),
        "finished_captions": int(sum(out.finished for out in best)),
        "mean_caption_tokens": round(sum(len(out) for out in best) / len(best), 2),
        "load_average_1min_after": os.getloadavg()[0],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--max-len", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the batched search (median kept)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch CPU thread counts to run")
    parser.add_argument("--prior-length", type=float, default=10.0,
                        help="for a random-init model, also run it wrapped in LengthPrior(length=this) so captions "
                             "end as a trained model's do (0 to skip)")
    parser.add_argument("--random-init", action="store_true",
                        help="ignore the trained checkpoint: random-init decoder with 1280-channel random features")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    decoder, vocab, model_note = load_model(args.seed, args.random_init)
    trained = CHECKPOINT.is_file() and not args.random_init
    feats, feature_note = load_features(args.images, args.seed, decoder.feature_dim, trained=trained)
    info = machine_info()
    variants = [("as is", decoder)]
    if not trained and args.prior_length:
        variants.append((f"random init + LengthPrior(length={args.prior_length}): <end> likely after about "
                         f"{args.prior_length:g} words, like a trained model",
                         LengthPrior(decoder, vocab.end_id, args.prior_length).eval()))

    runs = []
    for name, model in variants:
        for threads in args.threads:
            torch.set_num_threads(threads)
            run = {"model_variant": name, **run_once(model, vocab, feats, args.beam, args.max_len, args.repeats)}
            print(json.dumps({k: run[k] for k in ("model_variant", "torch_threads", "reference_s",
                                                  "batched_s_median", "speedup", "identical_best_captions",
                                                  "finished_captions", "load_average_1min_after")}))
            runs.append(run)

    result = {
        "benchmark": f"beam search k={args.beam} over {args.images} images: batched labutils.decode.beam_search "
                     "vs a per-image seed-002-style reference (benchmarks/bench_beam_search.py)",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/bench_beam_search.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": model_note,
        "decoder_sizes": {"vocab": len(vocab), "positions": feats.shape[1], "channels": feats.shape[2],
                          "embed": decoder.embedding.embedding_dim, "hidden": decoder.hidden_dim,
                          "attention": decoder.full_att.in_features},
        "features": feature_note,
        "beam_size": args.beam, "max_len": args.max_len, "length_penalty": 0.0,
        "runs": runs,
        "machine": {**{k: v for k, v in info.items() if k != "load_average_1_5_15min"},
                    "load_average_1_5_15min_before": info["load_average_1_5_15min"]},
        "note": "CPU only. The machine's 2 cores were shared with other jobs (see the load averages), so absolute "
                "times are noisy; each ratio compares runs taken back to back in the same process.",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")
    return 0 if all(r["identical_best_captions"] == r["images"] for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
