"""The guard's ASGI application (Starlette): Bastion's classifier protocol behind the policy's rules.

Routes: `GET /` and `GET /predict` describe the model (docs/http-protocol.md), `POST /` and `POST /predict`
predict, `/healthz`, `/metrics` (Prometheus), `/openapi.json`. An API key comes in `Authorization: Bearer KEY`,
`X-API-Key: KEY` or the `api_key` query parameter (Bastion's own HTTP client sends no headers, so
`bastion assess http://host:port/predict?api_key=KEY` works). Every POST is written to the audit log before its
answer leaves; an unexpected error is answered 500 with one line, logged, and never shows a traceback.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from bastion.guard.audit_log import AuditLog, Entry
from bastion.guard.backend import ServedModel
from bastion.guard.guard_policy import Policy, Tier
from bastion.guard.openapi import openapi_spec
from bastion.guard.rules import Detectors, KeyState, Reference, Refused, check_inputs, hardener

# Availability rules (sponge, over-generation) plug in here: callables (key, tier, x, latency_ms) -> rule hits.
EXTRA_RULES: list[Callable[[str, Tier, np.ndarray, float], list[str]]] = []


@dataclass
class Guard:
    """The state behind the app: the model, policy, reference data, per-key state, audit log and metrics."""

    model: ServedModel
    policy: Policy
    audit: AuditLog
    reference: Reference | None = None
    log_inputs: bool = False
    keys: dict[str, KeyState] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.target = self.model.as_target()
        tiers = self.policy.tiers.values()
        wants = [t for t in tiers if t.detectors.squeeze_fpr is not None or t.detectors.strip_frr is not None]
        needs_data = wants or [t for t in tiers if t.extraction.ood_share is not None]
        if needs_data and self.reference is None:
            from bastion.core.errors import ParameterError

            raise ParameterError(f"tier {needs_data[0].name}: its detectors are calibrated on reference data; "
                                 "pass --data")
        self.detectors = None if not wants else Detectors(
            self.target, self.reference,  # type: ignore[arg-type]
            {t.detectors.squeeze_bits for t in wants if t.detectors.squeeze_fpr is not None},
            {t.detectors.strip_overlays for t in wants if t.detectors.strip_frr is not None})
        self.hardeners = {t.name: hardener(self.target, t.output) for t in tiers}
        self.degraders = {t.name: hardener(self.target, t.extraction.degrade_output) for t in tiers
                          if t.extraction.action == "degrade"}
        make_metrics(self)

    def state(self, key: str, tier: Tier) -> KeyState:
        if key not in self.keys:
            self.keys[key] = KeyState(tier, self.reference, self.audit.used(key))
        return self.keys[key]

    def describe(self, tier: Tier) -> dict[str, Any]:
        info = self.model.info.describe()
        defense = self.hardeners[tier.name]
        if defense is not None:
            info["output"] = defense.output_kind
        return info

    def answer(self, key: str, tier: Tier, x: np.ndarray) -> tuple[dict[str, Any], list[str]]:
        """Run the rules around inference for an admitted, validated batch: (answer, rule hits)."""
        state = self.state(key, tier)
        hits: list[str] = []
        if self.detectors is not None and (tier.detectors.squeeze_fpr or tier.detectors.strip_frr):
            found = self.detectors.check(x, tier)
            hits += found
            if found and tier.detectors.action == "reject":
                raise Refused(422, f"input rejected by {', '.join(found)}", found[0])
        out = self.model.predict(x)
        labels = out if out.ndim == 1 else out.argmax(-1)
        with state.lock:
            flagged = state.monitor.observe(x, labels)
            hits += flagged
            response = state.respond(flagged)
        if response:
            hits.append(response)
        defense = self.degraders[tier.name] if state.degraded else self.hardeners[tier.name]
        if defense is not None and out.ndim == 2:
            with torch.no_grad():
                out = defense.transform(torch.as_tensor(out), torch.as_tensor(x)).numpy()
        kind = "labels" if out.ndim == 1 else "probabilities"
        return {kind: out.tolist()}, hits


def _secret(request: Any) -> str | None:
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


def make_app(guard: Guard) -> Any:
    """The Starlette application serving `guard`."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    spec = openapi_spec(guard.model.info)
    largest = max(t.inputs.max_body_bytes for t in guard.policy.tiers.values())

    def refuse(status: int, message: str, retry_after: float | None = None) -> JSONResponse:
        headers = {} if retry_after is None else {"Retry-After": str(max(1, int(np.ceil(retry_after))))}
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    async def describe(request: Request) -> Response:
        found = guard.policy.resolve(_secret(request))
        if found is None:
            return refuse(401, "unknown or missing API key")
        return JSONResponse(guard.describe(found[1]))

    async def predict(request: Request) -> Response:
        start = time.perf_counter()
        found = guard.policy.resolve(_secret(request))
        key, tier = found if found is not None else ("unknown", None)
        status, verdict, hits, n, inputs = 200, "allow", [], 0, None
        retry_after = None
        try:
            if tier is None:
                raise Refused(401, "unknown or missing API key", "auth")
            body = await read_body(request, min(largest, tier.inputs.max_body_bytes))
            try:
                raw = json.loads(body)
            except (ValueError, RecursionError):
                raise Refused(400, "request body is not JSON", "input.schema") from None
            x = check_inputs(raw, guard.model.info, tier)
            n = len(x)
            inputs = x.tolist() if guard.log_inputs else None
            state = guard.state(key, tier)
            with state.lock:
                state.admit(n)
            payload, hits = await run_in_threadpool(guard.answer, key, tier, x)
            verdict = "flag" if hits else "allow"
            response = JSONResponse(payload)
        except Refused as refused:
            status, verdict, retry_after = refused.status, "deny", refused.retry_after
            hits = [*hits, refused.rule]
            response = refuse(refused.status, refused.message, retry_after)
        except Exception as exc:  # noqa: BLE001 - a failing model: one line, logged, no traceback
            status, verdict = 500, "error"
            hits = [*hits, "model.error"]
            response = refuse(500, f"the model failed on this request ({type(exc).__name__})")
        latency_ms = (time.perf_counter() - start) * 1000
        if tier is not None and status == 200:
            if tier.latency_ms is not None and latency_ms > tier.latency_ms:
                hits.append("ceiling.latency")
            for rule in EXTRA_RULES:
                hits += rule(key, tier, x, latency_ms)
        record(guard, Entry(time.time(), key, tier.name if tier else None, n, status, verdict, hits, latency_ms,
                            inputs))
        return response

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "isolation": guard.model.isolation})

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(guard.registry), media_type=CONTENT_TYPE_LATEST)

    async def openapi(request: Request) -> Response:
        return JSONResponse(spec)

    routes = [Route(path, describe, methods=["GET"]) for path in ("/", "/predict")]
    routes += [Route(path, predict, methods=["POST"]) for path in ("/", "/predict")]
    routes += [Route("/healthz", healthz), Route("/metrics", metrics), Route("/openapi.json", openapi)]
    return Starlette(routes=routes)
