"""Benchmarks of whole runs: throughput and peak memory, each run in a fresh process.

Peak resident memory is only comparable between runs that start from the same empty
process, so every measured run is a child ``python -m geosr.benchmark`` that reports its
own ``ru_maxrss`` as JSON.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import rasterio
from affine import Affine
from scipy import ndimage

__all__ = ["synthetic_scene", "measure_run", "bench"]


def synthetic_scene(path: Path, size: int, bands: int = 3, seed: int = 0) -> Path:
    """Write a ``size`` x ``size`` uint8 GeoTIFF with ground-like texture, block by block."""
    rng = np.random.default_rng(seed)
    profile = dict(
        driver="GTiff", width=size, height=size, count=bands, dtype="uint8", crs="EPSG:32618",
        transform=Affine(0.5, 0, 500000, 0, -0.5, 4100000), tiled=True, blockxsize=256, blockysize=256,
        compress="DEFLATE",
    )
    with rasterio.open(path, "w", **profile) as ds:
        for _, win in ds.block_windows(1):
            h, w = int(win.height), int(win.width)
            noise = ndimage.gaussian_filter(rng.random((bands, h, w)), (0, 1.5, 1.5))
            ds.write((np.clip((noise - 0.5) * 6 + 0.5, 0, 1) * 250).astype("uint8"), window=win)
    return path


def measure_run(inputs: Sequence[str], output: str, args: Sequence[str] = ()) -> dict:
    """Run ``geosr upscale`` in a child process; return its timing and peak RSS."""
    cmd = [sys.executable, "-m", "geosr.benchmark", *inputs, output, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark run failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench(
    inputs: Sequence[str] | None,
    synthetic: Sequence[int],
    upscale_args: Sequence[str],
    workdir: str | None = None,
) -> list[dict]:
    """Measure each given scene (or synthetic square scenes of the given sizes)."""
    results = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        scenes = list(inputs or [])
        for size in synthetic:
            scenes.append(str(synthetic_scene(Path(tmp) / f"synthetic_{size}.tif", size)))
        for i, scene in enumerate(scenes):
            out = str(Path(tmp) / f"out_{i}.tif")
            res = measure_run([scene], out, ["--overwrite", *upscale_args])
            with rasterio.open(scene) as ds:
                res.update(input=os.path.basename(scene), input_size=[ds.width, ds.height])
            results.append(res)
    return results


def _child(argv: Sequence[str]) -> None:
    """Entry of the measured child: one ``geosr upscale`` in-process, then a JSON line."""
    from click.testing import CliRunner  # noqa: F401  (keeps import cost comparable)

    from geosr.cli import cli

    t0 = time.perf_counter()
    try:
        cli.main(args=["upscale", *argv, "-q"], standalone_mode=False)
    except SystemExit as exc:  # click exits on errors
        if exc.code:
            raise
    seconds = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with rasterio.open(argv[argv.index("--overwrite") - 1] if "--overwrite" in argv else argv[1]) as ds:
        mp = ds.width * ds.height / 1e6
    print(json.dumps({"seconds": round(seconds, 2), "output_megapixels": round(mp, 2),
                      "megapixels_per_second": round(mp / seconds, 3), "peak_rss_mib": round(peak_kib / 1024, 1)}))


if __name__ == "__main__":
    _child(sys.argv[1:])
