"""Live policy reload: on SIGHUP, and when a file under the policies folder changes.

A reload reads and validates every policy file.  A valid set replaces the old one
in a single assignment (``Runtime.set_policies``): a request already running keeps
the ``Policy`` object it started with, so it finishes under that policy, and the
next request sees the new set.  An invalid set is rejected whole: the last good set
stays, and each error is logged with its ``file:line``.

Changes are found by polling: every ``interval_s`` the folder's listing is compared
by name, size, modification time and inode, following symbolic links, which also
catches a Kubernetes ConfigMap update (an atomic swap of a ``..data`` symlink).

Each reload is one ``policy_reload`` line on the logger its creator hands in (``log``):
configuration sits below logging, so it names no logger of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from proxy.config import Policy, ServerConfig, load_policies
from proxy.errors import ConfigError

Fingerprint = tuple[tuple[str, int, int, int], ...]
Loader = Callable[[ServerConfig], tuple[Policy, ...]]


class EventLog(Protocol):
    """Where a reload is told: a structlog-style logger (``proxy.obs.log.logger``)."""

    def info(self, event: str, **fields: Any) -> object: ...

    def error(self, event: str, **fields: Any) -> object: ...


def fingerprint(folder: Path) -> Fingerprint:
    """What the folder holds, cheaply: any edit, rename, add or removal changes it."""
    entries = []
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return ()
    for name in names:
        try:
            st = os.stat(folder / name)  # follows symlinks
        except OSError:
            continue
        entries.append((name, st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(entries)


class PolicyReloader:
    """Reloads the policies of a running proxy; ``apply`` installs a valid set."""

    def __init__(self, server: ServerConfig, apply: Callable[[tuple[Policy, ...]], None],
                 *, log: EventLog, on_outcome: Callable[[str], None] = lambda outcome: None,
                 interval_s: float = 1.0, loader: Loader = load_policies) -> None:
        self.server = server
        self.interval_s = interval_s
        self._apply = apply
        self._log = log
        self._on_outcome = on_outcome
        self._loader = loader
        self._seen = fingerprint(server.policies_dir)
        self._task: asyncio.Task[None] | None = None

    def reload(self, reason: str) -> bool:
        """Read all policies now; True if the new set is in place."""
        self._seen = fingerprint(self.server.policies_dir)
        try:
            policies = self._loader(self.server)
        except ConfigError as exc:
            self._log.error("policy_reload", outcome="rejected", reason=reason,
                            errors=exc.errors)
            self._on_outcome("rejected")
            return False
        self._apply(policies)
        self._log.info("policy_reload", outcome="ok", reason=reason,
                       tenants=sorted(p.tenant for p in policies))
        self._on_outcome("ok")
        return True

    def poll(self) -> bool:
        """Reload if the folder changed since the last look; True if it did."""
        if fingerprint(self.server.policies_dir) == self._seen:
            return False
        self.reload("changed")
        return True

    async def _watch(self) -> None:
        # a listing and a few stat calls: microseconds, fine on the event loop
        while True:
            await asyncio.sleep(self.interval_s)
            self.poll()

    def start(self) -> None:
        """Watch the folder, and reload on SIGHUP (where signals can be handled)."""
        loop = asyncio.get_running_loop()
        if self.interval_s > 0:
            self._task = asyncio.create_task(self._watch(), name="guardproxy-policy-watch")
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, self.reload, "sighup")

    async def stop(self) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

