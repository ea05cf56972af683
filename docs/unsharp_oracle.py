"""How far can an unsharp mask set per image take ``D = 1``? (issue 30; README, "Detail and uncertainty")

For training images degraded as ``geosr evaluate`` degrades them, the D = 0 output ``y`` is
sharpened as the detail head's mask sharpens it, ``y + a * invisible_to_lr(high_pass(y, sigma))``,
over a grid of amounts ``a``. Printed per protocol: each fixed amount's mean gain over bicubic and
sharpness ratio; the *oracle* amount per image (the one that brings that image to ``--target`` of
its HR's sharpness, known only with the HR in hand) and what it scores; and how well the HR's
gradient energy - what a per-image amount would have to know - is predicted from what a run does
know (the LR, its caption, the D = 0 output), log-linear, leave one out::

    python docs/unsharp_oracle.py --scale 4 --images 60
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from geosr.captioning import load_captioner
from geosr.captioning.vocabulary import parse_caption
from geosr.degradations import degrade
from geosr.evaluation import _gradient_energy as energy  # the sharpness ratio's own measure
from geosr.evaluation import (find_hr_images, image_to_batch, psnr, quantise_8bit, read_hr_image,
                              sharpness_ratio)
from geosr.models import load_upscaler
from geosr.pipelines.consistency import invisible_to_lr
from geosr.pipelines.lr_space_heads import high_pass

AMOUNTS = (0, 1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
TRAIN = ("../shared/data/train/ucmerced", "../shared/data/train/neon")


def _at_target(grid: np.ndarray, target: float) -> np.ndarray:
    """``[amount, psnr, sharpness]`` interpolated where the sharpness reaches ``target`` (the last
    row when no amount of the grid reaches it)."""
    sharp = grid[:, 2]
    if sharp[0] >= target:
        return grid[0]
    k = int(np.searchsorted(sharp, target))
    if k >= len(sharp):
        return grid[-1]
    t = (target - sharp[k - 1]) / (sharp[k] - sharp[k - 1])
    return grid[k - 1] + t * (grid[k] - grid[k - 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--model", default=None, help="Default: the shipped model of --scale.")
    parser.add_argument("--images", type=int, default=60, help="Per protocol, half from each training set.")
    parser.add_argument("--sigma", type=float, default=1.0, help="The mask's Gaussian, HR px.")
    parser.add_argument("--target", type=float, default=0.9, help="Sharpness ratio the oracle aims at.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    paths = []
    for folder in TRAIN:
        found = sorted(find_hr_images([Path(folder)]))
        paths += found[:: max(1, len(found) // (args.images // 2))][: args.images // 2]
    model = args.model or f"geosr-tiny-x{args.scale}"
    fidelity, bicubic = load_upscaler(model, args.scale, detail=0.0), load_upscaler("bicubic", args.scale)
    captioner = load_captioner("degradation")
    features, targets = [], []
    for p_index, protocol in enumerate(("clean", "iso", "aniso")):
        grids, bicubic_psnr = [], []
        for index, path in enumerate(paths):
            hr = read_hr_image(Path(path), args.scale, None)
            lr = quantise_8bit(degrade(hr, args.scale, protocol, seed=7000 + 1000 * p_index + index)[0])
            batch = image_to_batch(lr)
            caption = captioner.caption(batch)[0]
            y = fidelity.upscale(batch, [caption], seeds=[index])[0][None].float()
            plain = quantise_8bit(bicubic.upscale(batch, [caption])[0].float().numpy().transpose(1, 2, 0))
            mask = invisible_to_lr(high_pass(y, args.sigma), args.scale)
            grid = []
            for amount in AMOUNTS:
                out = quantise_8bit((y + amount * mask).clamp(0, 1)[0].numpy().transpose(1, 2, 0))
                grid.append([amount, psnr(out, hr, args.scale), sharpness_ratio(out, hr, args.scale)])
            grids.append(np.asarray(grid))
            bicubic_psnr.append(psnr(plain, hr, args.scale))
            facts = parse_caption(caption)
            d0 = quantise_8bit(y[0].numpy().transpose(1, 2, 0))
            features.append([1.0, np.log(energy(d0)), np.log(energy(plain)), np.log(energy(lr)),
                             facts.blur_sigma if facts else 0.0, np.log1p(facts.noise_sigma if facts else 0.0)])
            targets.append(np.log(energy(hr) / energy(d0)))
        grids, bicubic_psnr = np.stack(grids), np.asarray(bicubic_psnr)
        print(f"x{args.scale} {protocol}, {len(paths)} training images, mask sigma {args.sigma:g} px")
        for j, amount in enumerate(AMOUNTS):
            gain = grids[:, j, 1] - bicubic_psnr
            print(f"  amount {amount:4.1f}: {gain.mean():+.2f} dB, {100 * (gain < 0).mean():3.0f} % below bicubic, "
                  f"sharpness {grids[:, j, 2].mean():.2f}")
        oracle = np.stack([_at_target(grid, args.target) for grid in grids])
        gain = oracle[:, 1] - bicubic_psnr
        print(f"  oracle amount per image for sharpness {args.target:g}: amount {oracle[:, 0].mean():.1f} "
              f"+- {oracle[:, 0].std():.1f}, {gain.mean():+.2f} dB, {100 * (gain < 0).mean():.0f} % below bicubic, "
              f"sharpness {oracle[:, 2].mean():.2f}")
    x, y = np.asarray(features), np.asarray(targets)
    residuals = []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        weights, *_ = np.linalg.lstsq(x[keep], y[keep], rcond=None)
        residuals.append(y[i] - x[i] @ weights)
    spread = float(np.std(residuals))
    print(f"HR gradient energy over D = 0's: spread {np.std(y):.2f} (log); predicted from the LR, caption and "
          f"D = 0 output to {spread:.2f} (a factor of {np.exp(spread):.2f}), leave-one-out")


if __name__ == "__main__":
    main()
