"""The Python API, exported from :mod:`geosr`: one return type per verb.

- :func:`upscale` -> a lazy ``xarray.DataArray`` on the refined grid (:mod:`geosr.lazy`),
  computed where it is read;
- :func:`upscale_to_file` -> the :class:`~geosr.engine.RunReport` of a run that writes a COG
  (:func:`geosr.engine.upscale_scene`: lock, journal, ``resume``) - what ``geosr upscale`` runs;
- :func:`caption` -> the GeoJSON FeatureCollection of the tiles' captions (written to a file
  when given one).

A source is a path (or several), an open rasterio dataset or an ``xarray.DataArray`` with
rioxarray georeferencing (see :mod:`geosr.sources`).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

from geosr.config import DEFAULT_CAPTIONER, DEFAULT_OVERLAP, DEFAULT_TILE, RunConfig, TileSpec
from geosr.errors import GeosrError, InputError
from geosr.scene import categorical_reason, expand_inputs
from geosr.sources import Source, source_files

if TYPE_CHECKING:
    import xarray

    from geosr.engine import RunReport

__all__ = ["upscale", "upscale_to_file", "caption", "config_from_options", "python_spelling", "keyword_wording", "command_line_wording"]

# Whether errors leaving the API name options as the command line spells them (--overwrite)
# or as Python does (overwrite=True): the commands call the same functions.
_WORDING: contextvars.ContextVar[str] = contextvars.ContextVar("geosr_option_wording", default="python")
# Options whose Python spelling is not the flag's name with "_" for "-".
_KEYWORDS = {"overwrite": "overwrite=True", "resume": "resume=True", "co": "creation_options"}
_FLAG = re.compile(r"(?<![\w-])--(?P<name>[a-z][a-z0-9-]*)")
# Options that messages name with a value: "--route off" is route='off'.
_FLAG_WITH_VALUE = re.compile(r"(?<![\w-])--(?P<name>route|model) (?P<value>auto|off|nearest)\b")


#: The parameters :func:`upscale` and :func:`upscale_to_file` share, written once for both docstrings.
_SCENE_PARAMETERS = """    source : path-like, sequence of path-like, rasterio dataset or xarray.DataArray
        One raster or .vrt; several same-grid rasters, a directory or a glob (a mosaic);
        a Sentinel-2 product (``.SAFE`` folder or ``MTD_MSIL2A.xml``: its 10 m subdataset) or a
        GDAL subdataset name ``SENTINEL2_L2A:...:20m:EPSG_32633`` (:mod:`geosr.sentinel2`);
        an open rasterio dataset; or a DataArray with rioxarray georeferencing, dims
        ``(band, y, x)`` or ``(y, x)``, in memory or dask-backed. A DataArray is written to a
        temporary GeoTIFF first (computed chunk by chunk; the input is ``scale**2`` times
        smaller than the output), named after its source file when it has one, so its
        tile seeds are those of the file.
    scale : int
        2, 3, 4 or 8.
    model : str or callable, optional
        ``bicubic``, ``lanczos``, ``nearest`` (the one model for classification rasters:
        land cover, masks), a shipped model, a diffusers directory or hub id (default: the
        model shipped for the scale, ``geosr-tiny-x4`` at x4 and ``geosr-tiny-x2`` at x2;
        bicubic at x3 and x8); your own network as an ONNX file (``.onnx``), a TorchScript
        archive (``.pt``), or a torch module or function ``(N, C, h, w) -> (N, C, s*h, s*w)``
        (named ``python:NAME@HASH`` in tags and the run identity; see
        :mod:`geosr.models.callable` for its limits).
    model_metadata : mapping, optional
        What your own network takes, over what it says of itself: ``scale``, ``bands``,
        ``value_range`` (``0-1``, ``0-255``, ``raw/10000``...), ``tile_multiple``,
        ``tile_size``, ``min_overlap`` (:mod:`geosr.models.model_card`).
    captioner : str
        ``auto`` (``degradation``, and the shipped VLM for tiles it reads as JPEG-compressed),
        ``degradation``, ``mllm:geosr-caption-tiny`` (the shipped VLM), ``mllm:DIR-OR-HUB-ID``,
        ``fixed:TEXT`` or ``none``.
    caption_every : str
        ``tile``, ``window:N`` or ``scene``.
    tile, overlap : int
        Tile core size and halo in input pixels.
    bands : sequence of int, optional
        1-based bands to process (default: all but alpha).
    bands_to_model : ``"all"``, ``"rgb"`` or sequence of int
        ``all`` (default): every band through the model, R, G, B as one group and every
        other band (NIR, red edge, SWIR, panchromatic...) alone; ``rgb``: R, G, B only, the
        other bands bicubic; band numbers: those bands through the model, the rest bicubic.
    rgb_bands : sequence of int, optional
        The bands that are red, green and blue, e.g. ``(3, 2, 1)`` for a B2, B3, B4 stack
        (default: read from band descriptions, wavelengths or colour interpretation; else
        bands 1-3, with a warning). Captions and routing read these bands.
    aoi : path-like, optional
        GeoJSON polygon(s): only tiles touching them are processed, the rest is nodata.
    blend : str
        ``cosine`` or ``none``.
    seed : int
        Base seed; per-tile seeds derive from it.
    device, dtype, steps, guidance, batch_size
        Neural model options (torch device, ``fp32``/``fp16``/``bf16`` - by default bf16 on
        CUDA and on CPUs with AMX, else fp32 -, diffusion steps, guidance scale, tiles per
        model call).
    route : str
        ``auto`` (default): tiles that are flat and clean go to the cheap path instead of
        the model (:mod:`geosr.routing`: the shipped fast network for the scale, else
        bicubic); ``off``: every tile goes to the model.
    route_threshold : float, optional
        Texture (RMS gradient, DN per input pixel) under which a clean tile is flat; default:
        the one calibrated for the cheap path.
    detail : float
        Detail level ``D`` in ``[0, 1]`` (diffusion models with a detail head, as the shipped
        ones): 0 (default) is the fidelity output, 1 the most detail the model has learnt -
        drawn, not measured: plausible texture that the input cannot confirm. Each tile's
        draw comes from its seed (reproducible), and what it adds is invisible to the model's
        downsampling, so the band means of the input stay as they were.
    lr_consistency : {"off", "clean", "always"}
        Project the diffusion model's output of each tile onto its input, so that the model's
        downsampling (antialiased bicubic) of the output gives the input back: never
        (default), on tiles whose caption reads as a clean downsampling, on every tile. Only
        for input made that way (a synthetic downsample): on blurred, noisy or plainly
        decimated input it brings the blur, noise or aliasing back.
"""


def upscale(
    source: Source,
    *,
    scale: int,
    model: str | Callable | None = None,
    model_metadata: Mapping[str, Any] | None = None,
    captioner: str = DEFAULT_CAPTIONER,
    caption_every: str = "tile",
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    bands: Sequence[int] | None = None,
    bands_to_model: str | Sequence[int] = "all",
    rgb_bands: Sequence[int] | None = None,
    aoi: str | os.PathLike | None = None,
    blend: str = "cosine",
    seed: int = 0,
    device: str | None = None,
    dtype: str | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    batch_size: int | None = None,
    route: str = "auto",
    route_threshold: float | None = None,
    detail: float = 0.0,
    uncertainty: bool = False,
    lr_consistency: str = "off",
) -> "xarray.DataArray | tuple[xarray.DataArray, xarray.DataArray]":
    """Super-resolve a scene lazily: a DataArray on the refined grid, computed where it is read.

    Nothing runs now. Computing a region runs only the tiles under it, on the current dask
    scheduler, with the pixels :func:`upscale_to_file` writes; write the whole scene as a COG
    with :func:`upscale_to_file` (or ``geosr upscale``) instead, which also resumes.

    Parameters
    ----------
%(scene_parameters)s    uncertainty : bool
        Also return the map of the output's predicted error (a model with an uncertainty
        head; every tile then goes to the model, none is routed), as
        :func:`upscale_to_file` writes it.

    Returns
    -------
    xarray.DataArray or (xarray.DataArray, xarray.DataArray)
        A lazy ``(band, y, x)`` DataArray on the input grid refined ``scale`` times (same
        bounds and CRS, transform ``in.transform * Affine.scale(1 / scale)``), in the input
        dtype, with rioxarray's transform, CRS and nodata, ``band`` = input band numbers,
        ``long_name`` = their descriptions. Its dask chunks are the tile grid times ``scale``.
        Masks other than nodata (alpha, internal masks) are not carried: write a COG for those
        (a float scene without nodata is NaN there, its nodata NaN; an integer one is 0 outside
        an ``aoi``, with an ``UnmarkedHolesWarning``).
        With ``uncertainty``, the tuple ``(output, error)``: ``error`` is a lazy ``(y, x)``
        float32 DataArray on the same grid and chunks, the predicted root-mean-square error of
        the output in its raster values (DN), averaged over the bands that went through the
        model, NaN where the output is nodata (:mod:`geosr.uncertainty_map`). Both read the
        same tile tasks: compute them together (``dask.compute(output, error)``) to run each
        tile once.

    Raises
    ------
    geosr.errors.GeosrError
        :class:`~geosr.errors.InputError` for bad arguments or inputs (a classification
        raster with any model but ``nearest``, a network that does not fit, too). Messages
        name options as keyword arguments.

    Examples
    --------
    >>> import geosr, rioxarray
    >>> da = rioxarray.open_rasterio("scene.tif", chunks={"x": 1024, "y": 1024})
    >>> hr = geosr.upscale(da, scale=4, model="bicubic")
    >>> hr.isel(x=slice(0, 512), y=slice(0, 512)).compute()
    >>> hr, error = geosr.upscale(da, scale=4, uncertainty=True)
    """
    with keyword_wording():
        if not isinstance(uncertainty, bool):
            raise InputError(f"uncertainty of geosr.upscale is True or False (the result is then (output, error)), "
                             f"got {uncertainty!r}; upscale_to_file(..., uncertainty='error.tif') writes the map")
        config = _upscale_config(locals())
        from geosr.lazy import lazy_upscale

        files = source_files(source)
        try:
            _check_model(files.paths, config)
        except InputError:
            files.cleanup()
            raise
        return lazy_upscale(files, config)


def upscale_to_file(
    source: Source,
    output: str | os.PathLike,
    *,
    scale: int,
    model: str | Callable | None = None,
    model_metadata: Mapping[str, Any] | None = None,
    captioner: str = DEFAULT_CAPTIONER,
    caption_every: str = "tile",
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    bands: Sequence[int] | None = None,
    bands_to_model: str | Sequence[int] = "all",
    rgb_bands: Sequence[int] | None = None,
    aoi: str | os.PathLike | None = None,
    blend: str = "cosine",
    seed: int = 0,
    device: str | None = None,
    dtype: str | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    batch_size: int | None = None,
    route: str = "auto",
    route_threshold: float | None = None,
    creation_options: Mapping[str, str] | None = None,
    overwrite: bool = False,
    resume: bool = False,
    address: str | None = None,
    connect_timeout: float | None = None,
    local_workers: int | None = None,
    performance_report: str | os.PathLike | None = None,
    progress: bool = False,
    route_map: str | os.PathLike | None = None,
    split: int | None = None,
    detail: float = 0.0,
    uncertainty: str | os.PathLike | None = None,
    lr_consistency: str = "off",
) -> "RunReport":
    """Super-resolve a scene into a Cloud Optimized GeoTIFF at ``output`` (what ``geosr upscale`` runs).

    The run holds OUTPUT's lock, journals its finished cells (a stopped run continues with
    ``resume=True``) and writes nothing at ``output`` unless it succeeds; the captions go to
    ``OUTPUT.captions.geojson``.

    Parameters
    ----------
%(scene_parameters)s    output : path-like
        The COG to write.
    creation_options, overwrite, resume
        GDAL COG creation options, replace OUTPUT, continue a stopped run of the same output
        and settings.
    address, connect_timeout, local_workers
        A dask.distributed scheduler address (``tcp://host:8786``) and how long to wait for it
        (seconds, default 5), or local worker processes.
    performance_report : path-like, optional
        Write dask's performance report (HTML) there.
    progress : bool
        Show a progress bar.
    route_map : path-like, optional
        Also write the route map, one pixel per tile (texture, noise, model or not), a small
        GeoTIFF (:mod:`geosr.route_map`).
    split : int, optional
        Tiled output (:mod:`geosr.tiled_output`): the output grid in blocks of ``split`` x
        ``split`` pixels (a multiple of the COG block size, 512), one COG each, with a VRT and
        a STAC Collection; ``output`` is then a folder (``OUT_DIR/mosaic.vrt``) or a ``.vrt``.
        An ``output`` ending in ``/`` or ``.vrt`` asks for it with blocks the run chooses
        from the output's size (:func:`geosr.tiled_output.auto_block_side`: 1024 to 16384, at
        least 64 blocks where it can).
        An ``output`` ending in ``.zarr`` writes a Zarr store instead (:mod:`geosr.zarr_output`),
        which takes neither ``split`` nor ``creation_options``.
    uncertainty : path-like, optional
        Also write the map of the output's predicted error there (a model with an uncertainty
        head): a float32 single-band COG on the output grid, each pixel the predicted
        root-mean-square error of the output in its raster values (DN), averaged over the bands
        that went through the model; NaN where the output is nodata or masked
        (:mod:`geosr.uncertainty_map`). Every tile then goes to the model (none is routed).
        Single-COG output only (not with ``split``, a ``.zarr`` output or ``route_map``).

    Returns
    -------
    RunReport
        What the run did: tiles processed, skipped, resumed and routed, seconds, output and
        computed megapixels, the captions sidecar.

    Raises
    ------
    geosr.errors.GeosrError
        :class:`~geosr.errors.InputError` for bad arguments or inputs, and the narrow classes
        of :mod:`geosr.errors` for failed runs (``exit_code`` of each is the CLI's). Messages
        name options as keyword arguments (``pass overwrite=True``).

    Examples
    --------
    >>> report = geosr.upscale_to_file("scene.tif", "scene_x4.tif", scale=4)
    >>> report.output, report.megapixels_per_second
    """
    with keyword_wording():
        split = _split_of(output, split, creation_options)
        if isinstance(uncertainty, bool):
            raise InputError(f"uncertainty is the file to write the map to (uncertainty='error.tif'), got {uncertainty!r}")
        config = _upscale_config({**locals(), "uncertainty": uncertainty is not None})
        from geosr.engine import upscale_scene

        if performance_report is not None:
            _require_reports()
        files = source_files(source)
        try:
            _check_model(files.paths, config)
            report = os.fspath(performance_report) if performance_report is not None else None
            with _scheduler_timeout(connect_timeout):
                return upscale_scene(files.paths, output, config, performance_report=report, route_map=route_map,
                                     uncertainty=uncertainty)
        finally:
            files.cleanup()


upscale.__doc__ = upscale.__doc__.replace("%(scene_parameters)s", _SCENE_PARAMETERS)
upscale_to_file.__doc__ = upscale_to_file.__doc__.replace("%(scene_parameters)s", _SCENE_PARAMETERS)


def _upscale_config(arguments: Mapping[str, Any]) -> RunConfig:
    """The :class:`RunConfig` of an :func:`upscale` / :func:`upscale_to_file` call's arguments."""
    run_only = ("source", "output", "connect_timeout", "performance_report", "route_map")
    options = {k: v for k, v in arguments.items() if k not in run_only}
    options["model"], options["model_object"] = _model_spec(options["model"])
    options["model_metadata"] = dict(options["model_metadata"] or {})
    return config_from_options(**options)


def _split_of(output: str | os.PathLike, split: int | None, creation_options: Mapping[str, str] | None) -> int | None:
    """The block size of tiled output, or None for a single COG (:func:`geosr.tiled_output.tiled_split`)."""
    from geosr.tiled_output import tiled_split

    return tiled_split(output, split, creation_options)


def _check_model(files: Sequence[str], config: RunConfig) -> None:
    """Refuse what the model cannot do on these files, before any tile: classes, a network that does not fit."""
    # torch-free `import geosr`: the model modules load when a run starts
    from geosr.models.fit import check_model_fits

    _refuse_classes(files, config.model)
    check_model_fits(files, config)


@contextlib.contextmanager
def _scheduler_timeout(seconds: float | None) -> Iterator[None]:
    """``connect_timeout`` where the scheduler code reads it (dask's config, as the CLI sets it)."""
    if seconds is None:
        yield
        return
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
        raise InputError(f"connect_timeout must be a number of seconds > 0, got {seconds!r}")
    import dask

    with dask.config.set({"geosr.connect-timeout": float(seconds)}):
        yield


def caption(
    source: Source,
    output: str | os.PathLike | None = None,
    *,
    captioner: str = DEFAULT_CAPTIONER,
    caption_every: str = "tile",
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    bands: Sequence[int] | None = None,
    rgb_bands: Sequence[int] | None = None,
    aoi: str | os.PathLike | None = None,
    overwrite: bool = False,
    address: str | None = None,
    local_workers: int | None = None,
) -> dict:
    """Caption the tiles of a scene as :func:`upscale` would.

    Parameters
    ----------
    source : path-like, sequence of path-like, rasterio dataset or xarray.DataArray
        As for :func:`upscale`.
    output : path-like, optional
        Write the captions there as GeoJSON (refused if it exists, unless ``overwrite``).
    captioner, caption_every, tile, overlap, bands, rgb_bands, aoi
        As for :func:`upscale` (captioners read the R, G, B bands).
    overwrite : bool
        Replace ``output`` if it exists.
    address, local_workers
        Caption on a dask.distributed scheduler, or on local worker processes.

    Returns
    -------
    dict
        A GeoJSON FeatureCollection: one feature per processed tile, its core footprint in
        the scene CRS and properties ``tile``, ``row``, ``col``, ``caption`` and the LR
        window (``col_off``, ``row_off``, ``width``, ``height``).

    Raises
    ------
    geosr.errors.GeosrError
        As for :func:`upscale`.
    """
    from geosr.engine import caption_scene

    with keyword_wording():
        if output is None and overwrite:
            raise InputError("overwrite only applies when writing to an output file")
        config = config_from_options(
            captioner=captioner, caption_every=caption_every, tile=tile, overlap=overlap, bands=bands,
            rgb_bands=rgb_bands, aoi=aoi,
            overwrite=overwrite, address=address, local_workers=local_workers,
        )
        files = source_files(source)
        try:
            return caption_scene(files.paths, output, config)
        finally:
            files.cleanup()


def config_from_options(*, scale: int = 4, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP,
                        bands: Sequence[int] | None = None, aoi: str | os.PathLike | None = None,
                        creation_options: Mapping[str, str] | None = None, **options) -> RunConfig:
    """A :class:`RunConfig` from keyword arguments, with the type checks a CLI gets from click."""
    for name, value in (("scale", scale), ("tile", tile), ("overlap", overlap)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{name} must be an integer, got {value!r}")
    if bands is not None:
        if isinstance(bands, (str, bytes)) or not all(isinstance(b, int) and not isinstance(b, bool) for b in bands):
            raise InputError(f"bands must be a sequence of 1-based band numbers, got {bands!r}")
        bands = tuple(bands)
    return RunConfig(
        scale=scale, tiles=TileSpec(tile, overlap), bands=bands, aoi=os.fspath(aoi) if aoi is not None else None,
        creation_options={k.upper(): str(v) for k, v in (creation_options or {}).items()}, **options,
    )


def _model_spec(model: str | Callable | None) -> tuple[str | None, Any]:
    """A model spec, and the object it names when ``model`` is a Python network."""
    if model is None or isinstance(model, str):
        return model, None
    from geosr.models.callable import model_object

    carried = model_object(model)
    return carried.spec, carried


def _refuse_classes(source: Sequence[str], model: str) -> None:
    """A classification raster (land cover, a mask) goes through ``nearest`` only: every other
    model blends neighbouring class codes into codes of no class (:func:`categorical_reason`;
    a mosaic is judged by its first file)."""
    if model == "nearest":
        return
    path = expand_inputs(source)[0]
    reason = categorical_reason(path)
    if reason is not None:
        raise InputError(
            f"{path} looks like a classification raster ({reason}): {model} would blend its classes "
            "into values that are no class; upscale it with --model nearest"
        )


def _require_reports() -> None:
    """dask's performance report draws with bokeh, an optional dependency: say so before the run."""
    try:
        import bokeh  # noqa: F401
    except ImportError as exc:
        raise InputError("a performance report needs bokeh: pip install 'geosr[reports]'") from exc


def python_spelling(text: str) -> str:
    """``text`` with the command line's options spelled as keyword arguments of :func:`upscale`.

    ``pass --overwrite`` -> ``pass overwrite=True``, ``--route off`` -> ``route='off'``,
    ``--co`` -> ``creation_options``, ``--batch-size`` -> ``batch_size``; flags that are no
    keyword of the API are left as they are.
    """
    import inspect

    keywords = set(inspect.signature(upscale_to_file).parameters)

    def spell(match: re.Match) -> str:
        name = match["name"].replace("-", "_")
        return _KEYWORDS.get(match["name"], name if name in keywords else match[0])

    text = _FLAG_WITH_VALUE.sub(lambda m: f"{m['name']}={m['value']!r}", text)
    return _FLAG.sub(spell, text).replace("the same command", "the same call")


@contextlib.contextmanager
def keyword_wording() -> Iterator[None]:
    """Errors leaving the block name options as Python keywords (:func:`python_spelling`),
    unless the command line asked for its own spelling (:func:`command_line_wording`)."""
    try:
        yield
    except GeosrError as exc:
        if _WORDING.get() == "python":
            exc.args = tuple(python_spelling(a) if isinstance(a, str) else a for a in exc.args)
            if hasattr(exc, "__notes__"):
                exc.__notes__ = [python_spelling(n) for n in exc.__notes__]
        raise


@contextlib.contextmanager
def command_line_wording() -> Iterator[None]:
    """Within the block, the API's errors keep the command line's spelling of options."""
    token = _WORDING.set("command line")
    try:
        yield
    finally:
        _WORDING.reset(token)
