"""Headless Chromium driven over the DevTools protocol on a pipe (no websocket library, no browser download).

Used by `build.py --check` and `tests/test_slides.py` to open each built deck at 1280x720, step through every
slide, take a screenshot, and check that the slide really shows something (not a blank or flat page), that its
images loaded, and that its content fits on the slide.

Chromium is Debian's `chromium` package (or any Chrome/Chromium named by $CHROME_PATH). As root it needs
`--no-sandbox`; the background-networking flags stop it from calling Google services on a machine with no
internet, and a fresh `--user-data-dir` keeps runs independent.
"""

from __future__ import annotations

import base64
import io
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

WIDTH, HEIGHT = 1280, 720
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                  "--disable-extensions", "--hide-scrollbars", "--mute-audio", "--no-default-browser-check")


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome executable: $CHROME_PATH if set, else the first of CHROMIUM_NAMES on PATH."""
    env = os.environ.get("CHROME_PATH")
    if env and Path(env).is_file():
        return env
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


class BrowserError(RuntimeError):
    """Chromium could not be started or stopped answering."""


def _wire_pipes(read_fd: int, write_fd: int) -> None:
    """In the child: put our pipe ends on fds 3 (Chromium reads) and 4 (Chromium writes)."""
    high_r, high_w = os.dup(read_fd), os.dup(write_fd)  # dup first so that 3/4 cannot clobber each other
    os.dup2(high_r, 3)
    os.dup2(high_w, 4)


class Chromium:
    """A headless Chromium with one page, controlled with the DevTools protocol over --remote-debugging-pipe."""

    def __init__(self, executable: str | None = None, width: int = WIDTH, height: int = HEIGHT,
                 timeout: float = 60.0):
        self.executable = executable or find_chromium()
        if not self.executable:
            raise BrowserError("No Chromium found: install Debian's `chromium` package (apt-get install chromium) "
                               "or set CHROME_PATH to a Chrome/Chromium executable.")
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="slides-chromium-")  # fresh every run: no state carried over
        self._log = tempfile.TemporaryFile()
        self._out = self._in = -1
        self.proc = None
        try:
            self._start(width, height)
        except BaseException:
            self.close()  # a browser that failed to come up must not leave a process or a profile behind
            raise

    def _start(self, width: int, height: int) -> None:
        to_chrome_r, to_chrome_w = os.pipe()
        from_chrome_r, from_chrome_w = os.pipe()
        self._out, self._in = to_chrome_w, from_chrome_r
        try:
            self.proc = subprocess.Popen(
                [self.executable, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-pipe",
                 f"--window-size={width},{height}", "about:blank"],
                pass_fds=(3, 4), preexec_fn=lambda: _wire_pipes(to_chrome_r, from_chrome_w),
                stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log)
        finally:
            os.close(to_chrome_r)
            os.close(from_chrome_w)
        self._buffer = b""
        self._next_id = 0
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.page("Page.enable")
        self.page("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=False)

    # -- protocol ---------------------------------------------------------------------------------------------
    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"Chromium did not answer within {self.timeout:.0f} s.")
            ready, _, _ = select.select([self._in], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._in, 1 << 20)
            if not chunk:
                raise BrowserError(f"Chromium exited unexpectedly: {self._stderr_tail()}")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, session: str | None = None, **params) -> dict:
        """Send one DevTools command and return its result (events arriving meanwhile are dropped)."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method} failed: {reply['error']}")
                return reply.get("result", {})

    def page(self, method: str, **params) -> dict:
        """Send a command to the page's session."""
        return self.send(method, self.session, **params)

    def _stderr_tail(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-600:]

    # -- page helpers -----------------------------------------------------------------------------------------
    def evaluate(self, expression: str):
        """Evaluate a JavaScript expression in the page and return its (JSON) value; awaits promises."""
        result = self.page("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"JavaScript error in {expression[:60]!r}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def open(self, url: str, ready: str = "document.readyState === 'complete'", wait: float = 60.0) -> None:
        """Navigate to `url` and wait until the JavaScript condition `ready` holds in the NEW document."""
        # The previous document may satisfy `ready` too (another deck, fully loaded): mark it, so that only a
        # document without the mark counts, whenever the navigation actually replaces it.
        try:
            self.evaluate("window.__slidesPreviousDocument = true")
        except BrowserError:
            pass
        navigation = self.page("Page.navigate", url=url)
        if navigation.get("errorText"):
            raise BrowserError(f"{url} could not be opened: {navigation['errorText']}")
        if not navigation.get("loaderId"):  # a same-document (hash) navigation keeps the document, mark and all
            self.evaluate("delete window.__slidesPreviousDocument")
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                if self.evaluate(f"!window.__slidesPreviousDocument && Boolean({ready})"):
                    return
            except BrowserError:
                pass  # the old document went away mid-evaluation; try again
            time.sleep(0.05)
        raise BrowserError(f"{url} did not finish loading within {wait:.0f} s.")

    def screenshot(self) -> bytes:
        """PNG bytes of the viewport."""
        return base64.b64decode(self.page("Page.captureScreenshot", format="png")["data"])

    def close(self) -> None:
        """Close the browser and remove its profile folder."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                try:
                    self.send("Browser.close")
                except (BrowserError, OSError):
                    pass
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            for fd in (self._out, self._in):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._log.close()
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------------------------- slide checks
def ink_fraction(png: bytes, ignore_bottom: int = 60) -> float:
    """Share of pixels that differ clearly from the dominant (background) colour, footer band excluded.

    A blank or single-colour slide scores ~0; a slide with a title and a few bullets scores a few percent.
    """
    import numpy as np
    from PIL import Image

    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)
    if ignore_bottom:
        image = image[:-ignore_bottom]
    image = image[::2, ::2]  # every other pixel is plenty for a coverage estimate, and 4x faster
    flat = image.reshape(-1, 3)
    # Coarse 5-bit bins absorb anti-aliasing noise; the most common bin is the background.
    keys = (flat[:, 0] >> 3) * 1024 + (flat[:, 1] >> 3) * 32 + (flat[:, 2] >> 3)
    top = int(np.bincount(keys, minlength=32768).argmax())
    background = np.array([top // 1024, (top // 32) % 32, top % 32]) * 8 + 4
    distance = np.abs(flat - background).sum(axis=1)
    return float((distance > 60).mean())


@dataclass
class SlideCheck:
    """What the browser saw on one slide."""

    deck: str
    index: int  # 1-based, as in Marp's #N URLs
    ink: float
    active: bool  # the bespoke viewer really showed slide `index`
    broken_images: list[str]
    overflow_px: int  # how far the content runs into the bottom padding (footer band) or beyond; <= 0 fits
    has_notes: bool
    png: bytes
    # Text drawn under MIN_TEXT_PX: {"what": the text or figure, "px": its size on screen, "figure": name or None}
    small_text: list[dict] = field(default_factory=list)

    @property
    def blank(self) -> bool:
        """True when the slide shows (almost) nothing."""
        return self.ink < MIN_INK


# Smallest text, in screen pixels at 1280x720, that reads from the back of a room on a projector (issue 11).
MIN_TEXT_PX = 20.0
MIN_INK = 0.003  # at least 0.3% of the slide area must differ from the background (real slides: 1.3% and up)

_HIDE_CONTROLS = """(() => { const s = document.createElement('style');
  s.textContent = '.bespoke-marp-osc{display:none !important}'; document.head.appendChild(s); return true; })()"""

_SLIDE_STATE = """(() => {
  %s
  const slides = [...document.querySelectorAll('svg[data-marpit-svg]')];
  const svg = slides[%d];
  const section = svg.querySelector('section');
  const images = [...section.querySelectorAll('img')];
  const broken = images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => (i.getAttribute('src') || '').slice(0, 60));
  const bottom = Math.max(0, ...[...section.children].filter(e => e.tagName !== 'FOOTER' && e.tagName !== 'HEADER')
                    .map(e => e.offsetTop + e.offsetHeight));
  const notes = document.querySelectorAll('.bespoke-marp-note[data-index="%d"]');
  const notesText = [...notes].map(n => n.textContent.trim()).join(' ');
  return {active: svg.classList.contains('bespoke-marp-active'), broken: broken,
          overflow: Math.round(bottom - (section.clientHeight - parseFloat(getComputedStyle(section).paddingBottom))),
          notes: notesText.length, small: smallText(svg, section, images)};
})()"""

# Every piece of visible text on a slide, with the size it is drawn at on screen (CSS font size times the scale
# of Marp's SVG). Text nodes cover headings, bullets, tables, code, footers; the page number is a ::after pseudo-
# element; MathJax draws formulas as paths, sized by their container's font size; a PNG figure carries its
# smallest label in a `MinTextPx` PNG text chunk (slides/diagrams.py), scaled here by displayed / natural width.
_SMALL_TEXT = """function pngText(bytes) {  // the tEXt chunks before the image data, as {keyword: text}
  const text = {};
  const u32 = at => [0, 1, 2, 3].reduce((n, i) => n * 256 + bytes.charCodeAt(at + i), 0);
  for (let at = 8; at + 8 <= bytes.length; ) {
    const length = u32(at), type = bytes.slice(at + 4, at + 8);
    if (type === 'IDAT' || at + 12 + length > bytes.length) break;
    if (type === 'tEXt') {
      const data = bytes.slice(at + 8, at + 8 + length), nul = data.indexOf('\\0');
      text[data.slice(0, nul)] = data.slice(nul + 1);
    }
    at += 12 + length;
  }
  return text;
}
function smallText(svg, section, images) {
  const scale = svg.getBoundingClientRect().width / svg.viewBox.baseVal.width;
  const found = [];
  const visible = el => el.getClientRects().length > 0 && getComputedStyle(el).visibility !== 'hidden';
  const walker = document.createTreeWalker(section, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const text = node.textContent.trim();
    const el = node.parentElement;
    if (!text || el.closest('mjx-assistive-mml, mjx-container') || !visible(el)) continue;
    found.push({what: text.slice(0, 50), px: parseFloat(getComputedStyle(el).fontSize) * scale});
  }
  for (const math of section.querySelectorAll('mjx-container')) {
    if (visible(math)) found.push({what: 'formula ' + (math.textContent || '').trim().slice(0, 40),
                                   px: parseFloat(getComputedStyle(math).fontSize) * scale});
  }
  const after = getComputedStyle(section, '::after');
  if (section.hasAttribute('data-marpit-pagination') && after.content !== 'none' && after.display !== 'none') {
    found.push({what: 'page number', px: parseFloat(after.fontSize) * scale});
  }
  for (const img of images) {
    if (!(img.complete && img.naturalWidth > 0)) continue;  // reported as broken instead
    const src = img.getAttribute('src') || '';
    const text = src.startsWith('data:image/png;base64,') ? pngText(atob(src.slice(22, 22 + 8000))) : {};
    const record = (text.MinTextPx || '').match(/^[0-9.]+$/);
    const figure = text.Figure || src.slice(0, 30);
    if (!record) {
      found.push({what: `figure ${figure}: no MinTextPx record (draw it with slides/diagrams.py)`, px: 0, figure});
      continue;
    }
    found.push({what: `figure ${figure}: smallest label`, figure,
                px: parseFloat(record[0]) * img.getBoundingClientRect().width / img.naturalWidth});
  }
  return found.filter(f => f.px < %(min_px)s)
              .map(f => ({what: f.what, px: Math.round(f.px * 10) / 10, figure: f.figure || null}));
}"""
_SLIDE_STATE = _SLIDE_STATE.replace("%s", _SMALL_TEXT.replace("%(min_px)s", repr(MIN_TEXT_PX)), 1)


def slide_count(browser: Chromium) -> int:
    """Number of slides in the open Marp deck."""
    return int(browser.evaluate("document.querySelectorAll('svg[data-marpit-svg]').length"))


# Resolves once the active slide's images are decoded, the fonts its text asked for have loaded (a font loads
# when text first uses it: the code font on the first slide with code) and two frames have been painted since,
# so the screenshot and the measurements show that slide in its final layout, not the previous slide or a
# fallback font's (a fixed sleep is too short on a busy machine).
_PAINTED = """(async () => {
  const frames = () => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  const active = document.querySelector('svg.bespoke-marp-active');
  await Promise.all([...(active ? active.querySelectorAll('img') : [])].map(i => i.decode().catch(() => null)));
  await frames();
  await document.fonts.ready;
  await frames();
  return true;
})()"""


def check_deck(browser: Chromium, html: Path, settle: float = 0.05, activate_wait: float = 30.0
               ) -> list[SlideCheck]:
    """Open a built Marp HTML deck and check every slide (see SlideCheck)."""
    html = Path(html).resolve()
    browser.open(html.as_uri() + "#1", ready="document.readyState === 'complete' && "
                 "document.querySelector('.bespoke-marp-active') !== null")
    browser.evaluate(_HIDE_CONTROLS)
    browser.evaluate("document.fonts.ready.then(() => true)")
    results = []
    for index in range(1, slide_count(browser) + 1):
        browser.evaluate(f"location.hash = '#{index}'")
        deadline = time.monotonic() + activate_wait
        state = browser.evaluate(_SLIDE_STATE % (index - 1, index - 1))
        while not state["active"] and time.monotonic() < deadline:
            time.sleep(0.05)
            state = browser.evaluate(_SLIDE_STATE % (index - 1, index - 1))
        browser.evaluate(_PAINTED)
        time.sleep(settle)
        state = browser.evaluate(_SLIDE_STATE % (index - 1, index - 1))  # measured in the painted layout
        png = browser.screenshot()
        results.append(SlideCheck(html.name, index, ink_fraction(png), bool(state["active"]), state["broken"],
                                  int(state["overflow"]), state["notes"] > 0, png, state["small"]))
    return results
