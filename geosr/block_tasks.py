"""Output written block by block by dask tasks, each submitted once the cells under its block are durable.

Tiled output (:mod:`geosr.tiled_output`: a COG per block) and Zarr output
(:mod:`geosr.zarr_output`: a group of chunks per block) are written the same way; only what a
block's task makes and how a finished block is checked differ. The output grid is cut into
squares of :attr:`BlockTaskWriter.side` output pixels (ragged at the right and bottom edges),
square ``(r, c)`` covering rows ``r * side`` to ``(r + 1) * side`` and the columns likewise.
A block waits for the output cells under it; the client follows the journal's commits
(:attr:`geosr.journal.RunJournal.on_commit`) and submits a block's task as soon as its last
cell is durable: a block's task may read only pixels the journal promises, so a resume never
finds a finished block made from cells it has to redo. The writer also follows the cells as they
are recorded (:attr:`geosr.journal.RunJournal.on_record`): when the last cell of a block is
recorded it asks the journal to commit at once (:meth:`geosr.journal.RunJournal.request_commit`)
instead of at its next tick, up to :data:`geosr.journal.COMMIT_SECONDS` later - the blocks of the
run's last second were all written after the last tile. It asks only near the end of the cells
(:data:`EARLY_COMMIT_TICKS`): before, the tick comes before the last tile anyway, and a commit per
block cost whole runs more than it saved (Zarr at 67 MP: a chunk finishes in nearly every batch,
so 4x the commits and tasks, overview chunks read back from the store: +1-3.6 s a run, on the
worker thread that also runs the tiles). The tasks' results are journalled as
``blocks`` entries ``(name, size, CRC-32)`` of files the task made durable itself.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Iterable, Sequence

from rasterio.windows import Window

from geosr import journal as _journal
from geosr.journal import CellRecord, RunJournal
from geosr.resumable import StoppedRunWarning
from geosr.tiling import squares_under
from geosr.writer import WorkRaster

__all__ = ["BlockTaskWriter", "EARLY_COMMIT_TICKS"]

#: A block's last cell commits the journal at once only when the cells not recorded yet would all
#: be recorded within this many journal ticks (:data:`geosr.journal.COMMIT_SECONDS`) at the rate
#: measured so far: a block finished earlier is written at the next tick, before the last tile
#: (2: one tick, and as much again for a rate that changes near the end).
EARLY_COMMIT_TICKS = 2.0


class BlockTaskWriter:
    """Submits each block's task once all its cells are durable; journals what the tasks made.

    Subclasses say which blocks are left to write, what a block's task is, what its result
    journals and how a journalled file is checked; this class follows the journal, keeps
    the cells each block waits for, submits, collects and waits.

    Parameters
    ----------
    client : distributed.Client
    raster : WorkRaster
        The run's work raster (read in place by the tasks, from other processes too).
    journal : RunJournal
        Followed through its commits; the tasks' results are recorded in it (as ``blocks``).
    side : int
        A block's side in output pixels.
    cells : sequence of Window
        HR windows of the output cells not finished yet; areas outside every cell (no tile
        core) must be written before.
    order_side : int, optional
        The side of the squares the engine orders the tiles by (default ``side``).

    Attributes
    ----------
    side : int
        ``order_side``: the engine runs the tiles square by square of this side, so blocks
        finish one after another during the run instead of a row of them after it.
    """

    #: dask priority of the blocks' tasks, above the tiles' (0): a block whose cells are durable
    #: is written before the tiles queued after it, not left with others for after the last tile
    TASK_PRIORITY = 1
    #: the journalled files in messages ("block COGs", "Zarr chunks")
    finished_files = "blocks"
    #: a block in messages ("blocks", "chunks")
    block_name = "blocks"

    def __init__(self, client, raster: WorkRaster, journal: RunJournal, side: int, cells: Sequence[Window],
                 order_side: int | None = None) -> None:
        self.client, self.raster, self.journal = client, raster, journal
        self._block_side, self.side = side, order_side or side
        # Before the blocks left to do are known: a journalled file that is gone or changed
        # puts its block back among them.
        self._check_finished()
        self._waiting: dict[tuple[int, int], set[tuple[int, int]]] = {key: set() for key in self._blocks_to_write()}
        for window in cells:
            for key in squares_under(window, self._block_side):
                if key in self._waiting:
                    self._waiting[key].add((int(window.col_off), int(window.row_off)))
        #: the cells of each block not recorded yet: when the last one is, the journal commits at once
        self._unrecorded = {key: set(waiting) for key, waiting in self._waiting.items() if waiting}
        #: the cells of the run not recorded yet, the cells recorded and when the first one was
        self._cells_left = {(int(w.col_off), int(w.row_off)) for w in cells}
        self._cells_recorded, self._first_record = 0, 0.0
        self._futures: list = []
        raster.sync()  # the tasks may read it from other processes
        journal.on_commit.append(self._durable)
        journal.on_record.append(self._recorded)
        self._submit_ready()  # blocks whose cells a stopped run finished: at once

    # -- what subclasses say -------------------------------------------------------------
    @property
    def folder(self) -> Path:
        """Where the journalled files are (named in the warning about changed ones)."""
        raise NotImplementedError

    def _blocks_to_write(self) -> Iterable[tuple[int, int]]:
        """``(r, c)`` of the blocks this run writes, row by row (blocks a stopped run finished are left out)."""
        raise NotImplementedError

    def _journalled_bytes(self, name: str) -> tuple[int, int]:
        """Size and CRC-32 of the files of a ``blocks`` journal entry now (OSError or ValueError:
        gone, or not a name this output makes)."""
        raise NotImplementedError

    def _submit(self, key: tuple[int, int]):
        """Submit block ``key``'s task; its future."""
        raise NotImplementedError

    def _submit_blocks(self, keys: list[tuple[int, int]]) -> list:
        """Submit the tasks of blocks ``keys`` (row by row; maybe none), and of any other work that
        became possible since the last call; their futures. One task per block unless overridden."""
        return [self._submit(key) for key in keys]

    def _collect(self, result) -> Iterable[tuple[str, int, int]]:
        """Take note of what a finished task made; the ``(name, size, CRC-32)`` journal entries of it."""
        raise NotImplementedError

    # -- the machinery -------------------------------------------------------------------
    def _check_finished(self) -> None:
        """Forget journalled entries whose files are gone or hold other bytes: they are made again."""
        bad = []
        for name, (size, crc) in self.journal.blocks.items():
            try:
                same = self._journalled_bytes(name) == (size, crc)
            except (OSError, ValueError):
                same = False
            if not same:
                bad.append(name)
        for name in bad:
            del self.journal.blocks[name]
        if bad:
            # stacklevel: this method, __init__, the subclass's __init__, then the caller
            warnings.warn(f"{len(bad)} finished {self.finished_files} in {self.folder} are missing or changed: "
                          "making them again", StoppedRunWarning, stacklevel=4)

    def _recorded(self, cell: CellRecord) -> None:
        """The journal's record listener: a cell is written (not durable yet); when it is the last
        one of a block near the end of the run, the block's task need not wait for the journal's
        next tick."""
        now = time.monotonic()
        if not self._cells_recorded:
            self._first_record = now
        self._cells_recorded += 1
        self._cells_left.discard(cell.key)
        finished = False
        for key in squares_under(Window(cell.col_off, cell.row_off, cell.width, cell.height), self._block_side):
            unrecorded = self._unrecorded.get(key)
            if unrecorded is not None:
                unrecorded.discard(cell.key)
                if not unrecorded:
                    del self._unrecorded[key]
                    finished = True
        if finished and self._near_the_end(now):
            self.journal.request_commit()

    def _near_the_end(self, now: float) -> bool:
        """Whether the cells left would all be recorded within :data:`EARLY_COMMIT_TICKS` journal
        ticks at the rate so far (unknown rate, before two records: yes)."""
        elapsed = now - self._first_record
        if self._cells_recorded < 2 or elapsed <= 0:
            return True
        rate = (self._cells_recorded - 1) / elapsed  # cells per second since the first one
        return len(self._cells_left) <= rate * EARLY_COMMIT_TICKS * _journal.COMMIT_SECONDS

    def _durable(self, cells: list[CellRecord]) -> None:
        """The journal's commit listener: these cells are durable; submit the blocks they finish."""
        for cell in cells:
            for key in squares_under(Window(cell.col_off, cell.row_off, cell.width, cell.height),
                                     self._block_side):
                if key in self._waiting:
                    self._waiting[key].discard(cell.key)
        # Collected here, not only in wait(): a failed task fails the run at the next commit
        # instead of after the last tile, and finished blocks reach the journal while the run goes.
        for future in [f for f in self._futures if f.done()]:
            self._record(future)
        self._submit_ready()

    def _submit_ready(self) -> None:
        ready = [k for k, waiting in self._waiting.items() if not waiting]
        for key in ready:
            del self._waiting[key]
        self._futures += self._submit_blocks(ready)

    def _record(self, future) -> None:
        result = future.result()  # a failed task raises its error here
        self._futures.remove(future)
        future.release()
        for entry in self._collect(result):
            self.journal.record(block=entry)

    def wait(self) -> None:
        """Wait for every block's task and journal what they made (after the last cells' commit)."""
        import distributed

        if any(self._waiting.values()):
            raise RuntimeError(f"internal error: some {self.block_name}' cells were never finished")
        self._submit_ready()
        # A finished task may make more work possible (Zarr's overview chunks over the chunks it
        # wrote): submitted as soon as it is collected, not after the others.
        while self._futures:
            done = distributed.wait(self._futures, return_when="FIRST_COMPLETED").done
            for future in [f for f in self._futures if f in done]:  # as submitted: a task before those run after it
                self._record(future)
            self._submit_ready()
        self.journal.commit(lambda: None)  # the tasks fsynced their files
