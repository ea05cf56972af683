"""CachingCaptioner: identical tiles are captioned once, batching kept, LRU bound."""

from __future__ import annotations

import torch

from geosr.captioning import FixedCaptioner
from geosr.captioning.cache import CachingCaptioner, tile_key


class CountingCaptioner:
    name = "counting"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def caption(self, tiles: torch.Tensor) -> list[str]:
        self.calls.append(int(tiles.shape[0]))
        return [f"mean {float(t.mean()):.4f}" for t in tiles]


def test_repeated_tiles_hit_the_cache():
    inner = CountingCaptioner()
    cache = CachingCaptioner(inner)
    a, b = torch.zeros(3, 8, 8), torch.ones(3, 8, 8)
    first = cache.caption(torch.stack([a, b, a]))
    assert first == ["mean 0.0000", "mean 1.0000", "mean 0.0000"]
    assert inner.calls == [2]  # unseen tiles go in one batch, duplicates once
    assert cache.caption(torch.stack([b, a])) == ["mean 1.0000", "mean 0.0000"]
    assert inner.calls == [2]
    assert (cache.hits, cache.misses) == (2, 2)  # a duplicate inside a batch is no hit
    assert cache.name == "counting"


def test_lru_bound():
    inner = CountingCaptioner()
    cache = CachingCaptioner(inner, max_entries=2)
    tiles = [torch.full((1, 4, 4), float(v)) for v in range(3)]
    for t in tiles:
        cache.caption(t[None])
    cache.caption(tiles[0][None])  # evicted by the third
    assert inner.calls == [1, 1, 1, 1]


def test_key_depends_on_content_shape_and_dtype():
    t = torch.zeros(3, 4, 4)
    assert tile_key(t) == tile_key(t.clone())
    assert tile_key(t) != tile_key(t.reshape(3, 2, 8))
    assert tile_key(t) != tile_key(t.double())
    assert CachingCaptioner(FixedCaptioner("x")).caption(torch.zeros(2, 1, 4, 4)) == ["x", "x"]
