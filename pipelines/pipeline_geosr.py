"""Text-guided ControlNet diffusion super-resolution of image tiles (teacher or CFG-distilled student).

Conventions shared with the training code (``geosr.training`` imports from this file so that
training and inference cannot drift apart):

Pixels
    Inputs and outputs are float images in ``[0, 1]``. The ControlNet condition is the LR tile
    upsampled to the HR size (:func:`upsample_lr`, clamped to ``[0, 1]``, diffusers' convention
    for condition images). The diffusion variable lives in ``[-1, 1]`` pixel space, or in the
    VAE's scaled latent space when the pipeline has a ``vae``.

Residual (``predict_residual=True``, pixel space only)
    The clean diffusion variable is ``x0 = residual_scale * (HR - upsample_lr(LR))`` and the
    output is ``upsample_lr(LR) + x0 / residual_scale`` (:func:`image_to_target`,
    :func:`target_to_image`). The default ``residual_scale = 2`` expresses the residual in the
    same units as the ``[-1, 1]`` image space (``2 * HR - 1``), so one noise schedule suits both
    modes; a model that predicts ``x0 = 0`` returns the bicubic baseline, which is what makes
    tiny, briefly trained models and 1-step students useful.

Low-resolution diffusion variable (``unshuffle_factor = f``, pixel space, residual only)
    The residual ``x0`` is pixel-unshuffled by ``f`` (AdcSR's PixelUnshuffle-in, ResShift's
    LR-size latent): the UNet works on ``C * f**2`` channels at ``1/f`` of the HR size, so its
    cost per output pixel falls by ``f**2``; ``f = 8`` is the grid an SD VAE latent has. The
    ControlNet then reads the LR tile at the LR size (not upsampled) and its condition encoder
    downsamples by ``f / upscale_factor``. ``f = None`` (older checkpoints) keeps the HR-size
    variable and the upsampled condition. With ``concat_lr`` the LR tile, pixel-unshuffled to
    the variable's grid (:func:`lr_on_grid`), is also concatenated to the UNet's and the
    ControlNet's input, as Stable Diffusion's x4 upscaler concatenates its low-res image: the
    network reads the LR pixels directly instead of only through the ControlNet residuals,
    which is what lets a small model learn fine detail in a CPU budget.

Guidance (diffusers / Imagen convention)
    With guidance scale ``g`` a teacher predicts ``eps = eps_u + g * (eps_c - eps_u)``, with the
    empty caption as the unconditional branch; ``g = 1`` is the conditional model alone (one
    branch), ``g = 0`` the unconditional one. A distilled student (its UNet has
    ``time_cond_proj_dim``) runs one branch and receives Meng et al.'s weight ``w = g - 1``
    (their ``eps = (1 + w) eps_c - w eps_u``) through ``timestep_cond =
    guidance_embedding(w, time_cond_proj_dim)``, as diffusers' LCM pipeline does. ControlNetModel
    has no guidance embedding: ``w`` enters through the UNet only.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DiffusionPipeline,
    SchedulerMixin,
    UNet2DConditionModel,
)
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer

from geosr.pipelines.consistency import (invisible_to_lr, invisible_within_range, project_to_lr, reads_as_clean,
                                         shifted_sum)
from geosr.pipelines.lr_space_heads import DetailHead, UncertaintyHead, caption_class, gradient_on_grid
from geosr.pipelines.lr_space_models import LRSpaceControlNet, LRSpaceDenoiser

__all__ = [
    "GeoSRPipeline",
    "GeoSRPipelineOutput",
    "guidance_embedding",
    "control_image",
    "image_to_target",
    "interpolate_lr",
    "lr_on_grid",
    "regrid",
    "target_to_image",
    "upsample_lr",
    "with_lr",
]

ImageInput = torch.Tensor | np.ndarray | PIL.Image.Image | Sequence[PIL.Image.Image]

# Step counts used when neither the call nor the checkpoint's config names one.
STUDENT_STEPS = 4
TEACHER_STEPS = 25
OUTPUT_TYPES = ("pt", "np", "pil")
UPSAMPLE_MODES = ("nearest", "nearest-exact", "bilinear", "bicubic", "area")


def guidance_embedding(
    w: torch.Tensor, embedding_dim: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Sinusoidal embedding of guidance weights, fed to the UNet as ``timestep_cond``.

    The same embedding as diffusers' ``LatentConsistencyModelPipeline.get_guidance_scale_embedding``
    (after VDM), so students distilled with diffusers' scripts load here unchanged.

    Parameters
    ----------
    w : torch.Tensor
        ``[B]`` guidance weights in Meng et al.'s convention (``w = guidance_scale - 1``).
    embedding_dim : int
        ``unet.config.time_cond_proj_dim``.
    dtype : torch.dtype
        dtype of the result.

    Returns
    -------
    torch.Tensor
        ``[B, embedding_dim]``.
    """
    if w.ndim != 1:
        raise ValueError(f"w must be 1-D (one weight per sample), got shape {tuple(w.shape)}")
    w = w * 1000.0
    half_dim = embedding_dim // 2
    freq = torch.log(torch.tensor(10000.0, dtype=torch.float32)) / (half_dim - 1)
    freq = torch.exp(torch.arange(half_dim, dtype=dtype) * -freq).to(w.device)
    emb = w.to(dtype)[:, None] * freq[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    if embedding_dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


def interpolate_lr(image: torch.Tensor, scale_factor: int, mode: str = "bicubic") -> torch.Tensor:
    """The LR tile interpolated to the HR size, not clamped: the linear part of :func:`upsample_lr`."""
    align = False if mode in ("bilinear", "bicubic") else None
    return F.interpolate(image, scale_factor=scale_factor, mode=mode, align_corners=align)


def upsample_lr(image: torch.Tensor, scale_factor: int, mode: str = "bicubic") -> torch.Tensor:
    """The LR tile at the HR size: the ControlNet condition and the residual's base.

    Clamped to ``[0, 1]`` because bicubic overshoots at edges and a condition image (and the
    baseline a residual model starts from) must be a valid image.
    """
    return interpolate_lr(image, scale_factor, mode).clamp(0.0, 1.0)


def image_to_target(
    hr: torch.Tensor,
    upsampled: torch.Tensor,
    predict_residual: bool,
    residual_scale: float,
    unshuffle_factor: int | None = None,
) -> torch.Tensor:
    """Clean pixel-space diffusion variable ``x0`` for an HR image in ``[0, 1]`` (training target).

    With ``unshuffle_factor`` the residual is pixel-unshuffled to ``1/f`` of the HR size.
    """
    if predict_residual:
        x0 = residual_scale * (hr - upsampled)
        return F.pixel_unshuffle(x0, unshuffle_factor) if unshuffle_factor else x0
    return 2.0 * hr - 1.0


def target_to_image(
    x0: torch.Tensor,
    upsampled: torch.Tensor,
    predict_residual: bool,
    residual_scale: float,
    unshuffle_factor: int | None = None,
) -> torch.Tensor:
    """Inverse of :func:`image_to_target` (not clamped)."""
    if predict_residual:
        if unshuffle_factor:
            x0 = F.pixel_shuffle(x0, unshuffle_factor)
        return upsampled + x0 / residual_scale
    return (x0 + 1.0) / 2.0


def lr_on_grid(lr: torch.Tensor, upscale_factor: int, unshuffle_factor: int) -> torch.Tensor:
    """The LR tile pixel-unshuffled onto the diffusion variable's grid (``1/f`` of the HR size)."""
    return F.pixel_unshuffle(lr.clamp(0.0, 1.0), unshuffle_factor // upscale_factor)


def regrid(x: torch.Tensor, from_factor: int, to_factor: int) -> torch.Tensor:
    """A variable pixel-unshuffled by ``from_factor``, pixel-unshuffled by ``to_factor`` instead.

    An exact rearrangement of the same HR-sized values (noise stays i.i.d., and anything
    elementwise - adding noise, v or eps parametrisations - commutes with it): how a
    distillation teacher on one grid teaches a student on another.
    """
    if from_factor == to_factor:
        return x
    return F.pixel_unshuffle(F.pixel_shuffle(x, from_factor), to_factor)


def with_lr(sample: torch.Tensor, lr_grid: torch.Tensor | None) -> torch.Tensor:
    """The network input: ``sample``, with ``lr_grid`` concatenated on the channels when given."""
    if lr_grid is None:
        return sample
    return torch.cat([sample, lr_grid.to(sample.dtype)], dim=1)


def control_image(lr: torch.Tensor, upsampled: torch.Tensor, unshuffle_factor: int | None) -> torch.Tensor:
    """The ControlNet condition: the LR tile itself in LR-space models, else its upsampled copy."""
    return lr.clamp(0.0, 1.0) if unshuffle_factor else upsampled


@dataclass
class GeoSRPipelineOutput(BaseOutput):
    """Output of :class:`GeoSRPipeline`.

    Attributes
    ----------
    images : torch.Tensor or np.ndarray or list of PIL.Image.Image
        ``pt``: ``[B, C, H, W]`` float32 in ``[0, 1]``; ``np``: ``[B, H, W, C]``; ``pil``: a list.
    uncertainty : torch.Tensor or None
        With ``return_uncertainty``: the predicted root-mean-square error of each output pixel
        and band, ``[B, C, H, W]`` float32 in the images' ``[0, 1]`` units; else None.
    """

    images: torch.Tensor | np.ndarray | list[PIL.Image.Image]
    uncertainty: torch.Tensor | None = None


class GeoSRPipeline(DiffusionPipeline):
    """Super-resolve LR tiles with a caption-guided UNet and an LR-conditioned ControlNet.

    The mode comes from the checkpoint: a UNet with a guidance embedding
    (``unet.config.time_cond_proj_dim``) is a CFG-distilled student and runs one branch per
    step; otherwise the pipeline is a teacher and runs classifier-free guidance (two branches,
    batched into one forward of ``2B`` rows, unless ``guidance_scale == 1``). See the module
    docstring for the pixel, residual and guidance conventions.

    Parameters
    ----------
    vae : AutoencoderKL or None
        Latent space when given; pixel space when ``None`` (then the UNet's in/out channels
        equal the image channels).
    text_encoder : CLIPTextModel
        Encodes captions; its hidden size is the UNet's ``cross_attention_dim``.
    tokenizer : CLIPTokenizer
    unet : UNet2DConditionModel or LRSpaceDenoiser
        The denoiser; :class:`~geosr.pipelines.lr_space_models.LRSpaceDenoiser` for the small
        LR-space models geosr ships.
    controlnet : ControlNetModel or LRSpaceControlNet
        ``conditioning_channels`` = image channels; its conditioning encoder downsamples by the
        VAE factor (1 in pixel space).
    scheduler : SchedulerMixin
        Any diffusers scheduler with ``set_timesteps`` / ``step`` (DDIM, DDPM, LCM, Euler...).
    upscale_factor : int
        The SR scale.
    upsample_mode : str
        ``torch.nn.functional.interpolate`` mode of :func:`upsample_lr`.
    predict_residual : bool
        Diffuse ``residual_scale * (HR - upsample_lr(LR))`` instead of the image (pixel space only).
    residual_scale : float
        See ``predict_residual``.
    default_num_inference_steps : int, optional
        Steps when a call names none; ``None`` means 4 for a student, 25 for a teacher.
    default_guidance_scale : float
        Guidance scale when a call names none.
    unshuffle_factor : int, optional
        Diffuse the residual pixel-unshuffled by this factor (a multiple of ``upscale_factor``;
        see the module docstring); None: at the HR size.
    concat_lr : bool
        Concatenate the LR tile on the variable's grid to the networks' input (needs
        ``unshuffle_factor``).
    detail : DetailHead, optional
        Draws the detail a call's ``detail`` level adds (LR-space residual models only; see
        :mod:`geosr.pipelines.lr_space_heads`).
    uncertainty : UncertaintyHead, optional
        Predicts the error of the output (``return_uncertainty``; LR-space residual models only).

    Examples
    --------
    >>> pipe = GeoSRPipeline.from_pretrained("./geosr-checkpoint")  # doctest: +SKIP
    >>> hr = pipe(lr_tiles, prompt=captions, generator=generators).images  # doctest: +SKIP
    """

    model_cpu_offload_seq = "text_encoder->controlnet->unet->vae"
    _optional_components = ["vae", "detail", "uncertainty"]

    def __init__(
        self,
        vae: AutoencoderKL | None,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel | LRSpaceDenoiser,
        controlnet: ControlNetModel | LRSpaceControlNet,
        scheduler: SchedulerMixin,
        upscale_factor: int = 4,
        upsample_mode: str = "bicubic",
        predict_residual: bool = False,
        residual_scale: float = 2.0,
        default_num_inference_steps: int | None = None,
        default_guidance_scale: float = 4.0,
        unshuffle_factor: int | None = None,
        concat_lr: bool = False,
        detail: DetailHead | None = None,
        uncertainty: UncertaintyHead | None = None,
    ) -> None:
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            controlnet=controlnet,
            scheduler=scheduler,
            detail=detail,
            uncertainty=uncertainty,
        )
        self.register_to_config(
            upscale_factor=int(upscale_factor),
            upsample_mode=upsample_mode,
            predict_residual=bool(predict_residual),
            residual_scale=float(residual_scale),
            default_num_inference_steps=default_num_inference_steps,
            default_guidance_scale=float(default_guidance_scale),
            unshuffle_factor=None if unshuffle_factor is None else int(unshuffle_factor),
            concat_lr=bool(concat_lr),
        )

    @property
    def is_distilled(self) -> bool:
        """Whether the UNet takes the guidance weight as an input (one branch per step)."""
        return self.unet.config.time_cond_proj_dim is not None

    def runs_two_branches(self, guidance_scale: float | None = None) -> bool:
        """Whether a step runs the conditional and unconditional branches (classifier-free
        guidance of a teacher); ``guidance_scale`` None takes the checkpoint's default."""
        if guidance_scale is None:
            guidance_scale = self.config.default_guidance_scale
        return not self.is_distilled and guidance_scale != 1.0

    @property
    def unshuffle_factor(self) -> int | None:
        """HR pixels per side of one diffusion-variable pixel in LR-space models, else None."""
        # older checkpoints have no such key in their config
        return getattr(self.config, "unshuffle_factor", None)

    @property
    def concat_channels(self) -> int:
        """Channels of the LR concatenated to the networks' input (0 without ``concat_lr``)."""
        if not getattr(self.config, "concat_lr", False):
            return 0
        return self.image_channels * self.condition_factor**2

    @property
    def vae_scale_factor(self) -> int:
        """HR pixels per side of one diffusion-variable pixel (1 in HR pixel space)."""
        if self.vae is None:
            return self.unshuffle_factor or 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def condition_factor(self) -> int:
        """How much the ControlNet's condition encoder must downsample its input."""
        if self.unshuffle_factor:
            return self.unshuffle_factor // self.config.upscale_factor
        return self.vae_scale_factor

    @property
    def image_channels(self) -> int:
        """Channels of the LR input and of the output."""
        return self.controlnet.config.conditioning_channels

    @property
    def size_multiple(self) -> int:
        """The HR height and width must be multiples of this (VAE and UNet downsampling)."""
        # an LRSpaceDenoiser keeps its grid (no block_out_channels, no downsampling)
        levels = len(getattr(self.unet.config, "block_out_channels", None) or (0,))
        return self.vae_scale_factor * 2 ** (levels - 1)

    def encode_prompt(self, prompt: list[str], device: torch.device) -> torch.Tensor:
        """Text-encoder hidden states ``[B, L, D]`` of ``prompt``, padded to the tokenizer's length."""
        ids = self.tokenizer(
            prompt,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        hidden = self.text_encoder(ids.to(device))[0]
        return hidden.to(dtype=self.unet.dtype)

    def check_inputs(
        self,
        image: torch.Tensor,
        prompt: list[str],
        num_inference_steps: int,
        guidance_scale: float,
        generator: torch.Generator | list[torch.Generator] | None,
        output_type: str,
        controlnet_conditioning_scale: float,
    ) -> None:
        """Raise ``ValueError`` naming the first problem with the inputs or the components."""
        self._check_components()
        batch, channels, height, width = image.shape
        if channels != self.image_channels:
            raise ValueError(
                f"image has {channels} channels, but this pipeline takes {self.image_channels}"
            )
        if not torch.isfinite(image).all():
            raise ValueError("image contains NaN or infinite values")
        low, high = image.min().item(), image.max().item()
        if low < 0.0 or high > 1.0:
            raise ValueError(f"image values must lie in [0, 1], got [{low:.4g}, {high:.4g}]")
        multiple = self.size_multiple
        hr_h, hr_w = height * self.config.upscale_factor, width * self.config.upscale_factor
        if hr_h % multiple or hr_w % multiple:
            raise ValueError(
                f"the output size {hr_h}x{hr_w} (input {height}x{width} times "
                f"{self.config.upscale_factor}) must be a multiple of {multiple}: pad the input"
            )
        if len(prompt) != batch or not all(isinstance(p, str) for p in prompt):
            raise ValueError(f"prompt must be a str or a list of {batch} str, got {prompt!r}")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a positive int, got {num_inference_steps!r}")
        if not math.isfinite(guidance_scale) or guidance_scale < 0:
            raise ValueError(f"guidance_scale must be finite and >= 0, got {guidance_scale}")
        if self.is_distilled and guidance_scale < 1:
            raise ValueError(
                f"a distilled student takes guidance_scale >= 1 (its weight w = guidance_scale - 1 "
                f"is >= 0), got {guidance_scale}"
            )
        if isinstance(generator, list) and len(generator) != batch:
            raise ValueError(f"got {len(generator)} generators for a batch of {batch} images")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if output_type == "pil" and channels not in (1, 3, 4):
            raise ValueError(f"output_type 'pil' needs 1, 3 or 4 channels, not {channels}")
        if not math.isfinite(controlnet_conditioning_scale):
            raise ValueError("controlnet_conditioning_scale must be finite")

    def _check_components(self) -> None:
        # Mismatched components otherwise fail deep inside a forward with a shape error.
        unet, controlnet, config = self.unet.config, self.controlnet.config, self.config
        if config.upsample_mode not in UPSAMPLE_MODES:
            raise ValueError(f"upsample_mode must be one of {UPSAMPLE_MODES}, got {config.upsample_mode!r}")
        if config.upscale_factor < 1:
            raise ValueError(f"upscale_factor must be >= 1, got {config.upscale_factor}")
        factor = self.unshuffle_factor
        if factor is not None and (factor < config.upscale_factor or factor % config.upscale_factor):
            raise ValueError(
                f"unshuffle_factor {factor} must be a multiple of upscale_factor {config.upscale_factor}"
            )
        if factor is not None and (self.vae is not None or not config.predict_residual):
            raise ValueError("unshuffle_factor needs pixel space (no vae) and predict_residual")
        if self.vae is None:
            space, expected = "pixel space", self.image_channels * (factor or 1) ** 2
        else:
            if config.predict_residual:
                raise ValueError("predict_residual works in pixel space only: drop the vae or the option")
            if self.vae.config.in_channels != self.image_channels:
                raise ValueError(
                    f"vae takes {self.vae.config.in_channels} channels, controlnet "
                    f"conditioning_channels is {self.image_channels}"
                )
            space, expected = "latent space", self.vae.config.latent_channels
        if getattr(config, "concat_lr", False) and not factor:
            raise ValueError("concat_lr needs unshuffle_factor (the LR is concatenated on its grid)")
        expected_in = expected + self.concat_channels
        if unet.in_channels != expected_in or unet.out_channels != expected:
            raise ValueError(
                f"in {space} the unet must map {expected_in} channels to {expected}, "
                f"got {unet.in_channels} -> {unet.out_channels}"
            )
        if controlnet.in_channels != unet.in_channels:
            raise ValueError(
                f"controlnet in_channels {controlnet.in_channels} != unet in_channels {unet.in_channels}"
            )
        cond_factor = 2 ** (len(controlnet.conditioning_embedding_out_channels) - 1)
        if cond_factor != self.condition_factor:
            raise ValueError(
                f"the controlnet's conditioning encoder downsamples by {cond_factor}, but its "
                f"condition is {self.condition_factor}x the diffusion variable's size: they must "
                "agree (HR pixel space: one conditioning_embedding_out_channels entry)"
            )
        for name in ("detail", "uncertainty"):
            head = getattr(self, name)
            if head is not None and (head.config.sample_channels, head.config.lr_channels) != (
                    unet.out_channels, self.concat_channels):
                raise ValueError(
                    f"the {name} head reads {head.config.sample_channels} + {head.config.lr_channels} channels, "
                    f"the pipeline's variable and LR grid have {unet.out_channels} + {self.concat_channels}"
                )
        if self.text_encoder.config.hidden_size != unet.cross_attention_dim:
            raise ValueError(
                f"text_encoder hidden size {self.text_encoder.config.hidden_size} != unet "
                f"cross_attention_dim {unet.cross_attention_dim}"
            )

    def prepare_extra_step_kwargs(
        self, generator: torch.Generator | list[torch.Generator] | None
    ) -> dict:
        # Not every scheduler's step takes a generator (the stochastic ones, DDPM/LCM, do).
        if "generator" in inspect.signature(self.scheduler.step).parameters:
            return {"generator": generator}
        return {}

    @torch.no_grad()
    def __call__(
        self,
        image: ImageInput,
        prompt: str | list[str] = "",
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pt",
        controlnet_conditioning_scale: float = 1.0,
        return_dict: bool = True,
        detail: float = 0.0,
        return_uncertainty: bool = False,
        lr_consistency: str = "off",
    ) -> GeoSRPipelineOutput | tuple:
        """Super-resolve a batch of LR images.

        Parameters
        ----------
        image : torch.Tensor or np.ndarray or PIL.Image.Image or list of PIL.Image.Image
            LR images: a float tensor ``[B, C, h, w]`` (or ``[C, h, w]``) in ``[0, 1]``, a
            numpy array ``[B, h, w, C]`` / ``[h, w, C]`` (integer arrays are scaled by their
            dtype's maximum), or PIL images.
        prompt : str or list of str
            One caption per image (a str is used for all). The empty caption is the
            unconditional branch of a teacher.
        num_inference_steps : int, optional
            Defaults to ``config.default_num_inference_steps``, else 4 (student) / 25 (teacher).
        guidance_scale : float, optional
            ``g`` of the module docstring; defaults to ``config.default_guidance_scale``.
        generator : torch.Generator or list of torch.Generator, optional
            A list holds one generator per image: each image's initial and per-step noise is
            drawn from its own generator, so its pixels do not depend on the rest of the batch.
        output_type : {"pt", "np", "pil"}
        controlnet_conditioning_scale : float
            Multiplier of the ControlNet residuals.
        return_dict : bool
            Return a :class:`GeoSRPipelineOutput` instead of a tuple.
        detail : float
            Detail level ``D`` in ``[0, 1]``: ``D`` times the detail head's residual, drawn from
            each image's generator and made invisible to the model's downsampling
            (:func:`~geosr.pipelines.consistency.invisible_to_lr`), is added to the output.
            0 (the default) is the output without the head, bit for bit.
        return_uncertainty : bool
            Also predict each output pixel's root-mean-square error (the uncertainty head's
            variance, plus ``D**2`` times the squared detail added, which the head did not see).
        lr_consistency : {"off", "clean", "always"}
            Which outputs are projected onto their input, so that the model's downsampling of
            the output gives the LR back (:func:`~geosr.pipelines.consistency.project_to_lr`;
            LR-space residual pipelines only, others are left as they are): none (default),
            those whose caption reads as a clean downsampling
            (:func:`~geosr.pipelines.consistency.reads_as_clean`), or all. Right only where
            the input was made the way the model assumes (antialiased bicubic); a blurred,
            noisy or plainly decimated LR reproduced exactly brings its blur, noise or
            aliasing back (module docstring of :mod:`~geosr.pipelines.consistency`).

        Returns
        -------
        GeoSRPipelineOutput or tuple
            The HR images, ``upscale_factor`` times the input size (and, with
            ``return_uncertainty``, their predicted error: ``(images, uncertainty)`` as a tuple).
        """
        image = _image_to_tensor(image)
        batch = image.shape[0]
        prompt = [prompt] * batch if isinstance(prompt, str) else list(prompt)
        if num_inference_steps is None:
            num_inference_steps = self.config.default_num_inference_steps or (
                STUDENT_STEPS if self.is_distilled else TEACHER_STEPS
            )
        if guidance_scale is None:
            guidance_scale = self.config.default_guidance_scale
        self.check_inputs(
            image,
            prompt,
            num_inference_steps,
            guidance_scale,
            generator,
            output_type,
            controlnet_conditioning_scale,
        )
        self._check_heads(detail, return_uncertainty)
        if lr_consistency not in ("clean", "always", "off"):
            raise ValueError(f"lr_consistency must be 'clean', 'always' or 'off', got {lr_consistency!r}")
        sample, upsampled, lr_grid = self.denoise(
            image, prompt, num_inference_steps, guidance_scale, generator, controlnet_conditioning_scale
        )

        # 4. Back to [0, 1] pixels.
        if self.vae is not None:
            latents = sample / self.vae.config.scaling_factor + (self.vae.config.shift_factor or 0.0)
            sample = self.vae.decode(latents.to(self.vae.dtype), return_dict=False)[0].float()
        hr = target_to_image(
            sample, upsampled, self.config.predict_residual, self.config.residual_scale, self.unshuffle_factor
        )

        hr = self.consistent_with_input(hr, image, prompt, lr_consistency)

        added = None
        kinds = [caption_class(text) for text in prompt]
        mild = [kind == "mild" for kind in kinds]
        if detail > 0.0:
            hr = hr.clamp(0.0, 1.0)  # what D = 0 writes; the detail keeps what it downsamples to
            added = invisible_within_range(hr, detail * self._detail_residual(sample, lr_grid, generator, hr, kinds),
                                           self.config.upscale_factor, self.config.upsample_mode)
            hr = hr + added
        uncertainty = None
        if return_uncertainty:
            uncertainty = self._predicted_error(sample, lr_grid, (hr if added is None else hr - added).clamp(0.0, 1.0),
                                                added, mild)
        hr = hr.clamp(0.0, 1.0)
        self.maybe_free_model_hooks()

        if output_type == "pt":
            images = hr
        else:
            images = hr.permute(0, 2, 3, 1).cpu().numpy()
            if output_type == "pil":
                images = [_to_pil(a) for a in images]
        if not return_dict:
            return (images,) if uncertainty is None else (images, uncertainty)
        return GeoSRPipelineOutput(images=images, uncertainty=uncertainty)

    def denoise(
        self,
        image: torch.Tensor,
        prompt: list[str],
        num_inference_steps: int,
        guidance_scale: float,
        generator: torch.Generator | list[torch.Generator] | None,
        controlnet_conditioning_scale: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Steps 1-3 of a call on checked inputs: ``(x0, upsampled LR, LR on the variable's grid or None)``.

        ``x0`` is the clean diffusion variable (float32; latents when the pipeline has a VAE),
        what the heads of :mod:`~geosr.pipelines.lr_space_heads` read and what their training
        (``geosr.training.train_heads``) computes with this same method.
        """
        device = self._execution_device
        batch = image.shape[0]
        two_branches = self.runs_two_branches(guidance_scale)

        # 1. Condition: upsampled LR (in float32: it is also the residual's base) and captions.
        image = image.to(device=device, dtype=torch.float32)
        upsampled = upsample_lr(
            image,
            self.config.upscale_factor,
            self.config.upsample_mode,
        )
        condition = control_image(image, upsampled, self.unshuffle_factor)
        condition = condition.to(self.controlnet.dtype)
        lr_grid = None
        if self.concat_channels:
            lr_grid = lr_on_grid(image, self.config.upscale_factor, self.unshuffle_factor)
        prompt_embeds = self.encode_prompt(prompt, device)
        if two_branches:
            prompt_embeds = torch.cat([self.encode_prompt([""] * batch, device), prompt_embeds])
            condition = torch.cat([condition, condition])
            lr_grid = None if lr_grid is None else torch.cat([lr_grid, lr_grid])
        timestep_cond = None
        if self.is_distilled:
            w = torch.full((batch,), guidance_scale - 1.0, device=device, dtype=torch.float32)
            timestep_cond = guidance_embedding(w, self.unet.config.time_cond_proj_dim).to(self.unet.dtype)

        # 2. Initial noise. The sample stays float32 through the scheduler steps (only the
        # networks run in the pipeline's dtype): bf16 scheduler arithmetic visibly bands.
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        hr_h, hr_w = upsampled.shape[-2:]
        channels = self.unet.config.in_channels - self.concat_channels
        shape = (batch, channels, hr_h // self.vae_scale_factor, hr_w // self.vae_scale_factor)
        sample = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        sample = sample * self.scheduler.init_noise_sigma
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator)

        # 3. Denoise.
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = torch.cat([sample, sample]) if two_branches else sample
            model_input = self.scheduler.scale_model_input(model_input, t)
            model_input = with_lr(model_input, lr_grid).to(self.unet.dtype)
            down_residuals, mid_residual = self.controlnet(
                model_input,
                t,
                encoder_hidden_states=prompt_embeds,
                controlnet_cond=condition,
                conditioning_scale=controlnet_conditioning_scale,
                return_dict=False,
            )
            prediction = self.unet(
                model_input,
                t,
                encoder_hidden_states=prompt_embeds,
                timestep_cond=timestep_cond,
                down_block_additional_residuals=down_residuals,
                mid_block_additional_residual=mid_residual,
                return_dict=False,
            )[0].float()
            if two_branches:
                uncond, cond = prediction.chunk(2)
                prediction = uncond + guidance_scale * (cond - uncond)
            sample = self.scheduler.step(prediction, t, sample, **extra_step_kwargs, return_dict=False)[0]

        if lr_grid is not None:
            lr_grid = lr_grid[-batch:]  # the heads run once per image, not per guidance branch
        return sample, upsampled, lr_grid

    def consistent_with_input(self, hr: torch.Tensor, image: torch.Tensor, prompt: Sequence[str],
                              lr_consistency: str = "off") -> torch.Tensor:
        """``hr`` with the images that ``lr_consistency`` picks projected onto their LR ``image``.

        See ``lr_consistency`` in :meth:`__call__`; pipelines that are not LR-space residual
        ones return ``hr`` as it is.
        """
        if not self.unshuffle_factor or lr_consistency == "off":
            return hr
        project = [lr_consistency == "always" or reads_as_clean(text) for text in prompt]
        if not any(project):
            return hr
        chosen = torch.tensor(project, device=hr.device)[:, None, None, None]
        projected = project_to_lr(hr, image.to(hr.device).clamp(0.0, 1.0), self.config.upscale_factor,
                                  self.config.upsample_mode)
        return torch.where(chosen, projected.to(hr.dtype), hr)

    def _check_heads(self, detail: float, return_uncertainty: bool) -> None:
        if not (isinstance(detail, (int, float)) and 0.0 <= detail <= 1.0):
            raise ValueError(f"detail must be a number in [0, 1], got {detail!r}")
        if detail > 0.0 and self.detail is None:
            raise ValueError("this pipeline has no detail head: it takes detail = 0 only")
        if return_uncertainty and self.uncertainty is None:
            raise ValueError("this pipeline has no uncertainty head: it cannot predict its error")
        if (detail > 0.0 or return_uncertainty) and not self.concat_channels:
            raise ValueError("the detail and uncertainty heads need an LR-space pipeline with concat_lr")

    def _detail_residual(self, sample: torch.Tensor, lr_grid: torch.Tensor | None, generator,
                         fidelity: torch.Tensor, kinds: Sequence[str]) -> torch.Tensor:
        """The detail at ``D = 1`` for the ``D = 0`` output ``fidelity`` (``kinds``: per image, its
        caption's class, :func:`~geosr.pipelines.lr_space_heads.caption_class`): HR size, float32,
        invisible to the model's downsampling."""
        head = self.detail
        noise = randn_tensor((sample.shape[0], head.config.noise_channels, *sample.shape[-2:]),
                             generator=generator, device=sample.device, dtype=torch.float32)
        residual = head(sample.to(head.dtype), lr_grid.to(head.dtype), noise.to(head.dtype)).float()
        residual = F.pixel_shuffle(residual, self.unshuffle_factor) / self.config.residual_scale
        residual = head.compose(residual, fidelity.float(), kinds)
        return invisible_to_lr(residual, self.config.upscale_factor, self.config.upsample_mode)

    def _predicted_error(self, sample: torch.Tensor, lr_grid: torch.Tensor | None, fidelity: torch.Tensor,
                         added: torch.Tensor | None, mild: Sequence[bool]) -> torch.Tensor:
        """Predicted RMSE per HR pixel and band, float32 in ``[0, 1]`` units (``fidelity``: the D = 0 output;
        ``mild``: per image, whether its caption reads as at most mildly degraded)."""
        head = self.uncertainty
        gradient = None
        if head.config.gradient_channels:
            gradient = gradient_on_grid(fidelity, self.unshuffle_factor).to(head.dtype)
        variance = head.variance(sample.to(head.dtype), lr_grid.to(head.dtype), gradient,
                                 torch.tensor(list(mild), dtype=torch.bool))
        variance = _without_grid_pattern(F.pixel_shuffle(variance, self.unshuffle_factor), self.unshuffle_factor)
        if added is not None:
            # detail is drawn, not inferred: its own square adds to the error expected
            variance = variance + added.square()
        return variance.sqrt()


def _without_grid_pattern(variance: torch.Tensor, factor: int) -> torch.Tensor:
    """``variance`` smoothed by two ``factor``-wide box filters (a triangle, centred, mean kept).

    Each pixel of the diffusion grid predicts its ``factor x factor`` HR pixels separately, and
    their small differences repeat with the grid: a visible lattice over a map whose content
    varies slowly. A box as wide as the period removes any pattern of that period exactly.
    """
    if factor < 2:
        return variance
    for left in (factor // 2, factor - 1 - factor // 2):  # the two pads mirror each other
        box = [1.0] * factor  # shifted slices: twice as fast as avg_pool2d with stride 1 on the HR-sized map
        variance = shifted_sum(shifted_sum(variance, box, left, -1), box, left, -2) / (factor * factor)
    return variance


def _image_to_tensor(image: ImageInput) -> torch.Tensor:
    """``[B, C, h, w]`` float tensor from a tensor, an HWC/BHWC array or PIL image(s)."""
    if isinstance(image, PIL.Image.Image):
        image = [image]
    if isinstance(image, (list, tuple)):
        if not all(isinstance(i, PIL.Image.Image) for i in image):
            raise TypeError("a list image input must hold PIL images")
        image = np.stack([np.asarray(i) for i in image])
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = image[..., None]
        if image.ndim == 3:
            image = image[None]
        if image.ndim != 4:
            raise ValueError(f"a numpy image must be [h, w, C] or [B, h, w, C], got shape {image.shape}")
        if np.issubdtype(image.dtype, np.integer):
            image = image.astype(np.float32) / np.iinfo(image.dtype).max
        image = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(0, 3, 1, 2)
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor, a numpy array or PIL image(s), not {type(image)}")
    if not image.is_floating_point():
        raise TypeError(f"an image tensor must be floating point in [0, 1], got {image.dtype}")
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4:
        raise ValueError(f"an image tensor must be [B, C, h, w] or [C, h, w], got shape {tuple(image.shape)}")
    return image


def _to_pil(array: np.ndarray) -> PIL.Image.Image:
    pixels = (array * 255.0).round().astype(np.uint8)
    return PIL.Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
