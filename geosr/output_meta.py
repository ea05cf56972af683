"""What an output carries besides its pixels: grid and profile, band metadata, tags, captions GeoJSON.

The output's grid is the scene's refined by the scale (:func:`geosr.georef.scale_transform`);
its bands keep the source's colour interpretation (as far as GeoTIFF allows), descriptions,
scales, offsets and units; its tags keep the source's and add the ``GEOSR_*`` provenance. Tile
footprints with their captions (and routes) go to the ``OUTPUT.captions.geojson`` sidecar.
"""

from __future__ import annotations

import os
from typing import Sequence

from rasterio.enums import ColorInterp
from rasterio.windows import Window
from shapely.geometry.base import BaseGeometry

import geosr
from geosr.aoi import window_polygon
from geosr.captioning import split_speaker
from geosr.config import RunConfig
from geosr.georef import scale_transform
from geosr.models import Upscaler
from geosr.routing import TileRoute
from geosr.scene import Scene
from geosr.scene_plan import BandPlan, band_tags  # there, torch-free: `geosr info` shows them too
from geosr.sentinel2 import source_name
from geosr.tiling import Tile

__all__ = ["CAPTIONS_SUFFIX", "band_meta", "band_tags", "captions_geojson", "cog_creation_options", "output_profile",
           "output_tags", "overview_resampling"]

#: The sidecar of tile footprints and captions beside OUTPUT.
CAPTIONS_SUFFIX = ".captions.geojson"


def output_profile(scene: Scene, plan: BandPlan, s: int) -> dict:
    profile = dict(
        width=scene.width * s, height=scene.height * s, count=len(plan.bands), dtype=scene.dtype,
        nodata=scene.nodata,
    )
    if scene.crs and not scene.gcps:
        profile["crs"] = scene.crs
    if not scene.gcps and not (scene.transform.is_identity and scene.rpcs is not None):
        if scene.crs or not scene.transform.is_identity:
            profile["transform"] = scale_transform(scene.transform, s)
    return profile


def overview_resampling(config: RunConfig) -> str:
    """How a run's overviews are made: ``nearest`` for ``--model nearest`` (class rasters:
    averages of class codes are codes of no class, at every zoom level below the full
    resolution), else ``average``."""
    return "nearest" if config.model == "nearest" else "average"


def cog_creation_options(config: RunConfig) -> dict[str, str]:
    """The COG options of a run's output (and its blocks): ``--co`` over the overviews'
    :func:`overview_resampling`, when it is not the COG default's (AVERAGE)."""
    resampling = overview_resampling(config)
    options = {"OVERVIEW_RESAMPLING": resampling.upper()} if resampling != "average" else {}
    options.update({k.upper(): str(v) for k, v in config.creation_options.items()})
    return options


def band_meta(scene: Scene, plan: BandPlan) -> dict:
    """Each output band's metadata, taken from the input band it was made from: colour
    interpretation (alpha written as undefined; R, G, B as gray below three bands), description,
    scale, offset, unit, colour table, band tags, and ``input_bands``, the 1-based input band
    numbers (a Zarr store's ``band`` coordinate, as in the lazy result of :func:`geosr.upscale`)."""
    pick = [b - 1 for b in plan.bands]
    ci = [scene.colorinterp[i] for i in pick]
    # kept where they are: GDAL's GTiff stores R, G, B on any bands (a PlanetScope stack's blue on
    # band 2, red on 6; a B, G, R stack), and a rerun, QGIS and STAC read which bands they are
    if len(ci) < 3:
        ci = [ColorInterp.gray if c in (ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha) else c for c in ci]
    ci = [ColorInterp.undefined if c == ColorInterp.alpha else c for c in ci]
    return dict(
        colorinterp=ci,
        descriptions=[scene.descriptions[i] for i in pick],
        scales=[scene.scales[i] for i in pick],
        offsets=[scene.offsets[i] for i in pick],
        units=[scene.units[i] for i in pick],
        colormaps=[scene.colormaps[i] if scene.colormaps else None for i in pick],
        tags=[scene.band_metadata[i] if scene.band_metadata else {} for i in pick],
        input_bands=list(plan.bands),
    )


def output_tags(scene: Scene, config: RunConfig, model: Upscaler, plan: BandPlan,
                uncertainty: str | os.PathLike | None = None) -> dict:
    """The source's tags and the run's ``GEOSR_*`` provenance; ``GEOSR_DETAIL`` for a detail level
    above 0 (a run at 0 is tagged as before there were levels), ``GEOSR_LR_CONSISTENCY`` when
    outputs were projected onto the input, and ``GEOSR_UNCERTAINTY``, the file name of the
    ``uncertainty`` map written beside the output."""
    tags = {k: v for k, v in scene.tags.items() if not k.startswith("GEOSR_")}
    tags.update(
        GEOSR_VERSION=geosr.__version__,
        GEOSR_MODEL=getattr(model, "name", config.model),
        GEOSR_SCALE=str(config.scale),
        GEOSR_CAPTIONER=config.captioner,
        GEOSR_CAPTION_EVERY=config.caption_every,
        GEOSR_TILE=str(config.tiles.tile),
        GEOSR_OVERLAP=str(config.tiles.overlap),
        GEOSR_BLEND=config.blend,
        GEOSR_SEED=str(config.seed),
        GEOSR_SOURCE=";".join(source_name(p) for p in scene.paths),
    )
    tags.update(band_tags(plan))
    if config.steps is not None:
        tags["GEOSR_STEPS"] = str(config.steps)
    if config.guidance is not None:
        tags["GEOSR_GUIDANCE"] = str(config.guidance)
    if config.detail:
        tags["GEOSR_DETAIL"] = f"{config.detail:g}"
    if config.lr_consistency != "off":
        tags["GEOSR_LR_CONSISTENCY"] = config.lr_consistency
    if uncertainty is not None:
        tags["GEOSR_UNCERTAINTY"] = os.path.basename(uncertainty)
    return tags


def _placed_footprints(transformer, windows: Sequence[Window], height: float = 0.0) -> list[BaseGeometry]:
    """The windows' footprints placed by ``transformer`` (rasterio's GCP or RPC transformer: GDAL's,
    as QGIS places the raster; opened once here; RPCs at ``height``): their edges sampled every
    eighth of a side, since the fit may bend them."""
    from shapely.geometry import Polygon

    steps = [i / 8 for i in range(8)]
    rings = []
    for window in windows:
        c0, r0 = float(window.col_off), float(window.row_off)
        c1, r1 = c0 + float(window.width), r0 + float(window.height)
        rings.append([(r0, c0 + (c1 - c0) * f) for f in steps] + [(r0 + (r1 - r0) * f, c1) for f in steps]
                     + [(r1, c1 - (c1 - c0) * f) for f in steps] + [(r1 - (r1 - r0) * f, c0) for f in steps])
    points = [p for ring in rings for p in ring]
    with transformer as place:
        xs, ys = place.xy([r for r, _ in points], [c for _, c in points], zs=[height] * len(points), offset="ul")
    n = len(steps) * 4
    return [Polygon(list(zip(xs[k * n:(k + 1) * n], ys[k * n:(k + 1) * n]))) for k in range(len(rings))]


def captions_geojson(scene: Scene, tiles: Sequence[Tile], captions: dict[int, str],
                      routes: dict[int, TileRoute] | None = None) -> dict:
    """One feature per processed tile: core footprint in the scene CRS (a scene placed by RPCs
    alone: longitude and latitude at the RPCs' mean height), caption, index, and
    for a routed run the tile's ``route`` (``model`` / ``bicubic``), ``texture`` and ``noise``.
    A caption attributed to the captioner that wrote it (``--captioner auto``) has its text in
    ``caption`` and the captioner in ``captioner``."""
    from rasterio.transform import GCPTransformer, RPCTransformer

    # RPCs alone place the scene in longitude and latitude (WGS 84, GeoJSON's own): pixel numbers
    # there were drawn by GIS as degrees, over 0-48 E for a 48 px wide scene (a CRS beside them
    # without a transform places nothing)
    by_rpcs = not scene.gcps and scene.rpcs is not None and scene.transform.is_identity
    georef = bool(scene.crs) and not scene.gcps and not by_rpcs
    # a transform without a CRS is the output's too (output_profile): the footprints lie on it
    # (a non-georeferenced scene's transform is the identity: pixel numbers)
    cores = [t.core for t in tiles]
    if scene.gcps and tiles:
        polys = _placed_footprints(GCPTransformer(scene.gcps[0]), cores)
    elif by_rpcs and tiles:
        polys = _placed_footprints(RPCTransformer(scene.rpcs), cores, height=float(scene.rpcs.height_off))
    else:
        polys = [window_polygon(core, scene.transform) for core in cores]
    features = []
    for t, poly in zip(tiles, polys):
        caption, speaker = split_speaker(captions.get(t.index, ""))
        features.append(
            {
                "type": "Feature",
                "geometry": poly.__geo_interface__,
                "properties": {
                    "tile": t.index, "row": t.row, "col": t.col, "caption": caption,
                    **({"captioner": speaker} if speaker is not None else {}),
                    "col_off": int(t.core.col_off), "row_off": int(t.core.row_off),
                    "width": int(t.core.width), "height": int(t.core.height),
                    **(routes[t.index].properties() if routes and t.index in routes else {}),
                },
            }
        )
    fc = {"type": "FeatureCollection", "features": features}
    if georef or scene.gcps:  # a GCP scene's footprints are in its GCPs' CRS
        crs = scene.gcps[1] if scene.gcps else scene.crs
        epsg = crs.to_epsg()
        # RFC 7946 dropped "crs", but QGIS and GDAL still read this member for non-WGS84 data.
        name = f"urn:ogc:def:crs:EPSG::{epsg}" if epsg else crs.to_wkt()
        fc["crs"] = {"type": "name", "properties": {"name": name}}
    return fc
