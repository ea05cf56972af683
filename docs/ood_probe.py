"""Build an out-of-domain probe set from ../shared/data/fixtures and score models on it.

The shipped models are trained on 0.1-0.3 m aerial RGB (UC Merced, NEON); val/ is the same
sources. These fixtures are other sensors and ground sample distances - Landsat at 300 m
(RGB.byte.tif, mosaic_cog1/2.tif, uint16), WorldView panchromatic at 0.5 m (uint16, one
band), a 5 m RGBN scene - so they show what a change does off the training domain. ``geosr
evaluate`` scores 8-bit RGB images: the uint16 scenes are stretched to 8 bits (1-99 % per
band, over their valid pixels' bounding box) and the panchromatic band repeated as grey RGB::

    python docs/ood_probe.py --out /tmp/ood --model geosr-tiny-x4 --model outputs/other_model

prints, per model and protocol (clean, aniso), ``geosr evaluate``'s line for the five images.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image

FIXTURES = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "fixtures"
STRETCHED = ("mosaic_cog1", "mosaic_cog2", "solaris_pan_uint16")
AS_IS = ("RGB.byte.tif", "rgbn_suba.tif")
GEOSR = str(Path(sys.executable).with_name("geosr"))  # the CLI of the environment running this


def stretched_png(src: Path, dst: Path) -> None:
    """``src`` (uint16, 1 or 3 bands) as 8-bit RGB: its valid bounding box, 1-99 % per band."""
    with rasterio.open(src) as ds:
        bands, valid = ds.read(), ds.dataset_mask() > 0
    if bands.shape[0] == 1:
        bands = np.repeat(bands, 3, axis=0)
    rows, cols = np.nonzero(valid)
    box = bands[:, rows.min(): rows.max() + 1, cols.min(): cols.max() + 1].astype(np.float64)
    out = np.empty(box.shape, np.uint8)
    for i, band in enumerate(box):
        low, high = np.percentile(band, [1, 99])
        out[i] = np.clip((band - low) / max(high - low, 1e-9) * 255, 0, 255).round()
    Image.fromarray(out.transpose(1, 2, 0)).save(dst)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="Folder for the 8-bit probe images.")
    parser.add_argument("--model", action="append", default=[], help="Model spec (repeatable).")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--fixtures", type=Path, default=FIXTURES)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in STRETCHED:
        stretched_png(args.fixtures / f"{name}.tif", args.out / f"{name}.png")
    hr = [str(args.out)] + [str(args.fixtures / name) for name in AS_IS]
    for protocol in ("clean", "aniso"):
        for model in args.model or [f"geosr-tiny-x{args.scale}"]:
            command = [GEOSR, "evaluate", "--scale", str(args.scale), "--degradation",
                       protocol, "--route", "off", "-q", "--model", model]
            for path in hr:
                command += ["--hr", path]
            lines = subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()
            scored = [line for line in lines if line.split()[:1] == [model]] or lines[-3:]
            print(f"{protocol:6s}", *scored)


if __name__ == "__main__":
    main()
