"""Throughput of a GeoSRPipeline on its own: HR tiles per second at several batch sizes.

``geosr bench`` measures whole ``geosr upscale`` runs (I/O, captions, blending, COG);
this measures the model alone, as a GPU owner sizing a cluster wants it: a pipeline
directory, or a *preset* of configs (``configs/bench/sd15_student.yaml``: a Stable
Diffusion 1.5-size CFG-distilled student) built with random weights - speed and memory do
not depend on the weights, so nothing is downloaded.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml

__all__ = ["build_preset_pipeline", "measure_throughput"]


def build_preset_pipeline(preset: str | Path | dict[str, Any], seed: int = 0):
    """A :class:`~geosr.pipelines.GeoSRPipeline` with random weights from a preset of configs.

    Parameters
    ----------
    preset : path or dict
        YAML file or mapping with ``unet``, ``text_encoder``, ``scheduler`` (as in the
        training recipes' ``base``), optional ``vae`` (kwargs of
        :class:`~diffusers.AutoencoderKL`; absent: pixel space) and ``pipeline`` (extra
        pipeline config such as ``upscale_factor``). A ``unet.time_cond_proj_dim`` makes a
        one-branch student.
    seed : int
        Seed of the random initialisation.
    """
    from diffusers import AutoencoderKL, LCMScheduler

    from geosr.pipelines.pipeline_geosr import GeoSRPipeline
    from geosr.pipelines.components import build_components, build_controlnet

    config = yaml.safe_load(Path(preset).read_text()) if not isinstance(preset, dict) else dict(preset)
    components = build_components(config, seed=seed)
    vae = None
    if config.get("vae"):
        torch.manual_seed(seed)
        vae = AutoencoderKL(**config["vae"])
    controlnet = build_controlnet(components["unet"], 3, pixel_space=vae is None, load_weights=False)
    scheduler = LCMScheduler.from_config(components["scheduler"].config)
    return GeoSRPipeline(
        vae=vae,
        text_encoder=components["text_encoder"],
        tokenizer=components["tokenizer"],
        unet=components["unet"],
        controlnet=controlnet,
        scheduler=scheduler,
        **config.get("pipeline", {}),
    )


def measure_throughput(
    pipe,
    hr_tile: int,
    batch_sizes: Sequence[int],
    steps: int | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    repeats: int = 3,
) -> list[dict]:
    """Time ``pipe`` on random LR tiles whose output is ``hr_tile`` px a side.

    Each batch size gets one warm-up call (kernels, allocator), then ``repeats`` timed
    calls; CUDA is synchronised around each call. A batch size that runs out of memory is
    reported as such and larger ones are not tried.

    Returns
    -------
    list of dict
        Per batch size: ``batch_size``, ``seconds_per_call``, ``tiles_per_second``,
        ``hr_megapixels_per_second``, ``peak_gpu_mib`` (CUDA only) or ``error``.
    """
    scale = pipe.config.upscale_factor
    if hr_tile % (scale * pipe.vae_scale_factor):
        raise ValueError(f"hr_tile {hr_tile} must be a multiple of {scale * pipe.vae_scale_factor}")
    import diffusers.utils.logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    # A random-weight benchmark has no float32-only modules to keep: no cast warnings.
    diffusers_logging.set_verbosity_error()
    try:
        pipe.to(device=device, dtype=dtype)
    finally:
        diffusers_logging.set_verbosity(level)
    pipe.set_progress_bar_config(disable=True)
    cuda = str(device).startswith("cuda")
    lr = hr_tile // scale
    results = []
    for b in batch_sizes:
        tiles = torch.rand(b, pipe.image_channels, lr, lr, generator=torch.Generator().manual_seed(b))
        prompts = ["moderate anisotropic blur sigma 1.6 px along 30 deg; low noise sigma 4; no jpeg"] * b
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            times = []
            for i in range(repeats + 1):
                if cuda:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                with torch.inference_mode():
                    pipe(tiles, prompt=prompts, num_inference_steps=steps, output_type="pt")
                if cuda:
                    torch.cuda.synchronize()
                if i:  # the first call warms up
                    times.append(time.perf_counter() - t0)
        except torch.cuda.OutOfMemoryError:
            results.append({"batch_size": b, "error": "out of memory"})
            break
        per_call = sorted(times)[len(times) // 2]  # median
        row = {
            "batch_size": b,
            "seconds_per_call": float(f"{per_call:.4g}"),  # 4 digits at any speed (a GPU call: < 1 ms)
            "tiles_per_second": round(b / per_call, 3),
            "hr_megapixels_per_second": round(b * hr_tile * hr_tile / 1e6 / per_call, 3),
        }
        if cuda:
            row["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        results.append(row)
    return results
