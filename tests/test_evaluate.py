"""geosr.evaluation and ``geosr evaluate``: metrics, the protocol, nodata handling, CLI, errors."""

from __future__ import annotations

import json
import math

import huggingface_hub
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from scipy import ndimage
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

from geosr.cli import cli
from geosr.errors import InputError
from geosr.evaluation import (
    ABLATION_CAPTIONS,
    evaluate_sr,
    find_hr_images,
    psnr,
    read_hr_image,
    render_comparison,
    sharpness_ratio,
    ssim,
)
from geosr.degradations import degrade
from geosr.pipelines.pipeline_geosr import GeoSRPipeline
from rasters import texture, write_raster
from tiny_models import tiny_pipeline_components, tiny_tokenizer

METRICS = {"psnr", "ssim", "sharpness"}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    # Tiny models on a shared CPU: thread hand-offs cost far more than the arithmetic.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def hr_dir(tmp_path_factory):
    """Two small textured RGB PNGs (64 and 72 x 80 px), in a nested folder."""
    root = tmp_path_factory.mktemp("hr")
    (root / "sub").mkdir()
    for i, (h, w) in enumerate([(64, 64), (72, 80)]):
        img = (texture(3, h, w, seed=i) * 255).round().astype(np.uint8).transpose(1, 2, 0)
        Image.fromarray(img).save(root / "sub" / f"img{i}.png")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    directory = tmp_path_factory.mktemp("tiny")
    pipe = GeoSRPipeline(**tiny_pipeline_components(student=True, scale=4, tmp_path=directory))
    pipe.save_pretrained(directory / "pipe")
    return str(directory / "pipe")


# ------------------------------------------------------------------------- metrics


def test_psnr_of_a_known_mse_and_border_shaving():
    a = np.zeros((20, 20, 3))
    b = np.full((20, 20, 3), 0.1)  # MSE 0.01 -> 20 dB
    assert psnr(a, b) == pytest.approx(20.0)
    b[:2] = 1.0  # only in the shaved border
    b[:, -2:] = 1.0
    assert psnr(a, b, border=2) == pytest.approx(20.0)
    assert psnr(a, a) == math.inf


def test_ssim_identical_constant_and_noisy():
    rng = np.random.default_rng(0)
    img = rng.random((32, 32, 3))
    assert ssim(img, img) == pytest.approx(1.0)
    # constant images: the structure/contrast term is (0 + C2) / (0 + C2) = 1, so SSIM is
    # the luminance term (2 m1 m2 + C1) / (m1^2 + m2^2 + C1) with C1 = 0.01^2
    c1 = 0.01**2
    expected = (2 * 0.4 * 0.6 + c1) / (0.4**2 + 0.6**2 + c1)
    assert ssim(np.full((16, 16, 3), 0.4), np.full((16, 16, 3), 0.6)) == pytest.approx(expected)
    noisy = np.clip(img + rng.normal(0, 0.1, img.shape), 0, 1)
    assert 0 < ssim(img, noisy) < 0.99
    with pytest.raises(InputError, match="11 x 11"):
        ssim(img, img, border=11)


def test_sharpness_ratio_identical_blurred_and_ramp():
    img = texture(3, 48, 48).transpose(1, 2, 0)
    assert sharpness_ratio(img, img) == pytest.approx(1.0)
    blurred = ndimage.gaussian_filter(img, sigma=(1.5, 1.5, 0))
    assert sharpness_ratio(blurred, img, border=4) < 0.5
    # a linear ramp has a constant gradient: twice the slope is four times the energy
    ramp = np.broadcast_to(np.linspace(0, 0.4, 30)[None, :, None], (20, 30, 3))
    assert sharpness_ratio(2 * ramp, ramp) == pytest.approx(4.0)
    assert math.isnan(sharpness_ratio(ramp, np.zeros_like(ramp)))


def test_metrics_need_equal_shapes():
    with pytest.raises(InputError, match="shape"):
        psnr(np.zeros((8, 8, 3)), np.zeros((8, 9, 3)))


# ------------------------------------------------------------------------ protocol


def test_find_hr_images_recursive_and_sorted(hr_dir):
    assert [p.name for p in find_hr_images([hr_dir])] == ["img0.png", "img1.png"]


def test_bicubic_model_is_its_own_baseline(hr_dir):
    result = evaluate_sr(find_hr_images([hr_dir]), 4, "iso", model="bicubic")
    assert result["model"]["delta_vs_bicubic"] == {"psnr": 0.0, "ssim": 0.0, "sharpness": 0.0}
    assert result["settings"]["n_images"] == 2 and result["settings"]["border"] == 4
    assert [im["seed"] for im in result["images"]] == [0, 1]
    # the HR is cut to a multiple of the scale; iso blurs only, so the output is softer than the HR
    assert result["images"][1]["hr_size"] == [72, 80]
    assert 0 < result["model"]["sharpness"] < 1


def test_every_method_sees_the_same_lr(hr_dir):
    # lanczos and bicubic on one LR differ a little; a different LR (other seed) differs more
    paths = find_hr_images([hr_dir])
    a = evaluate_sr(paths, 4, "aniso", model="lanczos", seed=3)
    b = evaluate_sr(paths, 4, "aniso", model="lanczos", seed=3)
    untimed = [[{k: v for k, v in im.items() if k != "model_seconds"} for im in r["images"]] for r in (a, b)]
    assert untimed[0] == untimed[1]
    assert a["routing"] == {}  # a classical model is never routed
    assert abs(a["model"]["delta_vs_bicubic"]["psnr"]) < 1.0
    assert a["images"][0]["degradation"]["protocol"] == "aniso"


def test_without_a_model_the_shipped_one_of_the_scale_is_run_and_named(hr_dir):
    result = evaluate_sr(find_hr_images([hr_dir])[:1], 2, "clean", crop=64)
    assert result["settings"]["model"] == result["model"]["name"] == "geosr-tiny-x2"


def test_tiny_diffusion_model_on_pngs_and_a_real_geotiff(hr_dir, tiny_model, data_dir):
    paths = [*find_hr_images([hr_dir]), data_dir / "neon_harv_plot.tif"]
    result = evaluate_sr(paths, 4, "aniso", model=tiny_model, crop=96, steps=1)
    assert set(result) == {"settings", "model", "baselines", "caption_ablation", "routing", "images", "skipped",
                           "optional_metrics"}
    assert result["caption_ablation"] == {}
    # routing: routed images would get the cheap path's output; the mean change says what that costs
    cheap = [im["route"]["route"] != "model" for im in result["images"]]
    assert result["routing"]["routed_share"] == pytest.approx(np.mean(cheap))
    assert result["routing"]["psnr_change"] == pytest.approx(np.mean([
        im["route"]["scores"]["psnr"] - im["model"]["psnr"] if c else 0.0 for im, c in zip(result["images"], cheap)
    ]))
    assert 0 <= result["routing"]["model_time_saved"] <= 1
    worse = np.mean([im["model"]["psnr"] < im["baselines"]["bicubic"]["psnr"] for im in result["images"]])
    assert result["model"]["worse_than_bicubic"] == pytest.approx(worse)
    assert result["skipped"] == []
    assert [im["hr_size"] for im in result["images"]] == [[64, 64], [72, 80], [96, 96]]
    assert "student" in result["model"]["description"]
    for key in METRICS:
        assert math.isfinite(result["model"][key]) and math.isfinite(result["baselines"]["bicubic"][key])
        assert result["model"]["delta_vs_bicubic"][key] == pytest.approx(
            result["model"][key] - result["baselines"]["bicubic"][key]
        )
    assert all(im["caption"] for im in result["images"])
    for name in ("lpips", "clip_iqa"):
        status = result["optional_metrics"][name]
        assert status.startswith(("computed", "skipped: weights not available locally"))
    json.dumps(result)  # plain types only


def test_clip_iqa_when_the_weights_are_local(hr_dir, tmp_path, monkeypatch):
    # a tiny random CLIP stands in for the cached openai/clip-vit-base-patch16
    torch.manual_seed(0)
    layers = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=1)
    text = dict(layers, vocab_size=1000, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=dict(layers, image_size=32, patch_size=8)))
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = CLIPProcessor(image_processor=images, tokenizer=tiny_tokenizer(tmp_path))
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *args: "config.json")
    monkeypatch.setattr(CLIPModel, "from_pretrained", lambda *args, **kwargs: clip)
    monkeypatch.setattr(CLIPProcessor, "from_pretrained", lambda *args, **kwargs: processor)
    res = CliRunner().invoke(cli, ["evaluate", "--hr", str(hr_dir), "--model", "bicubic", "--limit", "1", "-q"])
    assert res.exit_code == 0, res.output
    assert "CLIP-IQA" in res.output and "clip_iqa: computed" in res.output


# --------------------------------------------------------------------------- nodata


def test_isolated_nodata_pixels_are_kept(data_dir):
    # the NEON fixture flags 2 saturated white pixels as nodata 255: the whole plot is used
    result = evaluate_sr([data_dir / "neon_harv_plot.tif"], 4, "iso", model="bicubic")
    assert result["images"][0]["hr_size"] == [400, 400]


def test_nodata_collar_is_cropped_and_tiny_valid_areas_skipped(tmp_path):
    data = (texture(3, 100, 120) * 200 + 20).astype(np.uint8)
    data[:, :, :30] = 0  # a collar on the left
    write_raster(tmp_path / "collar.tif", data, nodata=0)
    small = data.copy()
    small[:, 40:] = 0  # valid area 100 x 10 px only
    write_raster(tmp_path / "small.tif", small, nodata=0)
    result = evaluate_sr(find_hr_images([tmp_path]), 4, "iso", model="bicubic")
    assert [im["hr_size"] for im in result["images"]] == [[100, 88]]  # 90 valid columns, cut to 88
    assert [s["path"].endswith("small.tif") for s in result["skipped"]] == [True]
    assert "under 64 px a side" in result["skipped"][0]["reason"]


# ----------------------------------------------------------------- comparison + CLI


def test_clean_protocol_is_antialiased_bicubic_only(hr_dir):
    result = evaluate_sr(find_hr_images([hr_dir]), 2, "clean", model="bicubic")
    params = result["images"][0]["degradation"]
    assert params["protocol"] == "clean" and params["noise_sigma"] == 0 and params["jpeg_quality"] is None
    # the same LR as a plain anti-aliased bicubic downsampling
    hr = read_hr_image(find_hr_images([hr_dir])[0], 2, None)
    lr, _ = degrade(hr, 2, "clean", seed=0)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(hr.transpose(2, 0, 1))[None], scale_factor=0.5, mode="bicubic", antialias=True
    )[0].numpy().transpose(1, 2, 0)
    np.testing.assert_allclose(lr, np.clip(expected, 0, 1), atol=1e-5)


def test_caption_ablation_scores_each_wrong_caption(hr_dir, tiny_model):
    result = evaluate_sr(find_hr_images([hr_dir]), 4, "aniso", model=tiny_model, steps=1, caption_ablation=True)
    ablation = result["caption_ablation"]
    assert set(ablation) == {"measured", *ABLATION_CAPTIONS}
    assert ablation["measured"]["psnr"] == pytest.approx(result["model"]["psnr"])
    for name in ABLATION_CAPTIONS:
        assert math.isfinite(ablation[name]["psnr"]) and name in result["images"][0]["caption_ablation"]
    res = CliRunner().invoke(cli, ["evaluate", "--hr", str(hr_dir), "--model", tiny_model, "--steps", "1",
                                   "--caption-ablation", "-q"])
    assert res.exit_code == 0, res.output
    assert "vs measured" in res.output and "below bicubic" in res.output


def test_render_comparison(hr_dir, tmp_path):
    out = render_comparison(hr_dir / "sub" / "img1.png", tmp_path / "cmp.png", 4, "aniso", model="lanczos", crop=48)
    with Image.open(out) as img:
        assert img.size == (4 * 48 + 3 * 4, 48 + 14)


def test_cli_table_json_and_png(hr_dir, tmp_path):
    args = ["evaluate", "--hr", str(hr_dir), "--scale", "4", "--degradation", "iso", "--model", "lanczos"]
    res = CliRunner().invoke(cli, [*args, "--json", str(tmp_path / "r.json"), "--png", str(tmp_path / "r.png"), "-q"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("method"))
    assert lines[header].split() == ["method", "PSNR", "dB", "dPSNR", "SSIM", "sharpness"]
    bicubic = lines[header + 1].split()
    assert bicubic[0] == "bicubic" and bicubic[2] == "+0.00"
    assert lines[header + 2].startswith("lanczos")
    assert "lpips: " in res.output
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["settings"]["n_images"] == 2 and result["model"]["name"] == "lanczos"
    assert (tmp_path / "r.png").is_file()


# --------------------------------------------------------------------------- errors


def test_no_images_found(tmp_path):
    with pytest.raises(InputError, match="no PNG, JPEG or TIFF"):
        find_hr_images([tmp_path])
    res = CliRunner().invoke(cli, ["evaluate", "--hr", str(tmp_path), "--model", "bicubic"])
    assert res.exit_code == 3 and "no PNG, JPEG or TIFF" in res.output  # bad input, as geosr upscale


def test_bad_options(hr_dir):
    paths = find_hr_images([hr_dir])
    with pytest.raises(InputError, match="unknown degradation 'gauss'"):
        evaluate_sr(paths, 4, "gauss", model="bicubic")
    with pytest.raises(InputError, match="crop must be at least 64 px"):
        evaluate_sr(paths, 4, "iso", model="bicubic", crop=32)
    with pytest.raises(InputError, match="classical"):
        evaluate_sr(paths, 4, "iso", model="bicubic", baselines=("geosr-tiny-x4",))
    res = CliRunner().invoke(cli, ["evaluate", "--hr", str(hr_dir), "--degradation", "gauss"])
    assert res.exit_code == 2 and "gauss" in res.output


def test_unusable_images_only(tmp_path):
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "gray.png")
    with pytest.raises(InputError, match="none of the 1 image.*RGB uint8"):
        evaluate_sr([tmp_path / "gray.png"], 4, "iso", model="bicubic")
