"""Failures that are fast and one line: cluster mistakes, a stop or a full disk in the COG pass,
devices, file names and --co ranges (issue 26 items 4, 5, 7; issue 27 item 4).

Every case runs through the real command line on small synthetic rasters and checks the exit
status, that stderr is ONE line naming the problem, how long it took where the issue said
it hung, and that nothing is left at OUTPUT nor beside it but a resumable work folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import dask
import distributed
import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner

import geosr
from geosr.cli import cli
from geosr.errors import InputError
from geosr.stoppable_gdal import GdalPass
from geosr.validation import validate_output
from tests.rasters import texture, uint8_scene, write_raster

RUN = ["--scale", "2", "--model", "bicubic", "--captioner", "none", "-q"]
SCHEDULER = "a dask scheduler, e.g. tcp://host:8786"
ENV = dict(os.environ, OMP_NUM_THREADS="1")
GEOSR = str(Path(sys.executable).with_name("geosr"))  # the installed command


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def timed(*args):
    start = time.monotonic()
    res = invoke(*args)
    return res, time.monotonic() - start


def error_line(stderr: str) -> str:
    """The one line of ``stderr`` (fails when there are more)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def scene(tmp_path):
    uint8_scene(tmp_path / "in.tif", 64, 80)
    return tmp_path


# --- issue 26 item 4, issue 27 item 4: cluster mistakes, a quiet local cluster ----------------

@contextlib.contextmanager
def http_server():
    """An HTTP server (it says nothing until asked, like dask's dashboard)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"tcp://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def tcp_server(greeting: bytes | None):
    """A server that sends ``greeting`` on each connection (None: closes it at once)."""
    listener = socket.create_server(("127.0.0.1", 0))
    held = []

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            if greeting is None:
                conn.close()
            else:
                conn.sendall(greeting)
                held.append(conn)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"tcp://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
        for conn in held:
            conn.close()


@contextlib.contextmanager
def nothing_listening():
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
    yield f"tcp://127.0.0.1:{port}"


# case: (the address, extra arguments, words of the message)
ADDRESSES = {
    "nothing listens": (nothing_listening, [], "Connection refused"),
    "an HTTP server": (http_server, ["--connect-timeout", "1"], "said nothing within 1 s"),
    "another protocol": (lambda: tcp_server(b"SSH-2.0-OpenSSH_9.6\r\n"), [], "answered 'SSH-2.0-'"),
    "a server that hangs up": (lambda: tcp_server(None), [], "closed the connection without the greeting"),
    "an http:// address": (lambda: contextlib.nullcontext("http://127.0.0.1:8787"), [], "unknown address scheme 'http'"),
}


@pytest.mark.parametrize("case", ADDRESSES, ids=list(ADDRESSES))
def test_a_wrong_address_fails_in_seconds_in_one_line(case, scene):
    server, extra, words = ADDRESSES[case]
    with server() as address:
        res, seconds = timed("upscale", scene / "in.tif", scene / "out.tif", *RUN, "--address", address, *extra)
    line = error_line(res.stderr)
    assert res.exit_code == 3, res.stderr
    assert address in line and words in line and SCHEDULER in line, line
    assert seconds < 5, seconds
    assert names(scene) == ["in.tif"]


def test_local_workers_below_one_is_refused_at_once(scene):
    res, seconds = timed("upscale", scene / "in.tif", scene / "out.tif", *RUN, "--local-workers", "-3")
    assert res.exit_code == 2 and "--local-workers" in error_line(res.stderr) and "x>=1" in error_line(res.stderr)
    assert seconds < 5
    with pytest.raises(InputError, match="at least 1, got -3"):
        geosr.upscale_to_file(scene / "in.tif", scene / "out.tif", scale=2, model="bicubic", captioner="none", local_workers=-3)
    assert names(scene) == ["in.tif"]


def test_the_api_takes_the_connect_timeout_from_dask_config(scene):
    start = time.monotonic()
    with http_server() as address, dask.config.set({"geosr.connect-timeout": "1s"}):
        with pytest.raises(InputError, match="said nothing within 1 s"):
            geosr.upscale_to_file(scene / "in.tif", scene / "out.tif", scale=2, model="bicubic", captioner="none",
                          address=address)
    assert time.monotonic() - start < 5
    assert names(scene) == ["in.tif"]


def test_a_real_scheduler_passes_the_check(scene):
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
                                  dashboard_address=None) as cluster:
        res = invoke("upscale", scene / "in.tif", scene / "out.tif", *RUN, "--address", cluster.scheduler_address)
    assert res.exit_code == 0 and res.stderr == "", res.stderr
    assert names(scene) == ["in.tif", "out.captions.geojson", "out.tif"]


# what the worker that described the model found, where the others find otherwise
ODD_FACTS = {
    "device": ({"runs_on": "cuda (NVIDIA H100 80GB HBM3), bfloat16"},
               "runs the model on None, the run on cuda (NVIDIA H100 80GB HBM3), bfloat16"),
    # a shipped model retrained under its name: the same code, other weights
    "model files": ({"fingerprint": "0123456789abcdef (lr consistency 1)"},
                    "loads model 'bicubic' from other files (None) than the run (0123456789abcdef"),
    "captioner files": ({"captioner_files": "files 0123456789abcdef"},
                        "loads captioner 'none' from other files (None) than the run (files 0123456789abcdef)"),
}


@pytest.mark.parametrize("differs", ["code", "GDAL settings", *ODD_FACTS])
def test_a_worker_unlike_the_run_refuses_its_tiles_in_one_line(differs, scene, monkeypatch):
    """A cluster's odd machine - an older geosr, another GPU model, other weights under the model's
    name - would write other pixels into an output that exits 0: each worker checks itself against
    the run's identity and refuses (exit 9)."""
    from geosr import engine

    if differs == "code":  # the client's digest, as an older install on the client would have it
        monkeypatch.setattr(engine, "code_digest", lambda: "0123456789abcdef")
        words = "runs geosr code"
    elif differs == "GDAL settings":  # the client's environment ignores side files; the workers' does not
        monkeypatch.setattr(engine, "gdal_read_settings", lambda: "GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR")
        words = "reads with the GDAL settings 'none', the run with 'GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR'"
    else:
        odd, words = ODD_FACTS[differs]
        facts = engine._model_facts_on
        monkeypatch.setattr(engine, "_model_facts_on", lambda client, config: dataclasses.replace(
            facts(client, config), **odd))
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
                                  dashboard_address=None) as cluster:
        res = invoke("upscale", scene / "in.tif", scene / "out.tif", *RUN, "--address", cluster.scheduler_address)
    assert res.exit_code == 9, res.output
    line = error_line(res.stderr)
    assert words in line and "worker tcp://" in line, line
    assert names(scene) == ["in.tif"]  # no cell was finished: nothing kept


@pytest.mark.parametrize("workers", [[], ["--local-workers", "2"]], ids=["threads", "local workers"])
def test_a_default_run_prints_only_its_progress_and_result(scene, workers):
    """No 'Port 8787 is already in use' nor 'unclosed socket' when 8787 is taken (issue 27 item 4)."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(socket.create_server(("0.0.0.0", 8787)))
        except OSError:
            pass  # taken already: so much the better
        proc = subprocess.run(
            [GEOSR, "upscale", "in.tif", "out.tif", *RUN[:-1], *workers],
            cwd=scene, env=ENV, capture_output=True, text=True, timeout=120,
        )
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in re.split(r"[\r\n]+", proc.stderr) if line.strip()]
    assert lines[-1].startswith(f"wrote {scene / 'out.tif'} (") and lines[0].startswith("upscale:"), proc.stderr
    assert all(line.startswith("upscale:") for line in lines[:-1]), proc.stderr


# --- issue 26 items 5 and 7: a stop or a full disk during the COG pass ----------------------

def work_folders(folder: Path) -> list[Path]:
    return list(folder.glob(".out.tif.geosr-run-*"))


def assert_stopped_resumable(folder: Path, line: str) -> None:
    """One line saying how to resume, nothing at OUTPUT, and a work folder with no partial COG."""
    assert line.startswith("Error: stopped by SIGTERM;") and "rerun the same command with --resume" in line, line
    assert not (folder / "out.tif").exists() and not (folder / "out.captions.geojson").exists()
    (work,) = work_folders(folder)
    assert not {"out.tif", "tiled.tif"} & set(names(work)), names(work)
    assert not [name for name in names(work) if name.endswith(".tmp")], names(work)


def test_sigterm_in_the_cog_pass_stops_it_within_about_a_second(tmp_path):
    # LZMA makes the COG pass of this 1600 x 1600 output several seconds long
    src = uint8_scene(tmp_path / "in.tif", 800, 800)
    args = ["--co", "COMPRESS=LZMA"]
    proc = subprocess.Popen([GEOSR, "upscale", "in.tif", "out.tif", *RUN, *args],
                            cwd=tmp_path, env=ENV, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    # the writer describes the work raster in work.vrt right before its first GDAL call
    while not any((work / "work.vrt").exists() for work in work_folders(tmp_path)):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the COG pass did not start"
        time.sleep(0.02)
    time.sleep(0.5)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=30)
    # the stop itself takes ~0.2 s; the rest is Python (and torch) ending the process, slow on a
    # loaded runner: the bound tells seconds from the minutes of a COG pass run to its end
    assert time.monotonic() - sent < 10
    stderr = proc.stderr.read()
    assert code == 8, stderr
    assert_stopped_resumable(tmp_path, error_line(stderr))
    res = invoke("upscale", src, tmp_path / "out.tif", *RUN, *args, "--resume")
    assert res.exit_code == 0, res.stderr
    assert names(tmp_path) == ["in.tif", "out.captions.geojson", "out.tif"]
    assert validate_output(tmp_path / "out.tif", src).ok


def stop_in(monkeypatch, step: str, when: str = "during") -> None:
    """SIGTERM this process in ``step`` of the COG pass (a file it writes, or "overviews").

    ``during``: at the step's first progress callback, as a signal would come while GDAL
    works; ``after``: once the step has returned.
    """
    current = []
    copy, overviews, go_on = GdalPass.create_copy, GdalPass.overviews_and_statistics, GdalPass._go_on

    def create_copy(self, src, dst, *args):
        current.append(dst.name)
        copy(self, src, dst, *args)
        if when == "after" and dst.name == step:
            os.kill(os.getpid(), signal.SIGTERM)

    def overviews_and_statistics(self, *args):
        current.append("overviews")
        overviews(self, *args)

    def progress(self, complete, *args):
        if when == "during" and current and current[-1] == step and not self._signals:
            os.kill(os.getpid(), signal.SIGTERM)  # noted by the pass's handler as soon as Python runs
        return go_on(self, complete, *args)

    monkeypatch.setattr(GdalPass, "create_copy", create_copy)
    monkeypatch.setattr(GdalPass, "overviews_and_statistics", overviews_and_statistics)
    monkeypatch.setattr(GdalPass, "_go_on", progress)


STEPS = {
    "tiled copy": ("tiled.tif", []),
    "overviews and statistics": ("overviews", []),
    "final copy": ("out.tif", []),
    "COG driver": ("out.tif", ["--co", "COMPRESS=ZSTD"]),
}


@pytest.mark.parametrize("step", STEPS, ids=list(STEPS))
def test_a_stop_in_any_step_of_the_cog_pass_resumes_to_the_same_bytes(step, tmp_path, monkeypatch):
    target, args = STEPS[step]
    src = uint8_scene(tmp_path / "in.tif", 300, 280)  # 600 x 560 out: two overview levels
    assert invoke("upscale", src, tmp_path / "ref.tif", *RUN, *args).exit_code == 0
    with monkeypatch.context() as patch:
        stop_in(patch, target)
        res, seconds = timed("upscale", src, tmp_path / "out.tif", *RUN, *args)
    assert res.exit_code == 8, res.stderr
    assert_stopped_resumable(tmp_path, error_line(res.stderr))
    res = invoke("upscale", src, tmp_path / "out.tif", *RUN, *args, "--resume")
    assert res.exit_code == 0, res.stderr
    assert (tmp_path / "out.tif").read_bytes() == (tmp_path / "ref.tif").read_bytes()
    assert not work_folders(tmp_path)


def test_a_stop_once_the_cog_is_written_keeps_it(tmp_path, monkeypatch):
    src = uint8_scene(tmp_path / "in.tif", 300, 280)
    assert invoke("upscale", src, tmp_path / "ref.tif", *RUN).exit_code == 0
    stop_in(monkeypatch, "out.tif", when="after")
    res = invoke("upscale", src, tmp_path / "out.tif", *RUN)
    assert res.exit_code == 0 and res.stderr == "", res.stderr
    assert (tmp_path / "out.tif").read_bytes() == (tmp_path / "ref.tif").read_bytes()
    assert not work_folders(tmp_path)


def disk_full_in(monkeypatch, name: str) -> None:
    """The COG pass's file ``name`` in the work folder is /dev/full: every write of it is ENOSPC."""
    from geosr.writer import WorkRaster

    to_cog = WorkRaster.to_cog

    def full(self, dst, *args):
        (dst.parent / name).symlink_to("/dev/full")
        return to_cog(self, dst, *args)

    monkeypatch.setattr(WorkRaster, "to_cog", full)


@pytest.mark.parametrize("name, args", [("tiled.tif", []), ("out.tif", ["--co", "COMPRESS=ZSTD"])],
                         ids=["default pass", "COG driver"])
def test_a_full_disk_in_the_cog_pass_is_one_line_and_resumable(name, args, tmp_path, monkeypatch, capfd):
    src = uint8_scene(tmp_path / "in.tif", 300, 280)
    assert invoke("upscale", src, tmp_path / "ref.tif", *RUN, *args).exit_code == 0
    capfd.readouterr()
    with monkeypatch.context() as patch:
        disk_full_in(patch, name)
        res = invoke("upscale", src, tmp_path / "out.tif", *RUN, *args)
    (work,) = work_folders(tmp_path)
    line = error_line(res.stderr)
    assert res.exit_code == 6, res.stderr
    assert line.startswith(f"Error: no space left on the device of {work} while writing {name};"), line
    assert "--resume" in line
    assert capfd.readouterr().err == ""  # libtiff printed its complaints into the message, not on stderr
    assert not (tmp_path / "out.tif").exists() and not {"out.tif", "tiled.tif"} & set(names(work))
    res = invoke("upscale", src, tmp_path / "out.tif", *RUN, *args, "--resume")
    assert res.exit_code == 0, res.stderr
    assert (tmp_path / "out.tif").read_bytes() == (tmp_path / "ref.tif").read_bytes()


# --- issue 26 item 7: devices, file names and --co ranges, checked up front ------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
@pytest.mark.parametrize("device, words", [
    ("cuda", "is built without CUDA" if not torch.backends.cuda.is_built() else "sees no CUDA device"),
    ("gpu", "not a torch device; use cpu, cuda, cuda:N or mps"),
], ids=["cuda", "no such device"])
def test_a_device_torch_cannot_use_is_refused_up_front(device, words, scene):
    res, seconds = timed("upscale", scene / "in.tif", scene / "out.tif", *RUN, "--device", device)
    line = error_line(res.stderr)
    assert res.exit_code == 3 and f"--device {device}: " in line and words in line, line
    assert seconds < 5
    with pytest.raises(InputError, match=words):
        geosr.upscale_to_file(scene / "in.tif", scene / "out.tif", scale=2, captioner="none", device=device)
    assert names(scene) == ["in.tif"]


LATIN1 = os.fsdecode(b"sc\xe8ne.tif")  # what Python makes of a Latin-1 file name


@pytest.mark.parametrize("which", ["input", "output", "found in a folder"])
def test_a_file_name_that_is_not_utf8_is_one_line(which, scene):
    if which == "input":
        os.link(scene / "in.tif", scene / LATIN1)
        args = [scene / LATIN1, scene / "out.tif"]
    elif which == "found in a folder":  # the CLI checked only the names it was given
        (scene / "tiles").mkdir()
        os.link(scene / "in.tif", scene / "tiles" / LATIN1)
        args = [scene / "tiles", scene / "out.tif"]
    else:
        args = [scene / "in.tif", scene / LATIN1]
    before = names(scene)
    res, seconds = timed("upscale", *args, *RUN)
    line = error_line(res.stderr)
    assert res.exit_code == 3 and "sc\\xe8ne.tif: the file name is not UTF-8" in line, line
    assert seconds < 5 and names(scene) == before


@pytest.mark.parametrize("options, words", [
    (["QUALITY=500"], "--co QUALITY=500: QUALITY must be 1 to 100"),
    (["LEVEL=99"], "--co LEVEL=99: LEVEL must be 1 to 12 with COMPRESS=DEFLATE"),
    (["COMPRESS=ZSTD", "LEVEL=23"], "--co LEVEL=23: LEVEL must be 1 to 22 with COMPRESS=ZSTD"),
    (["NUM_THREADS=-5"], "--co NUM_THREADS=-5: NUM_THREADS takes a number of threads of at least 1, or ALL_CPUS"),
    (["MAX_Z_ERROR=-1"], "--co MAX_Z_ERROR=-1: MAX_Z_ERROR must be at least 0"),
    (["TARGET_SRS=EPSG:4326"], "--co TARGET_SRS=EPSG:4326: the COG driver's TARGET_SRS reprojects or re-grids"),
    (["TILING_SCHEME=GoogleMapsCompatible"], "TILING_SCHEME reprojects or re-grids the output"),
    (["RES=10"], "reproject the output afterwards (gdalwarp)"),
    # the predictor in the message is geosr's default, not the user's: say so
    (["NBITS=4"], "--co NBITS=4 beside geosr's defaults COMPRESS=DEFLATE PREDICTOR=YES"),
], ids=["QUALITY", "LEVEL", "ZSTD LEVEL", "NUM_THREADS", "MAX_Z_ERROR", "TARGET_SRS", "TILING_SCHEME", "RES",
        "NBITS"])
def test_creation_options_out_of_range_are_refused(options, words, scene):
    co = [arg for option in options for arg in ("--co", option)]
    res, seconds = timed("upscale", scene / "in.tif", scene / "out.tif", *RUN, *co)
    assert res.exit_code == 3 and words in error_line(res.stderr), res.stderr
    assert seconds < 5 and names(scene) == ["in.tif"]


@pytest.mark.parametrize("predictor", ["NO", "STANDARD", "FLOATING_POINT", "YES"])
def test_every_cog_predictor_is_taken(predictor, scene):
    """Found by review: PREDICTOR=NO, STANDARD or FLOATING_POINT passed the --co check and then
    crashed the disk-space estimate (exit 1), which tried them on the GTiff driver."""
    dtype = "float32" if predictor == "FLOATING_POINT" else "uint8"
    src = scene / "in.tif"
    if dtype == "float32":
        with rasterio.open(src) as ds:
            data, profile = ds.read().astype("float32"), ds.profile
        src = scene / "in_f.tif"
        with rasterio.open(src, "w", **{**profile, "dtype": "float32"}) as ds:
            ds.write(data)
    res = invoke("upscale", src, scene / "out.tif", *RUN, "--co", f"PREDICTOR={predictor}", "--co", "NBITS=8"
                 if predictor == "NO" else "LEVEL=6")
    assert res.exit_code == 0, res.stderr


@pytest.mark.parametrize("options, dtype, refused", [
    (["COMPRESS=JPEG"], "uint8", True),
    (["COMPRESS=WEBP"], "uint8", True),
    (["COMPRESS=LERC", "MAX_Z_ERROR=3"], "uint8", True),
    (["COMPRESS=LERC", "MAX_Z_ERROR=10"], "uint16", True),  # found by review: dark water at 1-19 DN turned no-data
    (["COMPRESS=WEBP", "QUALITY=100"], "uint8", False),  # lossless WEBP
    (["COMPRESS=LERC", "MAX_Z_ERROR=0.001"], "float32", False),  # nodata -9999, far from every value
], ids=["JPEG", "WEBP", "LERC lossy", "LERC lossy uint16", "WEBP lossless", "LERC far from nodata"])
def test_lossy_compression_that_would_move_nodata_is_refused(options, dtype, refused, tmp_path):
    """Found by review: --co COMPRESS=JPEG on a scene with nodata 0 turned 99 no-data pixels valid
    (with junk) and 25 valid ones no-data, exit 0; a trial COG now says whether the codec keeps them."""
    nodata = -9999 if dtype == "float32" else 0
    data = texture(3, 64, 80, 0).astype(dtype) if dtype == "float32" else (texture(3, 64, 80, 0) * 250 + 3).astype(dtype)
    data[:, :10, :12] = nodata
    data[:, 30:33, 40:60] = data[:, 30:33, 40:60] if dtype == "float32" else 1  # valid, next to the nodata value
    src = write_raster(tmp_path / "in.tif", data, nodata=nodata)
    co = [arg for option in options for arg in ("--co", option)]
    res = invoke("upscale", src, tmp_path / "out.tif", *RUN, *co)
    if refused:
        assert res.exit_code == 3 and "this compression is lossy and the output has a nodata value" in error_line(res.stderr)
        assert names(tmp_path) == ["in.tif"]
        return
    assert res.exit_code == 0, res.stderr
    assert invoke("upscale", src, tmp_path / "plain.tif", *RUN).exit_code == 0
    with rasterio.open(tmp_path / "out.tif") as out, rasterio.open(tmp_path / "plain.tif") as plain:
        np.testing.assert_array_equal(out.read_masks(), plain.read_masks())


def test_creation_options_in_range_are_taken(scene):
    co = ["--co", "COMPRESS=ZSTD", "--co", "LEVEL=22", "--co", "NUM_THREADS=2"]
    res = invoke("upscale", scene / "in.tif", scene / "out.tif", *RUN, *co)
    assert res.exit_code == 0, res.stderr
