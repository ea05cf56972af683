"""Classical interpolation upscalers: the baselines, the path for extra bands, and nearest
neighbour for classification rasters (land cover, masks), whose values are classes."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


class _Interpolator:
    """An interpolation upscaler: no network, no captions, any band count (``channels = None``)."""

    channels = None
    name = ""

    def __init__(self, scale: int) -> None:
        self.scale = int(scale)

    def upscale(
        self,
        tiles: torch.Tensor,
        captions: Sequence[str] = (),
        seeds: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """``[B, C, h, w]`` -> ``[B, C, h * scale, w * scale]`` float32 on the CPU; captions and seeds unused."""
        return self.interpolate(tiles.detach().float())

    def interpolate(self, tiles: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class BicubicUpscaler(_Interpolator):
    """Bicubic interpolation (Keys, a = -0.75, as torch implements it).

    A local linear operator: this is what makes ``tiled == untiled`` testable.
    """

    name = "bicubic"

    def interpolate(self, tiles: torch.Tensor) -> torch.Tensor:
        return F.interpolate(tiles, scale_factor=self.scale, mode="bicubic", align_corners=False).cpu()


class LanczosUpscaler(_Interpolator):
    """Lanczos-3 interpolation (Pillow's implementation, per band in float32)."""

    name = "lanczos"

    def interpolate(self, tiles: torch.Tensor) -> torch.Tensor:
        arr = tiles.cpu().numpy()
        b, c, h, w = arr.shape
        out = np.empty((b, c, h * self.scale, w * self.scale), dtype=np.float32)
        for i in range(b):
            for j in range(c):
                img = Image.fromarray(arr[i, j], mode="F")
                out[i, j] = np.asarray(img.resize((w * self.scale, h * self.scale), Image.Resampling.LANCZOS))
        return torch.from_numpy(out)


class NearestUpscaler(_Interpolator):
    """Nearest neighbour: every input pixel becomes a ``scale x scale`` block of its value.

    The one upscaler that makes no new values, for rasters whose values are classes (land
    cover, masks): any interpolation between two class codes is a code of no class.
    """

    name = "nearest"

    def interpolate(self, tiles: torch.Tensor) -> torch.Tensor:
        # an integer factor: "nearest" repeats each pixel exactly scale x scale times
        return F.interpolate(tiles, scale_factor=self.scale, mode="nearest").cpu()


#: The interpolators: no network, no GPU wanted.
CLASSICAL_UPSCALERS = (BicubicUpscaler, LanczosUpscaler, NearestUpscaler)
