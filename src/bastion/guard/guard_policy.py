"""The guard's policy: tiers of rules and the API keys that map to them, read from YAML and validated.

Validation is a small schema checker in plain Python: every error is one line naming the offending key
(`tiers.free.rate.per_second: expected a number > 0, got -1`). Keys are stored as SHA-256 hashes of the secret,
never the secret itself (docs/guard.md).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bastion.core.errors import ParameterError
from bastion.defenses.postprocess import OUTPUT_DEFENSES

ACTIONS = ("alert", "throttle", "degrade", "block")
REJECT_ACTIONS = ("alert", "reject")


@dataclass(frozen=True)
class InputRules:
    max_batch: int = 256
    max_body_bytes: int = 8 << 20
    check_range: bool = True


@dataclass(frozen=True)
class RateRules:
    per_second: float | None = None  # token bucket refill (inputs per second); None: no limit
    burst: float = 100.0
    budget: int | None = None  # lifetime queries (inputs) per key


@dataclass(frozen=True)
class ExtractionRules:
    prada_delta: float | None = None  # None: PRADA off
    prada_min_queries: int = 200
    ood_share: float | None = None  # None: the distribution detector off
    ood_quantile: float = 0.99
    ood_min_queries: int = 100
    window: int = 2000
    stateful_quantile: float | None = None  # None: the stateful detector off; else its per-query false-alarm rate
    stateful_k: int = 1  # the score: mean distance to the k nearest of the key's buffered queries
    stateful_hits: int = 10  # close queries within the buffer that flag the key
    stateful_buffer: int = 1000  # the key's most recent queries kept
    monitor_batch: int = 64  # answered queries gathered before the monitors run on them, after the answer is sent
    action: str = "alert"
    throttle_per_second: float = 1.0
    degrade_output: str = "poisoning:1.0"  # what a flagged key's answers become with action "degrade"
    stateful_scope: str = "key"  # "tier": also score each query against the tier's recent queries from every key
    stateful_shared_buffer: int = 2000  # with scope "tier": the tier's most recent queries kept


@dataclass(frozen=True)
class DetectorRules:
    squeeze_fpr: float | None = None  # feature squeezing on at this false-positive rate on --data
    squeeze_bits: int = 4
    strip_frr: float | None = None  # STRIP on at this false-rejection rate on --data
    strip_overlays: int = 8
    action: str = "reject"


@dataclass(frozen=True)
class LLMRules:
    """Rules for a served language model (`bastion guard serve MODEL.gguf|HF-folder`)."""

    max_prompt_tokens: int | None = None  # the rendered prompt's tokens; more: 413
    max_new_tokens: int = 256  # ceiling on a request's max_tokens (more: 400); also its default
    token_budget: int | None = None  # lifetime prompt + completion tokens per key (429 once spent)
    injection: str | None = None  # None: off; "reject": refused in-band (finish_reason content_filter); "alert"
    leak: str | None = None  # None: off; "redact": the reply is withheld (content_filter); "alert"
    canaries: tuple[str, ...] = ()  # secrets never to come back (besides the system prompt's secret-looking words)
    fuzzy: float = 0.2  # a canary within this share of edits counts as leaked
    prompt_overlap: float | None = 0.5  # a reply quoting this share of the system prompt leaks it (None: off)
    deadline_s: float | None = None  # enforced: generation stops when a request has run this long (None: none)


@dataclass(frozen=True)
class Tier:
    name: str
    inputs: InputRules = field(default_factory=InputRules)
    rate: RateRules = field(default_factory=RateRules)
    extraction: ExtractionRules = field(default_factory=ExtractionRules)
    detectors: DetectorRules = field(default_factory=DetectorRules)
    output: str | None = None  # an output-hardening spec (bastion.defenses.postprocess.harden), None: as is
    latency_ms: float | None = None  # ceiling: slower answers are recorded as a rule hit
    llm: LLMRules = field(default_factory=LLMRules)


@dataclass(frozen=True)
class Policy:
    tiers: dict[str, Tier]
    keys: dict[str, tuple[str, str]]  # sha256(secret) -> (key id, tier)
    default_tier: str | None = "default"  # tier of requests without a key (None: a key is required)

    def resolve(self, secret: str | None) -> tuple[str, Tier] | None:
        """(key id, tier) for a request's secret; None when it is unknown or missing and keys are required."""
        if secret:
            found = self.keys.get(hashlib.sha256(secret.encode()).hexdigest())
            return None if found is None else (found[0], self.tiers[found[1]])
        if self.default_tier is None:
            return None
        return "anonymous", self.tiers[self.default_tier]


def default_policy() -> Policy:
    """No key needed, input validation only: what `bastion guard serve MODEL` does without --policy."""
    return Policy({"default": Tier("default")}, {}, "default")


# -- validation ------------------------------------------------------------------------------------------------
def _fail(where: str, message: str) -> ParameterError:
    return ParameterError(f"{where}: {message}")


def _number(value: Any, where: str, low: float | None = None, high: float | None = None, integer: bool = False,
            open_low: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise _fail(where, f"expected {'a whole number' if integer else 'a number'}, got {value!r}")
    if value != value or (low is not None and (value <= low if open_low else value < low)) or (
            high is not None and value > high):
        bound = f"{'>' if open_low else '>='} {low}" if low is not None else ""
        bound += (" and " if bound and high is not None else "") + (f"<= {high}" if high is not None else "")
        raise _fail(where, f"expected a number {bound}, got {value!r}")
    return value


def _section(raw: Any, where: str, allowed: set[str]) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _fail(where, f"expected a mapping, got {type(raw).__name__}")
    for key in raw:
        if key not in allowed:
            raise _fail(f"{where}.{key}", f"unknown key (allowed: {', '.join(sorted(allowed))})")
    return raw


def _choice(value: Any, where: str, options: tuple[str, ...]) -> str:
    if value not in options:
        raise _fail(where, f"expected one of {', '.join(options)}, got {value!r}")
    return str(value)


def _output(value: Any, where: str) -> str | None:
    if value is None or value == "none":
        return None
    if not isinstance(value, str) or value.split(":")[0].strip().lower().replace("-", "_") not in OUTPUT_DEFENSES:
        raise _fail(where, f"expected none or one of {', '.join(OUTPUT_DEFENSES)} (name[:arg]), got {value!r}")
    try:
        [float(a) for a in value.split(":")[1:] if a]
    except ValueError:
        raise _fail(where, f"arguments must be numbers, got {value!r}") from None
    return value


def parse_tier(name: str, raw: Any) -> Tier:
    where = f"tiers.{name}"
    raw = _section(raw, where, {"inputs", "rate", "extraction", "detectors", "output", "latency_ms", "llm"})
    i = _section(raw.get("inputs"), f"{where}.inputs", {"max_batch", "max_body_bytes", "check_range"})
    inputs = InputRules(
        int(_number(i.get("max_batch", 256), f"{where}.inputs.max_batch", 1, 1 << 16, integer=True)),
        int(_number(i.get("max_body_bytes", 8 << 20), f"{where}.inputs.max_body_bytes", 64, 1 << 30, integer=True)),
        bool(_choice(i.get("check_range", True), f"{where}.inputs.check_range", (True, False))))  # type: ignore[arg-type]
    r = _section(raw.get("rate"), f"{where}.rate", {"per_second", "burst", "budget"})
    per = r.get("per_second")
    rate = RateRules(None if per is None else float(_number(per, f"{where}.rate.per_second", 0, open_low=True)),
                     float(_number(r.get("burst", 100), f"{where}.rate.burst", 1)),
                     None if r.get("budget") is None else int(_number(r["budget"], f"{where}.rate.budget", 1,
                                                                      integer=True)))
    e = _section(raw.get("extraction"), f"{where}.extraction",
                 {"prada_delta", "prada_min_queries", "ood_share", "ood_quantile", "ood_min_queries", "window",
                  "stateful_quantile", "stateful_k", "stateful_hits", "stateful_buffer", "monitor_batch",
                  "action", "throttle_per_second", "degrade_output", "stateful_scope", "stateful_shared_buffer"})
    ew = f"{where}.extraction"
    extraction = ExtractionRules(
        None if e.get("prada_delta") is None else float(_number(e["prada_delta"], f"{ew}.prada_delta", 0, 1,
                                                                 open_low=True)),
        int(_number(e.get("prada_min_queries", 200), f"{ew}.prada_min_queries", 3, integer=True)),
        None if e.get("ood_share") is None else float(_number(e["ood_share"], f"{ew}.ood_share", 0, 1,
                                                              open_low=True)),
        float(_number(e.get("ood_quantile", 0.99), f"{ew}.ood_quantile", 0.5, 1)),
        int(_number(e.get("ood_min_queries", 100), f"{ew}.ood_min_queries", 1, integer=True)),
        int(_number(e.get("window", 2000), f"{ew}.window", 10, 100000, integer=True)),
        None if e.get("stateful_quantile") is None else float(_number(e["stateful_quantile"],
                                                                      f"{ew}.stateful_quantile", 0, 0.5)),
        int(_number(e.get("stateful_k", 1), f"{ew}.stateful_k", 1, 100, integer=True)),
        int(_number(e.get("stateful_hits", 10), f"{ew}.stateful_hits", 1, 100000, integer=True)),
        int(_number(e.get("stateful_buffer", 1000), f"{ew}.stateful_buffer", 10, 100000, integer=True)),
        int(_number(e.get("monitor_batch", 64), f"{ew}.monitor_batch", 1, 4096, integer=True)),
        _choice(e.get("action", "alert"), f"{ew}.action", ACTIONS),
        float(_number(e.get("throttle_per_second", 1.0), f"{ew}.throttle_per_second", 0, open_low=True)),
        _output(e.get("degrade_output", "poisoning:1.0"), f"{ew}.degrade_output") or "poisoning:1.0",
        _choice(e.get("stateful_scope", "key"), f"{ew}.stateful_scope", ("key", "tier")),
        int(_number(e.get("stateful_shared_buffer", 2000), f"{ew}.stateful_shared_buffer", 10, 100000,
                    integer=True)))
    d = _section(raw.get("detectors"), f"{where}.detectors",
                 {"squeeze_fpr", "squeeze_bits", "strip_frr", "strip_overlays", "action"})
    dw = f"{where}.detectors"
    detectors = DetectorRules(
        None if d.get("squeeze_fpr") is None else float(_number(d["squeeze_fpr"], f"{dw}.squeeze_fpr", 0, 0.5,
                                                                open_low=True)),
        int(_number(d.get("squeeze_bits", 4), f"{dw}.squeeze_bits", 1, 16, integer=True)),
        None if d.get("strip_frr") is None else float(_number(d["strip_frr"], f"{dw}.strip_frr", 0, 0.5,
                                                              open_low=True)),
        int(_number(d.get("strip_overlays", 8), f"{dw}.strip_overlays", 1, 64, integer=True)),
        _choice(d.get("action", "reject"), f"{dw}.action", REJECT_ACTIONS))
    latency = raw.get("latency_ms")
    return Tier(name, inputs, rate, extraction, detectors, _output(raw.get("output"), f"{where}.output"),
                None if latency is None else float(_number(latency, f"{where}.latency_ms", 0, open_low=True)),
                parse_llm(raw.get("llm"), f"{where}.llm"))


def parse_llm(raw: Any, where: str) -> LLMRules:
    """A tier's `llm` section (token limits, injection detector, leak filter)."""
    from bastion.lm.lm_target import MAX_NEW_TOKENS

    m = _section(raw, where, {"max_prompt_tokens", "max_new_tokens", "token_budget", "injection", "leak",
                              "canaries", "fuzzy", "prompt_overlap", "deadline_s"})

    def optional_int(key: str, high: int) -> int | None:
        return None if m.get(key) is None else int(_number(m[key], f"{where}.{key}", 1, high, integer=True))

    canaries = m.get("canaries") or []
    if not isinstance(canaries, list) or not all(isinstance(c, str) and len(c.strip()) >= 4 for c in canaries):
        raise _fail(f"{where}.canaries", "expected a list of secrets of at least 4 characters")
    overlap = m.get("prompt_overlap", 0.5)
    return LLMRules(
        optional_int("max_prompt_tokens", 1 << 20),
        int(_number(m.get("max_new_tokens", 256), f"{where}.max_new_tokens", 1, MAX_NEW_TOKENS, integer=True)),
        optional_int("token_budget", 1 << 40),
        None if m.get("injection") in (None, "off") else _choice(m["injection"], f"{where}.injection",
                                                                 ("reject", "alert", "off")),
        None if m.get("leak") in (None, "off") else _choice(m["leak"], f"{where}.leak", ("redact", "alert", "off")),
        tuple(c.strip() for c in canaries),
        float(_number(m.get("fuzzy", 0.2), f"{where}.fuzzy", 0, 0.49)),
        None if overlap is None else float(_number(overlap, f"{where}.prompt_overlap", 0, 1, open_low=True)),
        None if m.get("deadline_s") is None else float(_number(m["deadline_s"], f"{where}.deadline_s", 0, 86_400,
                                                               open_low=True)))


def parse_policy(raw: Any, where: str = "policy") -> Policy:
    """A Policy from parsed YAML; a ParameterError naming the first bad key otherwise."""
    raw = _section(raw, where, {"tiers", "keys", "default_tier"})
    tiers_raw = raw.get("tiers")
    if not isinstance(tiers_raw, dict) or not tiers_raw:
        raise _fail(f"{where}: tiers", "expected a mapping of at least one tier name to its rules")
    tiers = {str(name): parse_tier(str(name), rules) for name, rules in tiers_raw.items()}
    default = raw.get("default_tier", "default" if "default" in tiers else None)
    if default is not None and default not in tiers:
        raise _fail(f"{where}: default_tier", f"names no tier ({', '.join(tiers)}), got {default!r}")
    keys: dict[str, tuple[str, str]] = {}
    entries = raw.get("keys") or []
    if not isinstance(entries, list):
        raise _fail(f"{where}: keys", "expected a list of {id, sha256, tier}")
    for n, entry in enumerate(entries):
        kw = f"{where}: keys[{n}]"
        entry = _section(entry, kw, {"id", "sha256", "tier"})
        digest = str(entry.get("sha256", "")).lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise _fail(f"{kw}.sha256", "expected the 64 hex digits of sha256(secret)")
        if entry.get("tier") not in tiers:
            raise _fail(f"{kw}.tier", f"names no tier ({', '.join(tiers)}), got {entry.get('tier')!r}")
        if not isinstance(entry.get("id"), str) or not entry["id"]:
            raise _fail(f"{kw}.id", "expected a non-empty name (it is what the audit log records)")
        keys[digest] = (entry["id"], entry["tier"])
    return Policy(tiers, keys, default)


def load_policy(path: str | Path) -> Policy:
    """Read and validate a YAML policy file (one-line errors naming the file and the key)."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ParameterError(f"{path}: cannot read the policy ({exc.strerror or exc})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ParameterError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    try:
        return parse_policy(raw, "policy")
    except ParameterError as exc:
        raise ParameterError(f"{path}: {str(exc).removeprefix('policy: ')}") from None
