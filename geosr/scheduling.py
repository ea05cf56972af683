"""Where a run's tasks go: its dask.distributed client, GPU resources, and a bounded window
of tasks in flight.

The engine decides what a task is and what to do with its result; this module decides
where tasks run and how many are in flight. At most twice the cluster's threads are
submitted at a time, so tile results waiting to be blended stay few, whatever the scene size.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import socket
import struct
import threading
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, TypeVar

from geosr.errors import InputError

if TYPE_CHECKING:  # imported where a run needs a cluster: dask.distributed is slow to import
    import distributed

__all__ = ["dask_client", "released_early", "check_scheduler", "connect_timeout", "DEFAULT_CONNECT_TIMEOUT",
           "gpu_resources", "bounded_map", "in_flight", "undo_malloc_trim_threshold"]

log = logging.getLogger(__name__)

Job = TypeVar("Job")
Result = TypeVar("Result")


@contextlib.contextmanager
def dask_client(address: str | None = None, local_workers: int | None = None) -> Iterator["distributed.Client"]:
    """A dask.distributed client: remote scheduler, local processes, or local threads."""
    with released_early(address, local_workers) as (client, _):
        yield client


@contextlib.contextmanager
def released_early(
    address: str | None = None, local_workers: int | None = None
) -> Iterator[tuple["distributed.Client", Callable[[], None]]]:
    """:func:`dask_client`, and ``release()`` to close it before the block ends.

    A run's last step (the COG pass) needs no cluster, and stopping local worker processes
    takes about 2 s: ``release()`` closes the client at once (in this thread, where dask made
    it the current client) and the local cluster in a background thread, beside the rest of
    the block. The block's end waits for that close.
    """
    import distributed

    if local_workers is not None and (isinstance(local_workers, bool) or not isinstance(local_workers, int)
                                      or local_workers < 1):
        # LocalCluster(n_workers=-3) starts no worker, and the run waits for one forever
        raise InputError(f"--local-workers must be a whole number of at least 1, got {local_workers!r}")
    # entered as `with cluster, Client(cluster)` would, and left in its order: the client, then the cluster
    cluster_exit, client_exit = contextlib.ExitStack(), contextlib.ExitStack()
    closing: list[threading.Thread] = []

    def release() -> None:
        if not closing:
            client_exit.close()
            closing.append(threading.Thread(target=_close_quietly, args=(cluster_exit,), name="geosr-close",
                                            daemon=True))
            closing[0].start()

    client, failing = None, False
    try:
        if address:
            client = client_exit.enter_context(_remote_client(address))
        else:
            cluster = cluster_exit.enter_context(_local_cluster(local_workers))
            client = client_exit.enter_context(distributed.Client(cluster))
        yield client, release
    except BaseException:
        failing = True
        if not closing:
            _close_client_briefly(client, client_exit)
        raise
    finally:
        if closing:
            closing[0].join()
        else:
            client_exit.close()  # empty where _close_client_briefly took the client
            if failing:
                _close_quietly(cluster_exit)
            else:
                cluster_exit.close()


# Seconds to wait for a scheduler at --address: dask's own 30 s (then a bare "OSError") made a
# mistyped address look like a hang; dask config ``geosr.connect-timeout`` (--connect-timeout) sets it.
DEFAULT_CONNECT_TIMEOUT = 5.0
_EXPECTED = "--address expects a dask scheduler, e.g. tcp://host:8786"
# A dask scheduler greets a new connection with its handshake: an 8-byte frame length, then
# about 60 bytes. Anything longer is another protocol's bytes read as a length (b"SSH-2.0-" is
# 3 EiB, which dask's client then tries to allocate).
_MAX_GREETING = 1 << 20


def connect_timeout() -> float:
    """Seconds to wait for the scheduler at ``--address`` (connection and its first words).

    dask config ``geosr.connect-timeout`` (set by ``--connect-timeout``, or e.g.
    ``DASK_GEOSR__CONNECT_TIMEOUT=30``), else :data:`DEFAULT_CONNECT_TIMEOUT`.
    """
    import dask
    from dask.utils import parse_timedelta

    return parse_timedelta(dask.config.get("geosr.connect-timeout", DEFAULT_CONNECT_TIMEOUT), default="seconds")


def check_scheduler(address: str, timeout: float) -> None:
    """Raise :class:`InputError` unless a dask scheduler answers at ``address`` within ``timeout`` s.

    ``distributed.Client`` retries a refused connection until its timeout, waits forever on
    a server that says nothing (an HTTP server, such as dask's own dashboard on :8787) and
    allocates whatever length another protocol's first bytes spell. Here a plain socket
    connects and reads the greeting a dask scheduler sends at once, without answering it
    (the scheduler logs "closed before handshake completed" at INFO). ``tls://`` is only
    connected to (a TLS server waits for the client's hello); other schemes (``inproc``,
    ``ucx``, ``ws``) are left to dask.
    """
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, location = parse_address(address)
        if scheme not in ("tcp", "tls"):
            from distributed.comm.registry import get_backend

            get_backend(scheme)  # unknown schemes (http://...) are refused with the known ones
            return
        host, port = parse_host_port(location)
    except ValueError as exc:
        raise InputError(f"--address {address}: {exc}; {_EXPECTED}") from exc
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror as exc:
        raise InputError(f"cannot connect to {address}: unknown host {host} ({exc.strerror}); {_EXPECTED}") from exc
    except TimeoutError as exc:
        raise InputError(f"cannot connect to {address} within {timeout:g} s (a wrong host or a firewall? "
                         f"--connect-timeout waits longer); {_EXPECTED}") from exc
    except OSError as exc:
        raise InputError(f"cannot connect to {address}: {exc.strerror or exc}; {_EXPECTED}") from exc
    with sock:
        if scheme == "tls":
            return
        try:
            greeting = sock.recv(8, socket.MSG_WAITALL)
        except TimeoutError as exc:
            raise InputError(
                f"{address} said nothing within {timeout:g} s, so it is no dask scheduler, which greets at once "
                f"(an HTTP server, such as dask's dashboard, waits to be asked); {_EXPECTED}"
            ) from exc
        except OSError as exc:
            raise InputError(f"cannot connect to {address}: {exc.strerror or exc}; {_EXPECTED}") from exc
    if len(greeting) < 8:
        raise InputError(f"{address} closed the connection without the greeting of a dask scheduler; {_EXPECTED}")
    (length,) = struct.unpack("Q", greeting)  # dask's frame length, in the byte order of the machines
    if not 0 < length <= _MAX_GREETING:
        raise InputError(f"{address} answered {greeting.decode('latin-1')!r}, which is no dask scheduler's greeting; "
                         f"{_EXPECTED}")


def _remote_client(address: str) -> "distributed.Client":
    """A client of the scheduler at ``address``, or a one-line :class:`InputError` within the connect timeout."""
    import distributed

    timeout = connect_timeout()
    check_scheduler(address, timeout)
    try:
        return distributed.Client(address, timeout=timeout)
    # what dask raises when the greeting was right but the rest is not: a closed comm
    # (CommClosedError and TimeoutError are OSErrors), a refused or garbled handshake
    except (OSError, MemoryError, ValueError) as exc:
        raise InputError(f"cannot connect to {address}: {type(exc).__name__}: {' '.join(str(exc).split())}; "
                         f"{_EXPECTED}") from exc


def _local_cluster(local_workers: int | None) -> "distributed.LocalCluster":
    import distributed

    # Worker processes log a failed task with its traceback, a restart with its pid...: geosr
    # reports failures itself, in one line.
    # No dashboard (bokeh costs a second of start-up and nothing here uses it). The scheduler
    # serves its HTTP routes anyway, on :8787 unless told: when that port was taken (another
    # cluster, a second geosr run) every run warned "Port 8787 is already in use" and leaked
    # the socket of its try ("unclosed socket"). Any free local port does.
    kwargs = dict(dashboard_address=None, scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                  silence_logs=logging.CRITICAL)
    if local_workers:
        return distributed.LocalCluster(n_workers=local_workers, threads_per_worker=1, processes=True, **kwargs)
    # Threads share the model cache; torch already uses several cores per call.
    threads = max(1, (os.cpu_count() or 2) // 2)
    return distributed.LocalCluster(n_workers=1, threads_per_worker=threads, processes=False, **kwargs)


#: Seconds a client may take to close while a stop or a failure is on its way out (dask's own: 60).
STOP_CLOSE_SECONDS = 5


def _close_client_briefly(client: "distributed.Client | None", client_exit: contextlib.ExitStack) -> None:
    """Leave ``client`` as its ``__exit__`` does - dask's current client set back first (left on a
    closed one, every later computation of the process failed), then closed - but within
    :data:`STOP_CLOSE_SECONDS`, errors logged, not raised: a SIGTERM landing while the client
    talked to the scheduler left its close waiting dask's 60 s, then raising a TimeoutError that
    replaced the stop (exit 1 for 8, past a batch system's grace)."""
    if client is not None:  # the close __exit__ calls, with the short timeout
        client.close = functools.partial(type(client).close, client, timeout=STOP_CLOSE_SECONDS)
    try:
        client_exit.close()
    except Exception:  # noqa: BLE001 - the error on its way out says what happened, not this
        log.debug("closing the dask client during a stop failed", exc_info=True)
    finally:
        if client is not None:
            del client.close


def _close_quietly(cluster_exit: contextlib.ExitStack) -> None:
    try:
        cluster_exit.close()
    except Exception:  # noqa: BLE001 - the run's work is done; a slow or failed close must not undo it
        log.debug("closing the local dask cluster failed", exc_info=True)


def gpu_resources(client: "distributed.Client", neural: bool, device: str | None) -> dict | None:
    """``{"GPU": 1}`` for the tasks of a neural model when the cluster's workers declare a GPU.

    Workers started with ``dask worker --resources GPU=1`` (one per GPU, each with its own
    ``CUDA_VISIBLE_DEVICES``) then run one such task at a time and keep one model each; the
    device comes from the worker (``device`` None or ``cuda``: what it sees). Classical models,
    an explicit CPU device, and reading, blending and writing run on any worker.
    """
    if not neural or (device is not None and not device.startswith("cuda")):
        return None
    workers = client.scheduler_info().get("workers", {}).values()
    if any("GPU" in (w.get("resources") or {}) for w in workers):
        return {"GPU": 1}
    return None


def bounded_map(
    client: "distributed.Client", fn: Callable[[Job], Result], jobs: Iterable[Job], resources: dict | None = None
) -> Iterator[Result]:
    """``fn(job)`` of every job on ``client``, results yielded as they complete.

    At most twice the cluster's threads are in flight; the next job is submitted once the
    caller has taken a result (and blended it), so memory follows the window, not the jobs.
    """
    import distributed

    window = in_flight(client)
    pending = iter(jobs)
    futures = distributed.as_completed()
    for job in _take(pending, window):
        futures.add(client.submit(fn, job, pure=False, resources=resources))
    for future in futures:
        result = future.result()
        future.release()
        yield result
        for job in _take(pending, 1):
            futures.add(client.submit(fn, job, pure=False, resources=resources))


def in_flight(client: "distributed.Client") -> int:
    """How many tasks to keep submitted: twice the cluster's threads (at least 2)."""
    return max(2, 2 * (sum(client.nthreads().values()) or 1))


def _take(it: Iterator[Job], n: int) -> Iterator[Job]:
    for _ in range(n):
        try:
            yield next(it)
        except StopIteration:
            return


@functools.lru_cache(maxsize=1)
def undo_malloc_trim_threshold() -> bool:
    """In a dask worker process, give glibc back its adaptive allocation thresholds (once).

    dask's nannies start workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (to return memory to
    the OS); any such setting also freezes glibc's mmap threshold at 128 KiB, so every tile-
    and activation-sized array is a fresh ``mmap`` with its page faults (a tile nearly twice
    as slow: docs/benchmarks.md). Large thresholds here (256 MiB) make those
    arrays reuse the heap again. Returns whether it applied (glibc, under that setting).
    """
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_trim_threshold, 256 << 20) and libc.mallopt(m_mmap_threshold, 256 << 20))
