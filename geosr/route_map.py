"""The route map of a routed run: one pixel per tile, where the model went and why.

A small float32 GeoTIFF beside the output (``--route-map``) that an analyst drapes over
the scene in QGIS: band 1 ``texture`` and band 2 ``noise`` (DN, :mod:`geosr.routing`),
band 3 ``model`` (1: the tile went to the model, 0: to bicubic). Its pixels are the
tiles' cores: pixel ``(row, col)`` covers the core of tile ``(row, col)``, so its pixel
size is the core size (:attr:`geosr.tiling.TileGrid.core_shape`) times the scene's. The last
row and column of cores are shifted back inside the scene by less than one pixel per tile
(one grid step per tile in the plan of a model on a coarser grid than the LR,
:func:`geosr.tiling.axis_starts`); the map draws them on the regular grid, so its far edge
overhangs the scene by that much. Tiles that were not processed (outside the AOI, all
no-data) are NaN, the map's nodata.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import rasterio
from rasterio.control import GroundControlPoint
from rasterio.transform import Affine

from geosr.config import RunConfig
from geosr.errors import InputError
from geosr.routing import MODEL, NOISE_LIMIT, TileRoute
from geosr.scene import Scene
from geosr.tiling import Tile, TileGrid
from geosr.writer import check_companion_file

__all__ = ["check_route_map_target", "write_route_map", "ROUTE_MAP_BANDS"]

ROUTE_MAP_BANDS = ("texture", "noise", "model")


def check_route_map_target(path: str | os.PathLike, config: RunConfig, target, inputs: Sequence[str]) -> Path:
    """Refuse, before any work, a route map that cannot be written or would say nothing; its
    absolute path. ``target``: the run's output target, ``inputs``: every file the run reads.

    Raises
    ------
    InputError
        The run does not route tiles (``--route off`` or a classical model).
    OutputExistsError
        The file exists and ``config.overwrite`` is False.
    OutputError
        It is the output itself or a file the output writes, an input, a directory, or its
        folder does not exist.
    """
    if config.routed_threshold is None:
        why = "--route off" if config.route == "off" else f"the classical model {config.model!r} is never routed"
        raise InputError(f"--route-map needs a routed run (--route auto with a neural model): {why}")
    return check_companion_file(path, target, config.overwrite, "route map", "route.tif", inputs)


def _statistics(band: np.ndarray) -> dict[str, str]:
    """GDAL statistics of a route-map band over its natural range, which starts at 0.

    Texture and noise are >= 0 and the model flag is 0 or 1: a range from 0 to the band's
    maximum (1 at least for the flag) is what a viewer should stretch over, and it is never
    empty - QGIS fails on a band whose stored minimum equals its maximum (a scene whose every
    tile went to the model: "ERROR 5 ... dfMax should be strictly greater than dfMin").
    """
    valid = band[np.isfinite(band)]
    top = float(valid.max()) if valid.size else 0.0
    return {
        "STATISTICS_MINIMUM": "0",
        "STATISTICS_MAXIMUM": repr(top if top > 0 else 1.0),
        "STATISTICS_MEAN": repr(float(valid.mean()) if valid.size else 0.0),
        "STATISTICS_STDDEV": repr(float(valid.std()) if valid.size else 0.0),
    }


def write_route_map(path: Path, scene: Scene, grid: TileGrid, tiles: Sequence[Tile],
                    routes: Mapping[int, TileRoute], threshold: float) -> Path:
    """Write the route map of ``tiles`` routed at ``threshold`` (see the module docstring); return ``path``."""
    rows, cols = len(grid.rows), len(grid.cols)
    data = np.full((len(ROUTE_MAP_BANDS), rows, cols), np.nan, np.float32)
    for t in tiles:
        r = routes.get(t.index)
        if r is not None:
            data[:, t.row, t.col] = (r.texture, r.noise, float(r.path == MODEL))
    ch, cw = grid.core_shape
    profile = dict(driver="GTiff", width=cols, height=rows, count=len(ROUTE_MAP_BANDS), dtype="float32",
                   nodata=float("nan"), compress="DEFLATE")
    gcps = None
    if scene.gcps:  # GCP pixel/line are continuous coordinates: they scale with the pixel size
        gcps = ([GroundControlPoint(row=g.row / ch, col=g.col / cw, x=g.x, y=g.y, z=g.z, id=g.id)
                 for g in scene.gcps[0]], scene.gcps[1])
    else:
        profile["transform"] = scene.transform @ Affine.scale(cw, ch)
        if scene.crs:
            profile["crs"] = scene.crs
    with rasterio.open(path, "w", **profile) as ds:
        if gcps:
            ds.gcps = gcps
        ds.write(data)
        for i, name in enumerate(ROUTE_MAP_BANDS, start=1):
            ds.set_band_description(i, name)
            ds.update_tags(i, **_statistics(data[i - 1]))
        ds.update_tags(GEOSR_ROUTE_THRESHOLD=str(threshold), GEOSR_ROUTE_NOISE_LIMIT=str(NOISE_LIMIT),
                       GEOSR_TILE_CORE=f"{cw} x {ch}")
    return path
