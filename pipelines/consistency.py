"""Consistency with the input: what the model's downsampling sees of an HR image, and detail it cannot see.

The models are trained on LR tiles made by :mod:`geosr.degradations`; with no blur, that is an
antialiased bicubic downsampling ``A`` (:func:`model_downsample`). An output is *consistent*
with its input when ``A(output)`` gives the input back: then band means, and any spectral index
computed at the sensor's resolution, stay what the sensor measured.

Detail added on top of an output must not change that. :func:`invisible_to_lr` removes from a
residual ``r`` what ``A`` sees of it: ``r - U(m)``, with ``U`` the bicubic upsampling the
pipeline already uses as its residual base and ``m`` the LR correction with ``A U m = A r``.
``A U`` is separable and, away from the borders, shift-invariant: an 11-tap filter ``k`` along
each axis of the LR grid (:func:`lr_round_trip_kernel`), whose response lies in about
[0.47, 1.01], so its inverse decays fast (1e-5 at 10 taps) and ``m`` is one separable
21-tap filtering of ``A r`` (:func:`inverse_round_trip_kernel`). One round leaves 1e-4 DN inside
a tile and 0.02 DN at its borders of a residual that ``A`` saw at 6.6 DN RMS (an unsharp mask of
a val image); a second would take the borders' to 1e-4 DN at a third more of the cost. Plain
iterative back-projection (Irani & Peleg 1991, ``r <- r - U(A(r))``) needs one HR-sized round
per iteration, and the six it takes cost as much as the student itself.

The same inverse makes a whole output consistent (:func:`project_to_lr`): ``x - U(m)`` with
``A U m = A x - y``. That is right only where ``A`` is how the input was made. A blurred or noisy
LR tile reproduced exactly brings its blur and noise back into the output (x4 on 25 val
images: -0.8 dB with isotropic blur and noise, -2.0 dB with anisotropic blur). Limited to the
tiles whose caption reads as a clean downsampling (:func:`reads_as_clean`), it took x4 clean
+0.035 dB and x2 clean +0.028 dB on 50 val images, the consistency error from 0.8 to 0.06 DN -
but on all 268 val images of the x2 iso protocol (blur, then plain decimation: aliased LR that
reads as sharp and noise-free) it cost -0.06 dB on average, up to -2.4 dB on one image in eight
of those projected. Real sensors' LR is nearer the decimated kind, so the pipeline projects only
when asked (``lr_consistency``).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

import torch
import torch.nn.functional as F

from geosr.captioning.vocabulary import states_at_most

__all__ = [
    "bicubic_upsample", "inverse_round_trip_kernel", "invisible_to_lr", "lr_round_trip_kernel", "model_downsample",
    "project_to_lr", "reads_as_clean", "shifted_sum",
]

ROUNDS = 1
# What a caption of a clean (antialiased bicubic, 8-bit) LR tile says: the antialiasing
# kernel reads as 0.2-0.4 px of isotropic blur and 8-bit quantisation with fine texture as
# up to 1 DN of noise (x4 and x2 LR of val images, DegradationCaptioner).
CLEAN_BLUR_SIGMA = 0.4
CLEAN_NOISE_SIGMA = 1.0
RADIUS = 5  # of the round-trip filter
INVERSE_RADIUS = 10  # of its inverse: taps beyond are below 3e-5


def model_downsample(image: torch.Tensor, scale: int) -> torch.Tensor:
    """``image`` ``[B, C, H, W]`` downsampled by ``scale`` as the clean training LR is made."""
    h, w = image.shape[-2:]
    return F.interpolate(image, size=(h // scale, w // scale), mode="bicubic", align_corners=False, antialias=True)


def _upsample(image: torch.Tensor, scale: int, mode: str) -> torch.Tensor:
    if mode == "bicubic":
        return bicubic_upsample(image, scale)
    align = False if mode == "bilinear" else None
    return F.interpolate(image, scale_factor=scale, mode=mode, align_corners=align)


@lru_cache(maxsize=None)
def _bicubic_phases(scale: int) -> torch.Tensor:
    """``[scale**2, 1, 5, 5]``: the 2-D bicubic weights of each output phase over a 5 x 5 LR window."""
    a = -0.75  # PyTorch's (and OpenCV's) cubic convolution coefficient

    def near(x: float) -> float:
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: float) -> float:
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    taps = torch.zeros(scale, 5, dtype=torch.float64)
    for phase in range(scale):
        x = (phase + 0.5) / scale - 0.5  # source coordinate of the phase (align_corners=False)
        base = math.floor(x)
        t = x - base
        for n, weight in enumerate((far(t + 1), near(t), near(1 - t), far(2 - t))):
            taps[phase, base - 1 + n + 2] += weight
    return (taps[:, None, :, None] * taps[None, :, None, :]).reshape(scale * scale, 1, 5, 5)


def bicubic_upsample(image: torch.Tensor, scale: int) -> torch.Tensor:
    """``F.interpolate(image, scale_factor=scale, mode="bicubic", align_corners=False)``, as a polyphase convolution.

    The same values (to float rounding: the borders replicate, as interpolate clamps its
    indices), several times faster on a CPU for the small integer factors of super-resolution.
    """
    b, c, h, w = image.shape
    weight = _bicubic_phases(scale).to(image).repeat(c, 1, 1, 1)
    phases = F.conv2d(F.pad(image, (2, 2, 2, 2), mode="replicate"), weight, groups=c)
    return F.pixel_shuffle(phases, scale)


@lru_cache(maxsize=None)
def lr_round_trip_kernel(scale: int, upsample_mode: str = "bicubic") -> torch.Tensor:
    """The 1-D LR filter ``k`` with ``A U = k (x) k`` (upsample, then :func:`model_downsample`), float64.

    Measured on a centred impulse, so it is exactly the operator away from the borders.
    """
    n = 4 * RADIUS + 1
    impulse = torch.zeros(1, 1, n, n, dtype=torch.float64)
    impulse[0, 0, n // 2, n // 2] = 1.0
    response = model_downsample(_upsample(impulse, scale, upsample_mode), scale)[0, 0]
    row = response[n // 2, n // 2 - RADIUS : n // 2 + RADIUS + 1]
    return row / row[RADIUS].sqrt()


@lru_cache(maxsize=None)
def inverse_round_trip_kernel(scale: int, upsample_mode: str = "bicubic") -> torch.Tensor:
    """The 1-D inverse of :func:`lr_round_trip_kernel`, ``2 * INVERSE_RADIUS + 1`` taps, float32."""
    k, n = lr_round_trip_kernel(scale, upsample_mode), 512
    circular = torch.zeros(n, dtype=torch.float64)
    circular[: RADIUS + 1], circular[-RADIUS:] = k[RADIUS:], k[:RADIUS]
    inverse = torch.fft.ifft(1.0 / torch.fft.fft(circular)).real
    return torch.cat([inverse[-INVERSE_RADIUS:], inverse[: INVERSE_RADIUS + 1]]).float()


def _filter(image: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """``image`` filtered by ``taps`` along x, then along y, borders replicated."""
    weights, r = taps.tolist(), len(taps) // 2
    return shifted_sum(shifted_sum(image, weights, r, -1), weights, r, -2)


def shifted_sum(image: torch.Tensor, weights: Sequence[float], before: int, dim: int) -> torch.Tensor:
    """``sum_i weights[i] * image`` shifted by ``i - before`` px along ``dim`` (-1 or -2), borders replicated.

    A 1-D filter as shifted slices: on a CPU several times faster than a grouped conv2d for one
    small filter. Weights of 1 are added without a multiply.
    """
    after = len(weights) - 1 - before
    padded = F.pad(image, (before, after, 0, 0) if dim == -1 else (0, 0, before, after), mode="replicate")
    size = image.shape[dim]
    total = None
    for shift, weight in enumerate(weights):
        part = padded.narrow(dim, shift, size)
        term = part if weight == 1.0 else weight * part
        if total is None:
            total = term.clone() if term is part else term
        else:
            total += term
    return total


def invisible_to_lr(residual: torch.Tensor, scale: int, upsample_mode: str = "bicubic") -> torch.Tensor:
    """``residual`` less what :func:`model_downsample` sees of it (float32, same shape).

    Parameters
    ----------
    residual : torch.Tensor
        ``[B, C, H, W]`` HR-sized residual, ``H`` and ``W`` multiples of ``scale``.
    scale : int
        The upscaling factor.
    upsample_mode : str
        The interpolation that maps an LR correction back to the HR grid.
    """
    residual = residual.float()
    inverse = inverse_round_trip_kernel(scale, upsample_mode)
    for _ in range(ROUNDS):
        correction = _filter(model_downsample(residual, scale), inverse)
        residual = residual - _upsample(correction, scale, upsample_mode)
    return residual


def invisible_within_range(base: torch.Tensor, residual: torch.Tensor, scale: int, upsample_mode: str = "bicubic",
                           rounds: int = 8) -> torch.Tensor:
    """``residual`` (invisible to :func:`model_downsample`, :func:`invisible_to_lr`'s) made to keep
    ``base + residual`` within ``[0, 1]`` too, by alternating projections onto the two sets.

    The output is clipped to ``[0, 1]``: a residual that leaves it near saturated or black pixels
    (snow, clouds, water) loses one side there, and what the downsampling sees of the output - its
    band means - moves (-1.4 DN over a saturated area at D = 1). Each round clips ``base + residual``
    and removes what the downsampling sees of the result; images already inside cost one check.

    Parameters
    ----------
    base : torch.Tensor
        ``[B, C, H, W]`` the output the residual is added to, within ``[0, 1]``.
    residual : torch.Tensor
        Same shape, invisible to the downsampling.
    scale, upsample_mode
        As :func:`invisible_to_lr`.
    rounds : int
        At most this many clip-and-project rounds.
    """
    for _ in range(rounds):
        total = base + residual
        out = (total < 0.0) | (total > 1.0)
        hit = out.flatten(1).any(dim=1)
        if not hit.any():
            break
        pick = hit.nonzero().flatten()
        inside = torch.where(out[pick], total[pick].clamp(0.0, 1.0) - base[pick], residual[pick])
        residual = residual.clone()
        residual[pick] = invisible_to_lr(inside, scale, upsample_mode)
    return residual


def project_to_lr(image: torch.Tensor, lr: torch.Tensor, scale: int, upsample_mode: str = "bicubic") -> torch.Tensor:
    """``image`` corrected so that :func:`model_downsample` of it gives ``lr`` back (float32).

    One round of ``x - U(k^-1 (A x - y))`` (module docstring): away from the borders, ``A`` of
    the result is ``lr`` to 0.1 DN; a second round changes the result by less than 0.01 DN.

    Parameters
    ----------
    image : torch.Tensor
        ``[B, C, H, W]`` HR images, ``H`` and ``W`` ``scale`` times the LR's.
    lr : torch.Tensor
        ``[B, C, H / scale, W / scale]`` the inputs they were made from.
    scale : int
        The upscaling factor.
    upsample_mode : str
        The interpolation that maps an LR correction back to the HR grid.
    """
    image = image.float()
    correction = _filter(model_downsample(image, scale) - lr.float(), inverse_round_trip_kernel(scale, upsample_mode))
    return image - _upsample(correction, scale, upsample_mode)


def reads_as_clean(caption: str) -> bool:
    """Whether ``caption`` (the shared grammar) describes a clean downsampling: no blur beyond the
    antialiasing kernel's, no noise beyond 8-bit quantisation's, no JPEG. Free text: False."""
    return states_at_most(caption, CLEAN_BLUR_SIGMA, CLEAN_NOISE_SIGMA)
