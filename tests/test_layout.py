"""The package's floors (labutils.infra.layout): config and infra at the bottom, the lessons above them, the
course (lab, exercises, solutions) above those and the commands on top. Imports point only downwards, never from
inside a function (which would hide a cycle), and the import graph has no cycle."""

from __future__ import annotations

import subprocess
import sys

import pytest

from labutils.infra.layout import PACKAGE, floor, import_graph

GRAPH = import_graph()


def test_every_module_sits_on_a_floor():
    assert len(GRAPH) > 30
    for module in GRAPH:
        floor(module)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down_and_sit_at_the_top_of_the_module(module):
    for target, inside in GRAPH[module]:
        if module == "labutils" and target.startswith("labutils."):
            continue  # the package's lazy __getattr__ reaches every module by name; its eager imports are floors 0-1
        assert not inside, f"{module} imports {target} inside a function; import it at the top of the module"
        assert floor(target) <= floor(module), (f"{module} (floor {floor(module)}) imports {target} "
                                                 f"(floor {floor(target)}): imports must point down")


def test_the_rules_catch_an_upward_and_a_hidden_import(tmp_path, monkeypatch):
    """The checks above would fail on the two mistakes they exist for."""
    from labutils.infra import layout

    fake = tmp_path / "labutils"
    (fake / "infra").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "infra" / "__init__.py").write_text("")
    (fake / "coco.py").write_text("def f():\n    from . import data\n")
    (fake / "data.py").write_text("")
    (fake / "infra" / "files.py").write_text("from .. import coco\n")
    monkeypatch.setattr(layout, "PACKAGE", fake)
    graph = layout.import_graph()
    assert graph["labutils.coco"] == [("labutils.data", True)]  # inside a function
    assert graph["labutils.infra.files"] == [("labutils.coco", False)]
    assert floor("labutils.coco") > floor("labutils.infra.files")  # an upward import


def test_the_import_graph_has_no_cycle():
    edges = {m: {t for t, _ in targets if t in GRAPH and t != "labutils"} for m, targets in GRAPH.items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])


def test_the_layout_command_lists_every_module_once():
    out = subprocess.run([sys.executable, "-m", "labutils", "layout"], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent).stdout
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("  ")]
    actual = sorted(p.relative_to(PACKAGE.parent).as_posix() for p in PACKAGE.rglob("*.py"))
    assert sorted(listed) == actual
