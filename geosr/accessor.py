"""``DataArray.geosr``: the Python API as an xarray accessor (rioxarray's ``.rio`` style).

Registered when :mod:`geosr` is imported::

    hr = da.geosr.upscale(scale=4)            # lazy, on the refined grid
    da.geosr.upscale("out.tif", scale=4)      # a COG and its run report
    fc = da.geosr.caption()
"""

from __future__ import annotations

import os

import xarray as xr

from geosr.api import caption, upscale

__all__ = ["GeosrAccessor"]


@xr.register_dataarray_accessor("geosr")
class GeosrAccessor:
    """geosr on a DataArray with rioxarray georeferencing.

    Parameters
    ----------
    obj : xarray.DataArray
        ``(band, y, x)`` or ``(y, x)``, in memory or dask-backed.
    """

    def __init__(self, obj: xr.DataArray) -> None:
        self._obj = obj

    def upscale(self, output: str | os.PathLike | None = None, **options):
        """:func:`geosr.upscale` of this DataArray; same keywords (``scale`` is required)."""
        return upscale(self._obj, output, **options)

    def caption(self, output: str | os.PathLike | None = None, **options) -> dict:
        """:func:`geosr.caption` of this DataArray; same keywords."""
        return caption(self._obj, output, **options)
