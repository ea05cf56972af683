"""geosr bench: what it reports for a run (structure and invariants, not speed)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import rasterio
from affine import Affine
from click.testing import CliRunner

from geosr.benchmark import seam_score, synthetic_scene
from geosr.cli import cli


def _write(path, data):
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, transform=Affine.identity()) as ds:
        ds.write(data)
    return path


def test_seam_score_finds_steps_at_tile_cores_only(tmp_path):
    grid = SimpleNamespace(cols=[0, 16, 32], rows=[0, 16, 32])  # LR core starts; x2 -> HR seams at 32, 64
    rng = np.random.default_rng(0)
    smooth = np.cumsum(rng.normal(0, 1, (1, 96, 96)), axis=2).astype(np.float32)
    assert abs(seam_score(str(_write(tmp_path / "smooth.tif", smooth)), grid, 2, rows_per_read=10) - 1) < 0.25
    stepped = smooth.copy()
    stepped[:, :, 32:] += 20
    stepped[:, 64:, :] += 20
    assert seam_score(str(_write(tmp_path / "stepped.tif", stepped)), grid, 2, rows_per_read=10) > 3
    # a step elsewhere is not a seam
    elsewhere = smooth.copy()
    elsewhere[:, :, 46:] += 20  # a step between two input pixels, near the seam
    assert seam_score(str(_write(tmp_path / "elsewhere.tif", elsewhere)), grid, 2) < 1.0


def test_synthetic_scene_has_no_seams_of_its_own(tmp_path):
    path = synthetic_scene(tmp_path / "s.tif", 512)
    grid = SimpleNamespace(cols=[0, 256], rows=[0, 256])  # its 256 px blocks
    assert abs(seam_score(str(path), grid, 1) - 1) < 0.1


def test_bench_reports_model_time_overhead_memory_traffic_and_seams(tmp_path):
    out = tmp_path / "bench.json"
    args = "--scale 2 --model bicubic --captioner none --tile 64 --overlap 8"
    result = CliRunner().invoke(cli, ["bench", "--synthetic", "128", "--json", str(out), "--upscale-args", args])
    assert result.exit_code == 0, result.output
    assert "run/model" in result.output and "seams" in result.output
    local = json.loads(out.read_text())[0]
    assert local["model"].startswith("bicubic") and f"model: {local['model']}" in result.output  # what ran
    assert local["output_megapixels"] == round(256 * 256 / 1e6, 2)
    assert local["model_seconds"] > 0 and local["overhead_ratio"] == round(local["seconds"] / local["model_seconds"], 2)
    # the load of a fresh process, reported beside the run and taken out of the second ratio
    # (two processes' wall times: the load is a part of the run, give or take the scheduler)
    assert 0 <= local["load_seconds"] < local["seconds"] + 1 and local["overhead_ratio_loaded"] <= local["overhead_ratio"]
    assert abs(local["seam_score"] - 1) < 0.05  # bicubic blended: seamless
    # threads: every HR tile came through the client (3 bands of float32, halos included)
    assert local["client_received_mib"] >= 256 * 256 * 3 * 4 / 2**20 and local["peak_rss_worker_mib"] is None

    result = CliRunner().invoke(cli, ["bench", "--synthetic", "128", "--json", str(out),
                                      "--upscale-args", args + " --local-workers 2"])
    assert result.exit_code == 0, result.output
    workers = json.loads(out.read_text())[0]
    assert workers["peak_rss_worker_mib"] > 0
    assert workers["client_received_mib"] < local["client_received_mib"] / 20  # workers blend and write


def test_bench_scores_a_degraded_scene_and_what_routing_saves(tmp_path):
    out = tmp_path / "bench.json"
    args = "--scale 2 --tile 64 --overlap 8"
    result = CliRunner().invoke(cli, ["bench", "--synthetic-fields", "512", "--degrade", "clean", "--compare-route",
                                      "--json", str(out), "--upscale-args", args])
    assert result.exit_code == 0, result.output
    assert "routing saved" in result.output
    r = json.loads(out.read_text())[0]
    assert r["input_size"] == [256, 256]  # the run was on the scene's LR
    # the water is flat and clean: its tiles went to bicubic; the route-off run routed none
    assert r["tiles_routed"] >= 2 and r["route_off"]["tiles_routed"] == 0
    assert r["tiles_processed"] == r["route_off"]["tiles_processed"] == 16
    assert 15 < r["psnr"] < 60 and 0 < r["ssim"] <= 1 and r["scored_fraction"] > 0.8
    assert r["psnr_change"] == round(r["psnr"] - r["route_off"]["psnr"], 4)
    assert r["time_saved"] == round(1 - r["seconds"] / r["route_off"]["seconds"], 3)


def test_a_measured_run_reports_its_own_peak_memory_not_its_parent_s(tmp_path, data_dir):
    """Linux carries a parent's RSS high-water mark into a child's ru_maxrss across fork + exec."""
    from geosr.benchmark import measure_run

    ballast = np.ones(900 * 2**20, np.uint8)  # this process: over 900 MiB resident
    res = measure_run([str(data_dir / "rgbn_suba.tif")], str(tmp_path / "o.tif"),
                      ["--scale", "2", "--model", "bicubic", "--captioner", "none"])
    assert ballast.sum() == ballast.size and res["peak_rss_mib"] < 800
