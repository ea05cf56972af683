"""DiffusionUpscaler: loading and errors, per-tile seeds, OOM back-off, fp32 redo, CLI end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch

from geosr.errors import InputError, ModelError
from geosr.models import load_upscaler
from geosr.models.diffusion import DiffusionUpscaler, matches
from geosr.pipelines import GeoSRPipeline
from tiny_models import tiny_pipeline_components


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    # Tiny models on a shared CPU: thread hand-offs cost far more than the arithmetic.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def save_pipeline(directory, **kwargs) -> str:
    GeoSRPipeline(**tiny_pipeline_components(tmp_path=directory, **kwargs)).save_pretrained(directory / "pipe")
    return str(directory / "pipe")


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> str:
    return save_pipeline(tmp_path_factory.mktemp("teacher"))


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory) -> str:
    return save_pipeline(tmp_path_factory.mktemp("student"), student=True)


def tiles(batch: int = 4, size: int = 8) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


CAPTIONS = ["blur", "", "noise", "jpeg"]
SEEDS = [7, 8, 9, 10]


class CallLog:
    """Wraps GeoSRPipeline.__call__: records batch sizes, can fail or spoil chosen calls."""

    def __init__(self, monkeypatch, fail=None, spoil=None) -> None:
        self.batches: list[int] = []
        self.dtypes: list[torch.dtype] = []
        original = GeoSRPipeline.__call__

        def call(pipe, image, *args, **kwargs):
            self.batches.append(len(image))
            self.dtypes.append(pipe.unet.dtype)
            if fail is not None and fail(self, pipe, image):
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            out = original(pipe, image, *args, **kwargs)
            if spoil is not None and spoil(self, pipe, image):
                out.images[1] = float("nan")
            return out

        monkeypatch.setattr(GeoSRPipeline, "__call__", call)


def test_loads_through_the_registry_and_upscales(teacher_dir):
    model = load_upscaler(teacher_dir, 4, steps=2, guidance=1.5, batch_size=2)
    assert isinstance(model, DiffusionUpscaler)
    assert (model.scale, model.channels, model.device) == (4, 3, "cpu")
    assert model.name.startswith(f"diffusion:{teacher_dir} (teacher")
    out = model.upscale(tiles(3), CAPTIONS[:3], SEEDS[:3])
    assert out.shape == (3, 3, 32, 32) and out.dtype == torch.float32 and out.device.type == "cpu"
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_same_pixels_whatever_the_batch_size_or_order(student_dir):
    x = tiles(4)
    by_four = DiffusionUpscaler(student_dir, 4, steps=2, guidance=2.0, batch_size=4).upscale(x, CAPTIONS, SEEDS)
    by_one = DiffusionUpscaler(student_dir, 4, steps=2, guidance=2.0, batch_size=1).upscale(x, CAPTIONS, SEEDS)
    torch.testing.assert_close(by_one, by_four, rtol=0, atol=1e-5)
    order = [3, 1, 0, 2]
    shuffled = DiffusionUpscaler(student_dir, 4, steps=2, guidance=2.0, batch_size=3).upscale(
        x[order], [CAPTIONS[i] for i in order], [SEEDS[i] for i in order]
    )
    torch.testing.assert_close(shuffled, by_four[order], rtol=0, atol=1e-5)
    again = DiffusionUpscaler(student_dir, 4, steps=2, guidance=2.0).upscale(x, CAPTIONS, SEEDS)
    torch.testing.assert_close(again, by_four, rtol=0, atol=0)
    other_seeds = DiffusionUpscaler(student_dir, 4, steps=2, guidance=2.0).upscale(x, CAPTIONS, [1, 2, 3, 4])
    assert not torch.allclose(other_seeds, by_four)


def test_pipeline_is_loaded_once_per_process(student_dir):
    a = DiffusionUpscaler(student_dir, 4, steps=1)
    b = DiffusionUpscaler(student_dir, 4, steps=3, guidance=2.0)
    assert a._pipe is b._pipe


def test_values_outside_the_range_come_back_through_bicubic_and_odd_sizes_are_padded(tmp_path):
    # Latent x2: the UNet needs HR sizes divisible by 4, so 7x5 LR tiles get padded.
    model = DiffusionUpscaler(save_pipeline(tmp_path, scale=2, latent=True), 2, steps=1, guidance=1.0)
    x = torch.rand(2, 3, 7, 5, generator=torch.Generator().manual_seed(0)) * 1.4 - 0.2
    x[0, 0, 0, 0] = float("nan")
    out = model.upscale(x, ["", ""], [0, 1])
    assert out.shape == (2, 3, 14, 10) and torch.isfinite(out).all()
    # the pipeline sees the tiles clamped to [0, 1] (NaN as 0); what the clamp took away comes
    # back as its bicubic, the base the pipeline's residual is over (away from the padded edge)
    clean = x.nan_to_num(0.0).clamp(0, 1)
    bicubic = torch.nn.functional.interpolate(x.nan_to_num(0.0) - clean, scale_factor=2, mode="bicubic")
    expected = model.upscale(clean, ["", ""], [0, 1]) + bicubic
    torch.testing.assert_close(out[..., :-4, :-4], expected[..., :-4, :-4], rtol=0, atol=1e-6)


def test_out_of_memory_halves_the_batch_and_redoes_the_same_tiles(teacher_dir, monkeypatch):
    x = tiles(4)
    reference = DiffusionUpscaler(teacher_dir, 4, steps=2, guidance=1.5).upscale(x, CAPTIONS, SEEDS)
    log = CallLog(monkeypatch, fail=lambda log, pipe, image: len(image) > 1 and len(log.batches) == 1)
    model = DiffusionUpscaler(teacher_dir, 4, steps=2, guidance=1.5, batch_size=4)
    out = model.upscale(x, CAPTIONS, SEEDS)
    assert log.batches == [4, 2, 2]
    assert model.batch_size == 2
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-5)


def test_out_of_memory_at_one_tile_is_raised(teacher_dir, monkeypatch):
    CallLog(monkeypatch, fail=lambda log, pipe, image: True)
    model = DiffusionUpscaler(teacher_dir, 4, steps=1, batch_size=2)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        model.upscale(tiles(2), CAPTIONS[:2], SEEDS[:2])
    assert model.batch_size == 1


def test_non_finite_tiles_are_redone_in_fp32(student_dir, monkeypatch):
    x = tiles(4)
    half = DiffusionUpscaler(student_dir, 4, dtype="bf16", steps=2, guidance=2.0)
    full = DiffusionUpscaler(student_dir, 4, dtype="fp32", steps=2, guidance=2.0)
    reference_half = half.upscale(x, CAPTIONS, SEEDS)
    reference_full = full.upscale(x, CAPTIONS, SEEDS)
    log = CallLog(monkeypatch, spoil=lambda log, pipe, image: len(log.batches) == 1)
    out = half.upscale(x, CAPTIONS, SEEDS)
    assert log.batches == [4, 1] and log.dtypes == [torch.bfloat16, torch.float32]
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[1], reference_full[1], rtol=0, atol=1e-5)
    keep = [0, 2, 3]
    torch.testing.assert_close(out[keep], reference_half[keep], rtol=0, atol=0)


def test_non_finite_in_fp32_is_an_error(student_dir, monkeypatch):
    CallLog(monkeypatch, spoil=lambda log, pipe, image: True)
    with pytest.raises(ModelError, match="non-finite"):
        DiffusionUpscaler(student_dir, 4, steps=1, dtype="fp32").upscale(tiles(2), CAPTIONS[:2], SEEDS[:2])


def test_model_errors_name_the_problem(tmp_path, teacher_dir):
    with pytest.raises(ModelError, match="upscales x4, but the scale asked for is 2"):
        DiffusionUpscaler(teacher_dir, 2)
    with pytest.raises(ModelError, match=r"'\./no-such-model' does not exist"):
        load_upscaler("./no-such-model", 4)
    with pytest.raises(ModelError, match="no model_index.json"):
        DiffusionUpscaler(str(tmp_path), 4)
    other = tmp_path / "sd"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ModelError, match="holds a StableDiffusionPipeline"):
        DiffusionUpscaler(str(other), 4)
    # Tests run with HF_HUB_OFFLINE=1: a hub id that is not cached fails to load, clearly.
    with pytest.raises(ModelError, match="cannot load the diffusion pipeline 'geosr-test/not-cached'"):
        load_upscaler("geosr-test/not-cached", 4)


def test_option_errors(teacher_dir):
    with pytest.raises(InputError, match="dtype"):
        DiffusionUpscaler(teacher_dir, 4, dtype="fp8")
    with pytest.raises(InputError, match="batch_size"):
        DiffusionUpscaler(teacher_dir, 4, batch_size=0)
    model = DiffusionUpscaler(teacher_dir, 4, steps=1)
    with pytest.raises(InputError, match="3 channels, got 4"):
        model.upscale(torch.rand(1, 4, 8, 8), [""])
    with pytest.raises(InputError, match="captions and seeds"):
        model.upscale(torch.rand(2, 3, 8, 8), [""])


def test_which_specs_the_loader_takes(teacher_dir):
    assert matches(teacher_dir)
    assert matches("org/model-name")
    assert matches("./missing/dir") and matches("missing/nested/dir")
    assert not matches("bicubicc")
    assert not matches("geosr-tiny-x4-not-shipped")


def test_cli_upscale_end_to_end(tmp_path, data_dir, student_dir):
    cli = pytest.importorskip("geosr.cli").cli
    from click.testing import CliRunner

    # The student (one branch per step) keeps this whole-scene run fast on a CPU.
    src, dst = data_dir / "rgbn_suba.tif", tmp_path / "x4.tif"
    args = ["upscale", str(src), str(dst), "--scale", "4", "--model", student_dir]
    result = CliRunner().invoke(cli, [*args, "--steps", "2", "--guidance", "1.5", "--quiet"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    baseline = tmp_path / "bicubic.tif"
    result = CliRunner().invoke(cli, ["upscale", str(src), str(baseline), "--scale", "4", "--model", "bicubic", "-q"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    with rasterio.open(src) as lr, rasterio.open(dst) as hr, rasterio.open(baseline) as bicubic:
        assert (hr.count, hr.width, hr.height) == (4, lr.width * 4, lr.height * 4)
        assert hr.dtypes == lr.dtypes and hr.crs == lr.crs
        np.testing.assert_allclose(hr.bounds, lr.bounds)
        pixels, reference = hr.read(), bicubic.read()
    # every band went through the (untrained) model: R, G, B together, NIR alone (issue 29)
    assert all(not np.array_equal(pixels[b], reference[b]) for b in range(4))


def test_default_precision_follows_the_hardware(student_dir, monkeypatch):
    from geosr.models import diffusion

    assert diffusion.default_dtype_name("cuda:1") == "bf16"
    monkeypatch.setattr(diffusion, "cpu_has_bf16_matrix_units", lambda: False)
    assert diffusion.default_dtype_name("cpu") == "fp32"
    assert DiffusionUpscaler(student_dir, 4, steps=1).dtype == torch.float32
    monkeypatch.setattr(diffusion, "cpu_has_bf16_matrix_units", lambda: True)
    assert diffusion.default_dtype_name("cpu") == "bf16"
    model = DiffusionUpscaler(student_dir, 4, steps=1)
    assert model.dtype == torch.bfloat16 and "bf16" in model.name
    assert DiffusionUpscaler(student_dir, 4, steps=1, dtype="fp32").dtype == torch.float32  # asked for wins
    # a bool either way, whatever this machine is
    monkeypatch.undo()
    assert isinstance(diffusion.cpu_has_bf16_matrix_units(), bool)


def test_the_fingerprint_follows_the_weights_and_the_consistency(tmp_path, student_dir):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(student_dir, copy)
    first = DiffusionUpscaler(str(copy), 4).fingerprint
    assert first == DiffusionUpscaler(student_dir, 4).fingerprint  # the same files elsewhere
    assert DiffusionUpscaler(str(copy), 4, lr_consistency="clean").fingerprint != first
    (weights,) = (copy / "unet").glob("*.safetensors")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # retrained in place: same name, same size
    weights.write_bytes(bytes(data))
    assert DiffusionUpscaler(str(copy), 4).fingerprint != first
    with pytest.raises(InputError, match="lr_consistency"):
        DiffusionUpscaler(student_dir, 4, lr_consistency="sometimes")


def test_a_stopped_run_is_not_resumed_on_other_weights(tmp_path, data_dir, student_dir, monkeypatch):
    import errno
    import shutil

    from geosr.config import RunConfig, TileSpec
    from geosr.engine import upscale_scene
    from geosr.errors import ResumeError, WriteError
    from geosr.writer import WorkRaster

    model = tmp_path / "model"
    shutil.copytree(student_dir, model)
    config = dict(scale=4, model=str(model), captioner="none", tiles=TileSpec(32, 8), progress=False,
                  steps=1, bands=(1, 2, 3), route="off")
    real, writes = WorkRaster._write_rows, [0]

    def full(self, *args):  # the disk fills up after a few cells
        writes[0] += 1
        if writes[0] > 3:
            raise WriteError("no space left on the device (simulated)") from OSError(errno.ENOSPC, "full")
        return real(self, *args)

    monkeypatch.setattr(WorkRaster, "_write_rows", full)
    with pytest.raises(WriteError):
        upscale_scene([str(data_dir / "rgbn_suba.tif")], tmp_path / "out.tif", RunConfig(**config))
    monkeypatch.setattr(WorkRaster, "_write_rows", real)
    (work,) = tmp_path.glob(".out.tif.geosr-run-*")
    assert "model fingerprint" in json.loads((work / "run.json").read_text())
    (weights,) = (model / "controlnet").glob("*.safetensors")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    # the resume runs in a new process: nothing of the first run's models is cached
    import geosr.models
    import geosr.models.diffusion

    monkeypatch.setattr(geosr.models, "_CACHE", {})
    monkeypatch.setattr(geosr.models.diffusion, "_PIPELINES", {})
    with pytest.raises(ResumeError, match="model fingerprint"):
        upscale_scene([str(data_dir / "rgbn_suba.tif")], tmp_path / "out.tif", RunConfig(**config, resume=True))


def test_lr_consistency_from_the_cli_makes_the_output_reproduce_the_input(tmp_path):
    from click.testing import CliRunner
    from diffusers import LCMScheduler

    from geosr.cli import cli
    from geosr.pipelines.consistency import model_downsample
    from tests.rasters import texture, write_raster

    # LR space, as the shipped students, with small residuals (a zero network plus a fixed
    # pattern) on a mid-grey texture: outputs stay in range, so no clamp undoes the projection
    pipe = GeoSRPipeline(**tiny_pipeline_components(tmp_path=tmp_path, student=True, unshuffle_factor=4))
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    with torch.no_grad():
        pipe.unet.conv_out.weight.zero_()
        pipe.unet.conv_out.bias.copy_(0.05 + 0.02 * torch.randn(pipe.unet.conv_out.bias.shape,
                                                                 generator=torch.Generator().manual_seed(0)))
    student_dir = str(tmp_path / "student")
    pipe.save_pretrained(student_dir)
    src = write_raster(tmp_path / "in.tif", (texture(3, 96, 128, 1) * 120 + 70).astype(np.uint8))

    errors = {}
    for mode in ("off", "always"):
        dst = tmp_path / f"{mode}.tif"
        result = CliRunner().invoke(cli, ["upscale", str(src), str(dst), "--scale", "4", "--model", student_dir,
                                          "--route", "off", "--steps", "1", "--lr-consistency", mode, "-q"])
        assert result.exit_code == 0, result.output + repr(result.exception)
        with rasterio.open(src) as lr, rasterio.open(dst) as hr:
            assert hr.tags().get("GEOSR_LR_CONSISTENCY") == (None if mode == "off" else mode)
            down = model_downsample(torch.from_numpy(hr.read().astype(np.float32))[None], 4)[0].numpy()
            inner = (slice(None), slice(6, -6), slice(6, -6))  # the projection's borders replicate
            errors[mode] = np.sqrt(np.mean((down - lr.read().astype(np.float32))[inner] ** 2))
    # off its input by the pattern; projected, within about the 8-bit rounding of the output
    assert errors["off"] > 2.0 and errors["always"] < 0.5, errors


def test_lr_consistency_holds_beside_values_outside_the_scene_stretch(tmp_path):
    """Found by review: a uint16 scene's pixels beyond its stretch (0.1 / 99.9 percentiles) were
    clamped off the model's input and added back as bicubic, which does not downsample to them:
    300 DN off the input beside them with --lr-consistency always (0.3 DN elsewhere)."""
    from click.testing import CliRunner
    from diffusers import LCMScheduler

    from geosr.cli import cli
    from geosr.pipelines.consistency import model_downsample
    from tests.rasters import texture, write_raster

    pipe = GeoSRPipeline(**tiny_pipeline_components(tmp_path=tmp_path, student=True, unshuffle_factor=4))
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    with torch.no_grad():
        pipe.unet.conv_out.weight.zero_()
        pipe.unet.conv_out.bias.zero_()
    student_dir = str(tmp_path / "student")
    pipe.save_pretrained(student_dir)
    data = (texture(3, 96, 128, 1) * 600 + 1000).astype(np.uint16)
    rows, cols = np.random.default_rng(0).integers(8, 88, 8), np.random.default_rng(1).integers(8, 120, 8)
    data[:, rows, cols] = 2400  # glints: above the 99.9th percentile
    src = write_raster(tmp_path / "in.tif", data)
    dst = tmp_path / "out.tif"
    result = CliRunner().invoke(cli, ["upscale", str(src), str(dst), "--scale", "4", "--model", student_dir,
                                      "--route", "off", "--steps", "1", "--lr-consistency", "always", "-q"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    with rasterio.open(dst) as hr:
        down = model_downsample(torch.from_numpy(hr.read().astype(np.float32))[None], 4)[0].numpy()
    error = np.abs(down - data.astype(np.float32))[:, 6:-6, 6:-6]
    assert error.max() < 3.0, error.max()


def test_lr_consistency_is_a_diffusion_setting():
    from geosr.config import RunConfig

    with pytest.raises(InputError, match="lr-consistency"):
        RunConfig(scale=2, model="bicubic", lr_consistency="clean")
    with pytest.raises(InputError, match="off, clean or always"):
        RunConfig(scale=2, lr_consistency="yes")
    assert RunConfig(scale=2, lr_consistency="clean").model_options()["lr_consistency"] == "clean"
    assert "lr_consistency" not in RunConfig(scale=2).model_options()


def test_steps_and_guidance_are_diffusion_settings():
    """Found by review: --steps 4 --guidance 3 with --model bicubic ran and tagged the output
    GEOSR_STEPS=4, GEOSR_GUIDANCE=3.0: provenance of settings no network took."""
    from geosr.config import RunConfig

    for kw, said in ((dict(steps=4), "--steps is a setting"), (dict(guidance=3.0), "--guidance is a setting"),
                     (dict(steps=4, guidance=3.0), "--steps and --guidance are settings")):
        with pytest.raises(InputError, match=said):
            RunConfig(scale=2, model="bicubic", **kw)
    RunConfig(scale=2, model="bicubic")  # unset: fine
