"""train_controlnet: the loss falls on a fixed batch; a run resumes where its checkpoint left."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import yaml
from diffusers import DDPMScheduler
from PIL import Image

from geosr.pipelines.pipeline_geosr import GeoSRPipeline, image_to_target, upsample_lr
from geosr.training import train_controlnet
from geosr.training.campaign_state import export_state
from geosr.training.diffusion_batches import encode_captions
from tiny_models import tiny_pipeline_components

TINY_BASE = {
    "unet": dict(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=[8, 16], layers_per_block=1,
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"], mid_block_type="UNetMidBlock2D",
        only_cross_attention=True, cross_attention_dim=32, attention_head_dim=2, norm_num_groups=1,
    ),
    "text_encoder": dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2),
    "scheduler": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False),
}


def write_pngs(folder, n=4, size=40):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k in range(n):
        smooth = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
        Image.fromarray(smooth).resize((size, size), Image.BICUBIC).save(folder / f"img{k}.png")
    return folder


def common_run_config(tmp_path) -> dict:
    """Keys both training scripts take: a few steps on synthetic PNGs."""
    data = write_pngs(tmp_path / "train")
    return dict(
        train_data=[str(data)], crop_size=32, scale=4, degradation="aniso", crops_per_image=2,
        train_batch_size=2, learning_rate=1e-3, max_train_steps=4, checkpointing_steps=2,
        validation_images=[str(data / "img0.png")], validation_inference_steps=2,
        report_to="none", mixed_precision="no", seed=0,
    )


def write_yaml(tmp_path, config: dict):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_loss_decreases_on_a_fixed_batch(tmp_path):
    components = tiny_pipeline_components(tmp_path=tmp_path)
    unet, controlnet = components["unet"], components["controlnet"]
    unet.requires_grad_(False)
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(4, 3, 32, 32, generator=g)
    condition = upsample_lr(torch.nn.functional.avg_pool2d(hr, 4), 4)
    x0 = image_to_target(hr, condition, True, 2.0)
    text = encode_captions(components["tokenizer"], components["text_encoder"],
                                            ["mild isotropic blur sigma 0.5 px; no noise; no jpeg"] * 4).detach()
    noise = torch.randn(x0.shape, generator=g)
    timesteps = torch.tensor([50, 300, 600, 900])
    optimizer = torch.optim.Adam(controlnet.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = train_controlnet.diffusion_loss(unet, controlnet, scheduler, x0, condition, text, noise, timesteps)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    print(f"diffusion loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    assert losses[-1] < 0.9 * losses[0]


def test_yaml_and_flags():
    with pytest.raises(SystemExit):
        train_controlnet.parse_args(["--output_dir", "x"])  # no training data


def test_few_steps_then_resume_from_latest(tmp_path):
    config = write_yaml(tmp_path, dict(
        common_run_config(tmp_path), train_base=True, predict_residual=True, base=TINY_BASE,
        contrastive_weight=0.1, contrastive_queue_size=8, contrastive_dim=8,
        output_dir=str(tmp_path / "teacher"),
    ))
    out = train_controlnet.main(train_controlnet.parse_args(["--config", str(config)]))
    assert (out / "checkpoint-2").is_dir() and (out / "checkpoint-4").is_dir()
    assert (out / "validation" / "step-4.png").is_file()
    pipe = GeoSRPipeline.from_pretrained(out)
    assert pipe.config.predict_residual and not pipe.is_distilled and pipe.config.upscale_factor == 4
    first = torch.load(out / "checkpoint-4" / "optimizer.bin", weights_only=False)
    saved = torch.load(out / "checkpoint-2" / "optimizer.bin", weights_only=False)
    assert all(int(s["step"]) == 2 for s in saved["state"].values())

    # resume the same run from its step-2 checkpoint: it must replay steps 3-4 exactly
    shutil.rmtree(out / "checkpoint-4")
    train_controlnet.main(train_controlnet.parse_args(
        ["--config", str(config), "--resume_from_checkpoint", "latest", "--validation_images"]))
    second = torch.load(out / "checkpoint-4" / "optimizer.bin", weights_only=False)
    for key, state in first["state"].items():
        assert int(second["state"][key]["step"]) == 4
        for name in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(second["state"][key][name], state[name])

    # resumed at its last step, a run only saves: no step beyond max_train_steps
    train_controlnet.main(train_controlnet.parse_args(
        ["--config", str(config), "--resume_from_checkpoint", "latest", "--validation_images"]))
    third = torch.load(out / "checkpoint-4" / "optimizer.bin", weights_only=False)
    assert all(int(s["step"]) == 4 for s in third["state"].values())
    assert not (out / "checkpoint-5").exists()


def test_lr_space_teacher_and_regression_baseline_train(tmp_path):
    base = dict(TINY_BASE, unet=dict(
        {"class": "LRSpaceDenoiser"}, in_channels=51, out_channels=48, channels=8, num_blocks=2,
        cross_attention_dim=32, attention_head_dim=4, embedding_dim=16, text_pool_heads=2,
    ))
    common = dict(common_run_config(tmp_path), train_base=True, predict_residual=True, residual_scale=10.0,
                  unshuffle_factor=4, concat_lr=True, base=base, degradation="mixed", max_train_steps=2,
                  validation_images=[])
    for objective in ("diffusion", "regression"):
        config = write_yaml(tmp_path, dict(common, objective=objective, output_dir=str(tmp_path / objective)))
        pipe = GeoSRPipeline.from_pretrained(train_controlnet.main(train_controlnet.parse_args(["--config", str(config)])))
        assert pipe.unshuffle_factor == 4 and pipe.concat_channels == 3
        assert pipe(torch.rand(1, 3, 8, 8), num_inference_steps=1).images.shape == (1, 3, 32, 32)


def test_with_final_timesteps_moves_the_drawn_share_to_the_last_timestep():
    from geosr.training.diffusion_batches import with_final_timesteps

    timesteps = torch.arange(1000)
    moved = with_final_timesteps(timesteps, 0.25, 999, torch.Generator().manual_seed(0))
    changed = moved != timesteps
    assert (moved[changed] == 999).all()
    assert 0.2 < (moved == 999).float().mean() < 0.3
    assert torch.equal(with_final_timesteps(timesteps, 0.0, 999, torch.Generator().manual_seed(0)), timesteps)
    again = with_final_timesteps(timesteps, 0.25, 999, torch.Generator().manual_seed(0))
    assert torch.equal(moved, again)


def test_ema_weights_are_saved_and_a_run_starts_from_a_saved_pipeline(tmp_path):
    base = dict(TINY_BASE, unet=dict(
        {"class": "LRSpaceDenoiser"}, in_channels=51, out_channels=48, channels=8, num_blocks=2,
        cross_attention_dim=32, attention_head_dim=4, embedding_dim=16, text_pool_heads=2,
    ))
    common = dict(common_run_config(tmp_path), train_base=True, predict_residual=True, residual_scale=10.0,
                  unshuffle_factor=4, concat_lr=True, base=base, degradation="mixed", validation_images=[],
                  rescale_prob=0.5, color_jitter=0.1, learning_rate=1e-2)
    config = write_yaml(tmp_path, dict(common, ema_decay=0.9, output_dir=str(tmp_path / "ema_run")))
    out = train_controlnet.main(train_controlnet.parse_args(["--config", str(config)]))
    # each checkpoint wrote the averaged network beside the optimizer state, and the end of the
    # run the finished one (step 4, not the checkpoint's before it)
    assert (out / "ema" / "STEP").read_text().strip() == "4"
    at_end = GeoSRPipeline.from_pretrained(out / "ema")
    final = GeoSRPipeline.from_pretrained(out)
    w_final = final.controlnet.conv_in.weight
    assert torch.equal(w_final, at_end.controlnet.conv_in.weight)
    assert at_end.text_encoder.dtype == torch.float32
    # the final pipeline is the average, not the last step's weights (in the optimizer checkpoint)
    from safetensors.torch import load_file

    raw = [load_file(f) for f in (out / "checkpoint-4").glob("model*.safetensors")]
    online = next(w["conv_in.weight"] for w in raw if "controlnet_cond_embedding.conv_in.weight" in w)
    assert not torch.equal(w_final, online)

    # the campaign's committed state: the EMA networks in float16, and how far they got
    state = export_state(out, tmp_path / "state" / "teacher", recipe=str(config), hours=0.5, note="test")
    assert state["step"] == 4 and state["hours"] == 0.5 and "--init_pipeline" in state["continue"]
    from safetensors import safe_open

    with safe_open(tmp_path / "state" / "teacher" / "unet" / "diffusion_pytorch_model.safetensors", "pt") as f:
        assert all(f.get_tensor(k).dtype == torch.float16 for k in f.keys())
    kept = GeoSRPipeline.from_pretrained(tmp_path / "state" / "teacher").text_encoder  # frozen: kept exact
    assert all(torch.equal(a, b) for a, b in zip(kept.state_dict().values(), at_end.text_encoder.state_dict().values()))
    again = export_state(out, tmp_path / "state" / "teacher", recipe=str(config), hours=0.25)
    assert again["hours"] == 0.75 and len(again["history"]) == 2
    # a stage started from those weights counts its steps from 0: the state records the total
    staged = export_state(out, tmp_path / "state" / "teacher", recipe=str(config), hours=0.25, stage_start=9000)
    assert staged["step"] == 9004 and staged["history"][-1]["step"] == 9004

    # a new run from that state starts from its weights (not a fresh init), in float32
    config2 = write_yaml(tmp_path, dict(common, max_train_steps=1, checkpointing_steps=10, learning_rate=0.0,
                                        lr_warmup_steps=0, output_dir=str(tmp_path / "continued")))
    out2 = train_controlnet.main(train_controlnet.parse_args(
        ["--config", str(config2), "--init_pipeline", str(tmp_path / "state" / "teacher")]))
    continued = GeoSRPipeline.from_pretrained(out2)
    assert continued.unet.dtype == torch.float32
    for mine, theirs in zip(continued.unet.parameters(), at_end.unet.parameters()):
        torch.testing.assert_close(mine, theirs.half().float())


def test_a_teacher_can_take_the_caption_encoder_of_a_saved_pipeline():
    from pathlib import Path

    from geosr.pipelines.components import build_components

    shipped = Path(__file__).parents[1] / "geosr" / "data" / "models" / "geosr-tiny-x4"
    base = dict(TINY_BASE, text_encoder=str(shipped), unet=dict(
        {"class": "LRSpaceDenoiser"}, in_channels=51, out_channels=48, channels=8, num_blocks=2,
        cross_attention_dim=64, attention_head_dim=4, embedding_dim=16, text_pool_heads=2,
    ))
    built = build_components(base, seed=123)
    saved = GeoSRPipeline.from_pretrained(shipped)
    assert built["tokenizer"].get_vocab() == saved.tokenizer.get_vocab()
    for mine, theirs in zip(built["text_encoder"].state_dict().values(), saved.text_encoder.state_dict().values()):
        torch.testing.assert_close(mine, theirs)


@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps one process-wide state (mixed_precision "no" in the other tests here): a
    bf16 run needs it reset, and leaves it reset."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def test_a_bf16_run_saves_its_frozen_caption_encoder_unrounded(tmp_path, fresh_accelerator_state):
    base = dict(TINY_BASE, unet=dict(
        {"class": "LRSpaceDenoiser"}, in_channels=51, out_channels=48, channels=8, num_blocks=2,
        cross_attention_dim=32, attention_head_dim=4, embedding_dim=16, text_pool_heads=2,
    ))
    common = dict(common_run_config(tmp_path), train_base=True, predict_residual=True, residual_scale=10.0,
                  unshuffle_factor=4, concat_lr=True, base=base, validation_images=[])
    first = train_controlnet.main(train_controlnet.parse_args(
        ["--config", str(write_yaml(tmp_path, dict(common, output_dir=str(tmp_path / "first"))))]))
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)  # the first run's precision ("no") is process-wide
    config = write_yaml(tmp_path, dict(common, ema_decay=0.9, mixed_precision="bf16", output_dir=str(tmp_path / "bf16")))
    out = train_controlnet.main(train_controlnet.parse_args(["--config", str(config), "--init_pipeline", str(first)]))
    loaded = GeoSRPipeline.from_pretrained(first).text_encoder.state_dict()
    for saved in (out, out / "ema"):
        encoder = GeoSRPipeline.from_pretrained(saved).text_encoder.state_dict()
        assert all(torch.equal(encoder[k], v) for k, v in loaded.items()), saved


def test_a_bf16_run_on_a_frozen_base_trains_and_keeps_it_in_bf16(tmp_path, fresh_accelerator_state):
    """Found by review: the README's SD 1.5 recipe (train_base false, bf16) failed at its first step
    (a frozen base is not prepared, so not autocast: float32 inputs met bf16 weights); after its first
    EMA save the frozen base stayed float32."""
    import geosr.training.train_controlnet as module

    config = write_yaml(tmp_path, dict(common_run_config(tmp_path), train_base=False, predict_residual=True,
                                       base=TINY_BASE, mixed_precision="bf16", ema_decay=0.9, validation_images=[],
                                       output_dir=str(tmp_path / "frozen")))
    seen = []
    real = module.diffusion_loss

    def recording(unet, *args, **kwargs):
        seen.append(next(unet.parameters()).dtype)
        return real(unet, *args, **kwargs)

    module.diffusion_loss = recording
    try:
        out = train_controlnet.main(train_controlnet.parse_args(["--config", str(config)]))
    finally:
        module.diffusion_loss = real
    assert (out / "ema" / "STEP").is_file() and len(seen) == 4
    assert set(seen) == {torch.bfloat16}  # after the EMA saves too
