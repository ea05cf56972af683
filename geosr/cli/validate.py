"""``geosr validate``: COG and georeferencing checks of an output."""

from __future__ import annotations

import os
import warnings

import click


@click.command(context_settings={"max_content_width": 100})
@click.argument("output", type=click.Path(exists=True, dir_okay=False))
@click.option("--source", callback=lambda ctx, param, value: _existing_source(value),
              help="The input it was made from: checks grid, CRS, bounds, dtype, mask. A raster file, or a "
                   "Sentinel-2 product (.SAFE folder, MTD_MSIL2A.xml) or subdataset name, as geosr upscale took it.")
def validate(output, source):
    """Check that OUTPUT is a valid COG and (with --source) the source grid refined.

    Reads every block of every band, mask and overview (a truncated or corrupt file
    fails), and warns when a band is constant where the source's varies. Exits with
    status 1 when a problem is found.

    \b
    Example:
      geosr validate scene_x4.tif --source scene.tif
    """
    from rasterio.errors import NodataShadowWarning

    from geosr.validation import validate_output  # here: rio-cogeo's import would slow every geosr command

    with warnings.catch_warnings():
        # an RGBA file with a nodata value: GDAL uses the nodata, as geosr does (reading.read_valid)
        warnings.simplefilter("ignore", NodataShadowWarning)
        res = validate_output(output, source)
    for key, value in res.facts.items():
        click.echo(f"{key}: {value}")
    for w in res.warnings:
        click.echo(f"warning: {w}")
    for e in res.errors:
        click.echo(f"ERROR: {e}")
    click.echo("OK" if res.ok else "INVALID")
    if not res.ok:
        raise SystemExit(1)


def _existing_source(value: str | None) -> str | None:
    """``--source`` as click's ``Path(exists=True)`` checked it, with a .SAFE folder and a
    Sentinel-2 subdataset name (``SENTINEL2_L2A:...``) let through."""
    if value is None or value.upper().startswith("SENTINEL2_"):
        return value
    if not os.path.exists(value):
        raise click.BadParameter(f"File {value!r} does not exist.")
    if os.path.isdir(value) and not value.rstrip("/").upper().endswith(".SAFE"):
        raise click.BadParameter(f"File {value!r} is a directory.")
    return value
