"""Work files deleted at once by name, their blocks freed by a helper process (geosr.deferred_free)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil

import geosr.deferred_free
from geosr.deferred_free import FREE_LATER_BYTES, free_pending_now, unlink_freeing_later
from geosr.journal import WorkFolder


def held_by_children(path: Path) -> bool:
    """Whether a child process of this one has ``path`` (deleted) open."""
    for child in psutil.Process().children(recursive=True):
        try:
            links = [os.readlink(f"/proc/{child.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{child.pid}/fd")]
        except OSError:  # gone meanwhile
            continue
        if any(link.startswith(str(path)) for link in links):
            return True
    return False


def test_the_names_go_at_once_and_no_process_keeps_the_files(tmp_path, monkeypatch):
    monkeypatch.setattr(geosr.deferred_free, "RELEASE_AFTER_SECONDS", 0.1)
    big = tmp_path / "pixels.raw"
    with open(big, "wb") as f:
        f.truncate(FREE_LATER_BYTES)
        f.write(b"x" * 4096)
    unlink_freeing_later([big])
    assert not big.exists() and list(tmp_path.iterdir()) == []
    deadline = time.monotonic() + 10
    while held_by_children(big):  # the helper lets go once this process closes the pipe
        assert time.monotonic() < deadline, "the helper kept the deleted file"
        time.sleep(0.05)


def test_a_work_folder_is_removed_with_its_large_files(tmp_path):
    folder = WorkFolder(tmp_path / ".out.tif.geosr-run-x")
    (folder.path / "blocks").mkdir(parents=True)
    (folder.path / "journal.jsonl").write_text("{}\n")
    (folder.path / "blocks" / "block_000_000.vrt").write_text("<VRTDataset/>")
    with open(folder.path / "pixels.raw", "wb") as f:
        f.truncate(FREE_LATER_BYTES + 1)
    folder.remove()
    assert list(tmp_path.iterdir()) == []


def test_a_missing_file_raises_and_the_others_are_still_deleted(tmp_path):
    big = tmp_path / "a.raw"
    big.write_bytes(b"a")
    try:
        unlink_freeing_later([big, tmp_path / "missing.raw"])
    except FileNotFoundError:
        pass
    else:
        raise AssertionError("a missing file raises as os.unlink does")
    assert not big.exists()


def test_a_next_run_frees_what_is_pending_at_once(tmp_path):
    # a script's next run checks the free space: the last run's raster must not count there
    big = tmp_path / "pixels.raw"
    with open(big, "wb") as f:
        f.truncate(FREE_LATER_BYTES)
        f.write(b"x" * 4096)
    unlink_freeing_later([big])
    assert held_by_children(big)  # within RELEASE_AFTER_SECONDS (5 s) the helper still holds it
    free_pending_now()
    assert not held_by_children(big)
    free_pending_now()  # nothing pending: a no-op
