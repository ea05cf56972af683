"""Exception tree of geosr.

Every error geosr raises on purpose derives from :class:`GeosrError`, so a caller can catch
all of them at once; the narrow classes also inherit the matching builtin (``ValueError``,
``OSError``...) so code written against the builtins keeps working.
"""

from __future__ import annotations


class GeosrError(Exception):
    """Base class of all geosr errors."""


class InputError(GeosrError, ValueError):
    """An input raster, option or file is not usable (wrong grid, bad band list, bad AOI...)."""


class GridMismatchError(InputError):
    """Several inputs of a mosaic do not share one CRS / pixel grid."""


class GeoreferenceError(InputError):
    """The georeferencing of an input cannot be carried to the output."""


class OutputExistsError(GeosrError, FileExistsError):
    """The output path exists and overwriting was not asked for."""


class ModelError(GeosrError, ValueError):
    """A model spec cannot be resolved or loaded."""


class CaptionerError(GeosrError, ValueError):
    """A captioner spec cannot be resolved or loaded."""


class ValidationError(GeosrError):
    """``geosr validate`` found problems in an output file."""
