"""Texture-aware tile routing: the model where there is texture, a cheap path where there is none.

Aerial scenes are mostly flat - water, bare fields, roofs, roads - and a super-resolution
model gains little there while costing as much as on a forest edge. With ``--route auto``
each LR tile is measured before the model runs (a few small filters on its luminance, about
8 ms per 288 px tile on a 2-core laptop-class CPU) and goes to the cheap path when it is both

- **flat**: its *texture*, the RMS gradient of the luminance (DN per LR pixel, 0-255
  scale) after a 1 px Gaussian, with the part that white noise of the measured level
  explains taken out, is below the threshold; and
- **clean**: its *noise* (Immerkaer's fast estimator, DN) is below :data:`NOISE_LIMIT`.
  The cheap path does not denoise: a noisy flat tile routed away would stay noisy beside its
  denoised neighbours, so noisy tiles stay on the model whatever their texture; and
- **sharp**: its *blur*, measured (only on tiles that are flat and clean) as the degradation
  captioner measures it, is below :data:`BLUR_LIMIT`: the cheap path does not deblur. A tile
  with no structure at all (texture under :data:`NO_STRUCTURE`) needs no deblurring and is
  not asked: featureless water reads as blurred.

The cheap path (:func:`cheap_path`) is, ClassSR-style, a much smaller network where one is
shipped for the scale (``geosr-tiny-fast-x2``/``-x4``: a fifth of the default model's
weights, trained by plain regression on clean crops), else
bicubic; each has its own calibrated threshold (:data:`CALIBRATED_THRESHOLDS`).

The rule errs towards the model: Immerkaer's estimator reads texture as extra noise; that
lowers the texture left after the noise discount, but the same extra noise keeps the tile
over the noise limit, on the model.
Routed tiles go through the same blending as the others, so there is no seam where the
path changes. The thresholds were calibrated on ``../shared/data/train`` crops (never
val); README "Texture-aware routing" gives the command and the figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from geosr.degradations import gaussian_kernel_1d
from geosr.errors import InputError

__all__ = ["ROUTES", "CALIBRATED_THRESHOLDS", "NOISE_LIMIT", "BLUR_LIMIT", "NO_STRUCTURE", "TileRoute", "cheap_path",
           "routing_threshold", "measure_tiles", "measure_blur", "passes_blur_gate", "route_tiles"]

ROUTES = ("auto", "off")
#: texture (DN / LR px) under which a tile has nothing for deblurring to restore, whatever
#: its blur reads (featureless water reads as blurred): bicubic's threshold, calibrated as
#: losing nothing measurable to the model
NO_STRUCTURE = 1.0
#: per cheap path, the texture (RMS gradient, DN / LR px) under which a clean tile takes it
#: (``python -m geosr.training.calibrate_routing``; README "Texture-aware routing")
CALIBRATED_THRESHOLDS = {"bicubic": NO_STRUCTURE, "geosr-tiny-fast-x2": 4.0, "geosr-tiny-fast-x4": 4.0}
#: noise (DN) from which a tile stays on the model whatever its texture
NOISE_LIMIT = 2.0
#: blur (LR px, as the degradation captioner measures it) from which a flat, clean tile with
#: some texture stays on the model: the cheap paths do not deblur. Clean val LRs read
#: 0.1-0.5 px; blurred flat images the model restores by 1-4 dB read 0.6-1.2 px.
BLUR_LIMIT = 0.55

MODEL, BICUBIC = "model", "bicubic"

_LUMA = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float32)
_SMOOTH_SIGMA = 1.0  # px: the gradient is of structure, not of pixel-to-pixel noise
# Immerkaer (1996): the difference of two Laplacians, blind to planes and (mostly) to edges
_IMMERKAER = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]], dtype=torch.float32)


@dataclass(frozen=True)
class TileRoute:
    """Where one tile went and why: ``path`` is ``model`` or the cheap path's name; texture and noise in DN."""

    path: str
    texture: float
    noise: float

    def properties(self) -> dict:
        """The route as the captions sidecar and ``geosr evaluate`` record it (an unmeasured value: null)."""
        return {"route": self.path, "texture": _number(self.texture), "noise": _number(self.noise)}


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value


def cheap_path(scale: int) -> str:
    """Where routed tiles go at ``scale``: the shipped fast network for it, else bicubic."""
    from geosr.models import shipped_model_path

    name = f"geosr-tiny-fast-x{int(scale)}"
    return name if shipped_model_path(name) is not None else BICUBIC


def routing_threshold(route: str, threshold: float | None, model: str, scale: int) -> float | None:
    """The texture threshold a run of ``model`` at ``scale`` routes at, or None when it does not route.

    ``threshold`` None takes the one calibrated for the scale's cheap path. Classical models
    are their own cheap path: routing them would change nothing.

    Raises
    ------
    InputError
        ``route`` is not one of :data:`ROUTES`, or ``threshold`` is negative.
    """
    from geosr.models import CLASSICAL

    if route not in ROUTES:
        raise InputError(f"--route must be {' or '.join(ROUTES)}, got {route!r}")
    if threshold is not None and not threshold >= 0:
        raise InputError(f"--route-threshold must be >= 0, got {threshold}")
    if route != "auto" or model in CLASSICAL:
        return None
    return threshold if threshold is not None else CALIBRATED_THRESHOLDS[cheap_path(scale)]


def _smoothed_gradient_sq(y: torch.Tensor) -> torch.Tensor:
    """``|grad(G * y)|^2`` per pixel (central differences) of ``[B, 1, H, W]``, valid part only."""
    g = gaussian_kernel_1d(_SMOOTH_SIGMA)
    k = len(g)
    y = F.conv2d(F.conv2d(y, g.view(1, 1, 1, k)), g.view(1, 1, k, 1))
    gx = (y[..., 1:-1, 2:] - y[..., 1:-1, :-2]) / 2
    gy = (y[..., 2:, 1:-1] - y[..., :-2, 1:-1]) / 2
    return gx**2 + gy**2


@lru_cache(maxsize=1)
def _noise_gradient_gain() -> float:
    """Mean ``|grad|^2`` that unit white noise leaves after the smoothing (computed, not guessed)."""
    # float32 said, not taken from torch's default dtype: loading a bf16 model in another
    # thread of a dask worker sets that default for the whole process while it loads
    noise = torch.randn(1, 1, 512, 512, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    return float(_smoothed_gradient_sq(noise).mean())


def _luminance(x: torch.Tensor) -> torch.Tensor:
    """``[B, 1, h, w]`` luminance on the 0-255 scale of model-input tiles ``[B, C, h, w]`` in [0, 1]."""
    x = x.float().clamp(0, 1) * 255.0
    if x.shape[1] == 3:
        return (x * _LUMA.view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
    return x.mean(dim=1, keepdim=True)


def _masked_mean(values: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Per-tile mean of a filter's output ``[B, 1, h', w']`` over the pixels whose whole support is valid.

    ``valid`` is ``[B, h, w]``; the filter's support is ``(h - h' + 1)`` px square, centred.
    """
    if valid is None:
        return values.mean(dim=(1, 2, 3))
    radius = (valid.shape[-1] - values.shape[-1]) // 2
    # a pixel counts when no invalid pixel is within the support: erode the valid mask
    invalid = (~valid[:, None]).float()
    k = 2 * radius + 1  # separable: two 1-D max filters cost a fraction of one k x k
    supported = F.max_pool2d(F.max_pool2d(invalid, (1, k), stride=1), (k, 1), stride=1) == 0  # [B, 1, h', w']
    w = supported.to(values.dtype)
    count = w.sum(dim=(1, 2, 3))
    # no pixel with a whole valid support (a core narrower than the filter, a thin or speckled valid
    # area): nothing measured, NaN - read as 0, such a textured tile took the cheap path
    return torch.where(count > 0, (values * w).sum(dim=(1, 2, 3)) / count.clamp_min(1), torch.nan)


#: The smallest side the measurements take (their filters): smaller tiles are mirrored up to it.
MIN_SIDE = 16


def _mirrored_to(t: torch.Tensor, side: int) -> torch.Tensor:
    """``[B, C, h, w]`` mirrored at its bottom and right edges until both sides reach ``side``
    (a side of one pixel is repeated: it has nothing to mirror)."""
    while min(t.shape[-2:]) < side:
        h, w = t.shape[-2:]
        grow_h, grow_w = max(side - h, 0), max(side - w, 0)
        mode = "reflect" if min(h if grow_h else 2, w if grow_w else 2) > 1 else "replicate"
        reach = (lambda n, g: min(g, n - 1)) if mode == "reflect" else (lambda n, g: g)
        t = F.pad(t, (0, reach(w, grow_w), 0, reach(h, grow_h)), mode=mode)
    return t


def measure_tiles(x: torch.Tensor, valid: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Texture and noise (DN) of each model-input tile.

    Parameters
    ----------
    x : torch.Tensor
        ``[B, C, h, w]`` tiles in [0, 1] (3 channels are read as RGB, others averaged).
    valid : torch.Tensor, optional
        ``[B, h, w]`` bool: only pixels whose filters see valid pixels alone are measured
        (filled no-data is flat and would dilute the texture of a tile's valid part; a
        neighbour's texture must not keep a flat core on the model). A tile without any
        such pixel is NaN, NaN: not measured, it stays on the model.

    Returns
    -------
    texture, noise : numpy.ndarray
        ``[B]`` float64 each; see the module docstring.
    """
    if x.ndim != 4 or 0 in x.shape:
        raise InputError(f"routing needs [B, C, h, w] tiles, got {tuple(x.shape)}")
    if min(x.shape[-2:]) < MIN_SIDE:
        # a small tile (a 1 x 50 px raster; --tile 10 --overlap 2) is measured on its mirror image up to
        # the filters' size, not refused at the first tile of a run
        x = _mirrored_to(x, MIN_SIDE)
        if valid is not None:
            valid = _mirrored_to(valid[:, None].float(), MIN_SIDE)[:, 0] > 0.5
    y = _luminance(x)
    # Immerkaer: sigma = sqrt(pi / 2) / (6 (W - 2)(H - 2)) * sum |y * N|
    noise = np.sqrt(np.pi / 2) / 6 * _masked_mean(F.conv2d(y, _IMMERKAER.view(1, 1, 3, 3)).abs(), valid)
    grad_sq = _masked_mean(_smoothed_gradient_sq(y), valid)
    texture = (grad_sq - _noise_gradient_gain() * noise**2).clamp_min(0).sqrt()
    return texture.double().numpy(), noise.double().numpy()


def route_tiles(x: torch.Tensor, threshold: float, valid: torch.Tensor | None = None,
                cheap: str = BICUBIC) -> list[TileRoute]:
    """The route of each model-input tile ``[B, C, h, w]``: ``cheap`` (the cheap path's name)
    or :data:`MODEL` (see the module docstring and :func:`measure_tiles` for ``valid``)."""
    if not threshold >= 0:
        raise InputError(f"--route-threshold must be >= 0, got {threshold}")
    texture, noise = measure_tiles(x, valid)
    routes = []
    for i, (t, n) in enumerate(zip(texture, noise)):
        flat_and_clean = t < threshold and n < NOISE_LIMIT
        path = cheap if flat_and_clean and passes_blur_gate(t, lambda: measure_blur(x[i])) else MODEL
        routes.append(TileRoute(path, round(float(t), 3), round(float(n), 3)))
    return routes


def passes_blur_gate(texture: float, blur: Callable[[], float]) -> bool:
    """Whether a flat, clean tile may take the cheap path as far as blur goes: one with no
    structure (texture under :data:`NO_STRUCTURE`) always, else only when it reads sharp
    (``blur()``, LR px, under :data:`BLUR_LIMIT`; called only then, as it costs a spectrum fit)."""
    return texture < NO_STRUCTURE or blur() < BLUR_LIMIT


def measure_blur(tile: torch.Tensor) -> float:
    """Blur sigma (px) of one ``[C, h, w]`` tile in [0, 1], as the degradation captioner measures it."""
    from geosr.captioning.degradation import DegradationCaptioner

    rgb = tile[:3] if tile.shape[0] >= 3 else tile[:1]
    return DegradationCaptioner().estimate(rgb.float().clamp(0, 1).numpy().transpose(1, 2, 0)).blur_sigma
