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
- the dataset tags as group attributes, and consolidated metadata (``.zmetadata``);
- overview levels ``2/``, ``4/``... (2 x 2 averages, the same variables on each level's
  grid), listed in the root's ``multiscales`` attribute (:mod:`geosr.zarr_overviews`).

Like the blocks of :mod:`geosr.tiled_output`, chunks are written by dask tasks as soon as
every output cell under them is durable (the client follows
:attr:`geosr.journal.RunJournal.on_commit`), each task writing a group of chunks
(:data:`ZARR_GROUP` output pixels square) read in place from the raw work raster
(``np.memmap``), and the overview levels under those chunks as long as the group covers
whole chunks of the level (levels 2, 4 and 8 for groups of 8 x 8 chunks); the coarser levels
follow once every group is done, a task per chunk, each from the level before. The store is
built in the run's work folder and renamed into place at the end; a failed run leaves
nothing at OUTPUT.

Resume: a task fsyncs its chunk files before the journal names each chunk with the size and
CRC-32 of its files (overview chunks as ``f/cy.cx``); a resumed run re-reads the named chunks
and writes again every group with a chunk that is unnamed, gone or changed. The final pass's
levels are not journalled: a resumed run makes them again.
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from rasterio.windows import Window

from geosr.block_tasks import BlockTaskWriter
from geosr.errors import OutputError, OutputExistsError
from geosr.journal import RunJournal
from geosr.tasks import shippable_errors
from geosr.writer import WorkRaster, check_file_name, sidecar_path, write_error
from geosr.zarr_overviews import halve, multiscales_attrs, overview_factors

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
    nodata: float | None = None
    levels: tuple = ()  # decimation factors of the overview levels this task writes under its chunks


def _chunk_name(cy: int, cx: int, level: int = 1) -> str:
    """A chunk's name in the journal: ``cy.cx`` at the output's level, ``f/cy.cx`` at overview level ``f``."""
    return f"{cy}.{cx}" if level == 1 else f"{level}/{cy}.{cx}"


def _parse_chunk_name(name: str) -> tuple[int, int, int]:
    """``(cy, cx, level)`` of a :func:`_chunk_name` (ValueError for anything else)."""
    level, _, chunk = name.rpartition("/")
    cy, cx = (int(v) for v in chunk.split("."))
    return cy, cx, int(level) if level else 1


def _level_path(store: Path, level: int) -> Path:
    return store if level == 1 else store / str(level)


def _chunk_files(store: Path, cy: int, cx: int, masked: bool, level: int = 1) -> list[Path]:
    folder = _level_path(store, level)
    files = [folder / DATA / f"0.{cy}.{cx}"]
    if masked:
        files.append(folder / MASK / f"{cy}.{cx}")
    return files


def _level_chunks(chunks: Sequence[tuple[int, int]], level: int, width: int, height: int) -> list[tuple[int, int]]:
    """The chunks of overview ``level`` under a group of output chunks (whole chunks: the group's
    side divided by ``level`` is a multiple of the chunk side)."""
    n = ZARR_CHUNK
    rows = {cy for cy, _ in chunks}
    cols = {cx for _, cx in chunks}
    r0, r1 = min(rows) * n // level, -(-min((max(rows) + 1) * n, height) // level)
    c0, c1 = min(cols) * n // level, -(-min((max(cols) + 1) * n, width) // level)
    return [(cy, cx) for cy in range(r0 // n, -(-r1 // n)) for cx in range(c0 // n, -(-c1 // n))]


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
        if job.levels:
            out += _write_group_overviews(job, pixels, mask)
        for level in (1, *job.levels):
            for name in (DATA, MASK) if mask is not None else (DATA,):
                _fsync(_level_path(store, level) / name, directory=True)
    except OSError as exc:
        raise write_error(store, exc) from exc
    finally:
        del pixels, mask
    return out


def _write_group_overviews(job: ZarrJob, pixels: np.memmap, mask: np.memmap | None) -> list[tuple[str, int, int]]:
    """Write the overview levels ``job.levels`` under the job's chunks, from the work raster; their
    journal entries. Level 2 is made strip by strip (a group of RGB float64 at once is 400 MB)."""
    import zarr

    n, store = ZARR_CHUNK, Path(job.store)
    rows, cols = sorted({cy for cy, _ in job.chunks}), sorted({cx for _, cx in job.chunks})
    r0, r1 = rows[0] * n, min((rows[-1] + 1) * n, job.height)
    c0, c1 = cols[0] * n, min((cols[-1] + 1) * n, job.width)
    strip = 2 * n  # even: the strips' halves follow one another
    halves, valids = [], []
    for top in range(r0, r1, strip):
        bottom = min(top + strip, r1)
        data = np.moveaxis(np.asarray(pixels[top:bottom, c0:c1]), -1, 0)
        valid = np.asarray(mask[top:bottom, c0:c1]) > 0 if mask is not None else None
        half, half_valid = halve(data, valid, job.nodata)
        halves.append(half)
        valids.append(half_valid)
    data = np.concatenate(halves, axis=1)
    valid = np.concatenate(valids, axis=0) if mask is not None else None
    out = []
    for level in job.levels:
        if level > 2:
            data, valid = halve(data, valid, job.nodata)
        folder = _level_path(store, level)
        rows_at, cols_at = slice(r0 // level, r0 // level + data.shape[1]), slice(c0 // level, c0 // level + data.shape[2])
        zarr.open_array(folder / DATA, mode="r+", zarr_format=2)[:, rows_at, cols_at] = data
        if valid is not None:
            zarr.open_array(folder / MASK, mode="r+", zarr_format=2)[rows_at, cols_at] = np.where(valid, 255, 0).astype(np.uint8)
        for cy, cx in _level_chunks(job.chunks, level, job.width, job.height):
            files = _chunk_files(store, cy, cx, mask is not None, level)
            for path in files:
                _fsync(path)
            out.append((_chunk_name(cy, cx, level), *_files_crc(files)))
    return out


@shippable_errors
def reduce_chunk(store: str, level: int, chunk: tuple[int, int], masked: bool, nodata: float | None) -> None:
    """Write one chunk of overview ``level`` from the store's level ``level / 2`` (a dask task of
    the final pass, for the levels too coarse for one group's task to own a whole chunk)."""
    import zarr

    n, (cy, cx) = ZARR_CHUNK, chunk
    src, dst = _level_path(Path(store), level // 2), _level_path(Path(store), level)
    rows, cols = slice(2 * cy * n, 2 * (cy + 1) * n), slice(2 * cx * n, 2 * (cx + 1) * n)
    try:
        data = zarr.open_array(src / DATA, mode="r", zarr_format=2)[:, rows, cols]
        valid = zarr.open_array(src / MASK, mode="r", zarr_format=2)[rows, cols] > 0 if masked else None
        data, valid = halve(data, valid, nodata)
        out_rows, out_cols = slice(cy * n, cy * n + data.shape[1]), slice(cx * n, cx * n + data.shape[2])
        zarr.open_array(dst / DATA, mode="r+", zarr_format=2)[:, out_rows, out_cols] = data
        if masked:
            zarr.open_array(dst / MASK, mode="r+", zarr_format=2)[out_rows, out_cols] = np.where(valid, 255, 0).astype(np.uint8)
    except OSError as exc:
        raise write_error(dst, exc) from exc


class ZarrWriter(BlockTaskWriter):
    """Creates the store, submits each group of chunks once all its cells are durable, journals the chunks.

    The waiting, submitting and journalling are :class:`geosr.block_tasks.BlockTaskWriter`'s;
    a block here is a group of chunks (:data:`ZARR_GROUP` output pixels square), its task
    :func:`write_chunks`, and the overview levels coarser than a group follow in :meth:`wait`.

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

    finished_files = "Zarr chunks"
    block_name = "chunks"

    def __init__(self, client, raster: WorkRaster, journal: RunJournal, store: Path, cells: Sequence[Window]) -> None:
        self.raster, self.store = raster, store  # _create_store reads them before the base class sets up
        group = max(ZARR_CHUNK, ZARR_GROUP // ZARR_CHUNK * ZARR_CHUNK)
        self._chunks_y, self._chunks_x = -(-raster.height // ZARR_CHUNK), -(-raster.width // ZARR_CHUNK)
        self._factors = overview_factors(raster.width, raster.height, ZARR_CHUNK)
        # The levels a group's task writes: those where the group covers whole chunks; the
        # coarser ones are a final pass (:meth:`wait`), a 64th of the output's pixels or less.
        self._task_levels = tuple(f for f in self._factors if f <= group // ZARR_CHUNK)
        self._create_store()
        per = group // ZARR_CHUNK
        self._groups: dict[tuple[int, int], tuple] = {
            (gy, gx): tuple((cy, cx) for cy in range(gy * per, min((gy + 1) * per, self._chunks_y))
                            for cx in range(gx * per, min((gx + 1) * per, self._chunks_x)))
            for gy in range(-(-self._chunks_y // per)) for gx in range(-(-self._chunks_x // per))}
        super().__init__(client, raster, journal, group, cells)

    @property
    def folder(self) -> Path:
        return self.store

    def _blocks_to_write(self) -> list[tuple[int, int]]:
        """The groups with a chunk (of the output or of a level their tasks write) not journalled."""
        out = []
        for g, chunks in self._groups.items():
            names = [_chunk_name(*c) for c in chunks] + [
                _chunk_name(*c, level) for level in self._task_levels
                for c in _level_chunks(chunks, level, self.raster.width, self.raster.height)]
            if any(name not in self.journal.blocks for name in names):
                out.append(g)
        return out

    def _journalled_bytes(self, name: str) -> tuple[int, int]:
        cy, cx, level = _parse_chunk_name(name)
        return _files_crc(_chunk_files(self.store, cy, cx, self.raster.write_mask, level))

    def _submit(self, key: tuple[int, int]):
        r = self.raster
        job = ZarrJob(str(self.store), str(r.folder / r.PIXELS), str(r.folder / r.MASK) if r.write_mask else None,
                      r.width, r.height, r.count, r.dtype.name, self._groups[key], r.profile.get("nodata"),
                      self._task_levels)
        return self.client.submit(write_chunks, job, pure=False)

    def _journal_entries(self, result: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
        return result

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
                levels = [str(f) for f in self._factors]
                if data.shape == (r.count, r.height, r.width) and data.dtype == r.dtype and (
                        (MASK in group) == r.write_mask) and all(f"{level}/{DATA}" in group for level in levels):
                    return
            except Exception:  # noqa: BLE001 - a store torn by a kill: made again
                pass
            shutil.rmtree(self.store)
        try:
            self._write_metadata()
        except OSError as exc:
            raise write_error(self.store, exc) from exc

    def _write_metadata(self) -> None:
        import zarr

        r, p = self.raster, self.raster.profile
        attrs = {str(k): str(v) for k, v in r.tags.items()}
        if self._factors:
            attrs.update(multiscales_attrs(self._factors, r.width, r.height, p.get("transform"), DATA))
        group = zarr.open_group(self.store, mode="w", zarr_format=2, attributes=attrs)
        self._write_level(group, 1)
        for f in self._factors:
            self._write_level(group.create_group(str(f)), f)

    def _write_level(self, group, f: int) -> None:
        """The arrays of overview level ``f`` (1: the output) in ``group``: data, mask, coordinates."""
        import numcodecs

        r, p, meta = self.raster, self.raster.profile, self.raster.band_meta
        height, width = -(-r.height // f), -(-r.width // f)
        compressor = numcodecs.Zlib(level=1)
        crs, transform = p.get("crs"), p.get("transform")
        if transform is not None:
            transform = transform * transform.scale(f)
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
        group.create_array(DATA, shape=(r.count, height, width), chunks=(r.count, ZARR_CHUNK, ZARR_CHUNK),
                           dtype=r.dtype, fill_value=nodata, compressors=compressor, attributes=attrs)
        if r.write_mask:
            mask_attrs = {"_ARRAY_DIMENSIONS": ["y", "x"], "flag_values": [0, 255],
                          "flag_meanings": "invalid valid", "long_name": "validity mask (GDAL mask band)"}
            if coords:
                mask_attrs.update(grid_mapping="spatial_ref", coordinates=coords)
            group.create_array(MASK, shape=(height, width), chunks=(ZARR_CHUNK, ZARR_CHUNK), dtype=np.uint8,
                               fill_value=None, compressors=compressor, attributes=mask_attrs)
        if coords:
            group.create_array("spatial_ref", shape=(), dtype=np.int64, fill_value=None,
                               attributes={"_ARRAY_DIMENSIONS": [], **grid})[...] = 0
        group.create_array("band", shape=(r.count,), dtype=np.int64, fill_value=None,
                           attributes={"_ARRAY_DIMENSIONS": ["band"]})[:] = np.arange(1, r.count + 1)
        if transform is not None and transform.b == 0 and transform.d == 0:  # rectilinear: pixel centres
            t = transform
            for name, n, origin, step, axis in (("x", width, t.c, t.a, "X"), ("y", height, t.f, t.e, "Y")):
                coord = {"_ARRAY_DIMENSIONS": [name], "axis": axis}
                if crs:
                    coord.update(_axis_attrs(crs, name))
                group.create_array(name, shape=(n,), dtype=np.float64, fill_value=None, attributes=coord)[:] = (
                    origin + (np.arange(n) + 0.5) * step)

    # -- the end ---------------------------------------------------------------------------
    def wait(self) -> None:
        """Wait for every group's chunks and journal them (after the last cells' commit), then
        write the levels coarser than a group."""
        super().wait()
        self._final_levels()

    def _final_levels(self) -> None:
        """Write the overview levels coarser than a group's tasks write, level after level, a task
        per chunk. Not journalled: a resumed run makes them again (a 64th of the output or less)."""
        r = self.raster
        for f in self._factors:
            if f in self._task_levels:
                continue
            height, width = -(-r.height // f), -(-r.width // f)
            chunks = [(cy, cx) for cy in range(-(-height // ZARR_CHUNK)) for cx in range(-(-width // ZARR_CHUNK))]
            futures = [self.client.submit(reduce_chunk, str(self.store), f, c, r.write_mask, r.profile.get("nodata"),
                                          pure=False) for c in chunks]
            for future in futures:
                future.result()  # a failed chunk raises its error here

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
