"""A Sentinel-2 product as INPUT (issue 29): its .SAFE folder, its MTD_MSIL2A.xml or a GDAL
subdataset name, read through GDAL's SENTINEL2 driver as geosr reads a 16-bit stack.

The products are built here, small (64 x 64 px at 10 m) and made of the real bands of
tests/data/rgbn_suba.tif, in the layout GDAL's driver reads (that of GDAL's own fake products
in autotest/gdrivers/data/sentinel2): the product's metadata file, the granule's MTD_TL.xml
and one lossless JPEG-2000 image per band.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner

import geosr
from geosr import sentinel2
from geosr.cli import cli
from geosr.errors import InputError
from geosr.resumable import files_read
from geosr.scene import expand_inputs, open_scene
from multispectral import RGBN, SENTINEL2_BANDS
from tests.test_resume_integrity import stop_half_way

#: Whether rasterio's GDAL reads the products built here (test_refused_without_the_drivers runs without).
HAVE_DRIVERS = not sentinel2.missing_drivers()

EPSG = 32634
ORIGIN = (300000.0, 6100020.0)
SIZE = 64  # px at 10 m
PRODUCT = {
    "L2A": ("S2B_MSIL2A_20230823T095559_N0509_R122_T34UCF_20230823T124759.SAFE", "L2A_T34UCF_A033753_20230823T095553"),
    "L1C": ("S2B_MSIL1C_20230823T095559_N0509_R122_T34UCF_20230823T120234.SAFE", "L1C_T34UCF_A033753_20230823T095553"),
}
STEM = "T34UCF_20230823T095559"
BANDS_10M = ("B02", "B03", "B04", "B08")
BANDS_20M = ("B05", "B06", "B07", "B8A", "B11", "B12")
# GDAL's band descriptions and order of the 10 m subdataset: red, green, blue, NIR
DESCRIPTIONS_10M = ("B4, central wavelength 665 nm", "B3, central wavelength 560 nm",
                    "B2, central wavelength 490 nm", "B8, central wavelength 842 nm")


def reflectance() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Reflectance of each band (SENTINEL2_BANDS: B, G, R, NIR of rgbn_suba and mixes of them) on a
    64 x 64 window of rgbn_suba with its no-data collar (columns 0-10), and its validity."""
    with rasterio.open(RGBN) as src:
        window = rasterio.windows.Window(0, 40, SIZE, SIZE)
        rgbn = src.read(window=window).astype(np.float64) / 255.0 * 0.5
        valid = src.dataset_mask(window=window) > 0
    # named as the images are: B02 ... B08, B8A, B11, B12
    bands = {name if len(name) == 3 else f"B0{name[1:]}": np.tensordot(mix, rgbn, axes=1)
             for name, mix in SENTINEL2_BANDS.items()}
    return bands, valid


def digital_numbers(r: np.ndarray, valid: np.ndarray, offset: int) -> np.ndarray:
    """Reflectance as a product stores it: ``r * 10000 - offset``, 0 (NODATA) where invalid."""
    return np.where(valid, np.rint(r * 10000) - offset, 0).astype(np.uint16)


def write_jp2(path: Path, data: np.ndarray, resolution: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 1 if data.ndim == 2 else data.shape[0]
    with rasterio.open(path, "w", driver="JP2OpenJPEG", width=data.shape[-1], height=data.shape[-2], count=count,
                       dtype=data.dtype, crs=f"EPSG:{EPSG}", QUALITY=100, REVERSIBLE="YES",
                       transform=Affine(resolution, 0, ORIGIN[0], 0, -resolution, ORIGIN[1])) as ds:
        ds.write(data.reshape(count, *data.shape[-2:]))


def make_product(folder: Path, level: str = "L2A", offset: int = -1000) -> Path:
    """A Sentinel-2 product of ``level`` (L2A: 10 m B02, B03, B04, B08, AOT, WVP, TCI; 20 m B05 ... B12
    and SCL; no 60 m images; L1C: B02 ... B12 and TCI) with processing baseline 05.09's offset
    ``offset`` (-1000): its .SAFE folder."""
    if not HAVE_DRIVERS:
        pytest.skip("rasterio's GDAL has no SENTINEL2 or no JP2OpenJPEG driver")
    name, granule = PRODUCT[level]
    safe = folder / name
    img = f"GRANULE/{granule}/IMG_DATA"
    bands, valid = reflectance()
    half = valid.reshape(SIZE // 2, 2, SIZE // 2, 2).all(axis=(1, 3))

    def coarse(r):
        return r.reshape(SIZE // 2, 2, SIZE // 2, 2).mean(axis=(1, 3))

    images = {}  # path without .jp2 -> (data, resolution)
    l2a = level == "L2A"
    for b in BANDS_10M:
        images[f"{img}/R10m/{STEM}_{b}_10m" if l2a else f"{img}/{STEM}_{b}"] = (digital_numbers(bands[b], valid, offset), 10)
    for b in BANDS_20M:
        images[f"{img}/R20m/{STEM}_{b}_20m" if l2a else f"{img}/{STEM}_{b}"] = (
            digital_numbers(coarse(bands[b]), half, offset), 20)
    tci = np.stack([np.where(valid, np.clip(bands[b] * 2 * 255, 1, 255), 0) for b in ("B04", "B03", "B02")]).astype(np.uint8)
    images[f"{img}/R10m/{STEM}_TCI_10m" if l2a else f"{img}/{STEM}_TCI"] = (tci, 10)
    if l2a:  # the aerosol and water vapour maps, the scene classification: not reflectance
        smooth = np.full((SIZE, SIZE), 120, np.uint16)
        images[f"{img}/R10m/{STEM}_AOT_10m"] = (smooth, 10)
        images[f"{img}/R10m/{STEM}_WVP_10m"] = (smooth * 10, 10)
        images[f"{img}/R20m/{STEM}_SCL_20m"] = (np.where(half, 4, 0).astype(np.uint8), 20)
    for stem, (data, resolution) in images.items():
        write_jp2(safe / f"{stem}.jp2", data, resolution)

    if l2a:
        quantification = '<QUANTIFICATION_VALUES_LIST><BOA_QUANTIFICATION_VALUE unit="none">10000</BOA_QUANTIFICATION_VALUE>' \
            '<AOT_QUANTIFICATION_VALUE unit="none">1000.0</AOT_QUANTIFICATION_VALUE>' \
            '<WVP_QUANTIFICATION_VALUE unit="cm">1000.0</WVP_QUANTIFICATION_VALUE></QUANTIFICATION_VALUES_LIST>'
        offsets = "<BOA_ADD_OFFSET_VALUES_LIST>" + "".join(
            f'<BOA_ADD_OFFSET band_id="{i}">{offset}</BOA_ADD_OFFSET>' for i in range(13)) + "</BOA_ADD_OFFSET_VALUES_LIST>"
    else:
        quantification = '<QUANTIFICATION_VALUE unit="none">10000</QUANTIFICATION_VALUE>'
        offsets = "<Radiometric_Offset_List>" + "".join(
            f'<RADIO_ADD_OFFSET band_id="{i}">{offset}</RADIO_ADD_OFFSET>' for i in range(13)) + "</Radiometric_Offset_List>"
    psd = "https://psd-14.sentinel2.eo.esa.int/PSD"
    (safe / f"MTD_MSI{level}.xml").write_text(f"""<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<n1:Level-{level[1:]}_User_Product xmlns:n1="{psd}/User_Product_Level-{level[1:]}.xsd">
  <n1:General_Info>
    <Product_Info>
      <PRODUCT_START_TIME>2023-08-23T09:55:59.024Z</PRODUCT_START_TIME>
      <PRODUCT_URI>{name}</PRODUCT_URI>
      <PROCESSING_LEVEL>Level-{level[1:]}</PROCESSING_LEVEL>
      <PRODUCT_TYPE>S2MSI{level[1:]}</PRODUCT_TYPE>
      <PROCESSING_BASELINE>05.09</PROCESSING_BASELINE>
      <Datatake datatakeIdentifier="GS2B_20230823T095559_033753_N05.09"><SPACECRAFT_NAME>Sentinel-2B</SPACECRAFT_NAME></Datatake>
      <Query_Options completeSingleTile="true"><PRODUCT_FORMAT>SAFE_COMPACT</PRODUCT_FORMAT></Query_Options>
      <Product_Organisation><Granule_List>
        <Granule datastripIdentifier="DS" granuleIdentifier="TL" imageFormat="JPEG2000">
          {"".join(f"<IMAGE_FILE>{stem}</IMAGE_FILE>" for stem in images)}
        </Granule>
      </Granule_List></Product_Organisation>
    </Product_Info>
    <Product_Image_Characteristics>
      <Special_Values><SPECIAL_VALUE_TEXT>NODATA</SPECIAL_VALUE_TEXT><SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX></Special_Values>
      <Special_Values><SPECIAL_VALUE_TEXT>SATURATED</SPECIAL_VALUE_TEXT><SPECIAL_VALUE_INDEX>65535</SPECIAL_VALUE_INDEX></Special_Values>
      {quantification}
      {offsets}
    </Product_Image_Characteristics>
  </n1:General_Info>
</n1:Level-{level[1:]}_User_Product>
""")
    sizes = "".join(f'<Size resolution="{r}"><NROWS>{SIZE * 10 // r}</NROWS><NCOLS>{SIZE * 10 // r}</NCOLS></Size>'
                    for r in (10, 20, 60))
    positions = "".join(f'<Geoposition resolution="{r}"><ULX>{ORIGIN[0]:.0f}</ULX><ULY>{ORIGIN[1]:.0f}</ULY>'
                        f"<XDIM>{r}</XDIM><YDIM>-{r}</YDIM></Geoposition>" for r in (10, 20, 60))
    (safe / "GRANULE" / granule / "MTD_TL.xml").write_text(f"""<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<n1:Level-{level[1:]}_Tile_ID xmlns:n1="{psd}/S2_PDI_Level-{level[1:]}_Tile_Metadata.xsd">
  <n1:General_Info><TILE_ID metadataLevel="Brief">TL</TILE_ID></n1:General_Info>
  <n1:Geometric_Info><Tile_Geocoding metadataLevel="Brief">
    <HORIZONTAL_CS_NAME>WGS84 / UTM zone 34N</HORIZONTAL_CS_NAME><HORIZONTAL_CS_CODE>EPSG:{EPSG}</HORIZONTAL_CS_CODE>
    {sizes}{positions}
  </Tile_Geocoding></n1:Geometric_Info>
</n1:Level-{level[1:]}_Tile_ID>
""")
    return safe


@pytest.fixture(scope="module")
def product(tmp_path_factory) -> Path:
    return make_product(tmp_path_factory.mktemp("s2"))


def subdataset(safe: Path, resolution: str = "10m", level: str = "L2A") -> str:
    return f"SENTINEL2_{level}:{safe / f'MTD_MSI{level}.xml'}:{resolution}:EPSG_{EPSG}"


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def upscale(src, out: Path, *options):
    res = invoke("upscale", src, out, "--scale", "2", "--model", "bicubic", "--captioner", "none", "-q", *options)
    assert res.exit_code == 0, res.output
    return out


def stack_like_the_10m_subdataset(safe: Path, path: Path) -> Path:
    """The 10 m bands as a GeoTIFF stack with a Sentinel-2 stack's metadata (B4, B3, B2, B8; nodata
    0, scale 0.0001, offset -0.1): what the existing 16-bit path reads."""
    img = safe / "GRANULE" / PRODUCT["L2A"][1] / "IMG_DATA" / "R10m"
    data = np.stack([rasterio.open(img / f"{STEM}_{b}_10m.jp2").read(1) for b in ("B04", "B03", "B02", "B08")])
    with rasterio.open(path, "w", driver="GTiff", width=SIZE, height=SIZE, count=4, dtype="uint16", nodata=0,
                       crs=f"EPSG:{EPSG}", transform=Affine(10, 0, ORIGIN[0], 0, -10, ORIGIN[1])) as ds:
        ds.write(data)
        ds.descriptions = DESCRIPTIONS_10M
        ds.scales, ds.offsets = (1e-4,) * 4, (-0.1,) * 4
    return path


# ------------------------------------------------------------------------- what INPUT names


def test_the_folder_the_metadata_file_and_the_subdataset_name_give_the_10m_subdataset(product, monkeypatch):
    want = subdataset(product)
    assert expand_inputs([product]) == expand_inputs([product / "MTD_MSIL2A.xml"]) == expand_inputs([want]) == [want]
    monkeypatch.chdir(product.parent)  # a relative path in a subdataset name is made absolute
    assert expand_inputs([f"SENTINEL2_L2A:{product.name}/MTD_MSIL2A.xml:10m:EPSG_{EPSG}"]) == [want]


def test_the_10m_bands_with_their_nodata_scales_offsets_and_descriptions(product, tmp_path):
    scene = open_scene([product], workdir=tmp_path)
    assert scene.paths == (subdataset(product),) and scene.source == str(tmp_path / ".geosr-inputs" / "sentinel2-1.vrt")
    assert (scene.count, scene.dtype, scene.width, scene.height) == (4, "uint16", SIZE, SIZE)
    assert scene.crs.to_epsg() == EPSG and scene.transform == Affine(10, 0, ORIGIN[0], 0, -10, ORIGIN[1])
    assert scene.descriptions == DESCRIPTIONS_10M  # not AOT, WVP: no reflectance
    assert scene.nodata == 0 and scene.scales == (1e-4,) * 4 and scene.offsets == (-0.1,) * 4
    assert [c.name for c in scene.colorinterp] == ["red", "green", "blue", "nir"]
    assert scene.tags["PRODUCT_TYPE"] == "S2MSI2A" and scene.tags["BOA_QUANTIFICATION_VALUE"] == "10000"
    with rasterio.open(scene.source) as ds:
        assert ds.tags(1)["WAVELENGTH"] == "665" and ds.tags(4)["BANDNAME"] == "B8"
        # value * scale + offset is the reflectance; the collar is no-data
        bands, valid = reflectance()
        np.testing.assert_allclose(ds.read(1, masked=True) * 1e-4 - 0.1, np.ma.masked_array(bands["B04"], ~valid), atol=6e-5)
        np.testing.assert_array_equal(ds.dataset_mask() > 0, valid)
    with pytest.raises(InputError, match="needs a work directory"):
        open_scene([product])


def test_other_subdatasets_20m_and_tci(product, tmp_path):
    scene = open_scene([subdataset(product, "20m")], workdir=tmp_path)
    assert [d.split(",")[0] for d in scene.descriptions] == ["B5", "B6", "B7", "B8A", "B11", "B12"]  # not AOT, SCL...
    assert scene.transform.a == 20 and scene.width == SIZE // 2 and scene.scales == (1e-4,) * 6
    tci = open_scene([subdataset(product, "TCI")], workdir=tmp_path / "tci")
    assert (tci.count, tci.dtype, tci.nodata, tci.scales) == (3, "uint8", 0, (1.0,) * 3)


def test_a_level_1c_product_and_a_product_before_baseline_04(tmp_path):
    l1c = make_product(tmp_path / "l1c", "L1C")
    assert expand_inputs([l1c]) == [subdataset(l1c, level="L1C")]
    scene = open_scene([l1c], workdir=tmp_path / "w1")
    assert scene.descriptions == DESCRIPTIONS_10M and scene.scales == (1e-4,) * 4 and scene.offsets == (-0.1,) * 4
    old = open_scene([make_product(tmp_path / "old", offset=0)], workdir=tmp_path / "w2")  # no offset before 04.00
    assert old.scales == (1e-4,) * 4 and old.offsets == (0.0,) * 4


# ------------------------------------------------------------------------------ runs


def test_upscale_a_product_as_a_16_bit_stack(product, tmp_path):
    out = upscale(product, tmp_path / "product.tif")
    with rasterio.open(out) as ds:
        assert ds.crs.to_epsg() == EPSG and ds.transform == Affine(5, 0, ORIGIN[0], 0, -5, ORIGIN[1])
        assert (ds.width, ds.height, ds.count, ds.dtypes) == (2 * SIZE, 2 * SIZE, 4, ("uint16",) * 4)
        assert ds.descriptions == DESCRIPTIONS_10M and ds.nodata == 0
        assert ds.scales == (1e-4,) * 4 and ds.offsets == (-0.1,) * 4
        assert ds.tags()["GEOSR_SOURCE"] == f"{product.name}:10m:EPSG_{EPSG}"
        assert ds.tags()["PRODUCT_URI"] == product.name
        np.testing.assert_array_equal(ds.dataset_mask() > 0, np.kron(reflectance()[1], np.ones((2, 2), bool)))
        pixels = ds.read()
    # the bytes the same bands give as a GeoTIFF stack (the 16-bit path), through each way of naming it
    stack = upscale(stack_like_the_10m_subdataset(product, tmp_path / "stack.tif"), tmp_path / "stack_x2.tif")
    for i, name in enumerate([product / "MTD_MSIL2A.xml", subdataset(product), stack]):
        got = stack if name == stack else upscale(name, tmp_path / f"named{i}.tif")
        with rasterio.open(got) as ds:
            np.testing.assert_array_equal(ds.read(), pixels)
    assert invoke("validate", out, "--source", product).exit_code == 0


def test_the_model_takes_r_g_b_from_the_band_descriptions(product, tmp_path):
    geosr.upscale_to_file(product, tmp_path / "model.tif", scale=2, tile=64, overlap=8)
    with rasterio.open(tmp_path / "model.tif") as ds:
        tags = ds.tags()
        assert ds.descriptions == DESCRIPTIONS_10M and ds.dtypes == ("uint16",) * 4
    assert tags["GEOSR_RGB_BANDS"] == "1,2,3" and tags["GEOSR_RGB_SOURCE"] == "band descriptions"
    assert tags["GEOSR_MODEL_BANDS"] == "1,2,3;4"


def test_the_lazy_result_of_a_product(product, tmp_path):
    options = dict(scale=2, model="bicubic", captioner="none")
    hr = geosr.upscale(str(product), **options)
    geosr.upscale_to_file(product, tmp_path / "out.tif", **options)
    with rasterio.open(tmp_path / "out.tif") as ds:
        np.testing.assert_array_equal(hr.values, ds.read())
    assert list(hr.attrs["long_name"]) == list(DESCRIPTIONS_10M)


def test_a_zipped_product_as_downloaded(product, tmp_path):
    archive = tmp_path / product.name.replace(".SAFE", ".zip")
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted(product.rglob("*")):
            z.write(f, f.relative_to(product.parent))
    name = f"SENTINEL2_L2A:/vsizip/{archive}/{product.name}/MTD_MSIL2A.xml:10m:EPSG_{EPSG}"
    assert expand_inputs([archive]) == expand_inputs([name]) == [name]
    assert files_read([name]) == [str(archive)]  # the run's identity: the zip
    upscale(archive, tmp_path / "zipped.tif")
    upscale(product, tmp_path / "unpacked.tif")
    with rasterio.open(tmp_path / "zipped.tif") as a, rasterio.open(tmp_path / "unpacked.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())
        assert a.tags()["GEOSR_SOURCE"] == b.tags()["GEOSR_SOURCE"] and a.descriptions == b.descriptions
    # a zip named otherwise is not taken for a product: GDAL opens it, and geosr lists its subdatasets
    other = archive.rename(tmp_path / "download.zip")
    res = invoke("upscale", other, tmp_path / "x.tif", "--scale", "2", "--model", "bicubic", "-q")
    assert res.exit_code == 3 and "holds no bands of its own; name one of its subdatasets as INPUT:" in res.stderr
    assert f"SENTINEL2_L2A:/vsizip/{other}/{product.name}/MTD_MSIL2A.xml:10m:EPSG_{EPSG}" in res.stderr


def test_a_20m_subdataset_runs(product, tmp_path):
    out = upscale(subdataset(product, "20m"), tmp_path / "20m.tif")
    with rasterio.open(out) as ds:
        assert ds.count == 6 and ds.transform.a == 10 and ds.width == SIZE and ds.crs.to_epsg() == EPSG


def test_info_on_a_product(product):
    res = invoke("info", product, "--json")
    assert res.exit_code == 0, res.output
    facts = json.loads(res.stdout)
    assert facts["inputs"] == [subdataset(product)] and facts["bands"] == 4 and facts["nodata"] == 0
    assert facts["descriptions"] == list(DESCRIPTIONS_10M) and facts["colorinterp"] == ["red", "green", "blue", "nir"]
    assert facts["rgb_bands"] == [1, 2, 3] and facts["rgb_source"] == "band descriptions"
    assert facts["model_bands"] == [[1, 2, 3], [4]]
    assert facts["subdatasets"] == [subdataset(product, r) for r in ("10m", "20m", "60m", "TCI")]
    text = invoke("info", product).stdout
    assert f"\nsubdatasets:\n  {subdataset(product)}\n  {subdataset(product, '20m')}\n" in text


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("case, message", [
    ("empty", "is a Sentinel-2 .SAFE folder without MTD_MSIL2A.xml or MTD_MSIL1C.xml"),
    ("15m", "GDAL cannot open the Sentinel-2 subdataset .*15m.*; the product's subdatasets: .*:10m:EPSG_32634"),
    ("60m", "the image of band B01 is missing from the product"),
    ("missing xml", "the product's metadata file /nowhere/MTD_MSIL2A.xml does not exist"),
    ("no xml in the name", "a Sentinel-2 subdataset name is DRIVER:METADATA.xml:RESOLUTION:EPSG_CODE"),
])
def test_bad_input_is_refused_naming_the_problem_and_leaves_nothing(product, tmp_path, case, message):
    (tmp_path / "empty.SAFE").mkdir()
    src = {"empty": tmp_path / "empty.SAFE", "15m": subdataset(product, "15m"), "60m": subdataset(product, "60m"),
           "missing xml": f"SENTINEL2_L2A:/nowhere/MTD_MSIL2A.xml:10m:EPSG_{EPSG}",
           "no xml in the name": "SENTINEL2_L2A:10m"}[case]
    (tmp_path / "out").mkdir()
    res = invoke("upscale", src, tmp_path / "out" / "x.tif", "--scale", "2", "--model", "bicubic", "-q")
    assert res.exit_code == 3, res.output
    assert len(res.stderr.strip().splitlines()) == 1 and re.search(message, res.stderr), res.stderr
    assert not list((tmp_path / "out").iterdir())


def test_a_product_with_several_10m_subdatasets_lists_them(product, monkeypatch):
    offered = [subdataset(product, r) for r in ("10m", "20m")] + [subdataset(product).replace("32634", "32635")]
    monkeypatch.setattr(sentinel2, "_subdatasets", lambda xml: offered)
    with pytest.raises(InputError, match="several 10 m subdatasets .*name one of its subdatasets as INPUT:\n  SENT"):
        expand_inputs([product])


def test_refused_without_the_drivers(tmp_path, monkeypatch):
    (tmp_path / "p.SAFE").mkdir()
    (tmp_path / "p.SAFE" / "MTD_MSIL2A.xml").write_text("<x/>")
    monkeypatch.setattr(sentinel2, "_drivers", lambda: frozenset({"GTiff"}))
    with pytest.raises(InputError, match=r"has no SENTINEL2 driver and no JPEG-2000 driver \(JP2OpenJPEG"):
        expand_inputs([tmp_path / "p.SAFE"])


# ---------------------------------------------------------------------------- resume


RUN = ["--scale", "2", "--model", "bicubic", "--captioner", "none", "--tile", "32", "--overlap", "8",
       "--batch-size", "1", "-q"]


def test_resume_a_product_and_refuse_it_once_a_band_image_changed(tmp_path, monkeypatch):
    safe = make_product(tmp_path)
    b04 = safe / "GRANULE" / PRODUCT["L2A"][1] / "IMG_DATA" / "R10m" / f"{STEM}_B04_10m.jp2"
    read = files_read([subdataset(safe)])  # the run's identity: every file GDAL reads for it
    assert {str(safe / "MTD_MSIL2A.xml"), str(b04)} <= set(read) and not any(f.startswith("SENTINEL2") for f in read)
    reference = upscale(safe, tmp_path / "reference.tif", *RUN[6:])
    out = tmp_path / "out.tif"
    stop_half_way(monkeypatch, [str(safe)], out)
    res = invoke("upscale", safe, out, *RUN, "--resume")
    assert res.exit_code == 0, res.output
    with rasterio.open(out) as a, rasterio.open(reference) as b:
        np.testing.assert_array_equal(a.read(), b.read())
    out.unlink()
    out.with_name("out.captions.geojson").unlink()
    stop_half_way(monkeypatch, [str(safe)], out)
    stat = b04.stat()
    with rasterio.open(b04) as ds:
        data = ds.read(1)
    write_jp2(b04, np.where(data > 0, data // 2 + 1, 0).astype(np.uint16), 10)
    os.utime(b04, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    res = invoke("upscale", safe, out, *RUN, "--resume")
    assert res.exit_code == 7 and f"input {b04}" in res.stderr, res.output
    assert not out.exists()
