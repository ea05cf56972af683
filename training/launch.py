"""What both training scripts share: YAML + CLI arguments, data, the accelerator, resume, checkpoints.

A run is configured by a YAML file whose keys are the scripts' flag names (dashes or
underscores); flags given on the command line win over the file. Keys that hold a nested
mapping (``base``, ``student_unet``) exist only in YAML.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed

from geosr.errors import InputError
from geosr.training.datasets import MASK_RULES, SRPairDataset
from geosr.degradations import mixture_weights

__all__ = [
    "add_common_args",
    "checkpoint_to_resume",
    "end_step",
    "make_dataloader",
    "parse_with_config",
    "resume_run",
    "save_checkpoint",
    "start_run",
    "start_schedule_at",
    "start_trackers",
    "training_batches",
]

logger = logging.getLogger(__name__)


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Flags of data, optimisation, precision, checkpoints and logging."""
    add = parser.add_argument
    add("--config", type=str, default=None, help="YAML file of defaults for these flags.")
    add("--output_dir", type=str, default="geosr-model")
    add("--seed", type=int, default=0)
    # data
    add("--train_data", type=str, nargs="+", default=None, help="Image files or folders.")
    add("--crop_size", type=int, default=128, help="HR crop side in px.")
    add("--scale", type=int, default=4)
    add("--degradation", choices=("clean", "iso", "aniso", "mixed"), default="mixed",
        help="Degradation protocol of the LR inputs (mixed: the training mixture of all three).")
    add("--degradation_mix", type=parse_mix, default=None,
        help="Shares of the mixed protocol, e.g. clean=0.4,iso=0.3,aniso=0.3 (a mapping in YAML).")
    add("--jpeg_prob", type=float, default=0.0)
    add("--captions", type=str, default="truth",
        help="truth | none | captioner:<spec> | file:<captions.json>")
    add("--rescale_prob", type=float, default=0.0,
        help="Share of crops drawn at a coarser ground sample distance (see rescale_range).")
    add("--rescale_range", type=float, nargs=2, default=[0.5, 1.0],
        help="Range of the GSD factor f of a rescaled crop (a 1/f px window resized to the crop).")
    add("--color_jitter", type=float, default=0.0,
        help="Strength of random brightness/contrast/gain/gamma of the HR crop (0: off).")
    add("--single_band_prob", type=float, default=0.0,
        help="Share of crops that are one band copied into every channel, as geosr feeds NIR, SWIR, pan.")
    add("--masked_where", choices=MASK_RULES, default="any_band",
        help="A pixel of a masked image is no-data where any band holds nodata (the old rule: a NEON "
             "plot's saturated band, 255 = its nodata, rejected the window) or where every band does "
             "(GDAL's dataset mask, as geosr reads scenes).")
    add("--max_nodata_fraction", type=float, default=0.0,
        help="Windows of a masked image with a larger share of no-data pixels are drawn again.")
    add("--quantise_lr", action=argparse.BooleanOptionalAction, default=False,
        help="Round the LR to 8-bit levels, as the tiles geosr upscales are (and evaluate's LRs).")
    add("--bands", type=int, nargs="+", default=[1, 2, 3])
    add("--crops_per_image", type=int, default=1)
    add("--cache_images", action=argparse.BooleanOptionalAction, default=True)
    add("--dataloader_num_workers", type=int, default=0)
    # optimisation
    add("--train_batch_size", type=int, default=4)
    add("--max_train_steps", type=int, default=1000)
    add("--gradient_accumulation_steps", type=int, default=1)
    add("--learning_rate", type=float, default=1e-5)
    add("--lr_scheduler", type=str, default="constant")
    add("--lr_warmup_steps", type=int, default=0)
    add("--adam_beta1", type=float, default=0.9)
    add("--adam_beta2", type=float, default=0.999)
    add("--adam_weight_decay", type=float, default=1e-2)
    add("--adam_epsilon", type=float, default=1e-8)
    add("--max_grad_norm", type=float, default=1.0)
    add("--mixed_precision", choices=("no", "fp16", "bf16"), default=None,
        help="Default: what `accelerate config` says.")
    add("--gradient_checkpointing", action=argparse.BooleanOptionalAction, default=False)
    # checkpoints, validation, logging
    add("--checkpointing_steps", type=int, default=500)
    add("--checkpoints_total_limit", type=int, default=None)
    add("--resume_from_checkpoint", type=str, default=None,
        help='A checkpoint-N folder, or "latest" (in output_dir).')
    add("--start_step", type=int, default=0,
        help="Go on with a stage from its weights saved at this step (with --init_student, --init_pipeline "
             "or --init_heads; the continue command of training_state/<run>/STATE.json): the learning-rate "
             "schedule, the data order and the step count start there, the optimizer's moments afresh.")
    add("--validation_images", type=str, nargs="*", default=[],
        help="HR images: degraded with a fixed seed, upscaled, written to output_dir/validation.")
    add("--validation_steps", type=int, default=0, help="0: validate only at the end.")
    add("--validation_inference_steps", type=int, default=20)
    add("--report_to", type=str, default="none", help='"tensorboard", "wandb" or "none".')
    add("--tracker_project_name", type=str, default="geosr")


def parse_mix(text: str) -> dict[str, float]:
    """``"clean=0.4,iso=0.3,aniso=0.3"`` -> ``{"clean": 0.4, ...}`` (checked as training uses it)."""
    try:
        mix = {k.strip(): float(v) for k, v in (item.split("=") for item in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write protocol=share pairs, e.g. clean=0.4,iso=0.3,aniso=0.3")
    try:
        mixture_weights(mix)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return mix


def parse_with_config(
    parser: argparse.ArgumentParser,
    input_args: Sequence[str] | None,
    yaml_only: dict[str, Any],
) -> argparse.Namespace:
    """Parse flags over the defaults of ``--config``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The script's parser (with :func:`add_common_args`).
    input_args : sequence of str or None
        Arguments (None: ``sys.argv``).
    yaml_only : dict
        Keys allowed only in YAML, with their defaults.

    Raises
    ------
    InputError
        The YAML has a key that is neither a flag nor one of ``yaml_only``.
    """
    known, _ = parser.parse_known_args(input_args)
    defaults = dict(yaml_only)
    if known.config:
        with open(known.config, encoding="utf-8") as f:
            loaded = yaml.safe_load(f) or {}
        flags = {a.dest for a in parser._actions}
        for key, value in loaded.items():
            key = key.replace("-", "_")
            if key not in flags and key not in yaml_only:
                raise InputError(f"{known.config}: unknown key {key!r}")
            defaults[key] = value
    parser.set_defaults(**defaults)
    args = parser.parse_args(input_args)
    if not args.train_data:
        parser.error("--train_data is required (in the YAML or on the command line)")
    return args


def make_dataloader(args: argparse.Namespace) -> torch.utils.data.DataLoader:
    """The training DataLoader of ``args`` (the dataset shuffles itself, per epoch)."""
    dataset = SRPairDataset(
        args.train_data,
        crop_size=args.crop_size,
        scale=args.scale,
        protocol=args.degradation,
        captions=args.captions,
        bands=args.bands,
        crops_per_image=args.crops_per_image,
        jpeg_prob=args.jpeg_prob,
        mix=args.degradation_mix,
        rescale_prob=args.rescale_prob,
        rescale_range=tuple(args.rescale_range),
        color_jitter=args.color_jitter,
        single_band_prob=args.single_band_prob,
        masked_where=args.masked_where,
        max_nodata_fraction=args.max_nodata_fraction,
        quantise_lr=args.quantise_lr,
        seed=args.seed,
        cache=args.cache_images,
    )
    if len(dataset) < args.train_batch_size:
        raise InputError(
            f"{len(dataset)} samples per epoch is less than one batch of {args.train_batch_size}:"
            " raise crops_per_image"
        )
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=args.train_batch_size,
        shuffle=False,  # the dataset permutes per (seed, epoch): a resumed run sees the same data
        drop_last=True,
        num_workers=args.dataloader_num_workers,
        persistent_workers=False,  # workers must be re-forked to see set_epoch()
    )


def checkpoint_to_resume(output_dir: str | Path, spec: str | None) -> Path | None:
    """The checkpoint folder ``spec`` names (``latest``: the highest ``checkpoint-N``)."""
    if not spec:
        return None
    if spec != "latest":
        path = Path(spec)
        return path if path.is_absolute() or path.exists() else Path(output_dir) / spec
    found = sorted(_checkpoints(Path(output_dir)), key=lambda p: int(p.name.split("-")[1]))
    return found[-1] if found else None


def save_checkpoint(accelerator, output_dir: str | Path, step: int, total_limit: int | None) -> Path:
    """``accelerator.save_state`` to ``output_dir/checkpoint-{step}``, then the oldest beyond the limit
    removed - after the new one is whole: it is written to a hidden folder and renamed, so a run
    stopped while saving keeps its last checkpoint (``checkpoint_to_resume`` never sees a partial one)."""
    output_dir = Path(output_dir)
    path = output_dir / f"checkpoint-{step}"
    partial = output_dir / f".checkpoint-{step}.partial"
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)  # a save a stopped run left half-written
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()  # every process's part (its random states) written before the rename
    if accelerator.is_main_process:
        if path.exists():
            shutil.rmtree(path)
        partial.rename(path)
        if total_limit is not None:
            existing = sorted(_checkpoints(output_dir), key=lambda p: int(p.name.split("-")[1]))
            for old in existing[: max(len(existing) - total_limit, 0)]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    logger.info("saved state to %s", path)
    return path


def _checkpoints(output_dir: Path) -> list[Path]:
    """The whole ``checkpoint-N`` folders of a run."""
    return [p for p in output_dir.glob("checkpoint-*") if p.name.split("-")[1].isdigit()]


def start_run(args: argparse.Namespace) -> tuple[Accelerator, Path]:
    """The run's accelerator (mixed precision, gradient accumulation, trackers), logging, seed and output folder."""
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(args.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    return accelerator, output_dir


def start_trackers(accelerator: Accelerator, args: argparse.Namespace) -> None:
    """TensorBoard / W&B trackers with the run's scalar settings, when ``report_to`` asks for them."""
    if args.report_to != "none":
        accelerator.init_trackers(args.tracker_project_name, config={
            k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))})


def start_schedule_at(lr_scheduler, args: argparse.Namespace, weights: str | None, steps_per_update: int = 1) -> None:
    """Move a new run's learning-rate schedule to ``args.start_step`` of its stage (before ``prepare``).

    A stage cut short by the end of a session goes on, on another machine, from the weights it
    committed (``weights``: ``--init_student``, ``--init_pipeline``, ``--init_heads``) at the
    step they were saved: its schedule continues where it stood instead of restarting its
    warm-up and decay; :func:`resume_run` then starts the step count, and with it the data
    order, there. A checkpoint the run resumes replaces this schedule with its own.
    ``steps_per_update``: the schedule's steps per optimisation step, as the script built it
    (its process count where it scales the schedule by it).

    Raises
    ------
    ValueError
        ``start_step`` is not inside the stage's ``max_train_steps``, or there are no weights
        to continue (a new network at a decayed learning rate would be a different recipe).
    """
    if not args.start_step:
        return
    if weights is None:
        raise ValueError(f"--start_step {args.start_step} continues a stage from its saved weights: give them "
                         "(--init_student, --init_pipeline or --init_heads)")
    if not 0 < args.start_step < args.max_train_steps:
        raise ValueError(f"--start_step {args.start_step} is not inside the stage's {args.max_train_steps} steps "
                         "(a finished stage goes on as a new one, without --start_step)")
    if Path(weights).is_dir():
        _check_stage_state(Path(weights), args)
    with warnings.catch_warnings():
        # no optimizer step has run yet: the schedule is moved, not trained
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before", category=UserWarning)
        for _ in range(args.start_step * steps_per_update):
            lr_scheduler.step()
    logger.info("continuing the stage at step %d, learning rate %.3g", args.start_step, lr_scheduler.get_last_lr()[0])


def _check_stage_state(weights: Path, args: argparse.Namespace) -> None:
    """Refuse ``--start_step`` from weights that are not the stage's committed state at that step:
    the recipe's own ``init_student`` (the stage's start, or the stage before's end) would be trained
    on from the middle of a schedule it never began, silently."""
    state_file = weights / "STATE.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    recipe = getattr(args, "config", None)
    same_recipe = recipe is None or Path(state.get("recipe", "")).name == Path(recipe).name
    if state.get("stage_step") != args.start_step or not same_recipe:
        said = (f"were saved at step {state.get('stage_step')} of {state.get('recipe')}" if state
                else "carry no STATE.json (not a stage's committed state)")
        raise ValueError(f"--start_step {args.start_step} goes on with a stage cut short from its committed state, and "
                         f"{weights} {said}: pass the state folder whose STATE.json says this stage and step "
                         "(its 'continue' command)")


def resume_run(accelerator: Accelerator, args: argparse.Namespace, output_dir: Path) -> int:
    """Load the checkpoint ``resume_from_checkpoint`` names (prepared objects, registered ones, RNG);
    its step, else ``start_step`` (a stage going on from saved weights, :func:`start_schedule_at`)."""
    resume = checkpoint_to_resume(output_dir, args.resume_from_checkpoint)
    if resume is None:
        if args.resume_from_checkpoint:
            logger.info("no checkpoint in %s: starting a new run", output_dir)
        return args.start_step
    accelerator.load_state(str(resume))
    step = int(resume.name.split("-")[1])
    logger.info("resumed from %s at step %d", resume, step)
    return step


def end_step(accelerator: Accelerator, progress, logs: dict, loss: torch.Tensor, lr_scheduler, global_step: int,
             args: argparse.Namespace, output_dir: Path) -> bool:
    """Book an optimisation step that ended at ``global_step``: progress, logs, a checkpoint when due.

    Returns whether a checkpoint was saved (the caller may save more beside it).
    """
    progress.update(1)
    logs.update(loss=loss.detach().item(), lr=lr_scheduler.get_last_lr()[0])
    progress.set_postfix(**{k: f"{v:.4g}" for k, v in logs.items()})
    accelerator.log(logs, step=global_step)
    if global_step % args.checkpointing_steps == 0 and global_step < args.max_train_steps:
        save_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit)
        return True
    return False


def training_batches(accelerator: Accelerator, dataloader: torch.utils.data.DataLoader, global_step: int,
                     args: argparse.Namespace) -> Iterator[dict]:
    """The batches of a run from ``global_step`` on, epoch after epoch, until the caller stops.

    Each epoch draws new crops and degradations (``set_epoch``); a resumed run skips the
    batches its checkpoint had seen in the current epoch, so it trains on exactly the batches
    the uninterrupted run would have. A run already at ``max_train_steps`` gets none.
    """
    if global_step >= args.max_train_steps:
        return
    # accelerate steps the optimizer at an epoch's end whatever is accumulated: a short last group counts
    updates_per_epoch = math.ceil(len(dataloader) / args.gradient_accumulation_steps)
    epoch, skip = divmod(global_step, updates_per_epoch)
    skip *= args.gradient_accumulation_steps
    while True:
        loader = accelerator.skip_first_batches(dataloader, skip) if skip else dataloader
        # on the loader, not its dataset: accelerate's loader sets the dataset's epoch to its own count
        # of epochs when it is iterated, 0 in a new process - a resumed run drew epoch 0's crops again
        loader.set_epoch(epoch)
        yield from loader
        skip, epoch = 0, epoch + 1
