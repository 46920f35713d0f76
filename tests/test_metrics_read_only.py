"""The COCO metrics on a read-only pycocoevalcap install (a shared JupyterHub, a system conda), leaving nothing there.

pycocoevalcap's own tokenizer and SPICE write temporary files into their package folder. We run as root, for whom
`chmod a-w` changes nothing, so the read-only install is a real read-only bind mount of the installed package,
imported first by a fresh interpreter.
"""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from labutils import metrics

PREDICTIONS = {1: "Two green circles, above a red circle.", 2: "a blue square isn't here", 3: ""}
REFERENCES = {1: ["two green circles above a red circle", "A red circle below two green circles."],
              2: ["a blue square", "one blue square in the middle"],
              3: ["a yellow triangle", "a triangle that is yellow"]}

SCRIPT = """
import json, sys
import pycocoevalcap.meteor.meteor as meteor, pycocoevalcap.tokenizer.ptbtokenizer as ptb
from labutils import metrics
scores = metrics.coco_scores(json.loads(sys.argv[1]), json.loads(sys.argv[2]))
print(json.dumps({"scores": scores, "modules": [ptb.__file__, meteor.__file__]}))
"""

pytestmark = pytest.mark.skipif(not metrics.java_available(), reason="the PTB tokenizer and METEOR need java")


def _package() -> Path:
    import pycocoevalcap.tokenizer.ptbtokenizer as ptb

    return Path(ptb.__file__).resolve().parents[1]


def _files(folder: Path) -> set[str]:
    # Python's own bytecode caches are not the metrics' doing (and a fresh venv writes them on first import).
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if "__pycache__" not in p.parts}


@pytest.fixture
def read_only_install(tmp_path):
    """A folder for PYTHONPATH whose `pycocoevalcap` is the installed package, mounted read-only."""
    view = tmp_path / "site" / "pycocoevalcap"
    view.mkdir(parents=True)
    for command in (["mount", "--bind", str(_package()), str(view)], ["mount", "-o", "remount,ro,bind", str(view)]):
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            subprocess.run(["umount", str(view)], capture_output=True)
            pytest.skip(f"a read-only install needs a read-only bind mount and `mount` refused: {done.stderr}")
    assert subprocess.run(["touch", str(view / "probe")], capture_output=True).returncode != 0, "not read-only"
    yield view
    subprocess.run(["umount", "-l", str(view)], check=False)


def test_metrics_run_on_a_read_only_install_and_leave_nothing_behind(read_only_install):
    before = _files(_package())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(read_only_install.parent),
                                                        os.environ.get("PYTHONPATH", "")]),
           "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(PREDICTIONS), json.dumps(REFERENCES)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(m.startswith(str(read_only_install)) for m in result["modules"]), result["modules"]
    expected = metrics.coco_scores({int(k): v for k, v in PREDICTIONS.items()}, REFERENCES)
    assert result["scores"] == expected and set(metrics.METRICS) == set(expected)  # METEOR ran too
    assert _files(_package()) ^ before == set()  # names any file the run added or removed


def test_spice_leaves_nothing_in_the_package_folder(monkeypatch):
    """Offline SPICE cannot score (no Stanford CoreNLP); its jar still starts and must write nothing beside it."""
    import pycocoevalcap.spice.spice as spice_module

    monkeypatch.setattr(spice_module, "get_stanford_models", lambda: None)  # as if CoreNLP were installed
    before = _files(_package())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = metrics.coco_scores(PREDICTIONS, REFERENCES, spice=True)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "SPICE could not run" in messages[0] and "SPICE" not in scores
    assert _files(_package()) ^ before == set()  # names any file the run added or removed
