"""Build a real-imagery benchmark scene: HR plots laid side by side into one georeferenced GeoTIFF.

``geosr bench`` on a synthetic scene measures the engine on texture that no sensor made; this
puts real aerial plots (by default the NEON HARV training plots, 0.1 m, 400 px) into a
``SIZE x SIZE`` uint8 RGB GeoTIFF in row-major order, each plot cropped to the grid cell, on the
first plot's CRS and pixel size (the plots are not neighbours on the ground: the scene is a
collage, not a map, but every pixel is real imagery: HARV is forest canopy and clearings)::

    python docs/collage_scene.py ../shared/data/train/neon/HARV /tmp/harv2048.tif --size 2048
    geosr bench /tmp/harv2048.tif --upscale-args "--scale 4"
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin


def collage(plots: list[Path], size: int) -> tuple[np.ndarray, dict]:
    """``3 x size x size`` uint8 of ``plots`` in a square grid, and its profile: the first plot's CRS,
    pixel size and upper-left corner."""
    if not plots:
        raise SystemExit("no .tif plots found")
    with rasterio.open(plots[0]) as first:
        crs, pixel, origin = first.crs, first.res[0], (first.transform.c, first.transform.f)
        cell = min(first.width, first.height)
    per_side = math.ceil(size / cell)
    out = np.zeros((3, per_side * cell, per_side * cell), np.uint8)
    placed = 0
    for path in plots:  # plots cut by the site's edge, or of another CRS, are left out
        if placed == per_side**2:
            break
        with rasterio.open(path) as src:
            if src.count < 3 or src.dtypes[0] != "uint8" or min(src.width, src.height) < cell or src.crs != crs:
                continue
            row, col = divmod(placed, per_side)
            out[:, row * cell:(row + 1) * cell, col * cell:(col + 1) * cell] = src.read(
                (1, 2, 3), window=((0, cell), (0, cell)))
        placed += 1
    if placed < per_side**2:
        raise SystemExit(f"need {per_side ** 2} RGB uint8 plots of >= {cell} px on {crs} for a {size} px scene, "
                         f"found {placed}")
    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs=crs,
                   transform=from_origin(*origin, pixel, pixel), tiled=True, blockxsize=256, blockysize=256,
                   compress="deflate", photometric="RGB")
    return out[:, :size, :size], profile


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="Folder of georeferenced RGB uint8 GeoTIFF plots.")
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=int, default=2048)
    args = parser.parse_args(argv)
    data, profile = collage(sorted(args.folder.glob("*.tif")), args.size)
    with rasterio.open(args.out, "w", **profile) as dst:
        dst.write(data)
    print(f"{args.out}: {args.size} x {args.size} px, {profile['transform'].a} m, {profile['crs']}")


if __name__ == "__main__":
    main()
