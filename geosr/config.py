"""Run settings as frozen dataclasses, and the defaults every front end (API, CLI, QGIS) shares."""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

from geosr.band_roles import parse_bands_to_model, parse_rgb_bands
from geosr.errors import InputError

__all__ = ["TileSpec", "RunConfig", "check_device", "DEFAULT_CAPTIONER", "DEFAULT_OVERLAP", "DEFAULT_TILE"]

#: The measuring captioner, and the shipped VLM for tiles it reads as JPEG-compressed (geosr.captioning.auto).
DEFAULT_CAPTIONER = "auto"
#: Tile core and halo in input pixels: the one place these defaults live (API, CLI, QGIS read them).
DEFAULT_TILE, DEFAULT_OVERLAP = 256, 16
SCALES = (2, 3, 4, 8)


class NoShippedModelWarning(UserWarning):
    """No model was named and none is shipped for the scale: the run interpolates (bicubic)."""


@dataclass(frozen=True)
class TileSpec:
    """Tile plan settings, in LR pixels: core size and halo width."""

    tile: int = DEFAULT_TILE
    overlap: int = DEFAULT_OVERLAP

    def __post_init__(self) -> None:
        if self.tile < 8:
            raise InputError(f"--tile must be at least 8 px, got {self.tile}")
        if self.overlap < 0 or self.overlap >= self.tile:
            raise InputError(f"--overlap must be in [0, tile), got {self.overlap} with tile {self.tile}")


@dataclass(frozen=True)
class RunConfig:
    """Everything one ``geosr upscale`` run needs besides its inputs and output.

    Attributes
    ----------
    scale : int
        Upscaling factor (2, 3, 4 or 8).
    model : str or None
        Model spec (see :func:`geosr.models.load_upscaler`); None picks the shipped model
        for the scale, else bicubic (:func:`geosr.models.default_model`).
    captioner : str
        Captioner spec (see :func:`geosr.captioning.load_captioner`).
    caption_every : str
        ``tile``, ``window:N`` (one caption per N x N tiles) or ``scene``.
    tiles : TileSpec
    bands : tuple of int or None
        1-based bands to process (default: every data band).
    bands_to_model : str or tuple of int
        ``all`` (default: every band through the model; with an RGB model R, G, B as one
        group and every other band alone), ``rgb`` (the R, G, B group only, the other bands
        bicubic) or the 1-based bands that go through the model (:func:`geosr.scene_plan.plan_bands`).
    rgb_bands : tuple of int or None
        The bands that are red, green and blue, in that order (default: what the scene's
        band descriptions, wavelengths or colour interpretation say, :mod:`geosr.band_roles`).
    aoi : str or None
        Vector file (GeoJSON...) whose polygons select the tiles to process.
    blend : str
        ``cosine`` or ``none``.
    creation_options : dict
        GDAL COG creation options overriding the defaults.
    overwrite : bool
    resume : bool
        Continue a stopped run of the same output, inputs and settings (see
        :mod:`geosr.resumable`); without a stopped run, start from the beginning.
    device, dtype : str or None
        Torch device and precision for neural models (None: cuda when available; bf16 on
        CUDA and on CPUs with AMX, else fp32, see :func:`geosr.models.diffusion.default_dtype_name`).
        The device is checked on this machine (:func:`check_device`) unless the run goes to
        a scheduler at ``address``, whose workers have their own.
    steps : int or None
    guidance : float or None
    batch_size : int or None
        Tiles per model call; None picks :func:`geosr.models.default_batch_size` for the
        model and device (on a scheduler's workers, for theirs: see ``batch_size_picked``).
    seed : int
        Base seed; each tile's seed is derived from it and the tile position.
    address : str or None
        dask.distributed scheduler address.
    local_workers : int or None
        Start a local dask.distributed cluster of that many worker processes.
    progress : bool
    route : str
        ``auto``: flat, clean tiles go to the cheap path instead of the model
        (:mod:`geosr.routing`: the shipped fast network for the scale, else bicubic);
        ``off``: every tile goes to the model. Classical models are never routed.
    route_threshold : float or None
        Texture (DN per LR px) under which a clean tile is flat (``route="auto"``); None:
        the one calibrated for the cheap path. Users' own networks are not routed: the cheap
        paths were calibrated against the shipped models.
    model_metadata : mapping
        Metadata of a user's network (ONNX, TorchScript, Python object) that overrides what
        it says of itself: ``scale``, ``bands``, ``value_range``... (:mod:`geosr.models.model_card`).
    model_object : geosr.models.callable.ModelObject or None
        The Python object ``model`` (``python:NAME@HASH``) names, carried to worker processes.
    split : int or None
        Tiled output (:mod:`geosr.tiled_output`): blocks of ``split`` x ``split`` output pixels,
        one COG each, with a VRT and STAC; 0 (:data:`~geosr.tiled_output.AUTO_SPLIT`) lets the
        run choose from the output's size; None writes one COG.
    detail : float
        Detail level ``D`` in ``[0, 1]`` of a diffusion model with a detail head (0: the
        fidelity output; 1: the most detail the head has learnt, drawn from each tile's seed).
    uncertainty : bool
        Also predict each output pixel's error with the model's uncertainty head
        (:mod:`geosr.uncertainty_map`). Every tile then goes to the model: routed tiles'
        cheap path has no predicted error.
    lr_consistency : {"off", "clean", "always"}
        Which tiles' outputs a diffusion model projects onto their input, so that its
        downsampling of the output gives the input back (:mod:`geosr.pipelines.consistency`):
        none, those whose caption reads as a clean (antialiased bicubic) downsampling, all.
    batch_size_picked : int or None
        Set, not passed: the ``batch_size`` picked here for want of one (a run on a scheduler
        at ``address`` picks it again for its workers' device while ``batch_size`` is still it).
    """

    scale: int = 4
    model: str | None = None
    captioner: str = DEFAULT_CAPTIONER
    caption_every: str = "tile"
    tiles: TileSpec = field(default_factory=TileSpec)
    bands: tuple[int, ...] | None = None
    bands_to_model: str | tuple[int, ...] = "all"
    rgb_bands: tuple[int, ...] | None = None
    aoi: str | None = None
    blend: str = "cosine"
    creation_options: Mapping[str, str] = field(default_factory=dict)
    overwrite: bool = False
    resume: bool = False
    device: str | None = None
    dtype: str | None = None
    steps: int | None = None
    guidance: float | None = None
    batch_size: int | None = None
    seed: int = 0
    address: str | None = None
    local_workers: int | None = None
    progress: bool = True
    route: str = "auto"
    route_threshold: float | None = None
    model_metadata: Mapping[str, Any] = field(default_factory=dict)
    model_object: Any = None
    split: int | None = None
    detail: float = 0.0
    uncertainty: bool = False
    lr_consistency: str = "off"
    # set by __post_init__, not passed: the batch size it picked for want of one (last, so that
    # no positional argument moves; compared with batch_size, so that a replace() that sets one is the user's)
    batch_size_picked: int | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise InputError(f"--scale must be one of {', '.join(map(str, SCALES))}, got {self.scale}")
        if self.blend not in ("cosine", "none"):
            raise InputError(f"--blend must be cosine or none, got {self.blend!r}")
        if self.model == "nearest":  # its tiles agree: a weighted mean of equal values only rounds them
            object.__setattr__(self, "blend", "none")
        parse_caption_every(self.caption_every)
        # each tile's seed is formatted from it: 1.0 would be another seed than 1 (other pixels)
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral):
            raise InputError(f"--seed must be a whole number, got {self.seed!r}")
        # keys as geosr.models.model_card reads them (the CLI's --model-meta lowercases them too):
        # {"Scale": 4} was dropped unseen
        object.__setattr__(self, "model_metadata", {str(k).lower(): v for k, v in self.model_metadata.items()})
        object.__setattr__(self, "bands_to_model", parse_bands_to_model(self.bands_to_model))
        if self.rgb_bands is not None:
            object.__setattr__(self, "rgb_bands", parse_rgb_bands(self.rgb_bands))
        if not self.address:
            check_device(self.device)
        if self.model is None:
            from geosr.models import default_model

            object.__setattr__(self, "model", default_model(self.scale))
            if self.model == "bicubic":
                warnings.warn(
                    f"no model is shipped for x{self.scale} (the shipped ones are x2 and x4): bicubic "
                    "interpolation; name one with --model to use your own",
                    NoShippedModelWarning, stacklevel=3)
        if self.batch_size is None:
            from geosr.models import default_batch_size

            object.__setattr__(self, "batch_size", default_batch_size(self.model, self.device))
            object.__setattr__(self, "batch_size_picked", self.batch_size)
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be >= 1, got {self.batch_size}")
        # checked here, not first by the pipeline at its first tile (a ValueError: exit 1)
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, numbers.Integral)
                                       or self.steps < 1):
            raise InputError(f"--steps must be a whole number >= 1, got {self.steps!r}")
        if self.guidance is not None and (isinstance(self.guidance, bool) or not isinstance(self.guidance, numbers.Real)
                                          or not math.isfinite(self.guidance) or self.guidance < 0):
            raise InputError(f"--guidance must be a finite number >= 0, got {self.guidance!r}")
        # geosr.routing imports torch: imported here, not at the top, `import geosr` stays without it
        from geosr.routing import routing_threshold

        routing_threshold(self.route, self.route_threshold, self.model, self.scale)  # refuses bad settings now
        self._check_heads()

    def _check_heads(self) -> None:
        """Refuse ``detail`` and ``uncertainty`` where no model head can serve them."""
        detail = self.detail
        if isinstance(detail, bool) or not isinstance(detail, (int, float)) or not 0.0 <= detail <= 1.0:
            raise InputError(f"--detail must be a number in [0, 1], got {detail!r}")
        object.__setattr__(self, "detail", float(detail))
        if not isinstance(self.uncertainty, bool):
            raise InputError(f"uncertainty must be True or False here, got {self.uncertainty!r}")
        if self.lr_consistency not in ("off", "clean", "always"):
            raise InputError(f"--lr-consistency must be off, clean or always, got {self.lr_consistency!r}")
        asked = [(flag, head) for flag, head, on in (("--detail", "a detail head", self.detail > 0),
                                                      ("--uncertainty", "an uncertainty head", self.uncertainty)) if on]
        from geosr.models import CLASSICAL, own_model_kind

        kind = ("the classical model" if self.model in CLASSICAL
                else "your own network" if own_model_kind(self.model) else None)
        if kind is not None and self.lr_consistency != "off":
            raise InputError(f"--lr-consistency is a setting of the diffusion models (the shipped geosr-tiny-x4 "
                             f"and geosr-tiny-x2); {kind} {self.model} has none")
        # the output's tags would record steps and guidance no network took
        unused = [flag for flag, value in (("--steps", self.steps), ("--guidance", self.guidance)) if value is not None]
        if kind is not None and unused:
            raise InputError(f"{' and '.join(unused)} {'are settings' if len(unused) > 1 else 'is a setting'} of the "
                             f"diffusion models; {kind} {self.model} has none")
        if not asked:
            return
        if kind is not None:
            flags, heads = (" and ".join(part) for part in zip(*asked))
            raise InputError(f"{flags} need{'s' if len(asked) == 1 else ''} a diffusion model with {heads} "
                             f"(the shipped geosr-tiny-x4 and geosr-tiny-x2 have them); {kind} {self.model} has none")
        if self.uncertainty and self.route_threshold is not None:
            raise InputError("--route-threshold routes flat tiles to the cheap path, which predicts no error: "
                             "--uncertainty puts every tile on the model; drop --route-threshold")

    @property
    def routed_threshold(self) -> float | None:
        """The routing threshold of a run that routes tiles, None for one that does not."""
        from geosr.models import own_model_kind
        from geosr.routing import routing_threshold

        if own_model_kind(self.model) or self.uncertainty:  # the cheap path predicts no error
            return None
        return routing_threshold(self.route, self.route_threshold, self.model, self.scale)

    @property
    def on_worker_processes(self) -> bool:
        """Whether tasks run in worker processes (``address``, ``local_workers``), not in
        threads of this process."""
        return bool(self.address or self.local_workers)

    @property
    def route_to(self) -> str:
        """Where routed tiles go (:func:`geosr.routing.cheap_path`)."""
        from geosr.routing import cheap_path

        return cheap_path(self.scale)

    def model_options(self) -> dict[str, Any]:
        """Keyword options for non-classical model loaders (only the ones that are set; ``detail``
        only above 0 and ``lr_consistency`` only when on, so that a model loads as it did before
        they existed)."""
        opts = dict(device=self.device, dtype=self.dtype, steps=self.steps, guidance=self.guidance, batch_size=self.batch_size,
                    metadata=tuple(sorted(self.model_metadata.items())) or None, module=self.model_object,
                    detail=self.detail or None,
                    lr_consistency=None if self.lr_consistency == "off" else self.lr_consistency)
        return {k: v for k, v in opts.items() if v is not None}


def check_device(device: str | None) -> None:
    """Raise :class:`InputError` when torch cannot run models on ``device`` here.

    Without this, ``--device cuda`` on a CPU-only torch failed ~30 s into the run, in the
    first model call, with torch's "AssertionError: Torch not compiled with CUDA enabled".
    torch is imported only for a device other than None and ``cpu``.
    """
    if device is None or device == "cpu":
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise InputError(f"--device {device}: not a torch device; use cpu, cuda, cuda:N or mps") from exc
    if dev.type == "cuda":
        if not torch.backends.cuda.is_built():
            raise InputError(f"--device {device}: this torch ({torch.__version__}) is built without CUDA; "
                             "use --device cpu, or a CUDA build of torch")
        count = torch.cuda.device_count()
        if count == 0:
            raise InputError(f"--device {device}: torch sees no CUDA device (driver, CUDA_VISIBLE_DEVICES?); "
                             "use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise InputError(f"--device {device}: torch sees {count} CUDA device{'s' if count > 1 else ''} "
                             f"(cuda:0 to cuda:{count - 1})")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise InputError(f"--device {device}: torch has no MPS (Apple GPU) device here; use --device cpu")
    elif dev.type != "cpu":
        raise InputError(f"--device {device}: geosr runs models on cpu, cuda or mps")


def parse_caption_every(spec: str) -> tuple[str, int]:
    """``tile`` -> ("tile", 1); ``window:N`` -> ("window", N); ``scene`` -> ("scene", 0)."""
    if spec == "tile":
        return "tile", 1
    if spec == "scene":
        return "scene", 0
    kind, _, n = spec.partition(":")
    if kind == "window" and n.isdigit() and int(n) >= 1:
        return "window", int(n)
    raise InputError(f"--caption-every must be tile, window:N or scene, got {spec!r}")
