"""A user's network behind the :class:`~geosr.models.base.Upscaler` protocol.

ONNX graphs (:mod:`geosr.models.onnx`), TorchScript archives (:mod:`geosr.models.torchscript`)
and Python objects (:mod:`geosr.models.callable`) differ only in how one batch runs: each
gives a *runner* (:class:`Runner`). :class:`NetworkUpscaler` does the rest for all of them as
the shipped diffusion upscaler does it: the value range of the network's
:class:`~geosr.models.model_card.ModelCard`, padding to its tile multiple, batches that halve
on an out-of-memory error, reduced precision with a float32 redo of non-finite tiles, and a
refusal of what stays non-finite (NaN is never written as pixels). Captions are not used.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import replace
from typing import Protocol, Sequence

import torch
import torch.nn.functional as F

from geosr.errors import InputError, ModelError
from geosr.models.batching import run_in_batches
from geosr.models.model_card import ModelCard

__all__ = ["Runner", "NetworkUpscaler", "seeded_noise", "upscale_in_units", "DEFAULT_BANDS"]

logger = logging.getLogger(__name__)

# Bands of a network that does not say: RGB, what super-resolution networks are trained on.
DEFAULT_BANDS = 3
# Side of the trial tile that measures a network's scale (rounded up to its tile multiple).
PROBE_SIDE = 16


class Runner(Protocol):
    """How one batch runs through a network.

    Attributes
    ----------
    reduced : bool
        Whether calls run in reduced precision (then ``precise=True`` runs in float32).
    description : str
        Precision and device, for the model's name (``bf16 on cpu``).
    """

    reduced: bool
    description: str

    def __call__(self, tiles: torch.Tensor, noise: torch.Tensor | None = None, precise: bool = False) -> torch.Tensor:
        """``[N, C, h, w]`` float32 CPU in model units -> the network's output, float32 CPU."""
        ...

    def out_of_memory(self, exc: BaseException) -> bool:
        """Whether ``exc`` is the runtime's out-of-memory error."""
        ...


def seeded_noise(seeds: Sequence[int], shape: tuple[int, int, int]) -> torch.Tensor:
    """``[N, *shape]`` standard normal noise, each tile's from its own seed.

    Drawn as :class:`~geosr.pipelines.GeoSRPipeline` draws a tile's initial noise (a CPU
    generator per tile, diffusers' ``randn_tensor``), so an exported student given this noise
    makes the pixels the pipeline makes.
    """
    return torch.cat([torch.randn((1, *shape), generator=torch.Generator("cpu").manual_seed(int(s))) for s in seeds])


class NetworkUpscaler:
    """Upscale tiles with a user's network.

    Parameters
    ----------
    spec : str
        The model spec (a file path, or ``python:NAME@HASH``): recorded in the output tags.
    kind : str
        ``onnx``, ``torchscript`` or ``python``: the name's prefix.
    runner : Runner
        Runs a batch (see :class:`Runner`).
    card : ModelCard
        What the network takes; a scale it does not state is measured on a trial tile.
    scale : int
        The scale the run asks for.
    batch_size : int
        Tiles per network call (at most the graph's static batch); halved for the rest of the
        run when the device runs out of memory.

    Raises
    ------
    InputError
        The network upscales by another factor than ``scale``.
    ModelError
        It is not ``(N, C, h, w) -> (N, C, s*h, s*w)``, or its card needs a scale to draw noise.
    """

    def __init__(self, spec: str, kind: str, runner: Runner, card: ModelCard, scale: int, batch_size: int = 4) -> None:
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        self.runner = runner
        self.card = card
        self.channels = card.bands or DEFAULT_BANDS
        self.batch_size = min(int(batch_size), card.batch_limit or int(batch_size))
        self._lock = threading.Lock()  # a user's callable may keep state between calls
        measured = self._probe(spec)
        if card.scale is not None and card.scale != measured:
            raise ModelError(f"{spec}: its metadata ({card.origin}) says x{card.scale}, but the network upscales "
                             f"x{measured}")
        if measured != int(scale):
            raise InputError(f"{spec} upscales x{measured}, but the scale asked for is {scale}: pass --scale {measured}")
        self.scale = measured
        self.card = replace(card, scale=measured)
        shown = spec if spec.startswith(f"{kind}:") else f"{kind}:{spec}"
        self.name = f"{shown} ({self.card.describe()}, {runner.description})"

    @property
    def grid_step(self) -> int:
        """LR pixels per step of the coarsest grid the network runs on: its ``tile_multiple``.

        A network that downsamples inside (pixel-unshuffle, strided convolutions) gives the
        same pixels for the same input only on the same phase of that grid, so the run's tile
        plan starts its tiles on multiples of it (:class:`geosr.tiling.TileGrid`), as the
        diffusion models' :attr:`~geosr.models.diffusion.DiffusionUpscaler.grid_step` does.
        """
        return max(1, int(self.card.tile_multiple))

    def _probe(self, spec: str) -> int:
        """The network's scale, measured on one mid-range trial tile; checks the shape contract."""
        card = self.card
        if card.tile_size:
            h, w = card.tile_size
        else:
            h = w = math.ceil(PROBE_SIDE / card.tile_multiple) * card.tile_multiple
        value = (card.value_range.low + card.value_range.high) / 2 if not card.value_range.raw else 0.1
        trial = torch.full((1, self.channels, h, w), value)
        noise = None
        if card.noise_input:
            if card.scale is None:
                raise ModelError(f"{spec}: a network with a noise input must state its scale in its metadata")
            noise = self._noise([0], h, w, card.scale)
        try:
            with self._lock:
                out = self.runner(trial, noise)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise ModelError(f"{spec} fails on a {self.channels}-band {h}x{w} trial tile: {_first_line(exc)}") from exc
        shape = tuple(out.shape)
        contract = "geosr runs networks (N, C, h, w) -> (N, C, s*h, s*w)"
        if len(shape) != 4 or shape[:2] != (1, self.channels) or shape[2] % h or shape[3] % w or shape[2] // h != shape[3] // w:
            got = "x".join(map(str, shape))
            raise ModelError(f"{spec} maps a 1x{self.channels}x{h}x{w} tile to {got}: {contract}"
                             + ("" if card.bands else f" (a network of other than {DEFAULT_BANDS} bands: state 'bands')"))
        return shape[2] // h

    def _noise(self, seeds: Sequence[int], h: int, w: int, scale: int) -> torch.Tensor:
        card = self.card
        stride = card.noise_stride
        if (h * scale) % stride or (w * scale) % stride:
            raise InputError(f"the network's noise grid needs output tiles that are multiples of {stride} px")
        return seeded_noise(seeds, (card.noise_channels or self.channels, h * scale // stride, w * scale // stride))

    def upscale(
        self,
        tiles: torch.Tensor,
        captions: Sequence[str] = (),
        seeds: Sequence[int] | None = None,
        scene_units: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Upscale ``[B, C, h, w]`` tiles to ``[B, C, h*s, w*s]`` float32 CPU (captions are not used).

        In a bounded range (``0..1``, ``0..255``) the network sees the tiles clamped to the
        scene stretch's ``[0, 1]``, mapped onto its range; what the clamp took away comes back
        as its bicubic, as in :class:`~geosr.models.diffusion.DiffusionUpscaler`. A ``raw/N``
        network reads the raster's values over N, unclamped: ``scene_units`` = per band
        ``(low, span)`` of the stretch, ``raster value = low + span * tile``
        (:func:`upscale_in_units` gives them).

        Raises
        ------
        InputError
            Wrong band count, or tiles of another size than a fixed-size network takes.
        ModelError
            The network's output is not finite (in float32), or not the expected shape.
        """
        batch, channels, height, width = tiles.shape
        if channels != self.channels:
            raise InputError(f"the model takes {self.channels} bands, got {channels}")
        seeds = [0] * batch if seeds is None else [int(s) for s in seeds]
        card = self.card
        tiles = tiles.float().nan_to_num(0.0, posinf=0.0, neginf=0.0)
        if card.tile_size:
            # a fixed-size network: tiles (cores balanced to the scene, see geosr.tiling) are padded up to it
            if height > card.tile_size[0] or width > card.tile_size[1]:
                raise InputError(f"the model takes tiles of at most {card.tile_size[0]}x{card.tile_size[1]} px "
                                 f"(tile + 2 x overlap), got {height}x{width}")
            pad_h, pad_w = card.tile_size[0] - height, card.tile_size[1] - width
        else:
            pad_h, pad_w = -height % card.tile_multiple, -width % card.tile_multiple
        if pad_h or pad_w:
            mode = "reflect" if pad_h < height and pad_w < width else "replicate"
            tiles = F.pad(tiles, (0, pad_w, 0, pad_h), mode=mode)
        if self.reads_raster_values and scene_units is None:
            raise ModelError(f"a model of range {card.value_range} (output {card.out_range}) reads raster values: "
                             "it needs the scene's stretch")
        if card.value_range.raw:
            low, span = (u.float().view(1, -1, 1, 1) for u in scene_units)
            inside = tiles * span + low
            model_in = inside / card.value_range.divisor
        else:
            inside = tiles.clamp(0.0, 1.0)
            model_in = inside * (card.value_range.high - card.value_range.low) + card.value_range.low
        if card.mean is not None or card.std is not None:
            model_in = (model_in - _per_band(card.mean, 0.0)) / _per_band(card.std, 1.0)
        out = self._batches(model_in, seeds)
        hr = self._to_tile_units(out, scene_units)
        if not card.value_range.raw:
            outside = tiles - inside
            if outside.any():  # bicubic is linear: bicubic(tiles) - bicubic(inside)
                hr += F.interpolate(outside, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return hr[..., : height * self.scale, : width * self.scale].contiguous()

    @property
    def reads_raster_values(self) -> bool:
        """Whether the network's input or output is in the raster's own units (``raw/N``)."""
        return self.card.value_range.raw or self.card.out_range.raw

    def _to_tile_units(self, out: torch.Tensor, scene_units) -> torch.Tensor:
        r = self.card.out_range
        if r.raw:
            low, span = (u.float().view(1, -1, 1, 1) for u in scene_units)
            return (out * r.divisor - low) / span
        return (out - r.low) / (r.high - r.low)

    def _batches(self, model_in: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        def run(part: slice) -> torch.Tensor:
            out = self._call(model_in[part], seeds[part])
            self._redo_non_finite(out, model_in[part], seeds[part])
            return out

        return run_in_batches(len(model_in), self.batch_size, run, self.runner.out_of_memory, self._shrink)

    def _shrink(self, batch_size: int) -> None:
        self.batch_size = batch_size

    def _call(self, model_in: torch.Tensor, seeds: list[int], precise: bool = False) -> torch.Tensor:
        h, w = model_in.shape[-2:]
        noise = self._noise(seeds, h, w, self.scale) if self.card.noise_input else None
        with self._lock:
            out = self.runner(model_in, noise, precise=precise)
        expected = (len(model_in), self.channels, h * self.scale, w * self.scale)
        if tuple(out.shape) != expected:
            raise ModelError(f"the model returned {'x'.join(map(str, out.shape))} for "
                             f"{'x'.join(map(str, model_in.shape))} tiles, expected {'x'.join(map(str, expected))}")
        return out

    def _redo_non_finite(self, out: torch.Tensor, model_in: torch.Tensor, seeds: list[int]) -> None:
        bad = [i for i in range(len(out)) if not torch.isfinite(out[i]).all()]
        if not bad:
            return
        if self.runner.reduced:
            # bf16/fp16 overflows are fixed by float32 arithmetic; one tile at a time
            logger.warning("non-finite output for %d tile(s): redoing them in float32", len(bad))
            for i in bad:
                out[i] = self._call(model_in[i : i + 1], seeds[i : i + 1], precise=True)[0]
            bad = [i for i in bad if not torch.isfinite(out[i]).all()]
        if bad:
            raise ModelError(f"the model produced NaN or infinite values for {len(bad)} of {len(out)} tile(s) "
                             "in float32; refusing to write them as pixels")


def upscale_in_units(model, tiles: torch.Tensor, captions: Sequence[str], seeds: Sequence[int] | None, stretch,
                     positions: Sequence[int]) -> torch.Tensor:
    """``model.upscale(tiles, captions, seeds)``, with the stretch of the tiles' bands for a network
    that reads raster values (:attr:`NetworkUpscaler.reads_raster_values`).

    Parameters
    ----------
    stretch : geosr.radiometry.Stretch or None
        The scene stretch of the planned bands; ``positions`` are the tiles' channels in it.

    Raises
    ------
    ModelError
        The network reads raster values and ``stretch`` is None.
    """
    if not getattr(model, "reads_raster_values", False):
        return model.upscale(tiles, captions, seeds)
    if stretch is None:
        raise ModelError(f"{model.name} reads raster values: it needs the scene's stretch")
    low = torch.tensor([stretch.low[p] for p in positions], dtype=torch.float64)
    span = torch.tensor([stretch.high[p] for p in positions], dtype=torch.float64) - low
    return model.upscale(tiles, captions, seeds, scene_units=(low, span))


def _per_band(values: tuple[float, ...] | None, default: float) -> torch.Tensor:
    if values is None:
        return torch.tensor(default)
    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
