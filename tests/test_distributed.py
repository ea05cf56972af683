"""The engine on dask.distributed worker processes gives the same pixels as threads."""

import numpy as np
import rasterio

from geosr.config import RunConfig, TileSpec
from geosr.engine import batch_jobs, upscale_scene


def test_local_process_cluster_matches_threads_and_writes_report(tmp_path, data_dir):
    src = data_dir / "rgbn_suba.tif"
    base = dict(scale=2, model="bicubic", captioner="degradation", tiles=TileSpec(64, 8), progress=False)
    upscale_scene([src], tmp_path / "threads.tif", RunConfig(**base))
    upscale_scene(
        [src], tmp_path / "procs.tif", RunConfig(local_workers=2, **base),
        performance_report=str(tmp_path / "report.html"),
    )
    with rasterio.open(tmp_path / "threads.tif") as a, rasterio.open(tmp_path / "procs.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())
    assert (tmp_path / "report.html").stat().st_size > 1000
    assert (tmp_path / "procs.captions.geojson").read_text() == (tmp_path / "threads.captions.geojson").read_text()


def test_a_resume_replaces_the_report_of_the_stopped_run_and_nothing_else(tmp_path, data_dir):
    """Found by review: dask writes the report on any exit, so a stopped run left it and "the same
    command with --resume" was refused (exit 4, it exists). A dask report is replaced on --resume;
    another file of that name still needs --overwrite."""
    import pytest

    from geosr.errors import OutputExistsError

    src = data_dir / "rgbn_suba.tif"
    base = dict(scale=2, model="bicubic", captioner="none", tiles=TileSpec(128, 8), progress=False)
    report = tmp_path / "report.html"
    upscale_scene([src], tmp_path / "first.tif", RunConfig(**base), performance_report=str(report))
    first = report.read_bytes()
    upscale_scene([src], tmp_path / "out.tif", RunConfig(resume=True, **base), performance_report=str(report))
    assert report.read_bytes() != first and b"Dask Performance Report" in report.read_bytes()
    report.write_text("my notes")
    with pytest.raises(OutputExistsError, match="report.html exists; pass --overwrite"):
        upscale_scene([src], tmp_path / "again.tif", RunConfig(resume=True, **base), performance_report=str(report))
    assert report.read_text() == "my notes"


def test_a_released_cluster_closes_beside_the_rest_of_the_block():
    import time

    from geosr.scheduling import released_early

    with released_early(local_workers=1) as (client, release):
        assert client.submit(sum, [1, 2]).result() == 3
        release()
        release()  # once is enough
        deadline = time.monotonic() + 60
        while client.status != "closed":  # it closes while the block goes on
            assert time.monotonic() < deadline, "the released cluster did not close"
            time.sleep(0.05)
    with released_early() as (client, release):  # never released: closed at the end, as dask_client
        pass
    assert client.status == "closed"


def test_a_stop_is_not_replaced_by_a_slow_client_close(monkeypatch):
    """Found by review: a SIGTERM that landed while the client talked to the scheduler left its close
    waiting dask's 60 s, then a TimeoutError replaced the stop (exit 1 for 8). On the way out of a
    failure the client gets a few seconds, and what it raises is logged, not raised."""
    import gc

    import dask
    import distributed
    import pytest

    from geosr.scheduling import STOP_CLOSE_SECONDS, released_early

    real_close, timeouts = distributed.Client.close, []

    def stuck_close(self, timeout=None):
        timeouts.append((self, timeout))
        real_close(self)
        raise TimeoutError("simulated: the close took 60 s")

    class Stop(Exception):
        pass

    gc.collect()  # other tests' clients: their __del__ closes them, not through this stuck close
    monkeypatch.setattr(distributed.Client, "close", stuck_close)
    with pytest.raises(Stop):
        with released_early() as (client, release):
            raise Stop("SIGTERM")
    monkeypatch.setattr(distributed.Client, "close", real_close)
    assert [t for c, t in timeouts if c is client] == [STOP_CLOSE_SECONDS] and client.status == "closed"
    # dask's current client is set back: a later computation does not meet the closed one
    assert dask.delayed(sum)([1, 2]).compute() == 3
    with pytest.raises(Stop):
        with released_early() as (client, release):
            raise Stop("SIGTERM")
    assert dask.delayed(sum)([1, 2]).compute() == 3 and client.status == "closed"


def test_workers_get_glibc_adaptive_allocation_back(monkeypatch):
    # dask's nannies export MALLOC_TRIM_THRESHOLD_, which pins glibc's mmap threshold: the
    # tasks undo it once per process (a tile took 2.5 s instead of 1.4 s under it)
    from geosr.scheduling import undo_malloc_trim_threshold

    undo_malloc_trim_threshold.cache_clear()
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    assert undo_malloc_trim_threshold() is False  # not a dask worker: leave malloc alone
    undo_malloc_trim_threshold.cache_clear()
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    assert undo_malloc_trim_threshold() is True
    undo_malloc_trim_threshold.cache_clear()


def _loaded_on_worker(spec: str, scale: int, captioner: str) -> bool:
    from geosr import models, tasks

    return any(k[:2] == (spec, scale) for k in models._CACHE) and tasks.captioner_for.cache_info().currsize > 0


def test_worker_processes_load_the_model_before_their_first_task():
    # a fresh worker pays its imports and the model's load: warmed up, it does so while the
    # client loads its own copy, not inside the first task (geosr.warm_up)
    import time

    from geosr.scheduling import dask_client
    from geosr.warm_up import warm_up_workers

    config = RunConfig(scale=2, model="bicubic", captioner="degradation", local_workers=2, progress=False)
    with dask_client(None, 2) as client:
        assert not any(client.run(_loaded_on_worker, "bicubic", 2, "degradation").values())
        warm_up_workers(client, config)  # returns at once: the load runs in a thread of each worker
        deadline = time.monotonic() + 60
        while not all(client.run(_loaded_on_worker, "bicubic", 2, "degradation").values()):
            assert time.monotonic() < deadline, "the workers never loaded the model"
            time.sleep(0.2)
        # a spec that cannot load leaves the workers as they were; the run's own load reports it
        warm_up_workers(client, RunConfig(scale=2, model="./no-such-model", local_workers=2))
        time.sleep(1)
        assert all(client.run(_loaded_on_worker, "bicubic", 2, "degradation").values())


def test_worker_processes_plan_on_the_grid_of_a_model_coarser_than_the_lr(tmp_path):
    # The model's grid step (2 LR px, as geosr-tiny-fast-x2's) is learnt where the model loads,
    # a worker process here, and the plan keeps it: the tiles written by the workers give the
    # untiled run's pixels (tests/test_engine_invariants.py)
    from diffusers import LCMScheduler

    from geosr.pipelines.pipeline_geosr import GeoSRPipeline
    from tests.rasters import uint8_scene
    from tiny_models import tiny_pipeline_components

    components = tiny_pipeline_components(student=True, scale=2, unshuffle_factor=4, tmp_path=tmp_path)
    components["scheduler"] = LCMScheduler.from_config(components["scheduler"].config, prediction_type="sample")
    GeoSRPipeline(**components).save_pretrained(tmp_path / "model")
    src = uint8_scene(tmp_path / "in.tif", height=99, width=105)  # balanced cores of 33 x 35 px
    base = dict(scale=2, model=str(tmp_path / "model"), captioner="none", route="off", device="cpu", dtype="fp32",
                progress=False)
    upscale_scene([src], tmp_path / "whole.tif", RunConfig(tiles=TileSpec(4096, 32), **base))
    upscale_scene([src], tmp_path / "procs.tif", RunConfig(tiles=TileSpec(40, 32), local_workers=1, **base))
    with rasterio.open(tmp_path / "whole.tif") as a, rasterio.open(tmp_path / "procs.tif") as b:
        inner = (slice(None), slice(64, -64), slice(64, -64))
        assert np.abs(a.read().astype(int) - b.read().astype(int))[inner].max() <= 1


def test_a_run_on_a_scheduler_tiles_per_call_as_its_workers_device_wants(tmp_path, monkeypatch):
    """With no --batch-size, a run sent to a scheduler batches as its workers' device wants (a
    CPU laptop's 1 would leave GPU workers running one tile per call); a given one is kept, also
    one set by replace() on a config whose size was picked."""
    import dataclasses

    import distributed

    import geosr.engine as engine
    import geosr.models
    from tests.rasters import uint8_scene

    used = []
    monkeypatch.setattr(engine, "batch_jobs", lambda plan, tiles, config, **kw: used.append(config.batch_size)
                        or batch_jobs(plan, tiles, config, **kw))
    # this machine's pick and the workers' (the task runs the function the engine submits): 3, which no machine picks
    monkeypatch.setattr(geosr.models, "default_batch_size", lambda spec, device=None: 1)
    monkeypatch.setattr(engine, "default_batch_size", lambda spec, device=None: 3)
    src = uint8_scene(tmp_path / "in.tif", 64, 64)
    base = dict(scale=2, model="geosr-tiny-fast-x2", captioner="none", route="off", tiles=TileSpec(32, 8),
                progress=False)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
                                  dashboard_address=None) as cluster:
        picked = RunConfig(address=cluster.scheduler_address, **base)
        assert picked.batch_size == 1
        upscale_scene([src], tmp_path / "picked.tif", picked)
        upscale_scene([src], tmp_path / "given.tif", RunConfig(address=cluster.scheduler_address, batch_size=2, **base))
        upscale_scene([src], tmp_path / "replaced.tif", dataclasses.replace(picked, batch_size=2))
    assert used == [3, 2, 2]
    with rasterio.open(tmp_path / "picked.tif") as a, rasterio.open(tmp_path / "given.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())  # how tiles are batched changes no pixel
