"""Sentinel-2 products as input: a ``.SAFE`` folder, its ``MTD_MSIL2A.xml`` / ``MTD_MSIL1C.xml``,
the product's zip as downloaded, or one of GDAL's subdataset names
(``SENTINEL2_L2A:/path/MTD_MSIL2A.xml:10m:EPSG_32633``).

GDAL's SENTINEL2 driver (it needs a JPEG-2000 driver too, e.g. JP2OpenJPEG) opens a product's
metadata file as a container of subdatasets, one per resolution (``10m``, ``20m``, ``60m``) and
the true-colour image (``TCI``), each a stack of the granule's band images on one grid.
:func:`resolve_input` turns what the user named into the subdataset to read (a product gives
its 10 m one; another is chosen by naming it) and :func:`write_vrt` describes that subdataset
as geosr reads any 16-bit multispectral stack:

- its spectral bands only (``B4, central wavelength 665 nm``...: the bands with a wavelength);
  the driver also stacks the aerosol and water vapour maps (AOT, WVP), the scene
  classification (SCL) and the cloud and snow probabilities (CLD, SNW) - not reflectance, and
  SCL holds classes - which are left out;
- nodata: the product's ``NODATA`` special value (0), which the driver reports as metadata only;
- scale ``1 / QUANTIFICATION_VALUE`` and offset ``BOA_ADD_OFFSET / QUANTIFICATION_VALUE``
  (L1C: ``RADIO_ADD_OFFSET``; 0 before processing baseline 04.00), so that
  ``value * scale + offset`` is the reflectance, as in a Sentinel-2 GeoTIFF stack;
- the driver's band descriptions, colour interpretation and band metadata (``BANDNAME``,
  ``WAVELENGTH``...), and the product's metadata as dataset tags.

The VRT names the subdataset as its source, so a task reads the band images through GDAL's
driver; a run's identity (:func:`geosr.resumable.files_read`) covers every file the
subdataset reads: the metadata files and the band images.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from functools import cache
from pathlib import Path
from typing import Iterator
from xml.sax.saxutils import escape

import rasterio
from rasterio.dtypes import dtype_rev, typename_fwd

from geosr.errors import GDAL_ERRORS, InputError
from geosr.remote import is_remote

__all__ = ["PRODUCT_METADATA", "DEFAULT_RESOLUTION", "is_subdataset", "product_file", "resolve_input", "product_subdatasets",
           "subdataset_files", "write_vrt", "source_name", "missing_drivers"]

#: The metadata file at the root of a product (Level-2A, Level-1C), which GDAL's driver opens.
PRODUCT_METADATA = ("MTD_MSIL2A.xml", "MTD_MSIL1C.xml")

#: The subdataset a product or its metadata file gives: B4, B3, B2, B8 at 10 m.
DEFAULT_RESOLUTION = "10m"

# SENTINEL2_L1B:, SENTINEL2_L1C:, SENTINEL2_L1C_TILE:, SENTINEL2_L2A: (GDAL's subdataset names)
_SUBDATASET = re.compile(r"^SENTINEL2_L[12][ABC](?:_TILE)?:", re.I)
_JP2_DRIVERS = ("JP2OpenJPEG", "JP2KAK", "JP2ECW", "JP2MrSID")
# a product's zip as downloaded: S2A_MSIL2A_20230823T095559_N0509_R122_T34UCF_20230823T124759(.SAFE).zip
_ZIPPED_PRODUCT = re.compile(r"^S2[A-D]_MSIL(1C|2A)_.*\.zip$", re.I)
_VSIZIP = "/vsizip/"


def is_subdataset(name: str | os.PathLike) -> bool:
    """Whether ``name`` is one of GDAL's Sentinel-2 subdataset names (``SENTINEL2_L2A:...``)."""
    text = os.fspath(name)
    return isinstance(text, str) and bool(_SUBDATASET.match(text))


def source_name(path: str) -> str:
    """A short name of an input, for tags and seeds: a file's name, or for a subdataset its
    product folder and subdataset (``S2B_MSIL2A_....SAFE:10m:EPSG_32634``)."""
    if is_subdataset(path):
        _, xml, rest = _split(path)
        return f"{os.path.basename(os.path.dirname(xml)) or os.path.basename(xml)}{rest}"
    return os.path.basename(path)


def product_file(path: str) -> Path | None:
    """The file GDAL opens for ``path`` when it names a Sentinel-2 product (a ``.SAFE`` folder, a
    folder holding ``MTD_MSIL2A.xml`` / ``MTD_MSIL1C.xml``, that file, or the product's zip as
    downloaded, ``S2B_MSIL2A_....zip``), else None.

    Raises
    ------
    InputError
        A ``.SAFE`` folder without the metadata file.
    """
    p = Path(path)
    if p.is_file():
        if p.suffix.lower() == ".zip":
            return p if _ZIPPED_PRODUCT.match(p.name) else None
        return p if p.name.upper() in {m.upper() for m in PRODUCT_METADATA} else None
    if not p.is_dir():
        return None
    found = [p / m for m in PRODUCT_METADATA if (p / m).is_file()]
    if found:
        return found[0]
    if p.name.upper().endswith(".SAFE"):
        raise InputError(f"{path} is a Sentinel-2 .SAFE folder without {' or '.join(PRODUCT_METADATA)}: "
                         "the product is incomplete (unpack the whole product, or name a band image)")
    return None


def resolve_input(path: str) -> str | None:
    """The subdataset name geosr reads for ``path``, or None when ``path`` is no Sentinel-2 product.

    A product (its folder, metadata file or zip) gives its :data:`DEFAULT_RESOLUTION` subdataset;
    a subdataset name is checked and returned with its metadata file's (or zip's) path made absolute.

    Raises
    ------
    InputError
        GDAL lacks the SENTINEL2 or a JPEG-2000 driver; the product or subdataset does not open;
        the product has no 10 m subdataset or several (one per UTM zone): the message lists them.
    """
    if is_subdataset(path):
        return _check_subdataset(path)
    product = product_file(path)
    if product is None:
        return None
    subdatasets = _subdatasets(str(product.absolute()))
    ten = [s for s in subdatasets if _resolution(s) == DEFAULT_RESOLUTION]
    if len(ten) == 1:
        return ten[0]
    listed = "".join(f"\n  {s}" for s in subdatasets) or " none"
    why = "several 10 m subdatasets (its granules lie in several UTM zones)" if ten else "no 10 m subdataset"
    raise InputError(f"{path}: the Sentinel-2 product has {why}; name one of its subdatasets as INPUT:{listed}")


def product_subdatasets(name: str) -> list[str]:
    """The subdatasets of the product that the subdataset ``name`` belongs to (all resolutions)."""
    return _subdatasets(_split(name)[1])


def subdataset_files(name: str) -> list[str]:
    """Every file GDAL reads for the subdataset ``name``: the product's and the granule's
    metadata files and the band images, or the zip that holds them."""
    try:
        with _quiet(), rasterio.open(name) as ds:
            files = list(ds.files)
    except GDAL_ERRORS as exc:
        raise InputError(f"GDAL cannot open the Sentinel-2 subdataset {name}: {exc}") from exc
    return list(dict.fromkeys(_zip_of(f) or f for f in files))


def write_vrt(name: str, vrt: Path) -> Path:
    """Write the VRT that geosr reads for the subdataset ``name`` (see the module docstring).

    Raises
    ------
    InputError
        The subdataset does not open, has no spectral band, or a band's image is missing.
    """
    try:
        with _quiet(), rasterio.open(name) as ds:
            return _write_vrt(name, ds, vrt)
    except GDAL_ERRORS as exc:
        raise InputError(f"GDAL cannot read the Sentinel-2 subdataset {name}: {exc}") from exc


# ------------------------------------------------------------------------------------ internals


def _split(name: str) -> tuple[str, str, str]:
    """``SENTINEL2_L2A:/p/MTD_MSIL2A.xml:10m:EPSG_32634`` -> (``SENTINEL2_L2A``, ``/p/MTD_MSIL2A.xml``,
    ``:10m:EPSG_32634``). The metadata path ends at its ``.xml`` (a Windows drive's ``:``
    or a zip's name may come before)."""
    prefix, _, rest = name.partition(":")
    end = rest.lower().rfind(".xml")
    if end < 0:
        raise InputError(f"{name}: a Sentinel-2 subdataset name is DRIVER:METADATA.xml:RESOLUTION:EPSG_CODE "
                         f"(e.g. SENTINEL2_L2A:S2B_MSIL2A_....SAFE/MTD_MSIL2A.xml:10m:EPSG_32633)")
    return prefix, rest[: end + 4], rest[end + 4:]


def _resolution(name: str) -> str:
    """``10m``, ``20m``, ``60m``, ``TCI``... of a subdataset name (its field after the metadata file)."""
    return (_split(name)[2].split(":")[1:2] or [""])[0]


def missing_drivers() -> list[str]:
    """The GDAL drivers rasterio's GDAL lacks to read Sentinel-2 products (none: it reads them)."""
    drivers = _drivers()
    missing = [] if "SENTINEL2" in drivers else ["SENTINEL2 driver"]
    if not any(d in drivers for d in _JP2_DRIVERS):
        missing.append(f"JPEG-2000 driver ({', '.join(_JP2_DRIVERS)})")
    return missing


def _require_drivers() -> None:
    missing = missing_drivers()
    if missing:
        raise InputError(f"this GDAL ({rasterio.__gdal_version__}, rasterio's) has no {' and no '.join(missing)}: "
                         "it cannot read Sentinel-2 products; stack the bands into a GeoTIFF or VRT with a GDAL "
                         "that has them (gdalbuildvrt -separate of the band images)")


@cache
def _drivers() -> frozenset[str]:
    with rasterio.Env() as env:
        return frozenset(env.drivers())


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # the subdatasets have a CRS; the container (the product's metadata file) has none
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        yield


def _subdatasets(xml: str) -> list[str]:
    _require_drivers()
    try:
        with _quiet(), rasterio.open(xml) as ds:
            driver, subdatasets = ds.driver, list(ds.subdatasets)
    except GDAL_ERRORS as exc:
        raise InputError(f"GDAL cannot open the Sentinel-2 product {xml}: {exc}") from exc
    if driver != "SENTINEL2" or not subdatasets:
        raise InputError(f"{xml} does not open as a Sentinel-2 product (GDAL's {driver} driver took it, "
                         "with no subdatasets)")
    return subdatasets


def _zip_of(path: str) -> str | None:
    """The zip file of ``/vsizip/archive.zip/inside``, or None for another path."""
    if not path.startswith(_VSIZIP):
        return None
    end = path.lower().find(".zip", len(_VSIZIP))
    return path[len(_VSIZIP): end + 4] if end >= 0 else None


def _check_subdataset(name: str) -> str:
    prefix, xml, rest = _split(name)
    archive = _zip_of(xml)
    if archive is not None and not is_remote(archive):
        if not os.path.isfile(archive):
            raise InputError(f"{name}: the product's zip {archive} does not exist")
        xml = _VSIZIP + os.path.abspath(archive) + xml[len(_VSIZIP) + len(archive):]
    elif not is_remote(xml) and not xml.startswith("/vsi"):
        if not os.path.isfile(xml):
            raise InputError(f"{name}: the product's metadata file {xml} does not exist")
        xml = os.path.abspath(xml)
    name = f"{prefix}:{xml}{rest}"
    _require_drivers()
    try:
        with _quiet(), rasterio.open(name) as ds:
            count = ds.count
    except GDAL_ERRORS as exc:
        try:
            offered = _subdatasets(xml)
        except InputError:
            offered = []
        listed = "; the product's subdatasets:" + "".join(f"\n  {s}" for s in offered) if offered else ""
        raise InputError(f"GDAL cannot open the Sentinel-2 subdataset {name}: {exc}{listed}") from exc
    if not count:
        raise InputError(f"the Sentinel-2 subdataset {name} has no bands")
    return name


def _band_code(band_name: str) -> str:
    """``B4`` -> ``B04``, ``B8A`` -> ``B8A``, ``B11`` -> ``B11``: as band images are named."""
    m = re.fullmatch(r"B(\d+)", band_name, re.I)
    return f"B{int(m.group(1)):02d}" if m else band_name.upper()


def _write_vrt(name: str, ds, vrt: Path) -> Path:
    tci = _resolution(name).upper() == "TCI"
    bands = [b for b in range(1, ds.count + 1) if tci or ds.tags(b).get("WAVELENGTH")]
    if not bands:
        raise InputError(f"the Sentinel-2 subdataset {name} holds no spectral band "
                         f"(only {', '.join(ds.tags(b).get('BANDNAME', str(b)) for b in range(1, ds.count + 1))})")
    images = [os.path.basename(f).upper() for f in ds.files]
    for b in bands:
        code = "TCI" if tci else _band_code(ds.tags(b).get("BANDNAME", ""))
        if not any(re.search(rf"_{re.escape(code)}(_\d+M)?\.JP2$", f) for f in images):
            raise InputError(f"the Sentinel-2 subdataset {name}: the image of band {code} is missing from the "
                             "product (GDAL would read zeros): the product is incomplete")
    tags = ds.tags()
    nodata = tags.get("SPECIAL_VALUE_NODATA")
    quantification = None if tci else _number(tags.get("BOA_QUANTIFICATION_VALUE") or tags.get("QUANTIFICATION_VALUE"))
    dtype = typename_fwd[dtype_rev[ds.dtypes[0]]]
    # the SRS without dataAxisToSRSAxisMapping: GDAL takes the traditional GIS order (x = easting)
    lines = [
        f'<VRTDataset rasterXSize="{ds.width}" rasterYSize="{ds.height}">',
        f'  <SRS>{escape(ds.crs.to_wkt())}</SRS>' if ds.crs else "",
        f"  <GeoTransform>{', '.join(repr(float(v)) for v in ds.transform.to_gdal())}</GeoTransform>",
        _metadata(tags, "  "),
    ]
    for i, b in enumerate(bands, start=1):
        band_tags = ds.tags(b)
        lines.append(f'  <VRTRasterBand dataType="{dtype}" band="{i}">')
        lines.append(_metadata(band_tags, "    "))
        if ds.descriptions[b - 1]:
            lines.append(f"    <Description>{escape(ds.descriptions[b - 1])}</Description>")
        if nodata is not None:
            lines.append(f"    <NoDataValue>{escape(nodata)}</NoDataValue>")
        lines.append(f"    <ColorInterp>{_colour_name(ds.colorinterp[b - 1])}</ColorInterp>")
        if quantification:
            offset = _number(band_tags.get("BOA_ADD_OFFSET") or band_tags.get("RADIO_ADD_OFFSET")) or 0.0
            lines.append(f"    <Offset>{offset / quantification!r}</Offset>")
            lines.append(f"    <Scale>{1.0 / quantification!r}</Scale>")
        lines += [
            "    <SimpleSource>",
            f'      <SourceFilename relativeToVRT="0">{escape(name)}</SourceFilename>',
            f"      <SourceBand>{b}</SourceBand>",
            "    </SimpleSource>",
            "  </VRTRasterBand>",
        ]
    lines.append("</VRTDataset>")
    vrt.parent.mkdir(parents=True, exist_ok=True)
    vrt.write_text("\n".join(line for line in lines if line) + "\n")
    return vrt


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def _metadata(tags: dict, indent: str) -> str:
    if not tags:
        return ""
    items = "".join(f'\n{indent}  <MDI key="{escape(k, {chr(34): "&quot;"})}">{escape(v)}</MDI>' for k, v in tags.items())
    return f"{indent}<Metadata>{items}\n{indent}</Metadata>"


def _colour_name(ci) -> str:
    # GDAL reads a VRT's colour names case-blind: Red, NIR, RedEdge, SWIR, Coastal...
    return ci.name
