"""Every shipped training recipe parses: no stale key, the right script, sane values."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from geosr.training import distill_cfg, train_captioner, train_controlnet, train_heads

ALL_CONFIGS = sorted((Path(__file__).parents[1] / "configs" / "train").glob("*.yaml"))
# The captioning-VLM recipe builds a vision tower; every other recipe trains an SR model.
CAPTION_CONFIGS = [p for p in ALL_CONFIGS if "vision" in yaml.safe_load(p.read_text())]
CONFIGS = [p for p in ALL_CONFIGS if p not in CAPTION_CONFIGS]


def _script(path: Path):
    # Distillation recipes name a teacher, heads recipes the student they serve; ControlNet recipes neither.
    keys = yaml.safe_load(path.read_text())
    if "teacher_model" in keys:
        return distill_cfg
    return train_heads if "model" in keys else train_controlnet


# The teacher and the student stages of each shipped default, in training order: each student stage
# continues the one before it; the last one is shipped (or, where SHIPPED_AVERAGE says, the mean
# of the last ones). x4: v2 (three stages with the teacher, then a fourth), then v3's three fidelity stages (L1 alone, distill_weight 0: from the shipped student, its
# "teacher" only lends the caption encoder and schedule), two that grow it deeper (6, 10, 16 blocks) and a
# second, a third and a fourth stage at 16 blocks (the second stopped at its step 13 500 of 16 000; the
# third with a share of single-band crops, the fourth at half the peak lr, then three more warm restarts;
# the shipped x4 is a weighted mean of the last five, SHIPPED_AVERAGE); x2: the v3
# student on the LR grid under the v2 x2 teacher (LR/2), three stages, then its two fidelity stages,
# one that grows it deeper (6 -> 10 blocks) and two on coarser ground sample distances.
TEACHERS = {4: "geosr_tiny_v2_x4_teacher", 2: "geosr_tiny_v2_x2_teacher"}
STUDENT_STAGES = {
    4: ("geosr_tiny_v2_x4_student", "geosr_tiny_v2_x4_student_continued", "geosr_tiny_v2_x4_student_stage4",
        "geosr_tiny_v3_x4_student_fidelity", "geosr_tiny_v3_x4_student_fidelity2",
        "geosr_tiny_v3_x4_student_fidelity3", "geosr_tiny_v3_x4_student_deeper",
        "geosr_tiny_v3_x4_student_deeper2", "geosr_tiny_v3_x4_student_16b_stage2",
        "geosr_tiny_v3_x4_student_16b_stage3", "geosr_tiny_v3_x4_student_16b_stage4",
        "geosr_tiny_v3_x4_student_16b_stage5", "geosr_tiny_v3_x4_student_16b_stage6",
        "geosr_tiny_v3_x4_student_16b_stage7", "geosr_tiny_v3_x4_student_16b_stage8",
        "geosr_tiny_v3_x4_student_16b_stage9", "geosr_tiny_v3_x4_student_16b_stage10"),
    2: ("geosr_tiny_v3_x2_student", "geosr_tiny_v3_x2_student_continued", "geosr_tiny_v3_x2_student_stage3",
        "geosr_tiny_v3_x2_student_fidelity", "geosr_tiny_v3_x2_student_fidelity2",
        "geosr_tiny_v3_x2_student_deeper", "geosr_tiny_v3_x2_student_gsd", "geosr_tiny_v3_x2_student_gsd2",
        "geosr_tiny_v3_x2_student_gsd3", "geosr_tiny_v3_x2_student_gsd4"),
}
# Stages that started from the mean of earlier stages' committed weights, folded by the commands in
# their recipe's header (a copy of the shipped folder, then average_weights of those training_state/
# folders into it): x2's fourth coarser-GSD stage, from the mean of the second and third.
AVERAGED_STARTS = {"geosr_tiny_v3_x2_student_gsd4": ("geosr_tiny_v3_x2_student_gsd2", "geosr_tiny_v3_x2_student_gsd3")}
SHIPPED_FOLDER = {scale: f"geosr/data/models/geosr-tiny-x{scale}" for scale in TEACHERS}
# Where the shipped networks are the mean of the last stages' weights (training/average_weights.py),
# those stages, by recipe: their weights are the campaign state's (training_state/ + the run's name).
# each averaged stage with its weight: x4's eighth stage was annealed from the mean of the sixth and
# seventh, the ninth restarted from the eighth, the tenth from the mean of the ninth and the mean of
# the eighth with the 6 + 7 mean, and the shipped x4 is the mean of the tenth and the mean it started from
SHIPPED_AVERAGE = {4: (("geosr_tiny_v3_x4_student_16b_stage6", 0.0625), ("geosr_tiny_v3_x4_student_16b_stage7", 0.0625),
                       ("geosr_tiny_v3_x4_student_16b_stage8", 0.125), ("geosr_tiny_v3_x4_student_16b_stage9", 0.25),
                       ("geosr_tiny_v3_x4_student_16b_stage10", 0.5))}


def test_the_recipes_are_there():
    names = {p.stem for p in CONFIGS}
    shipped = set(TEACHERS.values()) | {name for stages in STUDENT_STAGES.values() for name in stages}
    baselines = {"geosr_tiny_v2_regression_baseline_x4_4800", "geosr_tiny_v2_regression_baseline_x4_6400",
                 "geosr_tiny_v3_regression_baseline_x2", "geosr_tiny_v3_regression_baseline_x2_continued",
                 "geosr_tiny_v3_regression_baseline_x2_stage3"}
    heads = {"geosr_tiny_x4_heads", "geosr_tiny_x2_heads", "geosr_tiny_v3_x4_heads_refit",
             "geosr_tiny_v3_x2_heads_refit", "geosr_tiny_v3_x4_heads_refit2", "geosr_tiny_v3_x2_heads_refit2",
             "geosr_tiny_v3_x4_heads_refit3"}
    assert shipped | baselines | heads | {"tiny_cpu_controlnet", "tiny_cpu_distill"} <= names


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


@pytest.mark.parametrize("scale", sorted(SHIPPED_AVERAGE))
def test_shipped_average_is_the_mean_of_its_stages_committed_weights(scale):
    from geosr.training.average_weights import WEIGHTS, load_file

    root = Path(__file__).parents[1]
    names, weights = zip(*SHIPPED_AVERAGE[scale])
    assert names == STUDENT_STAGES[scale][-len(names):] and sum(weights) == 1
    stages = [root / "training_state" / Path(_recipe(name).output_dir).name for name in names]
    for net in ("unet", "controlnet"):
        shipped = load_file(str(root / SHIPPED_FOLDER[scale] / net / WEIGHTS))
        states = [load_file(str(stage / net / WEIGHTS)) for stage in stages]
        for key, value in shipped.items():
            mean = sum(w * s[key].float() for w, s in zip(weights, states))
            torch.testing.assert_close(value, mean, rtol=0, atol=1e-7, msg=f"{net} {key}")


def _recipe(name):
    path = CONFIGS[0].parent / f"{name}.yaml"
    return _script(path).parse_args(["--config", str(path)])


def _shipped_recipes(scale):
    """The teacher's recipe and the shipped (last) student stage's."""
    return _recipe(TEACHERS[scale]), _recipe(STUDENT_STAGES[scale][-1])


def _layout(stage, teacher) -> dict:
    """The student's denoiser layout: the teacher's, with the stage's overrides."""
    return {**teacher.base["unet"], **(stage.student_unet or {})}


def _same_or_grown(before: dict, after: dict, before_args, after_args) -> bool:
    """The same student layout, or a deeper one that load_student_weights grows into: more trunk
    blocks after the same cross-attention block, the ControlNet's depth kept."""
    if before == after:
        return after_args.student_controlnet_blocks in (None, before_args.student_controlnet_blocks)
    rest = ("num_blocks", "attention_index")

    def attention(layout):
        index = layout.get("attention_index")
        return layout["num_blocks"] // 2 if index is None else index

    controlnet_before = before_args.student_controlnet_blocks or max(1, before["num_blocks"] // 2)
    return ({k: v for k, v in before.items() if k not in rest} == {k: v for k, v in after.items() if k not in rest}
            and after["num_blocks"] > before["num_blocks"] and attention(after) == attention(before)
            and after_args.student_controlnet_blocks == controlnet_before)


def _last_distilling_stage(scale):
    """The last student stage that learnt from the teacher (fidelity-only stages do not run it)."""
    return next(r for r in map(_recipe, reversed(STUDENT_STAGES[scale])) if r.distill_weight > 0)


@pytest.mark.parametrize("scale", [2, 4])
def test_student_stages_pair_teacher_and_student(scale):
    teacher = _recipe(TEACHERS[scale])
    stages = [_recipe(name) for name in STUDENT_STAGES[scale]]
    assert stages[0].teacher_model == teacher.output_dir and stages[0].scale == teacher.scale == scale
    assert not stages[0].init_student
    # each later stage continues the one before (its output, the shipped folder it was copied to,
    # or its weights in the campaign state, training_state/ + its run's name), with the same
    # teacher - a fidelity-only stage's only lends its caption encoder, which distill_cfg checks
    # bit for bit against the student's - and the same student layout
    for name, before, stage in zip(STUDENT_STAGES[scale][1:], stages, stages[1:]):
        kept = f"training_state/{Path(before.output_dir).name}"
        if name in AVERAGED_STARTS:  # the recipe says how its start was made, from the stages before it
            header = (CONFIGS[0].parent / f"{name}.yaml").read_text().split("\nteacher_model:")[0]
            sources = [f"training_state/{Path(_recipe(n).output_dir).name}" for n in AVERAGED_STARTS[name]]
            assert AVERAGED_STARTS[name] == STUDENT_STAGES[scale][STUDENT_STAGES[scale].index(name) - len(sources):
                                                                 STUDENT_STAGES[scale].index(name)]
            assert "average_weights" in header and all(src in header for src in sources)
            assert f"--into {stage.init_student}" in header
        else:
            assert stage.init_student in (before.output_dir, SHIPPED_FOLDER[scale], kept)
        assert stage.output_dir != before.output_dir
        assert stage.teacher_model == before.teacher_model or stage.distill_weight == 0
        assert stage.scale == scale
        assert stage.guidance_embedding_dim == before.guidance_embedding_dim
        assert _same_or_grown(_layout(before, teacher), _layout(stage, teacher), before, stage)
        # the teacher's outputs are only drawn at its crop size; a fidelity-only stage may take more context
        assert stage.crop_size == before.crop_size or (stage.distill_weight == 0 and stage.crop_size % scale == 0)
        assert stage.student_unshuffle_factor == before.student_unshuffle_factor
        assert set(stage.degradation_mix) <= {"clean", "iso", "aniso"}


@pytest.mark.parametrize("scale", [2, 4])
def test_shipped_recipes_pair_teacher_and_student(scale):
    teacher, student = _recipe(TEACHERS[scale]), _last_distilling_stage(scale)
    assert student.teacher_model == teacher.output_dir and student.scale == teacher.scale == scale
    assert student.crop_size == teacher.crop_size
    unet = teacher.base["unet"]
    residual = 3 * teacher.unshuffle_factor**2
    assert unet["out_channels"] == residual
    assert unet["in_channels"] == residual + 3 * (teacher.unshuffle_factor // scale) ** 2  # concat_lr
