"""What a batch of (HR, LR, caption) becomes in both diffusion training scripts.

The diffusion variable ``x0`` and the conditions exactly as :class:`GeoSRPipeline` makes them
at inference (:func:`clean_sample`, :func:`condition_inputs`), the captions' embeddings, the
``(x0, eps)`` of a prediction, the per-step randomness that makes a resumed run draw what
the uninterrupted one drew, and the validation renders.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from geosr.degradations import degrade, describe
from geosr.pipelines.pipeline_geosr import (
    GeoSRPipeline,
    control_image,
    image_to_target,
    lr_on_grid,
    upsample_lr,
)

__all__ = [
    "clean_sample",
    "condition_inputs",
    "encode_captions",
    "render_validation",
    "step_generator",
    "validation_pairs",
    "with_final_timesteps",
    "x0_eps",
]

logger = logging.getLogger(__name__)


def encode_captions(tokenizer, text_encoder, captions: Sequence[str]) -> torch.Tensor:
    """Text-encoder hidden states of captions, padded like GeoSRPipeline.encode_prompt."""
    ids = tokenizer(
        list(captions),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    return text_encoder(ids.to(text_encoder.device))[0]


def clean_sample(
    hr: torch.Tensor,
    upsampled: torch.Tensor,
    vae,
    predict_residual: bool,
    residual_scale: float,
    unshuffle_factor: int | None = None,
) -> torch.Tensor:
    """The clean diffusion variable ``x0`` of HR images, as GeoSRPipeline decodes it."""
    if vae is None:
        return image_to_target(hr, upsampled, predict_residual, residual_scale, unshuffle_factor)
    latents = vae.encode((2.0 * hr - 1.0).to(vae.dtype)).latent_dist.sample()
    return ((latents - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor).float()


def x0_eps(pred: torch.Tensor, sample: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str):
    """(x0, eps) from a network output in the scheduler's parametrisation (``alpha_bar``: ``[B]``)."""
    a = alpha_bar.sqrt().view(-1, 1, 1, 1)
    s = (1 - alpha_bar).sqrt().view(-1, 1, 1, 1)
    if prediction_type == "v_prediction":
        return a * sample - s * pred, a * pred + s * sample
    return (sample - s * pred) / a, pred


def condition_inputs(
    lr: torch.Tensor,
    hr: torch.Tensor,
    scale: int,
    upsample_mode: str,
    unshuffle_factor: int | None,
    concat_lr: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """What a GeoSRPipeline makes of an LR batch, and the HR seen as its contrastive positive.

    Returns
    -------
    (upsampled, condition, lr_grid, hr_condition)
        The LR at the HR size (the residual's base), the ControlNet condition
        (:func:`~geosr.pipelines.pipeline_geosr.control_image`), the LR on the diffusion
        variable's grid when it is concatenated to the networks' input (else None), and the HR
        on the condition's grid: the HR itself when the condition is HR-sized, else the HR
        area-averaged to the LR size (the same content without the degradation, which is what
        the positive stands for).
    """
    upsampled = upsample_lr(lr, scale, upsample_mode)
    condition = control_image(lr, upsampled, unshuffle_factor)
    lr_grid = lr_on_grid(lr, scale, unshuffle_factor) if concat_lr else None
    hr_condition = hr if condition.shape[-2:] == hr.shape[-2:] else F.avg_pool2d(hr, scale)
    return upsampled, condition, lr_grid, hr_condition


def with_final_timesteps(timesteps: torch.Tensor, prob: float, last: int, generator: torch.Generator) -> torch.Tensor:
    """``timesteps`` with a ``prob`` share, drawn from ``generator``, moved to ``last``.

    The last timestep is the only one a 1-step student runs at: the teacher learns its x0
    regression there, the student its one step.
    """
    final = torch.rand(len(timesteps), generator=generator, device=timesteps.device) < prob
    return torch.where(final, torch.full_like(timesteps, last), timesteps)


def step_generator(seed: int, step: int, accelerator) -> torch.Generator:
    """Randomness of one optimisation step (noise, timesteps, caption dropout).

    A function of (seed, step, process) rather than of the global RNG, so that a resumed run
    draws exactly what the uninterrupted run drew (re-creating a DataLoader iterator after a
    resume consumes global random numbers).
    """
    gen = torch.Generator(device=accelerator.device)
    return gen.manual_seed((seed * 1_000_003 + step) * 64 + accelerator.process_index)


def validation_pairs(paths: Sequence[str], args: argparse.Namespace):
    """Fixed (LR, caption, HR) of validation images: centre crop, degradation seeded by index."""
    pairs = []
    for k, path in enumerate(paths):
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
        h, w = array.shape[:2]
        size = min(args.crop_size, h, w) // args.scale * args.scale
        top, left = (h - size) // 2, (w - size) // 2
        hr = np.ascontiguousarray(array[top : top + size, left : left + size])
        lr, params = degrade(hr, args.scale, args.degradation, seed=k)
        pairs.append((torch.from_numpy(lr.transpose(2, 0, 1).copy()), describe(params), hr))
    return pairs


def render_validation(pipeline: GeoSRPipeline, pairs, out_path: Path, steps: int, guidance: float):
    """One PNG row per pair: bicubic | pipeline output | HR."""
    rows = []
    for k, (lr, caption, hr) in enumerate(pairs):
        generator = torch.Generator().manual_seed(k)
        sr = pipeline(lr[None], prompt=caption, num_inference_steps=steps,
                      guidance_scale=guidance, generator=generator).images[0]
        bicubic = upsample_lr(lr[None], pipeline.config.upscale_factor)[0]
        row = torch.cat([bicubic, sr.cpu(), torch.from_numpy(hr.transpose(2, 0, 1))], dim=2)
        rows.append(row)
    grid = (torch.cat(rows, dim=1).clamp(0, 1).permute(1, 2, 0).numpy() * 255).round()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid.astype(np.uint8)).save(out_path)
    logger.info("validation images in %s", out_path)
