"""The shipped multimodal captioner (mllm:geosr-caption-tiny), its training, and the caption grammar."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from geosr.captioning import load_captioner
from geosr.captioning.evaluation import degraded_crops, evaluate_captioner
from geosr.captioning.mllm import SHIPPED_CAPTIONER, MLLMCaptioner, shipped_captioner_path
from geosr.captioning.vocabulary import format_caption, parse_caption
from geosr.cli import cli
from geosr.config import RunConfig, TileSpec
from geosr.engine import upscale_scene
from geosr.degradations import describe, sample_params

REPO = Path(__file__).resolve().parents[1]
SHIPPED = f"mllm:{SHIPPED_CAPTIONER}"


@pytest.fixture(scope="module")
def shipped():
    return load_captioner(SHIPPED)


def _crop_tiles(data_dir: Path, n: int, seed: int, jpeg_share: float = 0.0):
    crops = list(degraded_crops([data_dir / "neon_harv_plot.tif"], n, 96, seed=seed, scale=2, jpeg_share=jpeg_share))
    tiles = torch.from_numpy(np.stack([lr for lr, _ in crops]).transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
    return tiles, [p for _, p in crops]


# --- the grammar read back ------------------------------------------------------------

def test_parse_inverts_format_on_random_degradations():
    rng = np.random.default_rng(0)
    for _ in range(300):
        params = sample_params("aniso", int(rng.choice([2, 4])), rng, jpeg_prob=0.5)
        text = describe(params)
        facts = parse_caption(text)
        assert facts is not None, text
        assert format_caption(facts.blur_sigma, facts.anisotropic, facts.blur_angle_deg or 0.0,
                              facts.noise_sigma, facts.jpeg_quality) == text
        assert facts.blur_sigma == pytest.approx(params.blur_sigma / params.scale, abs=0.051)
        assert facts.anisotropic == params.anisotropic


@pytest.mark.parametrize("text", [
    "moderate isotropic blur; low noise; no jpeg",                          # no numbers
    "mild isotropic blur sigma 2.4 px; no noise; no jpeg",                  # word disagrees
    "strong isotropic blur sigma 2.4 px along 135 deg; no noise; no jpeg",  # angle on iso
    "strong anisotropic blur sigma 2.4 px; no noise; no jpeg",              # aniso without angle
    "strong anisotropic blur sigma 2.4 px along 137 deg; no noise; no jpeg",  # off the 15 deg step
    "strong isotropic blur sigma 2.4 px; no jpeg; no noise",                # clause order
    "high noise sigma 30",
    "",
])
def test_parse_refuses_what_the_grammar_does_not_write(text):
    assert parse_caption(text) is None


def test_parse_allows_white_space_and_a_full_stop():
    facts = parse_caption("  strong anisotropic blur sigma 2.4 px along 135 deg; moderate noise sigma 9; jpeg quality 60.\n")
    assert facts is not None and facts.blur_angle_deg == 135.0 and facts.noise_sigma == 9.0 and facts.jpeg_quality == 60


# --- the shipped model ----------------------------------------------------------------

def test_shipped_model_is_in_the_package_and_small():
    path = shipped_captioner_path(SHIPPED_CAPTIONER)
    assert path is not None
    size = sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
    assert size <= 15 * 2**20
    recipe = json.loads((Path(path) / "recipe.json").read_text())
    assert recipe["steps"] == recipe["recipe"]["max_train_steps"]
    # the shipped recipe is the one in configs/
    config = yaml.safe_load((REPO / "configs" / "train" / "caption_tiny.yaml").read_text())
    assert {k: v for k, v in recipe["recipe"].items() if k not in ("output_dir", "export_dir")} == {
        k: v for k, v in config.items() if k not in ("output_dir", "export_dir")
    }


def test_shipped_model_loads_offline_through_the_hub_code_path(shipped, monkeypatch):
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert isinstance(shipped, MLLMCaptioner)
    assert isinstance(shipped.model, LlavaForConditionalGeneration)
    assert isinstance(shipped.processor, LlavaProcessor)
    assert shipped.name == SHIPPED
    # the prompt goes through the model's own chat template
    assert shipped._text.endswith("assistant:") and "<image>" in shipped._text


def test_shipped_captions_parse_and_are_deterministic(shipped, data_dir):
    tiles, _ = _crop_tiles(data_dir, 12, seed=5, jpeg_share=0.5)
    captions = shipped.caption(tiles)
    assert all(parse_caption(c) is not None for c in captions), captions
    assert shipped.caption(tiles) == captions
    # batching does not change a caption
    single = [shipped.caption(tiles[i : i + 1])[0] for i in range(3)]
    assert single == captions[:3]


def test_shipped_model_reads_the_degradation(shipped, data_dir):
    """It reads the image: on crops of a real plot, its numbers follow the truth."""
    result = evaluate_captioner([data_dir / "neon_harv_plot.tif"], shipped, n_crops=32, crop=96, seed=3, scale=2,
                                jpeg_share=0.5)
    assert result["parse_rate"] >= 0.95
    assert result["noise_median_abs_err"] <= 4.0
    assert result["blur_median_abs_err"] <= 0.6
    assert result["jpeg_accuracy"] >= 0.75
    # a blind captioner (the same caption for every crop) does clearly worse on noise and blur
    blind = evaluate_captioner([data_dir / "neon_harv_plot.tif"], load_captioner(
        "fixed:" + format_caption(2.2, False, 0.0, 12.0, None)), n_crops=32, crop=96, seed=3,
        scale=2, jpeg_share=0.5)
    assert result["noise_median_abs_err"] < 0.6 * blind["noise_median_abs_err"]
    assert result["blur_median_abs_err"] < 0.6 * blind["blur_median_abs_err"]


def test_upscale_with_the_shipped_captioner_writes_parsed_captions(tmp_path, data_dir):
    cfg = RunConfig(scale=2, model="bicubic", captioner=SHIPPED, tiles=TileSpec(96, 8), progress=False)
    upscale_scene([data_dir / "rgbn_suba.tif"], tmp_path / "o.tif", cfg)
    features = json.loads((tmp_path / "o.captions.geojson").read_text())["features"]
    assert features and all(parse_caption(f["properties"]["caption"]) for f in features)


def test_evaluate_captioner_cli_side_by_side(tmp_path, data_dir):
    out = tmp_path / "e.json"
    res = CliRunner().invoke(cli, [
        "evaluate-captioner", "--images", str(data_dir / "neon_harv_plot.tif"), "--n", "8",
        "--captioner", "degradation", "--captioner", "none", "--json", str(out),
    ])
    assert res.exit_code == 0, res.output
    header = res.output.splitlines()[0]
    assert "`degradation`" in header and "`none`" in header
    results = json.loads(out.read_text())
    assert [r["captioner"] for r in results] == ["degradation", "none"]
    assert results[0]["parse_rate"] == 1.0
    assert results[1]["parse_rate"] == 0.0 and math.isnan(results[1]["noise_median_abs_err"])


def test_evaluate_captioner_cli_refuses_a_bad_captioner_before_work(data_dir):
    res = CliRunner().invoke(cli, [
        "evaluate-captioner", "--images", str(data_dir / "neon_harv_plot.tif"), "--captioner", "mllm:./no/such",
    ])
    assert res.exit_code != 0 and "no/such" in res.output


# --- training -------------------------------------------------------------------------

def test_training_recipe_trains_resumes_and_exports(tmp_path, data_dir):
    """A few steps of the shipped recipe at toy size: the export loads as an MLLM captioner."""
    from geosr.training.train_captioner import main

    config = yaml.safe_load((REPO / "configs" / "train" / "caption_tiny.yaml").read_text())
    config.update(
        output_dir=str(tmp_path / "run"), export_dir=str(tmp_path / "export"), train_data=[str(data_dir / "neon_harv_plot.tif")],
        bank_size=16, train_batch_size=4, max_train_steps=3, checkpointing_steps=2, lr_warmup_steps=1, vocab_size=300,
        image_size=32,
        vision=dict(config["vision"], hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2),
        text=dict(config["text"], hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=2),
    )
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    main(["--config", str(cfg_path), "--max_train_steps", "2"])
    assert (tmp_path / "run" / "checkpoint-2" / "state.pt").is_file()
    main(["--config", str(cfg_path), "--resume_from_checkpoint", "latest"])
    recipe = json.loads((tmp_path / "export" / "recipe.json").read_text())
    assert recipe["steps"] == 3
    captioner = MLLMCaptioner(str(tmp_path / "export"), device="cpu", max_new_tokens=4)
    assert len(captioner.caption(torch.rand(2, 3, 40, 40))) == 2


def test_tokenizer_keeps_caption_numbers_whole_and_decodes_exactly():
    from geosr.training.caption_data import CropRecipe, draw_params
    from geosr.training.caption_model import train_tokenizer

    rng = np.random.default_rng(1)
    captions = [describe(draw_params(rng, 2, CropRecipe())) for _ in range(3000)]
    tokenizer = train_tokenizer([f" {c}" for c in captions], 512)
    text = " strong anisotropic blur sigma 2.4 px along 135 deg; moderate noise sigma 9; jpeg quality 60"
    tokens = tokenizer.tokenize(text)
    assert "Ġ2.4" in tokens and "Ġ135" in tokens and len(tokens) == 18
    for caption in captions[:50] + ["unseen words, even ü and 12.345!"]:
        assert tokenizer.decode(tokenizer(caption).input_ids) == caption


def test_a_tile_smaller_than_the_crop_is_shown_mirrored_not_in_a_black_frame(shipped):
    """Found by review: the shipped processor centre-crops 64 px without resizing, and padded a
    smaller tile with black: the model described the frame (a 24 px tile read "anisotropic ...
    jpeg quality 90", a flat grey 12 px one "jpeg quality 40")."""
    flat = torch.full((1, 3, 12, 24), 0.5)
    (image,) = shipped._to_images(flat)
    assert image.size == (64, 64)
    pixels = shipped.processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    spread = pixels.amax(dim=(0, 2, 3)) - pixels.amin(dim=(0, 2, 3))  # per channel
    assert float(spread.max()) < 1e-6  # grey throughout: no black frame
