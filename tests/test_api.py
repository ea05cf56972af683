"""The Python API: geosr.upscale / geosr.caption, the lazy DataArray and the .geosr accessor."""

from __future__ import annotations

import sys
from pathlib import Path

import dask
import dask.array
import numpy as np
import pytest
import rasterio
import rioxarray
import xarray as xr
from affine import Affine
from click.testing import CliRunner

import geosr
import geosr.tasks
from geosr.cli import cli
from geosr.errors import GeosrError, InputError, ModelError, OutputError, OutputExistsError
from rasters import texture, write_raster

# A 2-band uint16 scene with nodata and a no-data block that covers a whole tile core (a
# skipped tile: a hole in the output), odd sizes, tile 32 / overlap 8 at x2: 4 x 5 tiles.
OPTIONS = dict(scale=2, model="bicubic", tile=32, overlap=8)
CLI_OPTIONS = ["--scale", "2", "--model", "bicubic", "--tile", "32", "--overlap", "8", "-q"]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("api")
    data = (texture(2, 97, 131, seed=3) * 3000 + 100).astype(np.uint16)
    data[:, :40, :50] = 0
    src = write_raster(folder / "scene.tif", data, nodata=0)
    with rasterio.open(src, "r+") as ds:
        ds.descriptions = ("red", "nir")
    out = folder / "cli_x2.tif"
    res = CliRunner().invoke(cli, ["upscale", str(src), str(out), *CLI_OPTIONS])
    assert res.exit_code == 0, res.output
    with rasterio.open(out) as ds:
        cli_pixels, profile = ds.read(), ds.profile
    return src, cli_pixels, profile


def test_lazy_result_is_the_cli_output_on_the_refined_grid(scene):
    src, cli_pixels, profile = scene
    hr = geosr.upscale(src, **OPTIONS)
    assert isinstance(hr.data, dask.array.Array)
    assert hr.dims == ("band", "y", "x") and hr.shape == cli_pixels.shape and hr.dtype == np.uint16
    with rasterio.open(src) as ds:
        assert hr.rio.transform() == ds.transform * Affine.scale(0.5) == profile["transform"]
        assert hr.rio.crs == ds.crs
        np.testing.assert_allclose(hr.rio.bounds(), tuple(ds.bounds))
    assert hr.rio.nodata == 0
    assert list(hr.band.values) == [1, 2] and hr.attrs["long_name"] == ("red", "nir")
    np.testing.assert_array_equal(hr.values, cli_pixels)
    assert (cli_pixels[:, :50, :54] == 0).all()  # the skipped tile is a hole in both


# module level: a run's cluster pickles the function by reference and runs it in this process
BATCHES: list[tuple[int, ...]] = []
PROCESS_BATCH = geosr.tasks.process_batch


def recording_batch(job):
    BATCHES.append(tuple(t.index for t in job.tiles))
    return PROCESS_BATCH(job)


def test_a_lazy_network_result_is_the_written_one_at_its_batch_size(tmp_path, monkeypatch):
    """A network rounds otherwise per batch shape (1 DN on a few pixels): the lazy tiles are taken
    from the batches a run computes them in (they were computed one by one)."""
    from rasters import uint8_scene

    batches = BATCHES
    batches.clear()
    monkeypatch.setattr(geosr.tasks, "process_batch", recording_batch)
    src = uint8_scene(tmp_path / "in.tif", 96, 128)
    options = dict(scale=2, model="geosr-tiny-fast-x2", captioner="none", tile=32, overlap=8, batch_size=4)
    geosr.upscale_to_file(src, tmp_path / "out.tif", **options)
    with rasterio.open(tmp_path / "out.tif") as ds:
        written = ds.read()
    run, batches[:] = set(batches), []
    with dask.config.set(scheduler="synchronous"):
        np.testing.assert_array_equal(geosr.upscale(src, **options).values, written)
    assert set(batches) == run and len(batches) == len(run)  # each batch once, as the run's


def test_a_lazy_result_computed_by_other_code_refuses(scene, monkeypatch):
    """The graph's tiles carry the code that built it: a worker running other geosr code refuses
    them (as in a run) instead of mixing its pixels into the array."""
    import geosr.lazy
    from geosr.errors import WorkerMismatchError

    monkeypatch.setattr(geosr.lazy, "code_digest", lambda: "0123456789abcdef")  # as an older client would have it
    hr = geosr.upscale(scene[0], **OPTIONS)
    with dask.config.set(scheduler="synchronous"), pytest.raises(WorkerMismatchError, match="runs geosr code"):
        hr.isel(y=slice(0, 4), x=slice(0, 4)).values


def test_lazy_result_computes_only_the_tiles_under_the_selection(scene, monkeypatch):
    src, cli_pixels, _ = scene
    upscaled = []
    process_batch = geosr.tasks.process_batch

    def counting(job):
        upscaled.extend(t.index for t in job.tiles)
        return process_batch(job)

    monkeypatch.setattr(geosr.tasks, "process_batch", counting)
    hr = geosr.upscale(src, **OPTIONS)
    assert hr.chunks[1][0] == 50 and hr.chunks[2][0] == 54  # tile cores (25 x 27 LR px) x 2
    with dask.config.set(scheduler="synchronous"):
        corner = hr.isel(y=slice(-10, None), x=slice(-10, None)).values
    np.testing.assert_array_equal(corner, cli_pixels[:, -10:, -10:])
    # The bottom-right chunk lies under the last tile and the halos of its 3 neighbours.
    assert sorted(upscaled) == [13, 14, 18, 19]


def test_chunked_rioxarray_input_and_to_raster(scene, tmp_path):
    src, cli_pixels, profile = scene
    da = rioxarray.open_rasterio(src, chunks={"x": 64, "y": 48})
    hr = geosr.upscale(da, **OPTIONS)
    out = tmp_path / "lazy.tif"
    hr.rio.to_raster(out)
    with rasterio.open(out) as ds:
        np.testing.assert_array_equal(ds.read(), cli_pixels)
        assert ds.transform == profile["transform"] and ds.crs == profile["crs"] and ds.nodata == 0


def test_accessor_on_an_in_memory_dataarray(scene):
    src, cli_pixels, _ = scene
    da = rioxarray.open_rasterio(src).load()
    hr = da.geosr.upscale(**OPTIONS)
    np.testing.assert_array_equal(hr.values, cli_pixels)
    one_band = da.isel(band=1, drop=True)  # (y, x)
    np.testing.assert_array_equal(one_band.geosr.upscale(**OPTIONS).values[0], cli_pixels[1])


def test_a_lazy_result_computes_after_its_graph_object_is_dropped(scene):
    """Found by review: on a distributed client, hr = hr.persist() (or client.compute(hr); del hr)
    dropped the DataArray's temporary copy while the tasks, shipped as pickled copies, read it."""
    import gc
    import pickle

    src, cli_pixels, _ = scene
    da = rioxarray.open_rasterio(src).load()
    da.encoding.pop("source", None)
    hr = da.geosr.upscale(**OPTIONS)
    data = hr.data
    shipped = pickle.dumps((dict(data.__dask_graph__()), data.name, data.chunks, data.dtype))  # as a scheduler gets it
    del hr, data
    gc.collect()
    graph, name, chunks, dtype = pickle.loads(shipped)
    np.testing.assert_array_equal(dask.array.Array(graph, name, chunks, dtype).compute(scheduler="sync"), cli_pixels)


def test_output_mode_from_a_rasterio_dataset_writes_the_cli_pixels(scene, tmp_path):
    src, cli_pixels, _ = scene
    with rasterio.open(src) as ds:
        report = geosr.upscale_to_file(ds, tmp_path / "api.tif", **OPTIONS)
    assert report.output == tmp_path / "api.tif" and report.tiles_skipped == 1
    with rasterio.open(report.output) as ds:
        np.testing.assert_array_equal(ds.read(), cli_pixels)
    with pytest.raises(OutputExistsError):
        geosr.upscale_to_file(src, tmp_path / "api.tif", **OPTIONS)


def test_caption_returns_or_writes_the_cli_captions(scene, tmp_path):
    src, _, _ = scene
    fc = geosr.caption(rioxarray.open_rasterio(src), tile=32, overlap=8, caption_every="scene")
    assert len(fc["features"]) == 19 and len({f["properties"]["caption"] for f in fc["features"]}) == 1
    out = tmp_path / "c.geojson"
    res = CliRunner().invoke(cli, ["caption", str(src), "--out", str(out), "--tile", "32", "--overlap", "8",
                                   "--caption-every", "scene", "-q"])
    assert res.exit_code == 0, res.output
    assert geosr.caption(src, tmp_path / "api.geojson", tile=32, overlap=8, caption_every="scene") == fc
    assert out.exists()


def test_performance_report_without_bokeh_is_refused_up_front(scene, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "bokeh", None)  # as if the [reports] extra were not installed
    with pytest.raises(InputError, match=r"geosr\[reports\]"):
        geosr.upscale_to_file(scene[0], tmp_path / "o.tif", performance_report=tmp_path / "r.html", **OPTIONS)
    assert not (tmp_path / "o.tif").exists()


def test_a_performance_report_replaces_neither_an_input_nor_a_file_unasked(scene, tmp_path):
    """Found by review: --performance-report INPUT replaced the input with HTML (exit 0)."""
    src = scene[0]
    before = open(src, "rb").read()
    with pytest.raises(OutputError, match="is also an input"):
        geosr.upscale_to_file(src, tmp_path / "o.tif", performance_report=src, overwrite=True, **OPTIONS)
    with pytest.raises(OutputError, match="a file the output .* writes"):
        geosr.upscale_to_file(src, tmp_path / "o.tif", performance_report=tmp_path / "o.captions.geojson", **OPTIONS)
    # the output or its captions named another way (the run exited 0 without the report)
    (tmp_path / "sub").mkdir()
    with pytest.raises(OutputError, match="is the output itself"):
        geosr.upscale_to_file(src, tmp_path / "o.tif", performance_report=tmp_path / "sub" / ".." / "o.tif", **OPTIONS)
    with pytest.raises(OutputError, match="a file the output .* writes"):
        geosr.upscale_to_file(src, tmp_path / "sub" / ".." / "o.tif", performance_report=tmp_path / "o.captions.geojson",
                              **OPTIONS)
    (tmp_path / "r.html").write_text("mine")
    with pytest.raises(OutputExistsError):
        geosr.upscale_to_file(src, tmp_path / "o.tif", performance_report=tmp_path / "r.html", **OPTIONS)
    assert open(src, "rb").read() == before and (tmp_path / "r.html").read_text() == "mine"
    assert not (tmp_path / "o.tif").exists()


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda src: geosr.upscale(src, scale=5), InputError),
        (lambda src: geosr.upscale(src, scale="4"), InputError),
        (lambda src: geosr.upscale(src, scale=2, bands="1,2"), InputError),
        (lambda src: geosr.upscale(src, scale=2, bands=[3]), InputError),
        (lambda src: geosr.upscale(src, scale=2, tile=4), InputError),
        (lambda src: geosr.upscale(src, scale=2, model="no-such-model"), ModelError),
        (lambda src: geosr.upscale(42, scale=2), InputError),
        (lambda src: geosr.upscale(src.parent / "missing.tif", scale=2, model="bicubic"), InputError),
        (lambda src: geosr.upscale(xr.DataArray(np.zeros((2, 3, 4, 5)), dims=("t", "band", "y", "x")), scale=2), InputError),
        (lambda src: geosr.caption(src, caption_every="sometimes"), InputError),
        # 1.0 seeded other tiles than 1; a negative timeout was a ValueError deep in the socket code
        (lambda src: geosr.upscale(src, scale=2, model="bicubic", seed=1.0), InputError),
        (lambda src: geosr.upscale_to_file(src, src.parent / "o.tif", scale=2, model="bicubic", connect_timeout=-1),
         InputError),
    ],
    ids=["scale", "scale-str", "bands-str", "band-missing", "tile", "model", "source-type",
         "missing-file", "dataarray-dims", "caption-every", "seed-float", "connect-timeout"],
)
def test_bad_arguments_raise_geosr_errors(scene, call, error):
    with pytest.raises(error) as info:
        call(scene[0])
    assert isinstance(info.value, GeosrError)


def test_one_return_type_per_verb_and_the_accessor_shows_the_signatures(scene, tmp_path):
    import inspect

    src = scene[0]
    assert isinstance(geosr.upscale(src, **OPTIONS), xr.DataArray)
    assert isinstance(geosr.upscale_to_file(src, tmp_path / "o.tif", **OPTIONS), geosr.RunReport)
    with pytest.raises(TypeError):  # a lazy result has no file options: Python says so
        geosr.upscale(src, overwrite=True, **OPTIONS)
    da = rioxarray.open_rasterio(src)
    for name in ("upscale", "upscale_to_file", "caption"):
        shown = inspect.signature(getattr(da.geosr, name))
        wanted = list(inspect.signature(getattr(geosr, name)).parameters)[1:]  # all but the source
        assert list(shown.parameters) == wanted


def test_a_four_band_uint8_dataarray_keeps_its_fourth_band():
    # R, G, B, NIR: GDAL would write 4 uint8 bands as RGBA and make NIR a mask
    path = Path(__file__).parent / "data" / "rgbn_suba.tif"
    da = rioxarray.open_rasterio(path, chunks=256)
    hr = da.geosr.upscale(scale=2, model="bicubic")
    assert hr.shape == (4, 2 * da.shape[1], 2 * da.shape[2])
    np.testing.assert_array_equal(hr.values, geosr.upscale(str(path), scale=2, model="bicubic").values)


def test_errors_name_python_keywords_and_the_command_its_flags(scene, tmp_path):
    """Issue 27.8: from Python, `pass --overwrite` is no advice; the command keeps its flags."""
    out = tmp_path / "out.tif"
    out.write_bytes(b"")
    with pytest.raises(OutputExistsError, match=r"pass overwrite=True to replace it") as info:
        geosr.upscale_to_file(scene[0], out, **OPTIONS)
    assert "--" not in str(info.value)
    with pytest.raises(InputError, match=r"^tile must be at least 8 px"):
        geosr.upscale(scene[0], scale=2, tile=4)
    res = CliRunner().invoke(cli, ["upscale", str(scene[0]), str(out), *CLI_OPTIONS])
    assert res.exit_code == OutputExistsError.exit_code and "pass --overwrite to replace it" in res.output


@pytest.mark.parametrize(
    "cli_text, python_text",
    [
        ("out.tif exists; pass --overwrite to replace it", "out.tif exists; pass overwrite=True to replace it"),
        ("3 of 9 output cells are kept in F (2 MiB): rerun the same command with --resume to continue",
         "3 of 9 output cells are kept in F (2 MiB): rerun the same call with resume=True to continue"),
        ("--route-map needs a routed run (--route auto with a neural model): --route off",
         "route_map needs a routed run (route='auto' with a neural model): route='off'"),
        ("--co COMPRESS=FOO: COMPRESS must be one of ...", "creation_options COMPRESS=FOO: COMPRESS must be one of ..."),
        ("--batch-size must be >= 1, got 0", "batch_size must be >= 1, got 0"),
        ("x.tif looks like a classification raster: upscale it with --model nearest",
         "x.tif looks like a classification raster: upscale it with model='nearest'"),
        ("a flag the API does not have: --upscale-args", "a flag the API does not have: --upscale-args"),
    ],
)
def test_python_spelling_of_command_line_options(cli_text, python_text):
    assert geosr.api.python_spelling(cli_text) == python_text


def test_model_docstring_names_the_default_at_each_scale():
    doc = " ".join(geosr.upscale.__doc__.split())
    assert "``geosr-tiny-x4`` at x4 and ``geosr-tiny-x2`` at x2; bicubic at x3 and x8" in doc


@pytest.mark.parametrize("scales, offsets", [((0.5, 0.5, 0.5), (1.0, 1.0, 1.0)), ((0.5, 0.25, 0.5), (1.0, 2.0, 1.0))])
def test_the_lazy_result_carries_scales_offsets_and_units(tmp_path, scales, offsets):
    """Found by review: the lazy DataArray dropped the bands' scales, offsets and units: exported
    with rio.to_raster it wrote 1 and 0 where the COG keeps the sensor's scaling."""
    data = (texture(3, 32, 40, seed=2) * 3000).astype("uint16")
    path = write_raster(tmp_path / "in.tif", data)
    with rasterio.open(path, "r+") as ds:
        ds.scales, ds.offsets, ds.units = scales, offsets, ("W", "W", "W")
    hr = geosr.upscale(str(path), scale=2, model="bicubic", captioner="none")
    hr.rio.to_raster(tmp_path / "lazy.tif")
    geosr.upscale_to_file(path, tmp_path / "file.tif", scale=2, model="bicubic", captioner="none")
    with rasterio.open(tmp_path / "lazy.tif") as lazy, rasterio.open(tmp_path / "file.tif") as written:
        assert lazy.scales == written.scales == scales and lazy.offsets == written.offsets == offsets
    assert hr.attrs["units"] == ("W", "W", "W")


def test_the_lazy_api_keeps_the_latest_results_copies_only(scene):
    """Found by a review of the keep-alive: every lazy result's temporary copy stayed until the
    process exited, so a loop over scenes filled the disk; the latest KEPT_SOURCES stay."""
    import gc

    import geosr.lazy

    src, _, _ = scene
    da = rioxarray.open_rasterio(src).load()
    da.encoding.pop("source", None)
    folders = []
    for _ in range(geosr.lazy.KEPT_SOURCES + 3):
        hr = da.geosr.upscale(**OPTIONS)
        folders.append(Path(geosr.lazy._KEPT[-1].tempdir.name))
        del hr
    gc.collect()
    assert not any(f.exists() for f in folders[:3]) and all(f.exists() for f in folders[3:])


def test_an_in_memory_dataset_of_two_band_types_is_refused_up_front(tmp_path):
    """A dataset with no file is copied to a GeoTIFF, which holds one type: a Byte alpha + UInt16 R, G,
    B VRT read from memory failed in GDAL's copy ("Unable to export GeoTIFF file with different
    datatypes"); the refusal says why and what to pass instead."""
    from rasterio.io import MemoryFile

    from rasters import write_alpha_first_vrt

    data = (texture(3, 40, 48, seed=6) * 3000 + 500).astype("uint16")
    rgb = write_raster(tmp_path / "rgb.tif", data)
    alpha = write_raster(tmp_path / "alpha.tif", np.full((1, 40, 48), 255, "uint8"))
    xml = write_alpha_first_vrt(tmp_path / "a.vrt", rgb, alpha, ["Red", "Green", "Blue"]).read_bytes()
    with MemoryFile(xml, ext=".vrt") as mem, mem.open() as ds:
        with pytest.raises(InputError, match=r"bands of several types \(uint8, uint16, uint16, uint16\)"):
            geosr.upscale_to_file(ds, tmp_path / "out.tif", scale=2, model="bicubic", captioner="none")
    assert not (tmp_path / "out.tif").exists()
    with MemoryFile(rgb.read_bytes(), ext=".tif") as mem, mem.open() as ds:  # one type: copied, as before
        geosr.upscale_to_file(ds, tmp_path / "one.tif", scale=2, model="bicubic", captioner="none")
    with rasterio.open(tmp_path / "one.tif") as out:
        assert out.dtypes == ("uint16",) * 3 and out.read().max() > 3000
