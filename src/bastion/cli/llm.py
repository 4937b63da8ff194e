"""`bastion attack llm PROBE MODEL [options]`: open the language-model target once, then run one probe on it.

MODEL is a Hugging Face folder, a `.gguf` file or an OpenAI-compatible `http(s)://host[:port]/v1` URL
(`bastion.lm.open_lm`). Options shared by every probe, parsed here:

    --system-prompt FILE   the target's system prompt (UTF-8 text)
    --max-new-tokens N     reply length per query (default 256, at most bastion.lm.MAX_NEW_TOKENS)
    --temperature T        0 = greedy (default); --top-p P; the seed is the attack command's --seed
    --api-key-env NAME     endpoint API key read from this environment variable (never from argv)
    --api-model NAME       endpoint model name (default: the first one /v1/models lists)
    --timeout S            endpoint request timeout in seconds (default 60)
    --backend NAME         auto (default), transformers, or llama-cpp (a .gguf through llama-cpp-python, text only)
--max-queries, --trust, --seed, --json and --fail-on are the `bastion attack` options. Everything else goes to
the probe (its own `--key value` options).

PROBES is the table of probes: name -> (module, function, white-box only). A runner is
`function(target: LMTarget, args: list[str], seed: int) -> Result`, given the probe's own options unparsed.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, NamedTuple

from bastion.core.errors import BastionError, ParameterError
from bastion.core.results import Result


class Probe(NamedTuple):
    module: str
    function: str
    white_box: bool
    summary: str


PROBES: dict[str, Probe] = {
    "membership": Probe("bastion.cli.llm", "_membership", True, "LM membership inference (LOSS, zlib, Min-K%, "
                        "Min-K%++, reference model)"),
    "exposure": Probe("bastion.cli.llm", "_exposure", True, "Secret-Sharer canary exposure"),
    "leak": Probe("bastion.attacks.llm.leakage", "run_leak_cli", False, "system-prompt and secret leakage (canary)"),
    "inject": Probe("bastion.attacks.llm.injection", "run_inject_cli", False, "prompt injection, direct and indirect"),
    "gcg": Probe("bastion.attacks.llm.gcg", "run_gcg_cli", True, "GCG adversarial suffix (Zou et al. 2023)"),
    "jailbreak": Probe("bastion.attacks.llm.jailbreak", "run_jailbreak_cli", False,
                       "black-box jailbreaks (templates, encodings, many-shot, PAIR), judge-corrected rates"),
    "overgen": Probe("bastion.attacks.availability.lm_cli", "run_overgen_cli", False,
                     "over-generation prompts: tokens and seconds per request against natural prompts and the cap"),
    "eos-suppress": Probe("bastion.attacks.availability.lm_cli", "run_eos_cli", True,
                          "EOS-suppression suffix (Engorgio's EOS escape by GCG): replies driven to the cap"),
    "generation-cap": Probe("bastion.defenses.availability.cap_cli", "run_generation_cap_cli", False,
                            "defense: a lower generation cap re-measured against over-generation and natural "
                            "prompts (`bastion defend generation-cap`)"),
    "generation-deadline": Probe("bastion.defenses.availability.cap_cli", "run_generation_deadline_cli", False,
                                 "defense: an enforced per-request deadline re-measured against over-generation "
                                 "and natural prompts (`bastion defend generation-deadline`)"),
}
LM_AVAILABILITY = ("overgen", "eos-suppress")  # `bastion attack availability NAME` routes these here

SHARED = {"system-prompt", "max-new-tokens", "temperature", "top-p", "api-key-env", "api-model", "timeout",
          "backend"}


def _membership(target: Any, args: list[str], seed: int) -> Result:
    from bastion.attacks.llm.commands import run_llm_attack

    return run_llm_attack("membership", target, args, seed)


def _exposure(target: Any, args: list[str], seed: int) -> Result:
    from bastion.attacks.llm.commands import run_llm_attack

    return run_llm_attack("exposure", target, args, seed)


def split_shared(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """The shared `--key value` options, and the rest (the probe's own) in order."""
    shared: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(args):
        key = args[i]
        name = key[2:].split("=", 1)[0] if key.startswith("--") else ""
        if name in SHARED:
            if "=" in key:
                shared[name], i = key.split("=", 1)[1], i + 1
                continue
            if i + 1 >= len(args):
                raise ParameterError(f"{key} needs a value")
            shared[name], i = args[i + 1], i + 2
        else:
            rest.append(key)
            i += 1
    return shared, rest


def _number(opts: dict[str, str], key: str, kind: type) -> Any:
    try:
        return kind(opts[key])
    except ValueError:
        raise ParameterError(f"--{key} must be a number, got {opts[key]!r}") from None


def open_target(model: str, shared: dict[str, str], *, seed: int, max_queries: int | None, trust: bool) -> Any:
    """The LMTarget for MODEL with the shared options applied (bad input: one BastionError line)."""
    from bastion.lm import Sampling, open_lm

    system = None
    if "system-prompt" in shared:
        path = Path(shared["system-prompt"])
        try:
            system = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ParameterError(f"--system-prompt {path}: cannot read it ({getattr(exc, 'strerror', exc)})") from None
    sampling = Sampling(temperature=_number(shared, "temperature", float) if "temperature" in shared else 0.0,
                        top_p=_number(shared, "top-p", float) if "top-p" in shared else 1.0, seed=seed,
                        max_new_tokens=_number(shared, "max-new-tokens", int) if "max-new-tokens" in shared else 256)
    return open_lm(model, system_prompt=system, sampling=sampling, max_queries=max_queries, trust=trust,
                   api_key_env=shared.get("api-key-env"), api_model=shared.get("api-model"),
                   timeout=_number(shared, "timeout", float) if "timeout" in shared else 60.0,
                   backend=shared.get("backend", "auto"))


def run_llm(name: str, model: str, args: list[str], *, seed: int = 0, max_queries: int | None = None,
            trust: bool = False) -> Result:
    """`bastion attack llm NAME MODEL ...` up to the Result (printing is the caller's)."""
    if name not in PROBES:
        raise ParameterError(f"unknown llm probe {name!r}: use one of {', '.join(sorted(PROBES))}")
    if max_queries is not None and max_queries < 1:
        raise ParameterError(f"--max-queries must be at least 1, got {max_queries}")
    probe = PROBES[name]
    shared, rest = split_shared(args)
    target = open_target(model, shared, seed=seed, max_queries=max_queries, trust=trust)
    if probe.white_box and target.access != "white-box":
        raise ParameterError(f"llm {name} needs white-box access (a local folder or .gguf file), not {model}")
    try:
        runner = getattr(importlib.import_module(probe.module), probe.function)
    except (ImportError, AttributeError) as exc:
        raise BastionError(f"llm {name}: its module is not available ({exc})") from None
    result = runner(target, rest, seed)
    result.params.setdefault("target", target.describe())
    result.queries = max(result.queries, target.queries)
    return result
