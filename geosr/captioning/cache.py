"""Caption cache keyed by tile content: identical tiles are captioned once.

Scenes repeat tiles (nodata-free ocean, uniform fields, a resumed run re-reading the same
windows); an MLLM call costs far more than the hash of a tile.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import torch

from geosr.captioning import Captioner, attributed_captions, caption_text

__all__ = ["CachingCaptioner", "tile_key"]


def tile_key(tile: torch.Tensor) -> str:
    """Content hash of one ``[C, h, w]`` tile (values, shape and dtype)."""
    arr = tile.detach().to("cpu").contiguous().numpy()
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{arr.dtype}{arr.shape}".encode())
    digest.update(arr.tobytes())
    return digest.hexdigest()


class CachingCaptioner:
    """Wraps a captioner with a least-recently-used cache by tile content hash.

    Misses of one batch go to the inner captioner together, so batching is kept.
    Thread-safe (the engine captions from several threads). A caption is cached as the
    inner captioner attributes it (``caption_attributed``, e.g. ``auto``), so a cached tile
    keeps the name of the captioner that wrote its caption.

    Parameters
    ----------
    inner : Captioner
        What writes captions on a miss; its ``name`` is kept.
    max_entries : int
        Cache size; the least recently used entries go first.
    """

    def __init__(self, inner: Captioner, max_entries: int = 65536) -> None:
        self.inner = inner
        self.name = inner.name
        self.max_entries = max(1, int(max_entries))
        self.hits = 0
        self.misses = 0
        self._cache: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def caption(self, tiles: torch.Tensor) -> list[str]:
        """Caption ``[B, C, h, w]`` tiles, asking the inner captioner for unseen ones only."""
        captions = self.caption_attributed(tiles)
        return [caption_text(c) for c in captions] if hasattr(self.inner, "caption_attributed") else captions

    def caption_attributed(self, tiles: torch.Tensor) -> list[str]:
        """The captions of :meth:`caption`, attributed where the inner captioner attributes them."""
        keys = [tile_key(t) for t in tiles]
        out: list[str | None] = [None] * len(keys)
        missing: dict[str, list[int]] = {}
        with self._lock:
            for i, key in enumerate(keys):
                if key in self._cache:
                    self._cache.move_to_end(key)
                    out[i] = self._cache[key]
                    self.hits += 1
                else:
                    missing.setdefault(key, []).append(i)
        if missing:
            first = [idx[0] for idx in missing.values()]
            texts = attributed_captions(self.inner, tiles[first])
            with self._lock:
                for (key, idx), text in zip(missing.items(), texts):
                    for i in idx:
                        out[i] = text
                    self._cache[key] = text
                    self._cache.move_to_end(key)
                    self.misses += 1
                while len(self._cache) > self.max_entries:
                    self._cache.popitem(last=False)
        return [text for text in out if text is not None]
