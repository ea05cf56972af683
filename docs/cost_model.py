"""A cost model of a geosr run on N workers: single COG vs tiled output / Zarr.

    T(N) = start + max(work / N, tasks x scheduler) + tail(N) + exit

``work`` is the per-tile model and engine time of all output megapixels (plus, for tiled and
Zarr outputs, their blocks' or chunks' encoding, which the workers do beside the tiles);
``tasks x scheduler`` is the scheduler's serial cost per task; ``tail`` is what runs after
the last tile: the whole COG pass on one machine for a single COG; for tiled and Zarr the
work the last tiles make possible (the tiles run block by block and each block or chunk is
written as soon as its last cell is committed, so this is one block, or the last chunks and
their overview levels), measured (``--tiled-tail-s``, ``--zarr-tail-s``; docs/benchmarks.md,
"fourth pass"), whatever the cluster. Bytes moved between workers are priced
at ``--bandwidth`` and added to the work. The constants are those measured in
docs/benchmarks.md ("A cost model"); pass others to see another machine or model.

    .venv/bin/python docs/cost_model.py [--megapixels 1074] [--width 32768] [--model-s-per-mp 0.09] [--workers 1,2,8,64,512]
"""

from __future__ import annotations

import argparse

from geosr.tiled_output import auto_block_side


def run_seconds(n: int, mode: str, a: argparse.Namespace) -> float:
    """Predicted wall time of one run on ``n`` workers, ``mode`` cog, tiled or zarr."""
    moved = a.moved_mib_per_mp / a.bandwidth_mib_s if n > 1 else 0.0
    work = a.megapixels * (a.model_s_per_mp + a.engine_s_per_mp + moved)
    encode = {"cog": a.cog_s_per_mp, "tiled": a.tiled_s_per_mp, "zarr": a.zarr_s_per_mp}[mode]
    if mode == "cog":
        tail = a.megapixels * encode  # one process, after the last tile
    else:
        work += a.megapixels * encode  # blocks / chunks encoded by the workers during the run
        # tiled: about one block's COG after the last tile, the block side geosr chooses for the
        # output's size (geosr.tiled_output.auto_block_side) unless --split says
        side = a.split or auto_block_side(a.width, round(a.megapixels * 1e6 / a.width))
        tail = a.tiled_tail_s + side * side / 1e6 * a.block_tail_s_per_mp if mode == "tiled" else a.zarr_tail_s
    tasks = a.megapixels / a.tile_mp * a.tasks_per_tile
    return a.start_s + max(work / n, tasks * a.scheduler_s) + tail + a.exit_s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--megapixels", type=float, default=1074.0, help="output MP (16384^2 px at x2)")
    p.add_argument("--width", type=int, default=32768, help="output width, px")
    p.add_argument("--model-s-per-mp", type=float, default=0.09,
                   help="read + model per output MP on one worker core (bicubic 0.09; geosr-tiny-x4 bf16 ~0.4)")
    p.add_argument("--engine-s-per-mp", type=float, default=0.03, help="blend + write cells per output MP")
    p.add_argument("--cog-s-per-mp", type=float, default=0.037, help="COG pass (overviews, stats, DEFLATE) per MP")
    p.add_argument("--tiled-s-per-mp", type=float, default=0.089, help="block COGs per MP, on the workers")
    p.add_argument("--zarr-s-per-mp", type=float, default=0.041, help="Zarr chunks + overview levels per MP")
    p.add_argument("--tile-mp", type=float, default=0.262, help="output MP per tile (256 px LR at x2)")
    p.add_argument("--tasks-per-tile", type=float, default=1.0, help="batch, strip and cell tasks per tile")
    p.add_argument("--scheduler-s", type=float, default=0.0021, help="scheduler time per task")
    p.add_argument("--moved-mib-per-mp", type=float, default=4.3, help="bytes between workers per output MP")
    p.add_argument("--bandwidth-mib-s", type=float, default=1100.0, help="network, MiB/s (10 Gb/s)")
    p.add_argument("--split", type=int, default=0, help="tiled output's block side (0: geosr's choice)")
    p.add_argument("--tiled-tail-s", type=float, default=0.078,
                   help="after the last tile, tiled: commits and submission, besides the last block's COG")
    p.add_argument("--block-tail-s-per-mp", type=float, default=0.069,
                   help="after the last tile, tiled: the last block's COG per MP of block")
    p.add_argument("--zarr-tail-s", type=float, default=0.42,
                   help="after the last tile, Zarr: the last chunks and their overview levels (1 GP)")
    p.add_argument("--start-s", type=float, default=1.8, help="imports + cluster (a network model: + its load)")
    p.add_argument("--exit-s", type=float, default=0.05, help="the process's exit (os._exit)")
    p.add_argument("--workers", default="1,2,8,64,512")
    a = p.parse_args()
    counts = [int(n) for n in a.workers.split(",")]
    print(f"{a.megapixels:.0f} output MP, model {a.model_s_per_mp} s/MP: predicted seconds (speed-up vs 1 worker)")
    for mode in ("cog", "tiled", "zarr"):
        one = run_seconds(1, mode, a)
        cells = []
        for n in counts:
            t = run_seconds(n, mode, a)
            cells.append(f"{n}: {t:8.1f} s ({one / t:5.1f}x)")
        print(f"  {mode:5} " + "  ".join(cells))


if __name__ == "__main__":
    main()
