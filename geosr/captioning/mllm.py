"""Captions from a multimodal LLM (any transformers image-text-to-text model).

Works with the families ``AutoModelForImageTextToText`` knows (Qwen2-VL / Qwen2.5-VL,
LLaVA / LLaVA-NeXT, SmolVLM / Idefics3 ...), from a local directory, a hub id, or the name
of a captioner shipped inside the package (``geosr-caption-tiny``, a 2.7 M-parameter LLaVA
trained in-project: see :mod:`geosr.training.train_captioner`), which loads through the
same processor / chat template / ``generate`` code as any hub model. The
prompt comes from a YAML template; the packaged default is
``geosr/data/captioning/mllm_prompt.yaml`` (read with :mod:`importlib.resources`, so it is
found from any install), mirrored for users in ``configs/captioning/mllm_prompt.yaml``.

Decoding is greedy (deterministic); the optional post-filter keeps the first sentence
and at most ``MAX_WORDS`` words, since the diffusion text encoder reads short captions.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from geosr.captioning.degradation import mirrored_to
from geosr.errors import CaptionerError
from geosr.quiet_loading import quiet_loading

__all__ = [
    "MAX_WORDS", "SHIPPED_CAPTIONER", "MLLMCaptioner", "captioner_source", "load_prompt_template",
    "shipped_captioner_path", "shorten_caption",
]

#: The multimodal captioner shipped inside the package (``mllm:geosr-caption-tiny``).
SHIPPED_CAPTIONER = "geosr-caption-tiny"

#: Words kept by the short post-filter.
MAX_WORDS = 24

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load_prompt_template(path: str | Path | None = None) -> dict[str, str]:
    """Read a prompt template (``prompt`` and optional ``system``); None: the packaged one.

    Raises
    ------
    CaptionerError
        Missing file, bad YAML or no ``prompt`` key.
    """
    try:
        if path is None:
            text = resources.files("geosr").joinpath("data/captioning/mllm_prompt.yaml").read_text()
        else:
            text = Path(path).read_text()
        template = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as exc:
        raise CaptionerError(f"cannot read MLLM prompt template {path}: {exc}") from exc
    if not isinstance(template, dict) or not isinstance(template.get("prompt"), str):
        raise CaptionerError(f"MLLM prompt template {path} needs a 'prompt' string")
    return {k: str(v) for k, v in template.items() if k in ("prompt", "system")}


def shorten_caption(text: str, max_words: int = MAX_WORDS) -> str:
    """First sentence or line of ``text``, quotes stripped, at most ``max_words`` words."""
    text = text.strip().strip("\"'` ")
    first = re.split(r"(?<=[.!?])\s|\n", text, maxsplit=1)[0]
    words = first.split()[:max_words]
    return " ".join(words).rstrip(".").strip("\"'` ")


def shipped_captioner_path(name: str) -> str | None:
    """Directory of a captioning model shipped inside the package (``geosr/data/models/<name>``), or None."""
    if "/" in name or "\\" in name or name.startswith("."):
        return None
    resource = resources.files("geosr").joinpath("data", "models", name)
    if resource.is_dir() and resource.joinpath("config.json").is_file():
        return str(resource)
    return None


def captioner_source(model: str) -> str:
    """Where ``mllm:<model>`` loads from: the shipped folder of that name, a local folder, or a hub id."""
    path = Path(model).expanduser()
    return shipped_captioner_path(model) or (str(path) if path.exists() else model)


def _looks_local(model: str) -> bool:
    # a hub id is "name" or "org/name"; anything path-like beyond that is a directory
    return model.startswith((".", "/", "~", "\\")) or model.count("/") > 1 or "\\" in model


def _resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise CaptionerError(f"unknown dtype {dtype!r}: use one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


class MLLMCaptioner:
    """Captions tiles with a transformers image-text-to-text model.

    Parameters
    ----------
    model : str
        Name of a shipped captioner (``geosr-caption-tiny``), local model directory or hub id.
    device : str or torch.device, optional
        Defaults to CUDA when available, else CPU.
    dtype : str or torch.dtype, optional
        ``float32``, ``float16`` or ``bfloat16``; defaults to bfloat16 on CUDA, float32 on CPU.
    max_new_tokens : int
        Generation budget per caption.
    prompt_template : path, optional
        YAML with ``prompt`` (and optional ``system``); None uses the packaged default.
    batch_size : int
        Tiles per ``generate`` call.
    short : bool
        Apply :func:`shorten_caption` to the answers.

    Raises
    ------
    CaptionerError
        Local directory missing, or the processor/model cannot be loaded (before any tile
        is processed).
    """

    def __init__(
        self,
        model: str,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        max_new_tokens: int = 48,
        prompt_template: str | Path | None = None,
        batch_size: int = 8,
        short: bool = True,
    ) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if not model:
            raise CaptionerError("the MLLM captioner needs a model: mllm:<dir-or-hub-id>")
        if shipped_captioner_path(model) is None and not Path(model).expanduser().exists() and _looks_local(model):
            raise CaptionerError(f"MLLM model directory not found: {model}")
        source = captioner_source(model)
        self.name = f"mllm:{model}"
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = _resolve_dtype(dtype, self.device)
        self.max_new_tokens = int(max_new_tokens)
        self.batch_size = max(1, int(batch_size))
        self.short = short
        self.template = load_prompt_template(prompt_template)
        try:
            with quiet_loading():
                self.processor = AutoProcessor.from_pretrained(source)
                self.model = AutoModelForImageTextToText.from_pretrained(source, dtype=self.dtype)
        except (OSError, ValueError, KeyError, ImportError) as exc:
            raise CaptionerError(f"cannot load MLLM captioner {model!r}: {exc}") from exc
        self.model.to(self.device).eval()
        # batched generation of a decoder-only model pads on the left
        tokenizer = getattr(self.processor, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.padding_side = "left"
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
        self._text = self._chat_text()

    def _chat_text(self) -> str:
        messages = []
        if "system" in self.template:
            messages.append({"role": "system", "content": [{"type": "text", "text": self.template["system"]}]})
        messages.append(
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": self.template["prompt"]}],
            }
        )
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    def _to_images(self, tiles: torch.Tensor) -> list[Image.Image]:
        x = tiles.detach().to("cpu", torch.float32).clamp(0, 1)
        # RGB from the first three bands; a single band is shown as grey
        x = x[:, :3] if x.shape[1] >= 3 else x[:, :1].expand(-1, 3, -1, -1)
        arr = (x.numpy().transpose(0, 2, 3, 1) * 255.0).round().astype(np.uint8)
        # a processor that centre-crops without resizing pads a smaller image with black: the model
        # described a black frame (a 24 px tile read "anisotropic, jpeg 90"); it sees the tile
        # mirrored up to the crop instead
        arr = mirrored_to(arr, self._crop_side(), axes=(1, 2))
        return [Image.fromarray(a) for a in arr]

    def _crop_side(self) -> int:
        """The side a centre-cropping, non-resizing image processor crops to (0: it resizes, or
        does not crop)."""
        image_processor = getattr(self.processor, "image_processor", None)
        if image_processor is None or not getattr(image_processor, "do_center_crop", False) \
                or getattr(image_processor, "do_resize", True):
            return 0
        crop = getattr(image_processor, "crop_size", None)
        if isinstance(crop, (int, float)):
            return int(crop)
        # a dict, or transformers' SizeDict
        sides = [crop.get(k) if isinstance(crop, dict) else getattr(crop, k, None) for k in ("height", "width")]
        return int(max((v for v in sides if v), default=0))

    @torch.inference_mode()
    def caption(self, tiles: torch.Tensor) -> list[str]:
        """Caption ``[B, C, h, w]`` float tiles in [0, 1] (RGB order when ``C >= 3``)."""
        images = self._to_images(tiles)
        captions: list[str] = []
        for start in range(0, len(images), self.batch_size):
            batch = images[start : start + self.batch_size]
            inputs = self.processor(
                text=[self._text] * len(batch),
                images=[[im] for im in batch],
                return_tensors="pt",
                padding=True,
            ).to(self.device)
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
            new = out[:, inputs["input_ids"].shape[1] :]
            texts = self.processor.batch_decode(new, skip_special_tokens=True)
            captions.extend(shorten_caption(t) if self.short else t.strip() for t in texts)
        return captions
