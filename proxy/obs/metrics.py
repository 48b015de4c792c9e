"""Prometheus metrics.

Almost everything is read, once, from a request's finished ``RequestRecord`` (the
same record the ``request`` log line is made of), so the metrics and the log always
agree.  Only what changes while requests run (streams open now) and what is not a
request (policy reloads) is updated where it happens.

Labels are bounded: tenants come from the policy files (a request that matched no
tenant counts as ``-``), stages, checks, actions, error kinds and status classes
from small fixed sets; nothing is taken from request data.

With ``serve --workers N`` each worker writes its values to files in a directory
shared by all of them (prometheus-client's multiprocess mode, ``PROMETHEUS_MULTIPROC_DIR``),
and ``/metrics`` from any worker reports the sum over all of them.

Finished requests are counted in batches: ``observe`` keeps the record, and ``flush``
counts every record kept, in one pass (a request then costs a list append, not a dozen
metric updates between its I/O), each counter increased once by the batch's sum.  A
batch is counted when ``MAX_WAITING`` records wait, ``FLUSH_AFTER_S`` after its first
record once ``count_in_batches(loop)`` has been called, and before anything reads the
metrics in this process (``render``, the console).  So this process's ``/metrics`` is
always exact; another worker's shows a request at most ``FLUSH_AFTER_S`` late.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from proxy.config import Action
from proxy.core.policy import Outcome, worst
from proxy.obs.log import RequestRecord

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
NO_TENANT = "-"
#: seconds; guard checks take milliseconds to a second, answers up to minutes
GUARD_BUCKETS = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10)
UPSTREAM_BUCKETS = (.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120)
CONTENT_TYPE = CONTENT_TYPE_LATEST
#: A batch of finished requests is counted after this long, or once this many wait.
FLUSH_AFTER_S = 1.0
MAX_WAITING = 256


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


class _Children:
    """A metric's children by their label values, each found once: ``labels()`` checks
    the values and takes a lock on every call, and every request counts about ten of
    them.  The labels are bounded (see above), and so is this."""

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self._found: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._found.get(values)
        if child is None:
            child = self._found[values] = self.metric.labels(*values)
        return child


class Metrics:
    """The proxy's metrics, in a registry of their own (one per app)."""

    def __init__(self, tenants: Iterable[str] = ()) -> None:
        self.registry = CollectorRegistry()
        self._tenants = frozenset(tenants)
        self._declare_requests(self.registry)
        self._declare_guard(self.registry)
        self._declare_cache(self.registry)
        self._declare_answers(self.registry)
        self._declare_audit(self.registry)
        self._of = {name: _Children(getattr(self, name)) for name in (
            "requests", "responses", "guard_calls", "guard_requests", "guard_latency",
            "upstream_latency", "ttft", "blocked", "blocked_tokens", "leaked_chars",
            "removed_fields")}
        self._waiting: list[tuple[RequestRecord, int, str]] = []
        self._steps: dict[Any, float] = {}  # guard requests waiting, by their counter
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    def count_in_batches(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """With a loop, a batch waits at most ``FLUSH_AFTER_S``; with None (the loop is
        stopping), what waits is counted now and each later batch when it fills."""
        self._loop = loop
        if loop is None:
            self.flush()

    def flush(self) -> None:
        """Count every finished request and guard request that waits."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()  # a no-op when it is the timer that called
        waiting, self._waiting = self._waiting, []
        tally, self._steps = self._steps, {}  # each counter's increase over the batch
        for record, status, api in waiting:
            self._count(record, status, api, tally)
        for counter, increase in tally.items():
            counter.inc(increase)

    def _waits(self) -> None:
        """Something more waits: count the batch if it is full, else see it is counted
        in time."""
        if len(self._waiting) + len(self._steps) >= MAX_WAITING:
            self.flush()
        elif self._timer is None and self._loop is not None:
            self._timer = self._loop.call_later(FLUSH_AFTER_S, self.flush)

    def _declare_requests(self, r: CollectorRegistry) -> None:
        self.requests = Counter(
            "guardproxy_requests", "Chat requests by tenant, stage and the stage's action "
            "(pass, flag, block, or not_checked / guard_error when there was no verdict).",
            ["tenant", "stage", "action"], registry=r)
        self.responses = Counter(
            "guardproxy_http_responses", "HTTP answers by tenant and status class.",
            ["tenant", "status"], registry=r)
        self.reloads = Counter(
            "guardproxy_policy_reloads", "Policy reloads by outcome (ok, rejected).",
            ["outcome"], registry=r)
        self.blocked = Counter(
            "guardproxy_blocked_requests", "Requests blocked, by tenant and stage.",
            ["tenant", "stage"], registry=r)
        self.blocked_tokens = Counter(
            "guardproxy_blocked_upstream_tokens",
            "Upstream tokens of blocked requests: 'cost' = tokens the upstream reported for "
            "an answer that was blocked; 'saved' = prompt tokens never sent upstream "
            "(estimated as the messages' characters / 4).",
            ["tenant", "kind"], registry=r)

    def _declare_guard(self, r: CollectorRegistry) -> None:
        self.guard_calls = Counter(
            "guardproxy_guard_calls", "Guard checks (verdicts asked) by check and guard API.",
            ["check", "api"], registry=r)
        self.guard_requests = Counter(
            "guardproxy_guard_requests", "HTTP requests to the guard by guard API and step: "
            "severity (the one token after 'Safety:'), categories (a flagged verdict "
            "continued), refusal, or full (the whole verdict, guard.decoding: full).",
            ["api", "step"], registry=r)
        self.guard_latency = Histogram(
            "guardproxy_guard_latency_seconds", "Guard check latency by check and guard API.",
            ["check", "api"], buckets=GUARD_BUCKETS, registry=r)
        self.guard_errors = Counter(
            "guardproxy_guard_errors", "Checks without a verdict by check and error kind.",
            ["check", "kind"], registry=r)
        self.guard_waits = Counter(
            "guardproxy_guard_waits", "Guard calls that waited for a slot of their tenant's "
            "share (limits.guard_concurrency).", ["tenant"], registry=r)
        self.guard_rejections = Counter(
            "guardproxy_guard_rejections", "Requests refused (429) or blocked because their "
            "guard calls waited past limits.guard_wait_s.", ["tenant"], registry=r)

    def _declare_cache(self, r: CollectorRegistry) -> None:
        self.cache_hits = Counter(
            "guardproxy_verdict_cache_hits", "Guard inputs answered from the verdict cache.",
            registry=r)
        self.redis_hits = Counter(
            "guardproxy_verdict_cache_redis_hits", "Guard inputs answered from the verdict "
            "cache shared through Redis (cache.redis_url), a part of the cache hits.",
            registry=r)
        self.redis_errors = Counter(
            "guardproxy_verdict_cache_redis_errors", "Redis operations of the shared verdict "
            "cache that failed, by operation (get, set, ping) and kind (timeout, error, "
            "busy: a read or write skipped because too many were in flight); each is a miss, "
            "never a failed request.",
            ["op", "kind"], registry=r)
        self.redis_rejected = Counter(
            "guardproxy_verdict_cache_redis_rejected", "Values read from the shared verdict "
            "cache that were not believed, by reason (unauthenticated: no valid tag for its "
            "key under cache.redis_secret_env, expired, malformed: not a verdict); each is a "
            "miss, and the guard is asked.",
            ["reason"], registry=r)

    def _declare_answers(self, r: CollectorRegistry) -> None:
        self.upstream_latency = Histogram(
            "guardproxy_upstream_latency_seconds",
            "Upstream time: the whole answer, or the whole stream.",
            ["tenant", "stream"], buckets=UPSTREAM_BUCKETS, registry=r)
        self.ttft = Histogram(
            "guardproxy_time_to_first_token_seconds",
            "Time from the request to the first byte of a streamed answer.",
            ["tenant"], buckets=UPSTREAM_BUCKETS, registry=r)
        self.active_streams = Gauge(
            "guardproxy_active_streams", "Streamed answers being relayed now.",
            registry=r, multiprocess_mode="livesum")
        self.leaked_chars = Counter(
            "guardproxy_leaked_chars",
            "Characters of streamed answers sent to clients before any passing check "
            "covered them (async mode only).", ["tenant"], registry=r)
        self.removed_fields = Counter(
            "guardproxy_removed_fields",
            "Upstream answer fields with a value that the proxy does not understand, "
            "removed from what the client got.", ["tenant"], registry=r)

    def _declare_audit(self, r: CollectorRegistry) -> None:
        self.audit_written = Counter(
            "guardproxy_audit_written", "Decisions written to the audit trail.", registry=r)
        self.audit_dropped = Counter(
            "guardproxy_audit_dropped", "Decisions the audit trail lost: queue_full (the "
            "queue was full; the request went on at once) or write_failed (the store "
            "refused the batch).", ["reason"], registry=r)
        self.audit_purged = Counter(
            "guardproxy_audit_purged", "Decisions deleted for being older than "
            "audit.retention_days.", registry=r)

    def guard_requests_by(self, api: str) -> Callable[[str], None]:
        """What counts one guard request of ``api``, given its step."""
        children = self._of["guard_requests"]

        def count(step: str) -> None:
            _add(self._steps, children(api, step))
            self._waits()
        return count

    def set_tenants(self, tenants: Iterable[str]) -> None:
        """After a policy reload: the tenants that may appear as labels."""
        self._tenants = frozenset(tenants)

    def tenant(self, name: str | None) -> str:
        return name if name is not None and name in self._tenants else NO_TENANT

    def observe(self, record: RequestRecord, status: int, api: str) -> None:
        """Count one finished request from its record (in the next batch)."""
        self._waiting.append((record, status, api))
        self._waits()

    def _count(self, record: RequestRecord, status: int, api: str, tally: dict[Any, float]
               ) -> None:
        """One record: its histograms observed, its counters' increases added to
        ``tally`` (a counter is increased once a batch, by the batch's sum)."""
        tenant, of = self.tenant(record.tenant), self._of
        _add(tally, of["responses"](tenant, f"{status // 100}xx"))
        if record.tenant is None:
            return
        for stage, outcomes in (("prompt", record.input), ("response", record.output)):
            if outcomes:
                self._stage(tenant, stage, outcomes, tally)
        for check, seconds in record.guard_timings:
            _add(tally, of["guard_calls"](check, api))
            of["guard_latency"](check, api).observe(seconds)
        if record.cache_hits:
            _add(tally, self.cache_hits, record.cache_hits)
        if record.upstream_ms is not None:
            of["upstream_latency"](tenant, str(record.stream).lower()).observe(
                record.upstream_ms / 1000)
        if record.stream and record.ttft_ms is not None:
            of["ttft"](tenant).observe(record.ttft_ms / 1000)
        self._tokens(tenant, record, tally)
        if record.leaked_chars:
            _add(tally, of["leaked_chars"](tenant), record.leaked_chars)
        if record.removed_fields:
            _add(tally, of["removed_fields"](tenant), record.removed_fields)
        if record.guard_waits:
            _add(tally, self.guard_waits.labels(tenant), record.guard_waits)
        if record.guard_rejected:
            _add(tally, self.guard_rejections.labels(tenant))

    def _stage(self, tenant: str, stage: str, outcomes: list[Outcome],
               tally: dict[Any, float]) -> None:
        shown = worst(outcomes)
        _add(tally, self._of["requests"](tenant, stage, _action_label(shown)))
        for outcome in outcomes:
            if outcome.error_kind is not None:
                _add(tally, self.guard_errors.labels(stage, outcome.error_kind))
        if shown.action is Action.BLOCK:
            _add(tally, self._of["blocked"](tenant, stage))

    def _tokens(self, tenant: str, record: RequestRecord, tally: dict[Any, float]) -> None:
        if any(o.action is Action.BLOCK for o in record.input):
            _add(tally, self._of["blocked_tokens"](tenant, "saved"), record.prompt_chars // 4)
        elif any(o.action is Action.BLOCK for o in record.output):
            _add(tally, self._of["blocked_tokens"](tenant, "cost"), _total_tokens(record.usage))

    def render(self) -> bytes:
        """The exposition text: this process's registry, or all workers' files."""
        self.flush()
        folder = multiprocess_dir()
        if folder is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=folder)  # type: ignore[no-untyped-call]
        return generate_latest(registry)


def _add(tally: dict[Any, float], counter: Any, amount: float = 1) -> None:
    tally[counter] = tally.get(counter, 0) + amount


def _action_label(outcome: Outcome) -> str:
    if outcome.verdict is not None or outcome.error_code is None:
        return outcome.action.value
    if outcome.error_code == "guard_unavailable":
        return "guard_error_" + outcome.action.value
    return "not_checked"


def _total_tokens(usage: Any) -> int:
    if isinstance(usage, dict):
        total = usage.get("total_tokens")
        if isinstance(total, int) and total >= 0:
            return total
    return 0


def worker_exited(pid: int) -> None:
    """Drop a finished worker's live gauges (its counters stay in the sums)."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
