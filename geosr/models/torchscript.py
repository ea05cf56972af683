"""TorchScript archives (``torch.jit.save``) as models: ``--model path/to/model.pt``.

The archive may carry its metadata as a ``model.json`` extra file
(``torch.jit.save(m, path, _extra_files={"model.json": json.dumps({"scale": 4})})``), or have
a sidecar beside it (:mod:`geosr.models.model_card`).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Mapping

from geosr.errors import ModelError
from geosr.models.model_card import ModelCard, card_from_metadata, sidecar_metadata, torchscript_metadata

__all__ = ["SUFFIXES", "read_card", "load"]

SUFFIXES = (".pt", ".pth", ".ts", ".torchscript")


def read_card(spec: str, overrides: Mapping[str, Any] = ()) -> ModelCard:
    """The card of the archive at ``spec``: its ``model.json``, its sidecar, then ``overrides``.

    Raises
    ------
    ModelError
        The file does not exist or is not a TorchScript archive.
    """
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ModelError(f"model file {spec} does not exist")
    card = card_from_metadata(torchscript_metadata(path), origin=f"{path.name}'s model.json")
    sidecar = sidecar_metadata(path)
    if sidecar:
        card = card_from_metadata(sidecar[0], card, origin=os.path.basename(sidecar[1]))
    return card_from_metadata(dict(overrides), card, origin="model_metadata")


def load(spec: str, scale: int, device: str | None = None, dtype: str | None = None, batch_size: int = 4,
         metadata: Mapping[str, Any] = ()):
    """A :class:`~geosr.models.own_network.NetworkUpscaler` over the TorchScript archive ``spec``.

    Raises
    ------
    ModelError
        The file is not a TorchScript archive (a ``state_dict`` or a ``torch.save``'d module
        needs its Python class: pass the module object to :func:`geosr.upscale`, or export it).
    InputError
        It upscales by another factor than ``scale``.
    """
    import torch

    from geosr.models.own_network import NetworkUpscaler
    from geosr.models.torch_runner import TorchRunner

    card = read_card(spec, metadata)
    try:
        with warnings.catch_warnings():
            # torch 2.13 deprecates TorchScript for torch.export; the archives users have still load
            warnings.simplefilter("ignore", DeprecationWarning)
            network = torch.jit.load(str(Path(spec).expanduser()), map_location="cpu")
    except (RuntimeError, ValueError) as exc:
        raise ModelError(
            f"{spec} is not a TorchScript archive (torch.jit.script/trace + torch.jit.save); a state_dict or a "
            "torch.save'd module needs its Python class: pass the module to geosr.upscale(model=...) or export it"
        ) from exc
    runner = TorchRunner(network.eval(), device, dtype)
    return NetworkUpscaler(spec, "torchscript", runner, card, scale, batch_size)
