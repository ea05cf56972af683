"""Runs that survive: the bad-input matrix, one run per OUTPUT, resume after a kill, lost workers.

Every failure must end in ONE line on stderr with a stable exit code, leave nothing at
OUTPUT and no files of its own beside it, and keep a pre-existing OUTPUT and its captions
byte for byte. A stopped run must resume to the same bytes as an uninterrupted one.
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from dataclasses import replace

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from click.testing import CliRunner

import geosr.diskspace
import geosr.engine
import geosr.tasks as tasks
from geosr.cli import cli
from geosr.config import RunConfig, TileSpec
from geosr.engine import upscale_scene
from geosr.errors import WriteError
from geosr.output_lock import OutputLock
from geosr.journal import RunJournal, WorkFolder
from geosr.resumable import StoppedRunWarning, open_journal, run_identity
from geosr.scene import expand_inputs
from geosr.validation import validate_output
from geosr.writer import WorkRaster
from tests.rasters import texture, uint8_scene, write_raster

RUN = ["--scale", "2", "--model", "bicubic", "--captioner", "none", "--tile", "32", "--overlap", "8", "-q"]
OLD_OUTPUT, OLD_CAPTIONS = b"old output", b"old captions"


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def error_lines(res) -> list[str]:
    return [line for line in res.stderr.splitlines() if line.strip()]


def corrupt_tile(src: Path, dst: Path, block: str = "1_0", compress: str = "deflate", keep: float = 0.0) -> Path:
    """A tiled copy of ``src`` whose 32 px block ``block`` ("col_row") holds garbage (after the
    first ``keep`` of its bytes: a JPEG block that keeps its header decodes, to garbage)."""
    with rasterio.open(src) as ds:
        prof = ds.profile
        prof.update(tiled=True, blockxsize=32, blockysize=32, compress=compress)
        with rasterio.open(dst, "w", **prof) as out:
            out.write(ds.read())
    with rasterio.open(dst) as ds:
        offset = int(ds.get_tag_item(f"BLOCK_OFFSET_{block}", "TIFF", bidx=1))
        size = int(ds.get_tag_item(f"BLOCK_SIZE_{block}", "TIFF", bidx=1))
    raw = bytearray(dst.read_bytes())
    offset, size = offset + int(size * keep), size - int(size * keep)
    raw[offset : offset + size] = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(raw))
    return dst


@pytest.fixture
def scene(tmp_path):
    """Inputs good and bad, and an OUTPUT (with captions) from an earlier run."""
    good = uint8_scene(tmp_path / "in.tif", 64, 80)
    with open(good, "rb") as f:
        full = f.read()
    (tmp_path / "truncated.tif").write_bytes(full[: len(full) * 2 // 3])
    corrupt_tile(good, tmp_path / "corrupt.tif")
    # a block neither the classes sample (4 windows of 128 px a side) nor the stretch (the central 512 px) reads
    corrupt_tile(uint8_scene(tmp_path / "wide.tif", 40, 1200), tmp_path / "corrupt_wide.tif", block="5_0")
    # a JPEG block libjpeg decodes to garbage with only a warning ("Corrupt JPEG data"): exit 0 before
    corrupt_tile(uint8_scene(tmp_path / "wide_jpeg.tif", 40, 1200), tmp_path / "corrupt_jpeg.tif", block="5_0",
                 compress="jpeg", keep=0.25)
    (tmp_path / "not_a_raster.tif").write_text("hello")
    write_raster(tmp_path / "complex.tif", (texture(1, 20, 20) * 100).astype("complex64"))
    write_raster(tmp_path / "u16.tif", (texture(3, 40, 40) * 4000).astype("uint16"))
    (tmp_path / "aoi_not_json.geojson").write_text("{not json")
    (tmp_path / "aoi_list.geojson").write_text("[1, 2]")
    (tmp_path / "aoi_bad_coords.geojson").write_text(json.dumps({"type": "Polygon", "coordinates": [[["a", "b"]]]}))
    (tmp_path / "aoi_bad_crs.geojson").write_text(json.dumps({
        "type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]],
        "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::999999"}},
    }))
    (tmp_path / "out.tif").write_bytes(OLD_OUTPUT)
    (tmp_path / "out.captions.geojson").write_bytes(OLD_CAPTIONS)
    return tmp_path


def _no_space(request, monkeypatch, folder):
    class Usage:
        free = 1000

    monkeypatch.setattr(geosr.diskspace.shutil, "disk_usage", lambda path: Usage())


def _locked(request, monkeypatch, folder):
    lock = OutputLock(folder / "out.tif").__enter__()
    request.addfinalizer(lambda: lock.__exit__(None, None, None))


def _stopped_run_with_other_settings(request, monkeypatch, folder):
    earlier = WorkFolder(folder / ".out.tif.geosr-run-earlier")
    earlier.path.mkdir()
    RunJournal.start(earlier, run_identity(expand_inputs([folder / "in.tif"]), cfg(tiles=TileSpec(64, 8))))


# case id: (arguments after INPUT OUTPUT-or-None, exit code, words in the message, setup)
MATRIX = {
    "missing input": (["missing.tif", "out.tif", "--overwrite"], 3, "does not exist", None),
    "not a raster": (["not_a_raster.tif", "out.tif", "--overwrite"], 3, "cannot open", None),
    "truncated input": (["truncated.tif", "out.tif", "--overwrite"], 3, "cannot read", None),
    "corrupt tile": (["corrupt.tif", "out.tif", "--overwrite"], 3, "corrupt.tif, window col 0 row 0", None),
    "corrupt tile, met mid-run": (["corrupt_wide.tif", "out.tif", "--overwrite"], 3,
                                  "corrupt_wide.tif, window col 120 row 0 size 48x28, band 1: ZIPDecode", None),
    "corrupt JPEG tile, decoded with a warning": (["corrupt_jpeg.tif", "out.tif", "--overwrite"], 3,
                                                  "corrupt_jpeg.tif, window col 120 row 0 size 48x28, band 1: JPEGLib:Corrupt JPEG data", None),
    "complex dtype": (["complex.tif", "out.tif", "--overwrite"], 3, "complex64 pixels", None),
    "unknown --co": (["in.tif", "out.tif", "--overwrite", "--co", "FOO=1"], 3, "no option FOO", None),
    "bad --co value": (["in.tif", "out.tif", "--overwrite", "--co", "COMPRESS=FOO"], 3, "COMPRESS takes one of", None),
    "--co abc blocksize": (["in.tif", "out.tif", "--overwrite", "--co", "BLOCKSIZE=abc"], 3, "takes an integer", None),
    "--co JPEG on uint16": (["u16.tif", "out.tif", "--overwrite", "--co", "COMPRESS=JPEG"], 3, "not allowed for JPEG", None),
    "AOI not JSON": (["in.tif", "out.tif", "--overwrite", "--aoi", "aoi_not_json.geojson"], 3, "as GeoJSON", None),
    "AOI a list": (["in.tif", "out.tif", "--overwrite", "--aoi", "aoi_list.geojson"], 3, "not a GeoJSON object", None),
    "AOI bad coordinates": (["in.tif", "out.tif", "--overwrite", "--aoi", "aoi_bad_coords.geojson"], 3, "invalid geometry", None),
    "AOI bad crs": (["in.tif", "out.tif", "--overwrite", "--aoi", "aoi_bad_crs.geojson"], 3, "crs member", None),
    "unknown model": (["in.tif", "out.tif", "--overwrite", "--model", "nosuchmodel"], 3, "unknown model", None),
    # found by the pipeline at the first tile before (exit 1, "unexpected error")
    "--steps 0": (["in.tif", "out.tif", "--overwrite", "--steps", "0"], 3, "--steps must be a whole number >= 1", None),
    "--guidance nan": (["in.tif", "out.tif", "--overwrite", "--guidance", "nan"], 3,
                       "--guidance must be a finite number >= 0, got nan", None),
    "--guidance -1": (["in.tif", "out.tif", "--overwrite", "--guidance", "-1"], 3, "--guidance must be", None),
    "bad --bands": (["in.tif", "out.tif", "--overwrite", "--bands", "x"], 2, "comma-separated", None),
    "OUTPUT is the input": (["in.tif", "in.tif", "--overwrite"], 4, "is also an input", None),
    "OUTPUT exists": (["in.tif", "out.tif"], 4, "out.tif exists; pass --overwrite", None),
    "output folder missing": (["in.tif", "nodir/out.tif"], 4, "does not exist", None),
    "another run holds OUTPUT": (["in.tif", "out.tif", "--overwrite"], 5, "being written by another geosr run (pid", _locked),
    "disk full": (["in.tif", "out.tif", "--overwrite"], 6, "not enough disk space", _no_space),
    "--resume, other settings": (["in.tif", "out.tif", "--overwrite", "--resume"], 7,
                                 "made differently: --tile was '64', now '32'. Rerun", _stopped_run_with_other_settings),
}


@pytest.mark.parametrize("case", MATRIX, ids=list(MATRIX))
def test_bad_input_matrix(case, scene, monkeypatch, request):
    args, code, words, setup = MATRIX[case]
    monkeypatch.chdir(scene)
    if setup:
        setup(request, monkeypatch, scene)
    before = sorted(p.name for p in scene.iterdir())
    res = invoke("upscale", *RUN, *args)
    lines = error_lines(res)
    assert res.exit_code == code, (res.exit_code, res.stderr)
    assert len(lines) == 1 and words in lines[0], res.stderr
    assert (scene / "out.tif").read_bytes() == OLD_OUTPUT
    assert (scene / "out.captions.geojson").read_bytes() == OLD_CAPTIONS
    assert sorted(p.name for p in scene.iterdir()) == before  # nothing left, nothing taken away


def test_existing_captions_are_not_replaced_without_overwrite(scene):
    (scene / "out.tif").unlink()
    res = invoke("upscale", scene / "in.tif", scene / "out.tif", *RUN)
    assert res.exit_code == 4 and "out.captions.geojson exists" in res.stderr
    assert (scene / "out.captions.geojson").read_bytes() == OLD_CAPTIONS and not (scene / "out.tif").exists()


def cfg(**kw):
    base = dict(scale=2, model="bicubic", captioner="none", tiles=TileSpec(32, 8), progress=False, batch_size=1)
    base.update(kw)
    return RunConfig(**base)


def test_disk_full_mid_run_keeps_cells_and_resumes_to_the_same_bytes(tmp_path, monkeypatch):
    src = uint8_scene(tmp_path / "in.tif", 96, 96)
    real, writes = WorkRaster._write_rows, [0]

    def count(self, *args):
        writes[0] += 1
        return real(self, *args)

    monkeypatch.setattr(WorkRaster, "_write_rows", count)
    upscale_scene([src], tmp_path / "ref.tif", cfg())
    full, writes[0] = writes[0], 0

    def fill_up(self, *args):
        writes[0] += 1
        if writes[0] > full // 2:  # the disk fills half way through the run
            raise WriteError("no space left on the device (simulated)") from OSError(errno.ENOSPC, "full")
        return real(self, *args)

    monkeypatch.setattr(WorkRaster, "_write_rows", fill_up)
    with pytest.raises(WriteError, match="no space left") as info:
        upscale_scene([src], tmp_path / "out.tif", cfg())
    assert "--resume" in info.value.__notes__[0]
    assert not (tmp_path / "out.tif").exists()
    monkeypatch.setattr(WorkRaster, "_write_rows", real)
    # A run without --resume leaves the stopped run's folder alone and reports its size.
    with OutputLock(tmp_path / "out.tif"), pytest.warns(StoppedRunWarning, match=r"KiB\): add --resume"):
        open_journal(tmp_path / "out.tif", {}, resume=False).folder.remove()
    report = upscale_scene([src], tmp_path / "out.tif", cfg(resume=True))
    assert report.tiles_resumed > 0
    assert (tmp_path / "out.tif").read_bytes() == (tmp_path / "ref.tif").read_bytes()
    assert (tmp_path / "out.captions.geojson").read_text() == (tmp_path / "ref.captions.geojson").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["in.tif", "ref.tif", "ref.captions.geojson", "out.tif", "out.captions.geojson"]
    )


# A geosr process whose tiles take 0.1 s each (sleep before the real work), so there is
# time to reach it mid-run; the pixels are those of a plain run.
SLOW_GEOSR = textwrap.dedent(
    """
    import sys, threading, time
    import geosr.journal, geosr.tasks as tasks
    real = tasks.process_batch
    tasks.one_at_a_time = threading.Lock()  # on a module: dask pickles the task, a module by name
    def slow(job):
        with tasks.one_at_a_time:  # ~3 s on any number of cores (the cluster runs cores / 2 threads)
            time.sleep(0.1 * len(job.tiles))
        return real(job)
    tasks.process_batch = slow
    geosr.journal.COMMIT_SECONDS = 0.0  # cells journalled as they finish, not only at the end
    from geosr.cli import cli
    cli(sys.argv[1:], prog_name="geosr")
    """
)
SLOW_SCENE = dict(height=160, width=192)  # 30 tiles of 32 px: about 3 s of sleeping


def start_slow_run(folder: Path, *args) -> subprocess.Popen:
    script = folder / "slow_geosr.py"
    script.write_text(SLOW_GEOSR)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1]))
    return subprocess.Popen(
        [sys.executable, str(script), "upscale", *map(str, args), *RUN, "--batch-size", "1"],
        cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_for(condition, proc: subprocess.Popen, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"geosr ended early ({proc.returncode}): {proc.stderr.read()}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError("timed out waiting for geosr")
        time.sleep(0.05)


def journal_has_cells(folder: Path, output: str = "out.tif") -> bool:
    return any(j.stat().st_size > 0 for j in folder.glob(f".{output}.geosr-run-*/journal.jsonl"))


def test_a_run_on_a_locked_output_is_refused_before_its_model_loads(tmp_path, monkeypatch):
    """The lock was taken after the model loaded: a second run was refused ~9 s in (the default
    model), or - when the first run finished meanwhile - not at all."""
    import geosr.engine as engine
    from geosr.errors import OutputLockedError

    src = uint8_scene(tmp_path / "in.tif", 24, 24)

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded for a run on a locked OUTPUT")

    monkeypatch.setattr(engine, "_model_facts_on", no_model)
    with OutputLock(tmp_path / "out.tif"), pytest.raises(OutputLockedError, match="another geosr run"):
        upscale_scene([src], tmp_path / "out.tif", RunConfig(scale=2, model="bicubic", captioner="none"))


@pytest.mark.parametrize("held, given", [("out", "out.vrt"), ("out", "out/"), ("out", "out")])
def test_the_two_spellings_of_a_tiled_output_share_one_lock(tmp_path, held, given):
    """``out/`` and ``out.vrt`` write one data folder: two runs on them took two locks, and the
    later commit replaced the folder the other had just committed (both exit 0)."""
    from geosr.errors import OutputLockedError

    src = uint8_scene(tmp_path / "in.tif", 24, 24)
    config = RunConfig(scale=2, model="bicubic", captioner="none", split=32)
    with OutputLock(tmp_path / held), pytest.raises(OutputLockedError, match="another geosr run"):
        upscale_scene([src], tmp_path / given, config)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.vrt").exists()


@pytest.mark.parametrize("given, split", [("out.tif", None), ("out.tiff", None), ("out.zarr", None),
                                          ("out.vrt", 32), ("x.tif", None)])
def test_outputs_that_write_one_captions_file_share_its_lock(tmp_path, given, split):
    """Found by review: out.tif, out.tiff, out.zarr and out.vrt all write out.captions.geojson
    but took their own locks: two such runs at once both exited 0 and out.tif was left beside the
    other run's captions. A run holding out.captions.geojson (held here) refuses the others."""
    from geosr.errors import OutputLockedError

    src = uint8_scene(tmp_path / "in.tif", 24, 24)
    config = RunConfig(scale=2, model="bicubic", captioner="none", split=split)
    with OutputLock(tmp_path / "out.captions.geojson"):
        if given == "x.tif":  # its own captions: not held
            upscale_scene([src], tmp_path / given, config)
            return
        with pytest.raises(OutputLockedError, match="out.captions.geojson is being written by another geosr run"):
            upscale_scene([src], tmp_path / given, config)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["in.tif"]


def test_two_runs_on_one_output_one_refused_other_valid(tmp_path):
    src = uint8_scene(tmp_path / "in.tif", **SLOW_SCENE)
    first = start_slow_run(tmp_path, src, tmp_path / "out.tif")
    lock = tmp_path / ".out.tif.geosr-lock"
    wait_for(lambda: lock.exists() and lock.stat().st_size > 0, first)
    second = invoke("upscale", src, tmp_path / "out.tif", "--overwrite", *RUN)
    assert second.exit_code == 5
    assert error_lines(second) == [f"Error: {tmp_path / 'out.tif'} is being written by another geosr run "
                                   f"({lock.read_text().strip()}); wait for it to finish or choose another OUTPUT"]
    assert f"pid {first.pid} " in second.stderr
    assert first.wait(timeout=120) == 0, first.stderr.read()
    res = validate_output(tmp_path / "out.tif", src)
    assert res.ok and not res.warnings, (res.errors, res.warnings)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "out.captions.geojson", "out.tif", "slow_geosr.py"]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_stopped_run_resumes_to_the_same_bytes(tmp_path, sig):
    src = uint8_scene(tmp_path / "in.tif", **SLOW_SCENE)
    assert invoke("upscale", src, tmp_path / "ref.tif", *RUN, "--batch-size", "1").exit_code == 0
    run = start_slow_run(tmp_path, src, tmp_path / "out.tif")
    wait_for(lambda: journal_has_cells(tmp_path), run)
    run.send_signal(sig)
    code = run.wait(timeout=60)
    stderr = run.stderr.read()
    if sig == signal.SIGTERM:
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert code == 8 and len(lines) == 1, stderr
        assert lines[0].startswith("Error: stopped by SIGTERM;") and "rerun the same command with --resume" in lines[0]
    assert not (tmp_path / "out.tif").exists() and not (tmp_path / "out.captions.geojson").exists()
    (work,) = tmp_path.glob(".out.tif.geosr-run-*")
    res = invoke("upscale", src, tmp_path / "out.tif", *RUN, "--resume")
    assert res.exit_code == 0, res.stderr
    assert (tmp_path / "out.tif").read_bytes() == (tmp_path / "ref.tif").read_bytes()
    assert (tmp_path / "out.captions.geojson").read_bytes() == (tmp_path / "ref.captions.geojson").read_bytes()
    assert not work.exists() and not (tmp_path / ".out.tif.geosr-lock").exists()


@pytest.mark.parametrize("when", ["tiles", "commit"])
def test_a_stop_that_python_dropped_still_stops_the_run(tmp_path, monkeypatch, when):
    """Found by review: Ctrl-C raised inside a callback whose errors Python ignores (dask's GC
    diagnostics) was lost, and the run finished with exit 0. Dropped at a tile or just before
    the commit (the tiles all done), the run stops all the same, its cells kept for --resume."""
    import contextlib

    from geosr.cli.options import stop_on_signals
    from geosr.errors import RunStopped, StopRequested

    src = uint8_scene(tmp_path / "in.tif", 96, 96)
    config = RunConfig(scale=2, model="bicubic", captioner="none", tiles=TileSpec(32, 8), progress=False)
    upscale_scene([src], tmp_path / "ref.tif", config)

    def dropped_stop(*_args):
        with contextlib.suppress(StopRequested):  # raised by geosr's handler, dropped as Python drops it
            signal.getsignal(signal.SIGINT)(signal.SIGINT, None)

    real = tasks.process_batch if when == "tiles" else geosr.engine._write_captions
    monkeypatch.setattr(*((tasks, "process_batch") if when == "tiles" else (geosr.engine, "_write_captions")),
                        lambda *args: (dropped_stop(), real(*args))[1])
    with stop_on_signals(), pytest.raises(RunStopped, match="stopped by SIGINT"):
        upscale_scene([src], tmp_path / "out.tif", config)
    monkeypatch.undo()
    assert not (tmp_path / "out.tif").exists() and list(tmp_path.glob(".out.tif.geosr-run-*"))
    upscale_scene([src], tmp_path / "out.tif", replace(config, resume=True))
    assert (tmp_path / "out.tif").read_bytes() == (tmp_path / "ref.tif").read_bytes()


def kill_worker_once(monkeypatch, marker, tile_index: int = 2) -> None:
    """Make the worker process that gets tile ``tile_index`` SIGKILL itself, once.

    The patched task is shipped to the worker processes by value; ``marker`` (a file) says
    it happened, so the rescheduled task runs normally.
    """
    real = tasks.process_batch

    def dies_once(job):
        if job.tiles[0].index == tile_index and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return real(job)

    monkeypatch.setattr(tasks, "process_batch", dies_once)


def test_a_killed_dask_worker_does_not_change_the_pixels(tmp_path, monkeypatch):
    src = uint8_scene(tmp_path / "in.tif", 64, 96)
    upscale_scene([src], tmp_path / "threads.tif", cfg(batch_size=2))
    marker = tmp_path / "killed-once"
    kill_worker_once(monkeypatch, marker)
    upscale_scene([src], tmp_path / "procs.tif", cfg(batch_size=2, local_workers=2))
    assert marker.exists()
    with rasterio.open(tmp_path / "threads.tif") as a, rasterio.open(tmp_path / "procs.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())


def test_validate_reads_every_block(tmp_path):
    src = uint8_scene(tmp_path / "in.tif", 300, 300)
    upscale_scene([src], tmp_path / "out.tif", cfg(tiles=TileSpec(128, 8), batch_size=4))
    assert validate_output(tmp_path / "out.tif", src).ok
    full = (tmp_path / "out.tif").read_bytes()
    (tmp_path / "truncated.tif").write_bytes(full[: len(full) * 3 // 4])
    res = validate_output(tmp_path / "truncated.tif", src)
    assert not res.ok and any("cannot read the block" in e for e in res.errors), res.errors
    with rasterio.open(tmp_path / "out.tif") as ds:
        prof = dict(ds.profile, driver="GTiff")
        zeros = np.zeros((ds.count, ds.height, ds.width), ds.dtypes[0])
    with rasterio.open(tmp_path / "zeros_work.tif", "w", **prof) as ds:
        ds.write(zeros)
    rasterio.shutil.copy(tmp_path / "zeros_work.tif", tmp_path / "zeros.tif", driver="COG")
    res = validate_output(tmp_path / "zeros.tif", src)
    assert "band 1 is constant (0) where the source varies: pixels were lost" in res.warnings
    res = CliRunner().invoke(cli, ["validate", str(tmp_path / "zeros.tif")])
    assert "every band is constant (0)" in res.output


def test_validate_source_without_georeferencing(tmp_path):
    from PIL import Image

    Image.fromarray((texture(3, 40, 50).transpose(1, 2, 0) * 255).astype("uint8")).save(tmp_path / "photo.png")
    res = invoke("upscale", tmp_path / "photo.png", tmp_path / "out.tif", *RUN)
    assert res.exit_code == 0 and res.stderr == ""  # -q: no warning either
    res = validate_output(tmp_path / "out.tif", tmp_path / "photo.png")
    assert res.ok, res.errors


def test_validate_reads_the_source_as_a_run_does_with_its_aux_xml(tmp_path):
    """Found by review: validate opened the source with PAM off, so a PNG whose CRS lives in its
    .aux.xml (as QGIS saves it) was "CRS differs: source None", INVALID, for a correct output."""
    from PIL import Image

    Image.fromarray((texture(3, 40, 50).transpose(1, 2, 0) * 255).astype("uint8")).save(tmp_path / "photo.png")
    (tmp_path / "photo.pgw").write_text("2\n0\n0\n-2\n500001\n4099999\n")
    (tmp_path / "photo.png.aux.xml").write_text('<PAMDataset><SRS dataAxisToSRSAxisMapping="1,2">EPSG:32633</SRS>'
                                                '</PAMDataset>')
    res = invoke("upscale", tmp_path / "photo.png", tmp_path / "out.tif", *RUN)
    assert res.exit_code == 0, res.output
    with rasterio.open(tmp_path / "out.tif") as out:
        assert out.crs.to_epsg() == 32633
    res = validate_output(tmp_path / "out.tif", tmp_path / "photo.png")
    assert res.ok, res.errors


def test_validate_compares_gcps_rpcs_and_a_nodata_the_source_lacks(tmp_path):
    """Found by review: validate --source said OK for an output carrying the source's unscaled GCPs
    or RPCs (placed at half its size on the ground) and for one that gained a nodata value."""
    from rasterio.control import GroundControlPoint
    from rasterio.rpc import RPC

    def tampered(out: Path, name: str, **georef) -> Path:
        copy = tmp_path / name
        copy.write_bytes(out.read_bytes())
        with rasterio.open(copy, "r+", IGNORE_COG_LAYOUT_BREAK="YES") as ds:
            for key, value in georef.items():
                setattr(ds, key, value)
        return copy

    gcps = [GroundControlPoint(row, col, 500000.0 + 2 * col, 4100000.0 - 2 * row) for row, col in ((0, 0), (0, 40), (30, 0))]
    rpc = RPC(height_off=100, height_scale=500, lat_off=40.0, lat_scale=0.05, long_off=-75.0, long_scale=0.05,
              line_off=15, line_scale=15, samp_off=20, samp_scale=20,
              line_num_coeff=[0, 0, -1] + [0] * 17, line_den_coeff=[1] + [0] * 19,
              samp_num_coeff=[0, 1] + [0] * 18, samp_den_coeff=[1] + [0] * 19)
    crs = rasterio.crs.CRS.from_epsg(32618)
    for name, georef in (("gcps", dict(gcps=(gcps, crs))), ("rpcs", dict(rpcs=rpc))):
        src = uint8_scene(tmp_path / f"{name}.tif", 30, 40, transform=None, crs=None)
        with rasterio.open(src, "r+") as ds:
            for key, value in georef.items():
                setattr(ds, key, value)
        out = tmp_path / f"{name}_x2.tif"
        upscale_scene([src], out, cfg())
        assert validate_output(out, src).ok, validate_output(out, src).errors
        res = validate_output(tampered(out, f"{name}_unscaled.tif", **georef), src)
        assert f"{name[:-1].upper()}s differ from the source's scaled by 2" in " ".join(res.errors), res.errors
    src = uint8_scene(tmp_path / "in.tif", 30, 40)
    upscale_scene([src], tmp_path / "out.tif", cfg())
    res = validate_output(tampered(tmp_path / "out.tif", "nodata.tif", nodata=3), src)
    assert "the output has nodata 3, the source none" in " ".join(res.errors), res.errors


def test_validate_a_masked_output_with_an_empty_block(tmp_path):
    data = (texture(3, 600, 600) * 250 + 3).astype("uint8")
    valid = np.zeros((600, 600), bool)
    valid[:200, :200] = True  # every output block but the first is all no-data
    src = write_raster(tmp_path / "in.tif", data, mask=valid)
    upscale_scene([src], tmp_path / "out.tif", cfg(tiles=TileSpec(200, 8), batch_size=4))
    res = validate_output(tmp_path / "out.tif", src)
    assert res.ok and not res.warnings, (res.errors, res.warnings)


def another_filesystem(tmp_path: Path) -> Path:
    """A writable folder on another filesystem than ``tmp_path`` (skips where there is none)."""
    for root in (Path("/dev/shm"), Path("/run/user") / str(os.getuid())):
        if root.is_dir() and os.access(root, os.W_OK) and os.stat(root).st_dev != os.stat(tmp_path).st_dev:
            folder = Path(tempfile.mkdtemp(prefix="geosr-test-", dir=root))
            return folder
    pytest.skip("no writable folder on another filesystem")


def test_a_route_map_on_another_filesystem_is_written(tmp_path):
    # A rename cannot cross filesystems: the map's move failed after all the work (exit 1, EXDEV),
    # with the captions already moved beside no OUTPUT.
    other = another_filesystem(tmp_path)
    try:
        src = uint8_scene(tmp_path / "in.tif", 32, 32)
        res = invoke("upscale", src, tmp_path / "out.tif", "--scale", "2", "--captioner", "none", "--tile", "32",
                     "--overlap", "8", "-q", "--route-map", other / "route.tif")
        assert res.exit_code == 0, res.stderr
        with rasterio.open(other / "route.tif") as m:
            assert m.descriptions == ("texture", "noise", "model")
        assert sorted(p.name for p in other.iterdir()) == ["route.tif"]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "out.captions.geojson", "out.tif"]
    finally:
        shutil.rmtree(other)


def _copies_beside_then_none_on_a_full_disk(tmp_path, dest, monkeypatch):
    """``tmp_path/a.tif`` and a new ``b.tif``, moved to ``dest`` where a rename cannot reach: both
    are copied beside their place; with the disk full at the second copy, nothing is left there
    (the first copy deleted too)."""
    from geosr.writer import stage_beside

    (tmp_path / "b.tif").write_bytes(b"b" * 100)
    moves = {tmp_path / "a.tif": dest / "a.tif", tmp_path / "b.tif": dest / "b.tif"}
    staged, copies = stage_beside(moves)
    assert [p.parent for p in staged] == [dest, dest] and list(staged.values()) == list(moves.values())
    assert [p.read_bytes() for p in staged] == [b"a" * 100, b"b" * 100] and copies == list(staged)
    for p in copies:
        p.unlink()
    real, calls = os.fsync, [0]

    def full(fd):
        calls[0] += 1
        if calls[0] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(WriteError, match=f"no space left on the device of {dest} while writing b.tif"):
        stage_beside(moves)
    assert list(dest.iterdir()) == []  # nothing half-written, and the first copy deleted too


def test_a_copy_to_another_filesystem_that_fails_leaves_nothing(tmp_path, monkeypatch):

    other = another_filesystem(tmp_path)
    try:
        (tmp_path / "a.tif").write_bytes(b"a" * 100)
        _copies_beside_then_none_on_a_full_disk(tmp_path, other, monkeypatch)
    finally:
        shutil.rmtree(other)


def bind_mount(tmp_path: Path, monkeypatch) -> Path:
    """A folder that acts as another mount point of ``tmp_path``'s filesystem (a bind mount):
    the same ``st_dev``, but a link or rename between it and the rest fails with EXDEV."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    assert os.stat(mnt).st_dev == os.stat(tmp_path).st_dev

    def crossing(real):
        def call(src, dst, *args, **kwargs):
            if (mnt in Path(src).absolute().parents) != (mnt in Path(dst).absolute().parents):
                raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(src), None, str(dst))
            return real(src, dst, *args, **kwargs)
        return call

    for name in ("link", "rename", "replace"):
        monkeypatch.setattr(os, name, crossing(getattr(os, name)))
    return mnt


def test_a_route_map_on_another_mount_of_the_same_filesystem_is_written(tmp_path, monkeypatch):
    # Two bind mounts of one filesystem share st_dev, which said "a rename will do": the map's
    # rename then failed with EXDEV after all the work (exit 1).
    mnt = bind_mount(tmp_path, monkeypatch)
    src = uint8_scene(tmp_path / "in.tif", 32, 32)
    res = invoke("upscale", src, tmp_path / "out.tif", "--scale", "2", "--captioner", "none", "--tile", "32",
                 "--overlap", "8", "-q", "--route-map", mnt / "route.tif")
    assert res.exit_code == 0, res.stderr
    with rasterio.open(mnt / "route.tif") as m:
        assert m.descriptions == ("texture", "noise", "model")
    assert sorted(p.name for p in mnt.iterdir()) == ["route.tif"]  # no copy or probe left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "mnt", "out.captions.geojson", "out.tif"]


def test_stage_beside_probes_with_a_link_not_st_dev(tmp_path, monkeypatch):
    from geosr.writer import stage_beside

    (tmp_path / "a.tif").write_bytes(b"a" * 100)
    (tmp_path / "same").mkdir()
    staged, copies = stage_beside({tmp_path / "a.tif": tmp_path / "same" / "a.tif"})
    assert staged == {tmp_path / "a.tif": tmp_path / "same" / "a.tif"} and copies == []  # a rename will do
    assert list((tmp_path / "same").iterdir()) == []  # the probe is gone
    _copies_beside_then_none_on_a_full_disk(tmp_path, bind_mount(tmp_path, monkeypatch), monkeypatch)


def test_a_companion_file_in_a_folder_that_is_not_writable_is_refused_before_any_work(tmp_path, monkeypatch):
    src = uint8_scene(tmp_path / "in.tif", 32, 32)
    (tmp_path / "ro").mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == tmp_path / "ro" else real(p, mode, **kw))
    res = invoke("upscale", src, tmp_path / "out.tif", "--scale", "2", "--captioner", "none", "--tile", "32", "-q",
                 "--route-map", tmp_path / "ro" / "route.tif")
    assert res.exit_code == 4 and error_lines(res) == [f"Error: route map folder {tmp_path / 'ro'} is not writable"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "ro"]


@pytest.mark.parametrize("when", ["commit", "cleanup"])
def test_a_stop_that_comes_once_the_output_is_committed_ends_the_run_done(tmp_path, monkeypatch, when):
    # SIGTERM between the renames of the commit, or while the work folder was deleted: exit 8,
    # "stopped", beside a finished OUTPUT (or captions without it) and a work folder without its
    # run.json; the rerun with --resume was refused (OUTPUT exists).
    from geosr.writer import OutputTarget

    src = uint8_scene(tmp_path / "in.tif", 48, 48)
    assert invoke("upscale", src, tmp_path / "ref.tif", *RUN).exit_code == 0
    cls, name = (OutputTarget, "commit") if when == "commit" else (WorkFolder, "remove")
    real = getattr(cls, name)

    def stopped_there(self, *args):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(self, *args)

    monkeypatch.setattr(cls, name, stopped_there)
    res = invoke("upscale", src, tmp_path / "out.tif", *RUN)
    assert res.exit_code == 0, res.stderr
    assert (tmp_path / "out.tif").read_bytes() == (tmp_path / "ref.tif").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "out.captions.geojson", "out.tif",
                                                          "ref.captions.geojson", "ref.tif"]


@pytest.mark.parametrize("where", ["output", "captions"])
def test_overwrite_never_replaces_a_folder_at_a_single_cog_or_its_captions(tmp_path, where):
    src = uint8_scene(tmp_path / "in.tif", 24, 40)
    folder = tmp_path / ("out.tif" if where == "output" else "out.captions.geojson")
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    result = CliRunner().invoke(cli, ["upscale", str(src), str(tmp_path / "out.tif"), "--scale", "2", "--model",
                                      "bicubic", "--captioner", "none", "--overwrite", "-q"])
    assert result.exit_code == 4 and "is a directory" in result.output and str(folder) in result.output
    assert (folder / "keep.txt").read_text() == "mine" and not (tmp_path / "out.tif").is_file()


@pytest.mark.parametrize("message, fails", [
    ("JPEGLib:Corrupt JPEG data: premature end of data segment", True),
    ("JPEGLib:Corrupt JPEG data: bad Huffman code", True),
    ("JPEGLib:Corrupt JPEG data: found marker 0xd9 instead of RST3", True),
    ("JPEGLib:Premature end of JPEG file", True),
    ("PackBitsDecode:Discarding 43 bytes to avoid buffer overrun", True),
    # warnings of codecs that decode the block in full: files that always read keep reading
    ("JPEGLib:Corrupt JPEG data: 2 extraneous bytes before marker 0xd9", False),
    ("JPEGLib:Warning: unknown JFIF revision number 1.02", False),
    ("LZWPreDecode:Old-style LZW codes, convert file", False),
    ("TIFFReadDirectory:Sum of Photometric type-related color channels and ExtraSamples doesn't match", False),
])
def test_only_a_codec_warning_of_garbage_fails_a_read(message, fails):
    import logging

    from geosr.errors import ReadError, read_errors_named

    def read():
        with read_errors_named("scene.tif", band=1):
            logging.getLogger("rasterio._err").warning(message)

    if fails:
        with pytest.raises(ReadError, match="scene.tif"):
            read()
    else:
        read()


def test_a_failed_commit_lets_stops_act_again_while_the_run_settles(tmp_path, monkeypatch):
    """Stops are held back from the commit on, for the renames; a commit that fails is a failed run,
    and a SIGTERM while it settles (the stopped-run report, the cluster's shutdown) acts again."""
    import geosr.engine as engine
    from geosr.writer import OutputTarget

    src = uint8_scene(tmp_path / "in.tif", 48, 48)

    def failing_commit(self, *args):
        raise OSError(errno.EIO, "input/output error", str(self.output))

    heard = []
    settle = engine.settle_stopped_run

    def settle_and_look(*args):
        heard.append(signal.getsignal(signal.SIGTERM))
        return settle(*args)

    monkeypatch.setattr(OutputTarget, "commit", failing_commit)
    monkeypatch.setattr(engine, "settle_stopped_run", settle_and_look)
    res = invoke("upscale", src, tmp_path / "out.tif", *RUN)
    assert res.exit_code != 0 and heard
    assert "StopsDeferred" not in getattr(heard[0], "__qualname__", "")  # the CLI's own stop, not the hold-back


@pytest.mark.parametrize("form", ["cog", "tiled", "zarr"])
def test_the_commit_makes_the_output_durable_before_and_after_its_renames(tmp_path, monkeypatch, form):
    """Each file is fsynced before it is renamed into place and the folders after: the work folder
    is deleted at exit 0, so a node lost then must find whole files (before, the final COG was
    never synced, nor a tiled output's VRT and STAC or a Zarr store's metadata)."""
    import geosr.writer

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("sync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", str(src), str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(geosr.writer.os, "fsync", fsync)
    monkeypatch.setattr(geosr.writer.os, "replace", replace)
    src = uint8_scene(tmp_path / "in.tif", 64, 64)
    out = tmp_path / {"cog": "out.tif", "tiled": "out.vrt", "zarr": "out.zarr"}[form]
    extra = {"tiled": dict(split=32)}.get(form, {})
    upscale_scene([src], out, RunConfig(scale=2, model="bicubic", captioner="none", tiles=TileSpec(32, 8),
                                        progress=False, **extra))
    # the commit's renames (os is one module: the work folder's own renames are seen too)
    renames = [e for e in events if e[0] == "rename" and ".geosr-run-" not in e[2]]
    assert renames, events
    for rename in renames:
        synced = [e[1] for e in events[: events.index(rename)] if e[0] == "sync"]
        assert rename[1] in synced, (rename, events)  # the file's bytes, before its name moved
    last = max(events.index(r) for r in renames)
    assert ("sync", str(tmp_path)) in events[last:]  # the renames themselves
    if form == "cog":
        assert any(r[2] == str(out) for r in renames)
    else:  # every file of the folder or store: blocks and chunks, and the VRT, STAC, metadata written before them
        root = out.with_suffix("") if form == "tiled" else out
        synced = {e[1] for e in events if e[0] == "sync"}
        files = [f.relative_to(root) for f in root.rglob("*") if f.is_file()]
        assert len(files) > 3
        unsynced = [f for f in files if not any(p.endswith(f"/{root.name}/{f}") for p in synced)]
        assert not unsynced, unsynced


def test_a_companion_file_is_locked_as_the_output_is(tmp_path):
    """Found by review: --uncertainty, --route-map and --performance-report files took no lock: two
    runs of other outputs naming one map both exited 0, the later replacing the earlier's map."""
    from geosr.errors import OutputLockedError

    src = uint8_scene(tmp_path / "in.tif", 24, 24)
    config = RunConfig(scale=2, model="bicubic", captioner="none")
    with OutputLock(tmp_path / "report.html"), \
            pytest.raises(OutputLockedError, match="report.html is being written by another geosr run"):
        upscale_scene([src], tmp_path / "b.tif", config, performance_report=tmp_path / "report.html")
    assert not (tmp_path / "b.tif").exists() and not (tmp_path / "report.html").exists()
