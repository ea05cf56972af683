"""Options and helpers shared by several subcommands."""

from __future__ import annotations

import logging
import sys
from typing import Callable

import click

from geosr.errors import GeosrError


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


def parse_creation_options(_ctx, _param, values: tuple[str, ...]) -> dict[str, str]:
    """``--co NAME=VALUE`` pairs -> dict."""
    out = {}
    for item in values:
        name, sep, val = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"expected NAME=VALUE, got {item!r}")
        out[name.upper()] = val
    return out


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
    logging.basicConfig(level=level, handlers=[handler], force=True)


def fail_cleanly(fn: Callable[[], object]) -> object:
    """Run ``fn`` and turn geosr's own errors into a one-line click error (exit 1)."""
    try:
        return fn()
    except GeosrError as exc:
        raise click.ClickException(str(exc)) from exc
