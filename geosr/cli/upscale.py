"""``geosr upscale``: super-resolve a scene or mosaic into a COG."""

from __future__ import annotations


import click

from geosr.cli.options import (
    OneLineErrors, exit_codes_help, fail_cleanly, parse_bands, parse_creation_options, parse_model_metadata, remarks,
    setup_logging, stop_on_signals, tile_options,
    verbosity,
)
from geosr.config import DEFAULT_CAPTIONER
from geosr.routing import CALIBRATED_THRESHOLDS, ROUTES, cheap_path
from geosr.scheduling import DEFAULT_CONNECT_TIMEOUT
from geosr.writer import check_file_name


@click.command(cls=OneLineErrors, context_settings={"max_content_width": 100}, epilog="\b\nExit status:\n" + exit_codes_help())
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.argument("output", nargs=1, metavar="OUTPUT")
@click.option("--scale", type=click.Choice(["2", "3", "4", "8"]), default="4", show_default=True, help="Upscaling factor.")
@click.option("--model", default=None, help="bicubic, lanczos, nearest (classification rasters), a shipped model name, "
              "a diffusers pipeline directory, a hub id, or your own network: an ONNX file (.onnx) or a TorchScript "
              "archive (.pt). [default: geosr-tiny-x4 at x4, geosr-tiny-x2 at x2, bicubic at other scales]")
@click.option("--model-meta", "model_metadata", multiple=True, callback=parse_model_metadata, metavar="KEY=VALUE",
              help="What your own network (.onnx, .pt) takes, over its own metadata; repeatable: scale=4, bands=4, "
                   "value_range=0-255 (or raw/10000: raster values / 10000), tile_multiple=8, tile_size=64, min_overlap=8.")
@click.option("--captioner", default=DEFAULT_CAPTIONER, show_default=True, help="auto (degradation, and the shipped VLM for tiles read as JPEG-compressed), degradation, mllm:geosr-caption-tiny (shipped VLM), mllm:DIR-OR-HUB-ID, fixed:TEXT or none.")
@click.option("--caption-every", default="tile", show_default=True, help="tile, window:N (one caption per N x N tiles) or scene.")
@tile_options
@click.option("--bands", callback=parse_bands, help="Bands to process, e.g. 1,2,3 (default: all but alpha).")
@click.option("--bands-to-model", default="all", show_default=True, help="all: every band through the model (R, G, B "
              "as one group, every other band - NIR, red edge, SWIR, pan - alone); rgb: R, G, B only, the rest bicubic; "
              "or band numbers, e.g. 4,5,6.")
@click.option("--rgb-bands", callback=parse_bands, help="The bands that are red, green, blue, e.g. 3,2,1 for a B2,B3,B4 "
              "stack (default: read from band descriptions, wavelengths or colour interpretation).")
@click.option("--aoi", type=click.Path(exists=True, dir_okay=False), help="GeoJSON polygon(s): only tiles touching them are processed.")
@click.option("--blend", type=click.Choice(["cosine", "none"]), default="cosine", show_default=True, help="Tile blending (none shows the seams).")
@click.option("--co", "creation_options", multiple=True, callback=parse_creation_options, metavar="NAME=VALUE", help="GDAL COG creation option, repeatable (e.g. --co COMPRESS=ZSTD; a lossy compression that would move pixels onto or off the nodata value is refused).")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT (and its captions) if they exist.")
@click.option("--resume", is_flag=True, help="Continue a stopped run of OUTPUT (same inputs and settings; refused "
              "with the reason if they differ); without one, start from the beginning.")
@click.option("--steps", type=int, help="Diffusion steps (diffusion models).")
@click.option("--guidance", type=float, help="Guidance scale g (diffusion models; 1 = no guidance).")
@click.option("--device", help="Torch device, e.g. cpu, cuda, cuda:1 (default: cuda when available).")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), help="Precision of neural models (default: bf16 on CUDA and on CPUs with AMX, else fp32).")
@click.option("--batch-size", type=int, help="Tiles per model call (default: 4; 1 for a neural model on the CPU, "
              "where batching saves no time and multiplies memory; with --address, as the workers' device wants).")
@click.option("--seed", default=0, show_default=True, help="Base seed (per-tile seeds derive from it).")
@click.option("--address", help="dask.distributed scheduler address, e.g. tcp://scheduler:8786.")
@click.option("--connect-timeout", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_CONNECT_TIMEOUT,
              show_default=True, metavar="SECONDS", help="How long to wait for the --address scheduler to answer.")
@click.option("--local-workers", type=click.IntRange(min=1), help="Run on a local dask.distributed cluster of N processes.")
@click.option("--performance-report", type=click.Path(dir_okay=False), help="Write a dask performance report (HTML; a stopped run writes its own, which --resume replaces).")
@click.option("--route", type=click.Choice(ROUTES), default="auto", show_default=True,
              help="auto: flat, clean, sharp tiles go to a cheap path instead of the model (never where there is texture, "
                   "noise or blur to restore): the shipped fast network geosr-tiny-fast-x2/-x4 at x2/x4, bicubic at other scales; "
                   "off: every tile goes to the model.")
@click.option("--route-threshold", type=float,
              help="Texture (RMS gradient in DN per input pixel, noise discounted) under which a clean tile is flat. "
                   "Default: calibrated for the cheap path ("
                   + ", ".join(f"{k} {v}" for k, v in CALIBRATED_THRESHOLDS.items()) + ").")
@click.option("--route-map", type=click.Path(dir_okay=False), help="Also write a small GeoTIFF, one pixel per tile: "
              "texture, noise and 1 where the model ran (open it over the scene in QGIS).")
@click.option("--split", metavar="N", help="Tiled output: OUTPUT is a folder (or a .vrt) of COGs of N x N output "
              "pixels (a multiple of 512) with a VRT over them and a STAC Collection; an OUTPUT ending in / or .vrt "
              "alone: N from the output's size (at least 64 blocks, N from 1024 to 16384).")
@click.option("--detail", type=click.FloatRange(0, 1), default=0.0, show_default=True, metavar="D",
              help="Detail level in [0, 1] (diffusion models with a detail head, as the shipped ones): 0 is the "
                   "fidelity output, 1 the most detail the model has learnt - drawn, not measured: plausible texture "
                   "the input cannot confirm. Reproducible (per-tile seeds); band means stay the input's. Tiles "
                   "routed to the cheap path (--route auto: flat, clean ones) get none; --route off for every tile.")
@click.option("--uncertainty", type=click.Path(dir_okay=False), metavar="FILE.tif",
              help="Also write the output's predicted error there: a float32 COG on the output grid, each pixel "
                   "the predicted RMS error in output DN over the model's bands, NaN where the output is nodata "
                   "(a model with an uncertainty head; every tile goes to the model, none is routed).")
@click.option("--lr-consistency", type=click.Choice(["off", "clean", "always"]), default="off", show_default=True,
              help="Project the diffusion model's output onto the input, so that downsampling it (antialiased "
                   "bicubic, as the model assumes) gives the input back: on tiles captioned as a clean downsampling, "
                   "or on all. Only for input made that way (a synthetic downsample): on blurred, noisy or plainly "
                   "decimated input it brings the blur, noise or aliasing back.")
@verbosity
def upscale(inputs, output, scale, model, model_metadata, captioner, caption_every, tile, overlap, bands, bands_to_model, rgb_bands, aoi,
            blend, creation_options,
            overwrite, resume, steps, guidance, device, dtype, batch_size, seed, address, connect_timeout, local_workers,
            performance_report, route, route_threshold, route_map, split, detail, uncertainty, lr_consistency,
            verbose, quiet):
    """Super-resolve INPUT into a Cloud Optimized GeoTIFF at OUTPUT.

    INPUT is one GeoTIFF, a .vrt, or several same-grid GeoTIFFs / a directory / a glob,
    upscaled as one mosaic; or a Sentinel-2 product (a .SAFE folder, its MTD_MSIL2A.xml /
    MTD_MSIL1C.xml or its zip: its 10 m bands B4, B3, B2, B8), or one of its GDAL subdatasets for
    another resolution (SENTINEL2_L2A:S2..SAFE/MTD_MSIL2A.xml:20m:EPSG_32633; geosr info
    PRODUCT lists them). The output grid is the input grid refined SCALE times (same
    CRS and bounds); nodata and masks are carried over, and tile footprints with their
    captions go to OUTPUT's name with .captions.geojson (a folder OUTPUT: captions.geojson
    inside it). OUTPUT is a COG, a folder of block COGs with a VRT (--split, or a name ending
    in / or .vrt), a Zarr store (.zarr), or any of them in S3 (s3://bucket/key). A failed
    run leaves no OUTPUT.

    One run per OUTPUT: a second run is refused while the first holds OUTPUT's lock. A run
    that stops (SIGTERM, SIGINT, SIGKILL, a full disk, lost workers) keeps its finished
    output cells in .OUTPUT.geosr-run-*/ beside OUTPUT; the same command with --resume
    continues from there and writes the same bytes as an uninterrupted run.

    \b
    Examples:
      geosr upscale scene.tif scene_x4.tif --scale 4
      geosr upscale tiles/ mosaic_x2.tif --scale 2 --model lanczos --co COMPRESS=ZSTD
      geosr upscale big.vrt out.tif --aoi field.geojson --bands 1,2,3
      geosr upscale S2B_MSIL2A_20230823T095559_N0509_R122_T34UCF_20230823T124759.SAFE s2_x4.tif --scale 4
      geosr upscale big.vrt out.tif --address tcp://scheduler:8786 --device cuda
      geosr upscale big.vrt out.tif --resume      # after a pre-empted run
      geosr upscale big.vrt out_x4/ --split 16384  # COG blocks + mosaic.vrt + STAC
      geosr upscale scene.tif out.tif --detail 0.5 --uncertainty out_error.tif
    """
    import geosr

    setup_logging(verbose, quiet)

    def run():
        for name in (*inputs, output, *([uncertainty] if uncertainty else [])):
            check_file_name(name)
        with remarks(quiet), stop_on_signals():  # -q: errors only (one line each); warnings are remarks
            return geosr.upscale_to_file(
                list(inputs), output, scale=int(scale), model=model, model_metadata=model_metadata, captioner=captioner, caption_every=caption_every,
                tile=tile, overlap=overlap, bands=bands, bands_to_model=bands_to_model, rgb_bands=rgb_bands, aoi=aoi,
                blend=blend, creation_options=creation_options,
                overwrite=overwrite, resume=resume, device=device, dtype=dtype, steps=steps, guidance=guidance,
                batch_size=batch_size, seed=seed, address=address, connect_timeout=connect_timeout,
                local_workers=local_workers,
                performance_report=performance_report, progress=not quiet, route=route,
                route_threshold=route_threshold, route_map=route_map, split=split, detail=detail,
                uncertainty=uncertainty, lr_consistency=lr_consistency,
            )

    report = fail_cleanly(run, catch_all=True, verbose=verbose)
    if not quiet:
        click.echo(
            f"wrote {report.output}" + (f" and its error map {report.uncertainty}" if report.uncertainty else "")
            + f" ({report.tiles_processed} tiles, {report.tiles_skipped} skipped, "
            + (f"{report.tiles_routed} routed to {cheap_path(scale)}, " if report.tiles_routed else "")
            + (f"{report.tiles_resumed} done before resuming, " if report.tiles_resumed else "")
            + _megapixels(report)
            + f" in {report.seconds:.1f} s, {report.megapixels_per_second:.2f} MP/s; "
            + f"{report.tail_seconds:.2f} s of it after the last tile)",
            err=True,
        )


def _megapixels(report) -> str:
    """What was computed; an output grid larger than that (an AOI, a resume) is masked or was there."""
    if abs(report.processed_megapixels - report.output_megapixels) < 0.05:
        return f"{report.output_megapixels:.1f} MP"
    return f"{report.processed_megapixels:.1f} MP computed of a {report.output_megapixels:.1f} MP output"

