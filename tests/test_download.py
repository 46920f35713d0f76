"""Offline tests of the online path: a loopback HTTP server with programmable faults serves files made here.

Covers labutils.infra.download (resume, retry, verify, atomic, idempotent, zip safety, several sources, parallel subset
fetch) and labutils.infra.mscoco.prepare_mscoco end to end against that server.
"""

import hashlib
import io
import json
import shutil
import time
import types
import zipfile
from pathlib import Path

import pytest
from loopback import LabServer, closed_port_url
from PIL import Image

from labutils import coco, get_config
from labutils.infra import download as dl
from labutils.infra import mscoco, resize
from labutils.infra.files import DiskFullError

FAST = {"backoff": 0.01, "progress": False}  # tiny back-off keeps the retry tests quick


@pytest.fixture
def web():
    """A LabServer (tests/loopback.py) on 127.0.0.1 for one test."""
    server = LabServer().start()
    yield server
    server.stop()


def payload(n: int, seed: int = 0) -> bytes:
    """Deterministic incompressible-looking bytes."""
    out, block = bytearray(), hashlib.sha256(str(seed).encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:n])


def jpeg_bytes(color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 12), color).save(buf, format="JPEG")
    return buf.getvalue()


def zip_bytes(files: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, content in files.items():
            zf.writestr(name, content)
    return buf.getvalue()


def leftovers(folder: Path) -> list[str]:
    """Every file under `folder` (relative paths), hidden ones included."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def one_sentence(message: str) -> bool:
    return message.endswith(".") and ". " not in message and "\n" not in message


# ---------------------------------------------------------------------------------------------------------------
# download()


def test_clean_download_verifies_checksums_and_keeps_a_record(web, tmp_path):
    data = payload(300_000)
    web.files["/zips/a.zip"] = data
    dest = tmp_path / "dl" / "a.zip"
    out = dl.download(f"{web.url}/zips/a.zip", dest, sha256=hashlib.sha256(data).hexdigest(), size=len(data),
                      md5=hashlib.md5(data).hexdigest(), chunk=65536, **FAST)
    assert out == dest and dest.read_bytes() == data
    assert leftovers(tmp_path / "dl") == ["a.zip", "a.zip.download.json"]  # no .part, no resume metadata
    record = json.loads(dl.record_path(dest).read_text())
    assert record["sha256"] == hashlib.sha256(data).hexdigest() and record["size"] == len(data)
    assert len(web.gets()) == 1


def test_second_run_makes_no_request_and_a_changed_file_is_fetched_again(web, tmp_path, monkeypatch):
    data = payload(50_000)
    web.files["/f.bin"] = data
    dest = tmp_path / "f.bin"
    digest = hashlib.sha256(data).hexdigest()
    dl.download(f"{web.url}/f.bin", dest, sha256=digest, **FAST)
    assert len(web.requests) == 1
    hashed = []
    monkeypatch.setattr(dl, "_hash_file", lambda *a, **k: hashed.append(a) or {})
    assert dl.download(f"{web.url}/f.bin", dest, sha256=digest, **FAST) == dest
    assert len(web.requests) == 1 and hashed == []  # no network, and the record spared rehashing
    monkeypatch.undo()
    dest.write_bytes(b"x" * len(data))  # damaged in place: same size, new mtime, so the record is stale
    dl.download(f"{web.url}/f.bin", dest, sha256=digest, **FAST)
    assert dest.read_bytes() == data and len(web.gets()) == 2


def test_checksum_mismatch_raises_and_leaves_nothing(web, tmp_path):
    web.files["/a.zip"] = payload(40_000)
    dest = tmp_path / "dl" / "a.zip"
    with pytest.raises(dl.ChecksumError) as err:
        dl.download(f"{web.url}/a.zip", dest, sha256="0" * 64, **FAST)
    assert one_sentence(str(err.value)) and "wrong SHA256" in str(err.value) and "deleted" in str(err.value)
    assert isinstance(err.value, coco.DatasetUnavailableError)  # callers of prepare_mscoco catch one family
    assert leftovers(tmp_path / "dl") == []
    with pytest.raises(dl.ChecksumError, match="should be"):  # the server announces another size: no body read
        dl.download(f"{web.url}/a.zip", dest, size=123, **FAST)
    assert leftovers(tmp_path / "dl") == []


def test_cut_off_transfer_resumes_with_range(web, tmp_path):
    data = payload(200_000, seed=1)
    web.files["/big.zip"] = data
    web.faults["/big.zip"] = ["cut:70000"]
    dest = tmp_path / "big.zip"
    dl.download(f"{web.url}/big.zip", dest, sha256=hashlib.sha256(data).hexdigest(), size=len(data),
                chunk=16384, **FAST)
    assert dest.read_bytes() == data
    gets = web.gets("/big.zip")
    assert [g[2] for g in gets] == [None, "bytes=70000-"]  # the second request resumed where the first stopped
    assert leftovers(tmp_path) == ["big.zip", "big.zip.download.json"]


def test_interrupted_run_is_resumed_by_the_next_call(web, tmp_path):
    data = payload(120_000, seed=2)
    web.files["/z.zip"] = data
    web.faults["/z.zip"] = ["cut:50000", "500", "500"]
    dest = tmp_path / "z.zip"
    with pytest.raises(dl.DownloadError) as err:  # cut, then the server fails until this call gives up
        dl.download(f"{web.url}/z.zip", dest, retries=1, **FAST)
    assert one_sentence(str(err.value)) and "run the same call again to resume" in str(err.value)
    assert not dest.exists() and dl.part_path(dest).stat().st_size == 50_000  # kept, but not under the final name
    dl.download(f"{web.url}/z.zip", dest, **FAST)  # a new session: picks up the .part
    assert dest.read_bytes() == data and web.gets("/z.zip")[-1][2] == "bytes=50000-"
    assert not dl.part_path(dest).exists()


def test_server_that_ignores_range_restarts_from_zero(web, tmp_path):
    data = payload(90_000, seed=3)
    web.files["/n.zip"] = data
    web.faults["/n.zip"] = ["cut:30000"]
    web.ignore_range.add("/n.zip")
    dest = tmp_path / "n.zip"
    dl.download(f"{web.url}/n.zip", dest, md5=hashlib.md5(data).hexdigest(), **FAST)
    assert dest.read_bytes() == data  # the 200 answer replaced the partial bytes instead of being appended
    assert [g[2] for g in web.gets("/n.zip")] == [None, "bytes=30000-"]


def test_server_error_then_ok_is_retried(web, tmp_path):
    data = payload(10_000)
    web.files["/r.bin"] = data
    web.faults["/r.bin"] = ["500", "503:ra"]
    dest = dl.download(f"{web.url}/r.bin", tmp_path / "r.bin", **FAST)
    assert dest.read_bytes() == data and len(web.gets("/r.bin")) == 3


def test_persistent_server_error_gives_one_clear_sentence(web, tmp_path):
    web.files["/p.bin"] = payload(1000)
    web.faults["/p.bin"] = ["500"] * 10
    started = time.perf_counter()
    with pytest.raises(dl.DownloadError) as err:
        dl.download(f"{web.url}/p.bin", tmp_path / "p.bin", retries=2, **FAST)
    message = str(err.value)
    assert one_sentence(message) and "after 3 attempts" in message and "500" in message
    assert len(web.gets("/p.bin")) == 3 and time.perf_counter() - started < 2
    assert leftovers(tmp_path) == []


def test_missing_file_is_not_retried(web, tmp_path):
    with pytest.raises(dl.DownloadError) as err:
        dl.download(f"{web.url}/gone.zip", tmp_path / "gone.zip", **FAST)
    assert one_sentence(str(err.value)) and "404" in str(err.value) and "Could not download" in str(err.value)
    assert len(web.gets()) == 1 and leftovers(tmp_path) == []


def test_no_network_raises_network_unavailable_with_one_sentence(tmp_path):
    started = time.perf_counter()
    with pytest.raises(dl.NetworkUnavailableError) as err:
        dl.download(f"{closed_port_url()}/zips/train2014.zip", tmp_path / "t.zip", **FAST)
    message = str(err.value)
    assert one_sentence(message) and message.startswith("Cannot reach 127.0.0.1:")
    assert "LAB_PROFILE=quick" in message and "refused" in message
    assert isinstance(err.value, ConnectionError) and isinstance(err.value, coco.DatasetUnavailableError)
    assert time.perf_counter() - started < 1  # no back-off wasted on a room without internet
    assert leftovers(tmp_path) == []


def test_disk_space_is_checked_before_starting(web, tmp_path, monkeypatch):
    data = payload(5000)
    web.files["/d.zip"] = data
    usage = type("Usage", (), {"free": 1000, "total": 10**9, "used": 0})
    monkeypatch.setattr(dl.shutil, "disk_usage", lambda path: usage)
    with pytest.raises(dl.InsufficientDiskSpaceError) as err:  # expected size known: no request at all
        dl.download(f"{web.url}/d.zip", tmp_path / "d.zip", size=13_510_573_713, **FAST)
    message = str(err.value)
    assert one_sentence(message) and "13.5 GB" in message and "LAB_DATA_DIR" in message and "free up" in message
    assert web.requests == []
    with pytest.raises(dl.InsufficientDiskSpaceError):  # size from Content-Length: stops before the body
        dl.download(f"{web.url}/d.zip", tmp_path / "d.zip", **FAST)
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------------------------
# download(): never a wrong file published as complete, checksum or not (issue 10)

PORTAL = (b"<!DOCTYPE html>\n<html><head><title>Welcome to CafeNet</title></head><body><form action=/login>"
          b"Accept the terms to use the Wi-Fi</form></body></html>\n")


def test_html_page_where_json_is_expected_is_refused_and_the_next_run_fetches_the_file(web, tmp_path):
    web.files["/dataset_coco.json"] = PORTAL
    web.content_type["/dataset_coco.json"] = "text/html; charset=utf-8"
    dest = tmp_path / "dataset_coco.json"
    with pytest.raises(dl.WrongContentError) as err:  # refused by its header
        dl.download(f"{web.url}/dataset_coco.json", dest, expect="json", **FAST)
    message = str(err.value)
    assert one_sentence(message) and "answered with an HTML page" in message and "Content-Type text/html" in message
    assert "instead of a JSON file" in message and "nothing was saved" in message
    assert isinstance(err.value, coco.DatasetUnavailableError) and leftovers(tmp_path) == []
    assert len(web.gets()) == 1  # a portal will not change its mind within a second: not retried
    web.content_type["/dataset_coco.json"] = "application/octet-stream"  # the same page under a neutral type
    with pytest.raises(dl.WrongContentError, match=r"dataset_coco.json from .* is an HTML page \(a Wi-Fi login"):
        dl.download(f"{web.url}/dataset_coco.json", dest, expect="json", **FAST)
    assert leftovers(tmp_path) == []  # refused by its content, and removed
    web.files["/dataset_coco.json"] = b'{"images": [{"split": "tr'  # cut short on the server: does not parse
    with pytest.raises(dl.WrongContentError, match="is not valid JSON"):
        dl.download(f"{web.url}/dataset_coco.json", dest, expect="json", **FAST)
    assert leftovers(tmp_path) == []
    good = json.dumps({"images": [{"split": "train"}], "dataset": "coco"}).encode()
    web.files["/dataset_coco.json"], web.content_type["/dataset_coco.json"] = good, "text/plain; charset=utf-8"
    assert dl.download(f"{web.url}/dataset_coco.json", dest, expect="json", **FAST).read_bytes() == good


def test_html_page_or_another_type_where_a_zip_is_expected_is_refused(web, tmp_path):
    archive = zip_bytes(ANNOTATIONS)
    url = f"{web.url}/annotations/annotations_trainval2014.zip"
    dest = tmp_path / "annotations_trainval2014.zip"
    cases = [(PORTAL, "text/html", "answered with an HTML page"),
             (archive, "image/jpeg", "answered with Content-Type image/jpeg instead of a zip archive"),
             (PORTAL, None, "is an HTML page"),
             (payload(5000), None, "is not a zip archive"),
             (archive[:-30], "application/zip", "is a zip archive cut short or damaged")]
    for body, ctype, expected in cases:
        web.files["/annotations/annotations_trainval2014.zip"] = body
        web.content_type.pop("/annotations/annotations_trainval2014.zip", None)
        if ctype:
            web.content_type["/annotations/annotations_trainval2014.zip"] = ctype
        with pytest.raises(dl.WrongContentError) as err:
            dl.download(url, dest, expect="zip", **FAST)
        assert expected in str(err.value) and one_sentence(str(err.value)), (ctype, str(err.value))
        assert leftovers(tmp_path) == []
    web.files["/annotations/annotations_trainval2014.zip"] = archive
    assert dl.download(url, dest, expect="zip", **FAST).read_bytes() == archive


def test_a_wrong_file_already_at_the_destination_is_fetched_again(web, tmp_path, capsys):
    archive = zip_bytes(ANNOTATIONS)
    web.files["/a.zip"] = archive
    dest = tmp_path / "a.zip"
    dest.write_bytes(PORTAL)  # what an older downloader saved from a captive portal
    assert dl.download(f"{web.url}/a.zip", dest, expect="zip", **FAST).read_bytes() == archive
    assert "a.zip is an HTML page" in capsys.readouterr().out and len(web.gets()) == 1
    dl.download(f"{web.url}/a.zip", dest, expect="zip", **FAST)
    assert len(web.gets()) == 1  # a good one is kept without a request


def test_gzip_encoded_body_is_decoded_and_a_cut_one_restarts(web, tmp_path):
    data = json.dumps({"images": [{"cocoid": i, "split": "train"} for i in range(3000)]}).encode()
    web.files["/d.json"] = data
    web.encoding["/d.json"] = "gzip"  # sent although the client asked for identity (a proxy, a CDN)
    digest = hashlib.sha256(data).hexdigest()  # of the file, not of its compressed form
    dest = dl.download(f"{web.url}/d.json", tmp_path / "d.json", sha256=digest, **FAST)
    assert dest.read_bytes() == data
    web.faults["/d.json"] = ["cut:700"]
    again = dl.download(f"{web.url}/d.json", tmp_path / "e.json", expect="json", **FAST)
    assert again.read_bytes() == data
    assert [g[2] for g in web.gets("/d.json")][1:] == [None, None]  # decoded bytes are never resumed by Range
    assert leftovers(tmp_path) == ["d.json", "d.json.download.json", "e.json", "e.json.download.json"]
    web.files["/b.json"], web.encoding["/b.json"] = data, "br"
    with pytest.raises(dl.DownloadError) as err:
        dl.download(f"{web.url}/b.json", tmp_path / "b.json", **FAST)
    assert one_sentence(str(err.value)) and "compressed as 'br'" in str(err.value)
    assert not (tmp_path / "b.json").exists() and not dl.part_path(tmp_path / "b.json").exists()


def test_body_of_unknown_length_cut_short_is_never_published(web, tmp_path):
    archive = zip_bytes({f"val2014/{i}.jpg": payload(3000, seed=i) for i in range(4)}, zipfile.ZIP_STORED)
    web.files["/a.zip"], web.framing["/a.zip"] = archive, "close"  # no Content-Length: the end is the hang-up
    web.faults["/a.zip"] = ["cut:5000"]
    with pytest.raises(dl.WrongContentError, match="is a zip archive cut short or damaged"):
        dl.download(f"{web.url}/a.zip", tmp_path / "a.zip", expect="zip", **FAST)
    assert leftovers(tmp_path) == []
    assert dl.download(f"{web.url}/a.zip", tmp_path / "a.zip", expect="zip", **FAST).read_bytes() == archive
    web.faults["/a.zip"] = ["cut:5000"]
    with pytest.raises(dl.ChecksumError, match="wrong SHA256"):  # a checksum also catches it
        dl.download(f"{web.url}/a.zip", tmp_path / "b.zip", sha256=hashlib.sha256(archive).hexdigest(), **FAST)
    web.faults["/a.zip"] = ["cut:5000"]
    with pytest.raises(dl.WrongContentError) as err:  # with neither, it cannot be told from a whole file
        dl.download(f"{web.url}/a.zip", tmp_path / "c.zip", **FAST)
    assert one_sentence(str(err.value)) and "without stating its length" in str(err.value)
    assert leftovers(tmp_path) == ["a.zip", "a.zip.download.json"]


def test_chunked_body_marks_its_end_so_a_cut_one_is_resumed(web, tmp_path):
    data = payload(40_000, seed=4)
    web.files["/c.bin"], web.framing["/c.bin"] = data, "chunked"
    web.faults["/c.bin"] = ["cut:15000"]
    dest = dl.download(f"{web.url}/c.bin", tmp_path / "c.bin", **FAST)
    assert dest.read_bytes() == data  # complete without a checksum or format: chunked framing shows the end
    assert [g[2] for g in web.gets("/c.bin")] == [None, "bytes=15000-"]
    whole = dl.download(f"{web.url}/c.bin", tmp_path / "d.bin", **FAST)  # one answer: no length at all
    assert whole.read_bytes() == data and len(web.gets("/c.bin")) == 3


def test_trickling_server_hits_the_deadline_with_a_sentence(web, tmp_path):
    web.files["/slow.zip"] = payload(200_000)
    web.trickle["/slow.zip"] = (200, 0.02)  # 10 kB/s: never silent long enough for a socket timeout
    dest = tmp_path / "slow.zip"
    started = time.perf_counter()
    with pytest.raises(dl.TooSlowError) as err:
        dl.download(f"{web.url}/slow.zip", dest, deadline=0.5, **FAST)
    assert time.perf_counter() - started < 2
    message = str(err.value)
    assert one_sentence(message) and "not complete within 0.5 s" in message and "too slow" in message
    assert "it resumes from the" in message and not dest.exists()
    assert 0 < dl.part_path(dest).stat().st_size < 200_000  # kept for the next call, never under the final name


def test_deadline_also_bounds_the_waits_between_retries(web, tmp_path):
    web.files["/busy.zip"] = payload(1000)
    web.faults["/busy.zip"] = ["503:ra"] * 20
    started = time.perf_counter()
    with pytest.raises(dl.TooSlowError, match=r"not complete within 0\.4 s"):
        dl.download(f"{web.url}/busy.zip", tmp_path / "busy.zip", retries=6, backoff=0.2, deadline=0.4,
                    progress=False)
    assert time.perf_counter() - started < 1.5 and leftovers(tmp_path) == []


def test_trickling_server_below_the_minimum_rate_gives_up(web, tmp_path):
    web.files["/slow.jpg"] = payload(100_000)
    web.trickle["/slow.jpg"] = (50, 0.05)  # 1 kB/s
    started = time.perf_counter()
    with pytest.raises(dl.TooSlowError) as err:
        dl.download(f"{web.url}/slow.jpg", tmp_path / "slow.jpg", min_rate=5000, rate_window=0.4, record=False,
                    **FAST)
    assert time.perf_counter() - started < 2
    assert one_sentence(str(err.value)) and "below the minimum of 5.0 kB/s" in str(err.value)
    assert leftovers(tmp_path) == []  # record=False: nothing to resume from, so nothing is left


@pytest.mark.parametrize("honor_if_range", [False, True], ids=["server-ignores-If-Range", "server-honours-it"])
def test_file_changed_on_the_server_between_attempts_restarts_from_zero(web, tmp_path, honor_if_range):
    old, new = payload(60_000, seed=5), payload(60_000, seed=6)  # same size: only the ETag tells them apart
    web.honor_if_range = honor_if_range
    web.files["/f.zip"] = old
    web.faults["/f.zip"] = ["cut:20000", "500"]  # the first call gives up with 20,000 bytes in its .part
    dest = tmp_path / "f.zip"
    with pytest.raises(dl.DownloadError, match="run the same call again to resume"):
        dl.download(f"{web.url}/f.zip", dest, retries=0, **FAST)
    old_etag = web.etag("/f.zip")
    web.files["/f.zip"] = new
    dl.download(f"{web.url}/f.zip", dest, **FAST)
    assert dest.read_bytes() == new  # not old[:20000] + new[20000:]
    assert (web.headers[2]["Range"], web.headers[2]["If-Range"]) == ("bytes=20000-", old_etag)
    assert [g[2] for g in web.gets("/f.zip")][2:] == ["bytes=20000-"] + ([] if honor_if_range else [None])


def test_changed_size_without_validators_restarts_from_zero(web, tmp_path):
    web.etags = False  # no ETag, no Last-Modified: the total size is what is left to compare
    old, new = payload(50_000, seed=7), payload(70_000, seed=8)
    web.files["/g.bin"], web.faults["/g.bin"] = old, ["cut:20000", "500"]
    dest = tmp_path / "g.bin"
    with pytest.raises(dl.DownloadError):
        dl.download(f"{web.url}/g.bin", dest, retries=0, **FAST)
    web.files["/g.bin"] = new
    assert dl.download(f"{web.url}/g.bin", dest, **FAST).read_bytes() == new
    assert [g[2] for g in web.gets("/g.bin")][2:] == ["bytes=20000-", None]


def fill_disk(folder: Path, leave: int) -> Path:
    """Write a ballast file so that about `leave` bytes stay free on `folder`'s disk."""
    ballast = folder / "ballast"
    ballast.write_bytes(b"\0" * max(0, shutil.disk_usage(folder).free - leave))
    return ballast


def test_full_disk_on_a_chunked_body_is_one_sentence_and_nothing_looks_complete(web, small_disk, monkeypatch):
    monkeypatch.setattr(dl, "DISK_MARGIN", 0)  # for the resumed answer, whose Content-Range gives the size
    disk = small_disk(1 << 20)
    data = payload(600_000, seed=9)
    web.files["/big.bin"], web.framing["/big.bin"] = data, "chunked"  # no length: nothing to check up front
    ballast = fill_disk(disk, leave=300_000)
    dest = disk / "downloads" / "big.bin"
    with pytest.raises(dl.InsufficientDiskSpaceError) as err:
        dl.download(f"{web.url}/big.bin", dest, chunk=65536, **FAST)
    message = str(err.value)
    assert one_sentence(message) and "filled up while downloading big.bin" in message and "LAB_DATA_DIR" in message
    assert isinstance(err.value, DiskFullError) and isinstance(err.value, coco.DatasetUnavailableError)
    assert not dest.exists() and len(web.gets()) == 1  # not retried: a full disk does not empty itself
    ballast.unlink()  # what the sentence says to do
    assert dl.download(f"{web.url}/big.bin", dest, chunk=65536, **FAST).read_bytes() == data
    assert web.gets()[-1][2] is not None  # resumed, not fetched again


def test_full_disk_with_a_content_length_keeps_only_a_resumable_part(web, small_disk, monkeypatch):
    monkeypatch.setattr(dl, "DISK_MARGIN", 0)  # the safety margin is bigger than this whole disk
    disk = small_disk(1 << 20)
    data = payload(500_000, seed=10)
    web.files["/a.bin"] = data
    dest = disk / "a.bin"
    ballast = []

    def fill_once_the_download_started():  # so the up-front space check passes, as on a disk shared with others
        deadline = time.monotonic() + 5
        while not dl.part_path(dest).exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        ballast.append(fill_disk(disk, leave=100_000))

    web.before_body["/a.bin"] = fill_once_the_download_started
    with pytest.raises(dl.InsufficientDiskSpaceError) as err:
        dl.download(f"{web.url}/a.bin", dest, chunk=16384, **FAST)
    message = str(err.value)
    assert one_sentence(message) and "the whole file is 500.0 kB" in message and "it resumes from" in message
    kept = dl.part_path(dest).stat().st_size
    assert not dest.exists() and 0 < kept < len(data)
    del web.before_body["/a.bin"]
    ballast[0].unlink()
    assert dl.download(f"{web.url}/a.bin", dest, **FAST).read_bytes() == data
    assert [g[2] for g in web.gets()] == [None, f"bytes={kept}-"]  # resumed where the disk filled up


def test_image_that_fails_its_check_is_removed_and_fetched_by_the_next_run(web, tmp_path):
    good = jpeg_bytes()
    cut, portal = "/val2014/COCO_val2014_000000000042.jpg", "/val2014/COCO_val2014_000000000044.jpg"
    web.files[cut], web.framing[cut] = good[: len(good) - 40], "close"  # cut short, and no length to tell
    web.files[portal], web.content_type[portal] = PORTAL, "text/html"
    entries = [(web.url + path, tmp_path / "images" / path.lstrip("/")) for path in (cut, portal)]
    report = dl.fetch_images_by_url(entries, retries=0, progress=False)
    assert report.fetched == 0 and "is a JPEG image cut short or damaged" in report.failed[web.url + cut]
    assert "answered with an HTML page" in report.failed[web.url + portal]
    assert leftovers(tmp_path) == []  # nothing that the next run would skip as already there
    web.files[cut] = web.files[portal] = good
    web.content_type[portal] = "image/jpeg"
    again = dl.fetch_images_by_url(entries, retries=0, progress=False)
    assert again.fetched == 2 and all(dest.read_bytes() == good for _, dest in entries)


def test_expect_is_checked_and_inferred_from_names():
    assert [dl.expected_kind(n) for n in ("a.zip", "http://h/x/dataset_coco.json?x=1", Path("b.JPG"), "c.bin")] \
        == ["zip", "json", "jpeg", None]
    with pytest.raises(ValueError, match="expect='png'"):
        dl.download("http://127.0.0.1:1/x.png", "x.png", expect="png")



# ---------------------------------------------------------------------------------------------------------------
# extract_zip()


ANNOTATIONS = {"annotations/captions_train2014.json": b'{"images": []}',
               "annotations/captions_val2014.json": b'{"images": [], "x": 1}'}


def test_extract_zip_is_atomic_marked_and_idempotent(tmp_path, monkeypatch):
    archive = tmp_path / "downloads" / "annotations_trainval2014.zip"
    archive.parent.mkdir()
    archive.write_bytes(zip_bytes(ANNOTATIONS))
    root = tmp_path / "coco2014"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "captions.json").write_text("{}")  # the lab's own file in the same folder stays
    assert dl.extract_zip(archive, root, progress=False) == root
    assert leftovers(root) == [".annotations_trainval2014.zip.extracted.json", "annotations/captions.json",
                               "annotations/captions_train2014.json", "annotations/captions_val2014.json"]
    assert (root / "annotations" / "captions_val2014.json").read_bytes() == ANNOTATIONS[
        "annotations/captions_val2014.json"]
    monkeypatch.setattr(dl.zipfile, "ZipFile", None)  # a second call must not even open the archive
    dl.extract_zip(archive, root, progress=False)
    archive.unlink()  # and once the archive is gone (deleted after unpacking), the marker still answers
    dl.extract_zip(archive, root, progress=False)


def test_extract_zip_members_by_file_name(tmp_path):
    archive = tmp_path / "caption_datasets.zip"
    archive.write_bytes(zip_bytes({"dataset_coco.json": b"{}", "dataset_flickr8k.json": b"{}"}))
    dl.extract_zip(archive, tmp_path / "out", members=["dataset_coco.json"], progress=False)
    assert leftovers(tmp_path / "out") == [".caption_datasets.zip.extracted.json", "dataset_coco.json"]
    with pytest.raises(dl.CorruptArchiveError, match="does not contain dataset_coco_2.json"):
        dl.extract_zip(archive, tmp_path / "other", members=["dataset_coco_2.json"], progress=False)
    assert archive.exists()  # a wrong archive is not deleted: downloading it again would not help


def test_truncated_zip_is_deleted_and_nothing_is_extracted(tmp_path):
    archive = tmp_path / "train2014.zip"
    full = zip_bytes({f"train2014/COCO_train2014_{i:012d}.jpg": jpeg_bytes() for i in range(5)})
    archive.write_bytes(full[: len(full) // 2])  # the classic half-downloaded zip
    dl.record_path(archive).write_text("{}")
    dest = tmp_path / "images"
    with pytest.raises(dl.CorruptArchiveError) as err:
        dl.extract_zip(archive, dest, progress=False)
    assert one_sentence(str(err.value)) and "was damaged and has been deleted" in str(err.value)
    assert "download it afresh" in str(err.value)
    assert not archive.exists() and not dl.record_path(archive).exists()
    assert not dest.exists() or leftovers(dest) == []


def test_zip_with_bad_crc_leaves_no_partial_member(tmp_path):
    members = {f"val2014/COCO_val2014_{i:012d}.jpg": payload(3000, seed=i) for i in range(3)}
    raw = bytearray(zip_bytes(members, compression=zipfile.ZIP_STORED))
    where = raw.find(members["val2014/COCO_val2014_000000000002.jpg"][:64])
    raw[where + 100] ^= 0xFF  # flip one byte inside the last member's data: its CRC-32 no longer matches
    archive = tmp_path / "val2014.zip"
    archive.write_bytes(bytes(raw))
    dest = tmp_path / "images"
    with pytest.raises(dl.CorruptArchiveError, match="damaged"):
        dl.extract_zip(archive, dest, progress=False)
    assert leftovers(dest) == []  # the two good members were not published either: no half folder
    assert not archive.exists()


# ---------------------------------------------------------------------------------------------------------------
# try_sources() and fetch_images_by_url()


def test_try_sources_takes_the_first_that_delivers(web, tmp_path):
    good = b'{"images": []}'
    web.files["/mirror/dataset_coco.json"] = good
    web.faults["/flaky/dataset_coco.json"] = ["500"] * 5
    sources = [f"{web.url}/gone/caption_datasets.zip",                    # 404: the moved canonical host
               f"{closed_port_url()}/caption_datasets.zip",               # a host that does not answer
               dl.Source(f"{web.url}/flaky/dataset_coco.json", size=14),  # 500s
               dl.Source(f"{web.url}/mirror/dataset_coco.json", sha256=hashlib.sha256(good).hexdigest())]
    got = dl.try_sources(sources, tmp_path, **FAST)
    assert got.url == sources[3].url and got.path.read_bytes() == good
    assert list(got.failures) == [sources[0], sources[1], sources[2].url]
    assert "404" in got.failures[sources[0]] and "Cannot reach" in got.failures[sources[1]]
    before = len(web.requests)
    assert dl.try_sources(sources, tmp_path, **FAST).path == got.path  # already there: no request at all
    assert len(web.requests) == before


def test_try_sources_all_failing_lists_one_sentence_per_source(web, tmp_path):
    urls = [f"{web.url}/a/caption_datasets.zip", f"{closed_port_url()}/b/caption_datasets.zip"]
    with pytest.raises(dl.DownloadError) as err:
        dl.try_sources(urls, tmp_path, **FAST)
    lines = str(err.value).splitlines()
    assert lines[0].startswith("None of the 2 sources of caption_datasets.zip")
    assert len(lines) == 3 and all(one_sentence(line.removeprefix("  - ")) for line in lines[1:])
    assert leftovers(tmp_path) == []


def test_fetch_images_in_parallel_reports_the_failing_url(web, tmp_path):
    web.delay = 0.05  # long enough that parallel requests overlap
    entries = []
    for i in range(12):
        name = f"/train2014/COCO_train2014_{i:012d}.jpg"
        if i != 7:  # one image the server does not have
            web.files[name] = jpeg_bytes((20 * i, 0, 0))
        entries.append((web.url + name, tmp_path / "images" / name.lstrip("/")))
    report = dl.fetch_images_by_url(entries, workers=6, retries=1, backoff=0.01, progress=False)
    assert (report.requested, report.fetched, report.skipped) == (12, 11, 0) and not report.ok
    assert list(report.failed) == [entries[7][0]] and "404" in report.failed[entries[7][0]]
    assert web.max_inflight >= 3  # the fetches really overlapped
    assert all(dest.read_bytes() == web.files[url[len(web.url):]] for url, dest in entries if url in
               {web.url + k for k in web.files})
    assert leftovers(tmp_path / "images") == sorted(p.relative_to(tmp_path / "images").as_posix()
                                                    for _, p in entries if p.exists())  # no .part, no records
    assert "fetched 11 of 12" in str(report) and entries[7][0] in str(report)
    before = len(web.gets())
    again = dl.fetch_images_by_url(entries, workers=6, retries=0, progress=False)
    assert (again.fetched, again.skipped, len(again.failed)) == (0, 11, 1)
    assert len(web.gets()) == before + 1  # only the missing image was asked for again


def test_fetch_images_without_network_stops_the_batch(tmp_path):
    base = closed_port_url()
    entries = [(f"{base}/val2014/{i}.jpg", tmp_path / f"{i}.jpg") for i in range(40)]
    started = time.perf_counter()
    with pytest.raises(dl.NetworkUnavailableError, match="LAB_PROFILE=quick"):
        dl.fetch_images_by_url(entries, workers=4, progress=False)
    assert time.perf_counter() - started < 3 and leftovers(tmp_path) == []


def test_known_sources_carry_the_official_sizes_and_checksums():
    train = dl.known_source(mscoco.TRAIN2014_URL)
    assert (train.size, train.md5) == (13_510_573_713, "0da8c0bd3d6becc4dcb32757491aca88")
    assert dl.human_bytes(dl.known_source(mscoco.VAL2014_URL).size) == "6.6 GB"
    assert dl.known_source(mscoco.ANNOTATIONS2014_URL).size == 252_872_794
    assert dl.known_source("http://127.0.0.1:1/zips/train2014.zip") == dl.Source("http://127.0.0.1:1/zips/train2014.zip")


# ---------------------------------------------------------------------------------------------------------------
# prepare_mscoco() end to end against the loopback server


def coco_like(n_train: int = 30, n_val: int = 20) -> dict[str, dict]:
    """Official-style captions_{train,val}2014 dicts with ids, file names and coco_urls like the real ones."""
    out = {}
    for folder, ids in (("train2014", range(9, 9 + 2 * n_train, 2)), ("val2014", range(42, 42 + 2 * n_val, 2))):
        images = [{"id": i, "file_name": f"COCO_{folder}_{i:012d}.jpg", "width": 16, "height": 12,
                   "coco_url": f"http://images.cocodataset.org/{folder}/COCO_{folder}_{i:012d}.jpg"} for i in ids]
        anns = [{"id": 10 * i + j + (0 if folder == "train2014" else 5), "image_id": i,
                 "caption": f"A {folder[:-4]} photo number {i}, caption {j}."} for i in ids for j in range(2)]
        out[folder] = {"info": {"year": 2014}, "licenses": [], "images": images, "annotations": anns}
    return out


def karpathy_dataset(data: dict[str, dict], n_val: int = 5, n_test: int = 5) -> bytes:
    images = []
    for folder in ("train2014", "val2014"):
        for k, img in enumerate(data[folder]["images"]):
            split = "train" if folder == "train2014" else "val" if k < n_val else "test" if k < n_val + n_test \
                else "restval"
            images.append({"filepath": folder, "filename": img["file_name"], "cocoid": img["id"], "split": split,
                           "sentences": [{"raw": "a photo", "tokens": ["a", "photo"]}]})
    return json.dumps({"images": images, "dataset": "coco"}).encode()


def publish_coco(web: LabServer, data: dict[str, dict], image_zips: bool = False, year: int = 2014) -> None:
    """Serve the year's annotation zip, every image by its coco_url path and (optionally) the two image zips."""
    folders = (f"train{year}", f"val{year}")
    web.files[f"/annotations/annotations_trainval{year}.zip"] = zip_bytes(
        {f"annotations/captions_{f}.json": json.dumps(data[f]).encode() for f in folders})
    tint = {2014: (90, 160), 2017: (40, 200)}[year]  # the two releases' test images differ in colour
    for folder in folders:
        members = {}
        for k, img in enumerate(data[folder]["images"]):
            web.files[f"/{folder}/{img['file_name']}"] = members[f"{folder}/{img['file_name']}"] = \
                jpeg_bytes((k * 8 % 256, *tint))
        if image_zips:
            web.files[f"/zips/{folder}.zip"] = zip_bytes(members, compression=zipfile.ZIP_STORED)


@pytest.fixture
def coco_web(web, monkeypatch):
    """The loopback server standing in for images.cocodataset.org and the Karpathy split hosts."""
    # prepare_mscoco uses the real 1 s back-off; skip the waiting (only in labutils.infra.download), not the retrying.
    monkeypatch.setattr(dl, "time", types.SimpleNamespace(sleep=lambda s: None, perf_counter=time.perf_counter))
    monkeypatch.setattr(mscoco, "COCO_BASE_URL", web.url)
    monkeypatch.setattr(mscoco, "KARPATHY_SPLIT_SOURCES", (f"{web.url}/karpathy/caption_datasets.zip",
                                                         f"{web.url}/mirror/dataset_coco.json"))
    return web


def coco_cfg(tmp_path):
    return get_config("coco", data_root=tmp_path / "data", build_dir=tmp_path / "build")


def test_prepare_mscoco_subset_end_to_end(coco_web, tmp_path, capsys):
    data = coco_like()
    publish_coco(coco_web, data)
    coco_web.files["/mirror/dataset_coco.json"] = karpathy_dataset(data)  # the canonical zip is gone (404)
    coco_web.faults["/annotations/annotations_trainval2014.zip"] = ["cut:400"]  # bad Wi-Fi on the first try
    cfg = coco_cfg(tmp_path)
    assert mscoco.prepare_mscoco(cfg, subset=10, progress=False) == cfg.dataset_dir
    out = capsys.readouterr().out
    assert f"Fetched Karpathy's split from {coco_web.url}/mirror/dataset_coco.json." in out
    assert "Using Karpathy's split" in out and "Karpathy-like" not in out
    assert [g[2] for g in coco_web.gets("/annotations/annotations_trainval2014.zip")] == [None, "bytes=400-"]
    # The lab layout, read by the same loaders as the synthetic data.
    splits = coco.load_splits(cfg)
    assert {k: len(v) for k, v in splits.items()} == {"train": 8, "val": 1, "test": 1}
    karpathy = mscoco.karpathy_split(cfg.dataset_dir / "dataset_coco.json")
    assert all(set(splits[k]) <= set(karpathy[k]) for k in splits)
    caps = coco.load_captions(cfg)
    assert sorted(caps.imgs) == sorted(set().union(*splits.values()))
    assert coco.missing_images(caps, cfg.image_dir) == []
    for image_id, img in caps.imgs.items():
        folder = img["file_name"].split("/")[0]
        assert (cfg.image_dir / img["file_name"]).read_bytes() == coco_web.files[f"/{img['file_name']}"]
        assert img["file_name"] == f"{folder}/COCO_{folder}_{image_id:012d}.jpg"
    assert len(coco.captions_by_image(caps)[splits["train"][0]]) == 2
    fetched = [r[1] for r in coco_web.gets() if r[1].endswith(".jpg")]
    assert len(fetched) == 10  # only the subset, not all 50 images
    assert leftovers(cfg.dataset_dir / "downloads") == []
    # Re-running is idempotent: everything is in place, so not a single request goes out.
    before = len(coco_web.requests)
    mscoco.prepare_mscoco(cfg, subset=10, progress=False)
    assert len(coco_web.requests) == before


def test_prepare_mscoco_falls_back_to_a_rebuilt_split_and_resumes_image_zips(coco_web, tmp_path, capsys):
    data = coco_like(n_train=12, n_val=14)
    publish_coco(coco_web, data, image_zips=True)
    coco_web.faults["/karpathy/caption_datasets.zip"] = ["500"] * 10  # every split source fails
    coco_web.faults["/zips/train2014.zip"] = ["cut:1500"]
    cfg = coco_cfg(tmp_path)
    mscoco.prepare_mscoco(cfg, progress=False, n_val=3, n_test=3)
    out = capsys.readouterr().out
    assert "Karpathy's split could not be fetched" in out and "Karpathy-like 3/3 val/test split" in out
    assert json.loads((cfg.dataset_dir / "prepared.json").read_text())["split_source"] == "rebuilt"
    splits = coco.load_splits(cfg)
    assert {k: len(v) for k, v in splits.items()} == {"train": 20, "val": 3, "test": 3}
    val2014 = {img["id"] for img in data["val2014"]["images"]}
    assert set(splits["val"]) | set(splits["test"]) <= val2014  # like Karpathy's: val/test come from val2014
    assert coco.missing_images(coco.load_captions(cfg), cfg.image_dir) == []
    assert [g[2] for g in coco_web.gets("/zips/train2014.zip")] == [None, "bytes=1500-"]
    assert leftovers(cfg.dataset_dir / "downloads") == []  # zips and their records removed once unpacked


def test_dry_run_offline_names_every_missing_piece_in_one_sentence_each(tmp_path, monkeypatch):
    # The message under test must not depend on how full the test machine's disk is.
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**14, 0, 10**14))
    closed = closed_port_url()
    monkeypatch.setattr(mscoco, "COCO_BASE_URL", closed)
    cfg = coco_cfg(tmp_path)
    started = time.perf_counter()
    with pytest.raises(coco.DatasetUnavailableError) as err:
        mscoco.prepare_mscoco(cfg, dry_run=True, progress=False)
    assert time.perf_counter() - started < 3  # fails fast
    lines = str(err.value).splitlines()
    assert lines[0].startswith(f"MS-COCO 2014 is incomplete under {cfg.dataset_dir} (missing: 2014 caption "
                               "annotations, Karpathy split (optional), train2014 images, val2014 images)")
    assert "LAB_PROFILE=quick" in lines[0] and one_sentence(lines[0])
    pieces = [line.removeprefix("  - ") for line in lines[1:]]
    assert len(pieces) == 4 and all(one_sentence(p) for p in pieces)
    assert "annotations_trainval2014.zip (252.9 MB)" in pieces[0] and "optional" in pieces[1]
    assert "train2014.zip (13.5 GB)" in pieces[2] and "val2014.zip (6.6 GB)" in pieces[3]
    assert not cfg.dataset_dir.exists()  # a dry run writes nothing
    with pytest.raises(coco.DatasetUnavailableError, match=r"missing: .*100 subset images\)") as err:
        mscoco.prepare_mscoco(cfg, subset=100, dry_run=True, progress=False)
    assert "fetched one by one" in str(err.value) and "16.1 MB" in str(err.value)


def test_dry_run_reports_too_little_disk_space(tmp_path, monkeypatch):
    monkeypatch.setattr(mscoco, "COCO_BASE_URL", closed_port_url())
    usage = type("Usage", (), {"free": 5 * 10**9, "total": 10**11, "used": 0})
    monkeypatch.setattr(mscoco.shutil, "disk_usage", lambda path: usage)
    with pytest.raises(coco.DatasetUnavailableError) as err:
        mscoco.prepare_mscoco(coco_cfg(tmp_path), dry_run=True, progress=False)
    disk = str(err.value).splitlines()[-1]
    assert "5.0 GB free" in disk and "33.9 GB at its peak" in disk and "LAB_DATA_DIR" in disk


def test_dry_run_online_prints_the_plan_and_downloads_nothing(coco_web, tmp_path, capsys):
    publish_coco(coco_web, coco_like())
    cfg = coco_cfg(tmp_path)
    assert mscoco.prepare_mscoco(cfg, subset=10, dry_run=True, progress=False) == cfg.dataset_dir
    out = capsys.readouterr().out
    assert out.startswith("Dry run: preparing MS-COCO 2014") and "10 subset images are not fetched yet" in out
    assert coco_web.gets() == [] and not cfg.dataset_dir.exists()
    coco_web.files["/mirror/dataset_coco.json"] = karpathy_dataset(coco_like())
    mscoco.prepare_mscoco(cfg, subset=10, progress=False)
    capsys.readouterr()
    mscoco.prepare_mscoco(cfg, subset=10, dry_run=True, progress=False)
    assert "ready" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------------------
# MS-COCO 2017 against the loopback server, and the resize step after a download


def coco_like2017(n_train: int = 30, n_val: int = 20, n_val2017: int = 8) -> dict[str, dict]:
    """The 2014 fakes re-cut like the real 2017 release (same ids; val2017 = some val2014 images; 2017 names)."""
    old = coco_like(n_train, n_val)
    val2017 = {img["id"] for img in old["val2014"]["images"][:n_val2017]}
    images = old["train2014"]["images"] + old["val2014"]["images"]
    anns = old["train2014"]["annotations"] + old["val2014"]["annotations"]
    out = {}
    for folder in ("train2017", "val2017"):
        keep = [{**img, "file_name": f"{img['id']:012d}.jpg",
                 "coco_url": f"http://images.cocodataset.org/{folder}/{img['id']:012d}.jpg"}
                for img in images if (img["id"] in val2017) == (folder == "val2017")]
        ids = {img["id"] for img in keep}
        out[folder] = {"info": {"year": 2017}, "licenses": [], "images": keep,
                       "annotations": [a for a in anns if a["image_id"] in ids]}
    return out


def coco_cfg_2017(tmp_path):
    return get_config("coco", coco_year=2017, data_root=tmp_path / "data", build_dir=tmp_path / "build",
                      image_size=8)


def test_prepare_mscoco_2017_subset_end_to_end(coco_web, tmp_path, capsys):
    data = coco_like2017()
    publish_coco(coco_web, data, year=2017)
    coco_web.files["/mirror/dataset_coco.json"] = karpathy_dataset(coco_like())  # Karpathy's file, 2014 names
    cfg = coco_cfg_2017(tmp_path)
    assert cfg.dataset_dir == tmp_path / "data" / "coco2017"
    assert mscoco.prepare_mscoco(cfg, subset=10, progress=False) == cfg.dataset_dir
    assert "Using Karpathy's split" in capsys.readouterr().out
    prepared = json.loads((cfg.dataset_dir / "prepared.json").read_text())
    assert (prepared["year"], prepared["split_source"], prepared["subset"]) == (2017, "karpathy", 10)
    splits = coco.load_splits(cfg)
    karpathy = mscoco.karpathy_split(cfg.dataset_dir / "dataset_coco.json")
    assert all(set(splits[k]) <= set(karpathy[k]) for k in splits)
    caps = coco.load_captions(cfg)
    for image_id, img in caps.imgs.items():
        folder = img["file_name"].split("/")[0]
        assert folder in ("train2017", "val2017") and img["file_name"] == f"{folder}/{image_id:012d}.jpg"
        assert (cfg.image_dir / img["file_name"]).read_bytes() == coco_web.files[f"/{img['file_name']}"]
    fetched = [r[1] for r in coco_web.gets() if r[1].endswith(".jpg")]
    assert len(fetched) == 10 and coco_web.gets("/annotations/annotations_trainval2014.zip") == []
    assert resize.image_root(cfg) == cfg.dataset_dir / "images_8px"  # resized once, after the download
    before = len(coco_web.requests)
    mscoco.prepare_mscoco(cfg, subset=10, progress=False)
    assert len(coco_web.requests) == before and resize.resize_images(cfg, progress=False)["resized"] == 0


def test_prepare_mscoco_2017_zips_with_the_standard_fallback_split(coco_web, tmp_path, capsys):
    data = coco_like2017(n_train=12, n_val=14, n_val2017=5)
    publish_coco(coco_web, data, image_zips=True, year=2017)
    coco_web.faults["/karpathy/caption_datasets.zip"] = ["500"] * 10  # every split source fails
    coco_web.faults["/zips/train2017.zip"] = ["cut:1500"]
    cfg = coco_cfg_2017(tmp_path)
    mscoco.prepare_mscoco(cfg, progress=False, n_val=3, n_test=None)
    out = capsys.readouterr().out
    assert "Karpathy's split could not be fetched" in out
    assert ("the standard 2017 split is used instead (test = all 5 val2017 images, val = 3 train2017 images drawn "
            "with seed 0, train = the other 18 images)") in out
    prepared = json.loads((cfg.dataset_dir / "prepared.json").read_text())
    assert prepared["split_source"] == "rebuilt-2017" and "val2017" in prepared["split_rule"]
    splits = coco.load_splits(cfg)
    assert {k: len(v) for k, v in splits.items()} == {"train": 18, "val": 3, "test": 5}
    assert splits["test"] == sorted(img["id"] for img in data["val2017"]["images"])
    assert set(splits["val"]) <= {img["id"] for img in data["train2017"]["images"]}
    assert [g[2] for g in coco_web.gets("/zips/train2017.zip")] == [None, "bytes=1500-"]
    assert len(coco_web.gets("/zips/val2017.zip")) == 1 and leftovers(cfg.dataset_dir / "downloads") == []
    assert resize.resize_record(cfg)["complete"] and resize.resize_record(cfg)["images"] == 26


def test_corrupt_image_in_a_zip_is_reported_then_refetched_alone_once_deleted(coco_web, tmp_path, capsys):
    data = coco_like(n_train=8, n_val=10)
    publish_coco(coco_web, data, image_zips=True)
    name = data["train2014"]["images"][3]["file_name"]
    members = {f"train2014/{img['file_name']}": coco_web.files[f"/train2014/{img['file_name']}"]
               for img in data["train2014"]["images"]}
    members[f"train2014/{name}"] = members[f"train2014/{name}"][:200]  # a damaged image inside a sound zip
    coco_web.files["/zips/train2014.zip"] = zip_bytes(members, compression=zipfile.ZIP_STORED)
    cfg = get_config("coco", data_root=tmp_path / "data", build_dir=tmp_path / "build", image_size=8)
    mscoco.prepare_mscoco(cfg, karpathy_url="", progress=False, n_val=2, n_test=2)  # no crash mid-way
    message = capsys.readouterr().out.strip().splitlines()[-1]
    assert message.startswith(f"1 image file(s) could not be read, so they were not resized (train2014/{name}")
    assert one_sentence(message)
    record = resize.resize_record(cfg)
    assert not record["complete"] and record["corrupt"] == [f"train2014/{name}"] and record["images"] == 17
    assert resize.image_root(cfg) == cfg.image_dir  # not complete: the readers keep the originals
    bad = cfg.image_dir / "train2014" / name
    bad.unlink()  # what the message says to do
    mscoco.prepare_mscoco(cfg, karpathy_url="", progress=False, n_val=2, n_test=2)
    assert len(coco_web.gets(f"/train2014/{name}")) == 1  # fetched by its coco_url, alone ...
    assert len(coco_web.gets("/zips/train2014.zip")) == 1  # ... not the 13.5 GB zip again
    assert bad.read_bytes() == coco_web.files[f"/train2014/{name}"]
    assert resize.resize_record(cfg)["complete"] and resize.image_root(cfg) == cfg.dataset_dir / "images_8px"


# ---------------------------------------------------------------------------------------------------------------
# prepare_mscoco() checks what arrives: a captive portal's page is never saved as a zip, the split or an image


def test_prepare_mscoco_never_saves_an_html_page_as_karpathys_split(coco_web, tmp_path, capsys):
    publish_coco(coco_web, coco_like())
    coco_web.files["/mirror/dataset_coco.json"] = PORTAL  # the zip source is gone (404); the mirror is a portal
    coco_web.content_type["/mirror/dataset_coco.json"] = "text/html; charset=utf-8"
    cfg = coco_cfg(tmp_path)
    mscoco.prepare_mscoco(cfg, subset=10, progress=False, n_val=3, n_test=3)
    out = capsys.readouterr().out
    assert "Karpathy's split could not be fetched" in out and "answered with an HTML page" in out
    assert "Karpathy-like 3/3 val/test split" in out
    assert mscoco.find_karpathy_json(cfg.dataset_dir) is None and leftovers(cfg.dataset_dir / "downloads") == []
    assert json.loads((cfg.dataset_dir / "prepared.json").read_text())["split_source"] == "rebuilt"


def test_prepare_mscoco_replaces_an_html_page_saved_as_karpathys_split(coco_web, tmp_path, capsys):
    data = coco_like()
    publish_coco(coco_web, data)
    coco_web.files["/mirror/dataset_coco.json"] = karpathy_dataset(data)
    cfg = coco_cfg(tmp_path)
    cfg.dataset_dir.mkdir(parents=True)
    (cfg.dataset_dir / "dataset_coco.json").write_bytes(PORTAL)  # left by an older lab: used to end every run
    mscoco.prepare_mscoco(cfg, subset=10, progress=False)  # in a bare JSONDecodeError
    out = capsys.readouterr().out
    assert "dataset_coco.json is not Karpathy's JSON file" in out and "Using Karpathy's split" in out
    assert (cfg.dataset_dir / "dataset_coco.json").read_bytes() == karpathy_dataset(data)
    assert json.loads((cfg.dataset_dir / "prepared.json").read_text())["split_source"] == "karpathy"


def test_prepare_mscoco_refuses_an_html_page_for_the_annotation_zip(coco_web, tmp_path):
    publish_coco(coco_web, coco_like())
    coco_web.files["/annotations/annotations_trainval2014.zip"] = PORTAL
    coco_web.content_type["/annotations/annotations_trainval2014.zip"] = "text/html"
    cfg = coco_cfg(tmp_path)
    with pytest.raises(coco.DatasetUnavailableError) as err:
        mscoco.prepare_mscoco(cfg, subset=10, karpathy_url="", progress=False)
    message = str(err.value)
    assert one_sentence(message) and "answered with an HTML page" in message and "zip archive" in message
    assert leftovers(cfg.dataset_dir) == []


def test_prepare_mscoco_refuses_html_pages_for_images_and_fetches_them_next_run(coco_web, tmp_path):
    data = coco_like()
    publish_coco(coco_web, data)
    coco_web.files["/mirror/dataset_coco.json"] = karpathy_dataset(data)
    images = [path for path in coco_web.files if path.endswith(".jpg")]
    real = {path: coco_web.files[path] for path in images}
    for path in images:  # every image answered by the portal, with a 200 and an honest type
        coco_web.files[path], coco_web.content_type[path] = PORTAL, "text/html"
    cfg = coco_cfg(tmp_path)
    with pytest.raises(coco.DatasetUnavailableError) as err:
        mscoco.prepare_mscoco(cfg, subset=10, progress=False)
    assert "10 of 10 images failed" in str(err.value) and "answered with an HTML page" in str(err.value)
    assert not cfg.image_dir.exists() or leftovers(cfg.image_dir) == []
    for path in images:
        coco_web.files[path], coco_web.content_type[path] = real[path], "image/jpeg"
    mscoco.prepare_mscoco(cfg, subset=10, progress=False)
    caps = coco.load_captions(cfg)
    assert coco.missing_images(caps, cfg.image_dir) == []
    assert all((cfg.image_dir / img["file_name"]).read_bytes() == real[f"/{img['file_name']}"]
               for img in caps.imgs.values())
