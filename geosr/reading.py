"""Read one tile of a scene as model input: bands, validity mask, halo padding, gap filling.

Tasks call :func:`read_tile` with an open dataset; they receive paths and windows, never
dataset handles (rasterio handles are not thread-safe and cannot be pickled). A read that
fails (a truncated or corrupt file) raises :class:`~geosr.errors.ReadError` naming the
file, the window and the band, with GDAL's cause.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
from rasterio.enums import MaskFlags
from rasterio.errors import NodataShadowWarning
from rasterio.io import DatasetReader

from geosr.errors import read_errors_named
from geosr.radiometry import Stretch, refuse_far_values
from geosr.scene import alpha_mask_band, data_bands_of, data_dtype
from geosr.tiling import Tile

__all__ = ["dataset_valid", "read_tile", "read_valid", "read_band_nodata", "fill_invalid", "pad_reflect"]


def dataset_valid(ds: DatasetReader, window=None) -> np.ndarray:
    """Where ``ds`` has data in ``window`` (all of it when None), as GDAL's masks say: a
    per-dataset mask or alpha band where there is one, else a pixel any band of which is valid.

    Not rasterio's ``dataset_mask``: on a 4-band raster whose first band is red it returns
    band 4's mask alone, taking band 4 for alpha - on an RGBN scene with nodata 0 it masked
    every pixel whose NIR was 0 (water), red, green and blue with it.
    """
    if MaskFlags.per_dataset in ds.mask_flag_enums[0]:  # an internal or .msk mask, or alpha
        return ds.read_masks(1, window=window) > 0
    alpha = alpha_mask_band(ds)
    if alpha is not None:  # beside four bands or more: GDAL calls every pixel valid
        return ds.read(alpha, window=window) > 0
    # the data bands' only: an alpha shadowed by the nodata value (gdalwarp -dstalpha -dstnodata) holds
    # its own, which its 0 in the collar is not, and counted every collar pixel valid
    masks = [ds.read_masks(b, window=window) > 0 for b in data_bands_of(ds) or range(1, ds.count + 1)]
    return np.logical_or.reduce(masks)


def read_valid(ds: DatasetReader, window, masked: bool, bands: Sequence[int] | None = None) -> np.ndarray:
    """Boolean validity of ``window``: the dataset mask (nodata, alpha, internal mask) and,
    in a float raster, none of ``bands`` (1-based; None: all) NaN or infinite
    (:attr:`geosr.scene.Scene.non_finite`) - but for a NaN that is the declared nodata, which
    is a band's own (:func:`read_band_nodata`). Bands the run does not write do not count: a
    hyperspectral cube's NaN water-absorption bands masked every pixel of its others."""
    if not masked:
        return np.ones((int(window.height), int(window.width)), bool)
    with warnings.catch_warnings(), read_errors_named(ds.name, window, "mask"):
        # nodata + alpha: GDAL (and geosr) use the nodata value; the user was told by GDAL
        # tools long before, and the warning would repeat for every tile.
        warnings.simplefilter("ignore", NodataShadowWarning)
        valid = dataset_valid(ds, window)
        if np.issubdtype(np.dtype(data_dtype(ds)), np.floating):
            data = ds.read(list(bands) if bands else None, window=window)
            if ds.nodata is not None and np.isnan(ds.nodata):
                # NaN is nodata band by band, as GDAL reads it (a pixel is masked where every
                # band is): one band's NaN leaves the others' values; inf is no value at all
                valid &= ~np.isinf(data).any(axis=0)
            else:  # GDAL's mask knows one nodata value; NaN and inf pixels without it are no-data too
                valid &= np.isfinite(data).all(axis=0)
    return valid


def read_band_nodata(ds: DatasetReader, window, bands: tuple[int, ...], nodata: float | None) -> np.ndarray | None:
    """Where each of ``bands`` (1-based) holds the nodata value in ``window``, ``[len(bands), h,
    w]``; None when no band does, or there is no nodata value.

    GDAL's nodata is per band: a pixel whose red band is 0 (nodata 0) has no red, even where
    its other bands have values - and the dataset mask (:func:`read_valid`) counts it valid.
    Written back as nodata in that band (not as the model's value, nudged off it).
    """
    if nodata is None or ds.count < 2:
        return None  # a one-band raster: the dataset mask is the band's
    with read_errors_named(ds.name, window, "bands"):
        data = ds.read(list(bands), window=window)
    hit = _nodata_hit(data, nodata)
    return hit if hit.any() else None


def _nodata_hit(values: np.ndarray, nodata: float) -> np.ndarray:
    """Where ``values`` hold ``nodata`` (NaN included)."""
    return np.isnan(values) if np.isnan(nodata) else values == np.asarray(nodata).astype(values.dtype)


def pad_reflect(data: np.ndarray, pad: tuple[int, int, int, int]) -> np.ndarray:
    """Reflect-pad the last two axes by ``(top, bottom, left, right)`` (scene edges, not zeros)."""
    top, bottom, left, right = pad
    if not any(pad):
        return data
    widths = [(0, 0)] * (data.ndim - 2) + [(top, bottom), (left, right)]
    # numpy's reflect repeats the reflection for pads wider than the axis (tiny rasters).
    return np.pad(data, widths, mode="reflect" if min(data.shape[-2:]) > 1 else "edge")


def fill_invalid(data: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Replace invalid pixels by their nearest valid neighbour.

    No-data values (0, 255, -9999...) must not feed the model: a model would treat them as
    dark/bright ground and ring around them. Nearest-valid filling keeps edges of the
    valid area natural for any interpolator or network.
    """
    if valid.all() or not valid.any():
        return data
    from scipy import ndimage  # here: its import costs 0.4 s of every run's and worker's start-up

    idx = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
    return data[..., idx[0], idx[1]]


def read_tile(
    ds: DatasetReader,
    tile: Tile,
    bands: Sequence[int],
    stretch: Stretch,
    masked: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Read ``bands`` (1-based) of a tile, padded to its full extent.

    Returns
    -------
    data : np.ndarray
        ``[C, H, W]`` float32 in model units (scene stretch applied, not clipped), invalid
        pixels filled from valid neighbours, halo outside the raster reflect-padded.
    valid : np.ndarray
        ``[h, w]`` bool validity of the read window (not padded): :func:`read_valid`.
    """
    raw = np.empty((len(bands), int(tile.read.height), int(tile.read.width)), data_dtype(ds))
    for i, b in enumerate(bands):  # band by band, so a failure names its band
        with read_errors_named(ds.name, tile.read, b):
            raw[i] = ds.read(b, window=tile.read)
    valid = read_valid(ds, tile.read, masked, bands)
    data = stretch.forward(raw)
    own_nodata = _band_nodata(raw, [ds.nodatavals[b - 1] for b in bands]) if masked and ds.count > 1 else []
    if not stretch.exact:  # --model nearest copies values, fills included
        band_valid = np.repeat(valid[None], len(bands), axis=0)
        for i, hit in own_nodata:  # a band's own declared nodata is no fill to refuse
            band_valid[i] &= ~hit
        refuse_far_values(ds.name, bands, raw, data, band_valid, tile.read)
    if not np.issubdtype(raw.dtype, np.integer):  # integers are finite
        # NaN and inf are invalid (read_valid) and filled below; zeroed first for a scene whose
        # pixels were not checked (open_scene(check_pixels=False)): a model takes finite values only
        data = np.where(np.isfinite(data), data, 0.0).astype(np.float32)
    filled = fill_invalid(data, valid)
    if masked and ds.count > 1:  # a one-band raster: its nodata is the dataset mask's
        # a band's own nodata in a valid pixel (its edge, a stripe): filled from that band's
        # valid neighbours too - a network would ring around the value, as around a pixel's
        for i, hit in own_nodata:
            if (hit & valid).any():  # else its nodata is where no band has a value: filled above
                filled[i] = fill_invalid(data[i], valid & ~hit)
    return pad_reflect(filled, tile.pad), valid


def _band_nodata(raw: np.ndarray, nodata: Sequence[float | None]) -> list[tuple[int, np.ndarray]]:
    """``(i, where band i holds its nodata value)`` for each band of ``raw`` that does somewhere."""
    hits = []
    for i, value in enumerate(nodata):
        if value is None:
            continue
        hit = _nodata_hit(raw[i], value)
        if hit.any():
            hits.append((i, hit))
    return hits
