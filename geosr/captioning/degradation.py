"""The default captioner: measures noise, blur and JPEG blocking on the tile itself.

No weights. Three measurements, each a classical estimator:

- **noise** (DN, 0-255 scale): the patch-covariance method of Chen, Zhu & Heng (ICCV
  2015). The eigenvalues of the covariance of all overlapping ``d x d x C`` patches that
  image structure does not reach are the white-noise variance; they are the tail whose
  mean equals its median. Patches touching saturated pixels are left out (clipping
  shrinks the noise there).
- **blur** (px of the given image, anisotropic): multi-scale directional gradient energy.
  Power-law content (power ~ |f|^-alpha) through a Gaussian blur of covariance ``S``,
  differentiated along ``n`` with a derivative-of-Gaussian of scale ``s``, has a mean
  squared response ``k_n (n'Sn + s^2) ** -beta``: the blur shifts the energy-vs-scale
  curve by ``n'Sn``, whatever the content's amplitude ``k_n``. Per direction the shift is
  found over six scales (white-noise energy, known from the noise estimate, subtracted
  first), ``n'Sn = m + a cos 2t + b sin 2t`` is fitted over eight directions, and ``S``
  gives the axes (geometric mean = ``blur_sigma``) and the orientation. Edge-ratio
  ("reblur") methods were tried first and fail on dense aerial texture.
- **JPEG**: blocking, i.e. how much larger the luminance steps across the 8 x 8 grid are
  than steps inside the blocks; its strength maps to a rough quality.

The caption is written with :func:`geosr.captioning.vocabulary.format_caption`, the same
grammar :func:`geosr.training.degradations.describe` uses for the truth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage

from geosr.captioning.vocabulary import format_caption
from geosr.errors import InputError

__all__ = ["DegradationCaptioner", "DegradationEstimate"]

_LUMA = np.array([0.299, 0.587, 0.114])
# noise of independent equal-sigma channels, seen in the luminance
_LUMA_NOISE_GAIN = float(np.sqrt((_LUMA**2).sum()))
_PATCH = 4  # noise patch side: 4 x 4 x 3 = 48 dims, enough samples on a 64 px tile
_SCALES = (0.8, 1.1, 1.5, 2.0, 2.7, 3.6)  # derivative-of-Gaussian scales (px)
_ANGLES = 8  # directional derivatives every 22.5 deg
_MARGIN = 6  # px of tile border left out of the energies (reflect padding)
_VAR_GRID = np.linspace(0.0, 25.0, 501)  # blur variance candidates, px^2 (sigma <= 5)
_BETA_GRID = np.linspace(0.5, 2.0, 16)  # content power-law exponent candidates
_MIN_VAR = 1e-3
# calibrated on train/ (ucmerced + neon; never val/): the estimated axis ratio from
# which a blur is called anisotropic (best iso vs ratio-2..4 separation)
_ANISO_DECISION_RATIO = 1.7
# calibrated on train/: grid-phase step ratio above which an image counts as JPEG
_JPEG_BLOCKINESS = 1.3


@dataclass(frozen=True)
class DegradationEstimate:
    """What :meth:`DegradationCaptioner.estimate` measured on one image.

    Attributes
    ----------
    noise_sigma : float
        Additive white noise sigma in DN on the 0-255 scale.
    blur_sigma : float
        Gaussian blur sigma in px of the given image (geometric mean of the two axes).
    anisotropic : bool
        Whether the estimated major/minor axis ratio reaches the decision ratio
        (calibrated on the training images).
    blur_angle_deg : float
        Direction of the major blur axis in [0, 180), degrees counter-clockwise from
        the image x axis as seen on screen (meaningful when ``anisotropic``).
    jpeg_quality : int or None
        Rough JPEG quality when blocking is found, else None.
    blur_ratio : float
        Major/minor axis ratio (>= 1).
    """

    noise_sigma: float
    blur_sigma: float
    anisotropic: bool
    blur_angle_deg: float
    jpeg_quality: int | None
    blur_ratio: float = 1.0

    def caption(self) -> str:
        """The caption in the shared vocabulary."""
        return format_caption(
            self.blur_sigma, self.anisotropic, self.blur_angle_deg, self.noise_sigma, self.jpeg_quality
        )


def _as_dn(image: np.ndarray) -> np.ndarray:
    """``H x W x C`` uint8 or float-in-[0, 1] -> float64 DN (0-255); 2-D is one band."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or min(arr.shape[:2]) < 16:
        raise InputError(f"need an H x W x C image of at least 16 x 16 px, got {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float64)
    if arr.dtype.kind != "f":
        raise InputError(f"need uint8 or float in [0, 1], got {arr.dtype}")
    return arr.astype(np.float64) * 255.0


def _noise_sigma(dn: np.ndarray) -> float:
    """Chen et al. (2015) patch-eigenvalue noise sigma of an ``H x W x C`` DN image."""
    h, w, c = dn.shape
    patches = sliding_window_view(dn, (_PATCH, _PATCH), axis=(0, 1)).reshape(-1, c * _PATCH * _PATCH)
    saturated = sliding_window_view((dn <= 0.5) | (dn >= 254.5), (_PATCH, _PATCH), axis=(0, 1))
    keep = ~saturated.reshape(len(patches), -1).any(axis=1)
    if keep.sum() < 4 * patches.shape[1]:
        keep[:] = True  # mostly saturated tile: a biased estimate beats none
    lam = np.linalg.eigvalsh(np.cov(patches[keep], rowvar=False))  # ascending
    lam = np.clip(lam, 0.0, None)[::-1]
    for i in range(len(lam)):
        tail = lam[i:]
        tau = tail.mean()
        if np.count_nonzero(tail > tau) >= np.count_nonzero(tail < tau):
            return float(math.sqrt(tau))
    return float(math.sqrt(lam[-1]))


def _angles() -> np.ndarray:
    return np.arange(_ANGLES) * np.pi / _ANGLES


@lru_cache(maxsize=None)
def _noise_gain() -> np.ndarray:
    """``[scale, angle]`` directional DoG energy per unit white-noise variance."""
    gains = []
    for scale in _SCALES:
        size = int(8 * scale) * 2 + 1
        delta = np.zeros((size, size))
        delta[size // 2, size // 2] = 1.0
        gx, gy = _gradients(delta, scale)
        gains.append([((math.cos(t) * gx + math.sin(t) * gy) ** 2).sum() for t in _angles()])
    return np.array(gains)


def _gradients(luma: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Derivative-of-Gaussian gradient (x right, y up) at ``scale`` px."""
    gx = ndimage.gaussian_filter(luma, scale, order=(0, 1), mode="reflect")
    gy = -ndimage.gaussian_filter(luma, scale, order=(1, 0), mode="reflect")
    return gx, gy


def _directional_energy(luma: np.ndarray) -> np.ndarray:
    """``[scale, angle]`` mean squared directional derivative, tile border left out."""
    m = min(_MARGIN, min(luma.shape) // 4)
    cos, sin = np.cos(_angles()), np.sin(_angles())
    rows = []
    for scale in _SCALES:
        gx, gy = _gradients(luma, scale)
        gx, gy = gx[m : luma.shape[0] - m, m : luma.shape[1] - m], gy[m : luma.shape[0] - m, m : luma.shape[1] - m]
        xx, yy, xy = np.mean(gx * gx), np.mean(gy * gy), np.mean(gx * gy)
        rows.append(cos**2 * xx + sin**2 * yy + 2 * sin * cos * xy)
    return np.array(rows)


def _directional_variances(energy: np.ndarray, noise_var: float) -> np.ndarray:
    """Blur variance seen along each angle, NaN where no scale is above the noise.

    Model per angle ``t``: ``E_t(s) = k_t (v_t + s^2) ** -beta`` (power-law content
    through a Gaussian blur, see the module docstring), with ``k_t`` free per angle and
    one ``beta`` for the tile; ``v_t`` and ``beta`` are found on grids.
    """
    noise = noise_var * _noise_gain()
    signal = energy - noise
    usable = signal > 0.5 * noise + 1e-9
    log_e = np.log(np.where(usable, signal, 1.0))
    log_t = np.log(_VAR_GRID[:, None] + np.asarray(_SCALES)[None, :] ** 2)  # [var, scale]
    best_residual, best = np.inf, np.full(_ANGLES, np.nan)
    for beta in _BETA_GRID:
        residual, found = 0.0, np.full(_ANGLES, np.nan)
        for j in range(_ANGLES):
            ok = usable[:, j]
            if np.count_nonzero(ok) < 2:
                continue
            d = log_e[ok, j][None, :] + beta * log_t[:, ok]  # [var, scales]: log k_t per scale
            r = ((d - d.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
            k = int(np.argmin(r))
            residual += r[k]
            found[j] = _VAR_GRID[k]
        if residual < best_residual:
            best_residual, best = residual, found
    return best


def _blur_covariance(luma: np.ndarray, noise_var: float) -> np.ndarray | None:
    """Blur covariance ``[[sxx, sxy], [sxy, syy]]`` in px^2, None when all is noise."""
    v = _directional_variances(_directional_energy(luma), noise_var)
    if np.isnan(v).all():
        return None
    v = np.where(np.isnan(v), np.nanmedian(v), v)
    t = _angles()
    design = np.stack([np.ones_like(t), np.cos(2 * t), np.sin(2 * t)], axis=1)
    mean, a, b = np.linalg.lstsq(design, v, rcond=None)[0]
    lam, vec = np.linalg.eigh(np.array([[mean + a, b], [b, mean - a]]))
    lam = np.clip(lam, _MIN_VAR, None)
    # A directional derivative mixes all frequency directions: for 1/f^2 content the
    # fitted variances have the square root of the true axis ratio (structure tensor
    # ~ (S + s^2 I)^(-1/2)). Square the ratio back, keeping the geometric mean.
    g = math.sqrt(lam[0] * lam[1])
    lam = np.array([g * lam[0] / lam[1], g * lam[1] / lam[0]])
    return vec @ np.diag(lam) @ vec.T


def _jpeg_quality(luma: np.ndarray) -> int | None:
    """Rough JPEG quality from 8 x 8 blocking, None when there is none.

    Blocking makes the mean absolute step across one phase of the 8-px grid (the
    tile need not be aligned with it) larger than across the other seven.
    """
    h, w = luma.shape
    if min(h, w) < 32:
        return None
    dx = np.abs(np.diff(luma, axis=1)).mean(axis=0)
    dy = np.abs(np.diff(luma, axis=0)).mean(axis=1)
    phases = np.array([dx[p::8].mean() + dy[p::8].mean() for p in range(8)])
    others = np.delete(phases, int(np.argmax(phases)))
    blockiness = phases.max() / max(float(np.median(others)), 1e-6)
    if blockiness < _JPEG_BLOCKINESS:
        return None
    # stronger blocking <-> coarser quantisation; a coarse monotone map, written to 10s
    return int(np.clip(100 - 40 * (blockiness - 1.0), 10, 90))


class DegradationCaptioner:
    """Captions tiles from measured noise, blur and JPEG blocking (no weights).

    Parameters
    ----------
    name : str
        Recorded in provenance tags.
    """

    def __init__(self, name: str = "degradation") -> None:
        self.name = name

    def estimate(self, image: np.ndarray) -> DegradationEstimate:
        """Measure the degradation of one image.

        Parameters
        ----------
        image : numpy.ndarray
            ``H x W x C`` uint8, or float in [0, 1]; RGB order when C >= 3 (a 2-D
            array is one band).

        Returns
        -------
        DegradationEstimate
        """
        dn = _as_dn(image)
        rgb = dn[..., :3] if dn.shape[2] >= 3 else dn[..., :1]
        noise = _noise_sigma(rgb)
        luma = rgb @ _LUMA if rgb.shape[2] == 3 else rgb[..., 0]
        luma_noise_var = (noise * (_LUMA_NOISE_GAIN if rgb.shape[2] == 3 else 1.0)) ** 2
        jpeg = _jpeg_quality(luma)
        cov = _blur_covariance(luma, luma_noise_var)
        if cov is None:  # nothing but noise: no blur can be measured
            return DegradationEstimate(noise, 0.0, False, 0.0, jpeg)
        lam, vec = np.linalg.eigh(cov)  # ascending
        minor, major = (math.sqrt(v) for v in lam)
        ratio = major / minor
        return DegradationEstimate(
            noise_sigma=noise,
            blur_sigma=math.sqrt(major * minor),
            anisotropic=ratio >= _ANISO_DECISION_RATIO,
            blur_angle_deg=math.degrees(math.atan2(vec[1, 1], vec[0, 1])) % 180.0,
            jpeg_quality=jpeg,
            blur_ratio=ratio,
        )

    def caption(self, tiles: torch.Tensor) -> list[str]:
        """Caption ``[B, C, h, w]`` float tiles in [0, 1]."""
        arr = tiles.detach().to("cpu", torch.float64).clamp(0, 1).numpy().transpose(0, 2, 3, 1)
        return [self.estimate(tile).caption() for tile in arr]
