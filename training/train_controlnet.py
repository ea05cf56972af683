"""Train the LR-conditioned ControlNet of a GeoSRPipeline (the guided teacher).

    accelerate launch -m geosr.training.train_controlnet --config configs/train/controlnet_sd15.yaml

The ControlNet starts as a copy of the base UNet's encoder (``ControlNetModel.from_unet``)
and learns, with the base frozen, to steer it from the LR tile (upsampled to HR size) and
the caption. The loss is the diffusion loss plus ``contrastive_weight`` times the InfoNCE of
:mod:`geosr.training.contrastive`. Captions are dropped (replaced by "") with probability
``caption_dropout`` so that the model also learns the unconditional branch that
classifier-free guidance and its distillation need.

The base is a Stable-Diffusion-style diffusers directory or hub id
(``pretrained_model_name_or_path``), or, for small pixel-space models, built from the
``base`` mapping of the YAML and trained together with the ControlNet (``train_base``).
The result is a complete GeoSRPipeline directory in ``output_dir``.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from accelerate.logging import get_logger
from diffusers import ControlNetModel, DDIMScheduler, DDPMScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from geosr.pipelines.components import build_components, build_controlnet
from geosr.pipelines.pipeline_geosr import GeoSRPipeline, with_lr
from geosr.training.contrastive import ContrastiveAligner
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
from geosr.training.model_factory import load_components

__all__ = ["averaged_weights", "diffusion_loss", "load_models", "load_pipeline_components", "main", "parse_args"]

logger = get_logger(__name__)


def parse_args(input_args: Sequence[str] | None = None) -> argparse.Namespace:
    """Flags over the YAML of ``--config``; see configs/train/*.yaml for documented values."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    add = parser.add_argument
    add("--pretrained_model_name_or_path", type=str, default=None,
        help="Stable-Diffusion-style diffusers dir or hub id; else the YAML `base` is built.")
    add("--revision", type=str, default=None)
    add("--controlnet_model_name_or_path", type=str, default=None,
        help="Start from this ControlNet instead of a copy of the UNet.")
    add("--train_base", action=argparse.BooleanOptionalAction, default=False,
        help="Also train the base UNet (small models trained from scratch).")
    add("--base_learning_rate", type=float, default=None, help="Default: learning_rate.")
    add("--predict_residual", action=argparse.BooleanOptionalAction, default=False)
    add("--residual_scale", type=float, default=2.0)
    add("--upsample_mode", type=str, default="bicubic")
    add("--unshuffle_factor", type=int, default=None,
        help="Diffuse the residual pixel-unshuffled by this factor (LR-space model; pixel space).")
    add("--concat_lr", action=argparse.BooleanOptionalAction, default=False,
        help="Concatenate the LR (on the variable's grid) to the networks' input; needs unshuffle_factor.")
    add("--caption_dropout", type=float, default=0.1)
    add("--objective", choices=("diffusion", "regression"), default="diffusion",
        help="regression: the same-budget baseline (L1 on x0 at the last timestep, empty captions).")
    add("--final_timestep_prob", type=float, default=0.0,
        help="Share of the batch drawn at the last timestep, where a 1-step student starts: there "
             "the teacher learns the x0 regression its student is initialised from.")
    add("--contrastive_weight", type=float, default=0.1, help="lambda of the InfoNCE term.")
    add("--contrastive_temperature", type=float, default=0.07)
    add("--contrastive_queue_size", type=int, default=1024)
    add("--contrastive_momentum", type=float, default=0.99)
    add("--contrastive_dim", type=int, default=128)
    add("--validation_guidance_scale", type=float, default=4.0)
    add("--ema_decay", type=float, default=0.0,
        help="Keep an exponential moving average of the trained weights (e.g. 0.999; 0: off): the "
             "saved pipelines (final, and ema/ at every checkpoint) carry the averaged weights.")
    add("--init_pipeline", type=str, default=None,
        help="Start the denoiser, ControlNet and text encoder from this saved GeoSRPipeline folder "
             "(e.g. a campaign's training_state/...) instead of building them from `base`.")
    return parse_with_config(parser, input_args, yaml_only={"base": None})


def load_models(args: argparse.Namespace) -> dict[str, Any]:
    """Base components plus a ControlNet (new from the UNet, or the given one).

    Returns
    -------
    dict
        ``vae`` (or None), ``text_encoder``, ``tokenizer``, ``unet``, ``controlnet``,
        ``scheduler`` (the training noise schedule).
    """
    if args.init_pipeline:
        return load_pipeline_components(args.init_pipeline)
    if args.pretrained_model_name_or_path:
        models = load_components(args.pretrained_model_name_or_path, revision=args.revision)
    elif args.base:
        models = build_components(args.base, seed=args.seed)
    else:
        raise ValueError("give pretrained_model_name_or_path or a `base` mapping in the YAML")
    if args.controlnet_model_name_or_path:
        models["controlnet"] = ControlNetModel.from_pretrained(args.controlnet_model_name_or_path)
    else:
        models["controlnet"] = build_controlnet(
            models["unet"],
            len(args.bands),
            pixel_space=models["vae"] is None,
            condition_factor=args.unshuffle_factor // args.scale if args.unshuffle_factor else 1,
        )
    if args.predict_residual and models["vae"] is not None:
        raise ValueError("predict_residual works in pixel space only (a base without vae)")
    if args.unshuffle_factor and (models["vae"] is not None or not args.predict_residual):
        raise ValueError("unshuffle_factor needs a pixel-space base and predict_residual")
    if args.concat_lr and not args.unshuffle_factor:
        raise ValueError("concat_lr needs unshuffle_factor")
    return models


def load_pipeline_components(path: str | Path) -> dict[str, Any]:
    """The components of a saved LR-space GeoSRPipeline, to train on from (weights, no optimizer state)."""
    # float32 whatever it was saved in (a campaign's state is float16): the trained weights
    # stay float32 under autocast
    pipeline = GeoSRPipeline.from_pretrained(str(path)).to(dtype=torch.float32)
    if pipeline.controlnet is None:
        raise ValueError(f"{path}: a pipeline without a ControlNet cannot be trained on as a teacher")
    return {
        "vae": pipeline.vae,
        "text_encoder": pipeline.text_encoder,
        "tokenizer": pipeline.tokenizer,
        "unet": pipeline.unet,
        "controlnet": pipeline.controlnet,
        "scheduler": DDPMScheduler.from_config(pipeline.scheduler.config),
    }


def diffusion_loss(
    unet,
    controlnet,
    noise_scheduler: DDPMScheduler,
    x0: torch.Tensor,
    condition: torch.Tensor,
    text: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    lr_grid: torch.Tensor | None = None,
    objective: str = "diffusion",
) -> torch.Tensor:
    """MSE of the ControlNet-steered UNet's prediction (epsilon or v) at ``x_t``.

    ``lr_grid``: the LR concatenated to the networks' input (``concat_lr`` models).
    ``objective="regression"``: the L1 distance of the x0 estimate to ``x0`` instead (the
    plain-regression baseline, trained at the last timestep only).
    """
    noisy = with_lr(noise_scheduler.add_noise(x0, noise, timesteps), lr_grid)
    down, mid = controlnet(
        noisy, timesteps, encoder_hidden_states=text, controlnet_cond=condition, return_dict=False
    )
    # a frozen base is not prepared (no autocast of its own) and holds the mixed-precision dtype: its
    # inputs in that dtype, as diffusers' ControlNet training does (float32 ones met bf16 weights)
    dtype = next(unet.parameters()).dtype
    pred = unet(
        noisy.to(dtype),
        timesteps,
        encoder_hidden_states=text.to(dtype),
        down_block_additional_residuals=[d.to(dtype) for d in down],
        mid_block_additional_residual=mid.to(dtype),
        return_dict=False,
    )[0]
    if objective == "regression":
        alpha = noise_scheduler.alphas_cumprod.to(pred.device)[timesteps]
        x_t = noisy[:, : x0.shape[1]].float()  # without the concatenated LR
        x0_hat, _ = x0_eps(pred.float(), x_t, alpha, noise_scheduler.config.prediction_type)
        return F.l1_loss(x0_hat, x0.float())
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(x0, noise, timesteps)
    else:
        target = noise
    return F.mse_loss(pred.float(), target.float())


@contextlib.contextmanager
def averaged_weights(ema: EMAModel, parameters: list[torch.nn.Parameter]):
    """Swap the EMA weights into ``parameters`` for the duration of the block."""
    ema.store(parameters)
    ema.copy_to(parameters)
    try:
        yield
    finally:
        ema.restore(parameters)


def _make_pipeline(accelerator, models, controlnet, unet, args) -> GeoSRPipeline:
    scheduler = DDIMScheduler.from_config(models["scheduler"].config, timestep_spacing="trailing")
    return GeoSRPipeline(
        vae=models["vae"],
        text_encoder=models["text_encoder"],
        tokenizer=models["tokenizer"],
        unet=accelerator.unwrap_model(unet),
        controlnet=accelerator.unwrap_model(controlnet),
        scheduler=scheduler,
        upscale_factor=args.scale,
        upsample_mode=args.upsample_mode,
        predict_residual=args.predict_residual,
        residual_scale=args.residual_scale,
        # a regression model is one plain step: no guidance, no second branch
        default_num_inference_steps=1 if args.objective == "regression" else None,
        default_guidance_scale=1.0 if args.objective == "regression" else args.validation_guidance_scale,
        unshuffle_factor=args.unshuffle_factor,
        concat_lr=args.concat_lr,
    )


def main(args: argparse.Namespace) -> Path:
    """Train; returns the output directory (a GeoSRPipeline, plus checkpoint-N folders)."""
    accelerator, output_dir = start_run(args)

    models = load_models(args)
    vae, text_encoder, tokenizer = models["vae"], models["text_encoder"], models["tokenizer"]
    unet, controlnet, noise_scheduler = models["unet"], models["controlnet"], models["scheduler"]
    # frozen parts run in the mixed-precision dtype; trained ones stay float32 (autocast)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    # the frozen caption encoder as loaded: saved pipelines carry it, not its half-precision copy
    # (a student that shares it checks it bit for bit, distill_cfg.load_student_weights)
    text_state = None if text_encoder is None else {k: v.clone() for k, v in text_encoder.state_dict().items()}
    for frozen in (vae, text_encoder) + (() if args.train_base else (unet,)):
        if frozen is not None:
            frozen.requires_grad_(False).to(accelerator.device)
            if weight_dtype != torch.float32:
                frozen.to(dtype=weight_dtype)
    unet.train(args.train_base)
    controlnet.train()
    if args.gradient_checkpointing:
        controlnet.enable_gradient_checkpointing()
        if args.train_base:
            unet.enable_gradient_checkpointing()

    aligner = None
    groups = [{"params": list(controlnet.parameters())}]
    if args.contrastive_weight > 0:
        aligner = ContrastiveAligner(
            controlnet.controlnet_cond_embedding,
            projection_dim=args.contrastive_dim,
            queue_size=args.contrastive_queue_size,
            temperature=args.contrastive_temperature,
            momentum=args.contrastive_momentum,
        )
        groups.append({"params": list(aligner.head.parameters())})
    if args.train_base:
        groups.append({"params": list(unet.parameters()), "lr": args.base_learning_rate or args.learning_rate})
    optimizer = torch.optim.AdamW(
        groups,
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
    start_schedule_at(lr_scheduler, args, args.init_pipeline, accelerator.num_processes)
    prepared = accelerator.prepare(controlnet, optimizer, dataloader, lr_scheduler)
    controlnet, optimizer, dataloader, lr_scheduler = prepared
    if args.train_base:
        unet = accelerator.prepare(unet)
    if aligner is not None:
        # prepared so that save_state / load_state carry its head, key encoder and queue
        aligner = accelerator.prepare(aligner)

    ema = None
    if args.ema_decay:
        trained = list(accelerator.unwrap_model(controlnet).parameters())
        if args.train_base:
            trained += list(accelerator.unwrap_model(unet).parameters())
        # warm-up (decay 1 - (1 + step)^-3/4: 0.994 at 1k steps, the cap 0.999 at 10k) so that
        # the average does not hold on to the random init of a network trained from scratch
        ema = EMAModel(trained, decay=args.ema_decay, use_ema_warmup=True, power=0.75)
        accelerator.register_for_checkpointing(ema)  # saved and resumed with the rest

    start_trackers(accelerator, args)
    global_step = resume_run(accelerator, args, output_dir)

    pairs = validation_pairs(args.validation_images, args) if accelerator.is_main_process else []
    progress = tqdm(range(args.max_train_steps), initial=global_step, desc="steps",
                    disable=not accelerator.is_local_main_process)
    unwrapped = accelerator.unwrap_model(controlnet)
    # a run resumed at (or past) its last step gets no batch: it only saves
    for batch in training_batches(accelerator, dataloader, global_step, args):
        with accelerator.accumulate(controlnet, *([unet] if args.train_base else [])):
            hr = batch["hr"].to(accelerator.device)
            upsampled, condition, lr_grid, hr_condition = condition_inputs(
                batch["lr"].to(accelerator.device), hr, args.scale, args.upsample_mode,
                args.unshuffle_factor, args.concat_lr,
            )
            gen = step_generator(args.seed, global_step, accelerator)
            drop = torch.rand(len(batch["caption"]), generator=gen, device=accelerator.device)
            captions = ["" if d < args.caption_dropout else c for d, c in zip(drop.tolist(), batch["caption"])]
            if args.objective == "regression":
                captions = [""] * len(captions)
            with torch.no_grad():
                text = encode_captions(tokenizer, text_encoder, captions).to(weight_dtype)
                x0 = clean_sample(hr.to(weight_dtype if vae else torch.float32), upsampled, vae,
                                  args.predict_residual, args.residual_scale, args.unshuffle_factor)
            noise = torch.randn(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype)
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (x0.shape[0],),
                                      generator=gen, device=x0.device)
            last = noise_scheduler.config.num_train_timesteps - 1
            if args.objective == "regression":
                timesteps = torch.full_like(timesteps, last)
            elif args.final_timestep_prob:
                timesteps = with_final_timesteps(timesteps, args.final_timestep_prob, last, gen)
            loss_diffusion = diffusion_loss(unet, controlnet, noise_scheduler, x0, condition,
                                            text, noise, timesteps, lr_grid, args.objective)
            loss = loss_diffusion
            logs = {"loss_diffusion": loss_diffusion.detach().item()}
            if aligner is not None:
                loss_nce, keys = aligner(unwrapped.controlnet_cond_embedding, condition, hr_condition)
                loss = loss + args.contrastive_weight * loss_nce
                logs["loss_infonce"] = loss_nce.detach().item()
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(
                    [p for g in optimizer.param_groups for p in g["params"]], args.max_grad_norm
                )
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if aligner is not None:
                inner = accelerator.unwrap_model(aligner)
                inner.enqueue(accelerator.gather(keys))
                if accelerator.sync_gradients:
                    inner.update_key_encoder(unwrapped.controlnet_cond_embedding)
            if ema is not None and accelerator.sync_gradients:
                ema.step(trained)

        if not accelerator.sync_gradients:
            continue
        global_step += 1
        if end_step(accelerator, progress, logs, loss, lr_scheduler, global_step, args, output_dir):
            if ema is not None and accelerator.is_main_process:
                # STEP removed first and written last: a kill mid-save leaves no step to vouch for it
                (output_dir / "ema" / "STEP").unlink(missing_ok=True)
                with averaged_weights(ema, trained):
                    pipeline = _make_pipeline(accelerator, models, controlnet, unet, args)
                    pipeline.to(dtype=torch.float32)  # the frozen parts may run in half precision
                    if text_state is not None:
                        pipeline.text_encoder.load_state_dict(text_state)
                    pipeline.save_pretrained(str(output_dir / "ema"))
                    # the frozen parts back to the mixed-precision dtype they train in (a later step, and a
                    # resume, run them as the steps before did)
                    for frozen in (vae, text_encoder) + (() if args.train_base else (unet,)):
                        if frozen is not None:
                            frozen.to(dtype=weight_dtype)
                (output_dir / "ema" / "STEP").write_text(f"{global_step}\n")
        if pairs and args.validation_steps and global_step % args.validation_steps == 0:
            pipeline = _make_pipeline(accelerator, models, controlnet, unet, args)
            render_validation(pipeline, pairs, output_dir / "validation" / f"step-{global_step}.png",
                              args.validation_inference_steps, args.validation_guidance_scale)
        if global_step >= args.max_train_steps:
            break

    accelerator.wait_for_everyone()
    save_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit)
    if accelerator.is_main_process:
        if ema is not None:
            ema.copy_to(trained)  # the run's result is the averaged network
        pipeline = _make_pipeline(accelerator, models, controlnet, unet, args)
        if weight_dtype != torch.float32:
            pipeline.to(dtype=torch.float32)  # the frozen parts ran in half precision
            if text_state is not None:
                pipeline.text_encoder.load_state_dict(text_state)
        pipeline.save_pretrained(str(output_dir))
        if ema is not None:
            # the last step too (end_step leaves the final checkpoint to this block): the campaign
            # exports ema/, which would otherwise hold the network of the checkpoint before the end
            (output_dir / "ema" / "STEP").unlink(missing_ok=True)
            pipeline.save_pretrained(str(output_dir / "ema"))
            (output_dir / "ema" / "STEP").write_text(f"{global_step}\n")
        if pairs:
            render_validation(pipeline, pairs, output_dir / "validation" / f"step-{global_step}.png",
                              args.validation_inference_steps, args.validation_guidance_scale)
    accelerator.end_training()
    return output_dir


if __name__ == "__main__":
    main(parse_args())
