"""``geosr bench-model``: tiles per second of a diffusion pipeline alone, per batch size."""

from __future__ import annotations

import json

import click

from geosr.cli.options import fail_cleanly

@click.command(context_settings={"max_content_width": 100})
@click.option("--model", help="A GeoSRPipeline directory, hub id or shipped model name.")
@click.option(
    "--preset", type=click.Path(exists=True, dir_okay=False),
    help="YAML of network configs built with random weights instead, e.g. configs/bench/sd15_student.yaml.",
)
@click.option("--hr-tile", default=512, show_default=True, help="Output tile side in px.")
@click.option("--batch-sizes", default="1,2,4,8", show_default=True, help="Comma-separated batch sizes to try.")
@click.option("--steps", type=click.IntRange(min=1), help="Denoising steps (default: the model's).")
@click.option("--device", default=None, help="Torch device (default: cuda when available, else cpu).")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default=None, help="Default: bf16 on CUDA and on CPUs with AMX, else fp32.")
@click.option("--repeats", default=3, show_default=True, help="Timed calls per batch size (after one warm-up).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the results as JSON.")
def bench_model(model, preset, hr_tile, batch_sizes, steps, device, dtype, repeats, json_out):
    """Measure a super-resolution pipeline alone (no I/O, captions or blending): seconds per
    call, HR tiles/s and HR MP/s at each batch size, peak GPU memory on CUDA.

    \b
    Examples:
      geosr bench-model --model geosr-tiny-x4 --hr-tile 512 --batch-sizes 1,2
      geosr bench-model --preset configs/bench/sd15_student.yaml --device cuda --dtype bf16 \\
          --batch-sizes 1,2,4,8,16,32
    """
    from geosr.models.diffusion import load_pipeline_quietly, resolve_device, resolve_dtype, resolve_model
    from geosr.pipeline_benchmark import build_preset_pipeline, measure_throughput

    if bool(model) == bool(preset):
        raise click.UsageError("give exactly one of --model or --preset")
    try:
        sizes = [int(b) for b in batch_sizes.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected e.g. 1,2,4, got {batch_sizes!r}", param_hint="--batch-sizes")
    if not sizes or min(sizes) < 1:
        raise click.BadParameter("batch sizes must be >= 1", param_hint="--batch-sizes")
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    if preset:
        pipe = build_preset_pipeline(preset)
        name = preset
    else:
        name = fail_cleanly(lambda: resolve_model(model))
        pipe = load_pipeline_quietly(name)
    try:
        rows = measure_throughput(pipe, hr_tile, sizes, steps=steps, device=device, dtype=dtype, repeats=repeats)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--hr-tile")
    n_steps = steps or pipe.config.default_num_inference_steps
    branches = 2 if pipe.runs_two_branches() else 1
    click.echo(f"{name}: {hr_tile} px HR tiles, {n_steps} step(s) x {branches} branch(es), {device} {dtype}")
    click.echo(f"{'batch':>5} {'s/call':>8} {'tiles/s':>8} {'HR MP/s':>8} {'peak GPU MiB':>13}")
    for r in rows:
        if "error" in r:
            click.echo(f"{r['batch_size']:>5} {r['error']}")
            continue
        click.echo(f"{r['batch_size']:>5} {r['seconds_per_call']:>8.3f} {r['tiles_per_second']:>8.2f} "
                   f"{r['hr_megapixels_per_second']:>8.2f} {r.get('peak_gpu_mib', float('nan')):>13.0f}")
    if json_out:
        with open(json_out, "w") as f:
            json.dump({"model": name, "hr_tile": hr_tile, "device": device, "dtype": str(dtype), "steps": n_steps,
                       "results": rows}, f, indent=2)
