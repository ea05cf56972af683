"""``--detail D`` and ``--uncertainty FILE.tif`` in a run (issue 30): CLI, API, lazy result, resume.

The model is a tiny LR-space student with a detail and an uncertainty head (tests/tiny_models.py)
whose scheduler predicts the clean sample: a fresh denoiser ignores its noisy input, so the
output and its predicted error are local functions of the LR, and tiles of different sizes
agree where they see the same context (as bicubic's do in test_engine_invariants). The scene
is a crop of the real RGB.byte.tif fixture with its nodata border (holes, skipped tiles).
"""

from __future__ import annotations

import errno
from pathlib import Path

import dask
import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from diffusers import LCMScheduler
from rasterio.windows import Window

import geosr
from geosr.cli import cli
from geosr.config import RunConfig, TileSpec
from geosr.engine import upscale_scene
from geosr.errors import ResumeError, WriteError
from geosr.journal import RunJournal, WorkFolder
from geosr.pipelines.pipeline_geosr import GeoSRPipeline
from geosr.radiometry import Stretch
from geosr.resumable import StoppedRunWarning
from geosr.tasks import error_variance
from geosr.uncertainty_map import UncertaintyRaster
from geosr.validation import validate_output
from geosr.writer import WorkRaster
from tiny_models import tiny_pipeline_components, with_tiny_heads

DATA = Path(__file__).parent / "data"

# Cores of 32 (and 64) start at even LR columns: the phase of the model's 2-LR-pixel grid.
RUN = ["--scale", "2", "--captioner", "none", "--tile", "32", "--overlap", "16", "--dtype", "fp32",
       "--device", "cpu", "-q"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[str, str]:
    """(the tiny model without heads, the same model with a detail and an uncertainty head)."""
    folder = tmp_path_factory.mktemp("models")
    components = tiny_pipeline_components(student=True, scale=2, unshuffle_factor=4, tmp_path=folder)
    components["scheduler"] = LCMScheduler.from_config(components["scheduler"].config, prediction_type="sample")
    GeoSRPipeline(**components).save_pretrained(folder / "plain")
    GeoSRPipeline(**with_tiny_heads(components)).save_pretrained(folder / "heads")
    return str(folder / "plain"), str(folder / "heads")


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    """128 x 96 px of RGB.byte.tif, half of it its nodata border."""
    path = tmp_path_factory.mktemp("scene") / "rgb.tif"
    with rasterio.open(DATA / "RGB.byte.tif") as src:
        window = Window(64, 32, 128, 96)
        profile = dict(src.profile, width=128, height=96, transform=src.window_transform(window))
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(src.read(window=window))
    return path


def upscale(*args) -> str:
    result = CliRunner().invoke(cli, ["upscale", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result.output


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


def test_detail_0_is_the_output_of_the_model_without_heads_bit_for_bit(models, scene, tmp_path):
    plain, heads = models
    upscale(scene, tmp_path / "plain.tif", *RUN, "--model", plain)
    upscale(scene, tmp_path / "heads.tif", *RUN, "--model", heads)
    upscale(scene, tmp_path / "d0.tif", *RUN, "--model", heads, "--detail", "0")
    np.testing.assert_array_equal(read(tmp_path / "heads.tif"), read(tmp_path / "plain.tif"))
    assert (tmp_path / "d0.tif").read_bytes() == (tmp_path / "heads.tif").read_bytes()
    with rasterio.open(tmp_path / "d0.tif") as ds:
        assert "GEOSR_DETAIL" not in ds.tags()


def test_detail_1_changes_the_pixels_reproducibly_and_is_tagged(models, scene, tmp_path):
    _, heads = models
    upscale(scene, tmp_path / "d0.tif", *RUN, "--model", heads)
    for name in ("a.tif", "b.tif"):
        upscale(scene, tmp_path / name, *RUN, "--model", heads, "--detail", "1")
    a, b, d0 = read(tmp_path / "a.tif"), read(tmp_path / "b.tif"), read(tmp_path / "d0.tif")
    np.testing.assert_array_equal(a, b)
    changed = np.abs(a.astype(int) - d0).max(axis=0) > 0
    assert changed.mean() > 0.2
    with rasterio.open(tmp_path / "a.tif") as ds:
        assert ds.tags()["GEOSR_DETAIL"] == "1" and "detail 1" in ds.tags()["GEOSR_MODEL"]
        valid = ds.dataset_mask() > 0
    assert not changed[~valid].any()  # nodata stays nodata


def test_the_uncertainty_map_is_a_float32_cog_on_the_output_grid(models, scene, tmp_path):
    _, heads = models
    out, err = tmp_path / "out.tif", tmp_path / "out_error.tif"
    said = upscale(scene, out, *[a for a in RUN if a != "-q"], "--model", heads, "--uncertainty", err)
    assert f"and its error map {err}" in said
    with rasterio.open(out) as o, rasterio.open(err) as e:
        assert (e.transform, e.crs, e.width, e.height) == (o.transform, o.crs, o.width, o.height)
        assert e.count == 1 and e.dtypes == ("float32",) and np.isnan(e.nodata)
        assert e.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert o.tags()["GEOSR_UNCERTAINTY"] == "out_error.tif"
        tags = e.tags()
        assert tags["GEOSR_UNCERTAINTY_OF"] == "out.tif" and tags["GEOSR_UNITS"].startswith("DN")
        assert "predicted root-mean-square error of out.tif" in tags["GEOSR_QUANTITY"]
        assert tags["GEOSR_MODEL"] == o.tags()["GEOSR_MODEL"] and tags["GEOSR_UNCERTAINTY_BANDS"] == "1,2,3"
        assert e.descriptions == ("predicted RMSE of out.tif (DN)",) and e.units == ("DN",)
        error, valid = e.read(1), o.dataset_mask() > 0
    assert 0.2 < valid.mean() < 0.9  # the crop has both
    assert np.isfinite(error[valid]).all() and (error[valid] >= 0).all() and error[valid].max() > 0
    assert np.isnan(error[~valid]).all()
    assert not validate_output(err).errors
    # the map changes nothing in the output: every tile on the model, as with --route off
    upscale(scene, tmp_path / "off.tif", *RUN, "--model", heads, "--route", "off")
    np.testing.assert_array_equal(read(out), read(tmp_path / "off.tif"))


def test_tiled_equals_untiled_for_the_uncertainty_map(models, scene, tmp_path):
    _, heads = models
    maps = {}
    for tile in (32, 64, 4096):
        options = [a if a != "32" else str(tile) for a in RUN]
        upscale(scene, tmp_path / f"{tile}.tif", *options, "--model", heads, "--uncertainty", tmp_path / f"e{tile}.tif")
        maps[tile] = read(tmp_path / f"e{tile}.tif")[0]
    for tile in (32, 64):
        np.testing.assert_array_equal(np.isnan(maps[tile]), np.isnan(maps[4096]))
        np.testing.assert_allclose(maps[tile], maps[4096], atol=0.05, equal_nan=True)  # DN; the map's mean is ~10


def test_the_lazy_result_is_the_written_one_with_detail_and_its_map(models, scene, tmp_path):
    _, heads = models
    upscale(scene, tmp_path / "out.tif", *RUN, "--model", heads, "--detail", "1", "--uncertainty", tmp_path / "err.tif")
    hr, error = geosr.upscale(str(scene), scale=2, model=heads, captioner="none", tile=32, overlap=16,
                              dtype="fp32", device="cpu", detail=1.0, uncertainty=True)
    assert error.dims == ("y", "x") and error.dtype == np.float32 and np.isnan(error.rio.nodata)
    assert error.rio.transform() == hr.rio.transform() and error.rio.crs == hr.rio.crs
    assert error.attrs["GEOSR_UNCERTAINTY_BANDS"] == "1,2,3"
    hr, error = dask.compute(hr, error)
    np.testing.assert_array_equal(hr.values, read(tmp_path / "out.tif"))
    np.testing.assert_array_equal(error.values, read(tmp_path / "err.tif")[0])


def test_the_map_is_nan_where_a_band_of_the_output_is_nodata(models, tmp_path):
    """Found by review: where one band alone held the nodata value (its output band nodata there),
    the map was a finite error averaged over that band's prediction too; README: NaN wherever the
    output is nodata. The file and the lazy map agree."""
    _, heads = models
    with rasterio.open(DATA / "RGB.byte.tif") as src:
        window = Window(200, 200, 96, 64)
        profile = dict(src.profile, width=96, height=64, transform=src.window_transform(window))
        data = src.read(window=window)
    data[2, 20:30, 40:50] = 0  # blue alone holds nodata 0 on a 10 x 10 block
    path = tmp_path / "in.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    upscale(path, tmp_path / "out.tif", *RUN, "--model", heads, "--uncertainty", tmp_path / "err.tif")
    error = read(tmp_path / "err.tif")[0]
    with rasterio.open(tmp_path / "out.tif") as out:
        band_missing = out.read_masks(3) == 0
        whole_missing = out.dataset_mask() == 0
    assert band_missing[40:60, 80:100].all() and not whole_missing[40:60, 80:100].any()
    assert np.isnan(error[band_missing]).all() and np.isfinite(error[~band_missing & ~whole_missing]).all()
    _, lazy = geosr.upscale(str(path), scale=2, model=heads, captioner="none", tile=32, overlap=16, dtype="fp32",
                            device="cpu", uncertainty=True)
    np.testing.assert_array_equal(lazy.values, error)


def test_a_multispectral_map_averages_the_bands_through_the_model(models, tmp_path):
    _, heads = models
    with rasterio.open(DATA / "rgbn_suba.tif") as src:  # R, G, B, NIR
        window = Window(64, 64, 128, 96)
        profile = dict(src.profile, width=128, height=96, transform=src.window_transform(window),
                       photometric="MINISBLACK")  # GDAL's default for 4 uint8 bands, RGBA, would make NIR alpha
        with rasterio.open(tmp_path / "rgbn.tif", "w", **profile) as dst:
            dst.write(src.read(window=window))
            dst.colorinterp = src.colorinterp
    maps = {}
    for to_model in ("all", "rgb"):
        err = tmp_path / f"err_{to_model}.tif"
        upscale(tmp_path / "rgbn.tif", tmp_path / f"{to_model}.tif", *RUN, "--model", heads,
                "--bands-to-model", to_model, "--uncertainty", err)
        with rasterio.open(err) as ds:
            maps[to_model] = (ds.tags()["GEOSR_UNCERTAINTY_BANDS"], ds.read(1).astype(np.float64))
    assert maps["all"][0] == "1,2,3,4" and maps["rgb"][0] == "1,2,3"  # bicubic's NIR has no prediction
    (_, every), (_, rgb) = maps["all"], maps["rgb"]
    nir_variance = 4 * every**2 - 3 * rgb**2  # the same R, G, B predictions in both runs
    valid = np.isfinite(every)
    assert valid.any() and (nir_variance[valid] > -1e-3 * every[valid] ** 2).all()


def test_each_band_s_error_is_converted_to_its_raster_values_before_the_mean():
    sigmas = {0: torch.full((1, 2, 2), 0.1), 1: torch.full((1, 2, 2), 0.2)}  # model units
    stretch = Stretch(low=(100.0, 0.0), high=(1100.0, 50.0), dtype="uint16")  # the offset moves no error
    np.testing.assert_allclose(error_variance(sigmas, stretch).numpy(), ((0.1 * 1000) ** 2 + (0.2 * 50) ** 2) / 2)


@pytest.mark.parametrize("model,args,code,message", [
    ("heads", ["--uncertainty", "{err}", "--split", "512"], 3, "tiled output (--split) is not supported"),
    ("heads", ["--uncertainty", "{err}", "--route-map", "{tmp}/route.tif"], 3, "drop --route-map"),
    ("heads", ["--uncertainty", "{err}", "--route-threshold", "5"], 3, "drop --route-threshold"),
    ("heads", ["--uncertainty", "{out}"], 4, "is the output itself"),
    ("heads", ["--uncertainty", "{tmp}/out.captions.geojson"], 4, "is a file the output"),
    ("heads", ["--uncertainty", "s3://bucket/error.tif"], 3, "the map is written to a local file"),
    ("plain", ["--uncertainty", "{err}"], 3, "has no uncertainty head"),
    ("plain", ["--detail", "0.5"], 3, "has no detail head"),
    ("bicubic", ["--detail", "0.5"], 3, "--detail needs a diffusion model with a detail head"),
    ("bicubic", ["--uncertainty", "{err}", "--detail", "1"], 3,
     "--detail and --uncertainty need a diffusion model with a detail head and an uncertainty head"),
    ("heads", ["--detail", "1.5"], 2, "1.5 is not in the range 0<=x<=1"),
], ids=["split", "route-map", "route-threshold", "same-file", "captions-file", "object-storage", "no-uncertainty-head", "no-detail-head",
        "classical-detail", "classical-both", "detail-range"])
def test_what_cannot_be_done_is_refused_before_any_work_and_leaves_nothing(models, scene, tmp_path, model, args,
                                                                        code, message):
    model = {"plain": models[0], "heads": models[1]}.get(model, model)
    args = [a.format(err=tmp_path / "err.tif", out=tmp_path / "out.tif", tmp=tmp_path) for a in args]
    output = f"{tmp_path}/tiles/" if "--split" in args else str(tmp_path / "out.tif")  # --split writes a folder
    result = CliRunner().invoke(cli, ["upscale", str(scene), output, *RUN, "--model", model, *args])
    assert result.exit_code == code, result.output
    assert message in " ".join(result.output.split())
    assert list(tmp_path.iterdir()) == []


def test_zarr_output_and_an_existing_map_are_refused(models, scene, tmp_path):
    _, heads = models
    with pytest.raises(geosr.errors.InputError, match="Zarr output is not supported"):
        geosr.upscale_to_file(scene, tmp_path / "out.zarr", scale=2, model=heads, uncertainty=tmp_path / "e.tif")
    (tmp_path / "e.tif").write_bytes(b"mine")
    with pytest.raises(geosr.errors.OutputExistsError, match="pass overwrite=True"):
        geosr.upscale_to_file(scene, tmp_path / "out.tif", scale=2, model=heads, uncertainty=tmp_path / "e.tif")
    with pytest.raises(geosr.errors.InputError, match="the file to write the map to"):
        geosr.upscale_to_file(scene, tmp_path / "out.tif", scale=2, model=heads, uncertainty=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.tif"] and (tmp_path / "e.tif").read_bytes() == b"mine"


def config(heads: str, **kw) -> RunConfig:
    return RunConfig(**{**dict(scale=2, model=heads, captioner="none", tiles=TileSpec(32, 16), progress=False,
                               dtype="fp32", device="cpu"), **kw})


@pytest.fixture
def stopped(models, scene, tmp_path, monkeypatch):
    """(the model, the folder of an uninterrupted run's out.tif and error.tif, the folder of the
    same run stopped by a full disk, its work folder), as in test_resume_integrity."""
    heads = models[1]
    ref, run = tmp_path / "ref", tmp_path / "run"
    ref.mkdir(), run.mkdir()
    real, writes = WorkRaster._write_rows, [0]

    def count(self, *args):
        writes[0] += 1
        return real(self, *args)

    monkeypatch.setattr(WorkRaster, "_write_rows", count)
    upscale_scene([scene], ref / "out.tif", config(heads), uncertainty=ref / "error.tif")
    total, writes[0] = writes[0], 0

    def fill_up(self, *args):
        writes[0] += 1
        if writes[0] > total * 3 // 4:  # the first quarter or more are holes (the nodata border)
            raise WriteError("no space left on the device (simulated)") from OSError(errno.ENOSPC, "full")
        return real(self, *args)

    monkeypatch.setattr(WorkRaster, "_write_rows", fill_up)
    with pytest.raises(WriteError):
        upscale_scene([scene], run / "out.tif", config(heads), uncertainty=run / "error.tif")
    monkeypatch.setattr(WorkRaster, "_write_rows", real)
    (work,) = run.glob(".out.tif.geosr-run-*")
    assert RunJournal.load(WorkFolder(work)).finished > 0 and (work / UncertaintyRaster.PIXELS).exists()
    assert not (run / "error.tif").exists()
    return heads, ref, run, work


def test_a_resumed_run_writes_the_same_output_and_map(scene, stopped):
    heads, ref, run, work = stopped
    report = upscale_scene([scene], run / "out.tif", config(heads, resume=True), uncertainty=run / "error.tif")
    assert report.tiles_resumed > 0 and not work.exists()
    for name in ("out.tif", "error.tif"):
        assert (run / name).read_bytes() == (ref / name).read_bytes()


def test_a_damaged_map_is_recomputed_not_trusted(scene, stopped):
    heads, ref, run, work = stopped
    with open(work / UncertaintyRaster.PIXELS, "r+b") as f:
        f.write(b"\x7f" * 4096)
    with pytest.warns(StoppedRunWarning, match="no longer hold the bytes that were written"):
        upscale_scene([scene], run / "out.tif", config(heads, resume=True), uncertainty=run / "error.tif")
    assert (run / "error.tif").read_bytes() == (ref / "error.tif").read_bytes()


@pytest.mark.parametrize("other,named", [(dict(detail=1.0), "--detail was '0', now '1.0'"),
                                         ({}, "--uncertainty was 'yes', now 'no'")],
                         ids=["another-detail", "without-the-map"])
def test_a_resume_with_another_detail_or_without_the_map_is_another_run(scene, stopped, other, named):
    heads, _, run, work = stopped
    uncertainty = None if named.startswith("--uncertainty") else run / "error.tif"
    with pytest.raises(ResumeError, match=named):
        upscale_scene([scene], run / "out.tif", config(heads, resume=True, **other), uncertainty=uncertainty)
    assert work.exists() and not (run / "out.tif").exists()


def test_worker_processes_leave_the_map_to_the_client(models, scene, tmp_path):
    _, heads = models
    # dask workers run torch on one thread: compare with the same thread count (test_cluster)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        upscale_scene([scene], tmp_path / "local.tif", config(heads), uncertainty=tmp_path / "local_error.tif")
    finally:
        torch.set_num_threads(threads)
    upscale_scene([scene], tmp_path / "workers.tif", config(heads, local_workers=1),
                  uncertainty=tmp_path / "workers_error.tif")
    np.testing.assert_array_equal(read(tmp_path / "workers.tif"), read(tmp_path / "local.tif"))
    np.testing.assert_array_equal(read(tmp_path / "workers_error.tif"), read(tmp_path / "local_error.tif"))
