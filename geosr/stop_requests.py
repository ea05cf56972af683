"""Stop signals a run was sent, noted so that one lost on its way up still stops the run.

The command line's handler (:func:`geosr.cli.options.stop_on_signals`) raises
:class:`~geosr.errors.StopRequested` wherever the main thread is when SIGTERM or SIGINT comes.
Python drops an exception raised inside a garbage-collector callback, a ``__del__`` or a weakref
callback ("Exception ignored in ..."), and dask runs such callbacks: a Ctrl-C that landed in one
was lost, and the run finished and exited 0. The handler notes each signal here as well, and
the run checks the note as tile results come and before its commit (:func:`raise_if_noted`).
"""

from __future__ import annotations

from geosr.errors import StopRequested

__all__ = ["forget", "note", "raise_if_noted"]

_noted: list[str] = []


def note(name: str) -> None:
    """Note a stop signal (``SIGINT``, ``SIGTERM``) as it comes."""
    _noted.append(name)


def forget() -> None:
    """Forget the signals noted (a command starts, or ends, taking them)."""
    _noted.clear()


def raise_if_noted() -> None:
    """Raise :class:`StopRequested` for the first signal noted and not yet forgotten.

    Raises
    ------
    StopRequested
        A stop signal came (it may already have been raised once, and dropped).
    """
    if _noted:
        raise StopRequested(_noted[0])
