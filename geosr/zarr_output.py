"""Zarr output: an OUTPUT ending in ``.zarr`` is written as a Zarr store, chunk by chunk.

The store is Zarr format 2 (what GDAL's Zarr driver and xarray both read), one group:

- ``band_data`` (``band, y, x``): the output's pixels in its dtype, chunks of all bands x
  :data:`ZARR_CHUNK` x :data:`ZARR_CHUNK` output pixels (ragged at the right and bottom),
  zlib-compressed; the output's nodata is the array's fill value (``_FillValue`` to xarray);
  band descriptions, scales, offsets, units and colour interpretation are attributes
  (``long_name``, ``scales``, ``offsets``, ``units``, ``colorinterp``);
- ``mask`` (``y, x``, uint8: 255 valid, 0 not), only where the single COG would carry a mask
  band (a masked input without nodata);
- the georeferencing as rioxarray writes it (CF / GeoZarr): a ``spatial_ref`` coordinate
  variable with ``crs_wkt``, the CF grid mapping attributes and ``GeoTransform``, ``x`` and
  ``y`` coordinate arrays of pixel centres, ``grid_mapping`` on the data variables; and
  GDAL's own ``_CRS`` attribute;
- the dataset tags as group attributes, and consolidated metadata (``.zmetadata``).

Like the blocks of :mod:`geosr.tiled_output`, chunks are written by dask tasks as soon as
every output cell under them is durable (the client follows
:attr:`geosr.journal.RunJournal.on_commit`), each task writing a group of chunks
(:data:`ZARR_GROUP` output pixels square) read in place from the raw work raster
(``np.memmap``). The store is built in the run's work folder and renamed into place at the
end; a failed run leaves nothing at OUTPUT.

Resume: a task fsyncs its chunk files before the journal names each chunk with the size and
CRC-32 of its files; a resumed run re-reads the named chunks and writes again every group with
a chunk that is unnamed, gone or changed.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from rasterio.windows import Window

from geosr.errors import OutputError, OutputExistsError
from geosr.journal import CellRecord, RunJournal
from geosr.resumable import StoppedRunWarning
from geosr.tasks import shippable_errors
from geosr.tiling import squares_under
from geosr.writer import WorkRaster, check_file_name, sidecar_path, write_error

__all__ = ["ZARR_CHUNK", "ZARR_GROUP", "ZarrTarget", "ZarrWriter", "ZarrJob", "is_zarr_output", "write_chunks"]

#: Chunk side in output pixels (part of a run's identity: it changes the store's bytes).
ZARR_CHUNK = 512
#: Side in output pixels of the square of chunks one task writes (a multiple of ZARR_CHUNK):
#: 64 chunks, 48 MiB of RGB uint8.
ZARR_GROUP = 4096
DATA, MASK = "band_data", "mask"
CAPTIONS_SUFFIX = ".captions.geojson"


def is_zarr_output(output: str | os.PathLike) -> bool:
    """Whether OUTPUT asks for a Zarr store (a name ending in ``.zarr``, with or without ``/``)."""
    return os.fspath(output).rstrip("/" + os.sep).lower().endswith(".zarr")


class ZarrTarget:
    """The ``.zarr`` OUTPUT, checked before any work, and the final renames.

    Same interface as :class:`geosr.tiled_output.TiledTarget`: the captions go beside the
    store (``NAME.captions.geojson``).
    """

    def __init__(self, output: str | os.PathLike, overwrite: bool = False,
                 inputs: Sequence[str | os.PathLike] = ()) -> None:
        self.output = Path(os.fspath(output).rstrip("/" + os.sep)).absolute()
        check_file_name(self.output)
        self.data = self.output
        self.captions = sidecar_path(self.output, CAPTIONS_SUFFIX)
        self.overwrite = overwrite
        if not self.output.parent.exists():
            raise OutputError(f"output folder {self.output.parent} does not exist")
        if not os.access(self.output.parent, os.W_OK):
            raise OutputError(f"output folder {self.output.parent} is not writable")
        for path in (self.output, self.captions):
            if (path.exists() or path.is_symlink()) and not overwrite:
                raise OutputExistsError(f"{path} exists; pass --overwrite to replace it")
        for path in inputs:
            absolute = Path(path).absolute()
            if absolute == self.output or self.output in absolute.parents:
                raise OutputError(f"input {absolute} lies in the output {self.output}: write to another place")

    def staging(self, work: Path) -> tuple[Path, None, Path]:
        """Where the run builds the store and the captions in its work folder ``work``."""
        return work / self.output.name, None, work / "captions.geojson"

    def commit(self, work: Path, moves) -> None:
        """Rename the staged store into place (a replaced one goes into ``work`` and is deleted
        after), then ``moves`` (sidecars), then the captions."""
        store, _, captions = self.staging(work)
        if self.output.is_dir() and not self.output.is_symlink():
            old = work / "replaced"
            os.rename(self.output, old)
            os.rename(store, self.output)
            shutil.rmtree(old)
        else:
            if self.output.exists() or self.output.is_symlink():
                self.output.unlink()
            os.rename(store, self.output)
        for src, dst in moves.items():
            os.replace(src, dst)
        os.replace(captions, self.captions)


@dataclass(frozen=True)
class ZarrJob:
    """One group of chunks for a dask task: the raw work raster, the store, the chunks."""

    store: str
    pixels: str
    mask: str | None
    width: int
    height: int
    count: int
    dtype: str
    chunks: tuple  # ((cy, cx), ...)


def _chunk_name(cy: int, cx: int) -> str:
    return f"{cy}.{cx}"


def _chunk_files(store: Path, cy: int, cx: int, masked: bool) -> list[Path]:
    files = [store / DATA / f"0.{cy}.{cx}"]
    if masked:
        files.append(store / MASK / f"{cy}.{cx}")
    return files


def _files_crc(paths: Sequence[Path]) -> tuple[int, int]:
    """Size and CRC-32 of files one after the other."""
    crc = size = 0
    for path in paths:
        data = path.read_bytes()
        crc = zlib.crc32(data, crc)
        size += len(data)
    return size, crc


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@shippable_errors
def write_chunks(job: ZarrJob) -> list[tuple[str, int, int]]:
    """Write a group of chunks from the raw work raster and make them durable (a dask task).

    Returns
    -------
    list of tuple
        ``(name, size, CRC-32)`` of each chunk's files, for the journal.
    """
    import zarr

    store, n = Path(job.store), ZARR_CHUNK
    pixels = np.memmap(job.pixels, dtype=job.dtype, mode="r", shape=(job.height, job.width, job.count))
    mask = np.memmap(job.mask, dtype=np.uint8, mode="r", shape=(job.height, job.width)) if job.mask else None
    try:
        with zarr.config.set({"array.write_empty_chunks": True}):  # every chunk a file: each one journalled
            data = zarr.open_array(store / DATA, mode="r+", zarr_format=2)
            valid = zarr.open_array(store / MASK, mode="r+", zarr_format=2) if mask is not None else None
        out = []
        for cy, cx in job.chunks:
            rows = slice(cy * n, min((cy + 1) * n, job.height))
            cols = slice(cx * n, min((cx + 1) * n, job.width))
            data[:, rows, cols] = np.moveaxis(np.asarray(pixels[rows, cols]), -1, 0)
            if valid is not None:
                valid[rows, cols] = np.asarray(mask[rows, cols])
            files = _chunk_files(store, cy, cx, mask is not None)
            for path in files:
                _fsync(path)
            out.append((_chunk_name(cy, cx), *_files_crc(files)))
        for name in (DATA, MASK) if mask is not None else (DATA,):
            _fsync(store / name, directory=True)
    except OSError as exc:
        raise write_error(store, exc) from exc
    finally:
        del pixels, mask
    return out


class ZarrWriter:
    """Creates the store, submits each group of chunks once all its cells are durable, journals the chunks.

    Parameters
    ----------
    client : distributed.Client
    raster : WorkRaster
        The run's work raster (read by the tasks through ``np.memmap``).
    journal : RunJournal
        Followed through its commits; finished chunks are recorded in it (as ``blocks``).
    store : Path
        The staged store, in the work folder.
    cells : sequence of Window
        HR windows of the output cells not finished yet.
    """

    def __init__(self, client, raster: WorkRaster, journal: RunJournal, store: Path, cells: Sequence[Window]) -> None:
        self.client, self.raster, self.journal, self.store = client, raster, journal, store
        self._group = max(ZARR_CHUNK, ZARR_GROUP // ZARR_CHUNK * ZARR_CHUNK)
        self._chunks_y, self._chunks_x = -(-raster.height // ZARR_CHUNK), -(-raster.width // ZARR_CHUNK)
        self._create_store()
        self._check_finished()
        per = self._group // ZARR_CHUNK
        self._groups: dict[tuple[int, int], tuple] = {}
        for gy in range(-(-self._chunks_y // per)):
            for gx in range(-(-self._chunks_x // per)):
                chunks = tuple((cy, cx) for cy in range(gy * per, min((gy + 1) * per, self._chunks_y))
                               for cx in range(gx * per, min((gx + 1) * per, self._chunks_x)))
                if any(_chunk_name(*c) not in journal.blocks for c in chunks):
                    self._groups[gy, gx] = chunks
        self._waiting: dict[tuple[int, int], set[tuple[int, int]]] = {g: set() for g in self._groups}
        for window in cells:
            for g in self._groups_of(window):
                if g in self._waiting:
                    self._waiting[g].add((int(window.col_off), int(window.row_off)))
        self._futures: list = []
        raster.sync()  # the tasks may read it from other processes
        journal.on_commit.append(self._durable)
        self._submit_ready()

    # -- the store's metadata ------------------------------------------------------------
    def _create_store(self) -> None:
        """Create the store's arrays and metadata, or keep a stopped run's store when it opens
        with the same arrays (its chunks are verified against the journal)."""
        import zarr

        r = self.raster
        if self.store.exists():
            try:
                group = zarr.open_group(self.store, mode="r", zarr_format=2)
                data = group[DATA]
                if data.shape == (r.count, r.height, r.width) and data.dtype == r.dtype and (
                        (MASK in group) == r.write_mask):
                    return
            except Exception:  # noqa: BLE001 - a store torn by a kill: made again
                pass
            shutil.rmtree(self.store)
        try:
            self._write_metadata()
        except OSError as exc:
            raise write_error(self.store, exc) from exc

    def _write_metadata(self) -> None:
        import numcodecs
        import zarr

        r, p, meta = self.raster, self.raster.profile, self.raster.band_meta
        group = zarr.open_group(self.store, mode="w", zarr_format=2, attributes={str(k): str(v) for k, v in r.tags.items()})
        compressor = numcodecs.Zlib(level=1)
        crs, transform = p.get("crs"), p.get("transform")
        wkt = crs.to_wkt() if crs else None
        grid: dict = {}
        coords = "spatial_ref" if crs or transform is not None else ""
        attrs: dict = {"_ARRAY_DIMENSIONS": ["band", "y", "x"]}
        if coords:
            attrs.update(grid_mapping="spatial_ref", coordinates=coords)
        if wkt:
            attrs["_CRS"] = {"wkt": wkt}  # GDAL's Zarr driver
            try:
                import pyproj

                grid.update(pyproj.CRS.from_wkt(wkt).to_cf())
            except Exception:  # noqa: BLE001 - a CRS that CF cannot name keeps its WKT
                pass
            grid.update(crs_wkt=wkt, spatial_ref=wkt)
        if transform is not None:
            t = transform
            grid["GeoTransform"] = " ".join(repr(float(v)) for v in (t.c, t.a, t.b, t.f, t.d, t.e))
        descriptions = list(meta.get("descriptions") or ())
        if any(descriptions):
            attrs["long_name"] = [d or "" for d in descriptions]
        for key in ("scales", "offsets"):
            if meta.get(key):
                attrs[key] = [float(v) for v in meta[key]]
        if meta.get("units") and any(meta["units"]):
            attrs["units"] = [u or "" for u in meta["units"]]
        if meta.get("colorinterp"):
            attrs["colorinterp"] = [getattr(c, "name", str(c)) for c in meta["colorinterp"]]
        nodata = p.get("nodata")
        group.create_array(DATA, shape=(r.count, r.height, r.width), chunks=(r.count, ZARR_CHUNK, ZARR_CHUNK),
                           dtype=r.dtype, fill_value=nodata, compressors=compressor, attributes=attrs)
        if r.write_mask:
            mask_attrs = {"_ARRAY_DIMENSIONS": ["y", "x"], "flag_values": [0, 255],
                          "flag_meanings": "invalid valid", "long_name": "validity mask (GDAL mask band)"}
            if coords:
                mask_attrs.update(grid_mapping="spatial_ref", coordinates=coords)
            group.create_array(MASK, shape=(r.height, r.width), chunks=(ZARR_CHUNK, ZARR_CHUNK), dtype=np.uint8,
                               fill_value=None, compressors=compressor, attributes=mask_attrs)
        if coords:
            group.create_array("spatial_ref", shape=(), dtype=np.int64, fill_value=None,
                               attributes={"_ARRAY_DIMENSIONS": [], **grid})[...] = 0
        group.create_array("band", shape=(r.count,), dtype=np.int64, fill_value=None,
                           attributes={"_ARRAY_DIMENSIONS": ["band"]})[:] = np.arange(1, r.count + 1)
        if transform is not None and transform.b == 0 and transform.d == 0:  # rectilinear: pixel centres
            t = transform
            for name, n, origin, step, axis in (("x", r.width, t.c, t.a, "X"), ("y", r.height, t.f, t.e, "Y")):
                coord = {"_ARRAY_DIMENSIONS": [name], "axis": axis}
                if crs:
                    coord.update(_axis_attrs(crs, name))
                group.create_array(name, shape=(n,), dtype=np.float64, fill_value=None, attributes=coord)[:] = (
                    origin + (np.arange(n) + 0.5) * step)

    # -- chunks --------------------------------------------------------------------------
    def _check_finished(self) -> None:
        """Forget journalled chunks whose files are gone or hold other bytes: they are made again."""
        bad = []
        for name, (size, crc) in self.journal.blocks.items():
            try:
                cy, cx = (int(v) for v in name.split("."))
                same = _files_crc(_chunk_files(self.store, cy, cx, self.raster.write_mask)) == (size, crc)
            except (OSError, ValueError):
                same = False
            if not same:
                bad.append(name)
        for name in bad:
            del self.journal.blocks[name]
        if bad:
            warnings.warn(f"{len(bad)} finished Zarr chunks in {self.store} are missing or changed: making them again",
                          StoppedRunWarning, stacklevel=3)

    def _groups_of(self, window: Window) -> list[tuple[int, int]]:
        return squares_under(window, self._group)

    def _durable(self, cells: list[CellRecord]) -> None:
        """The journal's commit listener: these cells are durable; submit finished groups."""
        for cell in cells:
            for g in self._groups_of(Window(cell.col_off, cell.row_off, cell.width, cell.height)):
                if g in self._waiting:
                    self._waiting[g].discard(cell.key)
        self._submit_ready()
        for future in [f for f in self._futures if f.done()]:
            self._record(future)

    def _submit_ready(self) -> None:
        r = self.raster
        for g in [g for g, waiting in self._waiting.items() if not waiting]:
            del self._waiting[g]
            job = ZarrJob(str(self.store), str(r.folder / r.PIXELS), str(r.folder / r.MASK) if r.write_mask else None,
                          r.width, r.height, r.count, r.dtype.name, self._groups[g])
            self._futures.append(self.client.submit(write_chunks, job, pure=False))

    def _record(self, future) -> None:
        chunks = future.result()  # a failed group raises its error here
        self._futures.remove(future)
        future.release()
        for chunk in chunks:
            self.journal.record(block=chunk)

    def wait(self) -> None:
        """Wait for every group's chunks and journal them (after the last cells' commit)."""
        import distributed

        if any(self._waiting.values()):
            raise RuntimeError("internal error: some chunks' cells were never finished")
        self._submit_ready()
        for future in distributed.as_completed(list(self._futures)):
            self._record(future)
        self.journal.commit(lambda: None)  # the chunk files were fsynced by their tasks

    def write_mosaic(self, vrt, captions: Path, captions_fc: dict, created) -> None:
        """Consolidate the store's metadata and write the captions (staged); ``vrt`` and ``created`` are unused."""
        import zarr

        try:
            zarr.consolidate_metadata(self.store, zarr_format=2)
        except OSError as exc:
            raise write_error(self.store, exc) from exc
        captions.write_text(json.dumps(captions_fc))


def _axis_attrs(crs, name: str) -> dict:
    """CF attributes of a projected or geographic x / y coordinate."""
    if crs.is_geographic:
        return ({"standard_name": "longitude", "units": "degrees_east"} if name == "x"
                else {"standard_name": "latitude", "units": "degrees_north"})
    units = crs.linear_units or "metre"
    return {"standard_name": "projection_x_coordinate" if name == "x" else "projection_y_coordinate",
            "units": "m" if units in ("metre", "meter") else units}
