"""Every band through the model (issue 29): which bands are R, G, B, how the others are grouped,
what the output says of it, and runs of 1-, 4- and 10-band scenes."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.enums import ColorInterp

import geosr
from geosr.band_evaluation import edge_offset
from geosr.band_roles import (NUMBERING_ASSUMED, RGBAssumedWarning, parse_bands_to_model, rgb_from_descriptions,
                              rgb_from_wavelengths)
from geosr.cli import cli
from geosr.errors import InputError
from geosr.output_meta import band_tags
from geosr.scene import open_scene
from geosr.scene_plan import BandGroup, plan_bands
from multispectral import RGBN, SENTINEL2_BANDS, sentinel2_stack
from rasters import texture, write_alpha_first_vrt, write_raster

GRAY = [ColorInterp.gray] + [ColorInterp.undefined] * 3


def scene_with(tmp_path, count=4, dtype="uint16", descriptions=None, colorinterp=None, tags=None, band_tags=None):
    data = (texture(count, 40, 48) * 1000).astype(dtype)
    path = write_raster(tmp_path / "in.tif", data, colorinterp=colorinterp)
    with rasterio.open(path, "r+") as ds:
        for b, text in enumerate(descriptions or [], start=1):
            ds.set_band_description(b, text)
        ds.update_tags(**(tags or {}))
        for b, (ns, values) in (band_tags or {}).items():
            ds.update_tags(b, ns=ns, **values)
    return open_scene([path])


def test_colour_interpretation_gives_rgb_and_the_other_bands_go_alone():
    plan = plan_bands(open_scene([RGBN]), None, 3)
    assert plan.rgb.bands == (1, 2, 3) and plan.rgb.source == "colour interpretation"
    assert plan.groups == (BandGroup((0, 1, 2)), BandGroup((3,), replicate=3))
    assert plan.extra == () and plan.look == (0, 1, 2)


def test_b2_b3_b4_descriptions_are_blue_green_red(tmp_path):
    plan = plan_bands(open_scene([sentinel2_stack(tmp_path / "s2.tif")]), None, 3)
    assert plan.rgb.bands == (3, 2, 1) and plan.rgb.source == "band descriptions"
    assert plan.groups[0] == BandGroup((2, 1, 0))  # red, green, blue in model channel order
    assert [g.positions for g in plan.groups[1:]] == [(p,) for p in range(3, 10)]


def test_descriptions_win_over_gdal_default_rgb_of_a_uint8_stack(tmp_path):
    # GDAL makes every 3-band uint8 GeoTIFF R, G, B; the band names say blue, green, red
    scene = scene_with(tmp_path, count=3, dtype="uint8", descriptions=["B02", "B03", "B04"])
    assert scene.colorinterp == (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
    assert plan_bands(scene, None, 3).rgb.bands == (3, 2, 1)


@pytest.mark.parametrize("names,rgb", [
    (["nir", "Red", "green", "Blue"], (2, 3, 4)),
    (["Red edge", "red", "green", "blue"], (2, 3, 4)),
    (["B", "G", "R", "NIR"], (3, 2, 1)),
    (["SR_B2", "SR_B3", "SR_B4", "SR_B5"], (3, 2, 1)),
    (["B4, central wavelength 665 nm", "B3, central wavelength 560 nm", "B2, central wavelength 490 nm", "B8A"],
     (1, 2, 3)),
])
def test_colour_words_and_band_numbers(names, rgb):
    assert rgb_from_descriptions(dict(enumerate(names, start=1)), {}) == rgb


@pytest.mark.parametrize("names", [["Band 1", "Band 2", "Band 3", "Band 4"], ["B8A", "B11", "B12", "B10"], ["red", "red", "green", "blue"]])
def test_descriptions_that_do_not_say(names):
    assert rgb_from_descriptions(dict(enumerate(names, start=1)), {}) is None


def test_landsat_4_to_7_number_blue_green_red_1_2_3():
    names = dict(enumerate(["B1", "B2", "B3", "B4"], start=1))
    assert rgb_from_descriptions(names, {"SPACECRAFT_ID": "LANDSAT_7"}) == (3, 2, 1)
    assert rgb_from_descriptions(names, {"PRODUCT_ID": "LT05_L2SP_042034_20110812_02_T1"}) == (3, 2, 1)
    assert rgb_from_descriptions(names, {"SPACECRAFT_ID": "LANDSAT_8"}) == (4, 3, 2)


def test_wavelengths(tmp_path):
    nm = {1: ("", {"WAVELENGTH": "842", "WAVELENGTH_UNIT": "nm"}), 2: ("", {"WAVELENGTH": "0.665", "WAVELENGTH_UNIT": "um"}),
          3: ("IMAGERY", {"CENTRAL_WAVELENGTH_UM": "0.560"}), 4: ("IMAGERY", {"CENTRAL_WAVELENGTH_UM": "0.490"})}
    scene = scene_with(tmp_path, band_tags={b: (ns or None, v) for b, (ns, v) in nm.items()})
    rgb = plan_bands(scene, None, 3).rgb
    assert rgb.bands == (2, 3, 4) and rgb.source == "wavelengths"
    # a coastal band (443 nm) is not blue, a red edge band (705 nm) not red
    assert rgb_from_wavelengths({1: {"WAVELENGTH": "443"}, 2: {"WAVELENGTH": "560"}, 3: {"WAVELENGTH": "705"}}) is None


def test_the_bands_own_tags_are_kept_so_the_output_tells_its_bands_apart(tmp_path):
    """Wavelengths in band tags (default and IMAGERY domains) told the input's R, G, B; the output
    lost them (only STATISTICS_* left) and a later run took its bands 1-3 as R, G, B, blue first."""
    nm = {1: ("", {"WAVELENGTH": "490", "WAVELENGTH_UNIT": "nm"}), 2: ("", {"WAVELENGTH": "560", "WAVELENGTH_UNIT": "nm"}),
          3: ("IMAGERY", {"CENTRAL_WAVELENGTH_UM": "0.665", "FWHM_UM": "0.03"}), 4: ("", {"SENSOR_BAND": "nir"})}
    scene = scene_with(tmp_path, band_tags={b: (ns or None, v) for b, (ns, v) in nm.items()})
    run(scene.source, tmp_path / "out.tif", model="bicubic", tile=32, overlap=8, bands=(1, 3, 4))
    with rasterio.open(tmp_path / "out.tif") as out:
        assert out.tags(1)["WAVELENGTH"] == "490" and out.tags(3)["SENSOR_BAND"] == "nir"
        assert out.tags(2, ns="IMAGERY") == {"CENTRAL_WAVELENGTH_UM": "0.665", "FWHM_UM": "0.03"}
        assert out.tags(2).get("WAVELENGTH") is None  # the picked bands', in the output's order
    run(scene.source, tmp_path / "all.tif", model="bicubic", tile=32, overlap=8)
    assert plan_bands(open_scene([tmp_path / "all.tif"]), None, 3).rgb.source == "wavelengths"


def test_undefined_bands_are_assumed_rgb_with_one_warning(tmp_path):
    scene = scene_with(tmp_path, colorinterp=GRAY)
    with pytest.warns(RGBAssumedWarning, match=r"bands 1,2,3 are taken as R,G,B \(choose with --rgb-bands, e.g. "
                                                 r"--rgb-bands 3,2,1\)") as caught:
        plan = plan_bands(scene, None, 3)
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    assert plan.rgb.source == "assumed" and plan.groups[0] == BandGroup((0, 1, 2))
    assert band_tags(plan) == {"GEOSR_MODEL_BANDS": "1,2,3;4", "GEOSR_RGB_BANDS": "1,2,3", "GEOSR_RGB_SOURCE": "assumed"}


def test_names_that_contradict_the_colour_interpretation_overrule_it(tmp_path):
    """Found by review: a colour-infrared NIR, R, G uint8 file (GDAL labels it R, G, B) sent NIR as
    red, red as green and green as blue, silently; no three bands are R, G, B: each goes alone."""
    scene = scene_with(tmp_path, count=3, dtype="uint8", descriptions=["nir", "red", "green"])
    assert scene.colorinterp == (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan = plan_bands(scene, None, 3)
    assert plan.rgb is None and plan.groups == tuple(BandGroup((p,), replicate=3) for p in range(3))
    assert band_tags(plan) == {"GEOSR_MODEL_BANDS": "1;2;3"}


@pytest.mark.parametrize("how", ["colorinterp", "descriptions", "wavelengths"])
def test_bands_the_metadata_places_outside_red_green_blue_are_not_assumed_rgb(tmp_path, how):
    """Found by review: Sentinel-2's 20 m bands (B5, B6, B7 red edge, B8A, B11, B12) went to the
    model and the captioner as R, G, B, with a warning that nothing said what they were."""
    colorinterp = [ColorInterp.rededge] * 3 + [ColorInterp.nir] if how == "colorinterp" else GRAY
    descriptions = ["B5", "B6", "B7", "B8A"] if how == "descriptions" else None
    wavelengths = {b: ("IMAGERY", {"CENTRAL_WAVELENGTH_UM": um})
                   for b, um in enumerate((0.705, 0.740, 0.783, 0.865), start=1)} if how == "wavelengths" else None
    scene = scene_with(tmp_path, colorinterp=colorinterp, descriptions=descriptions, band_tags=wavelengths)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan = plan_bands(scene, None, 3)
    assert plan.rgb is None and [g.positions for g in plan.groups] == [(0,), (1,), (2,), (3,)]
    assert plan.look == (0,)  # the first band is captioned, as grey
    assert plan_bands(scene, None, 3, bands_to_model="rgb").groups == plan.groups  # no R, G, B: as "all"


def test_an_exact_colour_name_wins_a_tie():
    """PlanetScope's 8 bands name two greens (green_i, green): neither was taken, and the run fell
    back to the colour interpretation or to bands 1-3 (coastal blue, blue, green_i)."""
    names = ["coastal_blue", "blue", "green_i", "green", "yellow", "red", "rededge", "nir"]
    assert rgb_from_descriptions(dict(enumerate(names, start=1)), {}) == (6, 4, 2)


def test_given_rgb_bands(tmp_path):
    scene = scene_with(tmp_path, colorinterp=GRAY)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan = plan_bands(scene, None, 3, rgb_bands=(3, 2, 1))
    assert plan.rgb.source == "given" and plan.groups[0] == BandGroup((2, 1, 0))
    for bad in [(1, 2), (1, 1, 2), (1, 2, 9)]:
        with pytest.raises(InputError, match="--rgb-bands needs three different band"):
            plan_bands(scene, None, 3, rgb_bands=bad)


def test_bands_to_model(tmp_path):
    scene = open_scene([RGBN])
    rgb_only = plan_bands(scene, None, 3, bands_to_model="rgb")
    assert rgb_only.groups == (BandGroup((0, 1, 2)),) and rgb_only.extra == (3,)
    assert band_tags(rgb_only)["GEOSR_BICUBIC_BANDS"] == "4"
    nir_only = plan_bands(scene, None, 3, bands_to_model=(4,))
    assert nir_only.groups == (BandGroup((3,), replicate=3),) and nir_only.extra == (0, 1, 2)
    assert nir_only.look == (0, 1, 2)  # captions and routing still read R, G, B
    # R, G, B with a band missing: those that go to the model go alone
    assert plan_bands(scene, None, 3, bands_to_model="1,2,4").groups == tuple(BandGroup((p,), 3) for p in (0, 1, 3))
    reordered = plan_bands(scene, (4, 3, 2, 1), 3)
    assert reordered.groups == (BandGroup((3, 2, 1)), BandGroup((0,), replicate=3))
    assert band_tags(reordered)["GEOSR_MODEL_BANDS"] == "1,2,3;4"  # input band numbers
    with pytest.raises(InputError, match="--bands-to-model: band 4 is not among the bands written"):
        plan_bands(scene, (1, 2, 3), 3, bands_to_model=(4,))
    for bad in ("none", "0,1", ""):
        with pytest.raises(InputError, match="--bands-to-model"):
            parse_bands_to_model(bad)


@pytest.mark.parametrize("count", [1, 2])
def test_fewer_bands_than_rgb_go_alone_and_nothing_is_assumed(tmp_path, count):
    scene = scene_with(tmp_path, count=count)
    for spec in ("all", "rgb"):
        plan = plan_bands(scene, None, 3, bands_to_model=spec)
        assert plan.groups == tuple(BandGroup((p,), replicate=3) for p in range(count))
        assert plan.rgb is None and plan.look == (0,)


def test_models_of_any_band_count_take_all_bands_at_once():
    plan = plan_bands(open_scene([RGBN]), None, None)
    assert plan.groups == (BandGroup((0, 1, 2, 3)),) and plan.rgb is None


def test_networks_of_other_band_counts():
    scene = open_scene([RGBN])
    assert plan_bands(scene, None, 1).groups == tuple(BandGroup((p,)) for p in range(4))  # every band alone
    two = plan_bands(scene, None, 2)  # what a 2-band network's further bands are, its card does not say
    assert two.groups == (BandGroup((0, 1)),) and two.extra == (2, 3)
    assert plan_bands(scene, (1, 2, 3), 4).groups == tuple(BandGroup((p,), replicate=4) for p in range(3))


def test_caption_takes_rgb_bands(tmp_path):
    src = scene_with(tmp_path, colorinterp=GRAY).source
    args = ["caption", src, "--out", str(tmp_path / "c.geojson"), "--captioner", "fixed:x", "--overwrite"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0 and "warning: " in res.stderr and "bands 1,2,3 are taken as R,G,B" in res.stderr
    res = CliRunner().invoke(cli, args + ["--rgb-bands", "3,2,1"])
    assert res.exit_code == 0 and "taken as R,G,B" not in res.stderr, res.output
    res = CliRunner().invoke(cli, args + ["--rgb-bands", "1,2"])
    assert res.exit_code != 0 and "--rgb-bands needs three different band numbers" in res.output


# ------------------------------------------------------------------ runs through the engine


def run(src, out, **options):
    return geosr.upscale_to_file(src, out, scale=2, overwrite=True, **options)


def read(path):
    with rasterio.open(path) as ds:
        return ds.read().astype(np.float64), ds.tags()


def rgbn_crop(tmp_path, bands=(1, 2, 3, 4)):
    """A textured 128 x 96 window of the RGBN fixture (the no-data collar left out)."""
    with rasterio.open(RGBN) as src:
        window = rasterio.windows.Window(40, 60, 128, 96)
        data = src.read(list(bands), window=window)
        profile = {**src.profile, "width": 128, "height": 96, "count": len(bands),
                   "transform": src.window_transform(window), "photometric": "MINISBLACK"}  # not RGBA
        colorinterp = [src.colorinterp[b - 1] for b in bands]
    with rasterio.open(tmp_path / "crop.tif", "w", **profile) as dst:
        dst.write(data)
        dst.colorinterp = colorinterp
    return tmp_path / "crop.tif"


def test_every_band_of_a_4_band_scene_changes_from_bicubic(tmp_path):
    src = rgbn_crop(tmp_path)
    run(src, tmp_path / "bicubic.tif", model="bicubic", tile=64, overlap=8)
    run(src, tmp_path / "model.tif", tile=64, overlap=8)
    bicubic, _ = read(tmp_path / "bicubic.tif")
    model, tags = read(tmp_path / "model.tif")
    assert [np.abs(model[b] - bicubic[b]).mean() > 0.5 for b in range(4)] == [True] * 4
    assert tags["GEOSR_MODEL_BANDS"] == "1,2,3;4" and "GEOSR_BICUBIC_BANDS" not in tags
    # --bands-to-model rgb: NIR through bicubic, as before issue 29
    res = CliRunner().invoke(cli, ["upscale", str(src), str(tmp_path / "rgb.tif"), "--scale", "2", "--tile", "64",
                                   "--overlap", "8", "--bands-to-model", "rgb", "-q"])
    assert res.exit_code == 0, res.output
    rgb_only, tags = read(tmp_path / "rgb.tif")
    np.testing.assert_array_equal(rgb_only[3], bicubic[3])
    np.testing.assert_array_equal(rgb_only[:3], model[:3])  # R, G, B as in the run of every band
    assert tags["GEOSR_MODEL_BANDS"] == "1,2,3" and tags["GEOSR_BICUBIC_BANDS"] == "4"


def test_a_single_band_is_sharpened_alone(tmp_path):
    src = rgbn_crop(tmp_path, bands=(4,))
    run(src, tmp_path / "bicubic.tif", model="bicubic")
    run(src, tmp_path / "model.tif")
    assert np.abs(read(tmp_path / "model.tif")[0] - read(tmp_path / "bicubic.tif")[0]).mean() > 0.5
    assert read(tmp_path / "model.tif")[1]["GEOSR_MODEL_BANDS"] == "1"


def test_a_sentinel2_uint16_stack_runs_end_to_end_with_its_band_metadata(tmp_path):
    # rows 40-136, columns 0-128: the no-data collar (columns 0-10) included
    src = sentinel2_stack(tmp_path / "s2.tif", (slice(40, 136), slice(0, 128)))
    run(src, tmp_path / "bicubic.tif", model="bicubic", tile=64, overlap=8)
    run(src, tmp_path / "model.tif", tile=64, overlap=8)
    with rasterio.open(src) as lr, rasterio.open(tmp_path / "model.tif") as out:
        assert out.dtypes == lr.dtypes == ("uint16",) * 10 and out.nodata == 0
        assert out.descriptions == tuple(SENTINEL2_BANDS) and out.scales == lr.scales and out.offsets == lr.offsets
        np.testing.assert_array_equal(out.dataset_mask() > 0, np.kron(lr.dataset_mask() > 0, np.ones((2, 2), bool)))
        tags = out.tags()
    assert tags["GEOSR_RGB_BANDS"] == "3,2,1" and tags["GEOSR_RGB_SOURCE"] == "band descriptions"
    assert tags["GEOSR_MODEL_BANDS"] == "3,2,1;4;5;6;7;8;9;10"
    assert tags["SPACECRAFT_NAME"] == "Sentinel-2B"
    model, bicubic = read(tmp_path / "model.tif")[0][:, :, 24:], read(tmp_path / "bicubic.tif")[0][:, :, 24:]
    for b in range(10):
        assert np.abs(model[b] - bicubic[b]).mean() > 2.0, SENTINEL2_BANDS  # DN of 10000 per unit reflectance
        # edges line up across bands: no band moves against red (no colour fringes in a composite)
        assert np.abs(edge_offset(model[b], model[2])).max() < 0.1
        assert np.abs(edge_offset(model[b], bicubic[b])).max() < 0.1


def test_undefined_bands_warn_in_a_run_and_the_output_says_so(tmp_path):
    src = write_raster(tmp_path / "in.tif", (texture(4, 40, 48) * 3000 + 500).astype("uint16"))
    with pytest.warns(RGBAssumedWarning, match="bands 1,2,3 are taken as R,G,B"):
        run(src, tmp_path / "a.tif")
    assert read(tmp_path / "a.tif")[1]["GEOSR_RGB_SOURCE"] == "assumed"
    with warnings.catch_warnings():
        warnings.simplefilter("error", RGBAssumedWarning)
        run(src, tmp_path / "b.tif", rgb_bands=(3, 2, 1))
    tags = read(tmp_path / "b.tif")[1]
    assert tags["GEOSR_RGB_BANDS"] == "3,2,1" and tags["GEOSR_RGB_SOURCE"] == "given"
    assert tags["GEOSR_MODEL_BANDS"] == "3,2,1;4"


def test_the_lazy_result_carries_the_band_tags_of_a_written_output(tmp_path):
    src = scene_with(tmp_path, colorinterp=GRAY).source
    options = dict(scale=2, rgb_bands=(3, 2, 1), bands_to_model="1,2,3", captioner="none")
    geosr.upscale_to_file(src, tmp_path / "out.tif", **options)
    tags = read(tmp_path / "out.tif")[1]
    hr = geosr.upscale(src, **options)  # nothing computed: the attributes come from the plan
    assert {k: v for k, v in hr.attrs.items() if k.startswith("GEOSR_")} == {
        k: tags[k] for k in ("GEOSR_MODEL_BANDS", "GEOSR_BICUBIC_BANDS", "GEOSR_RGB_BANDS", "GEOSR_RGB_SOURCE")
    } == {"GEOSR_MODEL_BANDS": "3,2,1", "GEOSR_BICUBIC_BANDS": "4", "GEOSR_RGB_BANDS": "3,2,1", "GEOSR_RGB_SOURCE": "given"}
    with pytest.warns(RGBAssumedWarning):
        assumed = geosr.upscale(src, scale=2, captioner="none")
    assert assumed.attrs["GEOSR_RGB_SOURCE"] == "assumed" and assumed.attrs["GEOSR_MODEL_BANDS"] == "1,2,3;4"
    assert "GEOSR_BICUBIC_BANDS" not in assumed.attrs


def info(*args):
    res = CliRunner().invoke(cli, ["info", *map(str, args)])
    assert res.exit_code == 0, res.output
    return res


def test_info_shows_rgb_and_the_model_groups(tmp_path):
    s2 = sentinel2_stack(tmp_path / "s2.tif")
    facts = json.loads(info(s2, "--json").stdout)
    assert facts["rgb_bands"] == [3, 2, 1] and facts["rgb_source"] == "band descriptions"
    assert facts["model_bands"] == [[3, 2, 1]] + [[b] for b in range(4, 11)] and "rgb_warning" not in facts
    text = info(s2).stdout
    assert "rgb_bands: 3,2,1 (from band descriptions)\n" in text
    assert "model_bands: 3,2,1;4;5;6;7;8;9;10 (an RGB model, --bands-to-model all: one call per ;)\n" in text
    (tmp_path / "w").mkdir()
    wavelengths = scene_with(tmp_path / "w", band_tags={
        b: ("IMAGERY", {"CENTRAL_WAVELENGTH_UM": um}) for b, um in {1: "0.842", 2: "0.665", 3: "0.560", 4: "0.490"}.items()})
    assert json.loads(info(wavelengths.source, "--json").stdout)["rgb_source"] == "wavelengths"


def test_info_says_when_rgb_is_assumed_and_takes_rgb_bands(tmp_path):
    src = scene_with(tmp_path, colorinterp=GRAY).source
    facts = json.loads(info(src, "--json").stdout)
    assert facts["rgb_bands"] == [1, 2, 3] and facts["rgb_source"] == "assumed"
    assert "bands 1,2,3 are taken as R,G,B (choose with --rgb-bands" in facts["rgb_warning"]
    res = info(src)
    assert "rgb_bands: 1,2,3 (assumed: nothing says which bands are red, green, blue)" in res.stdout and "warning: in.tif: no colour" in res.stderr
    facts = json.loads(info(src, "--json", "--rgb-bands", "3,2,1").stdout)
    assert (facts["rgb_bands"], facts["rgb_source"], facts["model_bands"]) == ([3, 2, 1], "given", [[3, 2, 1], [4]])
    res = CliRunner().invoke(cli, ["info", src, "--rgb-bands", "3,2"])
    assert res.exit_code != 0 and "--rgb-bands needs three different band numbers" in res.output
    (tmp_path / "two").mkdir()
    two = json.loads(info(scene_with(tmp_path / "two", count=2).source, "--json").stdout)
    assert two["rgb_bands"] is None and two["model_bands"] == [[1], [2]]


def test_landsat_4_to_7_surface_reflectance_bands_number_blue_green_red_1_2_3(tmp_path):
    """An Earth Engine Landsat 5/7 export: SR_B1..SR_B5, SR_B7 (no B6) and no sensor tag. Before,
    read in Landsat 8 numbering: B4 (NIR), B3 (red), B2 (green) went to the model as R, G, B. Now
    read in Landsat 4-7's, with a warning (a Landsat 8-9 stack without SWIR 1 looks the same)."""
    names = ["SR_B1", "SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B7"]
    scene = scene_with(tmp_path, count=6, descriptions=names)
    with pytest.warns(RGBAssumedWarning, match=r"Landsat 4-7's \(B3 red\), bands 3,2,1 .*--rgb-bands 4,3,2"):
        rgb = plan_bands(scene, None, 3).rgb
    assert rgb.bands == (3, 2, 1) and rgb.source == NUMBERING_ASSUMED[1]
    # the numbering is read from all the raster's bands, not only those a run writes
    with pytest.warns(RGBAssumedWarning, match="Landsat 4-7's"):
        assert plan_bands(scene, (1, 2, 3, 4), 3).rgb.bands == (3, 2, 1)
    assert rgb_from_descriptions(dict(enumerate(["SR_B1", "SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B6", "SR_B7"],
                                                start=1)), {}) == (4, 3, 2)  # Landsat 8-9: B6 is SWIR 1


def test_band_numbers_in_a_numbering_nothing_confirms_are_warned(tmp_path):
    scene = scene_with(tmp_path, count=4, descriptions=["B1", "B2", "B3", "B4"])
    with pytest.warns(RGBAssumedWarning, match=r"Sentinel-2 / Landsat 8-9's \(B4 red\), bands 4,3,2 .*--rgb-bands 3,2,1"):
        rgb = plan_bands(scene, None, 3).rgb
    assert rgb.bands == (4, 3, 2) and rgb.source == NUMBERING_ASSUMED[0]
    (tmp_path / "s2").mkdir()
    tagged = scene_with(tmp_path / "s2", count=4, descriptions=["B1", "B2", "B3", "B4"], tags={"SPACECRAFT_NAME": "Sentinel-2A"})
    assert plan_bands(tagged, None, 3).rgb.source == "band descriptions"  # no warning: the tag says


def test_an_rgbn_pixel_whose_nir_alone_is_nodata_keeps_its_colours(tmp_path):
    """rasterio's dataset_mask takes band 4 of a red-first 4-band raster for alpha: an RGBN scene
    with nodata 0 lost red, green and blue wherever NIR was 0 (water), whole tiles skipped."""
    data = (texture(4, 48, 48, seed=3) * 200 + 20).astype(np.uint8)
    data[3, :, :24] = 0  # NIR at the nodata value over half the scene, the colours data
    data[:, 40:, 40:] = 0  # every band at it: no data
    colours = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.undefined]
    src = write_raster(tmp_path / "rgbn.tif", data, nodata=0, colorinterp=colours, photometric="minisblack")
    with rasterio.open(src) as ds:  # the case: band 4 not alpha, and rasterio's mask is band 4's
        assert ds.colorinterp[3] != ColorInterp.alpha and not (ds.dataset_mask()[:, :24] > 0).any()
    geosr.upscale_to_file(src, tmp_path / "out.tif", scale=2, model="nearest", tile=32, overlap=8, captioner="none")
    with rasterio.open(tmp_path / "out.tif") as out:
        hr = out.read()
        valid = np.any(out.read_masks() > 0, axis=0)
    lr_valid = np.ones((48, 48), bool)
    lr_valid[40:, 40:] = False
    np.testing.assert_array_equal(valid, np.kron(lr_valid, np.ones((2, 2), bool)))
    np.testing.assert_array_equal(hr[:3, :48, :48], np.kron(data[:3, :24, :24], np.ones((2, 2), np.uint8)))
    assert (hr[3][np.kron(data[3] == 0, np.ones((2, 2), bool))] == 0).all()  # NIR's own nodata kept


@pytest.mark.parametrize("nodata", [None, 0])
def test_a_nir_band_gdal_labels_alpha_is_kept_as_data(tmp_path, nodata):
    """Found by review: GDAL labels the fourth band of a 4-band Byte GeoTIFF alpha by default; an
    RGBN scene written so (bands named red, green, blue, nir) lost its NIR from the output, exit 0."""
    data = (texture(4, 48, 48, seed=3) * 200 + 20).astype("uint8")
    path = write_raster(tmp_path / "rgbn.tif", data, nodata=nodata)
    with rasterio.open(path, "r+") as ds:
        for b, name in enumerate(("red", "green", "blue", "nir"), start=1):
            ds.set_band_description(b, name)
    with rasterio.open(path) as ds:
        assert ds.colorinterp[3] == ColorInterp.alpha  # GDAL's default, what the files in the wild have
    with pytest.warns(UserWarning, match="band 4 is labelled alpha .* named 'nir': read as data"):
        geosr.upscale_to_file(path, tmp_path / "out.tif", scale=2, model="bicubic", captioner="none")
    with rasterio.open(tmp_path / "out.tif") as out:
        assert out.count == 4 and out.descriptions == ("red", "green", "blue", "nir")
        assert out.colorinterp[3] != ColorInterp.alpha
        assert (out.dataset_mask() > 0).all()


def test_evaluate_bands_scores_the_data_bands_of_an_rgba_scene(tmp_path):
    """Found by review: evaluate-bands read the alpha band as data and failed (IndexError, exit 1)
    on any RGBA scene; the alpha is the mask, the three colours are scored."""
    data = (texture(4, 96, 96, seed=5) * 200 + 20).astype("uint8")
    data[3] = 255
    data[3, :, :10] = 0
    path = write_raster(tmp_path / "rgba.tif", data)
    result = CliRunner().invoke(cli, ["evaluate-bands", str(path), "--scale", "2", "--model", "bicubic",
                                      "--json", str(tmp_path / "s.json"), "-q"])
    assert result.exit_code == 0, result.output
    scores = json.loads((tmp_path / "s.json").read_text())
    assert [b["band"] for b in scores["bands"]] == [1, 2, 3]


def test_band_options_are_checked_for_classical_models_too(tmp_path):
    """Found by review: --rgb-bands 1,2,9 and --bands-to-model 9 ran with --model bicubic (exit 0)."""
    scene = scene_with(tmp_path, colorinterp=GRAY)
    with pytest.raises(InputError, match="--rgb-bands needs three different bands among 1,2,3,4"):
        plan_bands(scene, None, None, rgb_bands=(1, 2, 9))
    with pytest.raises(InputError, match="--bands-to-model: band 9 is not among the bands written"):
        plan_bands(scene, None, None, bands_to_model=(9,))
    assert plan_bands(scene, None, None, rgb_bands=(3, 2, 1)).groups == (BandGroup((0, 1, 2, 3)),)


def test_an_alpha_band_beside_four_bands_masks_the_output(tmp_path):
    """Found by review: GDAL takes an alpha band for the mask beside one or three bands only; an
    RGBN scene warped with gdalwarp -dstalpha (5 bands) had its alpha dropped and its transparent
    collar's zeros upscaled as data (output all valid) and fitted into the stretch."""
    from geosr.radiometry import fit_stretch

    data = (texture(5, 48, 64, seed=2) * 2000 + 500).astype("uint16")
    data[4] = 65535
    data[:, :, :16] = 0  # the collar, zeros in every band, alpha 0
    path = write_raster(tmp_path / "warped.tif", data, colorinterp=[ColorInterp.red, ColorInterp.green,
                                                                    ColorInterp.blue, ColorInterp.undefined,
                                                                    ColorInterp.alpha])
    with rasterio.open(path) as ds:
        assert ds.mask_flag_enums[0] == [rasterio.enums.MaskFlags.all_valid]  # GDAL's own view
    assert min(fit_stretch(str(path), (1, 2, 3, 4), "uint16").low) >= 500  # the collar is not fitted
    geosr.upscale_to_file(path, tmp_path / "out.tif", scale=2, model="bicubic", captioner="none")
    with rasterio.open(tmp_path / "out.tif") as out:
        assert out.count == 4
        valid = out.dataset_mask() > 0
    assert not valid[:, :32].any() and valid[:, 34:].all()


def test_a_byte_alpha_first_does_not_make_uint16_bands_byte(tmp_path):
    """Found by review: a hand-made VRT with its Byte alpha as band 1 before UInt16 R, G, B took band
    1's type for the scene's: every value read as Byte, written clipped at 255 (exit 0)."""
    from geosr.validation import validate_output

    data = (texture(3, 40, 48, seed=3) * 3000 + 500).astype("uint16")
    rgb = write_raster(tmp_path / "rgb.tif", data, colorinterp=[ColorInterp.red, ColorInterp.green, ColorInterp.blue])
    alpha = np.full((1, 40, 48), 255, "uint8")
    alpha[:, :, :8] = 0
    mask = write_raster(tmp_path / "alpha.tif", alpha, colorinterp=[ColorInterp.gray])
    vrt = write_alpha_first_vrt(tmp_path / "alpha_first.vrt", rgb, mask, ["Red", "Green", "Blue"])
    assert open_scene([str(vrt)]).dtype == "uint16"
    geosr.upscale_to_file(vrt, tmp_path / "out.tif", scale=2, model="bicubic", captioner="none")
    with rasterio.open(tmp_path / "out.tif") as out:
        assert out.dtypes == ("uint16",) * 3
        got, valid = out.read(), out.dataset_mask() > 0
    assert got[:, valid].max() > 3000  # not clipped at 255
    assert not valid[:, :16].any() and valid[:, 18:].all()  # the alpha is the mask
    assert not [e for e in validate_output(str(tmp_path / "out.tif"), source=str(vrt)).errors if "dtype" in e]
    # two such pieces side by side: the mosaic's VRT declared band 1's Byte for every band
    pieces = [str(vrt), str(write_alpha_first_vrt(tmp_path / "east.vrt", rgb, mask, ["Red", "Green", "Blue"], 48))]
    (tmp_path / "work").mkdir()
    assert open_scene(pieces, workdir=tmp_path / "work").dtype == "uint16"
    geosr.upscale_to_file(pieces, tmp_path / "mosaic.tif", scale=2, model="bicubic", captioner="none")
    with rasterio.open(tmp_path / "mosaic.tif") as out:
        assert out.dtypes == ("uint16",) * 3 and out.width == 192
        got, valid = out.read(), out.dataset_mask() > 0
    assert got[:, valid].max() > 3000
    assert not valid[:, 96:112].any() and valid[:, 114:].all()


@pytest.mark.parametrize("colorinterp", [
    [ColorInterp.blue, ColorInterp.green, ColorInterp.red, ColorInterp.nir],
    [ColorInterp.undefined, ColorInterp.blue, ColorInterp.green, ColorInterp.red]])
def test_colour_interpretation_is_kept_on_whichever_bands_it_is(tmp_path, colorinterp):
    """Found by review: R, G, B not on bands 1-3 were written gray (GTiff was thought unable to store
    them): the output lost which bands are red, green, blue, and a rerun on it assumed bands 1-3."""
    data = (texture(4, 40, 48, seed=1) * 3000).astype("uint16")
    path = write_raster(tmp_path / "in.tif", data, colorinterp=colorinterp)
    geosr.upscale_to_file(path, tmp_path / "out.tif", scale=2, model="bicubic", captioner="none")
    with rasterio.open(tmp_path / "out.tif") as out:
        assert list(out.colorinterp) == colorinterp
    again = plan_bands(open_scene([str(tmp_path / "out.tif")]), None, 3)
    assert again.rgb.source == "colour interpretation"
    assert again.rgb.bands == tuple(colorinterp.index(c) + 1 for c in (ColorInterp.red, ColorInterp.green,
                                                                         ColorInterp.blue))


@pytest.mark.parametrize("names", [["b1", "b2", "b3"], ["B1", "B2", "B3"]])
def test_unconfirmed_band_numbers_do_not_overrule_the_colour_interpretation(tmp_path, names):
    """Found by a review of the band-role change: Earth Engine names any image's bands b1, b2, b3;
    read in the Sentinel-2 numbering b1 is coastal, and an R, G, B file lost its RGB group."""
    scene = scene_with(tmp_path, count=3, dtype="uint8", descriptions=names)
    plan = plan_bands(scene, None, 3)
    assert plan.rgb is not None and plan.rgb.bands == (1, 2, 3) and plan.rgb.source == "colour interpretation"


def test_info_says_why_no_band_is_red_green_blue(tmp_path):
    scene = scene_with(tmp_path, colorinterp=[ColorInterp.rededge] * 3 + [ColorInterp.nir])
    res = CliRunner().invoke(cli, ["info", scene.source])
    assert res.exit_code == 0 and "place them outside red, green and blue" in res.output, res.output


def test_overlapping_rgbn_pieces_with_alpha_keep_each_other_s_pixels(tmp_path):
    """Found by review: two gdalwarp -dstalpha RGBN pieces (5 bands: GDAL calls every pixel valid)
    mosaicked without masks - the later piece's transparent collar painted zeros and alpha 0 over
    the earlier piece's valid pixels: a masked hole where both had data."""
    west = (texture(5, 40, 64, seed=4) * 2000 + 500).astype("uint16")
    west[4] = 65535
    east = (texture(5, 40, 64, seed=5) * 2000 + 500).astype("uint16")
    east[4] = 65535
    east[:, :, :16] = 0  # east's collar, over west's columns 32-47
    interps = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.undefined, ColorInterp.alpha]
    a = write_raster(tmp_path / "west.tif", west, colorinterp=interps)
    b = write_raster(tmp_path / "east.tif", east, colorinterp=interps,
                     transform=rasterio.Affine(2.0, 0.0, 500000.0 + 2 * 32, 0.0, -2.0, 4100000.0))
    geosr.upscale_to_file([a, b], tmp_path / "out.tif", scale=2, model="nearest", captioner="none")
    with rasterio.open(tmp_path / "out.tif") as out:
        assert out.count == 4 and out.width == 2 * 96
        got, valid = out.read(), out.dataset_mask() > 0
    assert valid.all()
    np.testing.assert_array_equal(got[:, ::2, 64:96:2], west[:4, :, 32:48])  # west's, not east's collar
    np.testing.assert_array_equal(got[:, ::2, 96::2], east[:4, :, 16:])


def test_mosaic_pieces_of_rgbn_with_a_nir_gdal_labels_alpha_keep_its_zeros(tmp_path):
    """Found by review: in a mosaic, a 4-band Byte RGBN piece whose NIR GDAL labels alpha (named nir:
    data, as a single file reads it) still lent GDAL's alpha mask to the mosaic - every pixel where
    the NIR is 0 (water) came out no-data."""
    pieces = []
    for i in range(2):
        data = (texture(4, 40, 48, seed=10 + i) * 200 + 20).astype("uint8")
        data[3, 10:20, 10:30] = 0  # dark water in the NIR
        path = write_raster(tmp_path / f"p{i}.tif", data,
                            transform=rasterio.Affine(2.0, 0.0, 500000.0 + 2 * 48 * i, 0.0, -2.0, 4100000.0))
        with rasterio.open(path, "r+") as ds:
            for b, name in enumerate(("red", "green", "blue", "nir"), start=1):
                ds.set_band_description(b, name)
        with rasterio.open(path) as ds:
            assert ds.colorinterp[3] == ColorInterp.alpha
        pieces.append(path)
    with pytest.warns(UserWarning, match="named 'nir': read as data"):
        geosr.upscale_to_file(pieces, tmp_path / "out.tif", scale=2, model="nearest", captioner="none")
    with rasterio.open(tmp_path / "out.tif") as out:
        assert out.count == 4 and (out.dataset_mask() > 0).all()
        assert (out.read(4)[20:40, 20:60] == 0).all() and (out.read(4)[20:40, 116:156] == 0).all()


def test_mosaic_pieces_that_disagree_on_the_alpha_band_are_refused(tmp_path):
    """Found by review: one RGBN piece's band 5 alpha (gdalwarp -dstalpha), another's band 5 undefined
    (the same product copied by a script): the second's collar counted valid, or the first's alpha
    was upscaled as a fifth data band, depending on their order (exit 0)."""
    from geosr.errors import GridMismatchError

    data = (texture(5, 40, 48, seed=4) * 2000 + 500).astype("uint16")
    data[4] = 65535
    pieces = [write_raster(tmp_path / f"p{i}.tif", data, colorinterp=[
        ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.undefined,
        ColorInterp.alpha if i == 0 else ColorInterp.undefined],
        transform=rasterio.Affine(2.0, 0.0, 500000.0 + 2 * 48 * i, 0.0, -2.0, 4100000.0)) for i in range(2)]
    with pytest.raises(GridMismatchError, match=r"disagree on which band is alpha.*p0.tif band 5, .*p1.tif none; "
                                                r".*gdal_edit.py -colorinterp_5 alpha"):
        geosr.upscale_to_file(pieces, tmp_path / "out.tif", scale=2, model="nearest", captioner="none")
    assert not (tmp_path / "out.tif").exists()


def test_an_alpha_that_holds_the_nodata_value_too_does_not_make_the_collar_valid(tmp_path):
    """Found by review: gdalwarp -dstalpha -dstnodata 65535 gives the alpha band the nodata too; its
    0 in the collar is not that value, so the union of every band's nodata mask counted each collar
    pixel valid (tiles of collar alone were upscaled, not skipped) - alone and in a mosaic."""
    from geosr.reading import dataset_valid

    data = (texture(5, 40, 48, seed=7) * 2000 + 500).astype("uint16")
    data[4] = 65535
    data[:4, :, :16], data[4, :, :16] = 65535, 0  # the collar: nodata in the data bands, alpha 0
    interps = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.undefined, ColorInterp.alpha]
    pieces = [write_raster(tmp_path / f"p{i}.tif", data, nodata=65535, colorinterp=interps,
                           transform=rasterio.Affine(2.0, 0.0, 500000.0 + 2 * 48 * i, 0.0, -2.0, 4100000.0))
              for i in range(2)]
    with rasterio.open(pieces[0]) as ds:
        valid = dataset_valid(ds)
    assert not valid[:, :16].any() and valid[:, 16:].all()
    geosr.upscale_to_file(pieces, tmp_path / "out.tif", scale=2, model="nearest", captioner="none")
    with rasterio.open(tmp_path / "out.tif") as out:
        assert out.count == 4 and out.nodata == 65535
        valid = out.dataset_mask() > 0
    assert not valid[:, :32].any() and valid[:, 32:96].all() and not valid[:, 96:128].any() and valid[:, 128:].all()


def test_mosaic_pieces_that_differ_only_in_naming_their_nir_are_one_product(tmp_path):
    """Found by a review of the alpha refusal: two RGBN Byte tiles whose NIR GDAL labels alpha, one
    with band names (red ... nir), one without (re-exported by a script): refused as disagreeing on
    the alpha. The first piece that names a band names it for the mosaic; the unnamed tile's NIR is
    read as data too, zeros kept."""
    pieces = []
    for i in range(2):
        data = (texture(4, 40, 48, seed=20 + i) * 200 + 20).astype("uint8")
        data[3, 10:20, 10:30] = 0
        path = write_raster(tmp_path / f"p{i}.tif", data,
                            transform=rasterio.Affine(2.0, 0.0, 500000.0 + 2 * 48 * i, 0.0, -2.0, 4100000.0))
        if i == 0:
            with rasterio.open(path, "r+") as ds:
                for b, name in enumerate(("red", "green", "blue", "nir"), start=1):
                    ds.set_band_description(b, name)
        pieces.append(path)
    with pytest.warns(UserWarning, match="named 'nir': read as data"):
        geosr.upscale_to_file(pieces, tmp_path / "out.tif", scale=2, model="nearest", captioner="none")
    with rasterio.open(tmp_path / "out.tif") as out:
        assert out.count == 4 and out.descriptions == ("red", "green", "blue", "nir")
        assert (out.dataset_mask() > 0).all() and (out.read(4)[20:40, 116:156] == 0).all()
