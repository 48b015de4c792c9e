"""``serve --workers N``: N processes share one listening port (SO_REUSEPORT), and the
kernel spreads connections over them.  The parent only supervises: it forwards
SIGTERM/SIGINT to the workers, and if one dies unexpectedly it stops the others and
exits non-zero, so the service manager (systemd, Kubernetes) restarts the whole set.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

from .log import logger

STOP_TIMEOUT_S = 10.0


def supervise(count: int, target: Callable[..., None], args: tuple[Any, ...]) -> int:
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

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
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
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0 if stopping else 1
