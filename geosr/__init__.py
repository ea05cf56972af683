"""geosr: text-guided diffusion super-resolution for large georeferenced rasters.

The public API (see :mod:`geosr.api`): :func:`upscale` (a lazy DataArray), :func:`upscale_to_file`
(a COG and its :class:`RunReport`), :func:`caption`, and the ``DataArray.geosr`` accessor
(:mod:`geosr.accessor`). ``import geosr`` loads neither torch nor diffusers: they load when
a run starts.
"""

__version__ = "0.1.0"

from geosr.api import caption, upscale, upscale_to_file  # noqa: E402  (after __version__: setup.cfg reads it)
from geosr import accessor  # noqa: E402,F401  (registers DataArray.geosr)

__all__ = ["__version__", "upscale", "upscale_to_file", "caption", "RunReport"]


def __getattr__(name: str):
    # RunReport lives with the engine, which loads torch: only when asked for
    if name == "RunReport":
        from geosr.engine import RunReport

        return RunReport
    raise AttributeError(f"module 'geosr' has no attribute {name!r}")
