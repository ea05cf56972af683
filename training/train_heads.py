"""Train the detail and uncertainty heads of a one-step student (issue 30), the student frozen.

    python -m geosr.training.train_heads --config configs/train/geosr_tiny_x4_heads.yaml

The student (``--model``, a GeoSRPipeline) runs as at inference (:meth:`GeoSRPipeline.denoise`,
one step, its default guidance) on freshly degraded training crops; only the two heads of
:mod:`geosr.pipelines.lr_space_heads` learn, so a ``detail = 0`` output stays the student's.

Uncertainty head
    Heteroscedastic Gaussian negative log-likelihood of the student's per-pixel, per-band
    error: ``log v + e**2 / v``, minimised by ``v = E[e**2 | LR]``. After training, a scalar
    ``variance_scale`` is fitted on crops drawn with another seed (the ratio of the mean
    squared error to the mean predicted variance), saved in the head's config.

Detail head
    Its residual is made invisible to the model's downsampling as at inference
    (:func:`~geosr.pipelines.consistency.invisible_to_lr`), added at ``D = 1``, and trained
    with what works from scratch on a CPU, without a pretrained perceptual network:

    - a spectral loss: the L1 distance between the radially averaged log power spectra of
      the output and of the HR above ``spectral_from`` of the Nyquist frequency (the blur of
      a regression output is a missing top of the spectrum);
    - a conditional PatchGAN hinge loss (Isola et al. 2017; spectral norm, Miyato et al. 2018):
      a small discriminator sees the image beside the upsampled LR, so detail must fit the input;
    - an L1 fidelity term that keeps the output near the HR (PSNR above bicubic).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from diffusers.optimization import get_scheduler
from torch import nn
from tqdm.auto import tqdm

from geosr.pipelines.consistency import invisible_to_lr
from geosr.pipelines.lr_space_heads import DetailHead, UncertaintyHead, gradient_on_grid, reads_as_mild
from geosr.pipelines.pipeline_geosr import STUDENT_STEPS, GeoSRPipeline, target_to_image
from geosr.file_sample import file_digest
from geosr.training.launch import (
    add_common_args,
    checkpoint_to_resume,
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

__all__ = ["PatchDiscriminator", "main", "parse_args", "radial_log_power", "spectral_loss"]

logger = logging.getLogger(__name__)


def parse_args(input_args: Sequence[str] | None = None) -> argparse.Namespace:
    """Flags (and ``--config`` YAML defaults) of a heads run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    add = parser.add_argument
    add("--model", type=str, required=False, default=None, help="The student pipeline (frozen).")
    add("--head_channels", type=int, default=24)
    add("--head_blocks", type=int, default=2)
    add("--noise_channels", type=int, default=8)
    add("--fidelity_weight", type=float, default=1.0, help="L1 to the HR of the D = 1 output.")
    add("--spectral_weight", type=float, default=0.1, help="Log power spectrum distance (decades).")
    add("--adversarial_weight", type=float, default=0.01, help="Generator hinge loss.")
    add("--spectral_from", type=float, default=0.3, help="Spectral loss above this share of Nyquist.")
    add("--discriminator_lr", type=float, default=2e-4)
    add("--heads", nargs="+", choices=("detail", "uncertainty"), default=["detail", "uncertainty"],
        help="Which heads learn; the other keeps its --init_heads weights (or stays new).")
    add("--init_heads", type=str, default=None,
        help="A pipeline whose heads this run starts from (a later stage, or one head retrained).")
    add("--detail_channels", type=int, default=None,
        help="Width of the detail head (default: head_channels, or --init_heads' head's; another width starts anew).")
    add("--detail_blocks", type=int, default=None,
        help="Depth of the detail head (default: head_blocks, or --init_heads' head's; another depth starts anew).")
    add("--uncertainty_channels", type=int, default=None, help="Width of the uncertainty head (default: head_channels).")
    add("--uncertainty_blocks", type=int, default=None, help="Depth of the uncertainty head (default: head_blocks).")
    add("--uncertainty_reads_gradient", action=argparse.BooleanOptionalAction, default=False,
        help="The uncertainty head also reads the output's gradient magnitude (gradient_on_grid).")
    add("--nll_block", type=int, default=1,
        help="Also fit the mean error of BLOCK x BLOCK px squares (1: pixels only).")
    add("--pixel_nll_weight", type=float, default=1.0, help="Weight of the per-pixel NLL.")
    add("--calibrate_only", action="store_true",
        help="Refit the calibration of the uncertainty head in output_dir, and nothing else.")
    add("--calibration_batches", type=int, default=24,
        help="Batches of crops (another seed) that fit the uncertainty head's variance_scale.")
    add("--calibration_crop_size", type=int, default=256,
        help="HR side of the calibration crops (a multiple of --scale): larger than the training crops, "
             "whose border pixels - which err more, and which inference's tile halos discard - are a "
             "larger share of a small crop.")
    args = parse_with_config(parser, input_args, {})
    if not args.model:
        parser.error("--model is required (in the YAML or on the command line)")
    if args.calibration_crop_size <= 0 or args.calibration_crop_size % args.scale:
        # checked here: the calibration crops are first drawn after the last training step
        parser.error(f"--calibration_crop_size {args.calibration_crop_size} must be a positive multiple of "
                     f"--scale {args.scale}")
    return args


class PatchDiscriminator(nn.Module):
    """A conditional PatchGAN: image and upsampled LR in, a map of real/fake scores out."""

    def __init__(self, channels: int = 3, width: int = 32) -> None:
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        self.net = nn.Sequential(
            sn(nn.Conv2d(2 * channels, width, 3, padding=1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(width, 2 * width, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(2 * width, 2 * width, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(2 * width, 1, 3, padding=1)),
        )

    def forward(self, image: torch.Tensor, upsampled: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([image, upsampled], dim=1))


def radial_log_power(image: torch.Tensor, bins: int = 32) -> torch.Tensor:
    """``[B, bins]`` log10 of the Hann-windowed power spectrum, averaged over bands and rings.

    Ring ``k`` holds the frequencies whose radius is in ``[k, k + 1) / bins`` of Nyquist
    (corners beyond Nyquist are left out).
    """
    b, c, h, w = image.shape
    window = torch.outer(torch.hann_window(h, periodic=False, device=image.device),
                         torch.hann_window(w, periodic=False, device=image.device))
    x = (image - image.mean(dim=(-2, -1), keepdim=True)) * window
    power = torch.fft.rfft2(x.float()).abs().square().mean(dim=1).flatten(1)
    fy = torch.fft.fftfreq(h, device=image.device)[:, None]
    fx = torch.fft.rfftfreq(w, device=image.device)[None, :]
    radius = (torch.sqrt(fy**2 + fx**2) / 0.5).flatten()
    ring = (radius * bins).long()
    keep = ring < bins
    sums = torch.zeros(b, bins, device=image.device).index_add_(1, ring[keep], power[:, keep])
    counts = torch.bincount(ring[keep], minlength=bins).clamp(min=1)
    return torch.log10(sums / counts + 1e-12)


def spectral_loss(output: torch.Tensor, target: torch.Tensor, start: float, bins: int = 32) -> torch.Tensor:
    """Mean absolute log10 power difference of the rings above ``start`` of Nyquist."""
    first = int(start * bins)
    return (radial_log_power(output, bins)[:, first:] - radial_log_power(target, bins)[:, first:]).abs().mean()


def _student(args: argparse.Namespace, device, weight_dtype) -> GeoSRPipeline:
    pipe = GeoSRPipeline.from_pretrained(args.model)
    if not pipe.is_distilled or not pipe.concat_channels:
        raise ValueError(f"{args.model}: the heads serve a CFG-distilled LR-space student with concat_lr")
    if pipe.config.upscale_factor != args.scale:
        raise ValueError(f"{args.model} upscales x{pipe.config.upscale_factor}, the data is made for x{args.scale}")
    for net in (pipe.text_encoder, pipe.unet, pipe.controlnet):
        net.requires_grad_(False).eval().to(device=device, dtype=weight_dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


STUDENT_PARTS = ("unet", "controlnet", "text_encoder", "vae", "scheduler")
STUDENT_RECORD = "student.fingerprint"


def student_fingerprint(model: str) -> str:
    """Digest of the student's networks in the pipeline folder ``model`` (its heads left out:
    runs train them): file names and their whole content (a fine-tune can move only some weights).

    The heads fit the student whose outputs they were trained on; the run saves the student
    from ``model`` at its end, so a folder rewritten meanwhile (a student shipped anew) would
    pair them with another one.
    """
    root = Path(model)
    if not root.is_dir():
        return f"hub {model}"  # a hub id: its revision is the hub's to track
    files = sorted(p for part in STUDENT_PARTS for p in (root / part).rglob("*") if p.is_file())
    lines = [f"{path.relative_to(root).as_posix()} {file_digest(str(path))}" for path in files]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def _check_student(args: argparse.Namespace, output_dir: Path, fingerprint: str) -> None:
    """Refuse to resume heads (a checkpoint) trained on another student than ``args.model`` holds now.

    Each checkpoint records the student it was trained on (:func:`_record_student`): a folder
    may hold checkpoints of one student and a fresh run on another.
    """
    resume = checkpoint_to_resume(output_dir, args.resume_from_checkpoint)
    record = None if resume is None else resume / STUDENT_RECORD
    if record is not None and record.is_file() and record.read_text().strip() != fingerprint:
        raise ValueError(f"{resume}'s heads were trained on another student than {args.model} holds now "
                         f"(fingerprint {record.read_text().strip()} -> {fingerprint}): start a new output_dir")


def _record_student(checkpoint: Path, fingerprint: str) -> None:
    (checkpoint / STUDENT_RECORD).write_text(f"{fingerprint}\n")


@torch.no_grad()
def _student_output(pipe: GeoSRPipeline, batch: dict, device, seed: int):
    lr = batch["lr"].to(device).clamp(0.0, 1.0)
    generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(lr.shape[0])]
    steps = pipe.config.default_num_inference_steps or STUDENT_STEPS  # as a call without steps runs
    sample, upsampled, lr_grid = pipe.denoise(lr, list(batch["caption"]), steps,
                                              pipe.config.default_guidance_scale, generators)
    cfg = pipe.config
    base = target_to_image(sample, upsampled, cfg.predict_residual, cfg.residual_scale, pipe.unshuffle_factor)
    return sample, upsampled, lr_grid, base.clamp(0.0, 1.0)


def _nll(head: UncertaintyHead, pipe: GeoSRPipeline, sample, lr_grid, base, hr, block: int = 1,
         pixel_weight: float = 1.0) -> torch.Tensor:
    """Gaussian NLL of the student's error: per pixel and band, and over ``block`` px squares.

    A block's mean squared error over its pixels and bands is far less noisy than a pixel's
    (at x4 the pixel error is mostly detail no LR can predict): fitting it teaches the head
    *where* the error is, which is what the map is read for; the pixel term keeps the pixels'
    variances in scale.
    """
    gradient = gradient_on_grid(base, pipe.unshuffle_factor) if head.config.gradient_channels else None
    log_variance = F.pixel_shuffle(head(sample, lr_grid, gradient), pipe.unshuffle_factor)
    error = (base - hr).square()
    loss = pixel_weight * (log_variance + error * torch.exp(-log_variance)).mean()
    if block > 1:
        variance = F.avg_pool2d(torch.exp(log_variance).mean(dim=1, keepdim=True), block)
        block_error = F.avg_pool2d(error.mean(dim=1, keepdim=True), block)
        loss = loss + (torch.log(variance) + block_error / variance).mean()
    return loss


def _detail(head: DetailHead, pipe: GeoSRPipeline, sample, lr_grid, base, generator) -> torch.Tensor:
    noise = torch.randn((sample.shape[0], head.config.noise_channels, *sample.shape[-2:]), generator=generator)
    residual = head(sample, lr_grid, noise.to(sample.device))
    residual = F.pixel_shuffle(residual.float(), pipe.unshuffle_factor) / pipe.config.residual_scale
    return (base + invisible_to_lr(residual, pipe.config.upscale_factor, pipe.config.upsample_mode)).clamp(0.0, 1.0)


def _detail_layout(args: argparse.Namespace, channels: int, blocks: int) -> tuple[int, int]:
    """(width, depth) of the detail head the flags ask for (sizes not given: as passed)."""
    return args.detail_channels or channels, args.detail_blocks or blocks


def _uncertainty_layout(args: argparse.Namespace, pipe: GeoSRPipeline, channels: int, blocks: int) -> tuple[int, int, int]:
    """(width, depth, gradient channels) of the uncertainty head the flags ask for (sizes not given: as passed)."""
    gradient = pipe.unshuffle_factor**2 if args.uncertainty_reads_gradient else 0
    return args.uncertainty_channels or channels, args.uncertainty_blocks or blocks, gradient


def _heads(args: argparse.Namespace, pipe: GeoSRPipeline) -> tuple[DetailHead, UncertaintyHead]:
    """New heads for ``pipe``, or those of ``--init_heads`` (checked to fit the student's grid)."""
    channels, lr_channels = pipe.unet.config.out_channels, pipe.concat_channels
    if args.init_heads:
        start = GeoSRPipeline.from_pretrained(args.init_heads)
        if start.detail is None or start.uncertainty is None:
            raise ValueError(f"--init_heads {args.init_heads}: a pipeline with both heads is needed")
        for head in (start.detail, start.uncertainty):
            if (head.config.sample_channels, head.config.lr_channels) != (channels, lr_channels):
                raise ValueError(f"--init_heads {args.init_heads}: its heads read another grid than {args.model}'s")
        detail, uncertainty = start.detail.float(), start.uncertainty.float()
        wanted_detail = _detail_layout(args, detail.config.channels, detail.config.num_blocks)
        if "detail" in args.heads and wanted_detail != (detail.config.channels, detail.config.num_blocks):
            detail = DetailHead(channels, lr_channels, args.noise_channels, *wanted_detail)
        wanted = _uncertainty_layout(args, pipe, uncertainty.config.channels, uncertainty.config.num_blocks)
        have = (uncertainty.config.channels, uncertainty.config.num_blocks, uncertainty.config.gradient_channels)
        if "uncertainty" in args.heads and wanted != have:
            uncertainty = UncertaintyHead(channels, lr_channels, wanted[0], wanted[1], gradient_channels=wanted[2])
        return detail, uncertainty
    detail = DetailHead(channels, lr_channels, args.noise_channels, *_detail_layout(args, args.head_channels,
                                                                                     args.head_blocks))
    wanted = _uncertainty_layout(args, pipe, args.head_channels, args.head_blocks)
    uncertainty = UncertaintyHead(channels, lr_channels, wanted[0], wanted[1], gradient_channels=wanted[2])
    return detail, uncertainty


def main(args: argparse.Namespace) -> Path:
    """Train; returns the output directory (the student pipeline with both heads, plus checkpoints)."""
    accelerator, output_dir = start_run(args)
    device = accelerator.device
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    student_id = student_fingerprint(args.model)
    _check_student(args, output_dir, student_id)
    pipe = _student(args, device, weight_dtype)
    detail, uncertainty = _heads(args, pipe)
    trains_detail, trains_uncertainty = "detail" in args.heads, "uncertainty" in args.heads
    critic = PatchDiscriminator(pipe.image_channels)
    trained = [h for h, on in ((detail, trains_detail), (uncertainty, trains_uncertainty)) if on]
    optimizer = torch.optim.AdamW([p for h in trained for p in h.parameters()], lr=args.learning_rate,
                                  weight_decay=0.0)
    critic_optimizer = torch.optim.AdamW(critic.parameters(), lr=args.discriminator_lr, betas=(0.5, 0.9),
                                         weight_decay=0.0)
    dataloader = make_dataloader(args)
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer=optimizer, num_warmup_steps=args.lr_warmup_steps,
                                 num_training_steps=args.max_train_steps)
    start_schedule_at(lr_scheduler, args, args.init_heads)
    detail, uncertainty, critic, optimizer, critic_optimizer, dataloader, lr_scheduler = accelerator.prepare(
        detail, uncertainty, critic, optimizer, critic_optimizer, dataloader, lr_scheduler)
    start_trackers(accelerator, args)
    global_step = resume_run(accelerator, args, output_dir)
    progress = tqdm(range(args.max_train_steps), initial=global_step, desc="steps",
                    disable=not accelerator.is_local_main_process)
    for batch in training_batches(accelerator, dataloader, global_step, args):
        seed = args.seed * 1_000_003 + global_step * 64
        generator = torch.Generator().manual_seed(seed)
        hr = batch["hr"].to(device)
        sample, upsampled, lr_grid, base = _student_output(pipe, batch, device, seed)
        logs, loss = {}, torch.zeros((), device=device)
        with accelerator.autocast():
            if trains_uncertainty:
                nll = _nll(accelerator.unwrap_model(uncertainty), pipe, sample, lr_grid, base, hr,
                           args.nll_block, args.pixel_nll_weight)
                logs["nll"], loss = nll.item(), loss + nll
            if trains_detail:
                output = _detail(accelerator.unwrap_model(detail), pipe, sample, lr_grid, base, generator)
                fidelity = (output - hr).abs().mean()
                spectral = spectral_loss(output, hr, args.spectral_from)
                adversarial = -critic(output, upsampled).mean()
                loss = loss + args.fidelity_weight * fidelity + args.spectral_weight * spectral \
                    + args.adversarial_weight * adversarial
                logs.update(fidelity=fidelity.item(), spectral=spectral.item(), adversarial=adversarial.item())
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_([p for h in trained for p in h.parameters()], args.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        if trains_detail:
            with accelerator.autocast():
                critic_loss = F.relu(1.0 - critic(hr, upsampled)).mean() \
                    + F.relu(1.0 + critic(output.detach(), upsampled)).mean()
            critic_optimizer.zero_grad(set_to_none=True)
            accelerator.backward(critic_loss)
            critic_optimizer.step()
            logs["critic"] = critic_loss.item()
        global_step += 1
        if end_step(accelerator, progress, logs, loss, lr_scheduler, global_step, args, output_dir):
            _record_student(output_dir / f"checkpoint-{global_step}", student_id)
        if global_step >= args.max_train_steps:
            break

    accelerator.wait_for_everyone()
    _record_student(save_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit), student_id)
    if accelerator.is_main_process:
        uncertainty = accelerator.unwrap_model(uncertainty)
        if trains_uncertainty:  # an untrained head keeps its weights and calibration
            _calibrate(pipe, uncertainty, args, device)
        # the student as it was loaded, not the copy cast to the training precision and back
        if student_fingerprint(args.model) != student_id:
            raise ValueError(f"{args.model}'s student changed on disk during the run: the heads (in the last "
                             f"checkpoint of {output_dir}) fit the one loaded at its start; put it back and "
                             "resume to save them")
        saved = GeoSRPipeline.from_pretrained(args.model)
        saved.register_modules(detail=accelerator.unwrap_model(detail).float(), uncertainty=uncertainty.float())
        saved.save_pretrained(str(output_dir))
    accelerator.end_training()
    return output_dir


def calibration_args(args: argparse.Namespace) -> argparse.Namespace:
    """The data arguments of the calibration crops: another seed, ``calibration_crop_size`` px, the
    images' own ground sample distance, no colour jitter, colour crops only (see :func:`_calibrate`)."""
    return argparse.Namespace(**{**vars(args), "seed": args.seed + 7919, "crop_size": args.calibration_crop_size,
                                 "rescale_prob": 0.0, "color_jitter": 0.0, "single_band_prob": 0.0})


@torch.no_grad()
def _calibrate(pipe: GeoSRPipeline, head: UncertaintyHead, args: argparse.Namespace, device) -> None:
    """Fit ``variance_scale``, ``calibration`` and ``mild_calibration`` of ``head`` on crops of another seed.

    The crops are ``calibration_crop_size`` px (256: the crop borders, which err more and which
    inference's tile halos discard, weigh half of what they weigh in 128 px training crops; it
    is also the size of a UC Merced image as ``geosr evaluate`` scores it) at the images' own
    ground sample distance, without colour jitter: imagery as a sensor delivers it (the training
    crops' augmentations - coarser GSDs, jitter - err more for the same prediction: knots fitted
    on them over-predicted by up to 1.4x on val's clean protocol). Images smaller than the crop
    are left out. The degradation mixture, JPEG included, is the training one.

    First the scale (mean squared error over mean predicted variance, all crops), then, on the
    scaled prediction, one knot per decile of the per-pixel prediction averaged over bands (what
    the map shows): the log of the decile's mean squared error over its mean prediction - on the
    crops whose caption reads as at most mildly degraded for ``mild_calibration``, on the others
    for ``calibration`` (each set for all crops when the other is empty).
    """
    loader = make_dataloader(calibration_args(args))
    loader.dataset.set_epoch(0)
    head.register_to_config(variance_scale=1.0, calibration=None, mild_calibration=None)
    predicted, actual, mild = [], [], []
    for k, batch in zip(range(args.calibration_batches), loader):
        sample, _, lr_grid, base = _student_output(pipe, batch, device, 10_000_019 + k * 64)
        gradient = gradient_on_grid(base, pipe.unshuffle_factor) if head.config.gradient_channels else None
        variance = F.pixel_shuffle(head.variance(sample.float(), lr_grid.float(), gradient), pipe.unshuffle_factor)
        predicted.append(variance.mean(dim=1).flatten())
        actual.append((base - batch["hr"].to(device)).square().mean(dim=1).flatten())
        per_crop = torch.tensor([reads_as_mild(text) for text in batch["caption"]])
        mild.append(per_crop.repeat_interleave(variance[0, 0].numel()))
    predicted, actual, mild = torch.cat(predicted).double(), torch.cat(actual).double(), torch.cat(mild)
    scale = float(actual.mean() / predicted.mean())
    predicted = predicted * scale

    def decile_knots(chosen: torch.Tensor) -> list[list[float]]:
        p, a = (predicted, actual) if not chosen.any() else (predicted[chosen], actual[chosen])
        order = torch.argsort(p)
        return [[math.log(p[part].mean().item()), math.log(a[part].mean() / p[part].mean())]
                for part in torch.tensor_split(order, 10)]

    knots, mild_knots = decile_knots(~mild), decile_knots(mild)
    head.register_to_config(variance_scale=scale, calibration=knots, mild_calibration=mild_knots)
    logger.info("variance_scale %.4f from %d held-out batches (%.0f %% of crops captioned mild): RMSE predicted "
                "%.2f DN, actual %.2f DN; decile ratios %s, mild %s", scale, args.calibration_batches,
                100 * mild.double().mean().item(), 255 * math.sqrt(predicted.mean() / scale),
                255 * math.sqrt(actual.mean()), " ".join(f"{math.exp(k[1]):.2f}" for k in knots),
                " ".join(f"{math.exp(k[1]):.2f}" for k in mild_knots))


def recalibrate(args: argparse.Namespace) -> Path:
    """Refit the calibration of the uncertainty head saved in ``args.output_dir`` (``--calibrate_only``)."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    output_dir = Path(args.output_dir)
    saved = GeoSRPipeline.from_pretrained(output_dir)
    if saved.uncertainty is None:
        raise ValueError(f"{output_dir} holds no uncertainty head to calibrate")
    pipe = _student(args, "cpu", torch.bfloat16 if args.mixed_precision == "bf16" else torch.float32)
    _calibrate(pipe, saved.uncertainty, args, "cpu")
    saved.save_pretrained(str(output_dir))
    return output_dir


if __name__ == "__main__":
    arguments = parse_args()
    recalibrate(arguments) if arguments.calibrate_only else main(arguments)
