"""The notebooks' Colab badge and install cell: generated from one address, and the cell's behaviour without Colab.

The behaviour tests execute the install cell's exact text (what every notebook holds) with Colab faked by a
`google.colab` entry in sys.modules, `labutils` hidden from `importlib.util.find_spec`, and `subprocess.run`
replaced by a recorder, so no test installs anything or needs the network.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import subprocess
import sys
import types

import pytest

from labutils.cli.main import main as cli_main
from labutils.infra import colab

NOTEBOOKS = colab.numbered_notebooks()
# The cell reads a copy's pyproject.toml with tomllib only on Colab, whose Python is >= 3.11.
needs_tomllib = pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib (Python 3.11+, as on Colab)")


def _cells(path):
    notebook = json.loads(path.read_text(encoding="utf-8"))
    markdown = next(c for c in notebook["cells"] if c["cell_type"] == "markdown")
    code = next(c for c in notebook["cells"] if c["cell_type"] == "code")
    return notebook, markdown, code


def test_every_numbered_notebook_is_checked():
    assert [p.name[:2] for p in NOTEBOOKS] == [f"{i:02d}" for i in range(12)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_badge_and_install_cell_are_the_generated_ones(path):
    _, markdown, code = _cells(path)
    badges = [line for line in "".join(markdown["source"]).splitlines() if line.startswith(colab.BADGE_PREFIX)]
    assert badges == [colab.badge_line(path.name)], "run `python -m labutils notebook-header`"
    assert f"github/{colab.REPOSITORY_URL.removeprefix('https://github.com/')}/blob/" in badges[0]
    assert "".join(code["source"]) == colab.install_cell_source(), "run `python -m labutils notebook-header`"
    assert f'ensure_labutils("{colab.REPOSITORY_URL}")' in "".join(code["source"])
    assert code["outputs"] == [] and code["execution_count"] is None


def test_readme_shows_the_generated_cell_with_the_same_address():
    readme = (colab.ROOT / "README.md").read_text(encoding="utf-8")
    assert f"```python\n{colab.install_cell_source()}\n```" in readme
    assert set(re.findall(r"github\.com/[\w.-]+/[\w.-]+", readme)) <= {colab.REPOSITORY_URL.removeprefix("https://")}


def test_cli_check_passes_on_the_committed_files(capsys):
    assert cli_main(["notebook-header", "--check"]) == 0
    assert capsys.readouterr().out == ""


def test_generator_rewrites_only_the_badge_line_and_the_install_cell():
    notebook, _, _ = _cells(NOTEBOOKS[1])
    stale = copy.deepcopy(notebook)
    markdown = next(c for c in stale["cells"] if c["cell_type"] == "markdown")
    code = next(c for c in stale["cells"] if c["cell_type"] == "code")
    here = colab.REPOSITORY_URL.removeprefix("https://github.com/")
    markdown["source"] = [line.replace(here, "old/place") for line in markdown["source"]]
    code.update(source=["%pip install labutils"], outputs=[{"output_type": "stream", "text": "x"}], execution_count=3)
    fixed = colab.with_header(stale, NOTEBOOKS[1].name)
    assert fixed == notebook  # same ids, same other cells, empty outputs
    assert "old/place" not in json.dumps(fixed)


class Recorder:
    """Stands in for subprocess.run: records each command and answers with `returncode`."""

    def __init__(self, returncode):
        self.returncode, self.commands = returncode, []

    def __call__(self, command, *args, **kwargs):
        self.commands.append(command)
        return subprocess.CompletedProcess(command, self.returncode)


@pytest.fixture
def run_cell(monkeypatch, tmp_path):
    """Execute the install cell's text in a fresh namespace; returns the pip commands it ran."""

    def run(*, on_colab, importable=False, pip_returncode=0, cwd=None, repo_dir=None, cv2=True):
        real_find_spec = importlib.util.find_spec
        hidden = ({"labutils"} if not importable else set()) | ({"cv2"} if not cv2 else set())
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in hidden
                            else real_find_spec(name, *a))
        monkeypatch.setattr(sys, "path", list(sys.path))
        if on_colab:
            monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
        else:
            monkeypatch.delitem(sys.modules, "google.colab", raising=False)
        monkeypatch.setenv("LAB_REPO_DIR", str(repo_dir or tmp_path / "no-copy-here"))
        (cwd or tmp_path / "elsewhere").mkdir(parents=True, exist_ok=True)
        monkeypatch.chdir(cwd or tmp_path / "elsewhere")
        pip = Recorder(pip_returncode)
        monkeypatch.setattr(subprocess, "run", pip)
        exec(compile(colab.install_cell_source(), "<install cell>", "exec"), {})
        return pip.commands

    return run


def make_clone(folder, dependencies=("numpy", "pycocoevalcap")):
    (folder / "labutils").mkdir(parents=True)
    (folder / "notebooks").mkdir()
    (folder / "pyproject.toml").write_text(f"[project]\nname = 'labutils'\ndependencies = {list(dependencies)!r}\n")
    return folder


def _one_line(capsys):
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("on_colab", [False, True])
def test_already_importable_does_nothing_and_says_so(run_cell, capsys, on_colab):
    path = list(sys.path)
    assert run_cell(on_colab=on_colab, importable=True) == []
    assert "already importable" in _one_line(capsys)
    assert sys.path == path


def test_local_clone_outside_colab_goes_on_the_path_without_pip(run_cell, capsys, tmp_path):
    clone = make_clone(tmp_path / "captioning-lab")
    assert run_cell(on_colab=False, cwd=clone / "notebooks") == []
    assert sys.path[0] == str(clone)
    assert str(clone) in _one_line(capsys)


@needs_tomllib
def test_local_clone_on_colab_installs_only_its_dependencies(run_cell, capsys, tmp_path):
    clone = make_clone(tmp_path / "captioning-lab")
    [command] = run_cell(on_colab=True, cwd=clone / "notebooks")
    assert command[:5] == [sys.executable, "-m", "pip", "install", "-q"]
    assert command[5:] == ["numpy", "pycocoevalcap"]
    assert sys.path[0] == str(clone)


@needs_tomllib
def test_drive_copy_named_by_lab_repo_dir_is_used_like_a_clone(run_cell, capsys, tmp_path):
    drive_copy = make_clone(tmp_path / "drive" / "MyDrive" / "captioning-lab", dependencies=["nltk"])
    [command] = run_cell(on_colab=True, repo_dir=drive_copy)  # cwd is an unrelated folder, as /content on Colab
    assert command[5:] == ["nltk"]
    assert sys.path[0] == str(drive_copy)
    assert str(drive_copy) in _one_line(capsys)


@needs_tomllib
def test_the_labs_own_dependencies_clash_with_nothing_colab_preinstalls(run_cell, capsys):
    [command] = run_cell(on_colab=True, repo_dir=colab.ROOT)
    names = {re.split(r"[\s<>=!~;\[@]", requirement, maxsplit=1)[0].lower() for requirement in command[5:]}
    assert {"numpy", "pycocoevalcap"} <= names and not names & {"torch", "torchvision", "opencv-python", "opencv-python-headless",
                                  "opencv-contrib-python"}


def test_colab_without_a_copy_installs_from_the_repository(run_cell, capsys):
    [command] = run_cell(on_colab=True)
    assert command[5:] == [f"labutils @ git+{colab.REPOSITORY_URL}"]
    assert capsys.readouterr().out == ""


def _one_sentence(message):
    assert "\n" not in message and message.endswith(".") and ". " not in message, message
    return message


def test_failing_pip_stops_the_notebook_with_one_sentence(run_cell, capsys):
    with pytest.raises(SystemExit) as stopped:
        run_cell(on_colab=True, pip_returncode=1)
    message = _one_sentence(str(stopped.value))
    assert message.startswith("pip could not install labutils @ git+") and colab.REPOSITORY_URL in message
    assert "rerun this cell" in message


def test_outside_colab_without_a_clone_says_how_to_install(run_cell, capsys):
    with pytest.raises(SystemExit) as stopped:
        assert run_cell(on_colab=False) == []
    message = _one_sentence(str(stopped.value))
    assert "make setup" in message and "pip install -e ." in message


def test_missing_opencv_is_named_before_anything_is_installed(run_cell, capsys):
    with pytest.raises(SystemExit) as stopped:
        run_cell(on_colab=True, cv2=False)
    assert "opencv-python-headless" in _one_sentence(str(stopped.value))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_cell_is_followed_by_the_optional_drive_cell(path):
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    at = next(i for i, c in enumerate(cells) if "parameters" in c["metadata"].get("tags", []))
    assert "".join(cells[at]["source"]) == colab.PARAMETERS_CELL
    assert cells[at + 1]["id"] == colab.DRIVE_CELL_ID and "".join(cells[at + 1]["source"]) == colab.DRIVE_CELL
    namespace = {}
    exec(compile("".join(cells[at]["source"]) + "\n" + colab.DRIVE_CELL, "<cells>", "exec"), namespace)
    assert namespace["PROFILE"] is None and namespace["USE_DRIVE"] is False  # off unless the learner turns it on


def test_generator_inserts_the_drive_cell_once():
    notebook, _, _ = _cells(NOTEBOOKS[2])
    without = copy.deepcopy(notebook)
    without["cells"] = [c for c in without["cells"] if c.get("id") != colab.DRIVE_CELL_ID]
    assert colab.with_header(without, NOTEBOOKS[2].name) == notebook
    assert colab.with_header(copy.deepcopy(notebook), NOTEBOOKS[2].name) == notebook
    untagged = copy.deepcopy(notebook)
    for cell in untagged["cells"]:
        cell["metadata"].pop("tags", None)
    with pytest.raises(ValueError, match="no cell tagged 'parameters'"):
        colab.with_header(untagged, NOTEBOOKS[2].name)


def test_use_drive_mounts_on_colab_and_points_data_and_build_there(monkeypatch, tmp_path, capsys):
    mounted = []
    google, fake = types.ModuleType("google"), types.ModuleType("google.colab")
    fake.drive = types.SimpleNamespace(mount=lambda where: (mounted.append(where), (tmp_path / "MyDrive").mkdir()))
    google.colab = fake
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", fake)
    for variable in ("LAB_DATA_DIR", "LAB_BUILD_DIR"):  # recorded, so the test's values are undone afterwards
        monkeypatch.setenv(variable, "unset")
    root = colab.use_drive(mount_point=str(tmp_path))
    assert mounted == [str(tmp_path)] and root == tmp_path / colab.DRIVE_FOLDER
    assert (root / "data").is_dir() and (root / "build").is_dir()
    from labutils import get_config

    cfg = get_config("quick")
    assert cfg.data_root == root / "data" and cfg.build_dir == root / "build"
    colab.use_drive(mount_point=str(tmp_path))  # mounted already: not again
    assert mounted == [str(tmp_path)] and capsys.readouterr().out.count("live under") == 2


def test_use_drive_outside_colab_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    with pytest.raises(SystemExit, match="USE_DRIVE works on Google Colab.*set USE_DRIVE = False"):
        colab.use_drive(mount_point=str(tmp_path / "nothing"))
