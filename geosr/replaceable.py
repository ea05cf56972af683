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
the path and the reason, and left as it is. The checks work on relative names
(:func:`check_entries`, :func:`foreign_entry`), so an S3 prefix (:mod:`geosr.s3_output`) is
judged by the same rules, with one difference: a prefix without its marker whose keys are all
geosr's is accepted there, since that is what a killed upload leaves (the marker is uploaded
last; a local output is renamed into place whole). An S3 console's "folder" object at the
prefix (an empty name) is ignored.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from geosr.errors import OutputError

__all__ = ["TILED_MARK", "ZARR_MARK", "check_entries", "check_replaceable_tiled", "check_replaceable_zarr",
           "foreign_entry", "foreign_tiled_name", "foreign_zarr_name", "is_geosr_collection", "is_geosr_zarr_attrs"]

#: The file that marks a tiled output as geosr's, and the one of a Zarr store.
TILED_MARK, ZARR_MARK = "collection.json", ".zattrs"
#: How the description of geosr's STAC Collection starts (geosr.tiled_output.BlockWriter.write_index).
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


def foreign_entry(name: str, zarr: bool, directory: bool = False) -> bool:
    """Whether ``name`` is not an entry geosr writes in a tiled output (``zarr`` False) or a Zarr
    store: the one test of names that both the local checks and :mod:`geosr.s3_output` (the
    prefix's check and which stale keys it deletes) use.

    ``name`` is relative, ``/``-separated; one ending in ``/`` is a folder (an S3 "folder"
    object, as the S3 console makes). The empty name (the folder itself: the console's object
    at the prefix) is nobody's entry and never foreign.
    """
    if name.endswith("/"):
        name, directory = name.rstrip("/"), True
    if not name:
        return False
    return foreign_zarr_name(name, directory) if zarr else directory or foreign_tiled_name(name)


#: A Zarr store's root files uploaded after its ``.zattrs`` (:mod:`geosr.s3_output` uploads them last).
_ZARR_COMPLETE = frozenset({".zgroup", ".zmetadata"})


def check_entries(where: str, zarr: bool, entries: Iterable[tuple[str, str]], mark: Callable[[], bytes | None],
                  remedy: str, unmarked: bool = False) -> None:
    """Refuse to replace the folder or prefix ``where`` unless it holds nothing, or is geosr's
    output (its marker geosr's) holding nothing else.

    Parameters
    ----------
    where : str
        The folder or ``s3://`` prefix, for the messages.
    zarr : bool
        A Zarr store (marked by its ``.zattrs``), else a tiled output (``collection.json``).
    entries : iterable of (name, kind)
        Everything in it: the relative name and ``"file"``, ``"folder"`` or ``"other"`` (a link,
        a device...: never geosr's). Empty names (see :func:`foreign_entry`) are ignored.
    mark : callable
        The marker's content, or None when there is none (or it is no plain file); called only
        when an entry has the marker's name.
    remedy : str
        What to do with a foreign entry, ``{name}`` in it (``"move {name} away"``).
    unmarked : bool
        Accept a folder without the marker whose entries are all geosr's: what a killed upload
        of an S3 prefix leaves (the marker goes last). Not a Zarr store with its root ``.zgroup``
        or ``.zmetadata`` but no ``.zattrs``: geosr uploads those after its ``.zattrs``.

    Raises
    ------
    OutputError
        The message names ``where`` (and the foreign entry) and why.
    """
    entries = [(name, kind) for name, kind in entries if name.strip("/")]
    if not entries:
        return  # empty: nothing to lose
    what, marker = ("a Zarr store", ZARR_MARK) if zarr else ("a tiled output", TILED_MARK)
    is_mark = is_geosr_zarr_attrs if zarr else is_geosr_collection
    names = {name for name, _ in entries}
    if marker in names:
        content = mark()
        if content is None or not is_mark(content):
            raise OutputError(f"{where} is not {what} geosr wrote (its {marker} is not geosr's); {_HOW}")
    elif not unmarked or (zarr and names & _ZARR_COMPLETE):
        raise OutputError(f"{where} is not {what} geosr wrote (no {marker} of geosr's in it); {_HOW}")
    for name, kind in sorted(entries):
        if kind == "other" or foreign_entry(name, zarr, kind == "folder"):
            raise OutputError(f"{where} holds {name}, which geosr did not write there; --overwrite replaces "
                              f"only an output geosr wrote, with nothing else in it: {remedy.format(name=name)} "
                              "or write elsewhere")


def _entries(folder: Path) -> Iterable[tuple[str, str]]:
    """``(relative name, kind)`` of everything under ``folder``, links not followed: ``"folder"``,
    ``"file"`` or ``"other"`` (a link, or anything not a plain file or folder)."""
    def unreadable(exc: OSError) -> None:  # a folder not listed could hide anything: refuse, naming it
        raise OutputError(f"{exc.filename} cannot be listed ({exc.strerror}); --overwrite replaces only an "
                          "output geosr wrote, and this one cannot be checked") from exc

    for root, dirs, files in os.walk(folder, onerror=unreadable):
        for name in sorted(dirs):
            path = Path(root) / name
            yield path.relative_to(folder).as_posix(), "other" if path.is_symlink() else "folder"
        for name in sorted(files):
            path = Path(root) / name
            yield path.relative_to(folder).as_posix(), "other" if path.is_symlink() or not path.is_file() else "file"


def _check_folder(folder: Path, zarr: bool) -> None:
    """Refuse ``folder`` unless it is empty, or geosr's output holding nothing else (:func:`check_entries`)."""
    what = "a Zarr store" if zarr else "a tiled output"
    if folder.is_symlink():
        raise OutputError(f"{folder} is a symbolic link, not {what} geosr wrote; {_HOW}")
    if not folder.is_dir():
        raise OutputError(f"{folder} is a file, not {what} geosr wrote; {_HOW}")
    marker = folder / (ZARR_MARK if zarr else TILED_MARK)

    def mark() -> bytes | None:
        return None if marker.is_symlink() or not marker.is_file() else marker.read_bytes()

    try:
        check_entries(str(folder), zarr, list(_entries(folder)), mark, "move {name} away")
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
    _check_folder(folder, zarr=False)


def check_replaceable_zarr(store: Path) -> None:
    """Refuse, before any work, to replace a ``.zarr`` OUTPUT that is not a Zarr store geosr wrote.

    Raises
    ------
    OutputError
        ``store`` is a link or a file, or is neither empty nor a geosr store holding only
        geosr's files; the message names it (and a foreign entry) and why.
    """
    _check_folder(store, zarr=True)
