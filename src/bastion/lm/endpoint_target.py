"""An OpenAI-compatible endpoint (`http(s)://host[:port]/v1`: Ollama, vLLM, the llama.cpp server) as a text target.

`POST /v1/chat/completions` for chat and `POST /v1/completions` for raw continuation, through the standard library
(no HTTP dependency). Every reply is read with a size cap and checked field by field: a server that answers with
something else than the OpenAI schema (wrong types, missing fields, absurd numbers, huge bodies, redirects) gives
one `TargetError` line. Log-probabilities are requested and used when the server offers them. The API key comes
only from an environment variable named by the caller (`--api-key-env NAME`), never from the command line.
"""

from __future__ import annotations

import json
import math
import os
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from bastion.core.errors import ModelLoadError, ParameterError
from bastion.lm.lm_target import LMTarget, Reply, Sampling, TargetError

MAX_BODY = 8 * 1024 * 1024  # bytes of one response
MAX_TOKENS_FIELD = 10**9


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        raise TargetError(f"the endpoint redirected ({code}) to {newurl[:100]}; give the final URL")


def _int_field(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKENS_FIELD:
        raise TargetError(f"the endpoint's reply has an invalid {what}: {str(value)[:40]!r}")
    return value


def parse_reply(reply: dict, chat: bool, where: str) -> Reply:
    """An OpenAI-schema completion (chat or text) as a Reply, every field checked (one TargetError line if not)."""
    choices = reply.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise TargetError(f"{where}: the reply has no 'choices'")
    choice = choices[0]
    if chat:
        message = choice.get("message")
        text = message.get("content") if isinstance(message, dict) else None
        text = "" if text is None and isinstance(message, dict) else text
    else:
        text = choice.get("text")
    if not isinstance(text, str):
        raise TargetError(f"{where}: the reply's {'message content' if chat else 'text'} is not a string")
    # "content_filter" is kept: a guard's (or the provider's) refusal is not the model's own end of turn
    reason = choice.get("finish_reason")
    finished = reason if reason in ("length", "content_filter") else "stop"
    usage = reply.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    prompt_tokens = _int_field(usage.get("prompt_tokens", 0), "prompt_tokens")
    completion_tokens = _int_field(usage.get("completion_tokens", 0), "completion_tokens")
    return Reply(text, prompt_tokens, completion_tokens, finished, 0.0, _logprobs(choice.get("logprobs"), chat),
                 {"usage_reported": bool(usage)})


def _logprobs(block: Any, chat: bool) -> list[float] | None:
    if not isinstance(block, dict):
        return None
    items = ([c.get("logprob") if isinstance(c, dict) else None for c in block.get("content") or []]
             if chat else block.get("token_logprobs"))
    if not isinstance(items, list) or not items:
        return None
    out = []
    for x in items:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not (math.isfinite(x) or x == -math.inf):
            return None
        out.append(max(float(x), -1e30) if x <= 0 else 0.0)
    return out


class EndpointTarget(LMTarget):
    """Text access to a served LM; the server applies its own chat template."""

    access = "text"

    def __init__(self, url: str, *, api_key_env: str | None = None, api_model: str | None = None,
                 timeout: float = 60.0, system_prompt: str | None = None, sampling: Sampling | None = None,
                 max_queries: int | None = None):
        super().__init__(url, system_prompt=system_prompt, sampling=sampling, max_queries=max_queries)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ModelLoadError(f"{url}: not an endpoint URL (expected http(s)://host[:port]/v1)")
        if not 0 < timeout <= 3600:
            raise ParameterError(f"timeout must be in (0, 3600] seconds, got {timeout}")
        self.base = url.rstrip("/")
        self.timeout = timeout
        self.key = None
        if api_key_env:
            self.key = os.environ.get(api_key_env)
            if not self.key:
                raise ParameterError(f"--api-key-env {api_key_env}: that environment variable is not set")
        self.offers_logprobs: bool | None = None  # unknown until the first reply
        self._opener = urllib.request.build_opener(_NoRedirect)
        self.model_name = api_model or self._first_model()

    # -- HTTP ------------------------------------------------------------------------------------------------------
    def _request(self, path: str, body: dict | None = None) -> dict:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, headers=headers,
                                     method="GET" if body is None else "POST")
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                raw = resp.read(MAX_BODY + 1)
        except urllib.error.HTTPError as exc:
            detail = exc.read(2000).decode("utf-8", "replace").strip().replace("\n", " ")[:200]
            raise TargetError(f"{self.base}{path}: HTTP {exc.code} {exc.reason}" + (f": {detail}" if detail else
                                                                                      "")) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TargetError(f"{self.base}{path}: cannot reach the endpoint ({reason})") from None
        if len(raw) > MAX_BODY:
            raise TargetError(f"{self.base}{path}: reply larger than {MAX_BODY // 2**20} MiB, refused")
        try:
            reply = json.loads(raw.decode("utf-8"), parse_constant=lambda c: None)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise TargetError(f"{self.base}{path}: the reply is not JSON ({str(exc)[:80]})") from None
        if not isinstance(reply, dict):
            raise TargetError(f"{self.base}{path}: the reply is not a JSON object")
        return reply

    def _first_model(self) -> str:
        """The first model the server lists (`GET /v1/models`); also checks that the endpoint answers."""
        try:
            listing = self._request("/models")
        except TargetError as exc:
            raise ModelLoadError(f"cannot open {self.base}: {str(exc).split(': ', 1)[-1]}") from None
        data = listing.get("data")
        if isinstance(data, list) and data and isinstance(data[0], dict) and isinstance(data[0].get("id"), str):
            return data[0]["id"][:200]
        raise ModelLoadError(f"{self.base}/models lists no model; name one with --api-model")

    def _post(self, path: str, body: dict) -> dict:
        s = self.sampling
        body |= {"model": self.model_name, "temperature": s.temperature, "top_p": s.top_p,
                 "seed": s.seed + self.queries, "stream": False}
        if self.offers_logprobs is not False:
            try:
                return self._request(path, body | ({"logprobs": True, "top_logprobs": 0} if "messages" in body
                                                   else {"logprobs": 0}))
            except TargetError as exc:
                if "HTTP 4" not in str(exc) or self.offers_logprobs:
                    raise
                self.offers_logprobs = False  # a server that rejects the field: ask without from now on
        return self._request(path, body)

    # -- backend ---------------------------------------------------------------------------------------------------
    def _chat(self, messages: list[dict[str, str]], max_new_tokens: int) -> Reply:
        return self._parse(self._post("/chat/completions", {"messages": messages, "max_tokens": max_new_tokens}),
                           chat=True)

    def _parse(self, reply: dict, chat: bool) -> Reply:
        out = parse_reply(reply, chat, self.base)
        if self.offers_logprobs is None:
            self.offers_logprobs = out.logprobs is not None
        return out

    def _complete(self, prompt: str, max_new_tokens: int) -> Reply:
        return self._parse(self._post("/completions", {"prompt": prompt, "max_tokens": max_new_tokens}), chat=False)

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"api_model": self.model_name, "logprobs": self.offers_logprobs}
