"""One writer per feature cache, and no reader ever sees a half-built one: two REAL processes building the same
cache, started in the orders that used to leave a cache marked complete with all-zero rows (a second build
deleted and recreated the folder while the first wrote through a memory map of the deleted file).

Each process is tests/feature_cache_worker.py; handshake files make the interleavings deterministic (no sleeps
guessing how long an import takes). Every finished process re-reads the cache from disk, and the test compares it
byte for byte with a build made by one process alone.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import feature_cache_worker as worker
import pytest

WORKER = Path(worker.__file__)
TIMEOUT = 120


@pytest.fixture(scope="module")
def reference(tiny_cfg, tmp_path_factory, single_torch_thread):
    """SHA-256 of features.npy built by this process alone, undisturbed."""
    cfg = worker.config(tiny_cfg.data_root, tmp_path_factory.mktemp("reference"))
    cache = worker.build(cfg)
    return worker.features_digest(cache.folder), len(cache)


class Run:
    """A worker process with its spec, stderr in a file, and the handshake folder."""

    def __init__(self, name, tiny_cfg, build_dir, signals, **spec):
        self.name, self.signals = name, signals
        spec_file = signals / f"{name}.spec.json"
        spec_file.write_text(json.dumps({"data_root": str(tiny_cfg.data_root), "build_dir": str(build_dir),
                                         "name": name, "signals": str(signals), **spec}))
        self.err_path = signals / f"{name}.err"
        with open(self.err_path, "w") as err:
            self.proc = subprocess.Popen([sys.executable, str(WORKER), str(spec_file)], stdout=err, stderr=err)

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    @property
    def paused(self) -> bool:
        return (self.signals / f"{self.name}.paused").exists()

    @property
    def waiting(self) -> bool:
        return "Waiting for process" in self.stderr

    def report(self) -> dict:
        assert self.proc.wait(TIMEOUT) == 0, self.stderr
        return json.loads((self.signals / f"{self.name}.json").read_text())


def wait_until(condition, runs, what):
    """Poll `condition` until true; fail with the workers' output if a worker exits first or it takes too long."""
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        exited = [r for r in runs if r.proc.poll() is not None]
        if exited or time.monotonic() > deadline:
            for r in runs:
                if r.proc.poll() is None:
                    r.proc.kill()
            pytest.fail(f"{what} did not happen; " + "; ".join(f"{r.name} (exit {r.proc.poll()}): {r.stderr[-500:]}"
                                                               for r in runs))
        time.sleep(0.02)


@pytest.fixture
def setup(tiny_cfg, tmp_path):
    signals = tmp_path / "signals"
    signals.mkdir()
    build_dir = tmp_path / "build"
    return lambda name, **spec: Run(name, tiny_cfg, build_dir, signals, **spec), signals


def assert_equals_reference(report, reference):
    digest, n = reference
    assert report["zero_rows"] == 0
    assert report["sha256"] == digest


def test_a_second_build_started_mid_build_waits_then_finds_the_cache_complete(setup, reference):
    start, signals = setup
    a = start("a", pause_at_batch=5)  # rows 0-11 committed, 12-15 written, then A holds still
    b = start("b", start_after="a.paused")
    wait_until(lambda: b.waiting, [a, b], "B waiting for A's lock")
    (signals / "go").touch()
    ra, rb = a.report(), b.report()
    assert (ra["encoded"], rb["encoded"]) == (reference[1], 0)  # one writer: B encoded nothing
    assert b.stderr.count("Waiting for process") == 1 and "feature cache" in b.stderr  # said once
    assert_equals_reference(ra, reference)
    assert_equals_reference(rb, reference)


def test_a_build_killed_mid_build_is_resumed_by_the_next_process(setup, reference):
    start, signals = setup
    a = start("a", pause_at_batch=5)
    b = start("b", start_after="a.killed")
    wait_until(lambda: a.paused, [a], "A reaching batch 5")
    a.proc.send_signal(signal.SIGKILL)  # mid-chunk: rows 12-15 are written but not committed
    assert a.proc.wait(TIMEOUT) == -signal.SIGKILL
    (signals / "a.killed").touch()
    rb = b.report()
    assert rb["encoded"] == reference[1] - worker.CHUNK  # resumed after the committed rows, not from scratch
    assert not b.waiting  # the kernel released the dead holder's lock
    assert_equals_reference(rb, reference)


def test_two_builds_started_together_have_one_writer(setup, reference):
    start, signals = setup
    runs = [start("a", pause_at_batch=2), start("b", pause_at_batch=2)]

    def one_writes_one_waits():
        paused = [r for r in runs if r.paused]
        assert len(paused) < 2, "both processes were encoding the same cache at once"
        return len(paused) == 1 and any(r.waiting for r in runs if r is not paused[0])

    wait_until(one_writes_one_waits, runs, "one process writing while the other waits")
    (signals / "go").touch()
    reports = [r.report() for r in runs]
    assert sorted(r["encoded"] for r in reports) == [0, reference[1]]
    for r in reports:
        assert_equals_reference(r, reference)
    assert os.path.samefile(reports[0]["folder"], reports[1]["folder"])
