"""Where does the uncertainty map's block ranking fall short? (issue 30; README, "Detail and uncertainty")

The Spearman figure ranks the 8 x 8-pixel blocks of all images together, so a map can lose it
in two places: *across* images (how much error an image has as a whole) and *within* them. For
training images degraded as ``geosr evaluate`` degrades them, this prints the pooled block
Spearman of

- the shipped head's map, and the output's gradient magnitude (the free guess);
- the map with each image's level set right (each image's map rescaled to its actual RMS error:
  an oracle, known only with the HR in hand) - the most any per-image (per-tile) correction
  could add;
- the map rescaled by a leave-one-out log-linear fit of that level on what a run does know: the
  map's own mean, the output's mean gradient, the LR's mean absolute Laplacian and its standard
  deviation;
- the map combined with the true noise sigma of the degradation, ``sqrt(map**2 + a * noise**2)``
  (best ``a``; an oracle of the noise level);
- the map combined with the detail head's drawn residual (``D = 1`` less ``D = 0``), best weight::

    python docs/uncertainty_level_probe.py --scale 4 --degradation clean --images 120
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.ndimage import laplace

from geosr.captioning import load_captioner
from geosr.degradations import degrade
from geosr.evaluation import find_hr_images, image_to_batch, quantise_8bit, read_hr_image
from geosr.models import load_upscaler
from geosr.uncertainty_metrics import band_rms, block_spearman, gradient_baseline

TRAIN = ("../shared/data/train/ucmerced", "../shared/data/train/neon")
WEIGHTS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)


def _rms(m: np.ndarray) -> float:
    return float(np.sqrt(np.mean(m ** 2)))


def _loo_fit(features: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Leave-one-out predictions of ``target`` by least squares on ``[1, features]``."""
    x = np.column_stack([np.ones(len(target)), features])
    out = np.empty_like(target)
    for i in range(len(target)):
        keep = np.arange(len(target)) != i
        coef, *_ = np.linalg.lstsq(x[keep], target[keep], rcond=None)
        out[i] = x[i] @ coef
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--degradation", default="clean")
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--model", default=None, help="Default: the shipped model of --scale.")
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args()
    spec = args.model or f"geosr-tiny-x{args.scale}"
    fidelity = load_upscaler(spec, args.scale)
    detailed = load_upscaler(spec, args.scale, detail=1.0)
    captioner = load_captioner("degradation")
    paths = find_hr_images(TRAIN)
    paths = paths[:: max(1, len(paths) // args.images)][: args.images]
    b = args.scale  # border shaved, as geosr evaluate does
    sigma, error, gradient, residual, noise, lr_stats = [], [], [], [], [], []
    for index, path in enumerate(paths):
        hr = read_hr_image(path, args.scale, None)
        lr, params = degrade(hr, args.scale, args.degradation, seed=args.seed + index)
        lr = quantise_8bit(lr)
        tiles = image_to_batch(lr)
        caption = captioner.caption(tiles)[0]
        seeds = [args.seed + index]
        out, sig = fidelity.upscale_with_uncertainty(tiles, [caption], seeds=seeds)
        out = quantise_8bit(out[0].float().numpy().transpose(1, 2, 0))
        drawn = quantise_8bit(detailed.upscale(tiles, [caption], seeds=seeds)[0].float().numpy().transpose(1, 2, 0))
        shave = (slice(b, -b), slice(b, -b))
        sigma.append(band_rms(sig[0].float().numpy().transpose(1, 2, 0))[shave] * 255.0)
        error.append(band_rms(out - hr)[shave] * 255.0)
        gradient.append(gradient_baseline(out * 255.0)[shave])
        residual.append(band_rms(drawn - out)[shave] * 255.0)
        noise.append(params.noise_sigma)
        gray = lr.mean(axis=2) * 255.0
        lr_stats.append([np.log(np.abs(laplace(gray)).mean() + 1e-6), np.log(gray.std() + 1e-6)])
    level = np.log([_rms(e) / _rms(s) for s, e in zip(sigma, error)])
    known = np.column_stack([np.log([_rms(s) for s in sigma]), np.log([g.mean() + 1e-6 for g in gradient]),
                             np.asarray(lr_stats)])
    fitted = _loo_fit(known, level)
    print(f"{spec} x{args.scale} {args.degradation}, {len(paths)} training images, 8 x 8 blocks pooled")
    print(f"  head's map                         {block_spearman(sigma, error):.3f}")
    print(f"  output's gradient (free guess)     {block_spearman(gradient, error):.3f}")
    print(f"  each image's level right (oracle)  {block_spearman([s * np.exp(v) for s, v in zip(sigma, level)], error):.3f}"
          f"   (spread of log level {level.std():.3f})")
    print(f"  level fitted on what a run knows   {block_spearman([s * np.exp(v) for s, v in zip(sigma, fitted)], error):.3f}"
          f"   (leave-one-out residual spread {np.std(level - fitted):.3f})")
    with_noise = max((block_spearman([np.sqrt(s ** 2 + a * n ** 2) for s, n in zip(sigma, noise)], error), a)
                     for a in WEIGHTS)
    with_detail = max((block_spearman([np.sqrt(s ** 2 + a * r ** 2) for s, r in zip(sigma, residual)], error), a)
                      for a in WEIGHTS)
    print(f"  with the true noise sigma (oracle) {with_noise[0]:.3f}   (best weight {with_noise[1]:g})")
    print(f"  with the detail head's residual    {with_detail[0]:.3f}   (best weight {with_detail[1]:g}; "
          f"the residual alone {block_spearman(residual, error):.3f})")


if __name__ == "__main__":
    main()
