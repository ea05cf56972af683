"""Super-resolution models behind the :class:`~geosr.models.base.Upscaler` protocol.

:func:`load_upscaler` resolves a model spec:

* ``bicubic`` / ``lanczos`` - classical baselines; ``nearest`` - for classification rasters;
* a name of a model shipped inside the package (``geosr-tiny-x4``, ``geosr-tiny-x2``);
* a local diffusers pipeline directory or a Hugging Face hub id (the diffusion pipeline);
* users' own networks: an ONNX file (``.onnx``), a TorchScript archive (``.pt``, ``.pth``,
  ``.ts``) or a Python object (``python:NAME@HASH``, :mod:`geosr.models.callable`), all behind
  :class:`~geosr.models.own_network.NetworkUpscaler`.

Loaded models are cached per process and spec, so a dask worker loads a model once.
"""

from __future__ import annotations

import os
import threading
from importlib.resources import files
from pathlib import Path
from typing import Any, Callable

from geosr.errors import ModelError
from geosr.models.base import Upscaler
from geosr.models.classical import BicubicUpscaler, LanczosUpscaler, NearestUpscaler

__all__ = [
    "Upscaler", "load_upscaler", "register_upscaler", "shipped_model_path", "default_model",
    "default_batch_size", "own_model_kind", "own_model_files", "CLASSICAL",
]

CLASSICAL: dict[str, Callable[[int], Upscaler]] = {
    "bicubic": BicubicUpscaler,
    "lanczos": LanczosUpscaler,
    "nearest": NearestUpscaler,
}

# Loaders for anything that is not classical, tried in order: (matches(spec), load(spec, scale, **opts)).
_LOADERS: list[tuple[Callable[[str], bool], Callable[..., Upscaler]]] = []
_CACHE: dict[tuple, Upscaler] = {}
_LOCK = threading.Lock()


def shipped_model_path(name: str) -> str | None:
    """Directory of a model shipped inside the package (``geosr/data/models/<name>``), or None."""
    if os.sep in name or "/" in name or name.startswith("."):
        return None
    resource = files("geosr").joinpath("data", "models", name)
    if resource.is_dir() and resource.joinpath("model_index.json").is_file():
        return str(resource)
    return None


def default_model(scale: int) -> str:
    """The model ``geosr upscale`` uses when none is named.

    The shipped diffusion model for that scale (``geosr-tiny-x4``, ``geosr-tiny-x2``), else bicubic:
    a shipped model only knows its own scale.
    """
    name = f"geosr-tiny-x{int(scale)}"
    return name if shipped_model_path(name) else "bicubic"


def default_batch_size(spec: str, device: str | None = None) -> int:
    """Tiles per model call when the user asks for none: 4, but 1 for a neural model on the CPU.

    On the CPU a batch saves no time (each convolution already uses every core) while it
    multiplies the memory of the tiles in flight: the first, HR-pixel-space default model on
    a 400 px scene peaked at 3.5 GiB of process memory at 1 tile per call and 10.4 GiB at 4,
    and was 16 % faster at 1 (docs/benchmarks.md). On CUDA batching does pay.
    """
    if spec in CLASSICAL:
        return 4
    import torch

    from geosr.models.diffusion import resolve_device

    return 4 if torch.device(resolve_device(device)).type == "cuda" else 1


def own_model_kind(spec: str) -> str | None:
    """``onnx``, ``torchscript`` or ``python`` for a spec of a user's own network, else None.

    Told by the spec alone (the file's suffix, the ``python:`` prefix), without importing a runtime.
    """
    if spec.startswith("python:"):
        return "python"
    suffix = os.path.splitext(spec)[1].lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in (".pt", ".pth", ".ts", ".torchscript"):
        return "torchscript"
    return None


def own_model_files(spec: str) -> list[str]:
    """The files a user's own network is read from: the ONNX or TorchScript file, its sidecar
    (:func:`~geosr.models.model_card.sidecar_path`) and an ONNX graph's external data
    (:func:`~geosr.models.onnx.external_data_files`); [] for any other spec or a missing file.

    ``~`` is expanded, as the loaders expand it. Each of these files changes the pixels:
    the sidecar can set the value ranges and the tile size.
    """
    kind = own_model_kind(spec)
    path = Path(spec).expanduser()
    if kind not in ("onnx", "torchscript") or not path.is_file():
        return []
    from geosr.models.model_card import sidecar_path

    found = [path]
    sidecar = sidecar_path(path)
    if sidecar is not None:
        found.append(sidecar)
    if kind == "onnx":
        from geosr.models.onnx import external_data_files

        found += external_data_files(path)
    return [str(p) for p in found]


def _load_own_model(spec: str, scale: int, steps: int | None = None, guidance: float | None = None,
                    **options: Any) -> Upscaler:
    if steps is not None or guidance is not None:
        raise ModelError(f"steps and guidance are options of diffusion pipelines, not of {spec}")
    kind = own_model_kind(spec)
    if kind == "onnx":
        from geosr.models import onnx as loader
    elif kind == "torchscript":
        from geosr.models import torchscript as loader
    else:
        from geosr.models import callable as loader
    return loader.load(spec, scale, **options)


def register_upscaler(matches: Callable[[str], bool], load: Callable[..., Upscaler]) -> None:
    """Register a loader for model specs that ``matches(spec)`` accepts."""
    _LOADERS.append((matches, load))


def load_upscaler(spec: str, scale: int, **options: Any) -> Upscaler:
    """Resolve ``spec`` to an :class:`Upscaler` for ``scale`` (cached per process).

    Raises
    ------
    ModelError
        The spec names no known model, or the model's scale differs from ``scale``.
    """
    if own_model_kind(spec) is None and {"metadata", "module"} & set(options):
        raise ModelError(f"model metadata applies to ONNX, TorchScript and Python models, not to {spec!r}")
    key = (spec, int(scale), tuple(sorted((k, repr(v)) for k, v in options.items())))
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        if spec in CLASSICAL:
            model = CLASSICAL[spec](int(scale))
        else:
            _ensure_builtin_loaders()
            for matches, load in _LOADERS:
                if matches(spec):
                    model = load(spec, int(scale), **options)
                    break
            else:
                known = ", ".join(sorted(CLASSICAL))
                raise ModelError(
                    f"unknown model {spec!r}: use one of {known}, a shipped model name, "
                    "a diffusers pipeline directory, a hub id, or a .onnx / .pt file"
                )
        if model.scale != int(scale):
            raise ModelError(f"model {spec!r} upscales x{model.scale}, but --scale is {scale}")
        _CACHE[key] = model
        return model


def _ensure_builtin_loaders() -> None:
    # The diffusion loader imports diffusers/transformers (when it loads): only pay for the
    # registration when a non-classical spec is asked for.
    if _LOADERS:
        return
    # users' networks first: the diffusion loader takes every path
    register_upscaler(lambda spec: own_model_kind(spec) is not None, _load_own_model)
    try:
        from geosr.models import diffusion
    except ImportError:  # the diffusion module lands with the diffusion pipeline
        return
    diffusion.register()
