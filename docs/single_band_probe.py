"""Score models on val images fed as geosr feeds a non-RGB band: one band copied into R, G and B.

geosr sends NIR, red edge, SWIR or a panchromatic band through the RGB model as one band
repeated three times (``geosr.tasks.upscale_batch``). This builds that input from val: every
third val image (sorted paths, 90 of 268), each reduced to one of its bands (R, G, B in turn),
written as grey RGB PNG, next to the same images in colour, and prints ``geosr evaluate``'s line
for both sets per model (x4 clean by default)::

    python docs/single_band_probe.py --out /tmp/single_band --model geosr-tiny-x4 --model OLD

The gap between the two lines is what a band alone gets less than the colours it came from.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image

VAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "val"
GEOSR = str(Path(sys.executable).with_name("geosr"))  # the CLI of the environment running this
SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")


def val_images(root: Path) -> list[Path]:
    """Every image under ``root``, sorted by path."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in SUFFIXES)


def read_rgb(path: Path) -> np.ndarray:
    """The first three bands of ``path`` as uint8 (rows, cols, 3)."""
    with rasterio.open(path) as ds:
        if ds.count < 3 or ds.dtypes[0] != "uint8":
            raise ValueError(f"{path}: expected 8-bit RGB, got {ds.count} band(s) of {ds.dtypes[0]}")
        return ds.read([1, 2, 3]).transpose(1, 2, 0)


def build(out: Path, root: Path = VAL, every: int = 3) -> tuple[Path, Path]:
    """Write ``out/single_band`` and ``out/colour``; return the two folders."""
    grey_dir, colour_dir = out / "single_band", out / "colour"
    grey_dir.mkdir(parents=True, exist_ok=True)
    colour_dir.mkdir(parents=True, exist_ok=True)
    for n, path in enumerate(val_images(root)[::every]):
        rgb = read_rgb(path)
        band = n % 3
        name = f"{n:03d}_{path.stem}.png"
        Image.fromarray(np.repeat(rgb[..., band: band + 1], 3, axis=2)).save(grey_dir / name)
        Image.fromarray(rgb).save(colour_dir / name)
    return grey_dir, colour_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="Folder for the probe images.")
    parser.add_argument("--model", action="append", default=[], help="Model spec (repeatable).")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--degradation", default="clean", choices=("clean", "iso", "aniso"))
    parser.add_argument("--val", type=Path, default=VAL)
    args = parser.parse_args(argv)
    folders = build(args.out, args.val)
    for model in args.model or [f"geosr-tiny-x{args.scale}"]:
        for label, folder in zip(("one band", "colour"), folders):
            command = [GEOSR, "evaluate", "--hr", str(folder), "--scale", str(args.scale),
                       "--degradation", args.degradation, "--route", "off", "-q", "--model", model]
            lines = subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()
            scored = [line for line in lines if line.split()[:1] == [model]]
            below = [line for line in lines if "below bicubic" in line]
            print(f"{label:8s}", *scored, *below)


if __name__ == "__main__":
    main()
