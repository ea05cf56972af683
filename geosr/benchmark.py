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
from typing import TYPE_CHECKING, Sequence

import numpy as np
import rasterio
from affine import Affine
from scipy import ndimage

if TYPE_CHECKING:
    from geosr.tiling import TileGrid

__all__ = ["synthetic_scene", "measure_run", "bench", "model_only_seconds", "seam_score"]


def synthetic_scene(path: Path, size: int, bands: int = 3, seed: int = 0) -> Path:
    """Write a ``size`` x ``size`` uint8 GeoTIFF with ground-like texture, block by block.

    The texture is smoothed noise that is continuous across blocks (each block is filtered
    with the noise of its neighbours), so the scene has no seams of its own for the seam
    score to find.
    """
    block, halo = 256, 8
    profile = dict(
        driver="GTiff", width=size, height=size, count=bands, dtype="uint8", crs="EPSG:32618",
        transform=Affine(0.5, 0, 500000, 0, -0.5, 4100000), tiled=True, blockxsize=block, blockysize=block,
        compress="DEFLATE",
    )

    def noise(by: int, bx: int) -> np.ndarray:  # the noise of block (by, bx), the same whoever asks
        return np.random.default_rng([seed, by + 1, bx + 1]).random((bands, block, block))

    with rasterio.open(path, "w", **profile) as ds:
        for (by, bx), win in ds.block_windows(1):
            around = np.concatenate([
                np.concatenate([noise(by + dy, bx + dx) for dx in (-1, 0, 1)], axis=2) for dy in (-1, 0, 1)
            ], axis=1)[:, block - halo : 2 * block + halo, block - halo : 2 * block + halo]
            smooth = ndimage.gaussian_filter(around, (0, 1.5, 1.5))[:, halo : halo + block, halo : halo + block]
            h, w = int(win.height), int(win.width)
            ds.write((np.clip((smooth[:, :h, :w] - 0.5) * 6 + 0.5, 0, 1) * 250).astype("uint8"), window=win)
    return path


def measure_run(inputs: Sequence[str], output: str, args: Sequence[str] = ()) -> dict:
    """Run ``geosr upscale`` in a child process, then the model alone on its tiles in another.

    Returns seconds, output MP/s, peak RSS of the client and of the largest worker process,
    MiB of results the client received, the model-only seconds, the engine overhead ratio
    (whole run / model only) and the output's seam score.
    """
    result = _run_child([*inputs, output, *args])
    result.update(_run_child(["--model-only", *inputs, output, *args]))
    result["overhead_ratio"] = round(result["seconds"] / max(result["model_seconds"], 1e-9), 2)
    return result


def _run_child(argv: Sequence[str]) -> dict:
    proc = subprocess.run([sys.executable, "-m", "geosr.benchmark", *argv], capture_output=True, text=True, check=False)
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


def _upscale_params(argv: Sequence[str]) -> dict:
    """``geosr upscale`` arguments -> keyword arguments of :func:`geosr.upscale` (as the CLI passes them)."""
    from geosr.cli.upscale import upscale as command

    params = dict(command.make_context("upscale", list(argv)).params)
    for key in ("verbose", "quiet"):
        params.pop(key)
    params.update(source=list(params.pop("inputs")), scale=int(params["scale"]), progress=False)
    return params


def _child(argv: Sequence[str]) -> None:
    """Entry of the measured child: one ``geosr upscale`` in-process, then a JSON line."""
    import geosr

    params = _upscale_params(argv)
    t0 = time.perf_counter()
    report = geosr.upscale(**params)
    seconds = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # worker processes of --local-workers, reaped by now: the largest one's peak
    workers_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss if params["local_workers"] else 0
    mp = report.output_megapixels
    print(json.dumps({
        "seconds": round(seconds, 2), "output_megapixels": round(mp, 2),
        "megapixels_per_second": round(mp / seconds, 3), "peak_rss_mib": round(peak_kib / 1024, 1),
        "peak_rss_worker_mib": round(workers_kib / 1024, 1) if workers_kib else None,
        "client_received_mib": round(report.result_bytes / 2**20, 2),
    }))


def _model_only_child(argv: Sequence[str]) -> None:
    """Entry of the second child: the model alone on the run's tiles, and the seam score of its output."""
    params = _upscale_params(argv)
    output = params.pop("output")
    from geosr.api import _run_config

    run_keys = ("overwrite", "resume", "address", "local_workers", "performance_report", "creation_options")
    config = _run_config(**{k: v for k, v in params.items() if k not in run_keys + ("source",)})
    seconds, grid = model_only_seconds(params["source"], config)
    # not rounded: a fast model on a small scene takes milliseconds, and the ratio divides by it
    print(json.dumps({"model_seconds": seconds, "seam_score": round(seam_score(output, grid, config.scale), 4)}))


def model_only_seconds(inputs: Sequence[str], config) -> tuple[float, "TileGrid"]:
    """Seconds the model alone takes on the tiles of a run of ``config``, and the run's tile grid.

    Tiles are read and captioned first (not timed), in the run's batches, then given to the
    model exactly as the run gives them (:func:`geosr.engine.upscale_batch`).
    """
    from geosr.engine import _caption, _model_input, _read_batch, batch_jobs, upscale_batch
    from geosr.models import load_upscaler
    from geosr.scene import expand_inputs
    from geosr.scene_plan import plan_scene

    model = load_upscaler(config.model, config.scale, **config.model_options())
    with tempfile.TemporaryDirectory(prefix="geosr-bench-") as tmp:
        scene_plan = plan_scene(expand_inputs(inputs), config, model.channels, Path(tmp))
        seconds = 0.0
        for job in batch_jobs(scene_plan, list(scene_plan.tiles), config):
            batch = _read_batch(job)
            x = _model_input(batch, job.bands)
            captions = _caption(job.captioner, x, job.bands)
            t0 = time.perf_counter()
            upscale_batch(model, batch, x, job.bands, captions, job.seeds, job.scale)
            seconds += time.perf_counter() - t0
    return seconds, scene_plan.grid


def seam_score(path: str, grid, scale: int, rows_per_read: int = 512, near: int = 8) -> float:
    """Mean absolute gradient across tile-core boundaries over the mean elsewhere (1 = seamless).

    Horizontal steps ``|I[x] - I[x-1]|`` at the columns where a tile core starts, and vertical
    ones at such rows, against the steps between input pixels within ``near`` input pixels of
    them; all bands, read in strips.
    """
    with rasterio.open(path) as ds:
        width, height = ds.width, ds.height
        col_sum = np.zeros(width - 1)
        row_sum = np.zeros(height - 1)
        previous = None
        for top in range(0, height, rows_per_read):
            strip = ds.read(window=((top, min(top + rows_per_read, height)), (0, width))).astype(np.float32)
            col_sum += np.abs(np.diff(strip, axis=2)).sum(axis=(0, 1))
            if previous is not None:
                strip = np.concatenate([previous, strip], axis=1)
                start = top - 1
            else:
                start = 0
            row_sum[start : start + strip.shape[1] - 1] += np.abs(np.diff(strip, axis=1)).sum(axis=(0, 2))
            previous = strip[:, -1:]
    # a core starting at x: the step between HR columns x*s - 1 and x*s (index x*s - 1 of the diffs)
    cols = np.array([c * scale - 1 for c in grid.cols if c > 0], int)
    rows = np.array([r * scale - 1 for r in grid.rows if r > 0], int)
    # compared with the steps of the same phase (also between two input pixels: an HR step
    # inside an input pixel differs systematically from one across, for any interpolator)
    # near the seam, within `near` input pixels: content varies across a scene, seams are local
    def local(sums: np.ndarray, seams: np.ndarray) -> tuple[float, float]:
        at, around = [], []
        for k in seams:
            ref = [k + d * scale for d in range(-near, near + 1) if d and 0 <= k + d * scale < sums.size]
            at.append(sums[k])
            around.append(np.mean(sums[ref]) if ref else sums[k])
        return float(np.sum(at)), float(np.sum(around))

    col_at, col_around = local(col_sum, cols)
    row_at, row_around = local(row_sum, rows)
    if not (len(cols) + len(rows)):
        return 1.0
    # columns are summed over the height, rows over the width: per pixel step
    seam = col_at / height + row_at / width
    other = col_around / height + row_around / width
    return float(seam / max(other, 1e-12))


if __name__ == "__main__":
    if sys.argv[1] == "--model-only":
        _model_only_child(sys.argv[2:])
    else:
        _child(sys.argv[1:])
