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
    """Measure `geosr upscale` on INPUT scenes and/or synthetic ones, each run in a fresh
    process: seconds, output megapixels per second, the model alone on the same tiles
    (seconds, and run / model: the engine's overhead), peak resident memory of the client and
    of the largest worker process, MiB of results the client received, and the seam score
    (gradient across tile-core boundaries / the same steps within 8 input px of
    them; 1 = seamless).

    \b
    Examples:
      geosr bench scene.tif --upscale-args "--scale 4"
      geosr bench --synthetic 512 --synthetic 2048 --upscale-args "--scale 4 --model bicubic"
    """
    if not inputs and not synthetic:
        raise click.UsageError("give INPUT scenes or --synthetic SIZE")
    results = run_bench(inputs, synthetic, upscale_args.split())
    click.echo(f"{'input':<22} {'size':>11} {'out MP':>7} {'s':>7} {'MP/s':>6} {'model s':>8} {'run/model':>9} "
               f"{'RSS MiB':>8} {'worker':>7} {'recv MiB':>9} {'seams':>6}")
    for r in results:
        size = "x".join(map(str, r["input_size"]))
        worker = f"{r['peak_rss_worker_mib']:.0f}" if r["peak_rss_worker_mib"] else "-"
        click.echo(f"{r['input']:<22} {size:>11} {r['output_megapixels']:>7.1f} {r['seconds']:>7.1f} "
                   f"{r['megapixels_per_second']:>6.3g} {r['model_seconds']:>8.3g} {r['overhead_ratio']:>9.2f} "
                   f"{r['peak_rss_mib']:>8.0f} {worker:>7} {r['client_received_mib']:>9.1f} {r['seam_score']:>6.3f}")
    if json_out:
        with open(json_out, "w") as f:
            json.dump(results, f, indent=2)
