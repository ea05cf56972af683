"""Users' own networks through the engine: ONNX, TorchScript and Python objects (issue 32).

The networks are tiny ESPCN-style modules the tests build and export; their pixels through
``geosr.upscale`` must be the module's on the whole image away from the blending zone, on
the refined grid, and a network that does not fit the run is refused in one line.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import pytest
import rasterio
import torch
import torch.nn.functional as F
from affine import Affine
from rasterio.enums import ColorInterp

import geosr
from geosr.errors import InputError, ModelError
from geosr.models import load_upscaler, own_model_kind
from geosr.models.callable import object_spec
from geosr.models.model_card import ValueRange, card_from_metadata, parse_value_range, sidecar_path
from geosr.tiling import TileGrid
from rasters import uint8_scene, write_raster


TILE, OVERLAP = 32, 8
COMMON = dict(tile=TILE, overlap=OVERLAP, captioner="none", dtype="fp32", overwrite=True)


class ESPCN(torch.nn.Module):
    """Shi et al. 2016, tiny: two convolutions, a sub-pixel one, plus a bicubic skip."""

    def __init__(self, scale: int = 2, bands: int = 3, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.scale = scale
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(bands, 16, 5, padding=2), torch.nn.Tanh(),
            torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.Tanh(),
            torch.nn.Conv2d(16, bands * scale * scale, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return skip + 0.2 * F.pixel_shuffle(self.body(x), self.scale)


def export_onnx(module: torch.nn.Module, path, metadata: dict | None = None, bands: int = 3, static: int | None = None):
    """``module`` as an ONNX graph at ``path`` (tile size dynamic unless ``static``), ``metadata`` in it."""
    side = static or 16
    axes = None if static else {"lr": {0: "n", 2: "h", 3: "w"}, "hr": {0: "n", 2: "H", 3: "W"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.onnx's TorchScript exporter is deprecated (still exact)
        torch.onnx.export(module.eval(), (torch.rand(1, bands, side, side),), str(path), input_names=["lr"],
                          output_names=["hr"], dynamic_axes=axes, dynamo=False)
    graph = onnx.load(str(path))
    for key, value in (metadata or {}).items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.save(graph, str(path))
    return str(path)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return uint8_scene(tmp_path_factory.mktemp("own") / "scene.tif", height=75, width=90)


@pytest.fixture(scope="module")
def net():
    return ESPCN().eval()


def whole_image(module, path, scale: int = 2) -> np.ndarray:
    """The module on the whole scene, written as geosr writes uint8 (stretch = /255)."""
    with rasterio.open(path) as ds:
        x = torch.from_numpy(ds.read().astype(np.float32) / 255)[None]
    with torch.no_grad():
        y = module(x)[0].numpy()
    return np.clip(np.rint(y * 255), 0, 255).astype(np.uint8)


def away_from_seams(path, scale: int, step: int = 1) -> np.ndarray:
    """HR pixels at least ``OVERLAP`` LR px from every tile core boundary (of a plan on grid
    ``step``) and the scene edge."""
    with rasterio.open(path) as ds:
        grid = TileGrid(ds.width, ds.height, TILE, OVERLAP, step=step)

    def keep(size: int, edges: set[int]) -> np.ndarray:
        lr = np.ones(size, bool)
        for edge in [*edges, size]:
            lr[max(edge - OVERLAP, 0): edge + OVERLAP] = False
        return np.repeat(lr, scale)

    # both ends of every core: on a coarser grid the last core starts on the grid and overlaps
    cores = [tile.core for tile in grid.tiles()]
    rows = {c.row_off for c in cores} | {c.row_off + c.height for c in cores}
    cols = {c.col_off for c in cores} | {c.col_off + c.width for c in cores}
    with rasterio.open(path) as ds:
        return keep(ds.height, rows)[:, None] & keep(ds.width, cols)[None, :]


def read(path) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as ds:
        return ds.read(), {"transform": ds.transform, "crs": ds.crs, "shape": ds.shape, "tags": ds.tags()}


@pytest.mark.parametrize("kind", ["onnx", "torchscript", "python"])
def test_own_network_gives_the_module_pixels_on_the_refined_grid(kind, scene, net, tmp_path):
    if kind == "onnx":
        model = export_onnx(net, tmp_path / "espcn.onnx", {"scale": 2})
    elif kind == "torchscript":
        model = str(tmp_path / "espcn.pt")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates TorchScript (still loads)
            torch.jit.save(torch.jit.trace(net, torch.rand(1, 3, 16, 16)), model,
                           _extra_files={"model.json": json.dumps({"scale": 2})})
    else:
        model = net
    out = tmp_path / "out.tif"
    geosr.upscale_to_file(scene, out, scale=2, model=model, **COMMON)
    pixels, meta = read(out)
    with rasterio.open(scene) as src:
        assert meta["transform"] == src.transform * Affine.scale(1 / 2)
        assert meta["crs"] == src.crs and meta["shape"] == (src.height * 2, src.width * 2)
    inner = away_from_seams(scene, 2)
    diff = np.abs(pixels.astype(int) - whole_image(net, scene).astype(int))[:, inner]
    assert diff.max() <= (1 if kind == "onnx" else 0), diff.max()  # onnxruntime sums in another order
    name = meta["tags"]["GEOSR_MODEL"]
    assert name.startswith(f"{kind}:") and "x2, 3 bands, range 0..1, fp32" in name


def test_value_range_0_255_and_a_sidecar_give_the_same_pixels(scene, net, tmp_path):
    class In255(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x / 255) * 255

    model = export_onnx(In255(), tmp_path / "in255.onnx")
    (tmp_path / "in255.json").write_text(json.dumps({"scale": 2, "value_range": "0-255"}))
    geosr.upscale_to_file(scene, tmp_path / "a.tif", scale=2, model=model, **COMMON)
    geosr.upscale_to_file(scene, tmp_path / "b.tif", scale=2, model=net, **COMMON)
    a, b = read(tmp_path / "a.tif")[0], read(tmp_path / "b.tif")[0]
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_a_sidecar_is_the_models_full_name_with_its_suffix(tmp_path):
    """``edsr.x4.onnx`` reads ``edsr.x4.json``: before, ``edsr.json`` (``with_suffix`` replaced
    the ".x4"), so two models of one family in a folder shared one sidecar, or read none."""
    for name in ("edsr.x2.onnx", "edsr.x4.onnx", "edsr.onnx"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "edsr.json").write_text("{}")
    (tmp_path / "edsr.x4.yaml").write_text("scale: 4")
    assert sidecar_path(tmp_path / "edsr.x4.onnx") == tmp_path / "edsr.x4.yaml"
    assert sidecar_path(tmp_path / "edsr.x2.onnx") is None
    assert sidecar_path(tmp_path / "edsr.onnx") == tmp_path / "edsr.json"


def test_a_raw_value_network_reads_raster_values_not_the_stretch(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.integers(200, 9000, (3, 40, 44)).astype(np.uint16)
    rgb = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
    path = write_raster(tmp_path / "reflectance.tif", data, colorinterp=rgb)

    def nearest(x):
        return F.interpolate(x, scale_factor=2, mode="nearest")

    geosr.upscale_to_file(path, tmp_path / "out.tif", scale=2, model=nearest, model_metadata={"value_range": "raw/10000"},
                  **COMMON)
    out = read(tmp_path / "out.tif")[0]
    assert np.array_equal(out, data.repeat(2, axis=1).repeat(2, axis=2))


def test_a_python_object_goes_to_worker_processes(scene, tmp_path):
    class Local(ESPCN):  # defined here: cloudpickle sends it by value
        pass

    net = Local(seed=3).eval()
    geosr.upscale_to_file(scene, tmp_path / "w.tif", scale=2, model=net, local_workers=1, **COMMON)
    geosr.upscale_to_file(scene, tmp_path / "t.tif", scale=2, model=net, **COMMON)
    assert np.array_equal(read(tmp_path / "w.tif")[0], read(tmp_path / "t.tif")[0])


def test_the_identity_of_a_python_object_is_its_weights_and_code(net):
    assert object_spec(net) == object_spec(ESPCN().eval())
    assert object_spec(net) != object_spec(ESPCN(seed=1))
    assert object_spec(net).startswith("python:ESPCN@")
    assert own_model_kind(object_spec(net)) == "python"


def test_a_wrong_scale_is_refused_up_front(scene, net, tmp_path):
    model = export_onnx(net, tmp_path / "x2.onnx", {"scale": 2})
    with pytest.raises(InputError, match=r"upscales x2 \(x2.onnx metadata\); the run asks for x4: pass scale 2"):
        geosr.upscale_to_file(scene, tmp_path / "out.tif", scale=4, model=model, **COMMON)
    # without metadata the scale is measured on a trial tile when the model loads, before any tile
    with pytest.raises(InputError, match="upscales x2, but the scale asked for is 4") as caught:
        geosr.upscale_to_file(scene, tmp_path / "out.tif", scale=4, model=net, **COMMON)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "out.tif").exists()


def test_a_wrong_band_count_is_refused_up_front(scene, tmp_path):
    model = export_onnx(ESPCN(bands=4), tmp_path / "rgbn.onnx", {"scale": 2}, bands=4)
    with pytest.raises(InputError, match=r"rgbn.onnx takes 4 bands \(rgbn.onnx metadata\); there are 3 in the input"):
        geosr.upscale_to_file(scene, tmp_path / "out.tif", scale=2, model=model, **COMMON)


def test_non_finite_output_is_never_written(scene, tmp_path):
    def broken(x):
        y = F.interpolate(x, scale_factor=2, mode="nearest")
        y[..., 3, 3] = float("nan")
        return y

    with pytest.raises(ModelError, match="NaN or infinite values for 1 of 1 tile") as caught:
        geosr.upscale_to_file(scene, tmp_path / "out.tif", scale=2, model=broken, **COMMON)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "out.tif").exists()


def test_a_network_that_is_not_an_upscaler_is_refused(net):
    def one_band(x):
        return F.interpolate(x[:, :1], scale_factor=2)

    with pytest.raises(ModelError, match=r"maps a 1x3x16x16 tile to 1x1x32x32: geosr runs networks"):
        load_upscaler(object_spec(one_band) + "x", 2, module=_carried(one_band))


def test_a_fixed_size_network_takes_smaller_tiles_padded_and_refuses_larger(scene, net, tmp_path):
    model = export_onnx(net, tmp_path / "fixed.onnx", {"scale": 2}, static=48)
    geosr.upscale_to_file(scene, tmp_path / "out.tif", scale=2, model=model, **COMMON)  # 32 + 2 x 8 = 48
    inner = away_from_seams(scene, 2)
    diff = np.abs(read(tmp_path / "out.tif")[0].astype(int) - whole_image(net, scene).astype(int))[:, inner]
    assert diff.max() <= 1
    with pytest.raises(InputError, match=r"takes tiles of at most 48x48 px .*: pass tile 32"):
        geosr.upscale_to_file(scene, tmp_path / "big.tif", scale=2, model=model, **{**COMMON, "tile": 64})


@pytest.mark.parametrize("text, expected", [
    ("0-1", ValueRange(0, 1)), ("0-255", ValueRange(0, 255)), ("-1..1", ValueRange(-1, 1)),
    ("[0, 255]", ValueRange(0, 255)), ("raw/10000", ValueRange(divisor=10000)), ("raw", ValueRange(divisor=1)),
])
def test_value_ranges_parse(text, expected):
    assert parse_value_range(text) == expected


def test_deepness_metadata_is_read_and_a_segmentor_refused():
    card = card_from_metadata({"model_type": '"Superresolution"', "scale_factor": "4", "tiles_size": "64",
                               "output_scaling": "255.0"})
    assert (card.scale, card.tile_size, card.out_range) == (4, (64, 64), ValueRange(0, 255))
    with pytest.raises(InputError, match="is a Segmentor"):
        card_from_metadata({"model_type": '"Segmentor"'})
    with pytest.raises(InputError, match="value_range 'bright'"):
        card_from_metadata({"value_range": "bright"})


def test_the_shipped_student_exports_to_onnx_with_the_same_pixels(tmp_path):
    from geosr.models.student_onnx import compare_export, export_student

    path = tmp_path / "x2.onnx"
    metadata = export_student("geosr-tiny-x2", path)
    assert metadata["caption"] == "no blur; no noise; no jpeg" and metadata["scale"] == 2
    assert compare_export("geosr-tiny-x2", path) <= 1.0  # DN of 255: measured 6e-5


class FakeRunner:
    """A runner that runs out of memory above ``max_batch`` tiles and overflows in reduced precision."""

    def __init__(self, max_batch: int = 99, overflow: bool = False) -> None:
        self.max_batch, self.overflow, self.calls = max_batch, overflow, []
        self.reduced, self.description = overflow, "bf16 on fake"

    def __call__(self, tiles, noise=None, precise=False):
        self.calls.append((len(tiles), precise))
        if len(tiles) > self.max_batch:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        out = F.interpolate(tiles, scale_factor=2, mode="nearest")
        if self.overflow and not precise:
            out[0, 0, 0, 0] = float("inf")
        return out

    def out_of_memory(self, exc):
        return isinstance(exc, torch.cuda.OutOfMemoryError)


def test_out_of_memory_halves_the_batch_for_the_rest_of_the_run():
    from geosr.models.model_card import ModelCard
    from geosr.models.own_network import NetworkUpscaler

    runner = FakeRunner(max_batch=2)
    model = NetworkUpscaler("fake", "python", runner, ModelCard(), scale=2, batch_size=8)
    tiles = torch.rand(5, 3, 8, 8)
    assert torch.equal(model.upscale(tiles), F.interpolate(tiles, scale_factor=2, mode="nearest"))
    assert model.batch_size == 2 and runner.calls[1:] == [(5, False), (2, False), (2, False), (1, False)]


def test_a_tile_that_overflows_in_reduced_precision_is_redone_in_float32():
    from geosr.models.model_card import ModelCard
    from geosr.models.own_network import NetworkUpscaler

    runner = FakeRunner(overflow=True)
    model = NetworkUpscaler("fake", "python", runner, ModelCard(), scale=2)
    tiles = torch.rand(2, 3, 8, 8)
    assert torch.equal(model.upscale(tiles), F.interpolate(tiles, scale_factor=2, mode="nearest"))
    assert runner.calls[-1] == (1, True)


def _carried(network):
    from geosr.models.callable import ModelObject

    return ModelObject(object_spec(network) + "x", network)


def test_model_meta_on_the_command_line(tmp_path):
    """``--model-meta KEY=VALUE`` reaches the run (here: a scale the network does not have is refused)."""
    from click.testing import CliRunner

    from geosr.cli import cli
    from geosr.cli.options import parse_model_metadata
    assert parse_model_metadata(None, None, ("Scale=4", "value_range = 0-255")) == {"scale": "4", "value_range": "0-255"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates TorchScript (still loads)
        torch.jit.save(torch.jit.trace(ESPCN(2), torch.rand(1, 3, 16, 16)), str(tmp_path / "net.pt"))
    src = uint8_scene(tmp_path / "in.tif", 48, 48)
    res = CliRunner().invoke(cli, ["upscale", str(src), str(tmp_path / "out.tif"), "--scale", "2", "--model",
                                   str(tmp_path / "net.pt"), "--model-meta", "scale=4", "--captioner", "none", "-q"])
    assert res.exit_code == 3 and "upscales x4" in res.stderr and not (tmp_path / "out.tif").exists(), res.stderr
    # the API reads keys as the command line does: {"Scale": 4} was dropped unseen
    with pytest.raises(InputError, match="upscales x4"):
        geosr.upscale_to_file(src, tmp_path / "out.tif", scale=2, model=str(tmp_path / "net.pt"),
                              model_metadata={"Scale": 4}, captioner="none")
    assert not (tmp_path / "out.tif").exists()
    bad = CliRunner().invoke(cli, ["upscale", str(src), str(tmp_path / "out.tif"), "--model-meta", "scale"])
    assert bad.exit_code == 2 and "NAME=VALUE" in bad.output + bad.stderr


class CoarseGridNet(torch.nn.Module):
    """A network on a grid 4 LR px coarse (pixel-unshuffled): its pixels depend on the tile's phase."""

    geosr_metadata = {"scale": 2, "tile_multiple": 4}

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.body = torch.nn.Sequential(
            # one 3x3 on the coarse grid: it sees at most 7 LR px beyond a pixel, inside the halo
            torch.nn.Conv2d(48, 32, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv2d(32, 3 * 64, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)
        return skip + 0.2 * F.pixel_shuffle(self.body(F.pixel_unshuffle(x, 4)), 8)


def test_a_network_on_a_coarser_grid_gets_its_tiles_on_that_grid(scene, tmp_path):
    """``tile_multiple`` 4: every tile starts on a multiple of 4 LR px, as the whole image does, so the
    tiled run gives the module's own pixels on the whole image (away from the blending zone)."""
    net = CoarseGridNet().eval()
    out = tmp_path / "out.tif"
    geosr.upscale_to_file(scene, out, scale=2, model=net, **COMMON)
    with rasterio.open(scene) as ds:
        x = torch.from_numpy(ds.read().astype(np.float32) / 255)[None]
        grid = TileGrid(ds.width, ds.height, TILE, OVERLAP)
    assert any(start % 4 for start in [*grid.rows, *grid.cols])  # a step-1 plan would start off the grid
    h, w = x.shape[-2:]
    with torch.no_grad():
        whole = net(F.pad(x, (0, -w % 4, 0, -h % 4), mode="reflect"))[0, :, : 2 * h, : 2 * w].numpy()
    whole = np.clip(np.rint(whole * 255), 0, 255).astype(np.uint8)
    pixels, meta = read(out)
    diff = np.abs(pixels.astype(int) - whole.astype(int))[:, away_from_seams(scene, 2, step=4)]
    assert diff.max() == 0, diff.max()
    assert "tiles multiple of 4" in meta["tags"]["GEOSR_MODEL"]
