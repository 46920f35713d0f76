"""The instructor decks (slides/): they stay in step with the notebooks, build offline to HTML and PDF, and every
slide renders non-blank at 1280x720 in headless Chromium.

The deck/notebook and speaker-note checks are fast. The build and browser tests are marked slow: the build draws
every figure (torch, the pretrained encoder), runs Marp for HTML and PDF, and the render test screenshots ~100
slides, about 2-3 minutes in all on 2 cores.
"""

from __future__ import annotations

import importlib.util
import io
import json
import re
import sys
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


def test_missing_chromium_without_root_gives_the_command_to_run(monkeypatch):
    monkeypatch.setattr(build, "_is_root", lambda: False)
    with pytest.raises(build.BuildError, match=r"sudo apt-get install -y chromium"):
        build.apt_install(["chromium", "fonts-liberation"], "Chromium (for PDF export)")


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
                problems += build.slide_problems(slide)
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
    build.ensure_marp()
    build.ensure_chromium()
    build.marp(["--input-dir", str(decks), "--output", str(tmp_path / "html")])
    with browser.Chromium() as chrome:
        slides = browser.check_deck(chrome, tmp_path / "html" / "00_bad.html")
    assert [s.blank for s in slides] == [False, True, False]
    assert slides[2].broken_images and not slides[0].broken_images
