"""Whether a raster carries a thematic raster attribute table (RAT), asked of GDAL.

A RAT names the classes of a land-cover or soil map; such a raster is refused for
interpolation like one with a colour table (:func:`geosr.scene.categorical_reason`). GDAL
finds RATs wherever they live - in a ``.vrt``'s XML, inside an ERDAS ``.img``, in a
GeoTIFF's ``.aux.xml`` - but rasterio does not expose them, so the band's default RAT is read
with ``ctypes`` from the libgdal rasterio has loaded (:func:`geosr.stoppable_gdal.loaded_libgdal`).
Reading only the ``.aux.xml`` text missed the first two (a class raster was bicubic-smeared).
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

from geosr.stoppable_gdal import loaded_libgdal

__all__ = ["has_thematic_attribute_table"]

_GDAL_OF_RASTER = 0x02
_GRTT_THEMATIC = 0  # GDALRATTableType: a RAT without a tableType reads as thematic


@functools.lru_cache(maxsize=1)
def _gdal() -> ctypes.CDLL | None:
    lib = loaded_libgdal()
    if lib is None:
        return None
    vp = ctypes.c_void_p
    for name, restype, argtypes in (
        ("GDALOpenEx", vp, [ctypes.c_char_p, ctypes.c_uint, vp, vp, vp]),
        ("GDALClose", None, [vp]),
        ("GDALGetRasterCount", ctypes.c_int, [vp]),
        ("GDALGetRasterBand", vp, [vp, ctypes.c_int]),
        ("GDALGetDefaultRAT", vp, [vp]),
        ("GDALRATGetTableType", ctypes.c_int, [vp]),
    ):
        function = getattr(lib, name)
        function.restype, function.argtypes = restype, argtypes
    return lib


def has_thematic_attribute_table(path: str) -> bool:
    """Whether any band of the raster at ``path`` has a thematic RAT (GDAL's view of it).

    Where libgdal cannot be reached through ``ctypes``, the ``.aux.xml`` beside ``path`` is
    read as text instead (any RAT there counts).
    """
    lib = _gdal()
    if lib is None:
        aux = Path(path + ".aux.xml")
        return aux.is_file() and "<GDALRasterAttributeTable" in aux.read_text(errors="replace")
    handle = lib.GDALOpenEx(path.encode(), _GDAL_OF_RASTER, None, None, None)
    if not handle:
        return False  # rasterio opened it; whatever GDAL says here, it says when the scene is read
    try:
        for band in range(1, lib.GDALGetRasterCount(handle) + 1):
            rat = lib.GDALGetDefaultRAT(lib.GDALGetRasterBand(handle, band))
            if rat and lib.GDALRATGetTableType(rat) == _GRTT_THEMATIC:
                return True
        return False
    finally:
        lib.GDALClose(handle)
