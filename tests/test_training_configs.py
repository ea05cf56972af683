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


# (teacher, student) recipes of the shipped defaults: x4 is v2's third stage, x2 the v3 student's second stage
# on the LR grid under the v2 x2 teacher
SHIPPED_RECIPES = {
    4: ("geosr_tiny_v2_x4_teacher", "geosr_tiny_v2_x4_student_continued"),
    2: ("geosr_tiny_v2_x2_teacher", "geosr_tiny_v3_x2_student_continued"),
}
# the first student stage of each shipped default, which the shipped stage continues
FIRST_STAGES = {4: "geosr_tiny_v2_x4_student", 2: "geosr_tiny_v3_x2_student"}


def test_the_recipes_are_there():
    names = {p.stem for p in CONFIGS}
    shipped = {name for pair in SHIPPED_RECIPES.values() for name in pair} | set(FIRST_STAGES.values())
    baselines = {"geosr_tiny_v2_regression_baseline_x4_4800", "geosr_tiny_v3_regression_baseline_x2",
                 "geosr_tiny_v3_regression_baseline_x2_continued"}
    assert shipped | baselines | {"tiny_cpu_controlnet", "tiny_cpu_distill"} <= names


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

    teacher, student = _shipped_recipes(scale)
    shipped = Path(shipped_model_path(f"geosr-tiny-x{scale}"))
    index = json.loads((shipped / "model_index.json").read_text())
    unet = json.loads((shipped / "unet" / "config.json").read_text())
    scheduler = json.loads((shipped / "scheduler" / "scheduler_config.json").read_text())
    assert index["default_num_inference_steps"] == student.num_inference_steps == 1
    assert index["default_guidance_scale"] == student.validation_guidance_scale
    assert index["upscale_factor"] == scale
    factor = student.student_unshuffle_factor or teacher.unshuffle_factor
    assert index["unshuffle_factor"] == factor == scale  # both defaults live on the LR grid
    assert index["residual_scale"] == teacher.residual_scale
    assert unet["time_cond_proj_dim"] == student.guidance_embedding_dim
    recipe_unet = {k: v for k, v in teacher.base["unet"].items() if k != "class"}
    recipe_unet.update(student.student_unet or {})
    recipe_unet.update(out_channels=3 * factor**2, in_channels=3 * factor**2 + 3 * (factor // scale) ** 2)
    assert {k: unet[k] for k in recipe_unet} == recipe_unet
    for key, value in teacher.base["scheduler"].items():
        assert scheduler[key] == value, key


def _shipped_recipes(scale):
    root = CONFIGS[0].parent
    teacher_name, student_name = SHIPPED_RECIPES[scale]
    return (train_controlnet.parse_args(["--config", str(root / f"{teacher_name}.yaml")]),
            distill_cfg.parse_args(["--config", str(root / f"{student_name}.yaml")]))


@pytest.mark.parametrize("scale", [2, 4])
def test_student_stages_pair_teacher_and_student(scale):
    root = CONFIGS[0].parent
    teacher, continued = _shipped_recipes(scale)
    student = distill_cfg.parse_args(["--config", str(root / f"{FIRST_STAGES[scale]}.yaml")])
    assert student.teacher_model == teacher.output_dir and student.scale == teacher.scale == scale
    # the shipped stage continues the first student, with the same teacher and the same student layout
    assert continued.init_student == student.output_dir != continued.output_dir
    assert continued.teacher_model == student.teacher_model and continued.scale == scale
    assert continued.guidance_embedding_dim == student.guidance_embedding_dim
    assert continued.student_unet == student.student_unet and continued.crop_size == student.crop_size
    assert continued.student_unshuffle_factor == student.student_unshuffle_factor
    assert set(continued.degradation_mix) <= {"clean", "iso", "aniso"}


@pytest.mark.parametrize("scale", [2, 4])
def test_shipped_recipes_pair_teacher_and_student(scale):
    teacher, student = _shipped_recipes(scale)
    assert student.teacher_model == teacher.output_dir and student.scale == teacher.scale == scale
    assert student.crop_size == teacher.crop_size
    unet = teacher.base["unet"]
    residual = 3 * teacher.unshuffle_factor**2
    assert unet["out_channels"] == residual
    assert unet["in_channels"] == residual + 3 * (teacher.unshuffle_factor // scale) ** 2  # concat_lr
