"""nbval reference outputs: every checked cell has one, and they attach to the output-free notebooks."""

import json

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from labutils.config import find_lab_root
from labutils.infra import notebook_refs

NOTEBOOKS = sorted((find_lab_root() / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_checked_cell_has_a_reference_and_notebooks_carry_no_outputs(path):
    assert notebook_refs.missing_references(path) == [], (
        f"{path.name}: run `python -m labutils refs notebooks/{path.name}` to record the expected outputs")
    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has stored outputs"


def test_record_then_attach_round_trip(tmp_path):
    nb = new_notebook(cells=[new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(6 * 7)"), new_code_cell("print('free')")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "05_demo.ipynb"
    nbformat.write(nb, path)
    refs_file = notebook_refs.record_references(path)
    refs = json.loads(refs_file.read_text())
    marked_id = nb.cells[0]["id"]
    assert list(refs) == [marked_id]
    assert refs[marked_id][0]["text"] == "42\n"
    attached = notebook_refs.attach_references(nbformat.read(str(path), as_version=4), path)
    assert attached.cells[0].execution_count == 1 and attached.cells[0].outputs[0]["text"] == "42\n"
    assert attached.cells[1].outputs == []
    assert notebook_refs.missing_references(path) == []


def test_refs_command_refuses_a_missing_notebook_with_one_sentence(capsys):
    from labutils.infra.notebook_refs import main

    with pytest.raises(SystemExit) as stop:
        main(["notebooks/no_such.ipynb"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no notebook at notebooks/no_such.ipynb" in err and "Traceback" not in err
