"""The guard's ASGI application (Starlette): Bastion's classifier protocol behind the policy's rules.

Routes: `GET /` and `GET /predict` describe the model (docs/http-protocol.md), `POST /` and `POST /predict`
predict, `/healthz`, `/metrics` (Prometheus), `/openapi.json`. An API key comes in `Authorization: Bearer KEY`,
`X-API-Key: KEY` or the `api_key` query parameter (Bastion's own HTTP client sends no headers, so
`bastion assess http://host:port/predict?api_key=KEY` works). Every POST is written to the audit log before its
answer leaves; an unexpected error is answered 500 with one line, logged, and never shows a traceback (the request
handling both apps share is `guard.guard_requests`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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
from bastion.guard.stateful import SharedQueries

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
        self.shared = {t.name: SharedQueries(t.extraction.stateful_shared_buffer) for t in tiers
                       if t.extraction.stateful_scope == "tier" and t.extraction.stateful_quantile is not None}
        self.monitor_thread = ThreadPoolExecutor(1, thread_name_prefix="guard-monitors")
        make_metrics(self)

    def state(self, key: str, tier: Tier) -> KeyState:
        if key not in self.keys:
            self.keys[key] = KeyState(tier, self.reference, self.audit.used(key), self.shared.get(tier.name))
        return self.keys[key]

    def describe(self, tier: Tier) -> dict[str, Any]:
        info = self.model.info.describe()
        defense = self.hardeners[tier.name]
        if defense is not None:
            info["output"] = defense.output_kind
        return info

    def answer(self, key: str, tier: Tier, x: np.ndarray) -> tuple[dict[str, Any], list[str], bool]:
        """Run the rules around inference for an admitted, validated batch (blocking): (answer, rule hits, whether
        the key's extraction monitors are due to run, after the answer is sent: `settle_later`)."""
        hits = self.check_detectors(tier, x)
        return self.finish(key, tier, x, self.model.predict(x), hits)

    async def answer_async(self, key: str, tier: Tier, x: np.ndarray) -> tuple[dict[str, Any], list[str], bool]:
        """`answer` on the event loop: the input detectors (model passes of their own) run in a thread, the batch
        itself waits for the model's runner without one."""
        hits: list[str] = []
        if self.detectors is not None and (tier.detectors.squeeze_fpr or tier.detectors.strip_frr):
            from starlette.concurrency import run_in_threadpool

            hits = await run_in_threadpool(self.check_detectors, tier, x)
        return self.finish(key, tier, x, await self.model.predict_async(x), hits)

    def check_detectors(self, tier: Tier, x: np.ndarray) -> list[str]:
        """The input detectors' hits on a batch (Refused 422 when the tier rejects what they flag)."""
        if self.detectors is None or not (tier.detectors.squeeze_fpr or tier.detectors.strip_frr):
            return []
        found = self.detectors.check(x, tier)
        if found and tier.detectors.action == "reject":
            raise Refused(422, f"input rejected by {', '.join(found)}", found[0])
        return found

    def finish(self, key: str, tier: Tier, x: np.ndarray, out: np.ndarray,
               hits: list[str]) -> tuple[dict[str, Any], list[str], bool]:
        """Queue the answered batch for the monitors and harden the outputs (cheap: runs on the event loop)."""
        state = self.state(key, tier)
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
        self.state(key, tier).run_monitors()


def make_app(guard: Guard) -> Any:
    """The Starlette application serving `guard`."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.applications import Starlette
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
        # the verdict of the key's last monitor run applies to this request: wait for a run still in progress
        running = state.running
        if running is not None:
            try:
                await asyncio.shield(running)
            except Exception:  # noqa: BLE001 - a failed monitor run is logged with this request, not raised
                ex.hits.append("monitor.error")
            if state.running is running:
                state.running = None
        with state.lock:
            ex.hits += state.take_found()
            state.admit(ex.n)
        payload, hits, due = await guard.answer_async(ex.key, ex.tier, x)
        ex.hits += hits
        ex.verdict = "flag" if ex.hits else "allow"
        if due:  # the monitors run after the answer is sent, one run at a time, in the guard's monitor thread
            state.running = asyncio.get_running_loop().run_in_executor(guard.monitor_thread, guard.settle_later,
                                                                       ex.key, ex.tier)
        return JSONResponse(payload)

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
