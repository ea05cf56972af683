"""STAC footprints and bboxes where longitude wraps: across the antimeridian and around a pole."""

import pytest
import shapely.geometry
import shapely.ops
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.warp import transform as warp_points
from rasterio.windows import Window

from geosr.stac import _bbox, _lon_cover, footprint

UTM60N = CRS.from_epsg(32660)  # central meridian 177 E: 180 E lies about 250 km east of it at 50 N


def _x_at(lon: float, lat: float) -> tuple[float, float]:
    xs, ys = warp_points("EPSG:4326", UTM60N, [lon], [lat])
    return xs[0], ys[0]


def test_a_block_across_the_antimeridian_is_split_and_its_bbox_wraps():
    """The footprint went round the globe the other way (longitudes 179.9 -> -179.9 joined), its
    bbox [-179.9, ..., 179.9] covered every longitude."""
    x, y = _x_at(179.9, 50.0)
    geometry = footprint(Window(0, 0, 100, 100), Affine(100.0, 0, x, 0, -100.0, y), UTM60N)
    assert geometry["type"] == "MultiPolygon"
    west, east = (shapely.geometry.shape({"type": "Polygon", "coordinates": c}) for c in geometry["coordinates"])
    assert west.bounds[0] > 179.8 and west.bounds[2] == pytest.approx(180.0)
    assert east.bounds[0] == pytest.approx(-180.0) and east.bounds[2] < -179.8
    w, s, e, n = _bbox(geometry)
    assert w > 179.8 and e < -179.8 and 49.9 < s < n < 50.1  # west > east: RFC 7946 5.2


def test_a_block_on_one_side_keeps_one_polygon_and_a_plain_bbox():
    x, y = _x_at(178.0, 50.0)
    geometry = footprint(Window(0, 0, 100, 100), Affine(100.0, 0, x, 0, -100.0, y), UTM60N)
    assert geometry["type"] == "Polygon"
    w, _, e, _ = _bbox(geometry)
    assert 177.9 < w < e < 179.5


def test_a_block_around_the_pole_covers_every_longitude_up_to_the_pole():
    polar = CRS.from_epsg(3413)  # NSIDC north polar stereographic
    geometry = footprint(Window(0, 0, 100, 100), Affine(2000.0, 0, -100000.0, 0, -2000.0, 100000.0), polar)
    w, s, e, n = _bbox(geometry)
    assert (w, e, n) == (-180.0, 180.0, 90.0) and 88.0 < s < 90.0
    union = shapely.ops.unary_union([shapely.geometry.shape(geometry)])
    assert union.is_valid and union.area > 0


def test_the_collection_cover_is_the_narrowest_interval():
    assert _lon_cover([(10.0, 20.0), (15.0, 30.0)]) == (10.0, 30.0)
    assert _lon_cover([(179.5, 179.9), (-179.9, -179.5)]) == (179.5, -179.5)
    assert _lon_cover([(170.0, -170.0), (0.0, 5.0)]) == (0.0, -170.0)
    assert _lon_cover([(-180.0, 180.0), (3.0, 4.0)]) == (-180.0, 180.0)
