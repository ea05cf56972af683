"""The GDAL configuration options, set in the environment, that change what a run reads.

``GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR`` (often exported for cloud reads) makes GDAL ignore
the side files beside a raster - its external mask, overviews and PAM nodata, scale and offset -
``GDAL_PAM_ENABLED=NO`` its ``.aux.xml``; ``GDAL_GEOREF_SOURCES`` and ``GTIFF_*`` options move
the georeferencing or read damaged blocks as zeros (``GTIFF_IGNORE_READ_ERRORS``); ``VRT_*`` and
``OSR_*`` options change how a mosaic's sources and a CRS are read. A run stopped under one
setting and resumed under another, or a worker whose environment differs from the process that
planned the run, reads other pixels; so they are in a run's identity
(:func:`geosr.resumable.run_identity`) and its workers' check (:func:`geosr.tasks.check_worker`).
Options that change no pixel (cache sizes, threads, HTTP timeouts, credentials) are not.
"""

from __future__ import annotations

import os

__all__ = ["READ_OPTIONS", "READ_PREFIXES", "gdal_read_settings"]

#: Options that change which files GDAL reads beside a raster, or how it reads its georeferencing.
#: (Not GDAL_DATA or PROJ_DATA: folders of data files that come with the libraries, whose versions
#: the identity has, and whose paths differ between one cluster's machines.)
READ_OPTIONS = ("GDAL_DISABLE_READDIR_ON_OPEN", "GDAL_PAM_ENABLED", "GDAL_PAM_PROXY_DIR", "GDAL_GEOREF_SOURCES")
#: Families of options that change how GeoTIFFs, VRTs and CRSs are read.
READ_PREFIXES = ("GTIFF_", "VRT_", "GDAL_VRT_", "OSR_")


def gdal_read_settings() -> str:
    """The pixel-changing GDAL options set in this process's environment, as ``NAME=value``
    joined by ``"; "`` in name order (empty when none is set)."""
    names = sorted(k for k in os.environ if k in READ_OPTIONS or k.startswith(READ_PREFIXES))
    return "; ".join(f"{k}={os.environ[k]}" for k in names)
