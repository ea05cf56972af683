"""OUTPUT in S3 (issue 31): a COG, a tiled prefix and a Zarr store uploaded to a local moto server.

The run works on a local stand-in under GEOSR_S3_WORK_DIR (:mod:`geosr.s3_output`); these
tests check that the objects equal a local run's output, that a failed or killed run leaves
no object at OUTPUT, and that --resume continues from the local work folder.
"""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
import rasterio

pytest.importorskip("moto", reason="the test extra installs moto[server]")
pytest.importorskip("boto3")

import geosr.s3_output
from geosr.engine import upscale_scene
from geosr.errors import RunStopped, StopRequested, WriteError
from geosr.writer import WorkRaster
from tests.conftest import BUCKET
from tests.rasters import uint8_scene
from tests.test_faults import SLOW_SCENE, start_slow_run, wait_for
from tests.test_resume_integrity import RUN, cfg, invoke, resume_cli


@pytest.fixture
def work(tmp_path, monkeypatch):
    """The local folder of S3 OUTPUTs' stand-ins and work folders."""
    folder = tmp_path / "s3work"
    monkeypatch.setenv("GEOSR_S3_WORK_DIR", str(folder))
    return folder


def keys(client, prefix: str = "") -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []))


def download(client, key: str, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    client.download_file(BUCKET, key, str(path))
    return path


def leftovers(folder: Path) -> list[Path]:
    """Files left in the local work root (the lock files of finished runs are allowed)."""
    return [p for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".geosr-lock")]


def test_a_cog_in_s3_is_the_local_cog(s3, tmp_path, work):
    src = uint8_scene(tmp_path / "in.tif", 96, 128)
    upscale_scene([src], tmp_path / "ref.tif", cfg())
    # the report names the objects (its captions were a local copy deleted after the upload)
    report = upscale_scene([src], f"s3://{BUCKET}/report/out.tif", cfg())
    assert (report.output, report.captions) == (f"s3://{BUCKET}/report/out.tif",
                                                f"s3://{BUCKET}/report/out.captions.geojson")
    s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in keys(s3, "report/")]})
    res = invoke("upscale", src, f"s3://{BUCKET}/runs/out.tif", *RUN)
    assert res.exit_code == 0, res.stderr
    assert keys(s3) == ["runs/out.captions.geojson", "runs/out.tif"]
    head = s3.head_object(Bucket=BUCKET, Key="runs/out.tif")
    assert head["ContentType"].startswith("image/tiff")
    got = download(s3, "runs/out.tif", tmp_path / "got.tif")
    assert got.read_bytes() == (tmp_path / "ref.tif").read_bytes()
    assert download(s3, "runs/out.captions.geojson", tmp_path / "got.geojson").read_bytes() == \
        (tmp_path / "ref.captions.geojson").read_bytes()
    # GDAL reads it where it is
    with rasterio.open(f"s3://{BUCKET}/runs/out.tif") as ds, rasterio.open(tmp_path / "ref.tif") as ref:
        assert ds.profile == ref.profile
        np.testing.assert_array_equal(ds.read(), ref.read())
    assert leftovers(work) == []


def test_an_existing_object_is_refused_then_replaced_with_overwrite(s3, tmp_path, work):
    src = uint8_scene(tmp_path / "in.tif", 64, 64)
    s3.put_object(Bucket=BUCKET, Key="out.tif", Body=b"old")
    res = invoke("upscale", src, f"s3://{BUCKET}/out.tif", *RUN)
    assert res.exit_code == 4 and f"s3://{BUCKET}/out.tif exists" in res.stderr
    assert s3.get_object(Bucket=BUCKET, Key="out.tif")["Body"].read() == b"old"
    assert invoke("upscale", src, f"s3://{BUCKET}/out.tif", *RUN, "--overwrite").exit_code == 0
    assert s3.get_object(Bucket=BUCKET, Key="out.tif")["Body"].read()[:2] in (b"II", b"MM")


def test_bad_s3_outputs_are_refused_in_one_line(s3, tmp_path, work):
    src = uint8_scene(tmp_path / "in.tif", 64, 64)
    res = invoke("upscale", src, "s3://no-such-bucket/out.tif", *RUN)
    assert res.exit_code == 4 and "cannot reach the output bucket no-such-bucket" in res.stderr
    res = invoke("upscale", src, f"s3://{BUCKET}", *RUN)
    assert res.exit_code == 4 and "names no object" in res.stderr
    url = f"s3://{BUCKET}/in.tif"
    s3.upload_file(str(src), BUCKET, "in.tif")
    res = invoke("upscale", url, url, *RUN, "--overwrite")
    assert res.exit_code == 4 and "is also an input" in res.stderr


def test_a_failed_run_leaves_no_object_and_resumes(s3, tmp_path, work, monkeypatch):
    src = uint8_scene(tmp_path / "in.tif", 96, 128)
    upscale_scene([src], tmp_path / "ref.tif", cfg())
    url = f"s3://{BUCKET}/out.tif"
    real, writes = WorkRaster._write_rows, [0]

    def full_after_some_cells(self, *args):
        writes[0] += 1
        if writes[0] > 3:
            raise WriteError("no space left on the device (simulated)")
        return real(self, *args)

    monkeypatch.setattr(WorkRaster, "_write_rows", full_after_some_cells)
    with pytest.raises(WriteError, match="simulated"):
        upscale_scene([src], url, cfg())
    monkeypatch.setattr(WorkRaster, "_write_rows", real)
    assert keys(s3) == []
    (folder,) = (work / BUCKET).glob(".out.tif.geosr-run-*")
    res = resume_cli(src, url)
    assert res.exit_code == 0, res.stderr
    assert not folder.exists() and leftovers(work) == []
    assert download(s3, "out.tif", tmp_path / "got.tif").read_bytes() == (tmp_path / "ref.tif").read_bytes()


def test_a_failed_upload_leaves_no_object(s3, tmp_path, work, monkeypatch):
    src = uint8_scene(tmp_path / "in.tif", 64, 64)
    real = geosr.s3_output.S3Upload._upload

    def fail_on_the_cog(self, client, path):
        if path.suffix == ".tif":
            raise OSError("connection reset (simulated)")
        return real(self, client, path)

    monkeypatch.setattr(geosr.s3_output.S3Upload, "_upload", fail_on_the_cog)
    with pytest.raises(WriteError, match=f"cannot upload s3://{BUCKET}/out.tif: connection reset"):
        upscale_scene([src], f"s3://{BUCKET}/out.tif", cfg())
    assert keys(s3) == []  # the captions, uploaded first, are deleted again
    monkeypatch.setattr(geosr.s3_output.S3Upload, "_upload", real)
    assert invoke("upscale", src, f"s3://{BUCKET}/out.tif", *RUN, "--resume").exit_code == 0
    assert keys(s3) == ["out.captions.geojson", "out.tif"]


@pytest.mark.parametrize("how", ["failed", "stopped"])
def test_a_failed_replacing_upload_says_the_output_is_mixed(s3, tmp_path, work, monkeypatch, how):
    """--overwrite keeps the old objects through a failed (or stopped) upload (deleting them would
    lose both outputs): the error says the prefix now mixes them, and how to finish."""
    from geosr.errors import StopRequested

    src = uint8_scene(tmp_path / "in.tif", 64, 64)
    url = f"s3://{BUCKET}/out.tif"
    assert invoke("upscale", src, url, *RUN).exit_code == 0
    real = geosr.s3_output.S3Upload._upload

    def fail_on_the_cog(self, client, path):
        if path.suffix == ".tif":
            raise OSError("connection reset (simulated)") if how == "failed" else StopRequested("SIGTERM")
        return real(self, client, path)

    monkeypatch.setattr(geosr.s3_output.S3Upload, "_upload", fail_on_the_cog)
    res = invoke("upscale", src, url, *RUN, "--overwrite", "--seed", "3")
    assert res.exit_code == (6 if how == "failed" else 8), res.stderr
    assert "now holds some of the new objects beside the old ones" in res.stderr, res.stderr
    assert "--resume --overwrite" in res.stderr
    monkeypatch.setattr(geosr.s3_output.S3Upload, "_upload", real)
    assert invoke("upscale", src, url, *RUN, "--overwrite", "--seed", "3", "--resume").exit_code == 0
    assert keys(s3) == ["out.captions.geojson", "out.tif"]


def test_a_killed_run_resumes_from_the_local_work_folder(s3, tmp_path, work):
    src = uint8_scene(tmp_path / "in.tif", **SLOW_SCENE)
    assert invoke("upscale", src, tmp_path / "ref.tif", *RUN, "--batch-size", "1").exit_code == 0
    url = f"s3://{BUCKET}/runs/out.tif"
    run = start_slow_run(tmp_path, src, url)  # the environment (server, GEOSR_S3_WORK_DIR) is inherited
    def journal_has_cells() -> bool:
        return any(j.stat().st_size > 0 for j in (work / BUCKET / "runs").glob(".out.tif.geosr-run-*/journal.jsonl"))

    wait_for(journal_has_cells, run)
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=60)
    assert keys(s3) == []
    (folder,) = (work / BUCKET / "runs").glob(".out.tif.geosr-run-*")
    res = invoke("upscale", src, url, *RUN, "--batch-size", "1", "--resume")
    assert res.exit_code == 0, res.stderr
    assert not folder.exists()
    assert download(s3, "runs/out.tif", tmp_path / "got.tif").read_bytes() == (tmp_path / "ref.tif").read_bytes()


def test_a_tiled_prefix_in_s3_is_the_local_mosaic(s3, tmp_path, work):
    src = uint8_scene(tmp_path / "in.tif", 300, 280)
    upscale_scene([src], tmp_path / "ref.tif", cfg())
    s3.put_object(Bucket=BUCKET, Key="tiles/block_009_009.tif", Body=b"stale")
    res = invoke("upscale", src, f"s3://{BUCKET}/tiles/", *RUN, "--split", "512", "--overwrite")
    assert res.exit_code == 0, res.stderr
    found = keys(s3, "tiles/")
    assert "tiles/block_009_009.tif" not in found  # a replaced prefix keeps no stale block
    assert {"tiles/mosaic.vrt", "tiles/collection.json", "tiles/captions.geojson",
            "tiles/block_000_000.tif", "tiles/block_000_000.json", "tiles/block_001_001.tif"} <= set(found)
    with rasterio.open(f"/vsis3/{BUCKET}/tiles/mosaic.vrt") as ds, rasterio.open(tmp_path / "ref.tif") as ref:
        assert (ds.crs, ds.transform, ds.shape) == (ref.crs, ref.transform, ref.shape)
        np.testing.assert_array_equal(ds.read(), ref.read())
    assert leftovers(work) == []


def test_a_zarr_store_in_s3_is_the_local_store(s3, tmp_path, work):
    xr = pytest.importorskip("xarray")
    pytest.importorskip("zarr")
    src = uint8_scene(tmp_path / "in.tif", 96, 128)
    upscale_scene([src], tmp_path / "ref.zarr", cfg())
    res = invoke("upscale", src, f"s3://{BUCKET}/out.zarr", *RUN)
    assert res.exit_code == 0, res.stderr
    found = keys(s3)
    assert "out.zarr/.zmetadata" in found and "out.captions.geojson" in found
    for key in found:
        if key.startswith("out.zarr/"):
            download(s3, key, tmp_path / "got" / key)
    local = sorted(p.relative_to(tmp_path / "ref.zarr").as_posix() for p in (tmp_path / "ref.zarr").rglob("*") if p.is_file())
    assert local == [k.removeprefix("out.zarr/") for k in found if k.startswith("out.zarr/")]
    got = xr.open_zarr(tmp_path / "got" / "out.zarr")
    ref = xr.open_zarr(tmp_path / "ref.zarr")
    xr.testing.assert_identical(got, ref)
    assert leftovers(work) == []


@pytest.mark.parametrize("url, foreign", [("tiles/", "tiles/notes.txt"), ("out.zarr", "out.zarr/ndvi/.zarray")])
def test_overwrite_refuses_a_prefix_with_objects_geosr_did_not_write(s3, tmp_path, work, url, foreign):
    src = uint8_scene(tmp_path / "in.tif", 24, 40)
    s3.put_object(Bucket=BUCKET, Key=foreign, Body=b"mine")
    extra = ("--split", "512") if url.endswith("/") else ()
    res = invoke("upscale", src, f"s3://{BUCKET}/{url}", *RUN, *extra, "--overwrite")
    assert res.exit_code == 4, res.stderr
    assert foreign.split("/", 1)[1] in res.stderr and "geosr did not write" in res.stderr
    assert keys(s3) == [foreign]
    s3.delete_object(Bucket=BUCKET, Key=foreign)
    mark = "tiles/collection.json" if url.endswith("/") else "out.zarr/.zattrs"
    s3.put_object(Bucket=BUCKET, Key=mark, Body=b'{"type": "Collection", "title": "not geosr\'s"}')
    res = invoke("upscale", src, f"s3://{BUCKET}/{url}", *RUN, *extra, "--overwrite")
    assert res.exit_code == 4 and "is not geosr's" in res.stderr
    assert keys(s3) == [mark]


@pytest.mark.parametrize("url, foreign", [("tiles/", "tiles/notes.txt"), ("out.zarr", "out.zarr/ndvi/.zarray")])
def test_a_foreign_object_come_during_the_run_is_refused_at_the_commit(s3, tmp_path, work, monkeypatch, url, foreign):
    """Checked again at the commit, as a local folder is: an object put under the prefix while
    the run went on is neither deleted as stale nor mixed in; the run exits 4 with its work kept."""
    src = uint8_scene(tmp_path / "in.tif", 24, 40)
    extra = ("--split", "512") if url.endswith("/") else ()
    assert invoke("upscale", src, f"s3://{BUCKET}/{url}", *RUN, *extra).exit_code == 0
    before = {k: s3.head_object(Bucket=BUCKET, Key=k)["ETag"] for k in keys(s3)}
    real = WorkRaster._write_rows

    def object_arrives(self, *args):
        s3.put_object(Bucket=BUCKET, Key=foreign, Body=b"mine")
        return real(self, *args)

    monkeypatch.setattr(WorkRaster, "_write_rows", object_arrives)
    res = invoke("upscale", src, f"s3://{BUCKET}/{url}", *RUN, *extra, "--overwrite")
    monkeypatch.setattr(WorkRaster, "_write_rows", real)
    assert res.exit_code == 4, res.stderr
    assert foreign.split("/", 1)[1] in res.stderr and "geosr did not write" in res.stderr
    assert "--resume" in res.stderr  # the finished work is kept
    assert s3.get_object(Bucket=BUCKET, Key=foreign)["Body"].read() == b"mine"
    assert {k: s3.head_object(Bucket=BUCKET, Key=k)["ETag"] for k in keys(s3) if k != foreign} == before
    s3.delete_object(Bucket=BUCKET, Key=foreign)
    res = invoke("upscale", src, f"s3://{BUCKET}/{url}", *RUN, *extra, "--overwrite", "--resume")
    assert res.exit_code == 0, res.stderr
    assert set(keys(s3)) == set(before) and leftovers(work) == []


@pytest.mark.parametrize("url, foreign", [("tiles/", "tiles/notes.txt"), ("out.zarr", "out.zarr/ndvi/.zarray")])
def test_stale_objects_deleted_are_only_geosr_names(s3, tmp_path, work, monkeypatch, url, foreign):
    """An object put under a replaced prefix after the commit's check (during the upload) is not
    deleted with the stale ones: only keys named as geosr names its objects are."""
    src = uint8_scene(tmp_path / "in.tif", 24, 40)
    extra = ("--split", "512") if url.endswith("/") else ()
    stale = "tiles/block_009_009.tif" if url.endswith("/") else "out.zarr/band_data/9.9.9"
    s3.put_object(Bucket=BUCKET, Key=stale, Body=b"stale")
    real = geosr.s3_output.S3Upload._upload

    def object_arrives(self, client, path):
        s3.put_object(Bucket=BUCKET, Key=foreign, Body=b"mine")
        return real(self, client, path)

    monkeypatch.setattr(geosr.s3_output.S3Upload, "_upload", object_arrives)
    res = invoke("upscale", src, f"s3://{BUCKET}/{url}", *RUN, *extra, "--overwrite")
    assert res.exit_code == 0, res.stderr
    found = keys(s3)
    assert stale not in found and foreign in found
    assert s3.get_object(Bucket=BUCKET, Key=foreign)["Body"].read() == b"mine"


@pytest.mark.parametrize("url", ["tiles/", "out.zarr"])
@pytest.mark.parametrize("overwrite", [(), ("--overwrite",)])
def test_a_console_folder_object_at_the_prefix_is_tolerated(s3, tmp_path, work, url, overwrite):
    """The S3 console's "Create folder" puts an empty object named ``prefix/``: an empty prefix,
    used as an empty local folder is (with or without --overwrite), and left there."""
    src = uint8_scene(tmp_path / "in.tif", 24, 40)
    extra = ("--split", "512") if url.endswith("/") else ()
    folder = url.rstrip("/") + "/"
    s3.put_object(Bucket=BUCKET, Key=folder, Body=b"")
    res = invoke("upscale", src, f"s3://{BUCKET}/{url}", *RUN, *extra, *overwrite)
    assert res.exit_code == 0, res.stderr
    found = keys(s3)
    assert folder in found and any(k.endswith(("collection.json", ".zattrs")) for k in found)
    if overwrite:  # and again, over geosr's output holding it
        res = invoke("upscale", src, f"s3://{BUCKET}/{url}", *RUN, *extra, *overwrite)
        assert res.exit_code == 0, res.stderr
        assert keys(s3) == found


def test_a_zarr_prefix_complete_but_without_geosr_attrs_is_refused(s3, tmp_path, work):
    """A prefix without its marker is accepted only as what a killed upload leaves (the marker
    goes last); a store's root .zgroup goes after its .zattrs, so one without the other is not geosr's."""
    src = uint8_scene(tmp_path / "in.tif", 24, 40)
    for key in ("out.zarr/.zgroup", "out.zarr/band_data/.zarray", "out.zarr/band_data/0.0.0"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"{}")
    res = invoke("upscale", src, f"s3://{BUCKET}/out.zarr", *RUN, "--overwrite")
    assert res.exit_code == 4 and "no .zattrs of geosr's" in res.stderr, res.stderr
    assert len(keys(s3)) == 3


def test_a_stop_during_the_upload_leaves_no_object_and_resumes(s3, tmp_path, work, monkeypatch):
    """SIGTERM while the captions are up and the COG is not: before, the captions stayed in the
    bucket and the resume was refused (exit 4, they exist)."""
    src = uint8_scene(tmp_path / "in.tif", 64, 64)
    real = geosr.s3_output.S3Upload._upload

    def stopped_on_the_cog(self, client, path):
        if path.suffix == ".tif":
            raise StopRequested("SIGTERM")  # what SIGTERM raises in a CLI run
        return real(self, client, path)

    monkeypatch.setattr(geosr.s3_output.S3Upload, "_upload", stopped_on_the_cog)
    with pytest.raises((KeyboardInterrupt, RunStopped)):
        upscale_scene([src], f"s3://{BUCKET}/out.tif", cfg())
    assert keys(s3) == []
    monkeypatch.setattr(geosr.s3_output.S3Upload, "_upload", real)
    res = resume_cli(src, f"s3://{BUCKET}/out.tif")
    assert res.exit_code == 0, res.stderr
    assert keys(s3) == ["out.captions.geojson", "out.tif"]


def _refusing_deletes(real_client):
    """A client whose DeleteObjects answers 200 with every key failed, as for a role without s3:DeleteObject."""
    class Client:
        def __getattr__(self, name):
            return getattr(real_client, name)

        def delete_objects(self, Bucket, Delete):  # noqa: N803 (boto3's names)
            return {"Errors": [{"Key": o["Key"], "Code": "AccessDenied", "Message": "Access Denied"}
                               for o in Delete["Objects"]]}
    return Client()


def test_deletes_the_bucket_refuses_are_never_passed_over(s3, tmp_path, work, monkeypatch):
    """Found by review: DeleteObjects answers 200 and lists the keys it did not delete; geosr
    dropped the answer - a failed upload left its objects unsaid, a replaced prefix its stale ones
    (exit 0)."""
    src = uint8_scene(tmp_path / "in.tif", 24, 40)
    real_client, real_upload = geosr.s3_output.s3_client, geosr.s3_output.S3Upload._upload
    monkeypatch.setattr(geosr.s3_output, "s3_client", lambda: _refusing_deletes(real_client()))

    def fail_on_the_cog(self, client, path):
        if path.suffix == ".tif":
            raise OSError("connection reset (simulated)")
        return real_upload(self, client, path)

    monkeypatch.setattr(geosr.s3_output.S3Upload, "_upload", fail_on_the_cog)
    res = invoke("upscale", src, f"s3://{BUCKET}/out.tif", *RUN)
    assert res.exit_code == 6 and "could not all be deleted" in res.stderr and "out.captions.geojson" in res.stderr
    monkeypatch.setattr(geosr.s3_output.S3Upload, "_upload", real_upload)
    s3.put_object(Bucket=BUCKET, Key="tiles/block_009_009.tif", Body=b"stale")
    res = invoke("upscale", src, f"s3://{BUCKET}/tiles/", *RUN, "--split", "512", "--overwrite")
    assert res.exit_code == 6 and "cannot delete 1 object(s)" in res.stderr and "AccessDenied" in res.stderr, res.stderr


@pytest.mark.parametrize("url, last", [("out.tif", ".tif"), ("out.zarr", ".zmetadata")])
def test_a_killed_upload_s_objects_are_taken_over_by_the_resume(s3, tmp_path, work, monkeypatch, url, last):
    """Found by review: SIGKILL during the upload (no cleanup runs) left the captions (or a store's
    chunks), and --resume was refused: they exist. The object that goes last is not there: they are
    that upload's, and the resume replaces them; a whole output is still refused."""
    src = uint8_scene(tmp_path / "in.tif", 64, 64)
    real = geosr.s3_output.S3Upload._upload

    def killed_on_the_last(self, client, path):
        if path.name.endswith(last):
            raise StopRequested("SIGKILL")
        return real(self, client, path)

    real_delete = geosr.s3_output.S3Upload._delete
    monkeypatch.setattr(geosr.s3_output.S3Upload, "_upload", killed_on_the_last)
    monkeypatch.setattr(geosr.s3_output.S3Upload, "_delete", lambda self, client, keys: None)  # killed: no cleanup
    with pytest.raises((KeyboardInterrupt, RunStopped)):
        upscale_scene([src], f"s3://{BUCKET}/{url}", cfg())
    assert keys(s3)  # what the killed upload left
    monkeypatch.setattr(geosr.s3_output.S3Upload, "_upload", real)
    monkeypatch.setattr(geosr.s3_output.S3Upload, "_delete", real_delete)
    res = resume_cli(src, f"s3://{BUCKET}/{url}")
    assert res.exit_code == 0, res.stderr
    # whole now: another resume (nothing stopped) or run is refused as before
    again = resume_cli(src, f"s3://{BUCKET}/{url}")
    assert again.exit_code == 4 and ("exists" in again.stderr or "holds objects" in again.stderr), again.stderr


def test_a_resume_over_a_killed_tiled_upload_deletes_its_blocks_the_new_output_lacks(s3, tmp_path, work):
    """Found by review: a prefix a killed upload left (blocks, no collection.json) was taken over by
    --resume, but its blocks of another grid were kept beside the new output's (exit 0): the prefix is
    replaced, as the README says, not added to."""
    src = uint8_scene(tmp_path / "in.tif", 64, 64)
    for name in ("block_001_001.tif", "block_001_001.json", "captions.geojson"):
        s3.put_object(Bucket=BUCKET, Key=f"tiles/{name}", Body=b"a killed upload's")
    res = invoke("upscale", src, f"s3://{BUCKET}/tiles/", *RUN, "--split", "512", "--resume")
    assert res.exit_code == 0, res.stderr
    left = keys(s3, "tiles/")
    assert "tiles/collection.json" in left and "tiles/block_001_001.tif" not in left and "tiles/block_001_001.json" not in left
    body = s3.get_object(Bucket=BUCKET, Key="tiles/captions.geojson")["Body"].read()
    assert body != b"a killed upload's"
