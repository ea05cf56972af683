"""One run per OUTPUT: an exclusive lock beside the target file.

Two runs writing the same OUTPUT would race for its work files and commit each other's
half-written pixels. A run therefore takes an exclusive ``flock`` on
``.NAME.geosr-lock`` beside OUTPUT before it touches anything, and a second run is refused
at once, with the holder named from what the holder wrote into the lock file. ``flock``
locks die with their process, so a killed run (SIGKILL, a lost node) never leaves a stale
lock - only a lock file that the next run reuses. On a shared filesystem ``flock`` is as
good as the filesystem's lock support (NFSv4, Lustre and GPFS with locking enabled).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import socket
from pathlib import Path

from geosr.errors import OutputError, OutputLockedError

__all__ = ["OutputLock", "OutputLocks", "lock_path"]


def lock_path(output: Path) -> Path:
    """``out.tif`` -> ``.out.tif.geosr-lock`` in the same folder."""
    return output.with_name(f".{output.name}.geosr-lock")


class OutputLock:
    """Exclusive lock on an OUTPUT path for the lifetime of a run (a context manager).

    Raises
    ------
    OutputLockedError
        Another process holds the lock; the message names it (pid, host, start time).
    """

    def __init__(self, output: str | os.PathLike) -> None:
        self.output = Path(output)
        self.path = lock_path(self.output)
        self._fd: int | None = None

    def __enter__(self) -> "OutputLock":
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise OutputError(f"cannot create the lock file {self.path}: {exc.strerror}") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 512).decode(errors="replace").strip() or "unknown process"
                os.close(fd)
                raise OutputLockedError(
                    f"{self.output} is being written by another geosr run ({holder}); "
                    "wait for it to finish or choose another OUTPUT"
                ) from None
            # The previous holder removes the lock file when it finishes: if it did so between
            # our open() and flock(), we locked an unlinked file that nobody else will see.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        started = datetime.datetime.now().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._fd is None:
            return
        # Unlink while still holding the lock: a waiting process then re-checks the inode.
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None


class OutputLocks(contextlib.ExitStack):
    """:class:`OutputLock` on each of several paths - an output and the sidecars other outputs
    write too (``out.tif``, ``out.tiff``, ``out.vrt`` and ``out.zarr`` all write
    ``out.captions.geojson``) - taken in turn, all released if one is refused.

    Raises
    ------
    OutputLockedError
        Another run holds one of them.
    """

    def __init__(self, paths) -> None:
        super().__init__()
        self.paths = list(paths)

    def __enter__(self) -> "OutputLocks":
        super().__enter__()
        try:
            for path in self.paths:
                self.enter_context(OutputLock(path))
        except BaseException:
            self.close()
            raise
        return self
