"""Reference outputs for nbval, kept beside the notebooks so the notebooks themselves stay output-free.

nbval only compares a `# NBVAL_CHECK_OUTPUT` cell when the committed cell has been run (it has an
execution_count and stored outputs); a clean, output-free notebook would therefore be checked for errors only.
We keep the expected outputs of the marked cells in `notebooks/reference_outputs/<notebook>.json` (cell id ->
outputs) and attach them when nbval reads a notebook (see the repository's `conftest.py`). Learners get clean
notebooks; maintainers review expected outputs as small JSON diffs and refresh them with
`python -m labutils refs` after an intended change.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..config import find_lab_root

MARKER = "# NBVAL_CHECK_OUTPUT"
REFERENCE_DIR = "reference_outputs"
_KEEP_KEYS = {"output_type", "name", "text", "data"}


def is_marked(cell) -> bool:
    """True for a code cell whose output nbval must compare."""
    return cell.get("cell_type") == "code" and any(
        line.strip() == MARKER for line in cell.get("source", "").splitlines())


def reference_path(notebook_path: str | Path) -> Path:
    """Where a notebook's reference outputs live."""
    notebook_path = Path(notebook_path)
    return notebook_path.parent / REFERENCE_DIR / f"{notebook_path.stem}.json"


def _clean(outputs: list) -> list:
    """Keep what nbval compares (text, HTML, errors); drop images, widget ids, metadata and execution counts."""
    cleaned = []
    for out in outputs:
        item = {k: v for k, v in dict(out).items() if k in _KEEP_KEYS}
        if "data" in item:
            item["data"] = {k: v for k, v in item["data"].items()
                            if not k.startswith("image/") and "widget" not in k}
            item["metadata"] = {}
            if item["output_type"] == "execute_result":
                item["execution_count"] = 1
        cleaned.append(item)
    return cleaned


def attach_references(nb, notebook_path: str | Path):
    """Put the stored reference outputs into the marked cells of an in-memory notebook (for nbval)."""
    import nbformat

    path = reference_path(notebook_path)
    refs = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    for cell in nb.cells:
        if is_marked(cell) and cell.get("id") in refs:
            cell.outputs = [nbformat.from_dict(o) for o in refs[cell["id"]]]
            cell.execution_count = 1
    return nb


def missing_references(notebook_path: str | Path) -> list[str]:
    """Ids of marked cells that have no stored reference (they would silently go unchecked)."""
    import nbformat

    nb = nbformat.read(str(notebook_path), as_version=4)
    path = reference_path(notebook_path)
    refs = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    return [cell.get("id", "?") for cell in nb.cells if is_marked(cell) and cell.get("id") not in refs]


def record_references(notebook_path: str | Path, timeout: int = 1800) -> Path:
    """Execute a notebook and store the outputs of its marked cells as its references."""
    import nbformat
    from nbclient import NotebookClient

    notebook_path = Path(notebook_path)
    nb = nbformat.read(str(notebook_path), as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(notebook_path.parent)}}).execute()
    refs = {cell["id"]: _clean(cell.outputs) for cell in nb.cells if is_marked(cell)}
    path = reference_path(notebook_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(refs, indent=1, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    """`python -m labutils refs [NOTEBOOK...]`: re-record reference outputs (all numbered notebooks by default)."""
    import argparse
    import os


    parser = argparse.ArgumentParser(prog="python -m labutils refs",
                                     description="Execute notebooks and re-record the reference outputs of their "
                                                 "# NBVAL_CHECK_OUTPUT cells (all numbered notebooks by default).")
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks to record (default: all of notebooks/)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("LAB_PROFILE", "quick")
    folder = find_lab_root() / "notebooks"
    paths = args.notebooks or sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    missing = [p for p in paths if not p.is_file()]
    if missing:
        parser.error(f"no notebook at {missing[0]}; give paths such as notebooks/07_training.ipynb")
    for path in paths:
        out = record_references(path)
        print(f"{path.name}: {out}")
    return 0
