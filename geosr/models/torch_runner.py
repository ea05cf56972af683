"""The runner of torch networks (TorchScript archives, modules and functions): device and precision.

Reduced precision goes through ``torch.autocast``, not a cast of the weights: it applies to
modules, TorchScript and plain functions alike, leaves the user's object untouched, and the
float32 redo of a non-finite tile (:class:`~geosr.models.own_network.NetworkUpscaler`) is the
same call without it.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch

from geosr.models.diffusion import resolve_device, resolve_dtype

__all__ = ["TorchRunner", "on_device"]


def on_device(network: Callable, device: str) -> Callable:
    """``network`` ready for inference on ``device``: a module in eval mode with its weights there.

    A module that is in training mode or elsewhere is copied first: the caller's object (which a
    threaded run shares with the user) is left as it was. Functions are returned as they are.
    """
    if not isinstance(network, torch.nn.Module):
        return network
    tensors = [*network.parameters(), *network.buffers()]
    if not network.training and all(t.device == torch.device(device) for t in tensors):
        return network
    return copy.deepcopy(network).to(device).eval()


class TorchRunner:
    """Run a torch network (``(N, C, h, w) -> (N, C, s*h, s*w)``) on ``device`` in ``dtype``.

    Parameters
    ----------
    network : callable
        A module, TorchScript module or function of one tensor (two with a noise input).
    device : str, optional
        Torch device; cuda when available, else cpu.
    dtype : {"fp32", "fp16", "bf16"}, optional
        By default bf16 on CUDA and on CPUs with AMX, fp32 elsewhere, as for the shipped models.
    """

    def __init__(self, network: Callable, device: str | None = None, dtype: str | None = None) -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.network = on_device(network, self.device)
        self.reduced = self.dtype != torch.float32
        self.description = f"{_DTYPE_NAMES[self.dtype]} on {self.device}"

    def __call__(self, tiles: torch.Tensor, noise: torch.Tensor | None = None, precise: bool = False) -> torch.Tensor:
        args = [tiles.to(self.device)] + ([] if noise is None else [noise.to(self.device)])
        kind = torch.device(self.device).type
        with torch.inference_mode(), torch.autocast(kind, dtype=self.dtype, enabled=self.reduced and not precise):
            out = self.network(*args)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the network returned a {type(out).__name__}, not a tensor")
        return out.float().cpu()

    def out_of_memory(self, exc: BaseException) -> bool:
        return isinstance(exc, torch.cuda.OutOfMemoryError)


_DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
