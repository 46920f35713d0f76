"""Training a captioner: teacher forcing, validation WITHOUT teacher forcing, early stopping, exact resume.

One epoch of the seed tutorials' classic recipe is `train_one_epoch` (notebook 07 shows it); `train` runs it epoch
after epoch, with resuming, checkpoints, early stopping, the time limit and mixed precision in named helpers
beside it. Together:

* teacher forcing: the decoder reads the ground-truth previous word and is scored with cross-entropy on the next
  one (`<pad>` ignored), plus the doubly stochastic attention penalty for attention decoders;
* optional scheduled sampling (Bengio et al. 2015): with a probability that grows over the epochs, the decoder
  reads its own previous prediction instead, so training looks more like generation;
* Adam (separate learning rates for the decoder and a fine-tuned encoder), gradient clipping, an LR schedule;
* every epoch the model captions the validation images on its own (greedy decoding, no teacher forcing) and is
  scored with BLEU-4; that number drives the LR schedule, early stopping and the best checkpoint;
* a fixed number of epochs (never the clock: a busy machine gets the same model, only later), a time limit that is
  only a safety and says so when it cuts a run short, mixed precision on CUDA, a seed and a fixed CPU thread count
  that make a CPU run repeat exactly however busy the machine is and however many cores it has, and a checkpoint
  from which an interrupted run continues exactly as if it had never stopped.
"""

from __future__ import annotations

import functools
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from . import decode, metrics
from .decoders import (
    DecoderOutput,
    canonical_kind,
    doubly_stochastic_penalty,
    from_spec,
    valid_step_mask,
)
from .infra.environment import autocast_dtype

METRIC = "bleu4"
# The settings `train` takes from its config (recorded in a checkpoint's "settings" under these names) ...
CFG_SETTINGS = ("epochs", "decoder_lr", "encoder_lr", "lr_schedule", "time_budget_s", "max_len")
# ... and those a resumed run keeps from the run it continues (the safety limit and lengths are the config's).
RESUMED_CFG_SETTINGS = ("epochs", "decoder_lr", "encoder_lr", "lr_schedule")


# ---------------------------------------------------------------------------------------------------------------
# Reproducibility
# ---------------------------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (CPU and CUDA) so that a CPU run repeats exactly."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


@contextmanager
def cpu_threads(count: int | None) -> Iterator[None]:
    """Run torch's CPU work on `count` threads inside the block, then restore the count (None: leave it alone).

    A sum split over two threads is rounded differently from one split over eight, so the same seed trains other
    weights on a machine with more cores; a fixed count gives the same model whatever the number of cores.
    """
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(int(count))
    try:
        yield
    finally:
        if count:
            torch.set_num_threads(before)


def on_cfg_threads(fn: Callable) -> Callable:
    """Decorator: run `fn(cfg, ...)` on `cfg.cpu_threads` CPU threads."""
    @functools.wraps(fn)
    def wrapper(cfg, *args, **kwargs):
        with cpu_threads(getattr(cfg, "cpu_threads", None)):
            return fn(cfg, *args, **kwargs)
    return wrapper


# ---------------------------------------------------------------------------------------------------------------
# Small pieces: accuracy, schedules, greedy captions, BLEU-4
# ---------------------------------------------------------------------------------------------------------------
def topk_correct(logits: Tensor, targets: Tensor, k: int = 5, ignore_index: int = 0) -> tuple[int, int]:
    """(number of non-pad targets among the top-k logits, number of non-pad targets)."""
    valid = targets != ignore_index
    topk = logits.topk(min(k, logits.size(-1)), dim=-1).indices
    hit = (topk == targets.unsqueeze(-1)).any(dim=-1) & valid
    return int(hit.sum()), int(valid.sum())


def topk_accuracy(logits: Tensor, targets: Tensor, k: int = 5, ignore_index: int = 0) -> float:
    """Share of non-pad target words that are among the model's k highest-scoring words."""
    hit, total = topk_correct(logits, targets, k, ignore_index)
    return hit / max(total, 1)


def sampling_probability(epoch: int, max_prob: float = 0.25, ramp_epochs: int = 8,
                         schedule: str = "linear") -> float:
    """Scheduled sampling: probability of feeding the model's own previous word at (0-based) `epoch`.

    Bengio et al. (2015) decay the probability eps_i of using the ground truth; we return 1 - eps_i, capped at
    `max_prob`. `linear` ramps from 0 to `max_prob` over `ramp_epochs`; `inverse_sigmoid` follows the paper's
    eps_i = k / (k + exp(i / k)) with k = ramp_epochs / 4.
    """
    if max_prob <= 0:
        return 0.0
    if schedule == "linear":
        return max_prob * min(1.0, epoch / max(ramp_epochs, 1))
    if schedule == "inverse_sigmoid":
        k = max(ramp_epochs / 4, 1e-6)
        eps = k / (k + math.exp(min(epoch / k, 50.0)))
        return max_prob * (1.0 - eps)
    raise ValueError(f"Unknown scheduled-sampling schedule {schedule!r}; use 'linear' or 'inverse_sigmoid'.")


def forward_scheduled_sampling(decoder: nn.Module, features: Tensor, captions: Tensor, lengths: Tensor,
                                prob: float) -> DecoderOutput:
    """Like `decoder(features, captions, lengths)`, but each next input is the model's own argmax with `prob`."""
    state = decoder.init_state(features)
    tokens = captions[:, 0]
    logits, alphas = [], []
    for t in range(captions.size(1) - 1):
        step_logits, state, alpha = decoder.step(tokens, state)
        logits.append(step_logits)
        alphas.append(alpha)
        if t + 2 < captions.size(1):
            own = step_logits.detach().argmax(dim=-1)
            use_own = torch.rand(tokens.size(0), device=tokens.device) < prob
            tokens = torch.where(use_own, own, captions[:, t + 1])
    logits = torch.stack(logits, dim=1)
    if alphas[0] is None:
        return DecoderOutput(logits, None)
    mask = valid_step_mask(lengths.to(captions.device), logits.size(1)).unsqueeze(2)
    return DecoderOutput(logits, torch.stack(alphas, dim=1) * mask)


def batch_features(inputs: Tensor, encoder: nn.Module | None, device, non_blocking: bool,
                    grad: bool = False) -> Tensor:
    inputs = inputs.to(device, non_blocking=non_blocking)
    if encoder is None:
        return inputs.float()
    with nullcontext() if grad else torch.no_grad():
        grid, _pooled = encoder(inputs)
    return grid


@torch.no_grad()
def caption_loader(decoder: nn.Module, loader, vocab, device="cpu", max_len: int = 24,
                   encoder: nn.Module | None = None, progress: bool = False,
                   desc: str = "caption") -> tuple[dict[int, str], dict[int, list[str]]]:
    """Greedy captions for every image of an evaluation loader: (predictions, references) keyed by image id."""
    was_training = decoder.training
    decoder.eval()
    if encoder is not None:
        encoder.eval()
    predictions, references = {}, {}
    non_blocking = str(device).startswith("cuda")
    for inputs, refs, image_ids in tqdm(loader, desc=desc, leave=False, disable=not progress):
        features = batch_features(inputs, encoder, device, non_blocking)  # [B, P, C]
        captions = decode.greedy(decoder, features, vocab, max_len)
        for image_id, caption, ref in zip(image_ids, captions, refs, strict=True):
            predictions[int(image_id)] = caption.text
            references[int(image_id)] = list(ref)
    decoder.train(was_training)
    return predictions, references


# ---------------------------------------------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """What `train` returns: the per-epoch history, the best validation BLEU-4 and why training stopped."""

    history: object  # pandas DataFrame: epoch, train_loss, top5, val_bleu4, lr, seconds, ...
    best_epoch: int
    best_metric: float
    stopped: str  # "epochs", "early_stopping" or "time_budget" (the safety time limit cut it short)
    seconds: float  # wall-clock of all epochs, training and validation (resumed runs include the earlier part)
    checkpoint_path: Path | None = None
    metric: str = METRIC
    test_metric: float | None = None  # filled in by train_quick_captioner (BLEU-4 on the test split)
    test_samples: dict = field(default_factory=dict)  # a few test predictions, image id -> caption

    def __repr__(self) -> str:
        test = "" if self.test_metric is None else f", test {self.metric}={self.test_metric:.3f}"
        return (f"TrainResult({len(self.history)} epochs in {self.seconds:.0f} s, best val {self.metric}="
                f"{self.best_metric:.3f} at epoch {self.best_epoch}{test}, stopped: {self.stopped})")


class TrainingInterrupted(Exception):
    """Raise this from a callback to stop training after the epoch's checkpoint is written (used by the tests)."""


def _loader_generators(loaders: Mapping) -> dict[str, torch.Generator]:
    return {name: loader.generator for name, loader in loaders.items()
            if getattr(loader, "generator", None) is not None}


def _make_optimizer(decoder: nn.Module, encoder: nn.Module | None, decoder_lr: float, encoder_lr: float):
    groups = [{"params": [p for p in decoder.parameters() if p.requires_grad], "lr": decoder_lr}]
    encoder_params = [p for p in encoder.parameters() if p.requires_grad] if encoder is not None else []
    if encoder_params:  # only a fine-tuned encoder gets a (smaller) learning rate of its own
        groups.append({"params": encoder_params, "lr": encoder_lr})
    return torch.optim.Adam(groups)


def _make_scheduler(optimizer, scheduler: str | None, lr_factor: float, lr_patience: int, step_size: int,
                    epochs: int):
    if scheduler in (None, "none"):
        return None
    if scheduler == "cosine":  # from the full rate down to ~0 at the last epoch
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    if scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=lr_factor,
                                                          patience=lr_patience)
    if scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=lr_factor)
    raise ValueError(f"Unknown scheduler {scheduler!r}; use 'plateau', 'step', 'cosine' or None.")


def _state_copy(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def decoder_spec(decoder: nn.Module) -> dict:
    """The constructor arguments of a decoder (stored in checkpoints so `load_trained` can rebuild it)."""
    if isinstance(decoder, nn.Module) and type(decoder).__name__ == "ShowAndTell":
        return {"kind": "show_and_tell", "vocab_size": decoder.vocab_size, "feature_dim": decoder.feature_dim,
                "embed_dim": decoder.embedding.embedding_dim, "hidden_dim": decoder.rnn.hidden_size,
                "num_layers": decoder.rnn.num_layers, "rnn": decoder.rnn_type, "dropout": decoder.dropout.p,
                "feature_norm": decoder.feature_norm is not None}
    if isinstance(decoder, nn.Module) and type(decoder).__name__ == "ShowAttendTell":
        return {"kind": "attention", "vocab_size": decoder.vocab_size, "feature_dim": decoder.feature_dim,
                "embed_dim": decoder.embedding.embedding_dim, "hidden_dim": decoder.hidden_dim,
                "attention_dim": decoder.encoder_att.out_features, "dropout": decoder.dropout.p,
                "deep_output": decoder.deep_output, "num_positions": decoder.num_positions,
                "feature_norm": decoder.feature_norm is not None, "adapter_dim": decoder.adapter_dim}
    if isinstance(decoder, nn.Module) and type(decoder).__name__ == "CaptionTransformer":
        return {"kind": "transformer", "vocab_size": decoder.vocab_size, "feature_dim": decoder.feature_dim,
                "dim": decoder.dim, "num_layers": decoder.num_layers, "num_heads": decoder.num_heads,
                "ffn_dim": decoder.ffn_dim, "dropout": decoder.dropout_p, "max_len": decoder.max_len,
                "num_positions": decoder.num_positions, "feature_norm": decoder.feature_norm is not None}
    return {"kind": type(decoder).__name__}


def _stop_reason(epoch: int, epochs: int, bad_epochs: int, patience: int | None, budget: float | None,
                 elapsed_s: float, last_epoch_s: float) -> str | None:
    """Why training ends after `epoch`, or None to go on. The safety time limit stops before an epoch that,
    judging by the last one, would end past it."""
    if patience is not None and bad_epochs >= patience:
        return "early_stopping"
    if epoch >= epochs:
        return "epochs"
    if budget is not None and elapsed_s + last_epoch_s > budget:
        return "time_budget"
    return None


def _say_cut_short(epochs_done: int, epochs: int, budget: float) -> None:
    print(f"Training stopped after {epochs_done} of {epochs} epochs because the {budget:g} s safety limit "
          "(time_budget_s) was reached; results will differ from the reference.")


def fine_tunes(encoder: nn.Module | None) -> bool:
    """True when an encoder is given and some of its weights train along with the decoder."""
    return encoder is not None and any(p.requires_grad for p in encoder.parameters())


class MixedPrecision:
    """Autocast in `dtype` (None: plain float32), with a GradScaler for float16.

    float16 (CUDA) has a narrow range: the scaler multiplies the loss before `backward` so that small gradients do
    not round to zero, and divides them back before the optimizer step (which it skips when a gradient overflowed).
    bfloat16 (a CPU that computes it in hardware) has float32's range and needs no scaler.
    """

    def __init__(self, dtype: torch.dtype | None, device_type: str):
        self.dtype, self.device_type, self.enabled = dtype, device_type, dtype is not None
        self.scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16 and device_type == "cuda")

    @classmethod
    def for_config(cls, cfg, device_type: str, decoder_only: bool = True) -> MixedPrecision:
        """The profile's precision on `device_type` (cfg.mixed_precision, `environment.autocast_dtype`)."""
        return cls(autocast_dtype(device_type, bool(cfg.mixed_precision), decoder_only=decoder_only), device_type)

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype or torch.float32, enabled=self.enabled)

    def backward(self, loss: Tensor) -> None:
        self.scaler.scale(loss).backward()

    def unscale_(self, optimizer) -> None:
        self.scaler.unscale_(optimizer)

    def step(self, optimizer) -> None:
        self.scaler.step(optimizer)
        self.scaler.update()


def step_scheduler(lr_scheduler, val_metric: float) -> None:
    """Advance the learning-rate schedule by one epoch; a plateau schedule watches the validation metric."""
    if isinstance(lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        lr_scheduler.step(val_metric)
    elif lr_scheduler is not None:
        lr_scheduler.step()


def validate(decoder, loader, vocab, device, max_len: int, encoder=None) -> float:
    """Validation BLEU-4 WITHOUT teacher forcing: the decoder captions every image greedily from its own words."""
    predictions, references = caption_loader(decoder, loader, vocab, device, max_len, encoder)
    return metrics.bleu4(predictions, references, exact=False)  # the Python tokenizer: no Java start every epoch


def train_one_epoch(decoder, loaders, vocab, optimizer, lr_scheduler, amp, cfg, *, encoder=None,
                    ss_prob: float = 0.0, max_len: int = 24, progress: bool = False) -> dict:
    """One epoch: a teacher-forced step on every training batch, then the validation BLEU-4 without teacher
    forcing, which also drives the learning-rate schedule. Returns the epoch's numbers."""
    device, fine_tune = torch.device(cfg.device), fine_tunes(encoder)
    decoder.train()
    if encoder is not None:
        encoder.train(fine_tune)  # a frozen encoder stays in eval mode
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    loss_sum, tokens, hits = 0.0, 0, 0
    for inputs, captions, lengths, *_ in tqdm(loaders["train"], desc="batches", leave=False, disable=not progress):
        captions = captions.to(device, non_blocking=device.type == "cuda")  # [B, T]: <start> w1 ... <end> <pad>
        with amp.autocast():
            features = batch_features(inputs, encoder, device, device.type == "cuda", grad=fine_tune)  # [B, P, C]
            out = (forward_scheduled_sampling(decoder, features, captions, lengths, ss_prob) if ss_prob > 0
                   else decoder(features, captions, lengths))  # logits [B, T-1, V], alphas [B, T-1, P] or None
            targets = captions[:, 1:]  # [B, T-1]: step t is scored on the word that follows word t
            loss = F.cross_entropy(out.logits.reshape(-1, out.logits.size(-1)).float(), targets.reshape(-1),
                                   ignore_index=vocab.pad_id)  # <pad> targets count for nothing
            total = loss
            if out.alphas is not None and cfg.alpha_c > 0:
                total = loss + doubly_stochastic_penalty(out.alphas.float(), lengths, cfg.alpha_c)
        optimizer.zero_grad(set_to_none=True)
        amp.backward(total)  # total.backward(), scaled under mixed precision
        if cfg.grad_clip:
            amp.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
        amp.step(optimizer)  # optimizer.step()
        hit, n = topk_correct(out.logits.detach(), targets, 5, vocab.pad_id)
        loss_sum, tokens, hits = loss_sum + float(loss.detach()) * n, tokens + n, hits + hit
    val_bleu4 = validate(decoder, loaders["val"], vocab, device, max_len, encoder)
    lr = optimizer.param_groups[0]["lr"]  # the rate this epoch trained with
    step_scheduler(lr_scheduler, val_bleu4)
    return {"train_loss": loss_sum / max(tokens, 1), "top5": hits / max(tokens, 1), "val_bleu4": val_bleu4, "lr": lr}


@dataclass
class _Run:
    """The state of a training run that outlives an epoch: history, best epoch and weights, early-stopping count."""

    history: list = field(default_factory=list)
    start_epoch: int = 1
    best_metric: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    elapsed_before: float = 0.0
    best_state: dict | None = None
    best_encoder_state: dict | None = None

    def record(self, row: dict, decoder: nn.Module, fine_tuned: nn.Module | None) -> bool:
        """Add an epoch's row; keep the weights if its validation metric is the best so far (True then)."""
        self.history.append(row)
        if not row[f"val_{METRIC}"] > self.best_metric:
            self.bad_epochs += 1
            return False
        self.best_metric, self.best_epoch, self.bad_epochs = row[f"val_{METRIC}"], row["epoch"], 0
        self.best_state = _state_copy(decoder)
        if fine_tuned is not None:
            self.best_encoder_state = _state_copy(fine_tuned)
        return True


def _fresh_run(cfg, generators: Mapping[str, torch.Generator]) -> _Run:
    seed_everything(cfg.seed)
    for generator in generators.values():  # a loader used before must not shift this run's shuffle order
        generator.manual_seed(int(cfg.seed))
    return _Run()


def _resumed_run(resume_from, decoder, encoder, fine_tune: bool, optimizer, lr_scheduler, amp: MixedPrecision,
                 generators: Mapping[str, torch.Generator]) -> _Run:
    """Put the weights, optimizer, schedule, scaler, loader order and RNGs back as a checkpoint saved them."""
    saved = ckpt.load_checkpoint(resume_from)
    resume = saved.get("resume")
    if resume is None:
        raise ckpt.CheckpointError(f"{resume_from} holds weights only (no training state); start a new run "
                                   "or resume from a checkpoint written by train().")
    decoder.load_state_dict(resume.get("model_state", saved["model_state"]))
    run = _Run(history=list(saved.get("history", [])), start_epoch=int(saved["epoch"]) + 1,
               best_metric=float(saved["best_metric"]), best_epoch=int(saved["best_epoch"]),
               bad_epochs=int(resume["bad_epochs"]), elapsed_before=float(resume["elapsed_s"]),
               best_state=saved["model_state"])
    if fine_tune:
        encoder.load_state_dict(resume.get("encoder_state", saved.get("encoder_state")))
        run.best_encoder_state = saved.get("encoder_state")
    optimizer.load_state_dict(resume["optimizer"])
    if lr_scheduler is not None and resume.get("scheduler") is not None:
        lr_scheduler.load_state_dict(resume["scheduler"])
    if amp.scaler.is_enabled() and resume.get("scaler"):
        amp.scaler.load_state_dict(resume["scaler"])
    for name, state in resume.get("loader_generators", {}).items():
        if name in generators:
            generators[name].set_state(state)
    ckpt.set_rng_state(resume["rng"])
    return run


def _save_epoch(path, run: _Run, cfg, vocab, decoder, encoder, fine_tune: bool, optimizer, lr_scheduler,
                amp: MixedPrecision, generators, settings: dict, improved: bool, stop: str | None,
                elapsed_s: float) -> None:
    """The checkpoint after an epoch: the best weights, and everything needed to resume from this epoch."""
    resume = {"optimizer": optimizer.state_dict(),
              "scheduler": lr_scheduler.state_dict() if lr_scheduler is not None else None,
              "scaler": amp.scaler.state_dict() if amp.scaler.is_enabled() else {},
              "rng": ckpt.rng_state(),
              "loader_generators": {name: g.get_state() for name, g in generators.items()},
              "bad_epochs": run.bad_epochs, "elapsed_s": elapsed_s}
    if not improved:  # the file's model_state is the best epoch's; keep the latest weights to resume
        resume["model_state"] = _state_copy(decoder)
        if fine_tune:
            resume["encoder_state"] = _state_copy(encoder)
    extra = {"encoder_state": run.best_encoder_state} if fine_tune else {}
    ckpt.save_checkpoint(path, run.best_state, vocab, cfg.to_dict(), decoder=decoder_spec(decoder),
                         epoch=run.history[-1]["epoch"], best_epoch=run.best_epoch, best_metric=run.best_metric,
                         metric=METRIC, history=run.history, resume=resume, settings=settings,
                         finished=stop is not None, stopped=stop, **extra)


def _set_epoch(loader, epoch: int) -> None:
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)  # fresh caption picks, reproducible from (seed, epoch)


@on_cfg_threads
def train(cfg, decoder: nn.Module, loaders: Mapping, vocab, *, encoder: nn.Module | None = None,
          patience: int | None | str = "auto", lr_factor: float = 0.5,
          lr_patience: int = 1, step_size: int = 5, scheduled_sampling: float = 0.0, ss_ramp_epochs: int = 8,
          ss_schedule: str = "linear", checkpoint_path: str | Path | None = None,
          resume_from: str | Path | None = None, callbacks: Iterable[Callable] = (), restore_best: bool = True,
          progress: bool = True) -> TrainResult:
    """Train `decoder` on `loaders["train"]` (CaptionBatch), validating on `loaders["val"]` (EvalBatch) each epoch.

    `cfg` is the one place of the settings it has (epochs, decoder_lr, encoder_lr, lr_schedule, grad_clip, alpha_c,
    time_budget_s, max_caption_len as the validation captions' length, device, mixed_precision, seed,
    cpu_threads): change one with `cfg.replace(epochs=3)`. `patience`: epochs without a better validation
    BLEU-4 before stopping early (None: never; "auto": 4, but never under a cosine schedule, whose learning rate
    is planned to reach ~0 at the last epoch: stopping on a noisy dip would cut the run before its best epochs). `scheduled_sampling`: the largest probability of feeding the model's own word (0 = pure
    teacher forcing). `time_budget_s` is a safety limit, not part of the recipe: checked between epochs, it stops
    training before an epoch that, judging by the last one, would end past it, and prints one sentence saying
    that the run was cut short. `checkpoint_path`: written after every epoch (best weights, the state
    to resume and these settings; `finished` is True only in the file of the run's last epoch, and `stopped`
    says why it ended); `resume_from`: such a file, to continue where it stopped. `callbacks` are called as
    `fn(epoch, row)` after each epoch's checkpoint; raise `TrainingInterrupted` there to stop. With
    `restore_best`, the decoder ends with the weights of its best validation epoch. Each epoch is
    `train_one_epoch`; this function adds resuming, checkpoints, early stopping and the safety time limit.
    """
    import pandas as pd

    if "train" not in loaders or "val" not in loaders:
        raise ValueError("train() needs loaders={'train': caption loader, 'val': evaluation loader}.")
    epochs, decoder_lr, encoder_lr = int(cfg.epochs), float(cfg.decoder_lr), float(cfg.encoder_lr)
    scheduler = cfg.lr_schedule
    if patience == "auto":
        patience = None if scheduler == "cosine" else 4
    budget, max_len = cfg.time_budget_s, int(cfg.max_caption_len)
    settings = {"epochs": epochs, "decoder_lr": decoder_lr, "encoder_lr": encoder_lr, "patience": patience,
                "lr_schedule": scheduler, "lr_factor": lr_factor, "lr_patience": lr_patience, "step_size": step_size,
                "scheduled_sampling": scheduled_sampling, "ss_ramp_epochs": ss_ramp_epochs,
                "ss_schedule": ss_schedule, "time_budget_s": budget, "max_len": max_len, "restore_best": restore_best}
    device = torch.device(cfg.device)
    decoder.to(device)
    if encoder is not None:
        encoder.to(device)
    fine_tune = fine_tunes(encoder)
    optimizer = _make_optimizer(decoder, encoder, decoder_lr, encoder_lr)
    lr_scheduler = _make_scheduler(optimizer, scheduler, lr_factor, lr_patience, step_size, epochs)
    amp = MixedPrecision.for_config(cfg, device.type, decoder_only=not fine_tune)
    generators = _loader_generators(loaders)
    run = (_fresh_run(cfg, generators) if resume_from is None else
           _resumed_run(resume_from, decoder, encoder, fine_tune, optimizer, lr_scheduler, amp, generators))

    started = time.perf_counter() - run.elapsed_before
    stopped = "epochs"
    epoch_bar = tqdm(range(run.start_epoch, epochs + 1), desc="epochs", disable=not progress,
                     initial=run.start_epoch - 1, total=epochs)
    for epoch in epoch_bar:
        epoch_started = time.perf_counter()
        _set_epoch(loaders["train"], epoch)
        ss_prob = sampling_probability(epoch - 1, scheduled_sampling, ss_ramp_epochs, ss_schedule)
        numbers = train_one_epoch(decoder, loaders, vocab, optimizer, lr_scheduler, amp, cfg, encoder=encoder,
                                  ss_prob=ss_prob, max_len=max_len, progress=progress)
        row = {"epoch": epoch, **numbers, "ss_prob": ss_prob, "seconds": time.perf_counter() - epoch_started}
        improved = run.record(row, decoder, encoder if fine_tune else None)
        epoch_bar.set_postfix(loss=f"{row['train_loss']:.3f}", val_bleu4=f"{row['val_bleu4']:.3f}")
        # Decided before the save, so that only the file of the last epoch says the run finished.
        stop = _stop_reason(epoch, epochs, run.bad_epochs, patience, budget, time.perf_counter() - started,
                            row["seconds"])
        if checkpoint_path is not None:
            _save_epoch(checkpoint_path, run, cfg, vocab, decoder, encoder, fine_tune, optimizer, lr_scheduler,
                        amp, generators, settings, improved, stop, time.perf_counter() - started)
        for callback in callbacks:
            callback(epoch, row)
        if stop is not None:
            stopped = stop
            break
    epoch_bar.close()
    if stopped == "time_budget":
        _say_cut_short(len(run.history), epochs, budget)

    if restore_best and run.best_state is not None:
        decoder.load_state_dict(run.best_state)
        if fine_tune and run.best_encoder_state is not None:
            encoder.load_state_dict(run.best_encoder_state)
    return TrainResult(history=pd.DataFrame(run.history), best_epoch=run.best_epoch, best_metric=run.best_metric,
                       stopped=stopped, seconds=time.perf_counter() - started,
                       checkpoint_path=Path(checkpoint_path) if checkpoint_path is not None else None)


def result_of_checkpoint(saved: Mapping) -> TrainResult:
    """The `TrainResult` a checkpoint records (history, best and test BLEU-4, why its run stopped)."""
    import pandas as pd

    history = pd.DataFrame(saved.get("history", []))
    seconds = float(history["seconds"].sum()) if "seconds" in history else 0.0
    return TrainResult(history=history, best_epoch=int(saved.get("best_epoch", 0)),
                       best_metric=float(saved.get("best_metric", math.nan)), stopped=str(saved.get("stopped")),
                       seconds=seconds, test_metric=saved.get("test_metric"))


def assert_learned(result: TrainResult | Mapping, min_bleu4: float) -> None:
    """d2l-style check: raise AssertionError with advice unless BLEU-4 (test if measured, else best val) >= min.

    `result` is what training returned, or a checkpoint (notebooks 08 and 09 check the model they load).
    """
    if isinstance(result, Mapping):
        result = result_of_checkpoint(result)
    split, value = ("test", result.test_metric) if result.test_metric is not None else ("validation",
                                                                                         result.best_metric)
    if value is None or not value >= min_bleu4:
        advice = ("The safety time limit cut training short: raise time_budget_s (or set it to None) and train "
                  "again." if result.stopped == "time_budget" else
                  "Train longer (more epochs), check the learning rate, or look for a bug in the data pipeline.")
        raise AssertionError(
            f"The captioner did not learn enough: {split} BLEU-4 = {value:.3f} < {min_bleu4:.2f} after "
            f"{len(result.history)} epochs ({result.seconds:.0f} s, stopped: {result.stopped}). {advice}")
    print(f"Learned: {split} BLEU-4 = {value:.3f} >= {min_bleu4:.2f}.")


def plot_history(history, metric: str = f"val_{METRIC}", figsize=(9, 3)):
    """Training loss, top-5 accuracy and the validation metric per epoch (two small panels)."""
    import matplotlib.pyplot as plt
    import pandas as pd

    if isinstance(history, TrainResult):
        history = history.history
    frame = history if isinstance(history, pd.DataFrame) else pd.DataFrame(history)
    fig, (left, right) = plt.subplots(1, 2, figsize=figsize)
    left.plot(frame["epoch"], frame["train_loss"], marker="o", label="train loss (teacher forcing)")
    left.set_xlabel("epoch")
    left.set_ylabel("cross-entropy")
    left.legend(loc="upper right", fontsize="small")
    right.plot(frame["epoch"], frame["top5"], marker="o", label="train top-5 accuracy")
    right.plot(frame["epoch"], frame[metric], marker="s", label=f"{metric} (greedy, no teacher forcing)")
    right.set_xlabel("epoch")
    right.set_ylim(0, 1.02)
    right.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return fig


def decoder_from_spec(decoder_spec: Mapping) -> nn.Module:
    """The decoder a checkpoint's spec describes, with fresh weights (`decoder_from_checkpoint` loads them)."""
    spec = dict(decoder_spec)
    if canonical_kind(spec["kind"]) == "attention":  # checkpoints from before the lab's additions: the plain model
        for key, plain in (("deep_output", False), ("num_positions", None), ("feature_norm", False),
                           ("adapter_dim", None)):
            spec.setdefault(key, plain)
    return from_spec(spec)


def decoder_from_checkpoint(checkpoint: Mapping) -> nn.Module:
    """Rebuild the decoder a checkpoint was trained with and load its (best) weights, in eval mode."""
    decoder = decoder_from_spec(checkpoint["decoder"])
    decoder.load_state_dict(checkpoint["model_state"])
    return decoder.eval()


# ---------------------------------------------------------------------------------------------------------------
# Notebook 07 exercise
# ---------------------------------------------------------------------------------------------------------------
__all__ = [
    "MixedPrecision", "TrainResult", "TrainingInterrupted", "assert_learned", "batch_features",
    "caption_loader", "cpu_threads", "decoder_from_checkpoint",
    "decoder_spec", "fine_tunes", "forward_scheduled_sampling",
    "plot_history", "result_of_checkpoint", "sampling_probability", "seed_everything",
    "step_scheduler", "topk_accuracy", "topk_correct", "train", "train_one_epoch",
    "validate",
]
