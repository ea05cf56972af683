"""Run the geosr executable for a Processing algorithm: progress, cancel, one-line errors.

No QGIS imports: ``feedback`` is anything with QgsProcessingFeedback's ``setProgress``,
``isCanceled``, ``pushInfo`` and ``pushConsoleInfo``, so this module is tested without QGIS.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import threading

__all__ = ["GeosrFailed", "GeosrCanceled", "find_executable", "run_geosr", "progress_of"]

# tqdm's bar: "upscale:  42%|####      | 5/12 [00:03<00:05, ...]"
_PROGRESS = re.compile(r"(\d+)/(\d+) \[")
_POLL_SECONDS = 0.1


class GeosrFailed(Exception):
    """geosr exited with an error; the message is geosr's own one-line message."""


class GeosrCanceled(Exception):
    """The user canceled; geosr stopped and wrote nothing at the output."""


def find_executable(setting: str | None) -> str:
    """The geosr executable: the provider setting, else ``$GEOSR_EXECUTABLE``, else ``geosr`` on PATH.

    Raises
    ------
    GeosrFailed
        None of them names an executable file, with what to do about it.
    """
    for candidate in (setting, os.environ.get("GEOSR_EXECUTABLE"), shutil.which("geosr")):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    where = f" ({setting!r} is not an executable file)" if setting else ""
    raise GeosrFailed(
        "geosr executable not found" + where + ": install geosr in its own environment and set its path "
        "under Settings > Options > Processing > Providers > geosr (e.g. /path/to/geosr/.venv/bin/geosr)"
    )


def progress_of(text: str) -> float | None:
    """The last percentage a tqdm bar shows in ``text``, or None."""
    found = _PROGRESS.findall(text)
    if not found:
        return None
    done, total = map(int, found[-1])
    return 100.0 * done / total if total else None


def _read_into(stream, sink: queue.Queue) -> None:
    for chunk in iter(lambda: stream.read1(4096), b""):
        sink.put(chunk.decode("utf-8", "replace"))
    sink.put(None)


def run_geosr(executable: str, args: list[str], feedback) -> None:
    """Run ``executable args``, relaying progress and log lines to ``feedback``.

    Cancel sends SIGTERM: geosr then stops like after Ctrl-C, keeps its finished cells for
    ``--resume`` and writes nothing at the output.

    Raises
    ------
    GeosrCanceled
        ``feedback.isCanceled()`` became true; geosr has exited.
    GeosrFailed
        geosr exited with an error: the message is its ``Error: ...`` line.
    """
    feedback.pushInfo("running: " + subprocess.list2cmdline([executable, *args]))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([executable, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    chunks: queue.Queue = queue.Queue()
    threading.Thread(target=_read_into, args=(proc.stdout, chunks), daemon=True).start()
    canceled = False
    log, pending = [], ""
    while True:
        if feedback.isCanceled() and not canceled:
            canceled = True
            proc.send_signal(signal.SIGTERM)
        try:
            chunk = chunks.get(timeout=_POLL_SECONDS)
        except queue.Empty:
            continue
        if chunk is None:
            break
        pending += chunk
        *lines, pending = re.split(r"[\r\n]", pending)
        percent = progress_of(chunk)
        if percent is not None:
            feedback.setProgress(percent)
        for line in lines:
            if line.strip() and progress_of(line) is None:  # bar redraws are not log lines
                log.append(line)
                feedback.pushConsoleInfo(line)
    if pending.strip():
        log.append(pending)
    code = proc.wait()
    proc.stdout.close()
    if canceled and code != 0:
        raise GeosrCanceled("canceled: geosr stopped and wrote nothing at the output")
    # canceled while the output was being committed: geosr finishes the commit (exit 0), and the
    # output is whole - loaded, not reported as "wrote nothing"
    if code != 0:
        errors = [line for line in log if line.startswith("Error:")]
        raise GeosrFailed(errors[-1] if errors else (log[-1] if log else f"geosr exited with status {code}"))
