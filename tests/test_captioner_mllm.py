"""MLLMCaptioner through the real processor + generate path of a tiny LLaVA built offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from geosr.captioning import load_captioner
from geosr.captioning.mllm import MLLMCaptioner, load_prompt_template, shorten_caption
from geosr.errors import CaptionerError

REPO = Path(__file__).resolve().parents[1]
WORDS = "blur noise jpeg mild moderate strong low high no isotropic anisotropic sharp image tile".split()
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: "
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }}{% endif %}{% endfor %}"
    "\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
)


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory) -> Path:
    """A random tiny LLaVA (CLIP vision + Llama text) saved with its processor, no downloads."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    out = tmp_path_factory.mktemp("tiny_llava")
    specials = ["<unk>", "<pad>", "<s>", "</s>", "<image>"]
    vocab = {tok: i for i, tok in enumerate(specials + WORDS + [":", "user", "assistant", ";", "."])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}, do_center_crop=True
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=8,
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
        vision_feature_select_strategy="default",
        image_token="<image>",
        chat_template=CHAT_TEMPLATE,
    )
    torch.manual_seed(0)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            image_size=16, patch_size=8, projection_dim=16,
        ),
        text_config=LlamaConfig(
            vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
            pad_token_id=vocab["<pad>"], bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"],
        ),
        image_token_index=vocab["<image>"],
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    LlavaForConditionalGeneration(config).eval().save_pretrained(out)
    processor.save_pretrained(out)
    return out


def test_captions_a_batch_through_generate(tiny_llava):
    captioner = MLLMCaptioner(str(tiny_llava), device="cpu", max_new_tokens=6, batch_size=2)
    tiles = torch.rand(3, 3, 20, 24, generator=torch.Generator().manual_seed(1))
    captions = captioner.caption(tiles)
    assert len(captions) == 3 and all(isinstance(c, str) for c in captions)
    assert all(len(c.split()) <= 6 for c in captions)
    # greedy decoding: the same tiles give the same captions
    assert captioner.caption(tiles) == captions
    assert captioner.name == f"mllm:{tiny_llava}"


def test_load_captioner_spec(tiny_llava):
    captioner = load_captioner(f"mllm:{tiny_llava}")
    assert isinstance(captioner, MLLMCaptioner)
    assert len(captioner.caption(torch.rand(1, 1, 16, 16))) == 1


@pytest.mark.parametrize("spec", ["mllm", "mllm:", "mllm:./no/such/model", "mllm:/no/such/dir"])
def test_bad_specs_fail_before_any_tile(spec):
    with pytest.raises(CaptionerError):
        load_captioner(spec)


def test_missing_local_dir_is_named():
    with pytest.raises(CaptionerError, match="no_such_model"):
        MLLMCaptioner("./no_such_model")


def test_unloadable_dir_is_a_captioner_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CaptionerError, match="cannot load"):
        MLLMCaptioner(str(tmp_path))


def test_prompt_template_packaged_and_in_configs_agree():
    packaged = load_prompt_template()
    assert packaged == load_prompt_template(REPO / "configs" / "captioning" / "mllm_prompt.yaml")
    assert "blur" in packaged["prompt"]


def test_bad_prompt_template(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("system: hi\n")
    with pytest.raises(CaptionerError, match="prompt"):
        load_prompt_template(bad)


def test_shorten_caption():
    text = '"Moderate isotropic blur; low noise; no jpeg. The image also shows trees."\nMore.'
    assert shorten_caption(text) == "Moderate isotropic blur; low noise; no jpeg"
    assert len(shorten_caption("word " * 100).split()) == 24
