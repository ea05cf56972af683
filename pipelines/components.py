"""Build a GeoSRPipeline's components from their configs: seeded, offline, no weights needed.

What the training scripts start a model from (``base`` in a recipe) and what ``geosr
bench-model`` times (an SD1.5-size preset) alike. The CLIP tokenizer is the small offline
vocabulary in ``assets/clip_tokenizer`` (every byte, plus one token per caption word; see
``geosr.training.model_factory.write_caption_tokenizer``), so nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import ControlNetModel, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from geosr.pipelines.lr_space_models import LRSpaceControlNet, LRSpaceDenoiser

__all__ = ["DENOISER_CLASSES", "TOKENIZER_DIR", "build_components", "build_controlnet", "controlnet_class"]

#: Denoiser classes a ``base.unet`` config may name with its ``class`` key.
DENOISER_CLASSES = {"UNet2DConditionModel": UNet2DConditionModel, "LRSpaceDenoiser": LRSpaceDenoiser}

#: Where the shipped offline CLIP tokenizer lives.
TOKENIZER_DIR = Path(__file__).parent / "assets" / "clip_tokenizer"


def build_components(config: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """Make a pixel-space text-to-image model from configs, seeded.

    Parameters
    ----------
    config : dict
        ``unet`` (kwargs of :class:`~diffusers.UNet2DConditionModel`, or of the class its
        ``class`` key names: ``LRSpaceDenoiser``), ``text_encoder``
        (kwargs of :class:`~transformers.CLIPTextConfig`, ``vocab_size`` is filled in from
        the tokenizer; or the folder of a saved pipeline whose caption encoder and tokenizer
        are taken as they are), ``scheduler`` (kwargs of :class:`~diffusers.DDPMScheduler`) and
        optionally ``tokenizer`` (a folder; default: the shipped vocabulary).
    seed : int
        Seed of the random initialisation.

    Returns
    -------
    dict
        ``vae`` (None: pixel space), ``text_encoder``, ``tokenizer``, ``unet``, ``scheduler``.
    """
    encoder = config.get("text_encoder", {})
    if isinstance(encoder, (str, Path)):
        # the frozen caption encoder of an earlier pipeline: its students can be trained on
        # from this teacher, since the caption embeddings they learnt to read stay the same
        tokenizer = CLIPTokenizer.from_pretrained(str(encoder), subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(str(encoder), subfolder="text_encoder").float()
    else:
        tokenizer = CLIPTokenizer.from_pretrained(str(config.get("tokenizer", TOKENIZER_DIR)))
        text_kwargs = {"vocab_size": len(tokenizer), **encoder}
        text_kwargs.setdefault("eos_token_id", tokenizer.eos_token_id)
        text_kwargs.setdefault("bos_token_id", tokenizer.bos_token_id)
        text_kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_kwargs))
    torch.manual_seed(seed)
    unet_kwargs = dict(config["unet"])
    unet_class = DENOISER_CLASSES[unet_kwargs.pop("class", "UNet2DConditionModel")]
    unet = unet_class(**unet_kwargs)
    if unet.config.cross_attention_dim != text_encoder.config.hidden_size:
        raise ValueError(
            f"unet.cross_attention_dim ({unet.config.cross_attention_dim}) must equal "
            f"text_encoder.hidden_size ({text_encoder.config.hidden_size})"
        )
    return {
        "vae": None,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "unet": unet,
        "scheduler": DDPMScheduler(**config.get("scheduler", {})),
    }


def controlnet_class(unet) -> type:
    """The ControlNet class that goes with a denoiser (``from_unet`` builds it)."""
    return LRSpaceControlNet if isinstance(unet, LRSpaceDenoiser) else ControlNetModel


def build_controlnet(
    unet: UNet2DConditionModel,
    conditioning_channels: int,
    pixel_space: bool,
    load_weights: bool = True,
    condition_factor: int = 1,
) -> ControlNetModel:
    """A ControlNet initialised from ``unet`` (encoder weights copied, zero convolutions).

    ``load_weights=False`` takes only the architecture (random weights), which also works
    for a student UNet whose time embedding has a guidance projection the ControlNet lacks.

    In pixel space the condition is ``condition_factor`` times the sample's size (1: the LR
    upsampled to the HR size; ``unshuffle_factor / scale`` in LR-space models, whose condition is
    the LR tile itself), and the condition encoder downsamples by that factor with one
    stride-2 level per halving; in latent space it uses diffusers' default 8x-downsampling
    encoder.
    """
    if pixel_space:
        levels = int(condition_factor).bit_length() - 1
        if condition_factor < 1 or 2**levels != condition_factor:
            raise ValueError(f"condition_factor must be a power of 2, got {condition_factor}")
        out_channels = tuple(16 * 2**k for k in range(levels + 1))
    else:
        out_channels = (16, 32, 96, 256)
    return controlnet_class(unet).from_unet(
        unet,
        conditioning_embedding_out_channels=out_channels,
        conditioning_channels=conditioning_channels,
        load_weights_from_unet=load_weights,
    )
