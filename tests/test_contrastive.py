"""InfoNCE against a hand computation; contrastive steps pull LR and HR of a crop together."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from geosr.pipelines.pipeline_geosr import upsample_lr
from geosr.training.contrastive import ContrastiveAligner, info_nce
from geosr.degradations import degrade
from tiny_models import tiny_pipeline_components


def test_info_nce_matches_hand_computation():
    q = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8]]), dim=-1)
    k = F.normalize(torch.tensor([[0.8, 0.6], [0.0, 1.0]]), dim=-1)
    queue = F.normalize(torch.tensor([[-1.0, 0.0]]), dim=-1)
    t = 0.5
    expected = 0.0
    for i in range(2):
        logits = [float(q[i] @ key) / t for key in (k[0], k[1], queue[0])]
        expected += -(logits[i] - math.log(sum(math.exp(v) for v in logits)))
    expected /= 2
    assert math.isclose(float(info_nce(q, k, queue, temperature=t)), expected, rel_tol=1e-6)
    # no queue: in-batch negatives only
    logits0 = [float(q[0] @ k[0]) / t, float(q[0] @ k[1]) / t]
    logits1 = [float(q[1] @ k[0]) / t, float(q[1] @ k[1]) / t]
    no_queue = -(logits0[0] - math.log(sum(map(math.exp, logits0))))
    no_queue += -(logits1[1] - math.log(sum(map(math.exp, logits1))))
    assert math.isclose(float(info_nce(q, k, None, temperature=t)), no_queue / 2, rel_tol=1e-6)


def test_queue_is_a_ring_buffer():
    encoder = tiny_pipeline_components()["controlnet"].controlnet_cond_embedding
    aligner = ContrastiveAligner(encoder, projection_dim=4, queue_size=5)
    assert aligner.negatives().shape == (0, 4)
    aligner.enqueue(torch.ones(3, 4))
    aligner.enqueue(2 * torch.ones(3, 4))
    assert aligner.negatives().shape == (5, 4)
    assert aligner.queue[:, 0].tolist() == [2, 1, 1, 2, 2] and int(aligner.queue_ptr) == 1


def _crops(n: int = 6, size: int = 32, scale: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """HR crops that differ in colour and texture, and their upsampled degraded LR."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    hr = []
    for i in range(n):
        colour = torch.rand(3, 1, 1, generator=g)
        pattern = 0.5 + 0.5 * torch.sin(2 * math.pi * (i + 1) * (xx + (i % 3) * yy))
        hr.append((0.6 * colour + 0.4 * pattern).clamp(0, 1))
    hr = torch.stack(hr)
    lr, _ = degrade(hr, scale, "aniso", seed=1)
    return upsample_lr(lr, scale), hr


def test_contrastive_steps_raise_positive_similarity():
    torch.manual_seed(0)
    controlnet = tiny_pipeline_components()["controlnet"]
    encoder = controlnet.controlnet_cond_embedding
    aligner = ContrastiveAligner(encoder, projection_dim=16, queue_size=8, temperature=0.1, momentum=0.9)
    condition, hr = _crops()
    params = list(encoder.parameters()) + list(aligner.head.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-2)
    before = aligner.similarity_gap(encoder, condition, hr)
    losses = []
    for _ in range(30):
        loss, keys = aligner(encoder, condition, hr)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        aligner.enqueue(keys)
        aligner.update_key_encoder(encoder)
        losses.append(loss.item())
    after = aligner.similarity_gap(encoder, condition, hr)
    print(f"similarity gap {before:.3f} -> {after:.3f}, InfoNCE {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert after > before + 0.1
    assert losses[-1] < losses[0]
