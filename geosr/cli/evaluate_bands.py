"""``geosr evaluate-bands``: per-band PSNR and spectral-index RMSE of a degraded multi-band raster."""

from __future__ import annotations

import json
from pathlib import Path

import click

from geosr.cli.options import fail_cleanly, parse_bands, report_file, setup_logging, verbosity


def parse_pairs(_ctx, _param, values: tuple[str, ...]) -> list[tuple[int, int]]:
    """``--ndvi 4,1`` (repeatable) -> [(4, 1)]."""
    pairs = []
    for value in values:
        bands = parse_bands(_ctx, _param, value)
        if bands is None or len(bands) != 2:
            raise click.BadParameter(f"expected two band numbers like 4,1 (NIR, red), got {value!r}")
        pairs.append(bands)
    return pairs


def format_report(result: dict) -> str:
    """The result of :func:`geosr.band_evaluation.evaluate_bands` as text: a line of settings, a
    table of bands and one of indices."""
    s, run = result["settings"], result["run"]
    tags = run["tags"]
    rgb = f"; R,G,B: bands {tags['GEOSR_RGB_BANDS']} ({tags['GEOSR_RGB_SOURCE']})" if "GEOSR_RGB_BANDS" in tags else ""
    bicubic = f"; bicubic: {tags['GEOSR_BICUBIC_BANDS']}" if "GEOSR_BICUBIC_BANDS" in tags else ""
    lines = [
        f"x{s['scale']} {s['degradation']} degradation (seed {s['seed']}) of {s['hr']}, {s['border']} px left out along "
        f"edges and no-data ({s['scored_fraction']:.0%} of the pixels scored)",
        f"model run: {run['megapixels']:.2f} output MP in {run['seconds']:.1f} s ({run['mp_per_s']:.2f} MP/s); "
        f"model groups: {tags.get('GEOSR_MODEL_BANDS', '-')}{bicubic}{rgb}",
        "band  description         PSNR model  bicubic    gain   edge offset dy,dx: HR | model | bicubic",
    ]
    for b in result["bands"]:
        offsets = " | ".join(f"{dy:+.2f},{dx:+.2f}" for dy, dx in (b["edge_offset"][k] for k in ("hr", "model", "bicubic")))
        lines.append(f"{b['band']:>4}  {(b['description'] or '-')[:18]:<18}{b['psnr']['model']:>11.2f}"
                     f"{b['psnr']['bicubic']:>9.2f}{b['gain']:>+8.2f}   {offsets}")
    if result["indices"]:
        lines.append("normalised difference (a-b)/(a+b)   RMSE model  bicubic  change")
        for index in result["indices"]:
            a, b = index["bands"]
            lines.append(f"  bands {a},{b}{'':<25}{index['rmse']['model']:>10.4f}{index['rmse']['bicubic']:>9.4f}"
                         f"{index['change']:>+8.1%}")
    lines.append(f"band metadata (dtype, nodata, descriptions, scales, offsets, units) kept: "
                 f"{'yes' if result['metadata_kept'] else 'NO'}")
    return "\n".join(lines)


@click.command(short_help="Score every band of a degraded multi-band raster, and spectral indices, against bicubic.")
@click.argument("hr", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--scale", type=click.Choice(["2", "3", "4", "8"]), default="4", show_default=True,
              help="Upscaling factor.")
@click.option("--degradation", type=click.Choice(["clean", "iso", "aniso"]), default="clean", show_default=True,
              help="Protocol making the LR: clean (anti-aliased bicubic), iso (IKC blur) or aniso (DRSR blur + noise), "
                   "the same draw for every band.")
@click.option("--seed", default=0, show_default=True, help="Seed of the degradation.")
@click.option("--ndvi", "indices", multiple=True, callback=parse_pairs, metavar="A,B",
              help="Score the normalised difference (A - B) / (A + B) of bands A and B, on the values their "
                   "scales and offsets give (NDVI: NIR,red, e.g. 4,1). Repeatable.")
@click.option("--model", help="Model spec, as for geosr upscale (default: the shipped model of --scale).")
@click.option("--bands-to-model", default="all", show_default=True,
              help="all, rgb or band numbers (e.g. 4,5,6), as for geosr upscale.")
@click.option("--rgb-bands", callback=parse_bands, help="The bands that are red, green, blue (e.g. 3,2,1), as for "
              "geosr upscale.")
@click.option("--tile", type=click.IntRange(min=8), help="Tile size in LR px (default: geosr upscale's).")
@click.option("--device", help="Torch device (default: cuda when available).")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), help="Precision of the networks.")
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path),
              help="Keep the LR (lr.tif) and the outputs (model.tif, bicubic.tif) in this folder.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), callback=report_file,
              help="Write all figures here.")
@verbosity
def evaluate_bands(hr, scale, degradation, seed, indices, model, bands_to_model, rgb_bands, tile, device, dtype, keep,
                   json_out, verbose, quiet) -> None:
    """Degrade every band of HR, run `geosr upscale` on it with the model and with bicubic, and
    score each band (PSNR), normalised differences such as NDVI (RMSE against the HR's) and
    how edges line up across bands (cross-correlation peak of the gradients, px).

    \b
    Example:
      geosr evaluate-bands tests/data/rgbn_suba.tif --scale 2 --ndvi 4,1
    """
    from geosr.band_evaluation import evaluate_bands as run

    setup_logging(verbose, quiet)
    options = dict(model=model, bands_to_model=bands_to_model, rgb_bands=rgb_bands, tile=tile, device=device,
                   dtype=dtype)
    options = {k: v for k, v in options.items() if v is not None}
    result = fail_cleanly(lambda: run(hr, int(scale), degradation, seed, indices, keep, **options))
    click.echo(format_report(result))
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2) + "\n")
