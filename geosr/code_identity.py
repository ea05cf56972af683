"""What a run's pixels depend on besides its inputs, settings and model: geosr's own code and
the libraries that compute them, for a run's identity (:func:`geosr.resumable.run_identity`).

``geosr.__version__`` stayed one string across hundreds of commits that changed pixels (a
mosaic's masks, a band's nodata, the routing threshold): a run stopped under one and resumed
under the next mixed both in an output that exited 0. A digest of the package's files and the
versions of the numeric libraries tell them apart; a resume across them is refused.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
from pathlib import Path

__all__ = ["PIXEL_LIBRARIES", "code_digest", "library_versions"]

_PACKAGE = Path(__file__).parent
#: The shipped networks are in the identity by their own fingerprint (the "model fingerprint").
_SHIPPED_MODELS = _PACKAGE / "data" / "models"
#: Distributions whose code computes or reads pixels (GDAL's version comes with rasterio's).
PIXEL_LIBRARIES = ("numpy", "scipy", "rasterio", "torch", "diffusers", "transformers", "onnxruntime")


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 (16 hex digits) of the installed geosr package's code - its ``.py`` files, those of
    ``geosr.pipelines`` wherever an editable install maps it - and its small data (``data/``, but
    the shipped networks). Other files (an editor's swap file) do not count."""
    roots = {"": _PACKAGE, "pipelines/": _pipelines_folder()}
    files = {}
    for prefix, root in roots.items():
        if root is None:
            continue
        for path in root.rglob("*"):
            data_file = _PACKAGE / "data" in path.parents and _SHIPPED_MODELS not in path.parents
            if path.is_file() and "__pycache__" not in path.parts and (path.suffix == ".py" or data_file):
                files.setdefault(path.resolve(), prefix + path.relative_to(root).as_posix())
    digest = hashlib.sha256()
    for path, name in sorted(files.items(), key=lambda item: item[1]):
        data, name = path.read_bytes(), name.encode()
        digest.update(b"%d:%s%d:" % (len(name), name, len(data)) + data)  # lengths: no two trees alike
    return digest.hexdigest()[:16]


def _pipelines_folder() -> Path | None:
    """Where ``geosr.pipelines`` is (``pipelines/`` beside ``geosr/`` in an editable install of
    this repository, ``geosr/pipelines/`` in a wheel), found without importing it (torch)."""
    import importlib.util

    spec = importlib.util.find_spec("geosr.pipelines")
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) if locations else None


@functools.lru_cache(maxsize=1)
def library_versions() -> str:
    """``numpy 2.3.1, rasterio 1.4.3 (GDAL 3.10.2), torch 2.13.0, ...``: the installed versions
    of :data:`PIXEL_LIBRARIES` (those not installed left out), read without importing them."""
    parts = []
    for name in PIXEL_LIBRARIES:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if name == "rasterio":
            import rasterio  # already imported by every run; GDAL's version is only known from it

            version += f" (GDAL {rasterio.__gdal_version__})"
        parts.append(f"{name} {version}")
    return ", ".join(parts)
