"""Output pixels of one window from the HR tiles under it: blend, inverse stretch, mask, nodata.

The arithmetic of :class:`geosr.blending.BlendAccumulator` and of the run's writer, pixel for
pixel (each pixel sums the same contributions in the same order), for the places that hold a
window's tiles rather than a stream of them: the chunks of the lazy xarray result
(:mod:`geosr.lazy`) and the cells that dask workers blend and write themselves
(:mod:`geosr.worker_writes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from rasterio.windows import Window

from geosr.blending import tile_axis_weights
from geosr.radiometry import Stretch
from geosr.reading import read_band_nodata, read_valid
from geosr.scene import open_raster
from geosr.tiling import Tile

__all__ = ["CellRenderer", "avoid_nodata", "cores_in", "error_pixels", "hr_validity", "output_pixels", "overlap_slices"]


@dataclass(frozen=True)
class CellRenderer:
    """Turns the HR tiles under an LR window into that window's output pixels.

    Attributes
    ----------
    source : str
        The scene read by the tiles (for its validity mask).
    stretch : Stretch
        The scene stretch, inverted to output values.
    masked : bool
        The scene has a validity mask (nodata, alpha, internal mask).
    nodata : float or None
    scale, overlap : int
    blend : str
        Blend mode, see :func:`geosr.blending.axis_weights`.
    bands : tuple of int
        The source's bands (1-based) that are the output's, in its order: where one holds
        the nodata value its output band is nodata (:func:`geosr.reading.read_band_nodata`).
    """

    source: str
    stretch: Stretch
    masked: bool
    nodata: float | None
    scale: int
    overlap: int
    blend: str
    bands: tuple[int, ...] = ()

    def render(
        self, window: Window, tiles: Sequence[Tile], hrs: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``(values [C, h, w] in the output dtype, HR validity or None when unmasked)``.

        Pixels outside every tile core are holes (nodata, or 0), as in a run.
        """
        bands = len(self.stretch.low)
        acc, in_core = self._blend(window, tiles, hrs, slice(0, bands))
        values, valid = output_pixels(acc, self.stretch, *self._lr_valid(window, per_band=True), self.scale,
                                      self.nodata)
        if not in_core.all():
            values[:, ~in_core] = np.asarray(self.nodata if self.nodata is not None else 0).astype(values.dtype)
        return values, valid

    def render_error(self, window: Window, tiles: Sequence[Tile], hrs: Sequence[np.ndarray]) -> np.ndarray:
        """The predicted error of ``window``'s output, ``[h, w]`` float32 (:func:`error_pixels`),
        from tiles whose results end with their error variance (:func:`geosr.tasks.upscale_batch`)."""
        bands = len(self.stretch.low)
        acc, in_core = self._blend(window, tiles, hrs, slice(bands, bands + 1))
        lr_valid, band_nodata = self._lr_valid(window, per_band=True)
        valid = in_core if lr_valid is None else in_core & hr_validity(lr_valid, self.scale)
        return error_pixels(acc[0], valid, band_nodata, self.scale)

    def _blend(self, window: Window, tiles: Sequence[Tile], hrs: Sequence[np.ndarray],
               channels: slice) -> tuple[np.ndarray, np.ndarray]:
        """The tiles' ``channels`` blended over ``window`` (model units), and where a tile core lies."""
        s = self.scale
        h, w = int(window.height) * s, int(window.width) * s
        acc = np.zeros((channels.stop - channels.start, h, w), np.float32)
        wsum = np.zeros((h, w), np.float32)
        for tile, hr in sorted(zip(tiles, hrs), key=lambda p: p[0].index):  # tile order: same bits as a run
            top, _, left, _ = (p * s for p in tile.pad)
            data = hr[channels, top : top + int(tile.read.height) * s, left : left + int(tile.read.width) * s]
            wy, wx = tile_axis_weights(tile, self.overlap, s, self.blend)
            src, dst = overlap_slices(tile.read, window, s)
            weights = np.outer(wy[src[0]], wx[src[1]])  # only this window's part of the tile
            acc[(slice(None),) + dst] += data[(slice(None),) + src] * weights
            wsum[dst] += weights
        acc /= np.maximum(wsum, 1e-12)[None]
        return acc, cores_in(window, tiles, s)

    def _lr_valid(self, window: Window, per_band: bool = False) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The LR validity of ``window`` (None: unmasked) and, ``per_band``, its bands' nodata."""
        if not self.masked:
            return None, None
        with open_raster(self.source) as ds:
            band_nodata = read_band_nodata(ds, window, self.bands, self.nodata) if per_band else None
            return read_valid(ds, window, True, self.bands), band_nodata

    def __call__(self, window: Window, tiles: tuple[Tile, ...], *hrs: np.ndarray) -> np.ndarray:
        """The output values of ``window`` (a dask task of the lazy result)."""
        return self.render(window, tiles, hrs)[0]


def output_pixels(
    data: np.ndarray, stretch: Stretch, lr_valid: np.ndarray | None, lr_band_nodata: np.ndarray | None,
    scale: int, nodata: float | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Blended model units -> output values and their HR validity (None: all valid).

    Inverse stretch; with the scene's LR validity mask, each invalid LR pixel's ``scale x
    scale`` block becomes nodata (when there is one) and valid pixels are kept off it. So
    does, in one band, each LR pixel where that band alone holds nodata (``lr_band_nodata``,
    ``[bands, h, w]``; :func:`geosr.reading.read_band_nodata`).
    """
    values = stretch.inverse(data, interleaved=True)  # the writer's layout (WorkRaster)
    if lr_valid is None:
        return values, None
    valid = hr_validity(lr_valid, scale)
    if nodata is not None:
        keep = valid[None] if lr_band_nodata is None else valid[None] & ~hr_validity(lr_band_nodata, scale)
        avoid_nodata(values, keep, nodata)
        values[~np.broadcast_to(keep, values.shape)] = np.asarray(nodata).astype(values.dtype)
    return values, valid


def hr_validity(lr_valid: np.ndarray, scale: int) -> np.ndarray:
    """Each LR pixel's validity (the last two axes) over its ``scale x scale`` block of output pixels."""
    return np.repeat(np.repeat(lr_valid, scale, axis=-2), scale, axis=-1)


def error_pixels(variance: np.ndarray, valid: np.ndarray | None, lr_band_nodata: np.ndarray | None = None,
                 scale: int = 1) -> np.ndarray:
    """Blended error variance ``[h, w]`` -> the predicted RMSE, float32, NaN where ``valid`` is False
    and where a band of the output is nodata (``lr_band_nodata``, ``[bands, h / scale, w / scale]``:
    the error is the bands' mean, and that band has no value to err).

    NaN is the error map's nodata (:mod:`geosr.uncertainty_map`): no value there can be taken
    for a small error.
    """
    error = np.sqrt(np.maximum(variance, 0.0), dtype=np.float32)
    if valid is not None:
        error[~valid] = np.nan
    if lr_band_nodata is not None:
        error[hr_validity(lr_band_nodata.any(axis=0), scale)] = np.nan
    return error


def avoid_nodata(values: np.ndarray, valid: np.ndarray, nodata: float) -> None:
    """Move valid pixels that landed on the nodata value one step off it, in place.

    A dark valid pixel whose upscaled value rounds to nodata (0 in uint8, typically) would
    otherwise turn into a hole in the output mask. ``valid``: ``[1 or bands, h, w]``.
    """
    if np.isnan(nodata):
        return
    with np.errstate(invalid="ignore", over="ignore"):
        target = np.asarray(nodata).astype(values.dtype)
    if float(target) != nodata:  # no pixel can hold it (-9999 in uint8: its cast, 241, is a value like any)
        return
    hit = (values == target) & valid
    if not hit.any():
        return
    if np.issubdtype(values.dtype, np.integer):
        step = -1 if nodata >= np.iinfo(values.dtype).max else 1
        values[hit] = np.asarray(nodata + step).astype(values.dtype)
    else:
        values[hit] = np.nextafter(values.dtype.type(nodata), values.dtype.type(np.inf))


def cores_in(window: Window, tiles: Sequence[Tile], scale: int) -> np.ndarray:
    """``[h, w]`` HR mask of ``window``: where a core of ``tiles`` lies (elsewhere holes)."""
    inside = np.zeros((int(window.height) * scale, int(window.width) * scale), bool)
    for tile in tiles:
        inside[overlap_slices(tile.core, window, scale)[1]] = True
    return inside


def overlap_slices(a: Window, b: Window, s: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """HR slices of the overlap of LR windows ``a`` and ``b``: into ``a``'s array, into ``b``'s."""
    r0, r1 = max(a.row_off, b.row_off), min(a.row_off + a.height, b.row_off + b.height)
    c0, c1 = max(a.col_off, b.col_off), min(a.col_off + a.width, b.col_off + b.width)
    r0, r1, c0, c1 = (int(v) for v in (r0, max(r0, r1), c0, max(c0, c1)))

    def cut(win: Window) -> tuple[slice, slice]:
        y, x = int(win.row_off), int(win.col_off)
        return slice((r0 - y) * s, (r1 - y) * s), slice((c0 - x) * s, (c1 - x) * s)

    return cut(a), cut(b)
