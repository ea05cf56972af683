"""``geosr evaluate-captioner``: how well captioners state known degradations, side by side."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from geosr.captioning import load_captioner
from geosr.captioning.evaluation import evaluate_captioner as run_evaluation
from geosr.captioning.evaluation import find_images
from geosr.cli.options import fail_cleanly, report_file

# (result key, row label, format)
_ROWS = (
    ("parse_rate", "caption parse rate", "{:.3f}"),
    ("noise_median_abs_err", "noise sigma, median abs error (DN)", "{:.2f}"),
    ("blur_median_abs_err", "blur sigma, median abs error (LR px)", "{:.2f}"),
    ("aniso_accuracy", "iso vs aniso accuracy", "{:.3f}"),
    ("angle_median_abs_err_deg", "orientation, median abs error (deg)", "{:.1f}"),
    ("jpeg_accuracy", "JPEG or not, accuracy", "{:.3f}"),
    ("jpeg_quality_median_abs_err", "JPEG quality, median abs error", "{:.1f}"),
    ("seconds_per_crop", "seconds per crop", "{:.4f}"),
)


def format_table(results: list[dict]) -> str:
    """The figures of several captioners as a Markdown table, one column per captioner."""
    lines = ["| figure | " + " | ".join(f"`{r['captioner']}`" for r in results) + " |"]
    lines.append("|---|" + "---:|" * len(results))
    for key, label, fmt in _ROWS:
        cells = ["-" if math.isnan(r[key]) else fmt.format(r[key]) for r in results]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@click.command(short_help="Score captioners on synthetically degraded images, side by side.")
@click.option(
    "--images", "roots", multiple=True, required=True, type=click.Path(exists=True, path_type=Path),
    help="Image file or folder (searched recursively); repeatable. Use held-out data (val/).",
)
@click.option(
    "--captioner", "specs", multiple=True, default=("degradation",), show_default=True,
    help="Captioner spec (degradation, mllm:DIR-OR-HUB-ID, auto, ...); repeat to compare several.",
)
@click.option("--n", "n_crops", default=400, show_default=True, help="Number of degraded crops.")
@click.option("--crop", default=96, show_default=True, help="Captioned (LR) crop size in px.")
@click.option("--scale", default=2, show_default=True, help="HR -> LR downsampling of each crop.")
@click.option("--jpeg-share", default=0.25, show_default=True, help="Share of crops re-encoded as JPEG (quality 10-90).")
@click.option("--seed", default=0, show_default=True, help="Seed of the whole draw.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), callback=report_file,
              help="Also write the figures here.")
def evaluate_captioner(roots, specs, n_crops, crop, scale, jpeg_share, seed, json_out) -> None:
    """Degrade random crops with known blur, noise and JPEG and score each captioner's captions.

    Crops of the images are blurred (iso or anisotropic, LR sigma 0.5-4 px), downsampled by
    --scale, given noise (0-25 DN), JPEG-compressed (--jpeg-share of them) and quantised.
    Every captioner captions the same crops; its captions are read back with the caption
    grammar. Figures: the parse rate (captions that follow the grammar) and, over the parsed
    ones, median absolute errors of noise, blur sigma, orientation and JPEG quality, the
    iso/aniso and JPEG accuracies, and the time per crop. Prints a Markdown table.
    """
    if not 0.0 <= jpeg_share <= 1.0:
        raise click.BadParameter(f"{jpeg_share} is not in [0, 1]", param_hint="--jpeg-share")

    def run() -> list[dict]:
        images = find_images(roots)
        captioners = [load_captioner(spec) for spec in specs]  # all load before any is scored
        return [
            run_evaluation(images, c, n_crops=n_crops, crop=crop, seed=seed, scale=scale, jpeg_share=jpeg_share)
            for c in captioners
        ]

    results = fail_cleanly(run)
    click.echo(format_table(results))
    for r in results:  # a captioner that says who wrote each caption (auto)
        if r.get("speakers"):
            click.echo(f"`{r['captioner']}`: crops captioned by " + ", ".join(f"{k} {v}" for k, v in r["speakers"].items()))
    if json_out is not None:
        json_out.write_text(json.dumps(results, indent=2) + "\n")
