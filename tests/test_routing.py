"""Texture-aware routing: the measures, the decision, and routed runs end to end."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from scipy.ndimage import gaussian_filter

from geosr.benchmark import seam_score
from geosr.cli import cli
from geosr.config import RunConfig, TileSpec
from geosr.engine import upscale_scene
from geosr.errors import InputError, OutputError, OutputExistsError
from geosr.journal import CellRecord, RunJournal, WorkFolder
from geosr.routing import (CALIBRATED_THRESHOLDS, MODEL, NO_STRUCTURE, NOISE_LIMIT, TileRoute, cheap_path, measure_tiles,
                           route_tiles)
from geosr.tiling import TileGrid
from tests.rasters import NORTH_UP, texture, uint8_scene, write_raster

BICUBIC_THRESHOLD = CALIBRATED_THRESHOLDS["bicubic"]


def _tiles(*images: np.ndarray) -> torch.Tensor:
    """``[B, 3, h, w]`` in [0, 1] from ``h x w`` luminance images in DN (grey RGB)."""
    return torch.from_numpy(np.stack([np.repeat(im[None] / 255.0, 3, axis=0) for im in images]).astype(np.float32))


def _flat(noise_dn: float, side: int = 96, seed: int = 0) -> np.ndarray:
    return 120.0 + np.random.default_rng(seed).normal(0, noise_dn, (side, side)) if noise_dn else np.full((side, side), 120.0)


def test_noise_is_measured_and_not_read_as_texture():
    texture_dn, noise_dn = measure_tiles(_tiles(_flat(0.0), _flat(1.0), _flat(5.0)))
    assert noise_dn[0] < 0.05 and texture_dn[0] < 0.05
    assert noise_dn[1] == pytest.approx(1.0, rel=0.15) and noise_dn[2] == pytest.approx(5.0, rel=0.15)
    # white noise of 5 DN has a large raw gradient; the texture left after the discount is small
    assert texture_dn[2] < BICUBIC_THRESHOLD


def test_routing_measures_in_float32_while_a_bf16_model_loads_in_another_thread():
    # transformers and diffusers set torch's default dtype for the whole process while they load a
    # bf16 model: a dask worker's warm-up does that beside a task that routes its tiles
    from geosr import routing

    x = _tiles(_flat(1.0), texture(1, 96, 96, seed=1)[0] * 200)
    expected = measure_tiles(x)
    routing._noise_gradient_gain.cache_clear()
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        measured = measure_tiles(x)
    finally:
        torch.set_default_dtype(default)
        routing._noise_gradient_gain.cache_clear()
    np.testing.assert_allclose(measured, expected, rtol=1e-6)


def test_flat_clean_tiles_go_to_bicubic_and_texture_or_noise_keeps_the_model():
    ground = texture(1, 96, 96, seed=1)[0] * 200
    routes = route_tiles(_tiles(_flat(0.5), ground, _flat(NOISE_LIMIT * 3)), BICUBIC_THRESHOLD)
    assert [r.path for r in routes] == ["bicubic", MODEL, MODEL]
    assert routes[1].texture > 3 * BICUBIC_THRESHOLD
    assert route_tiles(_tiles(_flat(0.5)), BICUBIC_THRESHOLD, cheap="geosr-tiny-fast-x2")[0].path == "geosr-tiny-fast-x2"
    # flat and clean but blurred (Gaussian, 1.5 px): the cheap path does not deblur, the model keeps it
    blurred = gaussian_filter(ground, 1.5)
    faint = route_tiles(_tiles(120 + (blurred - blurred.mean()) * 0.5), 4.0)[0]
    assert NO_STRUCTURE < faint.texture < 4.0 and faint.noise < NOISE_LIMIT and faint.path == MODEL
    # ... unless there is no structure to restore at all (featureless surfaces read as blurred)
    featureless = route_tiles(_tiles(120 + (blurred - blurred.mean()) * 0.1), 4.0, cheap="fast")[0]
    assert featureless.texture < NO_STRUCTURE and featureless.path == "fast"
    # threshold 0: nothing is flat enough
    assert {r.path for r in route_tiles(_tiles(_flat(0.5)), threshold=0.0)} == {MODEL}
    with pytest.raises(InputError, match="route-threshold"):
        route_tiles(_tiles(_flat(0.5)), threshold=-1)


def test_only_valid_pixels_are_measured():
    """A tile mostly of filled no-data (flat) with a textured valid corner stays on the model."""
    img = _flat(0.0)
    corner = texture(1, 32, 32, seed=2)[0]
    img[:32, :32] = 120.0 + (corner - corner.mean()) * 60  # about 2.6 DN of texture
    valid = torch.zeros(1, 96, 96, dtype=torch.bool)
    valid[0, :32, :32] = True
    assert route_tiles(_tiles(img), BICUBIC_THRESHOLD)[0].texture < BICUBIC_THRESHOLD  # diluted by the flat fill
    routed = route_tiles(_tiles(img), BICUBIC_THRESHOLD, valid=valid)[0]
    assert routed.texture > BICUBIC_THRESHOLD and routed.path == MODEL


def test_run_config_checks_route_settings():
    with pytest.raises(InputError, match="--route must be"):
        RunConfig(route="sometimes")
    with pytest.raises(InputError, match="--route-threshold"):
        RunConfig(route_threshold=-0.5)
    assert RunConfig(scale=2, model="bicubic").routed_threshold is None  # classical models are not routed
    assert RunConfig(scale=2, route="off").routed_threshold is None
    # the default threshold is the one calibrated for the scale's cheap path; a given one wins
    assert RunConfig(scale=2).routed_threshold == CALIBRATED_THRESHOLDS[cheap_path(2)]
    assert RunConfig(scale=2, route_threshold=0.5).routed_threshold == 0.5
    assert RunConfig(scale=2).route_to == cheap_path(2) == "geosr-tiny-fast-x2"


def test_journal_keeps_routes_for_resume(tmp_path):
    folder = WorkFolder.create(tmp_path / "out.tif")
    journal = RunJournal.start(folder, {"a": "b"})
    journal.record(cell=CellRecord(0, 0, 8, 8, 1234), captions={3: "x"}, routes={3: TileRoute("bicubic", 0.4, 0.7)})
    journal.commit(lambda: None)
    assert RunJournal.load(folder).routes == {3: TileRoute("bicubic", 0.4, 0.7)}


def _half_flat_scene(path, height=128, width=256, flat_cols=80):
    """Grey-ish RGB: the left ``flat_cols`` columns flat (1 DN grain), the rest textured ground."""
    rng = np.random.default_rng(5)
    data = texture(3, height, width, seed=3) * 200 + 20
    data[:, :, :flat_cols] = np.array([90.0, 110.0, 80.0])[:, None, None] + rng.normal(0, 0.7, (3, height, flat_cols))
    return write_raster(path, np.clip(np.round(data), 0, 255).astype(np.uint8))


def _routed_run(src, dst, route="auto", route_map=None):
    cfg = RunConfig(scale=2, captioner="degradation", tiles=TileSpec(64, 16), progress=False, route=route)
    return upscale_scene([src], dst, cfg, route_map=route_map)


def test_a_flat_half_is_routed_away_without_a_seam(tmp_path):
    src = _half_flat_scene(tmp_path / "in.tif")
    report = _routed_run(src, tmp_path / "auto.tif", route_map=tmp_path / "route.tif")
    _routed_run(src, tmp_path / "off.tif", route="off")
    cheap = tmp_path / "cheap.tif"
    upscale_scene([src], cheap, RunConfig(scale=2, model=cheap_path(2), captioner="none", tiles=TileSpec(64, 16),
                                          progress=False))
    # tiles of columns 0 (flat) are routed; 1 (flat up to px 80, then texture) and later are not
    props = [f["properties"] for f in json.loads((tmp_path / "auto.captions.geojson").read_text())["features"]]
    routed = {p["col"] for p in props if p["route"] == cheap_path(2)}
    assert routed == {0} and report.tiles_routed == 2 and report.tiles_processed == 8
    assert all(p["caption"] == "" for p in props if p["route"] != MODEL)  # routed tiles are not captioned
    assert all(p["caption"] and p["texture"] > CALIBRATED_THRESHOLDS[cheap_path(2)] for p in props if p["route"] == MODEL)

    with rasterio.open(tmp_path / "auto.tif") as a, rasterio.open(tmp_path / "off.tif") as o, \
            rasterio.open(cheap) as b:
        auto, off, fast = a.read().astype(int), o.read().astype(int), b.read().astype(int)
    # far from the routed tiles, the pixels are the model's; in the routed cores, the cheap path's
    assert np.array_equal(auto[:, :, 2 * 128 :], off[:, :, 2 * 128 :])
    assert np.abs(auto[:, :, : 2 * 48] - fast[:, :, : 2 * 48]).max() <= 1
    # the route changes at the core boundary x = 64 (inside the flat part): no seam there
    assert seam_score(str(tmp_path / "auto.tif"), SimpleNamespace(cols=[64], rows=[]), 2) < 1.15

    with rasterio.open(tmp_path / "route.tif") as m:
        assert m.descriptions == ("texture", "noise", "model") and m.crs == "EPSG:32618"
        assert m.transform == NORTH_UP * rasterio.Affine.scale(64)
        grid = m.read()
    assert grid.shape == (3, 2, 4) and list(grid[2, 0]) == [0, 1, 1, 1]
    by_tile = {(p["row"], p["col"]): p for p in props}
    assert grid[0, 1, 2] == pytest.approx(by_tile[(1, 2)]["texture"], abs=1e-3)


def test_route_map_is_refused_where_it_would_say_nothing_or_overwrite(tmp_path):
    src = _half_flat_scene(tmp_path / "in.tif", width=128)
    with pytest.raises(InputError, match="--route off"):
        _routed_run(src, tmp_path / "a.tif", route="off", route_map=tmp_path / "r.tif")
    (tmp_path / "r.tif").write_text("keep")
    with pytest.raises(OutputExistsError):
        _routed_run(src, tmp_path / "a.tif", route_map=tmp_path / "r.tif")
    assert not (tmp_path / "a.tif").exists() and (tmp_path / "r.tif").read_text() == "keep"


@pytest.mark.parametrize("where", ["input", "captions", "tiled block", "output by '..'", "captions by a link",
                                   "tiled block by '..'"])
def test_a_route_map_never_lands_on_a_file_the_run_reads_or_writes(tmp_path, where):
    """Found by review: --route-map onto the input, the captions or a block of a tiled output
    replaced it with the map (exit 0) - a check that knew only OUTPUT's own path; then (19th
    session) the same files named another way, ``sub/../a.tif`` or through a folder link: the
    run exited 0 without the map (the output's commit replaced it)."""
    src = _half_flat_scene(tmp_path / "in.tif", width=128)
    before = open(src, "rb").read()
    (tmp_path / "sub").mkdir()
    (tmp_path / "link").symlink_to(tmp_path)
    tiled = where.startswith("tiled block")
    output, split = (tmp_path / "tiles", 64) if tiled else (tmp_path / "a.tif", None)
    route_map = {"input": src, "captions": tmp_path / "a.captions.geojson",
                 "tiled block": output / "block_000_000.tif", "output by '..'": tmp_path / "sub" / ".." / "a.tif",
                 "captions by a link": tmp_path / "link" / "a.captions.geojson",
                 "tiled block by '..'": tmp_path / "sub" / ".." / "tiles" / "block_000_000.tif"}[where]
    cfg = RunConfig(scale=2, captioner="degradation", tiles=TileSpec(64, 16), progress=False, split=split,
                    overwrite=True)
    with pytest.raises(OutputError, match="the output itself|a file the output .* writes|is also an input"):
        upscale_scene([src], output, cfg, route_map=route_map)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "link", "sub"]
    assert open(src, "rb").read() == before


def test_a_performance_report_never_lands_on_the_route_map(tmp_path):
    """Two companion files that are one file by another name: one would replace the other (exit 0)."""
    src = _half_flat_scene(tmp_path / "in.tif", width=128)
    (tmp_path / "sub").mkdir()
    cfg = RunConfig(scale=2, captioner="degradation", tiles=TileSpec(64, 16), progress=False)
    with pytest.raises(OutputError, match="is also the run's route map"):
        upscale_scene([src], tmp_path / "a.tif", cfg, route_map=tmp_path / "r.tif",
                      performance_report=str(tmp_path / "sub" / ".." / "r.tif"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "sub"]


def test_cli_routes_and_reports_it(tmp_path):
    src = _half_flat_scene(tmp_path / "in.tif")
    result = CliRunner().invoke(cli, ["upscale", str(src), str(tmp_path / "o.tif"), "--scale", "2", "--tile", "64",
                                      "--route-map", str(tmp_path / "m.tif")])
    assert result.exit_code == 0, result.output
    assert f"2 routed to {cheap_path(2)}" in result.output and (tmp_path / "m.tif").exists()
    result = CliRunner().invoke(cli, ["upscale", str(src), str(tmp_path / "o2.tif"), "--scale", "2",
                                      "--route-threshold", "-1"])
    assert result.exit_code != 0 and "--route-threshold must be >= 0" in result.output


def test_evaluate_reports_what_routing_changes(tmp_path):
    from PIL import Image

    from geosr.evaluation import evaluate_sr

    rng = np.random.default_rng(0)
    flat = np.clip(np.round(np.array([90.0, 110.0, 80.0]) + rng.normal(0, 0.5, (64, 64, 3))), 0, 255)
    Image.fromarray(flat.astype(np.uint8)).save(tmp_path / "flat.png")
    ground = (texture(3, 64, 64, seed=4) * 200 + 20).astype(np.uint8).transpose(1, 2, 0)
    Image.fromarray(ground).save(tmp_path / "ground.png")
    result = evaluate_sr([tmp_path / "flat.png", tmp_path / "ground.png"], 2, "clean")
    flat_im, ground_im = result["images"]
    assert flat_im["route"]["route"] == cheap_path(2) and ground_im["route"]["route"] == MODEL
    assert "scores" in flat_im["route"] and "scores" not in ground_im["route"]
    routing = result["routing"]
    assert routing["routed_share"] == 0.5 and routing["cheap_path"] == cheap_path(2)
    assert routing["psnr_change"] == pytest.approx((flat_im["route"]["scores"]["psnr"] - flat_im["model"]["psnr"]) / 2)
    assert routing["model_time_saved"] == pytest.approx(
        flat_im["model_seconds"] / (flat_im["model_seconds"] + ground_im["model_seconds"]))
    assert evaluate_sr([tmp_path / "flat.png"], 2, "clean", route="off")["routing"] == {}


def test_route_map_statistics_are_never_an_empty_range(tmp_path):
    """QGIS fails on a band whose stored minimum equals its maximum: every tile on the model."""
    from geosr.route_map import write_route_map
    from geosr.scene import open_scene

    src = uint8_scene(tmp_path / "in.tif", 64, 128)
    scene = open_scene([str(src)])
    grid = TileGrid(scene.width, scene.height, 32, 8)
    tiles = grid.tiles()
    routes = {t.index: TileRoute(MODEL, 3.0, 2.0) for t in tiles}  # constant bands
    path = write_route_map(tmp_path / "route.tif", scene, grid, tiles, routes, 1.0)
    with rasterio.open(path) as m:
        for b in (1, 2, 3):
            tags = m.tags(b)
            assert float(tags["STATISTICS_MINIMUM"]) < float(tags["STATISTICS_MAXIMUM"]), tags
        assert float(m.tags(3)["STATISTICS_MAXIMUM"]) == 1.0


@pytest.mark.parametrize("shape", [(1, 3, 14, 14), (1, 3, 1, 50), (2, 3, 3, 70)])
def test_small_tiles_are_measured_on_their_mirror_image(shape):
    """Found by review: tiles under 16 px (--tile 10 --overlap 2, a 1 x 50 raster) failed the run at
    its first tile ("routing needs ... at least 16 px"); a flat one still reads flat, a busy one busy."""
    from geosr.routing import measure_tiles

    flat = torch.full(shape, 0.5)
    texture, noise = measure_tiles(flat)
    assert (texture == 0).all() and (noise == 0).all()
    ramp = torch.linspace(0, 1, shape[-1]).expand(shape).clone()
    assert (measure_tiles(ramp)[0] > 0).all()


def test_a_run_with_tiles_under_16_px_goes_through(tmp_path):
    src = uint8_scene(tmp_path / "in.tif", 40, 40)
    result = CliRunner().invoke(cli, ["upscale", str(src), str(tmp_path / "out.tif"), "--scale", "2", "--tile", "10",
                                      "--overlap", "2", "--model", "bicubic", "-q"])
    assert result.exit_code == 0, result.output


def test_a_tile_with_nothing_measurable_stays_on_the_model():
    """Found by review: a tile without a pixel whose filter support is all valid (a thin valid strip,
    speckled no-data, a core narrower than the filter) read texture 0.0 and took the cheap path,
    however textured; it is not measured (NaN, null in the sidecar) and stays on the model."""
    from geosr.routing import MODEL, measure_tiles, route_tiles

    busy = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    strip = torch.zeros(1, 64, 64, dtype=torch.bool)
    strip[:, :, 20:27] = True  # 7 px of valid pixels
    texture, noise = measure_tiles(busy, strip)
    assert np.isnan(texture).all()
    (route,) = route_tiles(busy, threshold=1e9, valid=strip)
    assert route.path == MODEL and route.properties()["texture"] is None
    speckled = torch.rand(1, 64, 64, generator=torch.Generator().manual_seed(1)) > 0.12
    assert route_tiles(busy, threshold=1e9, valid=speckled)[0].path == MODEL
