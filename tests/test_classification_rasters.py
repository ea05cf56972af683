"""Classification rasters (land cover, masks): refused by interpolating models, upscaled by ``nearest``.

Issue 27.2: a land-cover raster came out with thousands of values that are no class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

import geosr
from geosr.cli import cli
from geosr.errors import GridMismatchError, InputError
from geosr.scene import categorical_reason
from tests.rasters import texture, uint8_scene, write_raster

DATA = Path(__file__).parent / "data"
CLASSES = np.array([11, 21, 42, 52, 71, 90], np.uint8)  # NLCD-like codes


def land_cover(path, nodata=None, **kw):
    """Blocky regions of six class codes, 96 x 120 px."""
    rng = np.random.default_rng(7)
    coarse = rng.integers(0, len(CLASSES), (12, 15))
    data = CLASSES[np.kron(coarse, np.ones((8, 8), int))][None]
    if nodata is not None:
        data[:, :8, :] = nodata
    return write_raster(path, data, nodata=nodata, **kw), data


@pytest.mark.parametrize("model", [None, "bicubic"])
def test_a_land_cover_raster_is_refused_with_a_one_line_hint(tmp_path, model):
    src, _ = land_cover(tmp_path / "lc.tif")
    args = ["upscale", str(src), str(tmp_path / "out.tif"), "--scale", "2"] + (["--model", model] if model else [])
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == InputError.exit_code
    assert res.output.strip().splitlines() == [
        f"Error: {src} looks like a classification raster (6 distinct values in uniform patches): {model or 'geosr-tiny-x2'} would "
        "blend its classes into values that are no class; upscale it with --model nearest"
    ]
    assert not (tmp_path / "out.tif").exists()
    with pytest.raises(InputError, match=r"upscale it with model='nearest'$"):
        geosr.upscale(src, scale=2, model=model)  # the lazy result too, before any work


def test_nearest_keeps_every_class_and_the_mask(tmp_path):
    src, data = land_cover(tmp_path / "lc.tif", nodata=0)
    geosr.upscale_to_file(src, tmp_path / "out.tif", scale=3, model="nearest", tile=32, overlap=8)
    with rasterio.open(tmp_path / "out.tif") as out:
        hr = out.read()
        assert out.tags()["GEOSR_MODEL"] == "nearest" and out.nodata == 0
    np.testing.assert_array_equal(hr, np.kron(data, np.ones((1, 3, 3), np.uint8)))


def test_colour_tables_and_attribute_tables_mark_classes(tmp_path):
    # small, and two values only: the colour table alone says these are classes
    path = tmp_path / "palette.tif"
    with rasterio.open(path, "w", driver="GTiff", width=40, height=30, count=1, dtype="uint8",
                       crs="EPSG:32618", transform=rasterio.Affine(2, 0, 0, 0, -2, 0)) as ds:
        ds.write(np.repeat(np.array([0, 1], np.uint8), 600).reshape(1, 30, 40))
        ds.write_colormap(1, {0: (0, 0, 255, 255), 1: (0, 128, 0, 255)})
    assert categorical_reason(str(path)) == "a colour table"
    rat, _ = land_cover(tmp_path / "rat.tif")
    Path(str(rat) + ".aux.xml").write_text(
        '<PAMDataset><PAMRasterBand band="1"><GDALRasterAttributeTable tableType="thematic">'
        '<FieldDefn index="0"><Name>Value</Name><Type>0</Type><Usage>5</Usage></FieldDefn>'
        "</GDALRasterAttributeTable></PAMRasterBand></PAMDataset>"
    )
    assert categorical_reason(str(rat)) == "a raster attribute table"
    # found by review: a RAT in a VRT's own XML (or inside an .img) was not looked for, and the
    # class raster was interpolated, exit 0; one that calls itself athematic (a histogram) is no class
    speckled = np.random.default_rng(3).integers(0, 20, (1, 96, 120)).astype(np.uint8)  # no uniform patches
    assert categorical_reason(str(write_raster(tmp_path / "speckled.tif", speckled))) is None
    size = 'rasterXSize="120" rasterYSize="96"'
    # thematic; athematic but naming classes (an ERDAS .img from gdal_translate reads so); a histogram
    names = '<FieldDefn index="1"><Name>Class</Name><Type>2</Type><Usage>2</Usage></FieldDefn>'
    counts = '<FieldDefn index="1"><Name>Count</Name><Type>0</Type><Usage>1</Usage></FieldDefn>'
    for kind, column, value, reason in (("thematic", names, "forest", "a raster attribute table"),
                                        ("athematic", names, "forest", "a raster attribute table"),
                                        ("athematic", counts, "17", None)):
        vrt = tmp_path / f"{kind}_{value}.vrt"
        vrt.write_text(
            f'<VRTDataset {size}><VRTRasterBand dataType="Byte" band="1">'
            f'<GDALRasterAttributeTable tableType="{kind}"><FieldDefn index="0"><Name>Value</Name><Type>0</Type>'
            f'<Usage>5</Usage></FieldDefn>{column}'
            f'<Row index="0"><F>1</F><F>{value}</F></Row></GDALRasterAttributeTable>'
            f'<SimpleSource><SourceFilename relativeToVRT="0">{tmp_path / "speckled.tif"}</SourceFilename>'
            "<SourceBand>1</SourceBand></SimpleSource></VRTRasterBand></VRTDataset>")
        assert categorical_reason(str(vrt)) == reason, (kind, value)


def test_imagery_is_not_taken_for_classes(tmp_path):
    # the real fixtures and the synthetic scenes the other tests run
    for path in sorted(DATA.glob("*.tif")):
        assert categorical_reason(str(path)) is None, path
    assert categorical_reason(str(uint8_scene(tmp_path / "u8.tif"))) is None
    # few grey levels, but imagery: hazy ground (41 levels), flat water with 1 DN of noise
    # (9 levels), a smooth ramp (50 levels) step by a level or two, classes jump
    rng = np.random.default_rng(0)
    few_levels = {
        "haze": (texture(1, 200, 200)[0] * 40 + 100).round(),
        "water": 80 + rng.normal(0, 1, (200, 200)).round(),
        "ramp": np.tile(np.linspace(0, 49, 200).round(), (200, 1)),
    }
    for name, data in few_levels.items():
        assert len(np.unique(data)) <= 64
        assert categorical_reason(str(write_raster(tmp_path / f"{name}.tif", data.astype(np.uint16)[None]))) is None
    # too small, constant, or float: not judged
    _, lc = land_cover(tmp_path / "lc.tif")
    assert categorical_reason(str(write_raster(tmp_path / "small.tif", lc[:, :40, :60]))) is None
    assert categorical_reason(str(write_raster(tmp_path / "flat.tif", np.full((1, 80, 80), 7, np.uint8)))) is None
    assert categorical_reason(str(write_raster(tmp_path / "float.tif", lc.astype(np.float32)))) is None


PALETTE = {int(c): (int(c) * 2 % 256, 255 - int(c), int(c) * 3 % 256, 255) for c in CLASSES}


def palette_land_cover(path):
    """A 600 x 600 land cover (so that the x2 output has overviews) with a colour table."""
    rng = np.random.default_rng(3)
    data = CLASSES[np.kron(rng.integers(0, len(CLASSES), (75, 75)), np.ones((8, 8), int))][None]
    src = write_raster(path, data, colorinterp=[rasterio.enums.ColorInterp.palette])
    with rasterio.open(src, "r+") as ds:
        ds.write_colormap(1, PALETTE)
    return src


@pytest.mark.parametrize("form", ["cog", "tiled", "zarr"])
def test_nearest_keeps_the_colour_table_and_makes_overviews_of_classes(tmp_path, form):
    """QGIS draws a palette raster with its colours, and zoomed out from its overviews: the
    output keeps the table and its overviews hold class codes only (before: no table, and
    AVERAGE overviews of codes, values of no class at every level below the full one)."""
    src = palette_land_cover(tmp_path / "lc.tif")
    out = tmp_path / {"cog": "out.tif", "tiled": "out.vrt", "zarr": "out.zarr"}[form]
    geosr.upscale_to_file(src, out, scale=2, model="nearest", tile=128, overlap=16,
                          **({"split": 1024} if form == "tiled" else {}))
    if form == "zarr":
        import zarr

        group = zarr.open_group(str(out), mode="r")
        assert group.attrs["multiscales"]["resampling_method"] == "nearest"
        levels = [np.asarray(group[f"{f}/band_data"]) for f in (2,)]
    else:
        part = out if form == "cog" else sorted((tmp_path / "out").glob("*.tif"))[0]
        with rasterio.open(part) as ds:
            assert ds.colorinterp[0] == rasterio.enums.ColorInterp.palette
            assert {k: v for k, v in ds.colormap(1).items() if k in PALETTE} == PALETTE
            assert ds.overviews(1), "no overviews to check"
            levels = [ds.read(1, out_shape=(ds.height // f, ds.width // f)) for f in ds.overviews(1)]
    for level in levels:
        assert set(np.unique(level)) <= set(CLASSES.tolist())


@pytest.mark.parametrize("dtype, values", [
    ("float32", np.linspace(0.1, 7.3, 400)),  # codes float32 rounds through a stretch
    ("int32", np.arange(400) * 900 - 200_003),
    ("uint32", np.arange(400) * 40_000 + 1_000_001),  # parcel ids up to 17 M: a span float32 rounds
])
def test_nearest_makes_no_new_values_in_32_bit_rasters(tmp_path, dtype, values):
    """Found by review: nearest made 53 new values of 2000 float32 codes and 153 of 2000 uint32
    ids (a stretch to float32 model units and back, and blended overlaps)."""
    from rasterio.transform import from_origin

    rng = np.random.default_rng(0)
    data = np.kron(values[rng.integers(0, len(values), (12, 12))], np.ones((8, 8))).astype(dtype)
    if dtype == "uint32":
        data = np.minimum(data, 2**24 - 1)
    src = tmp_path / "ids.tif"
    with rasterio.open(src, "w", driver="GTiff", width=96, height=96, count=1, dtype=dtype, crs="EPSG:32618",
                       transform=from_origin(0, 96, 1, 1)) as ds:
        ds.write(data[None])
    geosr.upscale_to_file(src, tmp_path / "out.tif", scale=2, model="nearest", captioner="none", tile=32, overlap=8)
    with rasterio.open(tmp_path / "out.tif") as out:
        np.testing.assert_array_equal(out.read(1), np.kron(data, np.ones((2, 2), data.dtype)))


def test_nearest_refuses_what_it_cannot_keep_exactly(tmp_path):
    from rasterio.transform import from_origin

    for dtype, value in (("uint32", 50_000_001), ("float64", 0.5)):
        src = tmp_path / f"{dtype}.tif"
        with rasterio.open(src, "w", driver="GTiff", width=40, height=40, count=1, dtype=dtype, crs="EPSG:32618",
                           transform=from_origin(0, 40, 1, 1)) as ds:
            ds.write(np.full((1, 40, 40), value, dtype) + np.arange(40, dtype=dtype)[None, None, :])
        with pytest.raises(InputError, match="nearest"):
            geosr.upscale_to_file(src, tmp_path / f"{dtype}_x2.tif", scale=2, model="nearest", captioner="none")
        assert not (tmp_path / f"{dtype}_x2.tif").exists()


def test_a_mosaic_of_palette_pieces_keeps_their_table_and_refuses_two_legends(tmp_path):
    """Found by review: the mosaic's VRT said Palette but held no table (the output had none),
    and pieces whose tables gave one code two classes were joined."""
    whole = palette_land_cover(tmp_path / "lc.tif")
    with rasterio.open(whole) as ds:
        profile, data = ds.profile, ds.read()
    pieces = []
    for name, cols in (("west.tif", slice(0, 304)), ("east.tif", slice(304, 600))):
        piece = dict(profile, width=cols.stop - cols.start,
                     transform=profile["transform"] * rasterio.Affine.translation(cols.start, 0))
        with rasterio.open(tmp_path / name, "w", **piece) as ds:
            ds.write(data[:, :, cols])
            ds.write_colormap(1, PALETTE)
        pieces.append(tmp_path / name)
    geosr.upscale_to_file(pieces, tmp_path / "out.tif", scale=2, model="nearest", tile=128, overlap=16)
    with rasterio.open(tmp_path / "out.tif") as ds:
        assert {k: v for k, v in ds.colormap(1).items() if k in PALETTE} == PALETTE
    other = {k: tuple(reversed(v[:3])) + (255,) for k, v in PALETTE.items()}
    with rasterio.open(pieces[1], "r+") as ds:
        ds.write_colormap(1, other)
    with pytest.raises(GridMismatchError, match="other colour tables"):
        geosr.upscale_to_file(pieces, tmp_path / "out2.tif", scale=2, model="nearest", tile=128, overlap=16)
    assert not (tmp_path / "out2.tif").exists()
