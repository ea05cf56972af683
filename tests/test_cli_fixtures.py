"""The CLI on the small real fixtures, checked as a GIS user would check the output."""

import json

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.enums import ColorInterp
from rio_cogeo.cogeo import cog_validate

from geosr.cli import cli


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result


@pytest.mark.parametrize("name,scale", [("RGB.byte.tif", 2), ("rgbn_suba.tif", 4)])
def test_upscale_real_fixture_is_valid_cog_on_refined_grid(tmp_path, data_dir, name, scale):
    src = data_dir / name
    out = tmp_path / "out.tif"
    res = invoke("upscale", src, out, "--scale", scale, "--tile", 128, "--overlap", 16, "-q")
    assert res.exit_code == 0, res.output
    valid, errors, _ = cog_validate(str(out), quiet=True)
    assert valid, errors
    assert not (tmp_path / "out.tif.aux.xml").exists()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # temp folder gone
    with rasterio.open(src) as a, rasterio.open(out) as b:
        assert b.crs == a.crs
        assert (b.width, b.height, b.count) == (a.width * scale, a.height * scale, a.count)
        assert b.transform.almost_equals(a.transform @ rasterio.Affine.scale(1 / scale))
        assert b.colorinterp[:3] == (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
        assert b.nodata == a.nodata == 0
        assert b.overviews(1)
        assert b.tags()["GEOSR_SCALE"] == str(scale)
        assert "STATISTICS_MEAN" in b.tags(1)
        # the nodata collar is exactly the refined input collar
        lr_valid = a.dataset_mask() > 0
        np.testing.assert_array_equal(b.dataset_mask() > 0, np.kron(lr_valid, np.ones((scale, scale), bool)))
        # every band is upscaled, none dropped; NIR (band 4) too, and radiometry is kept:
        # x4 runs the shipped diffusion model (it denoises, so allow a few DN of mean shift)
        hr = b.read(masked=True)
        lr = a.read(masked=True)
        for k in range(a.count):
            assert abs(float(hr[k].mean()) - float(lr[k].mean())) < 4.0
    fc = json.loads((tmp_path / "out.captions.geojson").read_text())
    assert fc["crs"]["properties"]["name"].endswith("32618")
    assert len(fc["features"]) >= 1 and {"tile", "caption", "row", "col"} <= set(fc["features"][0]["properties"])


def test_info_and_validate(tmp_path, data_dir):
    res = invoke("info", data_dir / "rgbn_suba.tif", "--json")
    facts = json.loads(res.output)
    assert facts["size"] == [276, 212] and facts["nodata"] == 0 and facts["crs"] == "EPSG:32618"
    assert facts["tile_plan"]["tiles"] == 2
    out = tmp_path / "o.tif"
    invoke("upscale", data_dir / "rgbn_suba.tif", out, "--scale", 2, "-q")
    res = invoke("validate", out, "--source", data_dir / "rgbn_suba.tif")
    assert res.exit_code == 0 and "OK" in res.output
    # validating against the wrong source fails with a reason
    res = invoke("validate", out, "--source", data_dir / "RGB.byte.tif")
    assert res.exit_code == 1 and "ERROR" in res.output


def test_help_has_examples():
    res = invoke("upscale", "--help")
    assert "Examples" in res.output and "--scale" in res.output and "--aoi" in res.output


def test_info_checks_the_tile_plan_as_a_run_does(data_dir):
    """Found by review: --tile 4 was a ValueError traceback (exit 1), --overlap 300 a plan that
    upscale refuses."""
    for option, value, said in (("--tile", 4, "--tile must be at least 8 px"), ("--overlap", 300, "--overlap must be in")):
        res = CliRunner().invoke(cli, ["info", str(data_dir / "rgbn_suba.tif"), option, str(value)])
        assert res.exit_code == 3 and said in res.output, res.output


def test_a_split_output_with_a_bad_blocksize_is_a_clear_error(tmp_path, data_dir):
    """Found by review: --split with --co BLOCKSIZE=abc was an unexpected ValueError (exit 1)."""
    res = CliRunner().invoke(cli, ["upscale", str(data_dir / "rgbn_suba.tif"), str(tmp_path / "out"), "--split", "1024",
                                   "--co", "BLOCKSIZE=abc", "--model", "bicubic", "-q"])
    assert res.exit_code == 3 and "BLOCKSIZE takes an integer" in res.output, res.output
    assert not (tmp_path / "out").exists()


def test_info_and_caption_say_warnings_in_one_line_and_caption_q_is_quiet(tmp_path):
    """Found by review: info and caption printed Python's "file:line: Category: message" and the
    source line of a warning, and caption -q printed them too (-q: errors only)."""
    from tests.rasters import uint8_scene

    src = uint8_scene(tmp_path / "nogeo.tif", 40, 40, crs=None, transform=None)
    res = CliRunner().invoke(cli, ["info", str(src)])
    assert res.exit_code == 0 and "warning: " in res.stderr and ".py:" not in res.stderr, res.stderr
    out = tmp_path / "c.geojson"
    res = CliRunner().invoke(cli, ["caption", str(src), "--out", str(out), "-q"])
    assert res.exit_code == 0 and res.stderr == "", res.stderr
    res = CliRunner().invoke(cli, ["caption", str(src), "--out", str(out), "--overwrite"])
    assert "warning: " in res.stderr and ".py:" not in res.stderr, res.stderr
