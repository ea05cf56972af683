"""The CLI's log handler: geosr's own messages reach stderr; dask's and its event loop's
teardown noise (a CI run once failed on a stray asyncio "Future exception was never retrieved")
only with -v."""

from __future__ import annotations

import logging

import pytest

from geosr.cli.options import setup_logging

NOISY = ("distributed.worker", "tornado.application", "asyncio")


@pytest.fixture
def root_handlers():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def emit_errors() -> None:
    for name in ("geosr.pipeline", *NOISY):
        logging.getLogger(name).error("from %s", name)


def test_default_run_shows_only_geosr_errors(root_handlers, capsys):
    setup_logging(verbose=0, quiet=False)
    emit_errors()
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["ERROR geosr.pipeline: from geosr.pipeline"]


def test_verbose_run_shows_the_noise_too(root_handlers, capsys):
    setup_logging(verbose=1, quiet=False)
    emit_errors()
    err = capsys.readouterr().err
    assert all(f"from {name}" in err for name in NOISY)
