import numpy as np
import pytest
from rasterio.windows import Window

from geosr.scene import expand_inputs
from geosr.scene_plan import plan_scene
from geosr.tasks import batch_jobs
from geosr.tiling import (
    TileGrid,
    axis_starts,
    block_major,
    coarsen_window,
    core_size,
    scale_window,
    window_transform,
)
from tests.conftest import bicubic_cfg


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


@pytest.mark.parametrize("width,height,tile,overlap,step", [
    (75, 69, 32, 16, 2), (97, 83, 24, 12, 2), (131, 97, 40, 7, 2), (101, 77, 33, 5, 4), (37, 29, 4096, 16, 2),
    (257, 255, 256, 16, 2), (1001, 517, 256, 16, 2), (1000, 999, 300, 9, 8),
])
def test_a_grid_step_starts_every_core_and_tile_window_on_it(width, height, tile, overlap, step):
    # A network on a grid of `step` LR px (geosr-tiny-fast-x2: 2) sees a tile on the phase of
    # an untiled run only where the tile's window starts on a multiple of the step.
    grid = TileGrid(width, height, tile, overlap, step)
    tiles = grid.tiles()
    assert grid.overlap % step == 0 and overlap <= grid.overlap < overlap + step
    ch, cw = grid.core_shape
    assert ch % step == 0 and cw % step == 0 and ch <= max(step, tile) and cw <= max(step, tile)
    assert len({t.shape for t in tiles}) == 1  # one shape: batches
    covered = np.zeros((height, width), int)
    for t in tiles:
        assert t.core.col_off % step == 0 and t.core.row_off % step == 0
        top, _, left, _ = t.pad
        assert (t.read.col_off - left) % step == 0 and (t.read.row_off - top) % step == 0  # the model's input
        assert t.read.col_off - left == t.core.col_off - grid.overlap
        assert t.core.col_off + t.core.width <= width and t.core.row_off + t.core.height <= height
        covered[t.core.row_off : t.core.row_off + t.core.height, t.core.col_off : t.core.col_off + t.core.width] += 1
    assert covered.min() >= 1  # nothing dropped
    for axis, size, core in ((grid.cols, width, cw), (grid.rows, height, ch)):
        assert axis == sorted(set(axis)) and axis[-1] + core >= size > axis[-1]


@pytest.mark.parametrize("width,height,tile,overlap", [(131, 97, 40, 7), (1001, 517, 256, 16), (50, 30, 512, 16)])
def test_a_grid_step_of_1_is_the_plan_as_it_was(width, height, tile, overlap):
    grid = TileGrid(width, height, tile, overlap, step=1)
    assert grid == TileGrid(width, height, tile, overlap) and grid.overlap == overlap
    assert grid.cols == axis_starts(width, tile) and grid.rows == axis_starts(height, tile)
    assert grid.core_shape == (core_size(height, tile), core_size(width, tile))


def test_a_core_a_grid_step_takes_past_the_edge_is_cut_there_and_the_tile_keeps_its_shape():
    # 75 px in cores of at most 32: 3 of 25 (odd starts 25, 50); on a 2 px grid 3 of 26 at
    # 0, 26 and 50, the last reaching 76: its core ends at the edge, reflection fills the rest
    grid = TileGrid(width=75, height=64, tile=32, overlap=15, step=2)
    assert grid.cols == [0, 26, 50] and grid.overlap == 16
    last = grid.tiles()[2]
    assert last.core == Window(50, 0, 25, 32)
    assert last.read == Window(34, 0, 41, 48)
    assert last.pad == (16, 0, 0, 17)
    assert last.shape == (32 + 32, 26 + 32)


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


def test_a_block_written_output_ends_on_single_tile_jobs(ragged_scene, tmp_path):
    # the blocks the last two results finish are the serial tail: one tile finishes few of them
    config = bicubic_cfg(batch_size=4)
    plan = plan_scene(expand_inputs([str(ragged_scene)]), config, 3, tmp_path, 1)
    tiles = list(plan.tiles)
    assert len(tiles) > 8
    for single_last in (0, 4, 100):
        jobs = batch_jobs(plan, tiles, config, single_last=single_last)
        assert [t.index for j in jobs for t in j.tiles] == [t.index for t in tiles]  # the same tiles, in order
        sizes = [len(j.tiles) for j in jobs]
        singles = min(single_last, len(tiles))
        head = len(tiles) - singles  # tiles in batches of 4, the last one maybe shorter
        assert sizes == [4] * (head // 4) + ([head % 4] if head % 4 else []) + [1] * singles, (single_last, sizes)
    assert batch_jobs(plan, [], config, single_last=4) == []
    assert [len(j.tiles) for j in batch_jobs(plan, tiles[:3], config, single_last=4)] == [1, 1, 1]
