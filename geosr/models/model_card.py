"""What a user's network says about itself: scale, bands, value range, tile constraints.

A :class:`ModelCard` is read, later sources winning, from

1. what the network is: an ONNX graph's input shape (static channels, tile size, batch);
2. metadata stored in the model: an ONNX file's ``metadata_props`` (values plain or JSON
   encoded, as the Deepness QGIS plugin writes them), a ``model.json`` inside a TorchScript
   archive (``torch.jit.save(..., _extra_files={"model.json": ...})``), or a Python object's
   ``geosr_metadata`` dict;
3. a sidecar beside the file, ``NAME.json`` or ``NAME.yaml`` for ``NAME.onnx`` / ``NAME.pt``;
4. the run's own ``model_metadata`` option (``--model-meta KEY=VALUE``).

The keys (Deepness' names are accepted too):

=================  ==========================================================================
``scale``          integer upscaling factor (``scale_factor``, ``upscale_factor``)
``bands``          input and output channels (``channels``, ``in_channels``)
``value_range``    what the model's pixel values mean: ``0-1`` (default), ``0-255``, ``-1..1``
                   or any ``LO..HI``, the scene's display stretch mapped onto it; or ``raw/N``:
                   the raster's own values divided by N (``raw/10000``: Sentinel-2 L2A
                   reflectance), not stretched (``range``, ``input_range``)
``output_range``   the output's, when it differs (Deepness ``output_scaling: K`` is ``0..K``)
``tile_multiple``  the input height and width must be multiples of this (tiles are padded)
``tile_size``      the one input side the network takes (``tiles_size``)
``min_overlap``    the halo the network needs, in input pixels
``standardization_mean``, ``standardization_std``
                   per-band input standardisation after the range (Deepness)
``noise_input``    name of a Gaussian noise input (a diffusion student), with
                   ``noise_channels`` and ``noise_stride`` (output pixels per noise pixel)
``model_type``     Deepness' kind; only ``Superresolution`` is accepted
=================  ==========================================================================

Unknown keys are kept out of the way (producers write their own).
"""

from __future__ import annotations

import json
import math
import os
import re
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import yaml

from geosr.errors import InputError, ModelError

__all__ = ["ModelCard", "ValueRange", "parse_value_range", "card_from_metadata", "sidecar_metadata",
           "sidecar_path", "torchscript_metadata"]

# Deepness' and other producers' names of the keys this module knows.
ALIASES = {
    "scale_factor": "scale", "upscale_factor": "scale",
    "channels": "bands", "in_channels": "bands", "num_channels": "bands",
    "range": "value_range", "input_range": "value_range",
    "size_multiple": "tile_multiple",
    "tiles_size": "tile_size",
    "halo": "min_overlap",
}
KEYS = ("scale", "bands", "value_range", "output_range", "output_scaling", "tile_multiple", "tile_size",
        "min_overlap", "standardization_mean", "standardization_std", "noise_input", "noise_channels",
        "noise_stride", "model_type")
SIDECAR_SUFFIXES = (".json", ".yaml", ".yml")
# The file a TorchScript archive carries its metadata in (an `_extra_files` entry).
TORCHSCRIPT_METADATA = "model.json"
_RANGE = re.compile(r"^\[?\s*(-?\d+(?:\.\d*)?)\s*(?:\.\.|,|:|-)\s*(-?\d+(?:\.\d*)?)\s*\]?$")
_RAW = re.compile(r"^raw(?:\s*/\s*(\d+(?:\.\d*)?))?$")


@dataclass(frozen=True)
class ValueRange:
    """What a network's pixel values are.

    Attributes
    ----------
    low, high : float
        The values the scene's display stretch (geosr's ``[0, 1]``) maps onto; unused for raw.
    divisor : float or None
        Set for a range in the raster's own units: the network takes ``value / divisor``.
    """

    low: float = 0.0
    high: float = 1.0
    divisor: float | None = None

    @property
    def raw(self) -> bool:
        """Whether the network reads the raster's values (not the display stretch)."""
        return self.divisor is not None

    def __str__(self) -> str:
        if self.raw:
            return "raw" if self.divisor == 1 else f"raw/{self.divisor:g}"
        return f"{self.low:g}..{self.high:g}"


def parse_value_range(text: Any, key: str = "value_range") -> ValueRange:
    """``0-1``, ``0-255``, ``-1..1``, ``[0, 255]``, ``raw`` or ``raw/10000`` -> :class:`ValueRange`.

    Raises
    ------
    InputError
        Not one of those forms, or an empty range.
    """
    if isinstance(text, (list, tuple)) and len(text) == 2:
        text = f"{text[0]}..{text[1]}"
    spelled = str(text).strip().lower()
    raw = _RAW.match(spelled)
    if raw:
        divisor = float(raw.group(1) or 1)
        if divisor <= 0:
            raise InputError(f"model {key} {text!r}: the divisor must be > 0")
        return ValueRange(divisor=divisor)
    match = _RANGE.match(spelled)
    if not match:
        raise InputError(f"model {key} {text!r}: use LO..HI (e.g. 0-1, 0-255, -1..1) or raw/N (e.g. raw/10000)")
    low, high = float(match.group(1)), float(match.group(2))
    if not high > low:
        raise InputError(f"model {key} {text!r}: the high end must be above the low end")
    return ValueRange(low, high)


@dataclass(frozen=True)
class ModelCard:
    """What geosr knows of a user's network before running it (see the module docstring).

    ``None`` means "not stated": :func:`geosr.models.own_network.probe` measures the scale on a
    trial tile, and the bands default to 3 (RGB).
    """

    scale: int | None = None
    bands: int | None = None
    value_range: ValueRange = field(default_factory=ValueRange)
    output_range: ValueRange | None = None
    tile_multiple: int = 1
    tile_size: tuple[int, int] | None = None
    min_overlap: int = 0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    noise_input: str | None = None
    noise_channels: int | None = None
    noise_stride: int = 1
    batch_limit: int | None = None  # a graph with a static batch dimension takes that many tiles per call
    origin: str = "defaults"  # where the values came from, for messages

    @property
    def out_range(self) -> ValueRange:
        """The range of the network's output (its input's unless stated)."""
        return self.output_range or self.value_range

    def describe(self) -> str:
        """One line for tags and messages, e.g. ``x4, 3 bands, range 0..255``."""
        parts = [f"x{self.scale}" if self.scale else "scale not stated", f"{self.bands or 3} bands",
                 f"range {self.value_range}"]
        if self.output_range:
            parts.append(f"output {self.output_range}")
        if self.tile_size:
            parts.append(f"tiles {self.tile_size[0]}x{self.tile_size[1]}")
        elif self.tile_multiple > 1:
            parts.append(f"tiles multiple of {self.tile_multiple}")
        return ", ".join(parts)


def card_from_metadata(metadata: Mapping[str, Any], base: ModelCard | None = None, origin: str = "") -> ModelCard:
    """``base`` with the keys of ``metadata`` set on it (values plain, or JSON-encoded strings).

    Raises
    ------
    InputError
        A known key with a value of the wrong kind, or a Deepness model that is not a
        super-resolution model.
    """
    card = base or ModelCard()
    values = {ALIASES.get(k, k): _decode(v) for k, v in metadata.items()}
    values = {k: v for k, v in values.items() if k in KEYS and v is not None}
    if not values:
        return card
    where = f" ({origin})" if origin else ""
    kind = values.pop("model_type", None)
    if kind is not None and str(kind).lower() != "superresolution":
        raise InputError(f"the model is a {kind} (model_type{where}), not a super-resolution model")
    changes: dict[str, Any] = {}
    for key in ("scale", "bands", "tile_multiple", "min_overlap", "noise_channels", "noise_stride"):
        if key in values:
            changes[key] = _positive_int(values.pop(key), key, where, allow_zero=key == "min_overlap")
    if "tile_size" in values:
        side = values.pop("tile_size")
        sides = side if isinstance(side, (list, tuple)) else [side, side]
        changes["tile_size"] = tuple(_positive_int(s, "tile_size", where) for s in sides[-2:])
    if "value_range" in values:
        changes["value_range"] = parse_value_range(values.pop("value_range"))
    if "output_range" in values:
        changes["output_range"] = parse_value_range(values.pop("output_range"), "output_range")
    if "output_scaling" in values:  # Deepness: the output's maximum (its input is 0..1)
        changes["output_range"] = ValueRange(0.0, _positive_float(values.pop("output_scaling"), "output_scaling", where))
    for key, name in (("standardization_mean", "mean"), ("standardization_std", "std")):
        if key in values:
            changes[name] = _floats(values.pop(key), key, where)
    if "noise_input" in values:
        changes["noise_input"] = str(values.pop("noise_input"))
    origins = [o for o in (card.origin if card.origin != "defaults" else "", origin) if o]
    return replace(card, **changes, origin=", ".join(origins) or card.origin)


def sidecar_metadata(path: str | os.PathLike) -> tuple[dict[str, Any], str] | None:
    """The metadata of the sidecar beside ``path`` (``NAME.json`` / ``NAME.yaml``) and its path, or None.

    Raises
    ------
    ModelError
        The sidecar exists but is not a JSON / YAML mapping.
    """
    sidecar = sidecar_path(path)
    if sidecar is None:
        return None
    try:
        loaded = yaml.safe_load(sidecar.read_text())  # YAML reads JSON too
    except (OSError, yaml.YAMLError) as exc:
        raise ModelError(f"cannot read the model's sidecar {sidecar}: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ModelError(f"the model's sidecar {sidecar} must hold a mapping of keys to values")
    return loaded, str(sidecar)


def sidecar_path(path: str | os.PathLike) -> Path | None:
    """The sidecar beside ``path`` that :func:`sidecar_metadata` reads (the first of
    ``NAME.json``, ``NAME.yaml``, ``NAME.yml`` that exists), or None."""
    stem = Path(path).with_suffix("")
    for suffix in SIDECAR_SUFFIXES:
        # appended, not with_suffix: "edsr.x4.onnx" -> "edsr.x4.json", not "edsr.json"
        sidecar = stem.with_name(stem.name + suffix)
        if sidecar.is_file() and sidecar != Path(path):
            return sidecar
    return None


def torchscript_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``model.json`` a TorchScript archive carries (``_extra_files``), read without torch; {} if none."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith(f"/extra/{TORCHSCRIPT_METADATA}")]
            if not names:
                return {}
            loaded = json.loads(archive.read(names[0]))
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise ModelError(f"cannot read {path} as a TorchScript archive: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ModelError(f"{path}: its {TORCHSCRIPT_METADATA} must hold a mapping of keys to values")
    return loaded


def _decode(value: Any) -> Any:
    # Deepness JSON-encodes every value ('4', '"Superresolution"', '[0.5, 0.5, 0.5]'); others write plain text.
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value.strip()
    return value


def _positive_int(value: Any, key: str, where: str, allow_zero: bool = False) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not number.is_integer() or number < (0 if allow_zero else 1):
        raise InputError(f"model {key}{where} must be a {'non-negative' if allow_zero else 'positive'} integer, "
                         f"got {value!r}")
    return int(number)


def _positive_float(value: Any, key: str, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not number > 0 or not math.isfinite(number):
        raise InputError(f"model {key}{where} must be a positive number, got {value!r}")
    return number


def _floats(value: Any, key: str, where: str) -> tuple[float, ...]:
    values = value if isinstance(value, (list, tuple)) else [value]
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise InputError(f"model {key}{where} must be a number or a list of numbers, got {value!r}") from None
    if key.endswith("std") and not all(v > 0 for v in out):
        raise InputError(f"model {key}{where} must be positive, got {value!r}")
    return out
