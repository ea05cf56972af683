"""Load the diffusion components a training run starts from, and write the caption vocabulary.

Two ways in, one result (a dict of diffusers / transformers components):

- ``pretrained`` (:func:`load_components`): a diffusers directory or hub id laid out like
  Stable Diffusion (``vae/``, ``text_encoder/``, ``tokenizer/``, ``unet/``, ``scheduler/``),
  e.g. ``stable-diffusion-v1-5/stable-diffusion-v1-5`` for real users;
- ``build`` (:func:`geosr.pipelines.components.build_components`): the components are made
  from their configs (small pixel-space models trained from scratch with ``--train_base``),
  with the offline CLIP vocabulary that :func:`write_caption_tokenizer` writes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

__all__ = ["CAPTION_WORDS", "load_components", "write_caption_tokenizer"]

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
