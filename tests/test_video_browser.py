"""The captioned slideshow in headless Chromium: `write_slideshow` writes a WebM a browser's <video> really plays,
and the page of `video_page` shows the cues of `caption_video` (through `write_webvtt`) at the right times.

Three scikit-image photos become a slideshow, a stub captioner names each scene by the photo it looks like (no
model), and the folder is served over http on 127.0.0.1 (with byte ranges: without them a browser cannot seek).
Chromium is driven with slides/browser.py, as in tests/test_demo_browser.py; Chromium is installed by
`make slide-tools` (apt's `chromium`), and without it the test is skipped and says so.
"""

from __future__ import annotations

import functools
import io
import json
import re
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata
from test_slides import browser  # slides/browser.py, loaded the way the slides' tests load it

from labutils import applications as apps

pytestmark = pytest.mark.slow  # writes videos, starts a web server and a browser: about 5-10 s

if browser.find_chromium() is None:
    pytest.skip("Chromium is not installed: run `make slide-tools` (apt-get install chromium) or set CHROME_PATH "
                "to test the captioned video in a browser", allow_module_level=True)
pytest.importorskip("cv2", reason="writing and captioning a video needs OpenCV: pip install opencv-python-headless")

PHOTOS = {"astronaut": skdata.astronaut(), "chelsea": skdata.chelsea(), "coffee": skdata.coffee()}
# One caption needs escaping in WebVTT: unescaped, "<saucer>" would be read as a tag and vanish from the cue.
CAPTIONS = {"astronaut": "an astronaut beside a flag", "chelsea": "a cat looking up",
            "coffee": "a cup of coffee & a <saucer>"}
FPS, SECONDS_EACH, SIZE = 10, 1.5, (256, 192)
THUMB = (32, 24)
THUMBS = {name: np.asarray(Image.fromarray(photo).resize(THUMB), np.float32) for name, photo in PHOTOS.items()}


def nearest_photo(rgb: np.ndarray) -> str:
    """The name of the photo an RGB frame [H, W, 3] looks most like, compared as small thumbnails."""
    thumb = np.asarray(Image.fromarray(np.asarray(rgb, np.uint8)).resize(THUMB), np.float32)
    return min(PHOTOS, key=lambda name: np.abs(thumb - THUMBS[name]).mean())


def stub_caption(image: Image.Image) -> str:
    """Stub captioner: deterministic, one caption per photo, no model."""
    return CAPTIONS[nearest_photo(np.asarray(image.convert("RGB")))]


class RangeRequestHandler(SimpleHTTPRequestHandler):
    """http.server's file handler plus the byte ranges a browser asks for when it seeks in a video."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".vtt": "text/vtt", ".webm": "video/webm"}

    def send_head(self):
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        path = Path(self.translate_path(self.path))
        if match is None or not path.is_file():
            return super().send_head()
        data = path.read_bytes()
        start, end = int(match[1]), min(int(match[2] or len(data) - 1), len(data) - 1)
        if start > end:
            self.send_error(416)
            return None
        self.send_response(206)
        for header, value in (("Content-Type", self.guess_type(str(path))), ("Accept-Ranges", "bytes"),
                              ("Content-Range", f"bytes {start}-{end}/{len(data)}"),
                              ("Content-Length", str(end + 1 - start))):
            self.send_header(header, value)
        self.end_headers()
        return io.BytesIO(data[start:end + 1])

    def log_message(self, *args) -> None:  # quiet: a failing test shows what the page saw, not every request
        pass


def captioned_page(folder: Path, video_name: str) -> tuple[Path, list[apps.Cue]]:
    """A slideshow of the three photos, its cues as .vtt, and the page that plays both."""
    video = apps.write_slideshow(PHOTOS.values(), folder / video_name, FPS, SECONDS_EACH, SIZE)
    cues = apps.caption_video(video, stub_caption)
    apps.write_webvtt(cues, folder / f"{video.stem}.vtt")
    page = folder / f"{video.stem}.html"
    page.write_text(apps.video_page(video.name, f"{video.stem}.vtt", "A captioned slideshow"), encoding="utf-8")
    return page, cues


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The pages, served on a free port of 127.0.0.1: {video file name: (page URL, cues)}."""
    folder = tmp_path_factory.mktemp("site")
    pages = {name: captioned_page(folder, name) for name in ("slideshow.webm", "slideshow-mjpg.avi")}
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(RangeRequestHandler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    yield {name: (f"{base}/{page.name}", cues) for name, (page, cues) in pages.items()}
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def chrome():
    with browser.Chromium(width=800, height=600) as chromium:
        yield chromium


# Waits (up to 30 s) until the video has a frame or failed and the track has loaded or failed, then reports.
_LOADED = """(async () => {
  const video = document.querySelector('video'), track = document.querySelector('track');
  for (const until = Date.now() + 30000; Date.now() < until; await new Promise(r => setTimeout(r, 50))) {
    if ((video.readyState >= 2 || video.error) && track.readyState >= 2) break;
  }
  const cues = [...(track.track.cues || [])].map(c => [c.startTime, c.endTime, c.getCueAsHTML().textContent]);
  return {ready: video.readyState, error: video.error && video.error.code, width: video.videoWidth,
          height: video.videoHeight, duration: video.duration, track: track.readyState, mode: track.track.mode, cues};
})()"""

# Seeks, then reports the active cues and the frame on screen as a small RGB thumbnail.
_SEEK = """(async (time) => {
  const video = document.querySelector('video');
  const seeked = new Promise(r => { video.addEventListener('seeked', r, {once: true}); setTimeout(r, 10000); });
  video.currentTime = time;
  await seeked;
  const canvas = document.createElement('canvas');
  [canvas.width, canvas.height] = %s;
  const context = canvas.getContext('2d');
  context.drawImage(video, 0, 0, canvas.width, canvas.height);
  const rgba = [...context.getImageData(0, 0, canvas.width, canvas.height).data];
  return {time: video.currentTime, active: [...video.textTracks[0].activeCues].map(c => c.getCueAsHTML().textContent),
          frame: rgba.filter((_, i) => i %% 4 !== 3)};
})(%s)"""


def test_webm_slideshow_plays_with_its_captions_at_the_right_times(site, chrome):
    url, cues = site["slideshow.webm"]
    assert [cue.text for cue in cues] == list(CAPTIONS.values())  # one scene per photo, in order
    chrome.open(url)
    state = chrome.evaluate(_LOADED)
    assert state["error"] is None, f"the browser cannot play the slideshow (MediaError {state['error']})"
    assert state["ready"] >= 2 and (state["width"], state["height"]) == SIZE, state
    assert state["duration"] == pytest.approx(len(PHOTOS) * SECONDS_EACH, abs=0.15)
    assert state["track"] == 2 and state["mode"] == "showing", "the .vtt did not load as the page's captions"
    assert state["cues"] == [[pytest.approx(c.start, abs=1e-3), pytest.approx(c.end, abs=1e-3), c.text] for c in cues]

    second = cues[1]
    seen = chrome.evaluate(_SEEK % (json.dumps(THUMB), (second.start + second.end) / 2))
    assert seen["time"] == pytest.approx((second.start + second.end) / 2, abs=0.05)
    assert seen["active"] == [second.text]
    frame = np.array(seen["frame"], np.uint8).reshape(THUMB[1], THUMB[0], 3)
    assert CAPTIONS[nearest_photo(frame)] == second.text  # the caption on screen is the picture's


def test_motion_jpeg_avi_does_not_play_in_the_browser(site, chrome):
    """Why the lab writes WebM: the same slideshow as Motion JPEG in AVI is a media error (4: not supported)."""
    chrome.open(site["slideshow-mjpg.avi"][0])
    state = chrome.evaluate(_LOADED)
    assert state["error"] == 4 and state["width"] == 0
