"""The engine's own cost: `geosr upscale --model bicubic` vs GDAL writing the same COG product.

Both make a x2 cubic COG of the same synthetic 4096 x 4096 RGB scene with the same creation
options (DEFLATE + predictor, 512 px tiles, AVERAGE overviews, statistics, all CPUs); each
round runs both in fresh processes, alternating, and prints the wall times and their ratio.

    .venv/bin/python docs/engine_vs_gdal.py [--rounds 3] [--size 4096] [--folder /tmp/engine_vs_gdal]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import rasterio

from geosr.benchmark import synthetic_scene

COG = ["COMPRESS=DEFLATE", "PREDICTOR=YES", "BLOCKSIZE=512", "OVERVIEW_RESAMPLING=AVERAGE",
       "NUM_THREADS=ALL_CPUS", "BIGTIFF=IF_SAFER"]  # STATISTICS=YES too from GDAL 3.8 (this is 3.6)


def gdal_command(src: Path, dst: Path) -> list[str]:
    with rasterio.open(src) as ds:
        x, y = ds.res
    return ["gdalwarp", "-q", "-overwrite", "-r", "cubic", "-tr", str(x / 2), str(y / 2), "-multi",
            "-wo", "NUM_THREADS=ALL_CPUS", "-of", "COG", *[a for co in COG for a in ("-co", co)], str(src), str(dst)]


def geosr_command(src: Path, dst: Path) -> list[str]:
    geosr = str(Path(sys.executable).with_name("geosr"))
    return [geosr, "upscale", str(src), str(dst), "--scale", "2", "--model", "bicubic", "--captioner", "none", "-q",
            "--overwrite"]


def timed(command: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/engine_vs_gdal"))
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    src = args.folder / f"s{args.size}.tif"
    if not src.exists():
        synthetic_scene(src, args.size)
    try:
        for r in range(args.rounds):
            gdal = timed(gdal_command(src, args.folder / "gdal.tif"))
            ours = timed(geosr_command(src, args.folder / "geosr.tif"))
            print(f"round {r + 1}: GDAL {gdal:.2f} s, geosr {ours:.2f} s, geosr vs GDAL {gdal / ours:.2f}x", flush=True)
    finally:
        shutil.rmtree(args.folder)


if __name__ == "__main__":
    main()
