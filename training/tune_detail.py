"""Fit how a detail head composes ``D = 1``: drawn texture and an unsharp mask, on training images.

    python -m geosr.training.tune_detail --model geosr/data/models/geosr-tiny-x4 --scale 4 --write

A trained detail head draws texture: it fills the output's missing high frequencies (the
spectral error falls) but, drawn rather than inferred, costs fidelity in proportion. The
fidelity output's own edges are right but too soft, and an unsharp mask of it (the output less
its Gaussian blur) buys sharpness for far less. :meth:`DetailHead.compose
<geosr.pipelines.lr_space_heads.DetailHead.compose>` adds the two, weighted by the head's
``texture_scale`` and ``sharpen_amount`` (blur ``sharpen_sigma``); this script scores a grid
of them through the real pipeline (``D = 1``, the same seed per image, so each setting sees the
same texture draw) on freshly degraded *training* images and picks the one with the highest
PSNR among those whose mean gain over bicubic, sharpness ratio and high-frequency spectral
error meet the bars (``--min-gain``, ``--min-sharpness``, ``--max-hf-fraction`` of ``D = 0``'s).
With ``--caption-class mild`` only the images whose caption reads as at most mildly degraded
are scored, and the choice is the head's ``mild_composition`` (used for such inputs); with
``noisy``, only those captioned with more noise than that, for ``noisy_composition``
(:func:`~geosr.pipelines.lr_space_heads.caption_class`); with ``all``, every image, and the
head's composition for the others. ``--write`` stores it in the
model's ``detail/config.json``; nothing is written when no setting meets the bars.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from geosr.captioning import load_captioner
from geosr.degradations import degrade
from geosr.detail_metrics import hf_spectral_error
from geosr.evaluation import find_hr_images, image_to_batch, psnr, quantise_8bit, read_hr_image, sharpness_ratio
from geosr.models import load_upscaler
from geosr.pipelines.lr_space_heads import caption_class

__all__ = ["Setting", "main", "score_settings"]

TRAIN = ("../shared/data/train/ucmerced", "../shared/data/train/neon")


@dataclass(frozen=True)
class Setting:
    """One composition of ``D = 1`` (the detail head's config fields of the same names)."""

    texture_scale: float
    sharpen_amount: float
    sharpen_sigma: float

    def __str__(self) -> str:
        return f"texture {self.texture_scale:g}, unsharp {self.sharpen_amount:g} x sigma {self.sharpen_sigma:g}"


def _output(upscaler, lr: np.ndarray, caption: str, seed: int) -> np.ndarray:
    return quantise_8bit(upscaler.upscale(image_to_batch(lr), [caption], seeds=[seed])[0].float().numpy()
                         .transpose(1, 2, 0))


def score_settings(model: str, scale: int, hr_paths: Sequence[Path], degradation: str,
                   settings: Sequence[Setting], seed: int = 0) -> dict[str, np.ndarray]:
    """Per image, ``[psnr, sharpness, hf_error]`` of bicubic, ``D = 0`` and each setting at ``D = 1``
    (for every input, whatever its caption), and its caption's class.

    Returns a dict keyed ``"bicubic"``, ``"D=0"`` and ``str(setting)``, each ``[n_images, 3]``,
    and ``"class"``, ``[n_images]`` str (:func:`~geosr.pipelines.lr_space_heads.caption_class`).

    Raises
    ------
    ValueError
        ``model`` has no detail head.
    """
    bicubic = load_upscaler("bicubic", scale)
    fidelity = load_upscaler(model, scale, detail=0.0)
    detailed = load_upscaler(model, scale, detail=1.0)
    head = detailed.pipeline.detail
    if head is None:
        raise ValueError(f"{model} has no detail head")
    kept = {**head.composition("degraded"), "mild_composition": head.config.mild_composition,
            "noisy_composition": head.config.noisy_composition}
    captioner = load_captioner("degradation")
    rows: dict[str, list] = {"bicubic": [], "D=0": [], **{str(s): [] for s in settings}}
    classes = []
    try:
        for index, path in enumerate(hr_paths):
            hr = read_hr_image(Path(path), scale, None)
            lr = quantise_8bit(degrade(hr, scale, degradation, seed=seed + index)[0])
            caption = captioner.caption(image_to_batch(lr))[0]
            classes.append(caption_class(caption))
            outputs = {"bicubic": _output(bicubic, lr, caption, seed + index),
                       "D=0": _output(fidelity, lr, caption, seed + index)}
            for setting in settings:
                # read by the pipeline at each call; no class's own composition: the setting for every input
                head.register_to_config(**vars(setting), mild_composition=None, noisy_composition=None)
                outputs[str(setting)] = _output(detailed, lr, caption, seed + index)
            for key, out in outputs.items():
                rows[key].append([psnr(out, hr, scale), sharpness_ratio(out, hr, scale), hf_spectral_error(out, hr, scale)])
    finally:
        head.register_to_config(**kept)
    return {**{key: np.asarray(value) for key, value in rows.items()}, "class": np.asarray(classes)}


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Pipeline folder with a detail head.")
    parser.add_argument("--scale", type=int, required=True)
    parser.add_argument("--hr", action="append", default=None, help="HR image folders (default: train/).")
    parser.add_argument("--images", type=int, default=48, help="Images, evenly spaced over the folders.")
    parser.add_argument("--degradation", default="clean")
    parser.add_argument("--caption-class", choices=("mild", "noisy", "all"), default="all",
                        help="Score the images whose caption reads as mild (for mild_composition), as noisy "
                             "(for noisy_composition), or all (for the composition of every other input).")
    parser.add_argument("--texture-scales", type=float, nargs="+", default=[0.15, 0.2, 0.3, 0.4, 0.5, 1.0])
    parser.add_argument("--sharpen", nargs="+", default=["0:1", "1.5:1", "2:1", "2.5:1", "2:0.8", "3:0.8"],
                        help="AMOUNT:SIGMA pairs of the unsharp mask (0:1 for none).")
    parser.add_argument("--min-gain", type=float, default=0.0, help="dB over bicubic.")
    parser.add_argument("--min-sharpness", type=float, default=0.9)
    parser.add_argument("--max-hf-fraction", type=float, default=0.45)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true", help="Store the chosen setting in MODEL/detail/config.json.")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    paths = find_hr_images(args.hr or TRAIN)
    paths = paths[:: max(1, len(paths) // args.images)][: args.images]
    sharpen = [tuple(float(v) for v in pair.split(":")) for pair in args.sharpen]
    settings = [Setting(k, a, s) for k, (a, s) in itertools.product(args.texture_scales, sharpen)]
    try:
        rows = score_settings(args.model, args.scale, paths, args.degradation, settings, args.seed)
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    classes = rows.pop("class")
    keep = np.ones(len(paths), dtype=bool) if args.caption_class == "all" else classes == args.caption_class
    if not keep.any():
        print(f"no image's caption reads as {args.caption_class}", file=sys.stderr)
        return 1
    rows = {key: value[keep] for key, value in rows.items()}
    base = rows["bicubic"][:, 0]
    hf_bar = args.max_hf_fraction * rows["D=0"][:, 2].mean()
    print(f"{args.model} x{args.scale} {args.degradation}, {int(keep.sum())} of {len(paths)} images "
          f"({args.caption_class} captions); bars: gain >= {args.min_gain:+g} dB, sharpness >= "
          f"{args.min_sharpness}, HF error <= {hf_bar:.3f}")
    print(f"{'':44s} {'dPSNR':>7s} {'below':>6s} {'sharp':>6s} {'HF err':>6s}")
    eligible = []
    for key, value in rows.items():
        gain = value[:, 0] - base
        line = (f"{key:44s} {gain.mean():+7.3f} {100 * (gain < 0).mean():5.0f}% "
                f"{value[:, 1].mean():6.3f} {value[:, 2].mean():6.3f}")
        print(line)
        if (key in map(str, settings) and gain.mean() >= args.min_gain and value[:, 1].mean() >= args.min_sharpness
                and value[:, 2].mean() <= hf_bar):
            eligible.append((gain.mean(), key))
    if not eligible:
        print("no setting meets the bars: nothing written", file=sys.stderr)
        return 1
    gain, key = max(eligible)
    chosen = next(s for s in settings if str(s) == key)
    print(f"chosen: {chosen} ({gain:+.3f} dB over bicubic)")
    if args.write:
        path = Path(args.model) / "detail" / "config.json"
        config = json.loads(path.read_text())
        if args.caption_class != "all":
            config[f"{args.caption_class}_composition"] = vars(chosen)
        else:
            config.update(vars(chosen))
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
