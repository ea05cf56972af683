"""The files GDAL reads beside a raster, and what in them changes the pixels a run reads.

GDAL looks beside ``scene.tif`` for external overviews (``scene.tif.ovr``: QGIS's *Build
pyramids* and ``gdaladdo -ro`` write them), an external mask (``scene.tif.msk``), PAM
metadata (``scene.tif.aux.xml``: nodata, scale and offset, georeferencing, which for GeoTIFF
come before the file's own) and world files (``scene.tfw``, ``scene.tifw``, ``scene.wld``).
Each can change what a run reads: a downsampled read, such as the scene stretch's sample, is
served from overviews when there are some. So a run's identity
(:func:`geosr.resumable.run_identity`) covers them as it covers the raster.

A PAM file is also where GDAL caches statistics and histograms, which QGIS computes when it
first shows a raster: those change no pixel, so :func:`pam_settings_digest` leaves them out,
and a file that holds nothing else counts as absent.
"""

from __future__ import annotations

import hashlib
import os
import xml.etree.ElementTree as ET

__all__ = ["pam_settings_digest", "side_files"]

#: PAM metadata items that are cached statistics (GDALComputeRasterStatistics), not settings.
_STATISTICS_PREFIX = "STATISTICS_"


def side_files(path: str) -> list[str]:
    """The side files GDAL would read for the local raster ``path`` that exist, in a fixed order.

    Both cases of each suffix are looked for, as GDAL does on case-sensitive file systems.
    """
    base, ext = os.path.splitext(path)
    candidates = [(path, ".ovr"), (path, ".msk"), (path, ".aux.xml"), (base, ".aux"), (base, ".wld")]
    if len(ext) > 1:  # world files: scene.tfw (first and last letters + w) and scene.tifw
        candidates += [(base, f".{ext[1]}{ext[-1]}w"), (base, f"{ext}w")]
    found: list[str] = []
    for stem, suffix in candidates:
        for name in (stem + suffix.lower(), stem + suffix.upper()):
            if name != path and name not in found and os.path.isfile(name):
                found.append(name)
    return found


def pam_settings_digest(path: str) -> str | None:
    """SHA-256 (16 hex digits) of what a PAM ``.aux.xml`` says beyond cached statistics, or None.

    Statistics items and histograms are dropped, then elements left without children, text
    or attributes (:func:`_drop_empty`); None when nothing remains (a file of statistics alone reads like no file). A file
    that is not XML is hashed whole: GDAL ignores it, but a run cannot tell what it meant.
    """
    with open(path, "rb") as f:
        raw = f.read()
    try:
        root = ET.fromstring(raw)
    except ET.ParseError:
        return hashlib.sha256(raw).hexdigest()[:16]
    for parent in list(root.iter()):
        for child in list(parent):
            statistic = child.tag == "MDI" and (child.get("key") or "").startswith(_STATISTICS_PREFIX)
            if child.tag == "Histograms" or statistic:
                parent.remove(child)
    _drop_empty(root)
    if len(root) == 0 and not (root.text or "").strip():
        return None
    canonical = ET.canonicalize(ET.tostring(root, encoding="unicode"), strip_text=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


#: PAM elements that only hold others: left empty (their statistics gone), they say nothing.
#: (A subdataset's PAM - a Sentinel-2 product's - sits in ``<Subdataset name=...><PAMDataset>``.)
_CONTAINERS = {"PAMRasterBand", "Metadata", "Subdataset", "PAMDataset"}


def _drop_empty(element: ET.Element) -> None:
    """Remove, depth first, the descendants of ``element`` left with no children, no text and
    no attributes (a colour table's ``<Entry c1=... />`` says something) - or containers left empty."""
    for child in list(element):
        _drop_empty(child)
        if len(child) == 0 and not (child.text or "").strip() and (not child.attrib or child.tag in _CONTAINERS):
            element.remove(child)
