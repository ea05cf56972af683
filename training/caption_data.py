"""Training crops of the captioning VLM: real HR crops, degraded, with the true caption.

One draw per crop, from one seeded generator:

1. an image and a scale (``scales``), an HR crop of ``lr_size * scale`` px without nodata;
2. a degradation: ``clean_share`` of the crops anti-aliased bicubic only (the caption says
   0.3 px, as :func:`~geosr.degradations.describe` does for the clean protocol),
   the others a Gaussian blur whose LR sigma (geometric mean of the axes) is uniform in
   ``blur_range``, isotropic or (``aniso_share``) with an axis ratio uniform in
   ``aniso_ratio_range`` and a uniform orientation; then noise (none for ``noise_free_share``
   of the crops, else uniform in ``noise_range`` DN) and JPEG (``jpeg_share``, quality
   uniform in ``jpeg_quality_range``), through
   :func:`~geosr.degradations.apply_degradation`;
3. quantised to uint8, and the model's ``image_size`` px cut at a random offset of the LR
   (so the JPEG 8 x 8 grid is not always at the crop's corner, as in a tile of a scene).

The wider ranges than the evaluation's (blur from 0.3 px, ratios from 1, JPEG down to
quality 10) put examples on both sides of every boundary of the caption grammar.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import rasterio

from geosr.errors import InputError
from geosr.degradations import CLEAN_BLUR_LR_PX, DegradationParams, apply_degradation, describe

__all__ = ["CaptionCrops", "CropRecipe", "draw_caption_crops", "draw_params"]

# LR px beyond the model's view, so the view can sit at a random JPEG-grid phase
_PHASE_MARGIN = 8


@dataclass(frozen=True)
class CropRecipe:
    """Ranges of the degradations drawn for captioner training (see the module docstring)."""

    image_size: int = 64
    scales: tuple[int, ...] = (2, 4)
    clean_share: float = 0.15
    blur_range: tuple[float, float] = (0.3, 4.0)
    aniso_share: float = 0.5
    aniso_ratio_range: tuple[float, float] = (1.0, 4.0)
    noise_free_share: float = 0.25
    noise_range: tuple[float, float] = (0.0, 30.0)
    jpeg_share: float = 0.3
    jpeg_quality_range: tuple[int, int] = (10, 95)


@dataclass
class CaptionCrops:
    """A bank of degraded crops.

    Attributes
    ----------
    images : numpy.ndarray
        ``N x S x S x 3`` uint8 LR views.
    captions : list of str
        The true caption of each (``describe(params)``).
    targets : numpy.ndarray
        ``N x 6`` float32: noise DN, LR blur sigma px, anisotropic (0/1), major-axis angle
        deg, JPEG (0/1), JPEG quality (0 without JPEG).
    """

    images: np.ndarray
    captions: list[str]
    targets: np.ndarray

    def save(self, path: str | Path) -> None:
        """Write the bank as one ``.npz``."""
        np.savez(path, images=self.images, captions=np.array(self.captions), targets=self.targets)

    @classmethod
    def load(cls, path: str | Path) -> "CaptionCrops":
        """Read a bank written by :meth:`save`."""
        with np.load(path) as f:
            return cls(f["images"], [str(c) for c in f["captions"]], f["targets"])


def draw_params(rng: np.random.Generator, scale: int, recipe: CropRecipe) -> DegradationParams:
    """One degradation of the recipe at ``scale`` (sigmas in HR px, as the params take them)."""
    noise = 0.0 if rng.random() < recipe.noise_free_share else float(rng.uniform(*recipe.noise_range))
    jpeg = None
    if rng.random() < recipe.jpeg_share:
        lo, hi = recipe.jpeg_quality_range
        jpeg = int(rng.integers(lo, hi + 1))
    if rng.random() < recipe.clean_share:
        sigma = CLEAN_BLUR_LR_PX * scale
        return DegradationParams(scale, sigma, sigma, 0.0, noise, jpeg, "clean")
    g = float(rng.uniform(*recipe.blur_range)) * scale
    if rng.random() < recipe.aniso_share:
        ratio = float(rng.uniform(*recipe.aniso_ratio_range))
        theta = float(rng.uniform(0.0, 180.0))
        return DegradationParams(scale, g * math.sqrt(ratio), g / math.sqrt(ratio), theta, noise, jpeg, "aniso")
    return DegradationParams(scale, g, g, 0.0, noise, jpeg, "iso")


def _read_images(paths: Sequence[Path]) -> list[tuple[np.ndarray, np.ndarray]]:
    images = []
    for path in paths:
        with rasterio.open(path) as ds:
            if ds.count < 3 or ds.dtypes[0] != "uint8":
                continue
            images.append((ds.read([1, 2, 3]).transpose(1, 2, 0), ds.dataset_mask() > 0))
    return images


def draw_caption_crops(
    image_paths: Sequence[str | Path], n: int, recipe: CropRecipe, seed: int = 0
) -> CaptionCrops:
    """Draw ``n`` degraded crops of the images as the module docstring says.

    Raises
    ------
    InputError
        No RGB uint8 image large enough for the smallest scale.
    """
    rng = np.random.default_rng(seed)
    images = _read_images([Path(p) for p in image_paths])
    lr_size = recipe.image_size + _PHASE_MARGIN
    usable = {s: [im for im in images if min(im[0].shape[:2]) >= lr_size * s] for s in recipe.scales}
    scales = [s for s in recipe.scales if usable[s]]
    if not scales:
        raise InputError(f"no RGB uint8 image has {lr_size * min(recipe.scales)} px on each side")
    out = np.empty((n, recipe.image_size, recipe.image_size, 3), np.uint8)
    captions: list[str] = []
    targets = np.zeros((n, 6), np.float32)
    done = 0
    while done < n:
        scale = scales[int(rng.integers(len(scales)))]
        rgb, valid = usable[scale][int(rng.integers(len(usable[scale])))]
        hr_size = lr_size * scale
        y = int(rng.integers(rgb.shape[0] - hr_size + 1))
        x = int(rng.integers(rgb.shape[1] - hr_size + 1))
        if not valid[y : y + hr_size, x : x + hr_size].all():
            continue
        params = draw_params(rng, scale, recipe)
        hr = rgb[y : y + hr_size, x : x + hr_size].astype(np.float32) / 255.0
        lr = np.round(apply_degradation(hr, params, rng) * 255.0).astype(np.uint8)
        oy, ox = (int(v) for v in rng.integers(0, _PHASE_MARGIN + 1, size=2))
        out[done] = lr[oy : oy + recipe.image_size, ox : ox + recipe.image_size]
        captions.append(describe(params))
        targets[done] = (
            params.noise_sigma,
            params.blur_sigma / scale,
            float(params.anisotropic),
            params.blur_angle_deg,
            float(params.jpeg_quality is not None),
            float(params.jpeg_quality or 0),
        )
        done += 1
    return CaptionCrops(out, captions, targets)
