"""geosr bench-model: a pipeline alone, tiles/s per batch size (structure, not speed)."""

from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from diffusers import UNet2DConditionModel

from geosr.cli import cli
from geosr.pipeline_benchmark import build_preset_pipeline, measure_throughput

SD15 = Path(__file__).parents[1] / "configs" / "bench" / "sd15_student.yaml"


def tiny_preset(latent: bool) -> dict:
    preset = {
        "unet": dict(
            sample_size=32, in_channels=4 if latent else 3, out_channels=4 if latent else 3,
            block_out_channels=[8, 16], layers_per_block=1,
            down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"], up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
            cross_attention_dim=32, attention_head_dim=4, norm_num_groups=4, time_cond_proj_dim=16,
        ),
        "text_encoder": dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2),
        "scheduler": dict(num_train_timesteps=1000, prediction_type="epsilon"),
        "pipeline": dict(upscale_factor=4, default_num_inference_steps=2),
    }
    if latent:
        preset["vae"] = dict(
            # 8x downsampling, as SD's VAE and the latent ControlNet condition encoder
            block_out_channels=[8, 8, 8, 8], down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, norm_num_groups=4,
        )
    return preset


@pytest.mark.parametrize("latent", [False, True])
def test_throughput_rows_per_batch_size(latent):
    pipe = build_preset_pipeline(tiny_preset(latent))
    assert pipe.is_distilled and (pipe.vae is not None) == latent
    rows = measure_throughput(pipe, 32, [1, 2], repeats=1)
    assert [r["batch_size"] for r in rows] == [1, 2]
    for r in rows:
        assert r["seconds_per_call"] > 0
        assert r["tiles_per_second"] == pytest.approx(r["batch_size"] / r["seconds_per_call"], rel=1e-2)
        assert "peak_gpu_mib" not in r


def test_tile_must_fit_scale_and_latent_grid():
    pipe = build_preset_pipeline(tiny_preset(latent=True))
    with pytest.raises(ValueError, match="multiple of 32"):
        measure_throughput(pipe, 36, [1])


def test_sd15_preset_is_stable_diffusion_1_5_size():
    config = yaml.safe_load(SD15.read_text())
    with torch.device("meta"):  # shapes only: no 3.4 GB of random weights
        unet = UNet2DConditionModel(**config["unet"])
    n = sum(p.numel() for p in unet.parameters())
    assert 0.85e9 < n < 0.87e9, n  # SD1.5's 859.5 M plus the guidance projection
    assert unet.config.time_cond_proj_dim == 256


def test_cli_table_and_json(tmp_path):
    preset = tmp_path / "tiny.yaml"
    preset.write_text(yaml.safe_dump(tiny_preset(latent=False)))
    out = tmp_path / "r.json"
    res = CliRunner().invoke(
        cli, ["bench-model", "--preset", str(preset), "--hr-tile", "32", "--batch-sizes", "1,2", "--repeats", "1", "--json", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "1 branch(es)" in res.output and "tiles/s" in res.output
    assert len(yaml.safe_load(out.read_text())["results"]) == 2
    res = CliRunner().invoke(cli, ["bench-model", "--hr-tile", "32"])
    assert res.exit_code != 0 and "exactly one of --model or --preset" in res.output


@pytest.mark.gpu
def test_sd15_student_bf16_on_cuda():
    pipe = build_preset_pipeline(SD15)
    rows = measure_throughput(pipe, 512, [1, 4], device="cuda", dtype=torch.bfloat16, repeats=2)
    assert all(r.get("tiles_per_second", 0) > 0 for r in rows), rows
