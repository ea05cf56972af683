"""``auto``: the measuring captioner, and the shipped VLM where the tile reads as JPEG-compressed.

The two captioners are right in different places (README, *Captions*): on uncompressed
imagery the measuring :class:`~geosr.captioning.degradation.DegradationCaptioner` states
noise and blur several times more exactly, while on a JPEG-compressed tile its noise and
blur measurements break down (the 8 x 8 DCT quantisation removes the high frequencies both
are read from) and the shipped VLM (``mllm:geosr-caption-tiny``), trained on compressed
crops, stays close. ``auto`` measures every tile and asks the VLM only about the tiles the
measurement reads as JPEG-compressed (8 x 8 blocking that stands out from other grids,
:func:`geosr.captioning.degradation._jpeg_quality`); the VLM is loaded on the first such
tile, so a run without one never loads it and costs what ``degradation`` costs.

On a tile read as JPEG-compressed:

- the VLM names the compression too: its caption;
- the VLM answers ``no jpeg``: its blur and noise clauses with the measured JPEG clause. The
  blocking the measurement reads is rarely there without JPEG (1 % of never-compressed
  crops), and the VLM misses it mostly on the most compressed, most blurred tiles (quality
  10-20 on val), whose blur it still reads far better than the measurement does (on val,
  JPEG on a quarter of the crops: 0.51 against 2.15 px median error, noise alike);
- the VLM's answer does not follow the caption grammar
  (:func:`~geosr.captioning.vocabulary.parse_caption`): the measured caption (the models read
  the grammar only).

Each caption is attributed (:meth:`AutoCaptioner.caption_attributed`) to who wrote it:
``degradation``, ``mllm:geosr-caption-tiny``, or ``mllm:geosr-caption-tiny+degradation`` for
the VLM's blur and noise with the measured JPEG clause.
"""

from __future__ import annotations

import importlib.util
import threading
from typing import Callable

import torch

from geosr.captioning import Captioner, attribute, caption_text
from geosr.captioning.degradation import DegradationCaptioner
from geosr.captioning.vocabulary import format_caption, parse_caption
from geosr.errors import CaptionerError

__all__ = ["AUTO_VLM", "AutoCaptioner"]

#: The captioner ``auto`` asks about tiles that read as JPEG-compressed.
AUTO_VLM = "mllm:geosr-caption-tiny"


def _load_shipped_vlm() -> Captioner:
    from geosr.captioning.mllm import SHIPPED_CAPTIONER, MLLMCaptioner

    return MLLMCaptioner(SHIPPED_CAPTIONER)


def _check_shipped_vlm() -> None:
    """Fail now, not at the first JPEG tile, if the shipped VLM could not be loaded then."""
    from geosr.captioning.mllm import SHIPPED_CAPTIONER, shipped_captioner_path

    if shipped_captioner_path(SHIPPED_CAPTIONER) is None:
        raise CaptionerError(f"captioner 'auto' needs the shipped VLM {SHIPPED_CAPTIONER}, not found in the package")
    if importlib.util.find_spec("transformers") is None:
        raise CaptionerError("captioner 'auto' needs transformers for its VLM: pip install transformers")


class AutoCaptioner:
    """Measures every tile; the tiles it reads as JPEG-compressed are captioned by a VLM.

    Parameters
    ----------
    load_vlm : callable, optional
        Builds the VLM captioner, called once, on the first tile read as JPEG-compressed;
        default: the shipped ``mllm:geosr-caption-tiny`` (whose files and ``transformers``
        are checked now, without importing it).
    measure : DegradationCaptioner, optional
        The measuring captioner.

    Attributes
    ----------
    vlm_tiles : int
        Tiles given to the VLM so far (a run without JPEG-compressed tiles: 0).
    """

    name = "auto"

    def __init__(self, load_vlm: Callable[[], Captioner] | None = None,
                 measure: DegradationCaptioner | None = None) -> None:
        if load_vlm is None:
            _check_shipped_vlm()
            load_vlm = _load_shipped_vlm
        self.measure = measure or DegradationCaptioner()
        self._load_vlm = load_vlm
        self._vlm: Captioner | None = None
        self._lock = threading.Lock()
        self.vlm_tiles = 0

    @property
    def vlm_loaded(self) -> bool:
        """Whether the VLM has been loaded (only once a tile read as JPEG-compressed came)."""
        return self._vlm is not None

    def warm_up(self) -> None:
        """Load the VLM now, as the first tile read as JPEG-compressed would (``geosr
        evaluate-captioner`` does, so that its time per crop is captioning, not loading)."""
        self._vlm_captioner()

    def _vlm_captioner(self) -> Captioner:
        with self._lock:  # the engine captions from several threads: one load
            if self._vlm is None:
                self._vlm = self._load_vlm()
            return self._vlm

    def caption_attributed(self, tiles: torch.Tensor) -> list[str]:
        """Caption ``[B, C, h, w]`` float tiles in [0, 1], each caption attributed to its captioner
        (:func:`geosr.captioning.attribute`; :func:`geosr.captioning.caption_text` reads the text)."""
        # as DegradationCaptioner.caption converts them
        arr = tiles.detach().to("cpu", torch.float32).clamp(0, 1).numpy().transpose(0, 2, 3, 1)
        estimates = [self.measure.estimate(tile) for tile in arr]
        out = [attribute(e.caption(), self.measure.name) for e in estimates]
        compressed = [i for i, e in enumerate(estimates) if e.jpeg_quality is not None]
        if compressed:
            vlm = self._vlm_captioner()
            texts = vlm.caption(tiles[compressed])
            with self._lock:
                self.vlm_tiles += len(compressed)
            for i, text in zip(compressed, texts):
                facts = parse_caption(text)
                if facts is None:  # the models read the grammar only: the measured caption stays
                    continue
                if facts.jpeg_quality is not None:
                    out[i] = attribute(text.strip().rstrip("."), vlm.name)
                else:  # the VLM's blur and noise, the measured blocking
                    out[i] = attribute(
                        format_caption(facts.blur_sigma, facts.anisotropic, facts.blur_angle_deg or 0.0,
                                       facts.noise_sigma, estimates[i].jpeg_quality),
                        f"{vlm.name}+{self.measure.name}",
                    )
        return out

    def caption(self, tiles: torch.Tensor) -> list[str]:
        """Caption ``[B, C, h, w]`` float tiles in [0, 1] (the text of :meth:`caption_attributed`)."""
        return [caption_text(c) for c in self.caption_attributed(tiles)]
