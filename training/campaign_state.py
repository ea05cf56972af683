"""The committed state of the training campaign: the networks being trained, small enough for git.

Training runs span sessions on machines that may be gone by the next one. What survives is
``training_state/<run>/``: the run's networks (a teacher's EMA average, a student's weights at
its last checkpoint) as a GeoSRPipeline folder in float16 (a 3.9 M teacher is 8 MB), and ``STATE.json`` saying how far it got and how to go on.
Optimizer state is not kept (it is 2x the weights in float32): a continued run rebuilds it,
going on at the stage's saved step (``--start_step``) or, after a finished stage, with a short
warm-up.

    python -m geosr.training.campaign_state outputs/geosr-tiny-v3-x4-teacher \\
        training_state/geosr-tiny-v3-x4-teacher --recipe configs/train/geosr_tiny_v3_x4_teacher.yaml --hours 2.4

Continue on a machine that has ``outputs/`` (same session, or one that kept it)::

    python -m geosr.training.train_controlnet --config RECIPE --resume_from_checkpoint latest

and on a new machine, from the committed weights (``STATE.json`` has the exact command)::

    python -m geosr.training.train_controlnet --config RECIPE --init_pipeline training_state/<run> --start_step N
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Sequence

import torch
import yaml

from geosr.pipelines.pipeline_geosr import GeoSRPipeline

__all__ = ["export_state", "main"]

STATE = "STATE.json"


def export_state(run_dir: str | Path, dest: str | Path, recipe: str, hours: float, note: str = "",
                 stage_start: int | None = None) -> dict:
    """Write the networks of ``run_dir`` to ``dest`` in fp16: its ``ema/`` (a teacher's averaged
    weights), else its ``latest/`` (a student stage's weights at its last checkpoint), else the
    run's final pipeline.

    ``dest`` is replaced in place; its previous ``STATE.json`` history is carried over.
    ``stage_start``: the steps the network had had when ``run_dir``'s stage began (a stage started
    from committed weights counts its own steps from 0, and one going on with ``--start_step``
    or ``--resume_from_checkpoint`` from there); None: what ``dest``'s ``STATE.json`` says when it
    has the same recipe (the same stage, going on), else 0. The recorded step is the network's total, ``stage_step`` the stage's own, from
    which the ``continue`` command goes on (:func:`_continue_command`).

    Returns
    -------
    dict
        The new ``STATE.json``.
    """
    run_dir, dest = Path(run_dir), Path(dest)
    source = next((run_dir / sub for sub in ("ema", "latest") if (run_dir / sub).is_dir()), run_dir)
    step_file = source / "STEP"
    if source != run_dir and not step_file.is_file():
        # STEP is written after the networks: without it the save was cut short (mixed networks)
        raise ValueError(f"{source} has no STEP: its last save was interrupted; let the run write its next "
                         "checkpoint (or resume it) and export again")
    stage_step = int(step_file.read_text()) if step_file.is_file() else None
    previous = json.loads((dest / STATE).read_text()) if (dest / STATE).is_file() else {}
    history = previous.get("history", [])
    if stage_start is None:
        stage_start = _stage_start(previous, recipe, run_dir, stage_step)
    step = None if stage_step is None else stage_start + stage_step
    pipeline = GeoSRPipeline.from_pretrained(str(source))
    # the trained networks in float16; the caption encoder stays float32: it is frozen, a shipped
    # student's own, and a student stage started from this state checks it is that student's
    # bit for bit (distill_cfg)
    for name, component in pipeline.components.items():
        if name != "text_encoder" and isinstance(component, torch.nn.Module):
            component.to(dtype=torch.float16)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipeline.save_pretrained(str(tmp))
    history.append({"date": time.strftime("%Y-%m-%d %H:%M"), "step": step, "hours": hours, "note": note})
    state = {
        "recipe": recipe,
        "run": str(run_dir.resolve()),  # a later export of this run is the same stage, not a new one
        "step": step,
        "hours": round(sum(h["hours"] for h in history), 2),
        "stage_start": stage_start,
        "stage_step": stage_step,
        # a new stage's seed from the network's steps: a count of exports repeated across networks
        "continue": _continue_command(recipe, dest, stage_step, 1000 + (step or 0) // 500 % 8000),
        "history": history,
    }
    (tmp / STATE).write_text(json.dumps(state, indent=1) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return state


def _stage_start(previous: dict, recipe: str, run_dir: Path, stage_step: int | None) -> int:
    """The steps the network had when the stage being exported began, from ``dest``'s previous
    STATE.json: that stage's own start when this is the same export again (the same run folder at
    the same stage step) or the stage was unfinished (gone on with ``--start_step`` or
    ``--resume_from_checkpoint``); its end when it had finished (its ``continue`` starts a new stage
    of the same recipe from 0, in the same run folder); 0 for another recipe's state."""
    if previous.get("recipe") != recipe:
        return 0
    if previous.get("run") == str(run_dir.resolve()) and previous.get("stage_step") == stage_step:
        return previous.get("stage_start") or 0  # a finished run exported twice was counted twice
    config = (yaml.safe_load(Path(recipe).read_text()) or {}) if Path(recipe).is_file() else {}
    total, done = config.get("max_train_steps"), previous.get("stage_step")
    if total is not None and done is not None and done >= int(total):
        return previous.get("step") or 0
    return previous.get("stage_start") or 0


def _continue_command(recipe: str, dest: Path, stage_step: int | None, seed: int) -> str:
    """How a new machine goes on with ``recipe`` from ``dest``: a student stage (its recipe names a
    teacher) starts its student there, a teacher or ControlNet run its pipeline.

    A stage saved before its last step goes on at that step (``--start_step``: the schedule,
    the data order and the step count where they stood, the recipe's seed); a finished one, or
    one whose step is not known, starts again as a new stage from these weights, with a
    warm-up and a new seed (new crops).
    """
    config = (yaml.safe_load(Path(recipe).read_text()) or {}) if Path(recipe).is_file() else {}
    script, init = (("distill_cfg", "--init_student") if "teacher_model" in config
                    else ("train_controlnet", "--init_pipeline"))
    command = f"python -m geosr.training.{script} --config {recipe} {init} {dest}"
    total = config.get("max_train_steps")
    if stage_step is not None and total is not None and 0 < stage_step < int(total):
        return f"{command} --start_step {stage_step}"
    return f"{command} --lr_warmup_steps 200 --seed {seed}"


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="A training run's output_dir (its ema/ or latest/ is taken when there).")
    parser.add_argument("dest", help="training_state/<run>: replaced in place.")
    parser.add_argument("--recipe", required=True, help="The YAML the run was trained with.")
    parser.add_argument("--hours", type=float, required=True, help="Hours of training since the last export.")
    parser.add_argument("--note", default="", help="What this stretch of training was (machine, threads, dtype).")
    parser.add_argument("--stage_start", type=int, default=None,
                        help="Steps the network had had when this stage began (a stage started from committed "
                             "weights). Default: DEST's STATE.json's when it has the same recipe (a stage going on "
                             "with --start_step or --resume_from_checkpoint), else 0.")
    args = parser.parse_args(argv)
    state = export_state(args.run_dir, args.dest, args.recipe, args.hours, args.note, args.stage_start)
    print(json.dumps({k: v for k, v in state.items() if k != "history"}, indent=1))
    return state


if __name__ == "__main__":
    main()
