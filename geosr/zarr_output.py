"""Zarr output: an OUTPUT ending in ``.zarr`` is written as a Zarr store, chunk by chunk.

The store is Zarr format 2 (what GDAL's Zarr driver and xarray both read), one group:

- ``band_data`` (``band, y, x``): the output's pixels in its dtype, chunks of all bands x
  :data:`ZARR_CHUNK` x :data:`ZARR_CHUNK` output pixels (ragged at the right and bottom), its
  ``band`` coordinate the input band numbers (as the lazy result of :func:`geosr.upscale`),
  Zstandard-compressed (level 1); the output's nodata is the array's fill value (``_FillValue`` to xarray);
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
:attr:`geosr.journal.RunJournal.on_commit`; :class:`geosr.block_tasks.BlockTaskWriter`), read
in place from the raw work raster (``np.memmap``): the chunks one commit finishes, one task
per :data:`ZARR_GROUP` square they lie in. Each overview chunk is the 2 x 2 average of the
four chunks of the level before under it, and is written as soon as they are: by the task
that wrote the last of them, or by a task of its own when they came from several. The engine
runs the tiles square by square of :data:`ZARR_GROUP`, so every level fills in as the run
goes, and what is left after the last tile is the last chunks and the overview chunks over
them, one chain up the levels (before, the levels over a group were made once the whole group
was: a group of 16.7 MP and its levels after the last tile). The store is built in the run's
work folder and renamed into place at the end; a failed run leaves nothing at OUTPUT.

Resume: a task fsyncs the files of the chunks it writes, and their folders, before the journal
names each chunk with the size and CRC-32 of its files (overview chunks as ``f/cy.cx``); a
resumed run re-reads the named chunks and writes again every chunk that is unnamed, gone or
changed, and the overview chunks over it. Levels up to :data:`ZARR_GROUP` / :data:`ZARR_CHUNK`
(2, 4 and 8) are journalled; the coarser ones, a 64th of the output's pixels or less, are not
journalled: a resumed run makes them again. The store's metadata is made beside its name, fsynced
and renamed into place (a store torn mid-way is never kept), and
the coarser levels and the consolidated metadata once every chunk is written, before the commit.
"""

from __future__ import annotations

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
from geosr.local_paths import resolved
from geosr.replaceable import check_replaceable_zarr
from geosr.tasks import shippable_errors
from geosr.writer import WorkRaster, check_file_name, replace_durably, sidecar_path, sync_tree, write_error
from geosr.zarr_overviews import halve, multiscales_attrs, overview_factors

__all__ = ["ZARR_CHUNK", "ZARR_GROUP", "ZarrTarget", "ZarrWriter", "ZarrJob", "is_zarr_output", "write_chunks"]

#: Chunk side in output pixels (part of a run's identity: it changes the store's bytes).
ZARR_CHUNK = 512
#: Side in output pixels of the squares the tiles run by and a task's chunks lie in (a multiple
#: of ZARR_CHUNK): 64 chunks, 48 MiB of RGB uint8; overview levels up to its side in chunks
#: (2, 4, 8) are journalled.
ZARR_GROUP = 4096
DATA, MASK = "band_data", "mask"
CAPTIONS_SUFFIX = ".captions.geojson"


def is_zarr_output(output: str | os.PathLike) -> bool:
    """Whether OUTPUT asks for a Zarr store (a name ending in ``.zarr``, with or without ``/``)."""
    return os.fspath(output).rstrip("/" + os.sep).lower().endswith(".zarr")


class ZarrTarget:
    """The ``.zarr`` OUTPUT, checked before any work, and the final renames.

    Same interface as :class:`geosr.tiled_output.TiledTarget`: the captions go beside the
    store (``NAME.captions.geojson``). An existing OUTPUT must be an empty folder (used without
    ``overwrite``) or, with ``overwrite``, a store geosr wrote holding nothing else
    (:func:`geosr.replaceable.check_replaceable_zarr`); ``stand_in``: OUTPUT is geosr's own local
    stand-in of an S3 store, replaced unchecked.
    """

    def __init__(self, output: str | os.PathLike, overwrite: bool = False,
                 inputs: Sequence[str | os.PathLike] = (), stand_in: bool = False) -> None:
        self.output = Path(os.fspath(output).rstrip("/" + os.sep)).absolute()
        check_file_name(self.output)
        self.data = self.output
        self.captions = sidecar_path(self.output, CAPTIONS_SUFFIX)
        self.lock_names = (self.output, self.captions)  # out.tif's run writes these captions too
        self.overwrite, self.stand_in = overwrite, stand_in
        if not self.output.parent.exists():
            raise OutputError(f"output folder {self.output.parent} does not exist")
        if not os.access(self.output.parent, os.W_OK):
            raise OutputError(f"output folder {self.output.parent} is not writable")
        if self.captions.is_dir():
            raise OutputError(f"{self.captions} is a folder; the captions are written there: move it away")
        empty = self.output.is_dir() and not self.output.is_symlink() and not any(self.output.iterdir())
        for path in (self.output, self.captions):
            if (path.exists() or path.is_symlink()) and not overwrite and not (path == self.output and empty):
                raise OutputExistsError(f"{path} exists; pass --overwrite to replace it")
        if not stand_in and (self.output.exists() or self.output.is_symlink()):
            # an empty folder, or a store geosr wrote and nothing else: never ~/ (geosr.replaceable)
            check_replaceable_zarr(self.output)
        for path in inputs:
            if self.occupies(Path(path)):
                raise OutputError(f"input {Path(path).absolute()} lies in the output {self.output}: "
                                  "write to another place")

    def occupies(self, path: Path) -> bool:
        """Whether the run writes ``path`` (:func:`geosr.local_paths.resolved`): the store, anything in
        it, or the captions."""
        place, store = resolved(path), resolved(self.output)
        return place in (store, resolved(self.captions)) or store in place.parents

    def staging(self, work: Path) -> tuple[Path, None, Path]:
        """Where the run builds the store and the captions in its work folder ``work``."""
        return work / self.output.name, None, work / "captions.geojson"

    def commit(self, work: Path, moves) -> None:
        """Rename the staged store into place (a replaced one goes into ``work`` and is deleted
        after), then ``moves`` (sidecars), then the captions."""
        store, _, captions = self.staging(work)
        if not self.stand_in and (self.output.exists() or self.output.is_symlink()):
            check_replaceable_zarr(self.output)  # what came there since the run's start
        if self.output.is_dir() and not self.output.is_symlink():
            old = work / "replaced"
            os.rename(self.output, old)
            os.rename(store, self.output)
            shutil.rmtree(old)
        else:
            if self.output.exists() or self.output.is_symlink():
                self.output.unlink()
            os.rename(store, self.output)
        # the chunks were synced as they were written; the sidecars, captions and renames now
        replace_durably(list(moves.items()) + [(captions, self.captions)], folders=[self.output.parent])


@dataclass(frozen=True)
class ZarrJob:
    """Chunks for a dask task: the raw work raster, the store, the output's chunks and the
    overview chunks to write after them.

    ``overviews`` are ``(level, cy, cx)`` in the order to write them: each made from the four
    chunks of the level before under it (:func:`_overview_source`), which are in the store
    already or earlier in this job. ``journalled`` is the coarsest level whose chunks are made
    durable and journalled (1: the output's only).
    """

    store: str
    pixels: str
    mask: str | None
    width: int
    height: int
    count: int
    dtype: str
    chunks: tuple  # ((cy, cx), ...) of the output's level
    nodata: float | None = None
    overviews: tuple = ()  # ((level, cy, cx), ...)
    journalled: int = 1
    resampling: str = "average"  # of the overviews (geosr.zarr_overviews.halve)


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


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


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
def write_chunks(job: ZarrJob, *after) -> tuple[list[tuple[int, int, int]], list[tuple[str, int, int]]]:
    """Write chunks from the raw work raster, then the job's overview chunks, and make the
    journalled ones durable (a dask task). ``after``: the results of the tasks that write chunks
    the overview chunks are made from (dask runs this task once they are done; unused here).

    Returns
    -------
    (list, list)
        The ``(level, cy, cx)`` of every chunk written, and ``(name, size, CRC-32)`` of the
        files of each journalled one, for the journal.
    """
    import zarr

    store, n, masked = Path(job.store), ZARR_CHUNK, job.mask is not None
    pixels = np.memmap(job.pixels, dtype=job.dtype, mode="r", shape=(job.height, job.width, job.count))
    mask = np.memmap(job.mask, dtype=np.uint8, mode="r", shape=(job.height, job.width)) if masked else None
    levels = sorted({1, *(level for level, _, _ in job.overviews)})
    written: list[tuple[int, int, int]] = []
    out: list[tuple[str, int, int]] = []
    # what this job wrote, by chunk: the overview chunks over them read it here, not from the store
    made: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray | None]] = {}
    try:
        with zarr.config.set({"array.write_empty_chunks": True}):  # every chunk a file: each one journalled
            arrays = {level: (zarr.open_array(_level_path(store, level) / DATA, mode="r+", zarr_format=2),
                              zarr.open_array(_level_path(store, level) / MASK, mode="r+", zarr_format=2)
                              if masked else None) for level in levels}
        data, valid = arrays[1]
        for cy, cx in job.chunks:
            rows = slice(cy * n, min((cy + 1) * n, job.height))
            cols = slice(cx * n, min((cx + 1) * n, job.width))
            values = np.moveaxis(np.asarray(pixels[rows, cols]), -1, 0)
            data[:, rows, cols] = values
            if valid is not None:
                valid[rows, cols] = np.asarray(mask[rows, cols])
            made[1, cy, cx] = values, np.asarray(mask[rows, cols]) > 0 if masked else None
            written.append((1, cy, cx))
        for level, cy, cx in job.overviews:
            source, source_valid = _overview_source(store, arrays, made, level, cy, cx, masked)
            values, values_valid = halve(source, source_valid, job.nodata, job.resampling)
            rows, cols = slice(cy * n, cy * n + values.shape[1]), slice(cx * n, cx * n + values.shape[2])
            data, valid = arrays[level]
            data[:, rows, cols] = values
            if valid is not None:
                valid[rows, cols] = np.where(values_valid, 255, 0).astype(np.uint8)
            made[level, cy, cx] = values, values_valid
            written.append((level, cy, cx))
        # Durable before the journal names them: the chunk files, then their folders (new names).
        durable = [(level, cy, cx) for level, cy, cx in written if level <= job.journalled]
        for level, cy, cx in durable:
            files = _chunk_files(store, cy, cx, masked, level)
            for path in files:
                _fsync(path)
            out.append((_chunk_name(cy, cx, level), *_files_crc(files)))
        for level in sorted({level for level, _, _ in durable}):
            for name in (DATA, MASK) if masked else (DATA,):
                _fsync(_level_path(store, level) / name, directory=True)
    except OSError as exc:
        raise write_error(store, exc) from exc
    finally:
        del pixels, mask
    return written, out


def _overview_source(store: Path, arrays: dict, made: dict, level: int, cy: int, cx: int,
                     masked: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The pixels (and validity) of level ``level / 2`` under chunk ``(cy, cx)`` of ``level``: its
    up to 2 x 2 chunks, from ``made`` when this task wrote them all, else read from the store."""
    import zarr

    n, below = ZARR_CHUNK, level // 2
    rows, cols = slice(2 * cy * n, 2 * (cy + 1) * n), slice(2 * cx * n, 2 * (cx + 1) * n)
    if below in arrays:
        data, valid = arrays[below]
    else:
        data = zarr.open_array(_level_path(store, below) / DATA, mode="r", zarr_format=2)
        valid = zarr.open_array(_level_path(store, below) / MASK, mode="r", zarr_format=2) if masked else None
    rows_below, cols_below = -(-data.shape[1] // n), -(-data.shape[2] // n)
    children = [[(below, y, x) for x in (2 * cx, 2 * cx + 1) if x < cols_below]
                for y in (2 * cy, 2 * cy + 1) if y < rows_below]
    if all(child in made for row in children for child in row):
        values = np.block([[made[child][0] for child in row] for row in children])
        validity = np.block([[made[child][1] for child in row] for row in children]) if masked else None
        return values, validity
    return data[:, rows, cols], (valid[rows, cols] > 0 if masked else None)


class ZarrWriter(BlockTaskWriter):
    """Creates the store, writes each chunk once all its cells are durable and each overview chunk
    once the chunks under it are written; journals them.

    The waiting, submitting and journalling are :class:`geosr.block_tasks.BlockTaskWriter`'s;
    a block here is one chunk of the output. The chunks whose cells one commit made durable
    are written by one task per :data:`ZARR_GROUP` square they lie in, and that task goes on
    with the overview chunks that become complete (level by level: 2 x 2 chunks of a level
    make one of the next); the overview chunks over chunks of several tasks go in one task
    submitted with them, which dask runs once those tasks are done (before, each level waited
    for the client to collect the level below it: at the end of a run a chain of 4-6 tasks,
    0.4-0.6 s at 67 MP, one round trip each). The engine runs the tiles square by square of
    :data:`ZARR_GROUP`, so all levels are written as the run goes: what is left after the last
    tile is its last chunks and the overview chunks over them, one chain up the levels.

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
    resampling : str
        Of the overview levels, :func:`geosr.zarr_overviews.halve`'s: ``average`` or ``nearest``.
    """

    finished_files = "Zarr chunks"
    block_name = "chunks"

    def __init__(self, client, raster: WorkRaster, journal: RunJournal, store: Path, cells: Sequence[Window],
                 resampling: str = "average") -> None:
        self.resampling = resampling
        self.raster, self.store = raster, store  # _create_store reads them before the base class sets up
        group = max(ZARR_CHUNK, ZARR_GROUP // ZARR_CHUNK * ZARR_CHUNK)
        self._per = group // ZARR_CHUNK  # a group's side in chunks
        self._factors = overview_factors(raster.width, raster.height, ZARR_CHUNK)
        # Levels up to a group's side in chunks (2, 4 and 8 for groups of 8 x 8) are journalled,
        # each of their chunks under one group; the coarser ones, a 64th of the output's pixels
        # or less, are made again by a resumed run.
        self._journalled = max([1, *(f for f in self._factors if f <= self._per)])
        #: chunks of each level, ``(rows, columns)``; level ``f`` is ceil(height / f) x ceil(width / f) px
        self._grid = {f: (_ceil(_ceil(raster.height, f), ZARR_CHUNK), _ceil(_ceil(raster.width, f), ZARR_CHUNK))
                      for f in (1, *self._factors)}
        self._create_store()
        self._done: set[tuple[int, int, int]] = set()  # (level, cy, cx) written, by this run or journalled
        self._assigned: set[tuple[int, int, int]] = set()  # overview chunks in tasks not collected yet
        self._new: set[tuple[int, int, int]] = set()  # done since the last submission: their parents may be due
        #: chunks of every level in tasks not collected yet, and the task writing each
        self._pending: dict[tuple[int, int, int], object] = {}
        super().__init__(client, raster, journal, ZARR_CHUNK, cells, order_side=group)

    @property
    def folder(self) -> Path:
        return self.store

    def _blocks_to_write(self) -> list[tuple[int, int]]:
        """The output's chunks not journalled (called once the journalled ones are checked)."""
        for name in self.journal.blocks:
            cy, cx, level = _parse_chunk_name(name)
            self._done.add((level, cy, cx))
        self._new = set(self._done)  # an overview chunk over journalled ones may be missing
        rows, cols = self._grid[1]
        return [(cy, cx) for cy in range(rows) for cx in range(cols) if (1, cy, cx) not in self._done]

    def _journalled_bytes(self, name: str) -> tuple[int, int]:
        cy, cx, level = _parse_chunk_name(name)
        return _files_crc(_chunk_files(self.store, cy, cx, self.raster.write_mask, level))

    def _children(self, level: int, cy: int, cx: int) -> list[tuple[int, int, int]]:
        below = level // 2
        rows, cols = self._grid[below]
        return [(below, y, x) for y in (2 * cy, 2 * cy + 1) for x in (2 * cx, 2 * cx + 1) if y < rows and x < cols]

    def _overviews_over(self, chunks, available: set) -> list[tuple[int, int, int]]:
        """The overview chunks, level by level, over ``chunks`` whose chunks below are all in
        ``available`` (grown with them), not written or given to a task yet; they are given to the caller."""
        out = []
        frontier = set(chunks)
        for below, level in zip((1, *self._factors), self._factors):
            parents = sorted({(level, cy // 2, cx // 2) for f, cy, cx in frontier if f == below})
            for parent in parents:
                if parent in self._done or parent in self._assigned:
                    continue
                if all(child in available for child in self._children(*parent)):
                    self._assigned.add(parent)
                    available.add(parent)
                    frontier.add(parent)
                    out.append(parent)
        return out

    def _submit_blocks(self, keys: list[tuple[int, int]]) -> list:
        """One task per group square of the chunks ``keys``, with the overview chunks they complete;
        then one for the overview chunks that chunks collected since the last call complete."""
        groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for cy, cx in keys:
            groups.setdefault((cy // self._per, cx // self._per), []).append((cy, cx))
        futures = []
        for chunks in groups.values():
            own = {(1, cy, cx) for cy, cx in chunks}
            futures.append(self._submit_job(chunks, self._overviews_over(own, self._done | own)))
        # The overview chunks whose chunks below are done or in tasks not collected yet: one task,
        # run after those tasks (no round trip through here per level).
        frontier = self._new | set(self._pending)
        self._new = set()
        if frontier:
            overviews = self._overviews_over(frontier, self._done | set(self._pending))
            if overviews:
                below = {child for parent in overviews for child in self._children(*parent)}
                after = {id(f): f for chunk, f in self._pending.items() if chunk in below}
                futures.append(self._submit_job([], overviews, list(after.values())))
        return futures

    def _submit_job(self, chunks: list[tuple[int, int]], overviews: list[tuple[int, int, int]], after=()):
        r = self.raster
        job = ZarrJob(str(self.store), str(r.folder / r.PIXELS), str(r.folder / r.MASK) if r.write_mask else None,
                      r.width, r.height, r.count, r.dtype.name, tuple(chunks), r.profile.get("nodata"),
                      tuple(overviews), self._journalled, self.resampling)
        future = self.client.submit(write_chunks, job, *after, pure=False, priority=self.TASK_PRIORITY)
        for chunk in [*((1, cy, cx) for cy, cx in chunks), *overviews]:
            self._pending[chunk] = future
        return future

    def _collect(self, result) -> list[tuple[str, int, int]]:
        written, entries = result
        for chunk in written:
            self._pending.pop(chunk, None)
            self._assigned.discard(chunk)
            self._done.add(chunk)
            self._new.add(chunk)
        return entries

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
        # Made beside it, synced, then renamed: a resumed run keeps a store that opens with the
        # right arrays, so one torn by a kill or power loss mid-way (a level without its
        # coordinates) must never be at its name.
        new = self.store.with_name(self.store.name + ".new")
        try:
            shutil.rmtree(new, ignore_errors=True)
            self._write_metadata(new)
            sync_tree(new)
            replace_durably([(new, self.store)])
        except OSError as exc:
            raise write_error(self.store, exc) from exc

    def _write_metadata(self, store: Path) -> None:
        import zarr

        r, p = self.raster, self.raster.profile
        attrs = {str(k): str(v) for k, v in r.tags.items()}
        if self._factors:
            attrs.update(multiscales_attrs(self._factors, r.width, r.height, p.get("transform"), DATA, self.resampling))
        group = zarr.open_group(store, mode="w", zarr_format=2, attributes=attrs)
        self._write_level(group, 1)
        for f in self._factors:
            self._write_level(group.create_group(str(f)), f)

    def _write_level(self, group, f: int) -> None:
        """The arrays of overview level ``f`` (1: the output) in ``group``: data, mask, coordinates."""
        import numcodecs

        r, p, meta = self.raster, self.raster.profile, self.raster.band_meta
        height, width = -(-r.height // f), -(-r.width // f)
        # Zstandard, zarr's own default for format 2: GDAL's Zarr driver and numcodecs read it;
        # level 1 encoded 40 aerial images 17x faster than zlib's level 1 (0.021 against 0.365 s)
        # for 4.5 % more bytes (0.852 against 0.815 of raw); zlib was most of the serial tail
        # (~16 ms a 512 px RGB chunk, the last chunks and their overview chain after the last tile).
        compressor = numcodecs.Zstd(level=1)
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
        # a palette band's colour table and each band's own tags (wavelengths, names), as the COG keeps
        # them: "palette" alone named a table the store did not hold
        if any(meta.get("colormaps") or ()):
            attrs["colormaps"] = [None if not table else [[int(i), *map(int, rgba)] for i, rgba in sorted(table.items())]
                                  for table in meta["colormaps"]]
        if any(meta.get("tags") or ()):
            attrs["band_tags"] = [_json_tags(t) for t in meta["tags"]]
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
        # the input's band numbers, as the lazy result's coordinate: 4, 3, 2 for ``--bands 4,3,2``
        group.create_array("band", shape=(r.count,), dtype=np.int64, fill_value=None,
                           attributes={"_ARRAY_DIMENSIONS": ["band"]})[:] = meta.get("input_bands") or np.arange(1, r.count + 1)
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
        """Wait for every chunk of every level and journal them (after the last cells' commit)."""
        super().wait()
        missing = sum(rows * cols for rows, cols in self._grid.values()) - len(self._done)
        if missing:
            raise RuntimeError(f"internal error: {missing} Zarr chunks were never written")
        # The chunks of the journalled levels were synced by their tasks; the coarser levels'
        # and the consolidated metadata now (the run deletes its work folder once committed).
        journalled = {_level_path(self.store, f) / name for f in (1, *self._factors) if f <= self._journalled
                      for name in (DATA, MASK)}
        try:
            sync_tree(self.store, lambda path: path.parent in journalled and not path.name.startswith("."))
        except OSError as exc:
            raise write_error(self.store, exc) from exc

    def write_index(self, vrt, created) -> None:
        """Consolidate the store's metadata (it needs no chunk, so a run does it before its tiles);
        ``vrt`` and ``created`` are unused."""
        import zarr

        try:
            zarr.consolidate_metadata(self.store, zarr_format=2)
        except OSError as exc:
            raise write_error(self.store, exc) from exc


def _axis_attrs(crs, name: str) -> dict:
    """CF attributes of a projected or geographic x / y coordinate."""
    if crs.is_geographic:
        return ({"standard_name": "longitude", "units": "degrees_east"} if name == "x"
                else {"standard_name": "latitude", "units": "degrees_north"})
    units = crs.linear_units or "metre"
    return {"standard_name": "projection_x_coordinate" if name == "x" else "projection_y_coordinate",
            "units": "m" if units in ("metre", "meter") else units}


def _json_tags(tags) -> dict:
    """A band's tags (``{domain: {key: value}}`` or ``{key: value}``) as JSON-safe strings."""
    return {str(k): (_json_tags(v) if isinstance(v, dict) else str(v)) for k, v in (tags or {}).items()}
