"""Key numbers a notebook reports for the `run` command's one-screen summary (a no-op outside that runner)."""

from __future__ import annotations

import json
import os
from pathlib import Path

SUMMARY_ENV = "LAB_SUMMARY_FILE"


def record(key: str, value) -> None:
    """Append `key = value` to the run summary when the lab runner is executing this notebook."""
    target = os.environ.get(SUMMARY_ENV)
    if not target:
        return
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    notebook = os.environ.get("LAB_NOTEBOOK", "")
    with path.open("a", encoding="utf-8") as out:
        out.write(json.dumps({"notebook": notebook, "key": key, "value": value}) + "\n")


def read(path: str | Path) -> list[dict]:
    """All records written so far to a summary file."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
