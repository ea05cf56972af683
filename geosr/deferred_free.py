"""Deleting large work files without waiting for the filesystem to free their blocks.

Deleting a file frees its blocks when the last reference to it goes, and the process that
drops that reference waits for it. For a run's work raster that wait is long: a file written
piece by piece and ``fdatasync``-ed every second (the journal's commits) took ext4 1.1-1.5 s
to free at 201 MB (a 67 MP output), where the same file written at once and synced once
takes 0.1 s (docs/benchmarks.md, "The serial tail"). It came after the output was in place,
as the last step before the process could exit.

:func:`unlink_freeing_later` removes the file's *name* at once - nothing can open it any
more, the folder can go - and hands the last reference (an open descriptor) to a helper
process, ``cat`` reading a pipe from this one; this process closes its own descriptor (cheap:
the helper holds the file), and the helper, at the end of its input, exits and frees the blocks
on its own time. The end of input comes when this process exits, or
:data:`RELEASE_AFTER_SECONDS` after the call where it lives on (library use), whichever is first:
freeing takes the filesystem's journal for as long, and metadata operations that wait for it
(seen: the work folder's own ``rmdir``, 1.4 s) must not be this process's last steps. A thread
would not do where the process exits right after the run (the command line): the process's
exit waits for a thread that is inside the kernel freeing blocks.

Nothing can be left half done: a file without a name is freed by the kernel whenever its
last descriptor closes (a killed helper included), and after a crash by the filesystem's
orphan list at the next mount. Where the helper cannot start, the descriptors are closed
here, as a plain unlink would (slow, but the same end).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import threading
import time
from typing import Iterable

__all__ = ["FREE_LATER_BYTES", "RELEASE_AFTER_SECONDS", "free_pending_now", "unlink_freeing_later"]

log = logging.getLogger(__name__)

#: Files at least this large are freed by the helper; smaller ones are cheaper to delete here
#: than a process is to start (about 10 ms).
FREE_LATER_BYTES = 16 << 20
#: Seconds after which a process that lives on lets the helper free the blocks: past the rest of
#: a run (the lock, the local cluster's close: up to ~2 s with worker processes).
RELEASE_AFTER_SECONDS = 5.0

# Helpers still holding files, with the write end of their input: a run started in the same
# process within RELEASE_AFTER_SECONDS (a script upscaling scenes in a loop) frees them first
# (free_pending_now), or its free-space check would count blocks that are about to be free.
_PENDING: dict[subprocess.Popen, int] = {}
_PENDING_LOCK = threading.Lock()


def unlink_freeing_later(paths: Iterable[str | os.PathLike]) -> None:
    """Remove ``paths``' names now and free their blocks in a helper process, off this one's time.

    Raises
    ------
    OSError
        A name could not be removed (as :func:`os.unlink` would); names removed before it
        stay removed.
    """
    fds: list[int] = []
    try:
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.unlink(path)
            except BaseException:
                os.close(fd)
                raise
            fds.append(fd)
    finally:
        if fds:
            _hand_over(fds)


def _hand_over(fds: list[int]) -> None:
    """Give the last references to ``fds``' files (already unlinked) to a helper, and close them here."""
    helper = None
    read_end, write_end = os.pipe()  # not inherited by other children (os.pipe's are not inheritable)
    try:
        # start_new_session: a Ctrl-C to the command's process group is not the helper's
        # business (were it killed, it would only free the blocks at once).
        helper = subprocess.Popen(["cat"], stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  pass_fds=fds, start_new_session=True)
    except OSError:
        log.debug("no helper to free deleted work files: freed here", exc_info=True)
    finally:
        os.close(read_end)
        for fd in fds:  # with a helper holding them, not the last references: nothing to free here
            os.close(fd)
        if helper is None:
            os.close(write_end)
    if helper is None:
        return
    # The helper's input ends at this process's exit, or here after RELEASE_AFTER_SECONDS (or
    # at free_pending_now); the thread also reaps it. A daemon: it never holds the process's exit.
    with _PENDING_LOCK:
        _PENDING[helper] = write_end
    threading.Thread(target=_release, args=(helper,), name="geosr-free", daemon=True).start()


def _end_input(helper: subprocess.Popen) -> None:
    """Close ``helper``'s input (once: the timer and :func:`free_pending_now` may both ask)."""
    with _PENDING_LOCK:
        write_end = _PENDING.pop(helper, None)
    if write_end is not None:
        os.close(write_end)


def _release(helper: subprocess.Popen) -> None:
    time.sleep(RELEASE_AFTER_SECONDS)
    _end_input(helper)
    with contextlib.suppress(Exception):
        helper.wait()


def free_pending_now() -> None:
    """Free the blocks of every file handed over and not freed yet, and wait until they are.

    For a run that is about to check the free disk space in a process whose previous run ended
    moments ago: its work raster's blocks would still count as used.
    """
    with _PENDING_LOCK:
        pending = list(_PENDING)
    for helper in pending:
        _end_input(helper)
    for helper in pending:
        with contextlib.suppress(Exception):
            helper.wait()
