"""A resumed run is never silently wrong (issue 26): damaged work folders, changed sources, damaged journals.

Each stopped run here is stopped the way a full disk stops it (a write half way through the
run fails), which leaves a real work folder: pixels.raw, run.json, journal.jsonl.
"""

from __future__ import annotations

import errno
import glob
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

import geosr.tasks as tasks
from geosr.cli import cli
from geosr.config import RunConfig, TileSpec
from geosr.engine import upscale_scene
from geosr.errors import InputError, ResumeError, WriteError
from geosr.journal import CellRecord, RunJournal, WorkFolder
from geosr.output_lock import OutputLock
from geosr.resumable import StoppedRunWarning, files_read, open_journal, run_identity
from geosr.validation import validate_output
from geosr.writer import WorkRaster
from tests.rasters import uint8_scene, write_raster

RUN = ["--scale", "2", "--model", "bicubic", "--captioner", "none", "--tile", "32", "--overlap", "8",
       "--batch-size", "1", "-q"]


def cfg(**kw):
    base = dict(scale=2, model="bicubic", captioner="none", tiles=TileSpec(32, 8), progress=False, batch_size=1)
    base.update(kw)
    return RunConfig(**base)


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def stop_half_way(monkeypatch, inputs, output: Path, config: RunConfig | None = None) -> Path:
    """Run until half the work raster's writes are done, then fail as a full disk does; the work folder."""
    config = config or cfg()
    real, writes = WorkRaster._write_rows, [0]

    def count(self, *args):
        writes[0] += 1
        return real(self, *args)

    monkeypatch.setattr(WorkRaster, "_write_rows", count)
    reference = output.with_name("full_" + output.name)
    upscale_scene(inputs, reference, config)
    if reference.is_dir():  # a tiled output: its captions are in it
        shutil.rmtree(reference)
    else:
        reference.unlink()
        reference.with_name(reference.stem + ".captions.geojson").unlink()
    total, writes[0] = writes[0], 0

    def fill_up(self, *args):
        writes[0] += 1
        if writes[0] > total // 2:
            raise WriteError("no space left on the device (simulated)") from OSError(errno.ENOSPC, "full")
        return real(self, *args)

    monkeypatch.setattr(WorkRaster, "_write_rows", fill_up)
    with pytest.raises(WriteError):
        upscale_scene(inputs, output, config)
    monkeypatch.setattr(WorkRaster, "_write_rows", real)
    (work,) = output.parent.glob(glob.escape(f".{output.name}.geosr-run-") + "*")
    return work


@pytest.fixture
def stopped(tmp_path, monkeypatch):
    """(source, reference output of an uninterrupted run, work folder of a run stopped half way)."""
    src = uint8_scene(tmp_path / "in.tif", 96, 128)
    upscale_scene([src], tmp_path / "ref.tif", cfg())
    work = stop_half_way(monkeypatch, [src], tmp_path / "out.tif")
    assert RunJournal.load(WorkFolder(work)).finished > 0
    return src, tmp_path / "ref.tif", work


def resume_cli(src, out):
    return invoke("upscale", src, out, *RUN, "--resume")


@pytest.mark.parametrize("damage", ["deleted", "truncated", "overwritten", "a folder", "a link"])
def test_a_damaged_work_raster_is_recomputed_not_trusted(stopped, damage):
    src, ref, work = stopped
    pixels = work / WorkRaster.PIXELS
    outside = work.parent / "not_ours.raw"
    if damage == "deleted":
        pixels.unlink()
    elif damage == "a folder":  # it was exit 6 ("Is a directory") at every resume
        pixels.unlink()
        pixels.mkdir()
    elif damage == "a link":  # it was followed: the file it names truncated and written
        outside.write_bytes(b"\x01" * 1000)
        pixels.unlink()
        pixels.symlink_to(outside)
    elif damage == "truncated":
        os.truncate(pixels, pixels.stat().st_size // 5)
    else:  # same size, other bytes in the finished part
        with open(pixels, "r+b") as f:
            f.write(b"\x7f" * 5000)
    with pytest.warns(StoppedRunWarning, match="no longer hold the bytes that were written"):
        upscale_scene([src], ref.with_name("out.tif"), cfg(resume=True))
    assert ref.with_name("out.tif").read_bytes() == ref.read_bytes()
    assert not work.exists()
    if damage == "a link":
        assert outside.read_bytes() == b"\x01" * 1000


def test_an_intact_work_raster_is_adopted_whole(stopped):
    src, ref, work = stopped
    finished = RunJournal.load(WorkFolder(work)).finished
    report = upscale_scene([src], ref.with_name("out.tif"), cfg(resume=True))
    assert report.tiles_resumed > 0 and finished > 0
    assert ref.with_name("out.tif").read_bytes() == ref.read_bytes()


def write_vrt(path: Path, parts: list[tuple[str, int]], width: int, height: int) -> Path:
    """A VRT of 3-band uint8 sources placed side by side at the given column offsets."""
    with rasterio.open(path.parent / parts[0][0]) as ds:
        transform, crs = ds.transform, ds.crs
    bands = []
    for b in (1, 2, 3):
        sources = "".join(
            f'<SimpleSource><SourceFilename relativeToVRT="1">{name}</SourceFilename><SourceBand>{b}</SourceBand>'
            f'<SrcRect xOff="0" yOff="0" xSize="{width // len(parts)}" ySize="{height}"/>'
            f'<DstRect xOff="{col}" yOff="0" xSize="{width // len(parts)}" ySize="{height}"/></SimpleSource>'
            for name, col in parts
        )
        bands.append(f'<VRTRasterBand dataType="Byte" band="{b}">{sources}</VRTRasterBand>')
    path.write_text(
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}"><SRS>{crs.to_wkt()}</SRS>'
        f'<GeoTransform>{", ".join(map(str, transform.to_gdal()))}</GeoTransform>{"".join(bands)}</VRTDataset>'
    )
    return path


def split_scene(tmp_path: Path) -> tuple[Path, Path, Path]:
    """in.tif cut into a.tif | b.tif (each keeps its place on the grid) and a VRT over them."""
    src = uint8_scene(tmp_path / "in.tif", 96, 128)
    with rasterio.open(src) as ds:
        for name, col in (("a.tif", 0), ("b.tif", 64)):
            window = rasterio.windows.Window(col, 0, 64, 96)
            write_raster(tmp_path / name, ds.read(window=window), transform=ds.window_transform(window), crs=ds.crs)
    return write_vrt(tmp_path / "scene.vrt", [("a.tif", 0), ("b.tif", 64)], 128, 96), tmp_path / "a.tif", tmp_path / "b.tif"


@pytest.mark.parametrize("nested", [False, True], ids=["vrt", "vrt-of-vrt"])
def test_a_changed_vrt_source_refuses_the_resume(tmp_path, monkeypatch, nested):
    vrt, a, b = split_scene(tmp_path)
    if nested:
        vrt = write_vrt(tmp_path / "outer.vrt", [("scene.vrt", 0)], 128, 96)
    assert {str(a), str(b)} <= set(files_read([str(vrt)]))
    stop_half_way(monkeypatch, [str(vrt)], tmp_path / "out.tif")
    # rewrite a.tif in place: other pixels, same size, same mtime
    stat = a.stat()
    with rasterio.open(a, "r+") as ds:
        ds.write(255 - ds.read())
    os.utime(a, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert a.stat().st_size == stat.st_size and a.stat().st_mtime_ns == stat.st_mtime_ns
    res = resume_cli(vrt, tmp_path / "out.tif")
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.exit_code == 7 and len(lines) == 1, res.stderr
    assert f"input {a} was" in lines[0] and str(b) not in lines[0].split("; now")[0].split(f"input {a}")[0]
    assert not (tmp_path / "out.tif").exists()


def test_an_input_rewritten_in_place_with_its_mtime_set_back_refuses_the_resume(tmp_path, monkeypatch):
    """Bytes the content sample does not read (a big file is only sampled) changed, size and mtime
    kept: the ctime still tells (before, the resume was taken: exit 0, old and new pixels mixed)."""
    from geosr.file_sample import SAMPLE_COUNT, SAMPLE_HEAD, SAMPLE_SIZE, SAMPLE_TAIL

    src = uint8_scene(tmp_path / "in.tif", 320, 320)
    size = src.stat().st_size
    assert size > SAMPLE_HEAD + SAMPLE_TAIL + SAMPLE_COUNT * SAMPLE_SIZE  # sampled, not read whole
    stop_half_way(monkeypatch, [src], tmp_path / "out.tif")
    stat = src.stat()
    raw = bytearray(src.read_bytes())
    step = (size - SAMPLE_HEAD - SAMPLE_TAIL) // SAMPLE_COUNT
    gap = step - SAMPLE_SIZE - 32
    assert gap > 500
    for k in range(SAMPLE_COUNT):  # between the samples only
        start = SAMPLE_HEAD + k * step + SAMPLE_SIZE + 16
        raw[start : start + gap] = bytes(255 - b for b in raw[start : start + gap])
    with open(src, "r+b") as f:
        f.write(raw)
    os.utime(src, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert src.stat().st_size == size and src.stat().st_mtime_ns == stat.st_mtime_ns
    res = resume_cli(src, tmp_path / "out.tif")
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.exit_code == 7 and len(lines) == 1, res.stderr
    assert f"input {src} is not what the stopped run read" in lines[0], res.stderr
    assert not (tmp_path / "out.tif").exists()


@pytest.mark.parametrize("how", ["chmod", "cp -p", "hard link", "touch"])
def test_an_input_whose_times_alone_moved_is_resumed(tmp_path, monkeypatch, how):
    """chmod, a copy that keeps the mtime (cp -p, rsync -a: a job re-staging its inputs) or a new
    hard link move an input's ctime, `touch` its mtime too, not its content: the resume is taken
    (its full content is the digest the stopped run recorded) and writes the bytes of an
    uninterrupted run (touched, it was refused as "its content differs")."""
    src = uint8_scene(tmp_path / "in.tif", 160, 160)
    whole = tmp_path / "whole.tif"
    assert resume_cli(src, whole).exit_code == 0  # the uninterrupted run (--resume with nothing to resume)
    stop_half_way(monkeypatch, [src], tmp_path / "out.tif")
    ctime = src.stat().st_ctime_ns
    if how == "chmod":
        os.chmod(src, 0o600)
    elif how == "cp -p":
        staged = tmp_path / "staged.tif"
        shutil.copy2(src, staged)
        os.replace(staged, src)
    elif how == "touch":
        os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns + 5_000_000_000))
    else:
        os.link(src, tmp_path / "snapshot.tif")
    assert src.stat().st_ctime_ns != ctime
    res = resume_cli(src, tmp_path / "out.tif")
    assert res.exit_code == 0, res.stderr
    with rasterio.open(tmp_path / "out.tif") as a, rasterio.open(whole) as b:
        assert np.array_equal(a.read(), b.read())


@pytest.mark.parametrize("key, name", [("code_digest", "geosr code"), ("library_versions", "libraries")])
def test_a_resume_under_other_geosr_code_or_libraries_is_refused(stopped, tmp_path, monkeypatch, key, name):
    """geosr's version string stayed 0.1.0 across commits that changed pixels: a run stopped under
    one and resumed under the next exited 0 with both in its output."""
    import geosr.resumable

    src, ref, work = stopped
    monkeypatch.setattr(geosr.resumable, key, lambda: "another")
    with pytest.raises(ResumeError, match=f"{name} was '.+', now 'another'"):
        upscale_scene([src], tmp_path / "out.tif", cfg(resume=True))
    assert work.exists() and not (tmp_path / "out.tif").exists()


def test_a_resume_where_the_default_precision_resolves_otherwise_is_refused(tmp_path, monkeypatch):
    """--dtype left at its default is bf16 or fp32 by the machine (and --device, cuda or cpu): a run
    stopped on one machine and resumed on another (or on other --address workers) was resumed with
    the pixels of both precisions (exit 0)."""
    import geosr.models as models
    import geosr.models.diffusion as diffusion

    src = uint8_scene(tmp_path / "in.tif", 64, 64)
    config = cfg(model="geosr-tiny-x2", route="off")
    real, writes = WorkRaster._write_rows, [0]

    def fill_up(self, *args):
        writes[0] += 1
        if writes[0] > 2:  # a few cells are written, not all
            raise WriteError("no space left on the device (simulated)") from OSError(errno.ENOSPC, "full")
        return real(self, *args)

    monkeypatch.setattr(WorkRaster, "_write_rows", fill_up)
    with pytest.raises(WriteError):
        upscale_scene([src], tmp_path / "out.tif", config)
    monkeypatch.setattr(WorkRaster, "_write_rows", real)
    (work,) = tmp_path.glob(".out.tif.geosr-run-*")
    assert RunJournal.load(WorkFolder(work)).finished > 0
    here = diffusion.default_dtype_name("cpu")
    monkeypatch.setattr(diffusion, "default_dtype_name", lambda device: "fp32" if here == "bf16" else "bf16")
    monkeypatch.setattr(models, "_CACHE", {})  # "another machine": the model loads again
    with pytest.raises(ResumeError, match="model runs on was 'cpu, (bfloat16|float32)', now 'cpu, (float32|bfloat16)'"):
        upscale_scene([src], tmp_path / "out.tif", replace(config, resume=True))
    assert work.exists() and not (tmp_path / "out.tif").exists()


def journal_path(work: Path) -> Path:
    return work / RunJournal.JOURNAL


@pytest.mark.parametrize("damage", [b"\x00\xff\xfe garbage \x80\n", b"null\n", b'{"cells": [["x", 1]]}\n',
                                    b'{"cells": [[0, 0]]}\n', b'{"cells": 5}\n', b'{"cells": [[0, 0, 8, 8, 1]]'])
def test_a_damaged_journal_is_read_up_to_its_last_valid_record(stopped, damage):
    src, ref, work = stopped
    valid = journal_path(work).read_bytes()
    before = RunJournal.load(WorkFolder(work)).finished
    with open(journal_path(work), "ab") as f:
        f.write(damage + b'{"cells": [[0, 0, 8, 8, 1]], "captions": {}, "routes": {}}\n')
    journal = RunJournal.load(WorkFolder(work))
    assert journal.finished == before and journal.valid_bytes == len(valid) and journal.damaged_bytes > 0
    # the damaged tail is cut before anything is appended: the resumed run's records count
    res = resume_cli(src, ref.with_name("out.tif"))
    assert res.exit_code == 0, res.stderr
    assert ref.with_name("out.tif").read_bytes() == ref.read_bytes()


def test_the_torn_tail_is_cut_so_that_new_records_are_read(stopped):
    src, ref, work = stopped
    with open(journal_path(work), "ab") as f:
        f.write(b'{"cells": [[0, 0, 6')  # torn by a full disk
    output = ref.with_name("out.tif")
    with OutputLock(output):
        journal = open_journal(output, RunJournal.load(WorkFolder(work)).identity, resume=True)
    data = journal_path(work).read_bytes()
    assert data.endswith(b"\n") and journal.damaged_bytes == 0
    journal.record(cell=CellRecord(1, 2, 3, 4, 5))
    journal.commit(lambda: None)
    assert RunJournal.load(WorkFolder(work)).records[(1, 2)] == CellRecord(1, 2, 3, 4, 5)


@pytest.mark.parametrize("identity", [b"\x89PNG\x00\xff", b"null", b'{"a": 1}', b"[1, 2]", None])
def test_a_damaged_run_identity_starts_over_and_says_so(stopped, identity):
    src, ref, work = stopped
    if identity is None:
        (work / RunJournal.IDENTITY).unlink()
    else:
        (work / RunJournal.IDENTITY).write_bytes(identity)
    with pytest.warns(StoppedRunWarning, match=r"it cannot be resumed: its run.json|it has no run.json"):
        report = upscale_scene([src], ref.with_name("out.tif"), cfg(resume=True))
    assert report.tiles_resumed == 0
    assert ref.with_name("out.tif").read_bytes() == ref.read_bytes()
    assert work.exists()  # not ours to delete: reported, left alone


# the captions the resumed run's jobs carry, by tile (a module-level list: the task is pickled by
# reference from an importable module, and runs in this process's threads)
JOB_CAPTIONS: dict[int, str | None] = {}


def recording_batch(job):
    JOB_CAPTIONS.update({t.index: c for t, c in zip(job.tiles, job.captions)})
    return REAL_PROCESS_BATCH(job)


REAL_PROCESS_BATCH = tasks.process_batch


@pytest.mark.parametrize("every", ["tile", "window:2"], ids=["per tile", "shared by 2 x 2"])
def test_a_redone_tile_keeps_the_caption_its_kept_cells_were_made_with(tmp_path, monkeypatch, every):
    """A tile whose cells were only partly finished is redone on resume: it was captioned again,
    and a captioner that answers otherwise the second time (a VLM's batched decoding) made its
    pixels under another caption than its kept neighbours'."""
    src = uint8_scene(tmp_path / "in.tif", 64, 96)
    config = cfg(model="geosr-tiny-x2", route="off", captioner="degradation", caption_every=every)
    upscale_scene([src], tmp_path / "ref.tif", config)
    work = stop_half_way(monkeypatch, [src], tmp_path / "out.tif", config)
    kept = RunJournal.load(WorkFolder(work)).captions
    assert kept
    monkeypatch.setattr(tasks, "caption_batch", lambda spec, x, plan: ["heavy blur, strong noise"] * len(x))
    monkeypatch.setattr(tasks, "process_batch", recording_batch)
    JOB_CAPTIONS.clear()
    upscale_scene([src], tmp_path / "out.tif", replace(config, resume=True))
    redone = {i: c for i, c in JOB_CAPTIONS.items() if i in kept}
    assert redone and all(c == kept[i] for i, c in redone.items()), (redone, kept)


def test_an_output_whose_name_is_a_glob_pattern_resumes(tmp_path, monkeypatch):
    """``out[1].tif``: the stopped run's folder was looked up as a pattern, which matched
    ``.out1.tif.geosr-run-*`` and never its own: --resume started over."""
    src = uint8_scene(tmp_path / "in.tif", 96, 128)
    upscale_scene([src], tmp_path / "ref.tif", cfg())
    out = tmp_path / "out[1].tif"
    stop_half_way(monkeypatch, [src], out)
    report = upscale_scene([src], out, cfg(resume=True))
    assert report.tiles_resumed > 0
    assert out.read_bytes() == (tmp_path / "ref.tif").read_bytes()


def test_resume_adopts_the_stopped_run_with_the_most_cells(stopped, tmp_path):
    src, ref, work = stopped
    # a newer run of the same command that stopped before finishing any cell
    newer = tmp_path / ".out.tif.geosr-run-newer"
    newer.mkdir()
    shutil.copy(work / RunJournal.IDENTITY, newer / RunJournal.IDENTITY)
    os.utime(newer, (work.stat().st_mtime + 100, work.stat().st_mtime + 100))
    with pytest.warns(StoppedRunWarning, match=f"left {newer}"):
        report = upscale_scene([src], ref.with_name("out.tif"), cfg(resume=True))
    assert report.tiles_resumed > 0
    assert not work.exists() and newer.exists()
    assert ref.with_name("out.tif").read_bytes() == ref.read_bytes()


def test_validate_source_catches_black_tiles(tmp_path):
    src = uint8_scene(tmp_path / "in.tif", 96, 128)
    upscale_scene([src], tmp_path / "out.tif", cfg())
    assert validate_output(tmp_path / "out.tif", src).ok
    with rasterio.open(tmp_path / "out.tif") as ds:
        data, profile = ds.read(), ds.profile
    data[:, 64:128, 96:160] = 0  # one 32 px source tile's worth of black
    write_raster(tmp_path / "black.tif", data, transform=profile["transform"], crs=profile["crs"])
    res = validate_output(tmp_path / "black.tif", src)
    assert any("does not match the source" in e for e in res.errors), res.errors
    res = invoke("validate", tmp_path / "black.tif", "--source", src)
    assert res.exit_code != 0 and "does not match the source" in res.output + res.stderr


def _edit_between_samples(path: Path) -> None:
    """Flip bytes of ``path`` that its content sample does not read, size and mtime kept."""
    from geosr.file_sample import SAMPLE_COUNT, SAMPLE_HEAD, SAMPLE_SIZE, SAMPLE_TAIL, content_sample

    stat, raw = path.stat(), bytearray(path.read_bytes())
    step = (len(raw) - SAMPLE_HEAD - SAMPLE_TAIL) // SAMPLE_COUNT
    start = SAMPLE_HEAD + SAMPLE_SIZE + 16
    raw[start:start + step // 2] = bytes(255 - b for b in raw[start:start + step // 2])
    before = content_sample(str(path), len(raw))
    path.write_bytes(bytes(raw))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert content_sample(str(path), len(raw)) == before and path.stat().st_mtime_ns == stat.st_mtime_ns


def test_a_network_edited_in_place_between_its_sampled_bytes_is_another_identity(tmp_path):
    """Found by review: one layer of a user's .onnx (or of a diffusers folder's weights) rewritten at
    the same size, outside the bytes the content sample reads, left the identity as it was: the stopped
    run was resumed with the new network, exit 0, its output matching neither network. Whole files now."""
    from geosr.resumable import run_identity
    from geosr.weights_fingerprint import folder_fingerprint

    src = uint8_scene(tmp_path / "in.tif", 32, 32)
    net = tmp_path / "net.onnx"
    net.write_bytes(np.random.default_rng(0).integers(0, 256, 2_000_000, dtype=np.uint8).tobytes())
    first = run_identity([str(src)], cfg(model=str(net)))["model file"]
    _edit_between_samples(net)
    assert run_identity([str(src)], cfg(model=str(net)))["model file"] != first
    folder = tmp_path / "pipeline" / "unet"
    folder.mkdir(parents=True)
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(net.read_bytes())
    before = folder_fingerprint(tmp_path / "pipeline")
    assert folder_fingerprint(tmp_path / "pipeline") == before  # the remembered digest: the same state
    _edit_between_samples(folder / "diffusion_pytorch_model.safetensors")
    assert folder_fingerprint(tmp_path / "pipeline") != before


def test_the_identity_covers_a_network_file_and_its_metadata(tmp_path):
    from geosr.resumable import run_identity

    src = uint8_scene(tmp_path / "in.tif", 32, 32)
    net = tmp_path / "net.onnx"
    net.write_bytes(b"\x08\x07" + bytes(1000))
    first = run_identity([str(src)], cfg(model=str(net)))
    net.write_bytes(b"\x08\x07" + bytes(999) + b"\x01")  # the same size, another network
    assert run_identity([str(src)], cfg(model=str(net)))["model file"] != first["model file"]
    assert run_identity([str(src)], cfg(model=str(net), model_metadata={"scale": "2"}))["--model-meta"] != \
        first["--model-meta"]


def test_a_disk_that_takes_the_cog_but_not_its_captions_is_a_write_error(tmp_path, monkeypatch):
    src = uint8_scene(tmp_path / "in.tif", 64, 64)
    real = Path.write_text

    def full(self, *args, **kwargs):
        if self.name == "captions.geojson":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(WriteError, match="no space left on the device of .* while writing captions.geojson"):
        upscale_scene([src], tmp_path / "out.tif", cfg())
    assert not (tmp_path / "out.tif").exists()


def test_a_journal_record_changed_but_still_json_ends_the_journal(stopped):
    """A flipped byte inside a caption parses as JSON as well: the line's checksum ends the journal
    there, and the resumed run recaptions and rewrites what came after - the captions sidecar and
    the pixels are the uninterrupted run's (before: exit 0 with the changed caption in the sidecar)."""
    src, ref, work = stopped
    lines = journal_path(work).read_bytes().splitlines(keepends=True)
    where = next(i for i, line in enumerate(lines) if b'"captions": {"' in line)
    before = RunJournal.load(WorkFolder(work))
    body = lines[where]
    start = body.index(b'"captions": {"')
    colon = body.index(b'": "', start) + 4  # the first caption's text ("" without a captioner)
    lines[where] = body[:colon] + b"edited " + body[colon:]
    journal_path(work).write_bytes(b"".join(lines))
    journal = RunJournal.load(WorkFolder(work))
    assert journal.valid_bytes == sum(len(line) for line in lines[:where]) and journal.damaged_bytes > 0
    assert journal.finished <= before.finished
    res = resume_cli(src, ref.with_name("out.tif"))
    assert res.exit_code == 0, res.stderr
    assert ref.with_name("out.tif").read_bytes() == ref.read_bytes()
    assert ref.with_name("out.captions.geojson").read_bytes() == ref.with_name("ref.captions.geojson").read_bytes()


def test_a_network_run_resumes_only_at_its_batch_size(tmp_path, monkeypatch):
    """Found by review: a run stopped at --batch-size 1 and resumed at 4 exited 0 with a few
    pixels 1 DN off both uninterrupted runs - a network's kernels round otherwise per batch size."""
    src = uint8_scene(tmp_path / "in.tif", 96, 128)
    network = cfg(model="geosr-tiny-fast-x2")
    stop_half_way(monkeypatch, [src], tmp_path / "out.tif", network)
    with pytest.raises(ResumeError, match="--batch-size was '1', now '4'"):
        upscale_scene([src], tmp_path / "out.tif", replace(network, batch_size=4, resume=True))
    upscale_scene([src], tmp_path / "ref.tif", network)
    upscale_scene([src], tmp_path / "out.tif", replace(network, resume=True))
    assert (tmp_path / "out.tif").read_bytes() == (tmp_path / "ref.tif").read_bytes()


BATCHES: list[tuple[int, ...]] = []


def batch_recording(job):
    BATCHES.append(tuple(t.index for t in job.tiles))
    return REAL_PROCESS_BATCH(job)


@pytest.mark.parametrize("split, batch", [(None, 3), (64, 5)], ids=["cog", "tiled"])
def test_a_resumed_run_computes_each_tile_in_its_uninterrupted_batch(tmp_path, monkeypatch, split, batch):
    """Found by review: a resumed run batched the tiles left, so a tile could be computed in a
    batch of another size than an uninterrupted run's (and a tiled output's block order, taken
    from the tiles left, moved the one-tile jobs) - the pixels a network makes depend on it."""
    src = uint8_scene(tmp_path / "in.tif", 96, 128)
    network = cfg(model="geosr-tiny-fast-x2", batch_size=batch, split=split)
    ref, out = tmp_path / ("ref" if split else "ref.tif"), tmp_path / ("out" if split else "out.tif")
    monkeypatch.setattr(tasks, "process_batch", batch_recording)
    BATCHES.clear()
    upscale_scene([src], ref, network)
    uninterrupted = set(BATCHES)
    assert any(len(b) == batch for b in uninterrupted)
    stop_half_way(monkeypatch, [src], out, network)
    BATCHES.clear()
    upscale_scene([src], out, replace(network, resume=True))
    assert BATCHES and set(BATCHES) <= uninterrupted, (BATCHES, uninterrupted)
    files = sorted(p.relative_to(ref) for p in ref.rglob("*.tif")) if split else [Path()]
    for name in files:
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name


def test_a_resume_under_other_gdal_read_settings_is_refused(stopped, tmp_path, monkeypatch):
    """Found by review: GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR (often exported for cloud reads)
    hides a raster's mask, overviews and PAM nodata; a run stopped without it and resumed with it
    read other pixels and exited 0."""
    src, ref, _ = stopped
    monkeypatch.setenv("GDAL_DISABLE_READDIR_ON_OPEN", "EMPTY_DIR")
    monkeypatch.setenv("GDAL_CACHEMAX", "64")  # changes no pixel: not in the identity
    with pytest.raises(ResumeError, match="GDAL read settings"):
        upscale_scene([src], tmp_path / "out.tif", cfg(resume=True))
    assert run_identity([str(src)], cfg())["GDAL read settings"] == "GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR"
    monkeypatch.delenv("GDAL_DISABLE_READDIR_ON_OPEN")
    assert "GDAL read settings" not in run_identity([str(src)], cfg())
    upscale_scene([src], tmp_path / "out.tif", cfg(resume=True))
    assert (tmp_path / "out.tif").read_bytes() == ref.read_bytes()


def test_a_classical_run_resumes_at_any_batch_size(stopped, tmp_path):
    src, ref, _ = stopped
    upscale_scene([src], tmp_path / "out.tif", cfg(batch_size=3, resume=True))
    assert (tmp_path / "out.tif").read_bytes() == ref.read_bytes()


@pytest.mark.parametrize("how", ["rewritten", "touched"])
def test_an_input_rewritten_during_the_run_fails_it(tmp_path, monkeypatch, how):
    """Found by review: an input overwritten while the run read it gave a mosaic of its two
    versions with exit 0. Rewritten: refused before the commit, nothing left; only touched (its
    times moved, its bytes the same): the run finishes."""
    src = uint8_scene(tmp_path / "in.tif", 96, 128)
    with rasterio.open(src) as ds:
        other, profile = 255 - ds.read(), ds.profile
    real, marker = tasks.process_batch, tmp_path / "changed"  # the task may run in a worker process

    def changes_it(job):
        if job.tiles[0].index == 2 and not marker.exists():
            marker.touch()
            if how == "rewritten":
                with rasterio.open(src, "w", **profile) as ds:
                    ds.write(other)
            else:
                os.utime(src)
        return real(job)

    monkeypatch.setattr(tasks, "process_batch", changes_it)
    if how == "rewritten":
        with pytest.raises(InputError, match=r"in.tif changed while the run read it"):
            upscale_scene([src], tmp_path / "out.tif", cfg())
        assert sorted(p.name for p in tmp_path.iterdir()) == ["changed", "in.tif"]
    else:
        upscale_scene([src], tmp_path / "out.tif", cfg())
        assert (tmp_path / "out.tif").exists()
