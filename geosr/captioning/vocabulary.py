"""The one caption grammar shared by the degradation model and the degradation captioner.

A diffusion model is trained on captions written from the true degradation parameters
(:func:`geosr.degradations.describe`) and, at inference, reads captions the
:class:`~geosr.captioning.degradation.DegradationCaptioner` writes from its measurements.
Both go through :func:`format_caption`, so the two can only differ in the numbers.

The caption describes the image the captioner *sees* (the low-resolution tile), so:

- blur sigmas are in pixels of that image (for a synthetic pair: HR sigma / scale);
- the scale factor is not part of the caption (the captioner cannot know it; the
  upscaler has a fixed scale anyway);
- noise sigma is in digital numbers on the 0-255 scale.

Grammar (``;``-separated clauses, always in this order)::

    <blur strength> <isotropic|anisotropic> blur sigma <s.s> px[ along <angle> deg]  |  no blur
    <noise level> noise sigma <n>          |  no noise
    jpeg quality <q>                       |  no jpeg

A blur sigma that rounds to 0.0 px is ``no blur`` (never "mild ... blur sigma 0.0 px").

Examples: ``"mild isotropic blur sigma 0.7 px; no noise; no jpeg"`` and
``"strong anisotropic blur sigma 2.4 px along 135 deg; moderate noise sigma 9;
jpeg quality 60"``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "ANISOTROPY_RATIO",
    "ANGLE_STEP_DEG",
    "JPEG_STEP",
    "NOISE_FLOOR",
    "CaptionFacts",
    "blur_strength",
    "format_caption",
    "noise_level",
    "parse_caption",
]

#: Ratio of the major to the minor blur axis from which a blur counts as anisotropic.
ANISOTROPY_RATIO = 1.5

#: Orientations are written to the nearest multiple of this (in degrees, in [0, 180)).
ANGLE_STEP_DEG = 15

#: JPEG qualities are written to the nearest multiple of this.
JPEG_STEP = 10

#: Below this noise sigma (DN) the caption says "no noise": it is under the uint8
#: quantisation noise of a clean image plus what the best estimator can resolve.
NOISE_FLOOR = 1.0

# (upper bound, word) pairs; the last word applies above the last bound.
_BLUR_WORDS = ((0.6, "mild"), (1.5, "moderate"))
_NOISE_WORDS = ((5.0, "low"), (15.0, "moderate"))


def blur_strength(sigma: float) -> str:
    """Word for a blur sigma in px: ``mild`` (< 0.6), ``moderate`` (< 1.5) or ``strong``."""
    for bound, word in _BLUR_WORDS:
        if sigma < bound:
            return word
    return "strong"


def noise_level(sigma: float) -> str:
    """Word for a noise sigma in DN: ``low`` (< 5), ``moderate`` (< 15) or ``high``."""
    for bound, word in _NOISE_WORDS:
        if sigma < bound:
            return word
    return "high"


def format_caption(
    blur_sigma: float,
    anisotropic: bool,
    blur_angle_deg: float,
    noise_sigma: float,
    jpeg_quality: int | None,
) -> str:
    """Write the caption for a degradation.

    Parameters
    ----------
    blur_sigma : float
        Blur sigma in px of the captioned image (geometric mean of the axes when
        anisotropic); one that rounds to 0.0 px is written ``no blur``.
    anisotropic : bool
        Whether to write the orientation clause (a blur that is written has one).
    blur_angle_deg : float
        Direction of the major blur axis, counter-clockwise from the image x axis (as
        seen on screen), any real value; written modulo 180 to ``ANGLE_STEP_DEG``.
    noise_sigma : float
        Noise standard deviation in DN (0-255 scale).
    jpeg_quality : int or None
        JPEG quality, or None for no JPEG.

    Returns
    -------
    str
        The caption.
    """
    # words are chosen from the rounded numbers so that word and number never disagree
    sigma = round(float(blur_sigma), 1)
    if sigma == 0.0:  # a blur of 0.0 px is none: no strength, kind or direction to state
        blur = "no blur"
    else:
        blur = f"{blur_strength(sigma)} "
        blur += f"{'anisotropic' if anisotropic else 'isotropic'} blur sigma {sigma:.1f} px"
        if anisotropic:
            angle = int(round(blur_angle_deg / ANGLE_STEP_DEG)) * ANGLE_STEP_DEG % 180
            blur += f" along {angle} deg"
    if noise_sigma < NOISE_FLOOR:
        noise = "no noise"
    else:
        level = int(round(noise_sigma))
        noise = f"{noise_level(level)} noise sigma {level}"
    if jpeg_quality is None:
        jpeg = "no jpeg"
    else:
        jpeg = f"jpeg quality {int(round(jpeg_quality / JPEG_STEP)) * JPEG_STEP}"
    return f"{blur}; {noise}; {jpeg}"


@dataclass(frozen=True)
class CaptionFacts:
    """The numbers a caption states (what :func:`parse_caption` reads back).

    Attributes
    ----------
    blur_sigma : float
        Blur sigma in px of the captioned image (0 for ``no blur``).
    anisotropic : bool
        Whether the caption has an orientation clause.
    blur_angle_deg : float or None
        Orientation of the major blur axis, degrees in [0, 180); None when isotropic.
    noise_sigma : float
        Noise sigma in DN (0 for ``no noise``).
    jpeg_quality : int or None
        JPEG quality, or None for ``no jpeg``.
    """

    blur_sigma: float
    anisotropic: bool
    blur_angle_deg: float | None
    noise_sigma: float
    jpeg_quality: int | None


_CAPTION_RE = re.compile(
    r"(?:no blur|(?P<strength>mild|moderate|strong) (?P<kind>isotropic|anisotropic) blur sigma "
    r"(?P<sigma>\d+\.\d) px(?: along (?P<angle>\d+) deg)?); "
    r"(?:no noise|(?P<level>low|moderate|high) noise sigma (?P<noise>\d+)); "
    r"(?:no jpeg|jpeg quality (?P<jpeg>\d+))"
)


def parse_caption(text: str) -> CaptionFacts | None:
    """Read a caption written in the grammar back into numbers; None if it does not follow it.

    A caption follows the grammar when it is exactly what :func:`format_caption` writes:
    the three clauses in order, words that agree with their numbers (``mild`` only below
    0.6 px, ``no blur`` for 0.0 px, ``low`` noise only below 5 DN...), an orientation
    clause exactly when the blur is anisotropic, angles in [0, 180) on the 15 degree steps
    and JPEG qualities in [10, 100] on steps of 10. Surrounding white space and a final full
    stop are allowed (a language model may add them).
    """
    match = _CAPTION_RE.fullmatch(text.strip().rstrip("."))
    if match is None:
        return None
    g = match.groupdict()
    sigma = 0.0 if g["sigma"] is None else float(g["sigma"])
    anisotropic = g["kind"] == "anisotropic"
    angle = None if g["angle"] is None else float(g["angle"])
    noise = 0.0 if g["noise"] is None else float(g["noise"])
    jpeg = None if g["jpeg"] is None else int(g["jpeg"])
    facts = CaptionFacts(sigma, anisotropic, angle, noise, jpeg)
    # the same numbers must write the same caption: words, clauses and steps all agree
    rewritten = format_caption(sigma, anisotropic, angle or 0.0, noise, jpeg)
    return facts if rewritten == text.strip().rstrip(".") else None


def states_at_most(text: str, blur_sigma: float, noise_sigma: float) -> bool:
    """Whether ``text`` follows the grammar (:func:`parse_caption`) and states an isotropic blur
    of at most ``blur_sigma`` px, at most ``noise_sigma`` DN of noise and no JPEG."""
    facts = parse_caption(text)
    return (
        facts is not None
        and not facts.anisotropic
        and facts.blur_sigma <= blur_sigma
        and facts.noise_sigma <= noise_sigma
        and facts.jpeg_quality is None
    )
