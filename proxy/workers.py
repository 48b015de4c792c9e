"""``serve --workers N``: N processes share one listening port (SO_REUSEPORT), and the
kernel spreads connections over them.  The parent only supervises: it forwards
SIGTERM/SIGINT (stop) and SIGHUP (reload the policies) to the workers, and if one
dies unexpectedly it stops the others and exits non-zero with one line saying why, so
the service manager (systemd, Kubernetes) restarts the whole set.  Workers die with the
supervisor however it dies (``die_with_parent``).  A worker that cannot bind a listener
sends its one line up a pipe: the supervisor prints it once.  The workers share one
metrics folder.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from proxy.obs.log import logger
from proxy.obs.metrics import MULTIPROC_ENV, worker_exited

STOP_TIMEOUT_S = 10.0
EXIT_WORKER = 1  # a worker ended while not asked to: the set stopped
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies


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


def die_with_parent(parent_pid: int) -> None:
    """Called first in a worker: the kernel sends it SIGTERM when the supervisor dies,
    however it dies (SIGKILL included); a supervisor already gone ends the worker now."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


def _supervise(count: int, target: Callable[..., None], args: tuple[Any, ...]) -> int:
    context = multiprocessing.get_context("spawn")
    pipes = [context.Pipe(duplex=False) for _ in range(count)]
    processes = [context.Process(target=target, args=(*args, os.getpid(), sender),
                                 name=f"guardproxy-worker-{n}")
                 for n, (_, sender) in enumerate(pipes)]
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        _terminate(processes)

    def forward(signum: int, frame: FrameType | None) -> None:
        for process in processes:  # SIGHUP: every worker reloads its policies
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, forward)
    try:
        for process in processes:
            process.start()
        for _, sender in pipes:
            sender.close()  # the workers hold their ends
        ended = multiprocessing.connection.wait([p.sentinel for p in processes])
        failed = not stopping
        if failed:
            first = next(p for p in processes if p.sentinel in ended)
            _report(first, [reader for reader, _ in pipes])
            _terminate(processes)
        _reap(processes)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return EXIT_WORKER if failed else 0


def _terminate(processes: list[Any]) -> None:
    for process in processes:
        if process.is_alive():
            process.terminate()  # SIGTERM: aiohttp shuts down gracefully


def _report(dead: Any, readers: list[multiprocessing.connection.Connection]) -> None:
    """One line for the first worker that ended: a bind error in its own words (the
    others may say the same: said once), else its exit status, as an error log line."""
    for reader in readers:
        if reader.poll():
            try:
                line = reader.recv()
            except (EOFError, OSError):
                continue
            print(line, file=sys.stderr)
            return
    dead.join(STOP_TIMEOUT_S)  # its sentinel fired: its status is there to read
    code = dead.exitcode
    how = (f"killed by {signal.Signals(-code).name}" if code is not None and code < 0
           else f"exit status {code}")
    logger.error("worker_exited", worker=dead.name, worker_pid=dead.pid, exitcode=code,
                 message=f"worker {dead.name} (pid {dead.pid}) ended ({how}); "
                         "stopping the others")


def _reap(processes: list[Any]) -> None:
    for process in processes:
        process.join(STOP_TIMEOUT_S)
        if process.is_alive():
            process.kill()
            process.join()
        if process.pid is not None:
            worker_exited(process.pid)
