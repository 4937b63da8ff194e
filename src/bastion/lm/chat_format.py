"""Turning chat messages into one prompt string: the model's own chat template in a Jinja2 sandbox, or a plain
fallback for models without one (the tiny LMs of the tests).

A chat template is attacker-controlled text shipped with the model (tokenizer_config.json, chat_template.jinja or
GGUF metadata). It is judged on its syntax tree first (`bastion.supplychain.template_ast`, the same check the scanner
runs) and rendered only by `jinja2.sandbox.ImmutableSandboxedEnvironment`, which refuses `_`-prefixed attributes and
mutation of its inputs (the runtime-side fix of CVE-2024-34359).

The fallback format (exact, byte for byte), for messages m1..mn and `add_generation_prompt=True`:

    <system>\\n{system content}\\n<user>\\n{user content}\\n<assistant>\\n{assistant content}\\n ... <assistant>\\n

i.e. each message is `"<" + role + ">\\n" + content + "\\n"`, and the generation prompt is `"<assistant>\\n"`.
Generation under the fallback stops at the tokenizer's EOS token or at the start of a new turn (`FALLBACK_STOPS`:
`"\\n<user>"`, `"\\n<system>"` or `"\\n<assistant>"`); the text from the stop string on is cut off, and generation
halts as soon as one appears. The model input is the tokenizer's BOS token (when it has one, else its EOS token, as
`TinyLM` trains) followed by the tokens of the rendered text. To train a tiny LM that answers in this format, train
on `render_fallback(messages, add_generation_prompt=True) + reply + "\\n<user>\\n"`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bastion.core.errors import ModelLoadError, ParameterError

ROLES = ("system", "user", "assistant")
FALLBACK_STOPS = ("\n<user>", "\n<system>", "\n<assistant>")


def check_messages(messages: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """Messages as a list of {"role", "content"} with known roles and string contents, or a clear error."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise ParameterError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ParameterError(f"message {i + 1}: needs 'role' in {', '.join(ROLES)} and a string 'content'")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def render_fallback(messages: Sequence[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """The plain fallback format (see the module docstring)."""
    text = "".join(f"<{m['role']}>\n{m['content']}\n" for m in check_messages(messages))
    return text + ("<assistant>\n" if add_generation_prompt else "")


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """`text` up to the first stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text, False) if cut < 0 else (text[:cut], True)


def _raise(message: str) -> None:
    raise ParameterError(f"the model's chat template refused the messages: {str(message)[:200]}")


def render_template(template: str, messages: Sequence[dict[str, str]], special: dict[str, Any] | None = None,
                    add_generation_prompt: bool = True) -> str:
    """Render a model's Jinja2 chat template in the immutable sandbox, after judging its syntax tree."""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from bastion.supplychain.template_ast import template_problems

    problems = [p for p in template_problems(template) if p.severity != "low"]
    if problems:
        raise ModelLoadError(f"refusing the model's chat template: it {problems[0].what}")
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise
    context = {k: v for k, v in (special or {}).items() if isinstance(v, str)}
    try:
        return env.from_string(template).render(messages=check_messages(messages), tools=None,
                                                add_generation_prompt=add_generation_prompt, **context)
    except ParameterError:
        raise
    except (TemplateError, TypeError, ValueError, RecursionError) as exc:
        raise ModelLoadError(f"the model's chat template cannot be rendered: {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:200] if str(exc) else ''}") from None
