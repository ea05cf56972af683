"""`geosr caption` and --caption-every through the engine."""

import json

import pytest
from click.testing import CliRunner

from geosr.cli import cli
from geosr.config import RunConfig, TileSpec
from geosr.engine import caption_scene, upscale_scene
from geosr.scene_plan import NothingToUpscaleWarning


def test_caption_command_writes_geojson(tmp_path, data_dir):
    out = tmp_path / "c.geojson"
    res = CliRunner().invoke(cli, ["caption", str(data_dir / "neon_harv_plot.tif"), "--out", str(out), "--tile", "128", "-q"])
    assert res.exit_code == 0, res.output
    fc = json.loads(out.read_text())
    assert len(fc["features"]) == 16
    assert all("blur" in f["properties"]["caption"] for f in fc["features"])
    assert fc["crs"]["properties"]["name"].endswith("32618")


def test_a_stopped_caption_run_ends_in_one_line_and_leaves_nothing(tmp_path, data_dir, monkeypatch):
    """QGIS's Cancel sends SIGTERM: `geosr caption` had no handler, so Python died where it
    stood and left its work folder (and Ctrl-C printed a traceback)."""
    import geosr.engine
    from geosr.errors import StopRequested

    def stopped(*args, **kwargs):
        raise StopRequested("SIGTERM")

    monkeypatch.setattr(geosr.engine, "caption_jobs", stopped)
    out = tmp_path / "c.geojson"
    res = CliRunner().invoke(cli, ["caption", str(data_dir / "neon_harv_plot.tif"), "--out", str(out), "-q"])
    assert res.exit_code == 8 and [line for line in res.stderr.splitlines() if line.strip()] == [
        "Error: stopped before any work was kept"], res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_caption_runs_on_local_worker_processes(tmp_path, data_dir):
    out = tmp_path / "c.geojson"
    res = CliRunner().invoke(cli, ["caption", str(data_dir / "neon_harv_plot.tif"), "--out", str(out), "--tile", "128",
                                   "--local-workers", "1", "-q"])
    assert res.exit_code == 0, res.output
    assert len(json.loads(out.read_text())["features"]) == 16


@pytest.mark.parametrize("every,distinct_max", [("scene", 1), ("window:2", 16)])
def test_caption_every_shares_captions(tmp_path, data_dir, every, distinct_max):
    cfg = RunConfig(captioner="degradation", caption_every=every, tiles=TileSpec(64, 8), progress=False)
    fc = caption_scene([data_dir / "neon_harv_plot.tif"], tmp_path / "c.geojson", cfg)
    texts = [f["properties"]["caption"] for f in fc["features"]]
    assert len(texts) == 49
    assert 1 <= len(set(texts)) <= distinct_max


def test_upscale_records_shared_caption(tmp_path, data_dir):
    cfg = RunConfig(scale=2, model="bicubic", captioner="fixed:hazy", caption_every="scene", tiles=TileSpec(128, 8), progress=False)
    upscale_scene([data_dir / "rgbn_suba.tif"], tmp_path / "o.tif", cfg)
    fc = json.loads((tmp_path / "o.captions.geojson").read_text())
    assert {f["properties"]["caption"] for f in fc["features"]} == {"hazy"}


def test_bad_caption_every_is_rejected(tmp_path, data_dir):
    res = CliRunner().invoke(cli, ["caption", str(data_dir / "rgbn_suba.tif"), "--out", str(tmp_path / "c.geojson"), "--caption-every", "window:x"])
    assert res.exit_code != 0 and "window:N" in res.output
    assert not (tmp_path / "c.geojson").exists()


@pytest.mark.parametrize("every", ["tile", "scene", "window:2"])
def test_all_nodata_scene_has_nothing_to_caption(tmp_path, every):
    import numpy as np
    import rasterio

    from tests.rasters import write_raster

    src = write_raster(tmp_path / "in.tif", np.zeros((3, 40, 40), "uint8"), nodata=0)
    cfg = RunConfig(scale=2, model="bicubic", captioner="degradation", caption_every=every, tiles=TileSpec(16, 4), progress=False)
    with pytest.warns(NothingToUpscaleWarning, match="every pixel is no-data"):  # exit 0, but said
        report = upscale_scene([src], tmp_path / "o.tif", cfg)
    assert report.tiles_processed == 0
    with rasterio.open(tmp_path / "o.tif") as out:
        assert (out.read() == 0).all() and not out.dataset_mask().any()
    assert json.loads((tmp_path / "o.captions.geojson").read_text())["features"] == []


def test_caption_never_replaces_a_file_the_run_reads(tmp_path, data_dir):
    """A VRT's source is read too: ``geosr caption mosaic.vrt --out piece.tif --overwrite`` replaced
    the piece with GeoJSON (only the named inputs and the AOI were checked), exit 0."""
    import rasterio.shutil

    piece = tmp_path / "piece.tif"
    piece.write_bytes((data_dir / "neon_harv_plot.tif").read_bytes())
    rasterio.shutil.copy(piece, tmp_path / "mosaic.vrt", driver="VRT")
    before = piece.read_bytes()
    res = CliRunner().invoke(cli, ["caption", str(tmp_path / "mosaic.vrt"), "--out", str(piece), "--overwrite", "-q"])
    assert res.exit_code == 4, res.output  # an output error
    assert "piece.tif is also an input" in res.output and piece.read_bytes() == before


def test_caption_help_lists_its_own_exit_statuses():
    """Found by review: caption's --help showed upscale's table (exit 7, "rerun with --resume"),
    while caption has no --resume and its stops keep nothing."""
    text = CliRunner().invoke(cli, ["caption", "--help"]).output
    assert "--resume" not in text.split("Exit status:")[1] and "\n    7  " not in text
    assert "8  stopped (SIGTERM/SIGINT, lost worker): nothing written" in text
