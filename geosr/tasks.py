"""The unit of work a worker runs: a batch of tiles read -> routed -> captioned -> upscaled.

A :class:`BatchJob` is small and picklable (a path, windows, the band plan and stretch, the
model and captioner specs, per-tile seeds); :func:`process_batch` turns it into
:class:`TileResult` s wherever dask runs it - a thread of the client, a local worker
process, a GPU node. Models and captioners are loaded once per process and spec
(:func:`captioner_for`, :func:`geosr.models.load_upscaler`'s cache). Errors leave a task
whole (:func:`shippable_errors`). Nothing here knows about runs, journals or outputs
(:mod:`geosr.engine` orchestrates; :mod:`geosr.worker_writes` blends on workers).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from geosr.captioning import Captioner, FixedCaptioner, attributed_captions, caption_text, captioner_files, load_captioner
from geosr.captioning.cache import CachingCaptioner
from geosr.config import RunConfig
from geosr.code_identity import code_digest
from geosr.errors import GeosrError, ModelError, WorkerMismatchError
from geosr.gdal_read_settings import gdal_read_settings
from geosr.models import CLASSICAL, Upscaler, load_upscaler
from geosr.models.classical import CLASSICAL_UPSCALERS, BicubicUpscaler
from geosr.models.own_network import upscale_in_units
from geosr.radiometry import Stretch
from geosr.reading import read_tile
from geosr.routing import BICUBIC, MODEL, TileRoute, route_tiles
from geosr.scene import open_raster
from geosr.scene_plan import BandPlan, ScenePlan, tile_seed
from geosr.scheduling import undo_malloc_trim_threshold
from geosr.tiling import Tile, TileGrid

__all__ = [
    "BatchJob", "CaptionRunner", "WorkerCheck", "batch_jobs", "caption_jobs", "with_known_captions", "with_shared_captions", "ModelFacts", "TileResult", "batch_routes", "caption_batch", "caption_tiles", "captioner_for", "captioner_files_here", "check_captioner", "check_worker",
    "cheap_model_for", "cheap_path_model", "error_variance", "group_input", "model_facts", "model_for", "model_input",
    "plan_step", "process_batch", "read_batch", "read_batch_and_valid", "run_model", "shippable_errors", "still_needed", "upscale_batch",
    "upscale_routed",
]


@dataclass(frozen=True)
class WorkerCheck:
    """What every worker of a run must have to make the pixels the run's identity records
    (:func:`check_worker`); a field left None is not checked.

    ``code`` and ``gdal_reads``: the client's geosr code digest and GDAL read settings
    (:func:`geosr.gdal_read_settings.gdal_read_settings`; the client plans what the workers
    read); ``runs_on``, ``fingerprint`` and ``captioner_files``: the model's device and
    precision, its networks' files, and the captioner's, as the worker that described the
    model found them (:class:`ModelFacts`).
    """

    code: str | None = None
    runs_on: str | None = None
    fingerprint: str | None = None
    captioner_files: str | None = None
    gdal_reads: str | None = None


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
    uncertainty: bool = False  # each tile's result ends with its error variance (geosr.uncertainty_map)
    # what the run's identity records of the worker's code, device and files: a worker that
    # differs refuses the job (check_worker) before it reads a tile
    worker: WorkerCheck = WorkerCheck()
    # the indices of the tiles whose results the job returns (None: all): a resumed run computes
    # an uninterrupted run's batch whole and keeps the tiles it still needs (still_needed)
    keep: tuple[int, ...] | None = None

    @property
    def returns(self) -> tuple[int, ...]:
        """The indices of the tiles whose results the job returns, in its order."""
        return tuple(t.index for t in self.tiles if self.keep is None or t.index in self.keep)


@dataclass
class TileResult:
    index: int
    hr: np.ndarray  # [bands, H, W], and the error variance after them when the job asked for it
    caption: str
    route: TileRoute | None = None  # None: not routed (every tile went to the model)

    def __sizeof__(self) -> int:
        # dask sizes a task's result with sys.getsizeof: without the HR array a result looks
        # like 100 bytes, and dask neither counts its memory nor keeps work where it is
        return object.__sizeof__(self) + self.hr.nbytes + len(self.caption)


@functools.lru_cache(maxsize=8)
def captioner_for(spec: str) -> Captioner:
    # One captioner per worker process and spec (an MLLM loads once), remembering the
    # captions of tiles it has seen (re-runs, repeated content, window/scene sharing).
    # A fixed caption does not look at the pixels: hashing them would only cost time.
    captioner = load_captioner(spec)
    return captioner if isinstance(captioner, FixedCaptioner) else CachingCaptioner(captioner)


def model_for(job: BatchJob) -> Upscaler:
    return load_upscaler(job.model, job.scale, **dict(job.model_options))


def cheap_path_model(spec: str, scale: int, model_options: dict) -> Upscaler:
    """Routing's cheap path ``spec`` on the run's device and precision, projecting its outputs
    onto their input as the model does (``model_options``' device, dtype and lr_consistency; a
    classical one takes none)."""
    options = {k: v for k, v in model_options.items() if k in ("device", "dtype", "lr_consistency")}
    return load_upscaler(spec, scale, **({} if spec in CLASSICAL else options))


def cheap_model_for(job: BatchJob, routes: Sequence[TileRoute | None]) -> Upscaler | None:
    """The cheap path of ``job``'s routed tiles; None (and not loaded) when no tile of it is routed there."""
    if not any(r is not None and r.path != MODEL for r in routes):
        return None
    return cheap_path_model(job.route_to, job.scale, dict(job.model_options))


def read_batch(job: BatchJob) -> np.ndarray:
    return read_batch_and_valid(job)[0]


def read_batch_and_valid(job: BatchJob) -> tuple[np.ndarray, np.ndarray]:
    """The tiles ``[B, C, H, W]`` and their validity ``[B, H, W]`` (the reflect-padded halo is invalid)."""
    with open_raster(job.source) as ds:
        read = [read_tile(ds, t, job.bands.bands, job.stretch, job.masked) for t in job.tiles]
    valid = [np.pad(v, ((t.pad[0], t.pad[1]), (t.pad[2], t.pad[3]))) for t, (_, v) in zip(job.tiles, read)]
    return np.stack([d for d, _ in read]), np.stack(valid)


def model_input(batch: np.ndarray, plan: BandPlan) -> torch.Tensor:
    """The bands of a read batch that captioning and routing see (``plan.look``: R, G, B when
    there are three bands or more), as a tensor."""
    return group_input(batch, plan.look)


def group_input(batch: np.ndarray, positions: Sequence[int]) -> torch.Tensor:
    """``batch[:, positions]`` as a contiguous tensor."""
    return torch.from_numpy(np.ascontiguousarray(batch[:, list(positions)]))


def caption_batch(spec: str, x: torch.Tensor, plan: BandPlan) -> list[str]:
    """Caption the tiles captioning sees (:func:`model_input`): clipped to [0, 1], a single band
    shown as grey RGB. A captioner that says who wrote each caption (``auto``) gives them
    attributed (:func:`geosr.captioning.attribute`): they travel so to the captions GeoJSON, and
    :func:`upscale_batch` gives the models their text only."""
    captioner = captioner_for(spec)
    if isinstance(captioner, FixedCaptioner):
        return captioner.caption(x)  # the same text for every tile: no copy of the pixels
    x = x.clamp(0, 1)
    if len(plan.look) == 1:
        x = x.expand(-1, 3, -1, -1)
    return attributed_captions(captioner, x)


def shippable_errors(task):
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


def check_worker(job: BatchJob, model: Upscaler | None = None) -> None:
    """Refuse ``job`` on a worker that would make other pixels than the run's identity records
    (``job.worker``, taken from the client and from one worker, :func:`model_facts`): other geosr
    code (an older install on one machine of a cluster), ``model`` on another kind of device or
    precision (another GPU model rounds otherwise; ``--device``/``--dtype`` left at their
    defaults resolve by the machine), or ``model`` loaded from other files (a shipped model
    retrained under the same name: the code is the same, the weights are not).

    Raises
    ------
    WorkerMismatchError
        Naming the worker and what differs.
    """
    want = job.worker
    if want.code is not None and code_digest() != want.code:
        raise WorkerMismatchError(f"worker {_worker_address()} runs geosr code {code_digest()}, the run {want.code}: "
                                  "install the same geosr on the client and every worker")
    if want.gdal_reads is not None and (reads := gdal_read_settings()) != want.gdal_reads:
        raise WorkerMismatchError(f"worker {_worker_address()} reads with the GDAL settings '{reads or 'none'}', "
                                  f"the run with '{want.gdal_reads or 'none'}': set the same GDAL options in the "
                                  "environment of the client and every worker")
    if model is None:
        return
    if want.runs_on is not None and (runs_on := model_runs_on(model)) != want.runs_on:
        raise WorkerMismatchError(f"worker {_worker_address()} runs the model on {runs_on}, the run on {want.runs_on}: "
                                  "use workers of one kind (one GPU model), or --device and --dtype that all of "
                                  "them resolve alike")
    if want.fingerprint is None:
        return
    cheap = cheap_path_model(job.route_to, job.scale, dict(job.model_options)) if job.route_threshold is not None else None
    if (files := networks_fingerprint(model, cheap)) != want.fingerprint:
        raise WorkerMismatchError(f"worker {_worker_address()} loads model {job.model!r} from other files ({files}) "
                                  f"than the run ({want.fingerprint}): give every worker the same model files")


def check_captioner(job: BatchJob) -> None:
    """Refuse to caption ``job``'s tiles on a worker whose captioner loads from other files than
    the run's identity records (a VLM retrained in place writes other captions, so other pixels).

    Raises
    ------
    WorkerMismatchError
        Naming the worker and both files' fingerprints.
    """
    want = job.worker.captioner_files
    if want is not None and (files := captioner_files_here(job.captioner)) != want:
        raise WorkerMismatchError(f"worker {_worker_address()} loads captioner {job.captioner!r} from other files "
                                  f"({files}) than the run ({want}): give every worker the same captioner files")


@functools.lru_cache(maxsize=8)
def captioner_files_here(spec: str) -> str | None:
    """:func:`geosr.captioning.captioner_files` of ``spec`` in this process, once (as
    :func:`captioner_for` loads it once)."""
    return captioner_files(spec)


def _worker_address() -> str:
    import distributed

    try:
        return distributed.get_worker().address
    except ValueError:  # not in a dask worker: the client's own process
        return "(the client's process)"


@shippable_errors
def caption_tiles(job: BatchJob) -> list[str]:
    """Caption the tiles of ``job`` (runs on a worker)."""
    check_worker(job)
    check_captioner(job)
    return caption_batch(job.captioner, model_input(read_batch(job), job.bands), job.bands)


@shippable_errors
def process_batch(job: BatchJob) -> list[TileResult]:
    """Read, route, caption (when not given) and upscale a batch of tiles (runs on a worker).

    With routing (``job.route_threshold``), tiles routed to the cheap path are neither captioned
    (their caption is empty) nor given to the model; the others go to the model as one batch.
    """
    undo_malloc_trim_threshold()
    model = model_for(job)
    check_worker(job, model)
    batch, valid = read_batch_and_valid(job)
    plan = job.bands
    x = model_input(batch, plan)
    routes = batch_routes(job, x, valid)
    # a routed tile is not captioned (a shared caption given for its window is kept)
    captions = ["" if (c is None and r is not None and r.path != MODEL) else c for c, r in zip(job.captions, routes)]
    missing = [i for i, c in enumerate(captions) if c is None]
    if missing:
        check_captioner(job)
        for i, text in zip(missing, caption_batch(job.captioner, x[missing], plan)):
            captions[i] = text
    if job.uncertainty:  # never routed (RunConfig.routed_threshold)
        out = upscale_batch(model, batch, x, plan, captions, job.seeds, job.scale, job.stretch,
                            uncertainty=True)
    else:
        out = upscale_routed(model, cheap_model_for(job, routes), batch, x, plan, captions, job.seeds,
                             job.scale, routes, job.stretch)
    returns = set(job.returns)
    return [TileResult(t.index, out[i], captions[i], routes[i]) for i, t in enumerate(job.tiles) if t.index in returns]


def batch_routes(job: BatchJob, x: torch.Tensor, valid: np.ndarray) -> list[TileRoute | None]:
    """Each tile's route (:mod:`geosr.routing`), or None for every tile of a job that does not route.

    Only the valid pixels of each tile's core are measured: the halo belongs to the
    neighbours too, and texture there would keep a flat tile beside a textured one on the model.
    """
    if job.route_threshold is None:
        return [None] * len(job.tiles)
    in_core = np.zeros_like(valid)
    for i, t in enumerate(job.tiles):
        # the core's place in the padded tile (not its middle: a core cut at the raster's edge,
        # geosr.tiling, is not)
        top = t.pad[0] + int(t.core.row_off - t.read.row_off)
        left = t.pad[2] + int(t.core.col_off - t.read.col_off)
        in_core[i, top : top + int(t.core.height), left : left + int(t.core.width)] = True
    return list(route_tiles(x, job.route_threshold, torch.from_numpy(valid & in_core), cheap=job.route_to))


def upscale_routed(model: Upscaler, cheap_model: Upscaler | None, batch: np.ndarray, x: torch.Tensor,
                   plan: BandPlan, captions: Sequence[str], seeds: Sequence[int], s: int,
                   routes: Sequence[TileRoute | None], stretch: Stretch | None = None) -> np.ndarray:
    """:func:`upscale_batch`, with the tiles routed to the cheap path upscaled by ``cheap_model`` instead
    (which may be None when no tile is routed)."""
    cheap = [i for i, r in enumerate(routes) if r is not None and r.path != MODEL]
    if not cheap:
        return upscale_batch(model, batch, x, plan, captions, seeds, s, stretch)
    on_model = [i for i in range(len(routes)) if i not in cheap]
    out = np.empty((len(routes), len(plan.bands), *(n * s for n in batch.shape[-2:])), np.float32)
    for subset, upscaler in ((on_model, model), (cheap, cheap_model)):
        if subset:
            out[subset] = upscale_batch(upscaler, batch[subset], x[subset], plan, [captions[i] for i in subset],
                                        [seeds[i] for i in subset], s, stretch)
    return out


def upscale_batch(model: Upscaler, batch: np.ndarray, x: torch.Tensor, plan: BandPlan, captions: Sequence[str],
                  seeds: Sequence[int], s: int, stretch: Stretch | None = None,
                  uncertainty: bool = False) -> np.ndarray:
    """The model's part of a batch: ``[B, bands, h*s, w*s]`` from the read batch and its model input.

    Each group of ``plan`` is one model call with the tiles' captions and seeds (read from the
    R, G, B group: the same text and noise for every band of a tile); ``x``, the input of
    ``plan.look``, serves the group that is those bands without a second copy. The bands
    ``plan`` leaves out go through bicubic. ``stretch`` (the scene's) is for a network that
    reads raster values (:func:`geosr.models.own_network.upscale_in_units`). The models read
    the captions' text, never who wrote them (:func:`geosr.captioning.caption_text`).

    With ``uncertainty`` (a model with an uncertainty head, and ``stretch``), one more band
    follows the output's: the predicted squared error in raster values, averaged over the
    bands that went through the model (:func:`error_variance`; bicubic's bands have no
    prediction and are left out of the mean).
    """
    captions = [caption_text(c) for c in captions]
    b, _, h, w = batch.shape
    bands = len(plan.bands)
    out = np.empty((b, bands + uncertainty, h * s, w * s), np.float32)
    sigmas: dict[int, torch.Tensor] = {}  # predicted error per output band position, model units
    for group in plan.groups:
        xg = x if group.positions == plan.look else group_input(batch, group.positions)
        if group.replicate:
            xg = xg.expand(-1, group.replicate, -1, -1).contiguous()
            hr, sigma = _upscale_group(model, xg, captions, seeds, stretch, group.positions * group.replicate,
                                       uncertainty)
            out[:, group.positions[0]] = hr.mean(dim=1).numpy()
            if sigma is not None:
                # the channels are one band's copies: their errors go together, and the mean
                # of their sigmas bounds the error of their mean (Minkowski)
                sigmas[group.positions[0]] = sigma.mean(dim=1)
        else:
            hr, sigma = _upscale_group(model, xg, captions, seeds, stretch, group.positions, uncertainty)
            out[:, list(group.positions)] = hr.numpy()
            if sigma is not None:
                sigmas.update((p, sigma[:, k]) for k, p in enumerate(group.positions))
    if plan.extra:
        out[:, list(plan.extra)] = BicubicUpscaler(s).upscale(group_input(batch, plan.extra)).numpy()
    if uncertainty:
        out[:, bands] = error_variance(sigmas, stretch).numpy()
    return out


def _upscale_group(model: Upscaler, xg: torch.Tensor, captions: Sequence[str], seeds: Sequence[int],
                   stretch: Stretch | None, positions: Sequence[int],
                   uncertainty: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One group's model call: its output, and its predicted error when asked (model units)."""
    if uncertainty:  # a diffusion model's head: it reads and predicts in model units
        return model.upscale_with_uncertainty(xg, captions, seeds)
    return upscale_in_units(model, xg, captions, seeds, stretch, positions), None


def error_variance(sigmas: Mapping[int, torch.Tensor], stretch: Stretch) -> torch.Tensor:
    """The mean over bands of the squared predicted error in raster values: ``[B, H, W]`` float32.

    Parameters
    ----------
    sigmas : mapping of int to torch.Tensor
        Output band position -> its predicted RMSE ``[B, H, W]`` in model units.
    stretch : Stretch
        The scene stretch: a band's model unit is ``high - low`` of its raster values (the
        offset ``low`` moves values, not errors).
    """
    total = None
    for position, sigma in sigmas.items():
        span = stretch.high[position] - stretch.low[position]
        squared = (sigma.double() * span).square()
        total = squared if total is None else total + squared
    return (total / len(sigmas)).float()


@dataclass(frozen=True)
class ModelFacts:
    """What the client needs of a run's model: the name it is tagged with, its input channels
    (None: any), whether it is a network (its tasks then ask for a GPU where there is one), and
    the grid step its tile plan keeps (:func:`plan_step`), and the fingerprint of the networks'
    pixels (:func:`model_fingerprint`; None for models without one)."""

    name: str
    channels: int | None
    neural: bool
    grid_step: int = 1
    fingerprint: str | None = None
    runs_on: str | None = None
    captioner_files: str | None = None


def run_model(config: RunConfig) -> Upscaler:
    """``config``'s model (cached per process), refused when it cannot serve ``config.uncertainty``.

    Raises
    ------
    ModelError
        The model cannot be loaded (or has no detail head for ``config.detail``), or it has no
        uncertainty head and ``config.uncertainty`` asks for its error.
    """
    model = load_upscaler(config.model, config.scale, **config.model_options())
    if config.uncertainty and not getattr(model, "has_uncertainty", False):
        raise ModelError(f"model {config.model!r} has no uncertainty head: --uncertainty needs a model trained "
                         "with one (geosr.training.train_heads)")
    return model


def plan_step(model: Upscaler, config: RunConfig) -> int:
    """The grid step of a run's tile plan (:class:`geosr.tiling.TileGrid`): the model sees every
    tile on the phase of its grid that it sees in an untiled run.

    The model's ``grid_step`` (LR px: users' networks their ``tile_multiple``; 1 where it has none:
    classical models). Not the cheap path's: routing must change the routed tiles only - planned on
    geosr-tiny-fast-x2's step (2) too, an x2 run with routing on moved every core and wrote other
    pixels than ``--route off`` with no tile routed. The cheap path pads a tile to its own multiple
    (:class:`~geosr.models.diffusion.DiffusionUpscaler`): on flat tiles its phase is of no account.
    """
    return int(getattr(model, "grid_step", 1))


@shippable_errors
def model_facts(config: RunConfig) -> ModelFacts:
    """Load ``config``'s model (and routing's cheap path) and captioner (cached per process) and
    describe the model."""
    model = run_model(config)
    captioner_for(config.captioner)
    return ModelFacts(getattr(model, "name", config.model), model.channels,
                      not isinstance(model, CLASSICAL_UPSCALERS), plan_step(model, config),
                      model_fingerprint(model, config), model_runs_on(model), captioner_files_here(config.captioner))


def model_runs_on(model: Upscaler) -> str | None:
    """The kind of device (a GPU by its model) and the precision a network runs in, as resolved
    (``cpu, float32``, ``cuda (NVIDIA H100 80GB HBM3), bfloat16``).

    ``--device`` and ``--dtype`` left at their defaults resolve by the machine (CUDA when there
    is one, bf16 on CUDA and on CPUs with bf16 matrix units): a run stopped on one machine and
    resumed on another, or on other workers (``--address`` may change), makes other pixels.
    None for models without a device (classical ones).
    """
    holder = model if getattr(model, "device", None) is not None else getattr(model, "runner", None)
    device = getattr(holder, "device", None)
    if device is None:
        return None
    kind = getattr(device, "type", None) or str(device).partition(":")[0]
    if kind == "cuda":  # the GPU's model: another generation's kernels round otherwise
        import torch

        kind = f"cuda ({torch.cuda.get_device_name(device)})"
    dtype = getattr(holder, "dtype", None)
    return kind if dtype is None else f"{kind}, {str(dtype).removeprefix('torch.')}"


def model_fingerprint(model: Upscaler, config: RunConfig) -> str | None:
    """The ``fingerprint`` of a run's model and, when the run routes tiles, of its cheap path:
    what their pixels depend on beyond the run's settings (a shipped model retrained under the
    same name makes other pixels). None when neither has one (classical and own models: a
    user's network file is in the identity by its content)."""
    cheap = (cheap_path_model(config.route_to, config.scale, config.model_options())
             if config.routed_threshold is not None else None)
    return networks_fingerprint(model, cheap)


def networks_fingerprint(model: Upscaler, cheap: Upscaler | None) -> str | None:
    """The ``fingerprint`` of ``model`` and of routing's cheap path ``cheap`` (None: the run
    does not route), in one line; None when neither has one."""
    prints = [getattr(m, "fingerprint", None) for m in (model, cheap) if m is not None]
    return ", ".join(p for p in prints if p) or None


def batch_jobs(scene_plan: ScenePlan, tiles: Sequence[Tile], config: RunConfig, single_last: int = 0,
               worker: WorkerCheck = WorkerCheck()) -> list[BatchJob]:
    """Jobs of ``config.batch_size`` tiles of ``scene_plan`` each, with their seeds; the last
    ``single_last`` tiles one per job; ``worker``: what the workers must have
    (:func:`check_worker`; its None fields unchecked).

    Single last jobs are for outputs written block by block as their cells are done (tiled
    COGs, Zarr): the blocks a result finishes are written after the tiles already running, so
    the blocks the last two results finish are the serial tail; one tile finishes 1-3 of them
    where a batch of four finished 8-10 Zarr chunks (docs/benchmarks.md).
    """
    scene, stretch = scene_plan.scene, scene_plan.stretch
    opts = tuple(sorted(config.model_options().items()))
    threshold, route_to = config.routed_threshold, config.route_to  # once: they look for shipped models
    batched = max(0, len(tiles) - single_last)
    starts = [*range(0, batched, config.batch_size), *range(batched, len(tiles))]
    jobs = []
    for i, end in zip(starts, [*starts[1:], len(tiles)]):
        chunk = tuple(tiles[i:end])
        jobs.append(
            BatchJob(
                source=scene.source, tiles=chunk, bands=scene_plan.bands, stretch=stretch, masked=scene.masked,
                model=config.model, scale=config.scale, model_options=opts,
                seeds=tuple(tile_seed(config.seed, scene_plan.key, t) for t in chunk),
                captions=(None,) * len(chunk), captioner=config.captioner,
                route_threshold=threshold, route_to=route_to, uncertainty=config.uncertainty,
                worker=worker,
            )
        )
    return jobs


CaptionRunner = Callable[[Sequence[BatchJob]], list[list[str]]]


def caption_jobs(run: CaptionRunner, jobs: Sequence[BatchJob], tiles: Sequence[Tile], mode: str, n: int,
                 grid: TileGrid) -> dict[int, str]:
    """Caption of every tile of ``jobs`` (per tile, or shared per window/scene) by tile index."""
    if mode == "tile":
        return {t.index: c for j, cs in zip(jobs, run(jobs)) for t, c in zip(j.tiles, cs)}
    shared = with_shared_captions(run, jobs, tiles, mode, n, grid)
    return {t.index: c for j in shared for t, c in zip(j.tiles, j.captions)}


def still_needed(jobs: Sequence[BatchJob], needs: Callable[[Tile], bool]) -> list[BatchJob]:
    """The jobs of an uninterrupted run (all its tiles, in its order) that a resumed run still
    needs: those with a tile it ``needs``, each computed whole and returning those tiles only
    (``BatchJob.keep``).

    A tile's pixels depend on the batch it is computed in - a network's kernels round otherwise
    per batch shape (1 DN on a few pixels), a VLM decodes a batch otherwise - so a resumed run
    computes each tile in the very batch an uninterrupted run computes it in, not in batches of
    what is left, at the cost of recomputing at most a batch's other tiles.
    """
    kept = []
    for job in jobs:
        needed = tuple(t.index for t in job.tiles if needs(t))
        if needed:
            kept.append(job if len(needed) == len(job.tiles) else replace(job, keep=needed))
    return kept


def with_known_captions(jobs: Sequence[BatchJob], known: Mapping[int, str]) -> list[BatchJob]:
    """``jobs`` with the captions a stopped run recorded for their tiles (``known``, by tile
    index; a resumed run's journal).

    A tile is redone when one of its cells was not finished; its finished neighbours' cells
    were blended with its pixels as made under that caption, and a captioner asked again may
    answer otherwise (a VLM's batched decoding). A routed tile's empty caption is not kept:
    routing, which is exact, says again whether it needs one.
    """
    if not known:
        return list(jobs)
    return [replace(j, captions=tuple(known.get(t.index) or c for t, c in zip(j.tiles, j.captions))) for j in jobs]


def with_shared_captions(run: CaptionRunner, jobs: Sequence[BatchJob], tiles: Sequence[Tile], mode: str, n: int,
                         grid: TileGrid, known: Mapping[int, str] | None = None) -> list[BatchJob]:
    """Caption one representative tile per N x N window (or per scene) and share it.

    The representative is the tile nearest the window's centre among the processed ones:
    an expensive captioner then runs a handful of times per scene. ``run`` captions a list
    of jobs (on a dask client, or in this process for a lazy result). A window one of whose
    tiles has a ``known`` caption (:func:`with_known_captions`) keeps it.
    """
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
    known = known or {}
    by_group = {}  # windows a stopped run captioned: the caption it made their tiles with
    for g, ts in members.items():
        kept = [known[t.index] for t in ts if known.get(t.index)]
        if kept:
            by_group[g] = kept[0]
    template = jobs[0]
    rep_tiles = [t for g, t in reps.items() if g not in by_group]
    rep_jobs = [replace(template, tiles=(t,), seeds=(0,), captions=(None,)) for t in rep_tiles]
    texts = {t.index: c[0] for t, c in zip(rep_tiles, run(rep_jobs) if rep_jobs else [])}
    by_group.update({g: texts[t.index] for g, t in reps.items() if g not in by_group})
    return [replace(j, captions=tuple(by_group[group(t)] for t in j.tiles)) for j in jobs]
