"""distill_cfg: the student learns the teacher's guided prediction in one branch per step."""

from __future__ import annotations

import argparse
import copy
import shutil

import pytest
import torch
from diffusers.optimization import get_scheduler

from geosr.pipelines.pipeline_geosr import GeoSRPipeline, guidance_embedding, image_to_target, upsample_lr
from geosr.training import distill_cfg
from geosr.training.campaign_state import export_state
from geosr.training.diffusion_batches import encode_captions, x0_eps
from geosr.training.launch import start_schedule_at
from test_train_controlnet import common_run_config, write_yaml
from tiny_models import tiny_pipeline_components


@pytest.fixture
def teacher(tmp_path):
    components = tiny_pipeline_components(tmp_path=tmp_path)
    return GeoSRPipeline(**components)


def fixed_batch(teacher, n=4):
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(n, 3, 16, 16, generator=g)
    condition = upsample_lr(torch.nn.functional.avg_pool2d(hr, 4), 4)
    x0 = image_to_target(hr, condition, True, 2.0)
    timesteps = torch.tensor([100, 400, 700, 950])[:n]
    noisy = teacher.scheduler.add_noise(x0, torch.randn(x0.shape, generator=g), timesteps)
    captions = ["strong isotropic blur sigma 2.0 px; no noise; no jpeg", "mild isotropic blur sigma 0.5 px; "
                "high noise sigma 20; jpeg quality 40", "moderate anisotropic blur sigma 1.0 px along 45 deg",
                "no noise"][:n]
    with torch.no_grad():
        text = encode_captions(teacher.tokenizer, teacher.text_encoder, captions)
        empty = encode_captions(teacher.tokenizer, teacher.text_encoder, [""] * n)
    return {"noisy": noisy, "timesteps": timesteps, "text": text, "empty": empty,
            "condition": condition, "g": torch.tensor([2.0, 4.0, 6.0, 8.0])[:n]}


def test_student_error_against_guided_teacher_halves(teacher):
    torch.manual_seed(0)
    student, controlnet = distill_cfg.make_student(teacher, embedding_dim=16)
    batch = fixed_batch(teacher)
    optimizer = torch.optim.Adam(list(student.parameters()) + list(controlnet.parameters()), lr=3e-3)
    with torch.no_grad():
        before = distill_cfg.guidance_distillation_loss(student, controlnet, teacher, batch).item()
    for _ in range(40):
        loss = distill_cfg.guidance_distillation_loss(student, controlnet, teacher, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = distill_cfg.guidance_distillation_loss(student, controlnet, teacher, batch).item()
    print(f"student MSE vs guided teacher {before:.3g} -> {after:.3g} ({1 - after / before:.0%} drop)")
    assert after <= 0.5 * before


def test_the_fidelity_term_is_the_chosen_distance_to_the_true_x0(teacher):
    torch.manual_seed(0)
    student, controlnet = distill_cfg.make_student(teacher, embedding_dim=16)
    batch = fixed_batch(teacher)
    batch["x0"] = torch.randn(batch["noisy"].shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pred = distill_cfg.predict(student, controlnet, batch["noisy"], batch["timesteps"], batch["text"],
                                   batch["condition"], guidance_embedding(batch["g"] - 1.0, 16), None)
        alphas = teacher.scheduler.alphas_cumprod[batch["timesteps"]]
        x0_student, _ = x0_eps(pred.float(), batch["noisy"], alphas, teacher.scheduler.config.prediction_type)
        scores = {name: distill_cfg.student_loss(student, controlnet, teacher, batch, teacher.scheduler, 1.0, 0.0,
                                                 name)[1]["loss_fidelity"] for name in ("l1", "mse")}
    assert scores["l1"] == pytest.approx((x0_student - batch["x0"]).abs().mean().item(), rel=1e-5)
    assert scores["mse"] == pytest.approx((x0_student - batch["x0"]).square().mean().item(), rel=1e-5)
    config = ["--teacher_model", "t", "--train_data", "d", "--fidelity_weight", "1", "--distill_weight", "0"]
    assert distill_cfg.parse_args(config + ["--fidelity_loss", "mse"]).fidelity_loss == "mse"
    assert distill_cfg.parse_args(config).fidelity_loss == "l1"  # the stages so far
    with pytest.raises(SystemExit):
        distill_cfg.parse_args(config + ["--fidelity_loss", "l2"])


def _rows_per_step(pipe, steps=2, batch=2):
    rows = []
    hook = pipe.unet.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    try:
        pipe(torch.rand(batch, 3, 8, 8), prompt="mild isotropic blur sigma 0.5 px; no noise; no jpeg",
             num_inference_steps=steps, guidance_scale=4.0, generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    return sum(rows) / (steps * batch)


def test_student_runs_one_branch_where_teacher_runs_two(teacher, tmp_path):
    student_unet, student_controlnet = distill_cfg.make_student(teacher, embedding_dim=16)
    components = tiny_pipeline_components(student=True, tmp_path=tmp_path)
    components.update(unet=student_unet, controlnet=student_controlnet)
    student = GeoSRPipeline(**components)
    assert student.is_distilled and not teacher.is_distilled
    assert _rows_per_step(teacher) == 2.0
    assert _rows_per_step(student) == 1.0


def test_lightweight_student_is_smaller(teacher):
    smaller = [max(1, c // 2) for c in teacher.unet.config.block_out_channels]
    unet, controlnet = distill_cfg.make_student(teacher, 16, {"block_out_channels": smaller})
    assert sum(p.numel() for p in unet.parameters()) < sum(p.numel() for p in teacher.unet.parameters())
    assert controlnet.config.conditioning_embedding_out_channels == teacher.controlnet.config.conditioning_embedding_out_channels


def test_distill_run_resume_and_geosr_upscale(tmp_path, teacher, data_dir):
    teacher_dir = tmp_path / "teacher-pipeline"
    teacher.save_pretrained(teacher_dir)
    config = write_yaml(tmp_path, dict(common_run_config(tmp_path), output_dir=str(tmp_path / "student")))
    argv = ["--config", str(config), "--teacher_model", str(teacher_dir), "--guidance_embedding_dim", "16",
            "--step_distillation", "consistency", "--num_inference_steps", "2"]
    out = distill_cfg.main(distill_cfg.parse_args(argv))
    pipe = GeoSRPipeline.from_pretrained(out)
    assert pipe.is_distilled and pipe.config.default_num_inference_steps == 2
    first = torch.load(out / "checkpoint-4" / "optimizer.bin", weights_only=False)
    shutil.rmtree(out / "checkpoint-4")
    distill_cfg.main(distill_cfg.parse_args(argv + ["--resume_from_checkpoint", "latest", "--validation_images"]))
    second = torch.load(out / "checkpoint-4" / "optimizer.bin", weights_only=False)
    for key, state in first["state"].items():
        assert int(second["state"][key]["step"]) == 4
        torch.testing.assert_close(second["state"][key]["exp_avg"], state["exp_avg"])

    # a later stage continues from this student (init_student), not from a teacher copy
    unet, controlnet = distill_cfg.make_student(teacher, 16)
    distill_cfg.load_student_weights(unet, controlnet, str(out))
    for mine, saved in ((unet, pipe.unet), (controlnet, pipe.controlnet)):
        for key, value in saved.state_dict().items():
            torch.testing.assert_close(mine.state_dict()[key], value)
    with pytest.raises(ValueError, match="config differs"):
        distill_cfg.load_student_weights(*distill_cfg.make_student(teacher, 8), str(out))
    with pytest.raises(ValueError, match="not a distilled student"):
        distill_cfg.load_student_weights(unet, controlnet, str(teacher_dir))
    # the student was saved with the teacher's caption encoder; another encoder is refused
    distill_cfg.load_student_weights(unet, controlnet, str(out), teacher.text_encoder)
    other = copy.deepcopy(teacher.text_encoder)
    with torch.no_grad():
        next(other.parameters()).add_(0.1)
    with pytest.raises(ValueError, match="caption encoder is not the teacher's"):
        distill_cfg.load_student_weights(unet, controlnet, str(out), other)

    cli = pytest.importorskip("geosr.cli")
    from click.testing import CliRunner

    result = CliRunner().invoke(cli.cli, ["upscale", str(data_dir / "rgbn_suba.tif"), str(tmp_path / "sr.tif"),
                                          "--scale", "4", "--model", str(out), "--steps", "2"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "sr.tif").is_file()


def test_regrid_gives_the_other_grids_target_exactly():
    from geosr.pipelines.pipeline_geosr import regrid

    g = torch.Generator().manual_seed(0)
    hr, lr = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 16, 16, generator=g)
    up = upsample_lr(lr, 2)
    on_lr_half = image_to_target(hr, up, True, 16.0, unshuffle_factor=4)  # a teacher at LR/2
    on_lr = image_to_target(hr, up, True, 16.0, unshuffle_factor=2)       # its student at LR
    assert torch.equal(regrid(on_lr_half, 4, 2), on_lr)
    assert torch.equal(regrid(on_lr, 2, 4), on_lr_half)


def test_student_on_a_finer_grid_than_its_teacher(tmp_path):
    """x2: an LR/2 teacher (unshuffle 4) teaches a student on the LR grid (unshuffle 2)."""
    teacher = GeoSRPipeline(**tiny_pipeline_components(tmp_path=tmp_path, scale=2, unshuffle_factor=4))
    teacher_dir = tmp_path / "teacher"
    teacher.save_pretrained(teacher_dir)
    unet, controlnet = distill_cfg.make_student(teacher, 16, {"channels": 8}, unshuffle_factor=2)
    assert (unet.config.in_channels, unet.config.out_channels) == (15, 12)
    assert len(controlnet.config.conditioning_embedding_out_channels) == 1  # the LR is on its grid: no downsampling
    with pytest.raises(ValueError, match="times a power of two"):
        distill_cfg.make_student(teacher, 16, unshuffle_factor=3)

    config = write_yaml(tmp_path, dict(
        common_run_config(tmp_path), scale=2, crop_size=32, output_dir=str(tmp_path / "student"),
        teacher_model=str(teacher_dir), guidance_embedding_dim=16, student_unshuffle_factor=2,
        fidelity_weight=1.0, final_timestep_prob=0.5, num_inference_steps=1, validation_images=[]))
    with pytest.raises(SystemExit):  # the consistency loss keeps the teacher's grid
        distill_cfg.parse_args(["--config", str(config), "--step_distillation", "consistency"])
    student = GeoSRPipeline.from_pretrained(distill_cfg.main(distill_cfg.parse_args(["--config", str(config)])))
    assert student.is_distilled and student.unshuffle_factor == 2 and student.concat_channels == 3
    out = student(torch.rand(1, 3, 8, 8), prompt="no noise", num_inference_steps=1,
                  generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 3, 16, 16)


def test_a_fidelity_only_stage_never_runs_the_teacher(tmp_path, monkeypatch):
    teacher = GeoSRPipeline(**tiny_pipeline_components(tmp_path=tmp_path, scale=2, unshuffle_factor=2))
    teacher.save_pretrained(tmp_path / "teacher")
    config = write_yaml(tmp_path, dict(
        common_run_config(tmp_path), scale=2, crop_size=32, output_dir=str(tmp_path / "student"),
        teacher_model=str(tmp_path / "teacher"), guidance_embedding_dim=16, distill_weight=0.0,
        fidelity_weight=1.0, final_timestep_prob=0.9, num_inference_steps=1, validation_images=[]))
    for bad in (["--fidelity_weight", "0"], ["--step_distillation", "consistency"], ["--distill_weight", "-1"]):
        with pytest.raises(SystemExit):
            distill_cfg.parse_args(["--config", str(config), *bad])

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher ran in a fidelity-only stage")

    monkeypatch.setattr(distill_cfg, "teacher_guided", no_teacher)
    out = distill_cfg.main(distill_cfg.parse_args(["--config", str(config)]))
    student = GeoSRPipeline.from_pretrained(out)
    trained = dict(student.unet.named_parameters())
    moved = [n for n, p in teacher.unet.named_parameters() if not torch.equal(p, trained[n])]
    assert student.is_distilled and moved  # it trained, on the fidelity term alone
    # beside each checkpoint the student as a pipeline, which the campaign commits: at the end
    # the finished student (step 4), not the one of the checkpoint before (step 2)
    assert (out / "latest" / "STEP").read_text().strip() == "4"
    latest = dict(GeoSRPipeline.from_pretrained(out / "latest").unet.named_parameters())
    assert all(torch.equal(p, latest[n]) for n, p in trained.items())
    state = export_state(out, tmp_path / "state", recipe=str(config), hours=0.1)
    assert state["step"] == 4 and (tmp_path / "state" / "unet").is_dir()
    assert "distill_cfg" in state["continue"] and f"--init_student {tmp_path / 'state'}" in state["continue"]
    kept = GeoSRPipeline.from_pretrained(tmp_path / "state").text_encoder.state_dict()
    assert all(torch.equal(kept[k], v) for k, v in teacher.text_encoder.state_dict().items())


def test_a_fidelity_stage_may_borrow_captions_from_a_student_but_not_distil_from_one(tmp_path):
    teacher = GeoSRPipeline(**tiny_pipeline_components(tmp_path=tmp_path, scale=2, unshuffle_factor=2))
    teacher.save_pretrained(tmp_path / "teacher")
    run = dict(common_run_config(tmp_path), scale=2, crop_size=32, guidance_embedding_dim=16,
               fidelity_weight=1.0, final_timestep_prob=0.9, num_inference_steps=1, validation_images=[])
    first = distill_cfg.main(distill_cfg.parse_args(["--config", str(write_yaml(tmp_path, dict(
        run, output_dir=str(tmp_path / "first"), teacher_model=str(tmp_path / "teacher"), distill_weight=0.0)))]))
    # the shipped x2 student's fidelity stage: the student lends its own caption encoder and schedule
    (tmp_path / "again").mkdir()
    second = dict(run, teacher_model=str(first), init_student=str(first), output_dir=str(tmp_path / "second"))
    out = distill_cfg.main(distill_cfg.parse_args(
        ["--config", str(write_yaml(tmp_path / "again", dict(second, distill_weight=0.0)))]))
    assert GeoSRPipeline.from_pretrained(out).is_distilled
    # distilling needs a guided teacher: a student has one branch
    with pytest.raises(ValueError, match="already a distilled student"):
        distill_cfg.main(distill_cfg.parse_args(["--config", str(write_yaml(tmp_path / "again", dict(
            second, distill_weight=1.0, output_dir=str(tmp_path / "third"))))]))


def test_a_latest_folder_without_its_step_is_not_exported(tmp_path):
    """STEP is written after the networks: a run killed mid-save leaves none, and the campaign
    must not commit a folder of mixed networks as a step."""
    run = tmp_path / "run"
    GeoSRPipeline(**tiny_pipeline_components(tmp_path=tmp_path)).save_pretrained(run / "latest")
    with pytest.raises(ValueError, match="no STEP"):
        export_state(run, tmp_path / "state", recipe="r.yaml", hours=0.1)
    (run / "latest" / "STEP").write_text("7\n")
    assert export_state(run, tmp_path / "state", recipe="r.yaml", hours=0.1)["step"] == 7


def test_a_student_grows_deeper_as_the_same_function_then_trains(tmp_path):
    """A later stage may add trunk blocks: step 0 is the saved student (issue 25, capacity), to
    float rounding: its new blocks are exact identities, but the CPU's kernels need not sum in the
    same order for the two models (seen on an AVX-512 CPU without AMX: one float32 ulp)."""
    teacher = GeoSRPipeline(**tiny_pipeline_components(tmp_path=tmp_path, scale=2, unshuffle_factor=2))
    teacher.save_pretrained(tmp_path / "teacher")
    run = dict(common_run_config(tmp_path), scale=2, crop_size=32, guidance_embedding_dim=16,
               fidelity_weight=1.0, final_timestep_prob=0.9, num_inference_steps=1, validation_images=[],
               distill_weight=0.0, teacher_model=str(tmp_path / "teacher"))
    first = distill_cfg.main(distill_cfg.parse_args(["--config", str(write_yaml(tmp_path, dict(
        run, output_dir=str(tmp_path / "first"))))]))
    saved = GeoSRPipeline.from_pretrained(first)
    blocks, attention = saved.unet.config.num_blocks, saved.unet.attention_block
    deeper = {"num_blocks": blocks + 2, "attention_index": attention}
    cn_blocks = saved.controlnet.config.num_blocks

    unet, controlnet = distill_cfg.make_student(teacher, 16, deeper, controlnet_blocks=cn_blocks)
    distill_cfg.load_student_weights(unet, controlnet, str(first), teacher.text_encoder)
    lr = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))

    def upscale(pipe):
        return pipe(lr, prompt="mild blur", num_inference_steps=1, generator=torch.Generator().manual_seed(0)).images

    grown = GeoSRPipeline.from_pretrained(first, unet=unet, controlnet=controlnet)
    torch.testing.assert_close(upscale(grown), upscale(saved), rtol=0, atol=1e-6)
    assert len(unet.blocks) == blocks + 2

    # the cross-attention (and the ControlNet's mid residual) must stay after the same block
    moved = distill_cfg.make_student(teacher, 16, dict(deeper, attention_index=attention + 1),
                                     controlnet_blocks=cn_blocks)
    with pytest.raises(ValueError, match="unet config differs"):
        distill_cfg.load_student_weights(*moved, str(first))

    (tmp_path / "grow").mkdir()
    out = distill_cfg.main(distill_cfg.parse_args(["--config", str(write_yaml(tmp_path / "grow", dict(
        run, init_student=str(first), output_dir=str(tmp_path / "deeper"),
        student_unet=deeper, student_controlnet_blocks=cn_blocks)))]))
    student = GeoSRPipeline.from_pretrained(out)
    assert student.unet.config.num_blocks == blocks + 2 and student.controlnet.config.num_blocks == cn_blocks
    new_conv = student.unet.blocks[blocks].conv2.weight
    assert new_conv.abs().sum() > 0  # the new blocks trained
    out = student(torch.rand(1, 3, 8, 8), prompt="no noise", num_inference_steps=1,
                  generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 3, 16, 16)


def test_a_schedule_moved_to_a_step_is_the_uninterrupted_one_from_there():
    def schedule():
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        return get_scheduler("cosine", optimizer=optimizer, num_warmup_steps=3, num_training_steps=20)

    through, moved = schedule(), schedule()
    for _ in range(7):
        through.optimizer.step()
        through.step()
    args = argparse.Namespace(start_step=7, max_train_steps=20)
    start_schedule_at(moved, args, "weights")
    assert moved.get_last_lr() == through.get_last_lr() and 0 < moved.get_last_lr()[0] < 1e-3
    for later in (through, moved):
        later.optimizer.step()
        later.step()
    assert moved.get_last_lr() == through.get_last_lr()
    untouched = schedule()
    start_schedule_at(untouched, argparse.Namespace(start_step=0, max_train_steps=20), None)
    assert untouched.last_epoch == 0
    for bad, weights, match in ((7, None, "saved weights"), (20, "w", "not inside"), (-1, "w", "not inside")):
        with pytest.raises(ValueError, match=match):
            start_schedule_at(schedule(), argparse.Namespace(start_step=bad, max_train_steps=20), weights)


def test_a_stage_cut_short_goes_on_from_its_committed_weights_where_it_stood(tmp_path):
    """The campaign's continue command: a stage committed at step 2 of 4 goes on at step 2 - the
    schedule and step count where they stood - not from the start of its schedule (issue 25)."""
    teacher = GeoSRPipeline(**tiny_pipeline_components(tmp_path=tmp_path, scale=2, unshuffle_factor=2))
    teacher.save_pretrained(tmp_path / "teacher")
    stage = dict(common_run_config(tmp_path), scale=2, crop_size=32, guidance_embedding_dim=16, distill_weight=0.0,
                 fidelity_weight=1.0, final_timestep_prob=0.9, num_inference_steps=1, validation_images=[],
                 teacher_model=str(tmp_path / "teacher"), lr_scheduler="cosine", output_dir=str(tmp_path / "cut"))
    recipe = write_yaml(tmp_path, stage)
    # the session ends after 2 of the recipe's 4 steps
    cut = distill_cfg.main(distill_cfg.parse_args(["--config", str(recipe), "--max_train_steps", "2"]))
    state = export_state(cut, tmp_path / "state", recipe=str(recipe), hours=0.1, stage_start=10)
    assert state["step"] == 12 and state["stage_step"] == 2 and state["stage_start"] == 10
    command = state["continue"].split()
    assert command[:3] == ["python", "-m", "geosr.training.distill_cfg"] and command[-2:] == ["--start_step", "2"]
    assert "--seed" not in command  # the recipe's seed: the data order goes on as it would have
    args = distill_cfg.parse_args(command[3:] + ["--output_dir", str(tmp_path / "next")])
    assert args.init_student == str(tmp_path / "state") and args.start_step == 2
    # the recipe's own init weights (not the stage's committed state) are refused: trained from the
    # middle of a schedule they never began (review)
    with pytest.raises(ValueError, match="carry no STATE.json"):
        distill_cfg.main(distill_cfg.parse_args(["--config", str(recipe), "--init_student", str(cut),
                                                 "--start_step", "2", "--output_dir", str(tmp_path / "wrong")]))
    with pytest.raises(ValueError, match="were saved at step 2 of"):
        distill_cfg.main(distill_cfg.parse_args(command[3:-1] + ["1", "--output_dir", str(tmp_path / "wrong")]))
    out = distill_cfg.main(args)
    assert (out / "latest" / "STEP").read_text().strip() == "4"
    assert not list(out.glob("checkpoint-2"))  # it ran steps 3 and 4 only
    saved = dict(GeoSRPipeline.from_pretrained(tmp_path / "state").unet.named_parameters())
    assert any(not torch.equal(p, saved[n].float()) for n, p in GeoSRPipeline.from_pretrained(out).unet.named_parameters())
    # finished, the stage goes on as a new one: a warm-up and new crops. The same stage exported
    # again keeps the steps the network had before it (a 15th-session export counted from 0)
    again = export_state(out, tmp_path / "state", recipe=str(recipe), hours=0.1)
    assert again["step"] == 14 and again["stage_start"] == 10 and "--start_step" not in again["continue"]
    assert "--lr_warmup_steps 200 --seed" in again["continue"]
    # ... and a new stage of the same recipe, started by that command, counts from its end
    args = distill_cfg.parse_args(again["continue"].split()[3:] + ["--output_dir", str(tmp_path / "third")])
    third = distill_cfg.main(args)
    assert export_state(third, tmp_path / "state", recipe=str(recipe), hours=0.1)["step"] == 14 + 4
    # a finished run exported again is that stage, not another (review: 194 500 steps became 210 500)
    repeat = export_state(third, tmp_path / "state", recipe=str(recipe), hours=0.0)
    assert repeat["step"] == 14 + 4 and repeat["stage_start"] == 14
    # ... and a new stage in that same run folder (a finished stage's continue reuses the recipe's
    # output_dir) counts from its end, not from the finished stage's start
    args = distill_cfg.parse_args(repeat["continue"].split()[3:] + ["--output_dir", str(third), "--max_train_steps", "2"])
    import shutil

    shutil.rmtree(third)
    distill_cfg.main(args)
    assert export_state(third, tmp_path / "state", recipe=str(recipe), hours=0.1)["step"] == 18 + 2
