"""``geosr evaluate-captioner``: how well the degradation captioner measures known degradations."""

from __future__ import annotations

import json
from pathlib import Path

import click

from geosr.captioning.evaluation import evaluate_captioner as run_evaluation
from geosr.captioning.evaluation import find_images
from geosr.cli.options import fail_cleanly


@click.command(short_help="Measure the degradation captioner on synthetically degraded images.")
@click.option(
    "--images", "roots", multiple=True, required=True, type=click.Path(exists=True, path_type=Path),
    help="Image file or folder (searched recursively); repeatable. Use held-out data (val/).",
)
@click.option("--n", "n_crops", default=400, show_default=True, help="Number of degraded crops.")
@click.option("--crop", default=96, show_default=True, help="Estimated (LR) crop size in px.")
@click.option("--scale", default=2, show_default=True, help="HR -> LR downsampling of each crop.")
@click.option("--seed", default=0, show_default=True, help="Seed of the whole draw.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the figures here.")
def evaluate_captioner(roots, n_crops, crop, scale, seed, json_out) -> None:
    """Degrade random crops with known blur/noise and report the captioner's errors.

    Crops of the images are blurred (iso or anisotropic, LR sigma 0.5-4 px), downsampled
    by --scale, given noise (0-25 DN) and quantised; the figures are median absolute
    errors of noise and blur sigma and the iso/aniso accuracy.
    """
    result = fail_cleanly(
        lambda: run_evaluation(find_images(roots), n_crops=n_crops, crop=crop, seed=seed, scale=scale)
    )
    click.echo(json.dumps(result, indent=2))
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2) + "\n")
