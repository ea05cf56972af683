"""ONNX graphs run by onnxruntime as models: ``--model path/to/model.onnx``.

The graph's metadata (``metadata_props``, plain or JSON values as Deepness writes them) and
a sidecar beside it describe it (:mod:`geosr.models.model_card`); static dimensions of its
input say its bands, tile size and batch. It runs on onnxruntime's CUDA execution provider
for a cuda device (``onnxruntime-gpu``), else on the CPU one, in the graph's own precision:
onnxruntime has no bf16 convolutions on x86 CPUs, and a float16 graph is exported as such.
"""

from __future__ import annotations

import functools
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from geosr.errors import InputError, ModelError
from geosr.models.model_card import ModelCard, card_from_metadata, sidecar_metadata

__all__ = ["SUFFIXES", "read_card", "load", "external_data_files", "OnnxRunner"]

SUFFIXES = (".onnx",)
_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise ModelError("ONNX models need onnxruntime: pip install 'geosr[onnx]' "
                         "(onnxruntime-gpu for CUDA)") from exc
    return onnxruntime


def _session(path: str, providers: list, threads: int = 0):
    ort = _onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # onnxruntime logs warnings (e.g. nodes left on the CPU by the CUDA provider) to stderr: errors only
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(path, options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own pybind classes
        raise ModelError(f"onnxruntime cannot load {path}: {str(exc).strip().splitlines()[0]}") from exc


@functools.lru_cache(maxsize=16)
def _graph(path: str, mtime_ns: int, size: int) -> tuple[dict[str, str], tuple[tuple[str, tuple], ...]]:
    """The graph's metadata and its inputs' names and shapes (cached per file version)."""
    session = _session(path, ["CPUExecutionProvider"])
    inputs = tuple((i.name, tuple(i.shape)) for i in session.get_inputs())
    return dict(session.get_modelmeta().custom_metadata_map), inputs


def external_data_files(path: str | os.PathLike) -> list[Path]:
    """The files beside the graph at ``path`` that hold its tensors (ONNX external data), that exist.

    A graph saved with external data (over 2 GB, or as exporters choose) keeps only offsets
    into them: new weights re-exported under the same names leave the graph's bytes as they
    were. The graph names them (each tensor's ``location``), read with the ``onnx`` package,
    installed with onnxruntime by the ``onnx`` extra; without it, the names exporters give
    them (``NAME.onnx.data``, ``NAME.onnx_data``, ``NAME.data``).
    """
    graph_path = Path(path)
    try:
        import onnx
    except ImportError:
        names = {graph_path.name + ".data", graph_path.name + "_data", graph_path.stem + ".data"}
    else:
        try:
            model = onnx.load(str(graph_path), load_external_data=False)
        except Exception:  # noqa: BLE001 - protobuf's DecodeError and onnx's own
            return []  # not a graph: loading it as a model fails with onnxruntime's own message
        names = {entry.value for tensor in _tensors(model.graph) for entry in tensor.external_data
                 if entry.key == "location"}
    found = (graph_path.parent / name for name in sorted(names))
    return [f for f in found if f.is_file()]


def _tensors(graph) -> Iterator[Any]:
    """Every tensor of an ONNX graph: initializers, sparse ones, node attributes, subgraphs'."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _tensors(subgraph)


def _image_input(path: str, inputs: tuple[tuple[str, tuple], ...], noise_input: str | None) -> tuple[str, tuple]:
    image = [(name, shape) for name, shape in inputs if name != noise_input]
    if len(image) != 1 or (noise_input and len(inputs) != 2):
        names = ", ".join(name for name, _ in inputs)
        raise ModelError(f"{path} has inputs {names}: geosr feeds one image input (and a noise input "
                         "its metadata names as noise_input)")
    name, shape = image[0]
    if len(shape) != 4:
        raise ModelError(f"{path}: its input {name} has shape {list(shape)}; geosr feeds (N, C, h, w) tiles")
    return name, shape


def _with_static(card: ModelCard, shape: tuple, path: str) -> ModelCard:
    """``card`` with what the input's static dimensions say: batch, bands, tile size."""
    batch, channels, height, width = (d if isinstance(d, int) and d > 0 else None for d in shape)
    if channels and card.bands is not None and card.bands != channels:
        raise ModelError(f"{path}: its metadata says {card.bands} bands, its input takes {channels}")
    if height and width and card.tile_size is not None and card.tile_size != (height, width):
        raise ModelError(f"{path}: its metadata says tile_size {card.tile_size}, its input is {height}x{width}")
    return replace(card, batch_limit=batch, bands=channels or card.bands,
                   tile_size=(height, width) if height and width else card.tile_size)


def read_card(spec: str, overrides: Mapping[str, Any] = ()) -> ModelCard:
    """The card of the graph at ``spec``: its metadata, its sidecar, ``overrides``, then its input's static shape.

    Raises
    ------
    ModelError
        The file does not exist, onnxruntime cannot load it, or its inputs are not what geosr feeds.
    """
    return _card_and_input(spec, overrides)[0]


def _card_and_input(spec: str, overrides: Mapping[str, Any]) -> tuple[ModelCard, str, str]:
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ModelError(f"model file {spec} does not exist")
    resolved = str(path.resolve())
    st = path.stat()
    metadata, inputs = _graph(resolved, st.st_mtime_ns, st.st_size)
    card = card_from_metadata(metadata, origin=f"{path.name} metadata")
    sidecar = sidecar_metadata(path)
    if sidecar:
        card = card_from_metadata(sidecar[0], card, origin=os.path.basename(sidecar[1]))
    card = card_from_metadata(dict(overrides), card, origin="model_metadata")
    name, shape = _image_input(spec, inputs, card.noise_input)
    return _with_static(card, shape, spec), name, resolved


def _providers(device: str | None) -> tuple[list, str]:
    """onnxruntime's execution providers for ``device`` and the device's name; None: CUDA when it has it."""
    available = _onnxruntime().get_available_providers()
    if device is None:
        device = "cuda" if "CUDAExecutionProvider" in available and _torch_sees_cuda() else "cpu"
    kind, _, index = device.partition(":")
    if kind == "cpu":
        return ["CPUExecutionProvider"], "cpu"
    if kind != "cuda":
        raise InputError(f"--device {device}: ONNX models run on cpu or cuda")
    if "CUDAExecutionProvider" not in available:
        raise InputError(f"--device {device}: this onnxruntime has no CUDA execution provider "
                         "(pip install onnxruntime-gpu), or pass --device cpu")
    return [("CUDAExecutionProvider", {"device_id": int(index or 0)}), "CPUExecutionProvider"], device


def _torch_sees_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


class OnnxRunner:
    """Run an onnxruntime session on float32 CPU tensors (see :class:`~geosr.models.own_network.Runner`).

    Calls run in the graph's precision (``reduced`` is False: there is no float32 copy to redo
    a tile in); a session is safe to call from several threads.
    """

    reduced = False

    def __init__(self, path: str, image_input: str, noise_input: str | None, device: str | None) -> None:
        import torch

        providers, self.device = _providers(device)
        # as many threads as torch uses here: dask gives each worker process one (README, clusters)
        self.session = _session(path, providers, threads=torch.get_num_threads())
        types = {i.name: i.type for i in self.session.get_inputs()}
        self.image_input, self.noise_input = image_input, noise_input
        self.types = {name: _NUMPY_TYPES.get(t) for name, t in types.items()}
        if self.types[image_input] is None:
            raise ModelError(f"{path}: its input {image_input} is a {types[image_input]}; geosr feeds float tiles")
        self.output = self.session.get_outputs()[0].name
        precision = {np.float32: "fp32", np.float16: "fp16", np.float64: "fp64"}[self.types[image_input]]
        self.description = f"{precision} on {self.session.get_providers()[0]}"

    def __call__(self, tiles, noise=None, precise: bool = False):
        import torch

        feed = {self.image_input: tiles.numpy().astype(self.types[self.image_input], copy=False)}
        if self.noise_input:
            feed[self.noise_input] = noise.numpy().astype(self.types[self.noise_input], copy=False)
        try:
            out = self.session.run([self.output], feed)[0]
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own pybind classes
            raise RuntimeError(str(exc).strip()) from exc
        return torch.from_numpy(np.asarray(out, dtype=np.float32))

    def out_of_memory(self, exc: BaseException) -> bool:
        text = str(exc)
        return "Failed to allocate memory" in text or "out of memory" in text.lower()


def load(spec: str, scale: int, device: str | None = None, dtype: str | None = None, batch_size: int = 4,
         metadata: Mapping[str, Any] = ()):
    """A :class:`~geosr.models.own_network.NetworkUpscaler` over the ONNX graph at ``spec``.

    Raises
    ------
    ModelError
        The file is missing, onnxruntime cannot load it, or it is not ``(N, C, h, w) -> (N, C, s*h, s*w)``.
    InputError
        It upscales by another factor than ``scale``; a ``dtype`` other than the graph's, or a
        device onnxruntime cannot use.
    """
    from geosr.models.own_network import NetworkUpscaler

    card, image_input, path = _card_and_input(spec, metadata)
    runner = OnnxRunner(path, image_input, card.noise_input, device)
    wanted = runner.description.split()[0]
    if dtype is not None and dtype != wanted:
        raise InputError(f"--dtype {dtype}: onnxruntime runs {spec} in its own precision ({wanted}); "
                         "leave --dtype out, or export the graph in that precision")
    return NetworkUpscaler(spec, "onnx", runner, card, scale, batch_size)
