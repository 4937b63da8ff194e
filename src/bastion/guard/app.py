"""The guard's ASGI application (Starlette): Bastion's classifier protocol behind the policy's rules.

Routes: `GET /` and `GET /predict` describe the model (docs/http-protocol.md), `POST /` and `POST /predict`
predict, `/healthz`, `/metrics` (Prometheus), `/openapi.json`. An API key comes in `Authorization: Bearer KEY`,
`X-API-Key: KEY` or the `api_key` query parameter (Bastion's own HTTP client sends no headers, so
`bastion assess http://host:port/predict?api_key=KEY` works). Every POST is written to the audit log before its
answer leaves; an unexpected error is answered 500 with one line, logged, and never shows a traceback (the request
handling both apps share is `guard.guard_requests`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from bastion.guard.audit_log import AuditLog
from bastion.guard.backend import ServedModel
from bastion.guard.guard_policy import Policy, Tier
from bastion.guard.guard_requests import Exchange, api_key, guarded_post, make_metrics
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
        needs_data = wants or [t for t in tiers if t.extraction.ood_share is not None
                               or t.extraction.stateful_quantile is not None]
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

    def answer(self, key: str, tier: Tier, x: np.ndarray) -> tuple[dict[str, Any], list[str], bool]:
        """Run the rules around inference for an admitted, validated batch: (answer, rule hits, whether the
        key's extraction monitors are due to run, after the answer is sent: `settle`)."""
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
            due = state.gather(x, np.asarray(labels))
        defense = self.degraders[tier.name] if state.degraded else self.hardeners[tier.name]
        if defense is not None and out.ndim == 2:
            with torch.no_grad():
                out = defense.transform(torch.as_tensor(out), torch.as_tensor(x)).numpy()
        kind = "labels" if out.ndim == 1 else "probabilities"
        return {kind: out.tolist()}, hits, due

    def settle_later(self, key: str, tier: Tier) -> None:
        """Run the key's extraction monitors on its queued queries if due (after an answer has left)."""
        state = self.state(key, tier)
        with state.lock:
            state.run_monitors()


def make_app(guard: Guard) -> Any:
    """The Starlette application serving `guard`."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    spec = openapi_spec(guard.model.info)

    def refuse(status: int, message: str, rule: str = "", retry_after: float | None = None) -> JSONResponse:
        headers = {} if retry_after is None else {"Retry-After": str(max(1, int(np.ceil(retry_after))))}
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    async def describe(request: Request) -> Response:
        found = guard.policy.resolve(api_key(request))
        if found is None:
            return refuse(401, "unknown or missing API key")
        return JSONResponse(guard.describe(found[1]))

    async def predict(ex: Exchange, raw: Any) -> Response:
        x = check_inputs(raw, guard.model.info, ex.tier)
        ex.n, ex.x = len(x), x
        ex.inputs = x.tolist() if guard.log_inputs else None
        state = guard.state(ex.key, ex.tier)
        # a monitor run the last answer left due, if it has not run yet (off the event loop when it may take time)
        ex.hits = await run_in_threadpool(state.settle_locked) if state.busy else state.settle_locked()
        with state.lock:
            state.admit(ex.n)
        payload, hits, due = await run_in_threadpool(guard.answer, ex.key, ex.tier, x)
        ex.hits += hits
        ex.verdict = "flag" if ex.hits else "allow"
        # the monitors run after the answer is sent; their verdict applies from the key's next request on
        return JSONResponse(payload, background=BackgroundTask(guard.settle_later, ex.key, ex.tier) if due else None)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "isolation": guard.model.isolation})

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(guard.registry), media_type=CONTENT_TYPE_LATEST)

    async def openapi(request: Request) -> Response:
        return JSONResponse(spec)

    routes = [Route(path, describe, methods=["GET"]) for path in ("/", "/predict")]
    post = guarded_post(guard, predict, refuse, EXTRA_RULES)
    routes += [Route(path, post, methods=["POST"]) for path in ("/", "/predict")]
    routes += [Route("/healthz", healthz), Route("/metrics", metrics), Route("/openapi.json", openapi)]
    return Starlette(routes=routes)
