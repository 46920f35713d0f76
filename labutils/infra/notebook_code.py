"""Code that a notebook shows AND the library runs, kept identical (d2l's `#@save` discipline).

A code cell whose first line is `#@save <target>` holds definitions copied from the library: `<target>` is a
module (`labutils.decode`: the cell's functions are that module's functions) or a class
(`labutils.decoders.ShowAttendTell`: the cell's functions are its methods). Every top-level `def` of such a
cell must be, character for character, the library's source of the object of the same name (the library's
method indentation removed). `drift` lists every difference, so a test fails as soon as one side changes.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import textwrap
from pathlib import Path

MARKER = "#@save"


def saved_cells(notebook_path: str | Path) -> list[tuple[str, str]]:
    """(target, cell source) of every `#@save` code cell of a notebook, in order."""
    cells = json.loads(Path(notebook_path).read_text(encoding="utf-8"))["cells"]
    found = []
    for cell in cells:
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        first = source.split("\n", 1)[0].split()
        if cell["cell_type"] == "code" and first[:1] == [MARKER]:
            found.append((" ".join(first[1:]), source))
    return found


def cell_functions(source: str) -> dict[str, str]:
    """Name -> source text of every top-level function a cell defines (whole lines: a last line's comment too)."""
    lines = source.splitlines()
    return {node.name: "\n".join(lines[node.lineno - 1:node.end_lineno])
            for node in ast.parse(source).body if isinstance(node, ast.FunctionDef)}


def resolve(target: str):
    """The module or class that `target` ("package.module" or "package.module.Class") names."""
    module_name, _, attribute = target.rpartition(".")
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError:
        return getattr(importlib.import_module(module_name), attribute)


def library_source(owner, name: str) -> str | None:
    """The library's source of `owner.name` without its indentation, or None if there is no such function."""
    function = inspect.getattr_static(owner, name, None)
    if not inspect.isfunction(function):
        return None
    return textwrap.dedent(inspect.getsource(function)).rstrip("\n")


def drift(notebook_path: str | Path) -> list[str]:
    """One sentence for every `#@save` definition of the notebook that differs from the library's."""
    problems = []
    for target, source in saved_cells(notebook_path):
        owner, functions = resolve(target), cell_functions(source)
        if not functions:
            problems.append(f"The `#@save {target}` cell defines no function; mark only cells that copy library code.")
        for name, shown in functions.items():
            kept = library_source(owner, name)
            if kept is None:
                problems.append(f"{target} has no function {name}, which the notebook's `#@save` cell defines.")
            elif shown != kept:
                problems.append(f"{target}.{name} differs between the notebook and the library; copy one onto the "
                                "other.")
    return problems


def saved_names(notebook_path: str | Path) -> set[str]:
    """`target.function` of every definition the notebook's `#@save` cells hold."""
    return {f"{target}.{name}" for target, source in saved_cells(notebook_path) for name in cell_functions(source)}
