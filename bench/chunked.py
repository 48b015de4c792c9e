"""Whole answers through the lean HTTP/1.1 client's reader: decoding cost per MiB.

    python bench/chunked.py

A chunked answer of 1, 4 and 16 MiB (16 KiB chunks) arrives in 64 KiB reads; each read
is decoded once, so the time per MiB stays flat as the answer grows.  (A reader that
decoded the body from its start on every read would grow with the square of the size.)
The same sizes with a Content-Length are the floor.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy.clients.http1wire import WholeReader

READ = 64 << 10
CHUNK = 16 << 10


def answer(mib: int, chunked: bool) -> bytes:
    body = b"x" * (mib << 20)
    if not chunked:
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    chunks = b"".join(b"%x\r\n%s\r\n" % (CHUNK, body[i : i + CHUNK])
                      for i in range(0, len(body), CHUNK))
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"


def read_ms(raw: bytes) -> float:
    reader, started = WholeReader(64 << 20), time.perf_counter()
    for start in range(0, len(raw), READ):
        done = reader.feed(raw[start : start + READ])
    assert done is not None
    return (time.perf_counter() - started) * 1000


def main() -> None:
    print("| size | chunked | ms | ms per MiB | with Content-Length, ms |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for mib in (1, 4, 16):
        chunked = min(read_ms(answer(mib, True)) for _ in range(3))
        plain = min(read_ms(answer(mib, False)) for _ in range(3))
        print(f"| {mib} MiB | yes | {chunked:.1f} | {chunked / mib:.2f} | {plain:.1f} |")


if __name__ == "__main__":
    main()
