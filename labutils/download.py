"""Downloads that survive a workshop's Wi-Fi: resumable, retried, verified, atomic and idempotent.

Used by `labutils.coco.prepare_mscoco` for the MS-COCO archives, Karpathy's split and the per-image subset mode;
standard library only (urllib), so nothing extra has to be installed on Colab.

    download(url, dest, sha256=..., size=...)      one file: resume with HTTP Range, retry with back-off, verify
    extract_zip(zip_path, dest_dir)                 unpack through a temporary folder, leave a completion marker
    try_sources([url_a, url_b, ...], dest_dir)      the first source that delivers wins (moved or dead links)
    fetch_images_by_url([(url, dest), ...])         many small files in parallel; failures reported, not fatal

Every failure a learner can meet ends in one sentence saying what to do, and nothing half-written is ever left
under a final name: a transfer grows in `<dest>.part` and is renamed only once it is complete and verified.
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

from .coco import DatasetUnavailableError

USER_AGENT = "labutils (captioning lab; python-urllib)"
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}  # worth another try; any other 4xx/5xx will not change
DISK_MARGIN = 64 * 1024**2  # keep a little free space so the notebook itself can still write

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


class InsufficientDiskSpaceError(DownloadError):
    """Not enough free disk space for a download or an extraction."""


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


def check_disk_space(folder: str | Path, needed: int, what: str, margin: int = DISK_MARGIN) -> None:
    """Raise `InsufficientDiskSpaceError` (one sentence) unless `folder`'s disk has `needed` bytes (+ margin) free."""
    if needed <= 0:
        return
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


def _write_json(path: Path, obj) -> None:
    tmp = _sibling(path, f".tmp{os.getpid()}-{threading.get_ident()}")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


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
        return True  # written by an atomic rename, so an existing file is a complete one
    record = _read_json(record_path(dest)) or {}
    if record.get("size") != st.st_size or record.get("mtime_ns") != st.st_mtime_ns:
        record = {}  # stale: the file changed since it was recorded
    digests = {name: record[name] for name in ("sha256", "md5") if name in record}
    if not all(name in digests for name in want):
        # Hash once, then remember it (hashing 13.5 GB takes a minute or two on Colab).
        digests.update(_hash_file(dest, want))
        if write_record:
            _write_json(record_path(dest), {**record, "size": st.st_size, "mtime_ns": st.st_mtime_ns, **digests})
    return all(digests.get(name) == value for name, value in want.items())


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


class _Transfer:
    """State of one `download` call across attempts: the .part file, running digests, the progress bar."""

    def __init__(self, url, dest, size, want, chunk, timeout, progress, record):
        self.url, self.dest, self.size, self.want = url, dest, size, want
        self.chunk, self.timeout, self.record = chunk, timeout, record
        self.part, self.meta_path = part_path(dest), _part_meta_path(dest)
        self.digest_names = set(want)  # only what is checked: hashing is the CPU cost of a fast download
        self.hashers: dict = {}
        self.hashed = -1  # bytes of .part that self.hashers have seen; -1: not primed
        self.total: int | None = size
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

    # one attempt ---------------------------------------------------------------------------------------------
    def attempt(self) -> None:
        """Fetch the rest of the file into .part; return when complete, raise _Retry when worth another go."""
        start = self.part_size()
        meta = _read_json(self.meta_path) if self.record else None
        if start and self.record and (meta is None or meta.get("url") != self.url):
            self.restart()  # a leftover from another source or an older version: its bytes cannot be trusted
            start, meta = 0, None
        if self.total is not None and start > self.total:
            self.restart()
            start = 0
        if self.total is not None and start == self.total and start > 0:
            return
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        if start:
            headers["Range"] = f"bytes={start}-"
            if meta and meta.get("validator"):
                headers["If-Range"] = meta["validator"]  # the server sends the whole file if it has changed
        try:
            response = urllib.request.urlopen(urllib.request.Request(self.url, headers=headers),
                                              timeout=self.timeout)
        except urllib.error.HTTPError as err:
            self.contacted = True
            err.close()
            if err.code == 416 and start:
                _, total = _content_range(err.headers.get("Content-Range"))
                if total == start:  # the .part already holds the whole file
                    self.total = total
                    return
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
        with response:
            self.contacted = True
            length = response.headers.get("Content-Length")
            first, total = _content_range(response.headers.get("Content-Range"))
            if response.status == 206:
                if first != start:
                    self.restart()
                    raise _Retry("the server sent another part of the file than the one asked for")
                mode = "ab"
                if total is None and length is not None:
                    total = start + int(length)
            else:
                # A fresh start, or a server that ignored our Range: it is sending the whole file again.
                if start:
                    self.restart()
                start, mode = 0, "wb"
                total = int(length) if length is not None else None
            if total is not None:
                if self.size is not None and total != self.size:
                    self.restart()
                    raise ChecksumError(
                        f"{self.url} is {human_bytes(total)} but {self.dest.name} should be "
                        f"{human_bytes(self.size)}; the file on the server has changed, so update the expected "
                        "size or use another source.")
                self.total = total
                if self.bar.total != total:
                    self.bar.reset(total=total)
                    self.bar.update(start)
                check_disk_space(self.dest.parent, total - start, f"Downloading {self.dest.name}")
            if mode == "wb" and self.record:
                validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
                if validator and validator.startswith("W/"):
                    validator = response.headers.get("Last-Modified")  # If-Range needs a strong validator
                _write_json(self.meta_path, {"url": self.url, "validator": validator})
            self.prime_hashers(start)
            with self.part.open(mode) as out:
                while True:
                    try:
                        data = response.read(self.chunk)
                    except (OSError, http.client.HTTPException) as err:
                        raise _Retry(f"the transfer broke off ({_why(err)})") from None
                    if not data:
                        break
                    try:
                        out.write(data)
                    except OSError as err:
                        if err.errno == errno.ENOSPC:
                            raise InsufficientDiskSpaceError(
                                f"The disk under {self.dest.parent} filled up while downloading "
                                f"{self.dest.name}; free some space or set LAB_DATA_DIR to a folder on a bigger "
                                "disk, then run the same call again to resume.") from None
                        raise
                    for h in self.hashers.values():
                        h.update(data)
                    self.hashed += len(data)
                    self.bar.update(len(data))
                out.flush()
                os.fsync(out.fileno())  # the rename below must never publish bytes still in a cache
        if self.total is not None and self.part_size() < self.total:
            raise _Retry(f"the server closed the connection after {human_bytes(self.part_size())} of "
                         f"{human_bytes(self.total)}")

    # completion ------------------------------------------------------------------------------------------------
    def finish(self) -> None:
        """Check size and digests of the complete .part, then publish it under its final name."""
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
        os.replace(self.part, self.dest)
        self.meta_path.unlink(missing_ok=True)
        if self.record:
            st = self.dest.stat()
            _write_json(record_path(self.dest), {"url": self.url, "size": st.st_size,
                                                 "mtime_ns": st.st_mtime_ns, **digests})


def download(url: str, dest: str | Path, sha256: str | None = None, size: int | None = None, retries: int = 4,
             backoff: float = 1.0, timeout: float = 30.0, progress: bool = True, chunk: int = 1 << 20, *,
             md5: str | None = None, record: bool = True) -> Path:
    """Fetch `url` to `dest`: resumable (HTTP Range), retried with back-off, size/checksum-verified, atomic.

    An existing `dest` that matches `size`/`sha256`/`md5` is returned without any network access (its record
    `<dest>.download.json` spares re-hashing). The transfer grows in `<dest>.part`, which a later call resumes,
    and becomes `dest` only when complete and verified. Connection errors, 5xx answers and cut-off bodies are
    retried `retries` times, waiting `backoff`, 2*`backoff`, 4*`backoff`, ... seconds; an attempt that brought
    new bytes does not use up a retry. `record=False` skips the record and resume metadata (many small files).
    Raises `NetworkUnavailableError`, `ChecksumError`, `InsufficientDiskSpaceError` or `DownloadError`.
    """
    dest = Path(dest)
    want = _expected_digests(sha256, md5)
    if dest.is_dir():
        raise IsADirectoryError(f"{dest} is a folder; give download() the path of the file to write.")
    if dest.exists():
        if is_complete(dest, sha256=sha256, size=size, md5=md5, write_record=record):
            return dest
        print(f"{dest.name} is not the expected file (size or checksum differs); downloading it again.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    transfer = _Transfer(url, dest, size, want, chunk, timeout, progress, record)
    if size is not None:
        check_disk_space(dest.parent, size - transfer.part_size(), f"Downloading {dest.name}")
    failures, attempts, best, last = 0, 0, transfer.part_size(), ""
    try:
        while True:
            attempts += 1
            try:
                transfer.attempt()
                break
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
                time.sleep(min(delay, 60.0) * (1 + 0.1 * random.random()))  # jitter: parallel fetchers spread out
        if failures > retries:
            if not transfer.contacted:
                raise _no_network(url, last)
            kept = transfer.part_size()
            keep = f" (the {human_bytes(kept)} already fetched are kept)" if kept else ""
            raise DownloadError(f"Could not download {url} after {attempts} attempts ({last}); run the same call "
                                f"again to resume{keep}, or try again later.")
        transfer.finish()
    finally:
        transfer.bar.close()
    return dest


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
            if err.errno == errno.ENOSPC:
                raise InsufficientDiskSpaceError(f"The disk under {dest_dir} filled up while unpacking "
                                                 f"{zip_path.name}; free some space or set LAB_DATA_DIR to a "
                                                 "folder on a bigger disk.") from None
            raise
    _move_into(tmp, dest_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    _write_json(marker, {"zip": zip_path.name, "zip_size": zip_path.stat().st_size, "members": wanted,
                         "files": sum(not i.is_dir() for i in infos)})
    return dest_dir


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
        if is_complete(dest, sha256=src.sha256, size=src.size, md5=src.md5):
            return SourceResult(src.url, dest)
    failures: dict[str, str] = {}
    for src in sources:
        dest = dest_dir / (src.filename or _url_name(src.url))
        try:
            path = download(src.url, dest, sha256=src.sha256, size=src.size, md5=src.md5, retries=retries,
                            backoff=backoff, timeout=timeout, progress=progress)
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
                        backoff: float = 0.5, timeout: float = 30.0, progress: bool = True) -> FetchReport:
    """Download many `(url, dest)` files in parallel threads, each with `download` (atomic, retried).

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
        download(url, dest, retries=retries, backoff=backoff, timeout=timeout, progress=False, record=False)
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
