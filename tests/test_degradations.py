"""Degradation protocols: reproducibility, numpy == torch, shapes, ranges, captions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from geosr.captioning.vocabulary import format_caption
from geosr.errors import InputError
from geosr.degradations import (
    DegradationParams,
    apply_degradation,
    degrade,
    describe,
    gaussian_kernel,
    mixture_weights,
    sample_params,
)


DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def hr() -> np.ndarray:
    with rasterio.open(DATA / "neon_harv_plot.tif") as ds:
        return ds.read(window=((100, 166), (120, 186))).transpose(1, 2, 0).astype(np.float32) / 255.0


@pytest.mark.parametrize("protocol", ["iso", "aniso"])
def test_seeded_reproducible(hr, protocol):
    lr1, p1 = degrade(hr, 4, protocol, seed=7, jpeg_prob=0.5)
    lr2, p2 = degrade(hr, 4, protocol, seed=7, jpeg_prob=0.5)
    assert p1 == p2
    np.testing.assert_array_equal(lr1, lr2)
    _, p3 = degrade(hr, 4, protocol, seed=8)
    assert p3 != p1


@pytest.mark.parametrize("jpeg", [None, 60])
def test_numpy_and_torch_agree(hr, jpeg):
    params = DegradationParams(2, 2.5, 1.0, 30.0, 10.0, jpeg, "aniso")
    lr_np = apply_degradation(hr, params, np.random.default_rng(3))
    batch = torch.from_numpy(hr.transpose(2, 0, 1).copy())[None]
    lr_t = apply_degradation(batch, params, np.random.default_rng(3))
    assert isinstance(lr_t, torch.Tensor) and lr_t.shape == (1, 3, 33, 33)
    np.testing.assert_allclose(lr_t[0].numpy().transpose(1, 2, 0), lr_np, atol=1e-6 if jpeg is None else 1 / 255)


def test_shapes_clipping_and_batch(hr):
    params = DegradationParams(3, 1.5, 1.5, 0.0, 25.0, None, "aniso")
    lr = apply_degradation(hr, params, np.random.default_rng(0))
    assert lr.shape == (66 // 3, 66 // 3, 3) and lr.dtype == np.float32
    assert lr.min() >= 0.0 and lr.max() <= 1.0
    batch = torch.from_numpy(np.stack([hr, hr[::-1]]).transpose(0, 3, 1, 2).copy()).double()
    out = apply_degradation(batch, params, np.random.default_rng(0))
    assert out.shape == (2, 3, 22, 22) and out.dtype == torch.float64


def test_blur_without_noise_keeps_the_mean(hr):
    params = DegradationParams(1, 2.0, 2.0, 0.0, 0.0, None, "iso")
    lr = apply_degradation(hr, params)
    assert abs(lr.mean() - hr.mean()) < 2e-3
    assert np.abs(np.diff(lr, axis=1)).mean() < np.abs(np.diff(hr, axis=1)).mean()


def test_kernel_orientation():
    kernel = gaussian_kernel(3.0, 1.0, 90.0)  # major axis vertical
    r = kernel.shape[0] // 2
    assert kernel.sum() == pytest.approx(1.0)
    assert kernel[0, r] > kernel[r, 0]


@pytest.mark.parametrize("scale,hi", [(2, 2.0), (3, 3.0), (4, 4.0)])
def test_iso_ranges(scale, hi):
    rng = np.random.default_rng(0)
    draws = [sample_params("iso", scale, rng) for _ in range(200)]
    sigmas = np.array([p.blur_sigma for p in draws])
    assert sigmas.min() >= 0.2 and sigmas.max() <= hi
    assert all(p.noise_sigma == 0 and not p.anisotropic and p.jpeg_quality is None for p in draws)


def test_aniso_ranges():
    rng = np.random.default_rng(0)
    draws = [sample_params("aniso", 4, rng, jpeg_prob=1.0) for _ in range(200)]
    assert min(min(p.blur_sigma_x, p.blur_sigma_y) for p in draws) >= 0.6
    assert max(max(p.blur_sigma_x, p.blur_sigma_y) for p in draws) <= 5.0
    assert all(0 <= p.noise_sigma <= 25 and 30 <= p.jpeg_quality <= 95 for p in draws)
    assert all(0 <= p.blur_angle_deg < 180 for p in draws)


def test_mixture_shares():
    rng = np.random.default_rng(0)
    default = [sample_params("mixed", 4, rng).protocol for _ in range(2000)]
    assert 0.45 < default.count("aniso") / 2000 < 0.55
    rng = np.random.default_rng(0)
    mix = {"clean": 3, "iso": 1}  # shares are normalised; a missing protocol is never drawn
    draws = [sample_params("mixed", 4, rng, mix=mix).protocol for _ in range(2000)]
    assert "aniso" not in draws and 0.7 < draws.count("clean") / 2000 < 0.8
    assert mixture_weights(mix) == {"clean": 0.75, "iso": 0.25, "aniso": 0.0}
    for bad in ({"gaussian": 1.0}, {"clean": -1.0, "iso": 2.0}, {"clean": 0.0}):
        with pytest.raises(InputError):
            mixture_weights(bad)


def test_bad_inputs(hr):
    with pytest.raises(InputError):
        sample_params("gaussian", 4, np.random.default_rng(0))
    with pytest.raises(InputError):
        DegradationParams(0, 1.0, 1.0, 0.0, 0.0, None, "iso")
    with pytest.raises(InputError):
        apply_degradation(hr[..., 0], DegradationParams(2, 1.0, 1.0, 0.0, 0.0, None, "iso"))


def test_describe_grammar():
    aniso = DegradationParams(4, 12.0, 4.0, 30.0, 8.2, None, "aniso")
    assert describe(aniso) == "strong anisotropic blur sigma 1.7 px along 30 deg; moderate noise sigma 8; no jpeg"
    iso = DegradationParams(2, 1.0, 1.0, 0.0, 0.0, 47, "iso")
    assert describe(iso) == "mild isotropic blur sigma 0.5 px; no noise; jpeg quality 50"
    # the major axis decides the orientation, whichever of x / y it is
    swapped = DegradationParams(4, 4.0, 12.0, 120.0, 8.2, None, "aniso")
    assert describe(swapped) == describe(aniso)
    assert describe(aniso) == format_caption(aniso.blur_sigma / 4, True, 30.0, 8.2, None)
