"""Exception tree of geosr, and the exit status of each kind of failure.

Every error geosr raises on purpose derives from :class:`GeosrError`, so a caller can catch
all of them at once; the narrow classes also inherit the matching builtin (``ValueError``,
``OSError``...) so code written against the builtins keeps working. Each class carries the
command-line exit status of its kind of failure (:data:`EXIT_CODES` lists them for
``--help`` and the README); scripts and schedulers branch on these numbers, so they are
stable.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from typing import Iterator

from rasterio._err import CPLE_BaseError
from rasterio.errors import RasterioError

__all__ = [
    "EXIT_CODES", "GeosrError", "InputError", "ReadError", "GridMismatchError", "GeoreferenceError",
    "OutputError", "OutputExistsError", "OutputLockedError", "WriteError", "ResumeError", "RunStopped",
    "ModelError", "CaptionerError", "StopRequested", "WorkerMismatchError", "GDAL_ERRORS", "gdal_cause",
    "read_errors_named",
]

# What rasterio raises when GDAL fails: its own errors, or GDAL's CPLE_* errors passed through.
GDAL_ERRORS = (RasterioError, CPLE_BaseError)


class GeosrError(Exception):
    """Base class of all geosr errors; also any failure geosr did not foresee."""

    exit_code = 1


class InputError(GeosrError, ValueError):
    """An input raster, option or file is not usable (wrong grid, bad band list, bad AOI...)."""

    exit_code = 3


class ReadError(InputError):
    """Pixels of an input cannot be read (a truncated or corrupt file): names file, window, band."""


class GridMismatchError(InputError):
    """Several inputs of a mosaic do not share one CRS / pixel grid."""


class GeoreferenceError(InputError):
    """The georeferencing of an input cannot be carried to the output."""


class ModelError(GeosrError, ValueError):
    """A model spec cannot be resolved or loaded."""

    exit_code = 3


class CaptionerError(GeosrError, ValueError):
    """A captioner spec cannot be resolved or loaded."""

    exit_code = 3


class OutputError(GeosrError, OSError):
    """OUTPUT cannot be written there: its folder is missing or read-only, or it is an input."""

    exit_code = 4


class OutputExistsError(OutputError, FileExistsError):
    """The output path (or its captions sidecar) exists and overwriting was not asked for."""


class OutputLockedError(OutputError):
    """Another geosr run is writing the same OUTPUT."""

    exit_code = 5


class WriteError(GeosrError, OSError):
    """Not enough free disk space for a run, or writing its files failed."""

    exit_code = 6


class ResumeError(GeosrError, ValueError):
    """``--resume`` was asked for, but the stopped run was made with other inputs or settings."""

    exit_code = 7


class RunStopped(GeosrError):
    """The run stopped before finishing (a signal, a lost worker); it can be resumed."""

    exit_code = 8


class WorkerMismatchError(GeosrError):
    """A dask worker runs other geosr code, its network on another kind of device or precision, or
    loads the model or captioner from other files, than the run's identity records: its tiles
    would not be this run's pixels."""

    exit_code = 9


class StopRequested(KeyboardInterrupt):
    """A termination signal (SIGTERM) asked the run to stop.

    A ``KeyboardInterrupt`` like Ctrl-C, so every layer that cleans up after Ctrl-C - and
    no ``except Exception`` on the way - handles it the same.
    """


# Exit status -> meaning, as documented in ``geosr upscale --help`` and the README.
EXIT_CODES: dict[int, str] = {
    0: "done",
    1: "unexpected error (a bug: rerun with -v for the traceback)",
    2: "usage error (unknown option, bad option syntax, a value outside the choices or range --help lists)",
    InputError.exit_code: "bad input or option (unreadable or corrupt raster, dtype, AOI, --co, model)",
    OutputError.exit_code: "OUTPUT not writable there (exists, its captions exist, folder, OUTPUT is an input, "
                           "--overwrite on a folder geosr did not write)",
    OutputLockedError.exit_code: "another run is writing OUTPUT",
    WriteError.exit_code: "not enough disk space, or writing failed",
    ResumeError.exit_code: "--resume refused: the stopped run used other inputs or settings",
    RunStopped.exit_code: "stopped (SIGTERM/SIGINT, lost worker): finished cells kept, rerun with --resume",
    WorkerMismatchError.exit_code: "a worker runs other geosr code, device or precision, or other model or "
                                   "captioner files, than the run: "
                                   "finished cells kept, make the workers alike and rerun with --resume",
}


def gdal_cause(exc: BaseException) -> str:
    """GDAL's own words for a failure, on one line.

    rasterio raises ``RasterioIOError("Read failed. See previous exception for details.")``
    *from* the ``CPLE_*`` error that holds GDAL's message: prefer the innermost message.
    """
    texts = []
    seen = exc
    while seen is not None and len(texts) < 5:
        text = str(seen).strip()
        if text and "See previous exception" not in text:
            texts.append(text)
        seen = seen.__cause__ or seen.__context__
    text = texts[-1] if texts else type(exc).__name__
    return " ".join(text.split())


@contextlib.contextmanager
def read_errors_named(path: str, window=None, band: int | str | None = None, what: str | None = None) -> Iterator[None]:
    """Turn a GDAL read failure inside the block into a one-line :class:`ReadError`.

    The message names the file, the pixel window, the band (or what was being read) and
    GDAL's cause, e.g. ``cannot read in.tif, window col 64 row 0 size 96x96, band 2:
    TIFFReadEncodedTile() failed.``
    """
    where = ""
    if window is not None:
        where += (
            f", window col {int(window.col_off)} row {int(window.row_off)} "
            f"size {int(window.width)}x{int(window.height)}"
        )
    if band is not None:
        where += f", band {band}"
    if what:
        where += f" ({what})"
    with _decoder_warnings() as heard:
        try:
            yield
        except GDAL_ERRORS as exc:
            raise ReadError(f"cannot read {path}{where}: {gdal_cause(exc)}") from exc
    if heard.messages:  # garbage decoded "successfully" (a corrupt JPEG or PackBits block)
        cause = re.sub(r"^CPLE_\w+:", "", " ".join(heard.messages[0].split()))
        raise ReadError(f"cannot read {path}{where}: {cause}")


#: GDAL warnings of a codec that decoded a damaged block: libjpeg's ("JPEGLib:Corrupt JPEG data:
#: premature end of data segment", "bad Huffman code", "found marker 0x.. instead of RST..",
#: "Premature end of JPEG file"), libtiff's PackBits decoder's ("PackBitsDecode:Discarding 43 bytes
#: to avoid buffer overrun"). The pixels are garbage, and no error is raised. Only these: codecs
#: also warn about files they decode in full ("Corrupt JPEG data: 2 extraneous bytes before marker
#: 0xd9" from some encoders, libjpeg's "unknown JFIF revision number", libtiff's "Old-style LZW
#: codes, convert file"), which must read as they always did.
_DECODER_WARNING = re.compile(
    r"Corrupt JPEG data: (premature end of data segment|bad Huffman code|found marker)"
    r"|Premature end of JPEG file|PackBitsDecode:\s*Discarding", re.IGNORECASE)
_LEVEL_LOCK = threading.Lock()
_LEVEL_USERS = [0, logging.NOTSET]  # blocks listening, and the rasterio logger's level before them


class _DecoderWarningHandler(logging.Handler):
    """Notes the decoder warnings (:data:`_DECODER_WARNING`) that rasterio logs in this thread."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread and _DECODER_WARNING.search(record.getMessage()):
            self.messages.append(record.getMessage())


@contextlib.contextmanager
def _decoder_warnings() -> Iterator[_DecoderWarningHandler]:
    """Listen to the GDAL warnings rasterio logs (``rasterio._err``) in this thread while the block
    runs; the rasterio logger hears warnings meanwhile even where logging is quieter (``-q``)."""
    logger = logging.getLogger("rasterio._err")
    handler = _DecoderWarningHandler()
    with _LEVEL_LOCK:
        if _LEVEL_USERS[0] == 0:
            _LEVEL_USERS[1] = logger.level
            if not logger.isEnabledFor(logging.WARNING):
                logger.setLevel(logging.WARNING)
        _LEVEL_USERS[0] += 1
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        with _LEVEL_LOCK:
            _LEVEL_USERS[0] -= 1
            if _LEVEL_USERS[0] == 0:
                logger.setLevel(_LEVEL_USERS[1])
