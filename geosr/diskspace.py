"""Disk a run needs, estimated before any tile, against the free space beside OUTPUT.

A run that fills the disk after hours of work helps nobody; geosr checks up front. The
peak is reached while the COG is written: the raw work raster (exactly its size, every byte
is written), the COG (full-resolution image and overviews, a third more), and the COG pass's
temporary files all exist at once: with the default options an uncompressed tiled copy of
the work raster with its overviews (4/3 of the uncompressed output, :mod:`geosr.writer`),
with others the COG driver's temporary overview file ``*.ovr.tmp`` (measured 0.5 to 0.65 of
it, uint8 to uint16); the larger, 4/3, is assumed.

The COG's size depends on how well the pixels compress: geosr compresses a window of the
*input* with the run's compression options in memory and applies that ratio to the
output.
"""

from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import rasterio
from rasterio.io import MemoryFile
from rasterio.windows import Window

from geosr.errors import WriteError, read_errors_named
from geosr.journal import describe_size
from geosr.scene import open_raster

__all__ = ["DiskEstimate", "estimate_disk_use", "check_free_space"]

# Creation options that change the compressed size (the rest only lay it out).
COMPRESSION_OPTIONS = ("COMPRESS", "PREDICTOR", "LEVEL", "QUALITY", "MAX_Z_ERROR", "NBITS")
SAMPLE_PX = 512
# the COG driver's PREDICTOR values as GTiff's numbers (YES: 2 for integers, 3 for floats)
_COG_PREDICTORS = {"YES": None, "NO": "1", "STANDARD": "2", "FLOATING_POINT": "3"}
# Full image + overviews (1/4 + 1/16 + ... = 1/3), of the compressed size.
COG_FACTOR = 1 + 1 / 3
# Temporary files of the COG pass, of the uncompressed output size: the default options' tiled
# copy of the work raster with its overviews (1 + 1/3, geosr.writer), or the COG driver's
# temporary overview file (measured <= 0.65).
COG_PASS_TMP_FACTOR = 1 + 1 / 3


@dataclass(frozen=True)
class DiskEstimate:
    """Peak disk use of a run, in bytes."""

    work: int
    cog: int
    cog_pass_tmp: int
    ratio: float

    @property
    def total(self) -> int:
        return self.work + self.cog + self.cog_pass_tmp


def _compression_ratio(source: str, bands: Sequence[int], options: Mapping[str, str]) -> float:
    """Compressed / raw size of a central window of ``source`` with ``options``."""
    with open_raster(source) as ds:
        w, h = min(SAMPLE_PX, ds.width), min(SAMPLE_PX, ds.height)
        window = Window((ds.width - w) // 2, (ds.height - h) // 2, w, h)
        with read_errors_named(source, window, what="a sample to estimate the output's size"):
            data = ds.read(list(bands), window=window)
    opts = {k: v for k, v in options.items() if k in COMPRESSION_OPTIONS}
    predictor = opts.get("PREDICTOR", "").upper()
    if predictor in _COG_PREDICTORS:  # the COG driver's spellings; GTiff wants the number
        opts["PREDICTOR"] = (_COG_PREDICTORS[predictor] if predictor != "YES"
                             else "3" if np.issubdtype(data.dtype, np.floating) else "2")
    with rasterio.Env(GDAL_PAM_ENABLED="NO"), MemoryFile() as mem, warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)  # a bare sample raster
        with mem.open(driver="GTiff", width=w, height=h, count=len(bands), dtype=data.dtype,
                      tiled=True, blockxsize=256, blockysize=256, **opts) as out:
            out.write(data)
        compressed = len(mem.read())
    return min(1.0, compressed / max(1, data.nbytes))


def estimate_disk_use(
    source: str, bands: Sequence[int], work_bytes: int, output_bytes: int, options: Mapping[str, str]
) -> DiskEstimate:
    """Estimate the peak disk use of a run.

    Parameters
    ----------
    source : str
        The scene's source raster (sampled for compressibility).
    bands : sequence of int
        1-based bands written to the output.
    work_bytes : int
        Size of the work raster (pixels and mask).
    output_bytes : int
        Uncompressed size of the output image.
    options : mapping
        The COG creation options of the run.
    """
    ratio = _compression_ratio(source, bands, options)
    return DiskEstimate(
        work=work_bytes, cog=int(output_bytes * ratio * COG_FACTOR),
        cog_pass_tmp=int(output_bytes * COG_PASS_TMP_FACTOR), ratio=ratio,
    )


def check_free_space(folder: Path, estimate: DiskEstimate, already_used: int = 0) -> None:
    """Raise :class:`WriteError` when ``folder``'s filesystem cannot hold the run.

    ``already_used`` is what a resumed run's work folder holds already.
    """
    need = max(0, estimate.total - already_used)
    free = shutil.disk_usage(folder).free
    if free < need:
        raise WriteError(
            f"not enough disk space in {folder}: the run needs about {describe_size(need)} "
            f"(work raster {describe_size(estimate.work)}, COG {describe_size(estimate.cog)}, "
            f"the COG pass's temporary files {describe_size(estimate.cog_pass_tmp)}), "
            f"{describe_size(free)} is free"
        )
