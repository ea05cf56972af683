"""The :class:`Upscaler` protocol every super-resolution model implements."""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import torch


@runtime_checkable
class Upscaler(Protocol):
    """A model that maps low-resolution tiles to tiles ``scale`` times larger.

    Attributes
    ----------
    scale : int
        Integer upscaling factor.
    channels : int or None
        Number of channels the model takes; ``None`` means any number (classical kernels).
    name : str
        What the model is, recorded in the output's provenance tags.
    """

    scale: int
    channels: int | None
    name: str

    def upscale(
        self,
        tiles: torch.Tensor,
        captions: Sequence[str],
        seeds: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Upscale a batch.

        Parameters
        ----------
        tiles : torch.Tensor
            ``[B, C, h, w]`` float32, nominally in ``[0, 1]``. The scene stretch leaves what
            lies beyond its percentiles outside that range: a model that needs the range
            clamps it itself and must give those values back at least as well as bicubic
            does (e.g. by adding the bicubic of what the clamp took away).
        captions : sequence of str
            One change caption per tile (may be empty strings).
        seeds : sequence of int, optional
            One seed per tile, for stochastic models: the same tile and seed give the same
            pixels whatever the batch it is in.

        Returns
        -------
        torch.Tensor
            ``[B, C, h * scale, w * scale]`` float32 on the CPU.
        """
        ...
