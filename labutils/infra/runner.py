"""`python -m labutils run`: execute the lab's notebooks in order and print a one-screen summary."""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import find_lab_root, get_config
from . import summary


@dataclass
class NotebookRun:
    """Outcome of executing one notebook."""

    name: str
    seconds: float
    ok: bool
    error: str = ""


def lab_notebooks(folder: Path) -> list[Path]:
    """The numbered notebooks (`NN_name.ipynb`) of the lab, in teaching order."""
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))


def _first_line_of_error(exc: Exception) -> str:
    """The learner-facing part of a notebook error: the exception line, not the whole traceback."""
    text = str(exc)
    lines = [line for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line or "Exception" in line:
            return line.strip()[:300]
    return (lines[-1] if lines else repr(exc))[:300]


def execute_notebook(path: Path, out_dir: Path, timeout: int = 1800) -> NotebookRun:
    """Execute one notebook with its folder as working directory and write the executed copy to `out_dir`."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    os.environ["LAB_NOTEBOOK"] = path.stem
    start = time.perf_counter()
    try:
        client.execute()
        ok, error = True, ""
    except Exception as exc:  # noqa: BLE001 - any cell failure is reported, then the run stops
        ok, error = False, _first_line_of_error(exc)
    seconds = time.perf_counter() - start
    out_dir.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, out_dir / path.name)
    return NotebookRun(path.stem, seconds, ok, error)


def format_summary(runs: list[NotebookRun], records: list[dict], profile: str, total: float) -> str:
    """The one-screen summary: each notebook's status and time, then the key numbers the notebooks reported."""
    lines = [f"Lab run on the {profile!r} profile — {sum(r.ok for r in runs)}/{len(runs)} notebooks ran "
             f"in {total / 60:.1f} min", ""]
    lines.append(f"  {'notebook':<24}{'status':<8}{'time':>8}")
    for run in runs:
        status = "ok" if run.ok else "FAILED"
        lines.append(f"  {run.name:<24}{status:<8}{run.seconds:>7.1f}s")
        if run.error:
            lines.append(f"      ↳ {run.error}")
    if records:
        lines += ["", "  key numbers"]
        for rec in records:
            value = rec["value"]
            shown = f"{value:.4g}" if isinstance(value, float) else str(value)
            lines.append(f"  {rec['notebook']:<24}{rec['key']:<28}{shown}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: run the notebooks (all, or those whose number or name is given)."""
    parser = argparse.ArgumentParser(prog="python -m labutils run", description=__doc__)
    parser.add_argument("notebooks", nargs="*", help="numbers or names to run (default: all, in order)")
    parser.add_argument("--profile", default=None, help="quick, flickr8k or coco (default: $LAB_PROFILE, else flickr8k on a GPU, quick otherwise)")
    parser.add_argument("--out", default=None, help="folder for executed copies (default: build/notebooks)")
    parser.add_argument("--keep-going", action="store_true", help="run later notebooks after a failure")
    args = parser.parse_args(argv)

    root = find_lab_root()
    try:
        cfg = get_config(args.profile)
    except ValueError as err:  # an unknown or renamed profile: its one sentence, not a traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    os.environ["LAB_PROFILE"] = cfg.profile
    os.environ.setdefault("TQDM_MININTERVAL", "5")
    out_dir = Path(args.out) if args.out else cfg.build_dir / "notebooks"
    notebooks = lab_notebooks(root / "notebooks")
    if args.notebooks:
        wanted = tuple(args.notebooks)
        notebooks = [p for p in notebooks if p.stem.startswith(wanted) or p.stem in wanted]
    if not notebooks:
        print(f"No notebooks matched {args.notebooks or ''} under {root / 'notebooks'}; "
              "pass numbers such as 00 01, or nothing to run all.", file=sys.stderr)
        return 2

    summary_file = out_dir / "summary.jsonl"
    summary_file.parent.mkdir(parents=True, exist_ok=True)
    summary_file.unlink(missing_ok=True)
    os.environ[summary.SUMMARY_ENV] = str(summary_file)

    start = time.perf_counter()
    runs: list[NotebookRun] = []
    for path in notebooks:
        print(f"▶ {path.name} …", flush=True)
        run = execute_notebook(path, out_dir)
        runs.append(run)
        print(f"  {'done' if run.ok else 'FAILED'} in {run.seconds:.1f}s", flush=True)
        if not run.ok and not args.keep_going:
            break
    text = format_summary(runs, summary.read(summary_file), cfg.profile, time.perf_counter() - start)
    (out_dir / "summary.txt").write_text(text + "\n", encoding="utf-8")
    print("\n" + text)
    print(f"\nExecuted notebooks: {out_dir}")
    return 0 if all(r.ok for r in runs) and len(runs) == len(notebooks) else 1
