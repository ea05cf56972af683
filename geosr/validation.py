"""Checks of an output file: COG layout, every pixel readable, georeferencing against its source.

``validate_output`` is what ``geosr validate`` runs. It reads every block of every band,
mask and overview (a truncated or corrupt file fails there, not in a user's GIS), and
remarks on an output whose bands are constant where the source varies (pixels lost on the
way, e.g. an all-zero COG). Given the source, it also compares the output, averaged back onto
a decimated source grid, with the source region by region: a tile left black or filled from
other data (a damaged resume, a changed input) is an error even when the rest is right.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import MaskFlags, Resampling
from rio_cogeo.cogeo import cog_validate

from geosr.errors import GDAL_ERRORS, InputError, gdal_cause
from geosr.georef import scale_gcps, scale_rpcs, scale_transform
from geosr.scene import data_dtype, open_raster, placed_by, same_nodata
from geosr.sentinel2 import resolve_input, write_vrt

__all__ = ["ValidationResult", "validate_output"]

# Pixels of the source read (decimated) to tell a varying band from a constant one.
SOURCE_SAMPLE_PX = 1024
# The source-agreement check: regions of this many sample px a side; a region disagrees when
# the mean |output averaged onto the source grid - source| of a band exceeds this share of the
# band's 1-99 % range (a super-resolved output averages back to its source within a few %).
AGREEMENT_REGION_PX, AGREEMENT_TOLERANCE = 16, 0.25


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

    Checks: COG layout (rio-cogeo), no ``.aux.xml`` sidecar, every block of every band,
    mask and overview readable; against the source: an integer scale, ``transform ==
    source.transform @ Affine.scale(1/scale)`` and the same bounds (for a georeferenced
    source), CRS, dtype, nodata and a mask when the source has one. Bands that are
    constant (where the source's vary) are reported as warnings. A Sentinel-2 product or
    subdataset as ``source`` is read as ``geosr upscale`` reads it (:mod:`geosr.sentinel2`).
    """
    with tempfile.TemporaryDirectory(prefix="geosr-") as tmp:
        return _validate(Path(path), source, Path(tmp))


def _source_raster(source: str, workdir: Path) -> str:
    """The raster ``source`` is compared as: itself, or a Sentinel-2 product's VRT."""
    name = resolve_input(source)
    return str(write_vrt(name, workdir / "source.vrt")) if name else source


def _validate(path: Path, source: str | os.PathLike | None, workdir: Path) -> ValidationResult:
    res = ValidationResult(path)
    if not path.exists():
        res.errors.append(f"{path} does not exist")
        return res
    with rasterio.Env(GDAL_PAM_ENABLED="NO"):
        try:
            out = open_raster(str(path))
        except GDAL_ERRORS as exc:
            res.errors.append(f"cannot open {path}: {gdal_cause(exc)}")
            return res
        with out:
            try:
                valid, errors, warns = cog_validate(str(path), quiet=True)
            except GDAL_ERRORS as exc:
                errors, warns = [f"cannot be read: {gdal_cause(exc)}"], []
            res.errors += [f"COG: {e}" for e in errors]
            res.warnings += [f"COG: {w}" for w in warns]
            if Path(str(path) + ".aux.xml").exists():
                res.errors.append(f"a sidecar {path.name}.aux.xml exists: metadata should live in the file")
            res.facts.update(
                size=(out.width, out.height), count=out.count, dtype=out.dtypes[0], crs=str(out.crs),
                transform=tuple(out.transform)[:6], nodata=out.nodata, colorinterp=[c.name for c in out.colorinterp],
                overviews=out.overviews(1),
            )
            if not out.overviews(1) and max(out.width, out.height) > 512:
                res.warnings.append("no overviews")
            ranges = _read_everything(res, path, out)
            src = None
            if source is not None:
                try:
                    # the source as a run reads it: its .aux.xml (a CRS, nodata QGIS saved there) counts;
                    # PAM is off for the output only, whose metadata must live in the file
                    with rasterio.Env(GDAL_PAM_ENABLED="YES"):
                        src = open_raster(_source_raster(os.fspath(source), workdir))
                except GDAL_ERRORS as exc:
                    res.errors.append(f"cannot open the source {source}: {gdal_cause(exc)}")
                except InputError as exc:
                    res.errors.append(f"cannot open the source: {exc}")
            if src is None:
                if ranges and all(lo == hi for lo, hi in ranges):
                    res.warnings.append(f"every band is constant ({ranges[0][0]:g}): is this the image you expect?")
                return res
            with src:
                _check_against_source(res, out, src)
                if ranges:
                    _check_constant_bands(res, ranges, src)
                    if not res.errors:
                        _check_agreement(res, out, src)
    return res


def _read_everything(res: ValidationResult, path: Path, out) -> list[tuple[float, float]] | None:
    """Read every block of every band, mask and overview; per-band (min, max) of valid pixels.

    Records the first unreadable block of each level as an error and returns None then,
    or when no pixel is valid.
    """
    masked = out.nodata is not None or any(MaskFlags.per_dataset in f for f in out.mask_flag_enums)
    lo = np.full(out.count, np.inf)
    hi = np.full(out.count, -np.inf)
    ok = True
    for level in [None] + list(range(len(out.overviews(1)))):
        what = "full resolution" if level is None else f"overview {level + 1}"
        try:
            ds = out if level is None else rasterio.open(str(path), overview_level=level)
        except GDAL_ERRORS as exc:
            res.errors.append(f"cannot open {what}: {gdal_cause(exc)}")
            ok = False
            continue
        try:
            for _, window in ds.block_windows(1):
                try:
                    data = ds.read(window=window, masked=masked)  # masked: reads the mask blocks too
                except GDAL_ERRORS as exc:
                    res.errors.append(
                        f"cannot read the block at col {window.col_off} row {window.row_off} ({what}): {gdal_cause(exc)}"
                    )
                    ok = False
                    break
                if level is None:
                    flat = data.reshape(out.count, -1)
                    if masked and np.ma.count(flat):
                        # float before filling: a band with no valid pixel here has no minimum
                        lo = np.fmin(lo, flat.min(axis=1).astype(np.float64).filled(np.inf))
                        hi = np.fmax(hi, flat.max(axis=1).astype(np.float64).filled(-np.inf))
                    elif not masked:
                        lo = np.fmin(lo, np.nanmin(flat, axis=1))
                        hi = np.fmax(hi, np.nanmax(flat, axis=1))
        finally:
            if ds is not out:
                ds.close()
    if not ok:
        return None
    if not np.isfinite(lo).all():
        res.warnings.append("no valid pixel in some band")
        return None
    return list(zip(lo.tolist(), hi.tolist()))


def _check_constant_bands(res: ValidationResult, ranges: list[tuple[float, float]], src) -> None:
    if src.count != len(ranges):
        return  # a band subset: which source band is which is not recorded
    step = max(1, int(np.sqrt(src.width * src.height) / SOURCE_SAMPLE_PX))
    shape = (src.count, max(1, src.height // step), max(1, src.width // step))
    try:
        sample = src.read(out_shape=shape, masked=True)
    except GDAL_ERRORS as exc:
        res.errors.append(f"cannot read the source: {gdal_cause(exc)}")
        return
    for b, (lo, hi) in enumerate(ranges):
        band = sample[b].compressed()
        if lo == hi and band.size and band.min() != band.max():
            res.warnings.append(f"band {b + 1} is constant ({lo:g}) where the source varies: pixels were lost")


def _check_against_source(res: ValidationResult, out, src) -> None:
    sx, sy = out.width / src.width, out.height / src.height
    if sx != sy or sx != int(sx):
        res.errors.append(f"size {out.width}x{out.height} is not an integer multiple of the source {src.width}x{src.height}")
        return
    s = int(sx)
    res.facts["scale"] = s
    if src.crs != out.crs:
        res.errors.append(f"CRS differs: source {src.crs}, output {out.crs}")
    georeferenced = bool(src.crs) or not src.transform.is_identity
    if not src.gcps[0] and georeferenced:
        want = scale_transform(src.transform, s)
        if not out.transform.almost_equals(want, precision=1e-9 * max(1.0, abs(src.transform.c), abs(src.transform.f))):
            res.errors.append(f"transform {tuple(out.transform)[:6]} != source transform / {s} {tuple(want)[:6]}")
        if not np.allclose(out.bounds, src.bounds, rtol=0, atol=1e-6 * max(abs(v) for v in src.res)):
            res.errors.append(f"bounds differ: source {tuple(src.bounds)}, output {tuple(out.bounds)}")
    elif not src.gcps[0] and not out.transform.is_identity:
        res.errors.append("the source is not georeferenced, the output has a transform")
    _check_gcps_and_rpcs(res, out, src, s)
    if data_dtype(out) != data_dtype(src):
        res.errors.append(f"dtype differs: source {data_dtype(src)}, output {data_dtype(out)}")
    if src.nodata is not None and not same_nodata(src.nodata, out.nodata):
        res.errors.append(f"nodata differs: source {src.nodata}, output {out.nodata}")
    elif src.nodata is None and out.nodata is not None and not np.isnan(out.nodata):
        # NaN is how geosr marks a float source's non-finite pixels; any other value is data in the source
        res.errors.append(f"the output has nodata {out.nodata:g}, the source none: its pixels of that value read as no-data")
    src_masked = src.nodata is not None or any(MaskFlags.per_dataset in f for f in src.mask_flag_enums)
    out_masked = out.nodata is not None or any(MaskFlags.per_dataset in f for f in out.mask_flag_enums)
    if src_masked and not out_masked:
        res.errors.append("the source has a mask or nodata, the output has neither")


def _check_gcps_and_rpcs(res: ValidationResult, out, src, s: int) -> None:
    """Error where the source's GCPs or RPCs are not the output's scaled by ``s``
    (:func:`geosr.georef.scale_gcps`, :func:`~geosr.georef.scale_rpcs`): unscaled, they put the
    output at 1/s of its size on the ground."""
    gcps, gcp_crs = src.gcps
    if placed_by(src) == "GCPs":
        got, got_crs = out.gcps
        want = scale_gcps(gcps, s)
        same = got_crs == gcp_crs and len(got) == len(want) and all(
            np.allclose([g.row, g.col, g.x, g.y], [w.row, w.col, w.x, w.y], rtol=1e-9, atol=1e-6) for g, w in zip(got, want))
        if not same:
            res.errors.append(f"GCPs differ from the source's scaled by {s} (pixel and line x {s}, the same ground points)")
    if src.rpcs is not None:
        if out.rpcs is None:
            res.errors.append("the source has RPCs, the output none")
            return
        want, got = scale_rpcs(src.rpcs, s).to_dict(), out.rpcs.to_dict()
        if any(not np.allclose(got[key], value, rtol=1e-9, atol=1e-9) for key, value in want.items() if key != "err_bias" and
               key != "err_rand"):
            res.errors.append(f"RPCs differ from the source's scaled by {s} (line and sample offsets and scales)")


def _check_agreement(res: ValidationResult, out, src) -> None:
    """Error when regions of the output, averaged onto the source grid, do not match the source."""
    if src.count != out.count:
        return  # a band subset: which source band is which is not recorded
    step = max(1, int(np.ceil(max(src.width, src.height) / SOURCE_SAMPLE_PX)))
    shape = (src.count, max(1, src.height // step), max(1, src.width // step))
    try:
        want = src.read(out_shape=shape, masked=True, resampling=Resampling.average)
        got = out.read(out_shape=shape, masked=True, resampling=Resampling.average)
    except GDAL_ERRORS as exc:
        res.errors.append(f"cannot compare with the source: {gdal_cause(exc)}")
        return
    want, got = want.astype(np.float64), got.astype(np.float64)
    valid = ~np.ma.getmaskarray(want).any(axis=0) & ~np.ma.getmaskarray(got).any(axis=0)
    if not valid.any():
        return
    w, g = want.filled(0.0), got.filled(0.0)
    spread = [np.percentile(w[b][valid], 99) - np.percentile(w[b][valid], 1) for b in range(src.count)]
    r = AGREEMENT_REGION_PX
    bad = []
    for row in range(0, shape[1], r):
        for col in range(0, shape[2], r):
            v = valid[row:row + r, col:col + r]
            if v.mean() < 0.5:
                continue
            for b in range(src.count):
                if spread[b] <= 0:
                    continue
                diff = np.abs(g[b, row:row + r, col:col + r] - w[b, row:row + r, col:col + r])[v].mean()
                if diff > AGREEMENT_TOLERANCE * spread[b]:
                    bad.append((col * step, row * step, b + 1, diff, spread[b]))
                    break
    if bad:
        col, row, band, diff, spread_b = bad[0]
        res.errors.append(
            f"the output does not match the source in {len(bad)} region(s) of {r * step} source px: first at "
            f"source col {col} row {row}, band {band} differs by {diff:.3g} on average (the band spans "
            f"{spread_b:.3g}): pixels were lost or come from other data"
        )
