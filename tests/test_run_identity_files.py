"""A run's identity covers every file its pixels come from: the files GDAL reads beside an
input (overviews, masks, PAM metadata, world files), a network's sidecar and external
weights, a captioner's folder, a hub model's cached revision."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling

from geosr.gdal_side_files import pam_settings_digest, side_files
from geosr.resumable import files_read, run_identity
from geosr.weights_fingerprint import folder_fingerprint, hub_snapshot, source_fingerprint
from tests.rasters import uint8_scene
from tests.test_resume_integrity import cfg, resume_cli, stop_half_way

STATISTICS_ONLY = """<PAMDataset>
  <PAMRasterBand band="1">
    <Histograms><HistItem><HistMin>-0.5</HistMin><HistMax>255.5</HistMax><BucketCount>256</BucketCount>
      <HistCounts>0|1|2</HistCounts></HistItem></Histograms>
    <Metadata>
      <MDI key="STATISTICS_MAXIMUM">255</MDI>
      <MDI key="STATISTICS_MEAN">127.1</MDI>
      <MDI key="STATISTICS_MINIMUM">0</MDI>
      <MDI key="STATISTICS_STDDEV">73.9</MDI>
      <MDI key="STATISTICS_VALID_PERCENT">100</MDI>
    </Metadata>
  </PAMRasterBand>
</PAMDataset>
"""
NODATA_SET = """<PAMDataset>
  <PAMRasterBand band="1">
    <NoDataValue>0</NoDataValue>
  </PAMRasterBand>
</PAMDataset>
"""


def test_side_files_are_those_gdal_reads_beside_a_raster(tmp_path):
    src = uint8_scene(tmp_path / "scene.tif", 32, 32)
    assert side_files(str(src)) == []
    for name in ("scene.tif.ovr", "scene.tif.msk", "scene.tif.aux.xml", "scene.tfw", "SCENE.TFW", "other.tif.ovr"):
        (tmp_path / name).write_text("x")
    found = side_files(str(src))
    assert found[:4] == [str(tmp_path / n) for n in ("scene.tif.ovr", "scene.tif.msk", "scene.tif.aux.xml", "scene.tfw")]
    assert str(tmp_path / "other.tif.ovr") not in found
    assert set(found) <= set(files_read([str(src)]))


def test_cached_statistics_are_not_settings(tmp_path):
    pam = tmp_path / "a.aux.xml"
    pam.write_text(STATISTICS_ONLY)
    assert pam_settings_digest(str(pam)) is None  # reads like no file
    pam.write_text(NODATA_SET)
    nodata = pam_settings_digest(str(pam))
    assert nodata is not None
    pam.write_text(STATISTICS_ONLY.replace("<Metadata>", "<NoDataValue>0</NoDataValue><Metadata>"))
    assert pam_settings_digest(str(pam)) == nodata
    pam.write_text(NODATA_SET.replace(">0<", ">255<"))
    assert pam_settings_digest(str(pam)) not in (None, nodata)
    table = '<PAMDataset><PAMRasterBand band="1"><ColorTable><Entry c1="0" c2="0" c3="0" c4="255"/></ColorTable></PAMRasterBand></PAMDataset>'
    pam.write_text(table)
    colours = pam_settings_digest(str(pam))
    assert colours is not None  # attributes are what a colour table's entries say
    pam.write_text(table.replace('c1="0"', 'c1="9"'))
    assert pam_settings_digest(str(pam)) not in (None, colours)
    # a subdataset's PAM (a Sentinel-2 product's MTD_MSIL2A.xml.aux.xml) nests a band in it
    inner = STATISTICS_ONLY.replace("<PAMDataset>", "").replace("</PAMDataset>", "")
    pam.write_text(f'<PAMDataset><Subdataset name="SENTINEL2_L2A:x:10m:EPSG_32633"><PAMDataset>{inner}'
                   "</PAMDataset></Subdataset></PAMDataset>")
    assert pam_settings_digest(str(pam)) is None
    pam.write_text(pam.read_text().replace("<Metadata>", "<NoDataValue>0</NoDataValue><Metadata>"))
    assert pam_settings_digest(str(pam)) is not None
    pam.write_text("not xml")
    assert pam_settings_digest(str(pam)) is not None


def test_overviews_built_after_the_stop_refuse_the_resume(tmp_path, monkeypatch):
    """QGIS's *Build pyramids* (gdaladdo -ro) writes scene.tif.ovr, from which GDAL serves the
    downsampled read of the scene stretch: the resumed tiles would take another stretch."""
    src = uint8_scene(tmp_path / "in.tif", 96, 128)
    stop_half_way(monkeypatch, [src], tmp_path / "out.tif")
    copy = tmp_path / "copy.tif"  # the input itself untouched: only the .ovr comes beside it
    shutil.copy(src, copy)
    with rasterio.Env(TIFF_USE_OVR=True), rasterio.open(copy, "r+") as ds:  # as gdaladdo -ro: external
        ds.build_overviews([2, 4], Resampling.average)
    os.replace(tmp_path / "copy.tif.ovr", tmp_path / "in.tif.ovr")
    assert (tmp_path / "in.tif.ovr").is_file()
    res = resume_cli(src, tmp_path / "out.tif")
    assert res.exit_code == 7, res.stderr
    assert f"input {tmp_path / 'in.tif.ovr'}" in res.stderr
    assert not (tmp_path / "out.tif").exists()


@pytest.mark.parametrize("pam, exit_code", [(STATISTICS_ONLY, 0), (NODATA_SET, 7)], ids=["statistics", "nodata"])
def test_pam_metadata_written_after_the_stop(tmp_path, monkeypatch, pam, exit_code):
    """Statistics QGIS caches beside an input change no pixel: resumed, the bytes of an
    uninterrupted run. A nodata value set there does: refused."""
    src = uint8_scene(tmp_path / "in.tif", 96, 128)
    whole = tmp_path / "whole.tif"
    assert resume_cli(src, whole).exit_code == 0
    stop_half_way(monkeypatch, [src], tmp_path / "out.tif")
    (tmp_path / "in.tif.aux.xml").write_text(pam)
    res = resume_cli(src, tmp_path / "out.tif")
    assert res.exit_code == exit_code, res.stderr
    if exit_code == 0:
        with rasterio.open(tmp_path / "out.tif") as a, rasterio.open(whole) as b:
            assert np.array_equal(a.read(), b.read())
    else:
        assert f"input {tmp_path / 'in.tif.aux.xml'}" in res.stderr


def test_the_identity_covers_a_networks_sidecar_and_a_path_with_a_tilde(tmp_path, monkeypatch):
    src = str(uint8_scene(tmp_path / "in.tif", 32, 32))
    net = tmp_path / "net.onnx"
    net.write_bytes(b"\x08\x07" + bytes(1000))
    monkeypatch.setenv("HOME", str(tmp_path))
    by_tilde = run_identity([src], cfg(model="~/net.onnx"))
    assert by_tilde["model file"] == run_identity([src], cfg(model=str(net)))["model file"]
    (tmp_path / "net.yaml").write_text("value_range: 0-255\n")
    with_sidecar = run_identity([src], cfg(model="~/net.onnx"))
    key = f"model file {tmp_path / 'net.yaml'}"
    assert key in with_sidecar and key not in by_tilde
    (tmp_path / "net.yaml").write_text("value_range: 0-1\n")
    assert run_identity([src], cfg(model="~/net.onnx"))[key] != with_sidecar[key]


def test_the_identity_covers_an_onnx_graphs_external_weights(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.full((1, 1, 1, 1), 2.0, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 8, 8])], [weight])
    path = tmp_path / "net.onnx"
    onnx.save_model(helper.make_model(graph), str(path), save_as_external_data=True,
                    location="weights.bin", size_threshold=0)
    from geosr.models.onnx import external_data_files

    assert external_data_files(path) == [tmp_path / "weights.bin"]
    src = str(uint8_scene(tmp_path / "in.tif", 32, 32))
    first = run_identity([src], cfg(model=str(path)))
    data = bytearray((tmp_path / "weights.bin").read_bytes())
    data[:4] = np.float32(3.0).tobytes()  # new weights, the graph's bytes as they were
    (tmp_path / "weights.bin").write_bytes(bytes(data))
    second = run_identity([src], cfg(model=str(path)))
    assert second["model file"] == first["model file"]
    key = f"model file {tmp_path / 'weights.bin'}"
    assert second[key] != first[key]


def test_the_identity_covers_a_captioners_folder(tmp_path):
    src = str(uint8_scene(tmp_path / "in.tif", 32, 32))
    folder = tmp_path / "vlm"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(bytes(100))
    first = run_identity([src], cfg(captioner=f"mllm:{folder}"))
    (folder / "model.safetensors").write_bytes(bytes(99) + b"\x01")  # retrained in place
    assert run_identity([src], cfg(captioner=f"mllm:{folder}"))["captioner files"] != first["captioner files"]
    assert "captioner files" not in run_identity([src], cfg(captioner="degradation"))
    assert run_identity([src], cfg(captioner="auto"))["captioner files"].startswith("files ")  # the shipped VLM's
    # on a cluster the files are the ones the worker that described the model found, not the client's
    assert run_identity([src], cfg(captioner=f"mllm:{folder}"), "files 0123456789abcdef")["captioner files"] == \
        "files 0123456789abcdef"


def test_a_hub_id_is_fingerprinted_by_its_cached_revision(tmp_path, monkeypatch):
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert hub_snapshot("org/model", "model_index.json") is None
    assert source_fingerprint("org/model", "model_index.json") == "hub org/model"
    repo = tmp_path / "models--org--model"
    snapshot = repo / "snapshots" / ("a" * 40)
    (snapshot / "unet").mkdir(parents=True)
    (snapshot / "model_index.json").write_text("{}")
    (snapshot / "unet" / "w.bin").write_bytes(bytes(10))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    assert hub_snapshot("org/model", "model_index.json") == snapshot
    before = source_fingerprint("org/model", "model_index.json")
    assert before == f"hub org/model revision {'a' * 40}, files {folder_fingerprint(snapshot)}"
    (snapshot / "unet" / "w.bin").write_bytes(bytes(9) + b"\x01")  # the cached files changed
    assert source_fingerprint("org/model", "model_index.json") != before


def _vrt_of(source: str, vrt, width: int, height: int, like=None) -> None:
    """A one-band VRT reading band 1 of ``source`` (any name GDAL opens), on the grid of the
    raster ``like`` (none: not georeferenced)."""
    grid = ""
    if like is not None:
        with rasterio.open(like) as ds:
            grid = (f"<SRS>{ds.crs.to_wkt()}</SRS><GeoTransform>{', '.join(map(str, ds.transform.to_gdal()))}"
                    "</GeoTransform>")
    vrt.write_text(f"""<VRTDataset rasterXSize="{width}" rasterYSize="{height}">{grid}
  <VRTRasterBand dataType="Byte" band="1">
    <SimpleSource><SourceFilename relativeToVRT="0">{source}</SourceFilename><SourceBand>1</SourceBand></SimpleSource>
  </VRTRasterBand>
</VRTDataset>
""")


def test_a_vrt_source_in_an_archive_is_in_the_identity_by_its_archive(tmp_path, monkeypatch):
    """Found by review: a VRT source read through /vsizip/ was left out of the identity, and a
    resume after the zip was rebuilt with other pixels mixed the two images with exit 0."""
    import zipfile

    from geosr.errors import ResumeError
    from geosr.engine import upscale_scene

    src = uint8_scene(tmp_path / "a.tif", 96, 128)
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as z:
        z.write(src, "a.tif")
    vrt = tmp_path / "a.vrt"
    _vrt_of(f"/vsizip/{tmp_path}/a.zip/a.tif", vrt, 128, 96, like=src)
    assert str(tmp_path / "a.zip") in files_read([str(vrt)])
    stop_half_way(monkeypatch, [str(vrt)], tmp_path / "out.tif")
    with rasterio.open(src) as ds:
        other = 255 - ds.read()
        profile = ds.profile
    with rasterio.open(src, "w", **profile) as ds:
        ds.write(other)
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as z:
        z.write(src, "a.tif")
    with pytest.raises(ResumeError, match="a.zip"):
        upscale_scene([str(vrt)], tmp_path / "out.tif", cfg(resume=True))


@pytest.mark.parametrize("name, behind", [
    ("/vsizip/{{{tmp}/a.zip}}/sub/a.tif", "{tmp}/a.zip"),
    ("/vsitar/{tmp}/a.zip/a.tif", "{tmp}/a.zip"),
    ("GTIFF_DIR:2:{tmp}/a.zip", "{tmp}/a.zip"),
    ("/vsizip//vsis3/bucket/x/a.zip/a.tif", "/vsis3/bucket/x/a.zip"),
])
def test_the_file_behind_a_gdal_name_is_found(tmp_path, name, behind):
    from geosr.resumable import _file_behind

    (tmp_path / "a.zip").write_bytes(b"PK")
    assert _file_behind(name.format(tmp=tmp_path)) == behind.format(tmp=tmp_path)


def test_a_source_geosr_cannot_trace_makes_a_run_that_never_resumes(tmp_path):
    vrt = tmp_path / "m.vrt"
    _vrt_of("/vsimem/somewhere.tif", vrt, 8, 8)
    first, second = (run_identity([str(vrt)], cfg()) for _ in range(2))
    key = "input /vsimem/somewhere.tif"
    assert "cannot check" in first[key] and first[key] != second[key]
