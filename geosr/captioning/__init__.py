"""Captioners: one "change caption" per tile, saying how it differs from a clean sharp image.

:func:`load_captioner` resolves a spec: ``degradation`` (no weights),
``mllm:<dir-or-hub-id>`` (or ``mllm:geosr-caption-tiny``, the VLM shipped in the package),
``auto`` (the default: the measuring captioner, and the shipped VLM for tiles it reads as
JPEG-compressed: :mod:`geosr.captioning.auto`), ``fixed:<text>`` or ``none``.

A captioner that combines others (``auto``) also says which one wrote each caption:
``caption_attributed(tiles)`` returns the captions with the writer's name attached
(:func:`attribute`). A run carries captions that way from the captioner to the captions
GeoJSON (its ``captioner`` property); :func:`caption_text` gives back the text, the only part
a model reads (:func:`geosr.tasks.upscale_batch`) and the only part in the ``caption`` property.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence, runtime_checkable

import torch

from geosr.errors import CaptionerError

__all__ = [
    "SPEAKER_MARK", "Captioner", "FixedCaptioner", "attribute", "attributed_captions", "caption_text",
    "captioner_files", "load_captioner", "register_captioner", "split_speaker",
]

#: Between a caption and the name of the captioner that wrote it (ASCII unit separator: in no
#: caption grammar, and no model ever sees it: :func:`caption_text` cuts it off).
SPEAKER_MARK = "\x1f"


def attribute(text: str, speaker: str) -> str:
    """``text`` attributed to the captioner named ``speaker`` (see :func:`split_speaker`)."""
    return f"{text}{SPEAKER_MARK}{speaker}"


def split_speaker(caption: str) -> tuple[str, str | None]:
    """``(text, speaker)`` of a caption; a caption nobody is attributed has speaker None."""
    text, mark, speaker = caption.rpartition(SPEAKER_MARK)
    return (text, speaker) if mark else (caption, None)


def caption_text(caption: str) -> str:
    """The text of a caption, attributed or not: what a model reads."""
    return split_speaker(caption)[0]


def attributed_captions(captioner: Captioner, tiles: torch.Tensor) -> list[str]:
    """``captioner``'s captions of ``tiles``, attributed where the captioner says who wrote each
    (``caption_attributed``), else as they are."""
    attributed = getattr(captioner, "caption_attributed", None)
    return list(attributed(tiles) if attributed is not None else captioner.caption(tiles))


@runtime_checkable
class Captioner(Protocol):
    """Writes one caption per tile.

    ``name`` is recorded in the output's provenance tags. A captioner may also have
    ``caption_attributed(tiles) -> list[str]``: the same captions, each attributed
    (:func:`attribute`) to the captioner that wrote it.
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


def _auto(arg: str) -> Captioner:
    from geosr.captioning.auto import AutoCaptioner

    if arg:
        raise CaptionerError(f"captioner 'auto' takes no argument, got {arg!r}")
    return AutoCaptioner()


_FACTORIES["auto"] = _auto
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
    if SPEAKER_MARK in arg:
        raise CaptionerError(f"captioner {prefix!r}: no control character \\x1f in {arg!r}")
    return _FACTORIES[prefix](arg)


def captioner_files(spec: str) -> str | None:
    """What the network files of captioner ``spec`` are, in one line, or None for one without any.

    A VLM's captions are the text the diffusion model is conditioned on, so its weights
    change pixels: a run's identity records them (:mod:`geosr.resumable`), as
    :func:`geosr.weights_fingerprint.source_fingerprint` says them. ``auto``: its VLM's.
    """
    prefix, _, arg = spec.partition(":")
    if prefix == "auto":
        from geosr.captioning.auto import AUTO_VLM

        prefix, _, arg = AUTO_VLM.partition(":")
    if prefix != "mllm" or not arg:
        return None
    from geosr.captioning.mllm import captioner_source
    from geosr.weights_fingerprint import source_fingerprint

    return source_fingerprint(captioner_source(arg), "config.json")


def available() -> Sequence[str]:
    """Registered captioner prefixes."""
    return tuple(sorted(_FACTORIES))
