"""The ``geosr`` command line: a click group, one module per subcommand.

Subcommands are imported only when one runs (or its own ``--help`` is asked for): most of
them need torch, which takes seconds to import, and ``geosr info`` or ``geosr --help`` need
none of it.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys

import click

from geosr import __version__

# name -> (module, function, the line `geosr --help` lists it with: its help's first words)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "upscale": ("geosr.cli.upscale", "upscale", "Super-resolve INPUT into a Cloud Optimized GeoTIFF at OUTPUT."),
    "info": ("geosr.cli.info", "info", "Describe INPUT (one raster, a .vrt or a same-grid mosaic): size, CRS, "
             "transform, dtype, nodata/mask, bands, and the tile plan."),
    "validate": ("geosr.cli.validate", "validate", "Check that OUTPUT is a valid COG and (with --source) the "
                 "source grid refined."),
    "bench": ("geosr.cli.bench", "bench", "Measure `geosr upscale` on INPUT scenes and/or synthetic ones, each "
              "run in a fresh process"),
    "bench-model": ("geosr.cli.bench_model", "bench_model", "Measure a super-resolution pipeline alone (no I/O, "
                    "captions or blending)"),
    "caption": ("geosr.cli.caption", "caption", "Caption the tiles of INPUT as `geosr upscale` would, into a "
                "GeoJSON of tile footprints (scene CRS) with their captions."),
    "evaluate-captioner": ("geosr.cli.evaluate_captioner", "evaluate_captioner", "Score captioners on "
                           "synthetically degraded images, side by side."),
    "evaluate": ("geosr.cli.evaluate", "evaluate", "Score a model against bicubic on synthetically degraded HR "
                 "images."),
    "evaluate-bands": ("geosr.cli.evaluate_bands", "evaluate_bands", "Score every band of a degraded multi-band "
                       "raster, and spectral indices, against bicubic."),
    "export-onnx": ("geosr.cli.export_onnx", "export_onnx", "Export MODEL, a one-step CFG-distilled student"),
}


class LazyGroup(click.Group):
    """A group that imports a subcommand's module when the subcommand is looked up, and lists
    the subcommands from :data:`SUBCOMMANDS` without importing any."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in SUBCOMMANDS:
            return None
        module, attribute, _ = SUBCOMMANDS[name]
        return getattr(importlib.import_module(module), attribute)

    def main(self, args=None, *more, standalone_mode: bool = True, **kwargs):
        """click's ``main``; run as the ``geosr`` program (no ``args``, standalone), the process
        then ends without tearing the interpreter down.

        Unloading torch, dask and the rest after a command took 0.5-0.6 s of every run
        (docs/benchmarks.md, "The serial tail"): part of the tail a cluster cannot shorten. The
        commands close their files, clusters and threads themselves; the streams and logs are
        flushed here. Called with ``args`` (click's test runner, Python code) it returns or
        raises as click's does.
        """
        if args is not None or not standalone_mode:
            return super().main(args, *more, standalone_mode=standalone_mode, **kwargs)
        try:
            super().main(None, *more, standalone_mode=True, **kwargs)
            code = 0
        except SystemExit as exc:  # standalone click always ends so
            code = exc.code
        if code is None:
            code = 0
        elif not isinstance(code, int):  # sys.exit("message"): printed, status 1
            print(code, file=sys.stderr)
            code = 1
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # a closed pipe (`geosr info x | head -1`)
                stream.flush()
        os._exit(code)

    def invoke(self, ctx: click.Context):
        """The subcommand; Ctrl-C before it takes stop signals itself ends as a stop (exit 8), in
        one line, not as click's "Aborted!" with exit 1 - the status of a bug."""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            from geosr.errors import RunStopped, StopRequested

            name = exc.args[0] if isinstance(exc, StopRequested) and exc.args else "SIGINT"
            err = click.ClickException(f"stopped by {name} before any work was kept")
            err.exit_code = RunStopped.exit_code
            raise err from exc

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows = [(n, click.utils.make_default_short_help(SUBCOMMANDS[n][2], limit)) for n in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
