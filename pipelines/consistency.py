"""Consistency with the input: what the model's downsampling sees of an HR image, and detail it cannot see.

The models are trained on LR tiles made by :mod:`geosr.degradations`; with no blur, that is an
antialiased bicubic downsampling (:func:`model_downsample`). An output is *consistent* with its
input when it, so downsampled, gives the input back: then band means, and any spectral index
computed at the sensor's resolution, stay what the sensor measured.

Detail added on top of an output must not change that: :func:`invisible_to_lr` removes from a
residual what the downsampling would see of it, by iterative back-projection (Irani & Peleg
1991): ``r <- r - up(down(r))``, with the bicubic upsampling the pipeline already uses as its
residual base. Each round multiplies what is left visible by ``1 - down(up(.))``, whose response
lies in ``[0, 1)`` at the frequencies a bicubic pair passes, so a few rounds leave a small
fraction of a DN (measured: ``tests/test_detail_uncertainty_pipeline.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["BACK_PROJECTION_ROUNDS", "invisible_to_lr", "model_downsample"]

BACK_PROJECTION_ROUNDS = 6


def model_downsample(image: torch.Tensor, scale: int) -> torch.Tensor:
    """``image`` ``[B, C, H, W]`` downsampled by ``scale`` as the clean training LR is made."""
    h, w = image.shape[-2:]
    return F.interpolate(image, size=(h // scale, w // scale), mode="bicubic", align_corners=False, antialias=True)


def invisible_to_lr(residual: torch.Tensor, scale: int, upsample_mode: str = "bicubic",
                    rounds: int = BACK_PROJECTION_ROUNDS) -> torch.Tensor:
    """``residual`` less what :func:`model_downsample` sees of it (float32, same shape).

    Parameters
    ----------
    residual : torch.Tensor
        ``[B, C, H, W]`` HR-sized residual, ``H`` and ``W`` multiples of ``scale``.
    scale : int
        The upscaling factor.
    upsample_mode : str
        The interpolation that maps an LR correction back to the HR grid.
    rounds : int
        Back-projection rounds.
    """
    residual = residual.float()
    align = False if upsample_mode in ("bilinear", "bicubic") else None
    for _ in range(rounds):
        seen = model_downsample(residual, scale)
        residual = residual - F.interpolate(seen, scale_factor=scale, mode=upsample_mode, align_corners=align)
    return residual
