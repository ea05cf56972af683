"""geosr evaluate-bands: per-band PSNR, normalised differences (NDVI) and edge alignment of a
degraded multi-band raster run through the engine (issue 29)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from geosr.band_evaluation import edge_offset, normalised_difference, write_degraded_bands
from geosr.cli import cli
from geosr.errors import InputError
from multispectral import RGBN, SENTINEL2_BANDS, sentinel2_stack
from rasters import texture, write_alpha_first_vrt, write_raster


def test_ndvi_from_the_model_is_closer_to_the_hr_than_bicubic_s_on_the_rgbn_fixture(tmp_path):
    res = CliRunner().invoke(cli, ["evaluate-bands", str(RGBN), "--scale", "2", "--ndvi", "4,1",
                                   "--json", str(tmp_path / "r.json"), "--keep", str(tmp_path / "runs"), "-q"])
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "r.json").read_text())
    assert [b["gain"] > 0.5 for b in result["bands"]] == [True] * 4  # NIR too
    ndvi = result["indices"][0]
    assert ndvi["bands"] == [4, 1] and ndvi["rmse"]["model"] < 0.95 * ndvi["rmse"]["bicubic"]
    assert result["metadata_kept"] and result["run"]["tags"]["GEOSR_MODEL_BANDS"] == "1,2,3;4"
    for b in result["bands"]:  # edges stay where the HR has them, relative to band 1
        assert np.allclose(b["edge_offset"]["model"], b["edge_offset"]["hr"], atol=0.1)
    assert "bands 4,1" in res.output and "kept: yes" in res.output
    assert {p.name for p in (tmp_path / "runs").iterdir()} >= {"lr.tif", "model.tif", "bicubic.tif"}


def test_the_lr_of_a_sentinel2_stack_keeps_its_band_metadata_and_no_data(tmp_path):
    hr = sentinel2_stack(tmp_path / "s2.tif")
    lr = write_degraded_bands(hr, tmp_path / "lr.tif", 2, "clean")
    with rasterio.open(hr) as h, rasterio.open(lr) as low:
        assert (low.width, low.height) == (h.width // 2, h.height // 2) and low.dtypes == h.dtypes
        assert low.descriptions == tuple(SENTINEL2_BANDS) and low.scales == h.scales and low.offsets == h.offsets
        assert low.nodata == 0 and low.tags()["SPACECRAFT_NAME"] == "Sentinel-2B"
        valid = h.dataset_mask()[: 2 * low.height, : 2 * low.width] > 0
        expected = valid.reshape(low.height, 2, low.width, 2).all(axis=(1, 3))
        np.testing.assert_array_equal(low.dataset_mask() > 0, expected)
        data = low.read()
    # uint16 reflectance kept its levels: the degradation's [0, 1] range is each band's own
    assert data[:, expected].min() >= 1000 and data.max() > 5000


def test_edge_offset_finds_a_shift_to_a_fraction_of_a_pixel():
    img = texture(1, 96, 96, seed=3)[0]
    assert np.allclose(edge_offset(img, img), 0.0)
    dy, dx = edge_offset(np.roll(img, (2, -1), axis=(0, 1)), img)
    assert round(dy) == 2 and round(dx) == -1


def test_normalised_difference():
    nd = normalised_difference(np.array([0.5, 0.0, 0.2]), np.array([0.1, 0.0, 0.2]))
    assert nd[0] == pytest.approx(0.4 / 0.6) and np.isnan(nd[1]) and nd[2] == 0


def test_an_index_of_a_band_that_does_not_exist_is_refused(tmp_path):
    from geosr.band_evaluation import evaluate_bands

    with pytest.raises(InputError, match="--ndvi takes two of the bands 1,2,3,4"):
        evaluate_bands(RGBN, 2, indices=[(5, 1)], workdir=tmp_path)


def test_an_alpha_first_rgbn_is_scored_in_its_own_band_numbers(tmp_path):
    """Found by review: the LR of an alpha-first VRT (Byte alpha, UInt16 R, G, B, NIR) was written in
    band 1's type (clipped at 255), and its --ndvi / --rgb-bands numbers and the report's band numbers
    were positions among the data bands, not the file's (5,2 was refused, 4,1 scored NIR on blue)."""
    from geosr.band_evaluation import evaluate_bands

    data = (texture(4, 96, 96, seed=5) * 3000 + 500).astype("uint16")
    data[3] = 4000 - data[0]  # NIR: the red band's complement
    rgbn = write_raster(tmp_path / "rgbn.tif", data)
    alpha = write_raster(tmp_path / "alpha.tif", np.full((1, 96, 96), 255, "uint8"))
    vrt = write_alpha_first_vrt(tmp_path / "argbn.vrt", rgbn, alpha, ["Red", "Green", "Blue", "Undefined"])
    lr = write_degraded_bands(vrt, tmp_path / "lr.tif", 2, "clean")
    with rasterio.open(lr) as low:
        assert low.dtypes == ("uint16",) * 4 and low.read().max() > 3000
    with pytest.raises(InputError, match="--ndvi takes two of the bands 2,3,4,5"):
        evaluate_bands(vrt, 2, indices=[(4, 1)], model="bicubic", workdir=tmp_path / "refused")
    with pytest.raises(InputError, match="--rgb-bands takes bands among 2,3,4,5, got 1,2,3"):
        evaluate_bands(vrt, 2, indices=[(5, 2)], model="bicubic", rgb_bands=(1, 2, 3), workdir=tmp_path / "refused")
    result = evaluate_bands(vrt, 2, indices=[(5, 2)], model="bicubic", rgb_bands=(2, 3, 4), workdir=tmp_path / "run")
    assert [b["band"] for b in result["bands"]] == [2, 3, 4, 5]
    assert result["settings"]["rgb_bands"] == (2, 3, 4)
    ndvi = result["indices"][0]
    assert ndvi["bands"] == [5, 2] and ndvi["rmse"]["model"] == pytest.approx(ndvi["rmse"]["bicubic"])
    with rasterio.open(tmp_path / "run" / "lr.tif") as low:  # the file's band 5, NIR, is the LR's fourth
        assert low.read(4).mean() == pytest.approx(data[3].mean(), rel=0.02)
