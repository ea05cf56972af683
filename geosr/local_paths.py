"""Local paths named as the OS resolves them, so that two spellings of one place compare equal.

``os.path.abspath`` collapses ``..`` as text: ``latest/../a.tif`` becomes ``./a.tif``, where the
OS, following a ``latest`` that links to ``2024/run7``, opens ``2024/a.tif``. Comparing or
opening the textual form checks, reads or writes another file than the one the user named.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["absolute_input", "resolved"]


def resolved(path: str | os.PathLike) -> Path:
    """``path`` as the OS resolves it when the run writes there - symlinks and ``..`` followed,
    the file itself need not exist - for telling whether two paths name one place
    (``sub/../out.tif`` is ``out.tif``)."""
    return Path(os.path.realpath(path))


def absolute_input(path: str | os.PathLike) -> str:
    """The absolute path of a local input that opens the file the OS opens for ``path``: its
    folder resolved (links and ``..``), its own name kept - a linked file keeps the name it was
    given, which names the tiles' seeds and the output's tags."""
    path = os.fspath(path)
    return os.path.join(os.path.realpath(os.path.dirname(path) or "."), os.path.basename(path))
