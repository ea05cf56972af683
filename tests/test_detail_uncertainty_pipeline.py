"""The detail and uncertainty heads inside a GeoSRPipeline, and the consistency projection."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import LCMScheduler

from geosr.pipelines import GeoSRPipeline
from geosr.pipelines.consistency import bicubic_upsample, invisible_to_lr, model_downsample, project_to_lr, reads_as_clean
from geosr.pipelines.lr_space_heads import reads_as_mild
from geosr.training.train_heads import radial_log_power, spectral_loss
from tiny_models import tiny_pipeline_components, with_tiny_heads


def _pipe(tmp_path, scale=4, factor=4, **heads) -> GeoSRPipeline:
    components = tiny_pipeline_components(student=True, scale=scale, tmp_path=tmp_path, unshuffle_factor=factor)
    pipe = GeoSRPipeline(**with_tiny_heads(components, **heads))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _lr(n=2, size=16, seed=0) -> torch.Tensor:
    # mid-grey texture: outputs stay inside [0, 1], so no clamp hides what the detail adds
    return 0.3 + 0.4 * torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _run(pipe, lr, seed=3, **kwargs):
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(lr))]
    kwargs.setdefault("num_inference_steps", 1)  # the shipped students' one step
    return pipe(lr, prompt=[""] * len(lr), generator=generators, **kwargs)


@pytest.mark.parametrize("scale, factor", [(4, 4), (2, 4)])
def test_detail_zero_is_the_pipeline_without_heads(tmp_path, scale, factor):
    with_heads = _pipe(tmp_path, scale, factor)
    bare = GeoSRPipeline(**tiny_pipeline_components(student=True, scale=scale, tmp_path=tmp_path,
                                                    unshuffle_factor=factor))
    bare.set_progress_bar_config(disable=True)
    lr = _lr()
    torch.testing.assert_close(_run(with_heads, lr, detail=0.0).images, _run(bare, lr).images, rtol=0, atol=0)


def test_detail_changes_pixels_reproducibly_and_invisibly_to_the_lr(tmp_path):
    pipe = _pipe(tmp_path)
    # as the shipped students: v-prediction (an eps-predicting random student's x0 saturates
    # at the last timestep) and small residuals
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    with torch.no_grad():
        pipe.unet.conv_out.weight.mul_(0.01)
    lr = _lr()
    base = _run(pipe, lr).images
    one = _run(pipe, lr, detail=1.0).images
    again = _run(pipe, lr, detail=1.0).images
    other_seed = _run(pipe, lr, seed=11, detail=1.0).images
    assert (one - base).abs().max() > 1e-3
    torch.testing.assert_close(one, again, rtol=0, atol=0)
    assert (other_seed - one).abs().max() > 1e-4  # the detail is drawn from the seed
    # what the model's downsampling sees of the added detail is a small fraction of a DN
    assert 0 < one.min() and one.max() < 1
    seen = model_downsample(one - base, 4)[..., 1:-1, 1:-1]
    assert 255 * seen.pow(2).mean().sqrt() < 0.5
    half = _run(pipe, lr, detail=0.5).images
    assert 0 < (half - base).abs().mean() < (one - base).abs().mean()


def test_detail_near_saturated_pixels_keeps_what_the_output_downsamples_to(tmp_path):
    """Found by review: the detail was made invisible to the downsampling, then the output clipped
    to [0, 1], cutting one side of it over saturated and black pixels: band means moved (-1.4 DN
    over a saturated area at D = 1 on the shipped x2)."""
    pipe, _ = _composing_pipe(tmp_path, texture_scale=0.0, sharpen_amount=2.0)
    lr = _smooth_lr()
    lr[:, :, :, :8] = 1.0  # a saturated cloud's edge, and black water's
    lr[:, 2, 8:, 8:] = 0.0
    base = _run(pipe, lr).images
    one = _run(pipe, lr, detail=1.0).images
    assert (one == 1).sum() > (base == 1).sum() and (one == 0).any()  # the sharpening overshoots: clipped
    seen = model_downsample(one - base, 4)[..., 1:-1, 1:-1]
    assert 255 * seen.pow(2).mean().sqrt() < 0.5
    assert 255 * seen.mean(dim=(-1, -2)).abs().max() < 0.5  # band means


def _gradient_energy(images: torch.Tensor) -> float:
    return float((images.diff(dim=-1).square().mean() + images.diff(dim=-2).square().mean()))


def _composing_pipe(tmp_path, **composition):
    """A pipeline as the shipped students (v-prediction, small residuals) whose detail head is the
    tiny drawn one with ``composition`` in its config; also that drawn head as it was."""
    from geosr.pipelines.lr_space_heads import DetailHead

    pipe = _pipe(tmp_path)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    with torch.no_grad():
        pipe.unet.conv_out.weight.mul_(0.01)
    drawn = pipe.detail
    pipe.register_modules(detail=DetailHead(**{**drawn.config, **composition}))
    pipe.detail.load_state_dict(drawn.state_dict())
    return pipe, drawn


def _smooth_lr() -> torch.Tensor:
    # smooth mid-grey texture: a sharpened output stays inside [0, 1]
    return 0.4 + 0.2 * torch.nn.functional.interpolate(_lr(size=4), size=16, mode="bilinear")


def test_a_sharpening_detail_boosts_edges_invisibly_to_the_lr_and_draws_nothing(tmp_path):
    from geosr.pipelines.lr_space_heads import DetailHead, high_pass

    pipe, drawn = _composing_pipe(tmp_path, texture_scale=0.0, sharpen_amount=1.5)
    lr = _smooth_lr()
    base = _run(pipe, lr).images
    one = _run(pipe, lr, detail=1.0).images
    assert 0 < one.min() and one.max() < 1
    assert _gradient_energy(one) > 1.2 * _gradient_energy(base)
    assert 255 * model_downsample(one - base, 4)[..., 1:-1, 1:-1].pow(2).mean().sqrt() < 0.5
    # no texture: the unsharp mask of the D = 0 output, less what the downsampling sees of it
    torch.testing.assert_close(one - base, invisible_to_lr(1.5 * high_pass(base, 1.0), 4), rtol=0, atol=1e-5)
    # texture and sharpening add up: the composed detail is the sum of the two alone
    pipe.register_modules(detail=DetailHead(**{**drawn.config, "texture_scale": 1.0, "sharpen_amount": 1.5}))
    pipe.detail.load_state_dict(drawn.state_dict())
    both = _run(pipe, lr, detail=1.0).images
    pipe.register_modules(detail=drawn)
    texture = _run(pipe, lr, detail=1.0).images
    torch.testing.assert_close(both - base, (one - base) + (texture - base), rtol=0, atol=1e-5)


def test_inputs_take_the_composition_of_their_caption_class(tmp_path):
    from geosr.pipelines.lr_space_heads import high_pass

    sharpen_only = {"texture_scale": 0.0, "sharpen_amount": 1.5, "sharpen_sigma": 1.0}
    half_texture = {"texture_scale": 0.5, "sharpen_amount": 0.0, "sharpen_sigma": 1.0}
    pipe, drawn = _composing_pipe(tmp_path, mild_composition=sharpen_only, noisy_composition=half_texture)
    lr = torch.cat([_smooth_lr(), _smooth_lr()[:1]])
    captions = [CLEAN, "no blur; moderate noise sigma 8; no jpeg", "strong isotropic blur sigma 1.5 px; no noise; no jpeg"]

    def run(detail):
        generators = [torch.Generator().manual_seed(3 + i) for i in range(len(lr))]
        return pipe(lr, prompt=captions, generator=generators, num_inference_steps=1, detail=detail).images

    base, one = run(0.0), run(1.0)
    # the mild input: its output's unsharp mask only
    torch.testing.assert_close(one[:1] - base[:1], invisible_to_lr(1.5 * high_pass(base[:1], 1.0), 4),
                               rtol=0, atol=1e-5)
    # the noisy one: half the drawn texture; the blurred, noise-free one: the texture at full weight
    pipe.register_modules(detail=drawn)
    texture = run(1.0)
    torch.testing.assert_close(one[1:2] - base[1:2], 0.5 * (texture[1:2] - base[1:2]), rtol=0, atol=1e-5)
    torch.testing.assert_close(one[2:], texture[2:], rtol=0, atol=0)
    assert (texture[1:2] - base[1:2]).abs().max() > 1e-3
    # a head without its own compositions treats every class alike
    assert drawn.composition("mild") == drawn.composition("noisy") == drawn.composition("degraded")
    with pytest.raises(ValueError, match="caption class"):
        drawn.composition("blurry")


def test_caption_classes_follow_the_stated_noise_and_blur():
    from geosr.pipelines.lr_space_heads import caption_class

    assert caption_class(CLEAN) == "mild"
    assert caption_class("no blur; low noise sigma 2; no jpeg") == "mild"
    assert caption_class("no blur; low noise sigma 3; no jpeg") == "noisy"
    assert caption_class("strong anisotropic blur sigma 1.5 px along 30 deg; moderate noise sigma 9; no jpeg") == "noisy"
    assert caption_class("strong isotropic blur sigma 1.5 px; no noise; no jpeg") == "degraded"
    assert caption_class("a blurry photo") == "degraded"  # free text: no stated noise


def test_high_pass_is_zero_on_flat_and_linear_images_and_keeps_an_edge():
    from geosr.pipelines.lr_space_heads import high_pass

    flat = torch.full((1, 3, 32, 32), 0.4)
    ramp = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(1, 3, 32, 32)
    edge = torch.zeros(1, 1, 32, 32)
    edge[..., 16:] = 1.0
    assert high_pass(flat, 1.0).abs().max() < 1e-6
    assert high_pass(ramp, 1.0)[..., 4:-4].abs().max() < 1e-5  # borders are reflected: not linear there
    boosted = high_pass(edge, 1.0)[0, 0, 8]
    assert boosted[15] < -0.1 and boosted[16] > 0.1 and boosted[:12].abs().max() < 1e-6
    with pytest.raises(ValueError, match="sharpen_sigma"):
        from geosr.pipelines.lr_space_heads import DetailHead

        DetailHead(sharpen_sigma=0.0)


def test_uncertainty_is_positive_finite_and_grows_with_detail(tmp_path):
    pipe = _pipe(tmp_path)
    lr = _lr()
    out0 = _run(pipe, lr, return_uncertainty=True)
    out1 = _run(pipe, lr, detail=1.0, return_uncertainty=True)
    assert out0.uncertainty.shape == out0.images.shape
    assert torch.isfinite(out0.uncertainty).all() and (out0.uncertainty > 0).all()
    assert out0.uncertainty.std() > 0  # a map, not a constant
    assert (out1.uncertainty >= out0.uncertainty - 1e-6).all()
    # the uncertainty does not change the output
    torch.testing.assert_close(out0.images, _run(pipe, lr).images, rtol=0, atol=0)


def test_heads_survive_save_and_load(tmp_path):
    pipe = _pipe(tmp_path)
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = GeoSRPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    lr = _lr()
    a, b = _run(pipe, lr, detail=1.0, return_uncertainty=True), _run(loaded, lr, detail=1.0, return_uncertainty=True)
    torch.testing.assert_close(a.images, b.images)
    torch.testing.assert_close(a.uncertainty, b.uncertainty)


@pytest.mark.parametrize("kwargs, match", [
    (dict(detail=1.5), "detail must be"),
    (dict(detail=-0.1), "detail must be"),
])
def test_bad_detail_is_refused(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _run(_pipe(tmp_path), _lr(), **kwargs)


def test_missing_heads_are_named(tmp_path):
    pipe = _pipe(tmp_path, detail=False, uncertainty=False)
    with pytest.raises(ValueError, match="no detail head"):
        _run(pipe, _lr(), detail=0.5)
    with pytest.raises(ValueError, match="no uncertainty head"):
        _run(pipe, _lr(), return_uncertainty=True)


def test_a_head_of_the_wrong_size_is_refused(tmp_path):
    from geosr.pipelines.lr_space_heads import DetailHead

    pipe = _pipe(tmp_path, detail=False)
    pipe.register_modules(detail=DetailHead(sample_channels=12, lr_channels=3))
    with pytest.raises(ValueError, match="detail head reads 12"):
        _run(pipe, _lr(), detail=1.0)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_invisible_to_lr_removes_what_the_downsampling_sees(scale):
    # white noise, the hardest case (a detail residual is mostly high-pass), on an odd-sized tile
    residual = 0.05 * torch.randn(2, 3, 30 * scale, 21 * scale, generator=torch.Generator().manual_seed(0))
    before = model_downsample(residual, scale).pow(2).mean().sqrt()
    kept = invisible_to_lr(residual, scale)
    seen = model_downsample(kept, scale)
    # exact away from the borders (shift-invariant there); one round leaves a little at them
    assert seen[..., 3:-3, 3:-3].pow(2).mean().sqrt() < 1e-4 * before
    assert seen.pow(2).mean().sqrt() < 1e-2 * before
    # and it keeps what the downsampling does not see: most of white noise at x4
    assert kept.pow(2).mean() > (0.6 if scale == 2 else 0.8) * residual.pow(2).mean()


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_upsample_is_torch_bicubic(scale):
    image = torch.rand(2, 3, 13, 9, generator=torch.Generator().manual_seed(scale))
    expected = torch.nn.functional.interpolate(image, scale_factor=scale, mode="bicubic", align_corners=False)
    torch.testing.assert_close(bicubic_upsample(image, scale), expected, rtol=0, atol=1e-5)


def test_spectral_loss_sees_blur():
    image = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    blurred = torch.nn.functional.avg_pool2d(image, 3, stride=1, padding=1)
    assert spectral_loss(image, image, 0.3) == 0
    assert spectral_loss(blurred, image, 0.3) > 0.5
    low, high = radial_log_power(blurred)[0, [2, -2]]
    assert low > high


def test_an_uncertainty_head_that_reads_the_output_gradient(tmp_path):
    from geosr.pipelines.lr_space_heads import UncertaintyHead, gradient_on_grid

    pipe = _pipe(tmp_path, detail=False, uncertainty=False)
    head = UncertaintyHead(sample_channels=48, lr_channels=3, channels=8, num_blocks=1, gradient_channels=16)
    with torch.no_grad():
        head.trunk.conv_out.weight.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(0))
    pipe.register_modules(uncertainty=head.eval())
    lr = _lr()
    out = _run(pipe, lr, return_uncertainty=True)
    assert torch.isfinite(out.uncertainty).all() and out.uncertainty.shape == out.images.shape
    # the feature: a vertical edge of height 0.5 reads 5 on the pixels beside it, 0 elsewhere
    image = torch.zeros(1, 3, 8, 8)
    image[..., 4:] = 0.5
    grid = gradient_on_grid(image, 4)
    assert grid.shape == (1, 16, 2, 2)
    assert torch.allclose(torch.nn.functional.pixel_shuffle(grid, 4)[0, 0, :, 3], torch.full((8,), 5.0))
    with pytest.raises(ValueError, match="reads the output's gradient"):
        head(torch.zeros(1, 48, 2, 2), torch.zeros(1, 3, 2, 2))


@pytest.mark.parametrize("factor", [2, 4])
def test_the_error_map_has_no_lattice_of_the_grid(factor):
    from geosr.pipelines.pipeline_geosr import _without_grid_pattern

    lattice = torch.rand(1, 3, factor, factor, generator=torch.Generator().manual_seed(0)).repeat(1, 1, 8, 8)
    smooth = _without_grid_pattern(lattice, factor)
    # a pattern of the grid's period becomes its mean, away from the replicated borders
    inner = smooth[..., factor:-factor, factor:-factor]
    torch.testing.assert_close(inner, lattice.mean(dim=(-2, -1), keepdim=True).expand_as(inner))
    constant = torch.full((1, 3, 16, 16), 0.25)
    torch.testing.assert_close(_without_grid_pattern(constant, factor), constant)


@pytest.mark.parametrize("scale", [4, 2])
def test_the_shipped_detail_dial_is_monotone_in_sharpness(data_dir, scale):
    from geosr.evaluation import image_to_batch, quantise_8bit, read_hr_image, sharpness_ratio
    from geosr.degradations import degrade
    from geosr.models import load_upscaler

    hr = read_hr_image(data_dir / "val_crops" / "denseresidential55.png", scale, None)
    lr = quantise_8bit(degrade(hr, scale, "clean", seed=0)[0])
    sharpness = []
    for detail in (0.0, 0.5, 1.0):
        out = load_upscaler(f"geosr-tiny-x{scale}", scale, detail=detail).upscale(image_to_batch(lr), ["no blur"], [7])
        sharpness.append(sharpness_ratio(quantise_8bit(out[0].numpy().transpose(1, 2, 0)), hr, scale))
    assert sharpness[0] < sharpness[1] < sharpness[2]


CLEAN = "mild isotropic blur sigma 0.3 px; low noise sigma 1; no jpeg"
BLURRED = "moderate isotropic blur sigma 0.8 px; no noise; no jpeg"


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_project_to_lr_gives_the_lr_back(scale):
    gen = torch.Generator().manual_seed(scale)
    lr = 0.2 + 0.6 * torch.rand(1, 3, 24, 24, generator=gen)
    image = bicubic_upsample(lr, scale) + 0.05 * torch.randn(1, 3, 24 * scale, 24 * scale, generator=gen)
    before = (model_downsample(image, scale) - lr)[..., 4:-4, 4:-4].abs().max()
    after = (model_downsample(project_to_lr(image, lr, scale), scale) - lr)[..., 4:-4, 4:-4].abs().max()
    assert before > 5 / 255 and after < 0.1 / 255


@pytest.mark.parametrize("caption, clean", [
    ("no blur; no noise; no jpeg", True),
    (CLEAN, True),
    ("mild isotropic blur sigma 0.5 px; no noise; no jpeg", False),
    ("no blur; low noise sigma 2; no jpeg", False),
    ("no blur; no noise; jpeg quality 90", False),
    ("mild anisotropic blur sigma 0.3 px along 45 deg; no noise; no jpeg", False),
    ("", False),
    ("a sharp aerial photo", False),
])
def test_only_captions_of_a_clean_downsampling_read_as_clean(caption, clean):
    assert reads_as_clean(caption) is clean


def test_outputs_whose_caption_reads_clean_are_made_consistent_with_their_input(tmp_path):
    pipe = _pipe(tmp_path)
    # small residuals, as the shipped students: the outputs stay inside [0, 1], unclamped
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    with torch.no_grad():
        pipe.unet.conv_out.weight.mul_(0.01)
    lr = _lr()

    def run(captions, **kwargs):
        generators = [torch.Generator().manual_seed(3 + i) for i in range(len(lr))]
        return pipe(lr, prompt=captions, generator=generators, num_inference_steps=1, **kwargs).images

    def lr_error(out):  # per image, DN, borders aside (replicate padding there)
        return ((model_downsample(out, 4) - lr)[..., 2:-2, 2:-2] * 255).abs().amax(dim=(1, 2, 3))

    mixed, off = run([CLEAN, BLURRED], lr_consistency="clean"), run([CLEAN, BLURRED])  # off: the default
    assert lr_error(off).min() > 1.0
    assert lr_error(mixed)[0] < 0.1  # the clean one projected
    torch.testing.assert_close(mixed[1], off[1], rtol=0, atol=0)  # the blurred one as it was
    always = run([CLEAN, BLURRED], lr_consistency="always")
    torch.testing.assert_close(always[0], mixed[0], rtol=0, atol=0)
    assert lr_error(always)[1] < 0.1
    with pytest.raises(ValueError, match="lr_consistency"):
        run([CLEAN, CLEAN], lr_consistency="yes")


def test_inputs_captioned_mild_take_the_mild_calibration_of_the_error(tmp_path):
    pipe = _pipe(tmp_path)
    lr = _lr()

    def sigma(captions):
        generators = [torch.Generator().manual_seed(3 + i) for i in range(len(lr))]
        return pipe(lr, prompt=captions, generator=generators, num_inference_steps=1,
                    return_uncertainty=True).uncertainty

    before = sigma([CLEAN, BLURRED])
    # a head without mild knots (older checkpoints) predicts for mild input as for any
    torch.testing.assert_close(before, sigma([BLURRED, BLURRED]), rtol=0, atol=0)
    four = math.log(4.0)
    pipe.uncertainty.register_to_config(mild_calibration=[[-30.0, four], [5.0, four]])
    after = sigma([CLEAN, BLURRED])
    torch.testing.assert_close(after[0], 2 * before[0])  # variance x4 on the mild one only
    torch.testing.assert_close(after[1], before[1], rtol=0, atol=0)


@pytest.mark.parametrize("caption, mild", [
    (CLEAN, True),
    ("mild isotropic blur sigma 0.5 px; low noise sigma 2; no jpeg", True),
    ("moderate isotropic blur sigma 0.6 px; no noise; no jpeg", False),
    ("no blur; low noise sigma 3; no jpeg", False),
    ("mild anisotropic blur sigma 0.3 px along 45 deg; no noise; no jpeg", False),
    ("no blur; no noise; jpeg quality 90", False),
    ("a sharp aerial photo", False),
])
def test_which_captions_read_as_mild(caption, mild):
    assert reads_as_mild(caption) is mild
