"""``geosr info``: what geosr sees in an input, and its tile plan."""

from __future__ import annotations

import json
import tempfile
import warnings

import click

from geosr.band_roles import RGBAssumedWarning
from geosr.cli.options import fail_cleanly, one_line, parse_bands, remarks, tile_options
from geosr.config import TileSpec
from geosr.scene import open_scene
from geosr.scene_plan import band_tags, plan_bands
from geosr.sentinel2 import is_subdataset, product_subdatasets
from geosr.tiling import TileGrid


@click.command(context_settings={"max_content_width": 100})
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@tile_options
@click.option("--scale", default=4, show_default=True, help="Scale for the output size shown.")
@click.option("--rgb-bands", callback=parse_bands, help="The bands that are red, green, blue, e.g. 3,2,1 (to check "
              "the band plan `geosr upscale --rgb-bands` would give).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(inputs, tile, overlap, scale, rgb_bands, as_json):
    """Describe INPUT (one raster, a .vrt or a same-grid mosaic): size, CRS, transform,
    dtype, nodata/mask, bands, and the tile plan. Also which bands an RGB model (the shipped
    ones) takes as R, G, B and what says so (band descriptions, wavelengths, colour
    interpretation, or nothing: the first three, with a warning), and the band groups it
    gets with --bands-to-model all (one model call per group). For a Sentinel-2 product
    (.SAFE folder, MTD_MSIL2A.xml) or subdataset, also the product's subdatasets: name one
    as INPUT for another resolution.

    \b
    Example:
      geosr info scene.tif --tile 512
    """
    fail_cleanly(lambda: TileSpec(tile, overlap))  # the limits a run checks (a bad --tile was a traceback)
    with tempfile.TemporaryDirectory() as tmp:
        # metadata only: no read of every pixel for NaN (a run does that), no torch (the command starts fast)
        with remarks(quiet=False):  # "warning: ..." lines on stderr, not Python's file:line and source
            scene = fail_cleanly(lambda: open_scene(inputs, workdir=tmp, check_pixels=False))
        # the plan of an RGB model (the shipped ones) with --bands-to-model all; its warning
        # that nothing says which bands are R, G, B is one of the facts shown
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RGBAssumedWarning)
            plan = fail_cleanly(lambda: plan_bands(scene, None, 3, rgb_bands=rgb_bands))
        assumed = [one_line(w.message) for w in caught if issubclass(w.category, RGBAssumedWarning)]
    grid = TileGrid(scene.width, scene.height, tile, overlap)
    facts = {
        "inputs": list(scene.paths),
        "size": [scene.width, scene.height],
        "bands": scene.count,
        "dtype": scene.dtype,
        "crs": scene.crs.to_string() if scene.crs else None,
        "transform": list(scene.transform)[:6],
        "georeferenced": scene.georeferenced,
        "gcps": len(scene.gcps[0]) if scene.gcps else 0,
        "rpcs": scene.rpcs is not None,
        "nodata": scene.nodata,
        "alpha_band": scene.alpha_band,
        "internal_mask": scene.has_internal_mask,
        "colorinterp": [c.name for c in scene.colorinterp],
        "descriptions": list(scene.descriptions),
        # GEOSR_RGB_BANDS, GEOSR_RGB_SOURCE and GEOSR_MODEL_BANDS of a run with an RGB model
        "rgb_bands": list(plan.rgb.bands) if plan.rgb else None,
        "rgb_source": plan.rgb.source if plan.rgb else None,
        "model_bands": [list(plan.input_bands(g.positions)) for g in plan.groups],
        "tile_plan": {
            "tile": tile, "overlap": overlap, "rows": len(grid.rows), "cols": len(grid.cols), "tiles": len(grid),
        },
        "output_size_at_scale": [scene.width * scale, scene.height * scale],
    }
    if len(scene.paths) == 1 and is_subdataset(scene.paths[0]):
        # the others a Sentinel-2 product offers: name one as INPUT to read it instead
        facts["subdatasets"] = fail_cleanly(lambda: product_subdatasets(scene.paths[0]))
    if assumed:
        facts["rgb_warning"] = assumed[0]
    if as_json:
        click.echo(json.dumps(facts, indent=2))
        return
    text = {
        "rgb_bands": ("none (fewer than three bands: each goes alone)" if len(plan.bands) < 3 else
                      "none (the bands' names, wavelengths or colour interpretations place them outside red, green "
                      "and blue: each goes alone)") if not plan.rgb else (
            f"{band_tags(plan)['GEOSR_RGB_BANDS']} ("
            + {"given": "given with --rgb-bands", "assumed": "assumed: nothing says which bands are red, green, blue"}
            .get(plan.rgb.source, f"from {plan.rgb.source}") + ")"),
        "model_bands": f"{band_tags(plan)['GEOSR_MODEL_BANDS']} (an RGB model, --bands-to-model all: one call per ;)",
    }
    for key, value in facts.items():
        if key == "rgb_source":
            continue
        if key == "rgb_warning":
            click.echo(f"warning: {value}", err=True)
            continue
        if key == "subdatasets":
            click.echo("subdatasets:" + "".join(f"\n  {s}" for s in value))
            continue
        click.echo(f"{key}: {text.get(key, value)}")
