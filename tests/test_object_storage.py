"""Inputs in object storage (issue 31): s3:// and /vsis3/ objects on a real S3-compatible server.

The server is moto's, started on localhost; GDAL (through rasterio) and boto3 (the run
identity) reach it with fake credentials and the variables a local server needs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

pytest.importorskip("moto", reason="the test extra installs moto[server]")
pytest.importorskip("boto3")

from geosr.engine import upscale_scene
from geosr.errors import InputError
from geosr.remote import gdal_path, is_remote, remote_object
from geosr.resumable import files_read, run_identity
from geosr.scene import expand_inputs
from tests.conftest import BUCKET
from tests.rasters import NORTH_UP, uint8_scene
from tests.test_resume_integrity import RUN, cfg, invoke, resume_cli, stop_half_way


def upload(client, path: Path, key: str) -> str:
    client.upload_file(str(path), BUCKET, key)
    return f"s3://{BUCKET}/{key}"


def pixels(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(masked=True).filled(0)


def test_names_of_objects():
    assert is_remote("s3://b/k.tif") and is_remote("/vsis3/b/k.tif") and is_remote("https://h/c.tif")
    assert not is_remote("/data/k.tif") and not is_remote("k.tif")
    assert gdal_path("s3://b/k.tif") == "/vsis3/b/k.tif"
    assert gdal_path("https://h/c.tif") == "/vsicurl/https://h/c.tif"
    assert expand_inputs(["s3://b/a.tif", "s3://b/a.tif", "/vsis3/b/c.tif"]) == ["s3://b/a.tif", "/vsis3/b/c.tif"]
    for bad in ("s3://b/*.tif", "s3://b/folder/"):
        with pytest.raises(InputError, match="not expanded"):
            expand_inputs([bad])


@pytest.mark.parametrize("form", ["s3", "vsis3"])
def test_an_s3_input_gives_the_pixels_of_the_local_file(s3, tmp_path, form):
    local = uint8_scene(tmp_path / "scene.tif", 96, 128)
    url = upload(s3, local, "folder/scene.tif")
    name = url if form == "s3" else gdal_path(url)
    upscale_scene([str(local)], tmp_path / "ref.tif", cfg())
    res = invoke("upscale", name, tmp_path / "out.tif", *RUN)
    assert res.exit_code == 0, res.stderr
    np.testing.assert_array_equal(pixels(tmp_path / "out.tif"), pixels(tmp_path / "ref.tif"))
    with rasterio.open(tmp_path / "out.tif") as out, rasterio.open(tmp_path / "ref.tif") as ref:
        assert out.profile == ref.profile and out.tags()["GEOSR_SOURCE"] == ref.tags()["GEOSR_SOURCE"] == "scene.tif"


def test_a_mosaic_of_s3_inputs_gives_the_pixels_of_the_local_mosaic(s3, tmp_path):
    left = uint8_scene(tmp_path / "a.tif", 64, 48, seed=1)
    # b.tif sits right of a.tif on the same grid
    right = uint8_scene(tmp_path / "b.tif", 64, 48, seed=2, transform=NORTH_UP * Affine.translation(48, 0))
    urls = [upload(s3, p, p.name) for p in (left, right)]
    upscale_scene([str(left), str(right)], tmp_path / "ref.tif", cfg())
    upscale_scene(urls, tmp_path / "out.tif", cfg())
    np.testing.assert_array_equal(pixels(tmp_path / "out.tif"), pixels(tmp_path / "ref.tif"))


def test_the_identity_of_an_s3_input_is_its_size_version_and_content(s3, tmp_path):
    url = upload(s3, uint8_scene(tmp_path / "scene.tif", 96, 128), "scene.tif")
    assert files_read([url]) == [url]
    obj = remote_object(url)
    assert obj.size == (tmp_path / "scene.tif").stat().st_size and "ETag" in obj.version
    assert obj.read(0, 4) == (tmp_path / "scene.tif").read_bytes()[:4]
    first = run_identity([url], cfg())
    assert run_identity([url], cfg()) == first
    uint8_scene(tmp_path / "scene.tif", 96, 128, seed=5)
    upload(s3, tmp_path / "scene.tif", "scene.tif")
    assert run_identity([url], cfg())[f"input {url}"] != first[f"input {url}"]
    with pytest.raises(InputError, match="cannot reach input"):
        remote_object(f"s3://{BUCKET}/missing.tif")


def test_the_identity_of_an_s3_input_covers_the_objects_gdal_reads_beside_it(s3, tmp_path, monkeypatch):
    """scene.tif.ovr (QGIS's pyramids, read for the stretch's sample) or a .aux.xml setting
    nodata, uploaded beside an object after a stop, changed the redone tiles' pixels unseen."""
    monkeypatch.setenv("GDAL_DISABLE_READDIR_ON_OPEN", "FALSE")  # GDAL's default: it looks for them
    url = upload(s3, uint8_scene(tmp_path / "scene.tif", 96, 128), "scene.tif")
    overview = uint8_scene(tmp_path / "scene.tif.ovr", 48, 64)
    upload(s3, overview, "scene.tif.ovr")
    side = f"/vsis3/{BUCKET}/scene.tif.ovr"
    assert files_read([url]) == [url, side]
    first = run_identity([url], cfg())[f"input {side}"]
    uint8_scene(overview, 48, 64, seed=7)
    upload(s3, overview, "scene.tif.ovr")
    assert run_identity([url], cfg())[f"input {side}"] != first


def test_a_stopped_run_of_an_s3_input_resumes_and_refuses_a_changed_object(s3, tmp_path, monkeypatch):
    local = uint8_scene(tmp_path / "scene.tif", 96, 128)
    url = upload(s3, local, "scene.tif")
    upscale_scene([str(local)], tmp_path / "ref.tif", cfg())
    work = stop_half_way(monkeypatch, [url], tmp_path / "out.tif")
    # the same object: the run resumes and makes the pixels of an uninterrupted run
    res = resume_cli(url, tmp_path / "out.tif")
    assert res.exit_code == 0, res.stderr
    assert not work.exists()
    np.testing.assert_array_equal(pixels(tmp_path / "out.tif"), pixels(tmp_path / "ref.tif"))

    (tmp_path / "out.tif").unlink()
    (tmp_path / "out.captions.geojson").unlink()
    stop_half_way(monkeypatch, [url], tmp_path / "out.tif")
    with rasterio.open(local, "r+") as ds:  # other pixels, same size
        ds.write(255 - ds.read())
    upload(s3, local, "scene.tif")
    res = resume_cli(url, tmp_path / "out.tif")
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.exit_code == 7 and len(lines) == 1, res.stderr
    assert f"input {url} was" in lines[0]
    assert not (tmp_path / "out.tif").exists()


def test_a_missing_object_is_an_input_error(s3, tmp_path):
    res = invoke("upscale", f"s3://{BUCKET}/missing.tif", tmp_path / "out.tif", *RUN)
    assert res.exit_code != 0 and "missing.tif" in res.stderr
    assert not (tmp_path / "out.tif").exists()


def test_a_rasterio_dataset_opened_from_s3_is_read_where_it_is(s3, tmp_path):
    from geosr.sources import source_files

    url = upload(s3, uint8_scene(tmp_path / "scene.tif", 32, 32), "scene.tif")
    with rasterio.open(url) as ds:
        files = source_files(ds)
        assert files.paths == [ds.name] and files.tempdir is None and is_remote(ds.name)


def test_the_lazy_api_reads_an_s3_input(s3, tmp_path):
    import geosr

    local = uint8_scene(tmp_path / "scene.tif", 64, 64)
    url = upload(s3, local, "scene.tif")
    options = {"scale": 2, "model": "bicubic", "captioner": "none", "tile": 32, "overlap": 8}
    np.testing.assert_array_equal(geosr.upscale(url, **options).values, geosr.upscale(str(local), **options).values)
