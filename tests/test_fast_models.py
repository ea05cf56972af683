"""The fast networks shipped as the cheap path of texture-aware routing (geosr-tiny-fast-x2/-x4):
small, one plain regression step, deterministic, better than bicubic on clean real crops they
never saw, a fraction of the default model's size, and what their recipes say."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from geosr.models import load_upscaler, shipped_model_path
from geosr.routing import CALIBRATED_THRESHOLDS, cheap_path
from geosr.degradations import degrade

SCALES = (4, 2)
VAL_CROPS = sorted((Path(__file__).parent / "data" / "val_crops").glob("*.png"))
RECIPES = Path(__file__).parents[1] / "configs" / "train"


@pytest.fixture(scope="module", params=SCALES, ids=lambda s: f"x{s}")
def fast(request):
    scale = request.param
    return scale, load_upscaler(f"geosr-tiny-fast-x{scale}", scale)


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_shipped_small_and_the_cheap_path_of_its_scale():
    for scale in SCALES:
        name = f"geosr-tiny-fast-x{scale}"
        path = shipped_model_path(name)
        assert path is not None, f"{name} is not shipped in geosr/data/models"
        assert not list(Path(path).rglob("checkpoint-*"))
        assert sum(w.stat().st_size for w in Path(path).rglob("*.safetensors")) <= 2 * 2**20
        assert cheap_path(scale) == name and name in CALIBRATED_THRESHOLDS
    assert cheap_path(3) == "bicubic"


def test_one_regression_step_at_a_fraction_of_the_default_cost(fast):
    scale, model = fast
    pipe = model.pipeline
    assert pipe.config.upscale_factor == scale and pipe.unshuffle_factor == 4
    assert pipe.config.default_num_inference_steps == 1 and pipe.config.default_guidance_scale == 1.0
    default = load_upscaler(f"geosr-tiny-x{scale}", scale).pipeline
    # convolution cost per output pixel goes with the trunk's parameters times the positions of
    # its grid per output pixel (1 / unshuffle_factor^2; x2: the default is on the LR grid, the
    # fast network on LR/2)
    def cost(p):
        return (_params(p.unet) + _params(p.controlnet)) / p.unshuffle_factor**2

    ratio = cost(pipe) / cost(default)
    assert ratio < 0.25, ratio


def test_matches_its_recipe(fast):
    scale, model = fast
    recipe = yaml.safe_load((RECIPES / f"geosr_tiny_fast_x{scale}.yaml").read_text())
    unet = json.loads((Path(shipped_model_path(f"geosr-tiny-fast-x{scale}")) / "unet" / "config.json").read_text())
    assert {k: unet[k] for k in recipe["base"]["unet"] if k != "class"} == {
        k: v for k, v in recipe["base"]["unet"].items() if k != "class"}
    assert recipe["objective"] == "regression" and recipe["scale"] == scale
    assert recipe["degradation"] == "clean" and recipe["jpeg_prob"] == 0


def test_deterministic_and_better_than_bicubic_on_clean_real_crops(fast):
    scale, model = fast
    bicubic = load_upscaler("bicubic", scale)
    gains = []
    for i, path in enumerate(VAL_CROPS):
        hr = np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0
        lr, _ = degrade(hr, scale, "clean", seed=100 + i)
        x = torch.from_numpy(lr).permute(2, 0, 1)[None].float()
        target = torch.from_numpy(hr).permute(2, 0, 1)[None]

        def psnr(y):
            mse = ((y.clamp(0, 1) - target)[..., scale:-scale, scale:-scale] ** 2).mean()
            return float(10 * torch.log10(1 / mse))

        out = model.upscale(x, [""], seeds=[i])
        torch.testing.assert_close(out, model.upscale(x, [""], seeds=[i]), rtol=0, atol=0)
        # a regression step: the start noise (pure noise at the last timestep) barely matters
        other_seed = (out - model.upscale(x, [""], seeds=[i + 1])).abs()
        assert other_seed.mean() < 0.5 / 255 and other_seed.max() < 4 / 255
        gains.append(psnr(out) - psnr(bicubic.upscale(x)))
    assert np.mean(gains) > 0.3 and min(gains) > -0.3, gains
