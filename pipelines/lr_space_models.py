"""The denoiser and ControlNet of LR-space GeoSRPipelines: small, norm-free, fast on a CPU.

A GeoSRPipeline with ``unshuffle_factor`` diffuses the HR residual pixel-unshuffled to a grid
a few times coarser than the HR (see :mod:`geosr.pipelines.pipeline_geosr`). On that grid a
flat residual trunk without normalisation (EDSR, Lim et al. 2017: batch or group norm costs SR
networks fidelity and slows their training) learns in minutes on a CPU what diffusers'
``UNet2DConditionModel`` (group norm, four resolutions) had not learnt in the same time, and runs
several times faster per output pixel. The interfaces are the diffusers ones, so the pipeline,
the training scripts and the distillation treat both families alike:

- :class:`LRSpaceDenoiser` is called like ``UNet2DConditionModel`` (``timestep_cond`` for a
  CFG-distilled student's guidance weight, ``down_block_additional_residuals`` and
  ``mid_block_additional_residual`` from a ControlNet) and returns ``(sample,)``;
- :class:`LRSpaceControlNet` is called like ``ControlNetModel`` and made from a denoiser with
  :meth:`LRSpaceControlNet.from_unet`: a trainable copy of the first trunk blocks that reads
  the condition (the LR tile) through diffusers' ``ControlNetConditioningEmbedding`` and adds
  zero-initialised 1x1 convolutions of its features to the denoiser's (Zhang et al. 2023).

The caption reaches every block twice: pooled (diffusers' ``TextTimeEmbedding``, attention
pooling) into the embedding that modulates each block (FiLM, with the timestep and the
guidance weight), and through one cross-attention layer in the middle of the trunk.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import Attention
from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding, ControlNetOutput
from diffusers.models.embeddings import TextTimeEmbedding, TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from torch import nn

__all__ = ["LRSpaceControlNet", "LRSpaceDenoiser"]


class FiLMResBlock(nn.Module):
    """conv -> ReLU -> FiLM(embedding) -> conv, added to the input (no normalisation)."""

    def __init__(self, channels: int, embedding_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.film = nn.Linear(embedding_dim, 2 * channels)
        # the block starts as (nearly) the identity: a deep trunk of them trains stably
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.conv2.weight.data.mul_(0.1)
        self.conv2.bias.data.zero_()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        # fused and in place (conv outputs are not needed by their backward): 7 % of a CPU pass
        h = torch.addcmul(shift, torch.relu_(self.conv1(x)), 1 + scale)
        return self.conv2(h).add_(x)


class CaptionCrossAttention(nn.Module):
    """Pre-norm cross-attention of the feature map to the caption tokens, residual, zero-initialised."""

    def __init__(self, channels: int, cross_attention_dim: int, head_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.attn = Attention(
            query_dim=channels,
            cross_attention_dim=cross_attention_dim,
            heads=max(1, channels // head_dim),
            dim_head=head_dim,
        )
        nn.init.zeros_(self.attn.to_out[0].weight)
        nn.init.zeros_(self.attn.to_out[0].bias)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        tokens = self.attn(self.norm(tokens), encoder_hidden_states=text)
        return x + tokens.transpose(1, 2).reshape(b, c, h, w)


class _Embedding(nn.Module):
    """Timestep (+ guidance weight) + pooled caption -> the blocks' modulation vector."""

    def __init__(self, embedding_dim: int, cross_attention_dim: int, text_pool_heads: int,
                 time_cond_proj_dim: int | None) -> None:
        super().__init__()
        self.time_proj = Timesteps(embedding_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        # TimestepEmbedding's own `cond_proj` takes the guidance embedding (as in diffusers' UNet)
        self.time_embedding = TimestepEmbedding(embedding_dim, embedding_dim, cond_proj_dim=time_cond_proj_dim)
        self.text_embedding = TextTimeEmbedding(cross_attention_dim, embedding_dim, num_heads=text_pool_heads)

    def forward(self, sample, timestep, text, timestep_cond=None) -> torch.Tensor:
        t = torch.as_tensor(timestep, device=sample.device)
        if t.ndim == 0:
            t = t[None]
        t = t.expand(sample.shape[0])
        emb = self.time_embedding(self.time_proj(t).to(sample.dtype), timestep_cond)
        return emb + self.text_embedding(text.to(sample.dtype))


class LRSpaceDenoiser(ModelMixin, ConfigMixin):
    """Residual trunk on the LR-space grid, called like diffusers' ``UNet2DConditionModel``.

    Parameters
    ----------
    in_channels : int
        Channels of the diffusion variable, plus those of the LR concatenated to it.
    out_channels : int
        Channels of the diffusion variable (the prediction).
    channels : int
        Width of the trunk.
    num_blocks : int
        Residual blocks of the trunk.
    attention_index : int, optional
        The block after which the caption cross-attention sits (default: the middle one); the
        ControlNet's mid residual is added there too.
    cross_attention_dim : int
        Size of the caption tokens (the text encoder's hidden size).
    attention_head_dim : int
        Channels per attention head.
    embedding_dim : int
        Size of the timestep / caption / guidance embedding.
    text_pool_heads : int
        Heads of the caption's attention pooling.
    time_cond_proj_dim : int, optional
        Size of a guidance-weight embedding (``timestep_cond``): set for a CFG-distilled student.
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        in_channels: int = 204,
        out_channels: int = 192,
        channels: int = 64,
        num_blocks: int = 6,
        attention_index: int | None = None,
        cross_attention_dim: int = 64,
        attention_head_dim: int = 16,
        embedding_dim: int = 128,
        text_pool_heads: int = 4,
        time_cond_proj_dim: int | None = None,
    ) -> None:
        super().__init__()
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.embedding = _Embedding(embedding_dim, cross_attention_dim, text_pool_heads, time_cond_proj_dim)
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.blocks = nn.ModuleList(FiLMResBlock(channels, embedding_dim) for _ in range(num_blocks))
        self.attention = CaptionCrossAttention(channels, cross_attention_dim, attention_head_dim)
        self.conv_body = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_out = nn.Conv2d(channels, out_channels, 3, padding=1)
        if in_channels > out_channels:
            # The first `out_channels` inputs are the noisy sample, the rest the LR on the same
            # grid (concat_lr). The sample's weights start at zero, so the trunk starts as a
            # plain LR -> residual regressor and learns to use the sample as training makes it
            # useful: at random init 48 channels of pure noise swamp the 3 LR channels at the
            # last timestep, and in a CPU budget such a network stayed below bicubic (measured:
            # -0.3 dB after 900 steps vs +0.5 dB after 87 steps with this start).
            with torch.no_grad():
                self.conv_in.weight[:, :out_channels].zero_()
                nn.init.kaiming_uniform_(self.conv_in.weight[:, out_channels:], a=math.sqrt(5))

    @property
    def time_embedding(self) -> TimestepEmbedding:
        """The timestep embedding (its ``cond_proj`` embeds a student's guidance weight)."""
        return self.embedding.time_embedding

    @property
    def attention_block(self) -> int:
        """Index of the block after which the cross-attention (and the mid residual) comes."""
        index = self.config.attention_index
        return self.config.num_blocks // 2 if index is None else int(index)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int,
        encoder_hidden_states: torch.Tensor,
        timestep_cond: torch.Tensor | None = None,
        down_block_additional_residuals: tuple[torch.Tensor, ...] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
        return_dict: bool = True,
    ):
        """Predict the noise (or v) of ``sample``; the ``i``-th extra residual joins after block ``i``."""
        emb = self.embedding(sample, timestep, encoder_hidden_states, timestep_cond)
        h = self.conv_in(sample)
        skip = h
        residuals = tuple(down_block_additional_residuals or ())
        if len(residuals) > len(self.blocks):
            raise ValueError(f"{len(residuals)} ControlNet residuals for {len(self.blocks)} blocks")
        for i, block in enumerate(self.blocks):
            h = block(h, emb)
            if i < len(residuals):
                h = h + residuals[i]
            if i == self.attention_block:
                h = self.attention(h, encoder_hidden_states.to(h.dtype))
                if mid_block_additional_residual is not None:
                    h = h + mid_block_additional_residual
        out = self.conv_out(self.conv_body(h) + skip)
        return UNet2DConditionOutput(sample=out) if return_dict else (out,)


class LRSpaceControlNet(ModelMixin, ConfigMixin):
    """The ControlNet of an :class:`LRSpaceDenoiser`, called like diffusers' ``ControlNetModel``.

    Parameters
    ----------
    in_channels, channels, cross_attention_dim, attention_head_dim, embedding_dim, text_pool_heads
        As the denoiser's (see :meth:`from_unet`).
    num_blocks : int
        Trunk blocks copied, and residuals returned (one per block).
    conditioning_channels : int
        Channels of the condition image (the LR tile).
    conditioning_embedding_out_channels : tuple of int
        Channels of diffusers' condition encoder; it downsamples by ``2 ** (len - 1)``.
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        in_channels: int = 204,
        channels: int = 64,
        num_blocks: int = 3,
        conditioning_channels: int = 3,
        conditioning_embedding_out_channels: tuple[int, ...] = (16, 32),
        cross_attention_dim: int = 64,
        attention_head_dim: int = 16,
        embedding_dim: int = 128,
        text_pool_heads: int = 4,
    ) -> None:
        super().__init__()
        self.embedding = _Embedding(embedding_dim, cross_attention_dim, text_pool_heads, None)
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.controlnet_cond_embedding = ControlNetConditioningEmbedding(
            conditioning_embedding_channels=channels,
            conditioning_channels=conditioning_channels,
            block_out_channels=tuple(conditioning_embedding_out_channels),
        )
        self.blocks = nn.ModuleList(FiLMResBlock(channels, embedding_dim) for _ in range(num_blocks))
        self.controlnet_down_blocks = nn.ModuleList(_zero_conv(channels) for _ in range(num_blocks))
        self.controlnet_mid_block = _zero_conv(channels)

    @classmethod
    def from_unet(
        cls,
        unet: LRSpaceDenoiser,
        conditioning_embedding_out_channels: tuple[int, ...] = (16, 32),
        conditioning_channels: int = 3,
        load_weights_from_unet: bool = True,
        num_blocks: int | None = None,
    ) -> "LRSpaceControlNet":
        """A ControlNet over the first ``num_blocks`` (default: half) of ``unet``'s trunk blocks."""
        config = unet.config
        n = num_blocks if num_blocks is not None else max(1, config.num_blocks // 2)
        controlnet = cls(
            in_channels=config.in_channels,
            channels=config.channels,
            num_blocks=n,
            conditioning_channels=conditioning_channels,
            conditioning_embedding_out_channels=tuple(conditioning_embedding_out_channels),
            cross_attention_dim=config.cross_attention_dim,
            attention_head_dim=config.attention_head_dim,
            embedding_dim=config.embedding_dim,
            text_pool_heads=config.text_pool_heads,
        )
        if load_weights_from_unet:
            # the student's guidance projection has no counterpart here
            embedding = {k: v for k, v in unet.embedding.state_dict().items() if "cond_proj" not in k}
            controlnet.embedding.load_state_dict(embedding)
            controlnet.conv_in.load_state_dict(unet.conv_in.state_dict())
            for mine, theirs in zip(controlnet.blocks, unet.blocks):
                mine.load_state_dict(theirs.state_dict())
        return controlnet

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int,
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: torch.Tensor,
        conditioning_scale: float = 1.0,
        return_dict: bool = True,
    ):
        """``(down residuals, one per block; mid residual)``, each times ``conditioning_scale``."""
        emb = self.embedding(sample, timestep, encoder_hidden_states)
        h = self.conv_in(sample) + self.controlnet_cond_embedding(controlnet_cond.to(sample.dtype))
        down = []
        for block, zero in zip(self.blocks, self.controlnet_down_blocks):
            h = block(h, emb)
            down.append(zero(h) * conditioning_scale)
        mid = self.controlnet_mid_block(h) * conditioning_scale
        if return_dict:
            return ControlNetOutput(down_block_res_samples=tuple(down), mid_block_res_sample=mid)
        return tuple(down), mid


def _zero_conv(channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels, channels, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv
