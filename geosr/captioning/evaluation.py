"""How well a captioner states known synthetic degradations of real imagery.

Protocol (one draw per crop, all from one seeded generator):

1. pick an image, cut a random HR crop of ``crop * scale`` px with no nodata in it;
2. draw an LR blur sigma ``g`` uniform in ``blur_range`` (LR px), half the crops
   isotropic, half anisotropic with axis ratio uniform in ``aniso_ratio_range`` and a
   uniform orientation (the axes are ``g * sqrt(r)`` and ``g / sqrt(r)``, so ``g`` stays
   the geometric mean), a noise sigma uniform in ``noise_range`` (DN) and, for
   ``jpeg_share`` of the crops, a JPEG quality uniform in ``jpeg_quality_range``;
3. degrade with :func:`geosr.degradations.apply_degradation` (blur at HR, bicubic
   x``scale`` down, noise, JPEG), quantise to uint8 as a real tile would be, caption it,
   and read the caption back with :func:`geosr.captioning.vocabulary.parse_caption`.

Every captioner is scored the same way, through the text it writes: a caption that does
not follow the grammar counts against the parse rate and is left out of the errors.
Blurring at HR and downsampling makes the truth well defined: the image's own blur and
sensor noise shrink by ``scale`` and are dominated by the synthetic ones.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

import numpy as np
import rasterio
import torch

from geosr.captioning import attributed_captions, split_speaker
from geosr.captioning.vocabulary import parse_caption
from geosr.errors import InputError
from geosr.reading import dataset_valid
from geosr.scene import data_bands_of, data_dtype, rgb_uint8_bands

if TYPE_CHECKING:
    from geosr.captioning import Captioner
    from geosr.degradations import DegradationParams

__all__ = ["IMAGE_SUFFIXES", "degraded_crops", "evaluate_captioner", "find_images"]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


def find_images(roots: Iterable[str | Path]) -> list[Path]:
    """Image files (by suffix) under each root, recursively, sorted; a file root is kept."""
    paths: list[Path] = []
    for root in map(Path, roots):
        if root.is_file():
            paths.append(root)
        elif root.is_dir():
            paths.extend(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            raise InputError(f"no such image file or folder: {root}")
    return sorted(paths)


def _read_rgb(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """First three bands as ``H x W x 3`` uint8 and the valid-pixel mask."""
    with rasterio.open(path) as ds:
        bands = rgb_uint8_bands(ds)
        if bands is None:
            raise InputError(f"{path}: need an RGB uint8 image, got {len(data_bands_of(ds))} x {data_dtype(ds)}")
        rgb = ds.read(bands).transpose(1, 2, 0)
        valid = dataset_valid(ds)
    return rgb, valid


def degraded_crops(
    image_paths: Sequence[str | Path],
    n_crops: int = 200,
    crop: int = 96,
    seed: int = 0,
    scale: int = 2,
    blur_range: tuple[float, float] = (0.5, 4.0),
    noise_range: tuple[float, float] = (0.0, 25.0),
    aniso_ratio_range: tuple[float, float] = (2.0, 4.0),
    jpeg_share: float = 0.0,
    jpeg_quality_range: tuple[int, int] = (10, 90),
) -> Iterator[tuple[np.ndarray, "DegradationParams"]]:
    """Yield ``(lr_uint8, params)`` pairs drawn as the module docstring says.

    Even-numbered crops are isotropic, odd-numbered ones anisotropic. See
    :func:`evaluate_captioner` for the parameters.
    """
    from geosr.degradations import DegradationParams, apply_degradation

    if not image_paths:
        raise InputError("no images to draw crops from")
    rng = np.random.default_rng(seed)
    hr_size = crop * scale
    images = [_read_rgb(Path(p)) for p in image_paths]
    images = [im for im in images if min(im[0].shape[:2]) >= hr_size]
    if not images:
        raise InputError(f"no image is at least {hr_size} px on each side")
    done = 0
    while done < n_crops:
        rgb, valid = images[int(rng.integers(len(images)))]
        y = int(rng.integers(rgb.shape[0] - hr_size + 1))
        x = int(rng.integers(rgb.shape[1] - hr_size + 1))
        if not valid[y : y + hr_size, x : x + hr_size].all():
            continue
        hr = rgb[y : y + hr_size, x : x + hr_size].astype(np.float32) / 255.0
        g = float(rng.uniform(*blur_range))
        aniso = done % 2 == 1
        ratio = float(rng.uniform(*aniso_ratio_range)) if aniso else 1.0
        theta = float(rng.uniform(0.0, 180.0)) if aniso else 0.0
        noise = float(rng.uniform(*noise_range))
        # drawn for every crop, so that the blur/noise draws do not depend on jpeg_share
        quality = int(rng.integers(jpeg_quality_range[0], jpeg_quality_range[1] + 1))
        jpeg = quality if rng.random() < jpeg_share else None
        params = DegradationParams(
            scale=scale,
            blur_sigma_x=g * math.sqrt(ratio) * scale,
            blur_sigma_y=g / math.sqrt(ratio) * scale,
            blur_theta_deg=theta,
            noise_sigma=noise,
            jpeg_quality=jpeg,
            protocol="aniso" if aniso else "iso",
        )
        lr = apply_degradation(hr, params, rng)
        yield np.round(lr * 255.0).astype(np.uint8), params
        done += 1


def _median(values: list[float]) -> float:
    return float(np.median(values)) if values else math.nan


def evaluate_captioner(
    image_paths: Sequence[str | Path],
    captioner: "Captioner | None" = None,
    n_crops: int = 200,
    crop: int = 96,
    seed: int = 0,
    scale: int = 2,
    blur_range: tuple[float, float] = (0.5, 4.0),
    noise_range: tuple[float, float] = (0.0, 25.0),
    aniso_ratio_range: tuple[float, float] = (2.0, 4.0),
    jpeg_share: float = 0.0,
    jpeg_quality_range: tuple[int, int] = (10, 90),
    batch_size: int = 16,
) -> dict:
    """Score a captioner's captions of synthetically degraded real crops.

    Parameters
    ----------
    image_paths : sequence of path
        RGB uint8 images (GeoTIFF, PNG...), at least ``crop * scale`` px on each side;
        smaller ones are left out.
    captioner : Captioner, optional
        Defaults to :class:`~geosr.captioning.degradation.DegradationCaptioner`.
    n_crops : int
        Number of degraded crops.
    crop : int
        LR crop size in px (the size of the captioned tile).
    seed : int
        Seed of the whole draw (the same crops for every captioner).
    scale : int
        Downsampling factor between the HR crop and the captioned tile.
    blur_range, noise_range, aniso_ratio_range : (float, float)
        Ranges of the LR blur sigma (px), noise sigma (DN) and anisotropic axis ratio.
    jpeg_share : float
        Share of the crops re-encoded as JPEG.
    jpeg_quality_range : (int, int)
        Range of their JPEG quality.
    batch_size : int
        Crops per ``caption`` call.

    Returns
    -------
    dict
        ``n``; ``parse_rate`` (share of captions that follow the grammar); over the parsed
        captions: ``noise_median_abs_err`` (DN), ``blur_median_abs_err`` (LR px),
        ``aniso_accuracy`` (iso/aniso class right), ``angle_median_abs_err_deg``
        (anisotropic crops called anisotropic), ``jpeg_accuracy`` (JPEG or not right; with
        ``jpeg_share=0`` the share of crops not wrongly called JPEG),
        ``jpeg_quality_median_abs_err`` (JPEG crops called JPEG); ``seconds_per_crop`` (after
        the captioner's ``warm_up()`` where it has one: captioning, not loading); ``speakers``
        (crops per captioner that wrote their caption, for a captioner that says so: ``auto``;
        else empty); the captioner's name and the setup.
    """
    if captioner is None:
        from geosr.captioning.degradation import DegradationCaptioner

        captioner = DegradationCaptioner()
    crops = list(
        degraded_crops(
            image_paths, n_crops, crop, seed, scale, blur_range, noise_range, aniso_ratio_range,
            jpeg_share, jpeg_quality_range,
        )
    )
    if hasattr(captioner, "warm_up"):  # what it loads on first use (auto: its VLM), loaded untimed like the rest
        captioner.warm_up()
    attributed: list[str] = []
    start = time.perf_counter()
    for first in range(0, len(crops), batch_size):
        batch = np.stack([lr for lr, _ in crops[first : first + batch_size]])
        tiles = torch.from_numpy(batch.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
        attributed.extend(attributed_captions(captioner, tiles))
    seconds = time.perf_counter() - start
    captions = [split_speaker(c)[0] for c in attributed]
    speakers: dict[str, int] = {}
    for c in attributed:
        speaker = split_speaker(c)[1]
        if speaker is not None:
            speakers[speaker] = speakers.get(speaker, 0) + 1
    noise_err, blur_err, angle_err, quality_err = [], [], [], []
    aniso_right, jpeg_right = [], []
    parsed = 0
    for text, (_, params) in zip(captions, crops):
        facts = parse_caption(text)
        if facts is None:
            continue
        parsed += 1
        noise_err.append(abs(facts.noise_sigma - params.noise_sigma))
        blur_err.append(abs(facts.blur_sigma - params.blur_sigma / scale))
        aniso_right.append(facts.anisotropic == params.anisotropic)
        if params.anisotropic and facts.anisotropic:
            d = abs(facts.blur_angle_deg - params.blur_angle_deg) % 180.0
            angle_err.append(min(d, 180.0 - d))
        # without JPEG crops this is the share of crops NOT wrongly called JPEG
        jpeg_right.append((facts.jpeg_quality is None) == (params.jpeg_quality is None))
        if params.jpeg_quality is not None and facts.jpeg_quality is not None:
            quality_err.append(abs(facts.jpeg_quality - params.jpeg_quality))
    return {
        "captioner": captioner.name,
        "n": len(captions),
        "parse_rate": parsed / len(captions),
        "noise_median_abs_err": _median(noise_err),
        "blur_median_abs_err": _median(blur_err),
        "aniso_accuracy": float(np.mean(aniso_right)) if aniso_right else math.nan,
        "angle_median_abs_err_deg": _median(angle_err),
        "jpeg_accuracy": float(np.mean(jpeg_right)) if jpeg_right else math.nan,
        "jpeg_quality_median_abs_err": _median(quality_err),
        "seconds_per_crop": seconds / len(captions),
        "speakers": dict(sorted(speakers.items())),
        "setup": {
            "images": len(image_paths),
            "n_crops": n_crops,
            "crop": crop,
            "scale": scale,
            "seed": seed,
            "blur_range": list(blur_range),
            "noise_range": list(noise_range),
            "aniso_ratio_range": list(aniso_ratio_range),
            "jpeg_share": jpeg_share,
            "jpeg_quality_range": list(jpeg_quality_range),
        },
    }
