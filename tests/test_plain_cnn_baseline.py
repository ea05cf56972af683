"""The plain-CNN yardstick: ~0.2 M parameters, trains for its budget, runs through the own-model path."""

from __future__ import annotations

import json

import numpy as np
import torch

from geosr.models import load_upscaler
from geosr.training import plain_cnn_baseline
from test_train_controlnet import write_pngs


def test_the_yardstick_has_its_size_and_learns_the_bicubic_start():
    net = plain_cnn_baseline.PlainCNN(4)
    assert 0.18e6 < sum(p.numel() for p in net.parameters()) < 0.22e6
    # untrained output = bicubic + a small residual; zeroing the last layer gives bicubic exactly
    torch.nn.init.zeros_(net.body[-1].weight)
    torch.nn.init.zeros_(net.body[-1].bias)
    lr = torch.rand(1, 3, 8, 8)
    expected = torch.nn.functional.interpolate(lr, scale_factor=4.0, mode="bicubic", align_corners=False)
    torch.testing.assert_close(net(lr), expected)


def test_clean_batches_are_the_clean_protocol():
    image = np.random.default_rng(0).random((3, 64, 64), dtype=np.float32)
    lr, hr = plain_cnn_baseline.random_batch([image], 2, 32, 4, np.random.default_rng(1))
    assert lr.shape == (2, 3, 8, 8) and hr.shape == (2, 3, 32, 32)
    assert torch.equal(lr, (lr * 255).round() / 255)  # 8-bit, as evaluate's LR


def test_train_and_run_as_an_own_model(tmp_path):
    data = write_pngs(tmp_path / "train")
    out = tmp_path / "cnn.pt"
    report = plain_cnn_baseline.main(plain_cnn_baseline.parse_args(
        ["--scale", "2", "--train_data", str(data), "--minutes", "0.02", "--out", str(out), "--crop", "16",
         "--channels", "8", "--depth", "3", "--dtype", "fp32"]))
    assert report["steps"] > 0 and report["parameters"] > 0
    assert json.loads(out.with_suffix(".training.json").read_text())["steps"] == report["steps"]
    upscaler = load_upscaler(str(out), 2)
    result = upscaler.upscale(torch.rand(1, 3, 10, 10), [""])
    assert result.shape == (1, 3, 20, 20) and torch.isfinite(result).all()


def test_a_step_budget_trains_exactly_that_many_steps(tmp_path):
    data = write_pngs(tmp_path / "train")
    report = plain_cnn_baseline.main(plain_cnn_baseline.parse_args(
        ["--scale", "2", "--train_data", str(data), "--steps", "7", "--out", str(tmp_path / "c.pt"),
         "--crop", "16", "--channels", "8", "--depth", "3", "--dtype", "fp32"]))
    assert report["steps"] == 7
