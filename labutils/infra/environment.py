"""Notebook 00's checks: what this machine has (Python, torch, GPU, Java, disk) and whether the lab can run on it."""

from __future__ import annotations

import functools
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Check:
    """One line of the setup report: what was checked, whether it passed, and what to do if not."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


@functools.cache  # the CPU does not change while the process runs: read its flags once
def native_bfloat16() -> bool:
    """True when this CPU multiplies bfloat16 in hardware (x86 AVX512-BF16 or AMX, read from /proc/cpuinfo).

    There, autocast to bfloat16 speeds up a feature-cache build and a decoder's training step (by how much:
    benchmarks/results/cpu_bfloat16.json); elsewhere it is emulated and slower than float32, so it is not used.
    """
    import torch

    if not torch.backends.mkldnn.is_available():
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    return any(f" {flag}" in flags for flag in ("avx512_bf16", "amx_bf16"))


def autocast_dtype(device_type: str, mixed_precision: bool, *, decoder_only: bool):
    """The dtype autocast computes in, or None (float32), when `mixed_precision` is asked for.

    * A CPU: bfloat16 where it computes it in hardware, else None. bfloat16 keeps float32's exponent range, so
      unlike float16 it needs no gradient scaling.
    * CUDA: float16 (with loss scaling when training, `train.MixedPrecision`) for work that runs the image encoder
      (the feature cache, fine-tuning); None for a decoder trained alone on cached features (`decoder_only`). On a
      lent H200, float16 training lowered both decoders' flickr8k test scores and took longer than float32
      (benchmarks/results/beyond.json: run h200-fp16 against h200-lstm-fp32 and h200-tfm-fp32): the decoders are
      small, so a step waits on kernel launches, not on arithmetic, and float16 only adds casts and rounding.
    """
    import torch

    if not mixed_precision:
        return None
    if device_type == "cuda":
        return None if decoder_only else torch.float16
    return torch.bfloat16 if device_type == "cpu" and native_bfloat16() else None


def java_version() -> str | None:
    """The installed Java's version line, or None (pycocoevalcap's tokenizer and METEOR need Java)."""
    if shutil.which("java") is None:
        return None
    try:
        out = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stderr or out.stdout).strip().splitlines()
    return text[0] if text else None


def setup_checks(cfg) -> list[Check]:
    """Check everything the lab relies on and say, for each missing piece, how to fix it."""
    import torch

    checks = [Check("python", True, platform.python_version())]
    checks.append(Check("torch", True, torch.__version__))
    try:
        import torchvision

        checks.append(Check("torchvision", True, torchvision.__version__))
    except ImportError as exc:  # a torch/torchvision mismatch shows up here
        checks.append(Check("torchvision", False, str(exc).splitlines()[0],
                            "install the torchvision that matches your torch (see README)"))
    cuda = torch.cuda.is_available()
    gpu = torch.cuda.get_device_name(0) if cuda else "none"
    checks.append(Check("gpu", cuda or cfg.profile == "quick", gpu,
                        "" if cuda else "on Colab choose Runtime > Change runtime type > GPU; the quick profile runs on CPU"))
    java = java_version()
    checks.append(Check("java", java is not None, java or "missing",
                        "" if java else "install a JRE (apt-get install default-jre-headless) for the COCO metrics"))
    data_root = Path(cfg.data_root)
    data_root.mkdir(parents=True, exist_ok=True)
    free_gb = shutil.disk_usage(data_root).free / 1e9
    need_gb = 0.1 if cfg.profile == "quick" else 30.0
    checks.append(Check("disk", free_gb >= need_gb, f"{free_gb:.0f} GB free under {data_root}",
                        "" if free_gb >= need_gb else f"free at least {need_gb:.0f} GB or set LAB_DATA_DIR"))
    return checks


def report(checks: list[Check]) -> str:
    """Format the checks as a short table; failed checks carry their fix."""
    lines = []
    for check in checks:
        mark = "ok " if check.ok else "!! "
        line = f"{mark}{check.name:<12}{check.detail}"
        if not check.ok and check.fix:
            line += f"  -> {check.fix}"
        lines.append(line)
    return "\n".join(lines)
