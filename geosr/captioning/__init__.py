"""Captioners: one "change caption" per tile, saying how it differs from a clean sharp image.

:func:`load_captioner` resolves a spec: ``degradation`` (default, no weights),
``mllm:<dir-or-hub-id>`` (or ``mllm:geosr-caption-tiny``, the VLM shipped in the package),
``fixed:<text>`` or ``none``.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence, runtime_checkable

import torch

from geosr.errors import CaptionerError

__all__ = ["Captioner", "FixedCaptioner", "load_captioner", "register_captioner"]


@runtime_checkable
class Captioner(Protocol):
    """Writes one caption per tile.

    ``name`` is recorded in the output's provenance tags.
    """

    name: str

    def caption(self, tiles: torch.Tensor) -> list[str]:
        """Caption ``[B, C, h, w]`` float tiles in ``[0, 1]`` (RGB order when ``C >= 3``)."""
        ...


class FixedCaptioner:
    """The same caption for every tile (``fixed:<text>``); ``none`` is the empty caption."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.name = f"fixed:{text}" if text else "none"

    def caption(self, tiles: torch.Tensor) -> list[str]:
        return [self.text] * int(tiles.shape[0])


# prefix -> factory(argument) for specs "prefix" or "prefix:argument"
_FACTORIES: dict[str, Callable[[str], Captioner]] = {
    "fixed": FixedCaptioner,
    "none": lambda _arg: FixedCaptioner(""),
}


def _degradation(arg: str) -> Captioner:
    from geosr.captioning.degradation import DegradationCaptioner

    if arg:
        raise CaptionerError(f"captioner 'degradation' takes no argument, got {arg!r}")
    return DegradationCaptioner()


def _mllm(arg: str) -> Captioner:
    # imported on use: transformers is slow to import and only this captioner needs it
    from geosr.captioning.mllm import MLLMCaptioner

    if not arg:
        raise CaptionerError("captioner 'mllm' needs a model: mllm:geosr-caption-tiny or mllm:<dir-or-hub-id>")
    return MLLMCaptioner(arg)


_FACTORIES["degradation"] = _degradation
_FACTORIES["mllm"] = _mllm


def register_captioner(prefix: str, factory: Callable[[str], Captioner]) -> None:
    """Make ``prefix`` / ``prefix:<arg>`` specs build ``factory(arg)``."""
    _FACTORIES[prefix] = factory


def load_captioner(spec: str) -> Captioner:
    """Build the captioner a spec names.

    Raises
    ------
    CaptionerError
        Unknown prefix, missing argument, or a model that cannot be loaded.
    """
    prefix, _, arg = spec.partition(":")
    if prefix not in _FACTORIES:
        known = ", ".join(f"{p}:..." if p in ("fixed", "mllm") else p for p in sorted(_FACTORIES))
        raise CaptionerError(f"unknown captioner {spec!r}: use one of {known}")
    if prefix == "fixed" and not arg:
        raise CaptionerError("captioner 'fixed' needs a text: fixed:<text>")
    return _FACTORIES[prefix](arg)


def available() -> Sequence[str]:
    """Registered captioner prefixes."""
    return tuple(sorted(_FACTORIES))
