"""Mosaics, AOIs, odd inputs, and the guarantees when something goes wrong."""

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
import shapely.geometry
from affine import Affine
from click.testing import CliRunner
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.windows import Window

import geosr
import geosr.tasks as tasks
from geosr.cli import cli
from geosr.config import RunConfig, TileSpec
from geosr.engine import upscale_scene
from geosr.errors import GridMismatchError, InputError, OutputError, OutputExistsError
from geosr.scene import NotGeoreferencedInputWarning
from tests.rasters import NORTH_UP, texture, uint8_scene, write_raster


def cfg(**kw):
    base = dict(scale=2, model="bicubic", captioner="none", tiles=TileSpec(32, 8), progress=False)
    base.update(kw)
    return RunConfig(**base)


def cut(src, dst, window):
    with rasterio.open(src) as ds:
        prof = ds.profile
        # GDAL tags a 4-band byte GTiff RGBA by default: keep the source's R,G,B,NIR meaning
        prof.update(width=int(window.width), height=int(window.height), transform=ds.window_transform(window), photometric="MINISBLACK")
        with rasterio.open(dst, "w", **prof) as out:
            out.write(ds.read(window=window))
            out.colorinterp = ds.colorinterp
    return dst


def test_mosaic_of_pieces_equals_single_file_no_seam(tmp_path, data_dir):
    src = data_dir / "rgbn_suba.tif"
    pieces = tmp_path / "pieces"
    pieces.mkdir()
    w, h = 276, 212
    for i, win in enumerate([Window(0, 0, 150, 100), Window(150, 0, w - 150, 100), Window(0, 100, 150, h - 100), Window(150, 100, w - 150, h - 100)]):
        cut(src, pieces / f"p{i}.tif", win)
    upscale_scene([src], tmp_path / "single.tif", cfg())
    upscale_scene([pieces], tmp_path / "mosaic.tif", cfg())  # a directory of pieces
    with rasterio.open(tmp_path / "single.tif") as a, rasterio.open(tmp_path / "mosaic.tif") as b:
        assert b.transform == a.transform and b.crs == a.crs and b.shape == a.shape
        np.testing.assert_array_equal(b.read(), a.read())
        assert b.tags()["GEOSR_SOURCE"] == "p0.tif;p1.tif;p2.tif;p3.tif"


def test_mosaic_on_different_grids_is_a_clear_error(tmp_path):
    a = uint8_scene(tmp_path / "a.tif", 20, 20)
    b = uint8_scene(tmp_path / "b.tif", 20, 20, transform=Affine(2.0001, 0, 500040.0, 0, -2.0001, 4100000.0))
    c = uint8_scene(tmp_path / "c.tif", 20, 20, transform=NORTH_UP @ Affine.translation(20.5, 0))
    d = uint8_scene(tmp_path / "d.tif", 20, 20, crs="EPSG:32617")
    for other, words in ((b, "pixel grid"), (c, "offset by 20.5"), (d, "different CRS")):
        with pytest.raises(GridMismatchError, match=words):
            upscale_scene([a, other], tmp_path / "x.tif", cfg())
        assert not (tmp_path / "x.tif").exists()


def test_mosaic_refusals_name_what_is_wrong(tmp_path):
    """Found by review: a south-up piece beside a north-up one was refused as "pixel height of b is
    2.0, of a 2.0", and pieces placed by GCPs as having "no CRS" (their GCPs have one)."""
    from rasterio.control import GroundControlPoint

    a = uint8_scene(tmp_path / "a.tif", 20, 20)
    south_up = uint8_scene(tmp_path / "s.tif", 20, 20, transform=Affine(2.0, 0, 500040.0, 0, 2.0, 4099960.0))
    with pytest.raises(GridMismatchError, match=r"s.tif is south-up \(pixel height 2.0 in .*s.tif, -2.0 in .*a.tif\)"):
        upscale_scene([a, south_up], tmp_path / "x.tif", cfg())
    gcps = [GroundControlPoint(row, col, 500000.0 + 2 * col, 4100000.0 - 2 * row) for row, col in ((0, 0), (0, 20), (20, 0))]
    placed = [uint8_scene(tmp_path / f"g{k}.tif", 20, 20, transform=None, crs=None) for k in range(2)]
    for piece in placed:
        with rasterio.open(piece, "r+") as ds:
            ds.gcps = (gcps, rasterio.crs.CRS.from_epsg(32618))
    with pytest.raises(InputError, match=r"g0.tif' is georeferenced by GCPs, not a geotransform.*gdalwarp"):
        upscale_scene(placed, tmp_path / "x.tif", cfg())
    assert not (tmp_path / "x.tif").exists()


def test_a_raster_of_one_alpha_band_and_an_int64_raster_are_refused_in_words(tmp_path):
    """Found by review: a mask exported as one alpha-labelled band failed with "No indexes to read"
    (exit 1) in upscale and a traceback in info; int64 was told to take "its amplitude"."""
    alpha = write_raster(tmp_path / "alpha.tif", np.full((1, 24, 24), 255, np.uint8), colorinterp=[ColorInterp.alpha])
    wide = write_raster(tmp_path / "wide.tif", np.arange(24 * 24, dtype=np.int64).reshape(1, 24, 24))
    for command in (["upscale", str(alpha), str(tmp_path / "x.tif"), "--scale", "2", "--model", "bicubic"],
                    ["info", str(alpha), "--scale", "2"]):
        res = CliRunner().invoke(cli, command)
        assert res.exit_code == 3 and "only band is labelled alpha" in res.output and "-colorinterp_1 gray" in res.output, \
            res.output
    res = CliRunner().invoke(cli, ["upscale", str(wide), str(tmp_path / "x.tif"), "--scale", "2", "--model", "bicubic"])
    assert res.exit_code == 3 and "int64 pixels" in res.output and "gdal_translate -ot Float32" in res.output, res.output
    assert "amplitude" not in res.output and not (tmp_path / "x.tif").exists()


def test_a_folder_of_one_band_files_is_refused_not_painted_over_itself(tmp_path):
    """Found by review: Landsat-style one-file-a-band folders passed every mosaic check and came out
    as one band holding the last file's values (exit 0)."""
    folder = tmp_path / "landsat"
    folder.mkdir()
    for b in (2, 3, 4, 5):
        write_raster(folder / f"LC08_SR_B{b}.TIF", np.full((1, 24, 24), 1000 * b, np.uint16))
    with pytest.raises(GridMismatchError, match=r"cover the same ground.*gdalbuildvrt -separate"):
        upscale_scene([str(folder)], tmp_path / "x.tif", cfg())
    assert not (tmp_path / "x.tif").exists()
    # pieces with nodata composite (one tile from two orbits, each with part of the swath): a mosaic
    west, east = np.zeros((1, 24, 24), np.uint16), np.zeros((1, 24, 24), np.uint16)
    west[:, :, :12], east[:, :, 12:] = 1000, 2000
    orbits = tmp_path / "orbits"
    orbits.mkdir()
    write_raster(orbits / "a.tif", west, nodata=0)
    write_raster(orbits / "b.tif", east, nodata=0)
    upscale_scene([str(orbits)], tmp_path / "two_orbits.tif", cfg())
    with rasterio.open(tmp_path / "two_orbits.tif") as out:
        composite = out.read(1)
    assert (composite[:, :20] == 1000).all() and (composite[:, 28:] == 2000).all()


def test_gaps_between_pieces_without_nodata_are_masked_even_where_pieces_overlap(tmp_path):
    """Found by review: gaps of a mosaic whose pieces overlap elsewhere went unnoticed (summed areas)
    and read as valid zeros, upscaled as data and ringing into the pieces' edges (exit 0)."""
    folder = tmp_path / "pieces"
    folder.mkdir()
    for k, (row, col) in enumerate([(0, 0), (0, 16), (0, 32), (32, 32)]):  # the bottom left quarter: empty
        write_raster(folder / f"p{k}.tif", (texture(3, 32, 32, seed=k) * 200 + 30).astype(np.uint8),
                     transform=NORTH_UP @ Affine.translation(col, row))
    upscale_scene([str(folder)], tmp_path / "out.tif", cfg())
    with rasterio.open(tmp_path / "out.tif") as out:
        valid = out.dataset_mask() > 0
    assert not valid[64:, :64].any() and valid[:64, :].all() and valid[64:, 64:].all()


def masked_piece(path, data, col, mask):
    """A uint8 RGB piece at column ``col`` of the NORTH_UP grid with an internal mask."""
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(
            path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=3, dtype="uint8",
            crs="EPSG:32618", transform=NORTH_UP @ Affine.translation(col, 0)) as ds:
        ds.write(data)
        ds.write_mask(mask.astype("uint8") * 255)
    return path


def test_a_mosaic_of_masked_pieces_keeps_their_masks(tmp_path):
    """Ortho tiles with internal masks and overlapping collars: the collars are no-data in the
    mosaic and in the output, and a piece's collar never paints over its neighbour's pixels
    (before, the collars were upscaled as data and the later piece's hid the earlier's)."""
    img = (texture(3, 40, 72, seed=3) * 200 + 20).astype("uint8")
    a_mask = np.ones((40, 48), bool)
    a_mask[:, 40:] = False  # a's collar: its last 8 columns
    b_mask = np.ones((40, 48), bool)
    b_mask[:, :8] = False  # b's collar: its first 8, over a's valid columns 24-31
    a_data, b_data = img[:, :, :48].copy(), img[:, :, 24:].copy()
    a_data[:, ~a_mask] = 7
    b_data[:, ~b_mask] = 7
    b_data[:, 20:30, 40:] = 0  # a black patch that is data: masks, not values, say what is no-data
    a = masked_piece(tmp_path / "a.tif", a_data, 0, a_mask)
    b = masked_piece(tmp_path / "b.tif", b_data, 24, b_mask)
    c = masked_piece(tmp_path / "c.tif", img[:, :, 64:], 80, np.ones((40, 8), bool))  # a gap before it
    upscale_scene([a, b, c], tmp_path / "out.tif", cfg(model="nearest"))
    with rasterio.open(tmp_path / "out.tif") as out:
        hr, valid = out.read(), out.dataset_mask() > 0
    lr_valid = np.zeros((40, 88), bool)
    lr_valid[:, :40] = lr_valid[:, 32:72] = lr_valid[:, 80:] = True
    np.testing.assert_array_equal(valid, np.kron(lr_valid, np.ones((2, 2), bool)))
    expect = np.zeros((3, 40, 88), "uint8")
    expect[:, :, :40], expect[:, :, 32:72], expect[:, :, 80:] = a_data[:, :, :40], b_data[:, :, 8:], img[:, :, 64:]
    np.testing.assert_array_equal(hr[:, valid], np.kron(expect, np.ones((2, 2), "uint8"))[:, valid])


def test_a_mosaic_of_masked_and_nodata_pieces_keeps_a_pixel_any_band_of_holds(tmp_path):
    """One piece with an internal mask, one with nodata only: the mosaic's mask takes the second
    one's from all its bands, so a pixel whose red is 0 (the nodata value) but whose green and
    blue are data stays (before: band 1's mask alone dropped it in every band)."""
    img = (texture(3, 20, 40, seed=5) * 200 + 20).astype("uint8")
    a = write_raster(tmp_path / "a.tif", img[:, :, :20], nodata=0, mask=np.ones((20, 20), bool))
    b_data = img[:, :, 20:].copy()
    b_data[0, 5:8, 5:8] = 0  # red at the nodata value, green and blue data
    b_data[:, 12:14, 12:14] = 0  # every band at it: a hole
    b = write_raster(tmp_path / "b.tif", b_data, nodata=0, transform=NORTH_UP @ Affine.translation(20, 0))
    with rasterio.open(a) as ds:
        assert MaskFlags.per_dataset in ds.mask_flag_enums[0]  # the mask, not nodata, says what a holds
    upscale_scene([a, b], tmp_path / "out.tif", cfg(model="nearest"))
    with rasterio.open(tmp_path / "out.tif") as out:
        hr, valid = out.read(), out.dataset_mask() > 0
    lr_valid = np.ones((20, 40), bool)
    lr_valid[12:14, 32:34] = False
    np.testing.assert_array_equal(valid, np.kron(lr_valid, np.ones((2, 2), bool)))
    expect = np.concatenate([img[:, :, :20], b_data], axis=2)
    np.testing.assert_array_equal(hr[:, valid], np.kron(expect, np.ones((2, 2), "uint8"))[:, valid])


def test_a_mosaic_keeps_what_its_pieces_say_of_their_bands(tmp_path):
    data = (texture(3, 20, 20, seed=1) * 3000 + 500).astype("uint16")
    pieces = []
    for i, extra in enumerate(({"TILE": "A"}, {"TILE": "B"})):
        path = tmp_path / f"p{i}.tif"
        with rasterio.open(path, "w", driver="GTiff", width=20, height=20, count=3, dtype="uint16", nodata=0,
                           crs="EPSG:32618", transform=NORTH_UP @ Affine.translation(20 * i, 0)) as ds:
            ds.write(data)
            ds.scales, ds.offsets, ds.units = (1e-4,) * 3, (-0.1,) * 3, ("reflectance",) * 3
            ds.update_tags(SENSOR="Sentinel-2", **extra)
            for b, wavelength in enumerate(("0.665", "0.560", "0.490"), start=1):
                ds.update_tags(b, WAVELENGTH=wavelength, PIECE=str(i))
        pieces.append(path)
    upscale_scene(pieces, tmp_path / "out.tif", cfg())
    with rasterio.open(tmp_path / "out.tif") as out:
        assert out.scales == (1e-4,) * 3 and out.offsets == (-0.1,) * 3 and out.units == ("reflectance",) * 3
        assert out.tags()["SENSOR"] == "Sentinel-2" and "TILE" not in out.tags()  # what every piece says
        assert out.tags(1)["WAVELENGTH"] == "0.665" and "PIECE" not in out.tags(1)


def test_mosaic_pieces_that_disagree_on_nodata_or_scales_are_refused(tmp_path):
    a = uint8_scene(tmp_path / "a.tif", 20, 20)
    b = uint8_scene(tmp_path / "b.tif", 20, 20, transform=NORTH_UP @ Affine.translation(20, 0), nodata=0)
    with pytest.raises(GridMismatchError, match=r"disagree on nodata: .*b.tif has 0, .*a.tif none"):
        upscale_scene([a, b], tmp_path / "x.tif", cfg())
    c = uint8_scene(tmp_path / "c.tif", 20, 20, transform=NORTH_UP @ Affine.translation(20, 0))
    with rasterio.open(c, "r+") as ds:
        ds.scales = (2.0,) * ds.count
    with pytest.raises(GridMismatchError, match="differ in band scales/offsets"):
        upscale_scene([a, c], tmp_path / "x.tif", cfg())
    d = uint8_scene(tmp_path / "d.tif", 20, 20, transform=NORTH_UP @ Affine.translation(40, 0), nodata=255)
    with pytest.raises(GridMismatchError, match=r"disagree on nodata: .*b.tif has 0, .*d.tif 255"):
        upscale_scene([b, d], tmp_path / "x.tif", cfg())
    assert not (tmp_path / "x.tif").exists()


@pytest.mark.parametrize("label", ["colorinterp", "descriptions"])
def test_mosaic_pieces_whose_bands_are_in_another_order_are_refused(tmp_path, label):
    """Found by review: an R, G, B piece beside a B, G, R one was mosaicked by band number, the
    second's blue written as red (exit 0)."""
    from rasterio.enums import ColorInterp

    rgb = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
    names = ("red", "green", "blue")
    pieces = []
    for i, order in enumerate(((0, 1, 2), (0, 1, 2), (2, 1, 0))):
        path = uint8_scene(tmp_path / f"{'abc'[i]}.tif", 20, 20, transform=NORTH_UP @ Affine.translation(20 * i, 0))
        with rasterio.open(path, "r+") as ds:
            if label == "colorinterp":
                ds.colorinterp = [rgb[k] for k in order]
            else:
                ds.descriptions = tuple(names[k].upper() if i else names[k] for k in order)  # case is no order
        pieces.append(path)
    upscale_scene(pieces[:2], tmp_path / "same.tif", cfg())  # same bands, same order: one mosaic
    match = (r"differ in band order: band 1 of .*a.tif is red, of .*c.tif blue" if label == "colorinterp" else
             r"differ in band order: band 1 of .*a.tif is described 'red', of .*c.tif 'BLUE'")
    with pytest.raises(GridMismatchError, match=match):
        upscale_scene([pieces[0], pieces[2]], tmp_path / "x.tif", cfg())
    assert not (tmp_path / "x.tif").exists()


def _per_band_nodata_vrt(tmp_path, name: str, values: tuple, x0: int = 0, side: int = 20) -> Path:
    """A textured int16 raster at ``x0`` whose bands hold the nodata ``values``, one each (a VRT:
    a GeoTIFF has one for all bands)."""
    data = (texture(len(values), side, side, seed=x0 + side) * 200 + 20).astype("int16")
    src = write_raster(tmp_path / f"{name}.tif", data, transform=NORTH_UP @ Affine.translation(x0, 0))
    vrt = tmp_path / f"{name}.vrt"
    rasterio.shutil.copy(src, vrt, driver="VRT")
    text = vrt.read_text()
    for band, value in enumerate(values, start=1):
        text = text.replace(f'<VRTRasterBand dataType="Int16" band="{band}">',
                            f'<VRTRasterBand dataType="Int16" band="{band}">\n    <NoDataValue>{value}</NoDataValue>', 1)
    vrt.write_text(text)
    with rasterio.open(vrt) as ds:
        assert ds.nodatavals == tuple(map(float, values))
    return vrt


def test_mosaic_pieces_are_compared_and_mosaicked_band_by_band_on_nodata(tmp_path):
    """Pieces that agree on band 1's nodata but not on band 2's are refused, naming band 2 (before:
    band 1's alone was compared, and the mosaic declared it for every band); pieces that agree band
    by band keep each band's value, so the run's one-nodata check sees a stack of imagery and a DEM."""
    a = _per_band_nodata_vrt(tmp_path, "a", (0, -32768), 0)
    b = _per_band_nodata_vrt(tmp_path, "b", (0, -9999), 20)
    with pytest.raises(GridMismatchError, match=r"disagree on nodata in band 2: .*a.vrt has -32768, .*b.vrt -9999") as err:
        upscale_scene([a, b], tmp_path / "x.tif", cfg())
    assert "gdal_edit" not in str(err.value)  # it sets every band's: band 1 would then disagree
    c = _per_band_nodata_vrt(tmp_path, "c", (0, -32768), 20)
    with pytest.raises(InputError, match=r"different nodata values \(band 1: 0.0, band 2: -32768.0\)"):
        upscale_scene([a, c], tmp_path / "x.tif", cfg())
    assert not (tmp_path / "x.tif").exists()
    upscale_scene([a, c], tmp_path / "one.tif", cfg(bands=[1]))
    with rasterio.open(tmp_path / "one.tif") as out:
        assert out.nodata == 0 and out.count == 1


def test_a_geographic_mosaic_keeps_longitude_as_x(tmp_path):
    """Pieces in EPSG:4326 (latitude first in its definition): the mosaic's VRT leaves the axis
    order to GDAL, which reads x as longitude (pinned "1,2", GDAL tools read it as latitude),
    and the output covers the pieces' longitudes and latitudes."""
    from geosr.scene import open_scene

    pieces = [write_raster(tmp_path / f"p{i}.tif", (texture(3, 20, 20, seed=i) * 200).astype("uint8"), crs="EPSG:4326",
                           transform=Affine(0.001, 0, 10.0 + 0.02 * i, 0, -0.001, 50.0)) for i in range(2)]
    open_scene(pieces, workdir=tmp_path / "work")
    assert "dataAxisToSRSAxisMapping" not in (tmp_path / "work" / ".geosr-inputs" / "mosaic.vrt").read_text()
    upscale_scene(pieces, tmp_path / "out.tif", cfg(model="nearest"))
    with rasterio.open(tmp_path / "out.tif") as out:
        np.testing.assert_allclose(tuple(out.bounds), (10.0, 49.98, 10.04, 50.0), atol=1e-9)


def test_an_input_named_through_a_folder_link_and_dotdot_is_the_file_the_os_opens(tmp_path):
    """Found by review: ``latest/../a.tif``, with ``latest`` a link to ``2024/run7``, names
    ``2024/a.tif`` to the OS; geosr collapsed the ``..`` as text and upscaled ``./a.tif``."""
    (tmp_path / "2024" / "run7").mkdir(parents=True)
    (tmp_path / "latest").symlink_to(tmp_path / "2024" / "run7")
    meant = uint8_scene(tmp_path / "2024" / "a.tif", 32, 32, seed=1)
    uint8_scene(tmp_path / "a.tif", 32, 32, seed=2)  # what the text names
    upscale_scene([str(tmp_path / "latest" / ".." / "a.tif")], tmp_path / "out.tif", cfg())
    upscale_scene([meant], tmp_path / "ref.tif", cfg())
    with rasterio.open(tmp_path / "out.tif") as out, rasterio.open(tmp_path / "ref.tif") as ref:
        np.testing.assert_array_equal(out.read(), ref.read())


def test_aoi_skips_tiles_outside(tmp_path):
    src = uint8_scene(tmp_path / "in.tif", 64, 64)  # 2 m pixels, origin 500000, 4100000
    aoi = {
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32618"}},
        "features": [{"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [[
            [500002, 4099998], [500020, 4099998], [500020, 4099980], [500002, 4099980], [500002, 4099998]]]}}],
    }
    (tmp_path / "aoi.geojson").write_text(json.dumps(aoi))
    report = upscale_scene([src], tmp_path / "out.tif", cfg(aoi=str(tmp_path / "aoi.geojson")))
    assert report.tiles_total == 4 and report.tiles_processed == 1
    # the output keeps the whole grid; the rate counts what was computed: one tile of four
    assert report.output_megapixels == 128 * 128 / 1e6
    assert report.processed_megapixels == 64 * 64 / 1e6
    assert report.megapixels_per_second == report.processed_megapixels / report.seconds
    with rasterio.open(tmp_path / "out.tif") as out:
        valid = out.dataset_mask() > 0
    assert valid[:64, :64].all() and not valid[64:, :].any() and not valid[:, 64:].any()
    fc = json.loads((tmp_path / "out.captions.geojson").read_text())
    assert [f["properties"]["tile"] for f in fc["features"]] == [0]


def test_an_aoi_across_the_antimeridian_meets_a_scene_that_runs_past_180(tmp_path):
    """Found by review: a lon/lat scene warped across the antimeridian (179.9 to 180.38 E) missed the
    part of an AOI beyond 180 given as -180..-179.75, and an AOI wholly there was "does not overlap"."""
    src = uint8_scene(tmp_path / "in.tif", 40, 48, transform=Affine(0.01, 0, 179.9, 0, -0.01, 10.0), crs="EPSG:4326")

    def aoi(name: str, *boxes: tuple[float, float]) -> str:
        polygons = [[[[w, 9.5], [e, 9.5], [e, 10.1], [w, 10.1], [w, 9.5]]] for w, e in boxes]
        (tmp_path / name).write_text(json.dumps({"type": "MultiPolygon", "coordinates": polygons}))
        return str(tmp_path / name)

    # tiles of 16 columns: 0-16 (179.90-180.06 E), 16-32 (to 180.22), 32-48 (to 180.38)
    split = aoi("split.geojson", (179.95, 180.0), (-180.0, -179.9))  # 179.95 E to 180.10 E: the first two
    upscale_scene([src], tmp_path / "split.tif", cfg(aoi=split, tiles=TileSpec(16, 4)))
    with rasterio.open(tmp_path / "split.tif") as out:
        valid = out.dataset_mask() > 0
    assert valid[:, :64].all() and not valid[:, 64:].any()
    west = aoi("west.geojson", (-179.75, -179.65))  # inside the scene, at 180.25-180.35 E: the third
    upscale_scene([src], tmp_path / "west.tif", cfg(aoi=west, tiles=TileSpec(16, 4)))
    with rasterio.open(tmp_path / "west.tif") as out:
        valid = out.dataset_mask() > 0
    assert valid[:, 64:].all() and not valid[:, :64].any()


def test_the_aoi_is_never_replaced_by_what_the_run_writes(tmp_path):
    """Found by review: a captions file is a polygon FeatureCollection, so it serves as an AOI -
    and ``--aoi out.captions.geojson --overwrite`` replaced it with the new captions (exit 0)."""
    from geosr.engine import caption_scene

    src = uint8_scene(tmp_path / "in.tif", 64, 64)
    upscale_scene([src], tmp_path / "out.tif", cfg())
    captions = tmp_path / "out.captions.geojson"
    before = captions.read_text()
    with pytest.raises(OutputError, match="is also an input"):
        upscale_scene([src], tmp_path / "out.tif", cfg(aoi=str(captions), overwrite=True))
    with pytest.raises(OutputError, match="is also an input"):
        caption_scene([src], captions, cfg(aoi=str(captions), overwrite=True))
    with pytest.raises(OutputError, match="is also an input"):
        upscale_scene([src], tmp_path / "b.tif", cfg(aoi=str(captions), overwrite=True), performance_report=str(captions))
    assert captions.read_text() == before


def test_a_lazy_result_with_unmarked_aoi_holes_says_so(tmp_path):
    """Outside the AOI a written COG is masked; a DataArray of a scene without nodata can only
    hold 0 there, so it says so."""
    from geosr.lazy import UnmarkedHolesWarning

    aoi = {"type": "Polygon", "coordinates": [[[500002, 4099998], [500020, 4099998], [500020, 4099980],
                                               [500002, 4099980], [500002, 4099998]]]}
    (tmp_path / "aoi.geojson").write_text(json.dumps({"type": "Feature", "properties": {}, "geometry": aoi,
                                                      "crs": {"type": "name", "properties": {"name": "EPSG:32618"}}}))
    plain = uint8_scene(tmp_path / "in.tif", 64, 64)
    with pytest.warns(UnmarkedHolesWarning, match="outside the AOI are 0"):
        hr = geosr.upscale(plain, scale=2, model="bicubic", captioner="none", tile=32, overlap=8,
                           aoi=str(tmp_path / "aoi.geojson"))
    assert (hr.values[:, 64:, :] == 0).all()
    marked = uint8_scene(tmp_path / "nodata.tif", 64, 64, nodata=0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UnmarkedHolesWarning)
        hr = geosr.upscale(marked, scale=2, model="bicubic", captioner="none", tile=32, overlap=8,
                           aoi=str(tmp_path / "aoi.geojson"))
    assert hr.rio.nodata == 0


def test_aoi_that_misses_the_scene_is_an_error(tmp_path):
    src = uint8_scene(tmp_path / "in.tif", 32, 32)
    far = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]}
    (tmp_path / "aoi.geojson").write_text(json.dumps(far))
    with pytest.raises(InputError, match="does not overlap"):
        upscale_scene([src], tmp_path / "out.tif", cfg(aoi=str(tmp_path / "aoi.geojson")))


LOCAL_CS = ('LOCAL_CS["site grid",UNIT["metre",1,AUTHORITY["EPSG","9001"]],AXIS["Easting",EAST],'
            'AXIS["Northing",NORTH]]')


def test_a_scene_in_a_local_crs_takes_an_aoi_error_and_writes_tiled_output(tmp_path):
    """Found by review: a drone orthophoto on a site grid (a local CRS, no way to longitudes) crashed
    with --aoi and with tiled output (CPLE_NotSupportedError, exit 1); the AOI is refused naming the
    reason, and the blocks' STAC Items have no geometry (STAC allows it)."""
    src = uint8_scene(tmp_path / "in.tif", 64, 64, crs=LOCAL_CS)
    aoi = {"type": "Polygon", "coordinates": [[[500002, 4099998], [500020, 4099998], [500020, 4099980],
                                               [500002, 4099998]]]}
    (tmp_path / "aoi.geojson").write_text(json.dumps(aoi))
    with pytest.raises(InputError, match="--aoi: cannot transform"):
        upscale_scene([src], tmp_path / "out.tif", cfg(aoi=str(tmp_path / "aoi.geojson")))
    upscale_scene([src], tmp_path / "out", cfg(split=64))
    items = sorted((tmp_path / "out").glob("*.json"))
    assert items
    for path in items:
        doc = json.loads(path.read_text())
        if doc["type"] == "Feature":
            assert doc["geometry"] is None and "bbox" not in doc
            # WKT2 as the projection extension names it (it was ESRI's WKT1: a positional argument)
            assert doc["properties"]["proj:wkt2"].startswith("ENGCRS[")
        else:
            assert doc["extent"]["spatial"]["bbox"] == [[-180.0, -90.0, 180.0, 90.0]]


def test_a_container_of_other_subdatasets_says_how_to_take_one(tmp_path):
    """Found by review: a GeoPackage of two rasters was refused telling the user to name one of its
    subdatasets as INPUT, which was then refused as "does not exist" (geosr takes Sentinel-2's only)."""
    path = tmp_path / "two.gpkg"
    for table in ("t1", "t2"):
        with rasterio.open(path, "w", driver="GPKG", width=32, height=32, count=3, dtype="uint8", crs="EPSG:32618",
                           transform=NORTH_UP, RASTER_TABLE=table, APPEND_SUBDATASET="YES") as ds:
            ds.write(np.full((3, 32, 32), 50, np.uint8))
    with pytest.raises(InputError, match=r"(?s)copy one to a GeoTIFF first \(gdal_translate SUBDATASET one.tif\)"
                                         r".*GPKG:.*two.gpkg:t1"):
        upscale_scene([str(path)], tmp_path / "out.tif", cfg())


def test_failed_run_leaves_no_output(tmp_path, monkeypatch):
    src = uint8_scene(tmp_path / "in.tif", 64, 64)
    real = tasks.process_batch

    def flaky(job):
        # the task function is shipped to the worker by value: decide from the job itself
        if job.tiles[0].index == 2:
            raise RuntimeError("worker died")
        return real(job)

    monkeypatch.setattr(tasks, "process_batch", flaky)
    with pytest.raises(RuntimeError, match="worker died") as info:
        upscale_scene([src], tmp_path / "out.tif", cfg(batch_size=1))
    # No output, no sidecar, no lock; at most the work folder with the cells finished
    # before the failure, named in the error for --resume (tests/test_faults.py resumes).
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != "in.tif")
    assert left == [] or (len(left) == 1 and left[0].startswith(".out.tif.geosr-run-")), left
    if left:
        assert left[0] in info.value.__notes__[0] and "--resume" in info.value.__notes__[0]


def test_failed_overwrite_keeps_the_old_output(tmp_path, monkeypatch):
    src = uint8_scene(tmp_path / "in.tif", 40, 40)
    (tmp_path / "out.tif").write_bytes(b"old")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        upscale_scene([src], tmp_path / "out.tif", cfg())
    monkeypatch.setattr(tasks, "process_batch", lambda job: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        upscale_scene([src], tmp_path / "out.tif", cfg(overwrite=True))
    assert (tmp_path / "out.tif").read_bytes() == b"old"


def test_bad_inputs_fail_before_any_output(tmp_path):
    src = uint8_scene(tmp_path / "in.tif", 40, 40)
    runner = CliRunner()
    cases = [
        (["upscale", str(tmp_path / "missing.tif"), str(tmp_path / "o.tif")], "does not exist"),
        (["upscale", f"/vsizip/{tmp_path}/a.zip/a.tif", str(tmp_path / "o.tif")], "name it as a source in a .vrt"),
        (["upscale", str(src), str(tmp_path / "o.tif"), "--bands", "1,7"], "band 7 does not exist"),
        (["upscale", str(src), str(tmp_path / "o.tif"), "--model", "nosuchmodel"], "unknown model"),
        (["upscale", str(src), str(tmp_path / "o.tif"), "--captioner", "telepathy"], "unknown captioner"),
        # on worker processes the model is loaded (and found wanting) on a worker, not the client
        (["upscale", str(src), str(tmp_path / "o.tif"), "--model", "nosuchmodel", "--local-workers", "1"],
         "unknown model"),
        (["upscale", str(src), str(tmp_path / "o.tif"), "--captioner", "telepathy", "--local-workers", "1"],
         "unknown captioner"),
        (["upscale", str(src), str(tmp_path / "o.tif"), "--overlap", "300"], "--overlap"),
        (["upscale", str(src), str(tmp_path / "nodir" / "o.tif")], "does not exist"),
    ]
    for args, words in cases:
        res = runner.invoke(cli, args)
        assert res.exit_code != 0
        assert words in res.output, (args, res.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


def test_not_georeferenced_input_warns_and_works(tmp_path):
    from PIL import Image

    rgb = (texture(3, 40, 50).transpose(1, 2, 0) * 255).astype("uint8")
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    with pytest.warns(NotGeoreferencedInputWarning):
        upscale_scene([tmp_path / "photo.png"], tmp_path / "out.tif", cfg())
    with rasterio.open(tmp_path / "out.tif") as out:
        assert out.crs is None and (out.width, out.height) == (100, 80)


def test_an_output_not_named_tif_is_said_to_be_a_geotiff(tmp_path):
    from geosr.engine import OutputNameWarning

    src = uint8_scene(tmp_path / "in.tif", 20, 24)
    with pytest.warns(OutputNameWarning, match="out.jpg is written as a GeoTIFF"):
        upscale_scene([src], tmp_path / "out.jpg", cfg())
    with rasterio.open(tmp_path / "out.jpg") as out:
        assert out.driver == "GTiff"
    upscale_scene([src], tmp_path / "other.TIFF", cfg())  # no warning (warnings are errors here)


def test_a_transform_without_crs_is_kept_and_the_warning_says_so(tmp_path):
    """The warning said "no CRS or georeferencing ... not georeferenced" while the output kept the
    refined transform: it now says what happens."""
    path = tmp_path / "nocrs.tif"
    transform = rasterio.Affine(2.0, 0, 1000.0, 0, -2.0, 5000.0)
    with rasterio.open(path, "w", driver="GTiff", width=40, height=30, count=3, dtype="uint8",
                       transform=transform) as ds:
        ds.write((texture(3, 30, 40) * 255).astype("uint8"))
    with pytest.warns(NotGeoreferencedInputWarning, match="a geotransform but no CRS") as record:
        upscale_scene([path], tmp_path / "out.tif", cfg())
    assert not any("will not be georeferenced" in str(w.message) for w in record)
    with rasterio.open(tmp_path / "out.tif") as out:
        assert out.crs is None and out.transform == transform * rasterio.Affine.scale(0.5)
        bounds = out.bounds
    # the captions lie on the output (they were in pixel numbers, away from it), with no CRS named
    fc = json.loads((tmp_path / "out.captions.geojson").read_text())
    assert "crs" not in fc
    footprints = shapely.union_all([shapely.geometry.shape(f["geometry"]) for f in fc["features"]])
    np.testing.assert_allclose(footprints.bounds, (bounds.left, bounds.bottom, bounds.right, bounds.top))


def test_gcps_are_scaled(tmp_path):
    from rasterio.control import GroundControlPoint as GCP

    data = (texture(1, 30, 40) * 255).astype("uint8")
    gcps = [GCP(0, 0, 500000, 4100000), GCP(0, 40, 500080, 4100000), GCP(30, 0, 500000, 4099940), GCP(30, 40, 500080, 4099940)]
    path = tmp_path / "gcp.tif"
    with rasterio.open(path, "w", driver="GTiff", width=40, height=30, count=1, dtype="uint8", nodata=0) as ds:
        ds.write(data)
        ds.gcps = (gcps, rasterio.crs.CRS.from_epsg(32618))
    upscale_scene([path], tmp_path / "out.tif", cfg())
    # the captions' footprints are placed by the GCPs, in their CRS (they were pixel numbers, read as lon/lat)
    fc = json.loads((tmp_path / "out.captions.geojson").read_text())
    assert fc["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32618"
    for f in fc["features"]:
        p = f["properties"]
        x0, y0, x1, y1 = shapely.geometry.shape(f["geometry"]).bounds
        np.testing.assert_allclose((x0, x1), (500000 + 2 * p["col_off"], 500000 + 2 * (p["col_off"] + p["width"])))
        np.testing.assert_allclose((y1, y0), (4100000 - 2 * p["row_off"], 4100000 - 2 * (p["row_off"] + p["height"])))
    # the lazy result keeps the nodata of a GCP scene too (it was dropped with the transform)
    assert geosr.upscale(str(path), scale=2, model="bicubic", captioner="none").rio.nodata == 0
    with rasterio.open(tmp_path / "out.tif") as out:
        got, crs = out.gcps
        assert crs.to_epsg() == 32618
        assert [(g.row, g.col, g.x, g.y) for g in got] == [(g.row * 2, g.col * 2, g.x, g.y) for g in gcps]
    # an AOI cannot be placed on it (its transform is the identity: pixel numbers, not metres)
    aoi = {"type": "Polygon", "coordinates": [[[500010, 4099990], [500030, 4099990], [500030, 4099970],
                                               [500010, 4099970], [500010, 4099990]]]}
    (tmp_path / "aoi.geojson").write_text(json.dumps({"type": "Feature", "properties": {}, "geometry": aoi,
        "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32618"}}}))
    with pytest.raises(InputError, match="placed by ground control points"):
        upscale_scene([path], tmp_path / "aoi.tif", cfg(aoi=str(tmp_path / "aoi.geojson")))
    assert not (tmp_path / "aoi.tif").exists()


def test_rpcs_are_scaled_consistently_with_gdal():
    from rasterio.rpc import RPC
    from rasterio.transform import RPCTransformer

    from geosr.georef import scale_rpcs

    rpc = RPC(
        height_off=100, height_scale=500, lat_off=40.0, lat_scale=0.05, long_off=-75.0, long_scale=0.05,
        line_off=500, line_scale=500, samp_off=600, samp_scale=600,
        line_num_coeff=[0, 0, -1] + [0] * 17, line_den_coeff=[1] + [0] * 19,
        samp_num_coeff=[0, 1] + [0] * 18, samp_den_coeff=[1] + [0] * 19,
    )
    s = 4
    with RPCTransformer(rpc) as lr, RPCTransformer(scale_rpcs(rpc, s)) as hr:
        for row, col in [(0, 0), (10, 25), (999, 1199)]:
            np.testing.assert_allclose(
                hr.xy(row * s, col * s, zs=100, offset="ul"), lr.xy(row, col, zs=100, offset="ul"), atol=1e-9
            )


def _rpc_40n_75w():
    from rasterio.rpc import RPC

    return RPC(height_off=100, height_scale=500, lat_off=40.0, lat_scale=0.05, long_off=-75.0, long_scale=0.05,
               line_off=15, line_scale=15, samp_off=20, samp_scale=20,
               line_num_coeff=[0, 0, -1] + [0] * 17, line_den_coeff=[1] + [0] * 19,
               samp_num_coeff=[0, 1] + [0] * 18, samp_den_coeff=[1] + [0] * 19)


RPC_40N_75W = _rpc_40n_75w()


def test_a_scene_placed_by_rpcs_has_its_caption_footprints_in_longitude_and_latitude(tmp_path):
    """Found by review: an RPC-only scene's captions were pixel numbers with no CRS named, which GIS
    draws as degrees (over 0-40 E, 0-30 N for this scene); they are now where its RPCs place it."""
    for crs in (None, "EPSG:4326"):  # a CRS beside the RPCs, with no transform, places nothing
        src = uint8_scene(tmp_path / f"rpc{crs is None}.tif", 30, 40, transform=None, crs=crs)
        with rasterio.open(src, "r+") as ds:
            ds.rpcs = RPC_40N_75W
        upscale_scene([src], tmp_path / "out.tif", cfg(overwrite=True))
        fc = json.loads((tmp_path / "out.captions.geojson").read_text())
        assert "crs" not in fc  # WGS 84 longitude, latitude: GeoJSON's own
        check_footprints(fc)


def check_footprints(fc) -> None:
    """Each caption footprint of ``fc`` at its tile's corner as :data:`RPC_40N_75W` places it."""
    from rasterio.transform import RPCTransformer

    with RPCTransformer(RPC_40N_75W) as place:
        for f in fc["features"]:
            p = f["properties"]
            corner = place.xy(p["row_off"], p["col_off"], zs=100, offset="ul")
            x0, y0, x1, y1 = shapely.geometry.shape(f["geometry"]).bounds
            assert -75.1 < x0 < x1 < -74.9 and 39.9 < y0 < y1 < 40.1
            assert min(abs(x0 - corner[0]), abs(x1 - corner[0])) < 1e-9 and min(abs(y0 - corner[1]), abs(y1 - corner[1])) < 1e-9


def test_bands_with_different_nodata_values_are_refused(tmp_path):
    """A gdalbuildvrt -separate stack of imagery (nodata 0) and a DEM (nodata -32768): the
    output has one nodata, which would turn the other's values into holes and holes into values."""
    vrt = _per_band_nodata_vrt(tmp_path, "stack", (0, -32768), side=32)
    with pytest.raises(InputError, match=r"different nodata values \(band 1: 0.0, band 2: -32768.0\)"):
        upscale_scene([vrt], tmp_path / "out.tif", cfg())
    # band 1's is the output's, written or not: --bands 2 would declare 0 over the DEM
    with pytest.raises(InputError, match="different nodata values"):
        upscale_scene([vrt], tmp_path / "out.tif", cfg(bands=[2]))
    assert not (tmp_path / "out.tif").exists()
    upscale_scene([vrt], tmp_path / "one.tif", cfg(bands=[1]))  # band 1 alone: fine
    with pytest.raises(InputError, match="different nodata values"):  # the lazy result too
        geosr.upscale(str(vrt), scale=2, model="bicubic", captioner="none")
    assert geosr.caption(str(vrt), captioner="none")["features"]  # captions write no pixels


def test_bands_of_different_types_are_refused(tmp_path):
    """uint8 imagery and a float32 band in one VRT: rasterio failed on its first multi-band read
    ("more than one 'dtype' found"), an unexpected error; with --model nearest floats were
    truncated into uint8."""
    a = write_raster(tmp_path / "a.tif", (texture(1, 24, 24) * 200).astype("uint8"))
    write_raster(tmp_path / "b.tif", texture(1, 24, 24, seed=1).astype("float32"))
    vrt = tmp_path / "stack.vrt"
    rasterio.shutil.copy(a, vrt, driver="VRT")
    text = vrt.read_text()
    second = text[text.index("  <VRTRasterBand"):text.index("</VRTRasterBand>") + len("</VRTRasterBand>")]
    second = (second.replace('band="1"', 'band="2"').replace('dataType="Byte"', 'dataType="Float32"')
              .replace("a.tif", "b.tif"))
    vrt.write_text(text.replace("</VRTDataset>", second + "\n</VRTDataset>"))
    with rasterio.open(vrt) as ds:
        assert ds.dtypes == ("uint8", "float32")
    with pytest.raises(InputError, match=r"bands are of different types \(band 1: uint8, band 2: float32\)"):
        upscale_scene([vrt], tmp_path / "out.tif", cfg(model="nearest"))
    assert not (tmp_path / "out.tif").exists()
    # the default model's look for class codes read every band first: an unexpected error (exit 1)
    result = CliRunner().invoke(cli, ["upscale", str(vrt), str(tmp_path / "out.tif"), "--scale", "2", "-q"])
    assert result.exit_code == 3 and "bands are of different types" in result.output, result.output
    # an alpha band is a mask: Byte beside uint16 data (gdalbuildvrt -addalpha) is fine
    data = (texture(3, 24, 24) * 3000).astype("uint16")
    rgba = write_raster(tmp_path / "rgb16.tif", data, colorinterp=[ColorInterp.red, ColorInterp.green, ColorInterp.blue])
    rasterio.shutil.copy(rgba, tmp_path / "rgba.vrt", driver="VRT")
    text = (tmp_path / "rgba.vrt").read_text()
    alpha = ('  <VRTRasterBand dataType="Byte" band="4">\n    <ColorInterp>Alpha</ColorInterp>\n'
             '    <ComplexSource>\n      <SourceFilename relativeToVRT="1">rgb16.tif</SourceFilename>\n'
             '      <SourceBand>1</SourceBand>\n      <ScaleOffset>255</ScaleOffset>\n      <ScaleRatio>0</ScaleRatio>\n'
             '    </ComplexSource>\n  </VRTRasterBand>\n')
    (tmp_path / "rgba.vrt").write_text(text.replace("</VRTDataset>", alpha + "</VRTDataset>"))
    with rasterio.open(tmp_path / "rgba.vrt") as ds:
        assert ds.dtypes == ("uint16",) * 3 + ("uint8",) and ds.colorinterp[3] == ColorInterp.alpha
    upscale_scene([tmp_path / "rgba.vrt"], tmp_path / "rgba_x2.tif", cfg(model="nearest"))
    with rasterio.open(tmp_path / "rgba_x2.tif") as out:
        np.testing.assert_array_equal(out.read([1, 2, 3]), np.kron(data, np.ones((2, 2), "uint16")))


def test_an_output_that_is_a_source_of_an_input_vrt_is_refused(tmp_path):
    """stack.vrt over a.tif, written to a.tif with --overwrite: the input was destroyed unseen."""
    a = uint8_scene(tmp_path / "a.tif", 24, 24)
    rasterio.shutil.copy(a, tmp_path / "stack.vrt", driver="VRT")
    before = a.read_bytes()
    with pytest.raises(OutputError, match="is also an input"):
        upscale_scene([tmp_path / "stack.vrt"], a, cfg(overwrite=True))
    assert a.read_bytes() == before


def test_a_tiled_outputs_blocks_carry_their_own_rpcs(tmp_path):
    """Found by review: every block COG of a map-projected input with RPCs (an OR2A product) got
    the whole output's RPCs, so anything using them put each block at the scene's corner."""
    from rasterio.rpc import RPC
    from rasterio.transform import RPCTransformer

    from geosr.georef import scale_rpcs

    rpc = RPC(
        height_off=100, height_scale=500, lat_off=40.0, lat_scale=0.05, long_off=-75.0, long_scale=0.05,
        line_off=32, line_scale=32, samp_off=40, samp_scale=40,
        line_num_coeff=[0, 0, -1] + [0] * 17, line_den_coeff=[1] + [0] * 19,
        samp_num_coeff=[0, 1] + [0] * 18, samp_den_coeff=[1] + [0] * 19,
    )
    src = uint8_scene(tmp_path / "in.tif", 64, 80)
    with rasterio.open(src, "r+") as ds:
        ds.rpcs = rpc
    upscale_scene([src], tmp_path / "out", cfg(split=64))
    whole = scale_rpcs(rpc, 2)
    blocks = sorted((tmp_path / "out").glob("*.tif"))
    assert len(blocks) > 1
    with rasterio.open(src) as ds:
        origin = ds.transform
    for block in blocks:
        with rasterio.open(block) as ds:
            col, row = ~(origin * rasterio.Affine.scale(0.5)) * (ds.transform.c, ds.transform.f)
            row_off, col_off = round(row), round(col)
            with RPCTransformer(ds.rpcs) as own, RPCTransformer(whole) as full:
                np.testing.assert_allclose(own.xy(3, 5, zs=100, offset="ul"),
                                           full.xy(3 + row_off, 5 + col_off, zs=100, offset="ul"), atol=1e-9)
