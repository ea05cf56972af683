"""What ``--overwrite`` may replace: only a folder or store that geosr itself wrote.

A tiled OUTPUT (``out/``, or the ``out/`` beside ``out.vrt``) and a Zarr OUTPUT (``out.zarr``)
are folders; replacing one deletes the folder there. ``--overwrite`` on a folder geosr never
wrote (``geosr upscale in.tif ~/ --overwrite``) used to delete it, whatever it held. Now the
folder must be empty, or be geosr's output and hold nothing else:

- tiled: ``collection.json`` is geosr's STAC Collection (its description), and every entry is
  a plain file geosr writes there (``block_R_C.tif``, ``block_R_C.json``, ``collection.json``,
  ``mosaic.vrt``, ``captions.geojson``), or GDAL's ``.aux.xml`` / ``.ovr`` of a block or the
  VRT (what opening one in QGIS may leave);
- Zarr: the root ``.zattrs`` holds geosr's ``GEOSR_*`` tags, and every entry is a file or
  folder of the layout :mod:`geosr.zarr_output` writes (the group files, the arrays
  ``band_data``, ``mask``, ``band``, ``x``, ``y``, ``spatial_ref`` with their metadata and
  chunks, the overview groups ``2/``, ``4/``...).

Anything else is refused before any work (:class:`geosr.errors.OutputError`, exit 4), with
the path and the reason, and left as it is. The checks work on relative names, so an S3 prefix
(:mod:`geosr.s3_output`) is judged by the same rules.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from geosr.errors import OutputError

__all__ = ["TILED_MARK", "ZARR_MARK", "check_replaceable_tiled", "check_replaceable_zarr", "foreign_tiled_name",
           "foreign_zarr_name", "is_geosr_collection", "is_geosr_zarr_attrs"]

#: The file that marks a tiled output as geosr's, and the one of a Zarr store.
TILED_MARK, ZARR_MARK = "collection.json", ".zattrs"
#: How the description of geosr's STAC Collection starts (geosr.tiled_output.BlockWriter.write_mosaic).
_COLLECTION_DESCRIPTION = "geosr super-resolution output"
_BLOCK_FILE = re.compile(r"block_\d+_\d+\.(?:tif|json)")
_ZARR_ARRAYS = frozenset({"band_data", "mask", "band", "x", "y", "spatial_ref"})
_ZARR_GROUP_FILES = frozenset({".zgroup", ".zattrs", ".zmetadata"})
_ZARR_ARRAY_FILES = frozenset({".zarray", ".zattrs"})
_ZARR_CHUNK = re.compile(r"\d+(?:\.\d+)*")
_ZARR_LEVEL = re.compile(r"[1-9]\d*")

_HOW = "--overwrite replaces only an output geosr wrote: move it away or write elsewhere"


def foreign_tiled_name(name: str) -> bool:
    """Whether ``name`` (a relative path, ``/``-separated) is not a file geosr writes in a tiled
    output's folder. ``mosaic.vrt`` and ``captions.geojson`` count whether the VRT is inside or
    beside (a folder of either layout may be replaced by a run of the other); so do GDAL's
    ``.aux.xml`` and ``.ovr`` of a block or of the VRT."""
    if _BLOCK_FILE.fullmatch(name) or name in (TILED_MARK, "mosaic.vrt", "captions.geojson"):
        return False
    raster = re.sub(r"(?:\.aux\.xml|\.ovr)$", "", name)
    return raster == name or not (raster == "mosaic.vrt" or re.fullmatch(r"block_\d+_\d+\.tif", raster))


def foreign_zarr_name(name: str, directory: bool = False) -> bool:
    """Whether ``name`` (a path relative to the store, ``/``-separated) is not a file (or, with
    ``directory``, a folder) of the layout geosr writes in a Zarr store."""
    parts = name.split("/")
    if parts and _ZARR_LEVEL.fullmatch(parts[0]):  # an overview group
        parts = parts[1:]
        if not parts:
            return not directory
    if len(parts) == 1:
        return not (parts[0] in _ZARR_ARRAYS if directory else parts[0] in _ZARR_GROUP_FILES)
    if len(parts) == 2 and not directory and parts[0] in _ZARR_ARRAYS:
        return not (parts[1] in _ZARR_ARRAY_FILES or _ZARR_CHUNK.fullmatch(parts[1]))
    return True


def is_geosr_collection(text: bytes | str) -> bool:
    """Whether ``collection.json``'s content is the STAC Collection of a geosr tiled output."""
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return (isinstance(value, dict) and value.get("type") == "Collection"
            and str(value.get("description", "")).startswith(_COLLECTION_DESCRIPTION))


def is_geosr_zarr_attrs(text: bytes | str) -> bool:
    """Whether a Zarr store's root ``.zattrs`` holds geosr's tags (``GEOSR_VERSION``...)."""
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return isinstance(value, dict) and any(str(k).startswith("GEOSR_") for k in value)


def _entries(folder: Path) -> Iterable[tuple[str, Path, bool]]:
    """``(relative name, path, is a folder)`` of everything under ``folder``, links not followed;
    a link or anything not a plain file or folder comes as a file (never geosr's: see callers)."""
    for root, dirs, files in os.walk(folder):
        for name in sorted(dirs):
            path = Path(root) / name
            yield path.relative_to(folder).as_posix(), path, not path.is_symlink()
        for name in sorted(files):
            path = Path(root) / name
            yield path.relative_to(folder).as_posix(), path, False


def _check_folder(folder: Path, what: str, mark: str, is_mark: Callable[[bytes], bool],
                  foreign: Callable[[str, bool], bool]) -> None:
    """Refuse ``folder`` unless it is empty, or ``mark`` in it passes ``is_mark`` and no entry is ``foreign``."""
    if folder.is_symlink():
        raise OutputError(f"{folder} is a symbolic link, not {what} geosr wrote; {_HOW}")
    if not folder.is_dir():
        raise OutputError(f"{folder} is a file, not {what} geosr wrote; {_HOW}")
    try:
        entries = list(_entries(folder))
        if not entries:
            return  # an empty folder: nothing to lose
        marker = folder / mark
        if marker.is_symlink() or not marker.is_file() or not is_mark(marker.read_bytes()):
            raise OutputError(f"{folder} is not {what} geosr wrote (no {mark} of geosr's in it); {_HOW}")
        for name, path, directory in entries:
            odd = not directory and (path.is_symlink() or not path.is_file())
            if odd or foreign(name, directory):
                raise OutputError(f"{folder} holds {name}, which geosr did not write there; --overwrite replaces "
                                  f"only an output geosr wrote, with nothing else in it: move {name} away or write "
                                  "elsewhere")
    except OSError as exc:
        if isinstance(exc, OutputError):
            raise
        raise OutputError(f"cannot check what {folder} holds before replacing it: {exc.strerror or exc}") from exc


def check_replaceable_tiled(folder: Path) -> None:
    """Refuse, before any work, to replace a tiled output's folder that geosr did not write.

    Raises
    ------
    OutputError
        ``folder`` is a link or a file, or is neither empty nor a geosr tiled output holding
        only geosr's files; the message names it (and a foreign entry) and why.
    """
    _check_folder(folder, "a tiled output", TILED_MARK, is_geosr_collection,
                  lambda name, directory: directory or foreign_tiled_name(name))


def check_replaceable_zarr(store: Path) -> None:
    """Refuse, before any work, to replace a ``.zarr`` OUTPUT that is not a Zarr store geosr wrote.

    Raises
    ------
    OutputError
        ``store`` is a link or a file, or is neither empty nor a geosr store holding only
        geosr's files; the message names it (and a foreign entry) and why.
    """
    _check_folder(store, "a Zarr store", ZARR_MARK, is_geosr_zarr_attrs, foreign_zarr_name)
