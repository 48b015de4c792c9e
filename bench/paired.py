"""Paired runs: guardproxy variants side by side, so that the machine's drift cancels.

    python bench/paired.py BEFORE_DIR AFTER_DIR [MORE_DIRS...] --mode non-stream \
        --slices 12 --seconds 2 --processes 3

Each directory holds a ``proxy/`` package (a checkout, or ``git archive <commit> proxy``
unpacked into it); ``baseline`` instead of a directory is ``baseline.py`` (one guard hop).
A variant ending in ``@PYTHON`` runs on that interpreter instead of ``run.py``'s default,
so that interpreters can be compared side by side::

    python bench/paired.py .@.venv/bin/python .@/tmp/bench-venv/bin/python \
        baseline@.venv/bin/python baseline@/tmp/bench-venv/bin/python

Every variant runs as ``--processes`` processes, all up at
once on the system-under-test CPU, against one set of fast emulators (``run.py``'s config,
pinning and wrk script); then ``--slices`` rounds of short ``wrk`` runs go through every
process, in turn, forwards and backwards.  Reported per variant: its median CPU per
request and its rps over the first variant's, pair by pair (same round, same process
index), median and mean.  Two variants of identical code measure up to ~5 % apart on a
shared 2-core machine: compare a change only with that in mind (see
``docs/performance.md``)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import run


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str  # as given
    folder: Path | None  # holding proxy/; None for the baseline
    python: str

    @classmethod
    def parse(cls, given: str, default_python: str) -> Variant:
        where, _, python = given.partition("@")
        python = str(Path(python).absolute()) if python else default_python
        if where == "baseline":
            return cls(given, None, python)
        folder = Path(where).resolve()
        if not (folder / "proxy" / "__init__.py").is_file():
            sys.exit(f"{where}: no proxy/ package in it")
        return cls(given, folder, python)

    def argv(self, config: Path, port: int, env: run.Env) -> list[str]:
        if self.folder is None:
            return [*env.bench_server(self.python, "baseline.py", port),
                    "--guards", "1", "--loop", "auto"]
        os.environ["PYTHONPATH"] = str(self.folder)  # this variant's proxy/
        run.ROOT = self.folder  # start_server's working directory: python -m finds it first
        return [self.python, "-m", "proxy", "serve", "-c", str(config)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("variants", nargs="+", help="directories holding proxy/, or "
                        "baseline; each may end in @PYTHON")
    parser.add_argument("--mode", choices=sorted(run.MODE), default="non-stream")
    parser.add_argument("--slices", type=int, default=12, help="rounds over every process")
    parser.add_argument("--seconds", type=float, default=2.0, help="wrk seconds per slice")
    parser.add_argument("--processes", type=int, default=2, help="processes per variant")
    parser.add_argument("--connections", type=int, default=32)
    ours = parser.parse_args()
    mode, args, pinning = run.MODE[ours.mode], run.parse_args([]), run.plan_pinning()
    variants = [Variant.parse(given, args.python) for given in ours.variants]
    if pinning.load is not None:
        os.sched_setaffinity(0, {int(pinning.load)})
    logs = Path(tempfile.mkdtemp(prefix="paired-"))
    keys = [(variant, index) for variant in variants for index in range(ours.processes)]
    rps: dict[tuple[Variant, int], list[float]] = {key: [] for key in keys}
    cpu: dict[tuple[Variant, int], list[float]] = {key: [] for key in keys}
    try:
        with run.emulators(args, pinning, logs) as env:
            servers: dict[tuple[Variant, int], tuple[int, run.Server]] = {}
            try:
                for number, (variant, index) in enumerate(keys):
                    port = run.free_port()
                    config = run.write_proxy_config(
                        logs / f"config-{number}", port=port, guard=env.guard.port,
                        upstream=env.upstream.port, api=args.guard_api)
                    argv = variant.argv(config, port, env)
                    servers[variant, index] = (port, run.start_server(
                        f"variant-{number}", run.pinned(pinning.sut, argv), port, "/healthz",
                        logs, stdout_null=True))
                    run.run_wrk(port, connections=ours.connections, seconds=2, mode=mode,
                                cpu=pinning.load, script=env.script(mode))  # warm-up
                for slice_ in range(ours.slices):
                    for key in keys if slice_ % 2 == 0 else keys[::-1]:
                        port, server = servers[key]
                        before = run.cpu_seconds(server.pid)
                        wrk = run.run_wrk(port, connections=ours.connections,
                                          seconds=ours.seconds, mode=mode, cpu=pinning.load,
                                          script=env.script(mode))
                        rps[key].append(wrk.rps)
                        cpu[key].append(1e6 * (run.cpu_seconds(server.pid) - before)
                                        / max(wrk.requests, 1))
            finally:
                for _, server in servers.values():
                    server.stop()
    finally:
        shutil.rmtree(logs, ignore_errors=True)
    first = variants[0]
    for variant in variants:
        ratios = [rps[variant, index][s] / rps[first, index][s]
                  for index in range(ours.processes) for s in range(ours.slices)]
        per_request = statistics.median(c for index in range(ours.processes)
                                        for c in cpu[variant, index])
        print(f"{variant.name}: CPU/request {per_request:.1f} µs; rps / first's: median "
              f"{statistics.median(ratios):.3f}, mean {statistics.mean(ratios):.3f}")


if __name__ == "__main__":
    main()
