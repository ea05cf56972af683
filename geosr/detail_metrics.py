"""How much fine detail a super-resolved image has, and whether it still explains its LR.

A detail dial trades fidelity for texture; two full-reference figures tell whether the
texture it adds is the right kind:

- :func:`hf_spectral_error`: how far the output's high-frequency power spectrum is from the
  HR's, in decades (log10 power). A blurry output lacks power there, a noisy or
  over-sharpened one has too much; both raise the error, while PSNR rewards the blur.
- :func:`consistency_error`: how far the output, downsampled the way the model assumes the
  LR was made, is from the LR, in 8-bit DN. Detail that is invented but does not change the
  downsampled image keeps it at zero; detail that contradicts the LR (shifted edges, wrong
  colours) raises it.

Both are pure numpy on ``H x W x C`` (or ``H x W``) images: float images in [0, 1] as
elsewhere in :mod:`geosr.evaluation`, or uint8 in DN.
"""

from __future__ import annotations

import math

import numpy as np

from geosr.degradations import CLEAN_BLUR_LR_PX, DegradationParams, apply_degradation
from geosr.errors import InputError

__all__ = ["consistency_error", "hf_spectral_error", "radial_power_spectrum"]

# log10 of a power of exactly 0 (a flat channel) would be -inf: floor it far below any real power
_POWER_FLOOR = 1e-30


def _channels(img: np.ndarray) -> np.ndarray:
    """``H x W x C`` float64 view of an ``H x W`` or ``H x W x C`` image."""
    img = np.asarray(img, np.float64)
    if img.ndim == 2:
        return img[..., None]
    if img.ndim != 3:
        raise InputError(f"need an H x W or H x W x C image, got shape {img.shape}")
    return img


def radial_power_spectrum(channel: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged power spectrum of one ``H x W`` channel.

    The channel's mean is removed and a 2-D Hann window applied (so the image's edges do not
    leak a cross of spurious high-frequency power), then the power ``|FFT|^2`` is averaged
    over rings of normalised frequency ``sqrt(fx^2 + fy^2)``, with 1 the Nyquist frequency
    of each axis; the corners beyond 1 are left out.

    Parameters
    ----------
    channel : numpy.ndarray
        ``H x W`` image, at least 2 px a side.
    bins : int
        Rings of equal width over [0, 1].

    Returns
    -------
    centres, power : numpy.ndarray
        Ring centres (normalised frequency) and mean power per ring (``nan`` for a ring no
        frequency sample falls in, which only happens on tiny images).
    """
    h, w = channel.shape
    if min(h, w) < 2:
        raise InputError(f"a power spectrum needs at least 2 x 2 px, got {h} x {w}")
    window = np.outer(np.hanning(h), np.hanning(w))
    power = np.abs(np.fft.fft2((channel - channel.mean()) * window)) ** 2
    # fftfreq is in cycles per pixel, Nyquist 0.5: normalise it to 1
    radius = np.hypot(*np.meshgrid(np.fft.fftfreq(h) / 0.5, np.fft.fftfreq(w) / 0.5, indexing="ij"))
    edges = np.linspace(0.0, 1.0, bins + 1)
    ring = np.digitize(radius.ravel(), edges[1:-1])  # 0 .. bins - 1 within Nyquist
    inside = radius.ravel() <= 1.0
    total = np.bincount(ring[inside], weights=power.ravel()[inside], minlength=bins)
    count = np.bincount(ring[inside], minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return (edges[:-1] + edges[1:]) / 2, mean


def hf_spectral_error(out: np.ndarray, hr: np.ndarray, border: int = 0) -> float:
    """High-frequency spectral error of ``out`` against ``hr``, in decades of power.

    Per channel: the radially averaged power spectrum of each image
    (:func:`radial_power_spectrum`, ``2 * (min(H, W) // 4)`` rings, at least 2), log10, and
    the mean absolute difference over the rings in the upper half of the frequencies (ring
    centre above half the Nyquist frequency); then the mean over channels. 0 means the same
    amount of fine detail at every scale; 0.3 is a factor of 2 in power on average, whether
    too little (blur) or too much (noise, over-sharpening). It says nothing about where the
    detail is: see PSNR / SSIM for that.

    Parameters
    ----------
    out, hr : numpy.ndarray
        ``H x W x C`` or ``H x W`` images of the same shape, in the same units (the error is
        a ratio of powers, so the units cancel).
    border : int
        Pixels shaved off each edge first.

    Returns
    -------
    float
        The error, >= 0 (decades).

    Raises
    ------
    InputError
        The shapes differ, or less than 2 x 2 px are left after shaving.
    """
    out, hr = _channels(out), _channels(hr)
    if out.shape != hr.shape:
        raise InputError(f"images differ in shape: {out.shape} vs {hr.shape}")
    if border:
        out, hr = (a[border : a.shape[0] - border, border : a.shape[1] - border] for a in (out, hr))
    h, w = out.shape[:2]
    if min(h, w) < 2:
        raise InputError(f"nothing usable left of a {h} x {w} image after shaving {border} px")
    bins = max(2, 2 * (min(h, w) // 4))  # an even count: the upper half starts on a ring edge
    errors = []
    for c in range(out.shape[2]):
        centres, p_out = radial_power_spectrum(out[..., c], bins)
        _, p_hr = radial_power_spectrum(hr[..., c], bins)
        upper = (centres > 0.5) & np.isfinite(p_out) & np.isfinite(p_hr)
        log_out, log_hr = (np.log10(np.maximum(p[upper], _POWER_FLOOR)) for p in (p_out, p_hr))
        errors.append(float(np.mean(np.abs(log_out - log_hr))))
    return float(np.mean(errors))


def _unit_range(img: np.ndarray) -> np.ndarray:
    """Float64 in [0, 1]: uint8 is read as DN, floats are taken as already in [0, 1]."""
    img = np.asarray(img)
    return img / 255.0 if img.dtype == np.uint8 else img.astype(np.float64)


def consistency_error(out: np.ndarray, lr: np.ndarray, scale: int) -> float:
    """RMS difference (8-bit DN) between ``out`` downsampled as the model assumes and ``lr``.

    The model is trained to invert :mod:`geosr.degradations`' clean downsampling
    (anti-aliased bicubic, ``torch.nn.functional.interpolate(..., mode="bicubic",
    align_corners=False, antialias=True)``, clipped to [0, 1]): ``out`` is downsampled so
    (:func:`geosr.degradations.apply_degradation` with a ``clean`` protocol) and compared
    with ``lr``, with 1 LR pixel shaved off each edge (the resampling kernel's edge
    handling). On an LR that was blurred or noisy before it was downsampled (the ``iso`` and
    ``aniso`` protocols) even the perfect HR leaves an error: compare methods on the same LR.

    Parameters
    ----------
    out : numpy.ndarray
        ``H x W x C`` or ``H x W`` output, ``H = scale * h`` and ``W = scale * w``.
    lr : numpy.ndarray
        ``h x w x C`` or ``h x w`` LR image it was made from.
    scale : int
        Upscaling factor.

    Returns
    -------
    float
        The RMS over pixels and bands, in DN on the 0-255 scale (uint8 images are in DN,
        float images in [0, 1]).

    Raises
    ------
    InputError
        The shapes do not match at ``scale``, or the LR is under 3 px a side.
    """
    out, lr = _channels(_unit_range(out)), _channels(_unit_range(lr))
    scale = int(scale)
    h, w = lr.shape[:2]
    if out.shape != (h * scale, w * scale, lr.shape[2]):
        raise InputError(f"output {out.shape} is not the LR {lr.shape} upscaled x{scale}")
    if min(h, w) < 3:
        raise InputError(f"the LR must be at least 3 x 3 px, got {h} x {w}")
    clean = DegradationParams(scale, CLEAN_BLUR_LR_PX * scale, CLEAN_BLUR_LR_PX * scale, 0.0, 0.0, None, "clean")
    down = apply_degradation(out, clean)  # no noise, so no generator is drawn from
    diff = (down.astype(np.float64) - lr)[1:-1, 1:-1]
    return 255.0 * math.sqrt(float(np.mean(diff**2)))
