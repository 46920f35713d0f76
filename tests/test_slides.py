"""The instructor decks (slides/): they stay in step with the notebooks, build offline to HTML and PDF, and every
slide renders non-blank at 1280x720 in headless Chromium with no text under 20 px.

The deck/notebook and speaker-note checks are fast. The build and browser tests are marked slow: the build draws
every figure (torch, the pretrained encoder), runs Marp for HTML and PDF, and the render test screenshots ~100
slides, about a minute in all on 2 cores. Marp, Chromium and the fonts are installed by `make slide-tools`
(slides/setup_tools.py); these tests only check for them and fail with one sentence when they are missing.
"""

from __future__ import annotations

import importlib.util
import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SLIDES = ROOT / "slides"


def _load(name: str):
    """Import slides/<name>.py (the slides folder is not a package)."""
    if str(SLIDES) not in sys.path:
        sys.path.insert(0, str(SLIDES))
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SLIDES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


build = _load("build")
browser = _load("browser")
setup_tools = _load("setup_tools")


# ------------------------------------------------------------------------------------ decks vs notebooks
def _deck(path: Path, footer: str, body: str = "# Title\n\n<!-- notes for this slide, long enough to count -->\n"):
    path.write_text(f"---\nmarp: true\ntitle: t\nfooter: \"{footer}\"\n---\n\n{body}", encoding="utf-8")


@pytest.fixture
def lab(tmp_path):
    """A temporary lab with three notebooks and a deck for each."""
    notebooks, decks = tmp_path / "notebooks", tmp_path / "decks"
    notebooks.mkdir()
    decks.mkdir()
    for name in ("00_setup", "01_coco_api", "02_augmentation"):
        (notebooks / f"{name}.ipynb").write_text("{}")
    _deck(decks / "00_agenda.md", "deck 00 · notebooks/00_setup.ipynb")
    _deck(decks / "01_coco.md", "deck 01 · notebooks/01_coco_api.ipynb")
    _deck(decks / "02_aug.md", "deck 02 · notebooks/02_augmentation.ipynb")
    return notebooks, decks


def test_sync_accepts_matching_decks_and_notebooks(lab):
    notebooks, decks = lab
    assert build.check_sync(decks, notebooks) == []


def test_sync_fails_for_a_notebook_without_a_deck(lab):
    notebooks, decks = lab
    (notebooks / "03_vocabulary.ipynb").write_text("{}")
    problems = build.check_sync(decks, notebooks)
    assert len(problems) == 1
    assert "notebooks/03_vocabulary.ipynb has no deck" in problems[0]


def test_sync_mention_in_the_body_does_not_count_as_a_deck(lab):
    notebooks, decks = lab
    (notebooks / "03_vocabulary.ipynb").write_text("{}")
    # An agenda slide listing the notebook is not a deck for it: only a footer (on every slide) counts.
    _deck(decks / "00_agenda.md", "deck 00 · notebooks/00_setup.ipynb",
          "# Agenda\n\n- notebooks/03_vocabulary.ipynb\n\n<!-- notes for this slide, long enough to count -->\n")
    assert any("03_vocabulary.ipynb has no deck" in p for p in build.check_sync(decks, notebooks))


def test_sync_accepts_a_slide_level_footer(lab):
    notebooks, decks = lab
    (notebooks / "03_extra_demo.ipynb").write_text("{}")
    _deck(decks / "03_beyond.md", "deck 03 · after notebook 02",
          "# Beyond\n\n<!-- notes for this slide, long enough to count -->\n\n---\n\n"
          "<!-- footer: deck 03 · notebooks/03_extra_demo.ipynb -->\n# Demo\n\n<!-- notes for the demo slide here -->\n")
    assert build.check_sync(decks, notebooks) == []
    assert build.parse_deck(decks / "03_beyond.md").notebooks == ["03_extra_demo"]


def test_sync_fails_for_a_deck_naming_a_missing_notebook(lab):
    notebooks, decks = lab
    (notebooks / "02_augmentation.ipynb").rename(notebooks / "02_augment.ipynb")
    problems = build.check_sync(decks, notebooks)
    assert any("02_aug.md names notebooks/02_augmentation.ipynb, which does not exist" in p for p in problems)
    assert any("notebooks/02_augment.ipynb has no deck" in p for p in problems)


def test_sync_fails_when_decks_are_out_of_order(lab):
    notebooks, decks = lab
    _deck(decks / "01_coco.md", "deck 01 · notebooks/02_augmentation.ipynb")
    _deck(decks / "02_aug.md", "deck 02 · notebooks/01_coco_api.ipynb")
    problems = build.check_sync(decks, notebooks)
    assert any("out of order" in p for p in problems)


def test_repository_decks_cover_every_notebook():
    problems = build.check_sync()
    assert problems == [], "Decks and notebooks are out of step:\n" + "\n".join(problems)


def test_parse_deck_separates_notes_from_directives(tmp_path):
    path = tmp_path / "00_x.md"
    path.write_text("---\nmarp: true\nfooter: \"notebooks/00_setup.ipynb\"\n---\n\n<!-- _class: lead -->\n"
                    "# One\n\n<!-- Say hello. -->\n\n---\n\n```python\n---\n```\n<!-- _paginate: false -->\n",
                    encoding="utf-8")
    deck = build.parse_deck(path)
    assert len(deck.slides) == 2  # the --- inside the code fence is not a slide break
    assert deck.slides[0].notes == "Say hello."
    assert deck.slides[1].notes == ""  # directives are not notes
    assert build.check_notes(deck, min_words=2) == [f"{path.name} slide 2: no speaker notes"]


def test_every_slide_has_speaker_notes():
    decks = [build.parse_deck(p) for p in build.deck_files()]
    assert len(decks) >= 10
    problems = [p for deck in decks for p in build.check_notes(deck)]
    assert problems == [], "\n".join(problems)


def test_every_figure_a_deck_shows_is_drawn_by_code():
    import diagrams
    import lab_figures

    drawn = set(diagrams.all_diagrams()) | set(lab_figures.REQUIRED) | set(lab_figures.OPTIONAL)
    shown = {Path(f).stem for p in build.deck_files() for f in build.parse_deck(p).figures}
    assert shown, "the decks show no figures"
    assert shown <= drawn, f"figures with no code to draw them: {sorted(shown - drawn)}"


# ------------------------------------------------------------------------------------ required vs optional figures
def test_a_broken_required_figure_fails_the_build(tmp_path):
    def broken(path):
        raise ValueError("labutils changed")

    with pytest.raises(build.BuildError, match="required figure 'augment_photo' failed"):
        build._required("augment_photo", broken, tmp_path, build.FigureReport())


def test_a_missing_optional_figure_becomes_a_labelled_placeholder(tmp_path, monkeypatch):
    import diagrams
    import lab_figures

    def unavailable(path, ctx):
        raise lab_figures.FigureUnavailable("no trained checkpoint at build/checkpoints/quick/attention.pt")

    monkeypatch.setattr(diagrams, "all_diagrams", dict)
    monkeypatch.setattr(lab_figures, "REQUIRED", {})
    monkeypatch.setattr(lab_figures, "OPTIONAL", {"attention_maps": (unavailable, "attention maps", "Run notebook 07.")})
    report = build.make_figures(tmp_path / "figures", tmp_path / "work")
    assert report.made == []
    assert report.placeholders == {"attention_maps": "no trained checkpoint at build/checkpoints/quick/attention.pt"}
    assert browser.ink_fraction((tmp_path / "figures" / "attention_maps.png").read_bytes()) > browser.MIN_INK


# ------------------------------------------------------------------------------------ tools: installed by setup
def test_a_missing_tool_stops_the_build_with_one_sentence_and_installs_nothing(tmp_path, monkeypatch):
    def no_installing(*args, **kwargs):
        raise AssertionError("the build tried to install a tool; only `make slide-tools` may")

    monkeypatch.setattr(setup_tools, "apt_install", no_installing)
    monkeypatch.setattr(setup_tools, "npm_ci", no_installing)
    monkeypatch.setenv("PATH", str(tmp_path))  # no node, npm, chromium (nor dpkg-query) to be found
    monkeypatch.delenv("CHROME_PATH", raising=False)
    with pytest.raises(build.BuildError) as caught:
        build.build(tmp_path / "dist", pdf=True)
    message = str(caught.value)
    assert "\n" not in message and message.endswith("run `make slide-tools` (it installs them), then try again.")
    assert "Chromium" in message and "node" in message


def test_html_only_build_does_not_ask_for_chromium(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CHROME_PATH", raising=False)
    assert any("Chromium" in m.what for m in setup_tools.problems(chromium=True))
    assert not any("Chromium" in m.what for m in setup_tools.problems(chromium=False))


@pytest.fixture
def fake_slides(tmp_path, monkeypatch):
    """setup_tools pointed at a scratch slides folder with its own package-lock.json."""
    folder = tmp_path / "slides"
    folder.mkdir()
    (folder / "package-lock.json").write_text('{"lockfileVersion": 3}')
    modules = folder / "node_modules"
    for name, value in (("SLIDES", folder), ("NODE_MODULES", modules), ("MARP", modules / ".bin" / "marp"),
                        ("PACKAGE_LOCK", folder / "package-lock.json"),
                        ("STAMP", modules / ".lab-package-lock.sha256")):
        monkeypatch.setattr(setup_tools, name, value)
    return folder


def _fake_npm(bin_dir: Path, script: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "npm").write_text("#!/bin/sh\n" + script)
    (bin_dir / "npm").chmod(0o755)


def test_npm_ci_stamps_only_a_finished_install_of_the_current_lock(fake_slides, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    _fake_npm(tmp_path / "bin", "mkdir -p node_modules/.bin && touch node_modules/.bin/marp && exit 1\n")
    with pytest.raises(setup_tools.ToolsMissing, match="npm could not install Marp CLI"):
        setup_tools.npm_ci()
    assert not setup_tools.marp_installed()  # the binary is there, but npm failed: not done

    _fake_npm(tmp_path / "bin", "mkdir -p node_modules/.bin && touch node_modules/.bin/marp\n")
    setup_tools.npm_ci()
    assert setup_tools.marp_installed()

    (fake_slides / "package-lock.json").write_text('{"lockfileVersion": 3, "packages": {}}')
    assert not setup_tools.marp_installed()  # a new lock file makes the old install stale


def test_install_installs_only_what_is_missing(monkeypatch):
    chromium = setup_tools.Missing("Chromium", ("chromium",))
    reports = iter([[chromium], [chromium], []])
    calls = []
    monkeypatch.setattr(setup_tools, "problems", lambda chromium=True: next(reports))
    monkeypatch.setattr(setup_tools, "marp_installed", lambda: True)
    monkeypatch.setattr(setup_tools, "apt_install", lambda packages: calls.append(("apt", packages)))
    monkeypatch.setattr(setup_tools, "npm_ci", lambda: calls.append(("npm",)))
    setup_tools.install()
    assert calls == [("apt", ["chromium"])]


def test_installing_without_root_gives_the_command_to_run(monkeypatch):
    monkeypatch.setattr(setup_tools.os, "geteuid", lambda: 1000)
    with pytest.raises(setup_tools.ToolsMissing, match=r"run `sudo apt-get install -y chromium fonts-liberation`"):
        setup_tools.apt_install(["chromium", "fonts-liberation"])


@pytest.mark.slide_tools
def test_setup_has_installed_every_tool_and_rerunning_it_is_quiet_and_fast():
    script = str(SLIDES / "setup_tools.py")
    check = subprocess.run([sys.executable, script, "--check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr  # `make slide-tools` must have installed everything the slides need
    started = time.perf_counter()
    again = subprocess.run([sys.executable, script], capture_output=True, text=True)
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")
    assert time.perf_counter() - started < 10


# ------------------------------------------------------------------------------------ blank-slide detection
def _png(draw=None, colour=(255, 255, 255)) -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (1280, 720), colour)
    if draw:
        draw(ImageDraw.Draw(image))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_ink_fraction_separates_blank_from_content():
    assert browser.ink_fraction(_png()) < browser.MIN_INK
    assert browser.ink_fraction(_png(colour=(30, 60, 90))) < browser.MIN_INK  # flat colour is blank too
    footer_only = _png(lambda d: d.rectangle([40, 680, 600, 700], fill="black"))
    assert browser.ink_fraction(footer_only) < browser.MIN_INK  # the footer band does not count
    title_and_bullets = _png(lambda d: [d.rectangle([60, 50 + 60 * i, 900, 80 + 60 * i], fill=(30, 30, 30))
                                        for i in range(4)])
    assert browser.ink_fraction(title_and_bullets) > browser.MIN_INK


def test_pdf_stats_counts_pages(tmp_path):
    from PIL import Image

    path = tmp_path / "three.pdf"
    pages = [Image.new("RGB", (64, 36), c) for c in ("red", "green", "blue")]
    pages[0].save(path, save_all=True, append_images=pages[1:])
    assert build.pdf_stats(path) == (3, 0)


def _object_stream_pdf(pages: int, notes_per_page: int, links_per_page: int) -> bytes:
    """A PDF 1.5 laid out as Marp's (pdf-lib's) are: every object in one deflated object stream, an xref stream.

    The object stream's deflated bytes are made to end in a carriage return, as in a real Marp build of deck 09:
    a regular expression that takes `\\r\\n` before `endstream` as the line end cuts that byte off, the stream
    no longer inflates, and its pages go uncounted (0 pages for 8 slides).
    """
    import zlib

    for pad in range(5000):
        objects, kids = ["<< /Type /Catalog /Pages 2 0 R /Pad (" + "x" * pad + ") >>", None], []
        for _ in range(pages):
            page_number = len(objects) + 1
            kids.append(page_number)
            objects.append(None)
            annots = []
            for i in range(notes_per_page + links_per_page):
                annots.append(len(objects) + 1)
                kind = "/Text /Contents (what to say)" if i < notes_per_page else "/Link /Border [0 0 0]"
                objects.append(f"<< /Type /Annot /Subtype {kind} /Rect [0 0 10 10] /P {page_number} 0 R >>")
            refs = " ".join(f"{n} 0 R" for n in annots)
            objects[page_number - 1] = (f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 1280 720] "
                                        f"/Resources << >> /Annots [{refs}] >>")
        objects[1] = f"<< /Type /Pages /Kids [{' '.join(f'{k} 0 R' for k in kids)}] /Count {pages} >>"
        bodies, offsets, at = [], [], 0
        for body in objects:
            offsets.append(at)
            bodies.append(body.encode() + b"\n")
            at += len(bodies[-1])
        header = " ".join(f"{n} {o}" for n, o in enumerate(offsets, start=1)).encode() + b"\n"
        packed = zlib.compress(header + b"".join(bodies), 9)
        if packed.endswith(b"\r"):
            break
    else:
        raise AssertionError("no padding made the deflated stream end in \\r")
    stream_number, xref_number = len(objects) + 1, len(objects) + 2
    out = bytearray(b"%PDF-1.5\n%\xe2\xe3\xcf\xd3\n")
    stream_at = len(out)
    out += (f"{stream_number} 0 obj\n<< /Type /ObjStm /N {len(objects)} /First {len(header)} /Filter /FlateDecode "
            f"/Length {len(packed)} >>\nstream\n").encode() + packed + b"\nendstream\nendobj\n"
    xref_at = len(out)
    rows = [bytes([0, 0, 0, 0, 0, 0xFF, 0xFF])]
    rows += [bytes([2]) + stream_number.to_bytes(4, "big") + i.to_bytes(2, "big") for i in range(len(objects))]
    rows += [bytes([1]) + stream_at.to_bytes(4, "big") + bytes(2), bytes([1]) + xref_at.to_bytes(4, "big") + bytes(2)]
    table = b"".join(rows)
    out += (f"{xref_number} 0 obj\n<< /Type /XRef /Size {xref_number + 1} /W [1 4 2] /Root 1 0 R "
            f"/Length {len(table)} >>\nstream\n").encode() + table + b"\nendstream\nendobj\n"
    out += f"startxref\n{xref_at}\n%%EOF\n".encode()
    return bytes(out)


def test_pdf_stats_reads_pages_and_notes_inside_compressed_object_streams(tmp_path):
    path = tmp_path / "deck.pdf"
    path.write_bytes(_object_stream_pdf(pages=8, notes_per_page=1, links_per_page=2))
    assert b"/Type /Page " not in path.read_bytes()  # the pages exist only inside the deflated stream
    assert build.pdf_stats(path) == (8, 8)  # links are annotations too, but not speaker notes
    path.write_bytes(_object_stream_pdf(pages=3, notes_per_page=0, links_per_page=1))
    assert build.pdf_stats(path) == (3, 0)


def test_pdf_stats_refuses_a_file_that_is_not_a_pdf(tmp_path):
    path = tmp_path / "broken.pdf"
    path.write_bytes(b"<!doctype html><title>not a pdf</title>")
    with pytest.raises(build.BuildError, match="broken.pdf is not a readable PDF"):
        build.pdf_stats(path)


# ------------------------------------------------------------------------------------------ build + browser
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The full build (HTML + PDF) into a temporary folder."""
    return build.build(tmp_path_factory.mktemp("slides") / "dist", pdf=True)


@pytest.mark.slow
def test_build_writes_offline_html_and_pdf_for_every_deck(built):
    decks = [build.parse_deck(p) for p in build.deck_files()]
    assert [p.stem for p in built.html] == [d.path.stem for d in decks]
    assert [p.stem for p in built.pdf] == [d.path.stem for d in decks]
    for deck, html, pdf in zip(decks, built.html, built.pdf, strict=True):
        text = html.read_text(encoding="utf-8")
        assert build.external_references(text) == [], f"{html.name} fetches from the network"
        assert "figures/" not in re.sub(r"data:[^\"')]+", "", text), f"{html.name} links a figure file"
        assert text.count('class="bespoke-marp-note"') == len(deck.slides)  # speaker notes in the HTML
        pages, notes = build.pdf_stats(pdf)
        assert pages == len(deck.slides)
        assert notes == len(deck.slides)  # --pdf-notes: one note annotation per slide
    index = (built.out / "index.html").read_text(encoding="utf-8")
    assert all(f'href="html/{d.path.stem}.html"' in index for d in decks)
    figures = json.loads((built.out / "figures.json").read_text())
    assert {"pipeline", "lstm_cell", "attention", "beam_step4", "augment_photo", "synthetic_samples"} <= set(
        figures["made"])
    assert set(figures["placeholders"]) <= {"train_pipeline", "vocab_counts", "encoder_top5", "training_curves",
                                            "attention_maps"}


@pytest.mark.slow
def test_every_slide_renders_in_headless_chromium(built):
    problems, seen = [], 0
    with browser.Chromium() as chrome:
        for html in built.html:
            slides = browser.check_deck(chrome, html)
            assert slides, f"{html.name}: no slides found"
            for slide in slides:
                seen += 1
                problems += build.slide_problems(slide)  # includes any text or figure label under 20 px, named
                assert slide.png[:8] == b"\x89PNG\r\n\x1a\n"
    assert seen == sum(len(build.parse_deck(p).slides) for p in build.deck_files())
    assert problems == [], "\n".join(problems)


@pytest.mark.slow
def test_render_check_catches_blank_slides_and_broken_images(tmp_path):
    decks = tmp_path / "decks"
    decks.mkdir()
    (decks / "00_bad.md").write_text(
        "---\nmarp: true\ntheme: lab\n---\n\n# A real slide\n\n- with a bullet\n- and another one\n\n"
        "<!-- notes -->\n\n---\n\n<!-- an empty slide -->\n\n---\n\n# Missing figure\n\n"
        "![w:600](figures/does_not_exist.png)\n\n<!-- notes -->\n", encoding="utf-8")
    build.require_tools(pdf=True)
    build.marp(["--input-dir", str(decks), "--output", str(tmp_path / "html")])
    with browser.Chromium() as chrome:
        slides = browser.check_deck(chrome, tmp_path / "html" / "00_bad.html")
    assert [s.blank for s in slides] == [False, True, False]
    assert slides[2].broken_images and not slides[0].broken_images


# ------------------------------------------------------------------------------------ agenda: a 2-hour plan
def _agenda_rows() -> list[tuple[int, str]]:
    """(planned minutes, notebook cell) of each row of the agenda table in deck 00."""
    text = (SLIDES / "decks" / "00_agenda.md").read_text(encoding="utf-8")
    return [(int(minutes), what.strip()) for minutes, what in re.findall(r"^\| (\d+) \| ([^|]+)\|", text, re.M)]


def test_the_agenda_plans_two_hours_covers_every_notebook_and_names_homework():
    rows = _agenda_rows()
    assert sum(minutes for minutes, _ in rows) == 120
    planned = [what.strip("`") for _, what in rows if what.startswith("`")]
    assert planned == build.lab_notebooks()  # every notebook once, in order
    assert "break" in [what for _, what in rows]
    text = (SLIDES / "decks" / "00_agenda.md").read_text(encoding="utf-8")
    assert "Optional and homework" in text and "not a measurement" in text
    keys = set(build.RUN_TIME_RE.findall(text))
    assert keys == set(planned) | {"source"}  # each notebook's run time comes from the record, none typed
    if build.NOTEBOOK_TIMES.is_file():  # a slot shorter than the notebook takes to run is not a plan
        seconds = json.loads(build.NOTEBOOK_TIMES.read_text())["seconds"]
        slots = {what.strip("`"): minutes for minutes, what in rows}
        assert all(seconds[name] <= 60 * slots[name] for name in planned), (seconds, slots)


def test_run_times_are_filled_from_the_recorded_run_and_never_invented(tmp_path):
    record = tmp_path / "notebook_times.json"
    text = "| {{run:00_setup}} | {{run:07_training}} | {{run:99_none}} |\n{{run:source}}"
    empty = build.fill_run_times(text, record)
    assert empty.startswith("| – | – | – |") and "not recorded yet" in empty  # no record, no number
    record.write_text(json.dumps({"conditions": "quick profile, 2 CPU cores, 2026-11-29",
                                  "seconds": {"00_setup": 12.4, "07_training": 143.0}}))
    filled = build.fill_run_times(text, record)
    assert filled.startswith("| 12 s | 2.4 min | – |")
    assert filled.endswith("measured execution time, quick profile, 2 CPU cores, 2026-11-29")


def _runner_summary(names, status="ok") -> str:
    rows = "".join(f"  {name:<24}{status:<8}{10.0 + i:>7.1f}s\n" for i, name in enumerate(names))
    return (f"Lab run on the 'quick' profile — {len(names)}/{len(names)} notebooks ran in 2.0 min\n\n"
            f"  {'notebook':<24}{'status':<8}{'time':>8}\n{rows}\n  key numbers\n  07_training  x  1\n")


def test_recording_run_times_takes_only_a_complete_successful_run(tmp_path):
    names = build.lab_notebooks()
    summary, out = tmp_path / "summary.txt", tmp_path / "times.json"
    summary.write_text(_runner_summary(names[:-1]))  # one notebook missing: a partial run
    with pytest.raises(build.BuildError, match="not the summary of a complete, successful `make run`"):
        build.record_notebook_times(summary, out)
    summary.write_text(_runner_summary(names, status="FAILED"))
    with pytest.raises(build.BuildError):
        build.record_notebook_times(summary, out)
    assert not out.exists()
    summary.write_text(_runner_summary(names))
    record = build.record_notebook_times(summary, out)
    assert json.loads(out.read_text()) == record
    assert list(record["seconds"]) == names and record["seconds"][names[1]] == 11.0
    assert record["conditions"].startswith("quick profile, ")


# ------------------------------------------------------------------------------------ text size: 20 px or more
def test_a_figure_records_its_smallest_drawn_label_in_png_pixels(tmp_path):
    import diagrams
    import matplotlib.pyplot as plt
    from PIL import Image

    fig, ax = diagrams._canvas(4, 2)
    ax.text(1, 1, "big", fontsize=20)
    ax.text(2, 1, "small", fontsize=9)
    ax.text(3, 1, "hidden", fontsize=4).set_visible(False)
    ax.text(3, 1.5, "   ", fontsize=3)
    diagrams._save(fig, tmp_path / "labels.png")
    info = Image.open(tmp_path / "labels.png").info
    assert info["Figure"] == "labels"
    assert float(info[diagrams.MIN_TEXT_KEY]) == pytest.approx(9 * diagrams.DPI / 72, abs=0.01)

    fig, ax = plt.subplots(figsize=(4, 2))  # tick labels count once drawn, but not on an axis turned off
    ax.plot([0, 1])
    ax.tick_params(labelsize=7)
    assert float(diagrams.text_size_metadata(fig, 100, "ticks")["MinTextPx"]) == pytest.approx(7 * 100 / 72, abs=0.01)
    ax.axis("off")
    ax.set_title("title", fontsize=15)
    assert float(diagrams.text_size_metadata(fig, 100, "off")["MinTextPx"]) == pytest.approx(15 * 100 / 72, abs=0.01)
    plt.close(fig)


@pytest.mark.slow
def test_render_check_names_every_text_and_figure_under_20px(tmp_path):
    import diagrams
    from PIL import Image

    decks = tmp_path / "decks"
    (decks / "figures").mkdir(parents=True)
    fig, ax = diagrams._canvas(6, 2)
    ax.text(1, 1, "tiny figure label", fontsize=8)
    diagrams._save(fig, decks / "figures" / "tiny.png")
    Image.new("RGB", (600, 200), "white").save(decks / "figures" / "plain.png")  # no size record
    (decks / "00_sizes.md").write_text(
        "---\nmarp: true\ntheme: lab\npaginate: true\nfooter: \"a footer line\"\n---\n\n# Big enough\n\n"
        "- a normal bullet with `code` in it\n\n| a | table |\n|---|---|\n| `x` | y |\n\n<!-- notes -->\n\n---\n\n"
        "<style scoped>footer { font-size: 12px; } section::after { font-size: 11px; }</style>\n\n# Too small\n\n"
        "<span style=\"font-size: 14px\">tiny label</span>\n\n![w:600](figures/tiny.png)\n\n"
        "![w:300](figures/plain.png)\n\n<!-- notes -->\n", encoding="utf-8")
    build.require_tools(pdf=True)
    build.marp(["--input-dir", str(decks), "--output", str(tmp_path / "html")])
    html = tmp_path / "html" / "00_sizes.html"
    build.inline_images(html, decks)
    with browser.Chromium() as chrome:
        fine, small = browser.check_deck(chrome, html)
    assert fine.small_text == []  # the theme's text, code, tables, footer and page number are all 20 px or more
    found = {s["what"]: s["px"] for s in small.small_text}
    assert found.pop("tiny label") == 14
    assert found.pop("a footer line") == 12
    assert found.pop("page number") == 11
    tiny_px = 8 * diagrams.DPI / 72 * 600 / Image.open(decks / "figures" / "tiny.png").width
    assert found.pop("figure tiny: smallest label") == pytest.approx(tiny_px, abs=0.1)
    (unrecorded, px), = found.items()  # the PNG that was not drawn by slides/diagrams.py: it cannot be checked
    assert "no MinTextPx record" in unrecorded and px == 0
    problems = build.slide_problems(small)
    assert any("00_sizes.html slide 2: 'tiny label' is 14" in p for p in problems)
