"""Whole-file digests of the files a network is loaded from, remembered across runs.

A content sample (:func:`geosr.file_sample.content_sample`) misses a same-size edit between its
blocks - one layer of a network rewritten in place - and a stopped run resumed with such a
network wrote tiles of two networks, exit 0. So a network's files are hashed whole. A
multi-gigabyte diffusers checkpoint takes seconds to read, so each digest is remembered under
the file's state - device, inode, size, mtime and ctime (which no user-level tool can set
back) - in ``$XDG_CACHE_HOME/geosr/file-digests.json`` (``~/.cache`` by default) and the file is
read again only when that state moved. Where the cache cannot be written, each run reads the
files whole; nothing else changes.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from geosr.file_sample import file_digest

__all__ = ["whole_file_digest"]

#: Entries kept (the newest): a few checkpoints' files, many times over.
MAX_ENTRIES = 4096


def _cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "geosr" / "file-digests.json"


def _load(path: Path) -> dict[str, str]:
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _store(path: Path, key: str, digest: str) -> None:
    """Add ``key``: re-read, add, replace atomically (another process's entry lost in a race is
    only read again later)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        cache = _load(path)
        cache.pop(key, None)
        cache[key] = digest
        kept = dict(list(cache.items())[-MAX_ENTRIES:])
        fd, tmp = tempfile.mkstemp(prefix=".file-digests-", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(kept, f)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only or full home: the next run reads the file whole again


def whole_file_digest(path: str | os.PathLike) -> str:
    """SHA-256 (16 hex digits) of the whole file at ``path``, from the cache while its state holds."""
    st = os.stat(path)
    key = f"{os.path.realpath(path)}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"
    cache_path = _cache_path()
    digest = _load(cache_path).get(key)
    if digest is None:
        digest = file_digest(str(path))
        _store(cache_path, key, digest)
    return digest
