"""The ``geosr`` command line: a click group, one module per subcommand."""

from __future__ import annotations

import click

from geosr import __version__
from geosr.cli.bench import bench
from geosr.cli.bench_model import bench_model
from geosr.cli.caption import caption
from geosr.cli.evaluate import evaluate
from geosr.cli.evaluate_captioner import evaluate_captioner
from geosr.cli.info import info
from geosr.cli.upscale import upscale
from geosr.cli.validate import validate


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="geosr")
def cli() -> None:
    """Super-resolve large georeferenced rasters (GeoTIFF scenes and mosaics).

    \b
    Examples:
      geosr upscale scene.tif scene_x4.tif --scale 4
      geosr upscale tiles/*.tif mosaic_x4.tif --scale 4 --aoi field.geojson
      geosr info scene.tif
      geosr validate scene_x4.tif --source scene.tif
    """


cli.add_command(upscale)
cli.add_command(info)
cli.add_command(validate)
cli.add_command(bench)
cli.add_command(bench_model, name="bench-model")
cli.add_command(caption)
cli.add_command(evaluate_captioner, name="evaluate-captioner")
cli.add_command(evaluate)
