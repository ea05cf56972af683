"""``geosr bench``: throughput and peak memory of whole runs."""

from __future__ import annotations

import json

import click

from geosr.cli.options import report_file
from geosr.degradations import PROTOCOLS


@click.command(context_settings={"max_content_width": 100, "ignore_unknown_options": True})
@click.argument("inputs", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option("--synthetic", multiple=True, type=int, help="Also measure a synthetic square uint8 scene of this size (repeatable).")
@click.option("--synthetic-fields", multiple=True, type=int, help="Also measure a synthetic square RGB scene of "
              "this size, half water and fields, half texture (repeatable).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), callback=report_file, help="Write the results as JSON.")
@click.option("--upscale-args", default="", help="Extra 'geosr upscale' options, quoted, e.g. \"--scale 4 --model bicubic\".")
@click.option("--degrade", type=click.Choice(PROTOCOLS), help="Treat each INPUT (RGB uint8) as the HR truth: run on its "
              "LR made by this protocol and score the output against it (PSNR, SSIM).")
@click.option("--compare-route", is_flag=True, help="Also run with --route off (every tile to the model): time saved "
              "by routing, and with --degrade the PSNR / SSIM it changed.")
def bench(inputs, synthetic, synthetic_fields, json_out, upscale_args, degrade, compare_route):
    """Measure `geosr upscale` on INPUT scenes and/or synthetic ones, each run in a fresh
    process: seconds, output megapixels per second, the model alone on the same tiles
    (seconds, and run / model: the engine's overhead), the seconds a fresh process takes to load
    the model (imports included; "excl.": run / model without them), peak resident memory of the client and
    of the largest worker process, MiB of results the client received, the seam score
    (gradient across tile-core boundaries / the same steps within 8 input px of
    them; 1 = seamless) and the tiles routed to the cheap path (--route auto) of those processed.

    \b
    Examples:
      geosr bench scene.tif --upscale-args "--scale 4"
      geosr bench --synthetic 512 --synthetic 2048 --upscale-args "--scale 4 --model bicubic"
      geosr bench hr_scene.tif --degrade clean --compare-route --upscale-args "--scale 4"
    """
    if not inputs and not synthetic and not synthetic_fields:
        raise click.UsageError("give INPUT scenes, --synthetic SIZE or --synthetic-fields SIZE")
    from geosr.benchmark import bench as run_bench  # here: scipy's import would slow every geosr command

    results = run_bench(inputs, synthetic, upscale_args.split(), degrade=degrade, compare_route=compare_route,
                        synthetic_fields=synthetic_fields)
    click.echo(f"{'input':<22} {'size':>11} {'out MP':>7} {'s':>7} {'MP/s':>6} {'model s':>8} {'run/model':>9} {'load s':>6} {'excl.':>5} "
               f"{'RSS MiB':>8} {'worker':>7} {'recv MiB':>9} {'seams':>6} {'routed':>7}"
               + (f" {'PSNR':>6} {'SSIM':>6}" if degrade else ""))
    for r in results:
        rows = [(r["input"], r)] + ([("  --route off", r["route_off"])] if compare_route else [])
        size = "x".join(map(str, r["input_size"]))
        for name, m in rows:
            worker = f"{m['peak_rss_worker_mib']:.0f}" if m["peak_rss_worker_mib"] else "-"
            routed = f"{m['tiles_routed']}/{m['tiles_processed']}"
            click.echo(f"{name:<22} {size:>11} {m['output_megapixels']:>7.1f} {m['seconds']:>7.1f} "
                       f"{m['megapixels_per_second']:>6.3g} {m['model_seconds']:>8.3g} {m['overhead_ratio']:>9.2f} "
                       f"{m['load_seconds']:>6.1f} {m['overhead_ratio_loaded']:>5.2f} "
                       f"{m['peak_rss_mib']:>8.0f} {worker:>7} {m['client_received_mib']:>9.1f} {m['seam_score']:>6.3f} "
                       f"{routed:>7}" + (f" {m['psnr']:>6.2f} {m['ssim']:>6.4f}" if degrade else ""))
        click.echo(f"  model: {r['model']}")
        if compare_route:
            change = f", PSNR {r['psnr_change']:+.3f} dB, SSIM {r['ssim_change']:+.4f}" if degrade else ""
            click.echo(f"  routing saved {r['time_saved']:.0%} of the time{change}")
    if json_out:
        with open(json_out, "w") as f:
            json.dump(results, f, indent=2)
