"""The plain-CNN yardstick of issue 25: an LR-grid CNN of about 0.2 M parameters, L1, clean crops, a wall-clock budget.

    OMP_NUM_THREADS=1 python -m geosr.training.plain_cnn_baseline --scale 4 --minutes 15 \\
        --train_data ../shared/data/train --out outputs/baselines/plain_cnn_x4.pt

The simplest network a super-resolution paper would compare against (SRCNN/FSRCNN/ESPCN
lineage): convolutions on the LR grid, a pixel shuffle, the result added to the bicubic
upsampling. Trained with L1 on HR crops of ``train/`` downsampled exactly as
:mod:`geosr.degradations`' ``clean`` protocol does (antialiased bicubic, 8-bit LR), with flips
and rotations, for a fixed number of minutes on however many threads it is given, or for a fixed
number of steps (``--steps``: the same yardstick whatever else shares the cores). Crops come
from images held in memory, so the network, not the data loader, sets the pace.

The result is a TorchScript archive with its model card (``model.json``: scale, bands, value
range), so ``geosr evaluate --model plain_cnn_x4.pt`` and ``geosr upscale --model`` score and run
it through the same own-model path as any user network; it is a yardstick, not a shipped model.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geosr.models.diffusion import default_dtype_name
from geosr.pipelines.consistency import model_downsample
from geosr.training.datasets import find_images

__all__ = ["PlainCNN", "load_images", "main", "parse_args", "random_batch"]

logger = logging.getLogger(__name__)


class PlainCNN(nn.Module):
    """``depth`` 3x3 convolutions with ReLU on the LR grid, pixel shuffle, plus bicubic.

    Parameters
    ----------
    scale : int
    channels : int
        Width (56 with depth 8 gives 0.20 M parameters at x4).
    depth : int
        Convolutions, the input and output ones included.
    """

    def __init__(self, scale: int, channels: int = 56, depth: int = 8) -> None:
        super().__init__()
        self.scale = scale
        layers: list[nn.Module] = [nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(channels, 3 * scale * scale, 3, padding=1))
        self.body = nn.Sequential(*layers)
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        base = F.interpolate(lr, scale_factor=float(self.scale), mode="bicubic", align_corners=False)
        return base + self.shuffle(self.body(lr))


def load_images(sources: Sequence[str | Path], min_side: int) -> list[np.ndarray]:
    """Every RGB training image at least ``min_side`` px, as ``[3, H, W]`` float32 in [0, 1]."""
    import rasterio

    images = []
    for path in find_images(sources):
        with rasterio.open(path) as src:
            if src.count < 3 or min(src.width, src.height) < min_side:
                continue
            pixels = src.read((1, 2, 3))
        # 8-bit training imagery, scaled as the data loader of the other recipes scales it
        scale = np.iinfo(pixels.dtype).max if pixels.dtype.kind in "iu" else 1.0
        images.append(np.clip(pixels.astype(np.float32) / scale, 0.0, 1.0))
    if not images:
        raise ValueError(f"no RGB image of at least {min_side} px in {list(sources)}")
    return images


def random_batch(images: list[np.ndarray], n: int, crop: int, scale: int,
                 rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lr, hr)``: random flipped/rotated HR crops and their clean 8-bit LR."""
    crops = []
    for _ in range(n):
        image = images[int(rng.integers(len(images)))]
        y = int(rng.integers(image.shape[1] - crop + 1))
        x = int(rng.integers(image.shape[2] - crop + 1))
        patch = np.rot90(image[:, y : y + crop, x : x + crop], k=int(rng.integers(4)), axes=(1, 2))
        crops.append(patch[:, :, ::-1] if rng.random() < 0.5 else patch)
    hr = torch.from_numpy(np.ascontiguousarray(np.stack(crops)))
    lr = (model_downsample(hr, scale).clamp(0.0, 1.0) * 255.0).round() / 255.0
    return lr, hr


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The baseline's flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--scale", type=int, choices=(2, 3, 4), required=True)
    add("--train_data", nargs="+", default=["../shared/data/train"])
    add("--out", type=Path, required=True, help="TorchScript archive to write (.pt).")
    add("--minutes", type=float, default=15.0, help="Wall-clock training budget.")
    add("--steps", type=int, default=None,
        help="Train for this many steps instead of --minutes (the issue's 20-minute yardstick ran 18000).")
    add("--channels", type=int, default=56)
    add("--depth", type=int, default=8)
    add("--batch_size", type=int, default=16)
    add("--crop", type=int, default=None, help="HR crop side (default 32 LR px).")
    add("--learning_rate", type=float, default=1e-3)
    add("--seed", type=int, default=0)
    add("--dtype", choices=("bf16", "fp32"), default=None,
        help="Autocast precision (default: bf16 where the CPU multiplies bf16 in hardware, AMX).")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    """Train for ``args.minutes`` (or ``args.steps``) and write the archive; returns what it did."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    crop = args.crop or 32 * args.scale
    images = load_images(args.train_data, crop)
    net = PlainCNN(args.scale, args.channels, args.depth)
    parameters = sum(p.numel() for p in net.parameters())
    logger.info("%d images, %d parameters, budget %s", len(images), parameters,
                f"{args.steps} steps" if args.steps else f"{args.minutes} minutes")
    optimizer = torch.optim.Adam(net.parameters(), lr=args.learning_rate)
    dtype = args.dtype or default_dtype_name("cpu")
    budget, start, step = 60.0 * args.minutes, time.perf_counter(), 0
    while True:
        elapsed = time.perf_counter() - start
        # cosine decay over the budget (steps or wall clock): the schedule ends when the budget does
        progress = step / args.steps if args.steps else elapsed / budget
        if progress >= 1.0:
            break
        for group in optimizer.param_groups:
            group["lr"] = 0.5 * args.learning_rate * (1.0 + math.cos(math.pi * progress))
        lr, hr = random_batch(images, args.batch_size, crop, args.scale, rng)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss = (net(lr).float() - hr).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if step % 500 == 0:
            logger.info("step %d, %.0f s, L1 %.4f", step, elapsed, loss.item())
    seconds = time.perf_counter() - start
    report = {"steps": step, "seconds": round(seconds, 1), "parameters": parameters, "scale": args.scale,
              "threads": torch.get_num_threads(), "dtype": dtype, "recipe": vars(args) | {"out": str(args.out)}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    card = {"scale": args.scale, "bands": 3, "value_range": "0-1"}
    with warnings.catch_warnings():
        # torch 2.13 deprecates TorchScript; its archives still load, and geosr reads them
        warnings.simplefilter("ignore", DeprecationWarning)
        archive = torch.jit.trace(net.eval(), torch.rand(1, 3, 16, 16))
        torch.jit.save(archive, str(args.out), _extra_files={"model.json": json.dumps(card)})
    args.out.with_suffix(".training.json").write_text(json.dumps(report, indent=1))
    logger.info("wrote %s after %d steps in %.0f s", args.out, step, seconds)
    return report


if __name__ == "__main__":
    main(parse_args())
