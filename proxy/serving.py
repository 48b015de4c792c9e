"""``guardproxy serve``, one process: bind the client listener and the admin listener, and
only then log ``listening``; serve until SIGTERM or SIGINT, then shut down gracefully.

A listener that cannot be bound is one line naming its address and the key or flag that
sets it (``BindError``), never a traceback; the caller prints it (one process) or hands
it to the supervisor (``--workers N``), and exits with ``EXIT_BIND``.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from proxy.config import Config
from proxy.obs import log
from proxy.web.app import create_admin_app, create_app

EXIT_BIND = 3  # a listener could not be bound: starting again will not help


@dataclass(frozen=True, slots=True)
class Listener:
    host: str
    port: int
    what: str  # who it is and what sets it, for the one line a bind error prints


class BindError(Exception):
    def __init__(self, line: str) -> None:
        super().__init__(line)
        self.line = line


def listeners(config: Config, host: str, port: int) -> list[Listener]:
    """The client listener, then the admin one (unless ``admin: false``)."""
    source = config.server.source
    found = [Listener(host, port, f"the client listener: listen.port in {source} or --port")]
    if config.server.admin_enabled:
        found.append(Listener(config.server.admin_host, config.server.admin_port,
                              f"the admin listener: admin.port in {source} or "
                              "--admin-port; admin: false turns it off"))
    return found


def run(config: Config, host: str, port: int, *, reuse_port: bool,
        on_bind_error: Callable[[str], None] | None = None) -> int:
    """Serve until stopped: 0; a listener that cannot be bound: ``EXIT_BIND``, its line
    printed on standard error or given to ``on_bind_error``."""
    log.configure(config.server.log_level)
    use_uvloop()
    try:
        asyncio.run(_serve(config, listeners(config, host, port), reuse_port=reuse_port))
    except BindError as exc:
        if on_bind_error is None:
            print(exc.line, file=sys.stderr)
        else:
            on_bind_error(exc.line)
        return EXIT_BIND
    return 0


async def _serve(config: Config, wanted: list[Listener], *, reuse_port: bool) -> None:
    app = create_app(config)
    # handler_cancellation: a client that hangs up cancels its request's task, and with it
    # the upstream call and any pending guard check
    runners = [web.AppRunner(app, access_log=None, handler_cancellation=True)]
    if len(wanted) > 1:
        runners.append(web.AppRunner(create_admin_app(app), access_log=None))
    stop = _stop_on_signals()
    try:
        for runner in runners:
            await runner.setup()
        bound = [await _bind(runner, listener, reuse_port)
                 for runner, listener in zip(runners, wanted, strict=True)]
        frozen = settle_heap()
        client = bound[0]
        admin = bound[1] if len(bound) > 1 else None
        log.logger.info("listening", host=client.host, port=client.port,
                        admin=None if admin is None else f"{admin.host}:{admin.port}",
                        tenants=len(config.policies), frozen_objects=frozen)
        log.write_in_batches(asyncio.get_running_loop())
        await stop.wait()
    finally:
        try:
            for runner in reversed(runners):
                await runner.cleanup()
        finally:
            log.flush_each_line()


async def _bind(runner: web.AppRunner, listener: Listener, reuse_port: bool) -> Listener:
    """Bind one listener; the port it got (the one asked for, or a free one for 0)."""
    site = web.TCPSite(runner, listener.host, listener.port, reuse_port=reuse_port or None)
    try:
        await site.start()
    except OSError as exc:  # the port is taken, the address is not this machine's, ...
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise BindError(f"guardproxy serve: cannot listen on {listener.host}:{listener.port} "
                        f"({listener.what}): {reason}") from None
    port: int = runner.addresses[0][1]  # its one site's: the port a port of 0 was given
    return Listener(listener.host, port, listener.what)


#: A young collection every this many net allocations of tracked objects, not Python's 700.
#: With ~30 requests in flight a few thousand young objects are alive at any moment, so at
#: 700 the collector walks them every ~25 requests: 16-22 µs of a whole request's CPU,
#: 36 µs of a stream's, measured inside the collections.  At 2,000: 5-7 and 15 µs.  The
#: price: cyclic garbage (a failed request's exceptions) waits longer, so under
#: ``bench/soak.py``'s faulty load the RSS settles 4 % higher (2.5 MiB).
YOUNG_COLLECTION_EVERY = 2_000


def settle_heap() -> int:
    """Once started: what start-up made (modules, the configuration, the policies, the
    clients) is moved out of the cyclic collector's sight (``gc.freeze``), so that its
    full collections walk only what came after, and young collections come every
    ``YOUNG_COLLECTION_EVERY`` allocations (the older generations keep Python's
    thresholds).  Cycles are still collected.  A reload's old policies and configuration
    hold no cycle, so they go by reference counting although frozen.  The number of
    objects frozen."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, *gc.get_threshold()[1:])
    return gc.get_freeze_count()


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def use_uvloop() -> None:
    """uvloop's event loop when it is installed (it is, on Linux): a cheaper hop."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
