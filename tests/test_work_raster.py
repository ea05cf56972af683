"""The work raster: cells land at their offsets, side-by-side cells are written as one run."""

from __future__ import annotations

import numpy as np
from rasterio.windows import Window

from geosr.writer import MAX_SWATH_BYTES, WorkRaster, swath_bytes


def raster(tmp_path, write_mask: bool) -> WorkRaster:
    profile = dict(width=40, height=24, count=3, dtype="uint16")
    return WorkRaster(tmp_path, profile, write_mask)


def cells(rng):
    """Cells in no particular order: three side by side on rows 0-7 (one run), one of other
    rows beside them, one on the same rows after a gap, and one far below."""
    windows = [Window(10, 0, 6, 8), Window(0, 0, 10, 8), Window(16, 0, 4, 8), Window(20, 0, 5, 5),
               Window(30, 0, 4, 8), Window(3, 12, 9, 12)]
    out = []
    for w in windows:
        data = rng.uniform(0, 60000, (3, w.height, w.width)).astype(np.float32)
        valid = rng.random((w.height, w.width)) > 0.3
        out.append((w, data, valid))
    return out


def test_cells_land_at_their_offsets_and_runs_are_merged(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    work = raster(tmp_path, write_mask=True)
    calls, real = [], WorkRaster._write_rows

    def counted(self, name, *args):
        calls.append(name)
        return real(self, name, *args)

    monkeypatch.setattr(WorkRaster, "_write_rows", counted)
    given = cells(rng)
    work.write_cells(given)
    work.sync()
    work.close()

    pixels = np.fromfile(tmp_path / WorkRaster.PIXELS, np.uint16).reshape(24, 40, 3)
    mask = np.fromfile(tmp_path / WorkRaster.MASK, np.uint8).reshape(24, 40)
    expected = np.zeros((24, 40, 3), np.uint16)
    expected_mask = np.zeros((24, 40), np.uint8)
    for w, data, valid in given:
        rows, cols = slice(w.row_off, w.row_off + w.height), slice(w.col_off, w.col_off + w.width)
        expected[rows, cols] = np.moveaxis(data.astype(np.uint16), 0, -1)
        expected_mask[rows, cols] = np.where(valid, 255, 0)
    np.testing.assert_array_equal(pixels, expected)
    np.testing.assert_array_equal(mask, expected_mask)
    # four runs (the three side by side, then one each), pixels and mask each
    assert calls.count(WorkRaster.PIXELS) == 4 and calls.count(WorkRaster.MASK) == 4


def test_cells_written_together_or_one_by_one_give_the_same_bytes(tmp_path):
    rng = np.random.default_rng(1)
    given = cells(rng)
    for name, batches in (("together", [given]), ("apart", [[c] for c in given])):
        folder = tmp_path / name
        folder.mkdir()
        work = raster(folder, write_mask=False)
        for batch in batches:
            work.write_cells(batch)
        work.close()
    together, apart = ((tmp_path / name / WorkRaster.PIXELS).read_bytes() for name in ("together", "apart"))
    assert together == apart
    assert not (tmp_path / "together" / WorkRaster.MASK).exists()


def test_the_cog_copy_swath_is_a_row_of_blocks_up_to_a_cap():
    assert swath_bytes(512, 8192, 3) == 512 * 8192 * 3  # an RGB 8192 px output: one row of blocks
    assert swath_bytes(512, 1000, 3) == 10 << 20  # never below GDAL's default
    assert swath_bytes(512, 20000, 200 * 4) == MAX_SWATH_BYTES  # 200 float32 bands: 8 GB, capped
