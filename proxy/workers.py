"""``serve --workers N``: N processes share one listening port (SO_REUSEPORT), and the
kernel spreads connections over them.  The parent only supervises: it forwards
SIGTERM/SIGINT (stop) and SIGHUP (reload the policies) to the workers, and if one
dies unexpectedly it stops the others and exits non-zero, so the service manager
(systemd, Kubernetes) restarts the whole set.  The workers share one metrics folder.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import tempfile
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from proxy.obs.log import logger
from proxy.obs.metrics import MULTIPROC_ENV, worker_exited

STOP_TIMEOUT_S = 10.0


def supervise(count: int, target: Callable[..., None], args: tuple[Any, ...]) -> int:
    with _shared_metrics_dir():
        return _supervise(count, target, args)


@contextlib.contextmanager
def _shared_metrics_dir() -> Iterator[None]:
    """Workers write their metrics to files in one folder; ``/metrics`` from any of them
    sums all.  A folder given in the environment is used as it is (and kept)."""
    if os.environ.get(MULTIPROC_ENV):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="guardproxy-metrics-") as folder:
        os.environ[MULTIPROC_ENV] = folder  # inherited by the workers
        try:
            yield
        finally:
            del os.environ[MULTIPROC_ENV]


def _supervise(count: int, target: Callable[..., None], args: tuple[Any, ...]) -> int:
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=target, args=args, name=f"guardproxy-worker-{n}")
                 for n in range(count)]
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for process in processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: aiohttp shuts down gracefully

    def forward(signum: int, frame: FrameType | None) -> None:
        for process in processes:  # SIGHUP: every worker reloads its policies
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, forward)
    try:
        for process in processes:
            process.start()
        multiprocessing.connection.wait([p.sentinel for p in processes])
        if not stopping:
            dead = [p for p in processes if p.exitcode is not None]
            logger.error("worker_exited", worker=dead[0].name, exitcode=dead[0].exitcode)
            stop(signal.SIGTERM, None)
        for process in processes:
            process.join(STOP_TIMEOUT_S)
            if process.is_alive():
                process.kill()
                process.join()
            if process.pid is not None:
                worker_exited(process.pid)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0 if stopping else 1
