"""GeoSRPipeline with tiny components: branch counts, guidance convention, seeds, round trip."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, LCMScheduler
from diffusers.pipelines.latent_consistency_models import LatentConsistencyModelPipeline

from geosr.pipelines import GeoSRPipeline
from geosr.pipelines.pipeline_geosr import (
    guidance_embedding,
    image_to_target,
    target_to_image,
    upsample_lr,
)
from tiny_models import tiny_pipeline_components


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    # Tiny models on a shared CPU: thread hand-offs cost far more than the arithmetic.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_pipe(tmp_path, **kwargs) -> GeoSRPipeline:
    pipe = GeoSRPipeline(**tiny_pipeline_components(tmp_path=tmp_path, **kwargs))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> GeoSRPipeline:
    return make_pipe(tmp_path_factory.mktemp("teacher"))


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> GeoSRPipeline:
    return make_pipe(tmp_path_factory.mktemp("student"), student=True)


def lr_tiles(batch: int = 2, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def generators(seeds) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


class UNetRows:
    """Counts UNet forwards and the batch rows (branches x images) each one carries."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.rows: list[int] = []
        self.kwargs: list[dict] = []
        self._handle = unet.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        self.rows.append(args[0].shape[0])
        self.kwargs.append(kwargs)

    def remove(self) -> None:
        self._handle.remove()


def run_counted(pipe, **call):
    counter = UNetRows(pipe.unet)
    try:
        pipe(**call)
    finally:
        counter.remove()
    return counter


def test_mode_comes_from_the_checkpoint(teacher, student):
    assert not teacher.is_distilled
    assert student.is_distilled


def test_teacher_runs_two_branches_per_step(teacher):
    # Both branches go through ONE batched forward: count its rows, 2 per image.
    counted = run_counted(teacher, image=lr_tiles(2), prompt="blur", num_inference_steps=3, guidance_scale=3.0)
    assert counted.rows == [4, 4, 4]
    assert all(k.get("timestep_cond") is None for k in counted.kwargs)
    # The unconditional rows come first and carry the empty caption.
    empty, caption = teacher.encode_prompt(["", "blur"], torch.device("cpu"))
    for kwargs in counted.kwargs:
        torch.testing.assert_close(kwargs["encoder_hidden_states"], torch.stack([empty, empty, caption, caption]))


def test_teacher_at_guidance_one_runs_the_conditional_branch_only(teacher):
    counted = run_counted(teacher, image=lr_tiles(2), prompt="blur", num_inference_steps=3, guidance_scale=1.0)
    assert counted.rows == [2, 2, 2]


def test_student_runs_one_branch_per_step_with_w_embedded(student):
    counted = run_counted(student, image=lr_tiles(2), prompt="blur", num_inference_steps=2, guidance_scale=3.5)
    assert counted.rows == [2, 2]
    expected = guidance_embedding(torch.full((2,), 2.5), student.unet.config.time_cond_proj_dim)
    for kwargs in counted.kwargs:
        torch.testing.assert_close(kwargs["timestep_cond"], expected, rtol=0, atol=0)


def test_teacher_guidance_combines_branches_as_uncond_plus_g_times_difference(teacher, monkeypatch):
    g = 2.5
    unet_out, step_in = [], []
    handle = teacher.unet.register_forward_hook(lambda m, a, out: unet_out.append(out[0].float()))
    step = teacher.scheduler.step

    def recording_step(model_output, *args, **kwargs):
        step_in.append(model_output)
        return step(model_output, *args, **kwargs)

    monkeypatch.setattr(teacher.scheduler, "step", recording_step)
    try:
        teacher(lr_tiles(2), prompt=["blur", "noise"], num_inference_steps=2, guidance_scale=g)
    finally:
        handle.remove()
    for out, guided in zip(unet_out, step_in, strict=True):
        uncond, cond = out.chunk(2)  # the unconditional (empty caption) rows come first
        torch.testing.assert_close(guided, uncond + g * (cond - uncond))


def test_student_guidance_weight_changes_the_output(student):
    lr = lr_tiles(1)
    a = student(lr, "blur", num_inference_steps=1, guidance_scale=1.0, generator=generators([0])).images
    b = student(lr, "blur", num_inference_steps=1, guidance_scale=5.0, generator=generators([0])).images
    assert not torch.equal(a, b)


def test_guidance_embedding_matches_diffusers_lcm():
    w = torch.tensor([0.0, 0.5, 3.0, 7.5])
    for dim in (16, 17, 256):
        expected = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, dim, torch.float32)
        torch.testing.assert_close(guidance_embedding(w, dim, torch.float32), expected, rtol=0, atol=0)


def test_guidance_embedding_does_not_follow_torch_default_dtype():
    # a bf16 model loading in another thread sets torch's default dtype for the whole process
    w = torch.tensor([0.5, 3.0])
    expected = guidance_embedding(w, 256)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        got = guidance_embedding(w, 256)
    finally:
        torch.set_default_dtype(default)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_guidance_embedding_rejects_non_vector():
    with pytest.raises(ValueError, match="1-D"):
        guidance_embedding(torch.zeros(2, 1), 16)


def test_same_seed_same_pixels_different_seed_different_pixels(teacher):
    lr = lr_tiles(2)
    call = dict(prompt="blur", num_inference_steps=2, guidance_scale=2.0)
    a = teacher(lr, generator=generators([1, 2]), **call).images
    b = teacher(lr, generator=generators([1, 2]), **call).images
    c = teacher(lr, generator=generators([3, 4]), **call).images
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize(
    ("student_mode", "scheduler_cls"),
    [
        (False, DDIMScheduler),
        (False, DDPMScheduler),  # per-step noise drawn from each image's generator
        (True, LCMScheduler),  # per-step noise as well
        (True, DDIMScheduler),
    ],
)
def test_batch_of_four_equals_four_batches_of_one(teacher, student, scheduler_cls, student_mode):
    pipe = student if student_mode else teacher
    original = pipe.scheduler
    pipe.scheduler = scheduler_cls.from_config(original.config)
    try:
        lr = lr_tiles(4)
        captions = ["blur", "", "noise sigma ~8", "jpeg"]
        call = dict(num_inference_steps=3, guidance_scale=2.0)
        batched = pipe(lr, captions, generator=generators([10, 11, 12, 13]), **call).images
        for i in range(4):
            single = pipe(lr[i : i + 1], captions[i], generator=generators([10 + i]), **call).images
            torch.testing.assert_close(single[0], batched[i], rtol=0, atol=1e-5)
    finally:
        pipe.scheduler = original


def test_output_is_upscaled_in_unit_range_and_input_types_agree(teacher):
    lr = lr_tiles(1, size=6)
    call = dict(num_inference_steps=1, guidance_scale=1.0)
    out = teacher(lr, generator=generators([0]), **call).images
    assert out.shape == (1, 3, 24, 24) and out.dtype == torch.float32
    assert 0.0 <= out.min() and out.max() <= 1.0

    pixels = (lr[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    quantised = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255
    from_tensor = teacher(quantised, generator=generators([0]), **call).images
    from_numpy = teacher(pixels, generator=generators([0]), **call).images
    from_pil = teacher(PIL.Image.fromarray(pixels), generator=generators([0]), **call).images
    torch.testing.assert_close(from_numpy, from_tensor)
    torch.testing.assert_close(from_pil, from_tensor)

    as_np = teacher(lr, generator=generators([0]), output_type="np", **call).images
    np.testing.assert_allclose(as_np[0], out[0].permute(1, 2, 0).numpy())
    as_pil = teacher(lr, generator=generators([0]), output_type="pil", **call).images
    assert as_pil[0].size == (24, 24) and as_pil[0].mode == "RGB"
    assert isinstance(teacher(lr, generator=generators([0]), return_dict=False, **call), tuple)


def test_residual_mode_with_a_zero_prediction_returns_the_upsampled_input(tmp_path):
    pipe = make_pipe(tmp_path)
    torch.nn.init.zeros_(pipe.unet.conv_out.weight)
    torch.nn.init.zeros_(pipe.unet.conv_out.bias)
    # x0-prediction: the model says "residual 0"; alpha_bar -> 1 at the end leaves exactly x0.
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type="sample")
    lr = lr_tiles(2)
    out = pipe(lr, "blur", num_inference_steps=2, guidance_scale=2.0, generator=generators([0, 1])).images
    torch.testing.assert_close(out, upsample_lr(lr, 4, "bicubic"), rtol=0, atol=1e-6)


def test_residual_target_round_trip_and_scale():
    hr, up = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    x0 = image_to_target(hr, up, predict_residual=True, residual_scale=2.0)
    torch.testing.assert_close(x0, 2.0 * (hr - up))
    torch.testing.assert_close(target_to_image(x0, up, True, 2.0), hr)
    plain = image_to_target(hr, up, predict_residual=False, residual_scale=2.0)
    torch.testing.assert_close(plain, 2.0 * hr - 1.0)
    torch.testing.assert_close(target_to_image(plain, up, False, 2.0), hr)


@pytest.mark.parametrize("kind", ["teacher", "student", "latent"])
def test_save_pretrained_from_pretrained_round_trip(tmp_path, kind):
    pipe = make_pipe(tmp_path, student=kind == "student", latent=kind == "latent")
    pipe.save_pretrained(tmp_path / "saved")
    loaded = GeoSRPipeline.from_pretrained(tmp_path / "saved")
    loaded.set_progress_bar_config(disable=True)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(pipe.config)
    assert loaded.is_distilled == (kind == "student")
    assert (loaded.vae is None) == (kind != "latent")
    call = dict(image=lr_tiles(2), prompt="blur", num_inference_steps=2, guidance_scale=2.0)
    a = pipe(generator=generators([5, 6]), **call).images
    b = loaded(generator=generators([5, 6]), **call).images
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_defaults_come_from_the_config(teacher, student):
    assert len(run_counted(student, image=lr_tiles(1)).rows) == 4
    assert len(run_counted(teacher, image=lr_tiles(1), guidance_scale=1.0).rows) == 25
    teacher.register_to_config(default_num_inference_steps=2, default_guidance_scale=1.0)
    try:
        assert run_counted(teacher, image=lr_tiles(1)).rows == [1, 1]
    finally:
        teacher.register_to_config(default_num_inference_steps=None, default_guidance_scale=4.0)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (dict(image=torch.rand(1, 4, 8, 8)), "4 channels"),
        (dict(image=torch.rand(1, 3, 8, 8) + 0.5), r"\[0, 1\]"),
        (dict(image=torch.full((1, 3, 8, 8), float("nan"))), "NaN"),
        (dict(prompt=["a", "b", "c"]), "list of 2 str"),
        (dict(num_inference_steps=0), "positive int"),
        (dict(guidance_scale=-1.0), ">= 0"),
        (dict(generator=generators([0])), "1 generators for a batch of 2"),
        (dict(output_type="tif"), "output_type"),
    ],
)
def test_check_inputs_errors(teacher, call, message):
    with pytest.raises(ValueError, match=message):
        teacher(**{"image": lr_tiles(2), "num_inference_steps": 1, **call})


def test_check_inputs_type_errors(teacher):
    with pytest.raises(TypeError, match="floating point"):
        teacher(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(TypeError, match="PIL"):
        teacher([np.zeros((8, 8, 3))])
    with pytest.raises(ValueError, match=r"\[B, C, h, w\]"):
        teacher(torch.rand(8, 8))


def test_student_rejects_guidance_below_one(student):
    with pytest.raises(ValueError, match="w = guidance_scale - 1"):
        student(lr_tiles(1), guidance_scale=0.5)


def test_output_size_must_fit_the_unet(tmp_path):
    pipe = make_pipe(tmp_path, scale=1)
    with pytest.raises(ValueError, match="multiple of 4: pad the input"):
        pipe(lr_tiles(1, size=7), num_inference_steps=1)


def test_mismatched_components_are_named(tmp_path):
    pixel = tiny_pipeline_components(tmp_path=tmp_path)
    latent = tiny_pipeline_components(tmp_path=tmp_path, latent=True)
    residual_latent = GeoSRPipeline(**{**latent, "predict_residual": True})
    with pytest.raises(ValueError, match="pixel space only"):
        residual_latent(lr_tiles(1), num_inference_steps=1)
    pixel_controlnet = GeoSRPipeline(**{**latent, "controlnet": pixel["controlnet"]})
    with pytest.raises(ValueError, match="controlnet in_channels 3 != unet in_channels 4"):
        pixel_controlnet(lr_tiles(1), num_inference_steps=1)
    bad_mode = GeoSRPipeline(**{**pixel, "upsample_mode": "lanczos"})
    with pytest.raises(ValueError, match="upsample_mode"):
        bad_mode(lr_tiles(1), num_inference_steps=1)
