"""Which bands of a scene are red, green and blue: read from the raster, not guessed.

An RGB model takes red, green and blue in that order, and a band stack can hold them in any
order (a Sentinel-2 stack of B2, B3, B4 is blue, green, red) or among others (R, G, B, NIR).
:func:`find_rgb` reads, in this order:

1. the bands the user gave (``--rgb-bands``);
2. band descriptions that name a colour (``red``, ``Red``, ``R``, ``green``...) or a sensor's
   band number (``B04``, ``B4``, ``SR_B4``, GDAL's Sentinel-2 ``B4, central wavelength 665
   nm``): Sentinel-2 and Landsat 8-9 numbering (B2 blue, B3 green, B4 red), or Landsat 4-7's
   (B1, B2, B3) where the dataset tags name one of those satellites or the bands are Landsat
   4-7 surface reflectance's (B1-B5 and B7, no B6); where nothing tells the two numberings
   apart (B2, B3, B4 alone, no sensor tag) the first is taken and the caller warns;
3. band centre wavelengths in the band metadata (GDAL's ``IMAGERY`` domain
   ``CENTRAL_WAVELENGTH_UM``; ``WAVELENGTH`` with ``WAVELENGTH_UNIT`` as the Sentinel-2 and
   ENVI drivers write them);
4. the colour interpretation (GDAL gives a 3- or 4-band uint8 GeoTIFF R, G, B by default,
   whatever it holds, so the bands' own names go first: one that names another band or colour
   overrules it).

Otherwise the first three bands are *assumed* to be R, G, B, and the caller warns
(:class:`RGBAssumedWarning`) - unless their names, wavelengths or colour interpretations place
them outside red, green and blue: then no band is (:func:`find_rgb` returns None). Which bands
go to the model is :func:`parse_bands_to_model`'s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

from rasterio.enums import ColorInterp

from geosr.band_names import BAND_NUMBER, OTHER_BANDS, colour_named
from geosr.errors import InputError
from geosr.scene import Scene, open_raster

__all__ = [
    "NUMBERING_ASSUMED", "RGBBands", "RGBAssumedWarning", "find_rgb", "rgb_from_descriptions", "rgb_from_wavelengths",
    "parse_bands_to_model", "parse_rgb_bands", "BANDS_TO_MODEL",
]

#: ``bands_to_model`` words: every band through the model, or only the R, G, B group.
BANDS_TO_MODEL = ("all", "rgb")

# Centre wavelengths (nm) of each colour, and the window a band's centre must lie in to be it:
# Sentinel-2 490/560/665, Landsat 8-9 482/561/655, WorldView-3 480/545/660. The windows stop
# short of coastal (443) and yellow (605) bands and of red edge (705).
_COLOURS = {"red": (665.0, 620.0, 700.0), "green": (560.0, 520.0, 600.0), "blue": (490.0, 450.0, 520.0)}

# Band numbers of the colours: Sentinel-2 and Landsat 8-9 (OLI) share them; Landsat 4-7
# (TM, ETM+) number blue 1, green 2, red 3.
_OLI_NUMBERS = {4: "red", 3: "green", 2: "blue"}
_TM_NUMBERS = {3: "red", 2: "green", 1: "blue"}
_TM_SENSOR = re.compile(r"landsat[\s_-]*0?[457](?!\d)|(?<![a-z0-9])l[te]0?[457](?!\d)", re.I)
_OLI_SENSOR = re.compile(r"sentinel|landsat[\s_-]*0?[89](?!\d)|(?<![a-z0-9])l[co]0?[89](?!\d)|(?<![a-z0-9])s2[abc]", re.I)
# band numbers only Sentinel-2 and Landsat 8-9 have (Landsat 4-7 stop at B7, and B8 on ETM+)
_OLI_ONLY_NUMBERS = {9, 10, 11, 12}
# GDAL's Sentinel-2 driver's band descriptions, Sentinel-2's own band B8A and its zero-padded
# names (B02; Landsat's are B2, SR_B2)
_SENTINEL2_NAME = re.compile(r"central wavelength|^b0?8a$|^b0\d(?!\d)", re.I)

# Colour interpretations of bands outside the visible colours (GDAL 3.10: Sentinel-2's 20 m bands).
# (rasterio 1.4+; the names are absent from 1.3's enum)
_NOT_VISIBLE = {c for name in ("pan", "coastal", "rededge", "nir", "swir", "mwir", "lwir", "tir", "other_ir")
                if (c := getattr(ColorInterp, name, None)) is not None}


#: :attr:`RGBBands.source` of bands read from band numbers in a numbering nothing confirmed:
#: Sentinel-2 / Landsat 8-9's (B4 red), or Landsat 4-7's (B3 red) for their surface reflectance set.
NUMBERING_ASSUMED = ("band numbers, Sentinel-2 / Landsat 8-9 numbering assumed",
                     "band numbers, Landsat 4-7 numbering assumed")


class RGBAssumedWarning(UserWarning):
    """No metadata says which bands are red, green and blue: the first three are taken as R, G, B."""


@dataclass(frozen=True)
class RGBBands:
    """The bands taken as red, green and blue, and what said so.

    Attributes
    ----------
    bands : tuple of int
        1-based input band numbers of red, green and blue, in that order.
    source : str
        ``given``, ``band descriptions``, one of :data:`NUMBERING_ASSUMED` (band numbers, read
        in a numbering that nothing confirmed), ``wavelengths``,
        ``colour interpretation`` or ``assumed`` (nothing said: the first three bands).
    """

    bands: tuple[int, int, int]
    source: str
    other_numbering: tuple[int, int, int] | None = None  # R, G, B in the other numbering, when NUMBERING_ASSUMED

    @property
    def assumed(self) -> bool:
        """Whether no metadata said so (the caller warns)."""
        return self.source == "assumed"

    @property
    def numbering_assumed(self) -> bool:
        """Whether band numbers said so, in a numbering nothing confirmed (the caller warns)."""
        return self.source in NUMBERING_ASSUMED


def find_rgb(scene: Scene, bands: Sequence[int], given: Sequence[int] | None = None) -> RGBBands | None:
    """R, G, B among ``bands`` (at least three) of ``scene``, read as the module docstring says;
    None where no three are R, G, B and the metadata places the first three elsewhere (a NIR, R, G
    file; Sentinel-2's 20 m red-edge and SWIR bands): then each band goes to the model alone.

    Parameters
    ----------
    scene : Scene
        Its descriptions, colour interpretation and tags are read; its source is opened for
        the band metadata (wavelengths) only when the descriptions do not tell.
    bands : sequence of int
        1-based input bands to look among (the run's bands, alpha excluded).
    given : sequence of int, optional
        Bands the user named red, green and blue.

    Raises
    ------
    InputError
        ``given`` is not three distinct bands among ``bands``.
    """
    if given is not None:
        given = parse_rgb_bands(given)
        if not set(given) <= set(bands):
            raise InputError(f"--rgb-bands needs three different bands among {','.join(map(str, bands))} "
                             f"(red, green, blue), got {','.join(map(str, given))}")
        return RGBBands(given, "given")
    descriptions = {b: scene.descriptions[b - 1] for b in bands}
    # the numbering from all the raster's band names, not only those of the run's --bands
    numbers, certain = _numbering(dict(enumerate(scene.descriptions, start=1)), scene.tags)
    found = _rgb_named(descriptions, numbers)
    if found:
        if certain or not any(BAND_NUMBER.match((descriptions[b] or "").strip()) for b in found):
            return RGBBands(found, "band descriptions")
        other = _TM_NUMBERS if numbers is _OLI_NUMBERS else _OLI_NUMBERS
        return RGBBands(found, NUMBERING_ASSUMED[numbers is _TM_NUMBERS],
                        _rgb_named(descriptions, other))
    with open_raster(scene.source) as ds:
        band_tags = {b: {**ds.tags(b), **ds.tags(b, ns="IMAGERY")} for b in bands}
    found = rgb_from_wavelengths(band_tags)
    if found:
        return RGBBands(found, "wavelengths")
    # what the bands' names and wavelengths say each is, where they say: a colour, or "other"
    said = {b: _band_said(descriptions[b], numbers if certain else None, band_tags[b]) for b in bands}
    interp = {ColorInterp.red: "red", ColorInterp.green: "green", ColorInterp.blue: "blue"}
    found = _unique({b: interp.get(scene.colorinterp[b - 1]) for b in bands})
    # GDAL gives any 3-band uint8 GeoTIFF R, G, B: a colour-infrared NIR, R, G file's names overrule it
    if found and _agrees(found, said):
        return RGBBands(found, "colour interpretation")
    assumed = tuple(bands[:3])
    if not _agrees(assumed, said) or any(scene.colorinterp[b - 1] in _NOT_VISIBLE for b in assumed):
        return None  # the metadata places them elsewhere: no band is taken for a colour
    return RGBBands(assumed, "assumed")


def _agrees(rgb: Sequence[int], said: Mapping[int, str | None]) -> bool:
    """Whether what the metadata says of the bands ``rgb`` allows them to be red, green, blue."""
    return all(said[b] in (None, colour) for b, colour in zip(rgb, ("red", "green", "blue")))


def _band_said(description: str | None, numbers: Mapping[int, str] | None, tags: Mapping[str, str]) -> str | None:
    """What a band's description or centre wavelength says it is: ``red``, ``green``, ``blue``,
    ``other`` (a named band outside the visible colours: NIR, red edge, SWIR, coastal, a sensor band
    number that is none of R, G, B, a wavelength outside the colours' windows), or None (nothing).
    ``numbers``: the sensor numbering band numbers are read in, None where nothing confirms one - then
    they say nothing (Earth Engine names any image's bands ``b1, b2, b3``)."""
    text = (description or "").strip()
    match = BAND_NUMBER.match(text)
    if match and numbers is None:
        return None
    colour = colour_named(description, numbers or {})
    if colour:
        return colour
    if match or set(re.findall(r"[a-z]+", text.lower())) & OTHER_BANDS:
        return "other"
    nm = _centre_nm(tags)
    if nm is None:
        return None
    return next((c for c, (_, low, high) in _COLOURS.items() if low <= nm < high), "other")


def _unique(colours: Mapping[int, str | None], exact: Mapping[int, bool] | None = None) -> tuple[int, int, int] | None:
    """The one band of each colour, or None when a colour has none or several - but for several of
    which one alone is ``exact`` (named the colour and nothing else: PlanetScope's ``green`` beside
    its ``green_i``)."""
    chosen = []
    for colour in ("red", "green", "blue"):
        hits = [b for b, c in colours.items() if c == colour]
        if len(hits) > 1 and exact:
            hits = [b for b in hits if exact.get(b)] or hits
        if len(hits) != 1:
            return None
        chosen.append(hits[0])
    return tuple(chosen)


def rgb_from_descriptions(descriptions: Mapping[int, str | None], dataset_tags: Mapping[str, str]) -> tuple[int, int, int] | None:
    """Red, green and blue bands by their descriptions (colour words or sensor band numbers), or None."""
    return _rgb_named(descriptions, _numbering(descriptions, dataset_tags)[0])


def _rgb_named(descriptions: Mapping[int, str | None], numbers: Mapping[int, str]) -> tuple[int, int, int] | None:
    """Red, green and blue by ``descriptions``, band numbers read in ``numbers``; None unless each has one band."""
    colours = {b: colour_named(d, numbers) for b, d in descriptions.items()}
    return _unique(colours, {b: (d or "").strip().lower() == colours[b] for b, d in descriptions.items()})


def _numbering(descriptions: Mapping[int, str | None], dataset_tags: Mapping[str, str]) -> tuple[Mapping[int, str], bool]:
    """The sensor numbering the bands' numbers are in, and whether anything says so.

    Landsat 4-7 where the dataset tags name one of them; Sentinel-2 / Landsat 8-9 where the
    tags name one of those, the names are Sentinel-2's (``B8A``, zero-padded ``B02``, GDAL's
    ``central wavelength``) or a number only they have (B9-B12) is there. Unconfirmed: Landsat
    4-7 where the bands look like their surface reflectance set (B7 without B6, nothing above
    B7: a Landsat 8-9 stack without SWIR 1 does too), else Sentinel-2 / Landsat 8-9.
    """
    tags = [str(v) for v in dataset_tags.values()]
    if any(_TM_SENSOR.search(v) for v in tags):
        return _TM_NUMBERS, True
    names = [(d or "").strip() for d in descriptions.values()]
    numbers = {int(m.group(1)) for d in names if (m := BAND_NUMBER.match(d))}
    if any(_OLI_SENSOR.search(v) for v in tags) or any(_SENTINEL2_NAME.search(d) for d in names) \
            or numbers & _OLI_ONLY_NUMBERS:
        return _OLI_NUMBERS, True
    if 7 in numbers and 6 not in numbers and max(numbers) == 7:
        return _TM_NUMBERS, False
    return _OLI_NUMBERS, False


def rgb_from_wavelengths(band_tags: Mapping[int, Mapping[str, str]]) -> tuple[int, int, int] | None:
    """Red, green and blue bands by their centre wavelengths: for each colour, the band nearest its
    centre within its window (:data:`_COLOURS`); None when a colour has no band there."""
    centres = {b: nm for b, tags in band_tags.items() if (nm := _centre_nm(tags)) is not None}
    chosen = []
    for centre, low, high in _COLOURS.values():
        inside = [b for b, nm in centres.items() if low <= nm < high]
        if not inside:
            return None
        chosen.append(min(inside, key=lambda b: abs(centres[b] - centre)))
    return tuple(chosen) if len(set(chosen)) == 3 else None


def _centre_nm(tags: Mapping[str, str]) -> float | None:
    """A band's centre wavelength in nm from its metadata, or None."""
    upper = {k.upper(): v for k, v in tags.items()}
    try:
        if "CENTRAL_WAVELENGTH_UM" in upper:
            return 1000.0 * float(upper["CENTRAL_WAVELENGTH_UM"])
        value = next((upper[k] for k in ("WAVELENGTH", "CENTRAL_WAVELENGTH", "CENTER_WAVELENGTH") if k in upper), None)
        if value is None:
            return None
        nm = float(str(value).split()[0])
    except ValueError:
        return None
    unit = upper.get("WAVELENGTH_UNIT", upper.get("WAVELENGTH_UNITS", "")).strip().lower()
    # micrometres said, or unsaid and too small for nanometres (no imagery band is under 30 nm)
    return nm * 1000.0 if unit in ("um", "µm", "micrometer", "micrometers", "micron", "microns") or (not unit and nm < 30) else nm


def _band_numbers(spec: str | Sequence[int]) -> tuple[int, ...] | None:
    """``"3,2,1"`` or a sequence -> ``(3, 2, 1)``; None when that is not 1-based band numbers."""
    try:
        bands = tuple(int(p) for p in (spec.split(",") if isinstance(spec, str) else spec))
    except (TypeError, ValueError):
        return None
    return bands if bands and min(bands) >= 1 else None


def parse_rgb_bands(spec: str | Sequence[int]) -> tuple[int, int, int]:
    """The bands given as red, green and blue (a sequence or ``"3,2,1"``).

    Raises
    ------
    InputError
        Not three different 1-based band numbers.
    """
    bands = _band_numbers(spec)
    if bands is None or len(bands) != 3 or len(set(bands)) != 3:
        raise InputError(f"--rgb-bands needs three different band numbers (red, green, blue, e.g. 3,2,1), got {spec!r}")
    return bands


def parse_bands_to_model(spec: str | Sequence[int]) -> str | tuple[int, ...]:
    """``all``, ``rgb``, or the 1-based bands (a sequence or ``"4,5,6"``) that go through the model.

    Raises
    ------
    InputError
        Anything else.
    """
    if isinstance(spec, str) and spec.strip().lower() in BANDS_TO_MODEL:
        return spec.strip().lower()
    bands = _band_numbers(spec)
    if bands is None:
        raise InputError(f"--bands-to-model takes all, rgb or band numbers (e.g. 4,5,6), got {spec!r}")
    return bands
