"""Build or load the diffusion components a training run starts from.

Two ways in, one result (a dict of diffusers / transformers components):

- ``pretrained``: a diffusers directory or hub id laid out like Stable Diffusion
  (``vae/``, ``text_encoder/``, ``tokenizer/``, ``unet/``, ``scheduler/``), e.g.
  ``stable-diffusion-v1-5/stable-diffusion-v1-5`` for real users;
- ``build``: the components are made from their configs (small pixel-space models that are
  trained from scratch with ``--train_base``). The CLIP tokenizer then comes from the
  vocabulary shipped in ``training/assets/clip_tokenizer`` (written by
  :func:`write_caption_tokenizer`), so nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import torch
from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from geosr.pipelines.lr_space_models import LRSpaceControlNet, LRSpaceDenoiser

__all__ = [
    "CAPTION_WORDS",
    "DENOISER_CLASSES",
    "TOKENIZER_DIR",
    "build_components",
    "build_controlnet",
    "controlnet_class",
    "load_components",
    "write_caption_tokenizer",
]

#: Denoiser classes a ``base.unet`` config may name with its ``class`` key.
DENOISER_CLASSES = {"UNet2DConditionModel": UNet2DConditionModel, "LRSpaceDenoiser": LRSpaceDenoiser}

#: Where the shipped offline CLIP tokenizer lives.
TOKENIZER_DIR = Path(__file__).parent / "assets" / "clip_tokenizer"

#: Words that get a single token each: the caption grammar of geosr.captioning.vocabulary
#: plus a few scene words an MLLM captioner tends to use. Anything else (numbers included)
#: falls back to one token per character, which every byte has.
CAPTION_WORDS = (
    "mild moderate strong isotropic anisotropic blur sigma px along deg no noise low high "
    "jpeg quality sharp clean blurry noisy compression artifacts image tile scene "
    "slightly very heavy light the a of and with"
).split()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _learn_merges(words: Iterable[str]) -> list[str]:
    """BPE merges, most frequent pair first, until every word is a single symbol.

    Applying merges in the order they were learnt reproduces the training segmentation,
    which is why the merges are learnt rather than written word by word (hand-written
    chains collide: the ``i s`` of ``isotropic`` would split ``noise``).
    """
    pieces = [list(w[:-1]) + [w[-1] + "</w>"] for w in words if w]
    merges: list[str] = []
    while True:
        counts: dict[tuple[str, str], int] = {}
        for symbols in pieces:
            for pair in zip(symbols, symbols[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            return merges
        best = max(counts, key=lambda pair: (counts[pair], -len(merges)))
        merges.append(" ".join(best))
        for k, symbols in enumerate(pieces):
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            pieces[k] = merged


def write_caption_tokenizer(out_dir: str | Path, words: Iterable[str] = CAPTION_WORDS) -> Path:
    """Write a small CLIP BPE vocabulary: every byte, plus one token per word in ``words``.

    The merges are learnt by plain BPE on ``words`` until each of them is one symbol, so a
    word of ``words`` becomes exactly one token and any other text still tokenizes (down
    to one character per token).

    Parameters
    ----------
    out_dir : str or Path
        Folder that receives ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json``.
    words : iterable of str
        Lower-case words to give a token each.

    Returns
    -------
    Path
        ``out_dir``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for token in chars + [c + "</w>" for c in chars]:
        vocab.setdefault(token, len(vocab))
    merges = _learn_merges(dict.fromkeys(w.lower() for w in words))
    for merge in merges:
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    config = {"model_max_length": 77, "do_lower_case": True, "tokenizer_class": "CLIPTokenizer"}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out_dir


def build_components(config: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """Make a pixel-space text-to-image model from configs, seeded.

    Parameters
    ----------
    config : dict
        ``unet`` (kwargs of :class:`~diffusers.UNet2DConditionModel`, or of the class its
        ``class`` key names: ``LRSpaceDenoiser``), ``text_encoder``
        (kwargs of :class:`~transformers.CLIPTextConfig`, ``vocab_size`` is filled in from
        the tokenizer; or the folder of a saved pipeline whose caption encoder and tokenizer
        are taken as they are), ``scheduler`` (kwargs of :class:`~diffusers.DDPMScheduler`) and
        optionally ``tokenizer`` (a folder; default: the shipped vocabulary).
    seed : int
        Seed of the random initialisation.

    Returns
    -------
    dict
        ``vae`` (None: pixel space), ``text_encoder``, ``tokenizer``, ``unet``, ``scheduler``.
    """
    encoder = config.get("text_encoder", {})
    if isinstance(encoder, (str, Path)):
        # the frozen caption encoder of an earlier pipeline: its students can be trained on
        # from this teacher, since the caption embeddings they learnt to read stay the same
        tokenizer = CLIPTokenizer.from_pretrained(str(encoder), subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(str(encoder), subfolder="text_encoder").float()
    else:
        tokenizer = CLIPTokenizer.from_pretrained(str(config.get("tokenizer", TOKENIZER_DIR)))
        text_kwargs = {"vocab_size": len(tokenizer), **encoder}
        text_kwargs.setdefault("eos_token_id", tokenizer.eos_token_id)
        text_kwargs.setdefault("bos_token_id", tokenizer.bos_token_id)
        text_kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_kwargs))
    torch.manual_seed(seed)
    unet_kwargs = dict(config["unet"])
    unet_class = DENOISER_CLASSES[unet_kwargs.pop("class", "UNet2DConditionModel")]
    unet = unet_class(**unet_kwargs)
    if unet.config.cross_attention_dim != text_encoder.config.hidden_size:
        raise ValueError(
            f"unet.cross_attention_dim ({unet.config.cross_attention_dim}) must equal "
            f"text_encoder.hidden_size ({text_encoder.config.hidden_size})"
        )
    return {
        "vae": None,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "unet": unet,
        "scheduler": DDPMScheduler(**config.get("scheduler", {})),
    }


def load_components(
    pretrained: str, revision: str | None = None, variant: str | None = None
) -> dict[str, Any]:
    """Load a Stable-Diffusion-style diffusers directory or hub id.

    Returns
    -------
    dict
        ``vae`` (None when the directory has no ``vae/``: pixel space), ``text_encoder``,
        ``tokenizer``, ``unet``, ``scheduler`` (a :class:`~diffusers.DDPMScheduler` made from
        the saved scheduler config, the training noise schedule).
    """
    kwargs = {"revision": revision}
    local = Path(pretrained)
    has_vae = not local.is_dir() or (local / "vae").is_dir()
    vae = AutoencoderKL.from_pretrained(pretrained, subfolder="vae", **kwargs) if has_vae else None
    return {
        "vae": vae,
        "text_encoder": CLIPTextModel.from_pretrained(pretrained, subfolder="text_encoder", **kwargs),
        "tokenizer": CLIPTokenizer.from_pretrained(pretrained, subfolder="tokenizer", **kwargs),
        "unet": UNet2DConditionModel.from_pretrained(
            pretrained, subfolder="unet", variant=variant, **kwargs
        ),
        "scheduler": DDPMScheduler.from_pretrained(pretrained, subfolder="scheduler", **kwargs),
    }


def controlnet_class(unet) -> type:
    """The ControlNet class that goes with a denoiser (``from_unet`` builds it)."""
    return LRSpaceControlNet if isinstance(unet, LRSpaceDenoiser) else ControlNetModel


def build_controlnet(
    unet: UNet2DConditionModel,
    conditioning_channels: int,
    pixel_space: bool,
    load_weights: bool = True,
    condition_factor: int = 1,
) -> ControlNetModel:
    """A ControlNet initialised from ``unet`` (encoder weights copied, zero convolutions).

    ``load_weights=False`` takes only the architecture (random weights), which also works
    for a student UNet whose time embedding has a guidance projection the ControlNet lacks.

    In pixel space the condition is ``condition_factor`` times the sample's size (1: the LR
    upsampled to the HR size; ``unshuffle_factor / scale`` in LR-space models, whose condition is
    the LR tile itself), and the condition encoder downsamples by that factor with one
    stride-2 level per halving; in latent space it uses diffusers' default 8x-downsampling
    encoder.
    """
    if pixel_space:
        levels = int(condition_factor).bit_length() - 1
        if condition_factor < 1 or 2**levels != condition_factor:
            raise ValueError(f"condition_factor must be a power of 2, got {condition_factor}")
        out_channels = tuple(16 * 2**k for k in range(levels + 1))
    else:
        out_channels = (16, 32, 96, 256)
    return controlnet_class(unet).from_unet(
        unet,
        conditioning_embedding_out_channels=out_channels,
        conditioning_channels=conditioning_channels,
        load_weights_from_unet=load_weights,
    )
