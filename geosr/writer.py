"""Write the output: windowed tiled GeoTIFF in a temporary folder, then COG, then rename.

Nothing is ever written at the target path until the very end: blocks go to a work
GeoTIFF in ``.<name>.geosr-tmp/`` beside the target; on success GDAL's COG driver turns it
into a Cloud Optimized GeoTIFF (internal tiles, AVERAGE overviews, DEFLATE + predictor,
per-band statistics, mask or nodata, all metadata) and ``os.replace`` moves it into place,
together with its sidecars. Any failure removes the temporary folder, so a failed run
leaves no file at the target.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.windows import Window

from geosr.errors import InputError, OutputExistsError

__all__ = ["OutputTarget", "WorkRaster", "DEFAULT_COG_OPTIONS", "sidecar_path"]

DEFAULT_COG_OPTIONS: dict[str, str] = {
    "COMPRESS": "DEFLATE",
    "PREDICTOR": "YES",  # 2 for integers, 3 for floats: the COG driver picks
    "BLOCKSIZE": "512",
    "OVERVIEW_RESAMPLING": "AVERAGE",
    "BIGTIFF": "IF_SAFER",
    "STATISTICS": "YES",  # stored in the file: no .aux.xml sidecar when QGIS asks for them
    "NUM_THREADS": "ALL_CPUS",
}

# GDAL's block cache counts in the process's memory: keep it small so peak memory is set by
# the tiles in flight, not by the output size (GDAL's default is 5 % of RAM).
WRITER_GDAL_ENV: dict = {"GDAL_CACHEMAX": 64, "GDAL_PAM_ENABLED": "NO", "GDAL_TIFF_INTERNAL_MASK": "YES"}


def sidecar_path(output: Path, suffix: str) -> Path:
    """``out.tif`` -> ``out<suffix>`` (e.g. ``out.captions.geojson``)."""
    return output.with_name(output.stem + suffix)


class OutputTarget:
    """The target path of a run and its temporary folder.

    Use as a context manager: on an exception the temporary folder is removed and nothing
    is left at the target; :meth:`commit` moves finished files into place.
    """

    def __init__(self, output: str | os.PathLike, overwrite: bool = False) -> None:
        self.output = Path(output).absolute()
        if self.output.is_dir():
            raise InputError(f"output {self.output} is a directory; give a file name such as out.tif")
        if self.output.exists() and not overwrite:
            raise OutputExistsError(f"{self.output} exists; pass --overwrite to replace it")
        if not self.output.parent.exists():
            raise InputError(f"output folder {self.output.parent} does not exist")
        if not os.access(self.output.parent, os.W_OK):
            raise InputError(f"output folder {self.output.parent} is not writable")
        self.tmpdir = self.output.parent / f".{self.output.name}.geosr-tmp"

    def __enter__(self) -> "OutputTarget":
        # A folder left by a killed run holds nothing reusable yet: start clean.
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        self.tmpdir.mkdir()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    def temp(self, name: str) -> Path:
        return self.tmpdir / name

    def commit(self, moves: Mapping[Path, Path]) -> None:
        """Move finished temporary files to their final paths (the main output last)."""
        items = sorted(moves.items(), key=lambda kv: kv[1] == self.output)
        for src, dst in items:
            os.replace(src, dst)


@dataclass
class WorkRaster:
    """The temporary tiled GeoTIFF that output blocks are written into.

    Parameters
    ----------
    path : Path
    profile : dict
        rasterio profile of the output grid (driver, size, count, dtype, crs, transform,
        nodata...).
    write_mask : bool
        Write an internal mask band (inputs with alpha or an internal mask, no nodata).
    band_meta : dict
        ``colorinterp``, ``descriptions``, ``scales``, ``offsets``, ``units`` per band.
    tags : dict
        Dataset tags.
    """

    path: Path
    profile: dict
    write_mask: bool
    band_meta: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)
    gcps: tuple = ()
    rpcs: object | None = None

    def __post_init__(self) -> None:
        self._env = rasterio.Env(**WRITER_GDAL_ENV)
        self._env.__enter__()
        profile = dict(self.profile)
        profile.update(driver="GTiff", tiled=True, blockxsize=512, blockysize=512, BIGTIFF="IF_SAFER")
        if self.gcps:
            profile.pop("transform", None)
            profile.pop("crs", None)
        try:
            self._ds = rasterio.open(self.path, "w", **profile)
        except Exception:
            self._env.__exit__(None, None, None)
            raise
        ds = self._ds
        if self.gcps:
            ds.gcps = self.gcps
        if self.rpcs is not None:
            ds.rpcs = self.rpcs
        meta = self.band_meta
        if meta.get("colorinterp"):
            ds.colorinterp = meta["colorinterp"]
        for i, desc in enumerate(meta.get("descriptions", ()), start=1):
            if desc:
                ds.set_band_description(i, desc)
        if meta.get("scales"):
            ds.scales = meta["scales"]
        if meta.get("offsets"):
            ds.offsets = meta["offsets"]
        if meta.get("units") and any(meta["units"]):
            ds.units = [u or "" for u in meta["units"]]
        ds.update_tags(**self.tags)

    def write(self, window: Window, data: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Write ``[C, h, w]`` pixels (and their validity, when the output has a mask)."""
        self._ds.write(data, window=window)
        if self.write_mask:
            mask = np.full(data.shape[1:], 255, np.uint8) if valid is None else np.where(valid, 255, 0).astype(np.uint8)
            self._ds.write_mask(mask, window=window)

    def close(self) -> None:
        if not self._ds.closed:
            self._ds.close()
            self._env.__exit__(None, None, None)

    def to_cog(self, dst: Path, creation_options: Mapping[str, str] | None = None) -> None:
        """Close the work raster and translate it to a COG at ``dst``."""
        self.close()
        options = dict(DEFAULT_COG_OPTIONS)
        options.update({k.upper(): str(v) for k, v in (creation_options or {}).items()})
        with rasterio.Env(**WRITER_GDAL_ENV):
            rasterio.shutil.copy(self.path, dst, driver="COG", **options)
