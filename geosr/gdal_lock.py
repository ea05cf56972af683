"""One lock that serialises GDAL raster I/O between the threads of a process.

GDAL's block cache is global to the process. When a reading thread needs room in it, it
may flush a dirty block of *another* dataset - the output being written by the main
thread - while that thread writes to the same block. With pixel-interleaved GeoTIFFs,
where touching one band's block caches the other bands' blocks too, a band of a block
can then be lost (GDAL issue #2011; its fix "reduces the likelihood"). geosr's local
runs read tiles in dask worker threads of the same process as the writer, so reads and
writes take this lock. Reads are a small part of a tile's cost; worker processes of a
distributed cluster each have their own lock and cache.
"""

from __future__ import annotations

import threading

__all__ = ["GDAL_IO_LOCK"]

GDAL_IO_LOCK = threading.Lock()
