"""The plan of one scene: what every way of running geosr on it agrees on.

:func:`plan_scene` opens the input, splits its bands between the model and bicubic, lays
the tile grid, drops the tiles that are all no-data or outside the AOI and (on first use)
fits the scene stretch. ``geosr upscale``, ``geosr caption`` and the lazy DataArray of
:func:`geosr.upscale` all start from it, so they see the same tiles, bands, stretch and
seeds (:func:`tile_seed`).
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from typing import Sequence

from rasterio.enums import ColorInterp

from geosr.aoi import load_aoi, window_polygon
from geosr.config import RunConfig
from geosr.errors import InputError
from geosr.radiometry import Stretch, fit_stretch
from geosr.reading import read_valid
from geosr.scene import Scene, open_raster, open_scene
from geosr.tiling import Tile, TileGrid

__all__ = ["BandPlan", "ScenePlan", "plan_scene", "plan_bands", "select_tiles", "tile_seed", "scene_key"]


@dataclass(frozen=True)
class BandPlan:
    """Which bands go where.

    Attributes
    ----------
    bands : tuple of int
        1-based input bands written to the output, in output order.
    model : tuple of int
        Positions in ``bands`` fed to the model (in model channel order).
    extra : tuple of int
        Positions in ``bands`` upscaled by bicubic (bands beyond the model's channels).
    replicate : int
        When > 0, each model band is fed alone, replicated to this many channels, and the
        output channels are averaged back (a 1-band scene through an RGB model).
    """

    bands: tuple[int, ...]
    model: tuple[int, ...]
    extra: tuple[int, ...]
    replicate: int = 0


def plan_bands(scene: Scene, requested: Sequence[int] | None, channels: int | None) -> BandPlan:
    """Split the output bands between the model and the classical path.

    RGB-by-colorinterp bands go to a 3-channel model when present (e.g. R,G,B of an
    R,G,B,NIR scene), else the first ``channels`` bands; the rest are never dropped but
    upscaled with bicubic.
    """
    bands = tuple(requested) if requested else scene.data_bands
    for b in bands:
        if not 1 <= b <= scene.count:
            raise InputError(f"--bands: band {b} does not exist (the input has {scene.count} bands)")
        if b == scene.alpha_band:
            raise InputError(f"--bands: band {b} is the alpha band, a mask: it is carried as the output mask")
    if len(set(bands)) != len(bands):
        raise InputError(f"--bands lists a band twice: {','.join(map(str, bands))}")
    positions = tuple(range(len(bands)))
    if channels is None:
        return BandPlan(bands, positions, ())
    if len(bands) < channels:
        return BandPlan(bands, positions, (), replicate=channels)
    model = positions[:channels]
    if channels == 3:
        ci = [scene.colorinterp[b - 1] if scene.colorinterp else None for b in bands]
        rgb = [ci.index(c) for c in (ColorInterp.red, ColorInterp.green, ColorInterp.blue) if c in ci]
        if len(rgb) == 3:
            model = tuple(rgb)
    extra = tuple(p for p in positions if p not in model)
    return BandPlan(bands, model, extra)


def tile_seed(base_seed: int, scene_key: str, tile: Tile) -> int:
    """Seed of one tile: a hash of the run seed, the scene and the tile's position.

    Independent of batch composition and run order, so resumed or distributed runs give
    the same pixels.
    """
    text = f"{base_seed}:{scene_key}:{int(tile.core.col_off)}:{int(tile.core.row_off)}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def scene_key(scene: Scene) -> str:
    """Stable identifier of a scene's content layout (file names and size, not their folder)."""
    names = ",".join(os.path.basename(p) for p in scene.paths)
    return f"{names}:{scene.width}x{scene.height}x{scene.count}"


@dataclass(frozen=True)
class ScenePlan:
    """One scene, planned.

    Attributes
    ----------
    scene : Scene
    bands : BandPlan
    grid : TileGrid
    tiles : tuple of Tile
        The tiles to process (all no-data and outside-AOI tiles dropped), row-major.
    key : str
        :func:`scene_key` of the scene, for :func:`tile_seed`.
    """

    scene: Scene
    bands: BandPlan
    grid: TileGrid
    tiles: tuple[Tile, ...]
    key: str

    @property
    def skipped(self) -> int:
        """Tiles of the grid left out of :attr:`tiles`."""
        return len(self.grid) - len(self.tiles)

    @functools.cached_property
    def stretch(self) -> Stretch:
        """The scene stretch of the planned bands, fitted on first use (a decimated read):
        a run checks its options and disk space first."""
        return fit_stretch(self.scene.source, self.bands.bands, self.scene.dtype)


def plan_scene(files: Sequence[str], config: RunConfig, channels: int | None, workdir: str | os.PathLike | None) -> ScenePlan:
    """Plan ``files`` (one raster, or a same-grid mosaic) for ``config``.

    Parameters
    ----------
    files : sequence of str
        Input files, as :func:`geosr.scene.expand_inputs` returns them.
    config : RunConfig
        ``bands``, ``tiles`` and ``aoi`` are used.
    channels : int or None
        Channels of the model the bands are planned for (3 for a captioner).
    workdir : path-like, optional
        Where a mosaic's VRT goes (required for a mosaic); it must outlive the plan's use.
    """
    scene = open_scene(files, workdir=workdir)
    bands = plan_bands(scene, config.bands, channels)
    grid = TileGrid(scene.width, scene.height, config.tiles.tile, config.tiles.overlap)
    aoi = load_aoi(config.aoi, scene) if config.aoi else None
    return ScenePlan(scene, bands, grid, tuple(select_tiles(scene, grid, aoi)), scene_key(scene))


def select_tiles(scene: Scene, grid: TileGrid, aoi) -> list[Tile]:
    """Drop tiles whose core is all no-data or outside the AOI."""
    kept = []
    with open_raster(scene.source) as ds:
        for t in grid.tiles():
            if aoi is not None and not aoi.intersects(window_polygon(t.core, scene.transform)):
                continue
            if scene.masked and not read_valid(ds, t.core, True).any():
                continue
            kept.append(t)
    return kept
