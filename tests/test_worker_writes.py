"""Cells blended on workers from the parts of neighbouring tiles: the pixels of whole tiles,
a fraction of the bytes."""

from __future__ import annotations

import numpy as np
import pytest

from geosr.blending import BlendAccumulator
from geosr.cell_render import CellRenderer
from geosr.tasks import TileResult
from geosr.radiometry import Stretch
from geosr.tiling import TileGrid
from geosr.worker_writes import part_boxes, tile_parts


@pytest.mark.parametrize("scale", [2, 4])
def test_cells_from_neighbour_parts_match_cells_from_whole_tiles(scale):
    width, height, overlap = 100, 70, 6
    tiles = TileGrid(width=width, height=height, tile=32, overlap=overlap).tiles()
    rng = np.random.default_rng(scale)
    results = {t.index: TileResult(t.index, rng.random((3, t.shape[0] * scale, t.shape[1] * scale), np.float32),
                                   f"tile {t.index}") for t in tiles}
    acc = BlendAccumulator(tiles, width, height, overlap, scale, 3, lambda w, d: None)
    renderer = CellRenderer(source="unused", stretch=Stretch((0.0,) * 3, (1.0,) * 3, "uint16"), masked=False,
                            nodata=None, scale=scale, overlap=overlap, blend="cosine")
    # one tile per batch; a cell belongs to its last covering tile, as on the workers
    owned: dict[int, list] = {}
    for window, indices in acc.open_cells():
        owned.setdefault(max(indices), []).append((window, tuple(tiles[i] for i in indices)))
    moved = whole = 0
    for owner, cells in owned.items():
        neighbours = {t.index for _, ts in cells for t in ts} - {owner}
        parts = {}
        for a in neighbours:
            (part,) = tile_parts([results[a]], part_boxes(cells, {a}, scale))
            assert part.caption == results[a].caption
            parts[a] = part.result()
            moved += part.data.nbytes
            whole += results[a].hr.nbytes
        for window, covering in cells:
            from_whole = renderer.render(window, covering, [results[t.index].hr for t in covering])[0]
            hrs = [parts.get(t.index, results[t.index]).hr for t in covering]
            from_parts = renderer.render(window, covering, hrs)[0]
            np.testing.assert_array_equal(from_parts, from_whole)
    # the overlap strips travel, not the tiles (a halo of 6 px on 44 px tiles here: about 1/5)
    assert 0 < moved < 0.3 * whole


def test_dask_sees_the_size_of_tile_results_and_parts():
    # dask sizes results with sys.getsizeof: it keeps work where the bytes are, and counts them
    from dask.sizeof import sizeof

    hr = np.zeros((3, 64, 64), np.float32)
    (part,) = tile_parts([TileResult(0, hr, "caption")], {0: (0, 64, 0, 16)})
    assert sizeof([TileResult(0, hr, "caption")]) >= hr.nbytes
    assert hr.nbytes / 4 <= sizeof([part]) < hr.nbytes / 2
