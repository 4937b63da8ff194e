"""What every guarded request goes through, for a classifier (`guard.app`) or a language model (`guard.llm_app`).

The caller's API key (`Authorization: Bearer KEY`, `X-API-Key: KEY` or the `api_key` query parameter) names a tier;
the body is read within the tier's size bound and parsed as JSON; the route's own handler answers; a refusal
(`Refused`, 4xx) or a failing model (500, one line, no traceback) ends the request in the app's error shape; the
latency ceiling and any extra rules are checked; and the request is written to the audit log and the metrics
before its answer leaves.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bastion.guard.audit_log import Entry
from bastion.guard.guard_policy import Policy, Tier
from bastion.guard.rules import Refused

# An app's error answer: (status, one-line message, rule, Retry-After seconds or None) -> response.
ErrorAnswer = Callable[[int, str, str, "float | None"], Any]
# A rule checked after an allowed request: (key, tier, inputs, latency_ms) -> rule hits.
AfterRule = Callable[[str, Tier, Any, float], list[str]]


def api_key(request: Any) -> str | None:
    """The secret a request presents: a bearer token, the X-API-Key header or the api_key query parameter."""
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-api-key") or request.query_params.get("api_key")


async def read_body(request: Any, limit: int) -> bytes:
    """The request body, refused (413) beyond `limit` bytes whether declared or streamed."""
    declared = request.headers.get("content-length")
    if declared and (not declared.isdigit() or int(declared) > limit):
        raise Refused(413, f"request body larger than {limit} bytes", "input.size")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refused(413, f"request body larger than {limit} bytes", "input.size")
        chunks.append(chunk)
    return b"".join(chunks)


def make_metrics(guard: Any) -> None:
    """Prometheus counters of a guard (requests by status, verdicts, rule hits, latency) on its own registry."""
    from prometheus_client import CollectorRegistry, Counter, Histogram

    guard.registry = CollectorRegistry()
    guard.requests = Counter("guard_requests", "Requests by HTTP status", ["status"], registry=guard.registry)
    guard.verdicts = Counter("guard_verdicts", "Requests by verdict", ["verdict"], registry=guard.registry)
    guard.rule_hits = Counter("guard_rule_hits", "Rule hits by rule", ["rule"], registry=guard.registry)
    guard.latency = Histogram("guard_latency_seconds", "Time to answer a request", registry=guard.registry,
                              buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))


def record(guard: Any, entry: Entry) -> None:
    """Write one request to the audit log and the metrics."""
    guard.audit.write(entry)
    guard.requests.labels(str(entry.status)).inc()
    guard.verdicts.labels(entry.verdict).inc()
    for rule in entry.rules:
        guard.rule_hits.labels(rule).inc()
    guard.latency.observe(entry.latency_ms / 1000)


@dataclass
class Exchange:
    """One POST through the guard: who asked (key, tier) and, filled in by the handler, how it went.

    `n` is what the audit log counts (a classifier's inputs, an LM's prompt + completion tokens), `inputs` the
    logged inputs (with --log-inputs), `x` the validated batch the after-rules see.
    """

    key: str
    tier: Tier | None
    status: int = 200
    verdict: str = "allow"
    hits: list[str] = field(default_factory=list)
    n: int = 0
    inputs: Any = None
    x: Any = None

    @classmethod
    def of(cls, policy: Policy, request: Any) -> Exchange:
        found = policy.resolve(api_key(request))
        return cls(*found) if found is not None else cls("unknown", None)


def guarded_post(guard: Any, handle: Callable[[Exchange, Any], Awaitable[Any]], error: ErrorAnswer,
                 after: Sequence[AfterRule] = ()) -> Callable[[Any], Awaitable[Any]]:
    """A POST endpoint: key, bounded JSON body, `handle(exchange, raw)` for the answer, refusals, audit log."""
    largest = max(t.inputs.max_body_bytes for t in guard.policy.tiers.values())

    async def endpoint(request: Any) -> Any:
        start = time.perf_counter()
        ex = Exchange.of(guard.policy, request)
        try:
            if ex.tier is None:
                raise Refused(401, "unknown or missing API key", "auth")
            body = await read_body(request, min(largest, ex.tier.inputs.max_body_bytes))
            try:
                raw = json.loads(body)
            except (ValueError, RecursionError):
                raise Refused(400, "request body is not JSON", "input.schema") from None
            response = await handle(ex, raw)
        except Refused as refused:
            ex.status, ex.verdict = refused.status, "deny"
            ex.hits = [*ex.hits, refused.rule]
            response = error(refused.status, refused.message, refused.rule, refused.retry_after)
        except Exception as exc:  # noqa: BLE001 - a failing model: one line, logged, no traceback
            ex.status, ex.verdict = 500, "error"
            ex.hits = [*ex.hits, "model.error"]
            response = error(500, f"the model failed on this request ({type(exc).__name__})", "model.error", None)
        latency_ms = (time.perf_counter() - start) * 1000
        if ex.tier is not None and ex.status == 200:
            if ex.tier.latency_ms is not None and latency_ms > ex.tier.latency_ms:
                ex.hits.append("ceiling.latency")
            for rule in after:
                ex.hits += rule(ex.key, ex.tier, ex.x, latency_ms)
        record(guard, Entry(time.time(), ex.key, ex.tier.name if ex.tier else None, ex.n, ex.status, ex.verdict,
                            ex.hits, latency_ms, ex.inputs))
        return response

    return endpoint
