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
contributions in the same order; a network computes each tile in the batch of ``batch_size``
tiles the run computes it in - on a scheduler whose workers pick another default batch size
than this process, give ``batch_size``). With ``config.uncertainty`` a second array of the same
chunks, the predicted error (:mod:`geosr.uncertainty_map`), reads the same tile tasks.
"""

from __future__ import annotations

import collections
import functools
import os
import warnings
from dataclasses import dataclass, replace

import dask.array
import numpy as np
import xarray as xr
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from rasterio.windows import Window

from geosr.cell_render import CellRenderer, cores_in
from geosr.code_identity import code_digest
from geosr.config import RunConfig, parse_caption_every
from geosr.gdal_read_settings import gdal_read_settings
import geosr.tasks as tasks
from geosr.tasks import BatchJob, WorkerCheck, batch_jobs, captioner_for, with_shared_captions
from geosr.georef import scale_gcps, scale_transform
from geosr.models.classical import CLASSICAL_UPSCALERS
from geosr.remote import is_remote, remote_object
from geosr.scene import expand_inputs
from geosr.scene_plan import BandPlan, band_tags, check_one_nodata, plan_scene
from geosr.sentinel2 import is_subdataset
from geosr.sources import SourceFiles
from geosr.tiling import Tile
from geosr.uncertainty_map import NODATA, uncertainty_tags

__all__ = ["UnmarkedHolesWarning", "lazy_upscale"]


class UnmarkedHolesWarning(UserWarning):
    """The lazy result has holes (outside the AOI) that nothing marks: the scene has no nodata."""


#: The temporary copies of the latest lazy results' sources (a DataArray's, a mosaic's VRT), kept
#: beyond their graph objects: ``hr = hr.persist()`` on a distributed client drops the object while its
#: tasks read them. The last :data:`KEPT_SOURCES` results' only - a loop over scenes would fill the
#: disk otherwise; an older one's copy goes with its result, as before.
KEPT_SOURCES = 16
_KEPT: collections.deque[SourceFiles] = collections.deque(maxlen=KEPT_SOURCES)


def lazy_upscale(files: SourceFiles, config: RunConfig) -> xr.DataArray | tuple[xr.DataArray, xr.DataArray]:
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
    xarray.DataArray or (xarray.DataArray, xarray.DataArray)
        ``(band, y, x)`` on the input grid refined ``scale`` times, in the input dtype, with
        rioxarray's transform, CRS (or GCPs) and nodata; ``band`` holds the 1-based input
        band numbers and ``long_name`` their descriptions. The attributes ``GEOSR_MODEL_BANDS``,
        ``GEOSR_BICUBIC_BANDS``, ``GEOSR_RGB_BANDS`` and ``GEOSR_RGB_SOURCE`` say which bands
        went through the model and which were taken as R, G, B, as a written output's tags
        (:func:`geosr.scene_plan.band_tags`). With ``config.uncertainty``, also the ``(y, x)``
        float32 map of its predicted error, nodata NaN, with the map's tags as attributes.
    """
    model = tasks.run_model(config)
    captioner_for(config.captioner)
    paths = expand_inputs(files.paths)
    # a mosaic's or a Sentinel-2 product's VRT lives as long as the sources
    needs_vrt = len(paths) > 1 or is_subdataset(paths[0])
    scene_plan = plan_scene(paths, config, model.channels, files.workdir if needs_vrt else None,
                            tasks.plan_step(model, config))
    check_one_nodata(scene_plan.scene, scene_plan.bands.bands)  # the result has one nodata
    scene, plan, grid, tiles, stretch = (
        scene_plan.scene, scene_plan.bands, scene_plan.grid, list(scene_plan.tiles), scene_plan.stretch
    )
    # the workers that compute the chunks check they run this code and load the files loaded
    # here (a cluster's odd machine refuses its tiles, WorkerMismatchError); the device and
    # precision are theirs to resolve: a graph may be computed on GPU workers from a laptop
    worker = WorkerCheck(code=code_digest(), fingerprint=tasks.model_fingerprint(model, config),
                         captioner_files=tasks.captioner_files_here(config.captioner), gdal_reads=gdal_read_settings())
    if config.aoi and scene.nodata is None and np.dtype(scene.dtype).kind != "f" and len(tiles) < len(grid):
        # a written COG marks them in its mask; a DataArray carries nodata only
        warnings.warn(f"{scene.source}: the pixels outside the AOI are 0 in the result, and nothing marks them "
                      "(the scene has no nodata value): write a COG (upscale_to_file), whose mask does",
                      UnmarkedHolesWarning, stacklevel=3)
    jobs = batch_jobs(scene_plan, tiles, config, worker=worker)
    mode, n = parse_caption_every(config.caption_every)
    if mode != "tile":
        jobs = with_shared_captions(lambda js: [tasks.caption_tiles(j) for j in js], jobs, tiles, mode, n, grid)
    s = config.scale
    # an object's version stands for a file's mtime (geosr.remote)
    version = remote_object(scene.source).version if is_remote(scene.source) else os.path.getmtime(scene.source)
    token = tokenize(scene.source, version, config, stretch, plan)
    tile_name, name, error_name = f"geosr-tile-{token}", f"geosr-upscale-{token}", f"geosr-uncertainty-{token}"
    tile_tasks: dict = {}
    if isinstance(model, CLASSICAL_UPSCALERS):
        # exact at any batch size: one tile per task, so an output chunk waits for its own tiles only
        for j in jobs:
            for t, seed, caption in zip(j.tiles, j.seeds, j.captions):
                one = replace(j, tiles=(t,), seeds=(seed,), captions=(caption,))
                tile_tasks[(tile_name, t.index)] = (functools.partial(_upscale_tile, one, 0),)
    else:
        # a network's pixels depend on the batch a tile is computed in (its kernels round otherwise
        # per batch shape): each tile is taken from the batch ``geosr upscale`` computes it in
        batch_name = f"geosr-batch-{token}"
        for k, j in enumerate(jobs):
            tile_tasks[(batch_name, k)] = (functools.partial(tasks.process_batch, j),)
            for position, t in enumerate(j.tiles):
                tile_tasks[(tile_name, t.index)] = (functools.partial(_tile_of, position), (batch_name, k))
    dsk, error_dsk = dict(tile_tasks), dict(tile_tasks)

    if files.tempdir is not None:
        # copies (a DataArray's, a mosaic's VRT) outlive this graph object: hr.persist() or
        # client.compute(hr) then del hr dropped it while the tasks read them (no such file)
        _KEPT.append(files)
    renderer = _ChunkRenderer(
        files=files, source=scene.source, stretch=stretch, masked=scene.masked, nodata=scene.nodata, scale=s,
        overlap=grid.overlap, blend=config.blend, bands=tuple(plan.bands),
    )
    ys = grid.rows + [scene.height]
    xs = grid.cols + [scene.width]
    for i in range(len(ys) - 1):
        for j in range(len(xs) - 1):
            window = Window(xs[j], ys[i], xs[j + 1] - xs[j], ys[i + 1] - ys[i])
            under = tuple(t for t in tiles if _intersects(t.read, window))
            results = [(tile_name, t.index) for t in under]
            dsk[(name, 0, i, j)] = (functools.partial(renderer, window, under), *results)
            error_dsk[(error_name, i, j)] = (functools.partial(renderer.error, window, under), *results)
    rows, cols = tuple(s * (b - a) for a, b in zip(ys, ys[1:])), tuple(s * (b - a) for a, b in zip(xs, xs[1:]))
    data = dask.array.Array(HighLevelGraph.from_collections(name, dsk, dependencies=()), name,
                            ((len(plan.bands),), rows, cols), dtype=scene.dtype)
    out = _georeferenced(data, scene, plan.bands, s, band_tags(plan))
    if not config.uncertainty:
        return out
    errors = dask.array.Array(HighLevelGraph.from_collections(error_name, error_dsk, dependencies=()), error_name,
                              (rows, cols), dtype=np.float32)
    return out, _error_array(errors, out, plan)


def _upscale_tile(job: BatchJob, position: int) -> np.ndarray:
    return _tile_of(position, tasks.process_batch(job))


def _tile_of(position: int, results: list[tasks.TileResult]) -> np.ndarray:
    return results[position].hr


def _intersects(a: Window, b: Window) -> bool:
    return (
        a.col_off < b.col_off + b.width and b.col_off < a.col_off + a.width
        and a.row_off < b.row_off + b.height and b.row_off < a.row_off + a.height
    )


@dataclass(frozen=True)
class _ChunkRenderer(CellRenderer):
    """A :class:`~geosr.cell_render.CellRenderer` that keeps the input files alive as long as the graph."""

    files: SourceFiles | None = None

    def __call__(self, window: Window, tiles: tuple[Tile, ...], *hrs: np.ndarray) -> np.ndarray:
        """The output values of ``window``; in a float scene without nodata, NaN where a written
        COG's mask marks no data (masked pixels, holes outside the tiles): a DataArray has no mask."""
        values, valid = self.render(window, tiles, hrs)
        if self.nodata is not None or values.dtype.kind != "f":
            return values
        invalid = ~cores_in(window, tiles, self.scale)
        if valid is not None:
            invalid |= ~valid
        if invalid.any():
            values = values.copy()
            values[:, invalid] = np.nan
        return values

    def error(self, window: Window, tiles: tuple[Tile, ...], *hrs: np.ndarray) -> np.ndarray:
        """The predicted error of ``window`` (a dask task of the lazy error map)."""
        return self.render_error(window, tiles, hrs)


def _error_array(errors: dask.array.Array, out: xr.DataArray, plan: BandPlan) -> xr.DataArray:
    """The ``(y, x)`` error map on ``out``'s grid: its coordinates and georeferencing, the map's tags."""
    attrs = uncertainty_tags(out.attrs, None, plan)
    error = xr.DataArray(errors, dims=("y", "x"), coords={k: v for k, v in out.coords.items() if k != "band"},
                         attrs=attrs, name="uncertainty")
    return error.rio.write_nodata(NODATA, encoded=False)


def _radiometric_attrs(scene, bands: tuple[int, ...]) -> dict:
    """The bands' scales, offsets and units as rioxarray's ``open_rasterio`` gives them (one
    ``scale_factor`` / ``add_offset`` where all bands share it, else per-band ``scales`` /
    ``offsets``), which ``rio.to_raster`` writes back: the values are raster values, not decoded.
    Without them a Sentinel-2 result's reflectance scale was lost, and a decoded input's came back
    as raw numbers with nothing saying so."""
    scales = tuple(float(scene.scales[b - 1]) for b in bands)
    offsets = tuple(float(scene.offsets[b - 1]) for b in bands)
    units = tuple(scene.units[b - 1] or "" for b in bands)
    attrs: dict = {}
    if any(v != 1.0 for v in scales) or any(v != 0.0 for v in offsets):
        if len(set(scales)) == 1 and len(set(offsets)) == 1:
            attrs.update(scale_factor=scales[0], add_offset=offsets[0])
        else:
            attrs.update(scales=scales, offsets=offsets)
    if any(units):
        attrs["units"] = units
    return attrs


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
    attrs.update(_radiometric_attrs(scene, bands))
    attrs.update(tags)
    out = xr.DataArray(data, dims=("band", "y", "x"), coords=coords, attrs=attrs, name="geosr")
    if scene.gcps:
        gcps, crs = scene.gcps
        out = out.rio.write_gcps(scale_gcps(gcps, s), crs)
    else:
        out = out.rio.write_transform(transform)
        if scene.crs:
            out = out.rio.write_crs(scene.crs)
    if scene.nodata is not None:  # a GCP scene's too
        out = out.rio.write_nodata(scene.nodata, encoded=False)
    elif np.dtype(scene.dtype).kind == "f":  # no data is NaN there (_ChunkRenderer)
        out = out.rio.write_nodata(np.nan, encoded=False)
    return out
