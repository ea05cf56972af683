"""``DataArray.geosr``: the Python API as an xarray accessor (rioxarray's ``.rio`` style).

Registered when :mod:`geosr` is imported::

    hr = da.geosr.upscale(scale=4)                    # lazy, on the refined grid
    report = da.geosr.upscale_to_file("out.tif", scale=4)   # a COG and its run report
    fc = da.geosr.caption()

Each method is its API function with this DataArray as the source: the same keywords, shown
by ``help(da.geosr.upscale)`` (the signature is the function's without ``source``).
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable

import xarray as xr

from geosr.api import caption, upscale, upscale_to_file

__all__ = ["GeosrAccessor"]


def _on_the_array(function: Callable) -> Callable:
    """An accessor method calling ``function`` with the DataArray as its ``source``."""

    @functools.wraps(function)
    def method(self, *args, **kwargs):
        return function(self._obj, *args, **kwargs)

    signature = inspect.signature(function)
    params = list(signature.parameters.values())
    method.__signature__ = signature.replace(
        parameters=[inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)] + params[1:])
    return method


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

    upscale = _on_the_array(upscale)
    upscale_to_file = _on_the_array(upscale_to_file)
    caption = _on_the_array(caption)
