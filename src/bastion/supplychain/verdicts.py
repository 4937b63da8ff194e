"""Rules the scanner reports, and the sink that turns raw observations into deduplicated Findings."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from bastion.core.results import Finding
from bastion.supplychain.limits import DEFAULT_LIMITS, Limits

# MITRE ATLAS AML.T0010.003 ML Supply Chain Compromise: Model; AML.T0011.000 User Execution: Unsafe ML Artifacts.
ATLAS = ["AML.T0010.003", "AML.T0011.000"]
OWASP = ["ML06:2023 AI Supply Chain Attacks"]

# rule id -> (short description, recommendation)
RULES: dict[str, tuple[str, str]] = {
    "unsafe-global": ("The file imports a callable that can execute code, spawn processes or touch files.",
                      "Do not load this file. Obtain the model as safetensors or ONNX from a trusted source."),
    "unknown-global": ("The file imports a callable that is not on the allow-list; loading imports and may call it.",
                       "Load only if you trust the file and the named code; prefer a safetensors export."),
    "dynamic-call": ("The pickle calls something that cannot be resolved statically (a computed callable or name).",
                     "Treat the file as malicious: ordinary model files never compute what they call."),
    "nested-payload": ("The file carries a second serialised payload that is deserialised while loading.",
                       "Do not load this file."),
    "object-mutation": ("The pickle modifies an imported module, class or function while loading.",
                        "Treat the file as malicious: ordinary model files never modify imported objects."),
    "malformed": ("Part of the file could not be parsed, so it could not be proven safe (fail closed).",
                  "Re-export the model from its source; do not load a file the scanner cannot read."),
    "limit": ("A scanner bound (size, nesting, opcodes, time) was exceeded, so the rest was not checked.",
              "Scan with higher limits on a machine you trust, or obtain a smaller export."),
    "archive-anomaly": ("The archive uses tricks that make scanners and loaders read different contents.",
                        "Treat the file as tampered with; re-create the archive from a trusted source."),
    "polyglot": ("The file is valid in more than one format; different loaders run different contents.",
                 "Treat the file as tampered with."),
    "numpy-object-array": ("A NumPy array holds Python objects, stored as a pickle that np.load(allow_pickle=True) "
                           "runs.", "Store numeric arrays only; load with allow_pickle=False."),
    "keras-lambda": ("A Keras Lambda layer carries Python bytecode that runs when the model is loaded.",
                     "Rebuild the layer in code and load weights only; keep safe_mode=True."),
    "keras-module": ("The Keras config names Python modules or functions that loading imports and calls.",
                     "Load only configs whose modules are Keras' own; keep safe_mode=True."),
    "onnx-external-data": ("An ONNX tensor points at an external data file outside the model's folder.",
                           "Reject the model: loading reads arbitrary files into its weights."),
    "onnx-custom-op": ("The ONNX graph uses operators from a custom domain that need a native operator library.",
                       "Load only with custom-op libraries you built or trust."),
    "safetensors-header": ("The safetensors header is invalid (sizes, offsets or dtypes do not add up).",
                           "Re-export the tensors; do not load a malformed file."),
    "template-injection": ("A chat template walks Python internals; runtimes that render it unsandboxed run code.",
                           "Strip the template or render it only in jinja2's ImmutableSandboxedEnvironment."),
    "trailing-data": ("Bytes follow the end of the serialised data; some readers may interpret them.",
                      "Re-export the file from its source."),
    "unverifiable": ("The file is an archive or compressed stream the scanner cannot open, so nothing inside it "
                     "was checked (fail closed).", "Unpack it with a trusted tool and scan what it contains."),
    "scanner-error": ("The scanner hit an unexpected error on this input (fail closed).",
                      "Report this file to the Bastion maintainers; do not load it meanwhile."),
}


@dataclass
class Sink:
    """Collects findings for one file, deduplicated by (member, rule, subject)."""

    file: str
    limits: Limits = DEFAULT_LIMITS
    started: float = 0.0
    folder: str | None = None  # the folder of the file on disk (for ONNX external data)

    def __post_init__(self) -> None:
        self.findings: dict[tuple, Finding] = {}
        self.globals: set[str] = set()
        self.inflated = 0
        self.opcodes = 0  # pickle opcodes run so far, every nested payload included
        self.nested = 0  # nested payloads entered so far
        self.seen_payloads: set = set()  # nested payloads already scanned (fan-out through the memo)
        self.keepalive: dict[int, Any] = {}  # buffers whose id() is part of a seen_payloads key
        self.started = self.started or time.monotonic()

    def out_of_time(self) -> bool:
        return time.monotonic() - self.started > self.limits.max_seconds

    def exhausted(self) -> str | None:
        """Which part of the file's one work budget is spent (None while some is left)."""
        if self.out_of_time():
            return f"the {self.limits.max_seconds:g} s scan time limit"
        if self.opcodes > self.limits.max_opcodes:
            return f"the budget of {self.limits.max_opcodes} pickle opcodes"
        if self.nested > self.limits.max_nested:
            return f"the budget of {self.limits.max_nested} nested payloads"
        return None


class Cursor:
    """Where the scanner is: a file, a chain of archive members, and the nesting depth."""

    __slots__ = ("sink", "member", "depth")

    def __init__(self, sink: Sink, member: str | None = None, depth: int = 0):
        self.sink, self.member, self.depth = sink, member, depth

    def enter(self, name: str) -> Cursor:
        member = name if self.member is None else f"{self.member}!/{name}"
        return Cursor(self.sink, member, self.depth + 1)

    @property
    def limits(self) -> Limits:
        return self.sink.limits

    def too_deep(self) -> bool:
        """True (and reported) when one more level of nesting would pass the limit."""
        if self.depth < self.limits.max_depth:
            return False
        self.report("limit", "high", f"nesting deeper than {self.limits.max_depth} levels was not scanned")
        return True

    def report(self, rule: str, severity: str, title: str, *, offset: int | None = None,
               subject: str | None = None, **evidence: Any) -> None:
        """Record one observation; repeats of the same (member, rule, subject) only raise its count."""
        key = (self.member, rule, subject or title)
        found = self.sink.findings.get(key)
        if found is not None:
            found.evidence["count"] = found.evidence.get("count", 1) + 1
            return
        if len(self.sink.findings) >= self.limits.max_findings:
            if rule != "limit" or subject != "max-findings":
                Cursor(self.sink).report("limit", "high", f"more than {self.limits.max_findings} findings; the "
                                         "rest were not recorded", subject="max-findings")
                return
            self.sink.findings.pop(next(iter(self.sink.findings)))  # make room for the one limit finding
        where = self.sink.file + (f" [{self.member}]" if self.member else "")
        at = f" at offset {offset}" if offset is not None else ""
        description, recommendation = RULES[rule]
        self.sink.findings[key] = Finding(
            title=f"{title} ({where}{at})",
            family="supply_chain",
            severity=severity,  # type: ignore[arg-type]
            metric=rule,
            evidence={"file": self.sink.file, "member": self.member, "offset": offset, "rule": rule, "opcode": None,
                      "global": subject if rule.endswith("global") else None, **evidence},
            atlas=list(ATLAS),
            owasp=list(OWASP),
            description=description,
            recommendation=recommendation,
        )
