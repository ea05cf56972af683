import pytest
from rasterio.windows import Window

from geosr.tiling import (
    TileGrid,
    axis_starts,
    block_major,
    coarsen_window,
    core_size,
    scale_window,
    window_transform,
)


@pytest.mark.parametrize("size,tile", [(1, 8), (97, 32), (100, 25), (257, 256), (256, 256), (1000, 300)])
def test_cores_cover_axis_and_stay_inside(size, tile):
    starts = axis_starts(size, tile)
    covered = set()
    core = core_size(size, tile)
    assert core <= tile
    for s in starts:
        assert 0 <= s and s + core <= size  # shifted inside, never past the edge
        covered.update(range(s, s + core))
    assert covered == set(range(size))  # nothing dropped
    assert starts == sorted(starts)


def test_cores_are_balanced_and_the_last_is_shifted_back_not_padded():
    assert axis_starts(100, 32) == [0, 25, 50, 75]
    assert axis_starts(276, 256) == [0, 138]
    assert axis_starts(101, 32) == [0, 26, 52, 75]  # last shifted back by 3 px, inside


def test_tiles_have_one_shape_and_pads_reach_full_extent():
    grid = TileGrid(width=131, height=97, tile=40, overlap=7)
    tiles = grid.tiles()
    assert len(tiles) == len(grid) == 4 * 3
    shapes = {t.shape for t in tiles}
    assert shapes == {(33 + 14, 33 + 14)}  # 131 px -> 4 cores of 33, 97 px -> 3 of 33
    for t in tiles:
        top, bottom, left, right = t.pad
        assert t.read.row_off - top == t.core.row_off - 7
        assert t.read.col_off + t.read.width + right == t.core.col_off + t.core.width + 7
        assert 0 <= t.read.col_off and t.read.col_off + t.read.width <= 131


def test_tile_larger_than_scene_is_one_tile():
    grid = TileGrid(width=50, height=30, tile=512, overlap=16)
    (t,) = grid.tiles()
    assert t.core == Window(0, 0, 50, 30)
    assert t.pad == (16, 16, 16, 16)


def test_scale_window_is_integer():
    assert scale_window(Window(3, 5, 7, 11), 4) == Window(12, 20, 28, 44)


def test_bad_plan_is_rejected():
    with pytest.raises(ValueError):
        TileGrid(10, 10, tile=4, overlap=0)


def test_windows_refine_and_coarsen_in_integers():
    w = Window(3, 5, 7, 11)
    assert scale_window(w, 4) == Window(12, 20, 28, 44)
    assert coarsen_window(scale_window(w, 4), 4) == w
    with pytest.raises(ValueError, match="does not lie on the input grid"):
        coarsen_window(Window(2, 0, 4, 4), 4)


def test_window_transform_is_rasterios_without_its_warning():
    import warnings

    import rasterio.windows
    from affine import Affine

    t = Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 4100000.0)
    w = Window(12, 20, 28, 44)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mine = window_transform(w, t)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert mine.almost_equals(rasterio.windows.transform(w, t))


def test_block_major_finishes_one_block_of_tiles_after_another():
    tiles = TileGrid(width=100, height=60, tile=10, overlap=2).tiles()  # cores at 0, 10, 20...
    ordered = block_major(tiles, 40)
    assert sorted(t.index for t in ordered) == [t.index for t in tiles]
    blocks = [(int(t.core.row_off) // 40, int(t.core.col_off) // 40) for t in ordered]
    assert blocks == sorted(blocks)  # each block's tiles together, blocks row-major
    first = [(t.row, t.col) for t in ordered if (int(t.core.row_off) // 40, int(t.core.col_off) // 40) == (0, 0)]
    # the first row and column (what the neighbours' edge cells wait for), then the rest row-major
    edge = [(r, c) for r in range(4) for c in range(4) if r == 0 or c == 0]
    assert first == edge + [(r, c) for r in range(1, 4) for c in range(1, 4)]
