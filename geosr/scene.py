"""Open the input of a run: one raster, a .vrt, or a same-grid mosaic of several files.

A :class:`Scene` describes the input without reading pixels: its grid, georeferencing
and band metadata. Tasks re-open ``Scene.source`` themselves (a path, never a dataset
handle), so a scene can be shipped to dask workers.

A mosaic (several files, a directory, a glob) is checked to share one CRS and one pixel
grid, then described by a VRT written to a work folder; the VRT places every file at its
whole-pixel offset, so tiles read across file boundaries like from one raster.

A Sentinel-2 product (its ``.SAFE`` folder or metadata file) or one of GDAL's subdataset names
for it is read through a VRT in the work folder too: its spectral bands with the product's
nodata, scales and offsets (:mod:`geosr.sentinel2`).
"""

from __future__ import annotations

import glob
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence
from xml.sax.saxutils import escape

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.dtypes import dtype_rev, typename_fwd
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.windows import Window

from geosr.attribute_tables import has_thematic_attribute_table
from geosr.band_names import names_a_band
from geosr.errors import GeoreferenceError, GridMismatchError, InputError, read_errors_named
from geosr.local_paths import absolute_input
from geosr.remote import gdal_path, is_remote
from geosr.sentinel2 import is_subdataset, resolve_input, write_vrt
from geosr.writer import check_file_name

__all__ = [
    "Scene", "open_scene", "open_raster", "placed_by", "expand_inputs", "count_non_finite", "categorical_reason",
    "NotGeoreferencedInputWarning", "NonFiniteInputWarning", "AlphaNamedAsDataWarning", "alpha_band_of",
    "alpha_mask_band", "data_bands_of",
]

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".png", ".jpg", ".jpeg", ".img")

# Real-valued pixel types the stretch and the models handle; complex (SAR) data is not imagery
# a super-resolution model was trained on.
SUPPORTED_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")

# Rows read at a time when looking for NaN and infinities (count_non_finite).
NON_FINITE_STRIP_BYTES = 64 * 2**20

# When an integer raster holds classes (land cover codes, masks), not measurements
# (categorical_reason). Measured on synthetic land cover (NLCD-, WorldCover-, MODIS-like codes,
# blocky and organic patches) and 0/1 and 0/255 masks: equal neighbours 0.88-0.98, steps 0.37-1.0
# of the range; on hazy, noisy or smooth low-contrast imagery of 9-50 grey levels: equal
# neighbours 0.10-0.88, steps 0.02-0.19 of the range.
CATEGORICAL_MAX_VALUES = 64  # distinct values per band, at most
CATEGORICAL_MIN_EQUAL = 0.5  # share of equal neighbouring pixels, at least: classes lie in patches
CATEGORICAL_MIN_JUMP = 0.2  # mean step between unequal neighbours / value range, at least: codes jump
CATEGORICAL_MIN_PIXELS = 4096  # valid pixels sampled, at least, to judge at all
CATEGORICAL_WINDOW = 128  # px: the sample is full-resolution windows, neighbours stay neighbours
CATEGORICAL_WINDOWS = 4  # windows per side, spread over the raster

# Mosaic pieces may differ from the common grid by this fraction of a pixel (float noise
# in transforms written by other tools); anything larger is a different grid.
GRID_TOLERANCE_PX = 1e-3


class NotGeoreferencedInputWarning(UserWarning):
    """The input has no CRS / transform: the output will not be georeferenced either."""


class AlphaNamedAsDataWarning(UserWarning):
    """A band labelled alpha is named as a band of imagery (``nir``): it is read as data."""


def alpha_band_of(ds: rasterio.io.DatasetReader, warn: bool = False) -> int | None:
    """The 1-based band of ``ds`` that is a mask, not data: the first whose colour interpretation
    is alpha - unless its description names a band of imagery (``nir``, ``B8``, ``red``): GDAL
    labels the fourth band of every 4-band Byte GeoTIFF alpha unless told otherwise, an RGBN
    scene's NIR too, and that band was dropped from the output (``warn``: say it is read as data)."""
    alpha = _unnamed_alpha(ds.colorinterp, ds.descriptions)
    named = [b for b, ci in enumerate(ds.colorinterp, start=1)
             if ci == ColorInterp.alpha and b < (alpha or ds.count + 1)]  # labelled alpha before it: named
    for b in named if warn else []:
        warnings.warn(f"{ds.name}: band {b} is labelled alpha (GDAL's default for a 4-band Byte GeoTIFF) "
                      f"and named {ds.descriptions[b - 1]!r}: read as data, not as a mask", AlphaNamedAsDataWarning,
                      stacklevel=3)
    return alpha


def _unnamed_alpha(colorinterp: Sequence[ColorInterp], names: Sequence[str | None]) -> int | None:
    """The first 1-based band labelled alpha whose name is no band of imagery (:func:`alpha_band_of`)."""
    return next((b for b, ci in enumerate(colorinterp, start=1)
                 if ci == ColorInterp.alpha and not names_a_band(names[b - 1])), None)


def alpha_mask_band(ds: rasterio.io.DatasetReader) -> int | None:
    """The alpha band whose zeros geosr masks itself, or None where GDAL's masks serve.

    GDAL takes an alpha band for the dataset's mask beside one or three other bands only (grey +
    alpha, RGBA); beside four or more - an RGBN scene warped with ``gdalwarp -dstalpha`` - it
    calls every pixel valid, and the transparent collar's zeros were upscaled as data and entered
    the stretch. A nodata value shadows the alpha, as GDAL reads it.
    """
    return _alpha_gdal_ignores(alpha_band_of(ds), ds.nodata, ds.mask_flag_enums[0])


def _alpha_gdal_ignores(alpha: int | None, nodata: float | None, flags: Sequence[MaskFlags]) -> int | None:
    """``alpha`` where GDAL's mask is not it (:func:`alpha_mask_band`), else None."""
    if alpha is None or nodata is not None or MaskFlags.alpha in flags or MaskFlags.per_dataset in flags:
        return None
    return alpha


def data_bands_of(ds: rasterio.io.DatasetReader) -> list[int]:
    """1-based bands of ``ds`` that hold data: all but :func:`alpha_band_of`'s."""
    alpha = alpha_band_of(ds)
    return [b for b in range(1, ds.count + 1) if b != alpha]


def rgb_uint8_bands(ds: rasterio.io.DatasetReader) -> list[int] | None:
    """The first three data bands of ``ds`` where it is an RGB uint8 image (an alpha, wherever it is,
    is the mask), else None: what the val evaluators and reference scenes read."""
    bands = data_bands_of(ds)
    return bands[:3] if len(bands) >= 3 and data_dtype(ds) == "uint8" else None


def data_dtype(ds: rasterio.io.DatasetReader) -> str:
    """The type of ``ds``'s data bands (one: :func:`_check_one_dtype`), not of its band 1: a VRT
    may put a Byte alpha first, before UInt16 bands, and reading those as Byte clipped every value
    to 255. A dataset of one alpha band and nothing else has that band's."""
    bands = data_bands_of(ds)
    return ds.dtypes[bands[0] - 1] if bands else ds.dtypes[0]


class NonFiniteInputWarning(UserWarning):
    """Pixels of a float input are NaN or infinite without nodata saying so: they are no-data."""


@dataclass(frozen=True)
class Scene:
    """What geosr knows of an input raster, without its pixels.

    Attributes
    ----------
    source : str
        Path rasterio opens to read pixels (the input file, or the mosaic VRT).
    paths : tuple of str
        The user's input files.
    width, height, count : int
        Raster size and band count.
    dtype : str
        Pixel dtype (``uint8``, ``uint16``, ``int16``, ``float32``...).
    crs : rasterio.crs.CRS or None
    transform : affine.Affine
        Pixel-corner to world transform (identity when not georeferenced).
    gcps : tuple
        ``(list of GroundControlPoint, CRS)`` when the raster is GCP-referenced, else ``()``.
    rpcs : rasterio.rpc.RPC or None
    nodata : float or None
        Band 1's nodata value.
    band_nodata : tuple of float or None
        Per band, its own nodata value (GDAL's are per band; rasterio reads a value the band's
        dtype cannot hold, which GDAL's masks ignore, as None).
    alpha_band : int or None
        1-based index of an alpha band, which is a mask, not data.
    has_internal_mask : bool
        A per-dataset mask band (not nodata, not alpha).
    colorinterp, descriptions, scales, offsets, units : tuple
        Per-band metadata carried to the output.
    colormaps : tuple of dict or None
        Per band, its colour table (``{value: (r, g, b, a)}``) where its colour
        interpretation is palette (class rasters), else None; carried to the output.
    band_metadata : tuple of dict
        Per band, its tags by metadata domain (``""`` the default, ``"IMAGERY"``): centre
        wavelengths, band names, a sensor's own keys - what tells other tools (and geosr, on
        a later run) what each band is. Carried to the output; ``STATISTICS_*`` are left out
        (the output computes its own).
    tags : dict
        Dataset tags of the (first) input.
    non_finite : int
        Pixels of a float raster with a NaN or infinite band that its nodata does not
        already mask (0 when the pixels were not checked). They are no-data: masked like
        nodata (:func:`geosr.reading.read_valid`), filled before any model sees them.
    """

    source: str
    paths: tuple[str, ...]
    width: int
    height: int
    count: int
    dtype: str
    crs: CRS | None
    transform: Affine
    gcps: tuple = ()
    rpcs: object | None = None
    nodata: float | None = None
    band_nodata: tuple[float | None, ...] = ()
    alpha_band: int | None = None
    has_internal_mask: bool = False
    colorinterp: tuple[ColorInterp, ...] = ()
    descriptions: tuple[str | None, ...] = ()
    scales: tuple[float, ...] = ()
    offsets: tuple[float, ...] = ()
    units: tuple[str | None, ...] = ()
    colormaps: tuple[dict | None, ...] = ()
    band_metadata: tuple[dict[str, dict[str, str]], ...] = ()
    tags: dict = field(default_factory=dict)
    non_finite: int = 0

    @property
    def georeferenced(self) -> bool:
        """True when the raster has a CRS and an affine transform, GCPs or RPCs."""
        return bool(self.crs) or bool(self.gcps) or self.rpcs is not None

    @property
    def data_bands(self) -> tuple[int, ...]:
        """1-based indexes of the bands that hold data (all but an alpha band)."""
        return tuple(b for b in range(1, self.count + 1) if b != self.alpha_band)

    @property
    def masked(self) -> bool:
        """True when some pixels may be invalid (nodata, alpha, internal mask, NaN or infinity)."""
        return self.nodata is not None or self.alpha_band is not None or self.has_internal_mask or self.non_finite > 0

    @property
    def is_mosaic(self) -> bool:
        return len(self.paths) > 1


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """Turn the user's INPUT arguments into a sorted list of raster files.

    Directories contribute their raster files (non-recursive); glob patterns are expanded
    (for shells that do not). Objects in S3 or behind a URL (``s3://bucket/key.tif``,
    ``https://...``, ``/vsis3/...``: :mod:`geosr.remote`) are taken as named: GDAL says
    whether they exist when the scene is opened. A Sentinel-2 product (a ``.SAFE`` folder,
    its ``MTD_MSIL2A.xml`` / ``MTD_MSIL1C.xml``, its zip) becomes the name of its 10 m subdataset, and a
    subdataset name (``SENTINEL2_L2A:/p/MTD_MSIL2A.xml:20m:EPSG_32633``) is checked and kept
    (:func:`geosr.sentinel2.resolve_input`). Raises :class:`InputError` naming what matched
    nothing or does not open.
    """
    files: list[str] = []
    for item in inputs:
        text = os.fspath(item)
        product = resolve_input(text) if not is_remote(text) or is_subdataset(text) else None
        if product is not None:
            files.append(product)
        elif is_remote(text):
            if glob.has_magic(text) or text.endswith("/"):
                raise InputError(f"input {text!r}: folders and patterns in object storage are not expanded; "
                                 "name each object (s3://bucket/a.tif s3://bucket/b.tif)")
            files.append(text)
        elif os.path.isdir(text):
            found = sorted(
                str(p) for p in Path(text).iterdir() if p.suffix.lower() in RASTER_SUFFIXES
            )
            if not found:
                raise InputError(f"directory {text!r} holds no raster files ({', '.join(RASTER_SUFFIXES)})")
            files.extend(found)
        elif os.path.exists(text):
            files.append(text)
        elif glob.has_magic(text):
            found = sorted(glob.glob(text))
            if not found:
                raise InputError(f"pattern {text!r} matches no file")
            files.extend(found)
        elif text.startswith("/vsi"):
            raise InputError(f"input {text!r}: GDAL's virtual file systems other than /vsis3/ and /vsicurl/ are not "
                             "read directly; extract the file, or name it as a source in a .vrt and pass that")
        else:
            raise InputError(f"input {text!r} does not exist")
    # The same file given twice would be summed twice in a mosaic.
    unique = list(dict.fromkeys(f if is_remote(f) or is_subdataset(f) else absolute_input(f) for f in files))
    if not unique:
        raise InputError("no input given")
    for f in unique:  # what a folder or pattern found too, not only the names given
        check_file_name(f)
    return unique


#: the folder of a run's work folder that holds the VRTs geosr reads its input through
INPUT_VRTS = ".geosr-inputs"


def open_scene(
    inputs: Sequence[str | os.PathLike], workdir: str | os.PathLike | None = None, check_pixels: bool = True
) -> Scene:
    """Describe the input(s) of a run.

    Parameters
    ----------
    inputs : sequence of path-like
        One raster or .vrt, or several same-grid rasters / a directory / a glob (a mosaic); a
        Sentinel-2 product or subdataset (:func:`expand_inputs`).
    workdir : path-like, optional
        Where a mosaic's or a Sentinel-2 product's VRT is written. Required for them.
    check_pixels : bool
        Read a float raster's pixels for NaN and infinities (:attr:`Scene.non_finite`, with
        a :class:`NonFiniteInputWarning` when there are some). ``geosr info`` describes
        metadata only and skips it.

    Raises
    ------
    InputError
        Missing file, unreadable raster, or a mosaic needing ``workdir``.
    GridMismatchError
        Mosaic pieces on different CRS, resolution, band layout or pixel grid.
    """
    files = expand_inputs(inputs)
    if workdir is None and (len(files) > 1 or is_subdataset(files[0])):
        what = "a mosaic of several inputs" if len(files) > 1 else "a Sentinel-2 product"
        raise InputError(f"{what} needs a work directory for its VRT")
    # in a folder of their own: a run's work folder also stages its output, which may be named
    # mosaic.vrt (a tiled output's VRT) - and the tiles read the input through this one
    vrts = Path(workdir) / INPUT_VRTS if workdir is not None else None
    # a Sentinel-2 subdataset is read through its VRT (its spectral bands, nodata, scales, offsets)
    readable = [str(write_vrt(f, vrts / f"sentinel2-{i}.vrt")) if is_subdataset(f) else f
                for i, f in enumerate(files, start=1)]
    if len(files) == 1:
        return _describe(readable[0], files, check_pixels)
    vrt = _write_mosaic_vrt(readable, vrts)
    return _describe(str(vrt), files, check_pixels)


def open_raster(source: str) -> rasterio.io.DatasetReader:
    """Open ``source`` for reading without GDAL's not-georeferenced warning.

    :func:`open_scene` warns the user once per run; tasks re-open the source many times.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        return rasterio.open(source)


def count_non_finite(ds: rasterio.io.DatasetReader) -> int:
    """Pixels of ``ds`` with a NaN or infinite band, other than those its nodata masks.

    Every pixel is read (in strips of about 64 MB): one NaN or inf pixel is enough to make a
    dark spot, and a decimated read would miss it. Integer rasters hold none and are not read.
    """
    dtype = np.dtype(data_dtype(ds))
    if not np.issubdtype(dtype, np.floating):
        return 0
    nan_is_nodata = ds.nodata is not None and math.isnan(ds.nodata)
    bands = data_bands_of(ds) or list(range(1, ds.count + 1))  # not a Byte alpha beside them: a read of two types fails
    rows = max(1, NON_FINITE_STRIP_BYTES // (ds.width * len(bands) * dtype.itemsize))
    found = 0
    for top in range(0, ds.height, rows):
        strip = Window(0, top, ds.width, min(rows, ds.height - top))
        with read_errors_named(ds.name, strip, what="a check for NaN and infinities"):
            block = ds.read(bands, window=strip)
        # NaN as the declared nodata is a band's own, as GDAL reads it (geosr.reading.read_valid)
        bad = np.isinf(block).any(axis=0) if nan_is_nodata else ~np.isfinite(block).all(axis=0)
        found += int(np.count_nonzero(bad))
    return found


def categorical_reason(path: str) -> str | None:
    """Why the raster at ``path`` holds classes (land cover, a mask) rather than measurements,
    or None when it does not look like it.

    A colour table (palette indices) or a thematic raster attribute table (wherever GDAL finds it:
    a ``.vrt``'s XML, an ``.img``, an ``.aux.xml``; :mod:`geosr.attribute_tables`) says so.
    Otherwise an integer raster is judged on full-resolution windows (neighbours must stay
    neighbours): it holds classes when every data band has 2 to
    :data:`CATEGORICAL_MAX_VALUES` distinct values, lies in uniform patches (at least
    :data:`CATEGORICAL_MIN_EQUAL` of neighbouring pixels equal) and jumps between them (the
    mean step between unequal neighbours at least :data:`CATEGORICAL_MIN_JUMP` of the value
    range). Hazy or noisy imagery with few grey levels steps by a level or two; float,
    constant and small rasters (under :data:`CATEGORICAL_MIN_PIXELS` valid pixels) are
    taken as measurements.

    Raises
    ------
    InputError
        ``path`` does not open as a raster.
    """
    try:
        ds = open_raster(path)
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"cannot open {path!r} as a raster: {exc}") from exc
    with ds:
        if not ds.count:
            return None  # a container of subdatasets: opening the scene says so
        _check_one_dtype(path, ds.dtypes, ds.colorinterp)  # before reading samples of every band
        _check_has_data(path, ds)
        if ColorInterp.palette in ds.colorinterp:
            return "a colour table"
        # a remote file's is read by rasterio's session only; its .aux.xml was never fetched either
        if not is_remote(path) and has_thematic_attribute_table(path):
            return "a raster attribute table"
        if not np.issubdtype(np.dtype(data_dtype(ds)), np.integer):
            return None
        bands = data_bands_of(ds)
        samples = []
        for window in _sample_windows(ds.width, ds.height):
            with read_errors_named(path, window, what="a sample to look for classes"), warnings.catch_warnings():
                # nodata + alpha: GDAL uses the nodata value, as geosr does (geosr.reading.read_valid)
                warnings.simplefilter("ignore", rasterio.errors.NodataShadowWarning)
                samples.append(ds.read(bands, window=window, masked=True))
    counts = []
    for b in range(len(bands)):
        values, equal, jump = _patch_statistics([sample[b] for sample in samples])
        distinct = len(np.unique(values))
        if values.size < CATEGORICAL_MIN_PIXELS or not 2 <= distinct <= CATEGORICAL_MAX_VALUES:
            return None
        if equal < CATEGORICAL_MIN_EQUAL or jump < CATEGORICAL_MIN_JUMP * float(np.ptp(values)):
            return None
        counts.append(distinct)
    return f"{max(counts)} distinct values in uniform patches"


def _sample_windows(width: int, height: int) -> list[Window]:
    """Up to :data:`CATEGORICAL_WINDOWS` x :data:`CATEGORICAL_WINDOWS` windows of
    :data:`CATEGORICAL_WINDOW` px, spread evenly over the raster (the whole of a small one)."""
    def starts(length: int, size: int) -> np.ndarray:
        count = min(CATEGORICAL_WINDOWS, -(-length // size))  # no more windows than it takes to cover it
        return np.linspace(0, length - size, count).round().astype(int)

    size_x, size_y = min(width, CATEGORICAL_WINDOW), min(height, CATEGORICAL_WINDOW)
    return [Window(int(c), int(r), size_x, size_y) for r in starts(height, size_y) for c in starts(width, size_x)]


def _patch_statistics(samples: Sequence[np.ma.MaskedArray]) -> tuple[np.ndarray, float, float]:
    """Over ``[h, w]`` masked samples of one band: the valid values, the share of equal pairs among
    valid neighbouring pixels (across and down), and the mean step between unequal ones."""
    values, steps = [], []
    for a in samples:
        values.append(a.compressed().astype(np.int64))
        for x, y in ((a[:, 1:], a[:, :-1]), (a[1:], a[:-1])):
            both = ~(np.ma.getmaskarray(x) | np.ma.getmaskarray(y))
            steps.append(np.abs(x.data[both].astype(np.int64) - y.data[both]))
    values_all, steps_all = np.concatenate(values), np.concatenate(steps)
    if steps_all.size == 0:
        return values_all, 0.0, 0.0
    unequal = steps_all[steps_all > 0]
    return values_all, 1.0 - unequal.size / steps_all.size, float(unequal.mean()) if unequal.size else 0.0


def _describe(source: str, paths: Sequence[str], check_pixels: bool = True) -> Scene:
    try:
        ds = open_raster(source)
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"cannot open {source!r} as a raster: {exc}") from exc
    with ds:
        if not ds.count:  # a container (HDF, NetCDF, a product GDAL opens as subdatasets)
            listed = "".join(f"\n  {s}" for s in ds.subdatasets)
            if ds.subdatasets and not all(is_subdataset(s) for s in ds.subdatasets):
                # geosr takes Sentinel-2's subdataset names only (their files are known for --resume)
                raise InputError(f"{paths[0]} holds no bands of its own; geosr reads files, not these subdatasets: "
                                 f"copy one to a GeoTIFF first (gdal_translate SUBDATASET one.tif) and pass that:{listed}")
            raise InputError(f"{paths[0]} holds no bands of its own" + (
                f"; name one of its subdatasets as INPUT:{listed}" if listed else ""))
        _check_one_dtype(paths[0], ds.dtypes, ds.colorinterp)
        _check_has_data(paths[0], ds)
        dtype = data_dtype(ds)
        if dtype not in SUPPORTED_DTYPES:
            how = ("to its amplitude as float32" if np.dtype(dtype).kind == "c" else
                   "gdal_translate -ot Float32, or -ot Int32 / UInt32 where its values fit")
            raise InputError(f"{paths[0]} has {dtype} pixels: geosr reads {', '.join(SUPPORTED_DTYPES)}; convert it first, {how}")
        gcps, gcp_crs = ds.gcps
        rpcs = ds.rpcs
        transform = ds.transform
        if not transform.is_identity and gcps:
            gcps = []  # a real transform wins; GDAL reports both for some files
        if not ds.crs and not gcps and rpcs is None:
            warnings.warn(
                f"{paths[0]} has no CRS or georeferencing: processed in pixel space, "
                "and the output will not be georeferenced"
                if transform.is_identity else
                f"{paths[0]} has a geotransform but no CRS: the output gets the transform refined "
                "to its grid, and no CRS (assign one with gdal_edit.py -a_srs, to input or output)",
                NotGeoreferencedInputWarning,
                stacklevel=3,
            )
        if transform.is_identity and (gcps or rpcs is not None) and not ds.crs:
            transform = Affine.identity()
        alpha = alpha_band_of(ds, warn=True)
        flags = ds.mask_flag_enums[0] if ds.count else []
        internal_mask = MaskFlags.per_dataset in flags and MaskFlags.alpha not in flags and alpha is None
        non_finite = count_non_finite(ds) if check_pixels else 0
        if non_finite:
            warnings.warn(
                f"{paths[0] if len(paths) == 1 else 'the mosaic'}: {non_finite} pixels are NaN or infinite "
                f"(of {ds.width * ds.height}): treated as no-data, masked in the output",
                NonFiniteInputWarning,
                stacklevel=3,
            )
        return Scene(
            source=source,
            paths=tuple(paths),
            width=ds.width,
            height=ds.height,
            count=ds.count,
            dtype=dtype,
            crs=ds.crs if ds.crs else (gcp_crs if gcps else None),
            transform=transform,
            gcps=(tuple(gcps), gcp_crs) if gcps else (),
            rpcs=rpcs,
            nodata=ds.nodata,
            band_nodata=tuple(ds.nodatavals),
            alpha_band=alpha,
            has_internal_mask=internal_mask,
            colorinterp=tuple(ds.colorinterp),
            descriptions=tuple(ds.descriptions),
            scales=tuple(ds.scales),
            offsets=tuple(ds.offsets),
            units=tuple(ds.units),
            colormaps=tuple(_colormap(ds, b) for b in range(1, ds.count + 1)),
            band_metadata=tuple(_band_metadata(ds, b) for b in range(1, ds.count + 1)),
            tags=dict(ds.tags()),
            non_finite=non_finite,
        )


#: The band metadata domains carried to the output (see :attr:`Scene.band_metadata`).
BAND_METADATA_DOMAINS = ("", "IMAGERY")


def _colormap(ds, band: int) -> dict | None:
    """Band ``band``'s colour table, or None (not a palette band, or it has none)."""
    if ds.colorinterp[band - 1] != ColorInterp.palette:
        return None
    try:
        return ds.colormap(band)
    except ValueError:  # palette-tagged without a table
        return None


def placed_by(ds: rasterio.io.DatasetReader) -> str | None:
    """``"GCPs"`` or ``"RPCs"`` for a raster georeferenced only by them (no geotransform), else None:
    GCPs beside a real transform are ignored, as a run ignores them (:func:`_describe`)."""
    if not ds.transform.is_identity:
        return None
    return "GCPs" if ds.gcps[0] else "RPCs" if ds.rpcs is not None else None


def _band_metadata(ds, band: int) -> dict[str, dict[str, str]]:
    """Band ``band``'s tags by domain, statistics left out; empty domains dropped."""
    out = {}
    for domain in BAND_METADATA_DOMAINS:
        tags = {k: v for k, v in ds.tags(band, ns=domain or None).items() if not k.startswith("STATISTICS_")}
        if tags:
            out[domain] = tags
    return out


def _write_mosaic_vrt(files: Sequence[str], workdir: Path) -> Path:
    """Check that ``files`` share one grid and write a VRT that mosaics them."""
    infos = []
    for f in files:
        try:
            with rasterio.open(f) as ds:
                flags = ds.mask_flag_enums[0] if ds.count else []
                infos.append(
                    dict(
                        path=f, crs=ds.crs, transform=ds.transform, width=ds.width,
                        height=ds.height, count=ds.count, dtypes=ds.dtypes, nodata=ds.nodata,
                        band_nodata=tuple(ds.nodatavals), colorinterp=ds.colorinterp, descriptions=ds.descriptions,
                        scales=ds.scales, offsets=ds.offsets, units=ds.units, flags=flags,
                        tags=dict(ds.tags()), placed_by=placed_by(ds),
                        band_tags=[_band_metadata(ds, b) for b in range(1, ds.count + 1)],
                        colormaps=[_colormap(ds, b) for b in range(1, ds.count + 1)],
                    )
                )
        except rasterio.errors.RasterioIOError as exc:
            raise InputError(f"cannot open mosaic piece {f!r}: {exc}") from exc
    # a band's name is the first piece's that gives one (a piece re-exported without names is the
    # same product): the mosaic carries it, and it says which alpha-labelled band is data
    named_as = [next((i["descriptions"][b] for i in infos if b < i["count"] and i["descriptions"][b]), None)
                for b in range(max(i["count"] for i in infos))]
    for n, info in enumerate(infos):
        info["names"] = tuple(named_as[:info["count"]])
        _read_alpha_as_geosr_does(info, workdir / f"piece{n}.vrt")

    first = infos[0]
    _check_one_dtype(first["path"], first["dtypes"], first["colorinterp"])  # geosr reads one type of data band
    t0: Affine = first["transform"]
    for info in infos:
        if info["placed_by"]:  # "has no CRS" said of a piece whose GCPs have one
            raise GeoreferenceError(f"mosaic piece {info['path']!r} is georeferenced by {info['placed_by']}, not a "
                                    "geotransform: pieces are placed on one grid by theirs; warp each first (gdalwarp)")
    if not first["crs"]:
        raise GeoreferenceError(f"mosaic piece {first['path']!r} has no CRS: pieces are placed by their georeferencing")
    if t0.b != 0 or t0.d != 0:
        raise GridMismatchError("mosaics of rotated rasters are not supported: build a VRT with GDAL and pass it")
    for info in infos[1:]:
        name = info["path"]
        if info["crs"] != first["crs"]:
            raise GridMismatchError(
                f"mosaic pieces are on different CRS: {first['path']} is {first['crs'].to_string()}, "
                f"{name} is {info['crs'].to_string() if info['crs'] else 'none'}; reproject them to one grid first"
            )
        if (info["count"], info["dtypes"]) != (first["count"], first["dtypes"]):  # every band's, not band 1's
            raise GridMismatchError(
                f"mosaic pieces differ in bands/dtype: {first['path']} has {first['count']} bands of "
                f"{', '.join(dict.fromkeys(first['dtypes']))}, {name} {info['count']} of {', '.join(dict.fromkeys(info['dtypes']))}"
            )
        _check_same_values(first, info)
        _check_same_band_order(first, info)
        if info["alpha"] != first["alpha"]:  # one piece's mask would be another's data band, or the reverse
            said = [f"{i['path']} {'band ' + str(i['alpha']) if i['alpha'] else 'none'}" for i in (first, info)]
            band = first["alpha"] or info["alpha"]
            raise GridMismatchError(
                f"mosaic pieces disagree on which band is alpha (the mask): {said[0]}, {said[1]}; label it in each "
                f"piece the same (gdal_edit.py -colorinterp_{band} alpha, or undefined where band {band} is data)")
        t: Affine = info["transform"]
        for got, want, what in ((t.a, t0.a, "pixel width"), (t.e, t0.e, "pixel height")):
            if (got > 0) != (want > 0):  # the same size, one piece flipped: "10.0 vs 10.0" said nothing
                flipped = name if (what == "pixel height") == (got > 0) else first["path"]
                raise GridMismatchError(
                    f"mosaic pieces are not on one pixel grid: {flipped} is "
                    f"{'south-up' if what == 'pixel height' else 'mirrored east-west'} ({what} {got!r} in {name}, "
                    f"{want!r} in {first['path']}); warp it north-up first (gdalwarp)")
            if abs(got - want) * max(info["width"], info["height"]) > GRID_TOLERANCE_PX * abs(want):
                raise GridMismatchError(
                    f"mosaic pieces are not on one pixel grid: {what} of {name} is {abs(got)!r}, "
                    f"of {first['path']} {abs(want)!r}; resample them to one grid (gdalwarp -tap) first"
                )
        if t.b != 0 or t.d != 0:
            raise GridMismatchError(f"mosaic piece {name} is rotated; pieces must share one north-up grid")
        for off, res, what in ((t.c - t0.c, t0.a, "x"), (t.f - t0.f, t0.e, "y")):
            px = off / res
            if abs(px - round(px)) > GRID_TOLERANCE_PX:
                raise GridMismatchError(
                    f"mosaic piece {name} is offset by {px:.4f} px in {what} from {first['path']}: "
                    "pieces must align on whole pixels of one grid"
                )

    # Union extent on the common grid, in pixels of the first piece.
    offsets = [
        (round((i["transform"].c - t0.c) / t0.a), round((i["transform"].f - t0.f) / t0.e)) for i in infos
    ]
    same: dict = {}
    for o, info in zip(offsets, infos):
        # one footprint twice where the later hides the earlier whole (no nodata, no mask to see
        # through): bands of one scene, one file a band. With nodata or masks they composite (one
        # tile from two orbits); one file under two names (a link) is the same pixels.
        earlier = same.setdefault((*o, info["width"], info["height"]), info)
        if earlier is not info and first["nodata"] is None and not (earlier["masked"] or info["masked"]) \
                and os.path.realpath(earlier["path"]) != os.path.realpath(info["path"]):
            raise GridMismatchError(
                f"mosaic pieces {earlier['path']} and {info['path']} cover the same ground: a mosaic places pieces side "
                "by side and the later would hide the earlier. Bands of one scene, one file a band (Landsat's "
                "*_B2.TIF...)? Stack them as bands: gdalbuildvrt -separate stack.vrt FILES, and pass stack.vrt")
    xmin = min(o[0] for o in offsets)
    ymin = min(o[1] for o in offsets)
    xmax = max(o[0] + i["width"] for o, i in zip(offsets, infos))
    ymax = max(o[1] + i["height"] for o, i in zip(offsets, infos))
    origin = t0 @ (xmin, ymin)
    gt = (origin[0], t0.a, 0.0, origin[1], 0.0, t0.e)

    nodata = first["nodata"]
    placed = [(ox - xmin, oy - ymin, info) for (ox, oy), info in zip(offsets, infos)]
    # gaps between pieces without nodata are masked (as pieces' masks are): they read as 0 otherwise,
    # upscaled as data and ringing into the pieces' edge pixels
    masked = any(i["masked"] for i in infos) or (nodata is None and _has_gaps(placed))
    # the SRS without dataAxisToSRSAxisMapping: GDAL then takes the traditional GIS order the
    # GeoTransform is in (x = easting or longitude); "1,2" had GDAL tools read an EPSG:4326
    # mosaic's x as latitude
    lines = [
        f'<VRTDataset rasterXSize="{xmax - xmin}" rasterYSize="{ymax - ymin}">',
        f'  <SRS>{escape(first["crs"].to_wkt())}</SRS>',
        f"  <GeoTransform>{', '.join(repr(float(v)) for v in gt)}</GeoTransform>",
        *_metadata_lines(_common([i["tags"] for i in infos]), "  "),
    ]
    for b in range(1, first["count"] + 1):
        # each band's own type: an alpha first (Byte) is not the data bands' type
        dtype = typename_fwd[dtype_rev[first["dtypes"][b - 1]]]
        lines.append(f'  <VRTRasterBand dataType="{dtype}" band="{b}">')
        if first["band_nodata"][b - 1] is not None:  # each band's own: the run checks they are one
            lines.append(f"    <NoDataValue>{_nodata_text(first['band_nodata'][b - 1])}</NoDataValue>")
        ci = first["colorinterp"][b - 1]
        lines.append(f"    <ColorInterp>{ci.name.capitalize()}</ColorInterp>")
        if first["colormaps"][b - 1]:  # a palette band's classes keep their colours (the pieces' one table)
            lines += _color_table_lines(first["colormaps"][b - 1])
        if first["names"][b - 1]:  # the first piece's that gives one
            lines.append(f"    <Description>{escape(first['names'][b - 1])}</Description>")
        for domain in BAND_METADATA_DOMAINS:  # wavelengths, band names: what every piece says
            tags = _common([i["band_tags"][b - 1].get(domain, {}) for i in infos])
            lines += _metadata_lines(tags, "    ", domain)
        if first["offsets"][b - 1] != 0.0 or first["scales"][b - 1] != 1.0:
            lines += [f"    <Offset>{first['offsets'][b - 1]!r}</Offset>", f"    <Scale>{first['scales'][b - 1]!r}</Scale>"]
        if first["units"][b - 1]:
            lines.append(f"    <UnitType>{escape(first['units'][b - 1])}</UnitType>")
        # ComplexSource honours each piece's nodata (and, with UseMaskBand, its mask or alpha),
        # so a piece's collar never paints over its neighbour's valid pixels where pieces overlap
        lines += _sources(placed, str(b), nodata_of=b, use_mask=masked)
        lines.append("  </VRTRasterBand>")
    if masked:
        # the pieces' masks (alpha, internal mask, or the all-valid or nodata mask GDAL gives the
        # others), each painted where it is valid: uncovered and masked pixels stay 0, masked.
        # A piece with only nodata has a mask per band: all of them painted, so a pixel is valid
        # where any band is (as GDAL's dataset mask of that piece; band 1's alone would drop the
        # other bands of a pixel whose first band holds the nodata value).
        sources = []
        for piece in placed:
            per_band = any(v is not None for v in piece[2]["band_nodata"]) and not piece[2]["masked"]
            data = [b for b in range(1, first["count"] + 1) if b != piece[2]["alpha"]]  # an alpha's own nodata is not data's
            for band in data if per_band else [1]:
                sources += _sources([piece], f"mask,{band}", nodata_of=None, use_mask=False, skip_zero=True)
        lines += ["  <MaskBand>", '    <VRTRasterBand dataType="Byte">', *("  " + line for line in sources),
                  "    </VRTRasterBand>", "  </MaskBand>"]
    lines.append("</VRTDataset>")

    workdir.mkdir(parents=True, exist_ok=True)
    vrt = workdir / "mosaic.vrt"
    vrt.write_text("\n".join(lines) + "\n")
    return vrt


def _has_gaps(placed: Sequence[tuple[int, int, dict]]) -> bool:
    """Whether the pieces ``(column, row, info)`` leave part of their bounding box uncovered (overlaps
    counted once: summed areas hid a gap behind an overlap)."""
    xs = np.unique([v for x, _, i in placed for v in (x, x + i["width"])])
    ys = np.unique([v for _, y, i in placed for v in (y, y + i["height"])])
    covered = np.zeros((len(ys) - 1, len(xs) - 1), bool)  # the cells between the pieces' edges
    for x, y, i in placed:
        covered[np.searchsorted(ys, y):np.searchsorted(ys, y + i["height"]),
                np.searchsorted(xs, x):np.searchsorted(xs, x + i["width"])] = True
    return not covered.all()


def _check_one_dtype(path: str, dtypes: Sequence[str], colorinterp: Sequence[ColorInterp]) -> None:
    """Refuse data bands of different types (a ``gdalbuildvrt -separate`` stack of uint8 imagery
    and a float DEM): geosr reads and writes one. An alpha band, Byte beside any type with
    ``-addalpha``, is a mask, not data."""
    if len({t for t, ci in zip(dtypes, colorinterp) if ci != ColorInterp.alpha}) > 1:
        said = ", ".join(f"band {b}: {t}" for b, t in enumerate(dtypes, start=1))
        raise InputError(f"{path}'s bands are of different types ({said}); geosr reads one: convert them "
                         "to one (gdal_translate -ot Float32) or upscale them apart")


def _check_has_data(path: str, ds: rasterio.io.DatasetReader) -> None:
    """Refuse a raster whose only band is labelled alpha (a mask exported with ExtraSamples=alpha):
    it has no data band for geosr to read (it was "No indexes to read", exit 1)."""
    if not data_bands_of(ds):
        raise InputError(f"{path}'s only band is labelled alpha, a mask, so it has no data to upscale; if it holds "
                         "data, label it gray (gdal_edit.py -colorinterp_1 gray)")


def _color_table_lines(colormap: dict) -> list[str]:
    """A VRT band's ``<ColorTable>``: entries 0 to the largest index, absent ones transparent black."""
    entries = [colormap.get(i, (0, 0, 0, 0)) for i in range(max(colormap) + 1)]
    return ["    <ColorTable>", *(f'      <Entry c1="{r}" c2="{g}" c3="{b}" c4="{a}"/>' for r, g, b, a in entries),
            "    </ColorTable>"]


def _check_same_values(first: dict, info: dict) -> None:
    """Refuse mosaic pieces whose pixels mean other things: nodata on one and not on another, or
    other nodata values, band by band (the mosaic's band has one: the other piece's gaps, or its
    pixels of that value, would be misread), other scales or offsets (other units for the same numbers)."""
    # gdal_edit.py -a_nodata sets every band's: the way out only where each piece has one value
    one_for_all = _one_value(first["band_nodata"]) and _one_value(info["band_nodata"])
    for band, (ours, theirs) in enumerate(zip(first["band_nodata"], info["band_nodata"]), start=1):
        if (ours is None) != (theirs is None):
            (has, value), lacks = ((first, ours), info) if theirs is None else ((info, theirs), first)
            fix = (f"give it the same (gdal_edit.py -a_nodata {_nodata_text(value)} {lacks['path']}) or build"
                   if one_for_all else "build")
            raise GridMismatchError(
                f"mosaic pieces disagree on nodata{'' if band == 1 else f' in band {band}'}: {has['path']} has "
                f"{_nodata_text(value)}, {lacks['path']} none; {fix} a VRT with gdalbuildvrt "
                "(-srcnodata and -vrtnodata take one value per band) and pass that"
            )
        if not same_nodata(ours, theirs):
            fix = "give them one (gdal_edit.py -a_nodata ...) or build" if one_for_all else "build"
            raise GridMismatchError(
                f"mosaic pieces disagree on nodata{'' if band == 1 else f' in band {band}'}: {first['path']} has "
                f"{_nodata_text(ours)}, {info['path']} {_nodata_text(theirs)} (the mosaic has one: the other's "
                f"pixels of that value would read as gaps); {fix} a VRT with gdalbuildvrt (-srcnodata and "
                "-vrtnodata take one value per band) and pass that"
            )
    for band, (ours, theirs) in enumerate(zip(first["colormaps"], info["colormaps"]), start=1):
        if ours != theirs:  # index 5 forest in one piece, water in the other: one mosaic, one meaning
            raise GridMismatchError(
                f"mosaic pieces have other colour tables{'' if band == 1 else f' in band {band}'}: {first['path']} "
                f"and {info['path']} (the same class code would mean other classes); give them one legend first")
    if (info["scales"], info["offsets"]) != (first["scales"], first["offsets"]):
        raise GridMismatchError(
            f"mosaic pieces differ in band scales/offsets: {first['path']} has {first['scales']} / "
            f"{first['offsets']}, {info['path']} {info['scales']} / {info['offsets']}; rescale them to one first"
        )


def _check_same_band_order(first: dict, info: dict) -> None:
    """Refuse mosaic pieces whose bands say they are other things: a colour interpretation, or a
    description, that both pieces give a band and that differs (R, G, B in one and B, G, R in
    the other). The mosaic combines bands by number and labels them as the first piece does: one
    piece's blue would be written as red. Undefined and gray interpretations say nothing."""
    silent = (ColorInterp.undefined, ColorInterp.gray)
    for band, (ours, theirs) in enumerate(zip(first["colorinterp"], info["colorinterp"]), start=1):
        if ours not in silent and theirs not in silent and ours != theirs:
            raise GridMismatchError(
                f"mosaic pieces differ in band order: band {band} of {first['path']} is {ours.name}, of "
                f"{info['path']} {theirs.name}; reorder one (gdal_translate -b ...) so that each band holds "
                "the same thing in every piece"
            )
    for band, (ours, theirs) in enumerate(zip(first["descriptions"], info["descriptions"]), start=1):
        if ours and theirs and ours.strip().lower() != theirs.strip().lower():
            raise GridMismatchError(
                f"mosaic pieces differ in band order: band {band} of {first['path']} is described {ours!r}, of "
                f"{info['path']} {theirs!r}; reorder one (gdal_translate -b ...), or give both the same "
                "descriptions, so that each band holds the same thing in every piece"
            )


def _one_value(nodata: Sequence[float | None]) -> bool:
    """Whether a piece's bands all hold one nodata (or none): what gdal_edit.py -a_nodata sets."""
    return all(same_nodata(nodata[0], v) for v in nodata)


def same_nodata(a: float | None, b: float | None) -> bool:
    """Whether two nodata values are one: both none, both NaN (NaN != NaN), or equal."""
    if a is None or b is None:
        return a is b
    return (math.isnan(a) and math.isnan(b)) or a == b


def _common(mappings: Sequence[dict[str, str]]) -> dict[str, str]:
    """The items every one of ``mappings`` has, with the same value (what all pieces say)."""
    return {k: v for k, v in mappings[0].items() if all(m.get(k) == v for m in mappings[1:])}


def _metadata_lines(tags: dict[str, str], indent: str, domain: str = "") -> list[str]:
    if not tags:
        return []
    opening = f'<Metadata domain="{escape(domain)}">' if domain else "<Metadata>"
    items = [f'{indent}  <MDI key="{escape(k, {chr(34): "&quot;"})}">{escape(v)}</MDI>' for k, v in tags.items()]
    return [indent + opening, *items, indent + "</Metadata>"]


def _read_alpha_as_geosr_does(info: dict, path: Path) -> None:
    """Set a mosaic piece's ``alpha`` (:func:`alpha_band_of`, by the mosaic's band ``names``), ``masked``
    and ``source``: the piece, or a VRT of it at ``path`` where GDAL's alpha and geosr's differ. An
    alpha GDAL leaves as data (beside 4+ bands, or first: :func:`alpha_mask_band`) is made the piece's
    mask - else its transparent collar painted over its neighbour's pixels - and a band GDAL takes for
    the mask that is named as data (an RGBN's NIR) is not: its zeros were masked."""
    info["alpha"] = _unnamed_alpha(info["colorinterp"], info["names"])
    flags = info["flags"]
    mask = _alpha_gdal_ignores(info["alpha"], info["nodata"], flags)
    named = (list(info["colorinterp"]).index(ColorInterp.alpha) + 1
             if MaskFlags.alpha in flags and info["alpha"] is None else None)
    # an internal mask or an alpha band: which pixels hold data is the mask's
    info["masked"] = mask is not None or (named is None and (MaskFlags.alpha in flags or MaskFlags.per_dataset in flags))
    info["source"] = _piece_vrt(info, mask, named, path) if mask or named else info["path"]


def _piece_vrt(info: dict, alpha: int | None, named: int | None, path: Path) -> Path:
    """A VRT of every band of the mosaic piece ``info`` as geosr reads it: with band ``alpha`` its
    dataset mask (what GDAL makes of an alpha beside one or three bands), or band ``named``, labelled
    alpha but named as data, not an alpha."""
    def source(band: int, ratio: float | None = None) -> str:
        kind = "ComplexSource" if ratio else "SimpleSource"
        return (f'<{kind}><SourceFilename relativeToVRT="0">{escape(_vrt_source(info["path"]))}</SourceFilename>'
                f"<SourceBand>{band}</SourceBand>{f'<ScaleRatio>{ratio!r}</ScaleRatio>' if ratio else ''}</{kind}>")

    lines = [f'<VRTDataset rasterXSize="{info["width"]}" rasterYSize="{info["height"]}">']
    for b in range(1, info["count"] + 1):
        dtype = typename_fwd[dtype_rev[info["dtypes"][b - 1]]]
        nodata = info["band_nodata"][b - 1]
        interp = "Undefined" if b == named else info["colorinterp"][b - 1].name.capitalize()
        lines += [f'  <VRTRasterBand dataType="{dtype}" band="{b}">',
                  *([f"    <NoDataValue>{_nodata_text(nodata)}</NoDataValue>"] if nodata is not None else []),
                  f"    <ColorInterp>{interp}</ColorInterp>", f"    {source(b)}", "  </VRTRasterBand>"]
    if alpha:  # scaled up first: a float alpha's 0.3 is valid, as geosr reads a file's (> 0), not rounded to 0
        lines += ["  <MaskBand>", '    <VRTRasterBand dataType="Byte">', f"      {source(alpha, 1e6)}",
                  "    </VRTRasterBand>", "  </MaskBand>"]
    lines.append("</VRTDataset>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _sources(placed: Sequence[tuple[int, int, dict]], band: str, nodata_of: int | None, use_mask: bool,
             skip_zero: bool = False) -> list[str]:
    """A VRT band's ``ComplexSource`` elements: band ``band`` (``"2"``, ``"mask,2"``) of each
    placed piece, in order, each with the piece's nodata of band ``nodata_of`` (None: none)."""
    lines = []
    for x, y, info in placed:
        lines += [
            "    <ComplexSource>",
            f'      <SourceFilename relativeToVRT="0">{escape(_vrt_source(str(info["source"])))}</SourceFilename>',
            f"      <SourceBand>{band}</SourceBand>",
            f'      <SrcRect xOff="0" yOff="0" xSize="{info["width"]}" ySize="{info["height"]}"/>',
            f'      <DstRect xOff="{x}" yOff="{y}" xSize="{info["width"]}" ySize="{info["height"]}"/>',
        ]
        value = None if nodata_of is None else info["band_nodata"][nodata_of - 1]
        if value is not None:
            lines.append(f"      <NODATA>{_nodata_text(value)}</NODATA>")
        if skip_zero:
            lines.append("      <NODATA>0</NODATA>")
        if use_mask:
            lines.append("      <UseMaskBand>true</UseMaskBand>")
        lines.append("    </ComplexSource>")
    return lines


def _vrt_source(path: str) -> str:
    """A mosaic piece's name in the VRT: absolute, or GDAL's /vsis3/, /vsicurl/ name of an object."""
    return gdal_path(path) if is_remote(path) else os.path.abspath(path)


def _nodata_text(value: float) -> str:
    if math.isnan(value):
        return "nan"
    return repr(int(value)) if float(value).is_integer() else repr(float(value))
