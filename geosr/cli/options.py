"""Options and helpers shared by several subcommands."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Callable, Iterator

import click

from geosr import stop_requests
from geosr.api import command_line_wording
from geosr.config import DEFAULT_OVERLAP, DEFAULT_TILE
from geosr.errors import EXIT_CODES, GeosrError, ResumeError, RunStopped, StopRequested, WorkerMismatchError


def parse_bands(_ctx, _param, value: str | None) -> tuple[int, ...] | None:
    """``1,2,3`` -> (1, 2, 3)."""
    if not value:
        return None
    try:
        bands = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected a comma-separated list of band numbers like 1,2,3, got {value!r}")
    if any(b < 1 for b in bands):
        raise click.BadParameter("band numbers start at 1")
    return bands


def _pairs(values: tuple[str, ...], case: Callable[[str], str]) -> dict[str, str]:
    out = {}
    for item in values:
        name, sep, val = item.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(f"expected NAME=VALUE, got {item!r}")
        out[case(name.strip())] = val.strip()
    return out


def parse_creation_options(_ctx, _param, values: tuple[str, ...]) -> dict[str, str]:
    """``--co NAME=VALUE`` pairs -> dict (GDAL's option names in capitals)."""
    return _pairs(values, str.upper)


def parse_model_metadata(_ctx, _param, values: tuple[str, ...]) -> dict[str, str]:
    """``--model-meta KEY=VALUE`` pairs -> dict (keys as :mod:`geosr.models.model_card` reads them)."""
    return _pairs(values, str.lower)


def tile_options(f: Callable) -> Callable:
    """``--tile`` and ``--overlap``, with the defaults every front end shares (:mod:`geosr.config`)."""
    f = click.option("--overlap", default=DEFAULT_OVERLAP, show_default=True,
                     help="Halo on each side of a tile, in input pixels (cross-faded; raise it for models that see "
                          "far, e.g. SD-size UNets).")(f)
    return click.option("--tile", default=DEFAULT_TILE, show_default=True, help="Tile core size in input pixels.")(f)


def verbosity(f: Callable) -> Callable:
    """``-v/--verbose`` and ``-q/--quiet``, setting the log level."""
    f = click.option("-q", "--quiet", is_flag=True, help="Only errors; no progress bar.")(f)
    f = click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")(f)
    return f


def setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    # Filter at the handler: dask.distributed gives its loggers their own INFO levels.
    handler.setLevel(level)
    if not verbose:
        # dask and tornado log a failed task with its traceback, a lost worker, a cancelled
        # gather at ERROR; geosr reports those failures itself, in one line. asyncio's "Future
        # exception was never retrieved" is the same noise: only distributed's comms run on an
        # event loop here, and a timed-out connect of a closed cluster surfaces when it is
        # garbage collected, possibly during a later run in the same process. (A filter on the
        # handler: dask's config gives its loggers their own levels.) -v shows them again.
        handler.addFilter(lambda record: not record.name.startswith(("distributed", "tornado", "asyncio")))
    logging.basicConfig(level=level, handlers=[handler], force=True)


class OneLineErrors(click.Command):
    """A command whose usage errors are one line too (click prints usage + hint + error)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            raise _exit(" ".join(exc.format_message().split()), exc.exit_code) from exc


def one_line(exc: BaseException) -> str:
    """An error's message and notes (:func:`geosr.resumable.settle_stopped_run`) on one line."""
    parts = [str(exc)] + list(getattr(exc, "__notes__", ()))
    return " ".join("; ".join(p for p in parts if p).split())


def report_file(ctx: click.Context, param: click.Parameter, value):
    """Click callback of an option naming a file written at the command's end (``--json``,
    ``--png``): its folder must exist and be writable before the work, not after it (an evaluation's
    minutes of figures were lost to a traceback)."""
    if value is None:
        return value
    folder = Path(value).parent
    if not folder.is_dir():
        raise click.BadParameter(f"folder {str(folder)!r} does not exist", ctx, param)
    if not os.access(folder, os.W_OK):
        raise click.BadParameter(f"folder {str(folder)!r} is not writable", ctx, param)
    return value


@contextlib.contextmanager
def remarks(quiet: bool) -> Iterator[None]:
    """Warnings as one ``warning: ...`` line each on stderr, none with ``-q`` (errors only): not
    Python's ``file:line: Category: message`` and source line."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore" if quiet else "always")
        # not Python's unclosed-socket notes of a dask cluster collected mid-run (its own
        # default hides them; "always" would print them as geosr's remarks)
        warnings.filterwarnings("ignore", category=ResourceWarning)
        warnings.showwarning = _show_warning
        yield


def _show_warning(message, category, filename, lineno, file=None, line=None):
    click.echo(f"warning: {one_line(message)}", err=True)


def fail_cleanly(fn: Callable[[], object], catch_all: bool = False, verbose: int = 0) -> object:
    """Run ``fn`` and turn geosr's errors into a one-line message and their exit code.

    With ``catch_all``, any other exception (a bug) and Ctrl-C also end in one line (exit 1
    and 8); ``verbose`` then still shows the traceback of a bug.
    """
    try:
        with command_line_wording():  # --overwrite, not the API's overwrite=True
            return fn()
    except GeosrError as exc:
        raise _exit(one_line(exc), exc.exit_code) from exc
    except KeyboardInterrupt as exc:
        if not catch_all:
            raise
        raise _exit("stopped before any work was kept", RunStopped.exit_code) from exc
    except Exception as exc:
        if not catch_all or verbose:
            raise
        raise _exit(f"unexpected error: {type(exc).__name__}: {one_line(exc)} (rerun with -v for the traceback)", 1) from exc


def _exit(message: str, code: int) -> click.ClickException:
    err = click.ClickException(message)
    err.exit_code = code
    return err


def exit_codes_help(resumable: bool = True) -> str:
    """The exit status table, for a command's --help; a command that keeps no work (``geosr
    caption``) has no --resume: no exit 7, and its stops keep nothing."""
    if resumable:
        codes = EXIT_CODES
    else:
        codes = {code: text for code, text in EXIT_CODES.items() if code != ResumeError.exit_code}
        codes[RunStopped.exit_code] = "stopped (SIGTERM/SIGINT, lost worker): nothing written"
        codes[WorkerMismatchError.exit_code] = ("a worker runs other geosr code, device or precision, or other model "
                                                "or captioner files, than the run: nothing written")
    return "\n".join(f"  {code}  {text}" for code, text in sorted(codes.items()))


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGINT raise :class:`StopRequested` in the main thread, naming the signal.

    Schedulers pre-empt jobs with SIGTERM: the run then stops like after Ctrl-C, keeping
    its finished cells and saying how to resume. Each signal is noted too
    (:mod:`geosr.stop_requests`): raised inside a callback that Python runs and ignores the
    errors of, it would be lost.
    """

    def stop(signum, _frame):
        name = signal.Signals(signum).name
        stop_requests.note(name)
        raise StopRequested(name)

    stop_requests.forget()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop_requests.forget()
