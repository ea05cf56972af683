"""train_heads: the detail and uncertainty heads of a frozen student, trained, calibrated, resumed."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from diffusers import LCMScheduler

from geosr.pipelines import GeoSRPipeline
from geosr.pipelines.lr_space_heads import reads_as_mild
from geosr.training import train_heads
from geosr.uncertainty_metrics import calibration_bins
from test_train_controlnet import common_run_config, write_yaml
from tiny_models import tiny_pipeline_components


@pytest.fixture
def student_dir(tmp_path):
    components = tiny_pipeline_components(student=True, scale=4, tmp_path=tmp_path, unshuffle_factor=4)
    pipe = GeoSRPipeline(**components, default_num_inference_steps=1, default_guidance_scale=1.5)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    pipe.save_pretrained(tmp_path / "student")
    return tmp_path / "student"


def _argv(tmp_path, student_dir) -> list[str]:
    config = dict(common_run_config(tmp_path), output_dir=str(tmp_path / "heads"), model=str(student_dir),
                  captions="truth", degradation="mixed", calibration_batches=2, head_channels=8, head_blocks=1)
    config["calibration_crop_size"] = config["crop_size"]
    config.pop("validation_images")
    config.pop("validation_inference_steps")
    return ["--config", str(write_yaml(tmp_path, config))]


def _outputs(pipe, lr, **kwargs):
    generators = [torch.Generator().manual_seed(i) for i in range(len(lr))]
    return pipe(lr, prompt=[""] * len(lr), generator=generators, **kwargs)


def test_heads_train_calibrate_resume_and_leave_the_student_alone(tmp_path, student_dir):
    argv = _argv(tmp_path, student_dir)
    out = train_heads.main(train_heads.parse_args(argv))
    trained = GeoSRPipeline.from_pretrained(out)
    student = GeoSRPipeline.from_pretrained(student_dir)
    assert trained.detail is not None and trained.uncertainty is not None
    for name in ("unet", "controlnet", "text_encoder"):
        mine, theirs = getattr(trained, name).state_dict(), getattr(student, name).state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs), name
    scale = trained.uncertainty.config.variance_scale
    assert scale > 0 and scale != 1.0

    lr = 0.2 + 0.6 * torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    for pipe in (trained, student):
        pipe.set_progress_bar_config(disable=True)
    # D = 0 is the student's output, bit for bit: its networks were frozen
    torch.testing.assert_close(_outputs(trained, lr).images, _outputs(student, lr).images, rtol=0, atol=0)
    result = _outputs(trained, lr, detail=1.0, return_uncertainty=True)
    assert torch.isfinite(result.uncertainty).all() and (result.uncertainty > 0).all()

    # the calibration brings each decile of the prediction to the mean squared error on its crops,
    # with its own knots for the crops captioned as mildly degraded at most
    config = trained.uncertainty.config
    assert len(config.calibration) == 10 and len(config.mild_calibration) == 10
    assert config.mild_calibration != config.calibration
    args = train_heads.parse_args(argv)
    predicted, actual = [], []
    loader = train_heads.make_dataloader(train_heads.calibration_args(args))
    loader.dataset.set_epoch(0)
    for k, batch in zip(range(2), loader):
        sample, _, grid, base = train_heads._student_output(trained, batch, "cpu", 10_000_019 + k * 64)
        with torch.no_grad():
            mild = torch.tensor([reads_as_mild(text) for text in batch["caption"]])
            variance = torch.nn.functional.pixel_shuffle(trained.uncertainty.variance(sample, grid, mild=mild), 4)
        predicted.append(variance.mean(dim=1).sqrt().numpy())
        actual.append((base - batch["hr"]).square().mean(dim=1).sqrt().numpy())
    bins = calibration_bins(predicted, actual)
    assert max(abs(b["ratio"] - 1) for b in bins) < 0.15

    # a resumed run continues the same optimisation
    first = torch.load(out / "checkpoint-4" / "optimizer.bin", weights_only=False)
    shutil.rmtree(out / "checkpoint-4")
    train_heads.main(train_heads.parse_args(argv + ["--resume_from_checkpoint", "latest"]))
    second = torch.load(out / "checkpoint-4" / "optimizer.bin", weights_only=False)
    for key, state in first["state"].items():
        torch.testing.assert_close(second["state"][key]["exp_avg"], state["exp_avg"])


@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps one process-wide state, set by the first Accelerator (mixed_precision "no"
    in the other training tests): a bf16 run needs it reset, and leaves it reset."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def test_a_bf16_run_saves_the_student_unrounded(tmp_path, student_dir, fresh_accelerator_state):
    out = train_heads.main(train_heads.parse_args(_argv(tmp_path, student_dir) + [
        "--mixed_precision", "bf16", "--max_train_steps", "1", "--calibration_batches", "1"]))
    trained, student = GeoSRPipeline.from_pretrained(out), GeoSRPipeline.from_pretrained(student_dir)
    assert all(torch.equal(trained.unet.state_dict()[k], v) for k, v in student.unet.state_dict().items())


def test_a_teacher_or_another_scale_is_refused(tmp_path, student_dir):
    teacher = GeoSRPipeline(**tiny_pipeline_components(student=False, scale=4, tmp_path=tmp_path, unshuffle_factor=4))
    teacher.save_pretrained(tmp_path / "teacher")
    with pytest.raises(ValueError, match="CFG-distilled"):
        train_heads.main(train_heads.parse_args(_argv(tmp_path, tmp_path / "teacher")))
    with pytest.raises(ValueError, match="upscales x4"):
        train_heads.main(train_heads.parse_args(_argv(tmp_path, student_dir) + ["--scale", "2", "--crop_size", "32"]))


def test_ship_heads_into_the_student_they_were_trained_on(tmp_path, student_dir):
    from geosr.training.ship_heads import ship_heads

    out = train_heads.main(train_heads.parse_args(_argv(tmp_path, student_dir) + ["--max_train_steps", "1"]))
    target = tmp_path / "shipped"
    shutil.copytree(student_dir, target)
    assert ship_heads(out, target) == ["detail", "uncertainty"]
    shipped = GeoSRPipeline.from_pretrained(target)
    assert shipped.detail is not None and shipped.uncertainty is not None
    for head in ("detail", "uncertainty"):  # named by where they now are, not by the run
        assert json.loads((target / head / "config.json").read_text())["_name_or_path"] == str(target / head)
    # another student (other weights) is refused, and left as it was
    other = tmp_path / "other"
    shutil.copytree(student_dir, other)
    pipe = GeoSRPipeline.from_pretrained(other)
    with torch.no_grad():
        next(pipe.unet.parameters()).add_(1.0)
    pipe.save_pretrained(other)
    index = (other / "model_index.json").read_text()
    with pytest.raises(ValueError, match="not the student"):
        ship_heads(out, other)
    assert (other / "model_index.json").read_text() == index and not (other / "detail").exists()


def test_one_head_retrained_from_a_run_keeps_the_other(tmp_path, student_dir):
    first = train_heads.main(train_heads.parse_args(_argv(tmp_path, student_dir) + ["--max_train_steps", "1"]))
    before = GeoSRPipeline.from_pretrained(first)
    argv = _argv(tmp_path, student_dir) + ["--max_train_steps", "2", "--heads", "uncertainty", "--init_heads",
                                           str(first), "--output_dir", str(tmp_path / "stage2")]
    after = GeoSRPipeline.from_pretrained(train_heads.main(train_heads.parse_args(argv)))
    for k, v in before.detail.state_dict().items():
        assert torch.equal(after.detail.state_dict()[k], v)
    changed = [k for k, v in before.uncertainty.state_dict().items() if not torch.equal(after.uncertainty.state_dict()[k], v)]
    assert changed


def test_a_detail_head_of_another_width_starts_anew_beside_the_kept_uncertainty_head(tmp_path, student_dir):
    first = train_heads.main(train_heads.parse_args(_argv(tmp_path, student_dir) + ["--max_train_steps", "1"]))
    before = GeoSRPipeline.from_pretrained(first)
    argv = _argv(tmp_path, student_dir) + ["--max_train_steps", "1", "--heads", "detail", "--init_heads", str(first),
                                           "--detail_channels", "4", "--output_dir", str(tmp_path / "narrow")]
    after = GeoSRPipeline.from_pretrained(train_heads.main(train_heads.parse_args(argv)))
    assert (after.detail.config.channels, after.detail.config.num_blocks) == (4, before.detail.config.num_blocks)
    assert after.detail.trunk.conv_in.out_channels == 4
    for k, v in before.uncertainty.state_dict().items():
        assert torch.equal(after.uncertainty.state_dict()[k], v)


def test_recalibration_refits_a_saved_head(tmp_path, student_dir):
    argv = _argv(tmp_path, student_dir) + ["--max_train_steps", "1"]
    out = train_heads.main(train_heads.parse_args(argv))
    knots = GeoSRPipeline.from_pretrained(out).uncertainty.config.calibration
    train_heads.recalibrate(train_heads.parse_args(argv + ["--calibrate_only", "--calibration_batches", "1"]))
    refitted = GeoSRPipeline.from_pretrained(out).uncertainty.config.calibration
    assert len(refitted) == 10 and refitted != knots


def test_calibration_knots_are_interpolated_and_held_beyond_the_ends():
    from geosr.pipelines.lr_space_heads import _interpolate

    x = torch.tensor([-5.0, 0.0, 0.5, 1.0, 9.0])
    torch.testing.assert_close(_interpolate(x, [[0.0, 1.0], [1.0, 3.0]]), torch.tensor([1.0, 1.0, 2.0, 3.0, 3.0]))


def _other_weights(student_dir) -> None:
    pipe = GeoSRPipeline.from_pretrained(student_dir)
    with torch.no_grad():
        next(pipe.unet.parameters()).add_(1.0)
    pipe.unet.save_pretrained(student_dir / "unet")


def test_a_student_rewritten_during_the_run_is_not_paired_with_its_heads(tmp_path, student_dir, monkeypatch):
    """The run saves the student from disk at its end: a folder rewritten meanwhile (a student
    shipped anew) would have been saved beside heads trained on the one before, and ship_heads
    would then have vouched for that pair."""
    load = train_heads._student

    def load_then_rewrite(*args, **kwargs):
        pipe = load(*args, **kwargs)
        _other_weights(student_dir)
        return pipe

    monkeypatch.setattr(train_heads, "_student", load_then_rewrite)
    with pytest.raises(ValueError, match="changed on disk during the run"):
        train_heads.main(train_heads.parse_args(_argv(tmp_path, student_dir) + ["--max_train_steps", "2"]))
    assert not (tmp_path / "heads" / "model_index.json").exists()  # nothing saved as a pipeline
    # resuming the checkpoint on the student the folder holds now is refused too
    monkeypatch.setattr(train_heads, "_student", load)
    with pytest.raises(ValueError, match="trained on another student"):
        train_heads.main(train_heads.parse_args(_argv(tmp_path, student_dir) + [
            "--max_train_steps", "3", "--resume_from_checkpoint", "latest"]))


def test_each_checkpoint_records_its_student(tmp_path, student_dir):
    """A folder may hold one student's checkpoints and a fresh run on another: the resume is checked
    against the checkpoint it loads, and a run with nothing to resume is not refused."""
    argv = _argv(tmp_path, student_dir)
    first = train_heads.main(train_heads.parse_args(argv + ["--max_train_steps", "2"]))
    record = (first / "checkpoint-2" / train_heads.STUDENT_RECORD).read_text().strip()
    assert record == train_heads.student_fingerprint(str(student_dir))
    _other_weights(student_dir)
    with pytest.raises(ValueError, match="checkpoint-2's heads were trained on another student"):
        train_heads.main(train_heads.parse_args(argv + ["--max_train_steps", "3", "--resume_from_checkpoint", "latest"]))
    # nothing to resume (another folder): --resume_from_checkpoint latest starts afresh
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    out = train_heads.main(train_heads.parse_args(_argv(fresh, student_dir) + [
        "--max_train_steps", "1", "--resume_from_checkpoint", "latest"]))
    assert (out / "checkpoint-1" / train_heads.STUDENT_RECORD).read_text().strip() == \
        train_heads.student_fingerprint(str(student_dir))


def test_calibration_crops_are_imagery_as_delivered(tmp_path, student_dir):
    # another seed, tiles of calibration_crop_size at the images' own GSD, no jitter; the degradations kept
    args = train_heads.parse_args(_argv(tmp_path, student_dir) + ["--rescale_prob", "0.5", "--color_jitter", "0.1",
                                                                  "--calibration_crop_size", "64"])
    held_out = train_heads.calibration_args(args)
    assert (held_out.crop_size, held_out.rescale_prob, held_out.color_jitter) == (64, 0.0, 0.0)
    assert held_out.seed != args.seed and held_out.degradation == args.degradation
    assert (args.crop_size, args.rescale_prob, args.color_jitter) == (32, 0.5, 0.1)


def test_a_calibration_crop_size_off_the_scale_is_refused_before_training(tmp_path, student_dir):
    with pytest.raises(SystemExit):
        train_heads.parse_args(_argv(tmp_path, student_dir) + ["--calibration_crop_size", "30"])  # scale 4
