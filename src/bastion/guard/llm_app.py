"""The guard for a language model: the OpenAI-compatible chat API (Starlette) behind the policy's `llm` rules.

Routes: `GET /v1/models`, `POST /v1/chat/completions` (non-streaming), `/healthz`, `/metrics`, `/openapi.json`.
Raw completion (`/v1/completions`) is not served: it would bypass the system prompt the leak filter protects.
Keys, body bounds, refusals and the audit log are shared with classifiers (`guard.guard_requests`); the audit log's
`n_inputs` of an LM request is its prompt + completion tokens, so `llm.token_budget` survives a restart.

Refusal styles: malformed requests and limits are 4xx errors in OpenAI's shape (`{"error": {"message", "type",
"code"}}`); a suspected injection (`injection: reject`) and a leaking reply (`leak: redact`) are answered in-band,
200 with `finish_reason: "content_filter"` and a one-line notice as the content, as OpenAI's own content filter
does, so a client sees a refusal rather than a failure. Sampling is the server's (`--temperature`); a client's
temperature, top_p and seed are ignored.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from bastion.core.errors import BastionError, ParameterError
from bastion.guard.audit_log import AuditLog
from bastion.guard.guard_policy import Policy, Tier
from bastion.guard.guard_requests import Exchange, api_key, guarded_post, make_metrics
from bastion.guard.llm_rules import find_leak, scan_messages
from bastion.guard.rules import Refused, TokenBucket
from bastion.lm.chat_format import check_messages
from bastion.lm.lm_target import LMTarget

INJECTION_NOTICE = "[bastion guard] request refused: it looks like a prompt injection ({})."
LEAK_NOTICE = "[bastion guard] reply withheld: it contained protected content."


@dataclass
class LMKeyState:
    """One key's rate bucket (one token per request) and its spent tokens."""

    tier: Tier
    used_tokens: int = 0
    bucket: TokenBucket | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def admit(self) -> None:
        budget = self.tier.llm.token_budget
        if budget is not None and self.used_tokens >= budget:
            raise Refused(429, f"token budget of {budget} spent ({self.used_tokens} used)", "llm.token_budget")
        if self.bucket is not None:
            wait = self.bucket.take(1)
            if wait > 0:
                raise Refused(429, f"rate limit: retry in {wait:.2f} s", "rate.limit", retry_after=wait)


@dataclass
class LMGuard:
    """A language model, the policy, per-key state, the audit log and metrics; one generation at a time."""

    lm: LMTarget
    policy: Policy
    audit: AuditLog
    name: str = "bastion-guarded"
    isolation: str = "in-process"
    keys: dict[str, LMKeyState] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.lm.enforces_deadline and any(t.llm.deadline_s is not None for t in self.policy.tiers.values()):
            raise ParameterError(f"policy: llm.deadline_s cannot be enforced on {self.lm.spec} (this backend "
                                 "cannot stop a generation midway); use the transformers backend or drop it")
        self.generate_lock = threading.Lock()
        make_metrics(self)

    def state(self, key: str, tier: Tier) -> LMKeyState:
        if key not in self.keys:
            rate = tier.rate
            bucket = None if rate.per_second is None else TokenBucket(rate.per_second, rate.burst)
            self.keys[key] = LMKeyState(tier, self.audit.used(key), bucket)
        return self.keys[key]

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int | None:
        """Tokens of the rendered prompt (white-box models), None when the backend cannot say before generating."""
        try:
            _, tokenizer = self.lm.model_and_tokenizer()
            return len(tokenizer(self.lm.render(messages), add_special_tokens=False)["input_ids"])
        except BastionError:
            return None

    def complete(self, tier: Tier, messages: list[dict[str, str]], max_new_tokens: int
                 ) -> tuple[dict[str, Any], list[str], int]:
        """Generate and filter one reply: (choice, rule hits, tokens spent)."""
        rules, hits = tier.llm, []
        with self.generate_lock:  # the tokenizer is not thread-safe either: counting happens under the lock
            if rules.max_prompt_tokens is not None:
                counted = self.prompt_tokens(messages)
                if counted is not None and counted > rules.max_prompt_tokens:
                    raise Refused(413, f"prompt of {counted} tokens exceeds this tier's {rules.max_prompt_tokens}",
                                  "llm.prompt_tokens")
            self.lm.deadline_s = rules.deadline_s  # enforced between tokens (None: no deadline)
            reply = self.lm.chat(messages, max_new_tokens=max_new_tokens)
        text, finish = reply.text, reply.finished
        if finish == "length" and max_new_tokens == rules.max_new_tokens:
            hits.append("ceiling.tokens")
        if finish == "deadline":  # the client sees "length": the reply was cut short, as by a token ceiling
            hits.append("ceiling.deadline")
            finish = "length"
        if rules.leak is not None:
            system = next((m["content"] for m in self.lm.with_system(messages) if m["role"] == "system"), None)
            leak = find_leak(text, system, rules.canaries, rules.fuzzy, rules.prompt_overlap)
            if leak is not None:
                hits.append(leak.rule)
                if rules.leak == "redact":
                    text, finish = LEAK_NOTICE, "content_filter"
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        usage = {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                 "total_tokens": reply.prompt_tokens + reply.completion_tokens}
        return {"choice": choice, "usage": usage, "logprobs": reply.logprobs}, hits, usage["total_tokens"]


def _error(status: int, message: str, code: str, retry_after: float | None = None) -> Any:
    from starlette.responses import JSONResponse

    headers = {} if retry_after is None else {"Retry-After": str(max(1, int(retry_after + 0.999)))}
    kind = "invalid_request_error" if status < 429 else "rate_limit_error"
    return JSONResponse({"error": {"message": message, "type": kind, "code": code}}, status_code=status,
                        headers=headers)


def parse_request(raw: Any, tier: Tier) -> tuple[list[dict[str, str]], int, bool]:
    """(messages, max_new_tokens, logprobs) of a chat request, or Refused (400)."""
    if not isinstance(raw, dict) or "messages" not in raw:
        raise Refused(400, 'expected a JSON object {"messages": [...]}', "input.schema")
    if raw.get("stream"):
        raise Refused(400, "streaming is not supported: send stream: false", "input.schema")
    try:
        messages = check_messages(raw["messages"])
    except ParameterError as exc:
        raise Refused(400, str(exc), "input.schema") from None
    ceiling = tier.llm.max_new_tokens
    n = raw.get("max_tokens", raw.get("max_completion_tokens", ceiling))
    n = ceiling if n is None else n
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise Refused(400, f"max_tokens must be a positive integer, got {n!r}", "input.schema")
    if n > ceiling:
        raise Refused(400, f"max_tokens {n} exceeds this tier's ceiling of {ceiling}", "llm.max_tokens")
    return messages, n, bool(raw.get("logprobs"))


def make_llm_app(guard: LMGuard) -> Any:
    """The Starlette application serving `guard`."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from bastion.guard.openapi import openapi_llm_spec

    spec = openapi_llm_spec()

    async def models(request: Request) -> Response:
        if guard.policy.resolve(api_key(request)) is None:
            return _error(401, "unknown or missing API key", "auth")
        return JSONResponse({"object": "list", "data": [{"id": guard.name, "object": "model",
                                                         "owned_by": "bastion"}]})

    async def chat(ex: Exchange, raw: Any) -> Response:
        tier = ex.tier
        messages, n, want_logprobs = parse_request(raw, tier)
        state = guard.state(ex.key, tier)
        with state.lock:
            state.admit()
        rules = tier.llm
        found_patterns = scan_messages(messages) if rules.injection is not None else []
        if found_patterns:
            ex.hits.append("llm.injection")
        if found_patterns and rules.injection == "reject":
            ex.verdict = "deny"
            content, finish, usage, logprobs = (INJECTION_NOTICE.format(", ".join(found_patterns)),
                                                "content_filter", {"prompt_tokens": 0, "completion_tokens": 0,
                                                                   "total_tokens": 0}, None)
        else:
            try:
                out, found_hits, ex.n = await run_in_threadpool(guard.complete, tier, messages, n)
            except ParameterError as exc:  # e.g. the prompt does not fit the model's context
                raise Refused(400, str(exc), "input.size") from None
            ex.hits += found_hits
            content, finish = out["choice"]["message"]["content"], out["choice"]["finish_reason"]
            usage, logprobs = out["usage"], out["logprobs"]
            ex.verdict = "deny" if finish == "content_filter" else ("flag" if ex.hits else "allow")
            with state.lock:
                state.used_tokens += ex.n
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": content},
                                  "finish_reason": finish}
        if want_logprobs and logprobs is not None and finish != "content_filter":
            choice["logprobs"] = {"content": [{"token": "", "logprob": x} for x in logprobs]}
        return JSONResponse({"id": f"chatcmpl-{int(time.time() * 1000)}", "object": "chat.completion",
                             "created": int(time.time()), "model": guard.name, "choices": [choice],
                             "usage": usage})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "isolation": guard.isolation, "model": guard.name})

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(guard.registry), media_type=CONTENT_TYPE_LATEST)

    async def openapi(request: Request) -> Response:
        return JSONResponse(spec)

    routes = [Route("/v1/models", models, methods=["GET"]),
              Route("/v1/chat/completions", guarded_post(guard, chat, _error), methods=["POST"]),
              Route("/healthz", healthz), Route("/metrics", metrics), Route("/openapi.json", openapi)]
    return Starlette(routes=routes)
