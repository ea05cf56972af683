"""Calibrate the routing thresholds (:mod:`geosr.routing`) on training crops.

For random crops of the training images (never val), at one scale and under each
degradation protocol, measure the LR texture and noise and what the model gains over the
cheap path on the crop (HR mean squared error, DN^2). For each candidate pair (texture
threshold, noise limit), print the share of crops that would be routed to the cheap path
and the PSNR that routing them would cost the whole set (its summed MSE), with the router's
noise limit and blur gate. The shipped defaults (:data:`geosr.routing.CALIBRATED_THRESHOLDS`):
bicubic 1.0, the largest under which no routed crop loses more than ~10 DN^2; the fast
networks 4.0, where the set loses at most 0.001 dB (README "Texture-aware routing").

Run (one core, ~2 min per 100 images)::

    OMP_NUM_THREADS=1 python -m geosr.training.calibrate_routing --scale 4 --images 300 [--cheap bicubic]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from geosr.captioning import load_captioner
from geosr.evaluation import find_hr_images, image_to_batch, quantise_8bit, read_hr_image
from geosr.models import default_model, load_upscaler
from geosr.routing import cheap_path, measure_blur, measure_tiles, passes_blur_gate
from geosr.degradations import PROTOCOLS, degrade

TRAIN = ("../shared/data/train/ucmerced", "../shared/data/train/neon")
TEXTURE_THRESHOLDS = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
NOISE_LIMITS = (1.5, 2.0, 3.0, float("inf"))


def measure_crops(scale: int, images: int, lr_side: int, cheap: str, seed: int = 0) -> list[dict]:
    """Texture, noise, model, cheap-path and bicubic MSE (DN^2) of LR crops of ``images`` random train images."""
    paths = find_hr_images(TRAIN)
    order = np.random.default_rng(seed).permutation(len(paths))[:images]
    upscalers = {"model": load_upscaler(default_model(scale), scale), "cheap": load_upscaler(cheap, scale),
                 "bicubic": load_upscaler("bicubic", scale)}
    captioner = load_captioner("degradation")
    rows = []
    for i in order:
        hr = read_hr_image(paths[i], scale, lr_side * scale)
        for protocol in PROTOCOLS:
            lr, params = degrade(hr, scale, protocol, seed=int(i))
            x = image_to_batch(quantise_8bit(lr))
            caption = captioner.caption(x)[0]
            mse = {}
            for name, upscaler in upscalers.items():
                text = caption if name == "model" else ""  # the cheap path is not captioned
                out = quantise_8bit(upscaler.upscale(x, [text], seeds=[0])[0].numpy().transpose(1, 2, 0))
                mse[name] = float((((out - hr) * 255)[scale:-scale, scale:-scale] ** 2).mean())
            texture, noise = measure_tiles(x)
            rows.append(dict(path=str(paths[i]), protocol=protocol, true_noise=params.noise_sigma,
                             texture=float(texture[0]), noise=float(noise[0]), blur=measure_blur(x[0]),
                             **{f"mse_{k}": v for k, v in mse.items()}))
    return rows


def sweep(rows: list[dict]) -> list[dict]:
    """Routed share, PSNR cost over the set and worst routed crop, per (threshold, noise limit),
    with the router's blur gate."""
    texture = np.array([r["texture"] for r in rows])
    noise = np.array([r["noise"] for r in rows])
    sharp = np.array([passes_blur_gate(r["texture"], lambda r=r: r["blur"]) for r in rows])
    gain = np.array([r["mse_cheap"] - r["mse_model"] for r in rows])
    model_total = sum(r["mse_model"] for r in rows)
    out = []
    for t in TEXTURE_THRESHOLDS:
        for n in NOISE_LIMITS:
            routed = (texture < t) & (noise < n) & sharp
            out.append(dict(threshold=t, noise_limit=n, routed=float(routed.mean()),
                            psnr_cost=float(10 * np.log10((model_total + gain[routed].sum()) / model_total)),
                            worst_routed_gain=float(gain[routed].max()) if routed.any() else 0.0))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--lr-side", type=int, default=64, help="LR crop side (px)")
    parser.add_argument("--cheap", help="the cheap path (default: geosr.routing.cheap_path(scale))")
    parser.add_argument("--json", help="also write the crops' measurements here")
    args = parser.parse_args(argv)
    cheap = args.cheap or cheap_path(args.scale)
    rows = measure_crops(args.scale, args.images, args.lr_side, cheap)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f)
    print(f"x{args.scale}, cheap path {cheap}, {len(rows)} crops: threshold, noise limit -> routed, PSNR cost, "
          "worst routed gain (DN^2)")
    for r in sweep(rows):
        print(f"  {r['threshold']:4.1f} {r['noise_limit']:5.1f}  {r['routed']:6.1%}  {r['psnr_cost']:6.3f} dB"
              f"  {r['worst_routed_gain']:7.1f}")


if __name__ == "__main__":
    main()
