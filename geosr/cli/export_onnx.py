"""``geosr export-onnx``: a shipped one-step student as an ONNX graph, the caption baked in."""

from __future__ import annotations

import click

from geosr.cli.options import fail_cleanly


@click.command(context_settings={"max_content_width": 100})
@click.argument("model")
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--caption", default=None, help="Caption baked into the graph (default: a clean tile's, "
              "'no blur; no noise; no jpeg').")
@click.option("--guidance", type=float, help="Guidance scale g (default: the checkpoint's).")
@click.option("--check/--no-check", default=True, show_default=True,
              help="Run the graph through onnxruntime and the pipeline through torch (float32) on two tiles "
                   "and print the largest difference.")
def export_onnx(model, output, caption, guidance, check):
    """Export MODEL, a one-step CFG-distilled student (geosr-tiny-x4, geosr-tiny-x2 or such a pipeline
    directory), to an ONNX graph at OUTPUT: inputs lr [N, 3, h, w] in [0, 1] and noise, output hr, the tile
    size dynamic, with the metadata `geosr upscale --model OUTPUT` reads (scale, bands, value range, noise).

    The caption is baked in (its text-encoder states are constants): every tile gets it, as with
    --captioner fixed:TEXT. geosr draws each tile's noise from its seed as the pipeline does, so the
    graph gives the pipeline's pixels.

    \b
    Examples:
      geosr export-onnx geosr-tiny-x4 geosr-tiny-x4.onnx
      geosr export-onnx geosr-tiny-x2 x2-blurred.onnx --caption "moderate isotropic blur sigma 1.2 px; no noise; no jpeg"
      geosr upscale scene.tif scene_x4.tif --model geosr-tiny-x4.onnx --captioner none
    """
    from geosr.models.student_onnx import compare_export, export_student

    metadata = fail_cleanly(lambda: export_student(model, output, caption, guidance))
    click.echo(f"wrote {output}: x{metadata['scale']}, caption {metadata['caption']!r}, guidance {metadata['guidance']}")
    if check:
        diff = fail_cleanly(lambda: compare_export(model, output, metadata["caption"], guidance))
        click.echo(f"onnxruntime vs torch (float32), two 48 px tiles: largest difference {diff:.2g} DN of 255")
