"""Safe file handling shared by every writer in the lab.

Four rules, each implemented once here:

* **Atomic writes.** A file is written beside its destination and renamed over it, so a reader sees the old file
  or the new one, never half of one (`atomic_write`, `atomic_write_json`, `atomic_write_bytes`).
* **One writer per folder.** `folder_lock` takes an advisory `flock` on a lock file next to the folder. The
  kernel drops it when the holder exits or is killed, so a dead holder never blocks anyone; a second process
  waits (saying so once) or stops with one sentence.
* **Never delete what the lab did not write.** A folder the lab creates gets an ownership marker
  (`mark_made_by_lab`); `remove_lab_folder` deletes only an empty folder or one carrying that marker, and
  otherwise stops with one sentence naming the folder.
* **A full disk is one sentence.** `DiskFullError` replaces ENOSPC/EDQUOT tracebacks; `preallocate` reserves a
  file's blocks up front so that a memory-mapped write can never hit a full disk (which would be SIGBUS).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

MARKER_FILE = ".labutils-made.json"
_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class DiskFullError(OSError):
    """The disk (or quota) ran out while the lab was writing; nothing half-written was kept."""

    def __str__(self) -> str:
        # OSError's own str() puts "[Errno 28] " before the sentence, which is meant to be the whole message.
        return self.strerror or super().__str__()


class FolderBusyError(RuntimeError):
    """Another process is writing the same folder."""


class NotLabFolderError(RuntimeError):
    """A folder the lab would replace holds files the lab did not write."""


# ------------------------------------------------------------------------------------------------ disk space
def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _existing(path: Path) -> Path:
    """The nearest existing folder at or above `path` (disk usage needs a real path)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path if path.is_dir() else path.parent


def free_bytes(folder: str | Path) -> int:
    return shutil.disk_usage(_existing(Path(folder))).free


def is_disk_full(exc: BaseException) -> bool:
    """True for the OSErrors a full disk or an exhausted quota raise."""
    return isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS


def disk_full_error(folder: str | Path, what: str, need: int | None = None) -> DiskFullError:
    """The one sentence for a full disk: what was being written, where, and what to do."""
    folder = _existing(Path(folder))
    free = human_bytes(free_bytes(folder))
    need_text = f" (it needs {human_bytes(need)})" if need else ""
    return DiskFullError(errno.ENOSPC, f"The disk holding {folder} is full ({free} free) while writing {what}"
                         f"{need_text}; nothing half-written was kept: free some space (or point LAB_DATA_DIR / "
                         "LAB_BUILD_DIR at a bigger disk) and run it again.")


def ensure_free_space(folder: str | Path, need: int, what: str) -> None:
    """Stop with `DiskFullError` before writing `need` bytes that will not fit."""
    if need > free_bytes(folder):
        raise disk_full_error(folder, what, need)


@contextlib.contextmanager
def disk_full_as_error(folder: str | Path, what: str) -> Iterator[None]:
    """Turn ENOSPC/EDQUOT raised inside the block into `DiskFullError` (other errors pass unchanged)."""
    try:
        yield
    except DiskFullError:
        raise
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(folder, what) from exc
        raise


def preallocate(path: str | Path, size: int, what: str) -> None:
    """Reserve `size` bytes of real disk blocks for `path` (created if missing), or raise `DiskFullError`.

    A sparse file lets a memory-mapped write fault on a full disk, and the kernel answers that with SIGBUS, which
    kills Python without a message. With the blocks reserved up front, writing through the map never allocates.
    """
    path = Path(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(fd, 0, size)
                return
            except OSError as exc:
                if is_disk_full(exc):
                    raise disk_full_error(path.parent, what, size) from exc
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)):
                    raise
        # No fallocate (macOS, some network filesystems): fall back to checking the free space.
        have = os.fstat(fd).st_blocks * 512 if hasattr(os.stat_result, "st_blocks") else 0
        ensure_free_space(path.parent, max(0, size - have), what)
        if os.fstat(fd).st_size < size:
            os.ftruncate(fd, size)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------------ atomic writes
@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb", what: str | None = None,
                 encoding: str | None = None) -> Iterator:
    """Open a temporary file beside `path`; on success it is flushed, synced and renamed over `path`.

    On any error (a full disk included, raised as `DiskFullError`) the temporary file is removed and `path` is
    left as it was. The new file gets ordinary permissions (0666 less the umask), not mkstemp's private 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    what = what or str(path.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with disk_full_as_error(path.parent, what):
            with os.fdopen(fd, mode, encoding=encoding if "b" not in mode else None) as out:
                yield out
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes, what: str | None = None) -> Path:
    with atomic_write(path, "wb", what) as out:
        out.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, what: str | None = None) -> Path:
    with atomic_write(path, "w", what, encoding="utf-8") as out:
        out.write(text)
    return Path(path)


def atomic_write_json(path: str | Path, obj, what: str | None = None, **dump_kwargs) -> Path:
    with atomic_write(path, "w", what, encoding="utf-8") as out:
        json.dump(obj, out, **dump_kwargs)
    return Path(path)


# ------------------------------------------------------------------------------------------------ locks
def lock_path(folder: str | Path) -> Path:
    """The lock file of a folder: a hidden sibling, so deleting and recreating the folder keeps the lock."""
    folder = Path(folder).absolute()
    return folder.parent / f".{folder.name}.lock"


def _try_lock(fd: int) -> bool:
    if sys.platform == "win32":  # pragma: no cover - the lab's CI is Linux
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _unlock(fd: int) -> None:
    if sys.platform == "win32":  # pragma: no cover
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_UN)


_UNNAMED = "another process"
_NAMING_GRACE_S = 1.0


def _holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode() or "{}")
        return f"process {info['pid']} on {info['host']}"
    except (OSError, ValueError, KeyError):
        return _UNNAMED


@contextlib.contextmanager
def folder_lock(folder: str | Path, what: str, wait: bool = True, timeout: float | None = None,
                notify: Callable[[str], None] | None = None, poll: float = 0.2) -> Iterator[Path]:
    """Hold the one-writer lock of `folder` for the block (the folder itself need not exist).

    Another process holding it: with `wait`, wait (up to `timeout` seconds, None = as long as it takes), calling
    `notify` once with a sentence that says so (default: print it); without `wait` or after the timeout, raise
    `FolderBusyError`. It is not re-entrant (a second open file is a second writer, even in the same process):
    take it once, at the outermost writer.
    """
    path = lock_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        started, told = time.monotonic(), False
        while not _try_lock(fd):
            holder = _holder(fd)
            if not wait or (timeout is not None and time.monotonic() - started >= timeout):
                raise FolderBusyError(f"{holder.capitalize()} is already writing {what} in {Path(folder)}; "
                                      "wait for it to finish (or stop it), then run this again.")
            # A holder names itself just after taking the lock: give it a moment rather than say "another process".
            named = holder != _UNNAMED or time.monotonic() - started >= _NAMING_GRACE_S
            if not told and named:
                (notify or (lambda s: print(s, file=sys.stderr, flush=True)))(
                    f"Waiting for {holder}, which is writing {what} in {Path(folder)} ...")
                told = True
            time.sleep(poll)
        import socket

        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
        try:
            yield path
        finally:
            _unlock(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------------ ownership
def mark_made_by_lab(folder: str | Path, kind: str, **info) -> Path:
    """Record in `folder` that the lab made it (and what it is), so the lab may later replace it."""
    return atomic_write_json(Path(folder) / MARKER_FILE, {"made_by": "labutils", "kind": kind, **info},
                             what="the lab's ownership marker")


def lab_marker(folder: str | Path) -> dict | None:
    """The ownership marker of `folder`, or None when the lab did not make it (or it is unreadable)."""
    try:
        data = json.loads((Path(folder) / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("made_by") == "labutils" else None


def made_by_lab(folder: str | Path, kind: str | None = None) -> bool:
    marker = lab_marker(folder)
    return marker is not None and (kind is None or marker.get("kind") == kind)


def check_replaceable(folder: str | Path, kind: str, what: str) -> None:
    """Raise `NotLabFolderError` unless `folder` is missing, empty, or carries the lab's marker of `kind`."""
    folder = Path(folder)
    if not folder.exists():
        return
    if folder.is_dir() and not any(folder.iterdir()):
        return
    if made_by_lab(folder, kind):
        return
    raise NotLabFolderError(f"{folder} holds files the lab did not write, so it will not replace them with "
                            f"{what}; move that folder away (or set LAB_DATA_DIR / LAB_BUILD_DIR to another "
                            "folder) and run this again.")


def remove_lab_folder(folder: str | Path, kind: str, what: str) -> None:
    """Delete `folder` only if the lab made it as `kind` (or it is empty); otherwise `NotLabFolderError`."""
    check_replaceable(folder, kind, what)
    if Path(folder).exists():
        shutil.rmtree(folder)
