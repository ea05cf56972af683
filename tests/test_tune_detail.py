"""geosr.training.tune_detail: the composition of D = 1 scored through the pipeline, chosen and written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from diffusers import LCMScheduler

from geosr.models import load_upscaler
from geosr.pipelines import GeoSRPipeline
from geosr.training.tune_detail import Setting, main, score_settings
from tiny_models import tiny_pipeline_components, with_tiny_heads

CROPS = Path(__file__).parent / "data" / "val_crops"
GRID = ["--texture-scales", "0.5", "1", "--sharpen", "0:1", "1.5:0.8"]


@pytest.fixture()
def model(tmp_path) -> Path:
    components = tiny_pipeline_components(student=True, scale=2, unshuffle_factor=4, tmp_path=tmp_path)
    components["scheduler"] = LCMScheduler.from_config(components["scheduler"].config, prediction_type="sample")
    GeoSRPipeline(**with_tiny_heads(components)).save_pretrained(tmp_path / "heads")
    return tmp_path / "heads"


def _config(model: Path) -> dict:
    return json.loads((model / "detail" / "config.json").read_text())


def _run(model: Path, *args: str) -> int:
    return main(["--model", str(model), "--scale", "2", "--hr", str(CROPS), "--images", "2", *GRID, *args])


def test_every_setting_is_scored_through_the_pipeline_and_the_head_is_left_as_it_was(model):
    settings = [Setting(1.0, 0.0, 1.0), Setting(0.5, 1.5, 0.8)]
    rows = score_settings(str(model), 2, sorted(CROPS.glob("*.png"))[:2], "clean", settings)
    assert set(rows) == {"bicubic", "D=0", "class", *map(str, settings)}
    assert all(value.shape == (2, 3) for key, value in rows.items() if key != "class")
    assert set(rows["class"]) <= {"mild", "noisy", "degraded"}
    # the texture alone at full weight is the head as trained; the other setting differs from it
    assert (rows[str(settings[0])] != rows[str(settings[1])]).any()
    assert (rows[str(settings[0])] != rows["D=0"]).any()
    head = load_upscaler(str(model), 2, detail=1.0).pipeline.detail
    assert (head.config.texture_scale, head.config.sharpen_amount, head.config.mild_composition,
            head.config.noisy_composition) == (1.0, 0.0, None, None)


def test_the_most_faithful_setting_within_the_bars_is_written(model, capsys):
    assert _run(model, "--min-gain", "-100", "--min-sharpness", "0", "--max-hf-fraction", "100", "--write") == 0
    chosen = capsys.readouterr().out.split("chosen: ")[1].split(" (")[0]
    config = _config(model)
    written = Setting(config["texture_scale"], config["sharpen_amount"], config["sharpen_sigma"])
    assert str(written) == chosen and config.get("mild_composition") is None


@pytest.mark.parametrize("kind, degradation", [("mild", "clean"), ("noisy", "aniso")])
def test_a_caption_class_writes_its_own_composition_only(model, capsys, kind, degradation):
    before = _config(model)
    key = f"{kind}_composition"
    assert _run(model, "--caption-class", kind, "--degradation", degradation, "--min-gain", "-100",
                "--min-sharpness", "0", "--max-hf-fraction", "100", "--write") == 0
    after = _config(model)
    assert set(after[key]) == {"texture_scale", "sharpen_amount", "sharpen_sigma"}
    assert {k: v for k, v in after.items() if k != key} == {k: v for k, v in before.items() if k != key}
    assert f"({kind} captions)" in capsys.readouterr().out


def test_nothing_is_written_when_no_setting_meets_the_bars(model, capsys):
    before = _config(model)
    assert _run(model, "--min-sharpness", "100", "--write") == 1
    assert _config(model) == before
    assert "no setting meets the bars" in capsys.readouterr().err


def test_a_model_without_a_detail_head_is_refused_in_one_line(tmp_path, capsys):
    components = tiny_pipeline_components(student=True, scale=2, unshuffle_factor=4, tmp_path=tmp_path)
    GeoSRPipeline(**with_tiny_heads(components, detail=False)).save_pretrained(tmp_path / "no_detail")
    assert _run(tmp_path / "no_detail") == 2
    assert "has no detail head" in capsys.readouterr().err
