"""Random ids: hex digits drawn from the operating system's CSPRNG.

Every request is given ids (its own, an answer's, a tool call's); asking the kernel
for 16 bytes each time would cost a system call each.  The bytes are drawn 4 KiB at a
time instead and handed out in order, each byte once: the ids are exactly as random as
``os.urandom``'s own.  A forked child starts with an empty pool of its own, so no two
processes ever hand out the same bytes.
"""

from __future__ import annotations

import os

_POOL_BYTES = 4096
_pool = b""
_used = 0


def random_hex(nbytes: int) -> str:
    """``nbytes`` random bytes as ``2 * nbytes`` lowercase hex digits."""
    global _pool, _used
    if _used + nbytes > len(_pool):
        _pool, _used = os.urandom(max(_POOL_BYTES, nbytes)), 0
    start, _used = _used, _used + nbytes
    return _pool[start:_used].hex()


def _forget() -> None:
    global _pool, _used
    _pool, _used = b"", 0


if hasattr(os, "register_at_fork"):  # no fork, nothing to forget, where it is missing
    os.register_at_fork(after_in_child=_forget)
