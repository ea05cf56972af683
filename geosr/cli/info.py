"""``geosr info``: what geosr sees in an input, and its tile plan."""

from __future__ import annotations

import json
import tempfile

import click

from geosr.cli.options import fail_cleanly, tile_options
from geosr.scene import open_scene
from geosr.tiling import TileGrid


@click.command(context_settings={"max_content_width": 100})
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@tile_options
@click.option("--scale", default=4, show_default=True, help="Scale for the output size shown.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(inputs, tile, overlap, scale, as_json):
    """Describe INPUT (one raster, a .vrt or a same-grid mosaic): size, CRS, transform,
    dtype, nodata/mask, bands, and the tile plan.

    \b
    Example:
      geosr info scene.tif --tile 512
    """
    with tempfile.TemporaryDirectory() as tmp:
        # metadata only: no read of every pixel for NaN (a run does that), no torch (the command starts fast)
        scene = fail_cleanly(lambda: open_scene(inputs, workdir=tmp, check_pixels=False))
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
        "tile_plan": {
            "tile": tile, "overlap": overlap, "rows": len(grid.rows), "cols": len(grid.cols), "tiles": len(grid),
        },
        "output_size_at_scale": [scene.width * scale, scene.height * scale],
    }
    if as_json:
        click.echo(json.dumps(facts, indent=2))
        return
    for key, value in facts.items():
        click.echo(f"{key}: {value}")
