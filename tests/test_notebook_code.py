"""What the learner reads is what runs: the `#@save` cells of notebooks 06, 07 and 08 are the library's own code."""

import json
import shutil
import sys
from pathlib import Path

import pytest

from labutils.infra import notebook_code

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"

SHOWN = {
    "06_decoder.ipynb": {"labutils.decoders.ShowAndTell.forward", "labutils.decoders.ShowAttendTell.attention_weights",
                         "labutils.decoders.ShowAttendTell.attend", "labutils.decoders.ShowAttendTell.output_logits",
                         "labutils.decoders.ShowAttendTell.step"},
    "07_training.ipynb": {"labutils.train.train_one_epoch", "labutils.train.validate"},
    "08_evaluation.ipynb": {"labutils.decode.greedy_one_image", "labutils.decode.expand_beams",
                            "labutils.decode.beam_search_one_image"},
    "10_beyond.ipynb": {"labutils.decoders.MultiHeadAttention.attend"},
}


@pytest.mark.parametrize("name", sorted(SHOWN))
def test_notebook_shows_the_core_and_it_is_the_library_code(name):
    assert notebook_code.saved_names(NOTEBOOKS / name) == SHOWN[name]
    assert notebook_code.drift(NOTEBOOKS / name) == []


def test_each_shown_piece_is_plugged_in_by_its_own_cell():
    # 06's cells assign every shown method onto its class, so the rest of the notebook runs the learner's edit.
    for target, source in notebook_code.saved_cells(NOTEBOOKS / "06_decoder.ipynb"):
        cls = target.rsplit(".", 1)[1]
        for function in notebook_code.cell_functions(source):
            assert f"decoders.{cls}.{function} = {function}" in source
    # 07's cell replaces the module's functions, which train.train looks up at every epoch (test_train.py).
    for _target, source in notebook_code.saved_cells(NOTEBOOKS / "07_training.ipynb"):
        for function in notebook_code.cell_functions(source):
            assert f"\ntrain.{function} = {function}\n" in source + "\n"


def test_the_training_epoch_fits_on_one_screen():
    # Issue 11: the loop a learner reads is one function of about a screen, not the whole orchestration.
    (_target, source), = notebook_code.saved_cells(NOTEBOOKS / "07_training.ipynb")
    epoch = notebook_code.cell_functions(source)["train_one_epoch"]
    assert len(epoch.splitlines()) <= 40
    for step in ("optimizer.zero_grad", "amp.backward(total)", "clip_grad_norm_", "amp.step(optimizer)",
                 "validate(", "step_scheduler("):
        assert step in epoch


def edit_cell(notebook: Path, old: str, new: str) -> None:
    nb = json.loads(notebook.read_text())
    hits = 0
    for cell in nb["cells"]:
        text = "".join(cell["source"])
        if old in text and text.startswith(notebook_code.MARKER):
            cell["source"] = text.replace(old, new)
            hits += 1
    assert hits == 1
    notebook.write_text(json.dumps(nb))


def test_an_edit_in_the_notebook_is_caught(tmp_path):
    copy = tmp_path / "06_decoder.ipynb"
    shutil.copy(NOTEBOOKS / "06_decoder.ipynb", copy)
    edit_cell(copy, "return torch.softmax(scores, dim=1)", "return torch.softmax(scores, dim=0)")
    assert notebook_code.drift(copy) == [
        "labutils.decoders.ShowAttendTell.attention_weights differs between the notebook and the library; copy one "
        "onto the other."]


def test_a_comment_edit_and_a_renamed_function_are_caught_too(tmp_path):
    copy = tmp_path / "08_evaluation.ipynb"
    shutil.copy(NOTEBOOKS / "08_evaluation.ipynb", copy)
    edit_cell(copy, "# the most likely next word", "# the likeliest next word")
    edit_cell(copy, "def beam_search_one_image(", "def beam_search_for_one(")
    problems = notebook_code.drift(copy)
    assert len(problems) == 2
    assert "labutils.decode.greedy_one_image differs" in problems[0]
    assert "has no function beam_search_for_one" in problems[1]


def test_an_edit_in_the_library_is_caught(tmp_path, monkeypatch):
    # A changed copy of the library module, and a copy of the notebook pointing at it.
    library = (ROOT / "labutils" / "decode.py").read_text()
    changed = library.replace("token = int(words_only(logits, vocab)[0].argmax())", "token = int(words_only(logits, vocab)[0].argmax(dim=0))")
    assert changed != library
    (tmp_path / "decode_edited.py").write_text(changed)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "decode_edited", raising=False)
    copy = tmp_path / "08_evaluation.ipynb"
    shutil.copy(NOTEBOOKS / "08_evaluation.ipynb", copy)
    edit_cell(copy, "#@save labutils.decode\n", "#@save decode_edited\n")
    assert notebook_code.drift(copy) == [
        "decode_edited.greedy_one_image differs between the notebook and the library; copy one onto the other."]
    # Unchanged library text in the same place passes, so the failure above is the edit, not the move.
    (tmp_path / "decode_edited.py").write_text(library)
    monkeypatch.delitem(sys.modules, "decode_edited")
    assert notebook_code.drift(copy) == []
