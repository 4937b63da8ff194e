"""`bastion attack llm membership|exposure MODEL --option value ...`: the probe's own options, parsed and checked,
to a Result. The target (`bastion.lm.LMTarget`) is opened by the CLI (`bastion.cli.llm`), which also owns the options
every LLM probe shares (--system-prompt, --max-new-tokens, --api-key-env, ...)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bastion.core.errors import ParameterError
from bastion.core.results import Result

from .exposure import CanaryExposure
from .membership import LMMembership
from .token_scores import load_lm, read_texts

OPTIONS = {
    "membership": {"members", "nonmembers", "reference", "k", "max-tokens", "n-bootstrap"},
    "exposure": {"secret", "prefix", "alphabet", "length", "max-enumerate", "n-samples", "texts", "prefix-tokens",
                 "suffix-tokens"},
}


def parse_options(name: str, args: list[str]) -> dict[str, str]:
    """`--key value` pairs, each key one of the command's options."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        key = args[i]
        if not key.startswith("--") or key[2:] not in OPTIONS[name]:
            raise ParameterError(f"llm {name}: unknown option {key!r} (options: "
                                 f"{', '.join('--' + o for o in sorted(OPTIONS[name]))})")
        if i + 1 >= len(args):
            raise ParameterError(f"llm {name}: {key} needs a value")
        out[key[2:]], i = args[i + 1], i + 2
    return out


def _number(opts: dict[str, str], key: str, kind: Callable[[str], Any]) -> dict[str, Any]:
    if key not in opts:
        return {}
    try:
        return {key.replace("-", "_"): kind(opts[key])}
    except ValueError as exc:
        raise ParameterError(f"--{key} must be a number, got {opts[key]!r}") from exc


def run_membership(target: Any, opts: dict[str, str], seed: int) -> Result:
    for key in ("members", "nonmembers"):
        if key not in opts:
            raise ParameterError(f"llm membership needs --{key} FILE (one record per line, or .jsonl)")
    members, nonmembers = read_texts(opts["members"], "members"), read_texts(opts["nonmembers"], "non-members")
    attack = LMMembership(**_number(opts, "k", float), **_number(opts, "max-tokens", int),
                          **_number(opts, "n-bootstrap", int), seed=seed)
    reference = load_lm(opts["reference"]) if "reference" in opts else None
    return attack.run(target, members=members, nonmembers=nonmembers, reference=reference)


def run_exposure(target: Any, opts: dict[str, str], seed: int) -> Result:
    if "secret" not in opts:
        raise ParameterError("llm exposure needs --secret (the inserted canary's random part)")
    params: dict[str, Any] = {k: opts[k] for k in ("prefix", "alphabet") if k in opts}
    params["length"] = int(len(opts["secret"]))
    for key in ("max-enumerate", "n-samples", "prefix-tokens", "suffix-tokens"):
        params.update(_number(opts, key, int))
    texts = read_texts(opts["texts"], "texts") if "texts" in opts else None
    return CanaryExposure(**params, seed=seed).run(target, secret=opts["secret"], texts=texts)


COMMANDS: dict[str, Callable[[Any, dict[str, str], int], Result]] = {
    "membership": run_membership,
    "exposure": run_exposure,
}


def run_llm_attack(name: str, model: Any, args: list[str], seed: int = 0) -> Result:
    """Run membership or exposure on `model` (an LMTarget, a (model, tokenizer) pair, or a local path)."""
    if name not in COMMANDS:
        raise ParameterError(f"unknown llm attack {name!r}: use one of {', '.join(sorted(COMMANDS))}")
    target = load_lm(model) if isinstance(model, str) else model
    return COMMANDS[name](target, parse_options(name, args), seed)
