"""Where and under what load a benchmark's numbers were taken (shared by the benchmark scripts)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine_info() -> dict:
    """CPU, cores, torch threads, versions, GPU and load averages, for a results file."""
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average_1_5_15min": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None}


def record_run(out, record: dict, goal) -> None:
    """Append `record` to the results file `out` (a run with the same label is replaced) and write its goal."""
    import json

    out = Path(out)
    old = json.loads(out.read_text()) if out.is_file() else {"runs": []}
    old["runs"] = [r for r in old.get("runs", []) if r.get("label") != record["label"]] + [record]
    old["goal"] = goal
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(old, indent=1) + "\n")
