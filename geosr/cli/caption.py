"""``geosr caption``: what the captioner says about each tile of a scene."""

from __future__ import annotations

import click

from geosr.cli.options import (OneLineErrors, exit_codes_help, fail_cleanly, parse_bands, remarks, setup_logging,
                               stop_on_signals, tile_options, verbosity)
from geosr.config import DEFAULT_CAPTIONER


@click.command(cls=OneLineErrors, context_settings={"max_content_width": 100},
               epilog="\b\nExit status:\n" + exit_codes_help(resumable=False))
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("--out", "output", required=True, type=click.Path(dir_okay=False), help="GeoJSON to write (tile footprints + captions).")
@click.option("--captioner", default=DEFAULT_CAPTIONER, show_default=True, help="auto (degradation, and the shipped VLM for tiles read as JPEG-compressed), degradation, mllm:geosr-caption-tiny (shipped VLM), mllm:DIR-OR-HUB-ID, fixed:TEXT or none.")
@click.option("--caption-every", default="tile", show_default=True, help="tile, window:N or scene.")
@tile_options
@click.option("--bands", callback=parse_bands, help="Bands to look at, e.g. 1,2,3.")
@click.option("--rgb-bands", callback=parse_bands, help="The bands that are red, green, blue (what the captioner "
              "reads), e.g. 3,2,1 for a B2,B3,B4 stack (default: read from band descriptions, wavelengths or colour "
              "interpretation, as `geosr info` shows).")
@click.option("--aoi", type=click.Path(exists=True, dir_okay=False), help="GeoJSON polygon(s) selecting tiles.")
@click.option("--overwrite", is_flag=True, help="Replace the output if it exists.")
@click.option("--address", help="dask.distributed scheduler address.")
@click.option("--local-workers", type=click.IntRange(min=1), help="Run on a local dask.distributed cluster of N processes.")
@verbosity
def caption(inputs, output, captioner, caption_every, tile, overlap, bands, rgb_bands, aoi, overwrite, address,
            local_workers, verbose, quiet):
    """Caption the tiles of INPUT as `geosr upscale` would, into a GeoJSON of tile
    footprints (scene CRS) with their captions.

    \b
    Examples:
      geosr caption scene.tif --out captions.geojson
      geosr caption scene.tif --out c.geojson --captioner mllm:./Qwen2.5-VL-3B --caption-every window:4
      geosr caption s2_stack.tif --out c.geojson --rgb-bands 3,2,1
    """
    import geosr

    setup_logging(verbose, quiet)

    def run():
        # SIGTERM (QGIS's Cancel) and Ctrl-C end in one line, the work folder removed; -q: errors only
        with remarks(quiet), stop_on_signals():
            return geosr.caption(
                list(inputs), output, captioner=captioner, caption_every=caption_every, tile=tile, overlap=overlap,
                bands=bands, rgb_bands=rgb_bands, aoi=aoi, overwrite=overwrite, address=address,
                local_workers=local_workers,
            )

    fc = fail_cleanly(run, catch_all=True, verbose=verbose)
    if not quiet:
        texts = [f["properties"]["caption"] for f in fc["features"]]
        click.echo(f"wrote {len(texts)} captions to {output}", err=True)
        for text in dict.fromkeys(texts):
            click.echo(f"  {texts.count(text):>4} x {text}", err=True)
