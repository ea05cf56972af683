"""The shipped one-step students as ONNX graphs: ``geosr export-onnx geosr-tiny-x4 x4.onnx``.

A CFG-distilled LR-space :class:`~geosr.pipelines.GeoSRPipeline` run for one step is a fixed
function of the LR tile, its initial noise and the caption. :class:`OneStepStudent` is that
function as one torch module with the caption baked in (its text-encoder states and the
guidance weight's embedding are constants; the tokenizer and text encoder stay out of the
graph), and :func:`export_student` writes it to ONNX with the tile size dynamic and the
metadata :mod:`geosr.models.onnx` reads: the graph takes ``lr`` ``[N, 3, h, w]`` in ``[0, 1]``
and ``noise`` ``[N, 3 f^2, s h / f, s w / f]``, which :class:`~geosr.models.own_network.NetworkUpscaler`
draws per tile seed as the pipeline does, so the graph makes the pipeline's pixels - those it
makes with ``lr_consistency="off"``: the projection of clean tiles onto their input
(:func:`~geosr.pipelines.consistency.project_to_lr`) needs an antialiased bicubic
downsampling that ONNX (opset 17) has no operator for, so the graph leaves it out and says so
in its metadata (``lr_consistency: off``).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import torch

from geosr.captioning.vocabulary import format_caption
from geosr.errors import ModelError

__all__ = ["OneStepStudent", "export_student", "compare_export", "clean_caption", "ONNX_OPSET"]

# SDPA (the caption cross-attention) exports from opset 14; 17 has LayerNormalization as one node.
ONNX_OPSET = 17


def clean_caption() -> str:
    """The caption the degradation captioner writes for a tile with no blur, noise or JPEG."""
    return format_caption(0.0, False, 0.0, 0.0, None)


class OneStepStudent(torch.nn.Module):
    """One step of a CFG-distilled LR-space GeoSRPipeline: ``(lr, noise) -> hr``, the caption baked in.

    Parameters
    ----------
    pipe : GeoSRPipeline
        A distilled student on an LR-space grid (``unshuffle_factor``), pixel space.
    caption : str
        The caption every tile gets.
    guidance : float, optional
        Guidance scale (the checkpoint's default when not given).

    Raises
    ------
    ModelError
        ``pipe`` is not a one-step, LR-space, pixel-space student, or its scheduler's step
        is not linear (thresholding, clipping).
    """

    def __init__(self, pipe, caption: str, guidance: float | None = None) -> None:
        super().__init__()
        config = pipe.config
        steps = config.default_num_inference_steps
        if not pipe.is_distilled or steps != 1 or not pipe.unshuffle_factor or pipe.vae is not None:
            raise ModelError("export-onnx exports one-step, CFG-distilled, LR-space students (geosr-tiny-x4, "
                             f"geosr-tiny-x2); this pipeline is a {'student' if pipe.is_distilled else 'teacher'} "
                             f"of {steps} default step(s), unshuffle_factor {pipe.unshuffle_factor}")
        from geosr.pipelines.pipeline_geosr import guidance_embedding

        self.unet, self.controlnet = pipe.unet, pipe.controlnet
        self.scale, self.factor = config.upscale_factor, pipe.unshuffle_factor
        self.upsample_mode, self.residual_scale = config.upsample_mode, config.residual_scale
        self.concat = bool(pipe.concat_channels)
        self.guidance = config.default_guidance_scale if guidance is None else float(guidance)
        with torch.no_grad():
            self.register_buffer("prompt", pipe.encode_prompt([caption], torch.device("cpu")).float())
            w = torch.tensor([self.guidance - 1.0])
            self.register_buffer("timestep_cond", guidance_embedding(w, pipe.unet.config.time_cond_proj_dim))
        self.timestep, self.keep, self.take = _one_step(pipe.scheduler)

    def forward(self, lr: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        from geosr.pipelines.pipeline_geosr import control_image, lr_on_grid, target_to_image, upsample_lr, with_lr

        n = lr.shape[0]
        upsampled = upsample_lr(lr, self.scale, self.upsample_mode)
        condition = control_image(lr, upsampled, self.factor)
        grid = lr_on_grid(lr, self.scale, self.factor) if self.concat else None
        model_input = with_lr(noise, grid)
        prompt = self.prompt.expand(n, -1, -1)
        down, mid = self.controlnet(model_input, self.timestep, encoder_hidden_states=prompt,
                                    controlnet_cond=condition, return_dict=False)
        prediction = self.unet(model_input, self.timestep, encoder_hidden_states=prompt,
                               timestep_cond=self.timestep_cond.expand(n, -1),
                               down_block_additional_residuals=down, mid_block_additional_residual=mid,
                               return_dict=False)[0]
        x0 = self.keep * noise + self.take * prediction
        return target_to_image(x0, upsampled, True, self.residual_scale, self.factor).clamp(0.0, 1.0)


def _one_step(scheduler) -> tuple[int, float, float]:
    """The timestep of a one-step schedule and the step's coefficients: ``x0 = keep * sample + take * prediction``.

    Read off the scheduler itself (its ``init_noise_sigma``, ``scale_model_input`` and ``step``
    on unit inputs), so any linear one-step scheduler exports as the pipeline runs it.
    """
    one = torch.ones(1)
    scheduler.set_timesteps(1)
    t = int(scheduler.timesteps[0])
    scale_in = float(scheduler.scale_model_input(one, t)) * float(scheduler.init_noise_sigma)

    def step(prediction: float, sample: float) -> float:
        scheduler.set_timesteps(1)  # step() advances the scheduler's index
        return float(scheduler.step(prediction * one, t, sample * one, return_dict=False)[0])

    keep, take = step(0.0, 1.0), step(1.0, 0.0)
    if not math.isclose(step(2.0, 3.0), 3 * keep + 2 * take, rel_tol=1e-5, abs_tol=1e-6) or scale_in != 1.0:
        raise ModelError("the student's scheduler step is not linear in its inputs (thresholding or clipping), "
                         "or scales the noise: it cannot be exported as one graph")
    return t, keep, take


def export_student(model: str, output: str | Path, caption: str | None = None, guidance: float | None = None,
                   opset: int = ONNX_OPSET) -> dict:
    """Export the one-step student ``model`` (a shipped name or a pipeline directory) to ONNX at ``output``.

    Parameters
    ----------
    model : str
        ``geosr-tiny-x4``, ``geosr-tiny-x2`` or a directory of such a student.
    output : path-like
        The ``.onnx`` file to write.
    caption : str, optional
        The caption baked in (default :func:`clean_caption`).
    guidance : float, optional
        Guidance scale (default: the checkpoint's).
    opset : int
        ONNX opset.

    Returns
    -------
    dict
        The metadata written into the graph (``metadata_props``).
    """
    import onnx

    from geosr.models.diffusion import load_pipeline_quietly, resolve_model

    pipe = load_pipeline_quietly(resolve_model(model), torch.float32)
    # the graph is exported in the default memory format; channels_last is a torch CPU speed-up only
    for net in (pipe.unet, pipe.controlnet):
        net.to(memory_format=torch.contiguous_format)
    caption = clean_caption() if caption is None else caption
    student = OneStepStudent(pipe, caption, guidance).eval()
    channels, f, s = pipe.image_channels, student.factor, student.scale
    lr = torch.rand(1, channels, 16, 16)
    noise = torch.randn(1, channels * f * f, 16 * s // f, 16 * s // f)
    with warnings.catch_warnings():
        # torch.onnx's TorchScript-based exporter is deprecated in favour of the dynamo one (which
        # needs onnxscript); it still exports these networks exactly (checked by the export's test)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            student, (lr, noise), str(output), input_names=["lr", "noise"], output_names=["hr"],
            dynamic_axes={"lr": {0: "batch", 2: "height", 3: "width"},
                          "noise": {0: "batch", 2: "grid_height", 3: "grid_width"},
                          "hr": {0: "batch", 2: "out_height", 3: "out_width"}},
            opset_version=opset, dynamo=False,
        )
    metadata = {
        "scale": s, "bands": channels, "value_range": "0-1", "noise_input": "noise",
        "noise_channels": channels * f * f, "noise_stride": f, "caption": caption, "guidance": student.guidance,
        "source_model": model, "producer": "geosr export-onnx", "lr_consistency": "off",
    }
    graph = onnx.load(str(output))
    for key, value in metadata.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.save(graph, str(output))
    return metadata


def compare_export(model: str, onnx_path: str | Path, caption: str | None = None, guidance: float | None = None,
                   tiles: torch.Tensor | None = None, seeds: tuple[int, ...] = (0, 1)) -> float:
    """Largest difference, in DN of 8 bits, between the pipeline (float32, torch) and its ONNX export.

    Both run through geosr's upscalers on the same tiles (default: two seeded random 48 px tiles)
    with the same per-tile seeds.
    """
    from geosr.models import onnx
    from geosr.models.diffusion import DiffusionUpscaler

    caption = clean_caption() if caption is None else caption
    exported = onnx.load(str(onnx_path), _scale_of(onnx_path))
    if tiles is None:
        tiles = torch.rand(len(seeds), exported.channels, 48, 48, generator=torch.Generator().manual_seed(0))
    reference = DiffusionUpscaler(model, exported.scale, device="cpu", dtype="fp32", guidance=guidance,
                                  lr_consistency="off")  # as the graph (module docstring)
    captions = [caption] * len(tiles)
    ours = exported.upscale(tiles, captions, list(seeds))
    theirs = reference.upscale(tiles, captions, list(seeds))
    return float((ours - theirs).abs().max()) * 255


def _scale_of(onnx_path: str | Path) -> int:
    from geosr.models import onnx

    return onnx.read_card(str(onnx_path)).scale
