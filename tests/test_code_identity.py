"""geosr's code and the numeric libraries, as a run's identity holds them (geosr.code_identity)."""

from __future__ import annotations

import shutil

import pytest

import geosr.code_identity as code_identity


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A small stand-in for the installed package, its digest recomputed on each call."""
    root = tmp_path / "geosr"
    for name, text in (("__init__.py", "x = 1\n"), ("tiling.py", "def f(): pass\n"), ("data/thresholds.json", "{}")):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    monkeypatch.setattr(code_identity, "_PACKAGE", root)
    monkeypatch.setattr(code_identity, "_SHIPPED_MODELS", root / "data" / "models")
    pipelines = tmp_path / "pipelines"  # an editable install maps geosr.pipelines beside the package
    pipelines.mkdir()
    (pipelines / "pipeline_geosr.py").write_text("steps = 1\n")
    monkeypatch.setattr(code_identity, "_pipelines_folder", lambda: pipelines)

    def digest() -> str:
        code_identity.code_digest.cache_clear()
        return code_identity.code_digest()

    yield root, digest
    code_identity.code_digest.cache_clear()


def test_the_code_digest_follows_the_packages_files(package):
    root, digest = package
    first = digest()
    assert digest() == first  # deterministic
    (root / "tiling.py").write_text("def f(): return 1\n")
    changed = digest()
    assert changed != first
    (root / "data" / "thresholds.json").write_text('{"x4": 0.2}')  # small data counts too
    assert digest() != changed
    changed = digest()
    # compiled files and the shipped networks (fingerprinted on their own) do not
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "tiling.cpython-311.pyc").write_bytes(b"\0")
    (root / "data" / "models" / "net").mkdir(parents=True)
    (root / "data" / "models" / "net" / "weights.safetensors").write_bytes(b"\1")
    assert digest() == changed
    (root / ".tiling.py.swp").write_bytes(b"\2")  # an editor's swap file: not code
    assert digest() == changed
    (root.parent / "pipelines" / "pipeline_geosr.py").write_text("steps = 2\n")  # the diffusion pipeline's code
    assert digest() != changed
    changed = digest()
    shutil.move(root / "tiling.py", root / "tiles.py")  # a rename is another tree
    assert digest() != changed


def test_the_library_versions_name_torch_and_gdal():
    versions = code_identity.library_versions()
    assert "torch " in versions and "(GDAL " in versions and "numpy " in versions
