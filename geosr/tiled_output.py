"""Tiled output: the output grid cut into blocks, one COG each, a VRT over them and STAC.

The single COG pass is a serial tail that grows with the output. With ``split=N`` (``--split
N``, or an OUTPUT ending in ``/`` or ``.vrt``) the output grid is cut into blocks of N x N
output pixels (ragged at the right and bottom edges) and each block becomes a complete COG
(overviews, statistics, mask or nodata, the creation options, tags and band metadata of the
single COG) as soon as every output cell under it is durable: the client follows the
journal's commits (:attr:`geosr.journal.RunJournal.on_commit`) and submits the block's
translation as a dask task that reads its window of the raw work raster in place
(:meth:`geosr.writer.WorkRaster.write_vrt`). The VRT over all blocks and the STAC Collection
with one Item per block (:mod:`geosr.stac`) need no pixels and are written before the first
tile; what is left after the last tile is the last blocks (and the captions).

Layout: ``OUT_DIR/`` holds ``block_R_C.tif`` (R, C: block row and column), ``block_R_C.json``
(its Item), ``collection.json``, ``mosaic.vrt`` and ``captions.geojson``; an OUTPUT ``NAME.vrt``
puts the blocks, Items and Collection in ``NAME/`` beside it and the captions in
``NAME.captions.geojson``. Everything is made in the run's work folder and renamed into place
at the end (the folder, then the VRT): a failed run leaves nothing that looks complete.

Resume: a block's file is fsynced before the journal names it with its size and CRC-32; a
resumed run re-reads each named block and redoes those whose bytes differ (or are gone), and
never trusts a block file the journal does not name. The VRT, STAC files and captions are written again by
each run and fsynced, with the folder, once the last block is.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence
from xml.sax.saxutils import escape

import rasterio
from rasterio.dtypes import dtype_rev, typename_fwd
from rasterio.windows import Window

from geosr.block_tasks import BlockTaskWriter
from geosr.errors import InputError, OutputError, OutputExistsError
from geosr.journal import RunJournal
from geosr.local_paths import resolved
from geosr.replaceable import check_replaceable_tiled
from geosr.stac import stac_collection, stac_item
from geosr.tasks import shippable_errors
from geosr.writer import (DEFAULT_COG_OPTIONS, WRITER_GDAL_ENV, WorkRaster, check_file_name, replace_durably,
                          sync_tree, translate_to_cog, write_error)

__all__ = ["AUTO_SPLIT", "MAX_AUTO_SPLIT", "MIN_AUTO_BLOCKS", "MIN_AUTO_SPLIT", "TiledTarget", "BlockJob", "BlockWriter",
           "auto_block_side", "block_windows", "tiled_split", "write_block"]

#: ``split`` of an OUTPUT that asks for tiled output without one: the block side is chosen from
#: the output's size when the run knows it (:func:`auto_block_side`).
AUTO_SPLIT = 0
#: The subfolder of a run's work folder where the output is built (:meth:`TiledTarget.staging`).
STAGED = "output"
#: The largest block side chosen: 16384 x 16384 RGB uint8 is 768 MiB raw, a COG a worker makes
#: in tens of seconds.
MAX_AUTO_SPLIT = 16384
#: A chosen block side cuts the output into at least this many blocks where it can: what is
#: left after the last tile is about one block's COG, so its share of the run is about 1/64 of
#: the writing, and 64 workers have a block each (a fixed 16384 made a 67 MP output one block -
#: the single COG's whole tail - and a 1 GP output four, a 268 MP COG after the last tile).
MIN_AUTO_BLOCKS = 64
#: The smallest block side chosen (1024 x 1024: 1 MP a file; smaller blocks only add files).
MIN_AUTO_SPLIT = 1024


def tiled_split(output: str | os.PathLike, split: object, creation_options: Mapping[str, str] | None) -> int | None:
    """The block size of a run writing ``output``, None for a single COG, or :data:`AUTO_SPLIT`.

    ``split`` given, or OUTPUT ending in ``/`` or ``.vrt`` (then :data:`AUTO_SPLIT`: the run
    chooses, :func:`auto_block_side`), asks for tiled output. The block size must be a positive
    multiple of the COG block size (``BLOCKSIZE``, 512 unless ``creation_options`` say
    otherwise), so no COG tile straddles two blocks' files.

    Raises
    ------
    InputError
        A block size that is not such a multiple, or ``split`` with an OUTPUT that names a
        GeoTIFF file.
    """
    text = os.fspath(output)
    if text.rstrip("/" + os.sep).lower().endswith(".zarr"):  # Zarr output (geosr.zarr_output)
        if split is not None:
            raise InputError(f"--split cuts the output into COG blocks, but OUTPUT {text} is a Zarr store, written in "
                             "chunks already: drop --split")
        if creation_options:
            raise InputError(f"--co sets GDAL COG creation options, which a Zarr OUTPUT ({text}) does not take: drop --co")
        import importlib.util

        if importlib.util.find_spec("zarr") is None:
            raise InputError(f"OUTPUT {text} is a Zarr store, which needs the zarr package (zarr>=3, Python 3.11+)")
        return None
    folder_like = text.endswith(("/", os.sep)) or text.lower().endswith(".vrt")
    if split is None:
        return AUTO_SPLIT if folder_like else None
    if text.lower().endswith((".tif", ".tiff")):
        raise InputError(f"--split writes a folder of COGs, but OUTPUT {text} names a GeoTIFF: give a folder "
                         "(out/) or a .vrt")
    block = _cog_block(creation_options)
    n = int(split) if not isinstance(split, bool) and str(split).strip().isdigit() else None
    if n is None or n <= 0 or n % block:
        raise InputError(f"--split {split}: the block side must be a positive multiple of the COG block size {block} "
                         f"(e.g. {MAX_AUTO_SPLIT})")
    return n


def _cog_block(creation_options: Mapping[str, str] | None) -> int:
    options = {k.upper(): v for k, v in (creation_options or {}).items()}
    value = options.get("BLOCKSIZE", DEFAULT_COG_OPTIONS["BLOCKSIZE"])
    try:
        return int(value)
    except ValueError:  # read before the creation options are checked: the same message
        raise InputError(f"--co BLOCKSIZE={value}: BLOCKSIZE takes an integer") from None


def auto_block_side(width: int, height: int, creation_options: Mapping[str, str] | None = None) -> int:
    """The block side of a tiled output of ``width`` x ``height`` pixels that asked for none.

    The largest of 1024, 2048, ... :data:`MAX_AUTO_SPLIT` that cuts the output into at least
    :data:`MIN_AUTO_BLOCKS` blocks, or the smallest of them when none does: for a square output
    1024 at 67 MP (8192 px, 64 blocks), 4096 at 1 GP, 8192 from 3.3 GP, 16384 from 13.2 GP.
    With a COG block size (``BLOCKSIZE``) that does not divide 1024 the ladder starts at the
    smallest multiple of it from 1024 (768 -> 1536, 3072 ...), so no COG tile straddles two
    blocks' files.
    """
    block = _cog_block(creation_options)
    side = -(-MIN_AUTO_SPLIT // block) * block
    while side * 2 <= MAX_AUTO_SPLIT and -(-width // (side * 2)) * -(-height // (side * 2)) >= MIN_AUTO_BLOCKS:
        side *= 2
    return side


def block_windows(width: int, height: int, n: int) -> list[tuple[str, Window]]:
    """``(name, window)`` of the blocks of n x n output pixels, row by row; ``block_R_C``."""
    rows, cols = -(-height // n), -(-width // n)
    digits = max(3, len(str(max(rows, cols) - 1)))
    return [(f"block_{r:0{digits}d}_{c:0{digits}d}",
             Window(c * n, r * n, min(n, width - c * n), min(n, height - r * n)))
            for r in range(rows) for c in range(cols)]


class TiledTarget:
    """The OUTPUT of tiled output, checked before any work, and the final renames.

    Parameters
    ----------
    output : path-like
        A folder (``out/``, ``out``) or a ``.vrt``.
    overwrite : bool
        Replace what is there: an existing data folder must be empty or a tiled output geosr
        wrote, holding nothing else (:func:`geosr.replaceable.check_replaceable_tiled`), with or
        without ``overwrite``.
    inputs : sequence of path-like
        The run's inputs: none may lie in what would be replaced.
    stand_in : bool
        ``output`` is geosr's own local stand-in of an S3 OUTPUT (:mod:`geosr.s3_output`): what
        is there is replaced unchecked.

    Attributes
    ----------
    output : Path
        What the run's work folder is named after (the folder, or the .vrt).
    data : Path
        The folder of the blocks, Items and Collection.
    lock_names : tuple of Path
        What the run's locks are named after: ``data``, which ``out/`` and ``out.vrt`` share (two
        runs on the two spellings held two locks and the later commit replaced the other's), and
        the captions where they are beside the .vrt.
    vrt, captions : Path
        Where the mosaic VRT and the captions end up.
    """

    def __init__(self, output: str | os.PathLike, overwrite: bool = False,
                 inputs: Sequence[str | os.PathLike] = (), stand_in: bool = False) -> None:
        self.output = Path(output).absolute()
        check_file_name(self.output)
        if self.output.suffix.lower() == ".vrt":
            self.data, self.vrt = self.output.with_suffix(""), self.output
            self.captions = self.output.with_name(self.output.stem + ".captions.geojson")
        else:
            self.data, self.vrt = self.output, self.output / "mosaic.vrt"
            self.captions = self.output / "captions.geojson"
        # beside the .vrt the captions are out.captions.geojson, which out.tif's run writes too
        self.lock_names = (self.data,) if self.captions.parent == self.data else (self.data, self.captions)
        self.overwrite, self.stand_in = overwrite, stand_in
        if not self.output.parent.exists():
            raise OutputError(f"output folder {self.output.parent} does not exist")
        if not os.access(self.output.parent, os.W_OK):
            raise OutputError(f"output folder {self.output.parent} is not writable")
        if self.data.exists() and not self.data.is_dir():
            raise OutputError(f"{self.data} is a file; tiled output needs a folder there")
        for path in (self.vrt, self.captions):
            if path.is_dir() and path.parent != self.data:
                raise OutputError(f"{path} is a folder; tiled output writes a file there: move it away")
        for path in (self.data, self.vrt, self.captions):
            if path.exists() and not overwrite and not (path == self.data and not any(path.iterdir())):
                raise OutputExistsError(f"{path} exists; pass --overwrite to replace it")
        if not stand_in and (self.data.exists() or self.data.is_symlink()):
            # an empty folder, or one geosr wrote and nothing else: never ~/ (geosr.replaceable)
            check_replaceable_tiled(self.data)
        for path in inputs:
            if self.occupies(Path(path)):
                raise OutputError(f"input {Path(path).absolute()} lies in the output {self.output}: "
                                  "write to another place")

    def occupies(self, path: Path) -> bool:
        """Whether the run writes ``path`` (:func:`geosr.local_paths.resolved`): the data folder,
        anything in it, the VRT or the captions."""
        place, data = resolved(path), resolved(self.data)
        return place in (data, resolved(self.vrt), resolved(self.captions)) or data in place.parents

    def staging(self, work: Path) -> tuple[Path, Path, Path]:
        """Where the run builds the data folder, the VRT and the captions in its work folder ``work``:
        in its :data:`STAGED` subfolder, apart from the work folder's own files (an output named
        ``blocks/``, ``replaced/`` or ``run.json/`` was staged onto them: journal records in the
        output, or a commit that failed after all the work).

        The VRT points at the blocks relative to itself, so the two keep their relative place.
        """
        data = work / STAGED / self.data.name
        inside = self.vrt.parent == self.data
        return (data, data / self.vrt.name if inside else work / STAGED / self.vrt.name,
                data / self.captions.name if inside else work / STAGED / self.captions.name)

    def commit(self, work: Path, moves: Mapping[Path, Path]) -> None:
        """Rename the staged data folder, then ``moves`` (sidecars), then the captions and VRT
        beside a .vrt OUTPUT into place (the VRT last).

        A folder being replaced (``overwrite``) goes into ``work`` first and is deleted after:
        a rename cannot replace a folder that is not empty.
        """
        data, vrt, captions = self.staging(work)
        if self.data.exists() and not self.stand_in:  # what came there since the run's start
            check_replaceable_tiled(self.data)
        if self.data.exists():
            old = work / "replaced"
            os.rename(self.data, old)
            os.rename(data, self.data)
            shutil.rmtree(old)
        else:
            os.rename(data, self.data)
        # the blocks were synced as they were written; the sidecars, VRT and renames now
        beside = [(captions, self.captions), (vrt, self.vrt)] if self.vrt.parent != self.data else []
        replace_durably(list(moves.items()) + beside, folders=[self.data.parent])


@dataclass(frozen=True)
class BlockJob:
    """One block's COG, for a dask task: its VRT over the work raster, where the COG goes, how."""

    name: str
    vrt: str
    dst: str
    width: int
    height: int
    count: int
    dtype: str
    write_mask: bool
    creation_options: dict


@shippable_errors
def write_block(job: BlockJob) -> tuple[str, int, int]:
    """Translate a block to its COG and make it durable (a dask task).

    Returns
    -------
    tuple
        ``(name, size, CRC-32)`` of the file, for the journal.
    """
    dst = Path(job.dst)
    translate_to_cog(Path(job.vrt), dst, job.width, job.height, job.count, job.dtype, job.write_mask,
                     job.creation_options, Path(job.vrt).with_suffix(".tiled.tif"))
    try:
        size, crc = _file_crc(dst)
        fd = os.open(dst, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise write_error(dst, exc) from exc
    # Deleted here, not with the work folder: 256 of them at 1 GP were 1 s of its removal (a
    # resumed run writes the VRT of a block it redoes again; one left here goes with the folder).
    with contextlib.suppress(OSError):
        Path(job.vrt).unlink()
    return job.name, size, crc


def _file_crc(path: Path) -> tuple[int, int]:
    """Size and CRC-32 of a file."""
    crc = size = 0
    with open(path, "rb") as f:
        while chunk := f.read(16 << 20):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return size, crc


class BlockWriter(BlockTaskWriter):
    """Submits each block's COG once all its cells are durable; journals the finished blocks.

    The waiting, submitting and journalling are :class:`geosr.block_tasks.BlockTaskWriter`'s;
    a block here is a COG, its task :func:`write_block`.

    Parameters
    ----------
    client : distributed.Client
    raster : WorkRaster
        The run's work raster (read by the tasks through per-block VRTs).
    journal : RunJournal
        Followed through its commits; finished blocks are recorded in it.
    split : int
    data : Path
        The staged data folder, where the block COGs are written.
    cells : sequence of Window
        HR windows of the output cells not finished yet; areas outside every cell (no tile
        core) must be written before.
    creation_options : mapping
    """

    finished_files = "block COGs"
    block_name = "blocks"

    def __init__(self, client, raster: WorkRaster, journal: RunJournal, split: int, data: Path,
                 cells: Sequence[Window], creation_options: Mapping[str, str]) -> None:
        self.data = data
        self.blocks = block_windows(raster.width, raster.height, split)
        self.creation_options = dict(creation_options)
        self._split = split
        self._columns = -(-raster.width // split)
        (journal.folder / "blocks").mkdir(exist_ok=True)
        data.mkdir(parents=True, exist_ok=True)
        super().__init__(client, raster, journal, split, cells)

    @property
    def folder(self) -> Path:
        return self.data

    def wait(self) -> None:
        """Wait for every block, then make the rest of the data folder durable: the VRT, STAC
        Items and Collection and captions written before the blocks (each block's task synced
        its COG). The run deletes its work folder once committed: nothing left to make them again."""
        super().wait()
        blocks = {f"{name}.tif" for name, _ in self.blocks}
        try:
            sync_tree(self.data, lambda path: path.parent == self.data and path.name in blocks)
        except OSError as exc:
            raise write_error(self.data, exc) from exc

    def _blocks_to_write(self) -> list[tuple[int, int]]:
        return [divmod(i, self._columns) for i, (name, _) in enumerate(self.blocks) if name not in self.journal.blocks]

    def _journalled_bytes(self, name: str) -> tuple[int, int]:
        return _file_crc(self.data / f"{name}.tif")

    def _submit(self, key: tuple[int, int]):
        name, window = self.blocks[key[0] * self._columns + key[1]]
        vrt = self.raster.write_vrt(self.journal.folder / "blocks" / f"{name}.vrt", window)
        job = BlockJob(name, str(vrt), str(self.data / f"{name}.tif"), int(window.width), int(window.height),
                       self.raster.count, self.raster.dtype.name, self.raster.write_mask, self.creation_options)
        return self.client.submit(write_block, job, pure=False, priority=self.TASK_PRIORITY)

    def _collect(self, result: tuple[str, int, int]) -> list[tuple[str, int, int]]:
        return [result]

    def write_index(self, vrt: Path, created: dt.datetime) -> None:
        """Write the VRT over the blocks and the STAC Collection and Items (staged; they need no
        block's pixels, so a run writes them before its tiles).

        Raises
        ------
        WriteError
            A file could not be written (named; a full disk says so).
        """
        rel = os.path.relpath(self.data, vrt.parent)
        try:
            self._write_vrt(vrt, rel)
        except OSError as exc:
            raise write_error(vrt, exc) from exc
        collection = self.data.name
        items = []
        for name, window in self.blocks:
            item = stac_item(name, f"./{name}.tif", window, self.raster.profile, self.raster.band_meta,
                             self.raster.tags, collection, created)
            _write_json(self.data / f"{name}.json", item)
            items.append((f"./{name}.json", item))
        _write_json(self.data / "collection.json", stac_collection(
            collection, items, f"geosr super-resolution output in {len(items)} COG blocks of "
            f"{self._split} x {self._split} pixels"))

    def _write_vrt(self, vrt: Path, rel: str) -> None:
        """A VRT of the whole output grid with each block's COG as a source, and the output's metadata."""
        gdal_type = typename_fwd[dtype_rev[self.raster.dtype.name]]
        r = self.raster

        def sources(band: str) -> list[str]:
            out = []
            for name, w in self.blocks:
                path = escape(f"{rel}/{name}.tif" if rel != "." else f"{name}.tif")
                out.append(
                    f'    <SimpleSource><SourceFilename relativeToVRT="1">{path}</SourceFilename>'
                    f"<SourceBand>{band}</SourceBand>"
                    f'<SrcRect xOff="0" yOff="0" xSize="{w.width}" ySize="{w.height}"/>'
                    f'<DstRect xOff="{w.col_off}" yOff="{w.row_off}" xSize="{w.width}" ySize="{w.height}"/>'
                    "</SimpleSource>")
            return out

        lines = [f'<VRTDataset rasterXSize="{r.width}" rasterYSize="{r.height}">']
        for b in range(1, r.count + 1):
            lines += [f'  <VRTRasterBand dataType="{gdal_type}" band="{b}">', *sources(str(b)), "  </VRTRasterBand>"]
        if r.write_mask:
            lines += ['  <MaskBand><VRTRasterBand dataType="Byte">', *sources("mask,1"), "  </VRTRasterBand></MaskBand>"]
        lines.append("</VRTDataset>")
        vrt.write_text("\n".join(lines) + "\n")
        with rasterio.Env(**WRITER_GDAL_ENV), rasterio.open(vrt, "r+") as ds:
            r.set_metadata(ds)


def _write_json(path: Path, value: dict) -> None:
    try:
        path.write_text(json.dumps(value, indent=1))
    except OSError as exc:
        raise write_error(path, exc) from exc
