"""Refuse, before any tile, a user's network that does not fit the run: scale, bands, tile size, halo.

:func:`check_model_fits` reads the network's card (:mod:`geosr.models.model_card`: metadata
only, no trial run) and the input's band count, and raises one line that says what the network
expects and which option gives it. A scale the card does not state is measured when the model
loads (:class:`~geosr.models.own_network.NetworkUpscaler`), still before the first tile.
"""

from __future__ import annotations

from typing import Sequence

from geosr.config import RunConfig
from geosr.errors import InputError
from geosr.models import own_model_kind
from geosr.models.model_card import ModelCard
from geosr.models.own_network import DEFAULT_BANDS

__all__ = ["check_model_fits", "read_card"]


def read_card(config: RunConfig) -> ModelCard | None:
    """The card of ``config``'s model with its ``model_metadata``, or None for a model that is not a user's network."""
    kind = own_model_kind(config.model)
    overrides = dict(config.model_metadata)
    if kind == "onnx":
        from geosr.models import onnx

        return onnx.read_card(config.model, overrides)
    if kind == "torchscript":
        from geosr.models import torchscript

        return torchscript.read_card(config.model, overrides)
    if kind == "python":
        from geosr.models import callable

        return callable.read_card(config.model, config.model_object, overrides)
    return None


def check_model_fits(files: Sequence[str], config: RunConfig) -> None:
    """Raise :class:`InputError` when ``config``'s own network cannot run on ``files`` as asked.

    A network of C bands, C other than 1 and 3, needs at least C bands of the input (its first
    C go through it, ``--bands`` picks them); 1- and 3-band networks take any band count, as the
    shipped models do (:func:`geosr.scene_plan.plan_bands`: R, G, B together, other bands alone).
    A fixed-size network needs ``tile + 2 x overlap`` within its size, and a network's
    ``min_overlap`` an overlap at least that wide.
    """
    card = read_card(config)
    if card is None:
        return
    name, where = config.model, f" ({card.origin})" if card.origin != "defaults" else ""
    if card.scale is not None and card.scale != config.scale:
        raise InputError(f"{name} upscales x{card.scale}{where}; the run asks for x{config.scale}: "
                         f"pass --scale {card.scale}")
    tile, overlap = config.tiles.tile, config.tiles.overlap
    if overlap < card.min_overlap:
        raise InputError(f"{name} needs an overlap of at least {card.min_overlap} px{where}: "
                         f"pass --overlap {card.min_overlap}")
    if card.tile_size:
        side = min(card.tile_size)
        if tile + 2 * overlap > side:
            fit = max(side - 2 * overlap, 0)
            hint = f"--tile {fit}" if fit >= 8 else f"a smaller --overlap and --tile (tile + 2 x overlap <= {side})"
            raise InputError(f"{name} takes tiles of at most {card.tile_size[0]}x{card.tile_size[1]} px{where}, "
                             f"and --tile {tile} with --overlap {overlap} makes {tile + 2 * overlap}: pass {hint}")
    bands = card.bands or DEFAULT_BANDS
    count = _input_bands(files, config)
    if bands not in (1, 3) and count < bands:
        chosen = "selected with --bands" if config.bands else "in the input"
        raise InputError(f"{name} takes {bands} bands{where}; there {'is' if count == 1 else 'are'} {count} {chosen}")


def _input_bands(files: Sequence[str], config: RunConfig) -> int:
    if config.bands:
        return len(config.bands)
    from geosr.scene import data_bands_of, expand_inputs, open_raster

    with open_raster(expand_inputs(files)[0]) as ds:  # a band labelled alpha but named NIR is data
        return len(data_bands_of(ds))
