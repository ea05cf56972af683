"""What the Python API accepts as a source, turned into raster files the engine can read.

The engine's tasks take paths, never open datasets or arrays (they must ship to dask
workers and re-open the data themselves), so every source becomes files:

- a path, or several (a same-grid mosaic, a directory, a glob): used as they are;
- an open rasterio dataset: its file, or a temporary GeoTIFF copy when it has none on
  disk (a ``MemoryFile``, a ``/vsi...`` path);
- an ``xarray.DataArray`` with rioxarray georeferencing (``band, y, x`` or ``y, x``): written
  to a temporary GeoTIFF with :meth:`rio.to_raster`, which computes a dask-backed array
  chunk by chunk. The low-resolution input is ``scale**2`` times smaller than the output,
  so this costs little next to the upscaling itself.

A temporary copy is named after the array's source file when rioxarray recorded one
(``encoding["source"]``): tile seeds hash the input's file name, so a DataArray opened from
``scene.tif`` gets the seeds, and pixels, of ``geosr upscale scene.tif``.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence, Union

import rasterio
import rasterio.shutil
from rasterio.io import DatasetReaderBase

from geosr.errors import GDAL_ERRORS, InputError
from geosr.remote import is_remote
from geosr.sentinel2 import is_subdataset

if TYPE_CHECKING:
    import xarray

__all__ = ["Source", "SourceFiles", "source_files"]

Source = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]], DatasetReaderBase, "xarray.DataArray"]


@dataclass
class SourceFiles:
    """The files of a source, and the temporary folder that holds them if they are copies.

    Attributes
    ----------
    paths : list of str
        Raster files (or one .vrt) for :func:`geosr.scene.open_scene`.
    tempdir : tempfile.TemporaryDirectory or None
        Owns temporary copies; removed by :meth:`cleanup` or when this object is garbage
        collected (a lazy result keeps it alive as long as its graph, and the lazy API as long as
        the result is among its latest: :data:`geosr.lazy.KEPT_SOURCES`).
    """

    paths: list[str]
    tempdir: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    @property
    def workdir(self) -> Path:
        """A folder for files that must live as long as these sources (a mosaic's VRT)."""
        if self.tempdir is None:
            self.tempdir = tempfile.TemporaryDirectory(prefix="geosr-")
        return Path(self.tempdir.name)

    def cleanup(self) -> None:
        if self.tempdir is not None:
            self.tempdir.cleanup()

    def __getstate__(self) -> dict:
        # A copy sent to a dask worker carries the paths; only this process owns the folder.
        return {"paths": self.paths, "tempdir": None}


def source_files(source: Source) -> SourceFiles:
    """Files to read for ``source`` (see the module docstring for what is accepted).

    Raises
    ------
    InputError
        An unsupported type, a closed dataset, or a DataArray without (band,) y, x dims.
    """
    if isinstance(source, (str, os.PathLike)):
        return SourceFiles([os.fspath(source)])
    if isinstance(source, DatasetReaderBase):
        return _dataset_files(source)
    if _is_dataarray(source):
        return _dataarray_files(source)
    if isinstance(source, Sequence) and source and all(isinstance(s, (str, os.PathLike)) for s in source):
        return SourceFiles([os.fspath(s) for s in source])
    raise InputError(
        f"source must be a path, a list of paths, an open rasterio dataset or an xarray.DataArray, "
        f"got {type(source).__name__}"
    )


def _is_dataarray(obj: object) -> bool:
    # xarray is imported only when a DataArray could be there at all.
    import sys

    xr = sys.modules.get("xarray")
    return xr is not None and isinstance(obj, xr.DataArray)


def _dataset_files(ds: DatasetReaderBase) -> SourceFiles:
    if ds.closed:
        raise InputError(f"the rasterio dataset {ds.name!r} is closed")
    if os.path.exists(ds.name) or is_remote(ds.name) or is_subdataset(ds.name):
        # a file, an object GDAL reads (s3://, /vsis3/, URL), a Sentinel-2 subdataset (geosr.sentinel2)
        return SourceFiles([ds.name])
    if len(set(ds.dtypes)) > 1:  # a GeoTIFF holds one type (GDAL's copy fails, naming TIFF's limit)
        raise InputError(f"the rasterio dataset {ds.name!r} has bands of several types ({', '.join(ds.dtypes)}) and "
                         "no file: geosr copies such a dataset to a GeoTIFF, which holds one; write it to a VRT or "
                         "a file of one type and pass its path")
    files = SourceFiles([])
    copy = files.workdir / "dataset.tif"
    try:
        rasterio.shutil.copy(ds, copy, driver="GTiff", TILED="YES", BIGTIFF="IF_SAFER")
    except GDAL_ERRORS as exc:
        raise InputError(f"cannot copy the rasterio dataset {ds.name!r} to a GeoTIFF: {exc}") from exc
    files.paths.append(str(copy))
    return files


def _dataarray_files(da: "xarray.DataArray") -> SourceFiles:
    from rioxarray.exceptions import RioXarrayError

    name = Path(str(da.encoding.get("source") or "dataarray.tif")).name
    if da.ndim == 2:
        da = da.expand_dims("band")
    try:
        dims_ok = da.ndim == 3 and da.dims[1:] == (da.rio.y_dim, da.rio.x_dim)
    except RioXarrayError:
        dims_ok = False
    if not dims_ok:
        raise InputError(f"a DataArray source needs dims (band, y, x) or (y, x), got {da.dims}")
    long_name = da.attrs.get("long_name")
    if isinstance(long_name, (tuple, list)) and len(long_name) != da.shape[0]:
        # Band names of the file the array was opened from, before a band selection.
        da = da.copy(deep=False)
        del da.attrs["long_name"]
    files = SourceFiles([])
    copy = files.workdir / (name if name.lower().endswith((".tif", ".tiff")) else f"{name}.tif")
    try:
        # Blocks of a fixed size: rioxarray would otherwise take the dask chunks, which
        # GeoTIFF refuses unless they are multiples of 16. MINISBLACK and no ALPHA: for 3 or 4
        # uint8 bands GDAL would write RGB(A) and turn a 4th band (e.g. NIR) into an alpha mask.
        da.rio.to_raster(copy, tiled=True, blockxsize=256, blockysize=256, BIGTIFF="IF_SAFER",
                         PHOTOMETRIC="MINISBLACK", ALPHA="NO")
    except (RioXarrayError, *GDAL_ERRORS) as exc:
        files.cleanup()
        raise InputError(f"cannot write the DataArray as a GeoTIFF: {exc}") from exc
    files.paths.append(str(copy))
    return files
