"""STAC metadata of tiled output: one Item per block COG and a Collection over them.

Written as plain JSON (STAC 1.0.0, no pystac: a few dictionaries), with the projection
extension (``proj:epsg`` or ``proj:wkt2``, ``proj:transform``, ``proj:shape``), the raster
extension (data type, nodata, scale, offset, unit per band) and the eo extension (band names
and, for red, green and blue, common names). The geosr processing tags of the output
(``GEOSR_MODEL``...) become ``geosr:model``... properties. Geometries are the blocks'
footprints in EPSG:4326, their edges densified so a projected block's curved outline is
followed. Links and asset hrefs are relative: the folder can be moved or uploaded whole.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Mapping, Sequence

import numpy as np
import shapely.affinity
import shapely.geometry
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.enums import ColorInterp
from rasterio.transform import Affine
from rasterio.warp import transform as warp_points
from rasterio.windows import Window

from geosr.errors import GDAL_ERRORS
from geosr.tiling import window_transform

__all__ = ["STAC_VERSION", "stac_item", "stac_collection"]

STAC_VERSION = "1.0.0"
_EXTENSIONS = [
    "https://stac-extensions.github.io/projection/v1.0.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
]
_COG = "image/tiff; application=geotiff; profile=cloud-optimized"
_COMMON_NAMES = {ColorInterp.red: "red", ColorInterp.green: "green", ColorInterp.blue: "blue"}
_EDGE_POINTS = 16  # per footprint edge


def footprint(window: Window, transform: Affine, crs: CRS) -> dict:
    """The GeoJSON geometry of ``window`` in EPSG:4326 (longitude, latitude), as RFC 7946 asks:
    a block across the antimeridian is a MultiPolygon of its two sides (not a polygon the other way
    round the globe), a block around a pole is closed along the pole's latitude."""
    c0, r0 = float(window.col_off), float(window.row_off)
    c1, r1 = c0 + float(window.width), r0 + float(window.height)
    corners = [(c0, r0), (c1, r0), (c1, r1), (c0, r1), (c0, r0)]
    ring = []
    for (ca, ra), (cb, rb) in zip(corners, corners[1:]):
        ring += [(ca + (cb - ca) * k / _EDGE_POINTS, ra + (rb - ra) * k / _EDGE_POINTS) for k in range(_EDGE_POINTS)]
    ring.append(ring[0])
    xs, ys = zip(*(transform * p for p in ring))
    lon, lat = warp_points(crs, "EPSG:4326", list(xs), list(ys))
    lon, lat = np.unwrap(np.asarray(lon, float), period=360.0), np.asarray(lat, float)
    turns = round((lon[-1] - lon[0]) / 360.0)
    if turns:  # the ring goes round a pole: close it along the pole's latitude
        pole = 90.0 if np.mean(lat) > 0 else -90.0
        lon = np.concatenate([lon, [lon[-1], lon[0], lon[0]]])
        lat = np.concatenate([lat, [pole, pole, lat[0]]])
    lon -= 360.0 * np.floor((lon.min() + 180.0) / 360.0)  # west end in [-180, 180)
    shape = shapely.geometry.Polygon(zip(lon.tolist(), lat.tolist()))
    if lon.max() <= 180.0:
        return _rounded(shape)
    west = shape.intersection(shapely.geometry.box(-180.0, -90.0, 180.0, 90.0))
    east = shapely.affinity.translate(shape.intersection(shapely.geometry.box(180.0, -90.0, 540.0, 90.0)), -360.0)
    parts = [p for side in (west, east) for p in getattr(side, "geoms", [side]) if p.geom_type == "Polygon" and p.area > 0]
    return _rounded(shapely.geometry.MultiPolygon(parts) if len(parts) > 1 else parts[0])


def _rounded(shape) -> dict:
    """GeoJSON of ``shape`` with plain float coordinates."""
    return json.loads(json.dumps(shapely.geometry.mapping(shape)))


def _bbox(geometry: dict) -> list[float]:
    """RFC 7946 bbox: west > east across the antimeridian; all longitudes around a pole."""
    polygons = geometry["coordinates"] if geometry["type"] == "MultiPolygon" else [geometry["coordinates"]]
    points = [p for polygon in polygons for p in polygon[0]]
    lat = [p[1] for p in points]
    spans = [(min(p[0] for p in polygon[0]), max(p[0] for p in polygon[0])) for polygon in polygons]
    west, east = _lon_cover(spans)
    return [west, min(lat), east, max(lat)]


def _lon_cover(spans: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """The narrowest ``(west, east)`` longitude interval covering ``spans`` (each ``west <= east``,
    or ``west > east`` across the antimeridian): ``(-180, 180)`` when they leave no gap."""
    arcs = []
    for w, e in spans:
        arcs += [(w, 180.0), (-180.0, e)] if w > e else [(w, e)]
    arcs.sort()
    merged = [list(arcs[0])]
    for w, e in arcs[1:]:
        if w <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([w, e])
    # the widest gap between covered arcs, the one over the antimeridian included
    gaps = [(merged[i + 1][0] - merged[i][1], merged[i + 1][0], merged[i][1]) for i in range(len(merged) - 1)]
    gaps.append((merged[0][0] + 360.0 - merged[-1][1], merged[0][0], merged[-1][1]))
    width, west, east = max(gaps)
    return (-180.0, 180.0) if width <= 0 else (west, east)


def _projection(crs: CRS) -> dict:
    epsg = crs.to_epsg()
    return {"proj:epsg": epsg} if epsg else {"proj:epsg": None, "proj:wkt2": crs.to_wkt(version="WKT2_2019")}


def _bands(band_meta: Mapping, dtype: str, nodata) -> tuple[list[dict], list[dict]]:
    """``raster:bands`` and ``eo:bands`` as far as the band metadata says."""
    count = len(band_meta.get("colorinterp", ()))
    raster, eo = [], []
    for i in range(count):
        rb = {"data_type": str(dtype)}
        if nodata is not None:
            rb["nodata"] = nodata if nodata == nodata else "nan"
        for key, name in (("scales", "scale"), ("offsets", "offset"), ("units", "unit")):
            values = band_meta.get(key) or ()
            if i < len(values) and values[i] not in (None, ""):
                rb[name] = values[i]
        raster.append(rb)
        descriptions = band_meta.get("descriptions") or ()
        eb = {"name": descriptions[i] if i < len(descriptions) and descriptions[i] else f"b{i + 1}"}
        if band_meta["colorinterp"][i] in _COMMON_NAMES:
            eb["common_name"] = _COMMON_NAMES[band_meta["colorinterp"][i]]
        eo.append(eb)
    return raster, eo


def _acquired(tags: Mapping[str, str], created: dt.datetime) -> str:
    """The source's TIFF date (``YYYY:MM:DD HH:MM:SS``, taken as UTC) if it has one, else the run's."""
    try:
        when = dt.datetime.strptime(tags["TIFFTAG_DATETIME"], "%Y:%m:%d %H:%M:%S").replace(tzinfo=dt.timezone.utc)
    except (KeyError, ValueError):
        when = created
    return when.isoformat().replace("+00:00", "Z")


def stac_item(name: str, asset: str, window: Window, profile: Mapping, band_meta: Mapping, tags: Mapping[str, str],
              collection: str, created: dt.datetime) -> dict:
    """The STAC Item of the block ``name`` (output pixels ``window``; its COG at the relative ``asset``).

    Parameters
    ----------
    profile : mapping
        The whole output's rasterio profile (``crs``, ``transform``, ``dtype``, ``nodata``).
    band_meta, tags : mapping
        The output's band metadata (:func:`geosr.output_meta.band_meta`) and tags.
    collection : str
        The Collection's id.
    created : datetime
        When the run (or its last resume) started writing the output (UTC): the Item's
        ``created``, and its ``datetime`` unless the source's tags date it. Items are written
        before the first tile, so this is the start of the work, not its end.
    """
    transform = window_transform(window, profile["transform"])
    try:
        geometry = footprint(window, profile["transform"], profile["crs"])
    except (CRSError, *GDAL_ERRORS):  # a local (engineering) CRS has no way to longitudes and latitudes
        geometry = None  # STAC allows a null geometry, then without a bbox
    raster_bands, eo_bands = _bands(band_meta, profile["dtype"], profile.get("nodata"))
    properties = {
        "datetime": _acquired(tags, created),
        "created": created.isoformat().replace("+00:00", "Z"),
        **_projection(CRS.from_user_input(profile["crs"])),
        "proj:transform": list(transform)[:6],
        "proj:shape": [int(window.height), int(window.width)],
        **{f"geosr:{k[len('GEOSR_'):].lower()}": v for k, v in sorted(tags.items()) if k.startswith("GEOSR_")},
    }
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": _EXTENSIONS,
        "id": name,
        "collection": collection,
        "geometry": geometry,
        **({"bbox": _bbox(geometry)} if geometry else {}),
        "properties": properties,
        "links": [
            {"rel": "root", "href": "./collection.json", "type": "application/json"},
            {"rel": "parent", "href": "./collection.json", "type": "application/json"},
            {"rel": "collection", "href": "./collection.json", "type": "application/json"},
        ],
        "assets": {
            "data": {"href": asset, "type": _COG, "roles": ["data"],
                     "raster:bands": raster_bands, "eo:bands": eo_bands},
        },
    }


def stac_collection(collection: str, items: Sequence[tuple[str, dict]], description: str) -> dict:
    """The Collection over ``items`` (``(relative href, item)``): union of their bboxes, their dates."""
    # items without a place on the globe (a local CRS): the Collection's extent is required, and then whole
    boxes = [item["bbox"] for _, item in items if "bbox" in item] or [[-180.0, -90.0, 180.0, 90.0]]
    dates = sorted(item["properties"]["datetime"] for _, item in items)
    return {
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "stac_extensions": [],
        "id": collection,
        "description": description,
        "license": "other",
        "extent": {
            "spatial": {"bbox": [[_lon_cover([(b[0], b[2]) for b in boxes])[0], min(b[1] for b in boxes),
                                  _lon_cover([(b[0], b[2]) for b in boxes])[1], max(b[3] for b in boxes)]]},
            "temporal": {"interval": [[dates[0], dates[-1]]]},
        },
        "links": [{"rel": "root", "href": "./collection.json", "type": "application/json"}]
        + [{"rel": "item", "href": href, "type": "application/geo+json"} for href, _ in items],
    }
