"""Worker processes start loading a run's model and captioner as soon as the cluster is up.

A fresh worker process otherwise pays its imports (torch, diffusers, transformers) and the
model's load inside its first task, after the client has paid the same for its own check of
the model: on a 2-core machine about 6 s each, one after the other, before the first tile.
:func:`warm_up_workers` starts the load in a background thread of every worker and returns at
once, so the workers load while the client does. Long-lived workers (``--address``) that
already hold the model find it in their cache and do nothing.
"""

from __future__ import annotations

import logging
import threading

from geosr.config import RunConfig

__all__ = ["warm_up_workers"]

log = logging.getLogger(__name__)


def warm_up_workers(client: "distributed.Client", config: RunConfig) -> None:
    """Start loading ``config``'s model, routing's cheap path and captioner on every worker
    process of ``client`` (not on a threaded local cluster: it shares the client's process)."""
    if not (config.address or config.local_workers):
        return
    client.run(_start, config)


def _start(config: RunConfig) -> None:
    # client.run calls this on the worker's event loop and waits for it: the load goes to its own
    # thread, so the client goes on at once and the worker keeps answering the scheduler.
    threading.Thread(target=_load, args=(config,), name="geosr-warm-up", daemon=True).start()


def _load(config: RunConfig) -> None:
    """What the run's first task would load, with the same cache keys (its tasks then wait on the
    caches' locks instead of loading again). A failure is left to the task, which reports it."""
    try:
        from geosr.engine import _captioner, cheap_path_model
        from geosr.models import load_upscaler

        load_upscaler(config.model, config.scale, **config.model_options())
        if config.routed_threshold is not None:
            cheap_path_model(config.route_to, config.scale, config.model_options())
        _captioner(config.captioner)
    except Exception:  # noqa: BLE001 - the first task loads again and raises where the run sees it
        log.debug("warm-up failed", exc_info=True)
