"""One language-model target (`LMTarget`) over three kinds of bytes and URLs; `open_lm(spec)` picks the backend.

Public interface (stable; the LLM probes, GCG/jailbreaks and availability attacks build on it):

    from bastion.lm import open_lm, Sampling
    lm = open_lm(spec, system_prompt=None, sampling=Sampling(), max_queries=None, trust=False,
                 api_key_env=None, api_model=None, timeout=60.0, backend="auto")
    reply = lm.chat([{"role": "user", "content": "hi"}], max_new_tokens=None)   # -> Reply
    reply = lm.complete("Once upon a time", max_new_tokens=None)                  # raw continuation -> Reply
    reply.text, reply.prompt_tokens, reply.completion_tokens, reply.finished ("stop" | "length" | "deadline"),
    reply.seconds, reply.logprobs (log p of each completion token, or None when the backend offers none)
    lm.deadline_s = 2.0  # enforced per-request wall-clock deadline (local backends): generation stops there
    lm.queries, lm.prompt_tokens, lm.completion_tokens, lm.max_queries   # counters over the target's life
    lm.access            # "white-box" (HF folder, GGUF through transformers) or "text" (endpoints)
    lm.model_and_tokenizer()   # white-box only: the torch causal LM (eval mode) and its HF tokenizer
    lm.render(messages)        # the prompt string the model sees (system prompt included)
    HFTarget.from_model(model, tokenizer, system_prompt=...)   # bastion.lm.hf_target: wrap an in-memory LM

`spec` is a Hugging Face folder (config.json + safetensors + tokenizer), a `.gguf` file, or an OpenAI-compatible
base URL `http(s)://host[:port]/v1`. The target's system prompt is prepended to `chat` messages unless they already
start with a system message. Each `chat`/`complete` is one query; when `max_queries` are spent the next call raises
`bastion.core.errors.QueryBudgetExceeded` before touching the model, and the counters keep what was used, so a
caller returns partial results. Sampling: temperature 0 is greedy (the default, deterministic); otherwise
top-p sampling seeded from `Sampling.seed` and the query index (the same run gives the same replies).
Chat templates: see `bastion.lm.chat_format` (sandboxed rendering, and the fallback format for models without one).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bastion.core.errors import AccessError, BastionError, ParameterError, QueryBudgetExceeded
from bastion.lm.chat_format import check_messages

MAX_NEW_TOKENS = 4096  # hard ceiling on one reply, whatever a caller asks


class TargetError(BastionError):
    """A language-model target failed to answer (unreachable or misbehaving endpoint, unusable reply)."""


@dataclass(frozen=True)
class Sampling:
    """Decoding parameters: temperature 0 = greedy; `max_new_tokens` is the default reply length."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    max_new_tokens: int = 256

    def __post_init__(self) -> None:
        if not 0.0 <= self.temperature <= 100.0:
            raise ParameterError(f"temperature must be in [0, 100], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ParameterError(f"top_p must be in (0, 1], got {self.top_p}")
        check_new_tokens(self.max_new_tokens)


def check_new_tokens(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_NEW_TOKENS:
        raise ParameterError(f"max_new_tokens must be an integer in [1, {MAX_NEW_TOKENS}], got {n!r}")
    return n


@dataclass
class Reply:
    """One answer of the target."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finished: str  # "stop" (end of turn / EOS / stop string), "length" (max_new_tokens reached), "deadline" (the
    #                target's `deadline_s` stopped generation) or, from an endpoint, "content_filter" (a guard's or
    #                provider's filter answered instead of the model)
    seconds: float
    logprobs: list[float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class LMTarget(ABC):
    """Base of the backends: system prompt, sampling, counting and budget; backends implement `_chat`/`_complete`."""

    access = "text"
    enforces_deadline = False  # whether the backend can stop a generation at `deadline_s` (local backends)

    def __init__(self, spec: str, *, system_prompt: str | None = None, sampling: Sampling | None = None,
                 max_queries: int | None = None):
        if max_queries is not None and (isinstance(max_queries, bool) or not isinstance(max_queries, int)
                                        or max_queries < 1):
            raise ParameterError(f"max_queries must be a positive integer, got {max_queries!r}")
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise ParameterError("system_prompt must be a string")
        self.spec, self.system_prompt = spec, system_prompt
        self.sampling = sampling or Sampling()
        self.max_queries = max_queries
        self.queries = self.prompt_tokens = self.completion_tokens = 0
        self._deadline_s: float | None = None

    @property
    def deadline_s(self) -> float | None:
        """Per-request wall-clock deadline in seconds (None: none): generation stops when it passes, and the reply
        says `finished == "deadline"`. Only backends that generate locally can enforce it; an endpoint's server
        must (e.g. `bastion guard`'s policy), so setting it on one is refused rather than silently unenforced."""
        return self._deadline_s

    @deadline_s.setter
    def deadline_s(self, seconds: float | None) -> None:
        if seconds is not None:
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds < 86_400:
                raise ParameterError(f"deadline_s must be a number of seconds in (0, 86400), got {seconds!r}")
            if not self.enforces_deadline:
                raise ParameterError(f"{self.spec}: this backend cannot stop a generation at a deadline; enforce "
                                     "it in the server that runs the model (e.g. bastion guard)")
        self._deadline_s = None if seconds is None else float(seconds)

    # -- public ----------------------------------------------------------------------------------------------------
    def with_system(self, messages: Sequence[dict[str, str]]) -> list[dict[str, str]]:
        """The messages with the target's system prompt first (unless they bring their own)."""
        msgs = check_messages(messages)
        if self.system_prompt is not None and msgs[0]["role"] != "system":
            msgs = [{"role": "system", "content": self.system_prompt}, *msgs]
        return msgs

    def chat(self, messages: Sequence[dict[str, str]], *, max_new_tokens: int | None = None) -> Reply:
        """One chat turn: the assistant's reply to `messages` (system prompt prepended)."""
        msgs = self.with_system(messages)
        return self._query(lambda n: self._chat(msgs, n), max_new_tokens)

    def complete(self, prompt: str, *, max_new_tokens: int | None = None) -> Reply:
        """Raw continuation of `prompt` (no chat template, no system prompt): for base models."""
        if not isinstance(prompt, str):
            raise ParameterError("prompt must be a string")
        return self._query(lambda n: self._complete(prompt, n), max_new_tokens)

    def render(self, messages: Sequence[dict[str, str]]) -> str:
        """The prompt text the model is given for `messages` (white-box backends; endpoints render server-side)."""
        raise AccessError(f"{self.spec}: the chat template is applied by the server; the prompt text is not known")

    def model_and_tokenizer(self) -> tuple[Any, Any]:
        """The torch model and tokenizer (white-box targets only)."""
        raise AccessError(f"{self.spec} is a text-only target (an endpoint): no weights, logits or gradients")

    @property
    def remaining(self) -> int | None:
        return None if self.max_queries is None else self.max_queries - self.queries

    def close(self) -> None:
        """Release what the backend holds (nothing by default)."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"spec": str(self.spec), "access": self.access, "queries": self.queries,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "max_queries": self.max_queries, "backend": type(self).__name__}

    # -- backends --------------------------------------------------------------------------------------------------
    @abstractmethod
    def _chat(self, messages: list[dict[str, str]], max_new_tokens: int) -> Reply:
        """One chat turn from the backend."""

    def _complete(self, prompt: str, max_new_tokens: int) -> Reply:
        """A raw completion; a backend that serves chat only keeps this default."""
        raise TargetError(f"{self.spec}: this target serves chat only; raw completion is not available")

    def _query(self, call: Any, max_new_tokens: int | None) -> Reply:
        n = check_new_tokens(self.sampling.max_new_tokens if max_new_tokens is None else max_new_tokens)
        if self.max_queries is not None and self.queries + 1 > self.max_queries:
            raise QueryBudgetExceeded(self.max_queries, self.queries, 1)
        started = time.perf_counter()
        reply = call(n)
        self.queries += 1
        self.prompt_tokens += reply.prompt_tokens
        self.completion_tokens += reply.completion_tokens
        reply.seconds = time.perf_counter() - started
        return reply


def is_url(spec: str) -> bool:
    return str(spec).lower().startswith(("http://", "https://"))


def is_language_model(spec: str | Path) -> bool:
    """Whether `spec` names a language model: an OpenAI-compatible `http(s)://host[:port]/v1` URL, a `.gguf` file,
    or a Hugging Face folder (config.json beside a tokenizer). Classifier files and other URLs are not."""
    text = str(spec)
    if is_url(text):
        from urllib.parse import urlsplit

        return urlsplit(text).path.rstrip("/").endswith("/v1")
    path = Path(text)
    if path.suffix.lower() == ".gguf":
        return True
    return path.is_dir() and (path / "config.json").is_file() and any(
        (path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


def open_lm(spec: str | Path, *, system_prompt: str | None = None, sampling: Sampling | None = None,
            max_queries: int | None = None, trust: bool = False, api_key_env: str | None = None,
            api_model: str | None = None, timeout: float = 60.0, backend: str = "auto") -> LMTarget:
    """Open a language model: a Hugging Face folder, a `.gguf` file or an OpenAI-compatible `http(s)://.../v1` URL.

    Local files are scanned by the supply-chain scanner first and loaded only when clean (pickled weights only with
    `trust`); endpoints take an API key from the environment variable named `api_key_env` (never from argv).
    `backend`: "auto" (transformers for local files), "transformers", or "llama-cpp" (a `.gguf` file through
    llama-cpp-python when it is installed: faster, text access only)."""
    if backend not in ("auto", "transformers", "llama-cpp"):
        raise ParameterError(f"unknown LM backend {backend!r}: use auto, transformers or llama-cpp")
    common = {"system_prompt": system_prompt, "sampling": sampling, "max_queries": max_queries}
    if is_url(str(spec)):
        from bastion.lm.endpoint_target import EndpointTarget

        return EndpointTarget(str(spec), api_key_env=api_key_env, api_model=api_model, timeout=timeout, **common)
    if backend == "llama-cpp":
        from bastion.lm.llamacpp_target import LlamaCppTarget

        return LlamaCppTarget(str(spec), **common)
    from bastion.lm.hf_target import HFTarget

    return HFTarget(str(spec), trust=trust, **common)
