"""The work folder of a run and its journal: what a stopped run leaves for ``--resume``.

Each run works in its own folder beside OUTPUT, ``.NAME.geosr-run-XXXX/`` (a fresh,
unique name; a run only ever deletes the folder it created or adopted). The folder holds
the work raster (see :class:`geosr.writer.WorkRaster`) and two small files:

- ``run.json``: the run's *identity* - absolute inputs with size and mtime, and every
  setting that changes the output's bytes. ``--resume`` adopts a stopped run only when
  the identities are equal, and otherwise says which entries differ.
- ``journal.jsonl``: one JSON line per commit, with the output cells finished since the
  last commit (HR window offsets) and the captions and routes (:mod:`geosr.routing`) of
  the tiles that fed them.

A commit first makes the cells' pixels durable (``fdatasync`` of the work raster, done
by the caller's ``sync``), then appends and ``fsync``s the journal line, so the journal
never names a cell whose pixels could be lost with the node. A line torn by a kill is
ignored. Cells are committed every :data:`COMMIT_SECONDS`, so a SIGKILL loses at most
that much work.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Mapping

from geosr.errors import WriteError
from geosr.routing import TileRoute

__all__ = ["COMMIT_SECONDS", "WorkFolder", "RunJournal", "describe_size", "identity_differences"]

COMMIT_SECONDS = 1.0


def describe_size(nbytes: int) -> str:
    """``1536`` -> ``1.5 KiB``."""
    size = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


class WorkFolder:
    """A run's own folder beside OUTPUT."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @staticmethod
    def prefix(output: Path) -> str:
        return f".{output.name}.geosr-run-"

    @classmethod
    def create(cls, output: Path) -> "WorkFolder":
        """A new folder with a unique name (never one another run might be using)."""
        try:
            return cls(Path(tempfile.mkdtemp(prefix=cls.prefix(output), dir=output.parent)))
        except OSError as exc:
            raise WriteError(f"cannot create a work folder beside {output}: {exc.strerror}") from exc

    @classmethod
    def left_by_stopped_runs(cls, output: Path) -> list["WorkFolder"]:
        """Work folders of earlier runs of OUTPUT, newest first.

        Only meaningful while holding the OUTPUT lock: then no live run owns any of them.
        """
        found = [p for p in output.parent.glob(cls.prefix(output) + "*") if p.is_dir()]
        return [cls(p) for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)]

    def size(self) -> int:
        """Bytes the folder occupies on disk (sparse files count what is allocated)."""
        total = 0
        for root, _, files in os.walk(self.path):
            for name in files:
                try:
                    total += os.stat(os.path.join(root, name)).st_blocks * 512
                except FileNotFoundError:
                    pass
        return total

    def remove(self) -> None:
        for root, dirs, files in os.walk(self.path, topdown=False):
            for name in files:
                os.unlink(os.path.join(root, name))
            for name in dirs:
                os.rmdir(os.path.join(root, name))
        os.rmdir(self.path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name


def identity_differences(old: Mapping[str, object], new: Mapping[str, object]) -> list[str]:
    """Human-readable entries that differ between two run identities."""
    out = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            out.append(f"{key} was {old.get(key)!r}, now {new.get(key)!r}")
    return out


class RunJournal:
    """Identity, finished cells, captions and tile routes of the run working in ``folder``."""

    IDENTITY = "run.json"
    JOURNAL = "journal.jsonl"

    def __init__(self, folder: WorkFolder, identity: dict, cells: set, captions: dict,
                 routes: dict | None = None) -> None:
        self.folder = folder
        self.identity = identity
        self.cells: set[tuple[int, int]] = cells
        self.captions: dict[int, str] = captions
        self.routes: dict[int, TileRoute] = routes or {}
        self._new_cells: list[tuple[int, int]] = []
        self._new_captions: dict[int, str] = {}
        self._new_routes: dict[int, TileRoute] = {}
        self._last_commit = time.monotonic()

    @classmethod
    def start(cls, folder: WorkFolder, identity: Mapping[str, object]) -> "RunJournal":
        """Record ``identity`` in a new folder (atomically: a folder has it or not)."""
        tmp = folder / (cls.IDENTITY + ".tmp")
        tmp.write_text(json.dumps(dict(identity), indent=1, sort_keys=True))
        os.replace(tmp, folder / cls.IDENTITY)
        return cls(folder, dict(identity), set(), {})

    @classmethod
    def load(cls, folder: WorkFolder) -> "RunJournal | None":
        """The journal in ``folder``, or None when it has no identity (killed at birth)."""
        try:
            identity = json.loads((folder / cls.IDENTITY).read_text())
        except (OSError, ValueError):
            return None
        cells: set[tuple[int, int]] = set()
        captions: dict[int, str] = {}
        routes: dict[int, TileRoute] = {}
        try:
            lines = (folder / cls.JOURNAL).read_text().splitlines()
        except FileNotFoundError:
            lines = []
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                break  # torn by a kill mid-append: everything after it is lost too
            cells.update(tuple(c) for c in rec.get("cells", ()))
            captions.update({int(k): v for k, v in rec.get("captions", {}).items()})
            routes.update({int(k): TileRoute(*v) for k, v in rec.get("routes", {}).items()})
        return cls(folder, identity, cells, captions, routes)

    def record(self, cell: tuple[int, int] | None = None, captions: Mapping[int, str] | None = None,
               routes: Mapping[int, TileRoute] | None = None) -> None:
        """Note a finished cell, tile captions and/or routes; durable at the next :meth:`commit`."""
        if cell is not None:
            self._new_cells.append(cell)
        if captions:
            self._new_captions.update(captions)
        if routes:
            self._new_routes.update(routes)

    def commit_due(self) -> bool:
        return time.monotonic() - self._last_commit >= COMMIT_SECONDS

    def commit(self, sync: Callable[[], None]) -> None:
        """Make recorded cells durable: ``sync()`` the pixels, then append the journal line."""
        self._last_commit = time.monotonic()
        if not self._new_cells and not self._new_captions and not self._new_routes:
            return
        sync()
        line = json.dumps({
            "cells": self._new_cells, "captions": {str(k): v for k, v in self._new_captions.items()},
            "routes": {str(k): [r.path, r.texture, r.noise] for k, r in self._new_routes.items()},
        })
        try:
            with open(self.folder / self.JOURNAL, "a") as f:
                f.write(line + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise WriteError(f"cannot append to the journal {self.folder / self.JOURNAL}: {exc.strerror}") from exc
        self.cells.update(self._new_cells)
        self.captions.update(self._new_captions)
        self.routes.update(self._new_routes)
        self._new_cells, self._new_captions, self._new_routes = [], {}, {}

    @property
    def finished(self) -> int:
        """Cells whose pixels are durable."""
        return len(self.cells)
