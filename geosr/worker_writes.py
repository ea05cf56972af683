"""Blend and write the output cells on the dask workers: HR tiles never reach the client.

With worker processes (``--local-workers``, ``--address``) a run is a graph of tile tasks and
cell tasks. A tile batch (read, caption, upscale: :func:`geosr.tasks.process_batch`) leaves
its HR result on the worker that made it. A cell task per batch takes that result and, of each
neighbouring batch, only the parts of its tiles that its cells read (:func:`tile_parts`, a
small task dask places with the neighbour's result: the overlap strips travel between workers,
not whole HR tiles; x4, 256 px tiles, 16 px halo: about 1/9 of a tile per neighbour). It blends
the output cells its batch completes (those whose last covering tile is in it),
inverse-stretches and masks them, writes them into the run's raw work raster (``pwrite`` at
disjoint offsets: no lock) and makes them durable before it returns. The client gets back cell
offsets and captions only, so its memory and traffic stay flat whatever the scene size, and
blending and writing run on every worker.

The pixels are the bits the client's blend writes: :class:`geosr.cell_render.CellRenderer`
sums the same contributions in the same order. The work folder must be visible to the workers
at the same path (a local cluster, or a shared filesystem): :func:`workers_see` checks it, and
the engine blends on the client otherwise.
"""

from __future__ import annotations

import os
import pickle
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection, Sequence

import numpy as np
from rasterio.windows import Window

from geosr.blending import BlendAccumulator
from geosr.cell_render import CellRenderer, overlap_slices
import geosr.tasks as tasks
from geosr.tasks import BatchJob, TileResult, shippable_errors
from geosr.routing import TileRoute
from geosr.journal import CellRecord, RunJournal
from geosr.scheduling import in_flight, undo_malloc_trim_threshold
from geosr.tiling import Tile, scale_window
from geosr.writer import WorkRaster

__all__ = ["CellJob", "CellsWritten", "TilePart", "part_boxes", "tile_parts", "workers_see", "write_cells",
           "run_writing_on_workers"]


@dataclass(frozen=True)
class CellJob:
    """Output cells for one worker task to blend and write (small and picklable).

    Attributes
    ----------
    folder, profile, write_mask
        The run's :class:`~geosr.writer.WorkRaster`, reopened on the worker.
    renderer : CellRenderer
    cells : tuple
        ``(LR window, the tiles covering it)`` per cell.
    """

    folder: str
    profile: dict
    write_mask: bool
    renderer: CellRenderer
    cells: tuple[tuple[Window, tuple[Tile, ...]], ...]


@dataclass(frozen=True)
class CellsWritten:
    """What a cell task wrote: its cells (HR windows and checksums), tile captions and routes."""

    cells: tuple[CellRecord, ...]
    captions: dict[int, str]
    routes: dict[int, TileRoute]


@dataclass(frozen=True)
class TilePart:
    """The part ``[:, top:top+h, left:left+w]`` of a tile's HR result (``shape``) that another
    batch's cells cover, with the tile's caption and route."""

    index: int
    shape: tuple[int, ...]
    top: int
    left: int
    data: np.ndarray
    caption: str
    route: TileRoute | None

    def __sizeof__(self) -> int:  # for dask, as TileResult's
        return object.__sizeof__(self) + self.data.nbytes + len(self.caption)

    def result(self) -> TileResult:
        """The tile's result with zeros outside the part (where the cells do not look)."""
        hr = np.zeros(self.shape, self.data.dtype)
        hr[:, self.top : self.top + self.data.shape[1], self.left : self.left + self.data.shape[2]] = self.data
        return TileResult(self.index, hr, self.caption, self.route)


def part_boxes(cells: Sequence[tuple[Window, tuple[Tile, ...]]], tiles: Collection[int],
               scale: int) -> dict[int, tuple[int, int, int, int]]:
    """For each tile of ``tiles`` (indices) that ``cells`` use: the rows and columns
    ``(r0, r1, c0, c1)`` of its HR result that they read (:meth:`CellRenderer.render`'s slices)."""
    boxes: dict[int, tuple[int, int, int, int]] = {}
    for window, covering in cells:
        for t in covering:
            if t.index not in tiles:
                continue
            rows, cols = overlap_slices(t.read, window, scale)[0]
            top, left = t.pad[0] * scale, t.pad[2] * scale
            box = (top + rows.start, top + rows.stop, left + cols.start, left + cols.stop)
            old = boxes.get(t.index, box)
            boxes[t.index] = (min(old[0], box[0]), max(old[1], box[1]), min(old[2], box[2]), max(old[3], box[3]))
    return boxes


@shippable_errors
def tile_parts(batch: list[TileResult], boxes: dict[int, tuple[int, int, int, int]]) -> list[TilePart]:
    """The ``boxes`` of a batch's results, copied (a task that dask places with the batch's result)."""
    parts = []
    for r in batch:
        if r.index in boxes:
            r0, r1, c0, c1 = boxes[r.index]
            parts.append(TilePart(r.index, r.hr.shape, r0, c0, r.hr[:, r0:r1, c0:c1].copy(), r.caption, r.route))
    return parts


@shippable_errors
def write_cells(job: CellJob, *batches: list[TileResult] | list[TilePart]) -> CellsWritten:
    """Blend, render and durably write ``job``'s cells from the batch results or their parts (on a worker)."""
    undo_malloc_trim_threshold()
    results = {r.index: r.result() if isinstance(r, TilePart) else r for batch in batches for r in batch}
    s = job.renderer.scale
    raster = WorkRaster(Path(job.folder), job.profile, job.write_mask)
    cells = []
    try:
        for window, tiles in job.cells:
            values, valid = job.renderer.render(window, tiles, [results[t.index].hr for t in tiles])
            hr = scale_window(window, s)
            cells.append((hr, values, valid))
        crcs = raster.write_cells(cells)  # cells side by side: one write per row of them
        raster.sync()  # durable before the client's journal names these cells
    finally:
        raster.close()
    written = tuple(CellRecord(int(hr.col_off), int(hr.row_off), int(hr.width), int(hr.height), crc)
                    for (hr, _, _), crc in zip(cells, crcs))
    return CellsWritten(written, {i: r.caption for i, r in results.items()},
                        {i: r.route for i, r in results.items() if r.route is not None})


def workers_see(client, folder: Path) -> bool:
    """True when every worker of ``client`` sees ``folder`` at the same path."""
    seen = client.run(os.path.isdir, str(folder))
    return bool(seen) and all(seen.values())


def run_writing_on_workers(
    client,
    jobs: Sequence[BatchJob],
    acc: BlendAccumulator,
    renderer: CellRenderer,
    raster: WorkRaster,
    journal: RunJournal,
    captions: dict[int, str],
    routes: dict[int, TileRoute],
    resources: dict | None,
    progress: Callable[[list[int]], None],
) -> int:
    """Run ``jobs`` with their cell tasks, a bounded window in flight; journal what is written.

    ``progress(indices)`` is called with the tiles of each batch whose results were all used.
    Returns the bytes of results the client received (pickled cell reports).
    """
    import distributed

    batch_of = {t.index: b for b, job in enumerate(jobs) for t in job.tiles}
    tile = {t.index: t for job in jobs for t in job.tiles}
    owned: dict[int, list] = {}
    for window, indices in acc.open_cells():
        owner = max(batch_of[i] for i in indices)  # the batch that completes the cell
        owned.setdefault(owner, []).append((window, tuple(tile[i] for i in indices)))
    needs = {b: sorted({batch_of[t.index] for _, ts in cells for t in ts}) for b, cells in owned.items()}
    users = Counter(a for batches in needs.values() for a in batches)

    owners = iter(sorted(owned))
    batch_futures: dict[int, distributed.Future] = {}
    owner_of: dict[str, int] = {}
    futures = distributed.as_completed()

    def submit_next() -> None:
        b = next(owners, None)
        if b is None:
            return
        inputs = []
        for a in needs[b]:
            if a not in batch_futures:
                batch_futures[a] = client.submit(tasks.process_batch, jobs[a], pure=False, resources=resources)
            if a == b:
                inputs.append(batch_futures[a])
            else:  # cut where batch a is: only the strips b's cells use travel
                boxes = part_boxes(owned[b], {t.index for t in jobs[a].tiles}, renderer.scale)
                inputs.append(client.submit(tile_parts, batch_futures[a], boxes, pure=False))
        job = CellJob(str(raster.folder), raster.profile, raster.write_mask, renderer, tuple(owned[b]))
        future = client.submit(write_cells, job, *inputs, pure=False)
        owner_of[future.key] = b
        futures.add(future)

    received = 0
    for _ in range(in_flight(client)):
        submit_next()
    for future in futures:
        b = owner_of.pop(future.key)
        done: CellsWritten = future.result()
        future.release()
        received += len(pickle.dumps(done))
        # the captions and routes go in the journal before the cells of their tiles
        journal.record(captions=done.captions, routes=done.routes)
        for cell in done.cells:
            journal.record(cell=cell)
        captions.update(done.captions)
        routes.update(done.routes)
        for a in needs[b]:
            users[a] -= 1
            if users[a] == 0:  # no cell task left needs this batch: free it on its worker
                batch_futures.pop(a).release()
                progress(list(jobs[a].returns))
        if journal.commit_due():
            journal.commit(raster.sync)
        submit_next()
    return received
