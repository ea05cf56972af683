"""Whether a predicted per-pixel error map can be trusted: calibration and ranking.

A model with an uncertainty head predicts, per pixel, the RMSE its output has against the
truth (``sigma``). Two questions decide whether that map is worth showing a user:

- *calibration* (:func:`calibration_bins`, :func:`calibration_error`): among the pixels the
  model gives a predicted RMSE of about 3 DN, is the actual RMSE about 3 DN? Pixels are
  pooled into equal-count bins of ``sigma`` (deciles by default) and the actual RMSE of
  each bin divided by the predicted one: 1 is calibrated, 2 means the errors are twice as
  large as promised.
- *ranking* (:func:`block_spearman`): does the map point at the right places? The Spearman
  rank correlation of predicted and actual RMSE over 8 x 8 px blocks (single pixels are
  too noisy to rank: one pixel's error is one draw). It is only worth something above what
  a free guess gets: the output's own gradient magnitude (:func:`gradient_baseline`),
  since errors concentrate on edges and texture.

All maps are ``H x W`` arrays in one unit (DN in :mod:`geosr.evaluation`); several images
are pooled by passing lists of maps. :func:`band_rms` makes the per-pixel maps of
``H x W x C`` images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

from geosr.errors import InputError

__all__ = [
    "band_rms",
    "block_rmse",
    "block_spearman",
    "calibration_bins",
    "calibration_error",
    "gradient_baseline",
]

Maps = np.ndarray | Sequence[np.ndarray]


def band_rms(x: np.ndarray) -> np.ndarray:
    """``sqrt(mean over bands of x^2)`` of an ``H x W x C`` array, ``H x W`` (an ``H x W`` one as is, absolute).

    The per-pixel error of an image is ``band_rms(out - hr)``; a per-band predicted RMSE
    ``sigma`` becomes a per-pixel one as ``band_rms(sigma)``.
    """
    x = np.asarray(x, np.float64)
    if x.ndim == 2:
        return np.abs(x)
    if x.ndim != 3:
        raise InputError(f"need an H x W or H x W x C array, got shape {x.shape}")
    return np.sqrt(np.mean(x**2, axis=2))


def gradient_baseline(out: np.ndarray) -> np.ndarray:
    """The free guess of where the errors are: the output's gradient magnitude, ``H x W``.

    Per band ``sqrt(gx^2 + gy^2)`` (central differences, :func:`numpy.gradient`), averaged
    over the bands; in the output's units per pixel. Only its ranking means anything: use it
    as the ``sigma`` of :func:`block_spearman` to get the correlation a model's uncertainty
    map has to beat.

    Parameters
    ----------
    out : numpy.ndarray
        ``H x W x C`` or ``H x W`` image, at least 2 px a side.
    """
    out = np.asarray(out, np.float64)
    if out.ndim == 2:
        out = out[..., None]
    if out.ndim != 3 or min(out.shape[:2]) < 2:
        raise InputError(f"need an H x W (x C) image of at least 2 x 2 px, got shape {out.shape}")
    gy, gx = np.gradient(out, axis=(0, 1))
    return np.mean(np.hypot(gx, gy), axis=2)


def _pooled(sigma: Maps, err: Maps) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The maps as two lists of equal-shape float64 arrays (one map each when not a list)."""
    sigmas = [sigma] if isinstance(sigma, np.ndarray) else list(sigma)
    errs = [err] if isinstance(err, np.ndarray) else list(err)
    if len(sigmas) != len(errs):
        raise InputError(f"{len(sigmas)} sigma map(s) but {len(errs)} error map(s)")
    sigmas = [np.asarray(s, np.float64) for s in sigmas]
    errs = [np.asarray(e, np.float64) for e in errs]
    for s, e in zip(sigmas, errs):
        if s.shape != e.shape:
            raise InputError(f"sigma and error maps differ in shape: {s.shape} vs {e.shape}")
    return sigmas, errs


def calibration_bins(sigma: Maps, err: Maps, bins: int = 10) -> list[dict]:
    """Predicted against actual RMSE over equal-count bins of the predicted RMSE.

    The pixels (of all maps, pooled) are sorted by ``sigma`` and split into ``bins`` bins of
    (nearly) equal count: deciles by default. Equal counts rather than quantile edges, so
    that ties (a flat map) cannot leave a bin empty.

    Parameters
    ----------
    sigma : numpy.ndarray or sequence of numpy.ndarray
        Predicted per-pixel RMSE, >= 0 (a map, or one map per image).
    err : numpy.ndarray or sequence of numpy.ndarray
        Actual per-pixel error of the same shape(s), e.g. :func:`band_rms` of ``out - hr``
        (signed values are fine: only ``err^2`` is used).
    bins : int
        Number of bins.

    Returns
    -------
    list of dict
        Per bin, from the lowest ``sigma`` up: ``sigma_min`` and ``sigma_max`` (its range),
        ``predicted`` (the RMSE the bin is predicted to have, ``sqrt(mean sigma^2)``: pixels
        with errors of RMSE ``sigma_i`` pool to that), ``actual`` (``sqrt(mean err^2)``),
        ``ratio`` (``actual / predicted``; 1 when both are 0, ``inf`` when only the
        prediction is) and ``count`` (pixels).

    Raises
    ------
    InputError
        The shapes differ, or there are fewer finite pixels than bins.
    """
    sigmas, errs = _pooled(sigma, err)
    s = np.concatenate([m.ravel() for m in sigmas]) if sigmas else np.empty(0)
    e = np.concatenate([m.ravel() for m in errs]) if errs else np.empty(0)
    finite = np.isfinite(s) & np.isfinite(e)
    s, e = s[finite], e[finite]
    if bins < 1 or s.size < bins:
        raise InputError(f"need at least {max(bins, 1)} finite pixels for {bins} bin(s), got {s.size}")
    order = np.argsort(s, kind="stable")
    result = []
    for index in np.array_split(order, bins):
        predicted = math.sqrt(float(np.mean(s[index] ** 2)))
        actual = math.sqrt(float(np.mean(e[index] ** 2)))
        if predicted > 0:
            ratio = actual / predicted
        else:
            ratio = 1.0 if actual == 0 else math.inf
        result.append(
            {
                "sigma_min": float(s[index[0]]),
                "sigma_max": float(s[index[-1]]),
                "predicted": predicted,
                "actual": actual,
                "ratio": ratio,
                "count": int(index.size),
            }
        )
    return result


def calibration_error(bins: Sequence[dict]) -> float:
    """``max |ratio - 1|`` over the bins of :func:`calibration_bins`: 0 is calibrated in every bin."""
    if not bins:
        raise InputError("no calibration bins")
    return float(max(abs(b["ratio"] - 1.0) for b in bins))


def block_rmse(values: np.ndarray, block: int = 8) -> np.ndarray:
    """``sqrt(mean values^2)`` over non-overlapping ``block x block`` blocks of an ``H x W`` map.

    The right and bottom remainders (less than a block) are left out.

    Returns
    -------
    numpy.ndarray
        ``H // block x W // block``.
    """
    values = np.asarray(values, np.float64)
    if values.ndim != 2:
        raise InputError(f"need an H x W map, got shape {values.shape}")
    if block < 1:
        raise InputError(f"block must be >= 1, got {block}")
    h, w = (n // block for n in values.shape)
    squares = values[: h * block, : w * block] ** 2
    return np.sqrt(squares.reshape(h, block, w, block).mean(axis=(1, 3)))


def block_spearman(sigma: Maps, err: Maps, block: int = 8) -> float:
    """Spearman rank correlation of predicted and actual RMSE over ``block x block`` blocks.

    Each map is cut into non-overlapping blocks (:func:`block_rmse`: ``sqrt(mean sigma^2)``
    and ``sqrt(mean err^2)`` per block); the blocks of all maps are pooled and ranked.
    1: the map orders the blocks exactly as their errors; 0: no better than chance.

    Parameters
    ----------
    sigma, err : numpy.ndarray or sequence of numpy.ndarray
        ``H x W`` predicted RMSE and actual error maps (or one of each per image), same shapes.
    block : int
        Block side in pixels.

    Returns
    -------
    float
        In [-1, 1]; ``nan`` when either side is constant over the blocks (no ranking).

    Raises
    ------
    InputError
        The shapes differ, or the maps hold fewer than 2 whole blocks (nothing to rank).
    """
    sigmas, errs = _pooled(sigma, err)
    s = np.concatenate([block_rmse(m, block).ravel() for m in sigmas]) if sigmas else np.empty(0)
    e = np.concatenate([block_rmse(m, block).ravel() for m in errs]) if errs else np.empty(0)
    finite = np.isfinite(s) & np.isfinite(e)
    s, e = s[finite], e[finite]
    if s.size < 2:
        raise InputError(f"need at least 2 whole {block} x {block} px blocks to rank, got {s.size}")
    if np.all(s == s[0]) or np.all(e == e[0]):
        return math.nan  # a constant side has no ranking (scipy would warn and say nan too)
    return float(stats.spearmanr(s, e).statistic)
