"""GDAL's long calls of the COG pass, stoppable by a signal and failing in one line.

rasterio's copy, overview and statistics calls run to their end once started: a Python signal
handler only runs when GDAL hands control back, so a SIGTERM 2-25 s into the COG pass was
honoured when the pass had finished (and its COG was then thrown away). Here the same GDAL
functions are called through ``ctypes``, on the libgdal rasterio has loaded and inside its
``rasterio.Env``, with a progress callback that can stop them: while a :class:`GdalPass` is
open, SIGINT and SIGTERM are noted instead of raising (a handler raising inside a ``ctypes``
callback would be lost), the next progress callback - GDAL calls it every block or row of
blocks - stops GDAL, and the signal is delivered again to its own handler when the pass is
left. A signal that comes once the last call is done is not delivered: the output is complete.

GDAL's messages are collected instead of going to rasterio's logger, and libtiff's, which it
prints to stderr itself ("_tiffWriteProc: No space left on device."), are read from a
temporary stderr: a failure is one :class:`GdalFailure` that says whether the disk was full.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import logging
import os
import re
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Iterator, Mapping

from geosr.errors import GDAL_ERRORS, StopRequested, gdal_cause

__all__ = ["GdalPass", "GdalFailure", "loaded_libgdal"]

log = logging.getLogger(__name__)

_PROGRESS = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_double, ctypes.c_char_p, ctypes.c_void_p)
_ERROR_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_int, ctypes.c_char_p)
_OF_UPDATE, _OF_RASTER, _OF_VERBOSE_ERROR = 0x01, 0x02, 0x40
_CE_WARNING, _CE_FAILURE = 2, 3
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# libtiff's own error lines on stderr ("_tiffWriteProc: No space left on device."); its
# warnings say "module: Warning, ...".
_LIBTIFF_ERROR = re.compile(r"^(?:_tiff\w+|TIFF\w+): (?!Warning, ).*$", re.MULTILINE)


class GdalFailure(Exception):
    """A GDAL call of the pass failed; ``path`` is the file it was writing."""

    def __init__(self, message: str, path: Path, no_space: bool) -> None:
        super().__init__(message)
        self.path, self.no_space = path, no_space


class _Stopped(Exception):
    """GDAL was stopped by a noted signal (delivered again when the pass is left)."""


def loaded_libgdal(use_errno: bool = False, by_name: bool = False) -> ctypes.CDLL | None:
    """The libgdal this process uses (rasterio's), found among the mapped files.

    Where ``/proc/self/maps`` does not list it: with ``by_name`` the libgdal the system finds
    by name (possibly another build than rasterio's: fine for reading driver metadata, not
    for passing datasets), else None.
    """
    import rasterio._base  # noqa: F401  (maps libgdal into the process)

    maps = Path("/proc/self/maps")
    if maps.exists():
        for line in maps.read_text().splitlines():
            path = line.split()[-1]
            if "/libgdal" in path:
                return ctypes.CDLL(path, use_errno=use_errno)
    name = ctypes.util.find_library("gdal") if by_name else None
    return ctypes.CDLL(name, use_errno=use_errno) if name else None


#: What GDAL reports, as a failure, for the statistics of a band with no valid pixel; an
#: all-masked output (an all-NaN scene) is a right answer, written without statistics.
_NO_VALID_PIXEL = "no valid pixels found"


@functools.lru_cache(maxsize=1)
def _gdal() -> ctypes.CDLL | None:
    """libgdal with the signatures of the functions used here (None: see :func:`loaded_libgdal`)."""
    lib = loaded_libgdal(use_errno=True)
    if lib is None:
        return None
    vp, cp, i, dp = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_double)
    for name, restype, argtypes in (
        ("GDALOpenEx", vp, [cp, ctypes.c_uint, vp, vp, vp]),
        ("GDALGetDriverByName", vp, [cp]),
        ("GDALCreateCopy", vp, [vp, cp, vp, i, ctypes.POINTER(cp), _PROGRESS, vp]),
        ("GDALClose", i, [vp]),
        ("GDALBuildOverviews", i, [vp, cp, i, ctypes.POINTER(i), i, ctypes.POINTER(i), _PROGRESS, vp]),
        ("GDALGetRasterCount", i, [vp]),
        ("GDALGetRasterBand", vp, [vp, i]),
        ("GDALComputeRasterStatistics", i, [vp, i, dp, dp, dp, dp, _PROGRESS, vp]),
        ("CPLPushErrorHandlerEx", None, [_ERROR_HANDLER, vp]),
        ("CPLPopErrorHandler", None, []),
        ("CPLErrorReset", None, []),
        ("CPLGetLastErrorMsg", cp, []),
    ):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


class GdalPass:
    """A stretch of GDAL calls that SIGINT/SIGTERM stop within a block (see the module docstring).

    Use as a context manager around the calls, inside the ``rasterio.Env`` that configures
    them. A stopped call raises the signal's own exception (``StopRequested``,
    ``KeyboardInterrupt``) when the block is left; a failed call raises :class:`GdalFailure`.
    Signals are noted only in the main thread and only where a Python handler is installed
    (a default SIGTERM still ends the process at once). Without ``/proc/self/maps`` the calls
    go through rasterio and cannot be stopped.
    """

    def __init__(self) -> None:
        self._signals: list[int] = []
        self._handlers: dict[int, object] = {}
        self._progress = _PROGRESS(self._go_on)

    def __enter__(self) -> "GdalPass":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                handler = signal.getsignal(sig)
                if callable(handler):
                    self._handlers[sig] = signal.signal(sig, self._note)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for sig, handler in self._handlers.items():
            signal.signal(sig, handler)
        if not self._signals:
            return
        name = signal.Signals(self._signals[0]).name
        if exc_type is None:
            log.info("%s came as the COG pass ended: its output is complete and kept", name)
            return
        if isinstance(exc, _Stopped):
            signal.raise_signal(self._signals[0])  # its handler raises here (StopRequested, KeyboardInterrupt)
            raise StopRequested(name) from None  # a handler that only took note

    def _note(self, signum, _frame) -> None:
        self._signals.append(signum)

    def _go_on(self, complete: float, _message, _data) -> int:
        """GDAL's progress callback: 0 stops the call, unless it has written everything."""
        return 1 if complete >= 1 or not self._signals else 0

    def _check(self) -> None:
        if self._signals:
            raise _Stopped()

    def create_copy(self, src: Path, dst: Path, driver: str, options: Mapping[str, str]) -> None:
        """GDAL's ``CreateCopy`` of ``src`` to ``dst`` with ``driver`` and creation ``options``."""
        self._check()
        lib = _gdal()
        if lib is None:
            import rasterio.shutil

            with _failure_of_rasterio(dst):
                rasterio.shutil.copy(src, dst, driver=driver, **options)
            return
        items = [f"{k}={v}".encode() for k, v in options.items()]
        c_options = (ctypes.c_char_p * (len(items) + 1))(*items, None)
        with self._calls(dst) as fail:
            source = lib.GDALOpenEx(os.fsencode(src), _OF_RASTER | _OF_VERBOSE_ERROR, None, None, None)
            if not source:
                fail()
            try:
                copy = lib.GDALCreateCopy(lib.GDALGetDriverByName(driver.encode()), os.fsencode(dst), source, 0,
                                          c_options, self._progress, None)
                if not copy or lib.GDALClose(copy) != 0:  # closing flushes the last blocks and directory
                    fail()
            finally:
                lib.GDALClose(source)

    def overviews_and_statistics(self, path: Path, levels: list[int], resampling: str) -> None:
        """Build overviews of ``path`` at ``levels`` (factors) and store exact per-band statistics."""
        self._check()
        lib = _gdal()
        if lib is None:
            import rasterio
            from rasterio.enums import Resampling

            with _failure_of_rasterio(path), rasterio.open(path, "r+") as ds:
                if levels:
                    ds.build_overviews(levels, Resampling[resampling.lower()])
                ds.stats(approx=False)
            return
        with self._calls(path) as fail:
            ds = lib.GDALOpenEx(os.fsencode(path), _OF_RASTER | _OF_UPDATE | _OF_VERBOSE_ERROR, None, None, None)
            if not ds:
                fail()
            try:
                if levels:
                    factors = (ctypes.c_int * len(levels))(*levels)
                    if lib.GDALBuildOverviews(ds, resampling.encode(), len(levels), factors, 0, None,
                                              self._progress, None):
                        fail()
                stats = [ctypes.c_double() for _ in range(4)]
                for band in range(1, lib.GDALGetRasterCount(ds) + 1):
                    # full resolution, nodata excluded; GDAL keeps them as STATISTICS_* metadata
                    if lib.GDALComputeRasterStatistics(lib.GDALGetRasterBand(ds, band), 0,
                                                       *map(ctypes.byref, stats), self._progress, None):
                        if _NO_VALID_PIXEL in (lib.CPLGetLastErrorMsg() or b"").decode(errors="replace"):
                            continue  # an all-masked band (an all-NaN scene) has no statistics: not a failure
                        fail()
            except BaseException:
                lib.GDALClose(ds)
                raise
            if lib.GDALClose(ds) != 0:  # closing writes the overviews' and statistics' last bytes
                fail()

    @contextlib.contextmanager
    def _calls(self, path: Path) -> Iterator:
        """GDAL calls writing ``path``: their messages collected, libtiff's stderr read.

        Yields ``fail()``, which raises :class:`_Stopped` after a noted signal, else
        :class:`GdalFailure` with what GDAL and libtiff said.
        """
        lib = _gdal()
        messages: list[tuple[int, str]] = []
        handler = _ERROR_HANDLER(lambda cls, no, msg: messages.append((cls, (msg or b"").decode(errors="replace"))))
        ctypes.set_errno(0)

        def reasons() -> list[str]:
            printed = _LIBTIFF_ERROR.findall(stderr.read())
            failures = [text for cls, text in messages if cls >= _CE_FAILURE and _NO_VALID_PIXEL not in text]
            return list(dict.fromkeys([line.strip() for line in printed] + failures))

        def fail() -> None:
            if self._signals:
                raise _Stopped()
            causes = reasons() or ["GDAL gave no reason"]
            no_space = ctypes.get_errno() in _NO_SPACE or any(os.strerror(e) in c for e in _NO_SPACE for c in causes)
            log.debug("GDAL and libtiff said: %s", stderr.read())
            raise GdalFailure(" ".join("; ".join(causes[:3]).split()), path, no_space)

        lib.CPLErrorReset()
        lib.CPLPushErrorHandlerEx(handler, None)
        try:
            with _stderr_read() as stderr:
                yield fail
                # GDAL's COG driver returned a file (a truncated one) after libtiff failed to
                # write a block of it on a full disk: what they said decides too
                if reasons():
                    fail()
        finally:
            lib.CPLPopErrorHandler()
        for cls, text in messages:
            if cls == _CE_WARNING:
                log.warning("GDAL: %s", text)


@contextlib.contextmanager
def _failure_of_rasterio(path: Path) -> Iterator[None]:
    """rasterio's GDAL errors as a :class:`GdalFailure` writing ``path``."""
    try:
        yield
    except GDAL_ERRORS as exc:
        cause = gdal_cause(exc)
        raise GdalFailure(cause, path, any(os.strerror(e) in cause for e in _NO_SPACE)) from exc


class _CapturedStderr:
    """What was written to file descriptor 2 since the capture began."""

    def __init__(self, file) -> None:
        self._file = file

    def read(self) -> str:
        self._file.seek(0)
        return self._file.read().decode(errors="replace")


@contextlib.contextmanager
def _stderr_read() -> Iterator[_CapturedStderr]:
    """Point file descriptor 2 at a temporary file for the block.

    On a normal exit what was written is passed on to the real stderr (another thread may have
    written there); when the block raises, it went into the error's message. Only the main
    thread redirects: descriptor 2 belongs to the process, and two threads (the COGs of tiled
    output's blocks, :mod:`geosr.tiled_output`) saving and restoring it in turn could leave it
    pointing at a deleted file; elsewhere libtiff's lines go to stderr and GDAL's own messages
    and errno decide.
    """
    sys.stderr.flush()
    try:
        if threading.current_thread() is not threading.main_thread():
            raise OSError("not the main thread")
        saved = os.dup(2)
    except OSError:  # no stderr at all, or not ours to redirect
        with tempfile.TemporaryFile() as file:
            yield _CapturedStderr(file)
        return
    with tempfile.TemporaryFile() as file:
        os.dup2(file.fileno(), 2)
        try:
            yield _CapturedStderr(file)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        file.seek(0)  # the block did not raise
        written = file.read()
        if written:
            os.write(2, written)
