"""The Dask backend of ``quoteforge sweep`` (``--backend dask``): the same runs as the
local process pool, as tasks on a Dask distributed cluster, with the same results.

Without ``--scheduler`` a LocalCluster of ``--jobs`` worker processes (one thread each,
listening on 127.0.0.1 only, no dashboard) is started for the sweep and closed after it.
With ``--scheduler tcp://host:port`` the runs go to that cluster's workers, which need
quoteforge (and any ``--plugin`` module) installed and must see the manifest's data files
and the sweep folder at the same paths (a shared filesystem).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from quoteforge.plugins import sweep as _sweep

__all__ = ["check_scheduler", "run_on_dask"]

_INSTALL = 'pip install "quoteforge[dask]"'
_SCHEMES = ("tcp", "tls", "inproc", "ucx", "ws", "wss")  # distributed's address schemes
_ready: list[str] = []  # the plugin list this worker process was prepared with


def _task(manifest: str, text: str, job: Any, plugins: list[str]) -> Any:
    """One run on a Dask worker; the worker's registry is loaded once per process."""
    if _ready != [repr(plugins)]:
        _sweep.init_worker(plugins)
        _ready[:] = [repr(plugins)]
    return _sweep.run_job(manifest, text, job)


def check_scheduler(scheduler: str) -> None:
    """Refuse an address Dask cannot dial, before the sweep creates anything."""
    scheme, sep, rest = scheduler.partition("://")
    if not sep or not rest:
        raise _sweep.SweepError(
            f"--scheduler {scheduler!r}: expected an address like tcp://10.0.0.5:8786"
        )
    if scheme not in _SCHEMES:
        raise _sweep.SweepError(
            f"--scheduler {scheduler!r}: unknown scheme {scheme!r}; a Dask scheduler "
            f"address starts with {', '.join(s + '://' for s in _SCHEMES)} "
            "(e.g. tcp://10.0.0.5:8786)"
        )


def _client(scheduler: str | None, workers: int) -> tuple[Any, Any]:
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise _sweep.SweepError(f"--backend dask needs Dask distributed: {_INSTALL}") from None
    if scheduler is None:
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        return Client(cluster), cluster
    check_scheduler(scheduler)
    try:
        return Client(scheduler, timeout="10s"), None
    except (OSError, TimeoutError) as exc:
        raise _sweep.SweepError(
            f"--scheduler {scheduler}: cannot reach the Dask scheduler ({exc}); start one "
            "with `dask scheduler` and workers with `dask worker ADDRESS`"
        ) from None


def run_on_dask(
    manifest: str,
    text: str,
    jobs: list[Any],
    plugins: list[str],
    *,
    scheduler: str | None,
    workers: int,
    done: Callable[[Any], None],
) -> None:
    """Run every job on the cluster; ``done(result)`` is called as each one finishes."""
    client, cluster = _client(scheduler, workers)
    try:
        from distributed import as_completed

        token = uuid.uuid4().hex[:8]
        futures = [
            client.submit(
                _task,
                manifest,
                text,
                job,
                plugins,
                key=f"quoteforge-sweep-{token}-{job.index}",
                pure=False,
            )
            for job in jobs
        ]
        for future in as_completed(futures):
            done(future.result())
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
