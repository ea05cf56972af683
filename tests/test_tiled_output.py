"""Tiled output (issue 31): COG blocks + a VRT + STAC, equal to the single COG, resumable per block."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.warp
import rasterio.windows
from click.testing import CliRunner

import geosr.errors
import geosr.journal
import geosr.resumable
import geosr.tiled_output
from geosr.cli import cli
from geosr.engine import upscale_scene
from geosr.errors import WriteError
from geosr.validation import validate_output
from geosr.writer import WorkRaster
from tests.conftest import (RAGGED_HEIGHT, RAGGED_WIDTH, bicubic_cfg, disk_full_after_commits,
                            disk_full_once_a_block_is_journalled, file_tree,
                            upscale_bicubic_cli)
from tests.rasters import uint8_scene

SPLIT = 512


def read_all(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    with rasterio.open(path) as ds:
        return ds.read(), ds.read_masks(), dict(transform=ds.transform, crs=ds.crs, bounds=ds.bounds,
                                                 nodata=ds.nodata, tags=ds.tags(), colorinterp=ds.colorinterp,
                                                 descriptions=ds.descriptions)


@pytest.mark.parametrize("masked,batch_size", [(False, 1), (True, 1), (False, 4)])
def test_the_mosaic_equals_the_single_cog(tmp_path, masked, batch_size):
    # batch_size 4: the run ends on single-tile jobs (the single COG's run does not)
    mask = np.ones((RAGGED_HEIGHT, RAGGED_WIDTH), bool)
    mask[40:90, 100:260] = False
    src = uint8_scene(tmp_path / "in.tif", RAGGED_HEIGHT, RAGGED_WIDTH, mask=mask if masked else None)
    upscale_scene([src], tmp_path / "single.tif", bicubic_cfg())
    report = upscale_scene([src], tmp_path / "out", bicubic_cfg(split=SPLIT, batch_size=batch_size))

    out = tmp_path / "out"
    assert report.output == out and report.captions == out / "captions.geojson"
    single, mosaic = read_all(tmp_path / "single.tif"), read_all(out / "mosaic.vrt")
    np.testing.assert_array_equal(mosaic[0], single[0])
    np.testing.assert_array_equal(mosaic[1], single[1])
    assert mosaic[2] == single[2]  # transform, CRS, bounds, nodata, tags, band metadata
    blocks = sorted(out.glob("block_*.tif"))
    assert [b.stem for b in blocks] == [f"block_00{r}_00{c}" for r in range(2) for c in range(3)]
    for block in blocks:
        result = validate_output(block)
        assert result.ok, (block.name, result.errors)
    with rasterio.open(blocks[-1]) as ds:  # the ragged corner block, with overviews and statistics
        assert (ds.width, ds.height) == (1034 - 1024, 602 - 512)
        assert ds.tags(1).get("STATISTICS_MEAN") is not None
    assert not list(tmp_path.glob(".out.geosr-*"))  # the work folder and the lock are gone


def test_stac_items_place_their_blocks(tmp_path, ragged_scene):
    upscale_scene([ragged_scene], tmp_path / "out", bicubic_cfg(split=SPLIT))
    out = tmp_path / "out"
    collection = json.loads((out / "collection.json").read_text())
    items = [link["href"] for link in collection["links"] if link["rel"] == "item"]
    assert len(items) == 6
    with rasterio.open(tmp_path / "out" / "mosaic.vrt") as ds:
        crs_epsg = ds.crs.to_epsg()
    for href in items:
        item = json.loads((out / href).read_text())
        props = item["properties"]
        block = out / item["assets"]["data"]["href"]
        with rasterio.open(block) as ds:
            assert props["proj:transform"] == list(ds.transform)[:6]
            assert props["proj:shape"] == [ds.height, ds.width]
            lon, lat = rasterio.warp.transform(ds.crs, "EPSG:4326", [ds.bounds.left, ds.bounds.right],
                                               [ds.bounds.bottom, ds.bounds.top])
        assert props["proj:epsg"] == crs_epsg
        west, south, east, north = item["bbox"]
        assert west <= min(lon) + 1e-9 and east >= max(lon) - 1e-9 and south <= min(lat) + 1e-9 and north >= max(lat) - 1e-9
        assert props["geosr:model"] == "bicubic" and props["geosr:scale"] == "2"
        assert item["assets"]["data"]["raster:bands"][0]["data_type"] == "uint8"
        assert [b.get("common_name") for b in item["assets"]["data"]["eo:bands"]] == ["red", "green", "blue"]
    bbox = collection["extent"]["spatial"]["bbox"][0]
    assert bbox[0] < bbox[2] and bbox[1] < bbox[3]


def test_a_vrt_output_puts_the_blocks_beside_it(tmp_path, ragged_scene):
    upscale_scene([ragged_scene], tmp_path / "single.tif", bicubic_cfg())
    result = CliRunner().invoke(cli, ["upscale", str(ragged_scene), str(tmp_path / "big.vrt"), "--scale", "2", "--model", "bicubic",
                                      "--captioner", "none", "--tile", "32", "--overlap", "8", "-q"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "big").iterdir()) == [  # 1034 x 602 px: blocks of 1024
        "block_000_000.json", "block_000_000.tif", "block_000_001.json", "block_000_001.tif", "collection.json"]
    assert (tmp_path / "big.captions.geojson").exists()
    np.testing.assert_array_equal(read_all(tmp_path / "big.vrt")[0], read_all(tmp_path / "single.tif")[0])


@pytest.mark.parametrize("width,height,options,side", [
    (8192, 8192, None, 1024),  # 67 MP: 64 blocks
    (32768, 32768, None, 4096),  # 1 GP: 64 blocks, not 4 of 16384
    (100_000, 100_000, None, 8192),
    (140_000, 140_000, None, 16384),
    (400_000, 400_000, None, 16384),  # never above 16384
    (1034, 602, None, 1024),  # fewer than 64 blocks at any side: the smallest
    (65536, 8192, None, 2048),  # 32 x 4 blocks: a strip counts its blocks, not its side
    (8192, 8192, {"blocksize": "2048"}, 2048),  # a multiple of the COG's own blocks
    (8192, 8192, {"blocksize": "768"}, 1536),  # ... also when they do not divide 1024
])
def test_the_default_block_side_follows_the_output_size(width, height, options, side):
    assert geosr.tiled_output.auto_block_side(width, height, options) == side


def test_a_folder_output_without_split_gets_the_size_based_blocks(tmp_path, ragged_scene):
    report = upscale_scene([ragged_scene], tmp_path / "out/", bicubic_cfg(split=geosr.tiled_output.AUTO_SPLIT))
    assert report.output == tmp_path / "out"
    # 1034 x 602 output pixels: blocks of 1024, the smallest side chosen
    assert sorted(p.stem for p in (tmp_path / "out").glob("block_*.tif")) == ["block_000_000", "block_000_001"]
    journal_identity = geosr.resumable.run_identity([str(ragged_scene)], bicubic_cfg(split=0))
    assert journal_identity["--split"] == "auto"  # a resumed run chooses the same side from the same scene


def test_a_full_disk_while_writing_the_index_names_the_file_and_leaves_no_output(tmp_path, ragged_scene, monkeypatch):
    import errno

    real = Path.write_text

    def write_text(self, *args, **kwargs):
        if self.name == "collection.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    with pytest.raises(WriteError, match="no space left on the device of .* while writing collection.json"):
        upscale_scene([ragged_scene], tmp_path / "out", bicubic_cfg(split=SPLIT))
    assert not (tmp_path / "out").exists()  # written before the first tile: nothing of the output yet


@pytest.mark.parametrize("value", ["abc", "0", "1000", "-512", "512.0"])
def test_bad_split_values_are_refused_in_one_line(tmp_path, ragged_scene, value):
    result = CliRunner().invoke(cli, ["upscale", str(ragged_scene), str(tmp_path / "out"), "--scale", "2", "--model", "bicubic",
                                      "--split", value])
    assert result.exit_code == 3, result.output
    assert len(result.output.strip().splitlines()) == 1 and "--split" in result.output
    assert not (tmp_path / "out").exists()


def test_split_with_a_geotiff_output_is_refused(tmp_path, ragged_scene):
    result = CliRunner().invoke(cli, ["upscale", str(ragged_scene), str(tmp_path / "out.tif"), "--split", "512"])
    assert result.exit_code == 3 and "folder" in result.output


def test_a_stopped_run_resumes_without_redoing_finished_blocks(tmp_path, ragged_scene, monkeypatch):
    upscale_scene([ragged_scene], tmp_path / "reference", bicubic_cfg(split=SPLIT))
    monkeypatch.setattr(geosr.journal, "COMMIT_SECONDS", 0.0)  # commit after each batch: blocks start early
    made: list[str] = []
    real_translate = geosr.tiled_output.translate_to_cog

    def counted_translate(vrt, *args):  # looked up by the task when it runs, here (threads)
        made.append(Path(vrt).stem)
        return real_translate(vrt, *args)

    monkeypatch.setattr(geosr.tiled_output, "translate_to_cog", counted_translate)
    real_rows = disk_full_once_a_block_is_journalled(monkeypatch, tmp_path, "out")
    with pytest.raises(WriteError):
        upscale_scene([ragged_scene], tmp_path / "out", bicubic_cfg(split=SPLIT))
    assert not (tmp_path / "out").exists()  # nothing that looks like an output
    (work,) = tmp_path.glob(".out.geosr-run-*")
    finished = geosr.journal.RunJournal.load(geosr.journal.WorkFolder(work)).blocks
    assert finished and len(finished) < 6
    stamps = {name: os.stat(work / geosr.tiled_output.STAGED / "out" / f"{name}.tif").st_mtime_ns for name in finished}

    monkeypatch.setattr(WorkRaster, "_write_rows", real_rows)
    made.clear()
    report = upscale_scene([ragged_scene], tmp_path / "out", bicubic_cfg(split=SPLIT, resume=True))
    assert report.tiles_resumed > 0
    assert not set(made) & set(finished) and len(made) == 6 - len(finished)
    for name, stamp in stamps.items():
        assert os.stat(tmp_path / "out" / f"{name}.tif").st_mtime_ns == stamp  # the very file, not rewritten
    for block in sorted((tmp_path / "reference").glob("*.tif")):
        assert (tmp_path / "out" / block.name).read_bytes() == block.read_bytes(), block.name
    assert (tmp_path / "out" / "mosaic.vrt").read_bytes() == (tmp_path / "reference" / "mosaic.vrt").read_bytes()


def test_a_changed_block_file_is_made_again(tmp_path, ragged_scene, monkeypatch):
    """A journalled block whose file no longer holds its bytes is not trusted."""
    monkeypatch.setattr(geosr.journal, "COMMIT_SECONDS", 0.0)
    real_rows = disk_full_once_a_block_is_journalled(monkeypatch, tmp_path, "out")
    with pytest.raises(WriteError):
        upscale_scene([ragged_scene], tmp_path / "out", bicubic_cfg(split=SPLIT))
    (work,) = tmp_path.glob(".out.geosr-run-*")
    name = next(iter(geosr.journal.RunJournal.load(geosr.journal.WorkFolder(work)).blocks))
    damaged = work / geosr.tiled_output.STAGED / "out" / f"{name}.tif"
    with open(damaged, "r+b") as f:
        f.seek(4000)
        f.write(b"\0" * 64)
    monkeypatch.setattr(WorkRaster, "_write_rows", real_rows)
    with pytest.warns(geosr.resumable.StoppedRunWarning, match="missing or changed"):
        upscale_scene([ragged_scene], tmp_path / "out", bicubic_cfg(split=SPLIT, resume=True))
    upscale_scene([ragged_scene], tmp_path / "reference", bicubic_cfg(split=SPLIT))
    assert (tmp_path / "out" / f"{name}.tif").read_bytes() == (tmp_path / "reference" / f"{name}.tif").read_bytes()


def test_a_block_is_written_once_its_cells_are_recorded_not_at_the_journal_tick(tmp_path, ragged_scene, monkeypatch):
    """The last cell of a block asks the journal to commit at once: with a tick that never
    comes during the run, blocks are still submitted while tiles are left (from durable cells)."""
    monkeypatch.setattr(geosr.journal, "COMMIT_SECONDS", 3600.0)
    submitted: list[tuple[int, int]] = []  # (durable cells, all cells) when each block was submitted
    real_submit = geosr.tiled_output.BlockWriter._submit

    def noted_submit(self, key):
        durable, pending = len(self.journal.records), self.journal._new_cells
        submitted.append((durable, durable + len(pending)))
        _, block = self.blocks[key[0] * self._columns + key[1]]
        for cell in pending:  # a block's task reads durable cells only
            assert not rasterio.windows.intersect(block, rasterio.windows.Window(*cell[:4]))
        return real_submit(self, key)

    monkeypatch.setattr(geosr.tiled_output.BlockWriter, "_submit", noted_submit)
    upscale_scene([ragged_scene], tmp_path / "out", bicubic_cfg(split=SPLIT))
    total = submitted[-1][0]  # the last block waits for the last cells
    assert len(submitted) == 6
    assert sum(durable < total for durable, _ in submitted) >= 4  # all but the last row's last blocks


def test_kill_and_resume_with_early_commits_gives_the_same_blocks(tmp_path, ragged_scene, monkeypatch):
    """Stopped after blocks were started from early commits (no journal tick), a resumed run
    writes the same bytes as an uninterrupted one."""
    upscale_scene([ragged_scene], tmp_path / "reference", bicubic_cfg(split=SPLIT))
    monkeypatch.setattr(geosr.journal, "COMMIT_SECONDS", 3600.0)
    real_rows = disk_full_after_commits(monkeypatch, tmp_path, "out", commits=2)
    with pytest.raises(WriteError):
        upscale_scene([ragged_scene], tmp_path / "out", bicubic_cfg(split=SPLIT))
    (work,) = tmp_path.glob(".out.geosr-run-*")
    journal = geosr.journal.RunJournal.load(geosr.journal.WorkFolder(work))
    assert journal.records  # cells made durable by the blocks' early commits
    monkeypatch.setattr(WorkRaster, "_write_rows", real_rows)
    report = upscale_scene([ragged_scene], tmp_path / "out", bicubic_cfg(split=SPLIT, resume=True))
    assert report.tiles_resumed > 0
    for block in sorted((tmp_path / "reference").glob("*.tif")):
        assert (tmp_path / "out" / block.name).read_bytes() == block.read_bytes(), block.name


@pytest.mark.parametrize(("seconds_per_cell", "tick", "early"), [(1.0, 1.0, 1), (0.1, 1.0, 6), (1.0, 3600.0, 16)])
def test_a_block_commits_early_only_near_the_end_of_the_cells(monkeypatch, seconds_per_cell, tick, early):
    """The last cell of a block asks for an early commit only when the cells left would all be
    recorded within EARLY_COMMIT_TICKS journal ticks at the rate so far; earlier blocks wait for
    the tick, which comes before the last tile anyway (a commit and a task per block cost Zarr
    runs more than the tail they saved)."""
    import geosr.block_tasks as block_tasks

    class Journal:
        blocks: dict = {}

        def __init__(self):
            self.on_commit, self.on_record, self.requests = [], [], []

        def request_commit(self):
            self.requests.append(len(writer._cells_left))

    class Raster:
        def sync(self):
            pass

    class Writer(block_tasks.BlockTaskWriter):
        folder = Path(".")

        def _blocks_to_write(self):
            return [(r, c) for r in range(4) for c in range(4)]

        def _submit_blocks(self, keys):
            return []

    class Clock:
        now = 100.0

        def monotonic(self):
            return self.now

    clock = Clock()
    monkeypatch.setattr(block_tasks, "time", clock)
    monkeypatch.setattr(geosr.journal, "COMMIT_SECONDS", tick)
    journal = Journal()
    cells = [rasterio.windows.Window(x, y, 1, 1) for y in range(8) for x in range(8)]  # 4 cells a block of 2 px
    writer = Writer(None, Raster(), journal, 2, cells)
    for r in range(4):
        for c in range(4):
            for y in (2 * r, 2 * r + 1):
                for x in (2 * c, 2 * c + 1):
                    clock.now += seconds_per_cell
                    writer._recorded(geosr.journal.CellRecord(x, y, 1, 1, 0))
    assert len(journal.requests) == early
    assert journal.requests[-1] == 0  # the last block always
    assert all(left <= block_tasks.EARLY_COMMIT_TICKS * tick / seconds_per_cell for left in journal.requests)


@pytest.mark.parametrize("how", ["folder/", "folder.vrt"])
def test_overwrite_refuses_a_folder_geosr_did_not_write_and_leaves_it_alone(tmp_path, how):
    src = uint8_scene(tmp_path / "in.tif", 24, 40)
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "keep.txt").write_text("mine")
    (folder / "sub" / "data.bin").write_bytes(b"\0" * 10)
    before = file_tree(folder)
    result = upscale_bicubic_cli(src, f"{tmp_path}/{how}", "--overwrite")
    assert result.exit_code == 4, result.output
    message = result.output.strip()
    assert len(message.splitlines()) == 1
    assert str(folder) in message and "not a tiled output geosr wrote" in message
    assert file_tree(folder) == before and (folder / "sub").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "in.tif"]  # no lock, no work folder


def test_overwrite_replaces_geosr_own_tiled_output_but_not_with_a_foreign_file_in_it(tmp_path):
    src = uint8_scene(tmp_path / "in.tif", 24, 40)
    other = uint8_scene(tmp_path / "other.tif", 24, 40, seed=1)
    out = tmp_path / "out"
    assert upscale_bicubic_cli(src, f"{out}/").exit_code == 0
    first = file_tree(out)
    (out / "block_000_000.tif.aux.xml").write_text("<PAMDataset/>")  # GDAL's, from opening a block: geosr's to drop
    assert upscale_bicubic_cli(other, f"{out}/", "--overwrite").exit_code == 0  # geosr's own output: replaced
    second = file_tree(out)
    assert set(second) == set(first) and second["block_000_000.tif"] != first["block_000_000.tif"]

    (out / "notes.txt").write_text("mine")  # geosr's output, with a file of the user's in it
    before = file_tree(out)
    result = upscale_bicubic_cli(src, f"{out}/", "--overwrite")
    assert result.exit_code == 4, result.output
    assert "notes.txt" in result.output and str(out) in result.output
    assert file_tree(out) == before

    (out / "notes.txt").unlink()
    (out / "collection.json").write_text('{"type": "Collection", "description": "my own STAC"}')
    result = upscale_bicubic_cli(src, f"{out}/", "--overwrite")
    assert result.exit_code == 4 and "collection.json" in result.output


def test_an_empty_folder_is_used_with_or_without_overwrite(tmp_path):
    src = uint8_scene(tmp_path / "in.tif", 24, 40)
    for name, extra in (("a", ()), ("b", ("--overwrite",))):
        (tmp_path / name).mkdir()
        assert upscale_bicubic_cli(src, f"{tmp_path / name}/", *extra).exit_code == 0
        assert (tmp_path / name / "mosaic.vrt").exists()


def test_a_link_or_a_file_in_the_place_of_the_folder_is_refused(tmp_path):
    src = uint8_scene(tmp_path / "in.tif", 24, 40)
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "keep.txt").write_text("mine")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    result = upscale_bicubic_cli(src, f"{tmp_path / 'link'}.vrt", "--overwrite")
    assert result.exit_code == 4 and "symbolic link" in result.output
    assert (tmp_path / "real" / "keep.txt").read_text() == "mine"
    (tmp_path / "big").mkdir()
    (tmp_path / "big.vrt").mkdir()  # a folder where the VRT goes: refused before the work, not at the end
    result = upscale_bicubic_cli(src, str(tmp_path / "big.vrt"), "--overwrite")
    assert result.exit_code == 4 and "big.vrt is a folder" in result.output


def test_a_folder_changed_during_the_run_is_not_replaced(tmp_path, monkeypatch):
    src = uint8_scene(tmp_path / "in.tif", 24, 40)
    out = tmp_path / "out"
    out.mkdir()
    real_commit = geosr.tiled_output.TiledTarget.commit

    def file_arrives(self, work, moves):
        (out / "keep.txt").write_text("mine")  # written into the empty folder while the run went on
        return real_commit(self, work, moves)

    monkeypatch.setattr(geosr.tiled_output.TiledTarget, "commit", file_arrives)
    result = upscale_bicubic_cli(src, f"{out}/", "--overwrite")
    assert result.exit_code == 4 and "not a tiled output geosr wrote" in result.output
    assert "--resume" in result.output  # the finished work is kept: resumed once the folder is cleared
    assert file_tree(out) == {"keep.txt": b"mine"}


def test_a_mosaic_input_and_an_output_named_mosaic_vrt(tmp_path):
    """Found by review: a mosaic's input VRT was written as mosaic.vrt in the run's work folder, where
    a tiled output named mosaic.vrt is staged too - its index replaced the input, and the tiles read
    the output's blocks, not yet there (the run failed on a missing block file)."""
    left = uint8_scene(tmp_path / "left.tif", 200, 300, seed=1)
    with rasterio.open(left) as ds:
        east = ds.transform * rasterio.Affine.translation(300, 0)
    right = uint8_scene(tmp_path / "right.tif", 200, 300, seed=2)
    with rasterio.open(right, "r+") as ds:
        ds.transform = east
    upscale_scene([left, right], tmp_path / "single.tif", bicubic_cfg())
    (tmp_path / "res").mkdir()
    upscale_scene([left, right], tmp_path / "res" / "mosaic.vrt", bicubic_cfg(split=SPLIT))
    single, mosaic = read_all(tmp_path / "single.tif"), read_all(tmp_path / "res" / "mosaic.vrt")
    np.testing.assert_array_equal(mosaic[0], single[0])
    assert mosaic[2]["transform"] == single[2]["transform"]


@pytest.mark.parametrize("name", [".geosr-inputs", ".geosr-inputs.vrt", "blocks", "replaced", "replaced.vrt", "run.json",
                                  "journal.jsonl"])
def test_a_tiled_output_named_as_a_file_of_the_work_folder_is_written_and_resumed(tmp_path, monkeypatch, name):
    """Found by review: a tiled output was staged in the run's work folder under its own name, beside
    the work folder's own files: ``replaced/`` failed its commit after all the work (exit 1, and every
    --resume again), ``run.json/`` and ``journal.jsonl/`` failed, ``blocks/`` shared the journal's
    block records' folder, ``.geosr-inputs/`` the input's VRTs' (it was refused for that). It is built
    in a subfolder of its own now."""
    src = uint8_scene(tmp_path / "in.tif", RAGGED_HEIGHT, RAGGED_WIDTH)
    upscale_scene([src], tmp_path / "single.tif", bicubic_cfg())
    monkeypatch.setattr(geosr.journal, "COMMIT_SECONDS", 0.0)  # commit after each batch: blocks start early
    real_rows = disk_full_once_a_block_is_journalled(monkeypatch, tmp_path, name)
    with pytest.raises(WriteError):
        upscale_scene([src], tmp_path / name, bicubic_cfg(split=SPLIT))
    monkeypatch.setattr(WorkRaster, "_write_rows", real_rows)
    report = upscale_scene([src], tmp_path / name, bicubic_cfg(split=SPLIT, resume=True))
    assert report.tiles_resumed > 0
    data = tmp_path / name.removesuffix(".vrt")
    vrt = tmp_path / name if name.endswith(".vrt") else data / "mosaic.vrt"
    np.testing.assert_array_equal(read_all(vrt)[0], read_all(tmp_path / "single.tif")[0])
    assert sorted(p.name for p in data.iterdir() if not p.name.startswith("block_")) == (
        ["collection.json"] if name.endswith(".vrt") else ["captions.geojson", "collection.json", "mosaic.vrt"])
    upscale_scene([src], tmp_path / name, bicubic_cfg(split=SPLIT, overwrite=True))  # replacing it commits too
    np.testing.assert_array_equal(read_all(vrt)[0], read_all(tmp_path / "single.tif")[0])
