"""Build the tiny offline captioning VLM (``geosr-caption-tiny``) from a YAML config.

The model is a standard transformers LLaVA (``LlavaForConditionalGeneration``): a CLIP
vision tower, LLaVA's two-layer projector and a Llama decoder, saved with a
``LlavaProcessor`` (CLIP image processor, tokenizer, chat template), so that
``AutoProcessor`` / ``AutoModelForImageTextToText`` load it exactly as they load a hub
model.

Two choices are specific to captioning *degradations*:

- the image processor does not resize: it takes the central ``image_size`` px of the tile
  at native resolution. Blur and noise are measured in pixels of the tile; a resize would
  change both (a 256 px tile shrunk to 64 px looks four times sharper and less noisy).
  Tiles smaller than ``image_size`` are zero-padded by the processor.
- the tokenizer is a byte-level BPE trained on the caption grammar and the prompt, so
  that a number such as ``" 0.7"`` or ``" 135"`` is one token and any text still encodes
  (bytes) and decodes exactly.
"""

from __future__ import annotations

from typing import Any, Iterable

__all__ = ["CHAT_TEMPLATE", "SPECIAL_TOKENS", "build_processor", "build_vlm", "train_tokenizer"]

#: Pad, begin, end and image placeholder.
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<image>")

#: Turns as ``<s>role: [image] text`` lines; the answer follows ``assistant:``.
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}:"
    "{% if m['content'] is string %} {{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %} <image>"
    "{% else %} {{ c['text'] }}{% endif %}{% endfor %}{% endif %}\n"
    "{% endfor %}{% if add_generation_prompt %}<s>assistant:{% endif %}"
)


def train_tokenizer(corpus: Iterable[str], vocab_size: int):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``corpus``.

    Parameters
    ----------
    corpus : iterable of str
        Texts the tokenizer should encode compactly (captions, prompts).
    vocab_size : int
        Target vocabulary size including the 256 byte tokens and :data:`SPECIAL_TOKENS`.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    # words with their leading space (and a number with its decimal point) stay whole, so
    # that " 2.4" can become one token; ";" stands alone; bytes make any text encodable
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r" ?[^\s;]+|;|\s+"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer=trainer)
    pad, bos, eos, image = SPECIAL_TOKENS
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=pad, bos_token=bos, eos_token=eos,
        extra_special_tokens={"image_token": image},
    )
    tokenizer.padding_side = "left"
    return tokenizer


def build_processor(tokenizer, image_size: int, patch_size: int):
    """The ``LlavaProcessor``: native-resolution centre crop, the tokenizer, the chat template."""
    # the PIL implementation, not the torchvision one: the same pixels on every install
    # (geosr does not need torchvision), and no fallback warning where it is missing
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    image_processor = CLIPImageProcessorPil(
        do_resize=False,
        do_center_crop=True,
        crop_size={"height": image_size, "width": image_size},
        do_convert_rgb=True,
        # the mean and spread of aerial imagery, not ImageNet's: the tower sees near-unit inputs
        image_mean=[0.45, 0.45, 0.42],
        image_std=[0.22, 0.21, 0.21],
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
        vision_feature_select_strategy="default",
        image_token=SPECIAL_TOKENS[3],
        chat_template=CHAT_TEMPLATE,
    )


def build_vlm(config: dict[str, Any], tokenizer, image_size: int):
    """A randomly initialised ``LlavaForConditionalGeneration`` of the config's sizes.

    Parameters
    ----------
    config : dict
        ``vision`` (CLIPVisionConfig keys) and ``text`` (LlamaConfig keys) mappings.
    tokenizer : PreTrainedTokenizerFast
        Gives the vocabulary size and the special token ids.
    image_size : int
        Side of the (square) image the tower sees.
    """
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(image_size=image_size, num_channels=3, **config["vision"])
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS}
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        pad_token_id=ids["<pad>"], bos_token_id=ids["<s>"], eos_token_id=ids["</s>"],
        **config["text"],
    )
    llava = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=ids["<image>"],
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        tie_word_embeddings=bool(config["text"].get("tie_word_embeddings", False)),
    )
    model = LlavaForConditionalGeneration(llava)
    model.generation_config.pad_token_id = ids["<pad>"]
    model.generation_config.eos_token_id = ids["</s>"]
    model.generation_config.bos_token_id = ids["<s>"]
    return model
