"""Tiny, seeded, offline components of a :class:`~geosr.pipelines.GeoSRPipeline`.

Used by the tests and by the training tests: every module is built from its config (sizes
after diffusers' ``get_dummy_components``), nothing is downloaded. The blocks use
cross-attention only (``only_cross_attention=True``, attention-free mid block), so the cost
grows linearly with the tile area: a whole GeoTIFF fixture runs through in seconds on a CPU.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDIMScheduler,
    LCMScheduler,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from geosr.pipelines.lr_space_heads import DetailHead, UncertaintyHead
from geosr.pipelines.lr_space_models import LRSpaceControlNet, LRSpaceDenoiser

TEXT_DIM = 32
GUIDANCE_EMBED_DIM = 16


def tiny_tokenizer(directory: str | Path) -> CLIPTokenizer:
    """A CLIP tokenizer over printable ASCII, one token per character, written to ``directory``.

    CLIP's byte-level BPE maps printable ASCII bytes to themselves, so a vocabulary of those
    characters (and their end-of-word forms) with no merges is a valid, tiny CLIP vocabulary.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    chars = [chr(c) for c in range(33, 127)]
    tokens = ["<|startoftext|>", "<|endoftext|>", *chars, *(c + "</w>" for c in chars)]
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer.from_pretrained(directory, model_max_length=77)


def tiny_pipeline_components(
    student: bool = False,
    scale: int = 4,
    tmp_path: str | Path | None = None,
    seed: int = 0,
    latent: bool = False,
    unshuffle_factor: int | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``GeoSRPipeline(**components)``: tiny RGB modules plus config.

    Parameters
    ----------
    student : bool
        Give the UNet a guidance embedding (``time_cond_proj_dim``) and an LCM scheduler,
        as a CFG-distilled student has; otherwise a DDIM teacher.
    scale : int
        ``upscale_factor`` of the pipeline.
    tmp_path : path, optional
        Where the tokenizer's vocab.json / merges.txt are written (a temporary folder if not given).
    seed : int
        Seed of the random weights.
    latent : bool
        Add a tiny ``AutoencoderKL`` (latent space, factor 2) and predict images, not residuals;
        by default the pipeline works in pixel space on residuals.
    unshuffle_factor : int, optional
        An LR-space model instead: a tiny ``LRSpaceDenoiser`` and ``LRSpaceControlNet`` on the
        residual pixel-unshuffled by this factor, with the LR concatenated (``concat_lr``).

    Returns
    -------
    dict
        ``vae``, ``text_encoder``, ``tokenizer``, ``unet``, ``controlnet``, ``scheduler`` and the
        config values ``upscale_factor``, ``predict_residual``.
    """
    torch.manual_seed(seed)
    vae = None
    if latent:
        vae = AutoencoderKL(
            block_out_channels=(8, 16),
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            latent_channels=4,
            norm_num_groups=1,
            mid_block_add_attention=False,
        )
    if unshuffle_factor:
        return _tiny_lr_space_components(student, scale, tmp_path, unshuffle_factor)
    unet_channels = 4 if latent else 3
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=unet_channels,
        out_channels=unet_channels,
        block_out_channels=(4, 8, 8),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2D",
        only_cross_attention=True,
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=2,
        norm_num_groups=1,
    )
    # The conditioning encoder must bring the HR condition down to the UNet's input size:
    # one stride-2 stage per factor 2 of the VAE, none in pixel space.
    controlnet = ControlNetModel.from_unet(
        unet,
        conditioning_channels=3,
        conditioning_embedding_out_channels=(8, 16) if latent else (8,),
    )
    if student:
        # As CFG distillation starts: the teacher's weights plus a fresh guidance projection
        # (ControlNetModel has no guidance embedding; w enters through the UNet only).
        teacher_weights = unet.state_dict()
        unet = UNet2DConditionModel.from_config(unet.config, time_cond_proj_dim=GUIDANCE_EMBED_DIM)
        unet.load_state_dict(teacher_weights, strict=False)
    return {
        "vae": vae,
        "unet": unet.eval(),
        "controlnet": controlnet.eval(),
        **_text_and_scheduler(student, tmp_path),
        "upscale_factor": scale,
        "predict_residual": not latent,
    }


def _tiny_lr_space_components(student: bool, scale: int, tmp_path, factor: int) -> dict[str, Any]:
    residual, lr_channels = 3 * factor**2, 3 * (factor // scale) ** 2
    unet = LRSpaceDenoiser(
        in_channels=residual + lr_channels,
        out_channels=residual,
        channels=8,
        num_blocks=2,
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=4,
        embedding_dim=16,
        text_pool_heads=2,
        time_cond_proj_dim=GUIDANCE_EMBED_DIM if student else None,
    )
    condition_levels = (factor // scale).bit_length()
    controlnet = LRSpaceControlNet.from_unet(
        unet, conditioning_embedding_out_channels=tuple(8 * 2**k for k in range(condition_levels))
    )
    return {
        "vae": None,
        "unet": unet.eval(),
        "controlnet": controlnet.eval(),
        **_text_and_scheduler(student, tmp_path),
        "upscale_factor": scale,
        "predict_residual": True,
        "unshuffle_factor": factor,
        "concat_lr": True,
    }


def _text_and_scheduler(student: bool, tmp_path) -> dict[str, Any]:
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=TEXT_DIM,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=1000,
            max_position_embeddings=77,
        )
    )
    if tmp_path is None:
        with tempfile.TemporaryDirectory() as directory:
            tokenizer = tiny_tokenizer(directory)
    else:
        tokenizer = tiny_tokenizer(Path(tmp_path) / "tokenizer-src")
    # Trailing spacing: a 1-4 step schedule must start at the last training timestep (pure
    # noise), not at t=0 as the default "leading" spacing gives for one step.
    schedule = dict(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=True,
        timestep_spacing="trailing",
    )
    scheduler = LCMScheduler(**schedule) if student else DDIMScheduler(**schedule)
    return {"text_encoder": text_encoder.eval(), "tokenizer": tokenizer, "scheduler": scheduler}


def with_tiny_heads(components: dict[str, Any], detail: bool = True, uncertainty: bool = True,
                    seed: int = 0) -> dict[str, Any]:
    """``components`` of an LR-space pipeline with a tiny detail and/or uncertainty head added.

    A new head's output convolution starts at zero (no detail, a constant error): here it is
    drawn from a seeded generator, so that a detail level changes pixels and the predicted
    error varies from pixel to pixel, as a trained head's do.

    Parameters
    ----------
    components : dict
        :func:`tiny_pipeline_components` with ``unshuffle_factor`` (the heads read the LR on
        the variable's grid, ``concat_lr``).
    detail, uncertainty : bool
        Which heads to add.
    seed : int
        Seed of the heads' weights.
    """
    unet = components["unet"]
    sample, lr = unet.config.out_channels, unet.config.in_channels - unet.config.out_channels
    heads: dict[str, Any] = {}
    with torch.random.fork_rng():  # the trunks' default init draws from the global generator
        torch.manual_seed(seed)
        if detail:
            heads["detail"] = DetailHead(sample_channels=sample, lr_channels=lr, channels=8, num_blocks=1)
        if uncertainty:
            heads["uncertainty"] = UncertaintyHead(sample_channels=sample, lr_channels=lr, channels=8, num_blocks=1,
                                                   initial_log_variance=-6.0)  # errors of ~5 % of the range
        with torch.no_grad():
            for head in heads.values():
                head.trunk.conv_out.weight.normal_(0.0, 0.01)
    return {**components, **{name: head.eval() for name, head in heads.items()}}
