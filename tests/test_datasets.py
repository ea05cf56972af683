"""SRPairDataset: determinism, nodata windows rejected, captions, multi-worker loading."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.transform import from_origin

from geosr.errors import InputError
from geosr.training.datasets import SRPairDataset


@pytest.fixture
def png_dir(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "pngs"
    folder.mkdir()
    for k in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"img{k}.png")
    return folder


def _same(a, b):
    return torch.equal(a["hr"], b["hr"]) and torch.equal(a["lr"], b["lr"]) and a["caption"] == b["caption"]


def test_shapes_and_determinism(png_dir):
    ds = SRPairDataset(png_dir, crop_size=32, scale=4, crops_per_image=2, seed=3)
    item = ds[1]
    assert item["hr"].shape == (3, 32, 32) and item["lr"].shape == (3, 8, 8)
    assert item["hr"].dtype == torch.float32 and 0 <= item["hr"].min() and item["hr"].max() <= 1
    assert "blur sigma" in item["caption"]
    again = SRPairDataset(png_dir, crop_size=32, scale=4, crops_per_image=2, seed=3)
    assert all(_same(ds[i], again[i]) for i in range(len(ds)))
    other_seed = SRPairDataset(png_dir, crop_size=32, scale=4, crops_per_image=2, seed=4)
    assert not _same(ds[1], other_seed[1])
    ds.set_epoch(1)
    assert not _same(ds[1], again[1])


def test_nodata_windows_are_rejected(tmp_path):
    path = tmp_path / "half_nodata.tif"
    data = np.full((3, 64, 96), 0, dtype=np.uint8)
    data[:, :, 40:] = 100  # only the right 56 columns are valid
    profile = dict(driver="GTiff", width=96, height=64, count=3, dtype="uint8", nodata=0,
                   crs="EPSG:32618", transform=from_origin(500000, 4000000, 1, 1))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    ds = SRPairDataset(path, crop_size=32, scale=4, crops_per_image=8, protocol="iso", augment=False)
    for i in range(len(ds)):
        assert torch.allclose(ds[i]["hr"], torch.full((3, 32, 32), 100 / 255))
    # a tolerated nodata fraction lets masked windows through
    lenient = SRPairDataset(path, crop_size=32, scale=4, crops_per_image=8, max_nodata_fraction=1.0)
    assert any(lenient[i]["hr"].min() == 0 for i in range(len(lenient)))


def test_a_saturated_band_is_no_nodata_where_every_band_rule_applies(tmp_path):
    """Found by review: NEON plots declare 255 as nodata, so a pixel with one saturated band (207,
    255, 194) was masked and any window holding one redrawn - at 224 px crops two thirds of the plots
    were never drawn. ``masked_where="every_band"`` reads the mask as GDAL does."""
    path = tmp_path / "plot.tif"
    data = np.random.default_rng(0).integers(20, 200, (3, 64, 64)).astype(np.uint8)
    data[1, ::8, ::8] = 255  # saturated green here and there, everywhere
    data[:, :, :8] = 255  # and a true nodata strip: every band
    profile = dict(driver="GTiff", width=64, height=64, count=3, dtype="uint8", nodata=255,
                   crs="EPSG:32618", transform=from_origin(500000, 4000000, 1, 1))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    old = SRPairDataset(path, crop_size=32, scale=4, crops_per_image=4, protocol="clean", augment=False)
    with pytest.raises(InputError, match="masked everywhere"):
        old[0]
    new = SRPairDataset(path, crop_size=32, scale=4, crops_per_image=4, protocol="clean", augment=False,
                        masked_where="every_band")
    crops = [new[i]["hr"] for i in range(len(new))]
    assert all((c == 1).any() for c in crops)  # the saturated pixels are drawn
    assert all(not (c == 1).all(dim=0).any() for c in crops)  # the nodata strip is not
    with pytest.raises(InputError, match="masked_where"):
        SRPairDataset(path, crop_size=32, scale=4, masked_where="some")


def test_quantised_lrs_are_8_bit_levels_and_keep_the_random_streams(png_dir):
    """Found by review: training LRs were never rounded to 8 bits, the tiles geosr upscales and
    evaluate's LRs are; 4 of 40 clean LRs were captioned otherwise once rounded."""
    plain = SRPairDataset(png_dir, crop_size=32, scale=4, crops_per_image=2, protocol="aniso", seed=5)
    rounded = SRPairDataset(png_dir, crop_size=32, scale=4, crops_per_image=2, protocol="aniso", seed=5,
                            quantise_lr=True, captions="none")
    for i in range(len(plain)):
        a, b = plain[i], rounded[i]
        assert torch.equal(a["hr"], b["hr"])
        torch.testing.assert_close(b["lr"] * 255, (b["lr"] * 255).round(), rtol=0, atol=1e-4)
        assert (b["lr"] - a["lr"].clamp(0, 1)).abs().max() <= 0.5 / 255 + 1e-6


def test_real_geotiff_fixture(data_dir):
    ds = SRPairDataset(data_dir / "neon_harv_plot.tif", crop_size=64, scale=4, crops_per_image=4)
    item = ds[3]
    assert item["hr"].shape == (3, 64, 64) and item["lr"].shape == (3, 16, 16)


def test_caption_sources(png_dir, tmp_path):
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({"img0.png": "zero", "img1.png": "one", "img2.png": "two"}))
    ds = SRPairDataset(png_dir, crop_size=32, scale=4, captions=f"file:{captions}", shuffle=False)
    assert [ds[i]["caption"] for i in range(3)] == ["zero", "one", "two"]
    fixed = SRPairDataset(png_dir, crop_size=32, scale=4, captions="captioner:fixed:hazy")
    assert fixed[0]["caption"] == "hazy"
    assert SRPairDataset(png_dir, crop_size=32, scale=4, captions="none")[0]["caption"] == ""
    with pytest.raises(InputError):
        SRPairDataset(png_dir, crop_size=30, scale=4)


def test_dataloader_with_two_workers(png_dir):
    ds = SRPairDataset(png_dir, crop_size=32, scale=4, crops_per_image=2)
    serial = list(torch.utils.data.DataLoader(ds, batch_size=2, num_workers=0))
    parallel = list(torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2))
    assert len(serial) == len(parallel) == 3
    for a, b in zip(serial, parallel):
        assert torch.equal(a["hr"], b["hr"]) and a["caption"] == b["caption"]


def test_rescaled_and_jittered_crops(tmp_path):
    # a smooth image with a sharp edge: a coarser GSD makes the edge span fewer pixels
    folder = tmp_path / "big"
    folder.mkdir()
    image = np.zeros((96, 96, 3), dtype=np.uint8)
    image[:, 48:] = 200
    image[..., 1] = np.linspace(0, 255, 96, dtype=np.uint8)[None, :]
    Image.fromarray(image).save(folder / "edge.png")
    plain = SRPairDataset(folder, crop_size=32, scale=4, crops_per_image=4, seed=1, augment=False)
    rescaled = SRPairDataset(folder, crop_size=32, scale=4, crops_per_image=4, seed=1, augment=False,
                             rescale_prob=1.0, rescale_range=(0.5, 0.5))
    for i in range(len(plain)):
        a, b = plain[i]["hr"], rescaled[i]["hr"]
        assert b.shape == (3, 32, 32) and 0 <= b.min() and b.max() <= 1
        # green is a ramp of 255/95 per source px: twice that per px at half the resolution
        slope_a = float((a[1, :, 1:] - a[1, :, :-1]).median())
        slope_b = float((b[1, :, 1:] - b[1, :, :-1]).median())
        assert slope_b == pytest.approx(2 * slope_a, rel=0.15)
    again = SRPairDataset(folder, crop_size=32, scale=4, crops_per_image=4, seed=1, augment=False,
                          rescale_prob=1.0, rescale_range=(0.5, 0.5))
    assert all(_same(rescaled[i], again[i]) for i in range(len(again)))

    jittered = SRPairDataset(folder, crop_size=32, scale=4, crops_per_image=4, seed=1, augment=False,
                             color_jitter=0.2, protocol="clean")
    clean = SRPairDataset(folder, crop_size=32, scale=4, crops_per_image=4, seed=1, augment=False,
                          protocol="clean")
    changed = [not torch.allclose(jittered[i]["hr"], clean[i]["hr"], atol=1e-3) for i in range(len(clean))]
    assert all(changed)
    assert all(0 <= jittered[i]["hr"].min() and jittered[i]["hr"].max() <= 1 for i in range(len(clean)))


def test_single_band_crops_copy_one_band_into_every_channel(png_dir):
    colour = SRPairDataset(png_dir, crop_size=32, scale=4, crops_per_image=6, seed=3, protocol="clean",
                           augment=False)
    single = SRPairDataset(png_dir, crop_size=32, scale=4, crops_per_image=6, seed=3, protocol="clean",
                           augment=False, single_band_prob=1.0)
    for i in range(len(single)):
        hr, lr = single[i]["hr"], single[i]["lr"]
        # one band everywhere, in the HR and (degraded per channel alike) in the LR
        assert torch.equal(hr[0], hr[1]) and torch.equal(hr[0], hr[2])
        assert torch.allclose(lr[0], lr[1], atol=1e-6) and torch.allclose(lr[0], lr[2], atol=1e-6)
        # and it is one of the colour crop's bands: the same window, the same draws before it
        assert any(torch.equal(hr[0], colour[i]["hr"][b]) for b in range(3))
    half = SRPairDataset(png_dir, crop_size=32, scale=4, crops_per_image=6, seed=3, protocol="clean",
                         single_band_prob=0.5)
    grey = [bool(torch.equal(half[i]["hr"][0], half[i]["hr"][1])) for i in range(len(half))]
    assert 0 < sum(grey) < len(grey)


@pytest.mark.parametrize("kwargs", [dict(rescale_range=(0.5, 1.5)), dict(rescale_range=(0.0, 1.0)),
                                    dict(rescale_prob=1.5), dict(color_jitter=-0.1),
                                    dict(single_band_prob=-0.1), dict(single_band_prob=1.5)])
def test_bad_augmentation_settings_are_refused(png_dir, kwargs):
    with pytest.raises(InputError):
        SRPairDataset(png_dir, crop_size=32, scale=4, **kwargs)
