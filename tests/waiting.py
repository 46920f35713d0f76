"""Shared by the one-writer tests: start a writer while the test holds the folder's lock, and see it wait."""

import threading
import time

import pytest


def start_and_see_it_wait(target, capsys, what: str, seconds: float = 5.0) -> threading.Thread:
    """Run `target` on a thread; return the thread once it has said "Waiting for ..." on stderr (else fail).

    The test holds the lock with `folder_lock` in this process: flock conflicts between open files as it does
    between processes, so the thread sees exactly what a second notebook would.
    """
    worker = threading.Thread(target=target)
    worker.start()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if "Waiting for" in capsys.readouterr().err:
            return worker
        time.sleep(0.02)
    pytest.fail(f"{what} did not wait for the folder's lock")
