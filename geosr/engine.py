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
import functools
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import rasterio
import torch
from rasterio.enums import ColorInterp
from rasterio.windows import Window
from tqdm.auto import tqdm

import geosr
from geosr.blending import BlendAccumulator
from geosr.captioning import Captioner, FixedCaptioner, load_captioner
from geosr.captioning.cache import CachingCaptioner
from geosr.cell_render import CellRenderer, output_pixels
from geosr.config import RunConfig, parse_caption_every
from geosr.creation_options import check_creation_options
from geosr.diskspace import check_free_space, estimate_disk_use
from geosr.errors import GeosrError
from geosr.georef import scale_gcps, scale_rpcs, scale_transform
from geosr.journal import CellRecord, RunJournal, WorkFolder
from geosr.models import CLASSICAL, Upscaler, load_upscaler
from geosr.models.classical import CLASSICAL_UPSCALERS, BicubicUpscaler
from geosr.output_lock import OutputLock
from geosr.radiometry import Stretch
from geosr.reading import read_tile, read_valid
from geosr.route_map import check_route_map_target, write_route_map
from geosr.routing import BICUBIC, MODEL, TileRoute, route_tiles
from geosr.resumable import open_journal, run_identity, settle_stopped_run, verify_finished_cells
from geosr.scene import Scene, expand_inputs, open_raster
from geosr.scene_plan import BandPlan, ScenePlan, plan_scene, tile_seed
from geosr.scheduling import bounded_map, dask_client, gpu_resources, released_early, undo_malloc_trim_threshold
from geosr.tiling import Tile, TileGrid
from geosr.aoi import window_polygon
from geosr.warm_up import warm_up_workers
from geosr.writer import DEFAULT_COG_OPTIONS, OutputTarget, WorkRaster, sidecar_path

__all__ = ["RunReport", "upscale_scene", "caption_scene", "batch_jobs", "caption_jobs", "dask_client"]

CAPTIONS_SUFFIX = ".captions.geojson"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchJob:
    """Everything a worker needs to process a batch of tiles (small and picklable)."""

    source: str
    tiles: tuple[Tile, ...]
    bands: BandPlan
    stretch: Stretch
    masked: bool
    model: str
    scale: int
    model_options: tuple[tuple[str, object], ...]
    seeds: tuple[int, ...]
    captions: tuple[str | None, ...]
    captioner: str
    route_threshold: float | None = None  # None: every tile to the model (geosr.routing)
    route_to: str = BICUBIC  # where routed tiles go: bicubic or a fast network's spec


@dataclass
class TileResult:
    index: int
    hr: np.ndarray
    caption: str
    route: TileRoute | None = None  # None: not routed (every tile went to the model)

    def __sizeof__(self) -> int:
        # dask sizes a task's result with sys.getsizeof: without the HR array a result looks
        # like 100 bytes, and dask neither counts its memory nor keeps work where it is
        return object.__sizeof__(self) + self.hr.nbytes + len(self.caption)


@functools.lru_cache(maxsize=8)
def _captioner(spec: str) -> Captioner:
    # One captioner per worker process and spec (an MLLM loads once), remembering the
    # captions of tiles it has seen (re-runs, repeated content, window/scene sharing).
    # A fixed caption does not look at the pixels: hashing them would only cost time.
    captioner = load_captioner(spec)
    return captioner if isinstance(captioner, FixedCaptioner) else CachingCaptioner(captioner)


def _model(job: BatchJob) -> Upscaler:
    return load_upscaler(job.model, job.scale, **dict(job.model_options))


def cheap_path_model(spec: str, scale: int, model_options: dict) -> Upscaler:
    """Routing's cheap path ``spec`` on the run's device and precision (``model_options``' device
    and dtype; a classical one takes none)."""
    options = {k: v for k, v in model_options.items() if k in ("device", "dtype")}
    return load_upscaler(spec, scale, **({} if spec in CLASSICAL else options))


def _cheap_model_for(job: BatchJob, routes: Sequence[TileRoute | None]) -> Upscaler | None:
    """The cheap path of ``job``'s routed tiles; None (and not loaded) when no tile of it is routed there."""
    if not any(r is not None and r.path != MODEL for r in routes):
        return None
    return cheap_path_model(job.route_to, job.scale, dict(job.model_options))


def _read_batch(job: BatchJob) -> np.ndarray:
    return _read_batch_and_valid(job)[0]


def _read_batch_and_valid(job: BatchJob) -> tuple[np.ndarray, np.ndarray]:
    """The tiles ``[B, C, H, W]`` and their validity ``[B, H, W]`` (the reflect-padded halo is invalid)."""
    with open_raster(job.source) as ds:
        read = [read_tile(ds, t, job.bands.bands, job.stretch, job.masked) for t in job.tiles]
    valid = [np.pad(v, ((t.pad[0], t.pad[1]), (t.pad[2], t.pad[3]))) for t, (_, v) in zip(job.tiles, read)]
    return np.stack([d for d, _ in read]), np.stack(valid)


def _model_input(batch: np.ndarray, plan: BandPlan) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(batch[:, list(plan.model)]))


def _caption(spec: str, x: torch.Tensor, plan: BandPlan) -> list[str]:
    """Caption model-input tiles: clipped to [0, 1], a single band shown as grey RGB."""
    captioner = _captioner(spec)
    if isinstance(captioner, FixedCaptioner):
        return captioner.caption(x)  # the same text for every tile: no copy of the pixels
    x = x.clamp(0, 1)
    if plan.replicate:
        x = x[:, :1].expand(-1, 3, -1, -1)
    return list(captioner.caption(x))


def _shippable_errors(task):
    """Let geosr's errors leave a dask task whole.

    dask pickles a task's exception with its chain (``__cause__``/``__context__``); GDAL's
    errors in that chain do not unpickle, and dask then hands the client a bare
    ``Exception("ReadError(...)")``. The message already holds GDAL's cause.
    """

    @functools.wraps(task)
    def run(*args):
        try:
            return task(*args)
        except GeosrError as exc:
            exc.__cause__ = exc.__context__ = None
            raise

    return run


@_shippable_errors
def caption_tiles(job: BatchJob) -> list[str]:
    """Caption the tiles of ``job`` (runs on a worker)."""
    return _caption(job.captioner, _model_input(_read_batch(job), job.bands), job.bands)


@_shippable_errors
def process_batch(job: BatchJob) -> list[TileResult]:
    """Read, route, caption (when not given) and upscale a batch of tiles (runs on a worker).

    With routing (``job.route_threshold``), tiles routed to the cheap path are neither captioned
    (their caption is empty) nor given to the model; the others go to the model as one batch.
    """
    undo_malloc_trim_threshold()
    batch, valid = _read_batch_and_valid(job)
    plan = job.bands
    x = _model_input(batch, plan)
    routes = batch_routes(job, x, valid)
    # a routed tile is not captioned (a shared caption given for its window is kept)
    captions = ["" if (c is None and r is not None and r.path != MODEL) else c for c, r in zip(job.captions, routes)]
    missing = [i for i, c in enumerate(captions) if c is None]
    if missing:
        for i, text in zip(missing, _caption(job.captioner, x[missing], plan)):
            captions[i] = text
    out = upscale_routed(_model(job), _cheap_model_for(job, routes), batch, x, plan, captions, job.seeds, job.scale,
                         routes)
    return [TileResult(t.index, out[i], captions[i], routes[i]) for i, t in enumerate(job.tiles)]


def batch_routes(job: BatchJob, x: torch.Tensor, valid: np.ndarray) -> list[TileRoute | None]:
    """Each tile's route (:mod:`geosr.routing`), or None for every tile of a job that does not route.

    Only the valid pixels of each tile's core are measured: the halo belongs to the
    neighbours too, and texture there would keep a flat tile beside a textured one on the model.
    """
    if job.route_threshold is None:
        return [None] * len(job.tiles)
    in_core = np.zeros_like(valid)
    for i, t in enumerate(job.tiles):
        top, left = ((n - int(c)) // 2 for n, c in zip(t.shape, (t.core.height, t.core.width)))
        in_core[i, top : top + int(t.core.height), left : left + int(t.core.width)] = True
    return list(route_tiles(x, job.route_threshold, torch.from_numpy(valid & in_core), cheap=job.route_to))


def upscale_routed(model: Upscaler, cheap_model: Upscaler | None, batch: np.ndarray, x: torch.Tensor,
                   plan: BandPlan, captions: Sequence[str], seeds: Sequence[int], s: int,
                   routes: Sequence[TileRoute | None]) -> np.ndarray:
    """:func:`upscale_batch`, with the tiles routed to the cheap path upscaled by ``cheap_model`` instead
    (which may be None when no tile is routed)."""
    cheap = [i for i, r in enumerate(routes) if r is not None and r.path != MODEL]
    if not cheap:
        return upscale_batch(model, batch, x, plan, captions, seeds, s)
    on_model = [i for i in range(len(routes)) if i not in cheap]
    out = np.empty((len(routes), len(plan.bands), *(n * s for n in batch.shape[-2:])), np.float32)
    for subset, upscaler in ((on_model, model), (cheap, cheap_model)):
        if subset:
            out[subset] = upscale_batch(upscaler, batch[subset], x[subset], plan, [captions[i] for i in subset],
                                        [seeds[i] for i in subset], s)
    return out


def upscale_batch(model: Upscaler, batch: np.ndarray, x: torch.Tensor, plan: BandPlan, captions: Sequence[str],
                  seeds: Sequence[int], s: int) -> np.ndarray:
    """The model's part of a batch: ``[B, bands, h*s, w*s]`` from the read batch and its model input."""
    b, _, h, w = batch.shape
    out = np.empty((b, len(plan.bands), h * s, w * s), np.float32)
    if plan.replicate:
        for k, pos in enumerate(plan.model):
            xi = x[:, k : k + 1].expand(-1, plan.replicate, -1, -1).contiguous()
            out[:, pos] = model.upscale(xi, captions, seeds).mean(dim=1).numpy()
    else:
        out[:, list(plan.model)] = model.upscale(x, captions, seeds).numpy()
    if plan.extra:
        xe = torch.from_numpy(np.ascontiguousarray(batch[:, list(plan.extra)]))
        out[:, list(plan.extra)] = BicubicUpscaler(s).upscale(xe).numpy()
    return out


@dataclass(frozen=True)
class ModelFacts:
    """What the client needs of a run's model: the name it is tagged with, its input channels
    (None: any), and whether it is a network (its tasks then ask for a GPU where there is one)."""

    name: str
    channels: int | None
    neural: bool


@_shippable_errors
def model_facts(config: RunConfig) -> ModelFacts:
    """Load ``config``'s model and captioner (cached per process) and describe the model."""
    model = load_upscaler(config.model, config.scale, **config.model_options())
    _captioner(config.captioner)
    return ModelFacts(getattr(model, "name", config.model), model.channels,
                      not isinstance(model, CLASSICAL_UPSCALERS))


def _model_facts_on(client, config: RunConfig) -> ModelFacts:
    """:func:`model_facts` where the run's tasks will use the model.

    A threaded cluster shares this process: it loads here, once for all. Worker processes load
    their own copies, starting at once (:mod:`geosr.warm_up`), and one of them describes it; a
    copy loaded here would only compete with theirs for the cores (x4 on two local workers:
    13 s instead of 5 s on a 2-core machine) and never run.
    """
    if not config.on_worker_processes:
        return model_facts(config)
    warm_up_workers(client, config)
    resources = gpu_resources(client, config.model not in CLASSICAL, config.device)
    return client.submit(model_facts, config, pure=False, resources=resources).result()


@dataclass
class RunReport:
    """What a run did, for the CLI summary and for benchmarks."""

    output: Path
    tiles_total: int
    tiles_processed: int
    tiles_skipped: int
    tiles_resumed: int
    seconds: float
    output_megapixels: float
    peak_pending_bytes: int = 0
    captions: Path | None = None
    result_bytes: int = 0
    tiles_routed: int = 0  # tiles that went to the cheap path (geosr.routing)
    route_map: Path | None = None

    @property
    def megapixels_per_second(self) -> float:
        return self.output_megapixels / self.seconds if self.seconds > 0 else float("nan")


def upscale_scene(
    inputs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    config: RunConfig,
    performance_report: str | None = None,
    route_map: str | os.PathLike | None = None,
) -> RunReport:
    """Super-resolve a scene (or same-grid mosaic) into a COG at ``output``.

    Parameters
    ----------
    inputs : sequence of path-like
        One raster / .vrt, or several same-grid rasters, a directory or a glob.
    output : path-like
        Target GeoTIFF; nothing is written there unless the run succeeds.
    config : RunConfig
        ``config.resume`` continues a stopped run of the same output and settings.
    performance_report : str, optional
        Write a dask performance report (HTML) there.
    route_map : path-like, optional
        Write the routing map there (:func:`geosr.route_map.write_route_map`), with the output.

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
    target = OutputTarget(output, overwrite=config.overwrite, inputs=files, sidecars=(CAPTIONS_SUFFIX,))
    if route_map is not None:
        check_route_map_target(route_map, config, target.output)
    with released_early(config.address, config.local_workers) as (client, release_cluster):
        # Models and captioners first: a bad spec fails before any tile is read.
        model = _model_facts_on(client, config)
        identity = run_identity(files, config)

        with OutputLock(target.output):
            journal = open_journal(target.output, identity, config.resume)
            cells = [0]  # known once the tile plan exists; reported when the run stops
            try:
                report = _upscale_in(journal, files, target, config, model, client, release_cluster,
                                     performance_report, route_map, cells)
            except BaseException as exc:
                replacement = settle_stopped_run(journal, exc, cells[0])
                if replacement is None:
                    raise
                raise replacement from exc
            journal.folder.remove()
    report.seconds = time.perf_counter() - t0
    return report


def _upscale_in(journal: RunJournal, files, target: OutputTarget, config: RunConfig, model: ModelFacts, client,
                release_cluster: Callable[[], None], performance_report, route_map, cells: list[int]) -> RunReport:
    """The run itself, in the journal's work folder (see :func:`upscale_scene`); ``release_cluster()``
    once the tiles are done (the cluster closes during the COG pass)."""
    folder = journal.folder
    caption_mode, caption_n = parse_caption_every(config.caption_every)
    scene_plan = plan_scene(files, config, model.channels, folder.path)
    scene, plan, grid, tiles, skipped = scene_plan.scene, scene_plan.bands, scene_plan.grid, list(scene_plan.tiles), scene_plan.skipped
    s = config.scale
    profile = _output_profile(scene, plan, s)
    # skipped tiles (AOI, all no-data) are holes: without nodata they need a mask
    write_mask = (scene.masked or skipped > 0) and scene.nodata is None

    # Everything that can be checked before the first tile is checked here.
    check_creation_options(config.creation_options, len(plan.bands), scene.dtype, write_mask, DEFAULT_COG_OPTIONS)
    estimate = estimate_disk_use(
        scene.source, plan.bands, WorkRaster.bytes_needed(profile, write_mask),
        output_bytes=profile["width"] * profile["height"] * len(plan.bands) * np.dtype(scene.dtype).itemsize,
        options={**DEFAULT_COG_OPTIONS, **config.creation_options},
    )
    check_free_space(target.output.parent, estimate, already_used=folder.size())
    stretch = scene_plan.stretch

    raster = WorkRaster(
        folder=folder.path,
        profile=profile,
        write_mask=write_mask,
        band_meta=_band_meta(scene, plan),
        tags=_output_tags(scene, config, model),
        gcps=(scale_gcps(scene.gcps[0], s), scene.gcps[1]) if scene.gcps else (),
        rpcs=scale_rpcs(scene.rpcs, s) if scene.rpcs is not None else None,
    )
    verify_finished_cells(journal, raster)
    captions: dict[int, str] = dict(journal.captions)
    routes: dict[int, TileRoute] = dict(journal.routes)
    try:
        with open_raster(scene.source) as src:
            writer = _CellWriter(raster, src, stretch, scene, s, journal)
            acc = BlendAccumulator(
                tiles, scene.width, scene.height, grid.overlap, s, len(plan.bands), writer.write, config.blend,
                finished=journal.cells,
            )
            cells[0] = acc.cells
            todo = [t for t in tiles if acc.needs(t)]
            jobs = batch_jobs(scene_plan, todo, config)
            if caption_mode != "tile":
                jobs = with_shared_captions(_captions_on(client), jobs, tiles, caption_mode, caption_n, grid)
            # the tasks of a network ask for a GPU where workers declare one
            resources = gpu_resources(client, model.neural, config.device)
            if config.on_worker_processes and _workers_see(client, folder.path):
                # worker processes blend and write their cells: the tiles never come here
                renderer = CellRenderer(
                    source=scene.source, stretch=stretch, masked=scene.masked, nodata=scene.nodata, scale=s,
                    overlap=grid.overlap, blend=config.blend,
                )
                peak, received = _run_jobs_on_workers(client, jobs, todo, acc, renderer, resources, captions, routes,
                                                      config, performance_report, journal, raster)
            else:
                peak, received = _run_jobs(client, jobs, todo, acc, resources, captions, routes, config,
                                           performance_report, journal, writer)
            for window in acc.uncovered():
                writer.write_empty(window)
        journal.commit(raster.sync)
        release_cluster()
        cog = folder / "out.tif"
        raster.to_cog(cog, config.creation_options)
    except BaseException:
        # Whatever stopped the run, the cells finished so far are worth keeping.
        with contextlib.suppress(Exception):
            journal.commit(raster.sync)
        raise
    finally:
        raster.close()
    captions_path = sidecar_path(target.output, CAPTIONS_SUFFIX)
    tmp_captions = folder / "captions.geojson"
    tmp_captions.write_text(json.dumps(_captions_geojson(scene, tiles, captions, routes)))
    moves = {cog: target.output, tmp_captions: captions_path}
    if route_map is not None:
        moves[write_route_map(folder / "route_map.tif", scene, grid, tiles, routes,
                                 config.routed_threshold)] = Path(route_map).absolute()
    target.commit(moves)
    return RunReport(
        output=target.output,
        tiles_total=len(grid),
        tiles_processed=len(todo),
        tiles_skipped=skipped,
        tiles_resumed=len(tiles) - len(todo),
        seconds=0.0,
        output_megapixels=scene.width * scene.height * s * s / 1e6,
        peak_pending_bytes=peak,
        captions=captions_path,
        result_bytes=received,
        tiles_routed=sum(r.path != MODEL for r in routes.values()),
        route_map=Path(route_map).absolute() if route_map is not None else None,
    )


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
    target = OutputTarget(output, overwrite=config.overwrite, inputs=files) if output is not None else None
    _captioner(config.captioner)
    if target is None:
        with tempfile.TemporaryDirectory(prefix="geosr-") as tmp:  # a mosaic's VRT
            return _caption_features(files, config, Path(tmp))
    with OutputLock(target.output):
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
    return _captions_geojson(scene_plan.scene, tiles, captions)


def batch_jobs(scene_plan: ScenePlan, tiles: Sequence[Tile], config: RunConfig) -> list[BatchJob]:
    """Jobs of ``config.batch_size`` tiles of ``scene_plan`` each, with their seeds."""
    scene, stretch = scene_plan.scene, scene_plan.stretch
    opts = tuple(sorted(config.model_options().items()))
    threshold, route_to = config.routed_threshold, config.route_to  # once: they look for shipped models
    jobs = []
    for i in range(0, len(tiles), config.batch_size):
        chunk = tuple(tiles[i : i + config.batch_size])
        jobs.append(
            BatchJob(
                source=scene.source, tiles=chunk, bands=scene_plan.bands, stretch=stretch, masked=scene.masked,
                model=config.model, scale=config.scale, model_options=opts,
                seeds=tuple(tile_seed(config.seed, scene_plan.key, t) for t in chunk),
                captions=(None,) * len(chunk), captioner=config.captioner,
                route_threshold=threshold, route_to=route_to,
            )
        )
    return jobs


CaptionRunner = Callable[[Sequence[BatchJob]], list[list[str]]]


def _captions_on(client) -> CaptionRunner:
    """Caption jobs as tasks of a dask.distributed client, in parallel."""
    return lambda jobs: client.gather([client.submit(caption_tiles, j, pure=False) for j in jobs])


def caption_jobs(run: CaptionRunner, jobs: Sequence[BatchJob], tiles: Sequence[Tile], mode: str, n: int,
                 grid: TileGrid) -> dict[int, str]:
    """Caption of every tile of ``jobs`` (per tile, or shared per window/scene) by tile index."""
    if mode == "tile":
        return {t.index: c for j, cs in zip(jobs, run(jobs)) for t, c in zip(j.tiles, cs)}
    shared = with_shared_captions(run, jobs, tiles, mode, n, grid)
    return {t.index: c for j in shared for t, c in zip(j.tiles, j.captions)}


def with_shared_captions(run: CaptionRunner, jobs: Sequence[BatchJob], tiles: Sequence[Tile], mode: str, n: int,
                         grid: TileGrid) -> list[BatchJob]:
    """Caption one representative tile per N x N window (or per scene) and share it.

    The representative is the tile nearest the window's centre among the processed ones:
    an expensive captioner then runs a handful of times per scene. ``run`` captions a list
    of jobs (on a dask client, or in this process for a lazy result).
    """
    from dataclasses import replace

    if not jobs:  # every tile skipped (all no-data, outside the AOI): nothing to caption
        return list(jobs)

    def group(t: Tile) -> tuple[int, int]:
        return (0, 0) if mode == "scene" else (t.row // n, t.col // n)

    members: dict[tuple[int, int], list[Tile]] = {}
    for t in tiles:
        members.setdefault(group(t), []).append(t)
    reps = {}
    for g, ts in members.items():
        cy = np.mean([t.row for t in ts])
        cx = np.mean([t.col for t in ts])
        reps[g] = min(ts, key=lambda t: (t.row - cy) ** 2 + (t.col - cx) ** 2)
    template = jobs[0]
    rep_tiles = list(reps.values())
    rep_jobs = [replace(template, tiles=(t,), seeds=(0,), captions=(None,)) for t in rep_tiles]
    texts = {t.index: c[0] for t, c in zip(rep_tiles, run(rep_jobs))}
    by_group = {g: texts[t.index] for g, t in reps.items()}
    return [replace(j, captions=tuple(by_group[group(t)] for t in j.tiles)) for j in jobs]


def _run_jobs(client, jobs, tiles, acc: BlendAccumulator, resources: dict | None, captions: dict, routes: dict,
              config: RunConfig, performance_report, journal: RunJournal, writer: _CellWriter) -> tuple[int, int]:
    """Run the jobs (a bounded window in flight, :func:`geosr.scheduling.bounded_map`), blend
    results here as they complete, write the cells each batch finishes, and commit finished cells
    to the journal every few seconds.

    Returns the peak of bytes pending in the blender and the bytes of results received.
    """
    by_index = {t.index: t for t in tiles}
    peak = received = 0
    with _progress(tiles, config, performance_report) as progress:
        for results in bounded_map(client, process_batch, jobs, resources):
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
                journal.commit(writer.raster.sync)
            peak = max(peak, acc.pending_bytes)
            progress([r.index for r in results])
    if not acc.done:
        raise RuntimeError("internal error: some output cells were never completed")
    return peak, received


def _run_jobs_on_workers(client, jobs, tiles, acc: BlendAccumulator, renderer: CellRenderer, resources: dict | None,
                         captions: dict, routes: dict, config: RunConfig, performance_report, journal: RunJournal,
                         raster: WorkRaster) -> tuple[int, int]:
    """Run the jobs with workers blending and writing (:mod:`geosr.worker_writes`).

    Returns 0 pending bytes (nothing is blended here) and the bytes of results received.
    """
    from geosr.worker_writes import run_writing_on_workers  # it builds on this module

    with _progress(tiles, config, performance_report) as progress:
        received = run_writing_on_workers(client, jobs, acc, renderer, raster, journal, captions, routes, resources,
                                          progress)
    return 0, received


def _workers_see(client, folder: Path) -> bool:
    from geosr.worker_writes import workers_see  # it builds on this module

    return workers_see(client, folder)


@contextlib.contextmanager
def _progress(tiles, config: RunConfig, performance_report):
    """The progress bar (tiles, output MP/s) and the dask performance report of a run.

    Yields ``progress(tile_indices)``, to call as tiles are done.
    """
    import distributed

    px = {t.index: int(t.core.width * t.core.height) * config.scale**2 for t in tiles}
    report = distributed.performance_report(filename=performance_report) if performance_report else contextlib.nullcontext()
    bar = tqdm(total=len(tiles), unit="tile", disable=not config.progress, desc="upscale", dynamic_ncols=True)
    start = time.perf_counter()
    done = [0]

    def progress(indices) -> None:
        done[0] += sum(px[i] for i in indices)
        bar.update(len(indices))
        bar.set_postfix(MPps=f"{done[0] / 1e6 / max(time.perf_counter() - start, 1e-9):.2f}")

    with report, bar:
        yield progress


class _CellWriter:
    """Turns blended cells into output pixels (inverse stretch, mask, nodata) and writes them.

    :meth:`write` (the blender's ``emit``) queues a cell; :meth:`flush` writes the queue, cells
    side by side as one run (:meth:`WorkRaster.write_cells`), and names the cells in the journal.
    """

    def __init__(self, raster: WorkRaster, src, stretch: Stretch, scene: Scene, scale: int, journal: RunJournal) -> None:
        self.raster, self.src, self.stretch, self.scene, self.scale = raster, src, stretch, scene, scale
        self.journal = journal
        self._queue: list[tuple[Window, np.ndarray, np.ndarray | None]] = []

    def _lr_window(self, window: Window) -> Window:
        s = self.scale
        return Window(window.col_off // s, window.row_off // s, window.width // s, window.height // s)

    def write(self, window: Window, data: np.ndarray) -> None:
        lr_valid = read_valid(self.src, self._lr_window(window), True) if self.scene.masked else None
        self._queue.append((window, *output_pixels(data, self.stretch, lr_valid, self.scale, self.scene.nodata)))

    def flush(self) -> None:
        """Write the queued cells and record them in the journal."""
        crcs = self.raster.write_cells(self._queue)
        for (window, _, _), crc in zip(self._queue, crcs):
            self.journal.record(cell=CellRecord(int(window.col_off), int(window.row_off),
                                                int(window.width), int(window.height), crc))
        self._queue = []

    def write_empty(self, window: Window) -> None:
        fill = self.scene.nodata if self.scene.nodata is not None else 0
        shape = (len(self.stretch.low), int(window.height), int(window.width))
        values = np.full(shape, fill, dtype=self.stretch.dtype)
        self.raster.write(window, values, np.zeros(shape[1:], bool))


def _output_profile(scene: Scene, plan: BandPlan, s: int) -> dict:
    profile = dict(
        width=scene.width * s, height=scene.height * s, count=len(plan.bands), dtype=scene.dtype,
        nodata=scene.nodata,
    )
    if scene.crs and not scene.gcps:
        profile["crs"] = scene.crs
    if not scene.gcps and not (scene.transform.is_identity and scene.rpcs is not None):
        if scene.crs or not scene.transform.is_identity:
            profile["transform"] = scale_transform(scene.transform, s)
    return profile


def _band_meta(scene: Scene, plan: BandPlan) -> dict:
    pick = [b - 1 for b in plan.bands]
    ci = [scene.colorinterp[i] for i in pick]
    # GTiff can only tag R,G,B as the first three bands; others become undefined/gray.
    if len(ci) >= 3 and ci[:3] != [ColorInterp.red, ColorInterp.green, ColorInterp.blue]:
        ci = [ColorInterp.gray if c in (ColorInterp.red, ColorInterp.green, ColorInterp.blue) else c for c in ci]
    if len(ci) < 3:
        ci = [ColorInterp.gray if c in (ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha) else c for c in ci]
    ci = [ColorInterp.undefined if c == ColorInterp.alpha else c for c in ci]
    return dict(
        colorinterp=ci,
        descriptions=[scene.descriptions[i] for i in pick],
        scales=[scene.scales[i] for i in pick],
        offsets=[scene.offsets[i] for i in pick],
        units=[scene.units[i] for i in pick],
    )


def _output_tags(scene: Scene, config: RunConfig, model: Upscaler) -> dict:
    tags = {k: v for k, v in scene.tags.items() if not k.startswith("GEOSR_")}
    tags.update(
        GEOSR_VERSION=geosr.__version__,
        GEOSR_MODEL=getattr(model, "name", config.model),
        GEOSR_SCALE=str(config.scale),
        GEOSR_CAPTIONER=config.captioner,
        GEOSR_CAPTION_EVERY=config.caption_every,
        GEOSR_TILE=str(config.tiles.tile),
        GEOSR_OVERLAP=str(config.tiles.overlap),
        GEOSR_BLEND=config.blend,
        GEOSR_SEED=str(config.seed),
        GEOSR_SOURCE=";".join(os.path.basename(p) for p in scene.paths),
    )
    if config.steps is not None:
        tags["GEOSR_STEPS"] = str(config.steps)
    if config.guidance is not None:
        tags["GEOSR_GUIDANCE"] = str(config.guidance)
    return tags


def _captions_geojson(scene: Scene, tiles: Sequence[Tile], captions: dict[int, str],
                      routes: dict[int, TileRoute] | None = None) -> dict:
    """One feature per processed tile: core footprint in the scene CRS, caption, index, and
    for a routed run the tile's ``route`` (``model`` / ``bicubic``), ``texture`` and ``noise``."""
    georef = bool(scene.crs) and not scene.gcps
    transform = scene.transform if georef else rasterio.Affine.identity()
    features = []
    for t in tiles:
        poly = window_polygon(t.core, transform)
        features.append(
            {
                "type": "Feature",
                "geometry": poly.__geo_interface__,
                "properties": {
                    "tile": t.index, "row": t.row, "col": t.col, "caption": captions.get(t.index, ""),
                    "col_off": int(t.core.col_off), "row_off": int(t.core.row_off),
                    "width": int(t.core.width), "height": int(t.core.height),
                    **(routes[t.index].properties() if routes and t.index in routes else {}),
                },
            }
        )
    fc = {"type": "FeatureCollection", "features": features}
    if georef:
        epsg = scene.crs.to_epsg()
        # RFC 7946 dropped "crs", but QGIS and GDAL still read this member for non-WGS84 data.
        name = f"urn:ogc:def:crs:EPSG::{epsg}" if epsg else scene.crs.to_wkt()
        fc["crs"] = {"type": "name", "properties": {"name": name}}
    return fc

