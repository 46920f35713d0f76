"""The shared file-safety plumbing: atomic writes, one-writer locks, ownership markers, full disks."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from labutils.infra import files
from labutils.infra.files import DiskFullError, FolderBusyError, NotLabFolderError


def test_atomic_write_json_replaces_whole_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a.json"
    files.atomic_write_json(target, {"x": 1})
    files.atomic_write_json(target, {"x": 2})
    assert json.loads(target.read_text()) == {"x": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with files.atomic_write(target, "w", encoding="utf-8") as out:
            out.write("half of the new")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_atomic_write_gives_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = files.atomic_write_bytes(tmp_path / "b.bin", b"x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_full_disk_is_one_sentence_and_keeps_the_previous_file(small_disk):
    disk = small_disk(64 * 1024)
    target = disk / "big.bin"
    target.write_bytes(b"previous")
    with pytest.raises(DiskFullError) as err:
        files.atomic_write_bytes(target, b"\0" * 256 * 1024, what="the test file")
    message = str(err.value)
    assert "full" in message and "the test file" in message and str(disk) in message
    assert "\n" not in message
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in disk.iterdir()) == ["big.bin"]


def test_preallocate_reserves_real_blocks_or_refuses(small_disk):
    disk = small_disk(256 * 1024)
    files.preallocate(disk / "fits.bin", 128 * 1024, "a cache")
    assert os.stat(disk / "fits.bin").st_blocks * 512 >= 128 * 1024  # real blocks, not a sparse file
    with pytest.raises(DiskFullError, match="a cache"):
        files.preallocate(disk / "too_big.bin", 1024 * 1024, "a cache")


def test_ensure_free_space_names_the_need(tmp_path):
    with pytest.raises(DiskFullError, match="needs"):
        files.ensure_free_space(tmp_path, 1 << 60, "the features")
    files.ensure_free_space(tmp_path, 1, "the features")


def test_only_lab_made_or_empty_folders_are_removed(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "photo.jpg").write_bytes(b"precious")
    with pytest.raises(NotLabFolderError, match="did not write") as err:
        files.remove_lab_folder(theirs, "synthetic", "shapes")
    assert str(theirs) in str(err.value)
    assert (theirs / "photo.jpg").read_bytes() == b"precious"

    ours = tmp_path / "ours"
    ours.mkdir()
    files.mark_made_by_lab(ours, "synthetic")
    (ours / "x").write_text("generated")
    files.remove_lab_folder(ours, "synthetic", "shapes")
    assert not ours.exists()

    other_kind = tmp_path / "cache"
    other_kind.mkdir()
    files.mark_made_by_lab(other_kind, "feature-cache")
    (other_kind / "x").write_text("generated")
    with pytest.raises(NotLabFolderError):
        files.remove_lab_folder(other_kind, "synthetic", "shapes")

    empty = tmp_path / "empty"
    empty.mkdir()
    files.remove_lab_folder(empty, "synthetic", "shapes")
    assert not empty.exists()
    files.remove_lab_folder(tmp_path / "missing", "synthetic", "shapes")


def test_a_forged_or_broken_marker_is_not_proof(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / files.MARKER_FILE).write_text('{"made_by": "someone else", "kind": "synthetic"}')
    assert not files.made_by_lab(folder)
    (folder / files.MARKER_FILE).write_text("{not json")
    assert not files.made_by_lab(folder)


HOLD = textwrap.dedent("""
    import sys, time
    from labutils.infra.files import folder_lock
    with folder_lock(sys.argv[1], "the test data"):
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
""")


def _holder(folder, seconds):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(seconds)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_writer_is_refused_with_one_sentence_naming_the_holder(tmp_path):
    folder = tmp_path / "cache"
    proc = _holder(folder, 30)
    try:
        with pytest.raises(FolderBusyError) as err:
            with files.folder_lock(folder, "the test data", wait=False):
                pass
        assert f"process {proc.pid}" in str(err.value).lower() and "the test data" in str(err.value)
    finally:
        proc.kill()
        proc.wait()


def test_second_writer_waits_and_says_so_once(tmp_path):
    folder = tmp_path / "cache"
    proc = _holder(folder, 1.0)
    said = []
    started = time.monotonic()
    with files.folder_lock(folder, "the test data", notify=said.append, poll=0.05):
        waited = time.monotonic() - started
    proc.wait()
    assert waited > 0.3
    assert len(said) == 1 and "Waiting for process" in said[0]


# Takes the lock as folder_lock does, then names itself only after argv[2] seconds: the gap every holder has
# between flock and writing its pid, stretched.
LATE = textwrap.dedent("""
    import fcntl, json, os, socket, sys, time
    from labutils.infra.files import lock_path
    path = lock_path(sys.argv[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.ftruncate(fd, 0)
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
    time.sleep(float(sys.argv[3]))
""")


def _late_holder(folder, unnamed_s, then_s):
    proc = subprocess.Popen([sys.executable, "-c", LATE, str(folder), str(unnamed_s), str(then_s)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_waiter_that_arrives_before_the_holder_names_itself_still_names_it(tmp_path):
    folder = tmp_path / "cache"
    proc = _late_holder(folder, 0.4, 0.6)
    said = []
    with files.folder_lock(folder, "the test data", notify=said.append, poll=0.05):
        pass
    proc.wait()
    assert said == [f"Waiting for process {proc.pid} on {socket.gethostname()}, which is writing the test data in "
                    f"{folder} ..."]


def test_a_holder_that_never_names_itself_is_another_process_said_once(tmp_path):
    folder = tmp_path / "cache"
    proc = _late_holder(folder, 30, 0)
    said = []
    try:
        with pytest.raises(FolderBusyError, match="Another process is already writing the test data"):
            with files.folder_lock(folder, "the test data", notify=said.append, poll=0.05, timeout=1.5):
                pass
    finally:
        proc.kill()
        proc.wait()
    assert len(said) == 1 and said[0].startswith("Waiting for another process, which is writing the test data")


def test_a_killed_holder_does_not_block(tmp_path):
    folder = tmp_path / "cache"
    proc = _holder(folder, 60)
    proc.kill()
    proc.wait()
    with files.folder_lock(folder, "the test data", wait=False):
        pass


def test_lock_survives_the_folder_being_replaced(tmp_path):
    # The lock file is a sibling: a writer that deletes and recreates the folder still holds it.
    folder = tmp_path / "cache"
    with files.folder_lock(folder, "x"):
        folder.mkdir()
        os.rmdir(folder)
        assert files.lock_path(folder).exists()
        with pytest.raises(FolderBusyError):
            # a second open file description in this process counts as another writer, as flock does
            with files.folder_lock(folder, "x", wait=False):
                pass
