"""Full-reference evaluation of a super-resolution model on synthetically degraded HR images.

Protocol, per HR image (the ``i``-th of the list given):

1. read the first three bands (RGB uint8) and keep the valid area (see *Nodata* below);
   centre-crop to ``crop`` px when asked, and to at most :data:`MAX_LR_SIDE` LR px a side
   (a diffusion model super-resolves the whole LR image in one call), then to a multiple
   of ``scale``;
2. degrade with :func:`geosr.degradations.degrade` (the ``degradation`` protocol,
   ``seed + i``): every method sees the same LR, quantised to 8 bits as a real tile is;
3. caption the LR with the captioner and super-resolve it with the model (model seed
   ``seed + i``) and with each baseline (bicubic always);
4. clamp the outputs to [0, 1], quantise them to 8 bits (as a saved image would be), shave
   ``scale`` px off every border (the degradation's reflect padding and the interpolation's
   edge handling make the border meaningless) and compare with the HR on RGB in [0, 1]:
   PSNR, SSIM (Wang et al. 2004: 11 x 11 Gaussian window, sigma 1.5, per channel, averaged)
   and the sharpness ratio (gradient energy of the output / of the HR: below 1 is blurrier
   than the truth, above 1 is over-sharpened or noisy); the high-frequency spectral error
   (decades of power between the output's and the HR's spectra in the upper half of the
   frequencies, :func:`geosr.detail_metrics.hf_spectral_error`) and the LR consistency
   error (DN RMS between the output downsampled as the model assumes and the LR,
   :func:`geosr.detail_metrics.consistency_error`; with the ``iso`` and ``aniso`` protocols
   even the HR itself has one, so compare methods, not the figure with 0).

Detail dial (``detail``): the model is loaded with that detail setting (diffusion models
with a detail branch); the two detail metrics say what the dial bought and what it cost.

Uncertainty (``uncertainty=True``): the model's output and its predicted per-band RMSE
come from its ``upscale_with_uncertainty``; per pixel the predicted RMSE (``sqrt`` of the
band mean of ``sigma^2``) and the actual error (``sqrt`` of the band mean of the squared
difference of the 8-bit output and the HR) are taken in DN, the border shaved, and the
pixels of all images pooled: calibration over deciles of the predicted RMSE and the rank
correlation over 8 x 8 px blocks, next to that of the output's gradient magnitude, the free
guess (:mod:`geosr.uncertainty_metrics`).

LPIPS and CLIP-IQA are reported only when their weights are on this machine already; they
are never downloaded, and the result says why each was skipped.

Caption ablation (``caption_ablation=True``): the model also runs on the same LR with
captions that are wrong on purpose, to show what the caption is worth: ``clean`` (a sharp,
noise-free caption), ``noisy`` (strong noise stated where there may be none), ``blurry``
(strong blur stated) and ``empty`` (the unconditional branch). Each variant is scored like
the model; the measured caption is the reference.

Nodata: a few isolated pixels flagged nodata (at most :data:`MAX_FLAGGED_FRACTION` of
the image) are real values that happen to equal the nodata value, e.g. saturated white in
NEON plots with nodata 255: they are kept as they are. Otherwise the image is cropped to
its largest all-valid rectangle, and skipped when that is smaller than
:data:`MIN_LR_SIDE` LR px a side (the reason is in the result's ``skipped`` list).
"""

from __future__ import annotations

import importlib.util
import logging
import math
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import rasterio
import torch
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

from tqdm.auto import tqdm

from geosr.captioning import load_captioner
from geosr.captioning.vocabulary import format_caption
from geosr.captioning.evaluation import find_images
from geosr.reading import dataset_valid
from geosr.scene import data_bands_of, data_dtype, rgb_uint8_bands
from geosr.errors import InputError
from geosr.models import CLASSICAL, default_model, load_upscaler, own_model_kind
from geosr.routing import MODEL, cheap_path, route_tiles, routing_threshold
from geosr.degradations import PROTOCOLS, DegradationParams, degrade
from geosr.detail_metrics import consistency_error, hf_spectral_error
from geosr.uncertainty_metrics import (
    band_rms,
    block_spearman,
    calibration_bins,
    calibration_error,
    gradient_baseline,
)

__all__ = [
    "ABLATION_CAPTIONS",
    "MAX_LR_SIDE",
    "evaluate_sr",
    "find_hr_images",
    "image_to_batch",
    "largest_valid_rectangle",
    "quantise_8bit",
    "read_hr_image",
    "psnr",
    "render_comparison",
    "sharpness_ratio",
    "ssim",
]

logger = logging.getLogger(__name__)

MAX_LR_SIDE = 512  # LR px a side; larger images are centre-cropped
MIN_LR_SIDE = 16  # LR px a side; smaller (valid areas of) images are skipped
MAX_FLAGGED_FRACTION = 1e-3  # isolated nodata-flagged pixels kept as values, see the module doc
_RECT_GRID = 256  # cells a side of the mask the valid-rectangle search runs on
_LUMA = np.array([0.299, 0.587, 0.114])
_CLIP_IQA_MODEL = "openai/clip-vit-base-patch16"
_CLIP_IQA_PROMPTS = ("Good photo.", "Bad photo.")
_SKIPPED = "skipped: weights not available locally"
UNCERTAINTY_BLOCK = 8  # px a side of the blocks the uncertainty map is ranked over
CALIBRATION_BINS = 10  # deciles of the predicted RMSE

Metric = Callable[[np.ndarray, np.ndarray], float]


def find_hr_images(dirs: Iterable[str | Path]) -> list[Path]:
    """PNG / JPEG / TIFF (GeoTIFF) files under each folder, recursively, sorted.

    Raises
    ------
    InputError
        A folder does not exist, or no image is found.
    """
    dirs = list(dirs)
    paths = find_images(dirs)
    if not paths:
        raise InputError(f"no PNG, JPEG or TIFF images found under {', '.join(map(str, dirs))}")
    return paths


# --------------------------------------------------------------------------- metrics


def _shave(a: np.ndarray, border: int) -> np.ndarray:
    return a[border : a.shape[0] - border, border : a.shape[1] - border] if border else a


def _pair(a: np.ndarray, b: np.ndarray, border: int) -> tuple[np.ndarray, np.ndarray]:
    if a.shape != b.shape:
        raise InputError(f"images differ in shape: {a.shape} vs {b.shape}")
    a, b = _shave(np.asarray(a, np.float64), border), _shave(np.asarray(b, np.float64), border)
    if a.size == 0:
        raise InputError(f"nothing left of a {a.shape} image after shaving {border} px")
    return a, b


def psnr(a: np.ndarray, b: np.ndarray, border: int = 0) -> float:
    """Peak signal-to-noise ratio (dB) of two images in [0, 1] (peak 1).

    Parameters
    ----------
    a, b : numpy.ndarray
        ``H x W`` or ``H x W x C`` images of the same shape, values in [0, 1].
    border : int
        Pixels shaved off each edge first.

    Returns
    -------
    float
        ``10 log10(1 / MSE)``; ``inf`` for identical images.
    """
    a, b = _pair(a, b, border)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def ssim(a: np.ndarray, b: np.ndarray, border: int = 0) -> float:
    """Structural similarity (Wang et al. 2004) of two images in [0, 1].

    The standard setting: 11 x 11 Gaussian window with sigma 1.5, population covariances,
    ``K1 = 0.01``, ``K2 = 0.03``, data range 1; the mean over channels of ``H x W x C`` input.

    Parameters
    ----------
    a, b : numpy.ndarray
        ``H x W`` or ``H x W x C`` images of the same shape, at least 11 px a side after shaving.
    border : int
        Pixels shaved off each edge first.
    """
    # imported here: scikit-image takes a while to import and only the evaluation needs it
    from skimage.metrics import structural_similarity

    a, b = _pair(a, b, border)
    if min(a.shape[:2]) < 11:
        raise InputError(f"SSIM needs at least 11 x 11 px, got {a.shape[:2]}")
    return float(
        structural_similarity(
            a,
            b,
            data_range=1.0,
            channel_axis=-1 if a.ndim == 3 else None,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
    )


def _gradient_energy(img: np.ndarray) -> float:
    luma = img @ _LUMA if img.ndim == 3 else img
    gy, gx = np.gradient(luma)
    return float(np.mean(gx**2 + gy**2))


def sharpness_ratio(out: np.ndarray, hr: np.ndarray, border: int = 0) -> float:
    """Gradient energy of ``out`` over that of ``hr``, on the luminance.

    The energy is the mean squared gradient magnitude (central differences,
    :func:`numpy.gradient`) of ``0.299 R + 0.587 G + 0.114 B`` (or of the single band).
    1 means as much fine detail as the HR; interpolation gives less (blur), noise or
    hallucinated texture can give more.

    Parameters
    ----------
    out, hr : numpy.ndarray
        ``H x W x 3`` or ``H x W`` images of the same shape.
    border : int
        Pixels shaved off each edge first.

    Returns
    -------
    float
        The ratio; ``nan`` when the HR is flat (no gradient at all).
    """
    out, hr = _pair(out, hr, border)
    reference = _gradient_energy(hr)
    return _gradient_energy(out) / reference if reference > 0 else math.nan


# ------------------------------------------------------------ optional learned metrics


def _lpips_metric(device: str) -> tuple[Metric | None, str]:
    """LPIPS (AlexNet) when the lpips package, its linear weights and the AlexNet backbone are local."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or spec.origin is None:
        return None, f"{_SKIPPED} (lpips is not installed)"
    linear = Path(spec.origin).parent / "weights" / "v0.1" / "alex.pth"
    # lpips builds torchvision's AlexNet with ImageNet weights: the file torch.hub would download
    backbone = Path(torch.hub.get_dir()) / "checkpoints" / "alexnet-owt-7be5be79.pth"
    if not (linear.is_file() and backbone.is_file()):
        return None, f"{_SKIPPED} (need {linear} and {backbone})"
    import lpips

    net = lpips.LPIPS(net="alex", verbose=False).to(device).eval()

    def metric(out: np.ndarray, hr: np.ndarray) -> float:
        x, y = (torch.from_numpy(v.transpose(2, 0, 1)).float()[None].to(device) * 2 - 1 for v in (out, hr))
        with torch.no_grad():
            return float(net(x, y).mean())

    return metric, "computed (lpips AlexNet v0.1; lower is better)"


def _clip_iqa_metric(device: str) -> tuple[Callable[[np.ndarray], float] | None, str]:
    """CLIP-IQA (Wang et al. 2023, "Good photo." vs "Bad photo.") when CLIP ViT-B/16 is in the HF cache."""
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(_CLIP_IQA_MODEL, "config.json"), str):
        return None, f"{_SKIPPED} ({_CLIP_IQA_MODEL} is not in the Hugging Face cache)"
    from transformers import CLIPModel, CLIPProcessor

    try:
        model = CLIPModel.from_pretrained(_CLIP_IQA_MODEL, local_files_only=True).to(device).eval()
        processor = CLIPProcessor.from_pretrained(_CLIP_IQA_MODEL, local_files_only=True)
    except OSError as err:  # a partial cache: the config but not every file
        return None, f"{_SKIPPED} ({err})"

    def metric(img: np.ndarray) -> float:
        inputs = processor(
            text=list(_CLIP_IQA_PROMPTS),
            images=np.round(img * 255).astype(np.uint8),
            return_tensors="pt",
            padding=True,
        ).to(device)
        # logits_per_image: CLIP's scaled cosine similarities (scale 100), stable across versions
        with torch.no_grad():
            logits = model(**inputs).logits_per_image
        return float(torch.softmax(logits, dim=-1)[0, 0])

    return metric, f"computed ({_CLIP_IQA_MODEL}; no-reference, higher is better)"


# --------------------------------------------------------------------------- images


def largest_valid_rectangle(valid: np.ndarray) -> tuple[int, int, int, int]:
    """``(row0, row1, col0, col1)`` of the largest all-True rectangle (maximal-histogram method).

    The search runs in Python, so a large mask is first reduced to blocks (a block is valid
    when all its pixels are) of at most ``_RECT_GRID`` a side: the box found is all-valid,
    and at most a block short of the largest one on each edge.
    """
    block = max(1, math.ceil(max(valid.shape) / _RECT_GRID))
    if block > 1:
        pad = [(0, -n % block) for n in valid.shape]
        coarse = np.pad(valid, pad, constant_values=False)
        coarse = coarse.reshape(coarse.shape[0] // block, block, coarse.shape[1] // block, block).all(axis=(1, 3))
        r0, r1, c0, c1 = largest_valid_rectangle(coarse)
        # padded blocks are invalid, so the box stays inside the image
        return r0 * block, r1 * block, c0 * block, c1 * block
    heights = np.zeros(valid.shape[1] + 1, dtype=np.int64)  # a zero sentinel flushes the stack
    best, box = 0, (0, 0, 0, 0)
    for row in range(valid.shape[0]):
        heights[:-1] = np.where(valid[row], heights[:-1] + 1, 0)
        stack: list[int] = []
        for col, h in enumerate(heights):
            while stack and heights[stack[-1]] >= h:
                top = heights[stack.pop()]
                left = stack[-1] + 1 if stack else 0
                if top * (col - left) > best:
                    best, box = int(top * (col - left)), (row - int(top) + 1, row + 1, left, col)
            stack.append(col)
    return box


def read_hr_image(path: Path, scale: int, crop: int | None) -> np.ndarray:
    """The HR image as ``H x W x 3`` float32 in [0, 1], prepared as the module docstring says.

    Raises
    ------
    InputError
        Not an RGB uint8 image, or too little valid area (the message says which).
    """
    # PNG / JPEG carry no georeferencing, which is expected here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as ds:
            bands = rgb_uint8_bands(ds)
            if bands is None:
                raise InputError(f"need an RGB uint8 image, got {len(data_bands_of(ds))} band(s) of {data_dtype(ds)}")
            rgb = ds.read(bands).transpose(1, 2, 0)
            valid = dataset_valid(ds)
    if 1.0 - valid.mean() > MAX_FLAGGED_FRACTION:
        r0, r1, c0, c1 = largest_valid_rectangle(valid)
        rgb = rgb[r0:r1, c0:c1]
    side = scale * min(crop // scale if crop else MAX_LR_SIDE, MAX_LR_SIDE)
    h, w = (min(n, side) // scale * scale for n in rgb.shape[:2])
    if min(h, w) < MIN_LR_SIDE * scale:
        size = f"{rgb.shape[0]} x {rgb.shape[1]}"
        raise InputError(f"the image (its valid area) is {size} px, under {MIN_LR_SIDE * scale} px a side")
    y, x = (rgb.shape[0] - h) // 2, (rgb.shape[1] - w) // 2
    rgb = rgb[y : y + h, x : x + w]
    if (rgb == rgb[:1, :1]).all():  # PSNR infinite, no gradient for the sharpness ratio: every mean NaN
        raise InputError("the image (its scored area) is one flat colour: nothing to score")
    return rgb.astype(np.float32) / 255.0


#: Deliberately wrong captions of the caption ablation, in the captioner's vocabulary.
ABLATION_CAPTIONS = {
    "clean": format_caption(0.3, False, 0.0, 0.0, None),
    "noisy": format_caption(0.3, False, 0.0, 20.0, None),
    "blurry": format_caption(2.0, False, 0.0, 0.0, None),
    "empty": "",
}


def quantise_8bit(img: np.ndarray) -> np.ndarray:
    """Round an image in [0, 1] to the 8-bit levels an LR or output would be stored with."""
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.float32) / 255.0


def image_to_batch(img: np.ndarray) -> torch.Tensor:
    """``H x W x C`` float image -> a ``1 x C x H x W`` tensor, as upscalers take tiles."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]


class _Run:
    """The upscalers and the captioner of one evaluation, and the per-image steps."""

    def __init__(
        self,
        scale: int,
        degradation: str,
        model: str | None,
        captioner: str,
        baselines: Sequence[str],
        steps: int | None,
        guidance: float | None,
        device: str | None,
        dtype: str | None = None,
        detail: float | None = None,
        uncertainty: bool = False,
        lr_consistency: str | None = None,
    ) -> None:
        if degradation not in PROTOCOLS:
            raise InputError(f"unknown degradation {degradation!r}: use one of {', '.join(PROTOCOLS)}")
        unknown = [b for b in baselines if b not in CLASSICAL]
        if unknown:
            raise InputError(f"baselines must be classical ({', '.join(CLASSICAL)}), got {unknown}")
        self.scale, self.degradation = int(scale), degradation
        # the delta is reported against bicubic, so it is always a baseline
        self.baselines = {name: load_upscaler(name, scale) for name in dict.fromkeys(("bicubic", *baselines))}
        options = dict(steps=steps, guidance=guidance, device=device, dtype=dtype, detail=detail,
                       lr_consistency=lr_consistency)
        options = {k: v for k, v in options.items() if v is not None}
        self.model_spec = model or default_model(scale)  # what the figures are reported under
        for name, value in (("detail", detail), ("lr_consistency", lr_consistency)):
            if value is not None and (self.model_spec in CLASSICAL or own_model_kind(self.model_spec)):
                # their loaders have no such option: classical ones would ignore it silently
                raise InputError(f"{name} is a setting of diffusion models, not of {self.model_spec}")
        self.model = load_upscaler(self.model_spec, scale, **options)
        # a diffusion model has the method whether or not its checkpoint has the head: it says
        # which in has_uncertainty, and would only fail on the first image
        if uncertainty and not (
            hasattr(self.model, "upscale_with_uncertainty") and getattr(self.model, "has_uncertainty", True)
        ):
            raise InputError(f"model {self.model_spec} has no uncertainty head")
        self.uncertainty = uncertainty
        self.captioner = load_captioner(captioner)

    def make_lr(self, hr: np.ndarray, seed: int) -> tuple[np.ndarray, DegradationParams]:
        lr, params = degrade(hr, self.scale, self.degradation, seed=seed)
        return quantise_8bit(lr), params

    def super_resolve(self, lr: np.ndarray, seed: int) -> tuple[str, dict[str, np.ndarray], np.ndarray]:
        """Caption, the baselines' outputs by name, and the model's output (all ``H x W x 3``).

        The model's seconds are kept in :attr:`model_seconds`; with ``uncertainty``, its
        predicted per-band RMSE (``H x W x 3``, [0, 1] units) in :attr:`model_sigma`.
        """
        tiles = image_to_batch(lr)
        caption = self.captioner.caption(tiles)[0]
        baselines = {name: self.run(u, lr, caption, seed) for name, u in self.baselines.items()}
        t0 = time.perf_counter()
        if self.uncertainty:
            upscaled, sigma = self.model.upscale_with_uncertainty(tiles, [caption], seeds=[seed])
            out = quantise_8bit(upscaled[0].float().cpu().numpy().transpose(1, 2, 0))
            self.model_sigma = sigma[0].float().cpu().numpy().transpose(1, 2, 0)
        else:
            out = self.run(self.model, lr, caption, seed)
        self.model_seconds = time.perf_counter() - t0
        return caption, baselines, out

    @staticmethod
    def run(upscaler, lr: np.ndarray, caption: str, seed: int) -> np.ndarray:
        """One upscaler's 8-bit quantised ``H x W x 3`` output for ``lr`` with ``caption``."""
        out = upscaler.upscale(image_to_batch(lr), [caption], seeds=[seed])[0]
        return quantise_8bit(out.float().numpy().transpose(1, 2, 0))


# ----------------------------------------------------------------------- evaluation


def _scores(out: np.ndarray, hr: np.ndarray, lr: np.ndarray, scale: int, lpips_fn, clip_iqa_fn) -> dict[str, float]:
    border = scale
    scores = {
        "psnr": psnr(out, hr, border),
        "ssim": ssim(out, hr, border),
        "sharpness": sharpness_ratio(out, hr, border),
        "hf_spectral_error": hf_spectral_error(out, hr, border),
        "consistency_error": consistency_error(out, lr, scale),
    }
    if lpips_fn is not None:
        scores["lpips"] = lpips_fn(_shave(out, border), _shave(hr, border))
    if clip_iqa_fn is not None:
        scores["clip_iqa"] = clip_iqa_fn(_shave(out, border))
    return scores


def _means(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}


def evaluate_sr(
    hr_paths: Sequence[str | Path],
    scale: int,
    degradation: str,
    model: str | None = None,
    captioner: str = "degradation",
    seed: int = 0,
    limit: int | None = None,
    crop: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    device: str | None = None,
    dtype: str | None = None,
    baselines: Sequence[str] = ("bicubic",),
    caption_ablation: bool = False,
    route: str = "auto",
    route_threshold: float | None = None,
    detail: float | None = None,
    uncertainty: bool = False,
    lr_consistency: str | None = None,
) -> dict:
    """Super-resolve degraded HR images with a model and baselines; compare with the HR.

    See the module docstring for the protocol.

    Parameters
    ----------
    hr_paths : sequence of path
        HR images (RGB uint8: PNG, JPEG, GeoTIFF); see :func:`find_hr_images`.
    scale : int
        Downsampling / upscaling factor.
    degradation : {"clean", "iso", "aniso"}
        Protocol that makes the LR (:mod:`geosr.degradations`).
    model : str, optional
        Model spec for :func:`geosr.models.load_upscaler`; default: the shipped model of
        ``scale`` (:func:`geosr.models.default_model`).
    captioner : str
        Captioner spec for :func:`geosr.captioning.load_captioner`; it captions the LR.
    seed : int
        Image ``i`` is degraded, and super-resolved, with seed ``seed + i``.
    limit : int, optional
        Evaluate the first ``limit`` usable images only.
    crop : int, optional
        Centre-crop each HR image to ``crop`` px a side (at most :data:`MAX_LR_SIDE` LR px).
    steps, guidance, device, dtype : optional
        Passed to the model loader (diffusion models); None keeps the model's defaults.
    baselines : sequence of str
        Classical upscalers to compare with; bicubic is always one.
    caption_ablation : bool
        Also run the model with each caption of :data:`ABLATION_CAPTIONS`.
    route, route_threshold
        With ``route="auto"`` and a neural model, each LR image is routed as ``geosr
        upscale`` routes a tile (:mod:`geosr.routing`); the model's figures stay those of
        the model on every image, and ``routing`` says what routing would change.
    detail : float, optional
        Detail setting the model is loaded with (``load_upscaler(..., detail=detail)``);
        None keeps the model's default.
    lr_consistency : {"off", "clean", "always"}, optional
        Which outputs the model projects onto their LR (``load_upscaler(...,
        lr_consistency=...)``); None keeps the model's default (off).
    uncertainty : bool
        Take the model's output and its predicted per-band RMSE from its
        ``upscale_with_uncertainty`` and score the prediction (``uncertainty`` below).

    Returns
    -------
    dict
        ``settings``; ``model`` (``name``, ``description``, the mean metrics,
        ``delta_vs_bicubic`` and ``worse_than_bicubic``, the share of images whose PSNR is
        below bicubic's); ``baselines`` (name -> mean metrics); ``caption_ablation`` (variant
        -> mean metrics, ``measured`` included; empty unless asked); ``images`` (per image:
        ``path``, ``seed``, ``hr_size``, ``degradation`` parameters, ``caption``, ``model``
        and ``baselines`` metrics, ``model_seconds``, ``route`` when routed, with the cheap
        path's ``scores`` where it was taken); ``routing`` (when routed: ``threshold``,
        ``cheap_path``, ``routed_share`` of images, ``psnr_change`` and ``ssim_change`` of the
        mean with routed images given the cheap path's output, ``model_time_saved``, the
        share of the model's seconds spent on routed images);
        ``uncertainty`` (empty unless asked; pooled over all images, in DN: ``calibration``,
        the bins of :func:`geosr.uncertainty_metrics.calibration_bins` over deciles of the
        predicted RMSE, ``calibration_error``, their max ``|ratio - 1|``, ``spearman``, the
        rank correlation of predicted and actual RMSE over 8 x 8 px blocks, and
        ``spearman_gradient_baseline``, that of the output's gradient magnitude, the figure
        to beat; ``predicted_rmse``, ``actual_rmse``, ``block``, ``n_pixels``, ``n_blocks``,
        ``units``; per image, ``uncertainty`` holds ``predicted_rmse`` and ``actual_rmse``);
        ``skipped`` (``path``, ``reason``) and
        ``optional_metrics`` (``lpips`` / ``clip_iqa``: computed or why skipped). Metrics
        are ``psnr`` (dB), ``ssim``, ``sharpness``, ``hf_spectral_error`` (decades),
        ``consistency_error`` (DN) and, when available, ``lpips``, ``clip_iqa``.

    Raises
    ------
    InputError
        Unknown degradation or baseline, no usable image, or ``uncertainty`` asked of a
        model without an uncertainty head.
    ModelError, CaptionerError
        The model or the captioner cannot be loaded (a ``detail`` setting the model does
        not have is one of the model's errors).
    """
    if limit is not None and limit < 1:
        raise InputError(f"limit must be >= 1, got {limit}")
    if crop is not None and crop < MIN_LR_SIDE * scale:
        raise InputError(f"crop must be at least {MIN_LR_SIDE * scale} px at x{scale}, got {crop}")
    if not hr_paths:
        raise InputError("no HR images given")
    run = _Run(scale, degradation, model, captioner, baselines, steps, guidance, device, dtype, detail, uncertainty,
               lr_consistency)
    threshold = routing_threshold(route, route_threshold, run.model_spec, run.scale)
    cheap = cheap_path(run.scale)
    cheap_options = {} if cheap in CLASSICAL else {k: v for k, v in dict(device=device, dtype=dtype).items() if v}
    cheap_model = load_upscaler(cheap, run.scale, **cheap_options) if threshold is not None else None
    metric_device = device or "cpu"
    lpips_fn, lpips_status = _lpips_metric(metric_device)
    clip_iqa_fn, clip_iqa_status = _clip_iqa_metric(metric_device)
    images, skipped = [], []
    sigma_maps, error_maps, gradient_maps = [], [], []  # per image, in DN, border shaved
    # A progress bar on a terminal only (disable=None): a full validation set takes minutes.
    bar = tqdm(total=min(limit or len(hr_paths), len(hr_paths)), unit="image", desc="evaluate", disable=None)
    for index, path in enumerate(map(Path, hr_paths)):
        if limit is not None and len(images) >= limit:
            break
        try:
            hr = read_hr_image(path, run.scale, crop)
        except (InputError, RasterioIOError) as err:
            logger.warning("skipping %s: %s", path, err)
            skipped.append({"path": str(path), "reason": str(err)})
            if limit is None:  # the bar counts usable images
                bar.total -= 1
            continue
        lr, params = run.make_lr(hr, seed + index)
        caption, base_out, model_out = run.super_resolve(lr, seed + index)
        border = run.scale
        images.append(
            {
                "path": str(path),
                "seed": seed + index,
                "hr_size": list(hr.shape[:2]),
                "degradation": asdict(params),
                "caption": caption,
                "model": _scores(model_out, hr, lr, run.scale, lpips_fn, clip_iqa_fn),
                "baselines": {n: _scores(o, hr, lr, run.scale, lpips_fn, clip_iqa_fn) for n, o in base_out.items()},
                "model_seconds": run.model_seconds,
            }
        )
        if threshold is not None:
            images[-1]["route"] = route_tiles(image_to_batch(lr), threshold, cheap=cheap)[0].properties()
            if images[-1]["route"]["route"] != MODEL:  # what the run would write there instead
                images[-1]["route"]["scores"] = _scores(run.run(cheap_model, lr, "", seed + index), hr, lr,
                                                        run.scale, None, None)
        if caption_ablation:
            images[-1]["caption_ablation"] = {
                name: _scores(run.run(run.model, lr, text, seed + index), hr, lr, run.scale, None, None)
                for name, text in ABLATION_CAPTIONS.items()
            }
        if uncertainty:
            sigma_maps.append(_shave(band_rms(run.model_sigma) * 255.0, border))
            error_maps.append(_shave(band_rms(model_out - hr) * 255.0, border))
            gradient_maps.append(_shave(gradient_baseline(model_out * 255.0), border))
            images[-1]["uncertainty"] = {
                "predicted_rmse": _rms(sigma_maps[-1]),
                "actual_rmse": _rms(error_maps[-1]),
            }
        logger.info("%d. %s: PSNR %.2f dB", len(images), path.name, images[-1]["model"]["psnr"])
        bar.update()
    bar.close()
    if not images:
        raise InputError(f"none of the {len(hr_paths)} image(s) is usable; first reason: {skipped[0]['reason']}")
    model_means = _means([im["model"] for im in images])
    base_means = {n: _means([im["baselines"][n] for im in images]) for n in run.baselines}
    worse = np.mean([im["model"]["psnr"] < im["baselines"]["bicubic"]["psnr"] for im in images])
    ablation = {}
    if caption_ablation:
        ablation["measured"] = {
            k: model_means[k] for k in ("psnr", "ssim", "sharpness", "hf_spectral_error", "consistency_error")
        }
        for name in ABLATION_CAPTIONS:
            ablation[name] = _means([im["caption_ablation"][name] for im in images])
    return {
        "settings": {
            "scale": run.scale,
            "degradation": degradation,
            "model": run.model_spec,
            "captioner": run.captioner.name,
            "seed": seed,
            "limit": limit,
            "crop": crop,
            "max_lr_side": MAX_LR_SIDE,
            "steps": steps,
            "guidance": guidance,
            "device": device,
            "dtype": dtype,
            "detail": detail,
            "lr_consistency": lr_consistency,
            "uncertainty": uncertainty,
            "border": run.scale,
            "n_images": len(images),
            "color": "RGB in [0, 1], 8-bit quantised LR and outputs",
        },
        "model": {
            "name": run.model_spec,
            "description": run.model.name,
            **model_means,
            "delta_vs_bicubic": {k: v - base_means["bicubic"][k] for k, v in model_means.items()},
            "worse_than_bicubic": float(worse),
        },
        "baselines": base_means,
        "caption_ablation": ablation,
        "routing": _routing_summary(images, threshold, cheap) if threshold is not None else {},
        "uncertainty": _uncertainty_summary(sigma_maps, error_maps, gradient_maps) if uncertainty else {},
        "images": images,
        "skipped": skipped,
        "optional_metrics": {"lpips": lpips_status, "clip_iqa": clip_iqa_status},
    }


def _rms(values: np.ndarray | list[np.ndarray]) -> float:
    values = values if isinstance(values, list) else [values]
    return math.sqrt(float(np.mean(np.concatenate([v.ravel() for v in values]) ** 2)))


def _uncertainty_summary(sigma: list[np.ndarray], error: list[np.ndarray], gradient: list[np.ndarray]) -> dict:
    """How far the model's predicted RMSE maps can be trusted, pooled over all images.

    Parameters
    ----------
    sigma, error, gradient : list of numpy.ndarray
        Per image, border shaved: the predicted per-pixel RMSE, the actual error and the
        output's gradient magnitude, ``H x W`` in DN.

    Returns
    -------
    dict
        ``calibration`` (:func:`geosr.uncertainty_metrics.calibration_bins` over deciles of
        the predicted RMSE), ``calibration_error`` (max ``|ratio - 1|``), ``spearman`` (block
        rank correlation of the model's map with the error), ``spearman_gradient_baseline``
        (the same for the gradient magnitude: the figure to beat), ``predicted_rmse`` and
        ``actual_rmse`` (over all pixels, DN), ``block`` (px), ``n_pixels``, ``n_blocks``
        and ``units``.
    """
    bins = calibration_bins(sigma, error, bins=CALIBRATION_BINS)
    return {
        "units": "DN (0-255)",
        "calibration": bins,
        "calibration_error": calibration_error(bins),
        "spearman": block_spearman(sigma, error, UNCERTAINTY_BLOCK),
        "spearman_gradient_baseline": block_spearman(gradient, error, UNCERTAINTY_BLOCK),
        "predicted_rmse": _rms(sigma),
        "actual_rmse": _rms(error),
        "block": UNCERTAINTY_BLOCK,
        "n_pixels": int(sum(m.size for m in sigma)),
        "n_blocks": int(sum((m.shape[0] // UNCERTAINTY_BLOCK) * (m.shape[1] // UNCERTAINTY_BLOCK) for m in sigma)),
    }


def _routing_summary(images: list[dict], threshold: float, cheap_name: str) -> dict:
    """What routing changes over the images: routed ones get the cheap path's output."""
    cheap = [im["route"]["route"] != MODEL for im in images]

    def change(metric: str) -> float:
        return float(np.mean([(im["route"]["scores"][metric] - im["model"][metric]) if c else 0.0
                              for im, c in zip(images, cheap)]))

    seconds = sum(im["model_seconds"] for im in images)
    return {
        "threshold": threshold,
        "cheap_path": cheap_name,
        "routed_share": float(np.mean(cheap)),
        "psnr_change": change("psnr"),
        "ssim_change": change("ssim"),
        "model_time_saved": sum(im["model_seconds"] for im, c in zip(images, cheap) if c) / max(seconds, 1e-12),
    }


# ----------------------------------------------------------------------- comparison


def render_comparison(
    hr_path: str | Path,
    out_png: str | Path,
    scale: int,
    degradation: str,
    model: str | None = None,
    captioner: str = "degradation",
    seed: int = 0,
    steps: int | None = None,
    guidance: float | None = None,
    device: str | None = None,
    crop: int = 256,
    dtype: str | None = None,
    detail: float | None = None,
    lr_consistency: str | None = None,
) -> Path:
    """Write a PNG of side-by-side crops: LR (nearest-enlarged) | bicubic | model | HR.

    The image goes through the same steps as in :func:`evaluate_sr` (pass the image's seed,
    ``seed + i`` there, and the same ``detail`` and ``lr_consistency``, to show the same LR and
    model output); the
    panels are the centre ``crop`` px (HR scale) of the outputs, labelled with the method and
    its whole-image PSNR.

    Returns
    -------
    pathlib.Path
        ``out_png``.
    """
    from PIL import Image, ImageDraw

    run = _Run(scale, degradation, model, captioner, ("bicubic",), steps, guidance, device, dtype, detail,
               lr_consistency=lr_consistency)
    hr = read_hr_image(Path(hr_path), run.scale, None)
    lr, _params = run.make_lr(hr, seed)
    _caption, base_out, model_out = run.super_resolve(lr, seed)
    nearest = np.repeat(np.repeat(lr, run.scale, axis=0), run.scale, axis=1)
    side = min(int(crop), *hr.shape[:2]) // run.scale * run.scale
    y, x = ((n - side) // 2 // run.scale * run.scale for n in hr.shape[:2])  # on the LR pixel grid

    panels = [
        ("LR (nearest)", "", nearest),
        ("bicubic", f" {psnr(base_out['bicubic'], hr, run.scale):.2f} dB", base_out["bicubic"]),
        (Path(run.model_spec).name, f" {psnr(model_out, hr, run.scale):.2f} dB", model_out),
        ("HR", "", hr),
    ]
    label_h, gap = 14, 4
    sheet = Image.new("RGB", (len(panels) * (side + gap) - gap, side + label_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (name, suffix, img) in enumerate(panels):
        tile = np.round(img[y : y + side, x : x + side] * 255).astype(np.uint8)
        sheet.paste(Image.fromarray(tile), (i * (side + gap), label_h))
        # a long model name is shortened so that the label fits its panel
        while len(name) > 3 and draw.textlength(name + suffix) > side - 4:
            name = name[:-3] + ".."
        draw.text((i * (side + gap) + 2, 1), name + suffix, fill="black")
    out_png = Path(out_png)
    sheet.save(out_png)
    return out_png
