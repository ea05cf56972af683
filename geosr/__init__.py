"""geosr: text-guided diffusion super-resolution for large georeferenced rasters.

The public API is :func:`upscale` and :func:`caption` (see :mod:`geosr.api`) and the
``DataArray.geosr`` accessor (:mod:`geosr.accessor`).
"""

__version__ = "0.1.0"

from geosr.api import caption, upscale  # noqa: E402  (after __version__: setup.cfg reads it)
from geosr import accessor  # noqa: E402,F401  (registers DataArray.geosr)

__all__ = ["__version__", "upscale", "caption"]
