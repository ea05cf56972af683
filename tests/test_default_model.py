"""The models shipped inside the package: they load, run, are deterministic, beat bicubic
on real crops they never saw (clean and noisy), and are what their recipes say."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from geosr.captioning import load_captioner
from geosr.models import default_model, load_upscaler, shipped_model_path
from geosr.degradations import degrade

SCALES = (4, 2)
VAL_CROPS = sorted((Path(__file__).parent / "data" / "val_crops").glob("*.png"))
# Mean gain over bicubic on the five shipped val crops, per scale and degradation. The
# full-val figures (README, `geosr evaluate`) are higher; these floors catch a broken model,
# a wrong default or a lost caption path, not a small regression.
# Measured when shipped (bf16, the default on the AMX CPU): x4 (v3) clean +1.47, aniso +2.16 dB (worst crop
# +0.38 / +0.85; two fidelity stages: +1.45, +2.16; one: +1.41, +2.12; stage 4: +1.15, +2.02);
# x2 (v3) clean +2.95, aniso +3.65 dB (worst crop +1.03 / +2.17; one fidelity stage: +2.98, +3.62;
# stage 3: +2.72, +3.37).
MIN_GAIN_DB = {(4, "clean"): 0.5, (4, "aniso"): 1.0, (2, "clean"): 0.7, (2, "aniso"): 1.5}


@pytest.fixture(scope="module", params=SCALES, ids=lambda s: f"x{s}")
def shipped(request):
    scale = request.param
    return scale, load_upscaler(f"geosr-tiny-x{scale}", scale)


def test_shipped_weights_are_small_complete_and_the_defaults():
    total = 0
    for scale in SCALES:
        name = f"geosr-tiny-x{scale}"
        path = shipped_model_path(name)
        assert path is not None, f"{name} is not shipped in geosr/data/models"
        weights = list(Path(path).rglob("*.safetensors"))
        assert {w.parent.name for w in weights} >= {"unet", "controlnet", "text_encoder"}
        assert not list(Path(path).rglob("checkpoint-*"))
        total += sum(w.stat().st_size for w in weights)
        assert default_model(scale) == name
    # with routing's cheap paths (tests/test_fast_models.py), all SR weights stay within 25 MB
    fast = [shipped_model_path(f"geosr-tiny-fast-x{scale}") for scale in SCALES]
    total += sum(w.stat().st_size for path in fast if path for w in Path(path).rglob("*.safetensors"))
    assert total <= 25 * 2**20
    assert default_model(3) == "bicubic"


def test_students_are_one_step_cfg_distilled_lr_space_models(shipped):
    scale, model = shipped
    pipe = model.pipeline
    assert pipe.is_distilled
    assert pipe.config.upscale_factor == scale
    assert pipe.unshuffle_factor == scale  # the denoiser runs on the LR grid, not at the output size
    assert type(pipe.unet).__name__ == "LRSpaceDenoiser"
    assert pipe.scheduler.config.rescale_betas_zero_snr  # no noise leak at the one step
    # loaded for inference in channels_last (faster oneDNN convolutions on the CPU)
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert pipe.controlnet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.channels == 3


def _pair(path, scale, degradation, seed):
    hr = np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0
    lr, _ = degrade(hr, scale, degradation, seed=seed)
    return hr, lr


def test_runs_on_a_real_crop_deterministically(shipped):
    scale, model = shipped
    _, lr = _pair(VAL_CROPS[0], scale, "aniso", seed=0)
    x = torch.from_numpy(lr).permute(2, 0, 1)[None].float()
    captions = load_captioner("degradation").caption(x)
    a = model.upscale(x, captions, seeds=[7])
    b = model.upscale(x, captions, seeds=[7])
    assert a.shape == (1, 3, 128, 128)
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("degradation", ["clean", "aniso"])
def test_beats_bicubic_on_shipped_validation_crops(shipped, degradation):
    scale, model = shipped
    captioner = load_captioner("degradation")
    bicubic = load_upscaler("bicubic", scale)
    gains = []
    for i, path in enumerate(VAL_CROPS):
        hr, lr = _pair(path, scale, degradation, seed=100 + i)
        x = torch.from_numpy(lr).permute(2, 0, 1)[None].float()
        caps = captioner.caption(x)
        target = torch.from_numpy(hr).permute(2, 0, 1)[None]
        b = scale  # border shaved, as in geosr evaluate

        def psnr(y):
            mse = ((y.clamp(0, 1) - target)[..., b:-b, b:-b] ** 2).mean()
            return float(10 * torch.log10(1 / mse))

        gains.append(psnr(model.upscale(x, caps, seeds=[i])) - psnr(bicubic.upscale(x, caps)))
    assert np.mean(gains) > MIN_GAIN_DB[scale, degradation], gains
    # no crop far below bicubic (x2 v2 lost 0.6 dB on agricultural51's smooth fields, read as
    # 0.6 px of blur; on all val, 0.4 % of clean x2 images and 1.1 % of clean x4 ones are below)
    assert min(gains) > -1.0, gains


def test_default_batch_size_follows_model_and_device():
    from geosr.config import NoShippedModelWarning, RunConfig
    from geosr.models import default_batch_size

    assert default_batch_size("bicubic") == 4
    for scale in SCALES:
        assert default_batch_size(f"geosr-tiny-x{scale}", "cpu") == 1
        assert default_batch_size(f"geosr-tiny-x{scale}", "cuda:1") == 4
        assert RunConfig(scale=scale, device="cpu").batch_size == 1
    with pytest.warns(NoShippedModelWarning, match="no model is shipped for x3"):
        assert RunConfig(scale=3).batch_size == 4  # bicubic: batching only saves task overhead
    assert RunConfig(scale=3, model="bicubic").batch_size == 4  # named: no warning (warnings are errors here)
    assert RunConfig(scale=4, device="cpu", batch_size=3).batch_size == 3


def test_bf16_stays_within_a_hair_of_fp32(shipped):
    # bf16 is the default on CPUs with AMX: the shipped networks must not lose their gain there
    # (on all val: 0.002-0.006 dB below fp32, docs/benchmarks.md).
    scale, _ = shipped
    hr, lr = _pair(VAL_CROPS[1], scale, "aniso", seed=3)
    x = torch.from_numpy(lr).permute(2, 0, 1)[None].float()
    captions = load_captioner("degradation").caption(x)
    full, half = (load_upscaler(f"geosr-tiny-x{scale}", scale, dtype=d).upscale(x, captions, seeds=[3])
                  for d in ("fp32", "bf16"))
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    target = torch.from_numpy(hr).permute(2, 0, 1)[None]

    def psnr(y, ref):
        return float(-10 * torch.log10(((y - ref)[..., scale:-scale, scale:-scale] ** 2).mean()))

    # the two outputs differ by about one 8-bit level RMS or less (2.6 DN at 40 dB): bf16 matrix
    # products round differently on CPUs with AMX, with AVX512-BF16 and with neither
    assert psnr(half, full) > 40.0
    assert abs(psnr(half, target) - psnr(full, target)) < 0.1
