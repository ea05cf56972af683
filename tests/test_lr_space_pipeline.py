"""LR-space GeoSRPipelines: the diffusion variable and the networks live on a coarse grid."""

from __future__ import annotations

import json

import pytest
import torch

from geosr.pipelines import GeoSRPipeline, LRSpaceControlNet, LRSpaceDenoiser
from geosr.pipelines.pipeline_geosr import image_to_target, target_to_image, upsample_lr
from geosr.training import distill_cfg
from geosr.training.diffusion_batches import condition_inputs
from tiny_models import tiny_pipeline_components

CAPTION = "mild isotropic blur sigma 0.3 px; low noise sigma 4; no jpeg"


@pytest.fixture(params=[(4, 4), (2, 4), (4, 8)], ids=["x4-f4", "x2-f4", "x4-f8"])
def pipe(request, tmp_path):
    scale, factor = request.param
    return GeoSRPipeline(**tiny_pipeline_components(scale=scale, unshuffle_factor=factor, tmp_path=tmp_path))


def _shapes_seen(module, run):
    shapes = []
    hook = module.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape)))
    try:
        run()
    finally:
        hook.remove()
    return shapes


def test_networks_run_on_the_coarse_grid_with_the_lr_concatenated(pipe):
    scale, factor = pipe.config.upscale_factor, pipe.unshuffle_factor
    lr = torch.rand(2, 3, 16, 24)
    out = {}
    unet_shapes = _shapes_seen(pipe.unet, lambda: out.update(
        images=pipe(lr, prompt=CAPTION, num_inference_steps=1, generator=torch.Generator().manual_seed(0)).images))
    hr_h, hr_w = 16 * scale, 24 * scale
    assert out["images"].shape == (2, 3, hr_h, hr_w)
    assert 0 <= out["images"].min() and out["images"].max() <= 1
    residual, lr_channels = 3 * factor**2, 3 * (factor // scale) ** 2
    # a teacher at guidance 4 runs its two branches as one 2B batch
    assert unet_shapes == [(4, residual + lr_channels, hr_h // factor, hr_w // factor)]


def test_unshuffled_target_round_trips():
    hr, lr = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 8, 8)
    up = upsample_lr(lr, 4)
    x0 = image_to_target(hr, up, True, 2.0, unshuffle_factor=8)
    assert x0.shape == (2, 192, 4, 4)
    torch.testing.assert_close(target_to_image(x0, up, True, 2.0, unshuffle_factor=8), hr)


def test_condition_inputs_give_the_lr_and_its_hr_on_the_same_grid():
    hr = torch.rand(3, 3, 32, 32)
    lr = torch.nn.functional.avg_pool2d(hr, 2)
    upsampled, condition, lr_grid, hr_condition = condition_inputs(lr, hr, 2, "bicubic", 4, concat_lr=True)
    assert upsampled.shape == hr.shape
    assert condition.shape == lr.shape == hr_condition.shape  # the contrastive pair is comparable
    assert lr_grid.shape == (3, 12, 8, 8)


def test_save_and_load_round_trip_keeps_pixels_and_classes(pipe, tmp_path):
    lr = torch.rand(1, 3, 8, 8)
    before = pipe(lr, prompt=CAPTION, generator=torch.Generator().manual_seed(3)).images
    pipe.save_pretrained(tmp_path / "saved")
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index["unet"] == ["geosr.pipelines.lr_space_models", "LRSpaceDenoiser"]
    assert index["unshuffle_factor"] == pipe.unshuffle_factor and index["concat_lr"] is True
    loaded = GeoSRPipeline.from_pretrained(tmp_path / "saved")
    assert isinstance(loaded.controlnet, LRSpaceControlNet)
    after = loaded(lr, prompt=CAPTION, generator=torch.Generator().manual_seed(3)).images
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_hr_space_pipelines_of_the_old_layout_still_load(tmp_path):
    old = GeoSRPipeline(**tiny_pipeline_components(tmp_path=tmp_path))
    old.save_pretrained(tmp_path / "old")
    index = json.loads((tmp_path / "old" / "model_index.json").read_text())
    index.pop("unshuffle_factor"), index.pop("concat_lr")  # as written before LR-space models
    (tmp_path / "old" / "model_index.json").write_text(json.dumps(index))
    loaded = GeoSRPipeline.from_pretrained(tmp_path / "old")
    assert loaded.unshuffle_factor is None and loaded.concat_channels == 0
    assert loaded(torch.rand(1, 3, 8, 8), num_inference_steps=1).images.shape == (1, 3, 32, 32)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(unshuffle_factor=6), "multiple of upscale_factor"),
        (dict(predict_residual=False), "predict_residual"),
        (dict(unshuffle_factor=8), "unet must map"),
    ],
)
def test_mismatched_components_are_named(tmp_path, changes, message):
    components = tiny_pipeline_components(scale=4, unshuffle_factor=4, tmp_path=tmp_path)
    components.update(changes)
    with pytest.raises(ValueError, match=message):
        GeoSRPipeline(**components)(torch.rand(1, 3, 8, 8), num_inference_steps=1)


def test_student_starts_as_the_teacher_and_runs_one_branch(tmp_path):
    teacher = GeoSRPipeline(**tiny_pipeline_components(scale=4, unshuffle_factor=4, tmp_path=tmp_path))
    unet, controlnet = distill_cfg.make_student(teacher, embedding_dim=16)
    assert isinstance(unet, LRSpaceDenoiser) and unet.config.time_cond_proj_dim == 16
    components = tiny_pipeline_components(scale=4, unshuffle_factor=4, tmp_path=tmp_path, student=True)
    components.update(unet=unet, controlnet=controlnet)
    student = GeoSRPipeline(**components)
    lr = torch.rand(2, 3, 8, 8)
    rows = [s[0] for s in _shapes_seen(student.unet, lambda: student(lr, prompt=CAPTION, guidance_scale=3.0))]
    assert student.is_distilled and rows == [2] * len(rows)
    # with a zero guidance projection the student at w = 0 is the teacher's conditional branch
    g = torch.Generator().manual_seed(0)
    a = student(lr, prompt=CAPTION, guidance_scale=1.0, num_inference_steps=1, generator=g).images
    g = torch.Generator().manual_seed(0)
    teacher.scheduler = student.scheduler
    b = teacher(lr, prompt=CAPTION, guidance_scale=1.0, num_inference_steps=1, generator=g).images
    torch.testing.assert_close(a, b)


def test_fidelity_term_pulls_the_student_to_the_hr(tmp_path):
    teacher = GeoSRPipeline(**tiny_pipeline_components(scale=2, unshuffle_factor=4, tmp_path=tmp_path))
    student, controlnet = distill_cfg.make_student(teacher, embedding_dim=16)
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(4, 3, 16, 16, generator=g)
    lr = torch.nn.functional.avg_pool2d(hr, 2)
    upsampled, condition, lr_grid, _ = condition_inputs(lr, hr, 2, "bicubic", 4, concat_lr=True)
    x0 = image_to_target(hr, upsampled, True, 2.0, 4)
    scheduler = teacher.scheduler
    t = torch.full((4,), 999)
    with torch.no_grad():
        text = teacher.text_encoder(teacher.tokenizer([CAPTION] * 4, padding="max_length",
                                                      return_tensors="pt").input_ids)[0]
    batch = {"noisy": scheduler.add_noise(x0, torch.randn(x0.shape, generator=g), t), "timesteps": t,
             "text": text, "empty": text, "condition": condition, "g": torch.full((4,), 2.0),
             "x0": x0, "lr_grid": lr_grid}
    optimizer = torch.optim.Adam(list(student.parameters()) + list(controlnet.parameters()), lr=3e-3)
    history = []
    for _ in range(30):
        loss, logs = distill_cfg.student_loss(student, controlnet, teacher, batch, scheduler, fidelity_weight=1.0)
        history.append(logs["loss_fidelity"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert history[-1] < 0.7 * history[0], history


def test_fresh_student_starts_as_an_lr_regressor(tmp_path):
    teacher = GeoSRPipeline(**tiny_pipeline_components(scale=4, unshuffle_factor=4, tmp_path=tmp_path))
    unet, controlnet = distill_cfg.make_student(teacher, embedding_dim=16, overrides={"channels": 8}, seed=1)
    residual = unet.config.out_channels
    # the noisy sample's input weights start at zero; the ControlNet copies the fresh trunk
    assert not unet.conv_in.weight[:, :residual].any() and unet.conv_in.weight[:, residual:].any()
    torch.testing.assert_close(controlnet.conv_in.weight, unet.conv_in.weight)
    assert not torch.equal(unet.conv_out.weight, teacher.unet.conv_out.weight)
