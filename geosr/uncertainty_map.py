"""The ``--uncertainty`` map: the predicted error of the output, one float32 COG on its grid.

Each pixel is the root-mean-square error the model's uncertainty head predicts for the output
at that pixel, in the output's raster values (DN), over the bands that went through the model:
``sqrt(mean_b (sigma_b * (high_b - low_b))**2)``, where ``sigma_b`` is the head's prediction in
model units and ``high_b - low_b`` the scene stretch's span of band ``b``
(:func:`geosr.tasks.error_variance`). The tiles carry the squared error as one more band, the
blender blends it with the output's weights (a variance blended like the pixels), and the
writer takes its square root (:func:`geosr.cell_render.error_pixels`).

- nodata is NaN, wherever the output is nodata or masked (no NaN can pass for a small error);
- bands that went through bicubic (``--bands-to-model``) have no prediction and are left out
  of the mean (``GEOSR_UNCERTAINTY_BANDS`` names the bands in it);
- a run with the map puts every tile on the model (no routing: the cheap path predicts nothing);
- the map is written cell by cell beside the output in the run's work folder
  (:class:`UncertaintyRaster`), each journalled cell's checksum covers both
  (:func:`joint_crc`), and it is converted to a COG and moved into place with the output;
- one local COG beside one COG: tiled output (``--split``) and Zarr output are refused, and so
  are ``--route-map`` (a run with the map does not route) and a map in object storage (an
  output in S3 gets its map on the local disk).
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from rasterio.windows import Window

from geosr.config import RunConfig
from geosr.errors import InputError
from geosr.remote import is_remote
from geosr.scene_plan import BandPlan
from geosr.writer import WorkRaster, check_companion_file, translate_to_cog

__all__ = ["NODATA", "UncertaintyRaster", "check_uncertainty_target", "joint_crc", "uncertainty_tags"]

#: The map's nodata.
NODATA = float("nan")


class UncertaintyRaster(WorkRaster):
    """The raw work raster of the map, beside the output's in the run's work folder.

    Build it with :meth:`for_output`: one float32 band on the output's grid, nodata NaN.
    """

    PIXELS = "uncertainty.raw"

    @classmethod
    def for_output(cls, output: WorkRaster, tags: Mapping[str, str], description: str) -> "UncertaintyRaster":
        """The map of ``output``'s grid (size, CRS, transform, GCPs, RPCs), with ``tags`` and a band ``description``."""
        profile = {k: v for k, v in output.profile.items() if k in ("width", "height", "crs", "transform")}
        profile.update(count=1, dtype="float32", nodata=NODATA)
        return cls(folder=output.folder, profile=profile, write_mask=False,
                   band_meta=dict(descriptions=[description], units=["DN"]), tags=dict(tags),
                   gcps=output.gcps, rpcs=output.rpcs)

    def write_holes(self, window: Window) -> None:
        """Write nodata over ``window`` (the output's holes: cells outside every processed tile)."""
        self.write(window, np.full((1, int(window.height), int(window.width)), NODATA, np.float32))

    def to_cog(self, dst: Path, creation_options: Mapping[str, str] | None = None) -> None:
        """The map's COG at ``dst``, with the default COG options (``creation_options`` are the
        output's, and a lossy or integer codec would not take float32 errors)."""
        self.close()
        translate_to_cog(self.write_vrt(self.folder / "uncertainty.vrt"), dst, self.width, self.height, 1,
                         self.dtype, False, None, self.folder / "uncertainty_tiled.tif")


def joint_crc(output_crc: int, error_crc: int) -> int:
    """One checksum for a cell of the output and the same cell of the map: the journal's
    :class:`~geosr.journal.CellRecord` vouches for both, so a resumed run recomputes a cell
    whose map was damaged as it does one whose pixels were."""
    return zlib.crc32(error_crc.to_bytes(4, "little"), output_crc)


def uncertainty_tags(output_tags: Mapping[str, str], output_name: str | None, plan: BandPlan) -> dict[str, str]:
    """Tags of the map of the output ``output_name`` (None: a lazy result, not a file): what it
    is, its units, the bands it averages, and the run's ``GEOSR_*`` provenance (of ``output_tags``)."""
    of = output_name or "the output"
    bands = ",".join(map(str, plan.input_bands([p for g in plan.groups for p in g.positions])))
    tags = {k: v for k, v in output_tags.items() if k.startswith("GEOSR_") and k != "GEOSR_UNCERTAINTY"}
    if output_name is not None:
        tags["GEOSR_UNCERTAINTY_OF"] = output_name
    tags.update(
        GEOSR_QUANTITY=f"predicted root-mean-square error of {of}, per pixel, over bands {bands}: "
                       "sqrt(mean over bands of the predicted squared error)",
        GEOSR_UNITS=f"DN (raster values of {of})",
        GEOSR_UNCERTAINTY_BANDS=bands,
        GEOSR_UNCERTAINTY_NODATA="NaN, where the output is nodata or masked",
    )
    return tags


def check_uncertainty_target(path: str | os.PathLike, config: RunConfig, target, inputs: Sequence[str],
                             zarr: bool, route_map: str | os.PathLike | None) -> Path:
    """Refuse, before any work, a map that this run cannot write; its absolute path.
    ``target``: the run's output target, ``inputs``: every file the run reads.

    Raises
    ------
    InputError
        The output is tiled (``config.split``) or a Zarr store (``zarr``), the map's path is an
        object-storage URL, or a route map is asked for too.
    OutputExistsError
        The file exists and ``config.overwrite`` is False.
    OutputError
        It is the output itself or a file the output writes, an input, a directory, or its
        folder does not exist.
    """
    if config.split is not None or zarr:
        kind = "tiled output (--split)" if config.split is not None else "Zarr output"
        raise InputError(f"--uncertainty writes one COG beside a single-COG output; {kind} is not supported "
                         "with it: write a single COG")
    if is_remote(path):
        raise InputError(f"--uncertainty {os.fspath(path)}: the map is written to a local file (even beside an "
                         "output in S3); write it locally and upload it")
    if route_map is not None:
        raise InputError("--route-map shows how tiles were routed, and --uncertainty puts every tile on the model "
                         "(the cheap path predicts no error): drop --route-map")
    return check_companion_file(path, target, config.overwrite, "uncertainty map", "error.tif", inputs)
