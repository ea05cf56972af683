"""Every shipped training recipe parses: no stale key, the right script, sane values."""

from pathlib import Path

import pytest
import yaml

from geosr.training import distill_cfg, train_controlnet

CONFIGS = sorted((Path(__file__).parents[1] / "configs" / "train").glob("*.yaml"))


def _script(path: Path):
    # Distillation recipes name a teacher; ControlNet recipes do not.
    return distill_cfg if "teacher_model" in yaml.safe_load(path.read_text()) else train_controlnet


def test_the_recipes_are_there():
    names = {p.stem for p in CONFIGS}
    assert {"geosr_tiny_x4_teacher", "geosr_tiny_x4_student", "tiny_cpu_controlnet", "tiny_cpu_distill"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_recipe_parses_with_its_script(path):
    args = _script(path).parse_args(["--config", str(path)])
    assert args.train_data and args.max_train_steps > 0 and args.scale in (2, 3, 4, 8)
    assert args.output_dir


def test_shipped_model_recipe_matches_the_shipped_model():
    from geosr.models import shipped_model_path
    import json

    student = distill_cfg.parse_args(["--config", str(CONFIGS[0].parent / "geosr_tiny_x4_student.yaml")])
    index = json.loads((Path(shipped_model_path("geosr-tiny-x4")) / "model_index.json").read_text())
    unet = json.loads((Path(shipped_model_path("geosr-tiny-x4")) / "unet" / "config.json").read_text())
    assert index["default_num_inference_steps"] == student.num_inference_steps
    assert index["default_guidance_scale"] == student.validation_guidance_scale
    assert unet["time_cond_proj_dim"] == student.guidance_embedding_dim
    assert index["upscale_factor"] == student.scale
