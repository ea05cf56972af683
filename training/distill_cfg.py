"""Distil a classifier-free-guided GeoSRPipeline teacher into a one-branch student.

    accelerate launch -m geosr.training.distill_cfg --config configs/train/distill_sd15.yaml

Guided distillation (Meng et al. 2023): the frozen teacher runs two branches, ``eps_u`` with
the empty caption and ``eps_c`` with the caption, and is guided with
``g ~ U[guidance_scale_min, guidance_scale_max]``. The student's UNet takes ``w = g - 1``
through ``time_cond_proj_dim`` (embedded with the pipeline's own
:func:`~geosr.pipelines.pipeline_geosr.guidance_embedding`) and runs one branch:

- ``step_distillation: none``: loss = MSE(student(x_t, t, w, c), eps_u + g (eps_c - eps_u));
- ``step_distillation: consistency``: latent-consistency distillation (Luo et al. 2023, as
  diffusers' ``train_lcm_distill_sd_wds.py``) of the guided teacher's DDIM ODE on a skeleton
  of ``num_ddim_timesteps`` steps, with an EMA copy of the student as the target network,
  so that 1-4 steps of the saved LCMScheduler suffice.

A fidelity term (``fidelity_weight``, as one-step SR students such as SinSR, OSEDiff and AdcSR
have) adds the L1 distance between the student's x0 estimate and the true HR, so that the
student is pulled towards the data where the teacher is wrong instead of only copying it;
``final_timestep_prob`` draws that share of the batch at the last training timestep, the
only one a 1-step student ever runs at. ``distill_weight`` scales the guidance-distillation
term; at 0 the teacher does not run at all and a stage trains the student on the fidelity term
alone (a plain-CNN-style stage of the campaign: cheap steps where the teacher is no better
than the student).

The student starts as the teacher (its new guidance projection zero-initialised: at first it
is the conditional branch, exact for ``w = 0``), or, with a ``student_unet`` mapping of config
overrides in the YAML, as a smaller ("lightweight") UNet and ControlNet trained from scratch.
An LR-space student may also live on another grid than its teacher
(``student_unshuffle_factor``, e.g. the LR grid at x2 under a teacher at LR/2): it is then
built afresh for that grid, and the teacher's noisy input, guided prediction and the true x0
reach it through :func:`~geosr.pipelines.pipeline_geosr.regrid`, an exact rearrangement.
The output directory is a complete GeoSRPipeline with an LCMScheduler.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from accelerate.logging import get_logger
from diffusers import DDPMScheduler, LCMScheduler
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from geosr.pipelines.pipeline_geosr import GeoSRPipeline, guidance_embedding, lr_on_grid, regrid, with_lr
from geosr.training.launch import (
    add_common_args,
    end_step,
    make_dataloader,
    parse_with_config,
    resume_run,
    save_checkpoint,
    start_run,
    start_schedule_at,
    start_trackers,
    training_batches,
)
from geosr.pipelines.lr_space_models import LRSpaceDenoiser
from geosr.pipelines.components import build_controlnet, controlnet_class
from geosr.training.diffusion_batches import (
    clean_sample,
    condition_inputs,
    encode_captions,
    render_validation,
    step_generator,
    validation_pairs,
    with_final_timesteps,
    x0_eps,
)

#: The folder beside the checkpoints that holds the student as a pipeline at the last one.
LATEST = "latest"

__all__ = [
    "FIDELITY_LOSSES",
    "consistency_loss",
    "guidance_distillation_loss",
    "load_student_weights",
    "make_student",
    "main",
    "parse_args",
    "predict",
    "student_loss",
    "teacher_guided",
]

logger = get_logger(__name__)

#: The fidelity term's distances, by ``--fidelity_loss``.
FIDELITY_LOSSES = {"l1": F.l1_loss, "mse": F.mse_loss}


def parse_args(input_args: Sequence[str] | None = None) -> argparse.Namespace:
    """Flags over the YAML of ``--config``; see configs/train/distill_*.yaml."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    add = parser.add_argument
    add("--teacher_model", type=str, required=False, default=None,
        help="GeoSRPipeline directory or hub id of the guided teacher.")
    add("--init_student", type=str, default=None,
        help="A distilled student of this teacher (GeoSRPipeline directory) to continue from,"
             " instead of a copy of the teacher.")
    add("--guidance_scale_min", type=float, default=1.0)
    add("--guidance_scale_max", type=float, default=8.0)
    add("--guidance_embedding_dim", type=int, default=256, help="The student's time_cond_proj_dim.")
    add("--step_distillation", choices=("none", "consistency"), default="none")
    add("--num_ddim_timesteps", type=int, default=50, help="Consistency: DDIM skeleton size.")
    add("--ema_decay", type=float, default=0.95, help="Consistency: target network EMA.")
    add("--num_inference_steps", type=int, default=4, help="Default steps of the saved student.")
    add("--validation_guidance_scale", type=float, default=4.0)
    add("--fidelity_weight", type=float, default=0.0,
        help="Weight of the fidelity term between the student's x0 estimate and the true HR x0.")
    add("--fidelity_loss", choices=FIDELITY_LOSSES, default="l1",
        help="The fidelity term: l1 (robust; what the stages so far used) or mse (what PSNR scores: "
             "a last stage's fine-tuning, as EDSR-style recipes end).")
    add("--distill_weight", type=float, default=1.0,
        help="Weight of the guidance-distillation MSE; 0 trains on the fidelity term alone (the teacher "
             "does not run; step_distillation none only).")
    add("--final_timestep_prob", type=float, default=0.0,
        help="Share of samples drawn at the last timestep (where a 1-step student runs).")
    add("--student_unshuffle_factor", type=int, default=None,
        help="LR-space teachers: the student's grid (HR / f), when it differs from the teacher's.")
    add("--student_controlnet_blocks", type=int, default=None,
        help="Trunk blocks of a student_unet student's ControlNet (default: half the UNet's); set "
             "it to keep an init_student's ControlNet when its UNet grows deeper.")
    args = parse_with_config(parser, input_args, yaml_only={"student_unet": None})
    if not args.teacher_model:
        parser.error("--teacher_model is required (in the YAML or on the command line)")
    if args.student_unshuffle_factor is not None and args.step_distillation == "consistency":
        parser.error("student_unshuffle_factor: consistency distillation keeps the teacher's grid")
    if args.distill_weight < 0 or (args.distill_weight == 0 and args.fidelity_weight <= 0):
        parser.error("distill_weight must be >= 0, and with 0 a fidelity_weight > 0 must give the loss")
    if args.distill_weight != 1.0 and args.step_distillation == "consistency":
        parser.error("distill_weight: consistency distillation has no separate distillation term")
    if not 1.0 <= args.guidance_scale_min <= args.guidance_scale_max:
        parser.error("need 1 <= guidance_scale_min <= guidance_scale_max (w = g - 1 >= 0)")
    return args


def make_student(
    teacher: GeoSRPipeline,
    embedding_dim: int,
    overrides: dict | None = None,
    seed: int = 0,
    unshuffle_factor: int | None = None,
    controlnet_blocks: int | None = None,
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Student UNet (with ``time_cond_proj_dim``) and ControlNet.

    Without ``overrides`` both are copies of the teacher's and the new guidance projection
    is zero, so the student starts as the teacher's conditional branch. With overrides of
    the UNet config (a "lightweight" student) both are initialised afresh, the ControlNet
    from the new UNet with the teacher's conditioning encoder layout. ``unshuffle_factor``
    (an LR-space teacher only) puts a fresh student on the grid ``HR / unshuffle_factor``:
    its channels and its ControlNet's condition encoder are set for that grid.
    ``controlnet_blocks`` sets a fresh LR-space ControlNet's depth (default: half the UNet's).

    Raises
    ------
    ValueError
        ``unshuffle_factor`` for a teacher that is not LR-space, or not a multiple of its
        scale by a power of two.
    """
    torch.manual_seed(seed)
    overrides = dict(overrides or {})
    new_grid = unshuffle_factor is not None and unshuffle_factor != teacher.unshuffle_factor
    if new_grid:
        overrides.update(_grid_overrides(teacher, unshuffle_factor))
    # overrides as keyword arguments: a merged dict would keep the config's
    # `_use_default_values`, which makes from_config drop time_cond_proj_dim
    unet = type(teacher.unet).from_config(teacher.unet.config, **overrides, time_cond_proj_dim=embedding_dim)
    if new_grid:
        # the condition (the LR tile) is unshuffle_factor / scale times the student's grid
        controlnet = build_controlnet(unet, teacher.image_channels, pixel_space=True,
                                      condition_factor=unshuffle_factor // teacher.config.upscale_factor)
        return unet, controlnet
    if overrides:
        cn = teacher.controlnet.config
        controlnet = controlnet_class(unet).from_unet(
            unet,
            conditioning_embedding_out_channels=tuple(cn.conditioning_embedding_out_channels),
            conditioning_channels=cn.conditioning_channels,
            # diffusers' ControlNetModel has no counterpart of the guidance projection, so it
            # starts random; an LRSpaceControlNet copies the fresh trunk (its sample channels
            # start at zero there too, see LRSpaceDenoiser)
            load_weights_from_unet=isinstance(unet, LRSpaceDenoiser),
            **({"num_blocks": controlnet_blocks} if controlnet_blocks else {}),
        )
        return unet, controlnet
    missing, unexpected = unet.load_state_dict(teacher.unet.state_dict(), strict=False)
    if unexpected or any("time_embedding.cond_proj" not in k for k in missing):
        raise RuntimeError(f"student does not match the teacher: {missing} {unexpected}")
    torch.nn.init.zeros_(unet.time_embedding.cond_proj.weight)
    return unet, copy.deepcopy(teacher.controlnet)


def _grid_overrides(teacher: GeoSRPipeline, factor: int) -> dict:
    """The UNet channels of an LR-space student on the grid ``HR / factor``."""
    scale = teacher.config.upscale_factor
    if teacher.unshuffle_factor is None:
        raise ValueError("student_unshuffle_factor needs an LR-space teacher (unshuffle_factor set)")
    if factor % scale or (factor // scale) & (factor // scale - 1):
        raise ValueError(f"student_unshuffle_factor {factor} must be {scale} times a power of two")
    bands = teacher.image_channels
    lr_channels = bands * (factor // scale) ** 2 if teacher.concat_channels else 0  # concat_lr
    return {"out_channels": bands * factor**2, "in_channels": bands * factor**2 + lr_channels}


def _student_factor(args: argparse.Namespace, teacher: GeoSRPipeline) -> int | None:
    """The student's unshuffle factor: ``student_unshuffle_factor``, else the teacher's."""
    return args.student_unshuffle_factor or teacher.unshuffle_factor


def load_student_weights(unet: torch.nn.Module, controlnet: torch.nn.Module, path: str,
                         text_encoder: torch.nn.Module | None = None) -> None:
    """Load a saved student's UNet and ControlNet weights into ``unet`` and ``controlnet``.

    An :class:`LRSpaceDenoiser` ``unet`` may be deeper than the saved one (the same config but
    more ``num_blocks``, the cross-attention after the same block): the saved blocks load in
    order and each extra block starts as the exact identity (its second convolution and its
    FiLM at zero), so the grown student computes what the saved one did and training adds
    capacity from there (Net2Net's deeper network, Chen et al. 2016).

    Raises
    ------
    ValueError
        ``path`` is not a distilled student, or its networks differ from these (another
        teacher, ``student_unet`` or ``guidance_embedding_dim``, other than a deeper UNet),
        or its caption encoder is not ``text_encoder`` (the teacher's, which the student is
        saved with: its caption pathway would read other embeddings than it learnt to).
    """
    saved = GeoSRPipeline.from_pretrained(path)
    if not saved.is_distilled:
        raise ValueError(f"init_student {path} is not a distilled student")
    if text_encoder is not None and not all(
            torch.equal(a, b.to(a.dtype)) for a, b in zip(saved.text_encoder.state_dict().values(),
                                                          text_encoder.state_dict().values())):
        raise ValueError(f"init_student {path}: its caption encoder is not the teacher's "
                         "(give the teacher's base that student's text_encoder folder)")
    if _grows(unet, saved.unet):
        _load_grown(unet, saved.unet)
    elif _architecture(unet.config) != _architecture(saved.unet.config):
        raise ValueError(f"init_student {path}: its unet config differs from this student's")
    else:
        unet.load_state_dict(saved.unet.state_dict())
    if _architecture(controlnet.config) != _architecture(saved.controlnet.config):
        raise ValueError(f"init_student {path}: its controlnet config differs from this student's")
    controlnet.load_state_dict(saved.controlnet.state_dict())


def _grows(mine: torch.nn.Module, saved: torch.nn.Module) -> bool:
    """Whether ``mine`` is ``saved`` with more trunk blocks after the same attention block."""
    if not (isinstance(mine, LRSpaceDenoiser) and isinstance(saved, LRSpaceDenoiser)):
        return False
    rest = ("num_blocks", "attention_index")
    same = {k: v for k, v in _architecture(mine.config).items() if k not in rest} == {
        k: v for k, v in _architecture(saved.config).items() if k not in rest}
    return (same and mine.config.num_blocks > saved.config.num_blocks
            and mine.attention_block == saved.attention_block)


def _load_grown(mine: LRSpaceDenoiser, saved: LRSpaceDenoiser) -> None:
    """``saved``'s weights into the deeper ``mine``; the extra blocks as exact identities."""
    missing, unexpected = mine.load_state_dict(saved.state_dict(), strict=False)
    first_new = saved.config.num_blocks
    new_blocks = {f"blocks.{i}." for i in range(first_new, mine.config.num_blocks)}
    if unexpected or any(not any(k.startswith(b) for b in new_blocks) for k in missing):
        raise RuntimeError(f"grown student does not match the saved one: {missing} {unexpected}")
    with torch.no_grad():
        for block in mine.blocks[first_new:]:
            # conv2 at zero: the block adds nothing, yet its conv2 gets a gradient at once
            # (conv1's output is not zero), and through it conv1 and the FiLM afterwards
            for p in (block.conv2.weight, block.conv2.bias, block.film.weight, block.film.bias):
                p.zero_()


def _architecture(config) -> dict:
    """A network config without the bookkeeping keys (``_name_or_path``, versions), as saved
    (JSON: tuples become lists)."""
    return json.loads(json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")}))


def predict(unet, controlnet, sample, timesteps, text, condition, timestep_cond=None, lr_grid=None) -> torch.Tensor:
    """One branch: ControlNet residuals, then the UNet's prediction (``lr_grid``: see ``with_lr``)."""
    sample = with_lr(sample, lr_grid)
    down, mid = controlnet(
        sample, timesteps, encoder_hidden_states=text, controlnet_cond=condition, return_dict=False
    )
    return unet(
        sample,
        timesteps,
        encoder_hidden_states=text,
        timestep_cond=timestep_cond,
        down_block_additional_residuals=down,
        mid_block_additional_residual=mid,
        return_dict=False,
    )[0]


@torch.no_grad()
def teacher_guided(
    teacher: GeoSRPipeline, sample, timesteps, text, empty, condition, g, lr_grid=None
) -> torch.Tensor:
    """``eps_u + g (eps_c - eps_u)``, both branches in one ``2B`` forward as the pipeline does."""
    both = predict(
        teacher.unet,
        teacher.controlnet,
        torch.cat([sample, sample]),
        torch.cat([timesteps, timesteps]),
        torch.cat([empty, text]),
        torch.cat([condition, condition]),
        lr_grid=None if lr_grid is None else torch.cat([lr_grid, lr_grid]),
    ).float()
    uncond, cond = both.chunk(2)
    g = g.view(-1, *([1] * (sample.ndim - 1)))
    return uncond + g * (cond - uncond)


def guidance_distillation_loss(student, student_controlnet, teacher, batch) -> torch.Tensor:
    """MSE between the student's one-branch prediction and the teacher's guided one.

    ``batch`` holds ``noisy``, ``timesteps``, ``text``, ``empty``, ``condition``, ``g`` (and
    ``lr_grid`` for ``concat_lr`` models).
    """
    return student_loss(student, student_controlnet, teacher, batch)[0]


def student_loss(
    student, student_controlnet, teacher, batch, noise_scheduler: DDPMScheduler | None = None,
    fidelity_weight: float = 0.0, distill_weight: float = 1.0, fidelity_loss: str = "l1",
) -> tuple[torch.Tensor, dict[str, float]]:
    """``distill_weight`` times the guidance-distillation MSE, plus the fidelity term when
    ``fidelity_weight`` is set (at ``distill_weight`` 0 the teacher does not run).

    ``batch`` holds ``noisy``, ``timesteps``, ``text``, ``empty``, ``condition``, ``g`` and,
    for the fidelity term, ``x0`` (the true clean variable), all on the teacher's grid. The
    fidelity term is ``fidelity_weight * L(x0_student, x0)``, ``L`` the L1 or the MSE
    (``fidelity_loss``), with the student's x0 estimate
    taken from its prediction through ``noise_scheduler``'s parametrisation. A student on
    another grid gets ``student_grid`` (teacher's, student's unshuffle factor) and
    ``student_lr_grid`` (the LR on its grid, ``concat_lr`` models).

    Returns
    -------
    (loss, logs)
    """
    target = None
    if distill_weight:
        target = teacher_guided(teacher, batch["noisy"], batch["timesteps"], batch["text"],
                                batch["empty"], batch["condition"], batch["g"], batch.get("lr_grid"))
    noisy, lr_grid, x0 = batch["noisy"], batch.get("lr_grid"), batch.get("x0")
    if "student_grid" in batch:
        grids = batch["student_grid"]
        noisy = regrid(noisy, *grids)
        target = None if target is None else regrid(target, *grids)
        x0 = None if x0 is None else regrid(x0, *grids)
        lr_grid = batch.get("student_lr_grid")
    w_emb = guidance_embedding(batch["g"] - 1.0, student.config.time_cond_proj_dim)
    pred = predict(student, student_controlnet, noisy, batch["timesteps"], batch["text"],
                   batch["condition"], w_emb.to(noisy.dtype), lr_grid).float()
    loss, logs = pred.new_zeros(()), {}
    if target is not None:
        loss_distill = F.mse_loss(pred, target)
        logs["loss_distill"] = loss_distill.detach().item()
        loss = distill_weight * loss_distill
    if not fidelity_weight:
        return loss, logs
    alphas = noise_scheduler.alphas_cumprod.to(pred.device)[batch["timesteps"]]
    x0_student, _ = x0_eps(pred, noisy.float(), alphas, noise_scheduler.config.prediction_type)
    loss_fidelity = FIDELITY_LOSSES[fidelity_loss](x0_student, x0.float())
    logs["loss_fidelity"] = loss_fidelity.detach().item()
    return loss + fidelity_weight * loss_fidelity, logs


def _boundary(timesteps: torch.Tensor, sigma_data: float = 0.5, scaling: float = 10.0):
    """LCM's consistency boundary scalings (the same as LCMScheduler's)."""
    t = scaling * timesteps.float()
    c_skip = sigma_data**2 / (t**2 + sigma_data**2)
    c_out = t / (t**2 + sigma_data**2) ** 0.5
    return c_skip.view(-1, 1, 1, 1), c_out.view(-1, 1, 1, 1)


def consistency_loss(student, student_controlnet, target_unet, target_controlnet, teacher,
                     noise_scheduler: DDPMScheduler, batch, skip: int) -> torch.Tensor:
    """Latent-consistency loss across one guided-teacher DDIM step of ``skip`` timesteps."""
    t, x_t = batch["timesteps"], batch["noisy"]
    t_prev = (t - skip).clamp(min=0)
    alphas = noise_scheduler.alphas_cumprod.to(x_t.device)
    kind = noise_scheduler.config.prediction_type
    w_emb = guidance_embedding(batch["g"] - 1.0, student.config.time_cond_proj_dim).to(x_t.dtype)

    lr_grid = batch.get("lr_grid")
    pred = predict(student, student_controlnet, x_t, t, batch["text"], batch["condition"], w_emb, lr_grid)
    x0, _ = x0_eps(pred.float(), x_t, alphas[t], kind)
    c_skip, c_out = _boundary(t)
    online = c_skip * x_t + c_out * x0

    with torch.no_grad():
        guided = teacher_guided(teacher, x_t, t, batch["text"], batch["empty"], batch["condition"], batch["g"],
                                lr_grid)
        x0_teacher, eps_teacher = x0_eps(guided, x_t, alphas[t], kind)
        a_prev = alphas[t_prev].view(-1, 1, 1, 1)
        x_prev = a_prev.sqrt() * x0_teacher + (1 - a_prev).sqrt() * eps_teacher
        pred_prev = predict(target_unet, target_controlnet, x_prev, t_prev, batch["text"],
                            batch["condition"], w_emb, lr_grid).float()
        x0_prev, _ = x0_eps(pred_prev, x_prev, alphas[t_prev], kind)
        c_skip_prev, c_out_prev = _boundary(t_prev)
        target = c_skip_prev * x_prev + c_out_prev * x0_prev
    return F.mse_loss(online, target)


def main(args: argparse.Namespace) -> Path:
    """Distil; returns the output directory (a GeoSRPipeline, plus checkpoint-N folders)."""
    accelerator, output_dir = start_run(args)

    teacher = GeoSRPipeline.from_pretrained(args.teacher_model)
    # at distill_weight 0 the "teacher" never runs: it only lends the caption encoder, tokenizer
    # and noise schedule, which a shipped student has as well
    if teacher.is_distilled and args.distill_weight:
        raise ValueError(f"{args.teacher_model} is already a distilled student")
    cfg = teacher.config
    noise_scheduler = DDPMScheduler.from_config(teacher.scheduler.config)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    student, student_controlnet = make_student(
        teacher, args.guidance_embedding_dim, args.student_unet, seed=args.seed,
        unshuffle_factor=args.student_unshuffle_factor, controlnet_blocks=args.student_controlnet_blocks,
    )
    student_factor = _student_factor(args, teacher)
    if args.init_student:
        load_student_weights(student, student_controlnet, args.init_student, teacher.text_encoder)
    # the frozen caption encoder as loaded: the saved student carries it, not the half-precision
    # copy that runs here (the next stage checks it bit for bit, load_student_weights)
    text_state = {k: v.clone() for k, v in teacher.text_encoder.state_dict().items()}
    for frozen in (teacher.vae, teacher.text_encoder, teacher.unet, teacher.controlnet):
        if frozen is not None:
            frozen.requires_grad_(False).eval().to(accelerator.device)
            if weight_dtype != torch.float32:
                frozen.to(dtype=weight_dtype)
    student.train()
    student_controlnet.train()
    if args.gradient_checkpointing:
        student.enable_gradient_checkpointing()
        student_controlnet.enable_gradient_checkpointing()

    consistency = args.step_distillation == "consistency"
    if consistency:
        # the target network: an EMA of the student, never trained directly
        target_unet = copy.deepcopy(student).requires_grad_(False).to(accelerator.device)
        target_controlnet = copy.deepcopy(student_controlnet).requires_grad_(False).to(accelerator.device)
        skip = noise_scheduler.config.num_train_timesteps // args.num_ddim_timesteps

    optimizer = torch.optim.AdamW(
        list(student.parameters()) + list(student_controlnet.parameters()),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )
    dataloader = make_dataloader(args)
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )
    start_schedule_at(lr_scheduler, args, args.init_student, accelerator.num_processes)
    student, student_controlnet, optimizer, dataloader, lr_scheduler = accelerator.prepare(
        student, student_controlnet, optimizer, dataloader, lr_scheduler
    )
    if consistency:
        # registered so that a resumed run continues with the same target network
        accelerator.register_for_checkpointing(target_unet, target_controlnet)
    start_trackers(accelerator, args)
    global_step = resume_run(accelerator, args, output_dir)

    empty = encode_captions(teacher.tokenizer, teacher.text_encoder, [""]).to(weight_dtype)
    pairs = validation_pairs(args.validation_images, args) if accelerator.is_main_process else []
    progress = tqdm(range(args.max_train_steps), initial=global_step, desc="steps",
                    disable=not accelerator.is_local_main_process)
    # a run resumed at (or past) its last step gets no batch: it only saves
    for batch in training_batches(accelerator, dataloader, global_step, args):
        with accelerator.accumulate(student, student_controlnet):
            hr = batch["hr"].to(accelerator.device)
            upsampled, condition, lr_grid, _ = condition_inputs(
                batch["lr"].to(accelerator.device), hr, cfg.upscale_factor, cfg.upsample_mode,
                teacher.unshuffle_factor, teacher.concat_channels > 0,
            )
            with torch.no_grad():
                text = encode_captions(teacher.tokenizer, teacher.text_encoder, batch["caption"]).to(weight_dtype)
                x0 = clean_sample(hr.to(weight_dtype if teacher.vae else torch.float32), upsampled,
                                  teacher.vae, cfg.predict_residual, cfg.residual_scale,
                                  teacher.unshuffle_factor)
            n, gen = x0.shape[0], step_generator(args.seed, global_step, accelerator)
            if consistency:
                index = torch.randint(0, args.num_ddim_timesteps, (n,), generator=gen, device=x0.device)
                timesteps = (index + 1) * skip - 1  # LCMScheduler's skeleton
            else:
                last = noise_scheduler.config.num_train_timesteps - 1
                timesteps = torch.randint(0, last + 1, (n,), generator=gen, device=x0.device)
                timesteps = with_final_timesteps(timesteps, args.final_timestep_prob, last, gen)
            g = args.guidance_scale_min + (args.guidance_scale_max - args.guidance_scale_min) * torch.rand(
                n, generator=gen, device=x0.device)
            noise = torch.randn(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype)
            step = {
                "noisy": noise_scheduler.add_noise(x0, noise, timesteps).to(weight_dtype),
                "timesteps": timesteps,
                "text": text,
                "empty": empty.expand(n, -1, -1),
                "condition": condition.to(weight_dtype),
                "g": g,
                "x0": x0,
                "lr_grid": lr_grid,
            }
            if student_factor != teacher.unshuffle_factor:
                step["student_grid"] = (teacher.unshuffle_factor, student_factor)
                if lr_grid is not None:
                    step["student_lr_grid"] = lr_on_grid(
                        batch["lr"].to(accelerator.device), cfg.upscale_factor, student_factor)
            logs = {}
            if consistency:
                loss = consistency_loss(student, student_controlnet, target_unet, target_controlnet,
                                        teacher, noise_scheduler, step, skip)
            else:
                loss, logs = student_loss(student, student_controlnet, teacher, step,
                                          noise_scheduler, args.fidelity_weight, args.distill_weight,
                                          args.fidelity_loss)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(
                    list(student.parameters()) + list(student_controlnet.parameters()), args.max_grad_norm
                )
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if consistency and accelerator.sync_gradients:
                with torch.no_grad():
                    online = list(accelerator.unwrap_model(student).parameters())
                    online += list(accelerator.unwrap_model(student_controlnet).parameters())
                    ema = list(target_unet.parameters()) + list(target_controlnet.parameters())
                    for target, source in zip(ema, online):
                        target.lerp_(source.detach(), 1.0 - args.ema_decay)

        if not accelerator.sync_gradients:
            continue
        global_step += 1
        if end_step(accelerator, progress, logs, loss, lr_scheduler, global_step, args, output_dir):
            if accelerator.is_main_process:
                # beside the optimizer checkpoint, the student as a pipeline: what a campaign
                # commits (geosr.training.campaign_state) when the machine may not outlive the session
                _save_latest(_student_pipeline(accelerator, teacher, student, student_controlnet, args),
                             text_state, output_dir, global_step)
                for frozen in (teacher.vae, teacher.text_encoder):  # back to the precision they run in
                    if frozen is not None:
                        frozen.to(dtype=weight_dtype)
        if pairs and args.validation_steps and global_step % args.validation_steps == 0:
            render_validation(_student_pipeline(accelerator, teacher, student, student_controlnet, args),
                              pairs, output_dir / "validation" / f"step-{global_step}.png",
                              args.num_inference_steps, args.validation_guidance_scale)
        if global_step >= args.max_train_steps:
            break

    accelerator.wait_for_everyone()
    save_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit)
    if accelerator.is_main_process:
        pipeline = _save_student(_student_pipeline(accelerator, teacher, student, student_controlnet, args),
                                 text_state, output_dir)
        # the last step too (end_step leaves the final checkpoint to this block): the campaign
        # exports latest/, which would otherwise hold the student of the checkpoint before the end
        _save_latest(pipeline, text_state, output_dir, global_step)
        if pairs:
            render_validation(pipeline, pairs, output_dir / "validation" / f"step-{global_step}.png",
                              args.num_inference_steps, args.validation_guidance_scale)
    accelerator.end_training()
    return output_dir


def _save_latest(pipeline: GeoSRPipeline, text_state: dict, output_dir: Path, step: int) -> None:
    """The student as a pipeline in ``output_dir/latest`` with its step in ``STEP``, which is
    removed first and written last: a run killed mid-save leaves no step to vouch for a
    folder of mixed networks (campaign_state refuses a folder without one)."""
    (output_dir / LATEST / "STEP").unlink(missing_ok=True)
    _save_student(pipeline, text_state, output_dir / LATEST)
    (output_dir / LATEST / "STEP").write_text(f"{step}\n")


def _save_student(pipeline: GeoSRPipeline, text_state: dict, folder: Path) -> GeoSRPipeline:
    """Save ``pipeline`` to ``folder`` in float32 (the frozen teacher parts run in half precision)
    with the caption encoder's weights as loaded (``text_state``); returns it."""
    pipeline.to(dtype=torch.float32)
    pipeline.text_encoder.load_state_dict(text_state)
    pipeline.save_pretrained(str(folder))
    return pipeline


def _student_pipeline(accelerator, teacher, student, student_controlnet, args) -> GeoSRPipeline:
    # LCMScheduler on the teacher's noise schedule: its boundary conditions are the ones the
    # consistency loss trains, and for a guidance-only student it is an x0-predicting few-step sampler
    scheduler = LCMScheduler.from_config(
        teacher.scheduler.config,
        timestep_spacing="trailing",
        original_inference_steps=args.num_ddim_timesteps,
    )
    cfg = teacher.config
    return GeoSRPipeline(
        vae=teacher.vae,
        text_encoder=teacher.text_encoder,
        tokenizer=teacher.tokenizer,
        unet=accelerator.unwrap_model(student),
        controlnet=accelerator.unwrap_model(student_controlnet),
        scheduler=scheduler,
        upscale_factor=cfg.upscale_factor,
        upsample_mode=cfg.upsample_mode,
        predict_residual=cfg.predict_residual,
        residual_scale=cfg.residual_scale,
        default_num_inference_steps=args.num_inference_steps,
        default_guidance_scale=args.validation_guidance_scale,
        unshuffle_factor=_student_factor(args, teacher),
        concat_lr=teacher.concat_channels > 0,
    )


if __name__ == "__main__":
    main(parse_args())
