"""The tile plan: overlapping low-resolution tiles and their high-resolution footprints.

Every tile has a *core* (the pixels it is responsible for) and a *halo* of ``overlap``
pixels on each side that gives the model context and the blender room to cross-fade.
Cores are the fewest of at most ``tile`` pixels, balanced to one size, so every tile has
the same shape (batches) and no sliver tile repeats work; the last row/column is shifted
back inside the raster (never dropped, never zero-padded). Where the halo leaves the raster it is filled by
reflection (:func:`pad_widths` says how much on each side).

A model whose network runs on a grid coarser than the LR pixels (an LR-space model with
``unshuffle_factor > scale``: one network cell is ``unshuffle_factor / scale`` LR px, the grid
*step*) gives the same pixels for the same input only on the same phase of that grid. Its plan
(``step > 1``) starts every core and every tile window on a multiple of the step: cores are
multiples of it (at most ``tile`` rounded down to one), the halo is ``overlap`` rounded up to
one, and the last core is shifted back to the last multiple of the step that still reaches the
raster's edge; where that overshoots the edge (a raster not a multiple of the step) the core is
cut at the edge and the tile keeps its shape, reflection filling the rest. A tiled run then
gives the pixels of an untiled one. With ``step`` 1 (every other model) nothing changes.

All windows are integer :class:`rasterio.windows.Window` objects; high-resolution windows
are low-resolution windows times ``scale`` in whole pixels, never derived from floats.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from affine import Affine
from rasterio.windows import Window

__all__ = ["Tile", "TileGrid", "axis_starts", "block_major", "coarsen_window", "core_size", "scale_window", "squares_under",
           "window_transform"]


def core_size(size: int, tile: int, step: int = 1) -> int:
    """Core length along an axis: the fewest cores of at most ``tile`` px, balanced.

    ``ceil(size / n)`` with ``n = ceil(size / tile)`` cores: a 276 px axis with ``tile=256``
    gets two 138 px cores rather than 256 + a 20 px sliver shifted back over the first, so
    the model does not run on the same pixels twice. With a grid ``step`` (see the module
    docstring) ``tile`` is rounded down and the core up to a multiple of ``step`` (the core
    may then exceed ``size`` by less than ``step``: it is cut at the edge).
    """
    if tile <= 0:
        raise ValueError(f"tile size must be positive, got {tile}")
    if step < 1:
        raise ValueError(f"grid step must be positive, got {step}")
    n = math.ceil(size / max(step, tile // step * step))
    return _round_up(math.ceil(size / n), step)


def axis_starts(size: int, tile: int, step: int = 1) -> list[int]:
    """Core start offsets along one axis of ``size`` pixels.

    Cores have the balanced length :func:`core_size`; the last one is shifted back (by less
    than ``n`` px) so it ends at ``size``, or with a grid ``step`` to the multiple of it that
    ends at ``size`` or just beyond (its core is cut there). A ``tile`` of at least ``size``
    gives one core.
    """
    core = core_size(size, tile, step)
    n = math.ceil(size / core)
    return [min(i * core, _round_up(size - core, step)) for i in range(n)]


def _round_up(n: int, step: int) -> int:
    """The least multiple of ``step`` >= ``n`` (``n`` may be negative)."""
    return -(-n // step) * step


def scale_window(window: Window, scale: int) -> Window:
    """The window ``scale`` times larger, on the refined grid (integer arithmetic)."""
    return Window(
        int(window.col_off) * scale,
        int(window.row_off) * scale,
        int(window.width) * scale,
        int(window.height) * scale,
    )


def window_transform(window: Window, transform: Affine) -> Affine:
    """The transform of ``window``'s grid: ``transform`` moved to its top-left corner.

    What ``rasterio.windows.transform`` computes, with affine's ``@`` (its ``*`` on matrices
    warns in a default run) and integer offsets.
    """
    return transform @ Affine.translation(int(window.col_off), int(window.row_off))


def squares_under(window: Window, size: int) -> list[tuple[int, int]]:
    """``(row, col)`` of the ``size`` px squares of a grid of them (from 0, 0) that ``window`` touches."""
    r0, r1 = int(window.row_off) // size, (int(window.row_off + window.height) - 1) // size
    c0, c1 = int(window.col_off) // size, (int(window.col_off + window.width) - 1) // size
    return [(r, c) for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)]


def block_major(tiles: Sequence[Tile], side: int) -> list[Tile]:
    """``tiles`` block by block: the ``side`` px squares (LR) that their cores' corners fall in,
    row-major; in each square its first row and first column of tiles first, then the rest,
    row-major.

    An output written block by block (tiled COGs, Zarr chunk groups) then finishes its blocks
    one after another as the tiles come: in row-major order a whole row of blocks waits for
    the last row of tiles and is written after it, the serial tail (docs/benchmarks.md). A
    block's edge cells wait for its neighbours' halos: the left neighbour for the first column
    of tiles, the one above for the first row, so these come first. The pixels do not depend
    on the order (:mod:`geosr.blending` sums in tile order).
    """
    def block(t: Tile) -> tuple[int, int]:
        return int(t.core.row_off) // side, int(t.core.col_off) // side

    first_row: dict[tuple[int, int], int] = {}
    first_col: dict[tuple[int, int], int] = {}
    for t in tiles:
        b = block(t)
        first_row[b] = min(first_row.get(b, int(t.core.row_off)), int(t.core.row_off))
        first_col[b] = min(first_col.get(b, int(t.core.col_off)), int(t.core.col_off))

    def key(t: Tile) -> tuple:
        b = block(t)
        inner = int(t.core.row_off) != first_row[b] and int(t.core.col_off) != first_col[b]
        return (*b, inner, int(t.core.row_off), int(t.core.col_off))

    return sorted(tiles, key=key)


def coarsen_window(window: Window, scale: int) -> Window:
    """The window of the input grid under a refined-grid ``window`` whose edges lie on input pixels."""
    if any(int(v) % scale for v in (window.col_off, window.row_off, window.width, window.height)):
        raise ValueError(f"{window} does not lie on the input grid of a x{scale} refinement")
    return Window(int(window.col_off) // scale, int(window.row_off) // scale,
                  int(window.width) // scale, int(window.height) // scale)


@dataclass(frozen=True)
class Tile:
    """One tile of the plan.

    Attributes
    ----------
    index : int
        Position in row-major order.
    row, col : int
        Grid position.
    core : Window
        LR pixels this tile is responsible for (inside the raster).
    read : Window
        LR pixels read from the raster: the core plus halo, clipped to the raster.
    pad : tuple of int
        ``(top, bottom, left, right)`` reflect padding that extends ``read`` to the
        full core-plus-halo extent.
    """

    index: int
    row: int
    col: int
    core: Window
    read: Window
    pad: tuple[int, int, int, int]

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` of the padded LR tile fed to the model."""
        top, bottom, left, right = self.pad
        return int(self.read.height) + top + bottom, int(self.read.width) + left + right


@dataclass(frozen=True)
class TileGrid:
    """Tile plan of a ``width`` x ``height`` raster.

    Parameters
    ----------
    width, height : int
        LR raster size.
    tile : int
        Largest core size in LR pixels; cores are balanced to equal sizes of at most
        ``tile`` (see :func:`core_size`).
    overlap : int
        Halo width in LR pixels on every side of a core; rounded up to a multiple of ``step``.
    step : int
        The model's grid step in LR pixels (see the module docstring): every core and tile
        window starts on a multiple of it. 1 (the default) is the plan of every model whose
        network sees each LR pixel on its own.
    """

    width: int
    height: int
    tile: int
    overlap: int
    step: int = 1

    def __post_init__(self) -> None:
        if self.tile < 8:
            raise ValueError(f"tile must be at least 8 px, got {self.tile}")
        if self.overlap < 0:
            raise ValueError(f"overlap must be >= 0, got {self.overlap}")
        if self.width < 1 or self.height < 1:
            raise ValueError(f"empty raster ({self.width} x {self.height})")
        if self.step < 1:
            raise ValueError(f"grid step must be >= 1, got {self.step}")
        # the halo the tiles have (and the blender's ramps): on the grid too
        object.__setattr__(self, "overlap", _round_up(self.overlap, self.step))

    @property
    def rows(self) -> list[int]:
        return axis_starts(self.height, self.tile, self.step)

    @property
    def cols(self) -> list[int]:
        return axis_starts(self.width, self.tile, self.step)

    @property
    def core_shape(self) -> tuple[int, int]:
        """``(height, width)`` of every core (the last row's and column's cut at the edge where
        a grid step makes them overshoot it)."""
        return core_size(self.height, self.tile, self.step), core_size(self.width, self.tile, self.step)

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)

    def tiles(self) -> list[Tile]:
        """All tiles, row-major."""
        out = []
        rows, cols = self.rows, self.cols
        h, w = self.core_shape
        for r, y0 in enumerate(rows):
            for c, x0 in enumerate(cols):
                out.append(self._tile(len(out), r, c, x0, y0, w, h))
        return out

    def _tile(self, index: int, r: int, c: int, x0: int, y0: int, w: int, h: int) -> Tile:
        ov = self.overlap
        rx0, ry0 = max(0, x0 - ov), max(0, y0 - ov)
        rx1, ry1 = min(self.width, x0 + w + ov), min(self.height, y0 + h + ov)
        pad = (ry0 - (y0 - ov), (y0 + h + ov) - ry1, rx0 - (x0 - ov), (x0 + w + ov) - rx1)
        return Tile(
            index=index,
            row=r,
            col=c,
            # cut at the edge: a grid step may make the last core overshoot it (never with step 1)
            core=Window(x0, y0, min(w, self.width - x0), min(h, self.height - y0)),
            read=Window(rx0, ry0, rx1 - rx0, ry1 - ry0),
            pad=pad,
        )
