"""Areas of interest: which tiles to process, from a GeoJSON file, in the scene's CRS."""

from __future__ import annotations

import json
from pathlib import Path

from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import CRSError, TransformError
from rasterio.warp import transform_geom
from rasterio.windows import Window
from shapely import make_valid, prepare
from shapely.affinity import translate
from shapely.errors import ShapelyError
from shapely.geometry import Polygon, shape
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

from geosr.errors import GDAL_ERRORS, InputError

__all__ = ["load_aoi", "window_polygon"]


def window_polygon(window: Window, transform: Affine) -> Polygon:
    """Footprint of a pixel window as a polygon in world coordinates (rotation-safe)."""
    c0, r0 = float(window.col_off), float(window.row_off)
    c1, r1 = c0 + float(window.width), r0 + float(window.height)
    return Polygon([transform @ (c, r) for c, r in ((c0, r0), (c1, r0), (c1, r1), (c0, r1))])


def load_aoi(path: str | Path, scene) -> BaseGeometry:
    """Read the polygons of a GeoJSON file and return their union in the scene's CRS.

    GeoJSON coordinates are WGS84 longitude/latitude (RFC 7946) unless the file carries a
    legacy ``crs`` member (as QGIS and GDAL write for projected data).

    Raises
    ------
    InputError
        Unreadable file, no polygon, a scene without CRS or placed by ground control points, or
        an AOI that misses the scene.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"--aoi: cannot read {path} as GeoJSON: {exc}") from exc
    if not scene.crs:
        raise InputError("--aoi needs a georeferenced input (the input has no CRS)")
    if scene.gcps:  # its transform is the identity: the AOI would be matched against pixel numbers
        raise InputError("--aoi needs an input with a geotransform; this one is placed by ground control points "
                         "(warp it first: gdalwarp -t_srs EPSG:xxxx in.tif warped.tif)")
    try:
        geom, src_crs = _polygons(doc)
    except InputError as exc:
        raise InputError(f"--aoi: {path} {exc}") from None
    # Malformed members (coordinates that are not numbers, a bad "crs" name, rings that are
    # too short) surface as errors of shapely or PROJ.
    except (AttributeError, KeyError, TypeError, ValueError, IndexError, ShapelyError, CRSError) as exc:
        raise InputError(f"--aoi: {path} holds an invalid geometry or crs member: {exc}") from exc
    if src_crs != scene.crs:
        try:
            geom = shape(transform_geom(src_crs, scene.crs, geom.__geo_interface__))
        except (ValueError, CRSError, TransformError, *GDAL_ERRORS) as exc:  # a local CS: no operation
            raise InputError(f"--aoi: cannot transform {path} to the scene CRS: {exc}") from exc
    footprint = window_polygon(Window(0, 0, scene.width, scene.height), scene.transform)
    if scene.crs.is_geographic:
        # a scene warped across the antimeridian runs past 180 (or -180) degrees, an AOI in
        # -180..180 does not: its part beyond was missed, or the whole AOI refused as elsewhere
        geom = unary_union([geom, translate(geom, xoff=360.0), translate(geom, xoff=-360.0)])
    if not geom.intersects(footprint):
        raise InputError(f"--aoi: {path} does not overlap the input scene")
    prepare(geom)
    return geom


def _polygons(doc) -> tuple[BaseGeometry, CRS]:
    """Union of the (Multi)Polygons of a GeoJSON document, and their CRS."""
    if not isinstance(doc, dict):
        raise InputError("is not a GeoJSON object")
    if doc.get("type") == "FeatureCollection":
        geoms = [f.get("geometry") for f in doc.get("features", [])]
    elif doc.get("type") == "Feature":
        geoms = [doc.get("geometry")]
    else:
        geoms = [doc]
    polys = [g for g in (shape(g) for g in geoms if g) if g.geom_type in ("Polygon", "MultiPolygon")]
    if not polys:
        raise InputError("holds no Polygon or MultiPolygon")
    src_crs = CRS.from_user_input(doc["crs"]["properties"]["name"]) if "crs" in doc else CRS.from_epsg(4326)
    # A ring that crosses itself (a hand-drawn bow tie) is repaired, not refused: its area is clear.
    return unary_union([make_valid(p) if not p.is_valid else p for p in polys]), src_crs
