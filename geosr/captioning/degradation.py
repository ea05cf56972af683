"""The default captioner: measures noise, blur and JPEG blocking on the tile itself.

No weights. Three measurements, each a classical estimator:

- **noise** (DN, 0-255 scale): the patch-covariance method of Chen, Zhu & Heng (ICCV
  2015). The eigenvalues of the covariance of all overlapping ``d x d x C`` patches that
  image structure does not reach are the white-noise variance; they are the tail whose
  mean equals its median. Patches touching saturated pixels are left out (clipping
  shrinks the noise there).
- **blur** (px of the given image, anisotropic): for a step edge blurred by a Gaussian of
  covariance ``S``, the peak of the derivative-of-Gaussian gradient at scale ``s`` along
  the edge normal ``n`` is proportional to ``1 / sqrt(n'Sn + s^2)``. The ratio of the
  peaks at two scales at the same edge pixel gives ``n'Sn`` there (the gradient-ratio
  "reblur" idea of Zhuo & Sim 2011, with noise energy subtracted). Fitting
  ``n'Sn = m + a cos 2phi + b sin 2phi`` over the edge normals ``phi`` gives ``S``: its
  axes are the blur sigmas, its major axis the orientation.
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

from geosr.captioning.vocabulary import ANISOTROPY_RATIO, format_caption
from geosr.errors import InputError

__all__ = ["DegradationCaptioner", "DegradationEstimate"]

_LUMA = np.array([0.299, 0.587, 0.114])
# noise of independent equal-sigma channels, seen in the luminance
_LUMA_NOISE_GAIN = float(np.sqrt((_LUMA**2).sum()))
_PATCH = 4  # noise patch side: 4 x 4 x 3 = 48 dims, enough samples on a 64 px tile
_SCALES = (1.0, 2.5)  # derivative-of-Gaussian scales of the blur ratio (px)
_ANGLE_BINS = 6  # edge-normal orientation bins (30 deg each) for the anisotropy fit
_MIN_BIN_EDGES = 8
_NOISE_K = 3.0
_EDGE_QUANTILE = 0.5


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
        Whether the major/minor blur axis ratio reaches ``ANISOTROPY_RATIO``.
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


@lru_cache(maxsize=None)
def _gradient_noise_gain(scale: float) -> float:
    """Expected squared DoG gradient magnitude per unit white-noise variance."""
    size = int(8 * scale) * 2 + 1
    delta = np.zeros((size, size))
    delta[size // 2, size // 2] = 1.0
    gx = ndimage.gaussian_filter(delta, scale, order=(0, 1))
    gy = ndimage.gaussian_filter(delta, scale, order=(1, 0))
    return float((gx**2).sum() + (gy**2).sum())


def _gradients(luma: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """DoG gradient (x right, y up) at ``scale``."""
    gx = ndimage.gaussian_filter(luma, scale, order=(0, 1), mode="reflect")
    gy = -ndimage.gaussian_filter(luma, scale, order=(1, 0), mode="reflect")
    return gx, gy


def _edge_pixels(mag2: np.ndarray, gx: np.ndarray, gy: np.ndarray, floor: float) -> np.ndarray:
    """Mask of gradient maxima along the gradient direction above ``floor`` (squared)."""
    angle = np.mod(np.arctan2(gy, gx), np.pi)
    sector = np.round(angle / (np.pi / 4)).astype(int) % 4
    # neighbour offsets (drow, dcol) along the gradient for 0, 45, 90, 135 deg (y up)
    offsets = ((0, 1), (-1, 1), (-1, 0), (-1, -1))
    padded = np.pad(mag2, 1, mode="edge")
    h, w = mag2.shape
    is_max = np.zeros_like(mag2, dtype=bool)
    for k, (dr, dc) in enumerate(offsets):
        ahead = padded[1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w]
        behind = padded[1 - dr : 1 - dr + h, 1 - dc : 1 - dc + w]
        is_max |= (sector == k) & (mag2 >= ahead) & (mag2 > behind)
    border = np.zeros_like(is_max)
    m = int(math.ceil(2 * _SCALES[1]))
    border[m:-m, m:-m] = True
    return is_max & border & (mag2 > floor)


def _blur_covariance(luma: np.ndarray, noise_var: float, scales=_SCALES) -> np.ndarray | None:
    """Fitted blur covariance ``[[sxx, sxy], [sxy, syy]]`` (px^2), None without edges."""
    s1, s2 = scales
    gx1, gy1 = _gradients(luma, s1)
    gx2, gy2 = _gradients(luma, s2)
    e1 = noise_var * _gradient_noise_gain(s1)
    e2 = noise_var * _gradient_noise_gain(s2)
    mag1 = gx1**2 + gy1**2
    mag2 = gx2**2 + gy2**2
    edges = _edge_pixels(mag1, gx1, gy1, floor=max(_NOISE_K**2 * e1, 1.0))
    if np.count_nonzero(edges) < 3 * _MIN_BIN_EDGES:
        return None
    strong = np.quantile(mag1[edges], _EDGE_QUANTILE)
    edges &= mag1 >= strong
    ratio2 = (mag1[edges] - e1) / np.maximum(mag2[edges] - e2, 1e-12)
    ratio2 = np.maximum(ratio2, 1.0 + 1e-6)
    # 1 / (v + s^2) at two scales -> v = (s2^2 - R^2 s1^2) / (R^2 - 1), R^2 = peak1^2 / peak2^2
    var_n = (s2**2 - ratio2 * s1**2) / (ratio2 - 1.0)
    phi = np.mod(np.arctan2(gy1[edges], gx1[edges]), np.pi)
    bins = np.minimum((phi / np.pi * _ANGLE_BINS).astype(int), _ANGLE_BINS - 1)
    rows, values, weights = [], [], []
    for b in range(_ANGLE_BINS):
        sel = bins == b
        if np.count_nonzero(sel) < _MIN_BIN_EDGES:
            continue
        centre = (b + 0.5) * np.pi / _ANGLE_BINS
        rows.append((1.0, math.cos(2 * centre), math.sin(2 * centre)))
        values.append(float(np.median(var_n[sel])))
        weights.append(math.sqrt(np.count_nonzero(sel)))
    if len(rows) < 3:
        v = float(np.median(var_n))
        return np.array([[v, 0.0], [0.0, v]])
    a = np.array(rows) * np.array(weights)[:, None]
    mean, c2, s2_ = np.linalg.lstsq(a, np.array(values) * np.array(weights), rcond=None)[0]
    return np.array([[mean + c2, s2_], [s2_, mean - c2]])


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
        cov = _blur_covariance(luma, luma_noise_var)
        if cov is None:
            return DegradationEstimate(noise, 0.0, False, 0.0, None)
        lam, vec = np.linalg.eigh(cov)  # ascending
        minor, major = (math.sqrt(max(v, 1e-4)) for v in lam)
        angle = math.degrees(math.atan2(vec[1, 1], vec[0, 1])) % 180.0
        ratio = major / minor
        return DegradationEstimate(
            noise_sigma=noise,
            blur_sigma=math.sqrt(major * minor),
            anisotropic=ratio >= ANISOTROPY_RATIO,
            blur_angle_deg=angle,
            jpeg_quality=None,
            blur_ratio=ratio,
        )

    def caption(self, tiles: torch.Tensor) -> list[str]:
        """Caption ``[B, C, h, w]`` float tiles in [0, 1]."""
        arr = tiles.detach().to("cpu", torch.float64).clamp(0, 1).numpy().transpose(0, 2, 3, 1)
        return [self.estimate(tile).caption() for tile in arr]
