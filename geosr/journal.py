"""The work folder of a run and its journal: what a stopped run leaves for ``--resume``.

Each run works in its own folder beside OUTPUT, ``.NAME.geosr-run-XXXX/`` (a fresh,
unique name; a run only ever deletes the folder it created or adopted). The folder holds
the work raster (see :class:`geosr.writer.WorkRaster`) and two small files:

- ``run.json``: the run's *identity* - absolute inputs with size and mtime, and every
  setting that changes the output's bytes. ``--resume`` adopts a stopped run only when
  the identities are equal, and otherwise says which entries differ.
- ``journal.jsonl``: one JSON line per commit, with the output cells finished since the
  last commit (HR window, and the CRC-32 of the bytes written there: :class:`CellRecord`)
  and the captions and routes (:mod:`geosr.routing`) of the tiles that fed them; for tiled
  output (:mod:`geosr.tiled_output`) also the block COGs finished since, with their size and
  CRC-32. Each line ends in a tab and the CRC-32 of its JSON, so a changed byte that still
  parses (a caption, a route) ends the journal there as a torn line does.

A commit first makes the cells' pixels durable (``fdatasync`` of the work raster, done
by the caller's ``sync``), then appends and ``fsync``s the journal line, so the journal
never names a cell whose pixels could be lost with the node. Cells are committed every
:data:`COMMIT_SECONDS`, so a SIGKILL loses at most that much work, and at once when a
follower asks for it (:meth:`RunJournal.request_commit`: tiled and Zarr output, when the last
cell of a block or chunk is recorded, so its file is not written up to a second late).

The journal is read up to its last valid record: a line torn by a kill or a full disk, or
damaged in any other way (binary garbage, wrong types, a checksum that differs), ends it, and the damaged tail is
cut (:meth:`RunJournal.cut_damaged_tail`) before a resumed run appends to it, so new records
never hide behind a torn line. A record only says a cell *was* written: a resumed run
checks each cell's bytes against its checksum (:meth:`geosr.writer.WorkRaster.cell_crc`)
before trusting it, so a deleted, truncated or overwritten work raster costs recomputation,
never wrong pixels.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import zlib
from pathlib import Path
from typing import Callable, Mapping, NamedTuple, Sequence

from geosr.deferred_free import FREE_LATER_BYTES, unlink_freeing_later
from geosr.errors import WriteError
from geosr.routing import TileRoute

__all__ = ["COMMIT_SECONDS", "CellRecord", "DamagedJournal", "WorkFolder", "RunJournal", "describe_size",
           "identity_differences"]

log = logging.getLogger(__name__)

COMMIT_SECONDS = 1.0


class CellRecord(NamedTuple):
    """A finished output cell: its HR window and the CRC-32 of its bytes in the work raster."""

    col_off: int
    row_off: int
    width: int
    height: int
    crc: int

    @property
    def key(self) -> tuple[int, int]:
        """``(col_off, row_off)``: how the blender names a cell."""
        return self.col_off, self.row_off


class DamagedJournal(Exception):
    """A work folder's ``run.json`` is missing or not a run identity; the message says which."""


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
        # startswith, not a glob: "out[1].tif" as a pattern matches ".out1.tif.geosr-run-*", not its own
        prefix = cls.prefix(output)
        found = [p for p in output.parent.iterdir() if p.name.startswith(prefix) and p.is_dir()]
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
        """Delete the folder. Its names are gone on return; the blocks of its large files (the
        work raster) are freed by a helper process after it (:mod:`geosr.deferred_free`)."""
        large = []
        for root, dirs, files in os.walk(self.path, topdown=False):
            for name in files:
                path = os.path.join(root, name)
                if os.stat(path, follow_symlinks=False).st_size >= FREE_LATER_BYTES:
                    large.append(path)
                else:
                    os.unlink(path)
            if large:
                unlink_freeing_later(large)
                large = []
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

    def __init__(self, folder: WorkFolder, identity: dict, cells: Mapping[tuple[int, int], CellRecord],
                 captions: dict, routes: dict | None = None, valid_bytes: int = 0, damaged_bytes: int = 0,
                 blocks: Mapping[str, tuple[int, int]] | None = None) -> None:
        self.folder = folder
        self.identity = identity
        #: finished cells by ``(col_off, row_off)``
        self.records: dict[tuple[int, int], CellRecord] = dict(cells)
        self.captions: dict[int, str] = captions
        self.routes: dict[int, TileRoute] = routes or {}
        #: finished block files of tiled output: name -> (size, CRC-32), durable when journalled
        self.blocks: dict[str, tuple[int, int]] = dict(blocks or {})
        #: called with the cells of each commit once they are durable (tiled output's blocks wait for them)
        self.on_commit: list[Callable[[list[CellRecord]], None]] = []
        #: called with each cell as it is recorded, before it is durable (a follower may then
        #: :meth:`request_commit`)
        self.on_record: list[Callable[[CellRecord], None]] = []
        #: bytes of journal.jsonl up to the end of its last valid record, and after it
        self.valid_bytes, self.damaged_bytes = valid_bytes, damaged_bytes
        self._new_cells: list[CellRecord] = []
        self._new_captions: dict[int, str] = {}
        self._new_routes: dict[int, TileRoute] = {}
        self._new_blocks: dict[str, tuple[int, int]] = {}
        self._last_commit = time.monotonic()
        self._commit_wanted = False

    @classmethod
    def start(cls, folder: WorkFolder, identity: Mapping[str, object]) -> "RunJournal":
        """Record ``identity`` in a new folder (atomically: a folder has it or not)."""
        tmp = folder / (cls.IDENTITY + ".tmp")
        tmp.write_text(json.dumps(dict(identity), indent=1, sort_keys=True))
        os.replace(tmp, folder / cls.IDENTITY)
        return cls(folder, dict(identity), {}, {})

    @classmethod
    def load(cls, folder: WorkFolder) -> "RunJournal":
        """The journal in ``folder``, read up to its last valid record.

        Raises
        ------
        DamagedJournal
            ``run.json`` is missing (a run killed at birth, or a deleted file) or is not a
            run identity (a mapping of strings): nothing in the folder can be vouched for.
        """
        try:
            identity = json.loads((folder / cls.IDENTITY).read_bytes().decode("utf-8"))
        except FileNotFoundError:
            raise DamagedJournal(f"it has no {cls.IDENTITY}") from None
        except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise DamagedJournal(f"its {cls.IDENTITY} is unreadable ({type(exc).__name__})") from None
        if not isinstance(identity, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in identity.items()):
            raise DamagedJournal(f"its {cls.IDENTITY} is not a run identity")
        try:
            data = (folder / cls.JOURNAL).read_bytes()
        except FileNotFoundError:
            data = b""
        except OSError as exc:
            raise DamagedJournal(f"its {cls.JOURNAL} is unreadable ({exc.strerror})") from None
        cells: dict[tuple[int, int], CellRecord] = {}
        captions: dict[int, str] = {}
        routes: dict[int, TileRoute] = {}
        blocks: dict[str, tuple[int, int]] = {}
        valid = 0
        for line in data.splitlines(keepends=True):
            parsed = _parse_record(line) if line.endswith(b"\n") else None
            if parsed is None:
                break  # torn by a kill or a full disk, or damaged: nothing after it is trusted
            for cell in parsed[0]:
                cells[cell.key] = cell
            captions.update(parsed[1])
            routes.update(parsed[2])
            blocks.update(parsed[3])
            valid += len(line)
        return cls(folder, identity, cells, captions, routes, valid, len(data) - valid, blocks)

    def cut_damaged_tail(self) -> None:
        """Cut what follows the last valid record, so that appended records are read again."""
        if not self.damaged_bytes:
            return
        path = self.folder / self.JOURNAL
        try:
            with open(path, "r+b") as f:
                f.truncate(self.valid_bytes)
                os.fsync(f.fileno())
        except OSError as exc:
            raise WriteError(f"cannot cut the damaged end of the journal {path}: {exc.strerror}") from exc
        log.warning("%s: %d damaged bytes after the last valid record were cut", path, self.damaged_bytes)
        self.damaged_bytes = 0

    def forget(self, cells: Sequence[tuple[int, int]]) -> None:
        """Stop trusting ``cells`` (their bytes failed verification): they will be recomputed."""
        for key in cells:
            self.records.pop(key, None)

    @property
    def cells(self) -> set[tuple[int, int]]:
        """``(col_off, row_off)`` of the finished cells."""
        return set(self.records)

    def record(self, cell: CellRecord | None = None, captions: Mapping[int, str] | None = None,
               routes: Mapping[int, TileRoute] | None = None, block: tuple[str, int, int] | None = None) -> None:
        """Note a finished cell, tile captions, routes and/or a block file ``(name, size, CRC-32)``
        already made durable; recorded at the next :meth:`commit`."""
        if cell is not None:
            self._new_cells.append(cell)
            for listener in self.on_record:
                listener(cell)
        if captions:
            self._new_captions.update(captions)
        if routes:
            self._new_routes.update(routes)
        if block is not None:
            self._new_blocks[block[0]] = (block[1], block[2])

    def request_commit(self) -> None:
        """Make the next :meth:`commit_due` true, whatever the time since the last commit (recorded
        cells finish a block whose file waits for them to be durable)."""
        self._commit_wanted = True

    def commit_due(self) -> bool:
        return self._commit_wanted or time.monotonic() - self._last_commit >= COMMIT_SECONDS

    def commit(self, sync: Callable[[], None]) -> None:
        """Make recorded cells durable: ``sync()`` the pixels, then append the journal line."""
        self._last_commit = time.monotonic()
        self._commit_wanted = False
        if not self._new_cells and not self._new_captions and not self._new_routes and not self._new_blocks:
            return
        sync()
        record = {
            "cells": [list(c) for c in self._new_cells], "captions": {str(k): v for k, v in self._new_captions.items()},
            "routes": {str(k): [r.path, r.texture, r.noise] for k, r in self._new_routes.items()},
        }
        if self._new_blocks:
            record["blocks"] = {name: list(v) for name, v in self._new_blocks.items()}
        line = _with_checksum(json.dumps(record))
        try:
            with open(self.folder / self.JOURNAL, "a") as f:
                f.write(line + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise WriteError(f"cannot append to the journal {self.folder / self.JOURNAL}: {exc.strerror}") from exc
        self.records.update((c.key, c) for c in self._new_cells)
        self.valid_bytes += len(line) + 1
        self.captions.update(self._new_captions)
        self.routes.update(self._new_routes)
        self.blocks.update(self._new_blocks)
        committed = self._new_cells
        self._new_cells, self._new_captions, self._new_routes, self._new_blocks = [], {}, {}, {}
        for listener in self.on_commit:
            listener(committed)

    @property
    def finished(self) -> int:
        """Cells whose pixels are durable."""
        return len(self.records)


def _with_checksum(body: str) -> str:
    """A journal line: the record's JSON, a tab, its CRC-32 in hex. A flipped byte in a caption or a
    route still parses as JSON; the checksum says the line is not what the run wrote."""
    return f"{body}\t{zlib.crc32(body.encode('utf-8')):08x}"


def _parse_record(line: bytes) -> tuple[list[CellRecord], dict[int, str], dict[int, TileRoute],
                                        dict[str, tuple[int, int]]] | None:
    """One journal line, or None when it is not a record this module wrote (or not as it wrote it)."""
    try:
        body, tab, crc = line.decode("utf-8").rstrip("\n").rpartition("\t")
        if not tab or len(crc) != 8 or int(crc, 16) != zlib.crc32(body.encode("utf-8")):
            return None
        rec = json.loads(body)
        if not isinstance(rec, dict):
            return None
        cells = [CellRecord(*(int(v) for v in c)) for c in rec.get("cells", ())]  # TypeError: wrong length
        captions = {int(k): str(v) for k, v in rec.get("captions", {}).items()}
        routes = {int(k): TileRoute(str(v[0]), float(v[1]), float(v[2])) for k, v in rec.get("routes", {}).items()}
        blocks = {str(k): (int(v[0]), int(v[1])) for k, v in rec.get("blocks", {}).items()}
    except (ValueError, TypeError, AttributeError, IndexError, KeyError):
        return None
    return cells, captions, routes, blocks
