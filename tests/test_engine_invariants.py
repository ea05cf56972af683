"""Properties of the scene engine with a local linear operator (bicubic)."""

import numpy as np
import pytest
import rasterio
from affine import Affine

from geosr.config import RunConfig, TileSpec
from geosr.engine import upscale_scene
from tests.rasters import texture, uint8_scene, write_raster


def run(src, dst, scale, tile, overlap, model="bicubic", **kw):
    cfg = RunConfig(scale=scale, model=model, captioner="none", tiles=TileSpec(tile, overlap), progress=False, **kw)
    return upscale_scene([src], dst, cfg)


def read(path):
    with rasterio.open(path) as ds:
        return ds.read()


@pytest.mark.parametrize(
    "height,width,scale,tile,overlap",
    [(97, 131, 2, 32, 8), (101, 77, 4, 24, 6), (61, 83, 3, 40, 10), (45, 53, 8, 16, 4)],
)
def test_tiled_equals_whole_image_bicubic(tmp_path, height, width, scale, tile, overlap):
    src = uint8_scene(tmp_path / "in.tif", height=height, width=width)
    run(src, tmp_path / "whole.tif", scale, tile=4096, overlap=overlap)
    run(src, tmp_path / "tiled.tif", scale, tile=tile, overlap=overlap)
    whole, tiled = read(tmp_path / "whole.tif"), read(tmp_path / "tiled.tif")
    m = overlap * scale
    inner = (slice(None), slice(m, -m), slice(m, -m))
    diff = np.abs(whole.astype(int) - tiled.astype(int))[inner]
    assert diff.max() <= 1, f"max diff {diff.max()} DN"
    # The border band is still a full, sane image (reflect padding, no zeros).
    assert tiled.min() > 0


def test_blend_none_uses_tile_cores_as_they_are(tmp_path):
    # Bicubic needs 2 px of context: with a 4 px halo every core pixel is exact, so the
    # unblended mosaic of cores equals the whole-image result bit for bit.
    src = uint8_scene(tmp_path / "in.tif", height=96, width=96)
    run(src, tmp_path / "whole.tif", 4, tile=4096, overlap=4)
    run(src, tmp_path / "none.tif", 4, tile=32, overlap=4, blend="none")
    whole, none = read(tmp_path / "whole.tif"), read(tmp_path / "none.tif")
    inner = (slice(None), slice(16, -16), slice(16, -16))
    np.testing.assert_array_equal(none[inner], whole[inner])


@pytest.mark.parametrize("transform", [
    Affine(2.0, 0.0, 500000.0, 0.0, -2.0, 4100000.0),
    Affine.translation(500000.0, 4100000.0) @ Affine.rotation(17.0) @ Affine.scale(2.0, -2.0),
    Affine(2.0, 0.3, 500000.0, 0.2, -2.0, 4100000.0),  # sheared
])
def test_pixel_corners_map_to_same_world_coordinates(tmp_path, transform):
    src = uint8_scene(tmp_path / "in.tif", height=40, width=50, transform=transform)
    s = 3
    run(src, tmp_path / "out.tif", s, tile=32, overlap=4)
    with rasterio.open(src) as a, rasterio.open(tmp_path / "out.tif") as b:
        assert b.crs == a.crs
        assert (b.width, b.height) == (a.width * s, a.height * s)
        for r, c in [(0, 0), (0, 50), (40, 0), (40, 50), (7, 13)]:
            np.testing.assert_allclose(b.transform @ (c * s, r * s), a.transform @ (c, r), atol=1e-6)
        np.testing.assert_allclose(b.bounds, a.bounds, atol=1e-6)


@pytest.mark.parametrize("dtype,nodata", [("uint16", 0), ("int16", -9999), ("float32", -9999.0), ("float32", None)])
def test_dtypes_round_trip_with_nodata(tmp_path, dtype, nodata):
    base = texture(2, 57, 63, seed=3)
    if dtype == "uint16":
        data = (base * 3000 + 200).astype(dtype)
    elif dtype == "int16":
        data = (base * 4000 - 2000).astype(dtype)
    else:
        data = (base * 0.4 + 0.01).astype(dtype)
    if nodata is not None:
        data[:, :10, :12] = nodata
    src = write_raster(tmp_path / "in.tif", data, nodata=nodata)
    s = 2
    run(src, tmp_path / "out.tif", s, tile=24, overlap=6)
    with rasterio.open(tmp_path / "out.tif") as out:
        assert out.dtypes[0] == dtype
        assert out.nodata == nodata
        hr = out.read()
    # nodata pixels are exactly the refined input no-data area, and never leak into values
    if nodata is not None:
        lr_invalid = data[0] == nodata
        hr_invalid = hr[0] == nodata
        np.testing.assert_array_equal(hr_invalid, np.kron(lr_invalid, np.ones((s, s), bool)))
        valid = hr[:, ~hr_invalid]
    else:
        valid = hr.reshape(2, -1)
    good = data[:, data[0] != nodata] if nodata is not None else data.reshape(2, -1)
    # bicubic overshoot stays near the valid range: nodata (-9999, 0) never blended in
    span = float(good.max()) - float(good.min())
    assert valid.min() >= good.min() - 0.2 * span
    assert valid.max() <= good.max() + 0.2 * span
    assert abs(float(valid.mean()) - float(good.mean())) < 0.02 * span


def test_internal_mask_is_refined(tmp_path):
    data = (texture(3, 40, 44) * 250).astype("uint8")
    mask = np.ones((40, 44), bool)
    mask[5:15, 20:30] = False
    src = write_raster(tmp_path / "in.tif", data, mask=mask)
    run(src, tmp_path / "out.tif", 2, tile=16, overlap=4)
    with rasterio.open(tmp_path / "out.tif") as out:
        assert out.nodata is None
        np.testing.assert_array_equal(out.dataset_mask() > 0, np.kron(mask, np.ones((2, 2), bool)))


def test_alpha_band_becomes_output_mask(tmp_path):
    data = (texture(4, 30, 34) * 250).astype("uint8")
    data[3] = 255
    data[3, :6, :] = 0
    src = write_raster(tmp_path / "in.tif", data, photometric="RGB", alpha="YES")
    run(src, tmp_path / "out.tif", 2, tile=16, overlap=4)
    with rasterio.open(tmp_path / "out.tif") as out:
        assert out.count == 3
        valid = out.dataset_mask() > 0
        assert not valid[:12].any() and valid[12:].all()


@pytest.mark.parametrize("nodata", [0, -9999.0])  # NaN in one band masks the pixel (test_value_range)
@pytest.mark.parametrize("path", ["client", "lazy", "workers"])
def test_a_band_holding_nodata_where_the_others_do_not_stays_nodata_in_that_band(tmp_path, path, nodata):
    """GDAL's nodata is per band. A pixel whose band 2 alone is nodata (a Landsat collar's edge:
    710 such pixels in rasterio's RGB.byte) counts as valid in the dataset mask, and its band 2
    came out as the interpolated value nudged off nodata ([1, 0, 0] -> [1, 1, 1])."""
    import geosr

    dtype = "uint8" if nodata == 0 else "float32"
    data = (texture(3, 40, 44, seed=5) * 200 + 20).astype(dtype)
    data[:, :6, :8] = nodata  # a corner where all bands are nodata
    data[1, 20:23, 30:34] = nodata  # band 2 alone
    data[2, 5:9, 30] = nodata  # band 3 alone
    src = write_raster(tmp_path / "in.tif", data, nodata=nodata)
    s, out = 2, tmp_path / "out.tif"
    if path == "lazy":
        hr = geosr.upscale(src, scale=s, model="bicubic", captioner="none", tile=16, overlap=4).values
    else:
        run(src, out, s, tile=16, overlap=4, **({"local_workers": 1} if path == "workers" else {}))
        hr = read(out)
    lr_nodata, hr_nodata = data == nodata, hr == nodata
    np.testing.assert_array_equal(hr_nodata, np.kron(lr_nodata, np.ones((1, s, s), bool)))


def test_all_nodata_tiles_are_skipped_and_written_as_nodata(tmp_path):
    data = (texture(1, 64, 64) * 200 + 20).astype("uint8")
    data[:, :, :32] = 0
    src = write_raster(tmp_path / "in.tif", data, nodata=0)
    report = run(src, tmp_path / "out.tif", 2, tile=16, overlap=4)
    assert report.tiles_total == 16 and report.tiles_skipped == 8
    with rasterio.open(tmp_path / "out.tif") as out:
        hr = out.read(1)
    assert (hr[:, :64] == 0).all() and (hr[:, 64:] > 0).all()


def test_same_seed_same_pixels_and_deterministic_output(tmp_path):
    src = uint8_scene(tmp_path / "in.tif", height=50, width=60)
    run(src, tmp_path / "a.tif", 2, tile=16, overlap=4)
    run(src, tmp_path / "b.tif", 2, tile=16, overlap=4, batch_size=3)
    np.testing.assert_array_equal(read(tmp_path / "a.tif"), read(tmp_path / "b.tif"))


def test_band_metadata_and_tags_are_carried(tmp_path):
    data = (texture(2, 30, 40) * 1000).astype("int16")
    src = write_raster(tmp_path / "in.tif", data, nodata=-1)
    with rasterio.open(src, "r+") as ds:
        ds.set_band_description(1, "surface temperature")
        ds.set_band_description(2, "emissivity")
        ds.scales = (0.01, 0.001)
        ds.offsets = (273.15, 0.0)
        ds.units = ("K", "1")
        ds.update_tags(ACQUISITION="2024-06-01", SENSOR="demo")
    run(src, tmp_path / "out.tif", 2, tile=16, overlap=4)
    with rasterio.open(tmp_path / "out.tif") as out:
        assert out.descriptions == ("surface temperature", "emissivity")
        assert out.scales == (0.01, 0.001) and out.offsets == (273.15, 0.0)
        assert out.units == ("K", "1")
        tags = out.tags()
        assert tags["ACQUISITION"] == "2024-06-01" and tags["SENSOR"] == "demo"
        assert tags["GEOSR_MODEL"] == "bicubic" and tags["GEOSR_SCALE"] == "2"



@pytest.fixture(scope="module")
def coarse_grid_model(tmp_path_factory) -> str:
    """A tiny x2 LR-space student whose network grid is 2 LR px (``unshuffle_factor`` 4), as
    geosr-tiny-fast-x2's; its scheduler predicts the clean sample, so its output is a function
    of the LR alone, local (tests/test_detail_uncertainty_run.py) but wider than bicubic's:
    ~1e-3 of the range 8 LR px inside a tile's edge, ~1e-6 at 12."""
    from diffusers import LCMScheduler

    from geosr.pipelines.pipeline_geosr import GeoSRPipeline
    from tiny_models import tiny_pipeline_components

    folder = tmp_path_factory.mktemp("coarse-grid-model")
    components = tiny_pipeline_components(student=True, scale=2, unshuffle_factor=4, tmp_path=folder)
    components["scheduler"] = LCMScheduler.from_config(components["scheduler"].config, prediction_type="sample")
    GeoSRPipeline(**components).save_pretrained(folder / "model")
    return str(folder / "model")


@pytest.mark.parametrize("height,width,tile,overlap,blend", [
    (99, 105, 40, 32, "cosine"),  # cores of 33 x 35 px at odd rows and columns, on a 2 px grid 34 x 36
    (69, 75, 32, 16, "none"),  # 23 x 25 px
    (69, 75, 32, 15, "none"),  # an odd halo, rounded up to the grid: 16
])
def test_tiled_equals_whole_image_for_a_model_on_a_coarser_grid_than_the_lr(tmp_path, coarse_grid_model, height,
                                                                           width, tile, overlap, blend):
    # Balanced cores would start at odd LR columns and rows, where the network sees the tile on
    # the other phase of its 2 px grid than in the untiled run (up to 124 DN off).
    src = uint8_scene(tmp_path / "in.tif", height=height, width=width)
    opts = dict(model=coarse_grid_model, route="off", device="cpu", dtype="fp32", blend=blend)
    run(src, tmp_path / "whole.tif", 2, tile=4096, overlap=overlap, **opts)
    report = run(src, tmp_path / "tiled.tif", 2, tile=tile, overlap=overlap, **opts)
    assert report.tiles_total == 9
    whole, tiled = read(tmp_path / "whole.tif"), read(tmp_path / "tiled.tif")
    m = overlap * 2
    inner = (slice(None), slice(m, -m), slice(m, -m))
    diff = np.abs(whole.astype(int) - tiled.astype(int))[inner]
    assert diff.max() <= 1, f"max diff {diff.max()} DN"  # float rounding


def test_a_routed_run_plans_on_its_model_s_grid_alone(tmp_path):
    # Found by review: geosr-tiny-fast-x2, the cheap path at x2, runs on LR/2, and a routed run
    # planned on its step (2): every core moved, and with no tile routed the output differed from
    # --route off's by up to 11 DN. Routing changes the routed tiles only; the cheap path pads.
    from geosr.pipelines.pipeline_geosr import GeoSRPipeline
    from geosr.tasks import model_facts
    from tiny_models import tiny_pipeline_components

    GeoSRPipeline(**tiny_pipeline_components(student=True, scale=2, unshuffle_factor=2, tmp_path=tmp_path)
                  ).save_pretrained(tmp_path / "model")
    base = dict(scale=2, model=str(tmp_path / "model"), captioner="none", device="cpu", dtype="fp32")
    assert model_facts(RunConfig(**base, route="off")).grid_step == 1
    assert model_facts(RunConfig(**base)).grid_step == 1


def test_the_cheap_path_projects_its_outputs_as_the_model_does():
    # --lr-consistency always means every tile: the routed ones too (geosr-tiny-fast-x2 is a
    # diffusion model, so it takes the setting; a classical cheap path takes none)
    from geosr.tasks import cheap_path_model

    options = dict(device="cpu", dtype="fp32", lr_consistency="always", detail=0.5)
    assert cheap_path_model("geosr-tiny-fast-x2", 2, options).lr_consistency == "always"
    assert cheap_path_model("geosr-tiny-fast-x2", 2, dict(device="cpu", dtype="fp32")).lr_consistency == "off"
    assert cheap_path_model("bicubic", 2, options).scale == 2
