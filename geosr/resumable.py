"""Runs that can stop and resume: a run's identity, adopting a stopped run, what a stop keeps.

A run is resumable when an earlier run of the same OUTPUT stopped (SIGTERM, SIGKILL, a
lost worker, a full disk) with the *same identity*: the same input files - every file GDAL
reads for them, the sources of a VRT (nested ones too) and the side files beside each
(external overviews and masks, world files, PAM metadata: :mod:`geosr.gdal_side_files`)
included - each with its size, mtime,
ctime and a hash of its header and a sample of its blocks, the same geosr code and numeric
libraries (:mod:`geosr.code_identity`) and every setting that changes the output's bytes. Settings
that only change how the work is spread (``--batch-size``, ``--address``,
``--local-workers``) are not part of it. Per-tile seeds and blending in tile order make a
tile's pixels independent of when and where it ran, so a resumed run writes the same bytes
as an uninterrupted one.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import rasterio
import rasterio.errors
from rasterio.windows import Window

import geosr
from geosr.captioning import captioner_files
from geosr.code_identity import code_digest, library_versions
from geosr.config import RunConfig
from geosr.digest_cache import whole_file_digest
from geosr.errors import InputError, ResumeError, RunStopped, StopRequested
from geosr.file_sample import content_sample, file_digest, sample_digest
from geosr.gdal_read_settings import gdal_read_settings
from geosr.gdal_side_files import pam_settings_digest, side_files
from geosr.journal import DamagedJournal, RunJournal, WorkFolder, describe_size, identity_differences
from geosr.local_paths import absolute_input
from geosr.models import CLASSICAL, own_model_files
from geosr.remote import gdal_path, is_remote, remote_object
from geosr.sentinel2 import is_subdataset, subdataset_files
from geosr.uncertainty_map import joint_crc

if TYPE_CHECKING:
    from geosr.uncertainty_map import UncertaintyRaster
    from geosr.writer import WorkRaster

__all__ = ["StoppedRunWarning", "check_inputs_unchanged", "files_read", "run_identity", "open_journal",
           "settle_stopped_run", "verify_finished_cells"]

log = logging.getLogger(__name__)


class StoppedRunWarning(UserWarning):
    """A stopped run left its work folder beside OUTPUT, and this run does not resume it."""


#: The full-content digests of a run's local inputs, in its work folder (see :func:`open_journal`).
INPUT_DIGESTS = "inputs.sha256.json"
_CHANGED = " changed"  # the identity key of an input's ctime: "input PATH changed"


def _write_input_digests(folder: WorkFolder, identity: dict[str, str]) -> None:
    """Record every local input's full-content digest: a resume where an input's ctime moved
    (chmod, a new hard link, a copy kept with ``cp -p``) checks its content against it."""
    paths = [key[len("input "):-len(_CHANGED)] for key in identity if key.startswith("input ") and key.endswith(_CHANGED)]
    digests = {path: file_digest(path) for path in paths}
    tmp = folder / (INPUT_DIGESTS + ".tmp")
    tmp.write_text(json.dumps(digests))
    os.replace(tmp, folder / INPUT_DIGESTS)


def _same_run(journal: RunJournal, identity: dict[str, str]) -> bool:
    """Whether ``journal``'s stopped run had ``identity``. An input whose times alone differ
    (its size and content sample equal, its mtime or ctime moved) is the same input when its
    full content is the digest the stopped run recorded: ``touch``, chmod or a copy that keeps
    the mtime change them, and only a full read tells a file rewritten in place with its
    mtime set back."""
    old = journal.identity
    if set(old) != set(identity):
        return False
    return all(old[key] == value or _same_content(journal, key, old[key], value) is True
               for key, value in identity.items())


def _times_only(key: str, old: str, new: str) -> bool:
    """Whether an input's identity entry differs only in its times (ctime, or mtime alone)."""
    if key.endswith(_CHANGED):
        return True
    return _without_mtime(old) is not None and _without_mtime(old) == _without_mtime(new)


def _same_content(journal: RunJournal, key: str, old: str, new: str) -> bool | None:
    """For an input's identity entry that differs only in its times: whether the input's full
    content is the digest the stopped run recorded (None: none recorded). False for any
    other entry."""
    if not (key.startswith("input ") and _times_only(key, old, new)):
        return False
    path = key[len("input "):].removesuffix(_CHANGED)
    try:
        recorded = json.loads((journal.folder / INPUT_DIGESTS).read_text())
    except (OSError, ValueError):
        return None  # stopped before its inputs' digests were written: nothing to check against
    if path not in recorded:
        return None
    try:
        st = os.stat(path)
        return recorded[path] == _digest_as_of(path, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    except OSError:
        return False


@functools.lru_cache(maxsize=16)
def _digest_as_of(path: str, size: int, mtime_ns: int, ctime_ns: int) -> str:
    """``file_digest(path)``, read once per state of the file (an input's mtime and ctime
    entries both ask; a rewrite moves its ctime, which no user-level tool can set back)."""
    return file_digest(path)


def _without_mtime(entry: str) -> str | None:
    """A local input's identity entry (size, mtime, content sample) without its mtime."""
    size, sep, rest = entry.partition(", modified ")
    if not sep:
        return None
    return size + ", " + rest.partition(", ")[2]


def files_read(inputs: Sequence[str], remote_side_files: bool = True) -> list[str]:
    """Every file the inputs make GDAL read: the inputs and, for VRTs, their sources, recursively,
    each local one followed by its side files (:func:`geosr.gdal_side_files.side_files`).

    A VRT's own file list names its direct sources only (a VRT of VRTs lists the inner VRT,
    not the files under it), so VRTs among the sources are opened in turn. Objects in S3 or
    behind a URL (:mod:`geosr.remote`) are kept as named, followed by the objects GDAL lists
    beside them (unless not ``remote_side_files``: one request each). A Sentinel-2 subdataset name stands
    for the files GDAL reads for it: the product's metadata files and band images.
    """
    def named(f: str) -> str:
        return f if is_remote(f) else absolute_input(f)

    seen: dict[str, None] = {}
    todo = []
    for f in inputs:
        todo += [named(p) for p in subdataset_files(f)] if is_subdataset(f) else [named(f)]
    while todo:
        path = todo.pop(0)
        if path in seen:
            continue
        seen[path] = None
        if not is_remote(path):
            seen.update(dict.fromkeys(side_files(path)))
        elif remote_side_files and not path.lower().endswith(".vrt"):
            seen.update(dict.fromkeys(_remote_side_files(path)))
        if path.lower().endswith(".vrt") and (is_remote(path) or os.path.isfile(path)):
            with rasterio.open(path) as ds:
                todo += [named(_file_behind(f)) for f in ds.files[1:]]
    return list(seen)


# GDAL's archive readers: /vsizip/{archive}/member, /vsizip//vsis3/bucket/a.zip/member ...
_ARCHIVE_PREFIXES = ("/vsizip/", "/vsitar/", "/vsigzip/", "/vsi7z/", "/vsirar/")
_ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".gz", ".7z", ".rar")


def _file_behind(source: str) -> str:
    """The file (or object) whose bytes a VRT's ``source`` reads: ``source`` itself when it is
    a file or an object, an archive's file for a member (``/vsizip//data/a.zip/a.tif`` ->
    ``/data/a.zip``), the file of a ``GTIFF_DIR:n:file.tif``. A source named through anything
    else GDAL reads (``/vsimem/``...) is kept as named: :func:`run_identity` then cannot vouch
    for it, and says so."""
    if is_remote(source) or os.path.isfile(source):
        return source
    if source.startswith("GTIFF_DIR:"):
        return _file_behind(source.split(":", 2)[-1])
    for prefix in _ARCHIVE_PREFIXES:
        if source.startswith(prefix):
            rest = source[len(prefix):]
            if rest.startswith("{") and "}" in rest:  # /vsizip/{archive}/member
                return _file_behind(rest[1:rest.index("}")])
            parts = rest.split("/")
            for end in range(1, len(parts) + 1):  # the shortest leading path that is a file
                head = "/".join(parts[:end])
                if os.path.isfile(head) or (is_remote(head) and head.lower().endswith(_ARCHIVE_SUFFIXES)):
                    return head
    return source


def _remote_side_files(path: str) -> list[str]:
    """The objects GDAL reads beside the object ``path`` (``.ovr``, ``.msk``, ``.aux.xml``, as
    its file list names them, ``/vsis3/...``): one uploaded after a stop changes the pixels of
    the tiles redone. [] when the object cannot be opened (:func:`geosr.remote.remote_object`
    then says why)."""
    try:
        with warnings.catch_warnings():  # said once already, when the scene was opened
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(gdal_path(path)) as ds:
                return list(ds.files[1:])
    except rasterio.errors.RasterioIOError:
        return []


# identity keys absent at their defaults (run_identity), said as the value they stand for
_ABSENT_MEANS = {"--detail": "0", "--uncertainty": "no"}


def _differences(journal: RunJournal, new: dict[str, str]) -> list[str]:
    """:func:`identity_differences` said as what they mean: an input whose times moved as
    whether its content did, a setting left at its default as that default."""
    old = journal.identity
    out = []
    for line in identity_differences({**_ABSENT_MEANS, **old}, {**_ABSENT_MEANS, **new}):
        key = line.split(" was ", 1)[0]
        if key.startswith("input ") and key in old and key in new and _times_only(key, old[key], new[key]):
            same = _same_content(journal, key, old[key], new[key])
            path = key[len("input "):].removesuffix(_CHANGED)
            if same is True:
                continue  # touched, not changed: not why the runs differ
            line = (f"input {path} is not what the stopped run read (its times moved and its content differs)"
                    if same is False else
                    f"input {path}: its times moved, and the stopped run recorded no digest to check its content against")
        if line not in out:  # an input's mtime and ctime say it once
            out.append(line)
    return out


_UNTRACEABLE = "read through a path geosr cannot check"


def _input_identity(files: Sequence[str]) -> dict[str, str]:
    """The identity entries of every file the inputs make GDAL read (:func:`files_read`): an
    object's size, version and content sample; a local file's size, times and content sample; what
    a ``.aux.xml`` sets; a source geosr cannot trace, an entry no other run has."""
    ident = {}
    for f in files_read(files):
        if is_remote(f):
            obj = remote_object(f)
            ident[f"input {f}"] = f"{obj.size} bytes, {obj.version}, content sample {sample_digest(obj.read, obj.size)}"
            continue
        if not os.path.isfile(f):  # a source GDAL reads through a path geosr cannot trace (_file_behind)
            ident[f"input {f}"] = f"{_UNTRACEABLE} ({secrets.token_hex(8)}): not resumable"
            continue
        if f.lower().endswith(".aux.xml"):  # PAM: what it sets, not the statistics QGIS caches in it
            settings_digest = pam_settings_digest(f)
            if settings_digest is not None:
                ident[f"input {f}"] = f"GDAL metadata, settings sha256 {settings_digest}"
            continue
        st = os.stat(f)
        ident[f"input {f}"] = f"{st.st_size} bytes, modified {st.st_mtime_ns} ns, content sample {content_sample(f, st.st_size)}"
        # ctime too: a file rewritten in place (or replaced) with its mtime set back has a new ctime,
        # which no user-level tool can set, and the content sample reads only part of a big file;
        # a ctime that moved for other reasons is checked against the full content (_same_run)
        ident[f"input {f}{_CHANGED}"] = f"{st.st_ctime_ns} ns"
    return ident


def run_identity(files: Sequence[str], config: RunConfig, captioner: str | None = None) -> dict[str, str]:
    """What must be equal for a stopped run to be resumed: inputs and output-changing settings.

    ``captioner``: the files of ``config.captioner`` as the worker that described the run's
    model found them (:class:`geosr.tasks.ModelFacts`; workers caption, and a cluster's client
    may not have the files); None: as this process finds them.
    """
    ident = {"geosr version": geosr.__version__, "geosr code": code_digest(), "libraries": library_versions(),
             "inputs": ", ".join(files), **_input_identity(files)}
    settings = {
        "--scale": config.scale, "--model": config.model, "--captioner": config.captioner,
        "--caption-every": config.caption_every, "--tile": config.tiles.tile, "--overlap": config.tiles.overlap,
        "--bands": config.bands, "--bands-to-model": config.bands_to_model, "--rgb-bands": config.rgb_bands,
        "--blend": config.blend, "--seed": config.seed, "--steps": config.steps,
        "--guidance": config.guidance, "--device": config.device, "--dtype": config.dtype,
        "--route": config.route, "--route-threshold": config.route_threshold,
        "--model-meta": sorted(config.model_metadata.items()) or None,
        "--co": sorted(config.creation_options.items()),
        "--aoi": f"{os.path.abspath(config.aoi)} sha256 {file_digest(config.aoi)}" if config.aoi else None,
    }
    ident.update({k: str(v) for k, v in settings.items()})
    if config.model not in CLASSICAL:
        # a network's kernels sum in another order for another number of tiles a call: its last
        # bits, 1 DN on a few pixels, differ (classical models are exact at any batch size)
        ident["--batch-size"] = str(config.batch_size)
    if config.split is not None:  # absent from a single COG's identity, as before tiled output existed
        # "auto": the side the output's size gives (geosr.tiled_output.auto_block_side), the same
        # on resume; a stopped run of a geosr whose default was 16384 differs here
        ident["--split"] = str(config.split) if config.split else "auto"
    # absent at their defaults, as before there were detail levels and error maps
    if config.detail:
        ident["--detail"] = f"{config.detail!r}"
    if config.uncertainty:  # the work folder holds the map's cells too
        ident["--uncertainty"] = "yes"
    if reads := gdal_read_settings():  # absent when none is set, as before it was recorded
        ident["GDAL read settings"] = reads
    captioner = captioner or captioner_files(config.captioner)
    if captioner is not None:  # a VLM retrained in place writes other captions, so other pixels
        ident["captioner files"] = captioner
    # a user's network (.onnx, .pt), its sidecar or its external weights replaced or edited at the
    # same path makes other pixels (shipped and diffusers models: the engine's "model fingerprint");
    # whole files: a content sample missed a layer rewritten in place (exit 0, two networks' tiles)
    for k, path in enumerate(own_model_files(config.model) if config.model else []):
        key = "model file" if k == 0 else f"model file {os.path.abspath(path)}"
        ident[key] = f"{os.stat(path).st_size} bytes, sha256 {whole_file_digest(path)}"
    return ident


def open_journal(output: Path, identity: dict[str, str], resume: bool) -> RunJournal:
    """The journal this run works with: a stopped run's (``resume``) or a new one.

    Must be called while holding the OUTPUT lock. With ``resume``, of the stopped runs with
    this identity the one with the most finished cells is adopted (a second, newer one that
    had only just started must not hide a nearly complete one). Work folders not adopted
    are left alone and reported (:class:`StoppedRunWarning`) with their size, and why they
    cannot be resumed when that is the reason.

    Raises
    ------
    ResumeError
        ``resume`` and a stopped run exists, but none with this identity.
    """
    stopped = WorkFolder.left_by_stopped_runs(output)
    journals: list[RunJournal] = []
    damaged: dict[Path, str] = {}
    for folder in stopped:
        try:
            journals.append(RunJournal.load(folder))
        except DamagedJournal as exc:
            damaged[folder.path] = str(exc)
    adopted = None
    if resume:
        same = [j for j in journals if _same_run(j, identity)]
        if same:
            adopted = max(same, key=lambda j: j.finished)  # newest first: max keeps the newest of a tie
            adopted.cut_damaged_tail()
            log.info("resuming %s: %d output cells were finished", adopted.folder.path.name, adopted.finished)
        elif journals:
            newest = journals[0]
            raise ResumeError(
                f"--resume: the stopped run in {newest.folder.path} was made differently: "
                f"{'; '.join(_differences(newest, identity))}. "
                "Rerun with its arguments, or delete that folder to start over"
            )
        else:
            log.info("--resume: no stopped run of %s; starting from the beginning", output)
    for folder in stopped:
        if adopted is not None and folder.path == adopted.folder.path:
            continue
        why = f"; it cannot be resumed: {damaged[folder.path]}" if folder.path in damaged else ""
        hint = "delete it" if why or adopted is not None else "add --resume to continue it, or delete it"
        warnings.warn(
            f"a stopped run left {folder.path} ({describe_size(folder.size())}){why}: {hint}",
            StoppedRunWarning,
            stacklevel=3,
        )
    if adopted is not None:
        return adopted
    journal = RunJournal.start(WorkFolder.create(output), identity)
    _write_input_digests(journal.folder, identity)  # one read of each local input, before any tile
    return journal


def check_inputs_unchanged(journal: RunJournal, files: Sequence[str]) -> None:
    """Refuse to finish a run whose inputs changed while it read them: each file its identity
    named at the start (:func:`_input_identity`: size, times, a content sample; the full content
    where only the times moved) is checked again before the output is committed.

    Raises
    ------
    InputError
        An input, or a file GDAL reads beside one, is gone or was rewritten: the tiles read
        before and after hold two versions of it.
    """
    now = _input_identity(files)
    for key, was in journal.identity.items():
        if not key.startswith("input ") or was.startswith(_UNTRACEABLE):  # inputs only; untraceable ones never resume
            continue
        if now.get(key) == was or (key in now and _same_content(journal, key, was, now[key]) is True):
            continue
        path = key[len("input "):].removesuffix(_CHANGED)
        raise InputError(f"input {path} {'is gone' if key not in now else 'changed'} while the run read it: its "
                         "tiles would mix two versions of it; nothing was written - rerun once it is no longer "
                         "being written")


def verify_finished_cells(journal: RunJournal, raster: "WorkRaster",
                          errors: "UncertaintyRaster | None" = None) -> list[tuple[int, int]]:
    """Check each journalled cell's bytes in ``raster`` (and in the ``errors`` map) against its
    checksum; forget those that differ.

    The journal says a cell was written, not that its bytes are still there: a work raster
    deleted, truncated or overwritten since would otherwise be adopted as finished (black or
    foreign pixels with exit 0). Cells that fail are recomputed; a warning says how many. With
    an error map the checksum covers the cell of both (:func:`geosr.uncertainty_map.joint_crc`).

    Returns
    -------
    list of (int, int)
        The cells forgotten.
    """
    def crc(rec) -> int:
        window = Window(rec.col_off, rec.row_off, rec.width, rec.height)
        own = raster.cell_crc(window)
        return own if errors is None else joint_crc(own, errors.cell_crc(window))

    bad = [key for key, rec in journal.records.items() if crc(rec) != rec.crc]
    if bad:
        resized = raster.resized + (errors.resized if errors is not None else [])
        resized_note = f" ({', '.join(resized)} had the wrong size)" if resized else ""
        warnings.warn(
            f"{len(bad)} of {journal.finished} finished output cells in {journal.folder.path} no longer hold "
            f"the bytes that were written{resized_note}: recomputing them",
            StoppedRunWarning,
            stacklevel=2,
        )
        journal.forget(bad)
    return bad


def settle_stopped_run(journal: RunJournal, exc: BaseException, cells_total: int) -> BaseException | None:
    """Keep or delete the work folder of a run that raised ``exc``; say what happened.

    The folder is kept when it holds finished cells and the cause is not the input (a
    fixed input is a different input: the journal could not be resumed). Returns the
    exception to raise instead of ``exc`` (a :class:`RunStopped` for signals and lost
    workers), or None to re-raise ``exc``, which then carries a note on the kept folder.
    """
    import distributed

    kept = journal.finished > 0 and not isinstance(exc, InputError)
    if kept:
        note = (
            f"{journal.finished} of {cells_total} output cells are kept in {journal.folder.path} "
            f"({describe_size(journal.folder.size())}): rerun the same command with --resume to continue, "
            "or delete that folder"
        )
    else:
        journal.folder.remove()
        note = ("no output cell was finished; nothing was kept" if not journal.finished else
                f"its {journal.finished} finished output cells were deleted: they came from the input as it was")
    if isinstance(exc, KeyboardInterrupt):
        how = f"stopped by {exc.args[0]}" if isinstance(exc, StopRequested) and exc.args else "interrupted"
        stopped = RunStopped(f"{how}; {note}")
        stopped.__notes__ = list(getattr(exc, "__notes__", []))  # what the stop left (an S3 prefix half replaced)
        return stopped
    if isinstance(exc, distributed.KilledWorker):
        first = str(exc).split(". ")[0]
        return RunStopped(f"dask workers kept dying: {first}; {note}")
    if kept:
        # exc.add_note() from Python 3.11 on; the CLI prints notes on the error's line.
        exc.__notes__ = [*getattr(exc, "__notes__", []), note]
    return None
