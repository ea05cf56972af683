"""The serial tail of `geosr upscale --model bicubic`: single COG, tiled output and Zarr.

The tail is the wall time from the last tile result to the process exit: what a cluster of any
size cannot shorten. geosr's run report gives the part from the last tile result to the end of
the run (``RunReport.tail_seconds``, printed in the summary line); this script adds the time
from that line to the process exit, and prints the tail and its share of the whole run.

Scenes: the synthetic 4096 x 4096 RGB scene of docs/engine_vs_gdal.py at x2 (67 MP out) and a
VRT of it repeated 4 x 4 (16384 x 16384 px) at x2 (1.07 GP out). Outputs are deleted after
each run.

    .venv/bin/python docs/serial_tail.py [--repeat 4] [--modes cog,tiled,zarr] [--split N] [--folder /tmp/serial_tail]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import rasterio

from geosr.benchmark import synthetic_scene

SUMMARY = re.compile(r"in (?P<run>[\d.]+) s, [\d.]+ MP/s; (?P<tail>[\d.]+) s of it after the last tile\)")


def repeated_vrt(src: Path, dst: Path, n: int) -> Path:
    """A VRT of ``src`` repeated ``n`` x ``n`` times on a grid that continues ``src``'s."""
    with rasterio.open(src) as ds:
        w, h, count, t = ds.width, ds.height, ds.count, ds.transform
        crs = ds.crs.to_wkt()
    bands = []
    for b in range(1, count + 1):
        sources = "".join(
            f"<SimpleSource><SourceFilename relativeToVRT=\"0\">{src.absolute()}</SourceFilename>"
            f"<SourceBand>{b}</SourceBand><SrcRect xOff=\"0\" yOff=\"0\" xSize=\"{w}\" ySize=\"{h}\"/>"
            f"<DstRect xOff=\"{i * w}\" yOff=\"{j * h}\" xSize=\"{w}\" ySize=\"{h}\"/></SimpleSource>"
            for j in range(n) for i in range(n))
        color = ("Red", "Green", "Blue")[b - 1] if count == 3 else "Gray"
        bands.append(f'<VRTRasterBand dataType="Byte" band="{b}"><ColorInterp>{color}</ColorInterp>{sources}'
                     "</VRTRasterBand>")
    geo = ", ".join(str(v) for v in (t.c, t.a, t.b, t.f, t.d, t.e))
    dst.write_text(f'<VRTDataset rasterXSize="{w * n}" rasterYSize="{h * n}"><SRS>{crs}</SRS>'
                   f"<GeoTransform>{geo}</GeoTransform>{''.join(bands)}</VRTDataset>\n")
    return dst


def run(src: Path, out: Path, mode: str, split: int) -> tuple[float, float, float]:
    """One run: (whole wall time, the report's tail, the time from the summary line to the exit)."""
    geosr = str(Path(sys.executable).with_name("geosr"))
    # tiled without --split: a folder OUTPUT, blocks of the side geosr chooses from the output's size
    target = {"cog": out / "out.tif", "tiled": f"{out / 'tiled'}/", "zarr": out / "out.zarr"}[mode]
    extra = ["--split", str(split)] if mode == "tiled" and split else []
    t0 = time.perf_counter()
    proc = subprocess.Popen([geosr, "upscale", str(src), str(target), "--scale", "2", "--model", "bicubic",
                             "--captioner", "none", "--overwrite", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    summary, said = None, 0.0
    for line in proc.stderr:  # the progress bar's lines too; the summary is the last
        found = SUMMARY.search(line)
        if found:
            summary, said = found, time.perf_counter()
    proc.wait()
    end = time.perf_counter()
    if proc.returncode or summary is None:
        raise RuntimeError(f"geosr exited {proc.returncode} without its summary line")
    return end - t0, float(summary["tail"]), end - said


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=4, help="the large scene: the 4096 px scene n x n times")
    parser.add_argument("--modes", default="cog,tiled,zarr")
    parser.add_argument("--sizes", default="small,large")
    # the last row of blocks can only start once the last tiles are in: the tail grows with
    # the output's width times the block size
    parser.add_argument("--split", type=int, default=0,
                        help="tiled output's block size (default: geosr's own choice, 1024 at 67 MP, 4096 at 1 GP)")
    parser.add_argument("--folder", type=Path, default=Path("/tmp/serial_tail"))
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    scene = args.folder / "s4096.tif"
    if not scene.exists():
        synthetic_scene(scene, 4096)
    scenes = {"small": scene, "large": repeated_vrt(scene, args.folder / f"s4096_x{args.repeat}.vrt", args.repeat)}
    out = args.folder / "out"
    try:
        for size in args.sizes.split(","):
            with rasterio.open(scenes[size]) as ds:
                megapixels = ds.width * ds.height * 4 / 1e6
            for mode in args.modes.split(","):
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                wall, tail, exit_s = run(scenes[size], out, mode, args.split)
                whole_tail = tail + exit_s
                print(f"{megapixels:7.0f} MP {mode:5}: run {wall:7.1f} s, tail {whole_tail:6.2f} s "
                      f"({100 * whole_tail / wall:4.1f} %; {tail:.2f} s in the run + {exit_s:.2f} s to exit)",
                      flush=True)
    finally:
        shutil.rmtree(args.folder)


if __name__ == "__main__":
    main()
