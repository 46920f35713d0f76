"""The `run` command: executes notebooks in order, records key numbers, prints a summary, stops on failure."""

import json

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

from labutils.infra import runner, summary


def _write(path, *sources):
    nb = new_notebook(cells=[new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_runs_in_order_records_numbers_and_stops_at_a_failure(tmp_path, monkeypatch, capsys):
    (tmp_path / "labutils").mkdir()
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    _write(nbs / "00_first.ipynb", "from labutils import summary\nsummary.record('answer', 42)")
    _write(nbs / "01_broken.ipynb", "raise ValueError('the dataset folder is missing; run notebook 00 first.')")
    _write(nbs / "02_never.ipynb", "print('unreachable')")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    code = runner.main(["--profile", "quick", "--out", str(out)])
    assert code == 1
    text = capsys.readouterr().out
    assert "00_first" in text and "ok" in text and "FAILED" in text and "02_never" not in text.split("key numbers")[0]
    assert "the dataset folder is missing" in text
    assert "answer" in text and "42" in text
    assert (out / "00_first.ipynb").exists() and (out / "01_broken.ipynb").exists()
    assert not (out / "02_never.ipynb").exists()
    assert [r["key"] for r in summary.read(out / "summary.jsonl")] == ["answer"]


def test_summary_record_is_a_no_op_outside_the_runner(tmp_path, monkeypatch):
    monkeypatch.delenv(summary.SUMMARY_ENV, raising=False)
    summary.record("x", 1)
    monkeypatch.setenv(summary.SUMMARY_ENV, str(tmp_path / "s.jsonl"))
    monkeypatch.setenv("LAB_NOTEBOOK", "07_training")
    summary.record("bleu4", 0.9)
    assert json.loads((tmp_path / "s.jsonl").read_text()) == {"notebook": "07_training", "key": "bleu4", "value": 0.9}


def test_unknown_notebook_selection_is_a_clear_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "labutils").mkdir()
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path)
    assert runner.main(["99", "--out", str(tmp_path / "o")]) == 2
    assert "No notebooks matched" in capsys.readouterr().err


def test_a_former_profile_name_is_one_sentence_and_runs_nothing(tmp_path, capsys):
    """`run --profile full` (renamed `coco`) exits 2 with the new name instead of a traceback or a run."""
    assert runner.main(["--profile", "full", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: The profile 'full' is now called 'coco'") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
