"""Seamless blending of overlapping high-resolution tiles, in bounded memory.

Each HR tile (core + halo, all times ``scale``) is weighted by a separable window that is
1 in the core and falls off with a cosine across the halo. Contributions are overlap-added
and divided by the summed weight, so the weights of all tiles covering a pixel sum to 1
(partition of unity) and every pixel lies in some core (weight >= 1 before normalising).

Memory stays bounded by the tiles in flight, not by the scene: the output is cut into
*cells* by every tile edge, each cell knows how many tiles cover it, and a cell is emitted
(to the writer) and freed as soon as its last contributor arrived. With tiles arriving
roughly row-major, only the overlap band between two tile rows is pending at any time.

A cell's contributions are summed in tile order, not arrival order, so its pixels are the
same bits whichever worker finished first - what lets a resumed run (which skips the
cells it finished before, :class:`BlendAccumulator`'s ``finished``) write the same bytes
as an uninterrupted one.
"""

from __future__ import annotations

import bisect
from typing import Callable, Collection, Iterator, Sequence

import numpy as np
from rasterio.windows import Window

from geosr.tiling import Tile

__all__ = ["BLEND_MODES", "axis_weights", "tile_axis_weights", "BlendAccumulator"]

BLEND_MODES = ("cosine", "none")


def axis_weights(before: int, core: int, after: int, mode: str = "cosine") -> np.ndarray:
    """1-D weights over ``before`` halo + ``core`` + ``after`` halo pixels.

    ``cosine``: 1 in the core, a raised-cosine fall-off across each halo that stays > 0 but
    reaches ~0 at the halo's outer edge, where the tile saw the least context.
    ``none``: 1 in the core, 0 in the halo (hard seams, for comparison).
    """
    if mode not in BLEND_MODES:
        raise ValueError(f"unknown blend mode {mode!r}: use one of {', '.join(BLEND_MODES)}")
    w = np.ones(before + core + after, np.float32)
    if mode == "none":
        w[:before] = 0.0
        w[before + core :] = 0.0
        return w
    for n, sl, flip in ((before, slice(0, before), True), (after, slice(before + core, None), False)):
        if n == 0:
            continue
        d = np.arange(1, n + 1, dtype=np.float64)  # distance from the core edge
        ramp = 0.5 * (1.0 + np.cos(np.pi * (d - 0.5) / n))
        w[sl] = (ramp[::-1] if flip else ramp).astype(np.float32)
    return w


def tile_axis_weights(tile: Tile, overlap: int, scale: int, mode: str = "cosine") -> tuple[np.ndarray, np.ndarray]:
    """Row and column weights of the tile's part inside the raster (its read window x scale).

    The tile's ``[H, W]`` weights are ``outer(wy, wx)``; a window of them is
    ``outer(wy[ys], wx[xs])``, made only where needed.
    """
    ov = overlap * scale
    top, _, left, _ = (p * scale for p in tile.pad)
    ch, cw = int(tile.core.height) * scale, int(tile.core.width) * scale
    wy = axis_weights(ov, ch, ov, mode)[top : top + int(tile.read.height) * scale]
    wx = axis_weights(ov, cw, ov, mode)[left : left + int(tile.read.width) * scale]
    return wy, wx


class BlendAccumulator:
    """Overlap-add HR tiles and emit finished cells.

    Parameters
    ----------
    tiles : sequence of Tile
        The tiles that WILL be added (skipped tiles excluded): they define which cells
        wait for whom.
    width, height : int
        LR raster size.
    overlap, scale : int
    channels : int
        Bands per HR tile.
    emit : callable
        ``emit(window, data)`` with an HR :class:`Window` and ``[C, h, w]`` float32 blended
        values, called once per finished cell.
    mode : str
        Blend mode, see :func:`axis_weights`.
    finished : collection of (int, int)
        HR ``(col_off, row_off)`` of cells already written by an earlier run: they are
        neither waited for nor emitted again.
    """

    def __init__(
        self,
        tiles: Sequence[Tile],
        width: int,
        height: int,
        overlap: int,
        scale: int,
        channels: int,
        emit: Callable[[Window, np.ndarray], None],
        mode: str = "cosine",
        finished: Collection[tuple[int, int]] = (),
    ) -> None:
        self.scale, self.overlap, self.channels, self.mode = scale, overlap, channels, mode
        self._emit = emit
        self._tiles = list(tiles)
        ys = {0, height}
        xs = {0, width}
        for t in tiles:
            for w in (t.read, t.core):
                ys.update((int(w.row_off), int(w.row_off + w.height)))
                xs.update((int(w.col_off), int(w.col_off + w.width)))
        # Cuts in LR pixels: cells are whole LR pixels, so masks map onto them exactly.
        self._ys = sorted(ys)
        self._xs = sorted(xs)
        self._remaining = np.zeros((len(self._ys) - 1, len(self._xs) - 1), np.int32)
        # Cells inside some core are output; cells only reached by halos (around skipped
        # tiles) are not: they would hold one tile's least reliable pixels.
        self._in_core = np.zeros_like(self._remaining, bool)
        for t in tiles:
            (i0, i1), (j0, j1) = self._cell_range(t.read)
            self._remaining[i0:i1, j0:j1] += 1
            (i0, i1), (j0, j1) = self._cell_range(t.core)
            self._in_core[i0:i1, j0:j1] = True
        self._finished = np.zeros_like(self._remaining, bool)
        if finished:
            for i in range(self._finished.shape[0]):
                for j in range(self._finished.shape[1]):
                    w = self._cell_window(i, j)
                    self._finished[i, j] = (int(w.col_off), int(w.row_off)) in finished
        self._remaining[self._finished] = 0
        # cells one tile covers (a core's inside, most of the output) are that tile's pixels
        # times a weight of 1: emitted as they are, never copied, weighted or divided
        self._single = self._remaining == 1
        # cell -> contributions (tile index, weighted data, weights) until the last arrives
        self._pending: dict[tuple[int, int], list[tuple[int, np.ndarray, np.ndarray]]] = {}

    def _cell_range(self, r: Window) -> tuple[tuple[int, int], tuple[int, int]]:
        i0 = bisect.bisect_left(self._ys, int(r.row_off))
        i1 = bisect.bisect_left(self._ys, int(r.row_off + r.height))
        j0 = bisect.bisect_left(self._xs, int(r.col_off))
        j1 = bisect.bisect_left(self._xs, int(r.col_off + r.width))
        return (i0, i1), (j0, j1)

    def add(self, tile: Tile, hr: np.ndarray) -> None:
        """Add one HR tile: ``[C, H, W]`` covering the tile's padded extent times scale."""
        s = self.scale
        top, _, left, _ = (p * s for p in tile.pad)
        rh, rw = int(tile.read.height) * s, int(tile.read.width) * s
        data = hr[:, top : top + rh, left : left + rw]
        if data.shape[1:] != (rh, rw):
            raise ValueError(f"tile {tile.index}: HR data {hr.shape} does not match its window")
        wy, wx = tile_axis_weights(tile, self.overlap, s, self.mode)
        y_base, x_base = int(tile.read.row_off), int(tile.read.col_off)
        (i0, i1), (j0, j1) = self._cell_range(tile.read)
        for i in range(i0, i1):
            ys = slice((self._ys[i] - y_base) * s, (self._ys[i + 1] - y_base) * s)
            for j in range(j0, j1):
                if self._finished[i, j]:
                    continue
                xs = slice((self._xs[j] - x_base) * s, (self._xs[j + 1] - x_base) * s)
                self._remaining[i, j] -= 1
                if self._single[i, j]:
                    if self._in_core[i, j]:
                        self._emit(self._cell_window(i, j), data[:, ys, xs])
                    continue
                w = np.outer(wy[ys], wx[xs])
                parts = self._pending.setdefault((i, j), [])
                parts.append((tile.index, data[:, ys, xs] * w, w))
                if self._remaining[i, j] == 0:
                    del self._pending[(i, j)]
                    if self._in_core[i, j]:
                        self._emit(self._cell_window(i, j), _blend(parts))

    def open_cells(self) -> list[tuple[Window, tuple[int, ...]]]:
        """The output cells still to write: LR window and the indices of the tiles covering it.

        For writers that blend cells where the tiles are (:mod:`geosr.worker_writes`)
        instead of calling :meth:`add`; cells outside every core are not listed
        (:meth:`uncovered`), nor cells an earlier run finished.
        """
        cover: dict[tuple[int, int], list[int]] = {}
        for t in self._tiles:
            (i0, i1), (j0, j1) = self._cell_range(t.read)
            for i in range(i0, i1):
                for j in range(j0, j1):
                    if self._in_core[i, j] and not self._finished[i, j]:
                        cover.setdefault((i, j), []).append(t.index)
        return [
            (Window(self._xs[j], self._ys[i], self._xs[j + 1] - self._xs[j], self._ys[i + 1] - self._ys[i]),
             tuple(sorted(ix)))
            for (i, j), ix in sorted(cover.items())
        ]

    def needs(self, tile: Tile) -> bool:
        """True when some cell under the tile is not finished yet."""
        (i0, i1), (j0, j1) = self._cell_range(tile.read)
        return not self._finished[i0:i1, j0:j1].all()

    def _cell_window(self, i: int, j: int) -> Window:
        s = self.scale
        return Window(self._xs[j] * s, self._ys[i] * s, (self._xs[j + 1] - self._xs[j]) * s, (self._ys[i + 1] - self._ys[i]) * s)

    @property
    def pending_bytes(self) -> int:
        """Memory held by partly blended cells."""
        return sum(a.nbytes + w.nbytes for parts in self._pending.values() for _, a, w in parts)

    @property
    def cells(self) -> int:
        """Cells that are output (inside some core)."""
        return int(self._in_core.sum())

    @property
    def done(self) -> bool:
        return not self._pending and not self._remaining.any()

    def uncovered(self) -> Iterator[Window]:
        """HR windows of cells outside every processed core: the writer fills them as nodata."""
        for i, j in zip(*np.nonzero(~self._in_core)):
            yield self._cell_window(int(i), int(j))


def _blend(parts: list[tuple[int, np.ndarray, np.ndarray]]) -> np.ndarray:
    """Normalised sum of a cell's contributions, added in tile order (same bits every run)."""
    parts = sorted(parts, key=lambda p: p[0])
    acc, wsum = parts[0][1], parts[0][2]  # this cell's own arrays: summed in place
    for _, a, w in parts[1:]:
        acc += a
        wsum += w
    acc /= np.maximum(wsum, 1e-12)[None]
    return acc
