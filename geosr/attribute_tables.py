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
_GFU_NAME, _GFT_STRING = 2, 2  # a column of class names (GDALRATFieldUsage), of text (GDALRATFieldType)


def _names_classes(lib: ctypes.CDLL, rat: int) -> bool:
    """Whether a RAT GDAL calls athematic still names classes (a name or text column): an ERDAS
    ``.img`` written by gdal_translate reads as athematic, while one with only a histogram does not."""
    return any(lib.GDALRATGetUsageOfCol(rat, c) == _GFU_NAME or lib.GDALRATGetTypeOfCol(rat, c) == _GFT_STRING
               for c in range(lib.GDALRATGetColumnCount(rat)))


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
        ("GDALRATGetColumnCount", ctypes.c_int, [vp]),
        ("GDALRATGetUsageOfCol", ctypes.c_int, [vp, ctypes.c_int]),
        ("GDALRATGetTypeOfCol", ctypes.c_int, [vp, ctypes.c_int]),
        ("CPLPushErrorHandler", None, [vp]),
        ("CPLPopErrorHandler", None, []),
    ):
        function = getattr(lib, name)
        function.restype, function.argtypes = restype, argtypes
    lib.GDALAllRegister()  # rasterio registers the drivers only inside its own environment
    return lib


def has_thematic_attribute_table(path: str) -> bool:
    """Whether any band of the raster at ``path`` has a thematic RAT (GDAL's view of it).

    Where libgdal cannot be reached through ``ctypes``, or does not open ``path`` here, the
    ``.aux.xml`` beside ``path`` is read as text instead (any RAT there counts). GDAL's warnings
    about the file are silenced for this open: the scene's own read reports what matters.
    """
    lib = _gdal()
    if lib is None:
        return _aux_xml_has_one(path)
    # GDAL's warnings about the file (an odd TIFF tag) went to stderr on every run: rasterio's
    # handler does not see calls made here, and the scene's own read reports what matters
    lib.CPLPushErrorHandler(ctypes.cast(lib.CPLQuietErrorHandler, ctypes.c_void_p))
    try:
        handle = lib.GDALOpenEx(path.encode(), _GDAL_OF_RASTER, None, None, None)
    finally:
        lib.CPLPopErrorHandler()
    if not handle:
        return _aux_xml_has_one(path)
    try:
        for band in range(1, lib.GDALGetRasterCount(handle) + 1):
            rat = lib.GDALGetDefaultRAT(lib.GDALGetRasterBand(handle, band))
            if rat and (lib.GDALRATGetTableType(rat) == _GRTT_THEMATIC or _names_classes(lib, rat)):
                return True
        return False
    finally:
        lib.GDALClose(handle)


def _aux_xml_has_one(path: str) -> bool:
    """Whether the ``.aux.xml`` beside ``path`` holds a RAT (read as text: any counts)."""
    aux = Path(path + ".aux.xml")
    return aux.is_file() and "<GDALRasterAttributeTable" in aux.read_text(errors="replace")
