"""Write the output: pixels into a raw work raster, then one COG pass, then a rename.

Nothing is ever written at the target path until the very end. Output cells go to a raw,
pixel-interleaved file in the run's work folder (see :mod:`geosr.journal`): plain
``pwrite`` at computed offsets, made durable with ``fdatasync`` before the journal names
them - GDAL's block cache and GeoTIFF directory could not promise that a cell written
before a SIGKILL is on disk. At the end a VRT describes the raw file with all metadata,
GDAL's COG driver turns it into a Cloud Optimized GeoTIFF (internal tiles, AVERAGE
overviews, DEFLATE + predictor, per-band statistics, mask or nodata) and ``os.replace``
moves it into place, together with its sidecars.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import sys
import tempfile
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence
from xml.sax.saxutils import escape

import numpy as np
import rasterio
from rasterio.dtypes import dtype_rev, typename_fwd
from rasterio.windows import Window

from geosr.errors import InputError, OutputError, OutputExistsError, WriteError
from geosr.georef import window_rpcs
from geosr.local_paths import resolved
from geosr.stoppable_gdal import GdalFailure, GdalPass
from geosr.tiling import window_transform

__all__ = ["OutputTarget", "WorkRaster", "DEFAULT_COG_OPTIONS", "WRITER_GDAL_ENV", "sidecar_path", "check_file_name",
           "replace_durably", "translate_to_cog", "write_error"]

DEFAULT_COG_OPTIONS: dict[str, str] = {
    "COMPRESS": "DEFLATE",
    "PREDICTOR": "YES",  # 2 for integers, 3 for floats: the COG driver picks
    "BLOCKSIZE": "512",
    "OVERVIEW_RESAMPLING": "AVERAGE",
    "BIGTIFF": "IF_SAFER",
    "STATISTICS": "YES",  # stored in the file: no .aux.xml sidecar when QGIS asks for them
    "NUM_THREADS": "ALL_CPUS",
}

# GDAL's block cache counts in the process's memory: keep it small so peak memory is set by
# the tiles in flight, not by the output size (GDAL's default is 5 % of RAM).
WRITER_GDAL_ENV: dict = {"GDAL_CACHEMAX": 64, "GDAL_PAM_ENABLED": "NO"}

#: The most a COG copy's swath (a row of output blocks, see :func:`translate_to_cog`) holds.
MAX_SWATH_BYTES = 512 << 20


def swath_bytes(block: int, width: int, pixel_bytes: int) -> int:
    """GDAL's copy swath for a COG ``width`` px wide: one row of ``block`` px blocks, so GDAL
    writes whole blocks (its default 10 MB made the copy 6x slower); memory grows with the
    width, not the area - up to :data:`MAX_SWATH_BYTES` (200 float32 bands 20 000 px wide were
    an 8 GB row: a kill, not a slower copy)."""
    return min(max(10 << 20, block * width * pixel_bytes), MAX_SWATH_BYTES)


def sidecar_path(output: Path, suffix: str) -> Path:
    """``out.tif`` -> ``out<suffix>`` (e.g. ``out.captions.geojson``)."""
    return output.with_name(output.stem + suffix)


def check_companion_file(path: str | os.PathLike, target, overwrite: bool, name: str, example: str,
                         inputs: Sequence[str] = ()) -> Path:
    """Refuse, before any work, a file a run writes beside its output (a route map, an error
    map, a performance report).

    ``target`` is the run's output target (:class:`OutputTarget`, a tiled or Zarr target: its
    ``output`` and ``occupies``); ``name`` says what the file is in messages (``route map``),
    ``example`` is a file name to suggest. Returns its absolute path.

    Raises
    ------
    OutputExistsError
        The file exists and ``overwrite`` is False.
    OutputError
        It is the output itself, a file the output writes (its captions, a block of a tiled
        output, anything in a Zarr store), one of ``inputs``, a directory, or its folder does
        not exist.
    """
    path = Path(path).absolute()
    if resolved(path) == resolved(target.output):
        raise OutputError(f"the {name} {path} is the output itself: give another file name")
    if target.occupies(path):
        raise OutputError(f"the {name} {path} is a file the output {target.output} writes: give another file name")
    if any(path.exists() and os.path.samefile(path, f) for f in inputs if os.path.exists(f)):
        raise OutputError(f"the {name} {path} is also an input: write it to another file")
    if path.is_dir():
        raise OutputError(f"{name} {path} is a directory; give a file name such as {example}")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass --overwrite to replace it")
    if not path.parent.is_dir():
        raise OutputError(f"{name} folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):  # else found at the end, after the work
        raise OutputError(f"{name} folder {path.parent} is not writable")
    return path


def _renames_into(src: Path, folder: Path) -> bool:
    """Whether a rename can take ``src`` into ``folder``: a hard link of it made there (a name
    of its own, deleted at once) says so. ``st_dev`` cannot: two bind mounts of one filesystem
    share it, yet rename(2) between them fails with EXDEV, as ``link(2)`` does. A link refused
    for any other reason (a filesystem without hard links) counts as no: the caller copies.

    Raises
    ------
    OSError
        The probe was made but could not be deleted.
    """
    for _ in range(8):
        probe = folder / f".{src.name}.geosr-probe-{secrets.token_hex(6)}"
        try:
            os.link(src, probe)
        except FileExistsError:
            continue
        except OSError:
            return False  # EXDEV (another mount), EPERM/ENOTSUP/EMLINK...: a copy is sure to work
        os.unlink(probe)
        return True
    return False


def stage_beside(moves: Mapping[Path, Path]) -> tuple[dict[Path, Path], list[Path]]:
    """``moves`` (finished file -> its final path) with each file that a rename cannot take to
    its final path (another filesystem or mount point: EXDEV) copied first to a hidden
    temporary file beside that path; and those copies, for the caller to delete if the commit
    fails.

    A route map or an error map may go to another filesystem than OUTPUT, whose work folder
    they are written in: their rename failed after all the work (exit 1), with the captions
    already moved into place beside no OUTPUT. Whether a rename can is probed with a hard link
    (:func:`_renames_into`), not by comparing ``st_dev``: two bind mounts of one filesystem
    share it, and a rename between them fails all the same.

    Raises
    ------
    WriteError
        A copy (or the probe) failed (a full disk there: exit 6); the copies made so far are deleted.
    """
    staged: dict[Path, Path] = {}
    copies: list[Path] = []
    try:
        for src, dst in moves.items():
            try:
                if _renames_into(src, dst.parent):
                    staged[src] = dst
                    continue
                fd, name = tempfile.mkstemp(prefix=f".{dst.name}.geosr-part-", dir=dst.parent)
            except OSError as exc:
                raise write_error(dst, exc) from exc
            copies.append(Path(name))
            try:
                with open(src, "rb") as f, os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(f, out, 1 << 20)
                    out.flush()
                    os.fsync(out.fileno())
                shutil.copymode(src, name)
            except OSError as exc:
                raise write_error(dst, exc) from exc
            staged[Path(name)] = dst
    except BaseException:
        remove_files(copies)
        raise
    return staged, copies


def remove_files(paths: Sequence[Path]) -> None:
    """Delete ``paths`` that still exist (what a failed commit leaves)."""
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


class OutputTarget:
    """The target path of a run, checked before any work, and the final commit.

    Parameters
    ----------
    output : path-like
    overwrite : bool
        Replace OUTPUT and its sidecars if they exist.
    inputs : sequence of path-like
        The run's input files: OUTPUT must not be one of them.
    sidecars : sequence of str
        Suffixes of the files written next to OUTPUT (``.captions.geojson``).

    Raises
    ------
    InputError
        OUTPUT's name is not UTF-8 (:func:`check_file_name`).
    OutputExistsError
        OUTPUT or a sidecar exists and ``overwrite`` is False.
    OutputError
        OUTPUT or a sidecar is a directory (never replaced, even with ``overwrite``: only
        files are), OUTPUT is an input; its folder is missing or not writable.
    """

    def __init__(
        self,
        output: str | os.PathLike,
        overwrite: bool = False,
        inputs: Sequence[str | os.PathLike] = (),
        sidecars: Sequence[str] = (),
    ) -> None:
        self.output = Path(output).absolute()
        check_file_name(self.output)
        if self.output.is_dir():
            raise OutputError(f"output {self.output} is a directory; give a file name such as out.tif")
        self.sidecars = [sidecar_path(self.output, s) for s in sidecars]
        # what the run's locks are named after: out.tiff or out.zarr writes out.tif's captions too
        self.lock_names = (self.output, *self.sidecars)
        for path in inputs:
            if _same_file(self.output, Path(path)):
                raise OutputError(f"output {self.output} is also an input: write to another file")
            for sidecar in self.sidecars:  # e.g. --aoi out.captions.geojson
                if _same_file(sidecar, Path(path)):
                    raise OutputError(f"{sidecar}, which the run writes beside {self.output}, is also an input: "
                                      "write to another file")
        for path in self.sidecars:
            if path.is_dir():  # os.replace cannot put a file there: found after the work, and never deleted
                raise OutputError(f"{path} is a directory; the run writes a file there: move it away")
        for path in [self.output, *self.sidecars]:
            if path.exists() and not overwrite:
                raise OutputExistsError(f"{path} exists; pass --overwrite to replace it")
        if not self.output.parent.exists():
            raise OutputError(f"output folder {self.output.parent} does not exist")
        if not os.access(self.output.parent, os.W_OK):
            raise OutputError(f"output folder {self.output.parent} is not writable")

    def occupies(self, path: Path) -> bool:
        """Whether the run writes ``path`` (:func:`resolved`): OUTPUT or one of its sidecars."""
        return resolved(path) in {resolved(p) for p in (self.output, *self.sidecars)}

    def commit(self, moves: Mapping[Path, Path]) -> None:
        """Move finished temporary files to their final paths (the main output last).

        Their contents are made durable first and the renames after: the run deletes its
        work folder once this returns, so a node lost a moment after exit 0 must find
        whole files at the final paths, not empty or truncated ones with nothing to resume.
        """
        replace_durably(sorted(moves.items(), key=lambda kv: kv[1] == self.output))


def replace_durably(moves: Sequence[tuple[Path, Path]], folders: Sequence[Path] = ()) -> None:
    """``os.replace`` each ``(src, dst)`` in order: the sources' contents made durable first, the
    renames after (``fsync`` of the destinations' folders and of ``folders``, where a caller
    renamed something itself).

    A run deletes its work folder once its output is committed: a node lost a moment after
    exit 0 must find whole files at the final paths, not empty or truncated ones with
    nothing left to resume from.
    """
    for src, _ in moves:
        _sync(src, directory=src.is_dir())
    for src, dst in moves:
        os.replace(src, dst)
    for folder in dict.fromkeys([dst.parent for _, dst in moves] + list(folders)):
        _sync(folder, directory=True)


def sync_tree(root: Path, synced: Callable[[Path], bool] = lambda path: False) -> None:
    """``fsync`` every file under ``root`` that ``synced`` does not say is durable already, then
    every folder under it, deepest first (their entries: new names).

    What a run's tasks made durable as they went (journalled blocks and chunks) is skipped: an
    fsync costs ~1 ms a file even with nothing left to write.
    """
    folders = []
    for top, _, names in os.walk(root):
        folders.append(Path(top))
        for name in names:
            if not synced(Path(top) / name):
                _sync(Path(top) / name)
    for folder in reversed(folders):
        _sync(folder, directory=True)


def _sync(path: Path, directory: bool = False) -> None:
    """``fsync`` a file, or a folder's entries (``directory``: file systems that cannot, such as
    some network ones, refuse it; the renames stand, as durable as that file system makes them)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if directory:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


def check_file_name(path: str | os.PathLike) -> None:
    """Raise :class:`InputError` when ``path`` is not valid UTF-8, which GDAL needs.

    Python keeps such bytes (``b"sc\\xe8ne.tif"`` from a Latin-1 shell) as surrogates that
    rasterio cannot encode: the run failed with a bare UnicodeEncodeError, after its work when
    OUTPUT had the name.
    """
    name = os.fsencode(path)
    try:
        name.decode("utf-8")
    except UnicodeDecodeError as exc:
        shown = repr(name)[2:-1]  # the bytes, escaped: one printable line
        raise InputError(f"{shown}: the file name is not UTF-8, which GDAL needs; rename the file") from exc


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)  # hard links too
    except OSError:
        return resolved(a) == resolved(b)


@dataclass
class WorkRaster:
    """The raw work raster that output cells are written into, in a run's work folder.

    An existing raster of the right size in ``folder`` is reopened as is (a resumed run);
    otherwise sparse files are created, so unwritten areas cost no disk.

    Parameters
    ----------
    folder : Path
    profile : dict
        rasterio profile of the output grid (width, height, count, dtype, crs, transform,
        nodata...).
    write_mask : bool
        Keep a validity mask (inputs with alpha or an internal mask, no nodata).
    band_meta : dict
        ``colorinterp``, ``descriptions``, ``scales``, ``offsets``, ``units``, ``colormaps`` per band, and
        ``tags``: per band, its tags by metadata domain (``""``: the default one); ``input_bands``,
        the input band each output band was made from (a Zarr store's ``band`` coordinate).
    tags : dict
        Dataset tags.
    """

    folder: Path
    profile: dict
    write_mask: bool
    band_meta: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)
    gcps: tuple = ()
    rpcs: object | None = None

    PIXELS = "pixels.raw"
    MASK = "mask.raw"

    def __post_init__(self) -> None:
        p = self.profile
        self.width, self.height, self.count = int(p["width"]), int(p["height"]), int(p["count"])
        self.dtype = np.dtype(p["dtype"])
        self._pixel_bytes = self.count * self.dtype.itemsize
        self._fds: dict[str, int] = {}
        #: files that existed with another size (a damaged work folder) and were resized
        self.resized: list[str] = []
        self._open(self.PIXELS, self.width * self.height * self._pixel_bytes)
        if self.write_mask:
            self._open(self.MASK, self.width * self.height)

    @staticmethod
    def bytes_needed(profile: Mapping, write_mask: bool) -> int:
        """Disk the raster occupies once every cell is written."""
        pixels = int(profile["width"]) * int(profile["height"])
        return pixels * int(profile["count"]) * np.dtype(profile["dtype"]).itemsize + (pixels if write_mask else 0)

    def _open(self, name: str, size: int) -> None:
        path = self.folder / name
        try:
            if path.is_symlink() or (path.exists() and not path.is_file()):
                # not a file a run made (a link - whose target would be truncated and written -,
                # a folder: exit 6 at every resume): replaced, its cells recomputed
                self.resized.append(f"{name} (not a regular file)")
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
            found = os.fstat(fd).st_size
            if found != size:
                if found:
                    self.resized.append(f"{name} ({found} of {size} bytes)")
                os.ftruncate(fd, size)
        except OSError as exc:
            raise write_error(path, exc) from exc
        self._fds[name] = fd

    def write(self, window: Window, data: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Write ``[C, h, w]`` pixels (and their validity, when the output has a mask)."""
        self.write_cells([(window, data, valid)])

    def write_cells(self, cells: Sequence[tuple[Window, np.ndarray, np.ndarray | None]]) -> list[int]:
        """Write cells ``(HR window, [C, h, w] pixels, validity or None)``, disjoint.

        Cells side by side on the same rows are written as one run, one ``pwrite`` per row of
        the run: the halo strips make nine cells per tile, and a ``pwrite`` per row of each cell
        cost the blending thread six times as long (docs/benchmarks.md).

        Returns
        -------
        list of int
            The CRC-32 of each cell's bytes, in the order of ``cells``, as :meth:`cell_crc`
            reads them back: what a journal records so that a resumed run can verify them.
        """
        crcs = [self._crc(data, valid) for _, data, valid in cells]
        for run in _horizontal_runs(cells):
            first = run[0][0]
            if len(run) == 1:  # written as it is: no copy when it is pixel-interleaved already
                _, data, valid = run[0]
                self._write_cell(first, data, valid)
                continue
            h, w = int(first.height), sum(int(window.width) for window, _, _ in run)
            pixels = np.empty((h, w, self.count), self.dtype)
            mask = np.empty((h, w), np.uint8) if self.write_mask else None
            x = 0
            for window, data, valid in run:
                span = slice(x, x + int(window.width))
                pixels[:, span] = np.moveaxis(data, 0, -1)  # pixel-interleaved, in the output dtype
                if mask is not None:
                    mask[:, span] = 255 if valid is None else np.where(valid, 255, 0)
                x = span.stop
            col, row = int(first.col_off), int(first.row_off)
            self._write_rows(self.PIXELS, pixels, col, row, self._pixel_bytes)
            if mask is not None:
                self._write_rows(self.MASK, mask, col, row, 1)
        return crcs

    def _write_cell(self, window: Window, data: np.ndarray, valid: np.ndarray | None) -> None:
        """Write one cell's ``[C, h, w]`` pixels (and validity) at ``window``."""
        col, row = int(window.col_off), int(window.row_off)
        # a view of pixel-interleaved values (Stretch.inverse(interleaved=True)) needs no copy
        self._write_rows(self.PIXELS, np.ascontiguousarray(np.moveaxis(data, 0, -1), dtype=self.dtype), col, row,
                         self._pixel_bytes)
        if self.write_mask:
            mask = np.full(data.shape[1:], 255, np.uint8) if valid is None else np.where(valid, 255, 0).astype(np.uint8)
            self._write_rows(self.MASK, mask, col, row, 1)

    def _crc(self, data: np.ndarray, valid: np.ndarray | None) -> int:
        """CRC-32 of a cell's bytes as they lie in the files: its pixel rows, then its mask rows."""
        crc = zlib.crc32(np.ascontiguousarray(np.moveaxis(data, 0, -1), dtype=self.dtype))
        if self.write_mask:
            mask = np.full(data.shape[1:], 255, np.uint8) if valid is None else np.where(valid, 255, 0).astype(np.uint8)
            crc = zlib.crc32(mask, crc)
        return crc

    def cell_crc(self, window: Window) -> int:
        """CRC-32 of the bytes the files hold under ``window`` (see :meth:`write_cells`)."""
        col, row, w, h = (int(v) for v in (window.col_off, window.row_off, window.width, window.height))
        crc = 0
        for name, pixel_bytes in ((self.PIXELS, self._pixel_bytes), (self.MASK, 1)):
            if name not in self._fds:
                continue
            line = self.width * pixel_bytes
            for r in range(row, row + h):
                try:
                    crc = zlib.crc32(os.pread(self._fds[name], w * pixel_bytes, r * line + col * pixel_bytes), crc)
                except OSError as exc:
                    raise write_error(self.folder / name, exc) from exc
        return crc

    def _write_rows(self, name: str, rows: np.ndarray, col: int, row: int, pixel_bytes: int) -> None:
        """Write C-contiguous ``rows`` (``[h, w]`` of pixels) at output column ``col``, row ``row``."""
        fd = self._fds[name]
        line = self.width * pixel_bytes
        try:
            for r in range(rows.shape[0]):
                buf = memoryview(rows[r]).cast("B")
                if os.pwrite(fd, buf, (row + r) * line + col * pixel_bytes) != len(buf):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as exc:
            raise write_error(self.folder / name, exc) from exc

    def sync(self) -> None:
        """Make everything written so far durable (before the journal names it)."""
        for name, fd in self._fds.items():
            try:
                os.fdatasync(fd)
            except OSError as exc:
                raise write_error(self.folder / name, exc) from exc

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}

    def to_cog(self, dst: Path, creation_options: Mapping[str, str] | None = None) -> None:
        """Close the work raster and translate it to a COG at ``dst`` (:func:`translate_to_cog`)."""
        self.close()
        translate_to_cog(self.write_vrt(), dst, self.width, self.height, self.count, self.dtype, self.write_mask,
                         creation_options, self.folder / "tiled.tif")

    def write_vrt(self, path: Path | None = None, window: Window | None = None) -> Path:
        """A VRT over the raw files (or ``window`` of them), with the output's georeferencing and metadata.

        A window is the same raw layout starting further into the files (its first pixel's
        offset, the full line length): a block of the output is read in place, never copied.
        The window's transform and RPCs are the output's shifted to its corner; GCPs are not
        shifted, so a window needs a geotransform (:mod:`geosr.tiled_output` checks it).
        """
        window = window or Window(0, 0, self.width, self.height)
        col, row, width, height = (int(v) for v in (window.col_off, window.row_off, window.width, window.height))
        start = row * self.width + col  # the window's first pixel
        gdal_type = typename_fwd[dtype_rev[self.dtype.name]]
        order = "LSB" if sys.byteorder == "little" else "MSB"
        # Absolute paths: GDAL's COG driver re-resolves relative raw paths against the
        # current directory while computing statistics (and creates empty files there).
        pixels = escape(str((self.folder / self.PIXELS).absolute()))
        lines = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">']
        for b in range(self.count):
            lines += [
                f'  <VRTRasterBand dataType="{gdal_type}" band="{b + 1}" subClass="VRTRawRasterBand">',
                f'    <SourceFilename relativeToVRT="0">{pixels}</SourceFilename>',
                f"    <ImageOffset>{start * self._pixel_bytes + b * self.dtype.itemsize}</ImageOffset>"
                f"<PixelOffset>{self._pixel_bytes}</PixelOffset>",
                f"    <LineOffset>{self.width * self._pixel_bytes}</LineOffset><ByteOrder>{order}</ByteOrder>",
                "  </VRTRasterBand>",
            ]
        if self.write_mask:
            mask = escape(str((self.folder / self.MASK).absolute()))
            lines += [
                '  <MaskBand><VRTRasterBand dataType="Byte" subClass="VRTRawRasterBand">',
                f'    <SourceFilename relativeToVRT="0">{mask}</SourceFilename>',
                f"    <ImageOffset>{start}</ImageOffset><PixelOffset>1</PixelOffset><LineOffset>{self.width}</LineOffset>",
                "  </VRTRasterBand></MaskBand>",
            ]
        lines.append("</VRTDataset>")
        vrt = path or self.folder / "work.vrt"
        vrt.write_text("\n".join(lines) + "\n")
        with rasterio.Env(**WRITER_GDAL_ENV), warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(vrt, "r+") as ds:
                self.set_metadata(ds, window)
        return vrt

    def set_metadata(self, ds, window: Window | None = None) -> None:
        """Give the open dataset ``ds`` the output's georeferencing (of ``window``), band metadata and tags."""
        p = self.profile
        if self.gcps:
            ds.gcps = self.gcps
        else:
            if p.get("crs"):
                ds.crs = p["crs"]
            if p.get("transform") is not None:
                ds.transform = p["transform"] if window is None else window_transform(window, p["transform"])
        if self.rpcs is not None:  # a block's own: its image coordinates start at its corner
            ds.rpcs = self.rpcs if window is None else window_rpcs(self.rpcs, int(window.row_off), int(window.col_off))
        if p.get("nodata") is not None:
            ds.nodata = p["nodata"]
        meta = self.band_meta
        if meta.get("colorinterp"):
            ds.colorinterp = meta["colorinterp"]
        for i, desc in enumerate(meta.get("descriptions", ()), start=1):
            if desc:
                ds.set_band_description(i, desc)
        if meta.get("scales"):
            ds.scales = meta["scales"]
        if meta.get("offsets"):
            ds.offsets = meta["offsets"]
        if meta.get("units") and any(meta["units"]):
            ds.units = [u or "" for u in meta["units"]]
        for i, colormap in enumerate(meta.get("colormaps", ()), start=1):
            if colormap:  # a class raster's colours: QGIS draws it with them, as it drew the input
                ds.write_colormap(i, colormap)
        for i, domains in enumerate(meta.get("tags", ()), start=1):
            for domain, tags in domains.items():
                ds.update_tags(i, ns=domain or None, **tags)
        ds.update_tags(**self.tags)


def translate_to_cog(vrt: Path, dst: Path, width: int, height: int, count: int, dtype, write_mask: bool,
                     creation_options: Mapping[str, str] | None, tiled: Path) -> None:
    """Translate the raster ``vrt`` (``width`` x ``height``, ``count`` bands of ``dtype``) to a COG at ``dst``.

    With the default creation options and no mask band, the overviews and statistics are
    made on an uncompressed, tiled copy (``tiled``, deleted after) first and the GTiff driver
    copies them (``COPY_SRC_OVERVIEWS``, the layout GDAL's COG driver also writes): 2-3x
    faster than the COG driver, whose own overview step re-reads and re-encodes a temporary
    file (docs/benchmarks.md). Any other options go through the COG driver.

    SIGINT/SIGTERM stop the pass within a block (:class:`~geosr.stoppable_gdal.GdalPass`)
    and raise their exception; a stopped or failed pass leaves no file at ``dst``. A full
    disk is a :class:`WriteError` naming the folder.
    """
    options = dict(DEFAULT_COG_OPTIONS)
    options.update({k.upper(): str(v) for k, v in (creation_options or {}).items()})
    try:
        with rasterio.Env(**WRITER_GDAL_ENV), GdalPass() as gdal:
            resampling = options["OVERVIEW_RESAMPLING"]
            # AVERAGE (the default's) or NEAREST (--model nearest's): names GDAL and rasterio share
            if resampling in ("AVERAGE", "NEAREST") and not write_mask \
                    and {**options, "OVERVIEW_RESAMPLING": "AVERAGE"} == DEFAULT_COG_OPTIONS:
                _default_cog(gdal, vrt, tiled, dst, width, height, count * np.dtype(dtype).itemsize, np.dtype(dtype),
                             resampling)
            else:
                gdal.create_copy(vrt, dst, "COG", options)
    except GdalFailure as exc:
        dst.unlink(missing_ok=True)
        if exc.no_space:
            raise WriteError(f"no space left on the device of {exc.path.parent} while writing "
                             f"{exc.path.name}") from exc
        raise WriteError(f"cannot write the COG {dst}: {exc}") from exc
    except BaseException:
        dst.unlink(missing_ok=True)
        raise
    finally:
        tiled.unlink(missing_ok=True)  # as large as the raster


def _default_cog(gdal: GdalPass, vrt: Path, tiled: Path, dst: Path, width: int, height: int, pixel_bytes: int,
                 dtype: np.dtype, resampling: str) -> None:
    """The COG of :data:`DEFAULT_COG_OPTIONS` but its overviews' ``resampling`` (AVERAGE there):
    overviews down to one 512 px block, exact per-band statistics, DEFLATE with the predictor,
    512 px tiles.

    The raster is first copied to an uncompressed GeoTIFF tiled like the COG: the final
    copy reads its source block by block, and from the raw pixel-interleaved file that is one
    small read per band and row of every block (4096 x 4096 RGB at x2: 7.5 s for the final
    copy from the raw file, 5.2 s from the tiled one, which costs 0.6 s to make).
    """
    block = int(DEFAULT_COG_OPTIONS["BLOCKSIZE"])
    levels, factor = [], 1
    # the COG driver's rule: halve until the overview fits in one block
    while -(-width // factor) > block or -(-height // factor) > block:
        factor *= 2
        levels.append(factor)
    with rasterio.Env(GDAL_SWATH_SIZE=str(swath_bytes(block, width, pixel_bytes))):
        gdal.create_copy(vrt, tiled, "GTiff", dict(
            TILED="YES", BLOCKXSIZE=str(block), BLOCKYSIZE=str(block),
            COMPRESS="NONE", INTERLEAVE="PIXEL", BIGTIFF="IF_SAFER",  # its overviews come later
        ))
    with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS", COMPRESS_OVERVIEW="NONE"):
        gdal.overviews_and_statistics(tiled, levels, resampling)
    gdal.create_copy(tiled, dst, "GTiff", dict(
        TILED="YES", BLOCKXSIZE=str(block), BLOCKYSIZE=str(block),
        COMPRESS="DEFLATE", PREDICTOR="3" if dtype.kind == "f" else "2", INTERLEAVE="PIXEL",
        BIGTIFF=DEFAULT_COG_OPTIONS["BIGTIFF"], NUM_THREADS="ALL_CPUS", COPY_SRC_OVERVIEWS="YES",
    ))


def _horizontal_runs(cells: Sequence[tuple[Window, np.ndarray, np.ndarray | None]]) -> list[list]:
    """``cells`` grouped into runs of cells side by side on the same rows, left to right."""
    runs: list[list] = []
    for cell in sorted(cells, key=lambda c: (int(c[0].row_off), int(c[0].height), int(c[0].col_off))):
        window = cell[0]
        last = runs[-1][-1][0] if runs else None
        if (last is not None and (last.row_off, last.height) == (window.row_off, window.height)
                and last.col_off + last.width == window.col_off):
            runs[-1].append(cell)
        else:
            runs.append([cell])
    return runs


def write_error(path: Path, exc: OSError) -> WriteError:
    """A failed write of ``path`` as the one-line :class:`WriteError` the CLI exits 6 with."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return WriteError(f"no space left on the device of {path.parent} while writing {path.name}")
    return WriteError(f"cannot write {path}: {exc.strerror or exc}")
