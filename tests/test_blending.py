import numpy as np
import pytest

from geosr.blending import BlendAccumulator, axis_weights
from geosr.tiling import TileGrid


def test_axis_weights_shape_and_range():
    w = axis_weights(8, 20, 8)
    assert w.shape == (36,)
    assert np.all(w[8:28] == 1)
    assert np.all((w[:8] > 0) & (w[:8] < 1))
    assert np.all(np.diff(w[:8]) > 0) and np.all(np.diff(w[28:]) < 0)
    none = axis_weights(8, 20, 8, "none")
    assert none.sum() == 20
    with pytest.raises(ValueError):
        axis_weights(1, 1, 1, "gaussian")


@pytest.mark.parametrize("mode", ["cosine", "none"])
def test_constant_tiles_blend_to_constant_and_every_cell_once(mode):
    # Partition of unity: identical tiles must blend to themselves everywhere.
    grid = TileGrid(width=70, height=45, tile=16, overlap=5)
    scale = 2
    tiles = grid.tiles()
    out = np.zeros((1, 45 * scale, 70 * scale), np.float32)
    hits = np.zeros(out.shape[1:], int)

    def emit(win, data):
        sl = (slice(win.row_off, win.row_off + win.height), slice(win.col_off, win.col_off + win.width))
        out[(0,) + sl] = data[0]
        hits[sl] += 1

    acc = BlendAccumulator(tiles, 70, 45, 5, scale, 1, emit, mode)
    for t in tiles:
        h, w = t.shape
        acc.add(t, np.full((1, h * scale, w * scale), 7.0, np.float32))
    assert acc.done
    assert np.all(hits == 1)
    np.testing.assert_allclose(out, 7.0, rtol=1e-6)
    assert list(acc.uncovered()) == []


def test_pending_memory_is_one_overlap_band_not_the_scene():
    grid = TileGrid(width=400, height=400, tile=32, overlap=4)
    tiles = grid.tiles()
    acc = BlendAccumulator(tiles, 400, 400, 4, 2, 3, lambda w, d: None)
    peak = 0
    for t in tiles:
        h, w = t.shape
        acc.add(t, np.zeros((3, h * 2, w * 2), np.float32))
        peak = max(peak, acc.pending_bytes)
    full = 400 * 2 * 400 * 2 * 4 * 4
    band = 2 * (2 * 4 * 2 + 32 * 2) * 400 * 2 * 4 * 4  # < two tile-rows' overlap strips
    assert peak < band < full / 4


def test_skipped_tiles_leave_uncovered_cells():
    grid = TileGrid(width=64, height=32, tile=32, overlap=4)
    tiles = grid.tiles()
    acc = BlendAccumulator(tiles[:1], 64, 32, 4, 2, 1, lambda w, d: None)
    h, w = tiles[0].shape
    acc.add(tiles[0], np.zeros((1, h * 2, w * 2), np.float32))
    assert acc.done
    area = sum(int(w.width * w.height) for w in acc.uncovered())
    assert area == (64 - 32) * 32 * 4
