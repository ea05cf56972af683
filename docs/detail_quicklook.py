"""Draw a README quicklook of the detail dial and the uncertainty map (issue 30).

One row per HR image: LR (nearest-enlarged) | D = 0 | D = 1 | HR | predicted RMSE | actual error,
the two error maps on one colour scale (black 0, white ``--vmax`` DN). The LR is made as
``geosr evaluate`` makes it (image ``i`` of the list with seed ``seed + i``)::

    python docs/detail_quicklook.py --scale 4 --degradation clean --out docs/quicklook_detail_x4_clean.png \\
        ../shared/data/val/ucmerced/denseresidential/denseresidential50.png \\
        ../shared/data/val/ucmerced/harbor/harbor50.png ../shared/data/val/ucmerced/golfcourse/golfcourse50.png

and the same three images with ``--degradation aniso --out docs/quicklook_detail_x4_aniso.png`` and
``--scale 2 --degradation clean --out docs/quicklook_detail_x2_clean.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from geosr.captioning import load_captioner
from geosr.degradations import degrade
from geosr.evaluation import image_to_batch, psnr, quantise_8bit, read_hr_image, sharpness_ratio
from geosr.models import default_model, load_upscaler


def _panel(array: np.ndarray, side: int) -> Image.Image:
    if array.dtype != np.uint8:  # images in [0, 1]
        array = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
    return Image.fromarray(array).resize((side, side), Image.NEAREST)


def _heat(error_dn: np.ndarray, vmax: float) -> np.ndarray:
    return (np.clip(error_dn / vmax, 0.0, 1.0) * 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--degradation", default="clean")
    parser.add_argument("--model", default=None)
    parser.add_argument("--crop", type=int, default=128, help="HR px of the centre crop shown.")
    parser.add_argument("--side", type=int, default=192, help="Panel side in the sheet.")
    parser.add_argument("--vmax", type=float, default=40.0, help="DN shown white in the error maps.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    spec = args.model or default_model(args.scale)
    fidelity = load_upscaler(spec, args.scale, detail=0.0)
    detailed = load_upscaler(spec, args.scale, detail=1.0)
    captioner = load_captioner("degradation")
    heads = ["LR", "D = 0", "D = 1", "HR", "predicted RMSE", "actual error (D = 0)"]
    rows = []
    for i, path in enumerate(args.images):
        hr = read_hr_image(path, args.scale, None)
        lr, _ = degrade(hr, args.scale, args.degradation, seed=args.seed + i)
        lr = quantise_8bit(lr)
        tiles = image_to_batch(lr)
        caption = captioner.caption(tiles)[0]
        out0, sigma = fidelity.upscale_with_uncertainty(tiles, [caption], seeds=[args.seed + i])
        out1 = detailed.upscale(tiles, [caption], seeds=[args.seed + i])[0]
        out0 = quantise_8bit(out0[0].numpy().transpose(1, 2, 0))
        out1 = quantise_8bit(out1.numpy().transpose(1, 2, 0))
        predicted = 255 * np.sqrt((sigma[0].numpy() ** 2).mean(axis=0))
        actual = 255 * np.sqrt(((out0 - hr) ** 2).mean(axis=2))
        h, w = hr.shape[:2]
        c, s = args.crop, args.scale
        y, x = (h - c) // 2 // s * s, (w - c) // 2 // s * s
        cut = (slice(y, y + c), slice(x, x + c))
        lr_cut = lr[y // s : (y + c) // s, x // s : (x + c) // s]
        panels = [lr_cut, out0[cut], out1[cut], hr[cut], _heat(predicted[cut], args.vmax),
                  _heat(actual[cut], args.vmax)]
        labels = [f"{path.name}", f"{psnr(out0, hr, s):.2f} dB, sharp {sharpness_ratio(out0, hr, s):.2f}",
                  f"{psnr(out1, hr, s):.2f} dB, sharp {sharpness_ratio(out1, hr, s):.2f}", "",
                  f"mean {predicted.mean():.1f} DN", f"mean {actual.mean():.1f} DN"]
        rows.append((panels, labels))
    side, pad = args.side, 16
    sheet = Image.new("RGB", (len(heads) * side, pad + len(rows) * (side + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, head in enumerate(heads):
        draw.text((k * side + 4, 2), head, fill="black")
    for r, (panels, labels) in enumerate(rows):
        top = pad + r * (side + pad)
        for k, (panel, label) in enumerate(zip(panels, labels)):
            sheet.paste(_panel(panel, side).convert("RGB"), (k * side, top))
            draw.text((k * side + 4, top + side + 2), label, fill="black")
    sheet.save(args.out, optimize=True)
    print(args.out)


if __name__ == "__main__":
    main()
