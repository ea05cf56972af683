"""average_weights: the weight-space mean of checkpoints of one network, and nothing else."""

from __future__ import annotations

import shutil

import pytest
import torch

from geosr.pipelines.pipeline_geosr import GeoSRPipeline
from geosr.training import average_weights
from tiny_models import tiny_pipeline_components

WEIGHTS = average_weights.WEIGHTS


def _save(tmp_path, name, seed, student=True, scale=4):
    folder = tmp_path / name
    GeoSRPipeline(**tiny_pipeline_components(student=student, scale=scale, tmp_path=tmp_path, seed=seed)
                  ).save_pretrained(folder)
    return folder


def _params(folder):
    pipe = GeoSRPipeline.from_pretrained(folder)
    return {name: dict(getattr(pipe, name).state_dict()) for name in ("unet", "controlnet", "text_encoder")}


def test_the_average_is_the_mean_of_each_tensor_and_loads_as_a_pipeline(tmp_path):
    a, b = _save(tmp_path, "a", seed=1), _save(tmp_path, "b", seed=2)
    into = tmp_path / "into"
    shutil.copytree(a, into)
    counts = average_weights.main([str(a), str(b), "--into", str(into), "--weights", "0.25", "0.75"])
    assert counts["unet"] > 0 and counts["controlnet"] > 0
    pa, pb, mean = _params(a), _params(b), _params(into)
    for net in ("unet", "controlnet"):
        assert any(not torch.equal(pa[net][k], pb[net][k]) for k in pa[net])  # the seeds made them differ
        for key, value in mean[net].items():
            torch.testing.assert_close(value, 0.25 * pa[net][key] + 0.75 * pb[net][key], rtol=0, atol=1e-6)
    # what is not averaged is the copied folder's own
    for key, value in mean["text_encoder"].items():
        assert torch.equal(value, pa["text_encoder"][key])


def test_a_checkpoint_averaged_with_itself_is_unchanged_bit_for_bit(tmp_path):
    a = _save(tmp_path, "a", seed=3)
    into = tmp_path / "into"
    shutil.copytree(a, into)
    average_weights.average_networks([a, a], into)  # 0.5 x + 0.5 x is x exactly
    for net in ("unet", "controlnet"):
        assert all(torch.equal(x, y) for x, y in zip(_params(a)[net].values(), _params(into)[net].values()))


def test_fp16_output_and_bad_weights(tmp_path):
    a, b = _save(tmp_path, "a", seed=1), _save(tmp_path, "b", seed=2)
    into = tmp_path / "into"
    shutil.copytree(a, into)
    average_weights.average_networks([a, b], into, dtype=torch.float16)
    for net in ("unet", "controlnet"):
        state = average_weights.load_file(str(into / net / WEIGHTS))
        assert {t.dtype for t in state.values() if t.is_floating_point()} == {torch.float16}
    for weights in ([0.5], [0.7, 0.7], [1.5, -0.5]):
        with pytest.raises(ValueError, match="weights"):
            average_weights.average_networks([a, b], into, weights=weights)
    with pytest.raises(ValueError, match="two or more"):
        average_weights.average_networks([a], into)


def test_other_architectures_are_refused_and_nothing_is_written(tmp_path):
    a, teacher = _save(tmp_path, "a", seed=1), _save(tmp_path, "teacher", seed=2, student=False)
    into = tmp_path / "into"
    shutil.copytree(a, into)
    before = {net: (into / net / WEIGHTS).read_bytes() for net in ("unet", "controlnet")}
    with pytest.raises(ValueError, match="configs differ"):
        average_weights.average_networks([a, teacher], into)
    # the same config with a tensor of another shape (a hand-edited or truncated checkpoint)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    state = average_weights.load_file(str(b / "controlnet" / WEIGHTS))
    name = next(iter(state))
    state[name] = torch.zeros(3)
    average_weights.save_file(state, str(b / "controlnet" / WEIGHTS))
    with pytest.raises(ValueError, match="shapes differ"):
        average_weights.average_networks([a, b], into)
    # the unet passed its checks before the controlnet failed: still nothing written
    assert {net: (into / net / WEIGHTS).read_bytes() for net in ("unet", "controlnet")} == before
    with pytest.raises(ValueError, match="config is not the checkpoints'"):
        average_weights.average_networks([a, a], teacher)
    with pytest.raises(ValueError, match="no config.json"):
        average_weights.average_networks([a, tmp_path / "missing"], into)
