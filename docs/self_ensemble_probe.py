"""What a geometric self-ensemble would buy the default model: the output averaged over the eight
flips and quarter turns of the LR (each undone on its output), against the plain output, on val.

Also whether the spread of those eight outputs ranks the error as well as the uncertainty head
does (Spearman over 8 x 8-pixel blocks, per image). geosr does not ship the ensemble: it costs
eight model runs a tile (see the README's training campaign section for the figures).

    OMP_NUM_THREADS=1 python docs/self_ensemble_probe.py --degradation clean --every 6
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy.stats import spearmanr

from geosr.evaluation import _Run, find_hr_images, psnr, quantise_8bit, read_hr_image

VAL = ["../shared/data/val/ucmerced", "../shared/data/val/neon"]


def dihedral_outputs(run: _Run, lr: np.ndarray, caption: str, seed: int) -> np.ndarray:
    """The model's output for each of the 8 flips/quarter turns of ``lr``, turned back: [8, H, W, 3]."""
    outs = []
    for turns in range(4):
        for flip in (False, True):
            x = np.rot90(lr, turns, (0, 1))
            x = x[:, ::-1] if flip else x
            out = run.run(run.model, np.ascontiguousarray(x), caption, seed)
            out = out[:, ::-1] if flip else out
            outs.append(np.rot90(out, -turns, (0, 1)))
    return np.stack(outs)


def block_means(a: np.ndarray, border: int) -> np.ndarray:
    """Means over 8 x 8-pixel blocks (bands averaged) inside ``border``."""
    a = a[border:-border, border:-border].mean(-1)
    h, w = a.shape[0] // 8 * 8, a.shape[1] // 8 * 8
    return a[:h, :w].reshape(h // 8, 8, w // 8, 8).mean((1, 3)).ravel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--degradation", default="clean")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--every", type=int, default=6, help="Take every N-th val image.")
    parser.add_argument("--model", default=None, help="Default: the shipped model of --scale.")
    args = parser.parse_args()
    torch.manual_seed(0)
    run = _Run(args.scale, args.degradation, args.model, "degradation", [], None, None, None, uncertainty=True)
    gains, ranks = [], []
    images = find_hr_images(VAL)[::args.every]
    for seed, path in enumerate(images):
        hr = read_hr_image(path, args.scale, None)
        lr, _ = run.make_lr(hr, seed)
        caption, baselines, out = run.super_resolve(lr, seed)
        outs = dihedral_outputs(run, lr, caption, seed)
        bicubic = psnr(baselines["bicubic"], hr, args.scale)
        gains.append((psnr(out, hr, args.scale) - bicubic, psnr(quantise_8bit(outs.mean(0)), hr, args.scale) - bicubic))
        error = block_means((out - hr) ** 2, args.scale)
        ranks.append((spearmanr(block_means(run.model_sigma ** 2, args.scale), error)[0],
                      spearmanr(block_means(outs.var(0), args.scale), error)[0]))
    gains, ranks = np.array(gains), np.nanmean(np.array(ranks), axis=0)
    print(f"x{args.scale} {args.degradation}, {len(images)} val images: dPSNR over bicubic {gains[:, 0].mean():+.3f} dB, "
          f"self-ensemble of 8 {gains[:, 1].mean():+.3f} dB; Spearman per image: uncertainty head {ranks[0]:.3f}, "
          f"spread of the 8 {ranks[1]:.3f}")


if __name__ == "__main__":
    main()
