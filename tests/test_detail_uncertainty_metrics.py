"""geosr.detail_metrics and geosr.uncertainty_metrics: each figure on inputs whose answer is known."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from geosr.degradations import degrade
from geosr.detail_metrics import (
    consistency_error,
    hf_spectral_error,
    radial_power_spectrum,
)
from geosr.errors import InputError
from geosr.uncertainty_metrics import (
    band_rms,
    block_rmse,
    block_spearman,
    calibration_bins,
    calibration_error,
    gradient_baseline,
)


@pytest.fixture(scope="module")
def aerial() -> np.ndarray:
    """A real 8-bit aerial crop (UC Merced harbor) as ``H x W x 3`` float in [0, 1], 128 px a side."""
    with Image.open(Path(__file__).parent / "data" / "val_crops" / "harbor57.png") as img:
        rgb = np.asarray(img.convert("RGB"), np.float64) / 255.0
    return rgb[:128, :128]


# -------------------------------------------------------------------- detail metrics


def test_white_noise_has_a_flat_spectrum():
    noise = np.random.default_rng(0).standard_normal((128, 128))
    centres, power = radial_power_spectrum(noise, 32)
    upper = power[centres > 0.25]
    assert np.all(np.isfinite(power)) and np.ptp(np.log10(upper)) < 0.3


def test_hf_spectral_error_zero_for_identical_and_grows_with_blur(aerial):
    assert hf_spectral_error(aerial, aerial) == 0.0
    mild = ndimage.gaussian_filter(aerial, sigma=(0.7, 0.7, 0))
    strong = ndimage.gaussian_filter(aerial, sigma=(2.0, 2.0, 0))
    e_mild, e_strong = hf_spectral_error(mild, aerial, border=4), hf_spectral_error(strong, aerial, border=4)
    assert 0 < e_mild < e_strong
    # a Gaussian of sigma 2 px takes the top half of the band down by several decades
    assert e_strong > 2.0
    # too much detail counts as well as too little: the error is symmetric
    assert hf_spectral_error(aerial, mild, border=4) == pytest.approx(e_mild)


def test_hf_spectral_error_units_cancel_and_shapes(aerial):
    dn = np.round(aerial * 255).astype(np.uint8)
    blurred = ndimage.gaussian_filter(aerial, sigma=(1.0, 1.0, 0))
    assert hf_spectral_error(blurred * 255, aerial * 255) == pytest.approx(hf_spectral_error(blurred, aerial))
    assert hf_spectral_error(dn[..., 0], dn[..., 0]) == 0.0  # single band, uint8
    with pytest.raises(InputError, match="shape"):
        hf_spectral_error(aerial, aerial[:-1])
    with pytest.raises(InputError, match="after shaving"):
        hf_spectral_error(aerial, aerial, border=64)


@pytest.mark.parametrize("scale", [2, 4])
def test_consistency_error_of_the_true_hr_is_zero_and_of_a_shifted_one_is_not(aerial, scale):
    lr, params = degrade(aerial, scale, "clean", seed=0)
    assert params.protocol == "clean"
    assert consistency_error(aerial, lr, scale) < 0.05
    shifted = np.roll(aerial, 1, axis=1)  # one HR px to the right
    assert consistency_error(shifted, lr, scale) > 1.0


def test_consistency_error_is_in_dn_for_uint8_and_float(aerial):
    lr, _ = degrade(aerial, 4, "clean", seed=0)
    brighter = np.clip(aerial + 2 / 255, 0, 1)  # +2 DN nearly everywhere
    assert consistency_error(brighter, lr, 4) == pytest.approx(2.0, abs=0.1)
    lr_dn = np.round(lr * 255).astype(np.uint8)
    out_dn = np.round(aerial * 255).astype(np.uint8)
    # 8-bit quantisation of both sides leaves a fraction of a DN
    assert 0 < consistency_error(out_dn, lr_dn, 4) < 0.6


def test_consistency_error_uses_the_clean_downsampling_of_degradations(aerial):
    # the same figure by hand: torch's anti-aliased bicubic, 1 LR px shaved
    lr = np.random.default_rng(1).random((32, 32, 3))
    down = torch.nn.functional.interpolate(
        torch.from_numpy(aerial.transpose(2, 0, 1)).float()[None], size=(32, 32), mode="bicubic",
        align_corners=False, antialias=True,
    )[0].clamp(0, 1).numpy().transpose(1, 2, 0)
    expected = 255 * math.sqrt(np.mean((down - lr)[1:-1, 1:-1] ** 2))
    assert consistency_error(aerial, lr, 4) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(InputError, match="upscaled x4"):
        consistency_error(aerial[:-4], lr, 4)


# --------------------------------------------------------------- uncertainty metrics


def test_calibration_ratio_is_one_when_errors_match_the_prediction_and_two_when_double():
    rng = np.random.default_rng(0)
    sigma = rng.uniform(0.5, 20.0, (400, 500))  # a known RMSE that varies per pixel
    noise = rng.standard_normal(sigma.shape)
    bins = calibration_bins(sigma, sigma * noise)
    assert len(bins) == 10 and sum(b["count"] for b in bins) == sigma.size
    assert all(b["sigma_min"] <= b["sigma_max"] for b in bins)
    assert [b["predicted"] for b in bins] == sorted(b["predicted"] for b in bins)
    for b in bins:
        assert b["ratio"] == pytest.approx(1.0, abs=0.02)
    assert calibration_error(bins) < 0.02
    doubled = calibration_bins(sigma, 2 * sigma * noise)
    for b in doubled:
        assert b["ratio"] == pytest.approx(2.0, abs=0.04)
    assert calibration_error(doubled) == pytest.approx(1.0, abs=0.04)


def test_calibration_pools_several_maps_and_handles_ties():
    flat = np.full((10, 10), 3.0)  # every pixel ties: equal counts still fill every bin
    bins = calibration_bins([flat, flat], [np.full((10, 10), 3.0), np.full((10, 10), -3.0)], bins=4)
    assert [b["count"] for b in bins] == [50] * 4 and calibration_error(bins) == pytest.approx(0.0)
    zero = calibration_bins(np.zeros((4, 4)), np.r_[np.zeros(8), np.ones(8)].reshape(4, 4), bins=2)
    assert [b["ratio"] for b in zero] == [1.0, math.inf]
    with pytest.raises(InputError, match="finite pixels"):
        calibration_bins(np.ones((3, 3)), np.ones((3, 3)))
    with pytest.raises(InputError, match="shape"):
        calibration_bins(np.ones((4, 4)), np.ones((4, 5)))


def test_block_spearman_one_for_matching_maps_and_near_zero_for_independent_ones():
    rng = np.random.default_rng(0)
    smooth = ndimage.gaussian_filter(rng.random((256, 256)), 8)
    sigma = 1 + 19 * (smooth - smooth.min()) / np.ptp(smooth)  # a predicted RMSE of 1 to 20
    err = sigma * rng.standard_normal(sigma.shape)
    # 64 px a block average out the single-pixel draws: the ranking is the map's
    assert block_spearman(sigma, err, block=64) > 0.9
    assert block_spearman(sigma, sigma) == pytest.approx(1.0)
    assert block_spearman(sigma, -sigma) == pytest.approx(1.0)  # only err^2 counts
    unrelated = rng.standard_normal((256, 256))
    assert abs(block_spearman(sigma, unrelated)) < 0.1  # 1024 blocks: chance is ~0.03
    assert math.isnan(block_spearman(np.ones((16, 16)), unrelated[:16, :16]))
    with pytest.raises(InputError, match="2 whole"):
        block_spearman(np.ones((8, 12)), np.ones((8, 12)))


def test_block_spearman_pools_the_blocks_of_several_images():
    rng = np.random.default_rng(1)
    maps = [rng.random((16, 24)) + i for i in range(3)]  # 6 blocks each, each image a level above
    assert block_spearman(maps, maps) == pytest.approx(1.0)
    # the ranking is over all 18 blocks: the images' levels alone order most of them
    errs = [np.full_like(m, float(i)) for i, m in enumerate(maps)]
    assert block_spearman(maps, errs) > 0.8
    assert block_rmse(np.full((17, 9), 2.0)).shape == (2, 1)
    with pytest.raises(InputError, match="map"):
        block_spearman(maps, errs[:2])


def test_gradient_baseline_and_band_rms():
    ramp = np.broadcast_to(np.linspace(0, 3, 4)[None, :, None], (5, 4, 2))  # slope 1 along x
    np.testing.assert_allclose(gradient_baseline(ramp), np.ones((5, 4)))
    assert gradient_baseline(np.zeros((6, 6))).shape == (6, 6)
    x = np.stack([np.full((2, 2), 3.0), np.full((2, 2), 4.0)], axis=2)
    np.testing.assert_allclose(band_rms(x), np.full((2, 2), math.sqrt(12.5)))
    # an edge is where an upscaler errs: the baseline ranks an edge image's error blocks
    rng = np.random.default_rng(2)
    edges = (rng.random((16, 16)) > 0.5).repeat(8, 0).repeat(8, 1).astype(float)[..., None]
    blurred = ndimage.gaussian_filter(edges, sigma=(2, 2, 0))
    err = band_rms(blurred - edges)
    assert block_spearman(gradient_baseline(blurred), err) > 0.5
