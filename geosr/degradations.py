"""Synthetic degradations HR -> LR, returning the parameters that made them.

Three evaluation protocols, two of them from the blind-SR literature:

- ``"clean"``: bicubic downsampling with anti-aliasing (MATLAB ``imresize``), nothing else:
  the classical SR benchmark setting.

- ``"iso"`` (IKC, Gu et al. 2019): isotropic Gaussian blur whose sigma range grows with
  the scale, bicubic downsampling, no noise.
- ``"aniso"`` (DRSR / DAN-style, Luo et al. 2020): anisotropic Gaussian blur
  (sigma_x, sigma_y, theta), bicubic downsampling, additive Gaussian noise, and
  optionally JPEG.

For training, ``"mixed"`` draws one of the three per sample (clean 30 %, iso 20 %, aniso
50 %), with the aniso noise skewed towards low levels (``25 * u**2`` DN: 45 % of draws below
5 DN), because real aerial and satellite scenes are mostly mildly blurred and little noisy.

The order is blur (at HR resolution, reflect padding) -> bicubic downsampling by
``scale`` (no antialias: the blur is the anti-alias filter) -> noise -> JPEG -> clip.
Numpy and torch inputs go through the same torch code, so both give the same LR.

:func:`describe` writes the caption a perfect captioner would write for the LR image, in
the grammar of :mod:`geosr.captioning.vocabulary`: blur in LR pixels (HR sigma / scale),
no scale clause.

Angles: ``blur_theta_deg`` is the direction of the ``sigma_x`` axis, counter-clockwise
from the image x axis as seen on screen (rows grow downwards).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from geosr.captioning.vocabulary import ANISOTROPY_RATIO, format_caption
from geosr.errors import InputError

__all__ = [
    "MIXED",
    "PROTOCOLS",
    "DegradationParams",
    "apply_degradation",
    "degrade",
    "describe",
    "gaussian_kernel",
    "gaussian_kernel_1d",
    "mixture_weights",
    "sample_params",
]

PROTOCOLS = ("clean", "iso", "aniso")
#: The training mixture of the three protocols, see the module docstring.
MIXED = "mixed"
_MIXED_WEIGHTS = {"clean": 0.3, "iso": 0.2, "aniso": 0.5}
#: Blur a caption states for a clean (anti-aliased bicubic) LR: what DegradationCaptioner
#: typically measures on one (0.1-0.6 px on UC Merced train crops), in LR px.
CLEAN_BLUR_LR_PX = 0.3

# DRSR samples sigma_x, sigma_y in [0.6, 5] HR px at x4; other scales keep the same
# range in LR px (i.e. scaled by scale / 4).
_ANISO_SIGMA_X4 = (0.6, 5.0)
_ANISO_NOISE_DN = (0.0, 25.0)
_JPEG_QUALITY = (30, 95)

Array = TypeVar("Array", np.ndarray, torch.Tensor)


@dataclass(frozen=True)
class DegradationParams:
    """Parameters of one degradation.

    Attributes
    ----------
    scale : int
        Downsampling factor.
    blur_sigma_x, blur_sigma_y : float
        Gaussian blur sigmas along the kernel's own axes, in HR pixels.
    blur_theta_deg : float
        Direction of the ``sigma_x`` axis, degrees counter-clockwise from the image x axis.
    noise_sigma : float
        Additive Gaussian noise sigma in DN on the 0-255 scale (applied to the LR image).
    jpeg_quality : int or None
        JPEG quality of the final re-encoding, None for none.
    protocol : str
        ``"clean"``, ``"iso"`` or ``"aniso"``: which sampler made the parameters. A clean
        degradation applies no blur (the anti-aliasing of the bicubic resize is its only
        low-pass); its sigmas are the blur a caption states for it (``CLEAN_BLUR_LR_PX``).
    """

    scale: int
    blur_sigma_x: float
    blur_sigma_y: float
    blur_theta_deg: float
    noise_sigma: float
    jpeg_quality: int | None
    protocol: str

    def __post_init__(self) -> None:
        if int(self.scale) != self.scale or self.scale < 1:
            raise InputError(f"scale must be a positive integer, got {self.scale!r}")
        if min(self.blur_sigma_x, self.blur_sigma_y) <= 0:
            raise InputError("blur sigmas must be > 0")
        if self.noise_sigma < 0:
            raise InputError("noise_sigma must be >= 0")
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality <= 100:
            raise InputError(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        if self.protocol not in PROTOCOLS:
            raise InputError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")

    @property
    def blur_sigma(self) -> float:
        """Geometric mean of the two axis sigmas, HR pixels."""
        return math.sqrt(self.blur_sigma_x * self.blur_sigma_y)

    @property
    def anisotropic(self) -> bool:
        """Whether the major/minor axis ratio reaches ``ANISOTROPY_RATIO``."""
        lo, hi = sorted((self.blur_sigma_x, self.blur_sigma_y))
        return hi / lo >= ANISOTROPY_RATIO

    @property
    def blur_angle_deg(self) -> float:
        """Direction of the major blur axis in [0, 180) degrees."""
        major = self.blur_theta_deg if self.blur_sigma_x >= self.blur_sigma_y else self.blur_theta_deg + 90
        return major % 180.0


def mixture_weights(mix: dict[str, float] | None = None) -> dict[str, float]:
    """The ``"mixed"`` shares of the three protocols, checked and normalised.

    Raises
    ------
    InputError
        A key is not a protocol, a share is negative, or they sum to zero.
    """
    if mix is None:
        return dict(_MIXED_WEIGHTS)
    unknown = set(mix) - set(PROTOCOLS)
    if unknown:
        raise InputError(f"degradation mix: unknown protocol(s) {sorted(unknown)}; use {PROTOCOLS}")
    weights = {name: float(mix.get(name, 0.0)) for name in PROTOCOLS}
    total = sum(weights.values())
    if min(weights.values()) < 0 or total <= 0:
        raise InputError(f"degradation mix {mix}: shares must be >= 0 and not all zero")
    return {name: w / total for name, w in weights.items()}


def sample_params(
    protocol: str,
    scale: int,
    rng: np.random.Generator,
    jpeg_prob: float = 0.0,
    mix: dict[str, float] | None = None,
) -> DegradationParams:
    """Draw degradation parameters from a protocol's ranges.

    Parameters
    ----------
    protocol : {"clean", "iso", "aniso", "mixed"}
        ``"clean"``: anti-aliased bicubic only. ``"iso"``: sigma uniform in [0.2, scale] HR px
        (IKC: x2 [0.2, 2], x3 [0.2, 3], x4 [0.2, 4]), no noise. ``"aniso"``: sigma_x, sigma_y
        uniform in [0.6, 5] * scale / 4 HR px, theta uniform in [0, 180), noise uniform in
        [0, 25] DN. ``"mixed"``: the training mixture of the module docstring.
    scale : int
        Downsampling factor.
    rng : numpy.random.Generator
        Source of randomness.
    jpeg_prob : float, optional
        Probability of a JPEG re-encoding with quality uniform in [30, 95].
    mix : dict, optional
        ``"mixed"`` only: the share of each protocol (default clean 0.3, iso 0.2, aniso 0.5);
        normalised to sum to one.

    Returns
    -------
    DegradationParams
    """
    low_noise = False
    if protocol == MIXED:
        weights = mixture_weights(mix)
        names = list(weights)
        protocol = names[int(rng.choice(len(names), p=list(weights.values())))]
        low_noise = True
    if protocol == "clean":
        sigma = CLEAN_BLUR_LR_PX * scale
        sx, sy, theta, noise = sigma, sigma, 0.0, 0.0
    elif protocol == "iso":
        sigma = float(rng.uniform(0.2, float(scale)))
        sx, sy, theta, noise = sigma, sigma, 0.0, 0.0
    elif protocol == "aniso":
        lo, hi = (s * scale / 4 for s in _ANISO_SIGMA_X4)
        sx, sy = (float(v) for v in rng.uniform(lo, hi, size=2))
        theta = float(rng.uniform(0.0, 180.0))
        if low_noise:
            noise = float(_ANISO_NOISE_DN[1] * rng.uniform() ** 2)
        else:
            noise = float(rng.uniform(*_ANISO_NOISE_DN))
    else:
        raise InputError(f"unknown degradation protocol {protocol!r}: use one of {PROTOCOLS + (MIXED,)}")
    jpeg = None
    if rng.random() < jpeg_prob:
        jpeg = int(rng.integers(_JPEG_QUALITY[0], _JPEG_QUALITY[1] + 1))
    return DegradationParams(int(scale), sx, sy, theta, noise, jpeg, protocol)


def gaussian_kernel_1d(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian of standard deviation ``sigma`` px, truncated at ``ceil(3 sigma)``
    (at least 1) each side: float32, ``2r+1`` taps, for separable filtering."""
    radius = max(1, math.ceil(3 * sigma))
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / sigma) ** 2)
    return taps / taps.sum()


def gaussian_kernel(
    sigma_x: float, sigma_y: float, theta_deg: float, radius: int | None = None
) -> np.ndarray:
    """Normalised (anisotropic) Gaussian kernel of shape ``(2r+1, 2r+1)``, rows downwards.

    ``theta_deg`` turns the ``sigma_x`` axis counter-clockwise as seen on screen;
    ``radius`` defaults to ``ceil(3 * max(sigma_x, sigma_y))``.
    """
    if radius is None:
        radius = max(1, math.ceil(3 * max(sigma_x, sigma_y)))
    t = math.radians(theta_deg)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    cov = rot @ np.diag([sigma_x**2, sigma_y**2]) @ rot.T
    prec = np.linalg.inv(cov)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    u = offsets[None, :]  # x: columns
    v = -offsets[:, None]  # y up: rows grow downwards on screen
    q = prec[0, 0] * u * u + 2 * prec[0, 1] * u * v + prec[1, 1] * v * v
    kernel = np.exp(-0.5 * q)
    return kernel / kernel.sum()


def _blur(x: torch.Tensor, params: DegradationParams) -> torch.Tensor:
    """Reflect-padded FFT convolution of ``[B, C, H, W]`` with the params' kernel."""
    h, w = x.shape[-2:]
    # reflect padding needs pad < size; a kernel wider than the tile is truncated there
    radius = min(max(1, math.ceil(3 * max(params.blur_sigma_x, params.blur_sigma_y))), h - 1, w - 1)
    kernel = gaussian_kernel(params.blur_sigma_x, params.blur_sigma_y, params.blur_theta_deg, radius)
    k = torch.from_numpy(kernel).to(device=x.device, dtype=x.dtype)
    padded = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    size = (padded.shape[-2] + 2 * radius, padded.shape[-1] + 2 * radius)
    # the kernel is point-symmetric, so correlation and convolution coincide
    out = torch.fft.irfft2(torch.fft.rfft2(padded, s=size) * torch.fft.rfft2(k, s=size), s=size)
    return out[..., 2 * radius : 2 * radius + h, 2 * radius : 2 * radius + w]


def _jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Re-encode each image of ``[B, C, H, W]`` as JPEG (RGB when C == 3, else per band)."""
    arr = (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    out = np.empty_like(arr)
    for b in range(arr.shape[0]):
        planes = [arr[b].transpose(1, 2, 0)] if arr.shape[1] == 3 else list(arr[b])
        decoded = []
        for plane in planes:
            buf = io.BytesIO()
            Image.fromarray(plane).save(buf, format="JPEG", quality=int(quality))
            decoded.append(np.asarray(Image.open(buf)))
        out[b] = decoded[0].transpose(2, 0, 1) if arr.shape[1] == 3 else np.stack(decoded)
    return torch.from_numpy(out).to(device=x.device, dtype=x.dtype) / 255.0


def _degrade_batch(
    x: torch.Tensor, params: DegradationParams, rng: np.random.Generator
) -> torch.Tensor:
    s = params.scale
    h, w = (x.shape[-2] // s) * s, (x.shape[-1] // s) * s
    if h == 0 or w == 0:
        raise InputError(f"HR image {tuple(x.shape[-2:])} is smaller than the scale {s}")
    clean = params.protocol == "clean"
    out = x[..., :h, :w] if clean else _blur(x[..., :h, :w], params)
    if s > 1:
        # a clean LR is anti-aliased by the resize itself; elsewhere the blur is the anti-alias
        out = F.interpolate(
            out, size=(h // s, w // s), mode="bicubic", align_corners=False, antialias=clean
        )
    if params.noise_sigma > 0:
        noise = rng.standard_normal(tuple(out.shape), dtype=np.float32) * (params.noise_sigma / 255.0)
        out = out + torch.from_numpy(noise).to(device=out.device, dtype=out.dtype)
    out = out.clamp(0, 1)
    if params.jpeg_quality is not None:
        out = _jpeg(out, params.jpeg_quality)
    return out


def apply_degradation(
    hr: Array, params: DegradationParams, rng: np.random.Generator | None = None
) -> Array:
    """Degrade an HR image or batch with given parameters.

    Parameters
    ----------
    hr : numpy.ndarray or torch.Tensor
        ``H x W x C`` numpy float array in [0, 1], or a ``[B, C, H, W]`` float tensor in
        [0, 1] (the same parameters for the whole batch; independent noise per element).
    params : DegradationParams
        What to apply.
    rng : numpy.random.Generator, optional
        Source of the noise; None draws from a fresh, unseeded generator.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        LR of the input's type and dtype, ``H // scale x W // scale``, clipped to [0, 1].
        The HR is cropped to a multiple of ``scale`` first, so LR pixels stay aligned.
    """
    rng = np.random.default_rng() if rng is None else rng
    if isinstance(hr, torch.Tensor):
        if hr.ndim != 4:
            raise InputError(f"torch input must be [B, C, H, W], got shape {tuple(hr.shape)}")
        compute = hr.to(torch.float64 if hr.dtype == torch.float64 else torch.float32)
        return _degrade_batch(compute, params, rng).to(hr.dtype)
    arr = np.asarray(hr)
    if arr.ndim != 3:
        raise InputError(f"numpy input must be H x W x C, got shape {arr.shape}")
    batch = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32))[None]
    out = _degrade_batch(batch, params, rng)[0].numpy().transpose(1, 2, 0)
    return np.ascontiguousarray(out, dtype=arr.dtype if arr.dtype.kind == "f" else np.float32)


def degrade(
    hr: Array,
    scale: int,
    protocol: str,
    seed: int | None = None,
    rng: np.random.Generator | None = None,
    jpeg_prob: float = 0.0,
    mix: dict[str, float] | None = None,
) -> tuple[Array, DegradationParams]:
    """Sample parameters from ``protocol`` and apply them.

    Parameters
    ----------
    hr : numpy.ndarray or torch.Tensor
        See :func:`apply_degradation`.
    scale : int
        Downsampling factor.
    protocol : {"iso", "aniso"}
        Parameter sampler, see :func:`sample_params`.
    seed : int, optional
        Seed of a fresh generator (ignored when ``rng`` is given).
    rng : numpy.random.Generator, optional
        Generator for both the parameters and the noise.
    jpeg_prob : float, optional
        Probability of a JPEG re-encoding.
    mix : dict, optional
        Shares of the ``"mixed"`` protocol, see :func:`sample_params`.

    Returns
    -------
    (lr, params)
    """
    rng = np.random.default_rng(seed) if rng is None else rng
    params = sample_params(protocol, scale, rng, jpeg_prob=jpeg_prob, mix=mix)
    return apply_degradation(hr, params, rng), params


def describe(params: DegradationParams) -> str:
    """The caption a perfect captioner would write for the LR image of ``params``.

    Blur is reported in LR pixels (HR sigma / scale) and the scale is left out, exactly
    as :class:`~geosr.captioning.degradation.DegradationCaptioner` writes from an LR tile;
    see :mod:`geosr.captioning.vocabulary` for the grammar.
    """
    return format_caption(
        blur_sigma=params.blur_sigma / params.scale,
        anisotropic=params.anisotropic,
        blur_angle_deg=params.blur_angle_deg,
        noise_sigma=params.noise_sigma,
        jpeg_quality=params.jpeg_quality,
    )
