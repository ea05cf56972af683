"""Train the tiny offline captioning VLM (``geosr-caption-tiny``) and export it.

    OMP_NUM_THREADS=2 python -m geosr.training.train_captioner --config configs/train/caption_tiny.yaml

The model (:mod:`geosr.training.caption_model`) learns to answer the packaged captioning
prompt with the true change caption of degraded crops of the training images
(:mod:`geosr.training.caption_data`). The loss is the language-model cross-entropy of the
answer tokens plus ``aux_weight`` times a regression of the degradation numbers from the
pooled vision features (a head used only in training: it gives the vision tower a dense,
ordered signal - the caption's numbers are tokens, and 0.7 px is as wrong as 3.5 px to a
cross-entropy). The whole bank of crops is drawn once and cached in ``output_dir``.

Checkpoints (model, head, optimiser, scheduler, step) go to ``output_dir/checkpoint-N``
every ``checkpointing_steps``; ``--resume_from_checkpoint latest`` continues a run. At the
end (or with ``--export_only``) the model and its processor are saved to ``export_dir``
with ``recipe.json`` (the config, steps, time, held-out figures) - the directory that
``--captioner mllm:<export_dir>`` or, for the shipped copy, ``mllm:geosr-caption-tiny``
loads.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from geosr.captioning.evaluation import find_images
from geosr.captioning.mllm import load_prompt_template
from geosr.captioning.vocabulary import parse_caption
from geosr.errors import InputError
from geosr.training.caption_data import CaptionCrops, CropRecipe, draw_caption_crops
from geosr.training.caption_model import build_processor, build_vlm, train_tokenizer
from geosr.training.launch import checkpoint_to_resume

__all__ = ["main", "parse_args"]

logger = logging.getLogger(__name__)

# crops of train/ images held out of the bank (another seed) to follow training
_HELD_OUT = 96


def parse_args(input_args: Sequence[str] | None = None) -> argparse.Namespace:
    """``--config`` YAML plus the flags that override it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--config", required=True, help="YAML recipe (configs/train/caption_tiny.yaml).")
    add("--output_dir", default=None, help="Checkpoints, bank and logs (YAML output_dir).")
    add("--export_dir", default=None, help="Where the finished model goes (YAML export_dir).")
    add("--max_train_steps", type=int, default=None)
    add("--bank_size", type=int, default=None)
    add("--resume_from_checkpoint", default=None, help='checkpoint-N folder or "latest".')
    add("--export_only", action="store_true", help="Export the latest checkpoint and stop.")
    args = parser.parse_args(input_args)
    with open(args.config, encoding="utf-8") as f:
        config: dict[str, Any] = yaml.safe_load(f)
    for key in ("output_dir", "export_dir", "max_train_steps", "bank_size"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    args.cfg = config
    return args


def _recipe(cfg: dict[str, Any]) -> CropRecipe:
    keys = CropRecipe.__dataclass_fields__
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items() if k in keys}
    return CropRecipe(**values)


def _bank(cfg: dict[str, Any], out: Path, n: int, seed: int) -> CaptionCrops:
    path = out / f"bank-seed{seed}-n{n}.npz"
    if path.exists():
        return CaptionCrops.load(path)
    start = time.perf_counter()
    bank = draw_caption_crops(find_images(cfg["train_data"]), n, _recipe(cfg), seed=seed)
    bank.save(path)
    logger.info("drew %d crops in %.0f s -> %s", n, time.perf_counter() - start, path)
    return bank


class _AuxHead(torch.nn.Module):
    """Degradation numbers from the mean vision feature (training only)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.GELU(), torch.nn.Linear(width, 7))

    def loss(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        noise, blur, aniso, angle, jpeg, quality = targets.unbind(1)
        p = self.net(features.mean(1))
        two_theta = torch.deg2rad(2 * angle)
        terms = [
            F.smooth_l1_loss(p[:, 0], noise / 10.0),
            F.smooth_l1_loss(p[:, 1], torch.log(blur)),
            F.binary_cross_entropy_with_logits(p[:, 2], aniso),
            F.binary_cross_entropy_with_logits(p[:, 5], jpeg),
        ]
        if aniso.any():
            m = aniso > 0
            terms.append(F.mse_loss(p[m, 3], torch.cos(two_theta[m])) + F.mse_loss(p[m, 4], torch.sin(two_theta[m])))
        if jpeg.any():
            m = jpeg > 0
            terms.append(F.smooth_l1_loss(p[m, 6], quality[m] / 100.0))
        return sum(terms)


class _Trainer:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.out = Path(cfg["output_dir"])
        self.out.mkdir(parents=True, exist_ok=True)
        seed = int(cfg["seed"])
        self.bank = _bank(cfg, self.out, int(cfg["bank_size"]), seed)
        self.held_out = _bank(cfg, self.out, _HELD_OUT, seed + 1)
        processor_dir = self.out / "processor"
        if processor_dir.exists():
            from transformers import AutoProcessor

            self.processor = AutoProcessor.from_pretrained(processor_dir)
        else:
            prompt = load_prompt_template()["prompt"]
            # answers as the model writes them (after "assistant:", so with a leading space);
            # the prompt and role words repeated so that they become whole tokens too
            corpus = [f" {c}" for c in self.bank.captions] + [prompt, "user: assistant: system:"] * 200
            tokenizer = train_tokenizer(corpus, int(cfg["vocab_size"]))
            self.processor = build_processor(tokenizer, int(cfg["image_size"]), int(cfg["vision"]["patch_size"]))
            self.processor.save_pretrained(processor_dir)
        self.tokenizer = self.processor.tokenizer
        torch.manual_seed(seed)
        self.model = build_vlm(cfg, self.tokenizer, int(cfg["image_size"]))
        self.head = _AuxHead(int(cfg["vision"]["hidden_size"]))
        self._features: torch.Tensor | None = None
        self.model.model.vision_tower.register_forward_hook(self._keep_features)
        params = list(self.model.parameters()) + list(self.head.parameters())
        self.optimizer = torch.optim.AdamW(params, lr=float(cfg["learning_rate"]), weight_decay=float(cfg["weight_decay"]))
        warmup, total = int(cfg["lr_warmup_steps"]), int(cfg["max_train_steps"])
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)),
        )
        self.step = 0
        self.seconds = 0.0
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": load_prompt_template()["prompt"]}]}]
        self.prompt_text = self.processor.apply_chat_template(messages, add_generation_prompt=True)

    def _keep_features(self, _module, _inputs, output) -> None:
        # what LLaVA projects: the last hidden layer without the CLS token
        self._features = output.hidden_states[-1][:, 1:]

    def _inputs(self, images: np.ndarray, captions: list[str] | None):
        pil = [[Image.fromarray(a)] for a in images]
        if captions is None:
            self.tokenizer.padding_side = "left"
            return self.processor(text=[self.prompt_text] * len(pil), images=pil, return_tensors="pt", padding=True)
        self.tokenizer.padding_side = "right"  # natural positions for teacher forcing
        texts = [f"{self.prompt_text} {c}{self.tokenizer.eos_token}" for c in captions]
        return self.processor(text=texts, images=pil, return_tensors="pt", padding=True)

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([int(self.cfg["seed"]), epoch]).permutation(len(self.bank.captions))

    def train_step(self) -> tuple[float, float]:
        batch = int(self.cfg["train_batch_size"])
        per_epoch = len(self.bank.captions) // batch
        epoch, k = divmod(self.step, per_epoch)
        idx = self._order(epoch)[k * batch : (k + 1) * batch]
        captions = [self.bank.captions[i] for i in idx]
        inputs = self._inputs(self.bank.images[idx], captions)
        prompt_len = self._inputs(self.bank.images[idx[:1]], None)["input_ids"].shape[1]
        labels = inputs["input_ids"].clone()
        labels[:, :prompt_len] = -100
        labels[inputs["attention_mask"] == 0] = -100
        self.model.train()
        lm = self.model(**inputs, labels=labels).loss
        aux = self.head.loss(self._features, torch.from_numpy(self.bank.targets[idx]))
        loss = lm + float(self.cfg["aux_weight"]) * aux
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(self.model.parameters()) + list(self.head.parameters()), 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return lm.item(), aux.item()

    @torch.inference_mode()
    def generate(self, images: np.ndarray, batch: int = 32) -> list[str]:
        """Greedy captions, decoded as the product's captioner decodes them."""
        self.model.eval()
        out: list[str] = []
        for start in range(0, len(images), batch):
            inputs = self._inputs(images[start : start + batch], None)
            ids = self.model.generate(**inputs, max_new_tokens=32, do_sample=False)
            new = ids[:, inputs["input_ids"].shape[1] :]
            out.extend(t.strip() for t in self.processor.batch_decode(new, skip_special_tokens=True))
        return out

    def held_out_figures(self) -> dict[str, float]:
        """Parse rate, exact captions and median errors on the held-out train crops."""
        texts = self.generate(self.held_out.images)
        facts = [parse_caption(t) for t in texts]
        ok = [(f, t) for f, t in zip(facts, self.held_out.targets) if f is not None]
        figures = {
            "parse_rate": len(ok) / len(texts),
            "exact": float(np.mean([a == b for a, b in zip(texts, self.held_out.captions)])),
        }
        if ok:
            figures["noise_median_abs_err"] = float(np.median([abs(f.noise_sigma - t[0]) for f, t in ok]))
            figures["blur_median_abs_err"] = float(np.median([abs(f.blur_sigma - t[1]) for f, t in ok]))
            figures["jpeg_accuracy"] = float(np.mean([(f.jpeg_quality is not None) == bool(t[4]) for f, t in ok]))
        return figures

    def save(self) -> None:
        path = self.out / f"checkpoint-{self.step}"
        path.mkdir(exist_ok=True)
        state = {
            "model": self.model.state_dict(), "head": self.head.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "step": self.step, "seconds": self.seconds,
        }
        torch.save(state, path / "state.pt.tmp")
        (path / "state.pt.tmp").rename(path / "state.pt")
        for old in sorted(self.out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[:-2]:
            shutil.rmtree(old)

    def load(self, path: Path) -> None:
        state = torch.load(path / "state.pt", weights_only=True)
        self.model.load_state_dict(state["model"])
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.seconds = int(state["step"]), float(state["seconds"])

    def export(self, figures: dict[str, float]) -> Path:
        export = Path(self.cfg["export_dir"])
        if export.exists():
            shutil.rmtree(export)
        export.mkdir(parents=True)
        self.model.save_pretrained(export)
        self.processor.save_pretrained(export)
        recipe = {
            "recipe": self.cfg, "steps": self.step, "train_seconds": round(self.seconds),
            "torch_threads": torch.get_num_threads(), "held_out_train_crops": figures,
        }
        (export / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
        return export


def main(input_args: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(input_args)
    cfg = args.cfg
    if cfg.get("vocab_size", 0) <= 256 + 4:
        raise InputError("vocab_size must exceed the 256 byte tokens and 4 special tokens")
    trainer = _Trainer(cfg)
    resume = checkpoint_to_resume(trainer.out, "latest" if args.export_only else args.resume_from_checkpoint)
    if resume is not None:
        trainer.load(resume)
        logger.info("resumed from %s at step %d", resume, trainer.step)
    elif args.export_only or args.resume_from_checkpoint:
        raise InputError(f"no checkpoint to resume from in {trainer.out}")
    log = (trainer.out / "log.jsonl").open("a")
    total, every = int(cfg["max_train_steps"]), int(cfg["checkpointing_steps"])
    while not args.export_only and trainer.step < total:
        start = time.perf_counter()
        lm, aux = trainer.train_step()
        trainer.seconds += time.perf_counter() - start
        checkpoint = trainer.step % every == 0 or trainer.step == total
        if trainer.step % 20 == 0 or checkpoint:
            record = {"step": trainer.step, "lm": round(lm, 4), "aux": round(aux, 4), "seconds": round(trainer.seconds)}
            if checkpoint:
                trainer.save()
                record.update(trainer.held_out_figures())
            log.write(json.dumps(record) + "\n")
            log.flush()
            logger.info("%s", record)
    figures = trainer.held_out_figures()
    export = trainer.export(figures)
    logger.info("exported %s: %s", export, figures)


if __name__ == "__main__":
    main()
