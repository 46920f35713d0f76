"""Downloads that survive a workshop's Wi-Fi: resumable, retried, verified, atomic and idempotent.

Used by `labutils.infra.mscoco.prepare_mscoco` for the MS-COCO archives, Karpathy's split and the per-image subset mode;
standard library only (urllib; Pillow only to decode a JPEG whose length the server did not state), so nothing
extra has to be installed on Colab.

    download(url, dest, sha256=..., size=..., expect="zip")   one file: resume with HTTP Range, retry, verify
    extract_zip(zip_path, dest_dir)                 unpack through a temporary folder, leave a completion marker
    try_sources([url_a, url_b, ...], dest_dir)      the first source that delivers wins (moved or dead links)
    fetch_images_by_url([(url, dest), ...])         many small files in parallel; failures reported, not fatal

Every failure a learner can meet ends in one sentence saying what to do, and nothing half-written or wrong is
ever left under a final name: a transfer grows in `<dest>.part` and is renamed only once it is complete and
verified, by its checksum when one is known and otherwise by its format (`expect=`): a captive portal's HTML page
is never saved as a zip, a JSON file or a JPEG.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import os
import random
import shutil
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .coco_format import DatasetUnavailableError
from .files import DiskFullError, atomic_write_json, is_disk_full

USER_AGENT = "labutils (captioning lab; python-urllib)"
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}  # worth another try; any other 4xx/5xx will not change
DISK_MARGIN = 64 * 1024**2  # keep a little free space so the notebook itself can still write
# A transfer slower than MIN_RATE bytes/s over RATE_WINDOW seconds is stalled in all but name (a server that
# trickles a byte now and then never trips the socket timeout), so the download gives up and says so.
MIN_RATE = 1000.0
RATE_WINDOW = 60.0

# What the official files must be, by URL (a test server or a mirror of other bytes is not held to them). The
# MD5s are the S3 ETags of these single-part uploads, the values torchvision-style loaders, Paddle and LAVIS check;
# the sizes match public download logs. dataset_coco.json on GitHub is a Git LFS file whose pointer (commit
# 89f5ec1e of Delphboy/karpathy-splits) gives its size and SHA-256.
_COCO = "http://images.cocodataset.org"
KNOWN_FILES: dict[str, dict] = {
    f"{_COCO}/annotations/annotations_trainval2014.zip": {"size": 252_872_794,
                                                          "md5": "0a379cfc70b0e71301e0f377548639bd"},
    f"{_COCO}/zips/train2014.zip": {"size": 13_510_573_713, "md5": "0da8c0bd3d6becc4dcb32757491aca88"},
    f"{_COCO}/zips/val2014.zip": {"size": 6_645_013_297, "md5": "a3d79f5ed8d289b7a7554ce06a5782b3"},
    f"{_COCO}/annotations/annotations_trainval2017.zip": {"size": 252_907_541,
                                                          "md5": "f4bbac642086de4f52a3fdda2de5fa2c"},
    f"{_COCO}/zips/train2017.zip": {"size": 19_336_861_798, "md5": "cced6f7f71b7629ddf16f17bbcfab6b2"},
    f"{_COCO}/zips/val2017.zip": {"size": 815_585_330, "md5": "442b8da7639aecaf257c1dceb8ba8c80"},
    "https://github.com/Delphboy/karpathy-splits/raw/main/dataset_coco.json": {
        "size": 408_860_810, "sha256": "af76e819987c9ced8452fdb4da823524e033f7baa097cf40bab83bdab4c469ea"},
}
# The same S3 objects over HTTPS (for networks that block plain http): prepare_mscoco(cfg, base_url=COCO_S3_URL).
COCO_S3_URL = "https://s3.amazonaws.com/images.cocodataset.org"
KNOWN_FILES.update({url.replace(_COCO, COCO_S3_URL): info for url, info in list(KNOWN_FILES.items())
                    if url.startswith(_COCO)})


class DownloadError(DatasetUnavailableError):
    """A file could not be fetched or unpacked; the message says what to do next."""


class NetworkUnavailableError(DownloadError, ConnectionError):
    """The server cannot be reached at all (no network, DNS failure, connection refused)."""


class ChecksumError(DownloadError, ValueError):
    """A downloaded file has the wrong size or checksum; it has been deleted."""


class WrongContentError(ChecksumError):
    """What arrived is not the kind of file expected (an HTML page, a cut-off body, another format); deleted."""


class TooSlowError(DownloadError):
    """The server sent too slowly (below the minimum rate, or past the deadline), so the download gave up."""


class InsufficientDiskSpaceError(DownloadError, DiskFullError):
    """Not enough free disk space for a download or an extraction (also a `labutils.infra.files.DiskFullError`)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.errno = errno.ENOSPC  # what `is_disk_full` looks for; str() stays the one sentence


class CorruptArchiveError(DownloadError):
    """A zip archive is damaged (cut off, bad CRC) or lacks the files asked for."""


# --------------------------------------------------------------------------------------------------------------
# Small helpers


def human_bytes(n: float) -> str:
    """`n` bytes in decimal units, e.g. 13510573713 -> '13.5 GB'."""
    if abs(n) < 1000:
        return f"{n:.0f} B"
    n /= 1000
    for unit in ("kB", "MB"):
        if abs(n) < 1000:
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def part_path(dest: str | Path) -> Path:
    """Where `download` grows `dest` until it is complete (`<dest>.part`)."""
    return _sibling(Path(dest), ".part")


def record_path(dest: str | Path) -> Path:
    """The JSON record `download` keeps beside `dest` (size, mtime and digests), so re-runs need not rehash it."""
    return _sibling(Path(dest), ".download.json")


def _part_meta_path(dest: Path) -> Path:
    return _sibling(dest, ".part.json")


def discard(dest: str | Path) -> None:
    """Delete `dest` with its `.part`, its resume metadata and its record (e.g. once an archive is unpacked)."""
    dest = Path(dest)
    for path in (dest, part_path(dest), _part_meta_path(dest), record_path(dest)):
        path.unlink(missing_ok=True)


def _existing_folder(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk_space(folder: str | Path, needed: int, what: str, margin: int | None = None) -> None:
    """Raise `InsufficientDiskSpaceError` (one sentence) unless `folder`'s disk has `needed` bytes (+ margin) free."""
    if needed <= 0:
        return
    margin = DISK_MARGIN if margin is None else margin
    where = _existing_folder(Path(folder))
    free = shutil.disk_usage(where).free
    if needed + margin > free:
        raise InsufficientDiskSpaceError(
            f"{what} needs {human_bytes(needed)} free in {where} but only {human_bytes(free)} is free; free up "
            f"{human_bytes(needed + margin - free)} there or set LAB_DATA_DIR to a folder on a bigger disk.")


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc or url


def _url_name(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    name = Path(urllib.parse.unquote(parts.path)).name
    return name or "".join(c if c.isalnum() or c in ".-" else "_" for c in parts.netloc or "download")


def _why(err: BaseException) -> str:
    """A short, single-clause description of a low-level error (no trailing period, no sentence breaks)."""
    if isinstance(err, urllib.error.URLError) and not isinstance(err, urllib.error.HTTPError):
        err = err.reason if isinstance(err.reason, BaseException) else OSError(str(err.reason))
    if isinstance(err, socket.gaierror):
        text = "the host name could not be resolved"
    elif isinstance(err, ConnectionRefusedError):
        text = "the connection was refused"
    elif isinstance(err, (TimeoutError, socket.timeout)):
        text = "no answer within the time limit"
    elif isinstance(err, http.client.IncompleteRead):
        text = "the server closed the connection early"
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.replace(". ", "; ").split()).rstrip(".")


def _unreachable(err: BaseException) -> bool:
    """True for errors meaning 'there is no route to that server at all', as opposed to a flaky transfer."""
    reason = err.reason if isinstance(err, urllib.error.URLError) else err
    if isinstance(reason, (socket.gaierror, ConnectionRefusedError)):
        return True
    return isinstance(reason, OSError) and reason.errno in {errno.ENETUNREACH, errno.EHOSTUNREACH,
                                                            errno.ENETDOWN, errno.EADDRNOTAVAIL}


def _no_network(url: str, why: str | None) -> NetworkUnavailableError:
    why = f" ({why})" if why else ""
    return NetworkUnavailableError(
        f"Cannot reach {_host(url)}{why}; check the internet connection, or use the offline quick profile "
        "(LAB_PROFILE=quick).")


def _hash_file(path: Path, names: Iterable[str], chunk: int = 1 << 20) -> dict[str, str]:
    hashers = {name: hashlib.new(name) for name in names}
    with path.open("rb") as f:
        while data := f.read(chunk):
            for h in hashers.values():
                h.update(data)
    return {name: h.hexdigest() for name, h in hashers.items()}


def _write_record(path: Path, obj) -> None:
    """Write a record that only spares work (a rehash), so a full disk just means doing that work again."""
    try:
        atomic_write_json(path, obj, indent=1)
    except DiskFullError:
        path.unlink(missing_ok=True)


def _read_json(path: Path) -> dict | None:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _expected_digests(sha256: str | None, md5: str | None) -> dict[str, str]:
    want = {}
    for name, value, length in (("sha256", sha256, 64), ("md5", md5, 32)):
        if value is not None:
            value = value.strip().lower()
            if len(value) != length or any(c not in "0123456789abcdef" for c in value):
                raise ValueError(f"{name}={value!r} is not a {name} hex digest ({length} hex characters).")
            want[name] = value
    return want


def is_complete(dest: str | Path, sha256: str | None = None, size: int | None = None, md5: str | None = None,
                write_record: bool = True) -> bool:
    """True when `dest` exists and matches what is expected (size and digests; a valid record avoids rehashing)."""
    dest = Path(dest)
    want = _expected_digests(sha256, md5)
    try:
        st = dest.stat()
    except FileNotFoundError:
        return False
    if size is not None and st.st_size != size:
        return False
    if not want:
        return True  # written by an atomic rename after its checks, so an existing file is a complete one
    record = _read_json(record_path(dest)) or {}
    if record.get("size") != st.st_size or record.get("mtime_ns") != st.st_mtime_ns:
        record = {}  # stale: the file changed since it was recorded
    digests = {name: record[name] for name in ("sha256", "md5") if name in record}
    if not all(name in digests for name in want):
        # Hash once, then remember it (hashing 13.5 GB takes a minute or two on Colab).
        digests.update(_hash_file(dest, want))
        if write_record:
            _write_record(record_path(dest), {**record, "size": st.st_size, "mtime_ns": st.st_mtime_ns, **digests})
    return all(digests.get(name) == value for name, value in want.items())


# --------------------------------------------------------------------------------------------------------------
# What kind of file arrived (checked when no checksum is known)

KINDS = {"zip": "zip archive", "json": "JSON file", "jpeg": "JPEG image"}
_SUFFIX_KINDS = {".zip": "zip", ".json": "json", ".jpg": "jpeg", ".jpeg": "jpeg"}
_TYPES = {"zip": {"application/zip", "application/x-zip-compressed", "application/x-zip",
                  "application/zip-compressed", "multipart/x-zip"},
          "json": {"application/json", "text/json", "application/x-json", "text/x-json", "text/plain"},
          "jpeg": {"image/jpeg", "image/jpg", "image/pjpeg"}}
# Types that say nothing about the content (what bare servers, S3 and GitHub's LFS send for any file).
_ANY_TYPE = {"", "application/octet-stream", "binary/octet-stream", "application/binary", "application/download",
             "application/x-download", "application/force-download"}
_HTML_TYPES = {"text/html", "application/xhtml+xml"}
_HTML_PAGE = "an HTML page (a Wi-Fi login page, an error page or a moved link)"
_LOOK = "open the address in a browser to see what it sends (a Wi-Fi login page may need accepting first)"


def expected_kind(name: str | Path) -> str | None:
    """The `expect=` value for a file name or URL by its suffix ('zip', 'json', 'jpeg'), or None if unknown."""
    path = urllib.parse.urlsplit(name).path if isinstance(name, str) else str(name)
    return _SUFFIX_KINDS.get(Path(path).suffix.lower())


def _check_expect(expect: str | None) -> None:
    if expect is not None and expect not in KINDS:
        raise ValueError(f"expect={expect!r} is not one of {', '.join(map(repr, KINDS))} or None.")


def type_problem(kind: str, content_type: str | None) -> str | None:
    """Why a `Content-Type` header rules out a `kind` file (a clause), or None when it fits or says nothing."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype in _ANY_TYPE or ctype in _TYPES[kind] or (kind == "json" and ctype.endswith("+json")):
        return None
    return f"{_HTML_PAGE[:-1]}, Content-Type {ctype})" if ctype in _HTML_TYPES else f"Content-Type {ctype}"


def _looks_like_html(head: bytes) -> bool:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in text


def _zip_problem(path: Path, head: bytes, complete: bool) -> str | None:
    if not head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "not a zip archive"
    try:
        with zipfile.ZipFile(path):  # reads the table of contents at the very end: a cut-off zip has none
            return None
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        return f"a zip archive cut short or damaged ({_why(err)})"


def _json_problem(path: Path, head: bytes, complete: bool) -> str | None:
    try:
        with path.open("rb") as f:
            json.load(f)  # the whole file: a JSON cut short can end on a plausible '}' but never parses
    except (ValueError, UnicodeDecodeError) as err:
        return f"not valid JSON ({_why(err)})"
    return None


def _jpeg_problem(path: Path, head: bytes, complete: bool) -> str | None:
    if not head.startswith(b"\xff\xd8\xff"):
        return "not a JPEG image"
    if complete:
        # The server stated the length and all of it arrived. An image damaged on the server itself (MS-COCO has
        # one) is reported by the resize step; refusing it here would fetch it again on every run.
        return None
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return f"a JPEG image cut short or damaged ({_why(err)})"
    return None


_CONTENT_CHECKS = {"zip": _zip_problem, "json": _json_problem, "jpeg": _jpeg_problem}


def content_problem(path: str | Path, kind: str, complete: bool = False) -> str | None:
    """Why the file at `path` is not a `kind` file (a clause such as 'not a zip archive'), or None when it is.

    A zip must open (its table of contents is at the end, so a cut-off zip fails), a JSON file must parse, a JPEG
    must start like one and, unless `complete` (the server stated the length and all of it arrived), decode.
    """
    path = Path(path)
    with path.open("rb") as f:
        head = f.read(1024)
    if not head:
        return "empty"
    if _looks_like_html(head):
        return _HTML_PAGE
    return _CONTENT_CHECKS[kind](path, head, complete)


# --------------------------------------------------------------------------------------------------------------
# One file


class _Retry(Exception):
    """Internal: this attempt failed in a way that another attempt may fix."""

    def __init__(self, reason: str, wait: float | None = None):
        super().__init__(reason)
        self.reason, self.wait = reason, wait


def _retry_after(headers) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date; the exponential back-off is good enough


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) from a Content-Range header such as 'bytes 100-199/1000' or 'bytes */1000'."""
    if not value or not value.startswith("bytes "):
        return None, None
    span, _, total = value[6:].partition("/")
    first = None if span.strip() == "*" else int(span.split("-")[0])
    return first, (int(total) if total.strip().isdigit() else None)


def _int_header(value: str | None) -> int | None:
    return int(value) if value is not None and value.strip().isdigit() else None


def _can_resume(meta: dict | None, url: str) -> bool:
    """Whether bytes fetched under `meta` (what the first answer said) can be continued: a resumed answer must be
    checked against something (ETag, Last-Modified or the total size), and a decompressed body has no ranges."""
    if not meta or meta.get("url") != url or meta.get("encoded"):
        return False
    return bool(meta.get("etag") or meta.get("last_modified")) or meta.get("total") is not None


def _if_range(meta: dict) -> str | None:
    """The If-Range validator: a strong ETag, else Last-Modified (a weak ETag is not allowed there)."""
    etag = meta.get("etag")
    return etag if etag and not etag.startswith("W/") else meta.get("last_modified")


def _same_file(meta: dict, headers, total: int | None) -> bool:
    """Does a resumed (206) answer come from the same version of the file as the first answer?"""
    if meta.get("total") is not None and total is not None and total != meta["total"]:
        return False
    for key, header in (("etag", "ETag"), ("last_modified", "Last-Modified")):
        if meta.get(key) and headers.get(header):
            return headers.get(header) == meta[key]
    return True


class _Pace:
    """The overall deadline and the minimum rate of one `download` call."""

    def __init__(self, deadline: float | None, min_rate: float | None, window: float):
        self.deadline, self.min_rate, self.window = deadline, min_rate, window
        self.started = time.perf_counter()
        self.fetched = 0
        self.new_window()

    def new_window(self) -> None:
        self.window_start, self.window_bytes = time.perf_counter(), 0

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - (time.perf_counter() - self.started)

    def overdue(self) -> str:
        return (f"it was not complete within {self.deadline:g} s, the time allowed for it (deadline=), with "
                f"{human_bytes(self.fetched)} fetched")

    def problem(self, new_bytes: int = 0) -> str | None:
        """Why this download should give up now (a clause), or None; `new_bytes` just arrived."""
        self.fetched += new_bytes
        self.window_bytes += new_bytes
        left = self.remaining()
        if left is not None and left < 0:
            return self.overdue()
        span = time.perf_counter() - self.window_start
        if self.min_rate and span >= self.window:
            if self.window_bytes < self.min_rate * span:
                return (f"it sent only {human_bytes(self.window_bytes)} in the last {span:.1f} s "
                        f"({human_bytes(self.window_bytes / span)}/s, below the minimum of "
                        f"{human_bytes(self.min_rate)}/s, min_rate=)")
            self.new_window()
        return None


class _Transfer:
    """State of one `download` call across attempts: the .part file, running digests, the progress bar."""

    def __init__(self, url, dest, *, size, want, expect, chunk, timeout, progress, record, pace):
        self.url, self.dest, self.size, self.want, self.expect = url, dest, size, want, expect
        self.chunk, self.timeout, self.record, self.pace = chunk, timeout, record, pace
        self.part, self.meta_path = part_path(dest), _part_meta_path(dest)
        self.digest_names = set(want)  # only what is checked: hashing is the CPU cost of a fast download
        self.hashers: dict = {}
        self.hashed = -1  # bytes of .part that self.hashers have seen; -1: not primed
        self.total: int | None = size
        self.meta: dict | None = None  # what the first answer said about the file, to check a resumed one against
        self.framed = False  # did the protocol mark the body's end (chunked, a complete gzip stream)?
        self.contacted = False  # did the server ever answer (any HTTP status)?
        self.bar = tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1000, desc=dest.name,
                        disable=not progress, leave=False)

    # .part bookkeeping -------------------------------------------------------------------------------------
    def part_size(self) -> int:
        try:
            return self.part.stat().st_size
        except FileNotFoundError:
            return 0

    def restart(self) -> None:
        """Throw the partial file away and start from byte 0."""
        self.part.unlink(missing_ok=True)
        self.meta_path.unlink(missing_ok=True)
        self.meta = None
        self.hashed = -1
        self.bar.reset(total=self.total)

    def prime_hashers(self, start: int) -> None:
        """Make the running digests cover exactly the first `start` bytes already in .part."""
        if self.hashed == start:
            return
        self.hashers = {name: hashlib.new(name) for name in self.digest_names}
        if start and self.hashers:
            with self.part.open("rb") as f:
                while data := f.read(self.chunk):
                    for h in self.hashers.values():
                        h.update(data)
        self.hashed = start

    def keep_or_drop(self) -> str:
        """On giving up: keep the .part if a later call can resume it (and say so), else delete it."""
        kept = self.part_size()
        if kept and self.record and _can_resume(self.meta, self.url):
            return f" (it resumes from the {human_bytes(kept)} already fetched)"
        self.restart()
        return ""

    # giving up with one sentence ------------------------------------------------------------------------------
    def too_slow(self, why: str) -> TooSlowError:
        return TooSlowError(f"Gave up on {self.url}: {why}; the server or the network is too slow right now, so "
                            f"run the same call again later{self.keep_or_drop()}.")

    def disk_full(self) -> InsufficientDiskSpaceError:
        where = _existing_folder(self.dest.parent)
        need = f", and the whole file is {human_bytes(self.total)}" if self.total else ""
        return InsufficientDiskSpaceError(
            f"The disk holding {where} filled up while downloading {self.dest.name} "
            f"({human_bytes(shutil.disk_usage(where).free)} free{need}); free some space or set LAB_DATA_DIR to a "
            f"folder on a bigger disk, then run the same call again{self.keep_or_drop()}.")

    def wrong_content(self, problem: str) -> WrongContentError:
        self.restart()
        return WrongContentError(f"{self.dest.name} from {self.url} is {problem}, not a {KINDS[self.expect]}, so "
                                 f"it was deleted; {_LOOK}, then run the same call again.")

    def wait(self, delay: float) -> None:
        """Sleep before the next attempt, but never past the deadline."""
        left = self.pace.remaining()
        if left is not None and left <= delay:
            time.sleep(max(left, 0.0))
            raise self.too_slow(self.pace.overdue())
        time.sleep(delay)

    # one attempt ---------------------------------------------------------------------------------------------
    def attempt(self) -> None:
        """Fetch the rest of the file into .part; return when complete, raise _Retry when worth another go."""
        start = self.resume_point()
        if self.total is not None and start == self.total and start > 0:
            return
        response = self.request(start)
        if response is None:
            return  # the server confirmed that the .part already holds the whole file
        with response:
            start, mode, decoder = self.accept(response, start)
            self.receive(response, start, mode, decoder)
        if self.total is not None and self.part_size() < self.total:
            raise _Retry(f"the server closed the connection after {human_bytes(self.part_size())} of "
                         f"{human_bytes(self.total)}")

    def resume_point(self) -> int:
        """Bytes of .part to keep: all of them when they can be checked against the server, else none."""
        start = self.part_size()
        if self.meta is None and self.record:
            self.meta = _read_json(self.meta_path)
        if start and not _can_resume(self.meta, self.url):
            self.restart()  # from another source, an unknown version or a decompressed body: cannot be trusted
            return 0
        if self.total is not None and start > self.total:
            self.restart()
            return 0
        return start

    def request(self, start: int):
        """The server's answer for bytes `start`- (None: the .part is already whole), or _Retry / an error."""
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        if start:
            headers["Range"] = f"bytes={start}-"
            if validator := _if_range(self.meta):
                headers["If-Range"] = validator  # a server that honours it sends the whole file if it changed
        try:
            return urllib.request.urlopen(urllib.request.Request(self.url, headers=headers), timeout=self.timeout)
        except urllib.error.HTTPError as err:
            self.contacted = True
            err.close()
            if err.code == 416 and start:
                _, total = _content_range(err.headers.get("Content-Range"))
                if total == start and self.meta.get("total") in (None, total):
                    self.total = total
                    return None
                self.restart()
                raise _Retry("the server could not resume the partial file") from None
            if err.code in RETRY_STATUS:
                raise _Retry(f"the server answered {err.code} {err.reason}", _retry_after(err.headers)) from None
            self.restart()
            raise DownloadError(f"Could not download {self.url}: the server answered {err.code} {err.reason}; "
                                "check the address (the file may have moved) or try again later.") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            if not self.contacted and _unreachable(err):
                raise _no_network(self.url, _why(err)) from None
            raise _Retry(_why(err)) from None

    def accept(self, response, start: int):
        """Check the answer's headers against what is expected and fetched so far: (start, mode, decoder)."""
        self.contacted = True
        headers = response.headers
        if self.expect and (problem := type_problem(self.expect, headers.get("Content-Type"))):
            self.restart()
            raise WrongContentError(f"{self.url} answered with {problem} instead of a {KINDS[self.expect]}, so "
                                    f"nothing was saved; {_LOOK}, then run the same call again.")
        decoder = self.decoder(headers.get("Content-Encoding"))
        length = _int_header(headers.get("Content-Length"))
        first, total = _content_range(headers.get("Content-Range"))
        if response.status == 206:
            if decoder is not None or first != start:
                self.restart()
                raise _Retry("the server sent another part of the file than the one asked for")
            if total is None and length is not None:
                total = start + length
            if not _same_file(self.meta, headers, total):
                self.restart()  # splicing two versions would publish a file that never existed
                raise _Retry("the file on the server changed since the first part was fetched, so it is fetched "
                             "again from the start")
            mode = "ab"
        else:
            # A fresh start, or a server that ignored our Range (or our If-Range: the file changed): all again.
            if start:
                self.restart()
            start, mode = 0, "wb"
            total = None if decoder is not None else length  # Content-Length counts the compressed bytes
        if total is not None:
            self.expect_total(total, start)
        if mode == "wb":
            self.remember(headers, total, encoded=decoder is not None)
        self.framed = decoder is not None or "chunked" in headers.get("Transfer-Encoding", "").lower()
        return start, mode, decoder

    def decoder(self, encoding: str | None):
        """A gzip/deflate decoder for a compressed body (sent although we asked for none), or None."""
        encoding = (encoding or "").strip().lower()
        if encoding in ("", "identity"):
            return None
        if encoding in ("gzip", "x-gzip", "deflate"):
            return zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib wrapping, told apart by the header
        self.restart()
        raise DownloadError(f"{self.url} arrived compressed as {encoding!r}, which this downloader cannot decode, "
                            f"so nothing was saved; download it with a browser into {self.dest}, or use another "
                            "source.")

    def remember(self, headers, total: int | None, encoded: bool) -> None:
        """Keep what the first answer said, so that a resumed answer can be checked against it."""
        self.meta = {"url": self.url, "etag": headers.get("ETag"), "last_modified": headers.get("Last-Modified"),
                     "total": total, "encoded": encoded}
        if self.record:
            try:
                atomic_write_json(self.meta_path, self.meta, indent=1)
            except DiskFullError:
                raise self.disk_full() from None

    def expect_total(self, total: int, start: int) -> None:
        if self.size is not None and total != self.size:
            self.restart()
            raise ChecksumError(
                f"{self.url} is {human_bytes(total)} but {self.dest.name} should be {human_bytes(self.size)}; the "
                "file on the server has changed, so update the expected size or use another source.")
        self.total = total
        if self.bar.total != total:
            self.bar.reset(total=total)
            self.bar.update(start)
        check_disk_space(self.dest.parent, total - start, f"Downloading {self.dest.name}")

    def receive(self, response, start: int, mode: str, decoder) -> None:
        """Append the body to .part (decoded if compressed), watching the pace; a full disk is one sentence."""
        self.prime_hashers(start)
        self.pace.new_window()
        try:
            with self.part.open(mode) as out:
                while data := self.read(response):
                    why = self.pace.problem(len(data))
                    self.write(out, decoder.decompress(data) if decoder is not None else data)
                    if why:
                        raise self.too_slow(why)
                if decoder is not None:
                    self.write(out, decoder.flush())
                out.flush()
                os.fsync(out.fileno())  # the rename in finish() must never publish bytes still in a cache
        except zlib.error as err:
            raise _Retry(f"the compressed body was damaged ({_why(err)})") from None
        except OSError as err:
            if is_disk_full(err) and not isinstance(err, DownloadError):
                raise self.disk_full() from None
            raise
        if decoder is not None and not decoder.eof:
            raise _Retry("the compressed body was cut short")  # and, compressed, it cannot be resumed: restarts

    def read(self, response) -> bytes:
        try:
            return response.read1(self.chunk)  # whatever has arrived: a trickle must not hide in a long read
        except (OSError, http.client.HTTPException) as err:
            raise _Retry(f"the transfer broke off ({_why(err)})") from None

    def write(self, out, data: bytes) -> None:
        out.write(data)
        for h in self.hashers.values():
            h.update(data)
        self.hashed += len(data)
        self.bar.update(len(data))

    # completion ------------------------------------------------------------------------------------------------
    def finish(self) -> None:
        """Check size, digests or format of the complete .part, then publish it under its final name."""
        got = self.part_size()
        if self.size is not None and got != self.size:
            self.restart()
            raise ChecksumError(f"{self.dest.name} arrived with {got} bytes instead of {self.size}, so it was "
                                "deleted; run the same call again.")
        if not self.part.exists():
            self.part.touch()  # an empty file is still a file
        self.prime_hashers(got)
        digests = {name: h.hexdigest() for name, h in self.hashers.items()}
        for name, expected in self.want.items():
            if digests[name] != expected:
                self.restart()
                raise ChecksumError(
                    f"{self.dest.name} from {self.url} has the wrong {name.upper()} ({digests[name][:12]}… "
                    f"instead of {expected[:12]}…), so it was deleted; run the same call again, and if it "
                    "fails twice the file on the server has changed.")
        if not self.want:
            self.check_content()
        os.replace(self.part, self.dest)
        self.meta_path.unlink(missing_ok=True)
        if self.record:
            st = self.dest.stat()
            _write_record(record_path(self.dest), {"url": self.url, "size": st.st_size,
                                                   "mtime_ns": st.st_mtime_ns, **digests})

    def check_content(self) -> None:
        """Without a checksum, only the format (or a stated length) can tell a whole file from a wrong one."""
        complete = self.total is not None or self.framed
        if self.expect is not None:
            if problem := content_problem(self.part, self.expect, complete):
                raise self.wrong_content(problem)
        elif not complete:
            self.restart()
            raise WrongContentError(
                f"{self.url} sent {self.dest.name} without stating its length, so a transfer cut short cannot be "
                "told from a complete one and it was deleted; give download() a checksum (sha256= or md5=) or "
                "the expected format (expect=), or fetch it from a server that sends Content-Length.")


def _usable(dest: Path, sha256, size, md5, expect, record: bool) -> bool:
    """Is the `dest` already on disk the file asked for? A wrong one is deleted (and fetched again)."""
    if not is_complete(dest, sha256=sha256, size=size, md5=md5, write_record=record):
        print(f"{dest.name} is not the expected file (size or checksum differs); downloading it again.")
        return False
    if expect is None or sha256 or md5:
        return True
    problem = content_problem(dest, expect, complete=True)
    if problem is None:
        return True
    print(f"{dest.name} is {problem}, not a {KINDS[expect]}; downloading it again.")
    discard(dest)
    return False


def download(url: str, dest: str | Path, sha256: str | None = None, size: int | None = None, retries: int = 4,
             backoff: float = 1.0, timeout: float = 30.0, progress: bool = True, chunk: int = 1 << 20, *,
             md5: str | None = None, record: bool = True, expect: str | None = None,
             deadline: float | None = None, min_rate: float | None = MIN_RATE,
             rate_window: float = RATE_WINDOW) -> Path:
    """Fetch `url` to `dest`: resumable (HTTP Range), retried with back-off, verified, atomic.

    An existing `dest` that matches `size`/`sha256`/`md5` (and `expect`) is returned without any network access
    (its record `<dest>.download.json` spares re-hashing). The transfer grows in `<dest>.part`, which a later call
    resumes only if the server still has the same file (ETag / Last-Modified via If-Range, total size), and
    becomes `dest` only when complete and verified: by `sha256`/`md5` when given, else by its format
    (`expect="zip"|"json"|"jpeg"`: the Content-Type must fit and a zip must open, a JSON file parse, a JPEG start
    like one and decode when its length was not stated); an HTML page is never published as one of those. A body
    of unstated length with neither a checksum nor `expect` is refused. A gzip-compressed body is decoded.
    Connection errors, 5xx answers and cut-off bodies are retried `retries` times, waiting `backoff`,
    2*`backoff`, ... seconds; an attempt that brought new bytes does not use up a retry. The call gives up with
    `TooSlowError` after `deadline` seconds in all, or when fewer than `min_rate` bytes/s arrive over
    `rate_window` seconds. `record=False` skips the record and resume metadata (many small files).
    Raises `NetworkUnavailableError`, `ChecksumError` (`WrongContentError`), `TooSlowError`,
    `InsufficientDiskSpaceError` (a `DiskFullError`) or `DownloadError`, each with one sentence.
    """
    dest = Path(dest)
    want = _expected_digests(sha256, md5)
    _check_expect(expect)
    if dest.is_dir():
        raise IsADirectoryError(f"{dest} is a folder; give download() the path of the file to write.")
    if dest.exists() and _usable(dest, sha256, size, md5, expect, record):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    transfer = _Transfer(url, dest, size=size, want=want, expect=expect, chunk=chunk, timeout=timeout,
                         progress=progress, record=record, pace=_Pace(deadline, min_rate, rate_window))
    if size is not None:
        check_disk_space(dest.parent, size - transfer.part_size(), f"Downloading {dest.name}")
    try:
        _attempts(transfer, retries, backoff)
        transfer.finish()
    finally:
        transfer.bar.close()
    return dest


def _attempts(transfer: _Transfer, retries: int, backoff: float) -> None:
    """Run attempts until the .part is whole; after `retries` fruitless ones in a row, one sentence."""
    failures, attempts, best, last = 0, 0, transfer.part_size(), ""
    while True:
        attempts += 1
        try:
            transfer.attempt()
            return
        except _Retry as retry:
            last = retry.reason
            now = transfer.part_size()
            failures = 0 if now > best else failures + 1  # progress keeps a slow, flaky link going
            best = max(best, now)
            if failures > retries:
                break
            delay = backoff * 2 ** max(failures - 1, 0)
            if retry.wait is not None:
                delay = max(delay, min(retry.wait, 60.0))
            transfer.wait(min(delay, 60.0) * (1 + 0.1 * random.random()))  # jitter: parallel fetchers spread out
    if not transfer.contacted:
        raise _no_network(transfer.url, last)
    kept = transfer.part_size()
    keep = f" (the {human_bytes(kept)} already fetched are kept)" if kept else ""
    raise DownloadError(f"Could not download {transfer.url} after {attempts} attempts ({last}); run the same call "
                        f"again to resume{keep}, or try again later.")


# --------------------------------------------------------------------------------------------------------------
# Zip archives


def _marker_path(zip_path: Path, dest_dir: Path) -> Path:
    return dest_dir / f".{zip_path.name}.extracted.json"


def _move_into(src: Path, dst: Path) -> None:
    """Move the tree `src` into `dst`: whole folders by one rename where `dst` lacks them, else file by file."""
    dst.mkdir(parents=True, exist_ok=True)
    for entry in os.scandir(src):
        target = dst / entry.name
        if entry.is_dir(follow_symlinks=False) and target.is_dir():
            _move_into(Path(entry.path), target)
            os.rmdir(entry.path)
        else:
            os.replace(entry.path, target)


def _damaged(zip_path: Path, why: str, delete: bool) -> CorruptArchiveError:
    if delete:
        discard(zip_path)
        return CorruptArchiveError(f"{zip_path.name} was damaged and has been deleted ({why}); run the same call "
                                   "again to download it afresh.")
    return CorruptArchiveError(f"{zip_path.name} is damaged ({why}); delete it and download it again.")


def extract_zip(zip_path: str | Path, dest_dir: str | Path, members: Iterable[str] | None = None,
                progress: bool = True, delete_corrupt: bool = True) -> Path:
    """Unpack `zip_path` (all of it, or `members`, matched by full name or file name) into `dest_dir`, safely.

    The central directory is read before anything is written (a cut-off download fails here) and every member's
    CRC is checked as it is unpacked into a temporary folder inside `dest_dir`; only a complete extraction is
    moved into place and marked done with `.<zip name>.extracted.json`. A later call with the same archive (or
    after the archive was deleted) returns at once. A damaged archive is deleted (`delete_corrupt`), so that
    running the same preparation again downloads it afresh; nothing that looks complete is left behind.
    """
    zip_path, dest_dir = Path(zip_path), Path(dest_dir)
    wanted = None if members is None else sorted(set(members))
    marker = _marker_path(zip_path, dest_dir)
    done = _read_json(marker)
    if done is not None:
        covered = done.get("members") is None or (wanted is not None and set(wanted) <= set(done["members"]))
        same_zip = not zip_path.exists() or done.get("zip_size") == zip_path.stat().st_size
        if covered and same_zip:
            return dest_dir
    if not zip_path.is_file():
        raise FileNotFoundError(f"No archive at {zip_path}; download it first (run the same preparation call).")
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise _damaged(zip_path, f"not a complete zip archive: {_why(err)}", delete_corrupt) from None
    with zf:
        infos = zf.infolist()
        if wanted is not None:
            infos = [i for i in infos if i.filename in wanted or Path(i.filename).name in wanted]
            found = {i.filename for i in infos} | {Path(i.filename).name for i in infos}
            lacking = [name for name in wanted if name not in found]
            if lacking:
                raise CorruptArchiveError(f"{zip_path.name} does not contain {', '.join(lacking)}; it is not the "
                                          "expected archive, so delete it and check where it came from.")
        check_disk_space(dest_dir, sum(i.file_size for i in infos), f"Unpacking {zip_path.name}")
        tmp = dest_dir / f".{zip_path.name}.extracting"
        shutil.rmtree(tmp, ignore_errors=True)  # a leftover of an interrupted run
        tmp.mkdir(parents=True)
        try:
            for info in tqdm(infos, desc=f"unzip {zip_path.name}", unit="file", disable=not progress,
                             leave=False):
                zf.extract(info, tmp)  # reads to the end of the member, which checks its CRC-32
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise _damaged(zip_path, _why(err), delete_corrupt) from None
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            if is_disk_full(err):
                raise _unpack_disk_full(dest_dir, zip_path) from None
            raise
    _move_into(tmp, dest_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        atomic_write_json(marker, {"zip": zip_path.name, "zip_size": zip_path.stat().st_size, "members": wanted,
                                   "files": sum(not i.is_dir() for i in infos)}, indent=1)
    except DiskFullError:
        raise _unpack_disk_full(dest_dir, zip_path) from None  # unmarked, so the next run unpacks it again
    return dest_dir


def _unpack_disk_full(dest_dir: Path, zip_path: Path) -> InsufficientDiskSpaceError:
    return InsufficientDiskSpaceError(f"The disk under {dest_dir} filled up while unpacking {zip_path.name}; free "
                                      "some space or set LAB_DATA_DIR to a folder on a bigger disk.")


# --------------------------------------------------------------------------------------------------------------
# Several places for one file


@dataclass(frozen=True)
class Source:
    """One place a file can come from, with what is known about it (checked when given)."""

    url: str
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None
    filename: str | None = None  # default: the last part of the URL's path
    expect: str | None = None  # the format checked when no checksum is known: "zip", "json", "jpeg"


def known_source(url: str) -> Source:
    """A `Source` for `url` carrying the size and checksums `KNOWN_FILES` records for it (none if unknown)."""
    return Source(url, **KNOWN_FILES.get(url, {}))


@dataclass
class SourceResult:
    """Which source delivered (`url`), where the file is (`path`), and why earlier sources failed."""

    url: str
    path: Path
    failures: dict[str, str] = field(default_factory=dict)


def try_sources(sources: Sequence[str | Source], dest_dir: str | Path, retries: int = 1, backoff: float = 1.0,
                timeout: float = 30.0, progress: bool = True) -> SourceResult:
    """Download from the first of `sources` that delivers a verified file into `dest_dir`.

    A file already there from any source is used without network access. Each failure (dead link, moved host,
    wrong checksum, no network) moves on to the next source; when all fail, `DownloadError` lists one sentence
    per source, and the caller can fall back (e.g. `coco.build_karpathy_like_split`).
    """
    sources = [Source(s) if isinstance(s, str) else s for s in sources]
    if not sources:
        raise ValueError("try_sources() needs at least one source URL.")
    dest_dir = Path(dest_dir)
    for src in sources:
        dest = dest_dir / (src.filename or _url_name(src.url))
        if is_complete(dest, sha256=src.sha256, size=src.size, md5=src.md5) and (
                src.expect is None or src.sha256 or src.md5 or content_problem(dest, src.expect, True) is None):
            return SourceResult(src.url, dest)
    failures: dict[str, str] = {}
    for src in sources:
        dest = dest_dir / (src.filename or _url_name(src.url))
        try:
            path = download(src.url, dest, sha256=src.sha256, size=src.size, md5=src.md5, retries=retries,
                            backoff=backoff, timeout=timeout, progress=progress, expect=src.expect)
        except InsufficientDiskSpaceError:
            raise  # another source will not fit either
        except DownloadError as err:
            failures[src.url] = str(err)
            continue
        return SourceResult(src.url, path, failures)
    lines = "\n".join(f"  - {message}" for message in failures.values())
    raise DownloadError(f"None of the {len(sources)} sources of {_url_name(sources[0].url)} delivered it:\n{lines}")


# --------------------------------------------------------------------------------------------------------------
# Many small files (subset mode)


@dataclass
class FetchReport:
    """What `fetch_images_by_url` did: counts, failures (url -> one-sentence reason), bytes and seconds."""

    requested: int = 0
    fetched: int = 0
    skipped: int = 0  # already on disk
    failed: dict[str, str] = field(default_factory=dict)
    bytes: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when every requested file is now on disk."""
        return not self.failed

    @property
    def files_per_s(self) -> float:
        """Fetched files per second of wall time."""
        return self.fetched / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        text = (f"fetched {self.fetched} of {self.requested} files ({self.skipped} already there, "
                f"{len(self.failed)} failed), {human_bytes(self.bytes)} in {self.seconds:.1f} s")
        if self.failed:
            url, why = next(iter(self.failed.items()))
            text += f"; first failure: {url}: {why}"
        return text


def fetch_images_by_url(entries: Iterable[tuple[str, str | Path]], workers: int = 16, retries: int = 3,
                        backoff: float = 0.5, timeout: float = 30.0, progress: bool = True,
                        expect: str | None = "auto") -> FetchReport:
    """Download many `(url, dest)` files in parallel threads, each with `download` (atomic, retried).

    Each file is checked as `expect` ("auto": by its name, so a `.jpg` must be a JPEG and an HTML page is refused).
    Files already on disk are skipped, so re-running fetches only what is missing. A failing URL is recorded in
    `report.failed` and the batch goes on; only "no network at all" before anything arrived, or a full disk,
    stops the batch (raising `NetworkUnavailableError` / `InsufficientDiskSpaceError`).
    """
    started = time.perf_counter()
    report = FetchReport()
    todo: dict[Path, str] = {}
    for url, dest in entries:
        dest = Path(dest)
        if dest in todo:
            continue
        report.requested += 1
        if dest.exists():
            report.skipped += 1
        else:
            todo[dest] = url
    stop = threading.Event()
    fatal: list[DownloadError] = []

    def fetch(url: str, dest: Path) -> int | None:
        if stop.is_set():
            return None
        kind = expected_kind(dest) if expect == "auto" else expect
        download(url, dest, retries=retries, backoff=backoff, timeout=timeout, progress=False, record=False,
                 expect=kind)
        return dest.stat().st_size

    # Threads suit this: each worker mostly waits on its socket, and urllib releases the GIL while it does.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        jobs = {pool.submit(fetch, url, dest): url for dest, url in todo.items()}
        for job in tqdm(as_completed(jobs), total=len(jobs), desc="images", unit="img", disable=not progress):
            url = jobs[job]
            try:
                size = job.result()
            except InsufficientDiskSpaceError as err:
                stop.set()
                fatal.append(err)
                report.failed[url] = str(err)
                continue
            except NetworkUnavailableError as err:
                if report.fetched == 0:  # nothing ever arrived: the network is down, not this one image
                    stop.set()
                    fatal.append(err)
                report.failed[url] = str(err)
                continue
            except DownloadError as err:
                report.failed[url] = str(err)
                continue
            if size is None:
                report.failed[url] = "Not tried, because the batch stopped early."
            else:
                report.fetched += 1
                report.bytes += size
    report.seconds = time.perf_counter() - started
    if fatal and (isinstance(fatal[0], InsufficientDiskSpaceError) or report.fetched == 0):
        raise fatal[0]
    return report
