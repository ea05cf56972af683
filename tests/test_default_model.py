"""The model shipped inside the package: it loads, runs, is deterministic and beats bicubic."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from geosr.captioning import load_captioner
from geosr.models import default_model, load_upscaler, shipped_model_path
from geosr.training.degradations import degrade

NAME = "geosr-tiny-x4"
VAL_CROPS = sorted((Path(__file__).parent / "data" / "val_crops").glob("*.png"))


@pytest.fixture(scope="module")
def model():
    return load_upscaler(NAME, 4)


def test_shipped_weights_are_small_complete_and_the_default():
    path = shipped_model_path(NAME)
    assert path is not None, "geosr-tiny-x4 is not shipped in geosr/data/models"
    weights = list(Path(path).rglob("*.safetensors"))
    assert {w.parent.name for w in weights} >= {"unet", "controlnet", "text_encoder"}
    assert sum(w.stat().st_size for w in weights) <= 25 * 2**20
    assert not list(Path(path).rglob("checkpoint-*"))
    assert default_model(4) == NAME


def test_student_is_cfg_distilled(model):
    pipe = model.pipeline
    assert pipe.is_distilled
    assert pipe.config.upscale_factor == 4
    assert model.channels == 3


def _pair(path, seed):
    hr = np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0
    lr, _ = degrade(hr, 4, "aniso", seed=seed)
    return hr, lr


def test_runs_on_a_real_crop_deterministically(model):
    _, lr = _pair(VAL_CROPS[0], seed=0)
    x = torch.from_numpy(lr).permute(2, 0, 1)[None].float()
    captions = load_captioner("degradation").caption(x)
    a = model.upscale(x, captions, seeds=[7])
    b = model.upscale(x, captions, seeds=[7])
    assert a.shape == (1, 3, 128, 128)
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_beats_bicubic_on_shipped_validation_crops(model):
    captioner = load_captioner("degradation")
    bicubic = load_upscaler("bicubic", 4)
    gains = []
    for i, path in enumerate(VAL_CROPS):
        hr, lr = _pair(path, seed=100 + i)
        x = torch.from_numpy(lr).permute(2, 0, 1)[None].float()
        caps = captioner.caption(x)
        target = torch.from_numpy(hr).permute(2, 0, 1)[None]
        b = 4  # border shaved, as in geosr evaluate

        def psnr(y):
            mse = ((y.clamp(0, 1) - target)[..., b:-b, b:-b] ** 2).mean()
            return float(10 * torch.log10(1 / mse))

        gains.append(psnr(model.upscale(x, caps, seeds=[i])) - psnr(bicubic.upscale(x, caps)))
    assert np.mean(gains) > 0.3, gains


def test_default_batch_size_follows_model_and_device():
    from geosr.config import RunConfig
    from geosr.models import default_batch_size

    assert default_batch_size("bicubic") == 4
    assert default_batch_size(NAME, "cpu") == 1
    assert default_batch_size(NAME, "cuda:1") == 4
    assert RunConfig(scale=4, device="cpu").batch_size == 1
    assert RunConfig(scale=2).batch_size == 4  # bicubic: batching only saves task overhead
    assert RunConfig(scale=4, device="cpu", batch_size=3).batch_size == 3
