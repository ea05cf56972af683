"""The diffusion upscaler: a :class:`~geosr.pipelines.GeoSRPipeline` behind the Upscaler protocol.

A model spec is a local pipeline directory (``model_index.json`` inside), the name of a model
shipped in the package (``geosr/data/models/<name>/``) or a Hugging Face hub id (``org/name``).
Each pipeline is loaded once per process, device and dtype, and shared by all upscalers that
use it (a dask worker serves every batch with one copy).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import re
import threading
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from geosr.errors import InputError, ModelError
from geosr.models import register_upscaler, shipped_model_path
from geosr.models.batching import run_in_batches
from geosr.quiet_loading import quiet_loading
from geosr.weights_fingerprint import source_fingerprint

__all__ = [
    "DiffusionUpscaler", "register", "matches", "resolve_model", "resolve_device", "resolve_dtype",
    "default_dtype_name", "cpu_has_bf16_matrix_units",
]

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PIPELINE_CLASS = "GeoSRPipeline"
# A hub id is "org/name"; anything else with a separator, or starting with "." or "~", is a path.
LR_CONSISTENCY = ("off", "clean", "always")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# One pipeline per (source, device, dtype) and a lock per pipeline: a pipeline call is not
# re-entrant (the scheduler keeps the timestep state), and dask threads share the copy.
_PIPELINES: dict[tuple[str, str, torch.dtype], tuple[object, threading.Lock]] = {}
_PIPELINES_LOCK = threading.Lock()


def _looks_like_path(spec: str) -> bool:
    if spec.startswith((".", "~", os.sep, "/")):
        return True
    return (os.sep in spec or "/" in spec) and not HUB_ID.match(spec)


def matches(spec: str) -> bool:
    """Whether ``spec`` is for this loader: a path, a shipped model name or a hub id."""
    return (
        Path(spec).expanduser().exists()
        or _looks_like_path(spec)
        or shipped_model_path(spec) is not None
        or bool(HUB_ID.match(spec))
    )


def resolve_model(spec: str) -> str:
    """Where to load ``spec`` from: a local pipeline directory, or the hub id itself.

    Raises
    ------
    ModelError
        ``spec`` names a missing path, or a directory that is not a GeoSRPipeline.
    """
    path = Path(spec).expanduser()
    if path.exists():
        return _check_pipeline_dir(spec, path)
    shipped = shipped_model_path(spec)
    if shipped is not None:
        return shipped
    if HUB_ID.match(spec):
        return spec
    raise ModelError(f"model directory {spec!r} does not exist")


def _check_pipeline_dir(spec: str, path: Path) -> str:
    index = path / "model_index.json"
    if not path.is_dir() or not index.is_file():
        raise ModelError(f"{spec!r} is not a diffusers pipeline directory (no model_index.json)")
    try:
        class_name = json.loads(index.read_text()).get("_class_name")
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot read {index}: {err}") from err
    if class_name != PIPELINE_CLASS:
        raise ModelError(f"{spec!r} holds a {class_name}, not a {PIPELINE_CLASS}")
    return str(path.resolve())  # one cache entry however the directory is spelled


def _load_pipeline(source: str, device: str, dtype: torch.dtype) -> tuple[object, threading.Lock]:
    key = (source, device, dtype)
    with _PIPELINES_LOCK:
        if key not in _PIPELINES:
            try:
                pipe = load_pipeline_quietly(source, dtype)
            except (OSError, ValueError, TypeError) as err:
                raise ModelError(f"cannot load the diffusion pipeline {source!r}: {err}") from err
            pipe.to(device)
            pipe.set_progress_bar_config(disable=True)
            _PIPELINES[key] = (pipe, threading.Lock())
        return _PIPELINES[key]


def resolve_device(device: str | None) -> str:
    """The torch device of a neural model: ``device``, else cuda when available, else cpu."""
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def cpu_has_bf16_matrix_units() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (Intel AMX tiles).

    There oneDNN runs the LR-space networks 2-2.7x faster in bf16 than in float32, for
    0.002-0.006 dB of PSNR on val (docs/benchmarks.md); elsewhere bf16 is emulated and slower.
    """
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private, hence the guard
    try:
        return bool(probe and probe())
    except RuntimeError:
        return False


def default_dtype_name(device: str) -> str:
    """``bf16`` on CUDA and on CPUs with bf16 matrix units, ``fp32`` elsewhere."""
    kind = torch.device(device).type
    return "bf16" if kind == "cuda" or (kind == "cpu" and cpu_has_bf16_matrix_units()) else "fp32"


def resolve_dtype(dtype: str | None, device: str) -> torch.dtype:
    """The precision named ``fp32``/``fp16``/``bf16``; by default :func:`default_dtype_name`."""
    dtype = dtype or default_dtype_name(device)
    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def load_pipeline_quietly(source: str, dtype: torch.dtype = torch.float32):
    """``GeoSRPipeline.from_pretrained`` in ``dtype``, without loading bars, ready for inference."""
    # Imported here: diffusers/transformers take seconds to import, classical runs skip it.
    from geosr.pipelines.pipeline_geosr import GeoSRPipeline

    with quiet_loading():
        pipe = GeoSRPipeline.from_pretrained(source, **{_dtype_keyword(): dtype})
    if pipe.unshuffle_factor:
        # The LR-space trunk is all 3x3 convolutions on few channels: in channels_last
        # oneDNN runs them 1.35x faster on the CPU (docs/benchmarks.md); the outputs differ
        # from contiguous weights by float rounding only (~1e-5). `.to(device)` keeps it.
        # The detail and uncertainty heads are such trunks too, and gain more (bf16: 2x).
        for net in (pipe.unet, pipe.controlnet, getattr(pipe, "detail", None), getattr(pipe, "uncertainty", None)):
            if net is not None:
                net.to(memory_format=torch.channels_last)
    return pipe


def _dtype_keyword() -> str:
    # diffusers renamed from_pretrained's torch_dtype to dtype (huggingface/diffusers#14205) and
    # warns on the old name, the only one older releases understand. Loading in the dtype, not
    # casting afterwards, keeps a model's _keep_in_fp32_modules in float32.
    import diffusers
    from diffusers.utils import deprecation_utils
    from packaging.version import Version

    renamed = hasattr(deprecation_utils, "_resolve_dtype") or Version(diffusers.__version__).major >= 1
    return "dtype" if renamed else "torch_dtype"


class DiffusionUpscaler:
    """Super-resolve tiles with a GeoSRPipeline (teacher or distilled student).

    Parameters
    ----------
    model : str
        A pipeline directory, a shipped model name or a hub id.
    scale : int
        Expected upscaling factor; must equal the pipeline's ``upscale_factor``.
    device : str, optional
        Torch device; ``cuda`` when available, else ``cpu``.
    dtype : {"fp32", "fp16", "bf16"}, optional
        Precision of the networks; by default bf16 on CUDA and on CPUs with bf16 matrix
        units (AMX), fp32 elsewhere (:func:`default_dtype_name`).
    steps : int, optional
        Diffusion steps; the checkpoint's default when not given.
    guidance : float, optional
        Guidance scale ``g`` (1 = no guidance); the checkpoint's default when not given.
    batch_size : int
        Tiles per pipeline call; halved for the rest of the run when CUDA runs out of memory.
    detail : float
        Detail level ``D`` in ``[0, 1]`` (the pipeline's ``detail``): 0 is the fidelity output,
        1 the most detail the model's detail head has learnt; needs a model with one.
    lr_consistency : {"off", "clean", "always"}
        Which tiles' outputs are projected onto their input (the pipeline's ``lr_consistency``):
        none (default), those whose caption reads as a clean downsampling, or all.

    Raises
    ------
    ModelError
        The model cannot be found or loaded, its scale differs from ``scale``, or it has no
        detail head and ``detail > 0``.
    InputError
        Unknown ``dtype``, a ``batch_size`` below 1, a ``detail`` outside ``[0, 1]`` or an
        unknown ``lr_consistency``.
    """

    def __init__(
        self,
        model: str,
        scale: int,
        device: str | None = None,
        dtype: str | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        batch_size: int = 4,
        detail: float = 0.0,
        lr_consistency: str = "off",
    ) -> None:
        if not 0.0 <= float(detail) <= 1.0:
            raise InputError(f"detail must lie in [0, 1], got {detail}")
        self.detail = float(detail)
        if lr_consistency not in LR_CONSISTENCY:
            raise InputError(f"lr_consistency must be one of {', '.join(LR_CONSISTENCY)}, got {lr_consistency!r}")
        self.lr_consistency = lr_consistency
        self.device = resolve_device(device)
        dtype = dtype or default_dtype_name(self.device)
        self.dtype = resolve_dtype(dtype, self.device)
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.source = resolve_model(model)
        self._pipe, self._lock = _load_pipeline(self.source, self.device, self.dtype)
        config = self._pipe.config
        if config.upscale_factor != int(scale):
            raise ModelError(f"model {model!r} upscales x{config.upscale_factor}, but the scale asked for is {scale}")
        self.scale = int(scale)
        self.channels = self._pipe.image_channels
        if self.detail > 0.0 and not self.has_detail:
            raise ModelError(f"model {model!r} has no detail head: --detail needs a model trained with one "
                             "(geosr.training.train_heads), or detail 0")
        self.steps = steps
        self.guidance = guidance
        kind = "student" if self._pipe.is_distilled else "teacher"
        shown_steps = steps if steps is not None else (config.default_num_inference_steps or "pipeline default")
        shown_guidance = config.default_guidance_scale if guidance is None else guidance
        shown_detail = f", detail {self.detail:g}" if self.detail else ""
        self.name = f"diffusion:{model} ({kind}, steps {shown_steps}, guidance {shown_guidance}{shown_detail}, {dtype})"

    @functools.cached_property
    def fingerprint(self) -> str:
        """What this upscaler's pixels depend on beyond a run's settings, for a run's identity.

        The checkpoint's files (:func:`geosr.weights_fingerprint.source_fingerprint`: a
        model retrained or replaced under the same name, path or hub id makes other pixels)
        and how outputs are made consistent with their input (what geosr did before that
        existed gave other pixels).
        """
        parts = [f"lr consistency {self.lr_consistency}", source_fingerprint(self.source, "model_index.json")]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16] + f" (lr consistency {self.lr_consistency})"

    @property
    def has_detail(self) -> bool:
        """Whether the model has a detail head (takes ``detail > 0``)."""
        return getattr(self._pipe, "detail", None) is not None

    @property
    def has_uncertainty(self) -> bool:
        """Whether the model has an uncertainty head (:meth:`upscale_with_uncertainty`)."""
        return getattr(self._pipe, "uncertainty", None) is not None

    @property
    def grid_step(self) -> int:
        """LR pixels per step of the coarsest grid the networks run on (1: every LR pixel).

        The tiles are padded to multiples of it, and the network gives the same pixels for
        the same input only on the same phase of that grid: a tile plan starts its tiles on
        multiples of it (:class:`geosr.tiling.TileGrid`). ``unshuffle_factor / scale`` in an
        LR-space model (2 in geosr-tiny-fast-x2: x2 on LR/2), the UNet's and VAE's
        downsampling over the scale in HR-space and latent ones.
        """
        return self._pipe.size_multiple // math.gcd(self._pipe.size_multiple, self.scale)

    @property
    def pipeline(self):
        """The loaded :class:`~geosr.pipelines.pipeline_geosr.GeoSRPipeline` (shared per source/device/dtype)."""
        return self._pipe

    def upscale(
        self,
        tiles: torch.Tensor,
        captions: Sequence[str],
        seeds: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Upscale ``[B, C, h, w]`` tiles to ``[B, C, h*s, w*s]`` float32 CPU.

        The pipeline sees the tiles clamped to ``[0, 1]``; what the clamp took away (values the
        scene stretch left outside that range: highlights, shadows, outliers) comes back
        interpolated as the pipeline's residual base is
        (:func:`~geosr.pipelines.pipeline_geosr.interpolate_lr`), so the result
        is ``bicubic(tiles) + (pipeline(clamped) - bicubic(clamped))``: the model's residual over
        bicubic, in the tiles' own units. In range, that is the pipeline's output unchanged.

        Each tile's noise comes from its own seed (0 when ``seeds`` is not given), so a tile's
        pixels do not depend on the batch it is in, nor on the batch size.
        """
        return self._upscale(tiles, captions, seeds, False)[0]

    def upscale_with_uncertainty(
        self,
        tiles: torch.Tensor,
        captions: Sequence[str],
        seeds: Sequence[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`upscale`, and the predicted root-mean-square error of each output pixel and band.

        Returns
        -------
        (torch.Tensor, torch.Tensor)
            The output and its predicted error, both ``[B, C, h*s, w*s]`` float32 CPU in the
            tiles' units (the error of values the clamp took away is not predicted: they are
            bicubic's).

        Raises
        ------
        ModelError
            The model has no uncertainty head.
        """
        if not self.has_uncertainty:
            raise ModelError(f"{self.name} has no uncertainty head: it cannot predict its error")
        return self._upscale(tiles, captions, seeds, True)

    def _upscale(self, tiles: torch.Tensor, captions: Sequence[str], seeds: Sequence[int] | None,
                 uncertainty: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, channels, height, width = tiles.shape
        if channels != self.channels:
            raise InputError(f"the model takes {self.channels} channels, got {channels}")
        captions = list(captions)
        seeds = [0] * batch if seeds is None else [int(s) for s in seeds]
        if len(captions) != batch or len(seeds) != batch:
            raise InputError(f"{batch} tiles need {batch} captions and seeds, got {len(captions)} and {len(seeds)}")
        # The pipeline takes valid images only (NaN never reaches it: the engine fills
        # masked and non-finite pixels; a direct caller's NaN or inf reads as 0).
        tiles = tiles.float().nan_to_num(0.0, posinf=0.0, neginf=0.0)
        # Pad to the size the UNet can downsample, then crop the HR result back.
        multiple = self.grid_step
        pad_h, pad_w = -height % multiple, -width % multiple
        if pad_h or pad_w:
            mode = "reflect" if pad_h < height and pad_w < width else "replicate"
            tiles = F.pad(tiles, (0, pad_w, 0, pad_h), mode=mode)
        inside = tiles.clamp(0.0, 1.0)
        hr, error = self._upscale_batches(inside, captions, seeds, uncertainty)
        outside = tiles - inside
        if outside.any():
            # bicubic(tiles) - bicubic(inside) = bicubic(outside): interpolation is linear, and
            # zero wherever no pixel under the kernel was clamped
            from geosr.pipelines.consistency import project_to_lr, reads_as_clean
            from geosr.pipelines.pipeline_geosr import interpolate_lr

            mode = self._pipe.config.upsample_mode
            hr += interpolate_lr(outside, self.scale, mode)
            # a tile the pipeline made consistent with its input (lr_consistency) is made so again
            # with the part clamped off it: bicubic's does not downsample to it, and the pipeline's
            # own output was clipped to the clamped input's range (300 DN off beside a uint16
            # scene's glints at 1.5x its stretch's top; 0.3 DN elsewhere). A spike the dtype's
            # range cannot reproduce (its HR would need values below 0) stays a little off.
            projected = [bool(outside[i].any()) and (self.lr_consistency == "always" or (
                self.lr_consistency == "clean" and reads_as_clean(c))) for i, c in enumerate(captions)]
            if getattr(self._pipe, "unshuffle_factor", 0) and any(projected):
                pick = torch.tensor(projected, device=hr.device)
                total = hr[pick]
                for _ in range(2):
                    total = project_to_lr(total, tiles[pick], self.scale, mode)
                hr[pick] = total.to(hr.dtype)
        crop = (..., slice(0, height * self.scale), slice(0, width * self.scale))
        return hr[crop].contiguous(), None if error is None else error[crop].contiguous()

    def _upscale_batches(self, tiles: torch.Tensor, captions: list[str], seeds: list[int],
                         uncertainty: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        def run(part: slice) -> torch.Tensor:
            out = self._run(self._pipe, self._lock, tiles[part], captions[part], seeds[part], uncertainty)
            self._redo_non_finite(out, tiles[part], captions[part], seeds[part], uncertainty)
            return out

        # with the error, each part is the output and its error side by side on the channels
        both = run_in_batches(len(tiles), self.batch_size, run,
                              lambda exc: isinstance(exc, torch.cuda.OutOfMemoryError), self._shrink)
        if not uncertainty:
            return both, None
        return both[:, : self.channels].contiguous(), both[:, self.channels :].contiguous()

    def _shrink(self, batch_size: int) -> None:
        self.batch_size = batch_size

    def _redo_non_finite(
        self, out: torch.Tensor, tiles: torch.Tensor, captions: list[str], seeds: list[int], uncertainty: bool
    ) -> None:
        bad = [i for i in range(len(out)) if not torch.isfinite(out[i]).all()]
        if not bad:
            return
        if self.dtype == torch.float32:
            raise ModelError(f"the model produced non-finite values for {len(bad)} tile(s) in float32")
        # fp16 overflows (and rare bf16 blow-ups) are fixed by float32 arithmetic; the fp32
        # copy is loaded on first need, one tile at a time to stay inside the memory budget.
        logger.warning("non-finite output for %d tile(s): redoing them in float32", len(bad))
        pipe, lock = _load_pipeline(self.source, self.device, torch.float32)
        for i in bad:
            redo = self._run(pipe, lock, tiles[i : i + 1], captions[i : i + 1], seeds[i : i + 1], uncertainty)
            if not torch.isfinite(redo).all():
                raise ModelError("the model produced non-finite values even in float32")
            out[i] = redo[0]

    def _run(
        self, pipe, lock: threading.Lock, tiles: torch.Tensor, captions: list[str], seeds: list[int],
        uncertainty: bool = False,
    ) -> torch.Tensor:
        """The pipeline's output (with ``uncertainty``, and its predicted error after it on the channels)."""
        # CPU generators: the same seed draws the same noise on every device.
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        with lock:
            result = pipe(
                tiles,
                prompt=captions,
                num_inference_steps=self.steps,
                guidance_scale=self.guidance,
                generator=generators,
                output_type="pt",
                detail=self.detail,
                return_uncertainty=uncertainty,
                lr_consistency=self.lr_consistency,
            )
        if uncertainty:
            return torch.cat([result.images.float(), result.uncertainty.float()], dim=1).cpu()
        return result.images.float().cpu()


def register() -> None:
    """Register this loader with :func:`geosr.models.load_upscaler`."""
    register_upscaler(matches, DiffusionUpscaler)
