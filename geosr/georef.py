"""Carry georeferencing from an input grid to the grid refined by an integer scale.

The output grid is the input grid with every pixel split into ``scale x scale``:
``transform @ Affine.scale(1 / scale)`` (rotation and shear included), same CRS, same
bounds. GCP-referenced rasters get their GCP pixel positions scaled; RPC-referenced ones
their image-space offsets and scales.
"""

from __future__ import annotations

from affine import Affine
from rasterio.control import GroundControlPoint
from rasterio.rpc import RPC

__all__ = ["scale_transform", "scale_gcps", "scale_rpcs", "window_rpcs"]


def scale_transform(transform: Affine, scale: int) -> Affine:
    """Pixel-corner transform of the grid refined ``scale`` times."""
    return transform @ Affine.scale(1.0 / scale)


def scale_gcps(gcps: list[GroundControlPoint] | tuple, scale: int) -> list[GroundControlPoint]:
    """GCPs of the refined grid: same ground position, pixel/line times ``scale``.

    GCP pixel/line are continuous pixel-corner coordinates (GDAL), so they scale exactly.
    """
    return [
        GroundControlPoint(row=g.row * scale, col=g.col * scale, x=g.x, y=g.y, z=g.z, id=g.id, info=g.info)
        for g in gcps
    ]


def scale_rpcs(rpcs: RPC, scale: int) -> RPC:
    """RPCs of the refined grid.

    RPC image coordinates put integer values at pixel *centres* (GDAL's RPC transformer
    adds the half pixel). A centre-based coordinate ``l`` on the input grid is
    ``scale * l + (scale - 1) / 2`` on the refined grid, hence the new offsets and scales.
    """
    half = (scale - 1) / 2.0
    return _replace_rpc(
        rpcs,
        line_off=rpcs.line_off * scale + half,
        samp_off=rpcs.samp_off * scale + half,
        line_scale=rpcs.line_scale * scale,
        samp_scale=rpcs.samp_scale * scale,
    )


def window_rpcs(rpcs: RPC, row_off: int, col_off: int) -> RPC:
    """RPCs of a window of the grid starting at ``row_off``, ``col_off``: its pixel ``(0, 0)``
    is the grid's ``(row_off, col_off)``, so the image offsets move back by as much."""
    return _replace_rpc(rpcs, line_off=rpcs.line_off - row_off, samp_off=rpcs.samp_off - col_off)


def _replace_rpc(rpcs: RPC, **changes: float) -> RPC:
    """A copy of ``rpcs`` with some fields changed (RPC is a plain class, not a dataclass)."""
    fields = rpcs.to_dict()
    fields.update(changes)
    return RPC(**fields)

