"""Checks of an output file: COG validity and georeferencing against its source."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rio_cogeo.cogeo import cog_validate

from geosr.georef import scale_transform
from geosr.scene import open_raster

__all__ = ["ValidationResult", "validate_output"]


@dataclass
class ValidationResult:
    """Problems (``errors``) and remarks (``warnings``) found in an output."""

    path: Path
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    facts: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors


def validate_output(path: str | os.PathLike, source: str | os.PathLike | None = None) -> ValidationResult:
    """Validate ``path`` as a COG and, given ``source``, as its refined grid.

    Checks: COG layout (rio-cogeo), no ``.aux.xml`` sidecar, and against the source: an
    integer scale, ``transform == source.transform @ Affine.scale(1/scale)``, same bounds,
    CRS, dtype, nodata and a mask when the source has one.
    """
    path = Path(path)
    res = ValidationResult(path)
    if not path.exists():
        res.errors.append(f"{path} does not exist")
        return res
    with rasterio.Env(GDAL_PAM_ENABLED="NO"):
        valid, errors, warns = cog_validate(str(path), quiet=True)
        res.errors += [f"COG: {e}" for e in errors]
        res.warnings += [f"COG: {w}" for w in warns]
        if Path(str(path) + ".aux.xml").exists():
            res.errors.append(f"a sidecar {path.name}.aux.xml exists: metadata should live in the file")
        with open_raster(str(path)) as out:
            res.facts.update(
                size=(out.width, out.height), count=out.count, dtype=out.dtypes[0], crs=str(out.crs),
                transform=tuple(out.transform)[:6], nodata=out.nodata, colorinterp=[c.name for c in out.colorinterp],
                overviews=out.overviews(1),
            )
            if not out.overviews(1) and max(out.width, out.height) > 512:
                res.warnings.append("no overviews")
            if source is None:
                return res
            with open_raster(str(source)) as src:
                _check_against_source(res, out, src)
    return res


def _check_against_source(res: ValidationResult, out, src) -> None:
    sx, sy = out.width / src.width, out.height / src.height
    if sx != sy or sx != int(sx):
        res.errors.append(f"size {out.width}x{out.height} is not an integer multiple of the source {src.width}x{src.height}")
        return
    s = int(sx)
    res.facts["scale"] = s
    if src.crs != out.crs:
        res.errors.append(f"CRS differs: source {src.crs}, output {out.crs}")
    if not src.gcps[0]:
        want = scale_transform(src.transform, s)
        if not out.transform.almost_equals(want, precision=1e-9 * max(1.0, abs(src.transform.c), abs(src.transform.f))):
            res.errors.append(f"transform {tuple(out.transform)[:6]} != source transform / {s} {tuple(want)[:6]}")
        if not np.allclose(out.bounds, src.bounds, rtol=0, atol=1e-6 * max(abs(v) for v in src.res)):
            res.errors.append(f"bounds differ: source {tuple(src.bounds)}, output {tuple(out.bounds)}")
    if out.dtypes[0] != src.dtypes[0]:
        res.errors.append(f"dtype differs: source {src.dtypes[0]}, output {out.dtypes[0]}")
    if src.nodata is not None and out.nodata != src.nodata and not (np.isnan(src.nodata) and np.isnan(out.nodata or 0.0)):
        res.errors.append(f"nodata differs: source {src.nodata}, output {out.nodata}")
    src_masked = src.nodata is not None or any(rasterio.enums.MaskFlags.per_dataset in f for f in src.mask_flag_enums)
    out_masked = out.nodata is not None or any(rasterio.enums.MaskFlags.per_dataset in f for f in out.mask_flag_enums)
    if src_masked and not out_masked:
        res.errors.append("the source has a mask or nodata, the output has neither")
