"""Synthetic rasters for tests: explicit CRS/transform/nodata, odd sizes, real-looking texture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from scipy import ndimage

UTM = "EPSG:32618"
NORTH_UP = Affine(2.0, 0.0, 500000.0, 0.0, -2.0, 4100000.0)


def texture(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """``[count, h, w]`` float in [0, 1]: smoothed noise plus edges, like ground detail."""
    rng = np.random.default_rng(seed)
    out = np.empty((count, height, width), np.float64)
    for b in range(count):
        fine = ndimage.gaussian_filter(rng.random((height, width)), 1.0)
        coarse = ndimage.gaussian_filter(rng.random((height, width)), 6.0)
        img = 0.6 * (fine - fine.min()) / (np.ptp(fine) + 1e-9) + 0.4 * (coarse - coarse.min()) / (np.ptp(coarse) + 1e-9)
        out[b] = img
    return out


def write_raster(
    path: Path,
    data: np.ndarray,
    crs: str | None = UTM,
    transform: Affine | None = NORTH_UP,
    nodata: float | None = None,
    mask: np.ndarray | None = None,
    colorinterp=None,
    **profile,
) -> Path:
    """Write ``[C, h, w]`` data as a GeoTIFF (optionally with an internal mask)."""
    count, height, width = data.shape
    prof = dict(driver="GTiff", width=width, height=height, count=count, dtype=data.dtype, nodata=nodata)
    if crs is not None:
        prof["crs"] = crs
    if transform is not None:
        prof["transform"] = transform
    prof.update(profile)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(path, "w", **prof) as ds:
            ds.write(data)
            if mask is not None:
                ds.write_mask(np.where(mask, 255, 0).astype(np.uint8))
            if colorinterp is not None:
                ds.colorinterp = colorinterp
    return path


def uint8_scene(path: Path, height: int = 97, width: int = 131, count: int = 3, seed: int = 0, **kw) -> Path:
    data = (texture(count, height, width, seed) * 250 + 3).astype(np.uint8)
    return write_raster(path, data, **kw)
