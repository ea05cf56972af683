"""Worker processes start loading a run's model and captioner as soon as the cluster is up.

A fresh worker process otherwise pays its imports (torch, diffusers, transformers) and the
model's load inside its first task: on a 2-core machine about 6 s before its first tile.
:func:`warm_up_workers` starts that load in a background thread of every worker and returns
at once; the client then asks a worker to describe the model (:func:`geosr.tasks.model_facts`)
instead of loading a copy of its own, which would compete with theirs for the cores. Long-lived
workers (``--address``) that already hold the model find it in their cache and do nothing.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from geosr.config import RunConfig
from geosr.tasks import cheap_path_model, model_facts

if TYPE_CHECKING:
    import distributed

__all__ = ["warm_up_workers"]

log = logging.getLogger(__name__)


def warm_up_workers(client: "distributed.Client", config: RunConfig) -> None:
    """Start loading ``config``'s model, routing's cheap path and captioner on every worker of ``client``."""
    client.run(_start, config)


def _start(config: RunConfig) -> None:
    # client.run calls this on the worker's event loop and waits for it: the load goes to its own
    # thread, so the client goes on at once and the worker keeps answering the scheduler.
    threading.Thread(target=_load, args=(config,), name="geosr-warm-up", daemon=True).start()


def _load(config: RunConfig) -> None:
    """What the run's tasks would load, with the same cache keys (a task then waits on the caches'
    locks instead of loading again). A failure is left to the tasks, which report it."""
    try:
        model_facts(config)
        if config.routed_threshold is not None:
            cheap_path_model(config.route_to, config.scale, config.model_options())
    except Exception:  # noqa: BLE001 - a task loads again and raises where the run sees it
        log.debug("warm-up failed", exc_info=True)
