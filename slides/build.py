#!/usr/bin/env python3
"""Build the instructor decks: figures from code, Markdown decks -> self-contained HTML and PDF with Marp CLI.

    python slides/build.py            # everything into slides/dist/ (first installs Marp/Chromium if missing)
    python slides/build.py --check    # ... then open every slide in headless Chromium and check it renders
    python slides/build.py --no-pdf   # HTML only (quicker while writing slides)
    python slides/build.py --record-times build/notebooks/summary.txt   # after `make run`: the agenda's run times

Steps: (1) make sure Node/npm, Marp CLI (npm ci from package-lock.json), Chromium and the fonts are present
(`make slide-tools` (run by `make test`) installs them through slides/setup_tools.py; this command runs the same installer first, while
`build()`, which the tests call, only checks and stops with one sentence); (2) draw the diagrams and regenerate the lab figures (required ones must succeed; optional
ones fall back to a labelled placeholder); (3) check the decks against the notebooks and their figure links;
(4) render every deck to HTML (images inlined as data URIs, so one file works offline) and to PDF (speaker
notes as PDF annotations); (5) write dist/index.html.

Run it with the lab's Python environment (it imports labutils, matplotlib and torch for the figures).
"""

from __future__ import annotations

import argparse
import base64
import json
import mimetypes
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

SLIDES = Path(__file__).resolve().parent
ROOT = SLIDES.parent
DECKS = SLIDES / "decks"
THEME = SLIDES / "theme" / "lab.css"
NOTEBOOKS = ROOT / "notebooks"
DEFAULT_OUT = SLIDES / "dist"
# Each notebook's run time from a recorded `make run`, filled into the agenda at build time (never typed by hand).
NOTEBOOK_TIMES = ROOT / "benchmarks" / "results" / "notebook_times.json"
RUN_TIME_RE = re.compile(r"\{\{run:([A-Za-z0-9_]+)\}\}")
# Seconds Marp may wait on one browser step. Its default (30 s) is too short for printing a long deck on a busy
# 2-core machine, where it fails at random; a real hang still ends.
MARP_BROWSER_TIMEOUT = 300

sys.path.insert(0, str(SLIDES))
sys.path.insert(0, str(ROOT))

import setup_tools  # noqa: E402  (beside this file, found through the path set just above)

from labutils.infra.files import atomic_write_text  # noqa: E402

MARP = setup_tools.MARP  # where `make slide-tools` installs Marp CLI

NOTEBOOK_RE = re.compile(r"notebooks/(\d\d_[A-Za-z0-9_\-]+)\.ipynb")
FIGURE_RE = re.compile(r"!\[[^\]]*\]\((figures/[A-Za-z0-9_\-]+\.png)\)")
# Marp directives: an HTML comment made only of these `key: value` lines is a directive, anything else a note.
DIRECTIVES = {"theme", "paginate", "header", "footer", "class", "backgroundColor", "backgroundImage",
              "backgroundPosition", "backgroundRepeat", "backgroundSize", "color", "style", "headingDivider",
              "size", "math", "title", "description", "author", "image", "keywords", "url", "marp", "transition",
              "lang", "_class", "_paginate", "_footer", "_header", "_backgroundColor", "_color", "_transition"}


class BuildError(RuntimeError):
    """Something the build cannot work around (missing tool that cannot be installed, a broken required figure)."""


def log(message: str) -> None:
    """Progress line on stderr (stdout stays clean for the summary)."""
    print(f"[slides] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------- deck parsing
@dataclass
class Slide:
    """One slide of a deck source: its Markdown body and speaker notes (non-directive HTML comments)."""

    number: int
    body: str
    notes: str
    footer: str | None  # a local `<!-- footer: ... -->` directive, if any


@dataclass
class Deck:
    """A deck source file: front matter, slides and the notebooks it declares in `footer` directives."""

    path: Path
    front: dict[str, str]
    slides: list[Slide] = field(default_factory=list)

    @property
    def title(self) -> str:
        """The deck's `title` front matter (or its file name)."""
        return self.front.get("title", self.path.stem)

    @property
    def notebooks(self) -> list[str]:
        """Notebook stems named by the deck's footer directives (global first, then per slide), in order."""
        footers = [self.front.get("footer", "")] + [s.footer or "" for s in self.slides]
        names: list[str] = []
        for footer in footers:
            for name in NOTEBOOK_RE.findall(footer):
                if name not in names:
                    names.append(name)
        return names

    @property
    def figures(self) -> list[str]:
        """Figure paths (figures/NAME.png) the deck's Markdown refers to."""
        return FIGURE_RE.findall(self.path.read_text(encoding="utf-8"))


def _split_front_matter(text: str) -> tuple[dict[str, str], str]:
    if not text.startswith("---\n"):
        return {}, text
    end = text.index("\n---\n", 4)
    front = {}
    for line in text[4:end].splitlines():
        if ":" in line and not line.startswith((" ", "#")):
            key, value = line.split(":", 1)
            front[key.strip()] = value.strip().strip('"').strip("'")
    return front, text[end + 5:]


def _is_directive(comment: str) -> bool:
    lines = [line.strip() for line in comment.strip().splitlines() if line.strip()]
    return bool(lines) and all(re.match(r"^(_?[A-Za-z]+)\s*:", line) and
                               re.match(r"^(_?[A-Za-z]+)", line).group(1) in DIRECTIVES for line in lines)


def parse_deck(path: Path) -> Deck:
    """Read a Marp Markdown deck: front matter, then slides split on `---` lines outside code fences."""
    front, body = _split_front_matter(Path(path).read_text(encoding="utf-8"))
    chunks, current, fenced = [], [], False
    for line in body.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if line.strip() == "---" and not fenced:
            chunks.append("\n".join(current))
            current = []
        else:
            current.append(line)
    chunks.append("\n".join(current))
    deck = Deck(Path(path), front)
    for number, chunk in enumerate(chunks, start=1):
        comments = re.findall(r"<!--(.*?)-->", chunk, flags=re.S)
        notes = "\n".join(c.strip() for c in comments if not _is_directive(c))
        footer = None
        for c in comments:
            match = re.search(r"^\s*_?footer\s*:(.*)$", c, flags=re.M)
            if _is_directive(c) and match:
                footer = match.group(1).strip()
        deck.slides.append(Slide(number, re.sub(r"<!--.*?-->", "", chunk, flags=re.S).strip(), notes, footer))
    return deck


def deck_files(decks_dir: Path = DECKS) -> list[Path]:
    """The deck sources, in order (NN_name.md)."""
    return sorted(p for p in Path(decks_dir).glob("[0-9][0-9]_*.md"))


def lab_notebooks(notebooks_dir: Path = NOTEBOOKS) -> list[str]:
    """Stems of the lab's numbered notebooks (NN_name.ipynb), in order."""
    return sorted(p.stem for p in Path(notebooks_dir).glob("[0-9][0-9]_*.ipynb"))


def check_sync(decks_dir: Path = DECKS, notebooks_dir: Path = NOTEBOOKS) -> list[str]:
    """Problems keeping decks and notebooks in step; an empty list means they match.

    Rules: every notebook `notebooks/NN_name.ipynb` is named in the `footer` of some deck (the deck's front
    matter or a slide's `<!-- footer: ... -->`), so each of its slides shows which notebook it belongs to;
    every notebook a deck names exists; decks name notebooks in the notebooks' order; a deck whose file
    starts with NN covers notebook NN when that notebook exists.
    """
    problems = []
    notebooks = lab_notebooks(notebooks_dir)
    decks = [parse_deck(p) for p in deck_files(decks_dir)]
    if not decks:
        return [f"no decks (NN_name.md) in {decks_dir}"]
    claimed = {name: deck.path.name for deck in decks for name in deck.notebooks}
    for name in notebooks:
        if name not in claimed:
            problems.append(f"notebooks/{name}.ipynb has no deck: add a deck (or a slide) whose footer names "
                            f"`notebooks/{name}.ipynb`")
    for deck in decks:
        text = deck.path.read_text(encoding="utf-8")
        for name in sorted(set(NOTEBOOK_RE.findall(text))):
            if name not in notebooks:
                problems.append(f"{deck.path.name} names notebooks/{name}.ipynb, which does not exist")
        prefix = deck.path.name[:2]
        same_number = [n for n in notebooks if n[:2] == prefix]
        if same_number and not set(same_number) & set(deck.notebooks):
            problems.append(f"{deck.path.name} should cover notebooks/{same_number[0]}.ipynb (same number)")
    order = [name for deck in decks for name in deck.notebooks if name in notebooks]
    if order != sorted(order):
        problems.append(f"decks cover the notebooks out of order: {order}")
    return problems


def check_notes(deck: Deck, min_words: int = 8) -> list[str]:
    """Slides whose speaker notes are missing or shorter than `min_words` words."""
    return [f"{deck.path.name} slide {s.number}: no speaker notes" for s in deck.slides
            if len(s.notes.split()) < min_words]


# ---------------------------------------------------------------------------------------- recorded run times
def record_notebook_times(summary_txt: Path, out: Path = NOTEBOOK_TIMES) -> dict:
    """Record each notebook's time from the summary of a complete `make run` (build/notebooks/summary.txt)."""
    if not Path(summary_txt).is_file():
        raise BuildError(f"{summary_txt} does not exist: run `make run` first (it writes build/notebooks/summary.txt).")
    text = Path(summary_txt).read_text(encoding="utf-8")
    rows = re.findall(r"^\s+(\d\d_\S+)\s+(ok|FAILED)\s+([\d.]+)s$", text, flags=re.M)
    header = re.match(r"Lab run on the '(\w+)' profile", text)
    expected = lab_notebooks()
    if not header or [name for name, _, _ in rows] != expected or any(status != "ok" for _, status, _ in rows):
        raise BuildError(f"{summary_txt} is not the summary of a complete, successful `make run` of all "
                         f"{len(expected)} notebooks; run `make run` and record its summary.")
    record = {"what": "seconds each notebook took to execute top to bottom (labutils.infra.runner), one `make run`",
              "conditions": f"{header.group(1)} profile, {os.cpu_count()} CPU cores, "
                            f"{time.strftime('%Y-%m-%d', time.gmtime(Path(summary_txt).stat().st_mtime))}",
              "seconds": {name: float(seconds) for name, _, seconds in rows}}
    atomic_write_text(out, json.dumps(record, indent=2) + "\n")
    return record


def _format_seconds(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def fill_run_times(text: str, record_path: Path = NOTEBOOK_TIMES) -> str:
    """Replace `{{run:NN_name}}` by that notebook's recorded run time and `{{run:source}}` by the record's source.

    Without a record the cells say so (and how to make one) rather than show a number nobody measured.
    """
    record = json.loads(Path(record_path).read_text(encoding="utf-8")) if Path(record_path).is_file() else None

    def value(match: re.Match) -> str:
        key = match.group(1)
        if key == "source":
            return (f"measured execution time, {record['conditions']}" if record else
                    "not recorded yet (make run, then slides/build.py --record-times)")
        seconds = (record or {}).get("seconds", {}).get(key)
        return "–" if seconds is None else _format_seconds(seconds)

    return RUN_TIME_RE.sub(value, text)


# ------------------------------------------------------------------------------------------------- tools
def require_tools(pdf: bool = True) -> str | None:
    """Check that Marp CLI (and Chromium and the fonts, for PDF) are installed; returns the Chromium to use.

    Never installs anything: `make slide-tools` (slides/setup_tools.py) does, so a test never stalls on a download.
    """
    try:
        return setup_tools.require(chromium=pdf)
    except setup_tools.ToolsMissing as exc:
        raise BuildError(str(exc)) from None


# ----------------------------------------------------------------------------------------------- figures
@dataclass
class FigureReport:
    """Which figures were made, which are placeholders (and why), how long it took."""

    made: list[str] = field(default_factory=list)
    placeholders: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def make_figures(out_dir: Path, work_dir: Path) -> FigureReport:
    """Draw every diagram and lab figure into `out_dir`; optional lab figures may become placeholders."""
    import warnings

    os.environ.setdefault("LAB_PROFILE", "quick")
    os.environ.setdefault("TQDM_DISABLE", "1")
    with warnings.catch_warnings():
        # Library deprecation chatter (torchvision, pycocotools) is not the instructor's business here.
        warnings.simplefilter("ignore")
        return _make_figures(out_dir, work_dir)


def _make_figures(out_dir: Path, work_dir: Path) -> FigureReport:
    import diagrams
    import lab_figures

    started = time.perf_counter()
    report = FigureReport()
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, draw in diagrams.all_diagrams().items():
        _required(name, lambda p, draw=draw: draw(p), out_dir, report)
    ctx = lab_figures.Context(work_dir)
    for name, draw in lab_figures.REQUIRED.items():
        _required(name, lambda p, draw=draw: draw(p, ctx), out_dir, report)
    for name, (draw, title, how) in lab_figures.OPTIONAL.items():
        path = out_dir / f"{name}.png"
        try:
            draw(path, ctx)
            report.made.append(name)
        except Exception as exc:  # optional: never fail the build, say so on the slide instead
            reason = str(exc) if isinstance(exc, lab_figures.FigureUnavailable) else f"{type(exc).__name__}: {exc}"
            lab_figures.placeholder(path, title, reason, how)
            report.placeholders[name] = reason
    report.notes = dict(ctx.notes)
    report.seconds = time.perf_counter() - started
    return report


def _required(name: str, draw, out_dir: Path, report: FigureReport) -> None:
    path = out_dir / f"{name}.png"
    try:
        draw(path)
    except Exception as exc:
        traceback.print_exc()
        raise BuildError(f"required figure {name!r} failed ({type(exc).__name__}: {exc}); the slides would show a "
                         "figure that no longer matches the lab, so the build stops here.") from exc
    if not path.is_file() or path.stat().st_size < 2000:
        raise BuildError(f"required figure {name!r} was not written (or is empty): {path}")
    report.made.append(name)


# --------------------------------------------------------------------------------------------- rendering
def marp(args: list[str], chrome: str | None = None) -> None:
    """Run Marp CLI with the lab theme (and Chromium for PDF)."""
    env = dict(os.environ)
    if chrome:
        env["CHROME_PATH"] = chrome
    # Marp launches Chromium through puppeteer-core (whose defaults already turn off background networking, sync,
    # component updates and first-run tasks, with a fresh profile); as root it must skip the sandbox, and there
    # is no GPU to probe on a build machine.
    env.setdefault("CHROME_NO_SANDBOX", "1")
    env.setdefault("CHROME_DISABLE_GPU", "1")
    cmd = [str(MARP), "--theme-set", str(THEME), "--html", "--allow-local-files", "--no-stdin",
           "--browser-timeout", str(MARP_BROWSER_TIMEOUT), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"marp failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def inline_images(html_path: Path, base: Path) -> int:
    """Replace every local figure reference in a built HTML deck by a data: URI; returns how many."""
    text = html_path.read_text(encoding="utf-8")
    count = 0

    def data_uri(match: re.Match) -> str:
        nonlocal count
        rel = match.group(2)
        path = (base / rel).resolve()
        if not path.is_file():
            raise BuildError(f"{html_path.name} refers to {rel}, which was not generated")
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        count += 1
        return match.group(1) + f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()

    text = re.sub(r'((?:src="|url\(&quot;|url\(|url\(&#x27;))(figures/[A-Za-z0-9_\-]+\.(?:png|jpg|jpeg|svg))',
                  data_uri, text)
    leftover = re.findall(r'(?:src|href)="(?!data:|#|https?:|mailto:)([^"]+)"', text)
    if leftover:
        raise BuildError(f"{html_path.name} still refers to local files after inlining: {leftover[:5]}")
    atomic_write_text(html_path, text)
    return count


def external_references(html: str) -> list[str]:
    """URLs a built deck would fetch from the network (scripts, styles, images, fonts); should be empty."""
    found = re.findall(r'<(?:script|img|link|iframe|source|video|audio)\b[^>]*?(?:src|href)="(https?:[^"]+)"', html)
    found += re.findall(r'@import\s+(?:url\()?["\']?(https?:[^"\')]+)', html)
    found += re.findall(r'url\(["\']?(https?:[^"\')]+)', html)
    return found


def pdf_stats(path: Path) -> tuple[int, int]:
    """(pages, text annotations) of a PDF, read with pypdf.

    Marp writes one page per slide and, with --pdf-notes, one note (a /Text annotation) per slide that has notes.
    Its PDFs keep the page objects inside compressed object streams, so only a real PDF parser counts them right.
    """
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(path)
        notes = sum(1 for page in reader.pages for annotation in page.get("/Annots") or []
                    if annotation.get_object().get("/Subtype") == "/Text")
        return len(reader.pages), notes
    except (PyPdfError, ValueError, KeyError) as exc:
        raise BuildError(f"{Path(path).name} is not a readable PDF ({type(exc).__name__}: {exc}); "
                         "build the slides again.") from exc


def write_index(out: Path, decks: list[Deck], pdf: bool) -> Path:
    """dist/index.html: the decks in order, with their notebooks and HTML/PDF links."""
    rows = []
    for deck in decks:
        name = deck.path.stem
        notebooks = ", ".join(f"<code>notebooks/{n}.ipynb</code>" for n in deck.notebooks) or "(no notebook)"
        links = f'<a href="html/{name}.html">slides</a>' + (f' · <a href="pdf/{name}.pdf">PDF</a>' if pdf else "")
        rows.append(f"<tr><td>{name[:2]}</td><td>{deck.title}</td><td>{notebooks}</td>"
                    f"<td>{len(deck.slides)}</td><td>{links}</td></tr>")
    html = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Image captioning lab: instructor decks</title>
<style>body{{font-family:sans-serif;max-width:60rem;margin:2rem auto;color:#1f2937}}
td,th{{padding:.3rem .8rem;text-align:left}} tr:nth-child(even){{background:#f3f4f6}}</style></head>
<body><h1>Image captioning lab: instructor decks</h1>
<p>Present a deck from its HTML file (press <b>p</b> for the presenter view with speaker notes, <b>f</b> for full
screen). The PDFs carry the speaker notes as annotations.</p>
<table><tr><th>#</th><th>deck</th><th>notebook</th><th>slides</th><th></th></tr>
{''.join(rows)}
</table></body></html>
"""
    path = out / "index.html"
    atomic_write_text(path, html)
    return path


# ------------------------------------------------------------------------------------------------- build
@dataclass
class BuildResult:
    """Where the build wrote what, and how long each part took."""

    out: Path
    html: list[Path]
    pdf: list[Path]
    figures: FigureReport
    warnings: list[str]
    timings: dict[str, float]


def build(out: Path = DEFAULT_OUT, pdf: bool = True, strict: bool = False) -> BuildResult:
    """Build every deck into `out` (html/, pdf/, index.html, figures.json)."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    chrome = require_tools(pdf)
    timings["tools"] = time.perf_counter() - t0

    out = Path(out).resolve()
    work = out / ".work"
    if work.exists():
        shutil.rmtree(work)
    (work / "decks").mkdir(parents=True)
    for sub in ("html", "pdf"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)

    t = time.perf_counter()
    figures = make_figures(work / "decks" / "figures", work / "data")
    timings["figures"] = time.perf_counter() - t

    decks = [parse_deck(p) for p in deck_files()]
    warnings = check_sync()
    for deck in decks:
        warnings += check_notes(deck)
        for figure in deck.figures:
            if not (work / "decks" / figure).is_file():
                raise BuildError(f"{deck.path.name} shows {figure}, but no code draws it; add it to "
                                 "slides/diagrams.py or slides/lab_figures.py, or fix the name.")
    if warnings and strict:
        raise BuildError("decks and notebooks are out of step:\n  " + "\n  ".join(warnings))
    if not NOTEBOOK_TIMES.is_file():
        warnings.append(f"no recorded notebook run times ({NOTEBOOK_TIMES.relative_to(ROOT)}): the agenda shows "
                        "none; run `make run`, then `python slides/build.py --record-times "
                        "build/notebooks/summary.txt`")
    for deck in decks:
        atomic_write_text(work / "decks" / deck.path.name, fill_run_times(deck.path.read_text(encoding="utf-8")))

    t = time.perf_counter()
    marp(["--input-dir", str(work / "decks"), "--output", str(out / "html")])
    html_files = sorted((out / "html").glob("*.html"))
    for html in html_files:
        inline_images(html, work / "decks")
        external = external_references(html.read_text(encoding="utf-8"))
        if external:
            raise BuildError(f"{html.name} would load {external[:3]} from the network; decks must work offline.")
    timings["html"] = time.perf_counter() - t

    pdf_files: list[Path] = []
    if pdf:
        t = time.perf_counter()
        marp(["--pdf", "--pdf-notes", "--pdf-outlines", "--input-dir", str(work / "decks"),
              "--output", str(out / "pdf")], chrome=chrome)
        pdf_files = sorted((out / "pdf").glob("*.pdf"))
        if len(pdf_files) != len(decks):
            raise BuildError(f"expected {len(decks)} PDFs, Marp wrote {len(pdf_files)}")
        for deck, pdf_file in zip(decks, pdf_files, strict=True):
            pages, _ = pdf_stats(pdf_file)
            if pages != len(deck.slides):
                raise BuildError(f"{pdf_file.name} has {pages} pages for {len(deck.slides)} slides")
        timings["pdf"] = time.perf_counter() - t

    write_index(out, decks, pdf)
    atomic_write_text(out / "figures.json", json.dumps(
        {"made": figures.made, "placeholders": figures.placeholders, "notes": figures.notes}, indent=2))
    shutil.rmtree(work / "data", ignore_errors=True)
    timings["total"] = time.perf_counter() - t0
    return BuildResult(out, html_files, pdf_files, figures, warnings, timings)


def slide_problems(slide) -> list[str]:
    """What is wrong with one rendered slide (not shown, blank, broken images, overflow, text under 20 px, no notes)."""
    where = f"{slide.deck} slide {slide.index}"
    problems = []
    if not slide.active:
        problems.append(f"{where}: the viewer did not show it")
    if slide.blank:
        problems.append(f"{where}: renders (nearly) blank (ink {slide.ink:.3%})")
    if slide.broken_images:
        problems.append(f"{where}: broken images {slide.broken_images}")
    if slide.overflow_px > 4:
        problems.append(f"{where}: content runs {slide.overflow_px}px past the bottom")
    if not slide.has_notes:
        problems.append(f"{where}: no speaker notes in the built deck")
    for small in slide.small_text:
        problems.append(f"{where}: {small['what']!r} is {small['px']}px, under the 20px a projector needs")
    return problems


def render_check(html_files: list[Path], save_dir: Path | None = None) -> list[str]:
    """Open every deck in headless Chromium and check each slide; returns the problems found."""
    from browser import Chromium, check_deck

    problems = []
    with Chromium() as browser:
        for html in html_files:
            for slide in check_deck(browser, html):
                if save_dir is not None:
                    save_dir.mkdir(parents=True, exist_ok=True)
                    (save_dir / f"{html.stem}_{slide.index:02d}.png").write_bytes(slide.png)
                problems += slide_problems(slide)
    return problems


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default slides/dist)")
    parser.add_argument("--no-pdf", action="store_true", help="HTML only")
    parser.add_argument("--check", action="store_true", help="open every slide in headless Chromium and check it")
    parser.add_argument("--screenshots", type=Path, help="with --check: save one PNG per slide here")
    parser.add_argument("--strict", action="store_true", help="fail when decks and notebooks are out of step")
    parser.add_argument("--record-times", type=Path, metavar="SUMMARY",
                        help="record each notebook's run time from a `make run` summary.txt, then stop")
    args = parser.parse_args(argv)
    if args.record_times:
        try:
            record = record_notebook_times(args.record_times)
        except (BuildError, OSError) as exc:
            print(f"recording run times failed: {exc}", file=sys.stderr)
            return 1
        print(f"Recorded {len(record['seconds'])} notebook times ({record['conditions']}) in {NOTEBOOK_TIMES}")
        return 0
    try:
        setup_tools.install()  # run on its own, the build installs what `make slide-tools` would have
    except setup_tools.ToolsMissing as exc:
        print(f"slides build failed: {exc}", file=sys.stderr)
        return 1
    try:
        result = build(args.out, pdf=not args.no_pdf, strict=args.strict)
        problems = []
        if args.check:
            t = time.perf_counter()
            require_tools(pdf=True)
            problems = render_check(result.html, args.screenshots)
            result.timings["check"] = time.perf_counter() - t
    except BuildError as exc:
        print(f"slides build failed: {exc}", file=sys.stderr)
        return 1
    slides = sum(len(parse_deck(p).slides) for p in deck_files())
    print(f"Built {len(result.html)} decks ({slides} slides) into {result.out}: html/ "
          + ("and pdf/ " if result.pdf else "") + "+ index.html")
    print("Timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items()))
    print(f"Figures: {len(result.figures.made)} made"
          + (f", {len(result.figures.placeholders)} placeholders:" if result.figures.placeholders else ""))
    for name, reason in result.figures.placeholders.items():
        print(f"  - {name}: {reason}")
    for name, note in result.figures.notes.items():
        print(f"  - {name}: {note}")
    for warning in result.warnings:
        print(f"WARNING: {warning}")
    if args.check:
        print(f"Render check: {slides} slides opened at 1280x720, {len(problems)} problems")
        for problem in problems:
            print(f"  - {problem}")
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
