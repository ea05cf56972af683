"""The two small heads a GeoSRPipeline may carry beside its denoiser: detail and uncertainty.

Both read what the one-step student predicted (its clean residual ``x0`` on the diffusion
grid, :mod:`geosr.pipelines.pipeline_geosr`) and the LR tile on the same grid, and both run
once per call after the denoising loop, so the student itself - and a ``detail = 0`` output -
is exactly what it was without them.

- :class:`DetailHead` draws a residual of high-frequency detail from a per-tile noise draw:
  what a regression output (the mean of all plausible HR tiles, blurred by construction) lacks.
  Its config may add an unsharp mask of the fidelity output to it (:meth:`DetailHead.compose`):
  the regression output's edges are there but too soft, and boosting them costs far less
  fidelity per unit of sharpness than drawn texture does.
  The pipeline scales the sum by the user's detail level ``D`` and removes from it what the model's
  downsampling would see (:func:`geosr.pipelines.consistency.invisible_to_lr`), so no ``D``
  changes the band means the sensor measured. Trained adversarially and on the HR's power
  spectrum (``geosr.training.train_heads``).
- :class:`UncertaintyHead` predicts the log variance of the student's error per HR pixel and
  band (a heteroscedastic Gaussian head, trained by negative log-likelihood on freshly
  degraded crops, then scaled so that its mean variance matches the error on held-out crops:
  ``variance_scale``).

Both are plain residual CNNs without normalisation, a few percent of the student's cost.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from geosr.captioning.vocabulary import parse_caption, states_at_most
from geosr.degradations import gaussian_kernel_1d

__all__ = ["DetailHead", "UncertaintyHead", "caption_class", "gradient_on_grid", "high_pass", "reads_as_mild"]

# The words of the caption grammar for a light degradation: a "mild" blur (or none), at most
# 2 DN of noise, no JPEG. On val, 87 % (x4) and 80 % (x2) of clean LR images read so, and a
# third of the blurred and noisy ones (those blurred least).
MILD_BLUR_SIGMA = 0.5  # captions write sigma to 0.1 px: "mild" (under 0.6) is at most 0.5
MILD_NOISE_SIGMA = 2.0
CAPTION_CLASSES = ("mild", "noisy", "degraded")  # caption_class's answers


class _ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.leaky_relu(self.conv1(x), 0.2))


class _Trunk(nn.Module):
    """conv -> residual blocks -> conv, the output convolution starting at zero."""

    def __init__(self, in_channels: int, channels: int, num_blocks: int, out_channels: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.blocks = nn.Sequential(*(_ResBlock(channels) for _ in range(num_blocks)))
        self.conv_out = nn.Conv2d(channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.blocks(F.leaky_relu(self.conv_in(x), 0.2)))


class DetailHead(ModelMixin, ConfigMixin):
    """A residual of detail on the diffusion grid, from the student's ``x0``, the LR and noise.

    Parameters
    ----------
    sample_channels : int
        Channels of the diffusion variable (the student's ``x0``); also the output's.
    lr_channels : int
        Channels of the LR on the variable's grid (``lr_on_grid``).
    noise_channels : int
        Channels of the standard normal draw that makes the detail stochastic.
    channels, num_blocks : int
        Width and depth of the trunk.
    texture_scale : float
        Weight of the drawn texture in the detail at ``D = 1`` (:meth:`compose`).
    sharpen_amount, sharpen_sigma : float
        Weight of the unsharp mask of the fidelity output in the detail at ``D = 1``, and the
        standard deviation (HR pixels) of the Gaussian it subtracts; amount 0 for none.
    mild_composition : dict, optional
        ``texture_scale``, ``sharpen_amount`` and ``sharpen_sigma`` for inputs whose caption
        reads as at most mildly degraded (:func:`caption_class` ``"mild"``), in place of the
        three above: a clean input's output has true edges to boost. None: the three above.
    noisy_composition : dict, optional
        The same for inputs captioned with more noise than that (``"noisy"``): the student
        denoises them into a smooth output whose edges an unsharp mask can still lift, where
        on a blurred, noise-free input (whose output the student has already sharpened) the
        same mask overshoots. None: the three above.
        The compositions are fitted after training, on training images (``python -m
        geosr.training.tune_detail``); a new head has texture 1, no unsharp mask, no mild or
        noisy one.
    """

    @register_to_config
    def __init__(self, sample_channels: int = 48, lr_channels: int = 3, noise_channels: int = 8,
                 channels: int = 24, num_blocks: int = 2, texture_scale: float = 1.0,
                 sharpen_amount: float = 0.0, sharpen_sigma: float = 1.0,
                 mild_composition: dict[str, float] | None = None,
                 noisy_composition: dict[str, float] | None = None) -> None:
        super().__init__()
        _check_composition(texture_scale, sharpen_amount, sharpen_sigma)
        for composition in (mild_composition, noisy_composition):
            if composition is not None:
                _check_composition(**composition)
        self.trunk = _Trunk(sample_channels + lr_channels + noise_channels, channels, num_blocks, sample_channels)

    def forward(self, x0: torch.Tensor, lr_grid: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The detail residual, in the units of ``x0`` (zero for a freshly made head)."""
        return self.trunk(torch.cat([x0, lr_grid.to(x0.dtype), noise.to(x0.dtype)], dim=1))

    def composition(self, kind: str) -> dict[str, float]:
        """``texture_scale``, ``sharpen_amount`` and ``sharpen_sigma`` for an input whose caption is
        of class ``kind`` (:func:`caption_class`)."""
        if kind not in CAPTION_CLASSES:
            raise ValueError(f"caption class {kind!r}: one of {CAPTION_CLASSES}")
        config = self.config
        own = {"mild": config.mild_composition, "noisy": config.noisy_composition}.get(kind)
        if own is not None:
            return dict(own)
        return dict(texture_scale=config.texture_scale, sharpen_amount=config.sharpen_amount,
                    sharpen_sigma=config.sharpen_sigma)

    def compose(self, texture: torch.Tensor, fidelity: torch.Tensor, kinds: Sequence[str]) -> torch.Tensor:
        """The detail at ``D = 1``: the drawn ``texture`` (HR pixels) plus the unsharp mask of ``fidelity``.

        Both ``[B, C, H, W]`` float32 in [0, 1] units, ``kinds`` each image's caption class
        (:meth:`composition`); the result is not yet made invisible to the model's downsampling
        (the pipeline does that).
        """
        detail = torch.empty_like(texture)
        for index, kind in enumerate(kinds):
            weights = self.composition(kind)
            detail[index] = weights["texture_scale"] * texture[index]
            if weights["sharpen_amount"] > 0:
                detail[index] += weights["sharpen_amount"] * high_pass(fidelity[index:index + 1],
                                                                      weights["sharpen_sigma"])[0]
        return detail


def _check_composition(texture_scale: float, sharpen_amount: float, sharpen_sigma: float) -> None:
    if texture_scale < 0 or sharpen_amount < 0 or sharpen_sigma <= 0:
        raise ValueError(f"texture_scale {texture_scale} and sharpen_amount {sharpen_amount} must be >= 0, "
                         f"sharpen_sigma {sharpen_sigma} > 0")


class UncertaintyHead(ModelMixin, ConfigMixin):
    """Log variance of the student's error, per HR pixel and band, on the diffusion grid.

    Parameters
    ----------
    sample_channels : int
        Channels of the diffusion variable; the output has as many (pixel-unshuffled HR
        pixels x bands).
    lr_channels : int
        Channels of the LR on the variable's grid.
    channels, num_blocks : int
        Width and depth of the trunk.
    initial_log_variance : float
        The output bias a new head starts from (an error of ``exp(v / 2)`` in [0, 1] units).
    variance_scale : float
        Post-hoc calibration: the predicted variance is multiplied by it (fitted on crops the
        head was not trained on; 1 for a new head).
    calibration : list of [float, float], optional
        Post-hoc calibration per level, after ``variance_scale``: knots ``(ln v, ln r)``, the
        predicted variance ``v`` multiplied by ``exp(r)`` interpolated at ``ln v`` (constant
        beyond the end knots). Fitted on crops the head was not trained on, one knot per decile
        of the prediction (the mean squared error over the mean prediction in it): monotone in
        practice, so the ranking of the map is kept while each decile's level is right.
    mild_calibration : list of [float, float], optional
        Knots as ``calibration``, fitted on crops whose caption reads as at most mildly
        degraded (:func:`reads_as_mild`) and used for such inputs in its place
        (``variance(..., mild=...)``), ``calibration`` then being fitted on the others: the
        student errs less on clean and lightly blurred input than on the training mixture the
        head learnt, and the head, which does not read the caption, cannot tell. None:
        ``calibration`` for every input.
    gradient_channels : int
        Channels of the output's gradient magnitude on the grid (:func:`gradient_on_grid`,
        ``factor**2``) the head also reads; 0 for a head that does not. Where the output
        changes fast is where the error is large, and a noisy LR hides it from a small head
        that reads only the LR and ``x0``: with it, 8 x 8-block rankings rose from 0.47 to
        0.62 on degraded val images in a probe (head x gradient**0.5).
    """

    @register_to_config
    def __init__(self, sample_channels: int = 48, lr_channels: int = 3, channels: int = 24, num_blocks: int = 2,
                 initial_log_variance: float = -8.0, variance_scale: float = 1.0, gradient_channels: int = 0,
                 calibration: list[list[float]] | None = None,
                 mild_calibration: list[list[float]] | None = None) -> None:
        super().__init__()
        self.trunk = _Trunk(sample_channels + lr_channels + gradient_channels, channels, num_blocks, sample_channels)
        nn.init.constant_(self.trunk.conv_out.bias, initial_log_variance)

    def forward(self, x0: torch.Tensor, lr_grid: torch.Tensor, gradient: torch.Tensor | None = None) -> torch.Tensor:
        """Uncalibrated log variance (float32), in ``[0, 1]`` image units squared, on ``x0``'s grid.

        ``gradient`` (:func:`gradient_on_grid` of the output) is needed when the head reads it.
        """
        inputs = [x0, lr_grid.to(x0.dtype)]
        if self.config.gradient_channels:
            if gradient is None:
                raise ValueError("this uncertainty head reads the output's gradient: pass gradient_on_grid(...)")
            inputs.append(gradient.to(x0.dtype))
        # contiguous float32 (the trunk may run in bf16 and channels_last): the calibration's search wants it
        log_variance = self.trunk(torch.cat(inputs, dim=1))
        return log_variance.to(torch.float32, memory_format=torch.contiguous_format).clamp(-30.0, 5.0)

    def variance(self, x0: torch.Tensor, lr_grid: torch.Tensor, gradient: torch.Tensor | None = None,
                 mild: torch.Tensor | None = None) -> torch.Tensor:
        """Calibrated variance (float32) on ``x0``'s grid: ``variance_scale * exp(log variance)``, then per level.

        ``mild`` (``[B]`` bool): the inputs whose caption reads as at most mildly degraded
        (:func:`reads_as_mild`), which take ``mild_calibration`` where the head has one.
        """
        log_variance = self(x0, lr_grid, gradient) + math.log(self.config.variance_scale)
        knots = self.config.calibration
        mild_knots = getattr(self.config, "mild_calibration", None)  # absent in older heads
        if mild_knots and mild is not None and bool(mild.any()):
            # each image through its own knots: one interpolation per pixel, not both and a choice
            level, log_variance = log_variance, torch.empty_like(log_variance)
            for index, is_mild in enumerate(mild.tolist()):
                log_variance[index] = _calibrated(level[index], mild_knots if is_mild else knots)
        elif knots:
            log_variance = _calibrated(log_variance, knots)
        return log_variance.exp_()


def _calibrated(level: torch.Tensor, knots: list[list[float]] | None) -> torch.Tensor:
    """``level`` plus the piecewise-linear ``knots`` at ``level`` (:func:`_interpolate`); ``level`` without knots."""
    return level + _interpolate(level, knots) if knots else level


def _interpolate(x: torch.Tensor, knots: list[list[float]]) -> torch.Tensor:
    """Piecewise-linear ``knots`` ``[(x, y), ...]`` (x increasing) at ``x``, constant beyond the ends."""
    # As intercept + slope * x of each segment: one search and two gathers from tables of a
    # few entries, a third of the work of interpolating between the two knots (the map is
    # this per HR pixel and band).
    table = torch.tensor(knots, dtype=torch.float64)
    xs, ys = table[:, 0], table[:, 1]
    slope = (ys[1:] - ys[:-1]) / (xs[1:] - xs[:-1]).clamp(min=1e-12)
    intercept = ys[:-1] - slope * xs[:-1]
    clamped = x.clamp(float(xs[0]), float(xs[-1]))
    segment = torch.bucketize(clamped, xs[1:-1].to(device=x.device, dtype=x.dtype))
    slope, intercept = slope.to(device=x.device, dtype=x.dtype), intercept.to(device=x.device, dtype=x.dtype)
    return torch.take(intercept, segment).addcmul_(torch.take(slope, segment), clamped)


def high_pass(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """``image`` less its Gaussian blur of standard deviation ``sigma`` px (float32, same shape).

    Separable, truncated at 3 sigma, borders reflected: a tile's halo (wider than 3 sigma at
    the shipped settings) keeps its edge effects out of the blended output.
    """
    kernel = gaussian_kernel_1d(sigma).to(image.device)
    radius = len(kernel) // 2
    channels = image.shape[1]
    blurred = F.pad(image.float(), (radius, radius, radius, radius), mode="reflect")
    blurred = F.conv2d(blurred, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    blurred = F.conv2d(blurred, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)
    return image.float() - blurred


def gradient_on_grid(image: torch.Tensor, factor: int) -> torch.Tensor:
    """The gradient magnitude of ``image`` ``[B, C, H, W]`` (mean over bands), pixel-unshuffled by ``factor``.

    Forward differences, the last row and column repeated; times 10, so that an edge of a tenth
    of the range reads as 1 (the scale of the other inputs). ``[B, factor**2, H / f, W / f]``.
    """
    dx = F.pad(image[..., :, 1:] - image[..., :, :-1], (0, 1, 0, 0), mode="replicate")
    dy = F.pad(image[..., 1:, :] - image[..., :-1, :], (0, 0, 0, 1), mode="replicate")
    magnitude = torch.sqrt(dx.square() + dy.square()).mean(dim=1, keepdim=True)
    return F.pixel_unshuffle(10.0 * magnitude, factor)


def caption_class(caption: str) -> str:
    """Which of the detail head's compositions an input takes, from its caption: ``"mild"``
    (:func:`reads_as_mild`), ``"noisy"`` (more than 2 DN of noise stated) or ``"degraded"``
    (anything else: blur, JPEG, free text)."""
    if reads_as_mild(caption):
        return "mild"
    facts = parse_caption(caption)
    return "noisy" if facts is not None and facts.noise_sigma > MILD_NOISE_SIGMA else "degraded"


def reads_as_mild(caption: str) -> bool:
    """Whether ``caption`` (the shared grammar) describes at most a mild degradation: an
    isotropic blur under 0.6 px, at most 2 DN of noise, no JPEG. Free text: False."""
    return states_at_most(caption, MILD_BLUR_SIGMA, MILD_NOISE_SIGMA)
