"""Runs that can stop and resume: a run's identity, adopting a stopped run, what a stop keeps.

A run is resumable when an earlier run of the same OUTPUT stopped (SIGTERM, SIGKILL, a
lost worker, a full disk) with the *same identity*: the same input files (path, size,
mtime), the same geosr version and every setting that changes the output's bytes. Settings
that only change how the work is spread (``--batch-size``, ``--address``,
``--local-workers``) are not part of it. Per-tile seeds and blending in tile order make a
tile's pixels independent of when and where it ran, so a resumed run writes the same bytes
as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from pathlib import Path
from typing import Sequence

import geosr
from geosr.config import RunConfig
from geosr.errors import InputError, ResumeError, RunStopped, StopRequested
from geosr.journal import RunJournal, WorkFolder, describe_size, identity_differences

__all__ = ["StoppedRunWarning", "run_identity", "open_journal", "settle_stopped_run"]

log = logging.getLogger(__name__)


class StoppedRunWarning(UserWarning):
    """A stopped run left its work folder beside OUTPUT, and this run does not resume it."""


def _file_digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def run_identity(files: Sequence[str], config: RunConfig) -> dict[str, str]:
    """What must be equal for a stopped run to be resumed: inputs and output-changing settings."""
    ident = {"geosr version": geosr.__version__, "inputs": ", ".join(files)}
    for f in files:
        st = os.stat(f)
        ident[f"input {f}"] = f"{st.st_size} bytes, modified {st.st_mtime_ns} ns"
    settings = {
        "--scale": config.scale, "--model": config.model, "--captioner": config.captioner,
        "--caption-every": config.caption_every, "--tile": config.tiles.tile, "--overlap": config.tiles.overlap,
        "--bands": config.bands, "--blend": config.blend, "--seed": config.seed, "--steps": config.steps,
        "--guidance": config.guidance, "--device": config.device, "--dtype": config.dtype,
        "--route": config.route, "--route-threshold": config.route_threshold,
        "--co": sorted(config.creation_options.items()),
        "--aoi": f"{os.path.abspath(config.aoi)} sha256 {_file_digest(config.aoi)}" if config.aoi else None,
    }
    ident.update({k: str(v) for k, v in settings.items()})
    return ident


def open_journal(output: Path, identity: dict[str, str], resume: bool) -> RunJournal:
    """The journal this run works with: a stopped run's (``resume``) or a new one.

    Must be called while holding the OUTPUT lock. Without ``resume``, work folders of
    stopped runs are left alone and reported (:class:`StoppedRunWarning`) with their size.

    Raises
    ------
    ResumeError
        ``resume`` and a stopped run exists, but none with this identity.
    """
    stopped = WorkFolder.left_by_stopped_runs(output)
    if resume:
        journals = [j for j in (RunJournal.load(f) for f in stopped) if j is not None]
        for journal in journals:
            if journal.identity == identity:
                log.info("resuming %s: %d output cells were finished", journal.folder.path.name, journal.finished)
                return journal
        if journals:
            newest = journals[0]
            raise ResumeError(
                f"--resume: the stopped run in {newest.folder.path} was made differently: "
                f"{'; '.join(identity_differences(newest.identity, identity))}. "
                "Rerun with its arguments, or delete that folder to start over"
            )
        log.info("--resume: no stopped run of %s; starting from the beginning", output)
    for folder in stopped:
        warnings.warn(
            f"a stopped run left {folder.path} ({describe_size(folder.size())}): "
            "add --resume to continue it, or delete it",
            StoppedRunWarning,
            stacklevel=3,
        )
    return RunJournal.start(WorkFolder.create(output), identity)


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
        note = "no output cell was finished; nothing was kept"
    if isinstance(exc, KeyboardInterrupt):
        how = f"stopped by {exc.args[0]}" if isinstance(exc, StopRequested) and exc.args else "interrupted"
        return RunStopped(f"{how}; {note}")
    if isinstance(exc, distributed.KilledWorker):
        first = str(exc).split(". ")[0]
        return RunStopped(f"dask workers kept dying: {first}; {note}")
    if kept:
        # exc.add_note() from Python 3.11 on; the CLI prints notes on the error's line.
        exc.__notes__ = [*getattr(exc, "__notes__", []), note]
    return None
