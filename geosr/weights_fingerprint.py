"""Fingerprints of the files a network is loaded from, for a run's identity.

A model or captioner retrained or replaced under the same name, folder or hub id makes
other pixels, so a stopped run is resumed only with the files it started with
(:mod:`geosr.resumable`). A folder is fingerprinted by its files' names and whole contents
(:func:`geosr.digest_cache.whole_file_digest`: a content sample missed one layer rewritten in
place); a hub id by the revision the local hub cache resolves it to, and that revision's
files - never by asking the hub (a run needs no network).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from geosr.digest_cache import whole_file_digest

__all__ = ["folder_fingerprint", "hub_snapshot", "source_fingerprint"]


def folder_fingerprint(root: str | Path) -> str:
    """SHA-256 (16 hex digits) of every file under ``root``: relative path and whole content."""
    root = Path(root)
    lines = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        lines.append(f"{path.relative_to(root).as_posix()} {whole_file_digest(path)}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def hub_snapshot(repo_id: str, filename: str) -> Path | None:
    """The hub cache's folder of the revision ``repo_id`` resolves to locally, if it holds ``filename``.

    That is the revision ``from_pretrained`` loads when offline, and the one a load that
    checked the hub has just brought (its ``main`` ref). None when the cache has no such file,
    or ``huggingface_hub`` is missing or the id is not one it takes.
    """
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        cached = try_to_load_from_cache(repo_id, filename)
    except ValueError:  # not a repo id (huggingface_hub validates it)
        return None
    return Path(cached).parent if isinstance(cached, str) else None


def source_fingerprint(source: str, index_file: str) -> str:
    """What the files of a model ``source`` - a local folder or a hub id - are, in one line.

    ``index_file`` is a file every revision of such a model has (``model_index.json`` for a
    diffusers pipeline, ``config.json`` for a transformers model): its cached copy locates
    the revision of a hub id. A hub id not in the local cache is named by its id alone.
    """
    folder = Path(source).expanduser()
    if folder.is_dir():
        return f"files {folder_fingerprint(folder)}"
    snapshot = hub_snapshot(source, index_file)
    if snapshot is None:
        return f"hub {source}"
    return f"hub {source} revision {snapshot.name}, files {folder_fingerprint(snapshot)}"
