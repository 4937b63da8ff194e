"""Optional fast text backend for GGUF files: `llama-cpp-python`, used only when it is importable (never a dependency)
and asked for (`open_lm(path, backend="llama-cpp")`, `--backend llama-cpp`).

The file is scanned first, as for the transformers backend. The chat template is rendered by Bastion in the
immutable Jinja2 sandbox (`bastion.lm.chat_format`) and the result is sent as a raw completion: llama-cpp-python's
own chat handlers are never used (its unsandboxed template rendering was CVE-2024-34359). Replies are OpenAI-schema
dicts and go through the endpoint parser. Access is text only (no torch gradients); no log-probabilities (they would
need `logits_all`, a context x vocabulary buffer of gigabytes for Gemma's 262k tokens).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

from bastion.core.errors import ModelLoadError
from bastion.lm.chat_format import FALLBACK_STOPS, render_fallback, render_template
from bastion.lm.endpoint_target import parse_reply
from bastion.lm.lm_target import LMTarget, Reply, Sampling


def llama_cpp_available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


class LlamaCppTarget(LMTarget):
    """A GGUF file run by llama.cpp through llama-cpp-python (text access)."""

    access = "text"

    def __init__(self, spec: str, *, n_ctx: int = 4096, system_prompt: str | None = None,
                 sampling: Sampling | None = None, max_queries: int | None = None):
        super().__init__(spec, system_prompt=system_prompt, sampling=sampling, max_queries=max_queries)
        from bastion.lm.hf_target import scan_or_refuse

        path = Path(spec)
        if not path.is_file() or path.suffix.lower() != ".gguf":
            raise ModelLoadError(f"{spec}: the llama-cpp backend needs a .gguf file")
        scan_or_refuse(path)
        try:
            from llama_cpp import Llama
        except ImportError:
            raise ModelLoadError("the llama-cpp backend needs llama-cpp-python (not installed)") from None
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                self.llm = Llama(model_path=str(path), n_ctx=n_ctx, seed=self.sampling.seed, verbose=False)
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelLoadError(f"{path.name}: llama.cpp cannot load it: {str(exc)[:200]}") from None
        meta = getattr(self.llm, "metadata", None) or {}
        template = meta.get("tokenizer.chat_template") if isinstance(meta, dict) else None
        self.template = template if isinstance(template, str) and template.strip() else None
        self.bos = self._piece(self.llm.token_bos())
        self.eos = self._piece(self.llm.token_eos())

    def _piece(self, token: int) -> str:
        try:
            return self.llm.detokenize([token], special=True).decode("utf-8", "replace")
        except (TypeError, ValueError, RuntimeError):
            return ""

    def render(self, messages: list[dict[str, str]]) -> str:
        msgs = self.with_system(messages)
        if self.template is None:
            return render_fallback(msgs)
        text = render_template(self.template, msgs, {"bos_token": self.bos, "eos_token": self.eos})
        return text[len(self.bos):] if self.bos and text.startswith(self.bos) else text  # llama.cpp adds BOS

    def _run(self, prompt: str, max_new_tokens: int, stops: tuple[str, ...]) -> Reply:
        s = self.sampling
        try:
            out = self.llm.create_completion(prompt=prompt, max_tokens=max_new_tokens, temperature=s.temperature,
                                             top_p=s.top_p, seed=s.seed * 1_000_003 + self.queries,
                                             stop=list(stops) or None)
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"{self.spec}: llama.cpp failed: {str(exc)[:200]}") from None
        return parse_reply(out if isinstance(out, dict) else {}, False, str(self.spec))

    def _chat(self, messages: list[dict[str, str]], max_new_tokens: int) -> Reply:
        return self._run(self.render(messages), max_new_tokens, FALLBACK_STOPS if self.template is None else ())

    def _complete(self, prompt: str, max_new_tokens: int) -> Reply:
        return self._run(prompt, max_new_tokens, ())

    def close(self) -> None:
        closer: Any = getattr(self.llm, "close", None)
        if callable(closer):
            closer()
