"""Put trained heads into a shipped (or any) student pipeline folder, leaving its networks' files alone.

    python -m geosr.training.ship_heads outputs/geosr-tiny-x4-heads geosr/data/models/geosr-tiny-x4

Copies the ``detail/`` and ``uncertainty/`` components of a ``train_heads`` output into the
target pipeline folder and names them in its ``model_index.json``. Heads fit the student they
were trained on only: the target's denoiser and ControlNet must hold the same weights as the
run's (compared tensor by tensor), else nothing is written. A detail head comes with the
composition of ``D = 1`` its run had (a new head: its texture alone): fit it to the new head
with ``python -m geosr.training.tune_detail ... --write`` after shipping.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file

__all__ = ["HEADS", "main", "ship_heads"]

HEADS = ("detail", "uncertainty")


def _same_weights(a: Path, b: Path) -> bool:
    first, second = load_file(str(a)), load_file(str(b))
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def ship_heads(run: Path, target: Path) -> list[str]:
    """Copy the heads of ``run`` into ``target``; returns the heads copied.

    Raises
    ------
    ValueError
        ``run`` has no head, or ``target``'s student is not the one the heads were trained on.
    """
    heads = [h for h in HEADS if (run / h / "config.json").is_file()]
    if not heads:
        raise ValueError(f"{run} holds no trained head ({', '.join(HEADS)})")
    for net in ("unet", "controlnet"):
        if not _same_weights(run / net / "diffusion_pytorch_model.safetensors",
                             target / net / "diffusion_pytorch_model.safetensors"):
            raise ValueError(f"{target}'s {net} is not the student the heads in {run} were trained on")
    index_path = target / "model_index.json"
    index = json.loads(index_path.read_text())
    run_index = json.loads((run / "model_index.json").read_text())
    for head in heads:
        shutil.rmtree(target / head, ignore_errors=True)
        shutil.copytree(run / head, target / head)
        # a saved config names the folder it came from (a run, or a scratch copy): name the shipped one
        config_path = target / head / "config.json"
        config = json.loads(config_path.read_text())
        config["_name_or_path"] = str(target / head)
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        index[head] = run_index[head]
    index_path.write_text(json.dumps(dict(sorted(index.items())), indent=2) + "\n")
    return heads


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="A train_heads output folder.")
    parser.add_argument("target", type=Path, help="The student pipeline folder that receives the heads.")
    args = parser.parse_args(argv)
    print(f"{args.target}: {', '.join(ship_heads(args.run, args.target))}")


if __name__ == "__main__":
    main()
