"""Every shipped training recipe parses: no stale key, the right script, sane values."""

import json
from pathlib import Path

import pytest
import yaml

from geosr.training import distill_cfg, train_captioner, train_controlnet

ALL_CONFIGS = sorted((Path(__file__).parents[1] / "configs" / "train").glob("*.yaml"))
# The captioning-VLM recipe builds a vision tower; every other recipe trains an SR model.
CAPTION_CONFIGS = [p for p in ALL_CONFIGS if "vision" in yaml.safe_load(p.read_text())]
CONFIGS = [p for p in ALL_CONFIGS if p not in CAPTION_CONFIGS]


def _script(path: Path):
    # Distillation recipes name a teacher; ControlNet recipes do not.
    return distill_cfg if "teacher_model" in yaml.safe_load(path.read_text()) else train_controlnet


def test_the_recipes_are_there():
    names = {p.stem for p in CONFIGS}
    stages = ("teacher", "student", "student_continued")
    v2 = {f"geosr_tiny_v2_x{s}_{stage}" for s in (2, 4) for stage in stages}
    assert v2 | {"tiny_cpu_controlnet", "tiny_cpu_distill", "geosr_tiny_v2_regression_baseline_x4"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_recipe_parses_with_its_script(path):
    args = _script(path).parse_args(["--config", str(path)])
    assert args.train_data and args.max_train_steps > 0 and args.scale in (2, 3, 4, 8)
    assert args.output_dir


@pytest.mark.parametrize("path", CAPTION_CONFIGS, ids=lambda p: p.stem)
def test_caption_recipe_parses_with_its_script(path):
    cfg = train_captioner.parse_args(["--config", str(path)]).cfg
    assert cfg["train_data"] and cfg["max_train_steps"] > 0 and cfg["output_dir"] and cfg["export_dir"]
    assert not any("val" in Path(d).parts for d in cfg["train_data"])


def test_the_caption_recipe_is_there():
    assert [p.stem for p in CAPTION_CONFIGS] == ["caption_tiny"]


@pytest.mark.parametrize("scale", [2, 4])
def test_shipped_models_match_their_recipes(scale):
    from geosr.models import shipped_model_path

    root = CONFIGS[0].parent
    teacher = train_controlnet.parse_args(["--config", str(root / f"geosr_tiny_v2_x{scale}_teacher.yaml")])
    student = distill_cfg.parse_args(["--config", str(root / f"geosr_tiny_v2_x{scale}_student_continued.yaml")])
    shipped = Path(shipped_model_path(f"geosr-tiny-x{scale}"))
    index = json.loads((shipped / "model_index.json").read_text())
    unet = json.loads((shipped / "unet" / "config.json").read_text())
    scheduler = json.loads((shipped / "scheduler" / "scheduler_config.json").read_text())
    assert index["default_num_inference_steps"] == student.num_inference_steps == 1
    assert index["default_guidance_scale"] == student.validation_guidance_scale
    assert index["upscale_factor"] == scale
    assert index["unshuffle_factor"] == teacher.unshuffle_factor
    assert index["residual_scale"] == teacher.residual_scale
    assert unet["time_cond_proj_dim"] == student.guidance_embedding_dim
    recipe_unet = {k: v for k, v in teacher.base["unet"].items() if k != "class"}
    assert {k: unet[k] for k in recipe_unet} == recipe_unet
    for key, value in teacher.base["scheduler"].items():
        assert scheduler[key] == value, key


@pytest.mark.parametrize("scale", [2, 4])
def test_v2_recipes_pair_teacher_and_student(scale):
    root = CONFIGS[0].parent
    teacher = train_controlnet.parse_args(["--config", str(root / f"geosr_tiny_v2_x{scale}_teacher.yaml")])
    student = distill_cfg.parse_args(["--config", str(root / f"geosr_tiny_v2_x{scale}_student.yaml")])
    assert student.teacher_model == teacher.output_dir and student.scale == teacher.scale == scale
    # stage 3 continues the stage-2 student, with the same teacher and the same student layout
    continued = distill_cfg.parse_args(["--config", str(root / f"geosr_tiny_v2_x{scale}_student_continued.yaml")])
    assert continued.init_student == student.output_dir != continued.output_dir
    assert continued.teacher_model == student.teacher_model and continued.scale == scale
    assert continued.guidance_embedding_dim == student.guidance_embedding_dim
    assert continued.student_unet == student.student_unet and continued.crop_size == student.crop_size
    assert set(continued.degradation_mix) <= {"clean", "iso", "aniso"}
    unet = teacher.base["unet"]
    residual = 3 * teacher.unshuffle_factor**2
    assert unet["out_channels"] == residual
    assert unet["in_channels"] == residual + 3 * (teacher.unshuffle_factor // scale) ** 2  # concat_lr
