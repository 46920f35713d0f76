"""Quick-profile training gives the same model on a quiet and on a loaded machine (issue 11, item 5).

Runs notebook 07's training call (`course.train_quick_captioner(cfg, kind)` with the quick profile's settings) in a
fresh interpreter twice per decoder: once as the machine is, once with busy-loop processes competing for the CPU.
It records each run's time, epochs, why it stopped, the validation and test BLEU-4 and a hash of the weights, and
whether the two runs agree bit for bit. The time is the machine's; everything else must not depend on it.

    .venv/bin/python benchmarks/bench_quick_training.py [--kinds attention show_and_tell] [--burners 2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _child(kind: str, build_dir: str) -> None:
    """One training, as notebook 07 runs it; prints one JSON line."""
    from labutils import course, get_config

    cfg = get_config("quick", build_dir=Path(build_dir))
    started = time.perf_counter()
    decoder, _vocab, result, _path = course.train_quick_captioner(cfg, kind, progress=False)
    weights = hashlib.sha256()
    for name, tensor in decoder.state_dict().items():
        weights.update(name.encode())
        weights.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    print(json.dumps({
        "kind": kind, "seconds_total": round(time.perf_counter() - started, 1),
        "seconds_training": round(result.seconds, 1), "fastest_epoch_s": round(result.history["seconds"].min(), 2),
        "epochs": len(result.history), "stopped": result.stopped,
        "best_epoch": result.best_epoch, "best_val_bleu4": result.best_metric, "test_bleu4": result.test_metric,
        "val_bleu4_per_epoch": [round(v, 6) for v in result.history["val_bleu4"]],
        "weights_sha256": weights.hexdigest(), "torch_threads_while_training": cfg.cpu_threads}))


def _run(kind: str, build_dir: Path, burners: int) -> dict:
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(burners)]
    try:
        # PASSIVE as the Makefile and conftest.py set it: spinning OpenMP threads on a busy machine slow an epoch
        # down many times over.
        env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "LAB_PROFILE": "quick", "TQDM_DISABLE": "1"}
        done = subprocess.run([sys.executable, __file__, "--child", kind, str(build_dir)], capture_output=True,
                              text=True, env=env, check=True)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    record = json.loads(done.stdout.strip().splitlines()[-1])
    record["busy_loop_processes"] = burners
    return record


def _build_dir(tag: str) -> Path:
    """A scratch build folder that reuses the lab's feature cache (read only) instead of computing it again."""
    from labutils import get_config

    folder = ROOT / "build" / "bench_quick_training" / tag
    folder.mkdir(parents=True, exist_ok=True)
    features = folder / "features"
    lab_features = get_config("quick").build_dir / "features"
    if not features.exists() and lab_features.is_dir():
        features.symlink_to(lab_features, target_is_directory=True)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="+", default=["attention", "show_and_tell"])
    parser.add_argument("--burners", type=int, default=2, help="busy-loop processes during the loaded run")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "quick_training.json"))
    args = parser.parse_args()

    from machine import machine_info

    from labutils import get_config
    from labutils.infra.files import atomic_write_json

    cfg = get_config("quick")
    results = {"what": __doc__.splitlines()[0], "machine": machine_info(),
               "settings": {"epochs": cfg.epochs, "time_budget_s": cfg.time_budget_s, "cpu_threads": cfg.cpu_threads},
               "runs": {}}
    for kind in args.kinds:
        quiet = _run(kind, _build_dir(f"{kind}-quiet"), 0)
        print(json.dumps(quiet), flush=True)
        loaded = _run(kind, _build_dir(f"{kind}-loaded"), args.burners)
        print(json.dumps(loaded), flush=True)
        same = {key: quiet[key] == loaded[key] for key in
                ("epochs", "stopped", "best_epoch", "best_val_bleu4", "test_bleu4", "val_bleu4_per_epoch",
                 "weights_sha256")}
        results["runs"][kind] = {"as_is": quiet, "loaded": loaded, "identical": same,
                                 "slowdown_when_loaded": round(loaded["seconds_training"] /
                                                               quiet["seconds_training"], 2)}
    results["machine_after"] = machine_info()["load_average_1_5_15min"]
    atomic_write_json(Path(args.out), results, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3])
    else:
        main()
