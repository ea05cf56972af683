"""Digests of files for a run's identity: the whole file, or a sample of it that a big scene
or network can afford at every start (:mod:`geosr.resumable`, :mod:`geosr.weights_fingerprint`)."""

from __future__ import annotations

import hashlib
from typing import Callable

__all__ = ["SAMPLE_COUNT", "SAMPLE_HEAD", "SAMPLE_SIZE", "SAMPLE_TAIL", "content_sample", "file_digest", "sample_digest"]

#: Bytes hashed from each input: the head (TIFF header, IFDs and often the first blocks), the
#: tail (where GDAL appends rewritten blocks and IFDs) and evenly spaced samples in between.
SAMPLE_HEAD, SAMPLE_TAIL, SAMPLE_COUNT, SAMPLE_SIZE = 65536, 65536, 32, 4096


def file_digest(path: str) -> str:
    """SHA-256 (16 hex digits) of a whole file, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def content_sample(path: str, size: int) -> str:
    """SHA-256 (16 hex digits) of a file's head, tail and evenly spaced blocks between.

    Catches a file rewritten in place with the same size and mtime (a restored backup, a
    re-export) without reading a multi-gigabyte scene whole.
    """
    with open(path, "rb") as f:
        def read(offset: int, length: int) -> bytes:
            f.seek(offset)
            return f.read(length)

        return sample_digest(read, size)


def sample_digest(read: Callable[[int, int], bytes], size: int) -> str:
    """:func:`content_sample` over ``read(offset, length)``: a local file, or byte ranges of an object."""
    digest = hashlib.sha256()
    if size <= SAMPLE_HEAD + SAMPLE_TAIL + SAMPLE_COUNT * SAMPLE_SIZE:
        digest.update(read(0, size))
    else:
        digest.update(read(0, SAMPLE_HEAD))
        step = (size - SAMPLE_HEAD - SAMPLE_TAIL) // SAMPLE_COUNT
        for k in range(SAMPLE_COUNT):
            digest.update(read(SAMPLE_HEAD + k * step, SAMPLE_SIZE))
        digest.update(read(size - SAMPLE_TAIL, SAMPLE_TAIL))
    return digest.hexdigest()[:16]
