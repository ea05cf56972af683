"""The scene engine: read -> caption -> upscale -> blend -> write, on dask.

:func:`upscale_scene` plans the tiles of a scene, submits one dask task per batch of
tiles (tasks take a path and windows, never open datasets), and blends the results into
the output as they complete (where tasks run and how many are in flight:
:mod:`geosr.scheduling`). Locally it runs on a threaded ``LocalCluster``; with
``address`` or ``local_workers`` on dask.distributed worker processes, where models live
in a per-process cache. At most a few batches are in flight, and the blender frees each
output cell as soon as it is complete, so memory is bounded by tiles in flight, not by
the scene size.

A run holds the OUTPUT lock (:mod:`geosr.output_lock`), checks everything it can before
the first tile (inputs, dtype, creation options, disk space), works in its own folder and
journals finished cells (:mod:`geosr.journal`), so a run that stops can be resumed
(:mod:`geosr.resumable`). A dask worker that dies is replaced by dask and its tasks
rescheduled; tasks are pure functions of their job, so the pixels do not change.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import signal
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from rasterio.windows import Window
from tqdm.auto import tqdm

import geosr.tasks as tasks
from geosr import stop_requests
from geosr.blending import BlendAccumulator
from geosr.cell_render import CellRenderer, error_pixels, output_pixels
from geosr.code_identity import code_digest
from geosr.config import RunConfig, parse_caption_every
from geosr.creation_options import check_creation_options
from geosr.deferred_free import free_pending_now
from geosr.diskspace import check_free_space, estimate_disk_use
from geosr.errors import InputError, OutputError
from geosr.gdal_read_settings import gdal_read_settings
from geosr.georef import scale_gcps, scale_rpcs
from geosr.journal import CellRecord, RunJournal, WorkFolder
from geosr.models import CLASSICAL, default_batch_size
from geosr.local_paths import resolved
from geosr.output_lock import OutputLocks
from geosr.output_meta import (CAPTIONS_SUFFIX, band_meta, captions_geojson, cog_creation_options, output_profile,
                               output_tags, overview_resampling)
from geosr.radiometry import Stretch
from geosr.reading import read_band_nodata, read_valid
from geosr.resumable import check_inputs_unchanged, files_read, open_journal, run_identity, settle_stopped_run, verify_finished_cells
from geosr.route_map import check_route_map_target, write_route_map
from geosr.routing import MODEL, TileRoute
from geosr.s3_output import is_s3_output, s3_target
from geosr.scene import Scene, expand_inputs, open_raster
from geosr.scene_plan import NothingToUpscaleWarning, check_one_nodata, plan_scene
from geosr.scheduling import bounded_map, dask_client, gpu_resources, released_early
from geosr.tasks import CaptionRunner, ModelFacts, WorkerCheck, batch_jobs, still_needed, caption_jobs, with_known_captions, with_shared_captions
from geosr.tiled_output import BlockWriter, TiledTarget, auto_block_side
from geosr.tiling import block_major, coarsen_window, scale_window
from geosr.uncertainty_map import UncertaintyRaster, check_uncertainty_target, joint_crc, uncertainty_tags
from geosr.warm_up import warm_up_workers
from geosr.worker_writes import run_writing_on_workers, workers_see
from geosr.zarr_output import ZARR_CHUNK, ZarrTarget, ZarrWriter, is_zarr_output
from geosr.writer import (DEFAULT_COG_OPTIONS, OutputTarget, WorkRaster, check_companion_file, remove_files,
                          sidecar_path, stage_beside, write_error)

__all__ = ["RunReport", "upscale_scene", "caption_scene", "batch_jobs", "caption_jobs", "dask_client"]

log = logging.getLogger(__name__)


def _batch_size_on(client, config: RunConfig) -> RunConfig:
    """``config`` with the batch size a scheduler's workers pick for their device when the user
    gave none: this machine picked for its own (1 on a CPU, 4 on CUDA), and a laptop sending a
    run to GPU workers would have them run one tile per call (a GPU client, CPU workers four:
    four times the memory, no faster). Local workers share this machine's device, and a named
    ``--device`` picks the same everywhere."""
    if not config.address or config.batch_size != config.batch_size_picked or config.device is not None or config.model in CLASSICAL:
        return config
    resources = gpu_resources(client, True, config.device)
    picked = client.submit(default_batch_size, config.model, config.device, pure=False, resources=resources).result()
    return config if picked == config.batch_size else replace(config, batch_size=picked)


def _model_facts_on(client, config: RunConfig) -> ModelFacts:
    """:func:`model_facts` where the run's tasks will use the model.

    A threaded cluster shares this process: it loads here, once for all. Worker processes load
    their own copies, starting at once (:mod:`geosr.warm_up`), and one of them describes it; a
    copy loaded here would only compete with theirs for the cores and never run (measured in
    docs/benchmarks.md, "Where warm-up and timings in the code came from").
    """
    if not config.on_worker_processes:
        return tasks.model_facts(config)
    warm_up_workers(client, config)
    resources = gpu_resources(client, config.model not in CLASSICAL, config.device)
    return client.submit(tasks.model_facts, config, pure=False, resources=resources).result()


class OutputNameWarning(UserWarning):
    """A single-COG OUTPUT whose name does not end in .tif or .tiff (e.g. out.jpg)."""


@dataclass
class RunReport:
    """What a run did, for the CLI summary and for benchmarks."""

    output: Path | str  # str: s3://bucket/key
    tiles_total: int
    tiles_processed: int
    tiles_skipped: int
    tiles_resumed: int
    seconds: float
    output_megapixels: float  # the whole output grid (an AOI run keeps it, masked outside the AOI)
    processed_megapixels: float  # output pixels this run computed: its tiles' cores, times scale**2
    peak_pending_bytes: int = 0
    captions: Path | str | None = None  # an object's URL for an output in S3
    result_bytes: int = 0
    tiles_routed: int = 0  # tiles that went to the cheap path (geosr.routing)
    route_map: Path | None = None
    uncertainty: Path | None = None  # the map of the output's predicted error (geosr.uncertainty_map)
    #: seconds from the last tile result to the end of the run: the serial tail a cluster cannot
    #: shorten (the COG pass, or the last blocks / chunks and the captions, then the commit)
    tail_seconds: float = 0.0

    @property
    def megapixels_per_second(self) -> float:
        """Output megapixels computed per second: tiles skipped (AOI, no-data) or resumed do not count."""
        return self.processed_megapixels / self.seconds if self.seconds > 0 else float("nan")


def _paths_read(files: Sequence[str], config: RunConfig) -> list[str]:
    """What a run reads - the inputs, a VRT's sources, their side files and the AOI: none may be
    what it writes (an output or its captions file in their place would replace them)."""
    return files_read(files, remote_side_files=False) + ([config.aoi] if config.aoi else [])


def upscale_scene(
    inputs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    config: RunConfig,
    performance_report: str | None = None,
    route_map: str | os.PathLike | None = None,
    uncertainty: str | os.PathLike | None = None,
) -> RunReport:
    """Super-resolve a scene (or same-grid mosaic) into a COG at ``output``.

    Parameters
    ----------
    inputs : sequence of path-like
        One raster / .vrt, or several same-grid rasters, a directory or a glob.
    output : path-like
        Target GeoTIFF (or a folder / .vrt of tiled output, or a ``.zarr`` store:
        :mod:`geosr.zarr_output`); nothing is written there unless the run succeeds.
    config : RunConfig
        ``config.resume`` continues a stopped run of the same output and settings.
    performance_report : str, optional
        Write a dask performance report (HTML) there.
    route_map : path-like, optional
        Write the routing map there (:func:`geosr.route_map.write_route_map`), with the output.
    uncertainty : path-like, optional
        Write the map of the output's predicted error there (:mod:`geosr.uncertainty_map`),
        with the output; sets ``config.uncertainty``.

    Returns
    -------
    RunReport

    Raises
    ------
    GeosrError
        A narrow subclass per kind of failure (see :mod:`geosr.errors`); a run that stops
        with finished cells keeps them for ``--resume`` and says so in the message.
    """
    t0 = time.perf_counter()
    files = expand_inputs(inputs)
    read = _paths_read(files, config)
    if uncertainty is not None and not config.uncertainty:
        config = replace(config, uncertainty=True)
    elif uncertainty is None and config.uncertainty:
        raise InputError("uncertainty needs the file to write the map to (--uncertainty FILE.tif)")
    if is_s3_output(output):  # a local stand-in, uploaded at the commit
        target = s3_target(output, config.split, overwrite=config.overwrite, inputs=read, sidecars=(CAPTIONS_SUFFIX,),
                           resume=config.resume)
    elif config.split is not None:
        target = TiledTarget(output, overwrite=config.overwrite, inputs=read)
    elif is_zarr_output(output):
        target = ZarrTarget(output, overwrite=config.overwrite, inputs=read)
    else:
        target = OutputTarget(output, overwrite=config.overwrite, inputs=read, sidecars=(CAPTIONS_SUFFIX,))
        if os.path.splitext(str(output))[1].lower() not in (".tif", ".tiff"):
            warnings.warn(f"{output} is written as a GeoTIFF (COG), whatever its name says; name it .tif "
                          "(or .zarr for a Zarr store)", OutputNameWarning, stacklevel=2)
    if uncertainty is not None:
        uncertainty = check_uncertainty_target(uncertainty, config, target, read,
                                               isinstance(target, ZarrTarget), route_map)
    if route_map is not None:
        route_map = check_route_map_target(route_map, config, target, read)
    if performance_report is not None:
        # a stopped run wrote its report (dask writes it on any exit): "the same command with
        # --resume" replaces a dask report, not any other file of that name
        replaceable = config.overwrite or (config.resume and _is_dask_report(performance_report))
        performance_report = str(check_companion_file(performance_report, target, replaceable,
                                                      "performance report", "report.html", read))
        for other, name in ((uncertainty, "uncertainty map"), (route_map, "route map")):
            if other is not None and resolved(performance_report) == resolved(other):
                raise OutputError(f"the performance report {performance_report} is also the run's {name}: "
                                  "give it another file name")
    finishing = StopsDeferred()  # from the output's commit on (see _upscale_in)
    try:
        # the lock first: a second run on this OUTPUT is refused at once, not after its model loads
        # the map files too: two runs of other outputs naming one --uncertainty / --route-map / report
        companions = tuple(Path(p) for p in (uncertainty, route_map, performance_report) if p is not None)
        with OutputLocks((*target.lock_names, *companions)), \
                released_early(config.address, config.local_workers) as (client, release_cluster):
            # Models and captioners first: a bad spec fails before any tile is read.
            config = _batch_size_on(client, config)
            model = _model_facts_on(client, config)
            identity = run_identity(files, config, model.captioner_files)  # the files captions are made with
            if isinstance(target, ZarrTarget):  # absent from other outputs' identities, as before Zarr output existed
                identity["zarr"] = f"format 2, chunks {ZARR_CHUNK}"
            if model.grid_step > 1:  # another tile plan (geosr.tiling); absent at 1, as before there were grid steps
                identity["tile grid step"] = str(model.grid_step)
            if model.fingerprint:  # the networks' files and output consistency: other weights, other pixels
                identity["model fingerprint"] = model.fingerprint
            if model.runs_on:  # --device/--dtype as resolved: their defaults depend on the machine
                identity["model runs on"] = model.runs_on

            journal = open_journal(target.output, identity, config.resume)
            cells = [0]  # known once the tile plan exists; reported when the run stops
            try:
                report = _upscale_in(journal, files, target, config, model, client, release_cluster,
                                     performance_report, route_map, uncertainty, cells, finishing)
            except BaseException as exc:
                replacement = settle_stopped_run(journal, exc, cells[0])
                if replacement is None:
                    raise
                raise replacement from exc
            journal.folder.remove()
            finishing.restore()  # the output is in place and its work folder gone: stops act again
    finally:
        finishing.restore()
    if finishing.came:
        log.warning("%s came after %s was written: the run had finished", " and ".join(finishing.came), output)
    end = time.perf_counter()
    report.seconds = end - t0
    report.tail_seconds = end - report.tail_seconds  # it held the time of the last tile result
    return report


class StopsDeferred:
    """SIGTERM and SIGINT noted, not acted on, once :meth:`start` is called (at the output's commit):
    the output is in place, or going there by renames, and what is left - the last renames,
    deleting the work folder, releasing the lock - must not be cut short. A stop there exited 8
    ("stopped") beside a finished OUTPUT, leaving a work folder without its run.json (or the
    captions without their COG), and a rerun with --resume was refused: OUTPUT exists.

    Only in the main thread (where Python runs signal handlers); :meth:`restore` puts the
    previous handlers back, and ``came`` names the signals that came meanwhile.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.came: list[str] = []
        self._previous: dict = {}

    def start(self) -> None:
        if self._previous or threading.current_thread() is not threading.main_thread():
            return
        for sig in self.SIGNALS:
            previous = signal.getsignal(sig)
            signal.signal(sig, lambda signum, _frame: self.came.append(signal.Signals(signum).name))
            self._previous[sig] = signal.SIG_DFL if previous is None else previous

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def _upscale_in(journal: RunJournal, files, target: OutputTarget | TiledTarget | ZarrTarget, config: RunConfig, model: ModelFacts, client,
                release_cluster: Callable[[], None], performance_report, route_map, uncertainty: Path | None,
                cells: list[int], finishing: StopsDeferred) -> RunReport:
    """The run itself, in the journal's work folder (see :func:`upscale_scene`); ``release_cluster()``
    once the tiles are done (the cluster closes during the COG pass)."""
    folder = journal.folder
    last_tile = [time.perf_counter()]  # when the last tile result came (now: a run with none to do)
    caption_mode, caption_n = parse_caption_every(config.caption_every)
    scene_plan = plan_scene(files, config, model.channels, folder.path, model.grid_step)
    check_one_nodata(scene_plan.scene, scene_plan.bands.bands)  # the output has one nodata
    scene, plan, grid, tiles, skipped = scene_plan.scene, scene_plan.bands, scene_plan.grid, list(scene_plan.tiles), scene_plan.skipped
    s = config.scale
    if not tiles:
        warnings.warn(f"{scene.source}: every pixel is no-data{' or outside the AOI' if config.aoi else ''}: "
                      "the output holds no value", NothingToUpscaleWarning, stacklevel=2)
    profile = output_profile(scene, plan, s)
    if config.split is not None and (not profile.get("crs") or profile.get("transform") is None):
        raise InputError(f"{scene.source}: tiled output (--split) needs a scene with a CRS and a geotransform "
                         "(its blocks and STAC Items are placed by them); write a single COG instead")
    if isinstance(target, ZarrTarget) and (not profile.get("crs") or profile.get("transform") is None):
        raise InputError(f"{scene.source}: Zarr output needs a scene with a CRS and a geotransform "
                         "(its x/y coordinates and spatial_ref come from them); write a single COG instead")
    # skipped tiles (AOI, all no-data) are holes: without nodata they need a mask
    write_mask = (scene.masked or skipped > 0) and scene.nodata is None

    # Everything that can be checked before the first tile is checked here.
    check_creation_options(config.creation_options, len(plan.bands), scene.dtype, write_mask, DEFAULT_COG_OPTIONS,
                           profile.get("nodata"))
    cog_options = cog_creation_options(config)
    map_bytes = profile["width"] * profile["height"] * 4 if uncertainty is not None else 0  # float32, one band
    estimate = estimate_disk_use(
        scene.source, plan.bands, WorkRaster.bytes_needed(profile, write_mask) + map_bytes,
        output_bytes=profile["width"] * profile["height"] * len(plan.bands) * np.dtype(scene.dtype).itemsize + map_bytes,
        options={**DEFAULT_COG_OPTIONS, **cog_options},
    )
    free_pending_now()  # a previous run's work raster, still being freed (geosr.deferred_free)
    check_free_space(target.output.parent, estimate, already_used=folder.size())
    stretch = scene_plan.stretch

    tags = output_tags(scene, config, model, plan, uncertainty)
    raster = WorkRaster(
        folder=folder.path,
        profile=profile,
        write_mask=write_mask,
        band_meta=band_meta(scene, plan),
        tags=tags,
        gcps=(scale_gcps(scene.gcps[0], s), scene.gcps[1]) if scene.gcps else (),
        rpcs=scale_rpcs(scene.rpcs, s) if scene.rpcs is not None else None,
    )
    errors = None
    if uncertainty is not None:
        errors = UncertaintyRaster.for_output(raster, uncertainty_tags(tags, target.output.name, plan),
                                              f"predicted RMSE of {target.output.name} (DN)")

    def sync() -> None:  # what the journal's commits make durable: the cells of both rasters
        raster.sync()
        if errors is not None:
            errors.sync()

    verify_finished_cells(journal, raster, errors)
    captions: dict[int, str] = dict(journal.captions)
    routes: dict[int, TileRoute] = dict(journal.routes)
    try:
        with open_raster(scene.source) as src:
            writer = _CellWriter(raster, src, stretch, scene, s, journal, errors, tuple(plan.bands))
            acc = BlendAccumulator(  # the tiles' error variance, when they have it, blends as a band
                tiles, scene.width, scene.height, grid.overlap, s, len(plan.bands) + config.uncertainty, writer.write,
                config.blend, finished=journal.cells,
            )
            cells[0] = acc.cells
            for window in acc.uncovered():  # before the blocks over them can be written
                writer.write_empty(window)
            blocks = None
            if config.split is not None:
                side = config.split or auto_block_side(raster.width, raster.height, cog_options)
                blocks = BlockWriter(client, raster, journal, side, target.staging(folder.path)[0],
                                     [scale_window(w, s) for w, _ in acc.open_cells()], cog_options)
            elif isinstance(target, ZarrTarget):
                blocks = ZarrWriter(client, raster, journal, target.staging(folder.path)[0],
                                    [scale_window(w, s) for w, _ in acc.open_cells()], overview_resampling(config))
            if blocks is not None:
                # The VRT and STAC (Zarr: the consolidated metadata) need no pixels: written before
                # the tiles, not in the run's serial tail, where this Python competed with the last
                # block's GDAL pass for the cores (64 STAC Items: 0.11 s of a 0.23 s tail).
                captions_path, (_, tmp_vrt, tmp_captions) = target.captions, target.staging(folder.path)
                blocks.write_index(tmp_vrt, datetime.datetime.now(datetime.timezone.utc))  # WriteError: exit 6
            # blocks written as the run goes, not a row of them after it
            order = block_major(tiles, max(1, blocks.side // s)) if blocks is not None else tiles
            todo = [t for t in order if acc.needs(t)]
            # every worker checks it runs the code, device and files the identity records (a
            # cluster's odd machine would write other pixels into an output that exits 0)
            worker = WorkerCheck(code_digest(), model.runs_on, model.fingerprint, model.captioner_files,
                                 gdal_read_settings())
            # a resumed run computes each tile in the batch an uninterrupted run computes it in
            jobs = still_needed(batch_jobs(scene_plan, order, config, worker=worker,
                                           single_last=config.batch_size if blocks is not None else 0), acc.needs)
            if caption_mode != "tile":
                jobs = with_shared_captions(_captions_on(client), jobs, tiles, caption_mode, caption_n, grid,
                                            known=journal.captions)
            jobs = with_known_captions(jobs, journal.captions)  # a redone tile: its kept cells' caption
            # the tasks of a network ask for a GPU where workers declare one
            resources = gpu_resources(client, model.neural, config.device)
            # the error map is blended and written here (worker cell tasks write the output only)
            if config.on_worker_processes and errors is None and workers_see(client, folder.path):
                # worker processes blend and write their cells: the tiles never come here
                renderer = CellRenderer(
                    source=scene.source, stretch=stretch, masked=scene.masked, nodata=scene.nodata, scale=s,
                    overlap=grid.overlap, blend=config.blend, bands=tuple(plan.bands),
                )
                peak, received = _run_jobs_on_workers(client, jobs, todo, acc, renderer, resources, captions, routes,
                                                      config, performance_report, journal, raster, last_tile)
            else:
                peak, received = _run_jobs(client, jobs, todo, acc, resources, captions, routes, config,
                                           performance_report, journal, writer, sync, last_tile)
        journal.commit(sync)
        if blocks is not None:
            # the captions need every tile's: written while the cluster makes the last blocks
            _write_captions(tmp_captions, captions_geojson(scene, tiles, captions, routes))
            blocks.wait()  # the last blocks' COGs (or Zarr chunks), on the cluster
        release_cluster()
        cog = folder / "out.tif"
        if blocks is None:
            raster.to_cog(cog, cog_options)
        if errors is not None:
            errors.to_cog(folder / "uncertainty.tif")
    except BaseException:
        # Whatever stopped the run, the cells finished so far are worth keeping (and the blocks
        # journalled so far; no new block is started).
        journal.on_commit.clear()
        with contextlib.suppress(Exception):
            journal.commit(sync)
        raise
    finally:
        raster.close()
        if errors is not None:
            errors.close()
    if blocks is None:
        captions_path = sidecar_path(target.output, CAPTIONS_SUFFIX)
        tmp_captions = folder / "captions.geojson"
        # a disk that took the COG may not take its captions
        _write_captions(tmp_captions, captions_geojson(scene, tiles, captions, routes))
    moves = {cog: target.output, tmp_captions: captions_path} if blocks is None else {}
    if errors is not None:
        moves[folder / "uncertainty.tif"] = uncertainty
    if route_map is not None:
        moves[write_route_map(folder / "route_map.tif", scene, grid, tiles, routes,
                                 config.routed_threshold)] = Path(route_map).absolute()
    stop_requests.raise_if_noted()  # the last point a stop is acted on: none may be lost
    check_inputs_unchanged(journal, files)  # read from start to end as they were
    moves, copies = stage_beside(moves)  # a map on another filesystem than OUTPUT: copied beside its place
    uploads = getattr(target, "url", None) is not None  # an S3 commit uploads: it may take long, and stop
    if not uploads:  # renames only: a stop between them left half an output
        finishing.start()
    try:
        if blocks is None:
            target.commit(moves)
        else:
            target.commit(folder.path, moves)
    except BaseException:
        remove_files(copies)
        finishing.restore()  # a failed commit is a failed run: stops act again while it settles
        raise
    finishing.start()
    return RunReport(
        output=getattr(target, "url", target.output),  # an object's URL, not its local stand-in
        tiles_total=len(grid),
        tiles_processed=len(todo),
        tiles_skipped=skipped,
        tiles_resumed=len(tiles) - len(todo),
        seconds=0.0,
        output_megapixels=scene.width * scene.height * s * s / 1e6,
        processed_megapixels=sum(int(t.core.width * t.core.height) for t in todo) * s * s / 1e6,
        peak_pending_bytes=peak,
        captions=target.url_of(captions_path) if hasattr(target, "url_of") else captions_path,
        result_bytes=received,
        tiles_routed=sum(r.path != MODEL for r in routes.values()),
        route_map=Path(route_map).absolute() if route_map is not None else None,
        uncertainty=uncertainty,
        tail_seconds=last_tile[0],  # upscale_scene makes it the seconds since
    )


def _write_captions(path: Path, feature_collection: dict) -> None:
    """Write a run's captions GeoJSON (staged); a failed write is a one-line WriteError (exit 6)."""
    try:
        path.write_text(json.dumps(feature_collection))
    except OSError as exc:
        raise write_error(path, exc) from exc


def caption_scene(
    inputs: Sequence[str | os.PathLike],
    output: str | os.PathLike | None,
    config: RunConfig,
) -> dict:
    """Caption every tile of a scene (or one per window/scene) into a GeoJSON file.

    Uses the same tile plan, bands, stretch and AOI as :func:`upscale_scene` with
    ``config``, so the captions are those an upscale run would use. Returns the
    FeatureCollection written to ``output`` (only returned when ``output`` is None).
    """
    files = expand_inputs(inputs)
    read = _paths_read(files, config)
    target = OutputTarget(output, overwrite=config.overwrite, inputs=read) if output is not None else None
    tasks.captioner_for(config.captioner)
    if target is None:
        with tempfile.TemporaryDirectory(prefix="geosr-") as tmp:  # a mosaic's VRT
            return _caption_features(files, config, Path(tmp))
    with OutputLocks(target.lock_names):
        folder = WorkFolder.create(target.output)
        try:
            fc = _caption_features(files, config, folder.path)
            tmp = folder / "captions.geojson"
            tmp.write_text(json.dumps(fc, indent=1))
            target.commit({tmp: target.output})
        finally:
            folder.remove()
    return fc


def _caption_features(files: Sequence[str], config: RunConfig, workdir: Path) -> dict:
    """The captions FeatureCollection of :func:`caption_scene`."""
    mode, n = parse_caption_every(config.caption_every)
    # Captioners look at RGB: plan bands as for a 3-channel model.
    scene_plan = plan_scene(files, config, 3, workdir)
    tiles = list(scene_plan.tiles)
    jobs = batch_jobs(scene_plan, tiles, config)
    with dask_client(config.address, config.local_workers) as client:
        captions = caption_jobs(_captions_on(client), jobs, tiles, mode, n, scene_plan.grid)
    return captions_geojson(scene_plan.scene, tiles, captions)


def _captions_on(client) -> CaptionRunner:
    """Caption jobs as tasks of a dask.distributed client, in parallel."""
    return lambda jobs: client.gather([client.submit(tasks.caption_tiles, j, pure=False) for j in jobs])


def _run_jobs(client, jobs, tiles, acc: BlendAccumulator, resources: dict | None, captions: dict, routes: dict,
              config: RunConfig, performance_report, journal: RunJournal, writer: _CellWriter,
              sync: Callable[[], None], last_tile: list[float]) -> tuple[int, int]:
    """Run the jobs (a bounded window in flight, :func:`geosr.scheduling.bounded_map`), blend
    results here as they complete, write the cells each batch finishes, and commit finished cells
    to the journal every few seconds (``sync`` makes the written cells durable first).
    ``last_tile[0]`` is set to the time each result comes.

    Returns the peak of bytes pending in the blender and the bytes of results received.
    """
    by_index = {t.index: t for t in tiles}
    peak = received = 0
    with _progress(tiles, config, performance_report, last_tile) as progress:
        for results in bounded_map(client, tasks.process_batch, jobs, resources):
            for r in results:
                # The caption and route go in the journal before any cell this tile finishes.
                journal.record(captions={r.index: r.caption}, routes={r.index: r.route} if r.route else None)
                acc.add(by_index[r.index], r.hr)
                captions[r.index] = r.caption
                if r.route:
                    routes[r.index] = r.route
                received += r.hr.nbytes + len(r.caption)
            writer.flush()
            if journal.commit_due():
                journal.commit(sync)
            peak = max(peak, acc.pending_bytes)
            progress([r.index for r in results])
    if not acc.done:
        raise RuntimeError("internal error: some output cells were never completed")
    return peak, received


def _run_jobs_on_workers(client, jobs, tiles, acc: BlendAccumulator, renderer: CellRenderer, resources: dict | None,
                         captions: dict, routes: dict, config: RunConfig, performance_report, journal: RunJournal,
                         raster: WorkRaster, last_tile: list[float]) -> tuple[int, int]:
    """Run the jobs with workers blending and writing (:mod:`geosr.worker_writes`); ``last_tile``
    as in :func:`_run_jobs`.

    Returns 0 pending bytes (nothing is blended here) and the bytes of results received.
    """
    with _progress(tiles, config, performance_report, last_tile) as progress:
        received = run_writing_on_workers(client, jobs, acc, renderer, raster, journal, captions, routes, resources,
                                          progress)
    return 0, received


def _is_dask_report(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file dask's ``performance_report`` wrote (its HTML title says so)."""
    try:
        with open(path, "rb") as f:
            return b"<title>Dask Performance Report</title>" in f.read(1 << 16)
    except OSError:
        return False


@contextlib.contextmanager
def _progress(tiles, config: RunConfig, performance_report, last_tile: list[float]):
    """The progress bar (tiles, output MP/s) and the dask performance report of a run.

    Yields ``progress(tile_indices)``, to call as tiles are done; it sets ``last_tile[0]`` to the time.
    """
    import distributed

    px = {t.index: int(t.core.width * t.core.height) * config.scale**2 for t in tiles}
    report = distributed.performance_report(filename=performance_report) if performance_report else contextlib.nullcontext()
    bar = tqdm(total=len(tiles), unit="tile", disable=not config.progress, desc="upscale", dynamic_ncols=True)
    start = time.perf_counter()
    done = [0]

    def progress(indices) -> None:
        stop_requests.raise_if_noted()  # a stop raised where Python dropped it (geosr.stop_requests)
        last_tile[0] = time.perf_counter()
        done[0] += sum(px[i] for i in indices)
        bar.update(len(indices))
        bar.set_postfix(MPps=f"{done[0] / 1e6 / max(time.perf_counter() - start, 1e-9):.2f}")

    with report, bar:
        yield progress


class _CellWriter:
    """Turns blended cells into output pixels (inverse stretch, mask, nodata) and writes them.

    :meth:`write` (the blender's ``emit``) queues a cell; :meth:`flush` writes the queue, cells
    side by side as one run (:meth:`WorkRaster.write_cells`), and names the cells in the journal.
    With an error map (``errors``) a cell's last band is its error variance: its square root goes
    to the map's cell, and the journal's checksum covers both.
    """

    def __init__(self, raster: WorkRaster, src, stretch: Stretch, scene: Scene, scale: int, journal: RunJournal,
                 errors: UncertaintyRaster | None = None, bands: tuple[int, ...] = ()) -> None:
        self.raster, self.src, self.stretch, self.scene, self.scale = raster, src, stretch, scene, scale
        self.journal, self.errors, self.bands = journal, errors, bands
        self._queue: list[tuple[Window, np.ndarray, np.ndarray | None]] = []
        self._error_queue: list[tuple[Window, np.ndarray, None]] = []

    def write(self, window: Window, data: np.ndarray) -> None:
        lr_valid = band_nodata = None
        if self.scene.masked:
            lr_window = coarsen_window(window, self.scale)
            lr_valid = read_valid(self.src, lr_window, True, self.bands)
            band_nodata = read_band_nodata(self.src, lr_window, self.bands, self.scene.nodata)
        bands = len(self.stretch.low)
        values, valid = output_pixels(data[:bands], self.stretch, lr_valid, band_nodata, self.scale, self.scene.nodata)
        self._queue.append((window, values, valid))
        if self.errors is not None:
            self._error_queue.append((window, error_pixels(data[bands], valid, band_nodata, self.scale)[None], None))

    def flush(self) -> None:
        """Write the queued cells and record them in the journal."""
        crcs = self.raster.write_cells(self._queue)
        if self.errors is not None:
            crcs = [joint_crc(c, e) for c, e in zip(crcs, self.errors.write_cells(self._error_queue))]
        for (window, _, _), crc in zip(self._queue, crcs):
            self.journal.record(cell=CellRecord(int(window.col_off), int(window.row_off),
                                                int(window.width), int(window.height), crc))
        self._queue, self._error_queue = [], []

    def write_empty(self, window: Window) -> None:
        fill = self.scene.nodata if self.scene.nodata is not None else 0
        shape = (len(self.stretch.low), int(window.height), int(window.width))
        values = np.full(shape, fill, dtype=self.stretch.dtype)
        self.raster.write(window, values, np.zeros(shape[1:], bool))
        if self.errors is not None:
            self.errors.write_holes(window)
