"""The plan of one scene: what every way of running geosr on it agrees on.

:func:`plan_scene` opens the input, groups its bands for the model (:func:`plan_bands`), lays
the tile grid, drops the tiles that are all no-data or outside the AOI and (on first use)
fits the scene stretch. ``geosr upscale``, ``geosr caption`` and the lazy DataArray of
:func:`geosr.upscale` all start from it, so they see the same tiles, bands, stretch and
seeds (:func:`tile_seed`).
"""

from __future__ import annotations

import functools
import hashlib
import os
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from geosr.aoi import load_aoi, window_polygon
from geosr.band_roles import (NUMBERING_ASSUMED, RGBAssumedWarning, RGBBands, find_rgb, parse_bands_to_model,
                              parse_rgb_bands)
from geosr.config import RunConfig
from geosr.errors import InputError
from geosr.radiometry import Stretch, fit_stretch
from geosr.reading import read_valid
from geosr.scene import Scene, open_raster, open_scene, same_nodata
from geosr.sentinel2 import source_name
from geosr.tiling import Tile, TileGrid

__all__ = ["BandGroup", "BandPlan", "ScenePlan", "plan_scene", "plan_bands", "band_tags", "warn_rgb_assumed", "select_tiles", "tile_seed", "scene_key"]


@dataclass(frozen=True)
class BandGroup:
    """Bands that go through the model together, in one call per batch.

    Attributes
    ----------
    positions : tuple of int
        Positions in :attr:`BandPlan.bands`, in model channel order.
    replicate : int
        When > 0, the group is one band fed replicated to this many channels, and the model's
        output channels are averaged back (a single band through an RGB model).
    """

    positions: tuple[int, ...]
    replicate: int = 0


@dataclass(frozen=True)
class BandPlan:
    """Which bands go where.

    Attributes
    ----------
    bands : tuple of int
        1-based input bands written to the output, in output order.
    groups : tuple of BandGroup
        The model's groups: R, G, B first when the model is RGB, then every other band on
        its own (see :func:`plan_bands`).
    extra : tuple of int
        Positions in ``bands`` upscaled by bicubic (``bands_to_model`` left them out).
    look : tuple of int
        Positions in ``bands`` that captioning and routing see: R, G, B when there are three
        bands or more, else the first group.
    rgb : RGBBands or None
        The input bands taken as red, green and blue and what said so (None: an RGB model
        with fewer than three bands, or a model that takes any band count).
    """

    bands: tuple[int, ...]
    groups: tuple[BandGroup, ...]
    extra: tuple[int, ...] = ()
    look: tuple[int, ...] = ()
    rgb: RGBBands | None = None

    def input_bands(self, positions: Sequence[int]) -> tuple[int, ...]:
        """The 1-based input bands at ``positions`` of :attr:`bands`."""
        return tuple(self.bands[p] for p in positions)


def plan_bands(scene: Scene, requested: Sequence[int] | None, channels: int | None, *,
               bands_to_model: str | Sequence[int] = "all", rgb_bands: Sequence[int] | None = None) -> BandPlan:
    """Split the output bands into the model's groups and the bands left to bicubic.

    A model of any channel count (``channels`` None: bicubic, lanczos) takes all bands at
    once. A 3-channel (RGB) model takes R, G, B as one group (:func:`geosr.band_roles.find_rgb`:
    read from the scene, else the first three bands with an :class:`RGBAssumedWarning`) and
    every other band alone, replicated to its three channels and averaged back: on real
    imagery a single band gains as much as, or more than, the same band among two others the
    model reads as colours (docs/design.md, "Band plan"). A 1-band model takes every band
    alone. A network of another band count (an own network's card) takes the first that
    many bands, the rest go through bicubic; fewer bands than it takes go one by one,
    replicated.

    Parameters
    ----------
    scene : Scene
    requested : sequence of int, optional
        1-based bands to write (``--bands``); default every data band.
    channels : int or None
        The model's input channels.
    bands_to_model : ``"all"``, ``"rgb"`` or sequence of int
        ``all``: every band through the model; ``rgb``: the R, G, B group only, the rest
        bicubic (with fewer than three bands, or a model that is not RGB: as ``all``); band
        numbers: those bands through the model (R, G, B as a group when all three are among
        them), the rest bicubic.
    rgb_bands : sequence of int, optional
        The input bands that are red, green and blue, overriding what the scene says (an RGB
        model on three bands or more reads it; other plans have no R, G, B).

    Raises
    ------
    InputError
        A band that does not exist, is the alpha band or is listed twice; ``bands_to_model``
        naming a band not written; bad ``rgb_bands``.
    """
    bands = tuple(requested) if requested else scene.data_bands
    for b in bands:
        if not 1 <= b <= scene.count:
            raise InputError(f"--bands: band {b} does not exist (the input has {scene.count} bands)")
        if b == scene.alpha_band:
            raise InputError(f"--bands: band {b} is the alpha band, a mask: it is carried as the output mask")
    if len(set(bands)) != len(bands):
        raise InputError(f"--bands lists a band twice: {','.join(map(str, bands))}")
    bands_to_model = parse_bands_to_model(bands_to_model)
    positions = tuple(range(len(bands)))
    # checked for every model (a classical one takes all bands at once and reads neither): a typo is refused
    if isinstance(bands_to_model, tuple):
        missing = sorted(set(bands_to_model) - set(bands))
        if missing:
            raise InputError(f"--bands-to-model: band {missing[0]} is not among the bands written "
                             f"({','.join(map(str, bands))})")
    if rgb_bands is not None and not set(parse_rgb_bands(rgb_bands)) <= set(bands):
        raise InputError(f"--rgb-bands needs three different bands among {','.join(map(str, bands))} "
                         f"(red, green, blue), got {','.join(map(str, parse_rgb_bands(rgb_bands)))}")
    if channels is None:
        return BandPlan(bands, (BandGroup(positions),), look=positions)
    if isinstance(bands_to_model, tuple):
        modelled = tuple(p for p in positions if bands[p] in bands_to_model)
    else:
        modelled = positions
    rgb = None
    first: tuple[int, ...] = ()
    if channels == 3 and len(bands) >= 3:
        rgb = find_rgb(scene, bands, rgb_bands)
        if rgb is not None and (rgb.assumed or rgb.numbering_assumed):
            warn_rgb_assumed(scene, rgb)
        first = tuple(bands.index(b) for b in rgb.bands) if rgb is not None else ()
        if bands_to_model == "rgb" and first:
            modelled = first
        elif not set(first) <= set(modelled):
            first = ()  # not all of R, G, B go to the model: those that do go alone
    if channels not in (1, 3) and len(modelled) >= channels:
        # a network of another band count: its card says nothing of what further bands are
        modelled = modelled[:channels]
        groups = [BandGroup(modelled)]
    else:
        replicate = 0 if channels == 1 else channels
        groups = ([BandGroup(first)] if first else []) + [BandGroup((p,), replicate) for p in modelled if p not in first]
    extra = tuple(p for p in positions if p not in modelled)
    look = tuple(bands.index(b) for b in rgb.bands) if rgb else groups[0].positions
    return BandPlan(bands, tuple(groups), extra, look, rgb)


def band_tags(plan: BandPlan) -> dict[str, str]:
    """What went where, in 1-based input band numbers: ``GEOSR_MODEL_BANDS`` (the model's
    groups, ``;`` between calls: ``3,2,1;4;5``), ``GEOSR_BICUBIC_BANDS`` (when some bands were
    left to bicubic), ``GEOSR_RGB_BANDS`` and ``GEOSR_RGB_SOURCE`` (the bands taken as red,
    green and blue, and what said so: ``band descriptions``, ``assumed``...). A written output
    has them as tags, the lazy DataArray of :func:`geosr.upscale` as attributes."""
    tags = {"GEOSR_MODEL_BANDS": ";".join(",".join(map(str, plan.input_bands(g.positions))) for g in plan.groups)}
    if plan.extra:
        tags["GEOSR_BICUBIC_BANDS"] = ",".join(map(str, plan.input_bands(plan.extra)))
    if plan.rgb is not None:
        tags["GEOSR_RGB_BANDS"] = ",".join(map(str, plan.rgb.bands))
        tags["GEOSR_RGB_SOURCE"] = plan.rgb.source
    return tags


def warn_rgb_assumed(scene: Scene, rgb: RGBBands) -> None:
    """Say, in one line, which bands are taken as R, G, B without metadata saying so, and how to choose."""
    name = source_name(scene.paths[0]) + (f" (+{len(scene.paths) - 1} files)" if len(scene.paths) > 1 else "")
    r, g, b = rgb.bands
    if rgb.numbering_assumed:
        taken, other = ("Landsat 4-7", "Sentinel-2 / Landsat 8-9") if rgb.source == NUMBERING_ASSUMED[1] else \
            ("Sentinel-2 / Landsat 8-9", "Landsat 4-7")
        red = {"Landsat 4-7": "B3", "Sentinel-2 / Landsat 8-9": "B4"}
        choice = (f": for theirs, --rgb-bands {','.join(map(str, rgb.other_numbering))}" if rgb.other_numbering
                  else "; choose with --rgb-bands")
        said = (f"{name}: the band descriptions number the bands, and nothing says in which sensor's numbering; "
                f"read as {taken}'s ({red[taken]} red), bands {r},{g},{b} are taken as R,G,B ({other} number "
                f"red {red[other]}{choice})")
    else:
        said = (f"{name}: no colour interpretation, band description or wavelength says which bands are red, green "
                f"and blue; bands {r},{g},{b} are taken as R,G,B (choose with --rgb-bands, e.g. --rgb-bands {b},{g},{r})")
    warnings.warn(said, RGBAssumedWarning, stacklevel=3)


def tile_seed(base_seed: int, scene_key: str, tile: Tile) -> int:
    """Seed of one tile: a hash of the run seed, the scene and the tile's position.

    Independent of batch composition and run order, so resumed or distributed runs give
    the same pixels.
    """
    text = f"{base_seed}:{scene_key}:{int(tile.core.col_off)}:{int(tile.core.row_off)}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def scene_key(scene: Scene) -> str:
    """Stable identifier of a scene's content layout (file names and size, not their folder)."""
    names = ",".join(source_name(p) for p in scene.paths)
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
    exact : bool
        The run must make no new values (``--model nearest``): 32-bit and float32 rasters pass
        as they are (:meth:`Stretch.identity`), not through a stretch float32 rounds.
    """

    scene: Scene
    bands: BandPlan
    grid: TileGrid
    tiles: tuple[Tile, ...]
    key: str
    exact: bool = False

    @property
    def skipped(self) -> int:
        """Tiles of the grid left out of :attr:`tiles`."""
        return len(self.grid) - len(self.tiles)

    @functools.cached_property
    def stretch(self) -> Stretch:
        """The scene stretch of the planned bands, fitted on first use (a decimated read):
        a run checks its options and disk space first."""
        if self.exact and np.dtype(self.scene.dtype).itemsize >= 4:
            return Stretch.identity(len(self.bands.bands), self.scene.dtype)
        return fit_stretch(self.scene.source, self.bands.bands, self.scene.dtype)


def check_one_nodata(scene: Scene, bands: Sequence[int]) -> None:
    """Refuse bands an upscale writes that hold other nodata values than band 1 (a ``gdalbuildvrt
    -separate`` stack of imagery, nodata 0, and a DEM, -32768): the output has one, band 1's - a
    DEM's 0 m would become no-data and its -32768 pixels values. (Captions write no pixels.)

    Raises
    ------
    InputError
        Naming each band's value and how to go on.
    """
    if not scene.band_nodata:
        return
    # band 1's is the one the run reads masks with and writes (Scene.nodata), written or not
    values = {b: scene.band_nodata[b - 1] for b in dict.fromkeys((1, *bands))}
    if not all(same_nodata(values[1], v) for v in values.values()):
        said = ", ".join(f"band {b}: {v}" for b, v in values.items())
        raise InputError(f"the bands hold different nodata values ({said}) and the output has one, band 1's: "
                         "give them one (gdal_translate -a_nodata), or write the others apart from a copy "
                         "without band 1 (gdal_translate -b)")


def plan_scene(files: Sequence[str], config: RunConfig, channels: int | None, workdir: str | os.PathLike | None,
               step: int = 1) -> ScenePlan:
    """Plan ``files`` (one raster, or a same-grid mosaic) for ``config``.

    Parameters
    ----------
    files : sequence of str
        Input files, as :func:`geosr.scene.expand_inputs` returns them.
    config : RunConfig
        ``bands``, ``bands_to_model``, ``rgb_bands``, ``tiles`` and ``aoi`` are used.
    channels : int or None
        Channels of the model the bands are planned for (3 for a captioner).
    workdir : path-like, optional
        Where a mosaic's or a Sentinel-2 product's VRT goes (required for them); it must outlive
        the plan's use.
    step : int
        The grid step the tiles keep (:class:`~geosr.tiling.TileGrid`): the run's
        :func:`geosr.tasks.plan_step` (``ModelFacts.grid_step``), 1 for a model that has none.
    """
    scene = open_scene(files, workdir=workdir)
    bands = plan_bands(scene, config.bands, channels, bands_to_model=config.bands_to_model, rgb_bands=config.rgb_bands)
    grid = TileGrid(scene.width, scene.height, config.tiles.tile, config.tiles.overlap, step)
    aoi = load_aoi(config.aoi, scene) if config.aoi else None
    exact = config.model == "nearest"
    if exact and np.dtype(scene.dtype) == np.float64:
        raise InputError(f"--model nearest keeps values exactly in float32 and below, and {scene.source} is float64: "
                         "convert it (gdal_translate -ot Float32) or upscale it with gdal_translate -r nearest")
    return ScenePlan(scene, bands, grid, tuple(select_tiles(scene, grid, aoi, bands.bands)), scene_key(scene), exact)


class NothingToUpscaleWarning(UserWarning):
    """Every tile of a scene is no-data (or outside the AOI): its output holds no value."""


def select_tiles(scene: Scene, grid: TileGrid, aoi, bands: Sequence[int] | None = None) -> list[Tile]:
    """Drop tiles whose core is all no-data (in ``bands``, 1-based; None: all) or outside the AOI."""
    kept = []
    with open_raster(scene.source) as ds:
        for t in grid.tiles():
            if aoi is not None and not aoi.intersects(window_polygon(t.core, scene.transform)):
                continue
            if scene.masked and not read_valid(ds, t.core, True, bands).any():
                continue
            kept.append(t)
    return kept
