# Set-up-and-go targets. Each creates its own virtual environment on first use.
# torch is pinned and installed first so a bare `torch` requirement never pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0

.PHONY: demo test test-gpu notebook qgis-plugin clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test,reports,evaluation]'
	touch $@

# The main job on the sample scene shipped in the repo (no download, no GPU).
demo: $(VENV)/.installed
	mkdir -p out
	$(VENV)/bin/geosr upscale tests/data/rgbn_suba.tif out/rgbn_suba_x4.tif --scale 4 --overwrite
	$(VENV)/bin/geosr validate out/rgbn_suba_x4.tif --source tests/data/rgbn_suba.tif

test: $(VENV)/.installed
	$(PY) -m pytest

# CUDA paths (bf16/fp16, OOM back-off): on a machine with a GPU; they skip without one.
test-gpu: $(VENV)/.installed
	$(PY) -m pytest -m gpu

# The quickstart notebook (notebooks/quickstart.ipynb) in JupyterLab, with the notebook extra installed once.
$(VENV)/.notebook: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[notebook]'
	touch $@

notebook: $(VENV)/.notebook
	$(VENV)/bin/jupyter lab notebooks/quickstart.ipynb

# The QGIS Processing provider as a zip for Plugins > Manage and Install Plugins > Install from ZIP.
qgis-plugin:
	mkdir -p dist
	$(PYTHON) -c "import pathlib, zipfile; \
	files = [p for p in sorted(pathlib.Path('qgis_plugin/geosr_qgis').rglob('*')) if p.is_file() and '__pycache__' not in p.parts]; \
	z = zipfile.ZipFile('dist/geosr_qgis.zip', 'w', zipfile.ZIP_DEFLATED); \
	[z.write(p, p.relative_to('qgis_plugin')) for p in files]; z.close(); print('dist/geosr_qgis.zip:', len(files), 'files')"

clean:
	rm -rf $(VENV) out build dist *.egg-info
