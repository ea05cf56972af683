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


def write_alpha_first_vrt(path: Path, data_path: Path, alpha_path: Path, interps: list[str],
                          columns_east: int = 0) -> Path:
    """A VRT of ``alpha_path``'s band 1 as an Alpha band 1, then ``data_path``'s bands (their own
    type) named by ``interps`` (``"Red"``, ``"Undefined"``...): bands of two types, which a
    GeoTIFF cannot hold. ``columns_east`` shifts its grid east by that many pixels (a mosaic piece)."""
    with rasterio.open(data_path) as ds:
        crs, width, height, dtype = ds.crs.to_wkt(), ds.width, ds.height, ds.dtypes[0]
        gt = (ds.transform * Affine.translation(columns_east, 0)).to_gdal()
    names = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "float32": "Float32"}

    def band(n: int, source: Path, source_band: int, type_: str, interp: str) -> str:
        return (f'<VRTRasterBand dataType="{type_}" band="{n}"><ColorInterp>{interp}</ColorInterp><SimpleSource>'
                f'<SourceFilename relativeToVRT="0">{source}</SourceFilename><SourceBand>{source_band}</SourceBand>'
                "</SimpleSource></VRTRasterBand>")

    Path(path).write_text(
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}"><SRS>{crs}</SRS>'
        f'<GeoTransform>{", ".join(map(str, gt))}</GeoTransform>' + band(1, alpha_path, 1, "Byte", "Alpha")
        + "".join(band(n + 2, data_path, n + 1, names[dtype], c) for n, c in enumerate(interps)) + "</VRTDataset>")
    return Path(path)
