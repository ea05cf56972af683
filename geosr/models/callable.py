"""Python objects as models: ``geosr.upscale(..., model=net)`` with any torch module or function
``(N, C, h, w) float -> (N, C, s*h, s*w)``.

A run names the object by a spec, ``python:NAME@HASH`` (:func:`object_spec`): the hash of its
weights (``state_dict``) and of the source of its class or function, so the run identity that
``resume`` compares and the output's tags change when the network does. The object itself
travels beside the spec as a :class:`ModelObject`: in a threaded run (the default) nothing is
copied; to worker processes (``local_workers``, ``address``) it is pickled with cloudpickle,
once per process and spec, so a class defined in a notebook or script travels by value.
Metadata comes from the object's ``geosr_metadata`` dict and the run's ``model_metadata``.

Limits: the hash covers the weights and the code of the object's own class or function,
not code it calls elsewhere (a helper changed in another module keeps the hash); pickled
objects go with every batch sent to a worker process (a few MB is fine; a large network is
better saved with TorchScript or ONNX and passed as a path); the objects a process was given
are kept for the life of the process.
"""

from __future__ import annotations

import hashlib
import inspect
import threading
from typing import Any, Callable, Mapping

import torch

from geosr.errors import InputError, ModelError
from geosr.models.model_card import ModelCard, card_from_metadata

__all__ = ["PREFIX", "ModelObject", "object_spec", "model_object", "read_card", "load"]

PREFIX = "python:"

# spec -> object, in this process: what a ModelObject unpickled here, or the API was given
_OBJECTS: dict[str, Any] = {}
_OBJECTS_LOCK = threading.Lock()


def object_spec(network: Callable) -> str:
    """``python:NAME@HASH`` of a module or function (see the module docstring).

    Raises
    ------
    InputError
        ``network`` is not callable.
    """
    if not callable(network):
        raise InputError(f"model must be a spec string, a torch module or a function, got {type(network).__name__}")
    digest = hashlib.sha256()
    code_of = network if inspect.isfunction(network) or inspect.ismethod(network) else type(network)
    digest.update(_source(code_of).encode())
    state_dict = getattr(network, "state_dict", None)
    if callable(state_dict):
        for key, value in state_dict().items():
            digest.update(key.encode())
            if hasattr(value, "detach"):
                array = value.detach().cpu().contiguous()
                digest.update(f"{array.dtype}{tuple(array.shape)}".encode())
                digest.update(array.view(-1).view(torch.uint8).numpy().tobytes() if array.numel() else b"")
    name = getattr(code_of, "__qualname__", type(network).__name__).replace("<", "").replace(">", "")
    return f"{PREFIX}{name}@{digest.hexdigest()[:12]}"


def _source(code_of: Any) -> str:
    try:
        return inspect.getsource(code_of)
    except (OSError, TypeError):  # defined at an interactive prompt, or a builtin
        return f"{getattr(code_of, '__module__', '')}.{getattr(code_of, '__qualname__', repr(code_of))}"


class ModelObject:
    """A model object beside its spec, pickled once for worker processes (see the module docstring)."""

    def __init__(self, spec: str, network: Callable) -> None:
        self.spec = spec
        self.network = network
        self._pickled: bytes | None = None
        with _OBJECTS_LOCK:
            _OBJECTS.setdefault(spec, network)

    def __repr__(self) -> str:
        # the models' cache key and a RunConfig's repr show the spec, not the whole network
        return f"ModelObject({self.spec!r})"

    def __reduce__(self):
        if self._pickled is None:
            import cloudpickle

            self._pickled = cloudpickle.dumps(self.network)
        return _restore, (self.spec, self._pickled)


def _restore(spec: str, pickled: bytes) -> ModelObject:
    # a worker process unpickles each job's copy: the first one is loaded, the rest reuse it
    with _OBJECTS_LOCK:
        network = _OBJECTS.get(spec)
    if network is None:
        import pickle

        network = pickle.loads(pickled)
    return ModelObject(spec, network)


def model_object(network: Callable) -> ModelObject:
    """The :class:`ModelObject` of ``network``, with its spec."""
    return ModelObject(object_spec(network), network)


def _network(spec: str, module: ModelObject | None) -> Callable:
    if module is not None:
        return module.network
    with _OBJECTS_LOCK:
        network = _OBJECTS.get(spec)
    if network is None:
        raise ModelError(f"{spec} names a Python model object this process was not given: pass the object itself "
                         "(geosr.upscale(model=net))")
    return network


def read_card(spec: str, module: ModelObject | None = None, overrides: Mapping[str, Any] = ()) -> ModelCard:
    """The card of the object: its ``geosr_metadata`` dict, then ``overrides``."""
    network = _network(spec, module)
    own = getattr(network, "geosr_metadata", None) or {}
    if not isinstance(own, Mapping):
        raise InputError(f"{spec}: its geosr_metadata must be a dict, got {type(own).__name__}")
    card = card_from_metadata(own, origin="geosr_metadata")
    return card_from_metadata(dict(overrides), card, origin="model_metadata")


def load(spec: str, scale: int, device: str | None = None, dtype: str | None = None, batch_size: int = 4,
         metadata: Mapping[str, Any] = (), module: ModelObject | None = None):
    """A :class:`~geosr.models.own_network.NetworkUpscaler` over the object ``spec`` names (``module``).

    Raises
    ------
    ModelError
        This process holds no object of that spec, or it is not ``(N, C, h, w) -> (N, C, s*h, s*w)``.
    InputError
        It upscales by another factor than ``scale``.
    """
    from geosr.models.own_network import NetworkUpscaler
    from geosr.models.torch_runner import TorchRunner

    card = read_card(spec, module, metadata)
    runner = TorchRunner(_network(spec, module), device, dtype)
    return NetworkUpscaler(spec, "python", runner, card, scale, batch_size)
