"""One radiometric stretch per scene and band: raster values <-> model range [0, 1].

The stretch is fitted ONCE per scene (from a decimated read), never per tile: a per-tile
normalisation gives every tile its own contrast and makes seams. 8-bit data maps 0..255
to 0..1 unchanged (models are trained on 8-bit imagery); other dtypes use low/high
percentiles of the valid pixels. The inverse returns the input dtype, clipped to its range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import rasterio
from rasterio.windows import Window

from geosr.errors import InputError, read_errors_named
from geosr.remote import is_remote
from geosr.scene import alpha_mask_band

__all__ = ["Stretch", "fit_stretch", "dtype_range", "refuse_far_values"]

# Pixels read to fit the stretch: enough for stable 0.1 / 99.9 percentiles, small enough
# to be instant on any scene.
FIT_PIXELS = 1_000_000
#: A band with fewer valid pixels in the decimated read is fitted on all its valid pixels at full
#: resolution: a small valid island in a large no-data canvas falls between the decimated grid's
#: samples (a 30 px field in a 40 000 px canvas read every 40th pixel: 0 to 4 samples, a
#: stretch of 0..1 DN or a 1 DN span, and an output no sharper than bicubic).
MIN_FIT_SAMPLES = 1000
#: ... up to this many pixels a band, on local files (a whole band of a larger or remote scene,
#: perhaps one that is all no-data, would cost more before the first tile than it can be worth).
FULL_FIT_MAX_PIXELS = 400_000_000

#: Integers from here on are not all exact in float32, the model units' precision.
FLOAT32_EXACT = 2**24

#: A band whose stretch spans this many times the range of its middle half holds a fill value
#: that is not declared as no-data (-3.4e38 in a DEM, -2147483648 in an int32 band): the
#: stretch would squeeze the real values into a few float32 steps - all of them one value.
FILL_SPAN_RATIO = 2**16


def dtype_range(dtype: str) -> tuple[float, float]:
    """Representable range of an integer dtype, (-inf, inf) for floats."""
    dt = np.dtype(dtype)
    if np.issubdtype(dt, np.integer):
        info = np.iinfo(dt)
        return float(info.min), float(info.max)
    return -np.inf, np.inf


@dataclass(frozen=True)
class Stretch:
    """Linear per-band mapping ``(x - low) / (high - low)``.

    Attributes
    ----------
    low, high : tuple of float
        Per band, in raster units.
    dtype : str
        Raster dtype restored by :meth:`inverse`.
    exact : bool
        The identity (low 0, high 1) of a run that must make no new values (``--model
        nearest``) on a raster whose values the usual stretch would round in float32 (32-bit
        integers, float32): :meth:`inverse` refuses integers float32 cannot hold.
    """

    low: tuple[float, ...]
    high: tuple[float, ...]
    dtype: str
    exact: bool = False

    @classmethod
    def identity(cls, bands: int, dtype: str) -> "Stretch":
        """The exact stretch (:attr:`exact`) of ``bands`` bands of ``dtype``."""
        return cls((0.0,) * bands, (1.0,) * bands, dtype, exact=True)

    def _coeffs(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if n != len(self.low):
            raise ValueError(f"stretch has {len(self.low)} bands, data has {n}")
        low = np.asarray(self.low, np.float64)[:, None, None]
        span = (np.asarray(self.high, np.float64) - np.asarray(self.low, np.float64))[:, None, None]
        return low, span

    def forward(self, data: np.ndarray) -> np.ndarray:
        """``[C, h, w]`` raster values -> float32 model units (not clipped)."""
        low, span = self._coeffs(data.shape[0])
        if _exact_in_float32(data.dtype, low, span):
            # the same bits as the float64 path at a third of its memory traffic: x - low is
            # exact, and a float32 division rounds the exact quotient once, as rounding the
            # float64 one does (53 >= 2 x 24 + 2 bits: double rounding of a quotient is innocuous)
            return np.divide(np.subtract(data, low.astype(np.float32), dtype=np.float32), span.astype(np.float32))
        with np.errstate(over="ignore"):  # a fill far beyond float32 in model units: -inf, invalid anyway
            return ((data.astype(np.float64) - low) / span).astype(np.float32)

    def inverse(self, data: np.ndarray, interleaved: bool = False) -> np.ndarray:
        """``[C, h, w]`` model units -> raster values in :attr:`dtype`, clipped and rounded.

        With ``interleaved`` the values are a ``[C, h, w]`` view of a C-contiguous ``[h, w, C]``
        array: the pixel-interleaved layout the work raster stores (:class:`geosr.writer.WorkRaster`),
        made by the cast instead of a transposing copy afterwards (one pass less per output pixel;
        a transposing copy of 3-band uint8 is about as slow as the whole stretch).
        """
        low, span = self._coeffs(data.shape[0])
        dtype = np.dtype(self.dtype)
        # float32 holds every 8/16-bit value exactly and is the model's own precision:
        # half the memory traffic of float64 on the output's largest arrays
        work = np.float32 if dtype.itemsize <= 2 or dtype == np.float32 else np.float64
        out = np.multiply(data, span.astype(work), dtype=work)  # a new array, worked on in place
        out += low.astype(work)
        if np.issubdtype(dtype, np.integer):
            np.rint(out, out=out)
        if self.exact and np.issubdtype(dtype, np.integer) and out.size and np.abs(out).max() >= FLOAT32_EXACT:
            raise InputError(f"--model nearest keeps {self.dtype} values exactly below {FLOAT32_EXACT:,}, and this "
                             "raster holds larger ones: upscale it with gdal_translate -r nearest -tr XRES YRES "
                             "(or gdalwarp -r near) instead")
        lo, hi = dtype_range(self.dtype)
        np.clip(out, lo, hi, out=out)
        if not interleaved:
            return out.astype(dtype, copy=False)
        values = np.moveaxis(np.empty(out.shape[1:] + out.shape[:1], dtype), -1, 0)
        np.copyto(values, out, casting="unsafe")  # the cast astype() does
        return values


def _exact_in_float32(dtype: np.dtype, low: np.ndarray, span: np.ndarray) -> bool:
    """True when ``x - low`` and ``span`` are exact in float32 for every ``x`` of an 8/16-bit
    integer ``dtype``: integer ``low`` and ``span`` below 2**16 (uint8 scenes: 0 and 255)."""
    if not (np.issubdtype(dtype, np.integer) and np.dtype(dtype).itemsize <= 2):
        return False
    coeffs = np.concatenate([low.ravel(), span.ravel()])
    return bool(np.all(coeffs == np.round(coeffs)) and np.all(np.abs(coeffs) <= 2**16))


def fit_stretch(
    source: str,
    bands: Sequence[int],
    dtype: str,
    percentiles: tuple[float, float] = (0.1, 99.9),
) -> Stretch:
    """Fit the scene stretch of ``bands`` (1-based) of ``source``.

    uint8 is mapped as 0..255. Other dtypes use ``percentiles`` of the valid pixels of a
    decimated read (overviews when present), or of all a band's valid pixels where that read
    holds fewer than :data:`MIN_FIT_SAMPLES` (a local scene of up to :data:`FULL_FIT_MAX_PIXELS`);
    nodata / masked pixels never enter the fit.
    """
    if np.dtype(dtype) == np.uint8:
        return Stretch((0.0,) * len(bands), (255.0,) * len(bands), dtype)
    with rasterio.open(source) as ds:
        with read_errors_named(source, what="a decimated read to fit the stretch"):
            step = max(1, int(np.sqrt(ds.width * ds.height / FIT_PIXELS)))
            shape = (max(1, ds.height // step), max(1, ds.width // step))
            data = ds.read(list(bands), out_shape=(len(bands),) + shape, masked=True)
            alpha = alpha_mask_band(ds)
            if alpha is not None:  # an alpha band GDAL does not use: its zeros are no data either
                data.mask = np.ma.getmaskarray(data) | (ds.read(alpha, out_shape=shape) == 0)[None]
        samples = [_finite(data[b].compressed()) for b in range(len(bands))]
        sparse = [b for b in range(len(bands)) if samples[b].size < MIN_FIT_SAMPLES]
        # local only: a full read of an object store's pieces (a mosaic's VRT is local) skips their
        # overviews and pulls up to FULL_FIT_MAX_PIXELS over the network per band
        local = not any(is_remote(f) for f in (source, *ds.files))
        if step > 1 and sparse and ds.width * ds.height <= FULL_FIT_MAX_PIXELS and local:
            for b, values in zip(sparse, _all_valid_values(ds, [bands[b] for b in sparse])):
                samples[b] = values
    lows, highs = [], []
    for b in range(len(bands)):
        valid = samples[b]
        if valid.size == 0:
            lo, hi = 0.0, 1.0
        else:
            lo, hi = (float(v) for v in np.percentile(valid, percentiles))
            _check_no_fill_value(source, bands[b], valid)
        if not hi > lo:  # constant band: any positive span round-trips it exactly
            hi = lo + 1.0
        lows.append(lo)
        highs.append(hi)
    return Stretch(tuple(lows), tuple(highs), dtype)


def _check_no_fill_value(source: str, band: int, valid: np.ndarray) -> None:
    """Refuse a band holding a fill value that is not declared as no-data: its minimum or maximum,
    on at least 0.1 % of the pixels (fewer are refused by the tile that reads them,
    :func:`refuse_far_values`), lying :data:`FILL_SPAN_RATIO` times the range of the middle half
    of the other values away from it. Squeezed into the stretch every real value comes out one value;
    on over a quarter of the pixels the fill is the middle half's own end, and was missed (a DEM tile
    that is a third fill came out all 0.0, exit 0). Real values, skewed or heavy-tailed, lie tens to
    hundreds of that range away.

    Raises
    ------
    InputError
        Naming the band, the extreme value and how to declare it.
    """
    if valid.size == 0:
        return
    for fill in dict.fromkeys((valid.min(), valid.max())):
        at_fill = valid == fill
        if at_fill.mean() < 0.001 or at_fill.all():
            continue
        rest = valid[~at_fill]
        q1, q3 = (float(v) for v in np.percentile(rest, (25, 75)))
        reach = FILL_SPAN_RATIO * (q3 - q1)
        if q3 > q1 and not q1 - reach <= float(fill) <= q3 + reach:
            raise InputError(
                f"{source}: band {band} holds {_exact(fill)} on {100 * at_fill.mean():.1f} % of its pixels, beside "
                f"values whose middle half lies within {q1:g}..{q3:g}: a fill value not declared as no-data? Declare "
                f"it (gdal_edit.py -a_nodata {_exact(fill)} FILE, or a .vrt with <NoDataValue>) or mask it, and run again")


def _exact(value: np.generic) -> str:
    """``value`` as GDAL reads it back to the same pixel value: all digits (``-2147483648``, not
    ``-2.14748e+09``, which declares a value no pixel holds)."""
    return str(int(value)) if np.issubdtype(np.asarray(value).dtype, np.integer) else repr(float(value))


#: Float values from this magnitude on are fills (-3.4e38, ArcGIS's float32 default; -1e30; 1e38), not data.
FLOAT_FILL_MAGNITUDE = 1e30


def refuse_far_values(
    source: str, bands: Sequence[int], raw: np.ndarray, data: np.ndarray, valid: np.ndarray, window: Window
) -> None:
    """Refuse a tile whose valid pixels hold a fill value that is not declared as no-data, on too
    few pixels for the fit to see (:func:`fit_stretch` refuses one from 0.1 % of the pixels on): a
    float of magnitude :data:`FLOAT_FILL_MAGNITUDE` or more, or a 32-bit integer type's minimum or
    maximum, :data:`FILL_SPAN_RATIO` stretch spans or more away from the scene's values. Fed to a
    model or an interpolator, one -3.4e38 pixel rings over its neighbours as +-1e37. Real bright
    targets (a ship in SAR backscatter, a specular glint) are data, however far: not refused.

    Parameters
    ----------
    source : str
        The raster, named in the error.
    bands : sequence of int
        1-based bands of ``raw`` and ``data``.
    raw, data : np.ndarray
        ``[C, h, w]`` raster values and the same in model units (:meth:`Stretch.forward`).
    valid : np.ndarray
        ``[h, w]``, or ``[C, h, w]`` per band (a band's own declared nodata is not valid in it):
        the pixels that have data (non-finite ones are not valid).
    window : rasterio.windows.Window
        Where ``raw`` lies in ``source``.

    Raises
    ------
    InputError
        Naming the band, the value, its pixel and how to declare it.
    """
    if np.issubdtype(raw.dtype, np.integer):
        if raw.dtype.itemsize < 4:
            return  # 8- and 16-bit extremes are saturation as often as fills; the fit sees the rest
        info = np.iinfo(raw.dtype)
        fill_like = (raw == info.min) | (raw == info.max)
    else:
        with np.errstate(invalid="ignore"):
            fill_like = np.abs(raw) >= FLOAT_FILL_MAGNITUDE
    if not fill_like.any():
        return
    with np.errstate(invalid="ignore"):
        far = fill_like & (np.abs(data - np.float32(0.5)) >= FILL_SPAN_RATIO) & valid
    if not far.any():
        return
    b, r, c = (int(i) for i in np.argwhere(far)[0])
    value = _exact(raw[b, r, c])
    raise InputError(
        f"{source}: band {bands[b]} holds {value} at row {int(window.row_off) + r}, column "
        f"{int(window.col_off) + c}, over {FILL_SPAN_RATIO:,} times its stretch's range away from the scene's "
        f"values ({int(far[b].sum())} such pixel(s) in this tile): a fill value not declared as no-data? Declare "
        f"it (gdal_edit.py -a_nodata {value} FILE, or a .vrt with <NoDataValue>) or mask it, and run again")


def _finite(values: np.ndarray) -> np.ndarray:
    return values[np.isfinite(values)] if values.dtype.kind == "f" else values


def _all_valid_values(ds, bands: Sequence[int]) -> list[np.ndarray]:
    """The valid values of ``bands`` (1-based) at full resolution, read in strips of about
    :data:`FIT_PIXELS` pixels; at most about :data:`FIT_PIXELS` of them per band, evenly taken."""
    rows = max(1, FIT_PIXELS // max(1, ds.width))
    found: list[list[np.ndarray]] = [[] for _ in bands]
    alpha = alpha_mask_band(ds)  # an alpha band GDAL does not use: its zeros are no data either
    for top in range(0, ds.height, rows):
        window = Window(0, top, ds.width, min(rows, ds.height - top))
        with read_errors_named(ds.name, window, what="a full-resolution read to fit the stretch"):
            strip = ds.read(list(bands), window=window, masked=True)
            if alpha is not None:
                strip.mask = np.ma.getmaskarray(strip) | (ds.read(alpha, window=window) == 0)[None]
        for i in range(len(bands)):
            found[i].append(_finite(strip[i].compressed()))
    values = [np.concatenate(parts) for parts in found]
    return [v[:: max(1, v.size // FIT_PIXELS)] for v in values]
