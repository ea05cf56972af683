"""A real dask cluster: `dask scheduler` and two `dask worker` processes started as separate OS
processes, one advertising a GPU (mapped to the CPU here: CUDA_VISIBLE_DEVICES is empty).

`geosr upscale --address` gives the pixels of a local run; the neural model's tasks run on the
GPU worker only while blending and writing run anywhere; the client holds no tile; a worker
killed mid-run does not change the pixels.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import distributed
import numpy as np
import pytest
import rasterio
import torch

from geosr.config import RunConfig, TileSpec
from geosr.engine import upscale_scene
from geosr.pipelines.pipeline_geosr import GeoSRPipeline
from test_faults import kill_worker_once, uint8_scene
from tiny_models import tiny_pipeline_components


@pytest.fixture
def cluster(tmp_path):
    """Scheduler file of a running scheduler with workers "gpu" (GPU=1) and "cpu"."""
    scheduler_file = tmp_path / "scheduler.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    common = ["--scheduler-file", str(scheduler_file), "--no-dashboard"]
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--port", "0", *common],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists():
            assert time.monotonic() < deadline, "the scheduler did not start"
            time.sleep(0.2)
        for name, extra in (("gpu", ["--resources", "GPU=1"]), ("cpu", [])):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_worker", "--nthreads", "1", "--name", name, *extra,
                 *common],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(tmp_path),
            ))
        with distributed.Client(scheduler_file=str(scheduler_file)) as client:
            client.wait_for_workers(2, timeout=90)
        yield scheduler_file
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _address(scheduler_file) -> str:
    import json

    return json.loads(scheduler_file.read_text())["address"]


def _workers_by_name(client) -> dict[str, str]:
    return {w["name"]: addr for addr, w in client.scheduler_info()["workers"].items()}


def test_neural_run_on_a_cluster_matches_local_and_uses_the_gpu_worker(tmp_path, cluster):
    model = tmp_path / "pipe"
    GeoSRPipeline(**tiny_pipeline_components(student=True, scale=2, tmp_path=tmp_path)).save_pretrained(model)
    src = uint8_scene(tmp_path / "in.tif", 80, 96)
    base = dict(scale=2, model=str(model), captioner="degradation", tiles=TileSpec(32, 8), progress=False,
                batch_size=1, steps=1)
    # dask workers run torch on one thread; a convolution sums in another order on two, and
    # a pixel may round 1 DN differently: compare with the same thread count
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        upscale_scene([src], tmp_path / "local.tif", RunConfig(**base))
    finally:
        torch.set_num_threads(threads)
    with distributed.Client(scheduler_file=str(cluster)) as watcher, distributed.get_task_stream(client=watcher) as ts:
        report = upscale_scene([src], tmp_path / "cluster.tif", RunConfig(address=_address(cluster), **base))
        names = _workers_by_name(watcher)
    with rasterio.open(tmp_path / "local.tif") as a, rasterio.open(tmp_path / "cluster.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())
        assert a.transform == b.transform and a.crs == b.crs
    assert (tmp_path / "cluster.captions.geojson").read_text() == (tmp_path / "local.captions.geojson").read_text()
    ran = {}
    for task in ts.data:
        ran.setdefault(task["key"].split("-")[0], set()).add(task["worker"])
    assert ran["process_batch"] == {names["gpu"]}  # the model's tasks asked for the GPU
    assert "write_cells" in ran  # the workers blended and wrote the cells ...
    assert report.peak_pending_bytes == 0  # ... and no tile was held by the client


def test_a_killed_cluster_worker_does_not_change_the_pixels(tmp_path, cluster, monkeypatch):
    src = uint8_scene(tmp_path / "in.tif", 64, 96)
    base = dict(scale=2, model="bicubic", captioner="none", tiles=TileSpec(32, 8), progress=False, batch_size=2)
    upscale_scene([src], tmp_path / "local.tif", RunConfig(**base))
    marker = tmp_path / "killed-once"
    kill_worker_once(monkeypatch, marker)  # the nanny restarts the worker it kills
    upscale_scene([src], tmp_path / "cluster.tif", RunConfig(address=_address(cluster), **base))
    assert marker.exists()
    with rasterio.open(tmp_path / "local.tif") as a, rasterio.open(tmp_path / "cluster.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())
