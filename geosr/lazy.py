"""The upscaled scene as a lazy, georeferenced ``xarray.DataArray``.

The same tile plan, band plan, stretch, seeds and blending as :func:`geosr.engine.upscale_scene`,
as a dask graph in two layers instead of a run:

- one task per tile: read, caption and upscale it (:func:`geosr.tasks.process_batch` on a
  one-tile job), giving its HR pixels;
- one task per output chunk: blend the tiles whose read window touches it, in tile order,
  then inverse stretch, mask and nodata as the writer does.

Output chunks are the tile grid's rows and columns times ``scale`` (tile cores, which
overlap when the last row/column is shifted back, cut at the next core's start), so a chunk
depends on the few tiles around it: ``.isel`` of a corner computes only the tiles under it.
Pixel for pixel the result is what ``geosr upscale`` writes (each pixel sums the same
contributions in the same order).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, replace

import dask.array
import numpy as np
import xarray as xr
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from rasterio.windows import Window

from geosr.cell_render import CellRenderer
from geosr.config import RunConfig, parse_caption_every
import geosr.tasks as tasks
from geosr.tasks import BatchJob, batch_jobs, captioner_for, with_shared_captions
from geosr.georef import scale_gcps, scale_transform
from geosr.models import load_upscaler
from geosr.remote import is_remote, remote_object
from geosr.scene import expand_inputs
from geosr.scene_plan import band_tags, plan_scene
from geosr.sources import SourceFiles

__all__ = ["lazy_upscale"]


def lazy_upscale(files: SourceFiles, config: RunConfig) -> xr.DataArray:
    """A lazy DataArray of ``files`` upscaled with ``config`` (nothing is computed yet).

    Parameters
    ----------
    files : SourceFiles
        The input; kept alive by the result's graph (temporary copies live as long as it).
    config : RunConfig
        ``scale``, ``model``, ``captioner``, ``caption_every``, ``tiles``, ``bands``,
        ``aoi``, ``blend``, ``seed`` and the model options are used. With ``caption_every``
        other than ``tile``, the shared captions are computed now (a few tiles).

    Returns
    -------
    xarray.DataArray
        ``(band, y, x)`` on the input grid refined ``scale`` times, in the input dtype, with
        rioxarray's transform, CRS (or GCPs) and nodata; ``band`` holds the 1-based input
        band numbers and ``long_name`` their descriptions. The attributes ``GEOSR_MODEL_BANDS``,
        ``GEOSR_BICUBIC_BANDS``, ``GEOSR_RGB_BANDS`` and ``GEOSR_RGB_SOURCE`` say which bands
        went through the model and which were taken as R, G, B, as a written output's tags
        (:func:`geosr.scene_plan.band_tags`).
    """
    model = load_upscaler(config.model, config.scale, **config.model_options())
    captioner_for(config.captioner)
    paths = expand_inputs(files.paths)
    scene_plan = plan_scene(paths, config, model.channels, files.workdir if len(paths) > 1 else None)
    scene, plan, grid, tiles, stretch = (
        scene_plan.scene, scene_plan.bands, scene_plan.grid, list(scene_plan.tiles), scene_plan.stretch
    )
    jobs = batch_jobs(scene_plan, tiles, config)
    mode, n = parse_caption_every(config.caption_every)
    if mode != "tile":
        jobs = with_shared_captions(lambda js: [tasks.caption_tiles(j) for j in js], jobs, tiles, mode, n, grid)
    # One tile per task, so an output chunk waits for its own tiles only. Seeds and captions
    # are per tile, so the pixels do not depend on the batching.
    tile_jobs = [
        replace(j, tiles=(t,), seeds=(seed,), captions=(caption,))
        for j in jobs for t, seed, caption in zip(j.tiles, j.seeds, j.captions)
    ]
    s = config.scale
    # an object's version stands for a file's mtime (geosr.remote)
    version = remote_object(scene.source).version if is_remote(scene.source) else os.path.getmtime(scene.source)
    token = tokenize(scene.source, version, config, stretch, plan)
    tile_name, name = f"geosr-tile-{token}", f"geosr-upscale-{token}"
    dsk: dict = {(tile_name, job.tiles[0].index): (functools.partial(_upscale_tile, job),) for job in tile_jobs}

    renderer = _ChunkRenderer(
        files=files, source=scene.source, stretch=stretch, masked=scene.masked, nodata=scene.nodata, scale=s,
        overlap=grid.overlap, blend=config.blend,
    )
    ys = grid.rows + [scene.height]
    xs = grid.cols + [scene.width]
    for i in range(len(ys) - 1):
        for j in range(len(xs) - 1):
            window = Window(xs[j], ys[i], xs[j + 1] - xs[j], ys[i + 1] - ys[i])
            under = tuple(t for t in tiles if _intersects(t.read, window))
            dsk[(name, 0, i, j)] = (
                functools.partial(renderer, window, under), *[(tile_name, t.index) for t in under]
            )
    chunks = ((len(plan.bands),), tuple(s * (b - a) for a, b in zip(ys, ys[1:])), tuple(s * (b - a) for a, b in zip(xs, xs[1:])))
    data = dask.array.Array(HighLevelGraph.from_collections(name, dsk, dependencies=()), name, chunks, dtype=scene.dtype)
    return _georeferenced(data, scene, plan.bands, s, band_tags(plan))


def _upscale_tile(job: BatchJob) -> np.ndarray:
    return tasks.process_batch(job)[0].hr


def _intersects(a: Window, b: Window) -> bool:
    return (
        a.col_off < b.col_off + b.width and b.col_off < a.col_off + a.width
        and a.row_off < b.row_off + b.height and b.row_off < a.row_off + a.height
    )


@dataclass(frozen=True)
class _ChunkRenderer(CellRenderer):
    """A :class:`~geosr.cell_render.CellRenderer` that keeps the input files alive as long as the graph."""

    files: SourceFiles | None = None


def _georeferenced(data: dask.array.Array, scene, bands: tuple[int, ...], s: int, tags: dict[str, str]) -> xr.DataArray:
    """Wrap ``data`` with rioxarray's georeferencing of the refined grid and ``tags`` as attributes."""
    import rioxarray  # noqa: F401  (registers the .rio accessor)

    transform = scale_transform(scene.transform, s)
    _, height, width = data.shape
    coords: dict = {"band": list(bands)}
    if transform.b == 0 and transform.d == 0:  # 1-D pixel-centre coordinates need a north-up grid
        coords["x"] = transform.c + transform.a * (np.arange(width) + 0.5)
        coords["y"] = transform.f + transform.e * (np.arange(height) + 0.5)
    descriptions = [scene.descriptions[b - 1] for b in bands]
    attrs = {"long_name": tuple(d or "" for d in descriptions)} if any(descriptions) else {}
    attrs.update(tags)
    out = xr.DataArray(data, dims=("band", "y", "x"), coords=coords, attrs=attrs, name="geosr")
    if scene.gcps:
        gcps, crs = scene.gcps
        return out.rio.write_gcps(scale_gcps(gcps, s), crs)
    out = out.rio.write_transform(transform)
    if scene.crs:
        out = out.rio.write_crs(scene.crs)
    if scene.nodata is not None:
        out = out.rio.write_nodata(scene.nodata, encoded=False)
    return out
