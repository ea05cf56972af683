"""A scene as its own ground truth: degrade it to an LR GeoTIFF, score an upscaled output against it.

``geosr bench --degrade PROTOCOL`` measures whole runs for quality as well as speed: the
given RGB scene is the HR truth, :func:`write_degraded` writes its LR (the
:mod:`geosr.degradations` protocol, on the scene's grid coarsened ``scale``
times: same CRS and bounds) and :func:`score_output` compares the run's output with the
scene. Scores leave out a band of ``2 * scale`` HR pixels along the scene's edges and
around no-data (the blur of the degradation reaches across them).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from scipy import ndimage

from geosr.errors import InputError
from geosr.reading import dataset_valid
from geosr.scene import data_bands_of, data_dtype, rgb_uint8_bands

__all__ = ["write_degraded", "score_output"]


def _read_rgb(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict]:
    """``H x W x 3`` float32 in [0, 1], validity ``H x W`` and the profile of an RGB uint8 raster."""
    with rasterio.open(path) as ds:
        bands = rgb_uint8_bands(ds)
        if bands is None:
            raise InputError(f"{path}: a reference scene must be RGB uint8, got {len(data_bands_of(ds))} band(s) of "
                             f"{data_dtype(ds)}")
        rgb = ds.read(bands).transpose(1, 2, 0).astype(np.float32) / 255.0
        return rgb, dataset_valid(ds), ds.profile


def write_degraded(hr_path: str | os.PathLike, lr_path: str | os.PathLike, scale: int, protocol: str,
                   seed: int = 0) -> Path:
    """Write the LR of the RGB scene ``hr_path`` by ``protocol`` to ``lr_path`` (a GeoTIFF).

    The scene is cut to whole multiples of ``scale`` at its right and bottom edges, so the
    LR grid is the HR grid coarsened ``scale`` times from the same origin. An LR pixel is
    valid (internal mask) when all of its HR pixels are.
    """
    from geosr.degradations import degrade

    rgb, valid, profile = _read_rgb(hr_path)
    h, w = (n // scale * scale for n in rgb.shape[:2])
    if min(h, w) < 16 * scale:
        raise InputError(f"{hr_path}: {rgb.shape[1]} x {rgb.shape[0]} px is too small to degrade x{scale}")
    lr, _ = degrade(rgb[:h, :w], scale, protocol, seed=seed)
    lr_valid = valid[:h, :w].reshape(h // scale, scale, w // scale, scale).all(axis=(1, 3))
    out = dict(driver="GTiff", width=w // scale, height=h // scale, count=3, dtype="uint8", compress="DEFLATE",
               tiled=True, crs=profile.get("crs"), transform=profile["transform"] @ Affine.scale(scale))
    with rasterio.open(lr_path, "w", **out) as ds:
        ds.write(np.round(np.clip(lr, 0, 1) * 255).astype(np.uint8).transpose(2, 0, 1))
        if not lr_valid.all():
            ds.write_mask(lr_valid.astype(np.uint8) * 255)
    return Path(lr_path)


def score_output(hr_path: str | os.PathLike, out_path: str | os.PathLike, scale: int) -> dict[str, float]:
    """PSNR (dB) and SSIM of the output against the scene, on the valid pixels both share.

    SSIM is computed on the largest rectangle of such pixels; ``scored_fraction`` is the
    share of the output's pixels that the PSNR counts.
    """
    from geosr.evaluation import largest_valid_rectangle, ssim

    hr, hr_valid, _ = _read_rgb(hr_path)
    out, out_valid, _ = _read_rgb(out_path)
    h, w = out.shape[:2]
    if hr.shape[0] < h or hr.shape[1] < w:
        raise InputError(f"{out_path} ({w} x {h}) is larger than its reference {hr_path}")
    hr, hr_valid = hr[:h, :w], hr_valid[:h, :w]
    keep = ndimage.binary_erosion(hr_valid & out_valid, iterations=2 * scale, border_value=0)
    if not keep.any():
        raise InputError(f"{out_path} and {hr_path} share no valid pixels away from edges")
    mse = float(((out - hr) ** 2)[keep].mean())
    r0, r1, c0, c1 = largest_valid_rectangle(keep)
    return {
        "psnr": float(10 * np.log10(1.0 / max(mse, 1e-12))),
        "ssim": float(ssim(out[r0:r1, c0:c1], hr[r0:r1, c0:c1])),
        "scored_fraction": float(keep.mean()),
    }
