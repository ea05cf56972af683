"""Contrastive alignment of the ControlNet's condition features: LR and HR of a crop agree.

The ControlNet reads the degraded LR (upsampled to HR size) through its condition encoder
(``controlnet.controlnet_cond_embedding``). Pulling the pooled encoder features of an LR
crop towards those of its own HR crop, and away from other crops, asks the encoder for
content features that do not depend on the degradation. The loss is InfoNCE (van den Oord
et al. 2018) with MoCo's momentum key encoder and queue of negatives (He et al. 2020):

- query: ``head(pool(encoder(LR)))`` with gradients;
- positive key: ``head_m(pool(encoder_m(HR)))`` of the same crop, from a momentum
  (exponential moving average) copy of encoder and head, without gradients;
- negatives: the keys of the other crops of the batch and the ``queue_size`` most recent
  keys of earlier batches.

The features are taken before the encoder's zero-initialised output convolution: at the
start of training that convolution outputs zeros, which would leave nothing to contrast.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ContrastiveAligner", "condition_features", "info_nce"]


def info_nce(
    query: torch.Tensor,
    keys: torch.Tensor,
    negatives: torch.Tensor | None = None,
    temperature: float = 0.07,
) -> torch.Tensor:
    """InfoNCE of queries against their keys, the other keys and extra negatives.

    Parameters
    ----------
    query : torch.Tensor
        ``[B, D]`` L2-normalised queries.
    keys : torch.Tensor
        ``[B, D]`` L2-normalised keys; ``keys[i]`` is the positive of ``query[i]``, the other
        rows are its in-batch negatives.
    negatives : torch.Tensor, optional
        ``[K, D]`` L2-normalised extra negatives (the momentum queue).
    temperature : float
        Softmax temperature.

    Returns
    -------
    torch.Tensor
        Scalar mean over the batch of ``-log softmax(logits)[i, i]`` with
        ``logits = query @ [keys; negatives].T / temperature``.
    """
    bank = keys if negatives is None or len(negatives) == 0 else torch.cat([keys, negatives])
    logits = query @ bank.T / temperature
    labels = torch.arange(query.shape[0], device=query.device)
    return F.cross_entropy(logits, labels)


def condition_features(encoder: nn.Module, condition: torch.Tensor) -> torch.Tensor:
    """Pooled features of a ControlNet condition encoder, before its zero convolution.

    Parameters
    ----------
    encoder : diffusers ControlNetConditioningEmbedding
        ``controlnet.controlnet_cond_embedding`` (``conv_in``, ``blocks``, ``conv_out``).
    condition : torch.Tensor
        ``[B, C, H, W]`` condition images in [0, 1].

    Returns
    -------
    torch.Tensor
        ``[B, F]`` spatial means of the last hidden activation.
    """
    hidden = F.silu(encoder.conv_in(condition))
    for block in encoder.blocks:
        hidden = F.silu(block(hidden))
    return hidden.mean(dim=(2, 3))


class ContrastiveAligner(nn.Module):
    """Projection head, momentum key encoder and negative queue around a condition encoder.

    Parameters
    ----------
    encoder : nn.Module
        The ControlNet's condition encoder (trained by the caller's optimizer); the aligner
        keeps a momentum copy of it, not a reference.
    projection_dim : int
        Size of the contrasted embedding.
    queue_size : int
        Number of past keys used as extra negatives (0: in-batch negatives only).
    temperature : float
        InfoNCE temperature.
    momentum : float
        EMA factor of the key encoder (MoCo's ``m``).
    """

    def __init__(
        self,
        encoder: nn.Module,
        projection_dim: int = 128,
        queue_size: int = 1024,
        temperature: float = 0.07,
        momentum: float = 0.99,
    ) -> None:
        super().__init__()
        self.temperature, self.momentum = float(temperature), float(momentum)
        feature_dim = encoder.conv_out.in_channels
        self.head = nn.Sequential(
            nn.Linear(feature_dim, feature_dim), nn.SiLU(), nn.Linear(feature_dim, projection_dim)
        )
        self.key_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.key_head = copy.deepcopy(self.head).requires_grad_(False)
        # buffers, so that the queue is saved with the model and resumes where it was
        self.register_buffer("queue", torch.zeros(queue_size, projection_dim))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))

    def query(self, encoder: nn.Module, lr_condition: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` normalised queries of LR conditions through the online encoder."""
        return F.normalize(self.head(condition_features(encoder, lr_condition)), dim=-1)

    @torch.no_grad()
    def key(self, hr: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` normalised keys of HR images through the momentum encoder."""
        return F.normalize(self.key_head(condition_features(self.key_encoder, hr)), dim=-1)

    @torch.no_grad()
    def update_key_encoder(self, encoder: nn.Module) -> None:
        """EMA step of the momentum encoder and head towards the online ones."""
        pairs = list(zip(self.key_encoder.parameters(), encoder.parameters()))
        pairs += list(zip(self.key_head.parameters(), self.head.parameters()))
        for target, online in pairs:
            target.lerp_(online.detach().to(target.dtype), 1.0 - self.momentum)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Push keys (all processes' keys, gathered) into the ring buffer of negatives."""
        size = self.queue.shape[0]
        if size == 0:
            return
        keys = keys[-size:].to(self.queue.dtype)
        idx = (self.queue_ptr + torch.arange(len(keys), device=keys.device)) % size
        self.queue[idx] = keys
        self.queue_ptr.copy_((self.queue_ptr + len(keys)) % size)
        self.queue_filled.copy_(torch.clamp(self.queue_filled + len(keys), max=size))

    def negatives(self) -> torch.Tensor:
        """The filled part of the queue."""
        return self.queue[: int(self.queue_filled)]

    def forward(
        self, encoder: nn.Module, lr_condition: torch.Tensor, hr: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """InfoNCE loss of a batch, and the keys to :meth:`enqueue` after the step.

        The caller enqueues (after gathering across processes) so that a batch's own keys
        never appear twice in its logits.
        """
        keys = self.key(hr)
        query = self.query(encoder, lr_condition)
        return info_nce(query, keys, self.negatives(), self.temperature), keys

    @torch.no_grad()
    def similarity_gap(
        self, encoder: nn.Module, lr_condition: torch.Tensor, hr: torch.Tensor
    ) -> float:
        """Mean positive minus mean in-batch negative cosine similarity (a progress metric)."""
        sim = self.query(encoder, lr_condition) @ self.key(hr).T
        n = sim.shape[0]
        positive = sim.diagonal().mean()
        negative = (sim.sum() - sim.diagonal().sum()) / max(n * n - n, 1)
        return float(positive - negative)
