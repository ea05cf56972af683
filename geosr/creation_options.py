"""Check ``--co`` creation options before any tile is processed.

GDAL publishes what each driver accepts (``DMD_CREATIONOPTIONLIST``: names, types, allowed
values, bounds); geosr reads the COG driver's list and checks names and values against
it, then writes a tiny COG of the output's band count and dtype in memory with the same
options, so combinations GDAL refuses (JPEG on float32...) fail in a second, not after
every tile was computed; with the output's nodata value in the trial, it also says whether the
codec keeps which pixels are no-data (lossy ones do not). The values are checked *before* the trial write because some
bad values (``BLOCKSIZE=abc``) abort GDAL's process instead of raising an error, and GDAL
only warns about others (``COMPRESS=FOO`` silently writes an uncompressed file).

rasterio does not expose driver metadata, so the list is read with ``ctypes`` from the
libgdal rasterio has loaded (:func:`geosr.stoppable_gdal.loaded_libgdal`).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import uuid
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.io import MemoryFile

from geosr.errors import GDAL_ERRORS, InputError, gdal_cause
from geosr.stoppable_gdal import loaded_libgdal

__all__ = ["REPROJECTION_OPTIONS", "check_creation_options", "cog_creation_options"]

#: The COG driver's options that warp the output to another grid (or only act with one that does).
REPROJECTION_OPTIONS = frozenset({"TARGET_SRS", "TILING_SCHEME", "RES", "EXTENT", "ALIGNED_LEVELS", "ADD_ALPHA",
                                  "WARP_RESAMPLING", "ZOOM_LEVEL", "ZOOM_LEVEL_STRATEGY"})

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OptionSpec:
    """One creation option as GDAL describes it."""

    name: str
    type: str
    values: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None


@functools.lru_cache(maxsize=1)
def cog_creation_options() -> dict[str, OptionSpec]:
    """The COG driver's creation options (empty when libgdal cannot be reached)."""
    lib = loaded_libgdal(by_name=True)
    if lib is None:
        log.debug("libgdal not found: --co values are checked by the trial write only")
        return {}
    lib.GDALGetDriverByName.restype = ctypes.c_void_p
    lib.GDALGetDriverByName.argtypes = [ctypes.c_char_p]
    lib.GDALGetMetadataItem.restype = ctypes.c_char_p
    lib.GDALGetMetadataItem.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
    with rasterio.Env():  # registers the drivers
        driver = lib.GDALGetDriverByName(b"COG")
        xml = lib.GDALGetMetadataItem(driver, b"DMD_CREATIONOPTIONLIST", None) if driver else None
    if not xml:
        return {}
    specs = {}
    for opt in ET.fromstring(xml.decode()).iter("Option"):
        values = []
        for v in opt.iter("Value"):
            values.append((v.text or "").strip())
            if v.get("alias"):
                values.append(v.get("alias"))
        lo, hi = opt.get("min"), opt.get("max")
        specs[opt.get("name").upper()] = OptionSpec(
            opt.get("name").upper(), opt.get("type", "string"), tuple(values),
            float(lo) if lo is not None else None, float(hi) if hi is not None else None,
        )
    return specs


def _check_value(spec: OptionSpec, value: str) -> str | None:
    """Why ``value`` is not valid for ``spec`` (None when it is)."""
    if spec.type == "string-select" and spec.values and value.upper() not in {v.upper() for v in spec.values}:
        return f"takes one of {', '.join(spec.values)}"
    if spec.type in ("int", "integer", "float"):
        try:
            number = int(value) if spec.type != "float" else float(value)
        except ValueError:
            return f"takes {'an integer' if spec.type != 'float' else 'a number'}"
        if not math.isfinite(number):
            return "takes a finite number"
        if spec.minimum is not None and number < spec.minimum:
            return f"must be at least {spec.minimum:g}"
        if spec.maximum is not None and number > spec.maximum:
            return f"must be at most {spec.maximum:g}"
    if spec.type == "boolean" and value.upper() not in ("YES", "NO", "TRUE", "FALSE", "ON", "OFF", "1", "0"):
        return "takes YES or NO"
    return None


# A tile edge GDAL can allocate in the trial write and that TIFF allows (multiples of 16).
MAX_BLOCKSIZE = 4096

# Bounds that GDAL's option list gives only in prose ("JPEG/WEBP quality 1-100") or not at all;
# GDAL writes values outside them without a word (QUALITY=500, LEVEL=99) or ignores them
# (NUM_THREADS=-5). Inclusive, from GDAL's GTiff/COG driver documentation.
RANGES: dict[str, tuple[float, float]] = {
    "QUALITY": (1, 100),
    "OVERVIEW_QUALITY": (1, 100),
    "MAX_Z_ERROR": (0, math.inf),
    "MAX_Z_ERROR_OVERVIEW": (0, math.inf),
}
# LEVEL per codec: DEFLATE goes to 12 with libdeflate, which rasterio's GDAL is built with.
LEVELS: dict[str, tuple[int, int]] = {
    "DEFLATE": (1, 12), "LERC_DEFLATE": (1, 12), "ZSTD": (1, 22), "LERC_ZSTD": (1, 22), "LZMA": (0, 9),
}


def _out_of_range(name: str, value: str, options: Mapping[str, str]) -> str | None:
    """Why ``value`` is outside the range geosr knows for option ``name`` (None when inside).

    ``options`` are all options in force (defaults included): LEVEL's range is its codec's.
    """
    if name == "NUM_THREADS":
        if value.upper() != "ALL_CPUS" and not (value.isdigit() and int(value) >= 1):
            return "takes a number of threads of at least 1, or ALL_CPUS"
        return None
    if name == "LEVEL":
        codecs = [(key, options.get(key, "").upper()) for key in ("COMPRESS", "OVERVIEW_COMPRESS")]
        bounds = [(f" with {key}={codec}", *LEVELS[codec]) for key, codec in codecs if codec in LEVELS]
    elif name in RANGES:
        bounds = [("", *RANGES[name])]
    else:
        return None
    try:
        number = float(value)
    except ValueError:
        return None  # GDAL's list says what type it takes
    for where, lo, hi in bounds:
        if not lo <= number <= hi:
            return f"must be {lo:g} to {hi:g}{where}" if math.isfinite(hi) else f"must be at least {lo:g}"
    return None


def check_creation_options(options: Mapping[str, str], count: int, dtype: str, mask: bool, defaults: Mapping[str, str],
                           nodata: float | None = None) -> None:
    """Raise :class:`InputError` when GDAL's COG driver would not honour ``options``.

    Parameters
    ----------
    options : mapping
        The user's ``--co`` options (upper-case names).
    count, dtype, mask
        Band count, dtype and mask of the output.
    defaults : mapping
        geosr's own COG options, which ``options`` override.
    nodata : float, optional
        The output's nodata value: options whose compression moves pixels onto or off it
        (JPEG, WEBP, LERC with a MAX_Z_ERROR) are refused, as they would change which pixels
        are valid (:func:`_nodata_survives`).
    """
    specs = cog_creation_options()
    for name, value in options.items():
        if name in REPROJECTION_OPTIONS:
            raise InputError(f"--co {name}={value}: the COG driver's {name} reprojects or re-grids the output, and "
                             "geosr writes it on the input's grid refined by the scale (its georeferencing exact); "
                             "reproject the output afterwards (gdalwarp)")
        if specs and name not in specs:
            raise InputError(f"--co {name}={value}: the COG driver has no option {name} (it has {', '.join(sorted(specs))})")
        why = (_check_value(specs[name], value) if specs else None) or _out_of_range(name, value, {**defaults, **options})
        if why:
            raise InputError(f"--co {name}={value}: {name} {why}")
    block = options.get("BLOCKSIZE")
    if block is not None and (not block.isdigit() or int(block) % 16 or int(block) > MAX_BLOCKSIZE):
        raise InputError(f"--co BLOCKSIZE={block}: TIFF tiles are a multiple of 16 px, at most {MAX_BLOCKSIZE} here")
    # One thread: GDAL reports compression errors from worker threads only on stderr.
    merged = {**defaults, **options, "NUM_THREADS": "1"}
    # One pixel more than a tile, so the trial also builds an overview.
    size = int(merged.get("BLOCKSIZE", 512)) + 1
    data = np.zeros((count, size, size), dtype) if nodata is None else _nodata_pattern(count, size, dtype, nodata)
    trial_name = f"/vsimem/geosr-co-check-{uuid.uuid4().hex}.tif"  # runs in threads of one process: one each
    try:
        with rasterio.Env(GDAL_PAM_ENABLED="NO"), MemoryFile() as mem, warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)  # a bare trial raster
            with mem.open(driver="GTiff", width=size, height=size, count=count, dtype=dtype, nodata=nodata) as ds:
                ds.write(data)
                if mask:
                    ds.write_mask(np.full((size, size), 255, np.uint8))
            rasterio.shutil.copy(mem.name, trial_name, driver="COG", **merged)
            try:
                if nodata is not None:
                    with rasterio.open(trial_name) as trial:
                        written = trial.read()
            finally:
                rasterio.shutil.delete(trial_name)
    except GDAL_ERRORS as exc:
        given = " ".join(f"--co {k}={v}" for k, v in options.items()) or "the default creation options"
        kept = " ".join(f"{k}={v}" for k, v in defaults.items() if k not in options and k != "NUM_THREADS")
        beside = f" beside geosr's defaults {kept} (each replaced by a --co of its name)" if options and kept else ""
        raise InputError(f"{given}{beside}: GDAL cannot write a {count}-band {dtype} COG with them: "
                         f"{gdal_cause(exc)}") from exc
    if nodata is not None and not _nodata_survives(data, written, nodata):
        given = " ".join(f"--co {k}={v}" for k, v in options.items())
        raise InputError(f"{given}: this compression is lossy and the output has a nodata value ({nodata:g}): it would turn "
                         "pixels next to no-data into valid values and valid pixels near the nodata value into no-data; "
                         "choose a lossless COMPRESS (DEFLATE, ZSTD, LZW, LERC without MAX_Z_ERROR), or give the input "
                         "a mask instead of a nodata value (geosr then writes an internal mask, which GDAL keeps exact)")


def _nodata_pattern(count: int, size: int, dtype: str, nodata: float) -> np.ndarray:
    """A trial raster for :func:`_nodata_survives`: 16 px squares of ``nodata`` on a checkerboard,
    the others random values in the range imagery of ``dtype`` holds (0-255; 0-10 000 for wider
    integers, reflectance-like; 0-1 for floats), none equal to ``nodata``; for integers, rows of
    values 1-16 from ``nodata``."""
    rng = np.random.default_rng(0)
    kind = np.dtype(dtype)
    if kind.kind == "f":
        lo, hi = 0.0, 1.0
        data = rng.random((count, size, size)).astype(dtype)
    else:
        info = np.iinfo(kind)
        lo, hi = max(info.min, 0), min(info.max, 255 if kind.itemsize == 1 else 10_000)
        data = rng.integers(lo, hi, (count, size, size), endpoint=True).astype(dtype)
    data[data == nodata] = hi if nodata != hi else lo
    if kind.kind != "f":
        # dark water a few DN above a nodata of 0: every eighth row of values 1-16 away from the nodata
        # value, where a codec's error bound (LERC's MAX_Z_ERROR) would fold them onto it
        info = np.iinfo(kind)
        near = np.array([nodata + d for d in range(-16, 17) if d and info.min <= nodata + d <= info.max])
        data[:, ::8, :] = near[np.arange(size) % near.size].astype(dtype)
    holes = (np.arange(size)[:, None] // 16 + np.arange(size)[None, :] // 16) % 2 == 0
    data[:, holes] = nodata
    return data


def _nodata_survives(data: np.ndarray, written: np.ndarray, nodata: float) -> bool:
    """Whether the pixels equal to ``nodata`` are the same in ``data`` and in ``written``, its
    trial COG: a lossy codec blurs the no-data squares' edges and moves values near the nodata
    value onto it (JPEG, WEBP; LERC within its MAX_Z_ERROR)."""
    if np.isnan(nodata):
        return bool(np.array_equal(np.isnan(data), np.isnan(written)))
    return bool(np.array_equal(data == nodata, written == nodata))
