"""The QGIS Processing provider (qgis_plugin/geosr_qgis).

The runner is tested here with a stand-in executable; the provider itself runs in a real
PyQGIS (``apt install python3-qgis``: the system Python, as QGIS runs plugins) driving the
real geosr executable of this environment (tests/qgis_driver.py). Those tests are skipped
where PyQGIS is not installed.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import rasterio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "qgis_plugin"))

from geosr_qgis.runner import GeosrCanceled, GeosrFailed, find_executable, progress_of, run_geosr  # noqa: E402

SYSTEM_PYTHON = "/usr/bin/python3"
GEOSR = shutil.which("geosr", path=os.path.dirname(sys.executable)) or "geosr"


class Feedback:
    """QgsProcessingFeedback's interface, recorded."""

    def __init__(self, cancel_at=None):
        self.progress, self.lines, self.info, self.cancel_at = [], [], [], cancel_at

    def setProgress(self, p):  # noqa: N802
        self.progress.append(p)

    def isCanceled(self):  # noqa: N802
        return self.cancel_at is not None and any(p >= self.cancel_at for p in self.progress)

    def pushInfo(self, text):  # noqa: N802
        self.info.append(text)

    def pushConsoleInfo(self, text):  # noqa: N802
        self.lines.append(text)


def _fake_geosr(tmp_path, body):
    exe = tmp_path / "geosr"
    exe.write_text("#!" + sys.executable + "\n" + textwrap.dedent(body))
    exe.chmod(0o755)
    return str(exe)


def test_progress_is_read_from_the_bar():
    assert progress_of("upscale:  42%|####      | 5/20 [00:03<00:05,  1.2tile/s]") == 25.0
    assert progress_of("a 1/4 [x\rb 3/4 [y") == 75.0 and progress_of("wrote out.tif (12 tiles)") is None


def test_runner_relays_progress_and_raises_the_one_line_error(tmp_path):
    exe = _fake_geosr(tmp_path, """
        import sys
        for i in range(1, 5):
            sys.stderr.write(f"\\rupscale: {25 * i}%|## | {i}/4 [00:01<00:01]")
        sys.stderr.write("\\nError: --bands: band 9 does not exist (the input has 3 bands)\\n")
        sys.exit(3)
    """)
    feedback = Feedback()
    with pytest.raises(GeosrFailed) as err:
        run_geosr(exe, ["upscale"], feedback)
    assert str(err.value) == "Error: --bands: band 9 does not exist (the input has 3 bands)"
    assert feedback.progress[-1] == 100.0 and "running:" in feedback.info[0]


def test_cancel_stops_the_executable_with_sigterm(tmp_path):
    exe = _fake_geosr(tmp_path, """
        import signal, sys, time
        signal.signal(signal.SIGTERM, lambda *a: (sys.stderr.write("\\nstopped by SIGTERM\\n"), sys.exit(8)))
        sys.stderr.write("\\rupscale: 10%| | 1/10 [00:01<00:09]")
        sys.stderr.flush()
        time.sleep(30)
    """)
    feedback = Feedback(cancel_at=10)
    with pytest.raises(GeosrCanceled):
        run_geosr(exe, [], feedback)
    assert "stopped by SIGTERM" in feedback.lines


def test_a_cancel_during_the_commit_that_geosr_finishes_is_no_failure(tmp_path):
    """Found by review: Cancel during the output's commit (geosr defers the stop and exits 0 with the
    output written) raised "geosr stopped and wrote nothing", and the layer was not loaded."""
    exe = _fake_geosr(tmp_path, """
        import signal, sys, time
        signal.signal(signal.SIGTERM, lambda *a: None)  # the commit defers the stop
        sys.stderr.write("\\rupscale: 100%| | 10/10 [00:01<00:00]")
        sys.stderr.flush()
        time.sleep(1)
        sys.stderr.write("\\nwrote out.tif\\n")
        sys.exit(0)
    """)
    feedback = Feedback(cancel_at=100)
    run_geosr(exe, [], feedback)
    assert "wrote out.tif" in feedback.lines


def test_a_missing_executable_says_where_to_set_it(tmp_path, monkeypatch):
    monkeypatch.delenv("GEOSR_EXECUTABLE", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(GeosrFailed, match="Providers > geosr"):
        find_executable(str(tmp_path / "nope"))


def _has_pyqgis() -> bool:
    if not os.path.exists(SYSTEM_PYTHON):
        return False
    return subprocess.run([SYSTEM_PYTHON, "-c", "import qgis.core"], capture_output=True).returncode == 0


pyqgis = pytest.mark.skipif(not _has_pyqgis(), reason="PyQGIS not installed (apt install python3-qgis)")


def _drive(*args, timeout=600):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", XDG_RUNTIME_DIR="/tmp")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([SYSTEM_PYTHON, str(ROOT / "tests" / "qgis_driver.py"), GEOSR, *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pyqgis
def test_the_provider_registers_both_algorithms():
    assert _drive("algorithms") == ["geosr:caption", "geosr:upscale"]


@pyqgis
def test_processing_run_writes_a_cog_and_loads_it_with_labelled_captions(tmp_path, data_dir):
    out = tmp_path / "out.tif"
    loaded = _drive("upscale", data_dir / "RGB.byte.tif", out)
    assert loaded["result"] == {"OUTPUT": str(out), "CAPTIONS": str(tmp_path / "out.captions.geojson")}
    raster, captions = loaded["layers"]["Super-resolved raster"], loaded["layers"]["Tile captions"]
    assert raster["valid"] and raster["renderer"] == "multibandcolor"
    assert captions["valid"] and captions["labels"] == "caption" and captions["features"] == 12
    with rasterio.open(out) as ds, rasterio.open(data_dir / "RGB.byte.tif") as src:
        assert ds.width == 2 * src.width and ds.crs == src.crs and ds.overviews(1)
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"


@pyqgis
def test_detail_and_the_predicted_error_map_are_run_and_loaded(tmp_path, data_dir):
    from diffusers import LCMScheduler

    from geosr.pipelines import GeoSRPipeline
    from tiny_models import tiny_pipeline_components, with_tiny_heads

    components = tiny_pipeline_components(student=True, scale=2, unshuffle_factor=4, tmp_path=tmp_path)
    components["scheduler"] = LCMScheduler.from_config(components["scheduler"].config, prediction_type="sample")
    GeoSRPipeline(**with_tiny_heads(components)).save_pretrained(tmp_path / "model")
    out, error = tmp_path / "out.tif", tmp_path / "out_error.tif"
    loaded = _drive("upscale", data_dir / "RGB.byte.tif", out, f"MODEL={tmp_path / 'model'}", "DETAIL=0.5",
                    f"UNCERTAINTY={error}", "TILE=128", "CAPTIONER=none", "LR_CONSISTENCY=2")
    assert loaded["result"]["UNCERTAINTY"] == str(error)
    layer = loaded["layers"]["Predicted error (RMSE in output DN; every tile on the model)"]
    assert layer["valid"] and layer["source"] == str(error)
    with rasterio.open(out) as ds, rasterio.open(error) as err:
        assert ds.tags()["GEOSR_DETAIL"] == "0.5" and ds.tags()["GEOSR_UNCERTAINTY"] == error.name
        assert ds.tags()["GEOSR_LR_CONSISTENCY"] == "always"
        assert (err.width, err.height, err.transform, err.crs) == (ds.width, ds.height, ds.transform, ds.crs)


@pyqgis
def test_a_bad_input_shows_geosr_s_one_line_error_and_writes_nothing(tmp_path, data_dir):
    failed = _drive("fail", data_dir / "RGB.byte.tif", tmp_path / "out.tif", "BANDS=1,9")
    assert failed["error"] == "Error: --bands: band 9 does not exist (the input has 3 bands)"
    assert list(tmp_path.iterdir()) == []


@pyqgis
def test_cancel_leaves_nothing_at_the_output_and_a_rerun_resumes(tmp_path, data_dir):
    out = tmp_path / "out.tif"
    canceled = _drive("cancel", data_dir / "RGB.byte.tif", out)
    assert canceled["canceled"] and canceled["error"].startswith("canceled")
    assert not out.exists() and not (tmp_path / "out.captions.geojson").exists()
    assert [p.name.startswith(".out.tif.geosr-run-") for p in tmp_path.iterdir()] == [True]  # kept for resume
    _drive("upscale", data_dir / "RGB.byte.tif", out, "SCALE=2", "TILE=48")  # the same settings, Resume on
    assert out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pyqgis
def test_caption_algorithm_with_an_aoi_writes_and_labels_the_captions(tmp_path, data_dir):
    import geosr

    with rasterio.open(data_dir / "RGB.byte.tif") as ds:
        left, top = ds.transform * (0, 0)
        right, bottom = ds.transform * (100, 100)  # the top-left 100 px: one tile of 48
        crs = ds.crs.to_string()
    aoi = tmp_path / "aoi.geojson"
    aoi.write_text(json.dumps({"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": crs}},
                               "features": [{"type": "Feature", "properties": {}, "geometry": {"type": "Polygon",
                                   "coordinates": [[[left, top], [right, top], [right, bottom], [left, bottom],
                                                    [left, top]]]}}]}))
    out = tmp_path / "captions.geojson"
    done = _drive("caption", data_dir / "RGB.byte.tif", out, "TILE=48", f"AOI={aoi}")
    expected = geosr.caption(str(data_dir / "RGB.byte.tif"), tile=48, aoi=aoi)
    assert done["result"] == {"OUTPUT": str(out)} and done["labels"] == "caption"
    assert done["features"] == len(expected["features"]) < 20  # the AOI's tiles only
    assert done["captions"] == sorted({f["properties"]["caption"] for f in expected["features"]})


@pyqgis
def test_caption_algorithm_reads_the_red_green_blue_bands_it_is_given(tmp_path, data_dir):
    """The caption algorithm had no RGB bands parameter: a B2,B3,B4 stack was read as R, G, B."""
    import geosr

    out = tmp_path / "captions.geojson"
    done = _drive("caption", data_dir / "RGB.byte.tif", out, "TILE=96", "RGB_BANDS=3,2,1")
    expected = geosr.caption(str(data_dir / "RGB.byte.tif"), tile=96, rgb_bands=(3, 2, 1))
    assert done["captions"] == sorted({f["properties"]["caption"] for f in expected["features"]})


@pyqgis
def test_more_options_are_split_as_a_shell_splits_them():
    code = ("import json, sys; sys.path.insert(0, 'qgis_plugin'); from geosr_qgis.algorithms import _split_options; "
            "from qgis.core import QgsProcessingException\n"
            "out = [_split_options('--steps 2 --captioner \"fixed:no blur; no noise\"')]\n"
            "try:\n    _split_options('--captioner \"fixed:unbalanced')\nexcept QgsProcessingException as e:\n"
            "    out.append(str(e))\nprint(json.dumps(out))")
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([SYSTEM_PYTHON, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    split, error = json.loads(proc.stdout.strip().splitlines()[-1])
    assert split == ["--steps", "2", "--captioner", "fixed:no blur; no noise"]
    assert error.startswith("More options: No closing quotation")
