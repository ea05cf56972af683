"""Every band through the model (issue 29): which bands are R, G, B, how the others are grouped,
what the output says of it, and runs of 1-, 4- and 10-band scenes."""

from __future__ import annotations

import warnings

import pytest
import rasterio
from rasterio.enums import ColorInterp

from geosr.band_roles import RGBAssumedWarning, parse_bands_to_model, rgb_from_descriptions, rgb_from_wavelengths
from geosr.errors import InputError
from geosr.output_meta import band_tags
from geosr.scene import open_scene
from geosr.scene_plan import BandGroup, plan_bands
from multispectral import RGBN, sentinel2_stack
from rasters import texture, write_raster

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


def test_undefined_bands_are_assumed_rgb_with_one_warning(tmp_path):
    scene = scene_with(tmp_path, colorinterp=GRAY)
    with pytest.warns(RGBAssumedWarning, match=r"bands 1,2,3 are taken as R,G,B \(choose with --rgb-bands, e.g. "
                                                 r"--rgb-bands 3,2,1\)") as caught:
        plan = plan_bands(scene, None, 3)
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    assert plan.rgb.source == "assumed" and plan.groups[0] == BandGroup((0, 1, 2))
    assert band_tags(plan) == {"GEOSR_MODEL_BANDS": "1,2,3;4", "GEOSR_RGB_BANDS": "1,2,3", "GEOSR_RGB_SOURCE": "assumed"}


def test_given_rgb_bands(tmp_path):
    scene = scene_with(tmp_path, colorinterp=GRAY)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan = plan_bands(scene, None, 3, rgb_bands=(3, 2, 1))
    assert plan.rgb.source == "given" and plan.groups[0] == BandGroup((2, 1, 0))
    for bad in [(1, 2), (1, 1, 2), (1, 2, 9)]:
        with pytest.raises(InputError, match="--rgb-bands needs three different bands"):
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
