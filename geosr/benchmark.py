"""Benchmarks of whole runs: throughput and peak memory, each run in a fresh process.

Peak resident memory is only comparable between runs that start from the same empty
process, so every measured run is a child ``python -m geosr.benchmark`` that reports the
peak of its own address space (``VmHWM``) as JSON.
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

__all__ = ["synthetic_scene", "synthetic_fields_scene", "measure_run", "bench", "model_only_seconds", "seam_score"]


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


def synthetic_fields_scene(path: Path, size: int, seed: int = 0) -> Path:
    """Write a ``size`` x ``size`` RGB uint8 GeoTIFF that is half flat: water and fields | texture.

    The left 53 % is water (top 47 %: a smooth swell of a few DN and 0.8 DN of sensor noise)
    and fields (below: rectangular parcels of crop colours with gentle gradients and 1 DN of
    grain); the rest is the texture of :func:`synthetic_scene`'s first band, tinted
    green. A scene
    on which texture-aware routing has something to route, and something not to.
    """
    rng = np.random.default_rng(seed)
    # the three regions meet off any tile grid: a seam score must not see content edges
    half, top = int(size * 0.53), int(size * 0.47)
    img = np.empty((size, size, 3), np.float32)
    yy, xx = np.mgrid[0:size, 0:half].astype(np.float32)
    swell = ndimage.gaussian_filter(rng.standard_normal((size, half)), 12)
    water = np.array([28, 58, 84], np.float32) + 3 * (swell / swell.std())[..., None] + 0.02 * yy[..., None]
    img[:, :half] = water
    palette = np.array([[120, 140, 70], [150, 130, 90], [95, 120, 60], [170, 160, 120], [110, 100, 70]], np.float32)
    y0 = top
    while y0 < size:
        h = int(rng.integers(60, 200))
        x0 = 0
        while x0 < half:
            w = int(rng.integers(60, 220))
            sl = (slice(y0, min(y0 + h, size)), slice(x0, min(x0 + w, half)))
            gy, gx = rng.uniform(-0.03, 0.03, 2)
            ramp = gy * (yy[sl] - y0) + gx * (xx[sl] - x0)
            img[sl] = palette[rng.integers(len(palette))] + ramp[..., None]
            x0 += w
        y0 += h
    img[:, :half] += rng.normal(0, 1.0, (size, half, 3)) * np.where(yy < top, 0.8, 1.0)[..., None]
    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs="EPSG:32618",
                   transform=Affine(0.5, 0, 500000, 0, -0.5, 4100000), tiled=True, compress="DEFLATE")
    with tempfile.TemporaryDirectory() as tmp:
        textured = synthetic_scene(Path(tmp) / "t.tif", size, seed=seed)
        with rasterio.open(textured) as ds:
            lum = ds.read(1, window=((0, size), (half, size))).astype(np.float32) / 250.0
    # vegetation-like: one luminance texture, tinted (aerial texture is mostly luminance)
    img[:, half:] = (0.35 + 0.9 * lum)[..., None] * np.array([90, 115, 70], np.float32)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(np.clip(np.round(img), 0, 255).astype(np.uint8).transpose(2, 0, 1))
    return path


def measure_run(inputs: Sequence[str], output: str, args: Sequence[str] = ()) -> dict:
    """Run ``geosr upscale`` in a child process, then the model alone on its tiles in another.

    Returns the model's description (``GEOSR_MODEL``: name, steps, guidance, precision),
    seconds, output MP/s, peak RSS of the client and of the largest worker process,
    MiB of results the client received, the model-only seconds, the seconds of loading the
    model in a fresh process (imports included: the run pays them too), the engine overhead
    ratio (whole run / model only), the same without the load, and the output's seam score.
    """
    result = _run_child([*inputs, output, *args])
    with rasterio.open(output) as ds:  # what ran, precision included: figures compare only with it
        result["model"] = ds.tags().get("GEOSR_MODEL", "")
    result.update(_run_child(["--model-only", *inputs, output, *args]))
    model = max(result["model_seconds"], 1e-9)
    result["overhead_ratio"] = round(result["seconds"] / model, 2)
    result["overhead_ratio_loaded"] = round(max(result["seconds"] - result["load_seconds"], 0.0) / model, 2)
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
    degrade: str | None = None,
    compare_route: bool = False,
    synthetic_fields: Sequence[int] = (),
) -> list[dict]:
    """Measure each given scene (or synthetic square scenes of the given sizes).

    Parameters
    ----------
    inputs, synthetic, synthetic_fields
        Scenes to run on, and sizes of synthetic scenes (:func:`synthetic_scene`,
        :func:`synthetic_fields_scene`) to add.
    upscale_args : sequence of str
        ``geosr upscale`` options of the measured runs.
    workdir : str, optional
        Where the temporary outputs go.
    degrade : str, optional
        A degradation protocol: each scene is then the HR truth, the run is on its LR
        (:func:`geosr.reference_scene.write_degraded`) and the result has ``psnr``/``ssim``
        against the scene.
    compare_route : bool
        Also run with ``--route off`` (every tile to the model) and report it under
        ``route_off``, with ``time_saved`` (share of the run's seconds) and, with
        ``degrade``, ``psnr_change``/``ssim_change`` of routing.
    """
    results = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        scenes = list(inputs or [])
        for size in synthetic:
            scenes.append(str(synthetic_scene(Path(tmp) / f"synthetic_{size}.tif", size)))
        for size in synthetic_fields:
            scenes.append(str(synthetic_fields_scene(Path(tmp) / f"fields_{size}.tif", size)))
        for i, scene in enumerate(scenes):
            out = str(Path(tmp) / f"out_{i}.tif")
            run_on = scene
            if degrade:
                from geosr.reference_scene import write_degraded

                run_on = str(write_degraded(scene, Path(tmp) / f"lr_{i}.tif", _scale_of(upscale_args), degrade))
            res = _measure_scored(run_on, out, ["--overwrite", *upscale_args], scene if degrade else None)
            if compare_route:
                off = _measure_scored(run_on, out, ["--overwrite", *upscale_args, "--route", "off"], scene if degrade else None)
                res["route_off"] = off
                res["time_saved"] = round(1 - res["seconds"] / off["seconds"], 3)
                if degrade:
                    res["psnr_change"] = round(res["psnr"] - off["psnr"], 4)
                    res["ssim_change"] = round(res["ssim"] - off["ssim"], 5)
            with rasterio.open(run_on) as ds:
                res.update(input=os.path.basename(scene), input_size=[ds.width, ds.height])
            results.append(res)
    return results


def _measure_scored(scene: str, out: str, args: Sequence[str], reference: str | None) -> dict:
    """:func:`measure_run`, with the output scored against ``reference`` when there is one."""
    res = measure_run([scene], out, args)
    if reference is not None:
        from geosr.reference_scene import score_output

        scores = score_output(reference, out, _scale_of(args))
        res.update({k: round(v, 4) for k, v in scores.items()})
    return res


def _scale_of(upscale_args: Sequence[str]) -> int:
    """The ``--scale`` that ``geosr upscale`` options give (its default when absent)."""
    return _upscale_params(["INPUT", "OUTPUT", *upscale_args])["scale"]


def _upscale_params(argv: Sequence[str]) -> dict:
    """``geosr upscale`` arguments -> keyword arguments of :func:`geosr.upscale_to_file` (as the CLI passes them)."""
    from geosr.cli.upscale import upscale as command

    params = dict(command.make_context("upscale", list(argv)).params)
    for key in ("verbose", "quiet"):
        params.pop(key)
    params.update(source=list(params.pop("inputs")), scale=int(params["scale"]), progress=False)
    return params


def _own_peak_rss_kib() -> int:
    """Peak resident memory of this process's own address space (KiB).

    ``ru_maxrss`` is not that: Linux carries the parent's high-water mark into a child
    across fork and exec, so a child of a bench process that holds a large scene would
    report the parent's peak. ``VmHWM`` belongs to the address space exec made.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # other systems: the best there is


def _child(argv: Sequence[str]) -> None:
    """Entry of the measured child: one ``geosr upscale`` in-process, then a JSON line."""
    import geosr

    params = _upscale_params(argv)
    t0 = time.perf_counter()
    report = geosr.upscale_to_file(**params)
    seconds = time.perf_counter() - t0
    peak_kib = _own_peak_rss_kib()
    # worker processes of --local-workers, reaped by now: the largest one's peak (an upper
    # bound: ru_maxrss carries this process's high-water mark at the worker's start into it)
    workers_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss if params["local_workers"] else 0
    mp = report.output_megapixels
    print(json.dumps({
        "seconds": round(seconds, 2), "output_megapixels": round(mp, 2),
        "megapixels_per_second": round(mp / seconds, 3), "peak_rss_mib": round(peak_kib / 1024, 1),
        "peak_rss_worker_mib": round(workers_kib / 1024, 1) if workers_kib else None,
        "client_received_mib": round(report.result_bytes / 2**20, 2),
        "tiles_processed": report.tiles_processed, "tiles_routed": report.tiles_routed,
    }))


def _model_only_child(argv: Sequence[str]) -> None:
    """Entry of the second child: the model alone on the run's tiles, and the seam score of its output."""
    params = _upscale_params(argv)
    output = params.pop("output")
    from geosr.api import config_from_options
    from geosr.models import load_upscaler

    run_keys = ("overwrite", "resume", "address", "connect_timeout", "local_workers", "performance_report",
                "creation_options", "route_map")
    # --uncertainty names the map's file; the run's config asks for the map (as upscale_to_file's)
    params["uncertainty"] = params.get("uncertainty") is not None
    config = config_from_options(**{k: v for k, v in params.items() if k not in run_keys + ("source",)})
    t0 = time.perf_counter()
    load_upscaler(config.model, config.scale, **config.model_options())  # cached: the timed part reuses it
    load_seconds = time.perf_counter() - t0
    seconds, grid = model_only_seconds(params["source"], config)
    # not rounded: a fast model on a small scene takes milliseconds, and the ratio divides by it
    print(json.dumps({"model_seconds": seconds, "load_seconds": round(load_seconds, 2),
                      "seam_score": round(seam_score(output, grid, config.scale), 4)}))


def model_only_seconds(inputs: Sequence[str], config) -> tuple[float, "TileGrid"]:
    """Seconds the model alone takes on the tiles of a run of ``config``, and the run's tile grid.

    Tiles are read and captioned first (not timed), in the run's batches, then routed and
    given to the model exactly as the run gives them (:func:`geosr.tasks.upscale_routed`).
    """
    from geosr.tasks import (batch_jobs, batch_routes, caption_batch, cheap_model_for, model_input, plan_step,
                             read_batch_and_valid, upscale_routed)
    from geosr.models import load_upscaler
    from geosr.scene import expand_inputs
    from geosr.scene_plan import plan_scene

    model = load_upscaler(config.model, config.scale, **config.model_options())
    with tempfile.TemporaryDirectory(prefix="geosr-bench-") as tmp:
        scene_plan = plan_scene(expand_inputs(inputs), config, model.channels, Path(tmp), plan_step(model, config))
        seconds = 0.0
        for job in batch_jobs(scene_plan, list(scene_plan.tiles), config):
            batch, valid = read_batch_and_valid(job)
            x = model_input(batch, job.bands)
            captions = caption_batch(job.captioner, x, job.bands)
            t0 = time.perf_counter()  # routing is timed with the model: it decides what the model does
            routes = batch_routes(job, x, valid)
            upscale_routed(model, cheap_model_for(job, routes), batch, x, job.bands, captions, job.seeds, job.scale,
                           routes, job.stretch)
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
