"""Running a network over tiles in batches, halving the batch when the device runs out of memory.

What every neural upscaler does with a batch of tiles larger than its device takes: the same
tiles again at half the batch, and later batches at that smaller size (a scene's tiles are
alike, so a size that failed once would fail again).
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

__all__ = ["run_in_batches"]

logger = logging.getLogger(__name__)


def run_in_batches(count: int, batch_size: int, run: Callable[[slice], torch.Tensor],
                   out_of_memory: Callable[[BaseException], bool], shrink: Callable[[int], None]) -> torch.Tensor:
    """``run`` over ``count`` items in slices of ``batch_size``, concatenated.

    Parameters
    ----------
    count : int
        Items (tiles) to run.
    batch_size : int
        Items per call to start with.
    run : callable
        ``run(slice) -> Tensor`` for the items of the slice.
    out_of_memory : callable
        Whether an exception ``run`` raised is the device's out-of-memory error; others propagate,
        as does an out-of-memory error of a single item.
    shrink : callable
        ``shrink(n)``: the batch size is now ``n`` (the caller keeps it for its next call, even
        when this one ends in an error).

    Returns
    -------
    Tensor
        The outputs in order.
    """
    done: list[torch.Tensor] = []
    start = 0
    while start < count:
        n = min(batch_size, count - start)
        part = slice(start, start + n)
        try:
            out = run(part)
        except Exception as exc:  # noqa: BLE001 - only the device's out-of-memory error is caught
            if n == 1 or not out_of_memory(exc):
                raise
            batch_size = n // 2
            shrink(batch_size)
            logger.warning("out of memory at %d tiles per call: retrying with %d", n, batch_size)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        done.append(out)
        start += n
    return torch.cat(done)
