"""CUDA paths of the diffusion upscaler (skipped without CUDA; run them on a GPU machine)."""

from __future__ import annotations

import pytest
import rasterio
import torch
from diffusers import LCMScheduler

from geosr.models.diffusion import DiffusionUpscaler
from geosr.pipelines import GeoSRPipeline
from tiny_models import tiny_pipeline_components

pytestmark = pytest.mark.gpu

CAPTIONS = ["blur", "", "noise", "jpeg"]
SEEDS = [7, 8, 9, 10]
# Mean absolute difference to the CPU float32 result: TF32 convolutions on the GPU in fp32,
# 8 (bf16) or 11 (fp16) mantissa bits in half precision.
TOLERANCE = {"fp32": 2e-3, "fp16": 1e-2, "bf16": 3e-2}


def save_pipeline(directory, **kwargs) -> str:
    components = tiny_pipeline_components(tmp_path=directory, **kwargs)
    # x0-prediction keeps the random tiny model's output O(1): an epsilon model at t=999
    # multiplies its error by 1/sqrt(alpha_bar) ~ 15, and precision comparisons become noise.
    components["scheduler"] = LCMScheduler.from_config(components["scheduler"].config, prediction_type="sample")
    GeoSRPipeline(**components).save_pretrained(directory / "pipe")
    return str(directory / "pipe")


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory) -> str:
    return save_pipeline(tmp_path_factory.mktemp("student"), student=True)


def tiles(batch: int = 4, size: int = 16) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_cuda_defaults_to_bf16(student_dir):
    model = DiffusionUpscaler(student_dir, 4, device="cuda")
    assert model.dtype == torch.bfloat16
    assert model._pipe.device.type == "cuda" and model._pipe.unet.dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_cuda_matches_cpu_fp32(student_dir, dtype):
    x = tiles(2)
    options = dict(steps=2, guidance=2.0)
    cpu = DiffusionUpscaler(student_dir, 4, device="cpu", dtype="fp32", **options).upscale(x, CAPTIONS[:2], SEEDS[:2])
    gpu = DiffusionUpscaler(student_dir, 4, device="cuda", dtype=dtype, **options).upscale(x, CAPTIONS[:2], SEEDS[:2])
    assert gpu.device.type == "cpu" and gpu.dtype == torch.float32 and torch.isfinite(gpu).all()
    # CPU generators: the same seeds draw the same noise on both devices.
    assert (gpu - cpu).abs().mean() < TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_cuda_batch_size_does_not_change_pixels(student_dir, dtype):
    x = tiles(4)
    by_four = DiffusionUpscaler(student_dir, 4, device="cuda", dtype=dtype, steps=2, batch_size=4)
    by_one = DiffusionUpscaler(student_dir, 4, device="cuda", dtype=dtype, steps=2, batch_size=1)
    a, b = by_four.upscale(x, CAPTIONS, SEEDS), by_one.upscale(x, CAPTIONS, SEEDS)
    # Kernels may differ with the batch size (cuDNN picks per shape): equal up to precision.
    assert (a - b).abs().max() < 10 * TOLERANCE[dtype]


def test_real_cuda_out_of_memory_halves_the_batch(tmp_path):
    teacher_dir = save_pipeline(tmp_path)
    x = tiles(4, 256)  # 1024 x 1024 HR tiles
    model = DiffusionUpscaler(teacher_dir, 4, device="cuda", dtype="fp32", steps=1, guidance=2.0, batch_size=1)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    reference = model.upscale(x, CAPTIONS, SEEDS)
    per_tile = torch.cuda.max_memory_allocated() - base
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    # Leave room for about 2.5 tiles: a batch of 4 runs out of memory, a batch of 2 fits.
    blocker = torch.empty(int(free - 2.5 * per_tile), dtype=torch.uint8, device="cuda")
    try:
        model.batch_size = 4
        out = model.upscale(x, CAPTIONS, SEEDS)
    finally:
        del blocker
        torch.cuda.empty_cache()
    assert model.batch_size in (1, 2)
    assert (out - reference).abs().max() < 10 * TOLERANCE["fp32"]


def test_cli_upscale_on_cuda(tmp_path, data_dir, student_dir):
    cli = pytest.importorskip("geosr.cli").cli
    from click.testing import CliRunner

    src, dst = data_dir / "rgbn_suba.tif", tmp_path / "x4.tif"
    args = ["upscale", str(src), str(dst), "--scale", "4", "--model", student_dir, "--device", "cuda"]
    result = CliRunner().invoke(cli, [*args, "--steps", "2", "--guidance", "1.5", "--dtype", "bf16", "-q"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    with rasterio.open(src) as lr, rasterio.open(dst) as hr:
        assert (hr.count, hr.width, hr.height) == (4, lr.width * 4, lr.height * 4)
        assert hr.crs == lr.crs
