"""``geosr bench``: throughput and peak memory of whole runs."""

from __future__ import annotations

import json

import click

from geosr.benchmark import bench as run_bench


@click.command(context_settings={"max_content_width": 100, "ignore_unknown_options": True})
@click.argument("inputs", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option("--synthetic", multiple=True, type=int, help="Also measure a synthetic square uint8 scene of this size (repeatable).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the results as JSON.")
@click.option("--upscale-args", default="", help="Extra 'geosr upscale' options, quoted, e.g. \"--scale 4 --model bicubic\".")
def bench(inputs, synthetic, json_out, upscale_args):
    """Measure `geosr upscale` on INPUT scenes and/or synthetic ones: seconds, output
    megapixels per second and peak resident memory, each run in a fresh process.

    \b
    Examples:
      geosr bench scene.tif --upscale-args "--scale 4"
      geosr bench --synthetic 512 --synthetic 2048 --upscale-args "--scale 4 --model bicubic"
    """
    if not inputs and not synthetic:
        raise click.UsageError("give INPUT scenes or --synthetic SIZE")
    results = run_bench(inputs, synthetic, upscale_args.split())
    click.echo(f"{'input':<24} {'size':>11} {'out MP':>8} {'s':>8} {'MP/s':>7} {'peak RSS MiB':>13}")
    for r in results:
        size = "x".join(map(str, r["input_size"]))
        click.echo(f"{r['input']:<24} {size:>11} {r['output_megapixels']:>8.1f} {r['seconds']:>8.1f} "
                   f"{r['megapixels_per_second']:>7.3g} {r['peak_rss_mib']:>13.1f}")
    if json_out:
        with open(json_out, "w") as f:
            json.dump(results, f, indent=2)
