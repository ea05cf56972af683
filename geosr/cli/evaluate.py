"""``geosr evaluate``: PSNR / SSIM / sharpness / detail of a model against bicubic on degraded HR images."""

from __future__ import annotations

import json
from pathlib import Path

import click

from geosr.cli.options import fail_cleanly, report_file, setup_logging, verbosity
from geosr.routing import ROUTES

_COLUMNS = (  # metric key, header, format
    ("psnr", "PSNR dB", "{:8.2f}"),
    ("delta_psnr", "dPSNR", "{:+7.2f}"),
    ("ssim", "SSIM", "{:7.4f}"),
    ("sharpness", "sharpness", "{:9.3f}"),
    ("hf_spectral_error", "HF err", "{:6.3f}"),
    ("consistency_error", "LR err DN", "{:9.2f}"),
    ("lpips", "LPIPS", "{:7.4f}"),
    ("clip_iqa", "CLIP-IQA", "{:8.4f}"),
)


def format_table(result: dict) -> str:
    """The result of :func:`geosr.evaluation.evaluate_sr` as a text table, baselines first."""
    bicubic_psnr = result["baselines"]["bicubic"]["psnr"]
    rows = [(name, metrics) for name, metrics in result["baselines"].items()]
    rows.append((result["model"]["name"], result["model"]))
    columns = [c for c in _COLUMNS if c[0] == "delta_psnr" or c[0] in result["model"]]
    width = max(len("method"), *(len(name) for name, _ in rows))
    widths = [len(fmt.format(0.0)) for _, _, fmt in columns]
    lines = ["  ".join(["method".ljust(width), *(h.rjust(w) for (_, h, _), w in zip(columns, widths))])]
    for name, metrics in rows:
        values = dict(metrics, delta_psnr=metrics["psnr"] - bicubic_psnr)
        lines.append("  ".join([name.ljust(width), *(fmt.format(values[key]) for key, _, fmt in columns)]))
    return "\n".join(lines)


def format_ablation(result: dict) -> str:
    """The caption ablation of a result: the model's metrics with each caption variant."""
    ablation = result["caption_ablation"]
    reference = ablation["measured"]["psnr"]
    lines = ["caption     PSNR dB  vs measured    SSIM  sharpness"]
    for name, metrics in ablation.items():
        lines.append(
            f"{name:<10}{metrics['psnr']:9.2f}{metrics['psnr'] - reference:+13.2f}"
            f"{metrics['ssim']:8.4f}{metrics['sharpness']:11.3f}"
        )
    return "\n".join(lines)


def format_uncertainty(result: dict) -> str:
    """The uncertainty block of a result: calibration per decile, then the block ranking."""
    u = result["uncertainty"]
    lines = [
        f"uncertainty: predicted vs actual RMSE per pixel (DN), {u['n_pixels']} px of all images pooled",
        "decile  predicted  actual  ratio",
    ]
    for i, b in enumerate(u["calibration"], 1):
        lines.append(f"{i:>6}{b['predicted']:11.2f}{b['actual']:8.2f}{b['ratio']:7.2f}")
    ratio = u["actual_rmse"] / u["predicted_rmse"] if u["predicted_rmse"] > 0 else float("inf")
    lines.append(f"{'all':>6}{u['predicted_rmse']:11.2f}{u['actual_rmse']:8.2f}{ratio:7.2f}")
    lines.append(f"calibration error (max |ratio - 1|): {u['calibration_error']:.3f}")
    lines.append(
        f"Spearman over {u['n_blocks']} blocks of {u['block']} x {u['block']} px: model {u['spearman']:.3f}, "
        f"gradient baseline {u['spearman_gradient_baseline']:.3f}"
    )
    return "\n".join(lines)


@click.command(short_help="Score a model against bicubic on synthetically degraded HR images.")
@click.option(
    "--hr", "hr_dirs", multiple=True, required=True, type=click.Path(exists=True, path_type=Path),
    help="Folder (searched recursively) or file of HR images: PNG, JPEG, GeoTIFF. Repeatable.",
)
@click.option(
    "--scale", type=click.Choice(["2", "3", "4", "8"]), default="4", show_default=True, help="Upscaling factor."
)
@click.option(
    "--degradation", type=click.Choice(["clean", "iso", "aniso"]), default="aniso", show_default=True,
    help="Protocol making the LR: clean (anti-aliased bicubic), iso (IKC blur) or aniso (DRSR blur + noise).",
)
@click.option(
    "--caption-ablation", is_flag=True,
    help="Also run the model with deliberately wrong captions (clean, noisy, blurry, empty) on the same LR.",
)
@click.option("--model", help="Model spec, as for geosr upscale (default: the shipped model of --scale, else bicubic).")
@click.option("--captioner", default="degradation", show_default=True, help="Captioner of the LR images.")
@click.option("--limit", type=click.IntRange(min=1), help="Evaluate the first N usable images only.")
@click.option("--crop", type=click.IntRange(min=1), help="Centre-crop each HR image to PX a side.")
@click.option("--seed", default=0, show_default=True, help="Image i is degraded and super-resolved with seed + i.")
@click.option("--steps", type=click.IntRange(min=1), help="Diffusion steps (default: the model's).")
@click.option("--guidance", type=float, help="Guidance scale (default: the model's).")
@click.option("--detail", type=float,
              help="Detail dial of the model, 0..1 (models with a detail branch; default 0, the fidelity output, "
                   "as for geosr upscale).")
@click.option("--lr-consistency", type=click.Choice(["off", "clean", "always"]),
              help="Project the model's outputs onto their LR (diffusion models; as for geosr upscale; default off).")
@click.option("--uncertainty", is_flag=True,
              help="Score the model's predicted per-pixel RMSE map: calibration per decile and block Spearman "
                   "rank correlation with the actual error, next to the output's gradient magnitude.")
@click.option("--device", help="Torch device (default: cuda when available).")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]),
              help="Precision of the networks (default: as for geosr upscale).")
@click.option("--route", type=click.Choice(ROUTES), default="auto", show_default=True,
              help="auto: also report what texture-aware routing (as geosr upscale does per tile, here per "
                   "image) changes: images routed to the cheap path, PSNR / SSIM change, model time saved.")
@click.option("--route-threshold", type=float,
              help="Texture under which a clean image is flat (as for geosr upscale; default: calibrated).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), callback=report_file,
              help="Write all figures here.")
@click.option(
    "--png", "png_out", type=click.Path(dir_okay=False, path_type=Path), callback=report_file,
    help="Write a comparison LR | bicubic | model | HR of the first image here.",
)
@verbosity
def evaluate(
    hr_dirs, scale, degradation, caption_ablation, model, captioner, limit, crop, seed, steps, guidance,
    detail, lr_consistency, uncertainty, device, dtype, route, route_threshold, json_out, png_out, verbose, quiet,
) -> None:
    """Degrade HR images with a training protocol, super-resolve them, compare with the HR.

    Every method sees the same LR (image i: seed + i). PSNR and SSIM are on RGB in [0, 1]
    with --scale px shaved off each border; the sharpness ratio is the gradient energy of the
    output over that of the HR (1 = as detailed as the truth). HF err is the high-frequency
    spectral error (decades of power off the HR's spectrum in the upper half of the
    frequencies; 0 = as much fine detail as the truth), LR err the RMS (DN) of the output,
    downsampled as the model assumes, against the LR. LPIPS and CLIP-IQA are added only
    when their weights are on this machine.

    \b
    Example:
      geosr evaluate --hr val/ucmerced --scale 4 --degradation aniso --limit 20
    """
    from geosr.evaluation import evaluate_sr, find_hr_images, render_comparison

    from geosr.models import default_model

    setup_logging(verbose, quiet)
    model = model or default_model(int(scale))
    options = dict(model=model, captioner=captioner, steps=steps, guidance=guidance, device=device, dtype=dtype,
                   detail=detail, lr_consistency=lr_consistency)
    result = fail_cleanly(
        lambda: evaluate_sr(
            find_hr_images(hr_dirs), int(scale), degradation, seed=seed, limit=limit, crop=crop,
            caption_ablation=caption_ablation, route=route, route_threshold=route_threshold,
            uncertainty=uncertainty, **options
        )
    )
    settings = result["settings"]
    click.echo(
        f"{settings['n_images']} image(s), x{settings['scale']} {degradation} degradation, "
        f"captioner {settings['captioner']}, {settings['border']} px border shaved"
    )
    for item in result["skipped"]:
        click.echo(f"skipped {item['path']}: {item['reason']}")
    click.echo(format_table(result))
    click.echo(f"images where the model's PSNR is below bicubic's: {100 * result['model']['worse_than_bicubic']:.1f} %")
    if result["uncertainty"]:
        click.echo(format_uncertainty(result))
    if result["caption_ablation"]:
        click.echo(format_ablation(result))
    if result["routing"]:
        r = result["routing"]
        click.echo(f"routing (threshold {r['threshold']}): {r['routed_share']:.1%} of images to {r['cheap_path']}, "
                   f"PSNR {r['psnr_change']:+.3f} dB, SSIM {r['ssim_change']:+.4f}, "
                   f"{r['model_time_saved']:.1%} of the model's time saved")
    for name, status in result["optional_metrics"].items():
        click.echo(f"{name}: {status}")
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2) + "\n")
    if png_out is not None:
        first = result["images"][0]
        fail_cleanly(
            lambda: render_comparison(first["path"], png_out, int(scale), degradation, seed=first["seed"], **options)
        )
        click.echo(f"comparison of {first['path']} written to {png_out}")
