"""What a band's description names: a colour, a sensor's band number, another band of imagery.

The vocabulary :mod:`geosr.band_roles` reads R, G, B with, and :mod:`geosr.scene` reads whether a
band labelled alpha is imagery (an RGBN GeoTIFF's NIR) with; it reads no raster.
"""

from __future__ import annotations

import re
from typing import Mapping

__all__ = ["BAND_NUMBER", "LETTERS", "NOT_A_COLOUR", "OTHER_BANDS", "colour_named", "names_a_band"]

# "B4", "B04", "SR_B4", "TOA_B4", "B4, central wavelength 665 nm"; not "B8A", "B10", "Band 4"
# (a position, not a sensor band) nor "blue".
BAND_NUMBER = re.compile(r"^(?:(?:sr|toa)_)?b0?(\d{1,2})(?![\da-z])", re.I)
# Words that make "red"/"blue" in a description another band: red edge, coastal blue.
NOT_A_COLOUR = {"edge", "rededge", "coastal", "deep", "infrared", "nir", "ir"}
LETTERS = {"r": "red", "g": "green", "b": "blue"}
# Words that name a band outside red, green and blue.
OTHER_BANDS = NOT_A_COLOUR | {"swir", "mwir", "lwir", "tir", "thermal", "pan", "panchromatic", "aerosol",
                              "cirrus", "vapour", "vapor", "yellow", "re", "ndvi"}


def colour_named(description: str | None, numbers: Mapping[int, str]) -> str | None:
    """The colour (``red``, ``green``, ``blue``) ``description`` names, band numbers read in ``numbers``
    (``{4: "red", ...}``), or None."""
    if not description:
        return None
    text = description.strip()
    if text.lower() in LETTERS:
        return LETTERS[text.lower()]
    match = BAND_NUMBER.match(text)
    if match:
        return numbers.get(int(match.group(1)))
    words = set(re.findall(r"[a-z]+", text.lower()))
    colours = [c for c in ("red", "green", "blue") if c in words]
    return colours[0] if len(colours) == 1 and not words & NOT_A_COLOUR else None


def names_a_band(description: str | None) -> bool:
    """Whether ``description`` names a band of imagery: a colour, a sensor band number (``B8``), NIR,
    red edge, SWIR..."""
    text = (description or "").strip()
    words = set(re.findall(r"[a-z]+", text.lower()))
    return bool(colour_named(text, {}) or BAND_NUMBER.match(text) or words & OTHER_BANDS)
