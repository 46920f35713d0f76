"""Offline tests of the online path: a loopback HTTP server with programmable faults serves files made here.

Covers labutils.download (resume, retry, verify, atomic, idempotent, zip safety, several sources, parallel subset
fetch) and labutils.coco.prepare_mscoco end to end against that server.
"""

import hashlib
import http.server
import io
import json
import shutil
import threading
import time
import types
import urllib.parse
import zipfile
from collections import defaultdict
from pathlib import Path

import pytest
from loopback import closed_port_url
from PIL import Image

from labutils import coco, get_config
from labutils import download as dl

FAST = {"backoff": 0.01, "progress": False}  # tiny back-off keeps the retry tests quick


# ---------------------------------------------------------------------------------------------------------------
# A loopback server with Range support and faults


class LabServer:
    """Files in memory, served over HTTP on 127.0.0.1 with Range support and per-path programmable faults.

    faults[path] is a list consumed one per request: "500" (error status), "cut:N" (announce the full length,
    send N bytes, hang up), "503:ra" (503 with Retry-After: 0). `ignore_range` paths answer 200 to any Range.
    `requests` records (method, path, Range header) for every request; `max_inflight` the peak concurrency.
    """

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, list[str]] = defaultdict(list)
        self.ignore_range: set[str] = set()
        self.delay = 0.0
        self.requests: list[tuple[str, str, str | None]] = []
        self.lock = threading.Lock()
        self.inflight = self.max_inflight = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.answer(head=True)

            def do_GET(self):
                self.answer(head=False)

            def answer(self, head):
                path = urllib.parse.urlsplit(self.path).path
                rng = self.headers.get("Range")
                with server.lock:
                    server.requests.append((self.command, path, rng))
                    fault = server.faults[path].pop(0) if server.faults[path] and not head else None
                    server.inflight += 1
                    server.max_inflight = max(server.max_inflight, server.inflight)
                try:
                    if server.delay:
                        time.sleep(server.delay)
                    self.respond(path, rng, fault, head)
                finally:
                    with server.lock:
                        server.inflight -= 1

            def respond(self, path, rng, fault, head):
                if fault in ("500", "503:ra"):
                    self.send_response(int(fault[:3]))
                    if fault == "503:ra":
                        self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = server.files.get(path)
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body, status = data, 200
                if rng and path not in server.ignore_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    body, status = data[start:], 206
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", '"' + hashlib.sha1(data).hexdigest() + '"')
                if status == 206:
                    self.send_header("Content-Range", f"bytes {len(data) - len(body)}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if head:
                    return
                if fault and fault.startswith("cut:"):
                    self.wfile.write(body[:int(fault[4:])])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    def gets(self, path: str | None = None) -> list[tuple[str, str, str | None]]:
        """GET requests so far (for one path, or all)."""
        return [r for r in self.requests if r[0] == "GET" and (path is None or r[1] == path)]


@pytest.fixture
def web():
    server = LabServer()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()



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
    train = dl.known_source(coco.TRAIN2014_URL)
    assert (train.size, train.md5) == (13_510_573_713, "0da8c0bd3d6becc4dcb32757491aca88")
    assert dl.human_bytes(dl.known_source(coco.VAL2014_URL).size) == "6.6 GB"
    assert dl.known_source(coco.ANNOTATIONS2014_URL).size == 252_872_794
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
    # prepare_mscoco uses the real 1 s back-off; skip the waiting (only in labutils.download), not the retrying.
    monkeypatch.setattr(dl, "time", types.SimpleNamespace(sleep=lambda s: None, perf_counter=time.perf_counter))
    monkeypatch.setattr(coco, "COCO_BASE_URL", web.url)
    monkeypatch.setattr(coco, "KARPATHY_SPLIT_SOURCES", (f"{web.url}/karpathy/caption_datasets.zip",
                                                         f"{web.url}/mirror/dataset_coco.json"))
    return web


def full_cfg(tmp_path):
    return get_config("full", data_root=tmp_path / "data", build_dir=tmp_path / "build")


def test_prepare_mscoco_subset_end_to_end(coco_web, tmp_path, capsys):
    data = coco_like()
    publish_coco(coco_web, data)
    coco_web.files["/mirror/dataset_coco.json"] = karpathy_dataset(data)  # the canonical zip is gone (404)
    coco_web.faults["/annotations/annotations_trainval2014.zip"] = ["cut:400"]  # bad Wi-Fi on the first try
    cfg = full_cfg(tmp_path)
    assert coco.prepare_mscoco(cfg, subset=10, progress=False) == cfg.dataset_dir
    out = capsys.readouterr().out
    assert f"Fetched Karpathy's split from {coco_web.url}/mirror/dataset_coco.json." in out
    assert "Using Karpathy's split" in out and "Karpathy-like" not in out
    assert [g[2] for g in coco_web.gets("/annotations/annotations_trainval2014.zip")] == [None, "bytes=400-"]
    # The lab layout, read by the same loaders as the synthetic data.
    splits = coco.load_splits(cfg)
    assert {k: len(v) for k, v in splits.items()} == {"train": 8, "val": 1, "test": 1}
    karpathy = coco.karpathy_split(cfg.dataset_dir / "dataset_coco.json")
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
    coco.prepare_mscoco(cfg, subset=10, progress=False)
    assert len(coco_web.requests) == before


def test_prepare_mscoco_falls_back_to_a_rebuilt_split_and_resumes_image_zips(coco_web, tmp_path, capsys):
    data = coco_like(n_train=12, n_val=14)
    publish_coco(coco_web, data, image_zips=True)
    coco_web.faults["/karpathy/caption_datasets.zip"] = ["500"] * 10  # every split source fails
    coco_web.faults["/zips/train2014.zip"] = ["cut:1500"]
    cfg = full_cfg(tmp_path)
    coco.prepare_mscoco(cfg, progress=False, n_val=3, n_test=3)
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
    monkeypatch.setattr(coco, "COCO_BASE_URL", closed)
    cfg = full_cfg(tmp_path)
    started = time.perf_counter()
    with pytest.raises(coco.DatasetUnavailableError) as err:
        coco.prepare_mscoco(cfg, dry_run=True, progress=False)
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
        coco.prepare_mscoco(cfg, subset=100, dry_run=True, progress=False)
    assert "fetched one by one" in str(err.value) and "16.1 MB" in str(err.value)


def test_dry_run_reports_too_little_disk_space(tmp_path, monkeypatch):
    monkeypatch.setattr(coco, "COCO_BASE_URL", closed_port_url())
    usage = type("Usage", (), {"free": 5 * 10**9, "total": 10**11, "used": 0})
    monkeypatch.setattr(coco.shutil, "disk_usage", lambda path: usage)
    with pytest.raises(coco.DatasetUnavailableError) as err:
        coco.prepare_mscoco(full_cfg(tmp_path), dry_run=True, progress=False)
    disk = str(err.value).splitlines()[-1]
    assert "5.0 GB free" in disk and "33.9 GB at its peak" in disk and "LAB_DATA_DIR" in disk


def test_dry_run_online_prints_the_plan_and_downloads_nothing(coco_web, tmp_path, capsys):
    publish_coco(coco_web, coco_like())
    cfg = full_cfg(tmp_path)
    assert coco.prepare_mscoco(cfg, subset=10, dry_run=True, progress=False) == cfg.dataset_dir
    out = capsys.readouterr().out
    assert out.startswith("Dry run: preparing MS-COCO 2014") and "10 subset images are not fetched yet" in out
    assert coco_web.gets() == [] and not cfg.dataset_dir.exists()
    coco_web.files["/mirror/dataset_coco.json"] = karpathy_dataset(coco_like())
    coco.prepare_mscoco(cfg, subset=10, progress=False)
    capsys.readouterr()
    coco.prepare_mscoco(cfg, subset=10, dry_run=True, progress=False)
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


def full_cfg_2017(tmp_path):
    return get_config("full", coco_year=2017, data_root=tmp_path / "data", build_dir=tmp_path / "build",
                      image_size=8)


def test_prepare_mscoco_2017_subset_end_to_end(coco_web, tmp_path, capsys):
    data = coco_like2017()
    publish_coco(coco_web, data, year=2017)
    coco_web.files["/mirror/dataset_coco.json"] = karpathy_dataset(coco_like())  # Karpathy's file, 2014 names
    cfg = full_cfg_2017(tmp_path)
    assert cfg.dataset_dir == tmp_path / "data" / "coco2017"
    assert coco.prepare_mscoco(cfg, subset=10, progress=False) == cfg.dataset_dir
    assert "Using Karpathy's split" in capsys.readouterr().out
    prepared = json.loads((cfg.dataset_dir / "prepared.json").read_text())
    assert (prepared["year"], prepared["split_source"], prepared["subset"]) == (2017, "karpathy", 10)
    splits = coco.load_splits(cfg)
    karpathy = coco.karpathy_split(cfg.dataset_dir / "dataset_coco.json")
    assert all(set(splits[k]) <= set(karpathy[k]) for k in splits)
    caps = coco.load_captions(cfg)
    for image_id, img in caps.imgs.items():
        folder = img["file_name"].split("/")[0]
        assert folder in ("train2017", "val2017") and img["file_name"] == f"{folder}/{image_id:012d}.jpg"
        assert (cfg.image_dir / img["file_name"]).read_bytes() == coco_web.files[f"/{img['file_name']}"]
    fetched = [r[1] for r in coco_web.gets() if r[1].endswith(".jpg")]
    assert len(fetched) == 10 and coco_web.gets("/annotations/annotations_trainval2014.zip") == []
    assert coco.image_root(cfg) == cfg.dataset_dir / "images_8px"  # resized once, after the download
    before = len(coco_web.requests)
    coco.prepare_mscoco(cfg, subset=10, progress=False)
    assert len(coco_web.requests) == before and coco.resize_images(cfg, progress=False)["resized"] == 0


def test_prepare_mscoco_2017_zips_with_the_standard_fallback_split(coco_web, tmp_path, capsys):
    data = coco_like2017(n_train=12, n_val=14, n_val2017=5)
    publish_coco(coco_web, data, image_zips=True, year=2017)
    coco_web.faults["/karpathy/caption_datasets.zip"] = ["500"] * 10  # every split source fails
    coco_web.faults["/zips/train2017.zip"] = ["cut:1500"]
    cfg = full_cfg_2017(tmp_path)
    coco.prepare_mscoco(cfg, progress=False, n_val=3, n_test=None)
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
    assert coco.resize_record(cfg)["complete"] and coco.resize_record(cfg)["images"] == 26


def test_corrupt_image_in_a_zip_is_reported_then_refetched_alone_once_deleted(coco_web, tmp_path, capsys):
    data = coco_like(n_train=8, n_val=10)
    publish_coco(coco_web, data, image_zips=True)
    name = data["train2014"]["images"][3]["file_name"]
    members = {f"train2014/{img['file_name']}": coco_web.files[f"/train2014/{img['file_name']}"]
               for img in data["train2014"]["images"]}
    members[f"train2014/{name}"] = members[f"train2014/{name}"][:200]  # a damaged image inside a sound zip
    coco_web.files["/zips/train2014.zip"] = zip_bytes(members, compression=zipfile.ZIP_STORED)
    cfg = get_config("full", data_root=tmp_path / "data", build_dir=tmp_path / "build", image_size=8)
    coco.prepare_mscoco(cfg, karpathy_url="", progress=False, n_val=2, n_test=2)  # no crash mid-way
    message = capsys.readouterr().out.strip().splitlines()[-1]
    assert message.startswith(f"1 image file(s) could not be read, so they were not resized (train2014/{name}")
    assert one_sentence(message)
    record = coco.resize_record(cfg)
    assert not record["complete"] and record["corrupt"] == [f"train2014/{name}"] and record["images"] == 17
    assert coco.image_root(cfg) == cfg.image_dir  # not complete: the readers keep the originals
    bad = cfg.image_dir / "train2014" / name
    bad.unlink()  # what the message says to do
    coco.prepare_mscoco(cfg, karpathy_url="", progress=False, n_val=2, n_test=2)
    assert len(coco_web.gets(f"/train2014/{name}")) == 1  # fetched by its coco_url, alone ...
    assert len(coco_web.gets("/zips/train2014.zip")) == 1  # ... not the 13.5 GB zip again
    assert bad.read_bytes() == coco_web.files[f"/train2014/{name}"]
    assert coco.resize_record(cfg)["complete"] and coco.image_root(cfg) == cfg.dataset_dir / "images_8px"
