"""Multispectral scoring: every band, and spectral indices, of a scene run through the engine.

Protocol, for one HR raster of any band count and dtype:

1. read the bands (the valid area's invalid pixels filled from valid neighbours, so no-data
   never bleeds into the LR), cut to whole multiples of ``scale`` at the right and bottom;
2. degrade every band with the same :func:`geosr.degradations.degrade` draw (``degradation``,
   ``seed``), each band mapped from its valid minimum and maximum to the protocol's [0, 1]
   first and back after (a uint16 or float band keeps its levels; noise is in 8-bit steps of
   that range); round to the dtype;
3. write the LR as a GeoTIFF on the HR grid coarsened ``scale`` times, with the HR's band
   descriptions, scales, offsets, units, colour interpretation, band metadata (wavelengths),
   tags and nodata; an LR pixel is valid when all of its HR pixels are;
4. run ``geosr upscale`` on it twice, with the model and with bicubic (:func:`geosr.upscale_to_file`:
   tiles, stretch, blending and writing as any run);
5. score each band on the pixels valid in the HR and in both outputs, away from the edges and
   from no-data by ``2 * scale`` px (the degradation's blur reaches across them): PSNR with
   the band's peak (255 for uint8, else the HR band's valid range); each normalised
   difference ``(a - b) / (a + b)`` of two bands (NDVI: NIR, red), computed on the values the
   scales and offsets give, against the HR's (RMSE); and how edges line up across bands: the
   offset of the peak of the cross-correlation of each band's gradient magnitude with the
   first band's (:func:`edge_offset`), in the HR and in each output.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import ColorInterp
from scipy import ndimage

from geosr.api import upscale_to_file
from geosr.band_roles import parse_bands_to_model, parse_rgb_bands
from geosr.degradations import degrade
from geosr.errors import InputError
from geosr.evaluation import largest_valid_rectangle
from geosr.reading import dataset_valid, fill_invalid
from geosr.scene import data_bands_of

__all__ = ["evaluate_bands", "write_degraded_bands", "edge_offset", "normalised_difference"]

#: Shifts (px) the cross-correlation of :func:`edge_offset` looks within.
MAX_EDGE_SHIFT = 4


def write_degraded_bands(hr_path: str | os.PathLike, lr_path: str | os.PathLike, scale: int, degradation: str,
                         seed: int = 0) -> Path:
    """Write the LR of every band of ``hr_path`` (steps 1-3 of the module docstring) to ``lr_path``.

    Raises
    ------
    InputError
        The raster is too small for ``scale``, or has no valid pixel.
    """
    with rasterio.open(hr_path) as ds:
        bands = data_bands_of(ds)  # an alpha band is the mask (valid), not a band to score
        data = ds.read(bands).astype(np.float64)
        valid = dataset_valid(ds)
        profile, meta = ds.profile, _band_metadata(ds, bands)
    h, w = (n // scale * scale for n in data.shape[1:])
    if min(h, w) < 16 * scale:
        raise InputError(f"{hr_path}: {data.shape[2]} x {data.shape[1]} px is too small to degrade x{scale}")
    if not valid.any():
        raise InputError(f"{hr_path} has no valid pixel")
    data, valid = fill_invalid(data[:, :h, :w], valid[:h, :w]), valid[:h, :w]
    low = data.reshape(len(data), -1).min(axis=1)[:, None, None]
    span = np.maximum(data.reshape(len(data), -1).max(axis=1)[:, None, None] - low, 1e-12)
    lr, _ = degrade(((data - low) / span).transpose(1, 2, 0).astype(np.float32), scale, degradation, seed=seed)
    lr = lr.transpose(2, 0, 1) * span + low
    dtype = np.dtype(meta["dtype"])  # the data bands' (the profile's is band 1's: maybe an alpha's)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        lr = np.clip(np.rint(lr), info.min, info.max)
    lr = lr.astype(dtype)
    lr_valid = valid.reshape(h // scale, scale, w // scale, scale).all(axis=(1, 3))
    nodata = meta["nodata"]
    if nodata is not None:
        lr[:, ~lr_valid] = nodata
    out = dict(driver="GTiff", width=w // scale, height=h // scale, count=len(lr), dtype=dtype.name, nodata=nodata,
               compress="DEFLATE", tiled=True, crs=profile.get("crs"), transform=profile["transform"] @ Affine.scale(scale),
               photometric="MINISBLACK")  # else GDAL makes a 4-band uint8 RGBA; the HR's interpretation is set below
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(lr_path, "w", **out) as dst:
        dst.write(lr)
        _write_band_metadata(dst, meta)
        if nodata is None and not lr_valid.all():
            dst.write_mask(lr_valid.astype(np.uint8) * 255)
    return Path(lr_path)


def _band_metadata(ds, bands: Sequence[int] | None = None) -> dict:
    """The metadata of ``bands`` (1-based; default all) of ``ds``; a data band labelled alpha
    (:func:`geosr.scene.alpha_band_of`) is written back undefined."""
    bands = list(bands or range(1, ds.count + 1))
    pick = [b - 1 for b in bands]
    return dict(dtype=ds.dtypes[pick[0]], nodata=ds.nodatavals[pick[0]], descriptions=[ds.descriptions[i] for i in pick],
                scales=[ds.scales[i] for i in pick], offsets=[ds.offsets[i] for i in pick],
                units=[ds.units[i] for i in pick],
                colorinterp=[ColorInterp.undefined if ds.colorinterp[i] == ColorInterp.alpha else ds.colorinterp[i]
                             for i in pick],
                tags=ds.tags(), band_tags=[(ds.tags(b), ds.tags(b, ns="IMAGERY")) for b in bands])


def _write_band_metadata(dst, meta: dict) -> None:
    for b, text in enumerate(meta["descriptions"], start=1):
        if text:
            dst.set_band_description(b, text)
    dst.scales, dst.offsets, dst.units = meta["scales"], meta["offsets"], [u or "" for u in meta["units"]]
    dst.colorinterp = meta["colorinterp"]
    dst.update_tags(**meta["tags"])
    for b, (default, imagery) in enumerate(meta["band_tags"], start=1):
        dst.update_tags(b, **default)
        if imagery:
            dst.update_tags(b, ns="IMAGERY", **imagery)


def normalised_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(a - b) / (a + b)``, NaN where ``a + b`` is 0 (NDVI is ``normalised_difference(nir, red)``)."""
    total = a + b
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total != 0, (a - b) / np.where(total != 0, total, 1), np.nan)


def edge_offset(band: np.ndarray, reference: np.ndarray, max_shift: int = MAX_EDGE_SHIFT) -> tuple[float, float]:
    """Where ``band``'s edges lie relative to ``reference``'s: ``(dy, dx)`` px, 0 when they line up.

    The peak of the cross-correlation of the two gradient magnitudes (mean removed), within
    ``max_shift`` px, refined to a fraction of a pixel by a parabola through the peak and its
    neighbours along each axis. A band shifted by ``(dy, dx)`` against the reference gives
    ``(dy, dx)``; colour fringes in a composite are such shifts.
    """
    def edges(img: np.ndarray) -> np.ndarray:
        gy, gx = np.gradient(img.astype(np.float64))
        mag = np.hypot(gy, gx)
        return mag - mag.mean()

    a, r = edges(band), edges(reference)
    corr = np.fft.irfft2(np.fft.rfft2(a) * np.conj(np.fft.rfft2(r)), s=a.shape)
    shifts = range(-max_shift, max_shift + 1)
    window = np.array([[corr[dy % a.shape[0], dx % a.shape[1]] for dx in shifts] for dy in shifts])
    iy, ix = np.unravel_index(int(np.argmax(window)), window.shape)

    def refine(values: np.ndarray, i: int) -> float:
        if 0 < i < len(values) - 1:
            left, mid, right = values[i - 1], values[i], values[i + 1]
            curve = left - 2 * mid + right
            if curve < 0:
                return i - max_shift + 0.5 * (left - right) / curve
        return float(i - max_shift)

    return refine(window[:, ix], iy), refine(window[iy, :], ix)


def _read(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict]:
    with rasterio.open(path) as ds:
        bands = data_bands_of(ds)
        return ds.read(bands).astype(np.float64), dataset_valid(ds), _band_metadata(ds, bands)


def _psnr(out: np.ndarray, hr: np.ndarray, keep: np.ndarray, peak: float) -> float:
    mse = float(np.mean((out[keep] - hr[keep]) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(peak**2 / mse)


def _rmse(out: np.ndarray, hr: np.ndarray, keep: np.ndarray) -> float:
    both = keep & np.isfinite(out) & np.isfinite(hr)
    return float(np.sqrt(np.mean((out[both] - hr[both]) ** 2)))


def evaluate_bands(
    hr_path: str | os.PathLike,
    scale: int,
    degradation: str = "clean",
    seed: int = 0,
    indices: Sequence[tuple[int, int]] = (),
    workdir: str | os.PathLike | None = None,
    **upscale_options,
) -> dict:
    """Degrade every band of ``hr_path``, run the LR through the engine (model and bicubic), score per band.

    See the module docstring for the protocol.

    Parameters
    ----------
    hr_path : path-like
        The HR raster (any band count and dtype).
    scale : int
        2, 3, 4 or 8.
    degradation : {"clean", "iso", "aniso"}
        :mod:`geosr.degradations` protocol making the LR (``clean``: anti-aliased bicubic).
    seed : int
        Seed of the degradation (the runs' own seeds are :func:`geosr.upscale_to_file`'s default).
    indices : sequence of (int, int)
        Pairs of 1-based bands ``(a, b)`` whose normalised difference ``(a - b) / (a + b)`` is
        scored (NDVI: ``(nir, red)``).
    workdir : path-like, optional
        Where the LR and the outputs are written (kept); a temporary folder otherwise.
    **upscale_options
        Keyword arguments of :func:`geosr.upscale_to_file` for the model's run (``model``,
        ``bands_to_model``, ``rgb_bands``, ``device``, ``dtype``, ``tile``...).

    Returns
    -------
    dict
        ``settings``; ``bands``: per band ``band``, ``description``, ``psnr`` of ``model`` and
        ``bicubic``, ``gain`` (dB), ``edge_offset`` (``dy, dx`` against band 1) in ``hr``,
        ``model`` and ``bicubic``; ``indices``: per pair ``bands``, ``rmse`` of ``model`` and
        ``bicubic``, ``change`` (model / bicubic - 1); ``run``: the model run's ``seconds``,
        ``megapixels`` (output pixels computed), ``mp_per_s`` and its ``GEOSR_*`` band tags;
        ``metadata_kept``: whether the output kept the LR's dtype, nodata, band descriptions,
        scales, offsets and units.

    Raises
    ------
    InputError
        A band of ``indices`` does not exist, the raster is too small, or nothing valid is
        left to score.
    """
    with rasterio.open(hr_path) as ds:
        data_bands = data_bands_of(ds)  # the LR holds these, as its bands 1..n: an alpha is the mask
    for pair in indices:
        if len(pair) != 2 or not all(b in data_bands for b in pair):
            raise InputError(f"--ndvi takes two of the bands {_listed(data_bands)} (e.g. 4,1 for NIR, red), got {pair}")
    position = {b: data_bands.index(b) + 1 for b in data_bands}
    given = dict(upscale_options)
    for option, parse in (("rgb_bands", parse_rgb_bands), ("bands_to_model", parse_bands_to_model)):
        # the user's numbers are the HR file's, the run's the LR's (all, rgb: as they are)
        chosen = upscale_options.get(option)
        if chosen is None or isinstance(chosen := parse(chosen), str):
            continue
        if any(b not in position for b in chosen):
            raise InputError(f"--{option.replace('_', '-')} takes bands among {_listed(data_bands)}, got "
                             f"{','.join(map(str, chosen))}")
        upscale_options = {**upscale_options, option: tuple(position[b] for b in chosen)}
    with tempfile.TemporaryDirectory(prefix="geosr-bands-") as tmp:
        folder = Path(workdir) if workdir is not None else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        lr = write_degraded_bands(hr_path, folder / "lr.tif", scale, degradation, seed)
        t0 = time.perf_counter()
        report = upscale_to_file(lr, folder / "model.tif", scale=scale, overwrite=True, **upscale_options)
        seconds = time.perf_counter() - t0
        upscale_to_file(lr, folder / "bicubic.tif", scale=scale, model="bicubic", overwrite=True,
                        **{k: v for k, v in upscale_options.items() if k in ("tile", "overlap", "bands")})
        hr, hr_valid, meta = _read(hr_path)
        model, model_valid, model_meta = _read(folder / "model.tif")
        bicubic, bicubic_valid, _ = _read(folder / "bicubic.tif")
        with rasterio.open(lr) as src:
            lr_meta = _band_metadata(src)
        tags = {k: v for k, v in model_meta["tags"].items() if k.startswith("GEOSR_") and k.endswith(("_BANDS", "_SOURCE"))}
    h, w = model.shape[1:]
    hr, hr_valid = hr[:, :h, :w], hr_valid[:h, :w]
    keep = ndimage.binary_erosion(hr_valid & model_valid & bicubic_valid, iterations=2 * scale, border_value=0)
    if not keep.any():
        raise InputError(f"{hr_path}: no valid pixel is left to score away from edges and no-data")
    r0, r1, c0, c1 = largest_valid_rectangle(keep)  # edges are compared inside it
    bands = []
    for i in range(len(hr)):
        peak = 255.0 if meta["dtype"] == "uint8" else float(np.ptp(hr[i][keep])) or 1.0
        scores = {name: _psnr(img[i], hr[i], keep, peak) for name, img in (("model", model), ("bicubic", bicubic))}
        bands.append({
            "band": data_bands[i],
            "description": meta["descriptions"][i],
            "psnr": scores,
            "gain": scores["model"] - scores["bicubic"],
            "edge_offset": {name: edge_offset(img[i, r0:r1, c0:c1], img[0, r0:r1, c0:c1])
                            for name, img in (("hr", hr), ("model", model), ("bicubic", bicubic))},
        })
    scored = []
    for a, b in indices:
        values = {name: normalised_difference(*(_physical(img, meta, position[k]) for k in (a, b)))
                  for name, img in (("hr", hr), ("model", model), ("bicubic", bicubic))}
        rmse = {name: _rmse(values[name], values["hr"], keep) for name in ("model", "bicubic")}
        scored.append({"bands": [a, b], "rmse": rmse, "change": rmse["model"] / rmse["bicubic"] - 1.0})
    keys = ("dtype", "nodata", "descriptions", "scales", "offsets", "units")
    return {
        "settings": {"hr": str(hr_path), "scale": scale, "degradation": degradation, "seed": seed,
                     "border": 2 * scale, "scored_fraction": float(keep.mean()),
                     **{k: v for k, v in given.items() if isinstance(v, (str, int, float, tuple, list))}},
        "bands": bands,
        "indices": scored,
        "run": {"seconds": seconds, "megapixels": report.processed_megapixels,
                "mp_per_s": report.processed_megapixels / seconds, "tags": tags},
        "metadata_kept": all(model_meta[k] == lr_meta[k] for k in keys),
    }


def _listed(bands: Sequence[int]) -> str:
    return ",".join(map(str, bands))


def _physical(img: np.ndarray, meta: dict, band: int) -> np.ndarray:
    """Band ``band`` (1-based among the data bands) in the units its scale and offset give (reflectance for Sentinel-2 L2A)."""
    return img[band - 1] * meta["scales"][band - 1] + meta["offsets"][band - 1]

