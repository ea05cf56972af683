"""Multi-band test rasters built from the real bands of tests/data/rgbn_suba.tif (R, G, B, NIR, 5 m)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio

RGBN = Path(__file__).parent / "data" / "rgbn_suba.tif"

#: Sentinel-2 L2A bands of a 10-band stack, in the product's order, with the real band each is
#: made of (B, G, R, N) or a mix of real bands where this scene has none (red edge, SWIR).
SENTINEL2_BANDS = {
    "B2": (0, 0, 1, 0), "B3": (0, 1, 0, 0), "B4": (1, 0, 0, 0), "B5": (0.7, 0, 0, 0.3),
    "B6": (0.35, 0, 0, 0.65), "B7": (0.1, 0, 0, 0.9), "B8": (0, 0, 0, 1), "B8A": (0.05, 0, 0, 0.95),
    "B11": (0.6, 0, 0, 0.4), "B12": (0.6, 0, 0.4, 0),
}


def sentinel2_stack(path: Path, window: tuple[slice, slice] | None = None) -> Path:
    """A Sentinel-2 L2A-style 10-band uint16 stack (B2 ... B12, blue first) of rgbn_suba's grid
    (or of the ``(rows, cols)`` slices of it, with explicit starts and stops).

    Reflectance ``r`` (the uint8 value / 255 * 0.5) is stored as ``r * 10000 + 1000`` with
    scale 0.0001 and offset -0.1 (processing baseline 04.00); nodata 0 where rgbn_suba is
    no-data; band descriptions B2 ... B12; ``SPACECRAFT_NAME`` Sentinel-2B; colour
    interpretation gray/undefined, as GDAL writes a uint16 stack.
    """
    with rasterio.open(RGBN) as src:
        rgbn = src.read().astype(np.float64) / 255.0 * 0.5
        valid = src.dataset_mask() > 0
        profile = src.profile
        transform = src.transform
    if window is not None:
        rgbn, valid = rgbn[(slice(None), *window)], valid[window]
        transform = rasterio.windows.transform(rasterio.windows.Window.from_slices(*window), transform)
    mix = np.array(list(SENTINEL2_BANDS.values()))
    reflectance = np.tensordot(mix, rgbn, axes=1)
    data = np.where(valid, np.rint(reflectance * 10000) + 1000, 0).astype(np.uint16)
    out = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=len(data), dtype="uint16", nodata=0,
               crs=profile["crs"], transform=transform, tiled=True, compress="DEFLATE")
    with rasterio.open(path, "w", **out) as dst:
        dst.write(data)
        for b, name in enumerate(SENTINEL2_BANDS, start=1):
            dst.set_band_description(b, name)
        dst.scales = (1e-4,) * len(data)
        dst.offsets = (-0.1,) * len(data)
        dst.update_tags(SPACECRAFT_NAME="Sentinel-2B", PROCESSING_LEVEL="Level-2A")
    return path
