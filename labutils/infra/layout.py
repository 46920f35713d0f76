"""The package's floors and its import graph, read from the source: `python -m labutils layout` prints one line
per module, and tests/test_layout.py holds the rules (imports point down, at the top of a module, no cycle).

Floors, bottom to top: 0 `config`; 1 `infra` (plumbing); 2 the lessons; 3 the course (`course`, `exercises`,
`solutions`); 4 the commands (`cli`, `__main__`).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]
LESSONS = {"coco": "01", "augment": "02", "vocab": "03", "data": "04", "encoders": "05", "features": "05",
           "decoders": "06", "checkpoint": "07", "train": "07", "decode": "08", "metrics": "08", "evaluation": "08",
           "grounding": "09", "viz": "09",
           "scst": "10", "applications": "11"}  # module -> the notebook whose idea it holds
COURSE = ("course", "exercises", "solutions")
FLOOR_NAMES = ("config", "infra", "lessons", "course", "commands")


def module_name(path: Path) -> str:
    parts = ("labutils", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def floor(module: str) -> int:
    """0 config, 1 infra, 2 lessons, 3 course, 4 commands (and the package's own __init__ and __main__)."""
    top = module.removeprefix("labutils").lstrip(".").split(".")[0]
    if top == "config":
        return 0
    if top == "infra":
        return 1
    if top in LESSONS:
        return 2
    if top in COURSE:
        return 3
    if top in {"cli", "__main__", ""}:
        return 4
    raise ValueError(f"{module} is on no floor; add it to labutils.infra.layout (LESSONS or COURSE)")


def _targets(importer: str, node: ast.Import | ast.ImportFrom, is_package: bool) -> list[str]:
    """The labutils modules an import statement names (`from . import x` names the submodule x)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "labutils"]
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    target = node.module or "" if not node.level else ".".join(
        base[: len(base) - (node.level - 1)] + ([node.module] if node.module else []))
    if target.split(".")[0] != "labutils":
        return []
    names = []
    for alias in node.names:
        sub = PACKAGE.parent.joinpath(*f"{target}.{alias.name}".split("."))
        names.append(f"{target}.{alias.name}" if sub.with_suffix(".py").is_file() or sub.is_dir() else target)
    return names


def import_graph() -> dict[str, list[tuple[str, bool]]]:
    """module -> [(labutils module it imports, True when the import sits inside a function or class)]."""
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        nested = {id(n) for scope in ast.walk(tree) if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                           ast.ClassDef))
                  for n in ast.walk(scope) if isinstance(n, (ast.Import, ast.ImportFrom))}
        graph[module] = [(target, id(node) in nested) for node in ast.walk(tree)
                         if isinstance(node, (ast.Import, ast.ImportFrom))
                         for target in _targets(module, node, path.name == "__init__.py") if target != module]
    return graph


def listing() -> str:
    """One line per module, floor by floor: path, line count, notebook, and the first line of its docstring."""
    rows = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        lines = len(path.read_text().splitlines())
        notebook = LESSONS.get(module.split(".")[-1], "") if floor(module) == 2 else ""
        rows.append((floor(module), path.relative_to(PACKAGE.parent).as_posix(), lines, notebook,
                     doc.split("\n")[0]))
    out = []
    for number, name in enumerate(FLOOR_NAMES):
        out.append(f"floor {number}: {name}")
        out += [f"  {p:<32} {n:>5} lines  {nb and 'nb ' + nb:<6} {doc}" for f, p, n, nb, doc in sorted(rows) if f == number]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    print(listing())
    return 0
