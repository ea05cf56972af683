"""Zarr output (issue 31): a .zarr OUTPUT equal to the single COG, georeferenced for rioxarray, resumable per chunk."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from click.testing import CliRunner

import geosr.journal
import geosr.resumable
import geosr.zarr_output
from geosr.cli import cli
from geosr.engine import upscale_scene
from geosr.errors import WriteError
from geosr.writer import WorkRaster
from tests.conftest import (RAGGED_HEIGHT, RAGGED_WIDTH, bicubic_cfg, disk_full_after_commits,
                            disk_full_once_a_block_is_journalled, file_tree,
                            upscale_bicubic_cli)
from tests.rasters import uint8_scene, write_raster

pytest.importorskip("zarr")
pytest.importorskip("rioxarray")


def open_store(path: Path) -> xr.Dataset:
    return xr.open_zarr(path, mask_and_scale=False)  # the stored values, as the COG holds them


@pytest.mark.parametrize("masked,batch_size", [(False, 1), (True, 1), (False, 4)])
def test_the_store_equals_the_single_cog(tmp_path, masked, batch_size):
    # batch_size 4: the run ends on single-tile jobs (the single COG's run does not)
    mask = np.ones((RAGGED_HEIGHT, RAGGED_WIDTH), bool)
    mask[40:90, 100:260] = False
    src = uint8_scene(tmp_path / "in.tif", RAGGED_HEIGHT, RAGGED_WIDTH, mask=mask if masked else None)
    upscale_scene([src], tmp_path / "single.tif", bicubic_cfg())
    report = upscale_scene([src], tmp_path / "out.zarr", bicubic_cfg(batch_size=batch_size))

    out = tmp_path / "out.zarr"
    assert report.output == out and report.captions == tmp_path / "out.captions.geojson" and report.captions.exists()
    assert (out / ".zmetadata").exists()  # consolidated
    ds = open_store(out)
    with rasterio.open(tmp_path / "single.tif") as cog:
        np.testing.assert_array_equal(ds["band_data"].values, cog.read())
        if masked:
            np.testing.assert_array_equal(ds["mask"].values, cog.read_masks(1))
            assert not ds["mask"].values.all()
        else:
            assert "mask" not in ds
        da = ds["band_data"]
        assert da.rio.crs == cog.crs
        assert da.rio.transform().almost_equals(cog.transform)
        assert list(da.attrs.get("long_name", [""] * cog.count)) == [d or "" for d in cog.descriptions]
        assert list(da.attrs["colorinterp"]) == [c.name for c in cog.colorinterp]
        assert ds.attrs["GEOSR_MODEL"] == cog.tags()["GEOSR_MODEL"]
        assert da.dims == ("band", "y", "x") and da.dtype == np.uint8
        assert ds["x"].values[0] == pytest.approx(cog.xy(0, 0)[0]) and ds["y"].values[0] == pytest.approx(cog.xy(0, 0)[1])
    assert not list(tmp_path.glob(".out.zarr.geosr-*"))  # the work folder and the lock are gone


def test_the_band_coordinate_is_the_input_bands_as_in_the_lazy_result(tmp_path):
    """``--bands 5,2``: the store's ``band`` coordinate says which input bands it holds (5, 2, as the
    lazy DataArray's), at every level; it was 1, 2 whatever the bands were."""
    import geosr

    data = (np.arange(5 * RAGGED_HEIGHT * RAGGED_WIDTH).reshape(5, RAGGED_HEIGHT, RAGGED_WIDTH) % 251).astype(np.uint8)
    src = write_raster(tmp_path / "in.tif", data)
    upscale_scene([src], tmp_path / "out.zarr", bicubic_cfg(bands=(5, 2)))
    store = open_store(tmp_path / "out.zarr")
    lazy = geosr.upscale(src, scale=2, model="bicubic", captioner="none", bands=(5, 2), tile=32, overlap=8)
    assert list(store["band"].values) == list(lazy["band"].values) == [5, 2]
    assert list(xr.open_zarr(tmp_path / "out.zarr", group="2")["band"].values) == [5, 2]
    np.testing.assert_array_equal(store["band_data"].values, lazy.values)


def test_an_overview_chunk_with_no_valid_pixel_is_written_and_journalled(tmp_path):
    """A chunk equal to the fill value everywhere is still a file: every chunk is journalled with its bytes."""
    mask = np.ones((RAGGED_HEIGHT, RAGGED_WIDTH), bool)
    mask[:, 500:] = False  # the last column of chunks, and of level 2's, holds no valid pixel
    src = uint8_scene(tmp_path / "in.tif", RAGGED_HEIGHT, RAGGED_WIDTH, mask=mask)
    upscale_scene([src], tmp_path / "single.tif", bicubic_cfg())
    upscale_scene([src], tmp_path / "out.zarr", bicubic_cfg())
    level = xr.open_zarr(tmp_path / "out.zarr", group="2", mask_and_scale=False)
    assert (tmp_path / "out.zarr" / "2" / "mask" / "0.1").exists() and not level["mask"].values[:, 500:].any()
    with rasterio.open(tmp_path / "single.tif") as cog:
        np.testing.assert_array_equal(open_store(tmp_path / "out.zarr")["mask"].values, cog.read_masks(1))


def test_nodata_is_the_fill_value(tmp_path):
    data = (np.arange(RAGGED_HEIGHT * RAGGED_WIDTH).reshape(1, RAGGED_HEIGHT, RAGGED_WIDTH) % 200 + 10).astype(np.float32)
    data[0, 50:120, 30:200] = -9999
    src = write_raster(tmp_path / "in.tif", data, nodata=-9999)
    upscale_scene([src], tmp_path / "single.tif", bicubic_cfg())
    upscale_scene([src], tmp_path / "out.zarr", bicubic_cfg())
    ds = open_store(tmp_path / "out.zarr")
    assert ds["band_data"].attrs["_FillValue"] == -9999 or ds["band_data"].encoding.get("_FillValue") == -9999
    assert xr.open_zarr(tmp_path / "out.zarr")["band_data"].rio.encoded_nodata == -9999
    with rasterio.open(tmp_path / "single.tif") as cog:
        np.testing.assert_array_equal(ds["band_data"].values, cog.read())
        assert (cog.read() == -9999).any()


def test_gdal_reads_the_georeferencing(tmp_path, ragged_scene):
    with rasterio.Env() as env:
        if "Zarr" not in env.drivers():
            pytest.skip("this GDAL has no Zarr driver")
    upscale_scene([ragged_scene], tmp_path / "single.tif", bicubic_cfg())
    upscale_scene([ragged_scene], tmp_path / "out.zarr", bicubic_cfg())
    with rasterio.open(tmp_path / "single.tif") as cog, \
            rasterio.open(f'ZARR:"{tmp_path / "out.zarr"}":/band_data') as z:
        assert z.crs == cog.crs and z.transform.almost_equals(cog.transform)
        np.testing.assert_array_equal(z.read(), cog.read())


def test_bad_combinations_are_refused_in_one_line(tmp_path, ragged_scene):
    for extra in (["--split", "512"], ["--co", "COMPRESS=ZSTD"]):
        result = CliRunner().invoke(cli, ["upscale", str(ragged_scene), str(tmp_path / "out.zarr"), "--scale", "2",
                                          "--model", "bicubic", "--captioner", "none", *extra])
        assert result.exit_code == 3, result.output
        assert len(result.output.strip().splitlines()) == 1 and extra[0] in result.output
    assert not (tmp_path / "out.zarr").exists()


def test_a_scene_without_georeferencing_is_refused(tmp_path):
    src = write_raster(tmp_path / "in.tif", np.zeros((1, 40, 50), np.uint8), crs=None, transform=None)
    result = CliRunner().invoke(cli, ["upscale", str(src), str(tmp_path / "out.zarr"), "--scale", "2",
                                      "--model", "bicubic", "--captioner", "none"])
    assert result.exit_code == 3 and "Zarr" in result.output, result.output
    assert not (tmp_path / "out.zarr").exists()


def test_a_stopped_run_resumes_without_rewriting_finished_chunks(tmp_path, ragged_scene, monkeypatch):
    monkeypatch.setattr(geosr.zarr_output, "ZARR_GROUP", 512)  # one task per chunk: some finish before the stop
    upscale_scene([ragged_scene], tmp_path / "reference.zarr", bicubic_cfg())
    monkeypatch.setattr(geosr.journal, "COMMIT_SECONDS", 0.0)  # commit after each batch: chunks start early
    written: list[str] = []
    real_fsync = geosr.zarr_output._fsync

    def counted_fsync(path, directory=False):  # looked up by the task when it runs, here (threads)
        if not directory and path.parent.name == "band_data":
            written.append(path.name[2:])
        return real_fsync(path, directory)

    monkeypatch.setattr(geosr.zarr_output, "_fsync", counted_fsync)
    real_rows = disk_full_once_a_block_is_journalled(monkeypatch, tmp_path, "out.zarr")
    with pytest.raises(WriteError):
        upscale_scene([ragged_scene], tmp_path / "out.zarr", bicubic_cfg())
    assert not (tmp_path / "out.zarr").exists()  # nothing at OUTPUT
    (work,) = tmp_path.glob(".out.zarr.geosr-run-*")
    finished = geosr.journal.RunJournal.load(geosr.journal.WorkFolder(work)).blocks
    assert finished and len(finished) < 6
    stamps = {name: os.stat(work / "out.zarr" / "band_data" / f"0.{name}").st_mtime_ns for name in finished}

    monkeypatch.setattr(WorkRaster, "_write_rows", real_rows)
    written.clear()
    report = upscale_scene([ragged_scene], tmp_path / "out.zarr", bicubic_cfg(resume=True))
    assert report.tiles_resumed > 0
    names = set(written)
    assert not names & set(finished) and len(names) == 6 - len(finished)
    for name, stamp in stamps.items():  # the very files, not rewritten
        assert os.stat(tmp_path / "out.zarr" / "band_data" / f"0.{name}").st_mtime_ns == stamp
    np.testing.assert_array_equal(open_store(tmp_path / "out.zarr")["band_data"].values,
                                  open_store(tmp_path / "reference.zarr")["band_data"].values)
    for chunk in sorted((tmp_path / "reference.zarr" / "band_data").glob("0.*")):
        assert (tmp_path / "out.zarr" / "band_data" / chunk.name).read_bytes() == chunk.read_bytes(), chunk.name


def test_a_changed_chunk_is_written_again(tmp_path, ragged_scene, monkeypatch):
    """A journalled chunk whose file no longer holds its bytes is not trusted."""
    monkeypatch.setattr(geosr.zarr_output, "ZARR_GROUP", 512)
    monkeypatch.setattr(geosr.journal, "COMMIT_SECONDS", 0.0)
    real_rows = disk_full_once_a_block_is_journalled(monkeypatch, tmp_path, "out.zarr")
    with pytest.raises(WriteError):
        upscale_scene([ragged_scene], tmp_path / "out.zarr", bicubic_cfg())
    (work,) = tmp_path.glob(".out.zarr.geosr-run-*")
    name = next(iter(geosr.journal.RunJournal.load(geosr.journal.WorkFolder(work)).blocks))
    damaged = work / "out.zarr" / "band_data" / f"0.{name}"
    damaged.write_bytes(damaged.read_bytes()[:-7])
    monkeypatch.setattr(WorkRaster, "_write_rows", real_rows)
    with pytest.warns(geosr.resumable.StoppedRunWarning, match="missing or changed"):
        upscale_scene([ragged_scene], tmp_path / "out.zarr", bicubic_cfg(resume=True))
    upscale_scene([ragged_scene], tmp_path / "reference.zarr", bicubic_cfg())
    assert (tmp_path / "out.zarr" / "band_data" / f"0.{name}").read_bytes() == \
        (tmp_path / "reference.zarr" / "band_data" / f"0.{name}").read_bytes()


def block_means(data: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """2 x 2 means of the valid pixels of ``[C, h, w]`` uint8, rounded half up; 0 where none is valid."""
    c, h, w = data.shape
    values = np.full((c, h + h % 2, w + w % 2), np.nan)
    values[:, :h, :w] = np.where(valid, data, np.nan) if valid is not None else data
    blocks = values.reshape(c, values.shape[1] // 2, 2, values.shape[2] // 2, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks
        mean = np.nanmean(blocks, axis=(2, 4))
    return np.where(np.isnan(mean), 0, np.floor(mean + 0.5)).astype(np.uint8)


@pytest.mark.parametrize("where", ["group tasks", "final pass"])
@pytest.mark.parametrize("masked", [False, True])
def test_overview_levels_are_georeferenced_block_means(tmp_path, monkeypatch, where, masked):
    if where == "final pass":  # a group of one chunk owns no overview chunk: all levels come after the groups
        monkeypatch.setattr(geosr.zarr_output, "ZARR_GROUP", 512)
    mask = np.ones((RAGGED_HEIGHT, RAGGED_WIDTH), bool)
    mask[40:91, 100:261] = False
    src = uint8_scene(tmp_path / "in.tif", RAGGED_HEIGHT, RAGGED_WIDTH, mask=mask if masked else None)
    upscale_scene([src], tmp_path / "out.zarr", bicubic_cfg())
    store = tmp_path / "out.zarr"
    root = open_store(store)
    layout = root.attrs["multiscales"]["layout"]
    assert [e["asset"] for e in layout] == ["band_data", "2/band_data", "4/band_data"]  # 1034 -> 517 -> 259 px wide
    assert root.attrs["zarr_conventions"][0]["name"] == "multiscales"
    assert layout[2]["derived_from"] == "2/band_data" and layout[2]["transform"]["scale"] == [2.0, 2.0]
    previous = root
    for entry, f in zip(layout[1:], (2, 4)):
        level = xr.open_zarr(store, group=str(f), mask_and_scale=False)
        da = level["band_data"]
        assert da.shape == (3, -(-2 * RAGGED_HEIGHT // f), -(-2 * RAGGED_WIDTH // f)) and entry["spatial:shape"] == list(da.shape[1:])
        assert da.rio.crs == root["band_data"].rio.crs
        expected = root["band_data"].rio.transform() * root["band_data"].rio.transform().scale(f)
        assert da.rio.transform().almost_equals(expected)
        assert tuple(entry["spatial:transform"]) == pytest.approx(expected.to_gdal())
        valid = previous["mask"].values > 0 if masked else None
        np.testing.assert_array_equal(da.values, block_means(previous["band_data"].values, valid))
        if masked:
            assert (level["mask"].values == 0).any() and (level["mask"].values == 255).any()
        previous = level


def test_a_store_cut_while_its_metadata_is_written_is_never_at_its_name(tmp_path, ragged_scene, monkeypatch):
    """The store is made beside its name and renamed once synced: a run stopped while it wrote a
    level's arrays left one that opened with the right data arrays, so a resume kept it - a
    level without its coordinates, under an output that exited 0."""
    import errno

    upscale_scene([ragged_scene], tmp_path / "reference.zarr", bicubic_cfg())
    real = geosr.zarr_output.ZarrWriter._write_level

    def cut(self, group, f):
        real(self, group, f)
        if f == max(self._factors):  # the last level's data array is there, its coordinates not yet
            raise OSError(errno.ENOSPC, "no space left on device")

    monkeypatch.setattr(geosr.zarr_output.ZarrWriter, "_write_level", cut)
    # a SIGKILL, not a failure the run settles: its work folder stays, with no cell finished
    monkeypatch.setattr(geosr.journal.WorkFolder, "remove", lambda self: None)
    with pytest.raises(WriteError):
        upscale_scene([ragged_scene], tmp_path / "out.zarr", bicubic_cfg())
    (work,) = tmp_path.glob(".out.zarr.geosr-run-*")
    assert not (work / "out.zarr").exists() and (work / "out.zarr.new").is_dir()
    monkeypatch.undo()
    upscale_scene([ragged_scene], tmp_path / "out.zarr", bicubic_cfg(resume=True))
    files = sorted(p.relative_to(tmp_path / "reference.zarr") for p in (tmp_path / "reference.zarr").rglob("*")
                   if p.is_file() and p.name != ".zmetadata")
    assert [p.relative_to(tmp_path / "out.zarr") for p in sorted((tmp_path / "out.zarr").rglob("*"))
            if p.is_file() and p.name != ".zmetadata"] == files
    for name in files:
        assert (tmp_path / "out.zarr" / name).read_bytes() == (tmp_path / "reference.zarr" / name).read_bytes(), name


def test_kill_and_resume_with_early_commits_gives_the_same_store(tmp_path, ragged_scene, monkeypatch):
    """Chunks start from early commits (the last cell of a chunk commits the journal; no tick
    comes during the run) and overview chunks over several tasks' chunks run after those tasks:
    stopped half way and resumed, every chunk file of every level is the uninterrupted run's."""
    monkeypatch.setattr(geosr.zarr_output, "ZARR_GROUP", 512)  # one task per chunk: overviews over several
    upscale_scene([ragged_scene], tmp_path / "reference.zarr", bicubic_cfg())
    monkeypatch.setattr(geosr.journal, "COMMIT_SECONDS", 3600.0)
    real_rows = disk_full_after_commits(monkeypatch, tmp_path, "out.zarr", commits=2)
    with pytest.raises(WriteError):
        upscale_scene([ragged_scene], tmp_path / "out.zarr", bicubic_cfg())
    (work,) = tmp_path.glob(".out.zarr.geosr-run-*")
    assert geosr.journal.RunJournal.load(geosr.journal.WorkFolder(work)).records
    monkeypatch.setattr(WorkRaster, "_write_rows", real_rows)
    report = upscale_scene([ragged_scene], tmp_path / "out.zarr", bicubic_cfg(resume=True))
    assert report.tiles_resumed > 0
    reference = sorted(p.relative_to(tmp_path / "reference.zarr")
                       for p in (tmp_path / "reference.zarr").rglob("*") if p.parent.name in ("band_data", "mask")
                       and not p.name.startswith("."))
    assert any(len(p.parts) > 2 for p in reference)  # overview levels too
    for name in reference:
        assert (tmp_path / "out.zarr" / name).read_bytes() == (tmp_path / "reference.zarr" / name).read_bytes(), name


def test_overview_chunks_over_several_tasks_run_after_them_without_a_round_trip(tmp_path, ragged_scene, monkeypatch):
    """An overview chunk whose chunks below are in tasks not collected yet is submitted with
    them, as a task that dask runs after those tasks; the store is the same."""
    monkeypatch.setattr(geosr.zarr_output, "ZARR_GROUP", 512)
    upscale_scene([ragged_scene], tmp_path / "reference.zarr", bicubic_cfg())
    afters: list[int] = []
    real_submit = geosr.zarr_output.ZarrWriter._submit_job

    def noted_submit(self, chunks, overviews, after=()):
        afters.append(len(after))
        return real_submit(self, chunks, overviews, after)

    monkeypatch.setattr(geosr.zarr_output.ZarrWriter, "_submit_job", noted_submit)
    upscale_scene([ragged_scene], tmp_path / "out.zarr", bicubic_cfg())
    assert max(afters) > 0
    for chunk in sorted((tmp_path / "reference.zarr").rglob("band_data/*")):
        if not chunk.name.startswith("."):
            name = chunk.relative_to(tmp_path / "reference.zarr")
            assert (tmp_path / "out.zarr" / name).read_bytes() == chunk.read_bytes(), name


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, np.int32])
def test_halving_integers_in_integers_gives_the_rounded_float_means(dtype):
    """halve's integer path (every block of four valid pixels: (s + 2) >> 2) gives what the
    float mean rounded half up gives, masked or with a nodata value that no pixel holds, and
    the general path keeps blocks with invalid pixels."""
    from geosr.zarr_overviews import halve

    rng = np.random.default_rng(3)
    info = np.iinfo(dtype)
    for valid_kind, nodata in [("none", None), ("none", -9999.0), ("none", float("nan")), ("all", None),
                               ("some", None), ("none", 0.0)]:
        data = rng.integers(info.min, info.max, (3, 64, 32), dtype=dtype, endpoint=True)
        data[:, :2, :2] = 0  # a nodata of 0: one block with no valid pixel in every band
        valid = {"none": None, "all": np.ones((64, 32), bool), "some": rng.random((64, 32)) > 0.3}[valid_kind]
        values = data.astype(np.float64).reshape(3, 32, 2, 16, 2)
        if valid is not None:
            weight = np.broadcast_to(valid.reshape(1, 32, 2, 16, 2), values.shape).astype(np.float64)
        elif nodata is not None and not np.isnan(nodata):
            weight = (values != nodata).astype(np.float64)
        else:
            weight = np.ones_like(values)
        counts = weight.sum(axis=(2, 4))
        with np.errstate(invalid="ignore", divide="ignore"):
            expected = np.floor((values * weight).sum(axis=(2, 4)) / counts + 0.5)
        expected[counts == 0] = nodata if valid is None and nodata is not None else 0
        if valid is None and nodata is not None:  # a mean of valid pixels on nodata moves off it
            expected[(counts > 0) & (expected == nodata)] = nodata + (-1 if nodata >= info.max else 1)
        out, out_valid = halve(data, valid, nodata)
        assert out.dtype == dtype
        assert np.array_equal(out, expected.astype(dtype)), (valid_kind, nodata)
        if valid is not None:
            assert np.array_equal(out_valid, counts[0] > 0)


@pytest.mark.parametrize("side", [2, 3], ids=["whole blocks", "odd edge"])
def test_an_overview_mean_of_valid_pixels_never_lands_on_nodata(side):
    """Found by review: int16 {-1, 1, -1, 1} with nodata 0 averaged to 0, a hole in the level."""
    from geosr.zarr_overviews import halve

    data = np.array([[[-1, 1, 5], [1, -1, 5], [5, 5, 5]]], np.int16)[:, :side, :side]
    out, _ = halve(data, None, 0.0)
    assert out[0, 0, 0] != 0 and abs(int(out[0, 0, 0])) == 1
    floats = data.astype(np.float32) * 0.5
    out, _ = halve(floats, None, 0.0)
    assert out[0, 0, 0] != 0


def test_a_nodata_no_pixel_can_hold_moves_no_pixel():
    """-9999 declared on a uint8 band casts to 241: valid pixels of 241 were moved to 242."""
    from geosr.cell_render import avoid_nodata

    values = np.array([[[241, 0, 255]]], np.uint8)
    avoid_nodata(values, np.ones_like(values, bool), -9999.0)
    avoid_nodata(values, np.ones_like(values, bool), 0.5)
    assert values.tolist() == [[[241, 0, 255]]]
    avoid_nodata(values, np.ones_like(values, bool), 0.0)  # one it can hold: moved off
    assert values.tolist() == [[[241, 1, 255]]]


def test_overwrite_refuses_a_zarr_folder_geosr_did_not_write_and_leaves_it_alone(tmp_path):
    src = uint8_scene(tmp_path / "in.tif", 24, 40)
    store = tmp_path / "z.zarr"
    (store / "band_data").mkdir(parents=True)
    (store / "keep.txt").write_text("mine")
    (store / ".zattrs").write_text('{"title": "somebody else\'s store"}')
    before = file_tree(store)
    result = upscale_bicubic_cli(src, store, "--overwrite")
    assert result.exit_code == 4, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert str(store) in result.output and "not a Zarr store geosr wrote" in result.output
    assert file_tree(store) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "z.zarr"]  # no lock, no work folder
    (tmp_path / "f.zarr").write_text("a file")
    result = upscale_bicubic_cli(src, tmp_path / "f.zarr", "--overwrite")
    assert result.exit_code == 4 and "is a file" in result.output
    assert (tmp_path / "f.zarr").read_text() == "a file"


def test_overwrite_replaces_geosr_own_store_but_not_with_a_foreign_entry_in_it(tmp_path):
    src = uint8_scene(tmp_path / "in.tif", 24, 40)
    other = uint8_scene(tmp_path / "other.tif", 24, 40, seed=1)
    store = tmp_path / "out.zarr"
    assert upscale_bicubic_cli(src, store).exit_code == 0
    first = file_tree(store)
    assert upscale_bicubic_cli(other, store, "--overwrite").exit_code == 0  # geosr's own store: replaced
    second = file_tree(store)
    assert set(second) == set(first) and second["band_data/0.0.0"] != first["band_data/0.0.0"]

    for extra, named in (("ndvi/.zarray", "ndvi"), ("band_data/notes.txt", "band_data/notes.txt"),
                         ("2/extra/0", "2/extra")):  # a variable or a file of the user's
        (store / extra).parent.mkdir(parents=True, exist_ok=True)
        (store / extra).write_text("mine")
        before = file_tree(store)
        result = upscale_bicubic_cli(src, store, "--overwrite")
        assert result.exit_code == 4, result.output
        assert f"holds {named}," in result.output and str(store) in result.output
        assert file_tree(store) == before
        (store / extra).unlink()
        if (store / extra).parent.name in ("ndvi", "extra"):
            (store / extra).parent.rmdir()


def test_an_empty_zarr_folder_is_used_with_or_without_overwrite(tmp_path):
    src = uint8_scene(tmp_path / "in.tif", 24, 40)
    for name, extra in (("a.zarr", ()), ("b.zarr", ("--overwrite",))):
        (tmp_path / name).mkdir()
        assert upscale_bicubic_cli(src, tmp_path / name, *extra).exit_code == 0
        assert (tmp_path / name / ".zmetadata").exists()


def test_a_folder_that_cannot_be_listed_is_not_taken_as_checked(tmp_path, monkeypatch):
    """--overwrite checks every entry under an output folder; a subfolder os.walk cannot list (no
    permission) would have been skipped, unchecked, and deleted with the rest."""
    import os

    from geosr import replaceable
    from geosr.errors import OutputError

    hidden = tmp_path / "store.zarr" / "band_data"
    hidden.mkdir(parents=True)
    scandir = os.scandir

    def no_permission(path="."):
        if os.fspath(path) == str(hidden):
            raise PermissionError(13, "Permission denied", str(hidden))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", no_permission)
    with pytest.raises(OutputError, match="band_data cannot be listed"):
        list(replaceable._entries(tmp_path / "store.zarr"))


def test_a_palette_band_keeps_its_colour_table_and_band_tags_in_the_store(tmp_path):
    """Found by review: the store said colorinterp "palette" but held no colour table, and dropped
    each band's own tags (wavelength, name) the COG keeps."""
    data = np.random.default_rng(0).integers(0, 4, (1, 40, 48)).astype(np.uint8)
    src = write_raster(tmp_path / "classes.tif", data)
    table = {0: (0, 0, 0, 255), 1: (255, 0, 0, 255), 2: (0, 255, 0, 255), 3: (0, 0, 255, 255)}
    with rasterio.open(src, "r+") as ds:
        ds.write_colormap(1, table)
        ds.update_tags(1, WAVELENGTH="665", BANDNAME="B4")
    upscale_scene([src], tmp_path / "out.zarr", bicubic_cfg(model="nearest"))
    attrs = open_store(tmp_path / "out.zarr")["band_data"].attrs
    assert attrs["colorinterp"] == ["palette"]
    (stored,) = attrs["colormaps"]
    assert {i: tuple(rgba) for i, *rgba in stored if i < 4} == table
    assert attrs["band_tags"][0][""]["WAVELENGTH"] == "665" and attrs["band_tags"][0][""]["BANDNAME"] == "B4"
