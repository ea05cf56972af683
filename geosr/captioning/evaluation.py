"""How well a degradation estimator measures known synthetic degradations on real imagery.

Protocol (one draw per crop, all from one seeded generator):

1. pick an image, cut a random HR crop of ``crop * scale`` px with no nodata in it;
2. draw an LR blur sigma ``g`` uniform in ``blur_range`` (LR px), half the crops
   isotropic, half anisotropic with axis ratio uniform in ``aniso_ratio_range`` and a
   uniform orientation (the axes are ``g * sqrt(r)`` and ``g / sqrt(r)``, so ``g`` stays
   the geometric mean), and a noise sigma uniform in ``noise_range`` (DN);
3. degrade with :func:`geosr.training.degradations.apply_degradation` (blur at HR, bicubic
   x``scale`` down, noise), quantise to uint8 as a real tile would be, and estimate.

Blurring at HR and downsampling makes the truth well defined: the image's own blur and
sensor noise shrink by ``scale`` and are dominated by the synthetic ones.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Protocol, Sequence

import numpy as np
import rasterio

from geosr.errors import InputError

if TYPE_CHECKING:
    from geosr.training.degradations import DegradationParams

__all__ = ["IMAGE_SUFFIXES", "Estimator", "degraded_crops", "evaluate_captioner", "find_images"]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


class Estimator(Protocol):
    """Anything with ``estimate(image) -> DegradationEstimate``."""

    def estimate(self, image: np.ndarray): ...


def find_images(roots: Iterable[str | Path]) -> list[Path]:
    """Image files (by suffix) under each root, recursively, sorted; a file root is kept."""
    paths: list[Path] = []
    for root in map(Path, roots):
        if root.is_file():
            paths.append(root)
        elif root.is_dir():
            paths.extend(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            raise InputError(f"no such image file or folder: {root}")
    return sorted(paths)


def _read_rgb(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """First three bands as ``H x W x 3`` uint8 and the valid-pixel mask."""
    with rasterio.open(path) as ds:
        if ds.count < 3 or ds.dtypes[0] != "uint8":
            raise InputError(f"{path}: need an RGB uint8 image, got {ds.count} x {ds.dtypes[0]}")
        rgb = ds.read([1, 2, 3]).transpose(1, 2, 0)
        valid = ds.dataset_mask() > 0
    return rgb, valid


def degraded_crops(
    image_paths: Sequence[str | Path],
    n_crops: int = 200,
    crop: int = 96,
    seed: int = 0,
    scale: int = 2,
    blur_range: tuple[float, float] = (0.5, 4.0),
    noise_range: tuple[float, float] = (0.0, 25.0),
    aniso_ratio_range: tuple[float, float] = (2.0, 4.0),
) -> Iterator[tuple[np.ndarray, "DegradationParams"]]:
    """Yield ``(lr_uint8, params)`` pairs drawn as the module docstring says.

    Even-numbered crops are isotropic, odd-numbered ones anisotropic. See
    :func:`evaluate_captioner` for the parameters.
    """
    from geosr.training.degradations import DegradationParams, apply_degradation

    if not image_paths:
        raise InputError("no images to draw crops from")
    rng = np.random.default_rng(seed)
    hr_size = crop * scale
    images = [_read_rgb(Path(p)) for p in image_paths]
    images = [im for im in images if min(im[0].shape[:2]) >= hr_size]
    if not images:
        raise InputError(f"no image is at least {hr_size} px on each side")
    done = 0
    while done < n_crops:
        rgb, valid = images[int(rng.integers(len(images)))]
        y = int(rng.integers(rgb.shape[0] - hr_size + 1))
        x = int(rng.integers(rgb.shape[1] - hr_size + 1))
        if not valid[y : y + hr_size, x : x + hr_size].all():
            continue
        hr = rgb[y : y + hr_size, x : x + hr_size].astype(np.float32) / 255.0
        g = float(rng.uniform(*blur_range))
        aniso = done % 2 == 1
        ratio = float(rng.uniform(*aniso_ratio_range)) if aniso else 1.0
        params = DegradationParams(
            scale=scale,
            blur_sigma_x=g * math.sqrt(ratio) * scale,
            blur_sigma_y=g / math.sqrt(ratio) * scale,
            blur_theta_deg=float(rng.uniform(0.0, 180.0)) if aniso else 0.0,
            noise_sigma=float(rng.uniform(*noise_range)),
            jpeg_quality=None,
            protocol="aniso" if aniso else "iso",
        )
        lr = apply_degradation(hr, params, rng)
        yield np.round(lr * 255.0).astype(np.uint8), params
        done += 1


def evaluate_captioner(
    image_paths: Sequence[str | Path],
    n_crops: int = 200,
    crop: int = 96,
    seed: int = 0,
    scale: int = 2,
    estimator: Estimator | None = None,
    blur_range: tuple[float, float] = (0.5, 4.0),
    noise_range: tuple[float, float] = (0.0, 25.0),
    aniso_ratio_range: tuple[float, float] = (2.0, 4.0),
) -> dict:
    """Median absolute errors of an estimator on synthetically degraded real crops.

    Parameters
    ----------
    image_paths : sequence of path
        RGB uint8 images (GeoTIFF, PNG...), at least ``crop * scale`` px on each side;
        smaller ones are left out.
    n_crops : int
        Number of degraded crops.
    crop : int
        LR crop size in px (the size of the estimated tile).
    seed : int
        Seed of the whole draw.
    scale : int
        Downsampling factor between the HR crop and the estimated tile.
    estimator : Estimator, optional
        Defaults to :class:`~geosr.captioning.degradation.DegradationCaptioner`.
    blur_range, noise_range, aniso_ratio_range : (float, float)
        Ranges of the LR blur sigma (px), noise sigma (DN) and anisotropic axis ratio.

    Returns
    -------
    dict
        ``n``, ``noise_median_abs_err`` (DN), ``blur_median_abs_err`` (LR px),
        ``aniso_accuracy`` (fraction of crops whose iso/aniso class is right),
        ``angle_median_abs_err_deg`` (anisotropic crops), and the setup.
    """
    from geosr.captioning.degradation import DegradationCaptioner

    estimator = DegradationCaptioner() if estimator is None else estimator
    noise_err, blur_err, angle_err, correct = [], [], [], []
    for lr, params in degraded_crops(
        image_paths, n_crops, crop, seed, scale, blur_range, noise_range, aniso_ratio_range
    ):
        est = estimator.estimate(lr)
        noise_err.append(abs(est.noise_sigma - params.noise_sigma))
        blur_err.append(abs(est.blur_sigma - params.blur_sigma / scale))
        correct.append(est.anisotropic == params.anisotropic)
        if params.protocol == "aniso":
            d = abs(est.blur_angle_deg - params.blur_angle_deg) % 180.0
            angle_err.append(min(d, 180.0 - d))
    return {
        "n": len(noise_err),
        "noise_median_abs_err": float(np.median(noise_err)),
        "blur_median_abs_err": float(np.median(blur_err)),
        "aniso_accuracy": float(np.mean(correct)),
        "angle_median_abs_err_deg": float(np.median(angle_err)) if angle_err else math.nan,
        "setup": {
            "images": len(image_paths),
            "n_crops": n_crops,
            "crop": crop,
            "scale": scale,
            "seed": seed,
            "blur_range": list(blur_range),
            "noise_range": list(noise_range),
            "aniso_ratio_range": list(aniso_ratio_range),
        },
    }
