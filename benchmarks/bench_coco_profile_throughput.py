"""The coco (MS-COCO) profile's throughput: images/s for the feature cache and captions/s for training, at MS-COCO sizes.

The numbers behind the workshop time budget in INSTRUCTORS.md. Everything runs at the `coco` profile's sizes
without the internet: ResNet-101 with random weights (the same shapes and arithmetic as the pretrained one),
JPEGs from the synthetic generator rendered at the coco profile's 256 px (COCO images resized once), and a
Show-Attend-Tell decoder with 512-wide layers, a 10,000-word vocabulary (MS-COCO at min_freq 5 gives about
10k) and 7x7x2048 features. Each measurement pairs the lab's code path with a plain reference in the same run:

- encode: the lab's frozen encoder (`encoders.inference_copy`: BatchNorm folded, channels_last, fp16 autocast on
  CUDA) vs the plain encoder (fp32, NCHW) on the same in-memory batch; outputs must agree.
- decode_jpeg: reading + transforming 256-px JPEGs with the DataLoader settings of the profile (2 workers, as
  on Colab's 2 vCPUs): the CPU-side ceiling of feature extraction.
- feature_cache: `features.build_feature_cache` end to end (JPEG -> encoder -> fp16 memory-mapped cache).
- train: one epoch of `train.train` (the lab's loop: AMP + GradScaler + pinned memory on CUDA) vs a plain fp32
  loop written here, same initial weights and batches; captions/s.

It also counts FLOPs (torch.utils.flop_counter) per image and per training caption, to turn a published T4
throughput into an estimate where no T4 was at hand (see INSTRUCTORS.md, "Expected timings").

Run from the repository root:  python benchmarks/bench_coco_profile_throughput.py [--device cuda] [--out PATH]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/machine.py, also when a test imports this file

from machine import machine_info  # noqa: E402  (benchmarks/machine.py, next to this script)

from labutils import data, encoders, features, train  # noqa: E402
from labutils.config import get_config  # noqa: E402
from labutils.decoders import build_decoder  # noqa: E402
from labutils.infra import synthetic  # noqa: E402
from labutils.vocab import Vocabulary  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
VOCAB_SIZE = 10_000
# Token counts of MS-COCO captions with <start>/<end>: mean about 12.5 (10.5 words), most between 10 and 16.
CAPTION_TOKENS = (10, 16)


def timed(fn, repeat: int, device: torch.device) -> float:
    """Best-of-`repeat` wall time of fn() in seconds (synchronising CUDA around it)."""
    best = float("inf")
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def count_flops(fn) -> int:
    """FLOPs (2 per multiply-add) of one call of fn, counted by torch.utils.flop_counter."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def bench_encode(cfg, device: torch.device, batch: int, repeat: int) -> dict:
    """The lab's frozen-encoder forward vs the plain fp32 NCHW forward, images/s on one in-memory batch."""
    encoder = encoders.build_encoder(cfg.encoder, pretrained=False, grid_size=cfg.grid_size, progress=False).eval()
    fast = encoders.inference_copy(encoder).to(device)
    plain = encoder.to(device)
    x = torch.randn(batch, 3, cfg.encoder_input_size, cfg.encoder_input_size, device=device)
    use_amp = device.type == "cuda" and cfg.mixed_precision

    @torch.inference_mode()
    def run_plain():
        return plain(x)[0]

    @torch.inference_mode()
    def run_lab():
        with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
            return fast(x.contiguous(memory_format=torch.channels_last))[0]

    ref, got = run_plain().float(), run_lab().float()
    rel_err = float((ref - got).abs().max() / ref.abs().max().clamp_min(1e-12))
    run_plain(), run_lab()  # warm-up (cudnn autotuning, allocator)
    t_plain, t_lab = timed(run_plain, repeat, device), timed(run_lab, repeat, device)
    one = x[:1]
    flops = count_flops(lambda: plain(one))
    return {"encoder": cfg.encoder, "input_px": cfg.encoder_input_size, "grid": cfg.grid_size, "batch": batch,
            "amp": use_amp, "plain_images_per_s": round(batch / t_plain, 1),
            "lab_images_per_s": round(batch / t_lab, 1), "speedup": round(t_plain / t_lab, 2),
            "max_relative_difference": round(rel_err, 5), "gflops_per_image": round(flops / 1e9, 2)}


def resnet50_gflops(size: int) -> float:
    """GFLOPs of one ResNet-50 forward at `size` px (to scale a published ResNet-50 throughput to ResNet-101)."""
    enc = encoders.build_encoder("resnet50", pretrained=False, grid_size=7, progress=False).eval()
    with torch.inference_mode():
        return count_flops(lambda: enc(torch.randn(1, 3, size, size))) / 1e9


def make_images(folder: Path, n: int, size: int) -> Path:
    """n synthetic scenes rendered at `size` px (as MS-COCO images are once resized), in COCO layout."""
    return synthetic.generate(folder, n_images=n, image_size=size, progress=False)


def bench_decode_jpeg(cfg, dataset_dir: Path, workers: int) -> dict:
    """JPEG read + encoder transform through a DataLoader with `workers` processes: images/s, no model."""
    encoder = encoders.build_encoder(cfg.encoder, pretrained=False, grid_size=cfg.grid_size, progress=False)
    file_names = data.file_names_from_captions(dataset_dir / "annotations" / "captions.json")
    source = data.ImageFolderSource(dataset_dir / "images", file_names, encoder.eval_transform(cfg.encoder_input_size))
    ids = sorted(file_names)

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(ids)

        def __getitem__(self, i):
            return source(ids[i])

    loader = torch.utils.data.DataLoader(Images(), batch_size=64, num_workers=workers)
    next(iter(loader))  # start-up of the workers is not part of the rate
    start = time.perf_counter()
    n = sum(len(b) for b in loader)
    return {"workers": workers, "images": n, "images_per_s": round(n / (time.perf_counter() - start), 1)}


def bench_feature_cache(cfg, dataset_dir: Path, build_dir: Path) -> dict:
    """`features.build_feature_cache` end to end on the rendered JPEGs: images/s and cache bytes per image."""
    encoder = encoders.build_encoder(cfg.encoder, pretrained=False, grid_size=cfg.grid_size, progress=False)
    file_names = data.file_names_from_captions(dataset_dir / "annotations" / "captions.json")
    paths = {i: dataset_dir / "images" / name for i, name in file_names.items()}
    run_cfg = cfg.replace(build_dir=build_dir)
    start = time.perf_counter()
    cache = features.build_feature_cache(run_cfg, encoder, sorted(paths), images=paths, progress=False)
    seconds = time.perf_counter() - start
    return {"images": len(cache), "seconds": round(seconds, 2), "images_per_s": round(len(cache) / seconds, 1),
            "num_workers": cfg.num_workers, "cache_bytes_per_image": int(cache.nbytes / len(cache))}


def random_captions(n_images: int, vocab: Vocabulary, seed: int) -> dict[int, list[str]]:
    """Five random captions per image with MS-COCO-like lengths, over the benchmark's vocabulary."""
    gen = torch.Generator().manual_seed(seed)
    words = vocab.itos[4:]
    out = {}
    for image_id in range(n_images):
        caps = []
        for _ in range(5):
            length = int(torch.randint(CAPTION_TOKENS[0] - 2, CAPTION_TOKENS[1] - 1, (1,), generator=gen))
            caps.append(" ".join(words[int(j)] for j in torch.randint(len(words), (length,), generator=gen)))
        out[image_id] = caps
    return out


def bench_train(cfg, device: torch.device, n_images: int) -> dict:
    """One training epoch: the lab's `train.train` vs a plain fp32 loop; captions/s and the FLOPs per caption."""
    vocab = Vocabulary([f"w{i}" for i in range(VOCAB_SIZE - 4)])
    captions = random_captions(n_images, vocab, cfg.seed)
    feats = torch.randn(n_images, cfg.grid_size ** 2, 2048, generator=torch.Generator().manual_seed(cfg.seed))
    feats = feats.half()  # what the feature cache stores
    source = lambda image_id: feats[image_id].float()  # noqa: E731
    ids = list(range(n_images))
    dataset = data.CaptionDataset(ids, captions, vocab, source, mode="sample", max_len=cfg.max_caption_len,
                                  seed=cfg.seed)
    val = data.EvalDataset(ids[:8], captions, source)
    run_cfg = cfg.replace(device=str(device), num_workers=0)
    loaders = {"train": data.make_loader(dataset, run_cfg, train=True),
               "val": data.make_loader(val, run_cfg, train=False)}
    torch.manual_seed(cfg.seed)
    initial = build_decoder("attention", len(vocab), 2048, cfg).state_dict()

    def lab_epoch() -> float:
        decoder = build_decoder("attention", len(vocab), 2048, cfg)
        decoder.load_state_dict(initial)
        result = train.train(run_cfg.replace(epochs=1, time_budget_s=None, lr_schedule="none"), decoder, loaders,
                             vocab, patience=None, progress=False)
        return float(result.history["seconds"].iloc[0])

    def plain_epoch() -> float:
        decoder = build_decoder("attention", len(vocab), 2048, cfg).to(device).train()
        decoder.load_state_dict(initial)
        optimizer = torch.optim.Adam(decoder.parameters(), lr=cfg.decoder_lr)
        loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True,
                                             collate_fn=data.collate_captions,
                                             generator=torch.Generator().manual_seed(cfg.seed))
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for batch in loader:
            out = decoder(batch.inputs.to(device), batch.captions.to(device), batch.lengths)
            targets = batch.captions[:, 1:].to(device)
            loss = F.cross_entropy(out.logits.reshape(-1, out.logits.size(-1)), targets.reshape(-1),
                                   ignore_index=vocab.pad_id)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(decoder.parameters(), cfg.grad_clip)
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    plain_s, lab_s = plain_epoch(), lab_epoch()

    batch = data.collate_captions([dataset[i] for i in range(cfg.batch_size)])
    decoder = build_decoder("attention", len(vocab), 2048, cfg).train()

    def step():
        out = decoder(batch.inputs, batch.captions, batch.lengths)
        F.cross_entropy(out.logits.reshape(-1, out.logits.size(-1)), batch.captions[:, 1:].reshape(-1),
                        ignore_index=vocab.pad_id).backward()

    flops = count_flops(step)
    tokens = float((batch.lengths - 1).sum())
    return {"decoder": "attention (Show-Attend-Tell + the lab's additions)", "vocab": len(vocab),
            "positions": cfg.grid_size ** 2, "feature_dim": 2048, "widths": [cfg.embed_dim, cfg.hidden_dim,
                                                                              cfg.attention_dim],
            "batch": cfg.batch_size, "captions": n_images, "amp": device.type == "cuda" and cfg.mixed_precision,
            "plain_captions_per_s": round(n_images / plain_s, 1),
            "lab_captions_per_s_incl_validation": round(n_images / lab_s, 1),
            "speedup": round(plain_s / lab_s, 2),
            "gflops_per_caption_fwd_bwd": round(flops / cfg.batch_size / 1e9, 3),
            "mean_predicted_tokens_per_caption": round(tokens / cfg.batch_size, 2)}


# NVIDIA's published PyTorch ResNet-50 v1.5 inference rate on a T4 with mixed precision at batch 128: 1,190 img/s
# (DeepLearningExamples, PyTorch/Classification/ConvNets/resnet50v1.5/README.md, pytorch-21.03 NGC container).
T4_RESNET50_AMP_IMAGES_PER_S = 1190
# Assumption, not a measurement: the decoder's small sequential GEMMs reach a third of the convolutions' rate.
T4_DECODER_EFFICIENCY = 1 / 3
SUBSETS = (5_000, 20_000, 123_287)


def time_budget(results: dict) -> dict:
    """Minutes per subset for the feature cache and one training epoch: measured here, estimated for a T4."""
    enc, train_r, jpeg = results["encode"], results["train"], results["decode_jpeg"]
    t4_flops = T4_RESNET50_AMP_IMAGES_PER_S * results["resnet50_gflops_per_image"]  # effective GFLOP/s
    t4_encode = t4_flops / enc["gflops_per_image"]
    t4_cache = min(t4_encode, jpeg["images_per_s"])  # Colab has 2 vCPUs, like this machine, for JPEG decoding
    t4_train = t4_flops * T4_DECODER_EFFICIENCY / train_r["gflops_per_caption_fwd_bwd"]
    here_cache = results["feature_cache"]["images_per_s"]
    here_train = train_r["lab_captions_per_s_incl_validation"]
    rows = []
    for n in SUBSETS:
        # Karpathy: 5k val + 5k test; a subset (mscoco.subset_split) gives a tenth each to val and test.
        n_train = n - 10_000 if n == SUBSETS[-1] else n - 2 * (n // 10)
        rows.append({"images": n, "train_captions_per_epoch": n_train,
                     "feature_cache_min_here": round(n / here_cache / 60, 1),
                     "epoch_min_here": round(n_train / here_train / 60, 1),
                     "feature_cache_min_t4_estimate": round(n / t4_cache / 60, 1),
                     "epoch_min_t4_estimate": round(n_train / t4_train / 60, 2),
                     "cache_gb": round(n * results["feature_cache"]["cache_bytes_per_image"] / 1e9, 1)})
    return {"t4_encode_images_per_s_estimate": round(t4_encode), "t4_cache_images_per_s_estimate": round(t4_cache),
            "t4_train_captions_per_s_estimate": round(t4_train), "rows": rows,
            "how": "T4 encode = 1,190 img/s (NVIDIA, ResNet-50, AMP, batch 128) x ResNet-50 GFLOPs / ResNet-101 "
                   "GFLOPs; the cache rate is the lower of that and the 2-worker JPEG rate measured here; T4 "
                   "training = the same effective GFLOP/s x 1/3 (assumed) / GFLOPs per caption. One caption per "
                   "image per epoch (caption_mode='sample')."}


def main() -> None:
    """Parse arguments, run the measurements, write the results JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--images", type=int, default=None, help="JPEGs for decode/cache (default 96 CPU, 2048 CUDA)")
    parser.add_argument("--captions", type=int, default=None,
                        help="captions in the training epoch (default 1024 CPU, 16384 CUDA)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    if on_gpu:
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest convolutions
    cfg = get_config("coco", device=str(device), mixed_precision=on_gpu)
    n_images = args.images or (2048 if on_gpu else 96)
    n_captions = args.captions or (16384 if on_gpu else 1024)
    results = {"benchmark": "coco_profile_throughput", "date": dt.date.today().isoformat(), "device": str(device),
               "machine": machine_info()}
    results["encode"] = bench_encode(cfg, device, batch=128 if on_gpu else 16, repeat=5 if on_gpu else 2)
    print(json.dumps(results["encode"]), flush=True)
    results["resnet50_gflops_per_image"] = round(resnet50_gflops(cfg.encoder_input_size), 2)
    with tempfile.TemporaryDirectory(prefix="bench-coco-") as tmp:
        dataset_dir = make_images(Path(tmp) / "coco_like", n_images, cfg.image_size)
        results["decode_jpeg"] = bench_decode_jpeg(cfg, dataset_dir, workers=cfg.num_workers)
        print(json.dumps(results["decode_jpeg"]), flush=True)
        results["feature_cache"] = bench_feature_cache(cfg, dataset_dir, Path(tmp) / "build")
        print(json.dumps(results["feature_cache"]), flush=True)
    results["train"] = bench_train(cfg, device, n_captions)
    print(json.dumps(results["train"]), flush=True)
    results["time_budget"] = time_budget(results)
    print(json.dumps(results["time_budget"], indent=1), flush=True)
    out = args.out or RESULTS / f"coco_profile_throughput_{'cuda' if on_gpu else 'cpu'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
