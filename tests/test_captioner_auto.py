"""``--captioner auto``: the measuring captioner, and the VLM only for tiles it reads as JPEG-compressed."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image

from geosr import tasks
from geosr.captioning import (
    SPEAKER_MARK,
    attribute,
    caption_text,
    load_captioner,
    register_captioner,
    split_speaker,
)
from geosr.captioning.auto import AUTO_VLM, AutoCaptioner
from geosr.captioning.cache import CachingCaptioner
from geosr.captioning.degradation import DegradationCaptioner
from geosr.captioning.evaluation import degraded_crops, evaluate_captioner
from geosr.captioning.vocabulary import format_caption, parse_caption
from geosr.config import DEFAULT_CAPTIONER, RunConfig, TileSpec
from geosr.engine import caption_scene, upscale_scene
from geosr.errors import CaptionerError

VLM_JPEG = format_caption(1.2, False, 0.0, 7.0, 30)
VLM_NO_JPEG = format_caption(2.4, True, 135.0, 9.0, None)


class FakeVLM:
    """Answers one caption for every tile and counts what it was asked."""

    name = "fake-vlm"

    def __init__(self, answer: str = VLM_JPEG) -> None:
        self.answer = answer
        self.calls: list[int] = []

    def caption(self, tiles: torch.Tensor) -> list[str]:
        self.calls.append(int(tiles.shape[0]))
        return [self.answer] * int(tiles.shape[0])


class Loader:
    """A ``load_vlm`` that counts its loads."""

    def __init__(self, answer: str = VLM_JPEG) -> None:
        self.vlm = FakeVLM(answer)
        self.loads = 0

    def __call__(self) -> FakeVLM:
        self.loads += 1
        return self.vlm


def _tiles(data_dir, n: int, jpeg_share: float, seed: int = 1) -> torch.Tensor:
    crops = degraded_crops([data_dir / "neon_harv_plot.tif"], n, 96, seed=seed, scale=2, jpeg_share=jpeg_share,
                           jpeg_quality_range=(10, 40))
    return torch.from_numpy(np.stack([lr for lr, _ in crops]).transpose(0, 3, 1, 2).astype(np.float32) / 255.0)


def _read_as_jpeg(tiles: torch.Tensor) -> list[bool]:
    arr = tiles.numpy().transpose(0, 2, 3, 1)
    return [DegradationCaptioner().estimate(t).jpeg_quality is not None for t in arr]


# --- the captioner ----------------------------------------------------------------------

def test_clean_tiles_never_load_the_vlm_and_read_as_degradation(data_dir):
    tiles = _tiles(data_dir, 8, jpeg_share=0.0)
    assert not any(_read_as_jpeg(tiles))
    loader = Loader()
    auto = AutoCaptioner(load_vlm=loader)
    attributed = auto.caption_attributed(tiles)
    assert loader.loads == 0 and not auto.vlm_loaded and auto.vlm_tiles == 0
    assert [caption_text(c) for c in attributed] == DegradationCaptioner().caption(tiles)
    assert {split_speaker(c)[1] for c in attributed} == {"degradation"}
    assert auto.caption(tiles) == DegradationCaptioner().caption(tiles)  # the Captioner protocol: text only


def test_only_tiles_read_as_jpeg_go_to_the_vlm(data_dir):
    tiles = torch.cat([_tiles(data_dir, 6, jpeg_share=0.0), _tiles(data_dir, 6, jpeg_share=1.0, seed=2)])
    jpeg = _read_as_jpeg(tiles)
    assert 0 < sum(jpeg) < len(jpeg)
    loader = Loader()
    auto = AutoCaptioner(load_vlm=loader)
    attributed = auto.caption_attributed(tiles)
    assert loader.loads == 1 and loader.vlm.calls == [sum(jpeg)]  # one call with the JPEG-read tiles only
    measured = DegradationCaptioner().caption(tiles)
    for c, j, m in zip(attributed, jpeg, measured):
        assert split_speaker(c) == ((VLM_JPEG, "fake-vlm") if j else (m, "degradation"))
    auto.caption_attributed(tiles)
    assert loader.loads == 1 and auto.vlm_tiles == 2 * sum(jpeg)  # loaded once


def test_the_vlm_missing_the_blocking_keeps_the_measured_jpeg_clause(data_dir):
    tiles = _tiles(data_dir, 4, jpeg_share=1.0, seed=2)
    arr = tiles.numpy().transpose(0, 2, 3, 1)
    qualities = [DegradationCaptioner().estimate(t).jpeg_quality for t in arr]
    assert all(q is not None for q in qualities)
    auto = AutoCaptioner(load_vlm=Loader(VLM_NO_JPEG))
    for c, q in zip(auto.caption_attributed(tiles), qualities):
        text, speaker = split_speaker(c)
        assert speaker == "fake-vlm+degradation"
        assert text == format_caption(2.4, True, 135.0, 9.0, q)  # the VLM's blur and noise, the measured JPEG
        assert parse_caption(text) is not None


def test_an_answer_off_the_grammar_keeps_the_measured_caption(data_dir):
    tiles = _tiles(data_dir, 3, jpeg_share=1.0, seed=2)
    auto = AutoCaptioner(load_vlm=Loader("The tile looks a bit soft."))
    assert auto.caption_attributed(tiles) == [attribute(c, "degradation") for c in DegradationCaptioner().caption(tiles)]


def test_deterministic_and_batch_independent(data_dir):
    tiles = torch.cat([_tiles(data_dir, 4, jpeg_share=0.0), _tiles(data_dir, 4, jpeg_share=1.0, seed=2)])
    auto = AutoCaptioner(load_vlm=Loader())
    first = auto.caption_attributed(tiles)
    assert auto.caption_attributed(tiles) == first
    assert [auto.caption_attributed(tiles[i : i + 1])[0] for i in range(len(tiles))] == first


def test_the_cache_keeps_who_spoke_and_asks_once(data_dir):
    tiles = torch.cat([_tiles(data_dir, 3, jpeg_share=0.0), _tiles(data_dir, 3, jpeg_share=1.0, seed=2)])
    loader = Loader()
    cache = CachingCaptioner(AutoCaptioner(load_vlm=loader))
    first = cache.caption_attributed(tiles)
    calls = list(loader.vlm.calls)
    assert cache.caption_attributed(tiles.flip(0)) == first[::-1]  # all hits, attribution kept
    assert loader.vlm.calls == calls and cache.hits == len(tiles)
    assert cache.caption(tiles) == [caption_text(c) for c in first]  # caption(): the text only
    assert cache.name == "auto"


def test_attribution_round_trip():
    assert split_speaker(attribute("no blur; no noise; no jpeg", "degradation")) == ("no blur; no noise; no jpeg", "degradation")
    assert split_speaker("no blur; no noise; no jpeg") == ("no blur; no noise; no jpeg", None)
    assert caption_text("") == "" and split_speaker("") == ("", None)
    with pytest.raises(CaptionerError):
        load_captioner(f"fixed:a{SPEAKER_MARK}b")
    with pytest.raises(CaptionerError, match="no argument"):
        load_captioner("auto:fast")


def test_load_captioner_auto_neither_loads_nor_imports_the_vlm():
    code = (
        "import sys, torch\n"
        "from geosr.captioning import load_captioner\n"
        "c = load_captioner('auto')\n"
        "c.caption(torch.rand(2, 3, 64, 64))\n"
        "assert c.name == 'auto' and not c.vlm_loaded\n"
        "assert 'transformers' not in sys.modules, 'transformers imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_auto_is_the_default_captioner():
    assert DEFAULT_CAPTIONER == "auto"
    assert RunConfig().captioner == "auto"


# --- a run: who spoke goes to the captions GeoJSON, the models read the text ----------

def _jpeg_left_half(src, dst, quality: int = 25):
    """``src`` with its left half JPEG-compressed (and back to a lossless GeoTIFF)."""
    with rasterio.open(src) as ds:
        profile, data = ds.profile, ds.read()
    half = data.shape[2] // 2
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(data[:, :, :half].transpose(1, 2, 0))).save(buf, "JPEG", quality=quality)
    data[:, :, :half] = np.asarray(Image.open(buf)).transpose(2, 0, 1)
    with rasterio.open(dst, "w", **profile) as ds:
        ds.write(data)
    return dst


@pytest.fixture
def fake_auto(monkeypatch):
    """The spec ``auto-fake``: auto with a fake VLM (a fresh one per test)."""
    loader = Loader()
    register_captioner("auto-fake", lambda _arg: AutoCaptioner(load_vlm=loader))
    tasks.captioner_for.cache_clear()
    yield loader
    tasks.captioner_for.cache_clear()


def test_a_run_records_who_spoke_and_gives_the_models_the_text(tmp_path, data_dir, fake_auto, monkeypatch):
    src = _jpeg_left_half(data_dir / "neon_harv_plot.tif", tmp_path / "half.tif")
    seen: list[str] = []
    real = tasks.upscale_in_units

    def recording(model, tiles, captions, *args):
        seen.extend(captions)
        return real(model, tiles, captions, *args)

    monkeypatch.setattr(tasks, "upscale_in_units", recording)
    cfg = RunConfig(scale=2, model="bicubic", captioner="auto-fake", tiles=TileSpec(96, 8), progress=False,
                    route="off")
    upscale_scene([src], tmp_path / "o.tif", cfg)
    props = [f["properties"] for f in json.loads((tmp_path / "o.captions.geojson").read_text())["features"]]
    speakers = {p["col"]: set() for p in props}
    for p in props:
        speakers[p["col"]].add(p["captioner"])
        assert parse_caption(p["caption"]) is not None and SPEAKER_MARK not in p["caption"]
        assert (p["caption"] == VLM_JPEG) == (p["captioner"] == "fake-vlm")
    assert "fake-vlm" in speakers[0] and speakers[max(speakers)] == {"degradation"}  # JPEG on the left only
    assert fake_auto.loads == 1
    assert seen and all(SPEAKER_MARK not in c and parse_caption(c) is not None for c in seen)
    assert sorted(seen) == sorted(p["caption"] for p in props)
    # geosr caption writes the same
    fc = caption_scene([str(src)], tmp_path / "c.geojson", cfg)
    assert [f["properties"]["captioner"] for f in fc["features"]] == [p["captioner"] for p in props]


def test_a_run_without_jpeg_never_loads_the_vlm(tmp_path, data_dir, fake_auto):
    cfg = RunConfig(scale=2, model="bicubic", captioner="auto-fake", tiles=TileSpec(96, 8), progress=False)
    upscale_scene([data_dir / "rgbn_suba.tif"], tmp_path / "o.tif", cfg)  # no tile reads as JPEG
    props = [f["properties"] for f in json.loads((tmp_path / "o.captions.geojson").read_text())["features"]]
    assert fake_auto.loads == 0
    assert {p.get("captioner") for p in props if p["caption"]} == {"degradation"}


def test_evaluation_counts_who_spoke(data_dir):
    result = evaluate_captioner([data_dir / "neon_harv_plot.tif"], AutoCaptioner(load_vlm=Loader()), n_crops=8,
                                crop=96, seed=3, scale=2, jpeg_share=0.5)
    assert sum(result["speakers"].values()) == 8 and set(result["speakers"]) <= {"degradation", "fake-vlm"}
    assert result["parse_rate"] == 1.0
    assert evaluate_captioner([data_dir / "neon_harv_plot.tif"], n_crops=2, crop=96)["speakers"] == {}


def test_the_shipped_vlm_is_what_auto_asks():
    assert AUTO_VLM == "mllm:geosr-caption-tiny"
