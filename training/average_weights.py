"""Average the trained networks of several checkpoints of one model: a weight-space ensemble.

Stages of the x4 campaign are warm restarts of one network (each starts from the last one's end
with a new seed and a cosine schedule), so their ends lie in one basin, and their average scores
above each of them - the "model soup" / stochastic weight averaging effect (Izmailov et al. 2018,
Wortsman et al. 2022), for the cost of one pass over the weights and none at inference::

    python -m geosr.training.average_weights training_state/geosr-tiny-v3-x4-student-16b-stage6 \\
        training_state/geosr-tiny-v3-x4-student-16b-stage7 --into geosr/data/models/geosr-tiny-x4

Only the networks named by ``--components`` (default: the denoiser and its ControlNet) are
averaged; everything else in ``--into`` (caption encoder, heads, scheduler) is left as it is,
so a heads' calibration fitted to the networks should be refitted after (``train_heads
--calibrate_only``). Refuses checkpoints whose configs, tensor names or shapes differ: averaging
two different architectures gives a network that is neither.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file

__all__ = ["average_networks", "main"]

WEIGHTS = "diffusion_pytorch_model.safetensors"
# config keys that name where a config was loaded from, not what the network is
_PROVENANCE_KEYS = ("_name_or_path", "_diffusers_version")


def average_networks(sources: Sequence[str | Path], into: str | Path,
                     components: Sequence[str] = ("unet", "controlnet"),
                     weights: Sequence[float] | None = None, dtype: torch.dtype = torch.float32) -> dict:
    """Write the (weighted) mean of ``components`` of the pipeline folders ``sources`` into the
    pipeline folder ``into`` (which must already hold those components, e.g. a copy of one source).

    Parameters
    ----------
    sources
        Two or more pipeline folders of one architecture.
    into
        The pipeline folder whose ``components`` are replaced; may be one of ``sources``.
    components
        Sub-folders holding ``config.json`` and ``diffusion_pytorch_model.safetensors``.
    weights
        One per source, summing to 1; None: equal.
    dtype
        Floating-point dtype of the written tensors (the mean is taken in float32).

    Returns
    -------
    dict
        ``{component: number of tensors averaged}``.
    """
    sources = [Path(s) for s in sources]
    if len(sources) < 2:
        raise ValueError("average_networks needs two or more checkpoints")
    weights = [1.0 / len(sources)] * len(sources) if weights is None else [float(w) for w in weights]
    if len(weights) != len(sources) or abs(sum(weights) - 1.0) > 1e-6 or min(weights) < 0:
        raise ValueError(f"weights {weights}: need one non-negative weight per checkpoint, summing to 1")
    into, averaged = Path(into), {}
    for component in components:
        configs = [_config(source / component) for source in sources]
        if any(c != configs[0] for c in configs[1:]):
            raise ValueError(f"{component}: the checkpoints' configs differ; they are not one architecture")
        if _config(into / component) != configs[0]:
            raise ValueError(f"{into / component}: its config is not the checkpoints'; copy one of them there first")
        states = [load_file(str(source / component / WEIGHTS)) for source in sources]
        for source, state in zip(sources[1:], states[1:]):
            if {k: v.shape for k, v in state.items()} != {k: v.shape for k, v in states[0].items()}:
                raise ValueError(f"{source / component}: tensor names or shapes differ from {sources[0] / component}")
        averaged[component] = {
            name: (sum(w * s[name].float() for w, s in zip(weights, states)).to(dtype)
                   if tensor.is_floating_point() else tensor)
            for name, tensor in states[0].items()}
    # every check passed before anything is written: a refused average leaves ``into`` as it was
    for component, state in averaged.items():
        save_file(state, str(into / component / WEIGHTS), metadata={"format": "pt"})
    return {component: len(state) for component, state in averaged.items()}


def _config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise ValueError(f"{folder} has no config.json: not a network folder")
    return {k: v for k, v in json.loads(path.read_text()).items() if k not in _PROVENANCE_KEYS}


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", help="Two or more pipeline folders of one architecture.")
    parser.add_argument("--into", required=True,
                        help="Pipeline folder whose networks are replaced by the average (e.g. the shipped model).")
    parser.add_argument("--components", nargs="+", default=["unet", "controlnet"])
    parser.add_argument("--weights", nargs="+", type=float, default=None, help="One per source; default equal.")
    parser.add_argument("--dtype", choices=["fp32", "fp16"], default="fp32")
    args = parser.parse_args(argv)
    counts = average_networks(args.sources, args.into, args.components, args.weights,
                              torch.float16 if args.dtype == "fp16" else torch.float32)
    print(json.dumps(counts))
    return counts


if __name__ == "__main__":
    main()
