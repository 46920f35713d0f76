"""The demo page in headless Chromium: it loads, a photo uploaded through the page's own file input gets a caption
and the attention figure (the first is a greyscale photo: one channel, not three), a text file renamed .jpg gets the one sentence, and the next photo is captioned again.

Chromium is driven over the DevTools protocol with slides/browser.py (the slides' render check uses it too); the
upload is `DOM.setFileInputFiles` on Gradio's <input type=file>, exactly what choosing a file in the dialog does.
Chromium is installed by `make slide-tools` (apt's `chromium`); without it the test is skipped and says so.

`DEMO_TEST_CHECKPOINT=FILE` runs the page on a trained checkpoint instead of the untrained one built here, and
`DEMO_SCREENSHOT=FILE.png` also keeps the screenshot taken after the first upload there.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import time
from pathlib import Path

import pytest
from PIL import Image
from skimage import data as skdata
from test_demo import _checkpoint
from test_slides import browser  # slides/browser.py, loaded the way the slides' tests load it

from labutils import applications
from labutils.cli import demo
from labutils.course import load_captioner

pytestmark = pytest.mark.slow  # starts a web server and a browser: about 10-20 s

if browser.find_chromium() is None:
    pytest.skip("Chromium is not installed: run `make slide-tools` (apt-get install chromium) or set CHROME_PATH "
                "to test the demo page in a browser", allow_module_level=True)
pytest.importorskip("gradio", reason="the demo needs Gradio: pip install 'labutils[demo]'")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def page_url(tmp_path_factory):
    chosen = os.environ.get("DEMO_TEST_CHECKPOINT")
    captioner = load_captioner(chosen or _checkpoint(tmp_path_factory.mktemp("ckpt"), "attention"))
    page = demo.build_demo(captioner)
    url = demo.serve(page, "127.0.0.1", _free_port(), block=False)
    yield url
    page.close()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("photos")
    files = {"camera": folder / "camera.jpg", "astronaut": folder / "astronaut.jpg", "fake": folder / "notes.jpg"}
    Image.fromarray(skdata.camera()).save(files["camera"], quality=90)  # greyscale: one channel, not three
    Image.fromarray(skdata.astronaut()).save(files["astronaut"], quality=90)
    files["fake"].write_text("milk, eggs, bread: a shopping list saved as .jpg\n")
    return files


_STATE = """(() => {
  const figure = document.querySelector('#figure img');
  const status = document.querySelector('#status [data-testid=markdown-wrapper]');  // absent while empty
  const speech = document.querySelector('#speech');  // its player shows the clip's length once the WAV loaded
  return {caption: document.querySelector('#caption textarea').value, speech: speech ? speech.innerText : '',
          status: status ? status.innerText.trim() : '', busy: status ? status.classList.contains('pending') : false,
          figure: figure && figure.complete ? figure.naturalWidth : 0, figureSrc: figure ? figure.src : ''};
})()"""


def _upload(chrome, path: Path) -> None:
    """Give the file to the photo widget's file input, as picking it in the file dialog does."""
    root = chrome.page("DOM.getDocument")["root"]["nodeId"]
    node = chrome.page("DOM.querySelector", nodeId=root, selector="#photo input[type=file]")["nodeId"]
    assert node, "the photo widget has no file input"
    chrome.page("DOM.setFileInputFiles", nodeId=node, files=[str(path)])


def _wait_for(chrome, done, before: dict, timeout: float = 60.0) -> dict:
    """The page's state once its status line changed from `before` and `done(state)` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = chrome.evaluate(_STATE)
        if not state["busy"] and state["status"] != before["status"] and done(state):
            return state
        time.sleep(0.1)
    raise AssertionError(f"the page did not answer within {timeout:.0f} s; it shows {state}")


def _spoken_seconds(state: dict) -> int:
    """The longest time shown on the speech player ("0:03" -> 3): 0 until the spoken caption has loaded."""
    return max((int(m) * 60 + int(s) for m, s in re.findall(r"(\d+):(\d\d)", state["speech"])), default=0)


def test_upload_caption_refuse_a_bad_file_and_caption_again(page_url, photos, tmp_path):
    with browser.Chromium(width=1280, height=1000) as chrome:
        chrome.open(page_url, ready="document.querySelector('#photo input[type=file]') !== null && "
                    "document.querySelector('#caption textarea') !== null", wait=90)
        empty = chrome.evaluate(_STATE)
        assert empty["caption"] == "" and empty["figure"] == 0

        _upload(chrome, photos["camera"])
        first = _wait_for(chrome, lambda s: s["caption"] and s["figure"] > 0, {"status": ""})
        assert first["status"].startswith("Captioned in "), first
        if shutil.which(applications.SPEECH_ENGINE):  # with the engine installed the page reads the caption aloud
            deadline = time.monotonic() + 30
            while not _spoken_seconds(chrome.evaluate(_STATE)) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert _spoken_seconds(chrome.evaluate(_STATE)) >= 1, "the spoken caption never loaded on the page"
        png = chrome.screenshot()
        (tmp_path / "demo_after_upload.png").write_bytes(png)
        if os.environ.get("DEMO_SCREENSHOT"):
            Path(os.environ["DEMO_SCREENSHOT"]).write_bytes(png)
        assert browser.ink_fraction(png) > 0.05  # the photo and the heat maps are on screen

        _upload(chrome, photos["fake"])
        refused = _wait_for(chrome, lambda s: "not a readable image" in s["status"], first)
        assert refused["caption"] == "" and refused["figure"] == 0
        assert refused["status"].count(". ") == 0 and "Traceback" not in refused["status"]
        assert "Error" not in chrome.evaluate("document.body.innerText")  # no Gradio error pop-up either

        _upload(chrome, photos["astronaut"])
        second = _wait_for(chrome, lambda s: s["caption"] and s["figure"] > 0, refused)
        assert second["status"].startswith("Captioned in ") and second["figureSrc"] != first["figureSrc"]
