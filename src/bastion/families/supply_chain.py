"""The supply-chain family: can the model file (and any other planned file) run code when it is loaded?

Scanning reads local files, so these jobs always run in the driver process (`local`), also under Ray.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bastion.core.registry import register
from bastion.core.results import Finding, Result
from bastion.families.base import ENABLED, Family, FamilyReport, Job, JobOutcome, Key, SanityCheck, done
from bastion.families.grading import count_by_severity, grade_of
from bastion.families.inputs import Inputs, ModelInfo
from bastion.supplychain.detect import carries_code


def scan(paths: list[str]) -> Result:
    """Scan files or folders with Bastion's scanner and package the report as an Result."""
    from bastion.supplychain import scan_paths
    from bastion.supplychain.verdicts import ATLAS, OWASP

    start = time.perf_counter()
    report = scan_paths(paths)
    findings = list(report.findings)
    for error in report.errors:  # a file that cannot be read cannot be proven safe
        findings.append(Finding(
            title=f"could not scan: {error}", family="supply_chain", severity="medium", metric="unreadable",
            evidence={"file": error.split(":", 1)[0], "rule": "unreadable"}, atlas=list(ATLAS), owasp=list(OWASP),
            description="The file could not be read, so it could not be proven safe.",
            recommendation="Check the path and permissions, then scan again before loading the file."))
    files = [{"path": f.path, "format": f.format, "sha256": f.sha256, "size": f.size, "globals": f.globals}
             for f in report.files]
    return Result(family="supply_chain", attack="scan", params={"paths": paths},
                        metrics={"files": files, "errors": list(report.errors),
                                 "counts": count_by_severity(findings)},
                        seconds=time.perf_counter() - start, findings=findings)


def forward_probe(inputs: Inputs) -> Result:
    """The dynamic job: load the model and run forward passes on the first evaluation samples and on noise in
    bounds, so that its load-time and inference-time code runs where the sandbox observes it (the sandbox adds
    what it saw to the result)."""
    import torch

    start = time.perf_counter()
    target = inputs.load_target()
    low, high = target.bounds
    first = torch.as_tensor(inputs.data.x[:8], dtype=torch.float32)
    noise = low + (high - low) * torch.rand(4, *target.input_shape, generator=torch.Generator().manual_seed(0))
    labels = target.labels(torch.cat([first, noise]).to(target.device))
    return Result(family="supply_chain", attack="dynamic", params={},
                  metrics={"files": [], "errors": [], "observed": False, "samples": int(labels.shape[0])},
                  seconds=time.perf_counter() - start)


@register("families", "supply_chain")
class SupplyChainFamily(Family):
    """Symbolic scan of the model file and planned extra paths for code that runs on load."""

    name = "supply_chain"
    title = "Supply chain (model files)"
    order = 50
    kinds = ("classifier", "language-model")  # a GGUF file or an LM folder is scanned like any model file
    atlas = ("AML.T0010.003", "AML.T0011.000")
    owasp = ("ML06:2023 AI Supply Chain Attacks",)
    schema = {
        "enabled": ENABLED,
        "paths": Key("strs", "extra files or folders to scan besides the model file"),
    }
    mitigations = ("Distribute weights as safetensors or ONNX; never load pickle-based files from untrusted "
                   "sources (`bastion scan`, `--convert-to-safetensors`).",
                   "Record file hashes and verify them before loading (`bastion scan --manifest`).")
    plots = ("scan_findings",)

    @classmethod
    def defaults(cls, inputs: Inputs, info: ModelInfo, device: str, seed: int = 0) -> dict[str, Any]:
        """The model file only."""
        return {"enabled": True, "paths": []}

    def paths(self, inputs: Inputs) -> list[str]:
        out = [inputs.model] if Path(inputs.model).exists() else []
        return out + [p for p in self.section["paths"] if p not in out]

    def applicable(self, inputs: Inputs, info: ModelInfo) -> str | None:
        if not self.paths(inputs):
            return "the model is a remote endpoint and the plan names no file to scan"
        return None

    def jobs(self, inputs: Inputs, info: ModelInfo) -> list[Job]:
        job = self.job("scan", "scan", {}, {"paths": self.paths(inputs)})
        job.local = True
        if Path(inputs.model).is_file() and carries_code(inputs.model, inputs.arch):
            return [job, self.job("dynamic", "dynamic", {}, {})]  # load and run it where the sandbox watches
        return [job]

    def execute(self, inputs: Inputs, job: Job) -> Result:
        if job.name == "dynamic":
            return forward_probe(inputs)
        return scan(list(job.data["paths"]))

    def conclude(self, inputs: Inputs, info: ModelInfo, outcomes: list[JobOutcome]) -> FamilyReport:
        results = [r for _, r in done(outcomes)]
        findings = [f for r in results for f in r.findings]
        files = [f for r in results for f in r.metrics["files"]]
        checks = [SanityCheck("every-file-read", all(not r.metrics["errors"] for r in results),
                              f"{len(files)} file(s) scanned" + "".join(f"; {e}" for r in results
                                                                         for e in r.metrics["errors"]),
                              family="supply_chain")] if results else []
        dynamic = [r for r in results if r.attack == "dynamic"]
        if dynamic:
            watched = all(r.metrics.get("observed") for r in dynamic)
            checks.append(SanityCheck("model-code-observed", watched, "the model's load and forward passes ran in "
                                      "the sandbox and were observed" if watched else "the model's code ran "
                                      "unobserved (--no-sandbox)", family="supply_chain"))
        headline = {f"findings.{sev}": float(n) for sev, n in count_by_severity(findings).items()}
        headline["files_scanned"] = float(len(files))
        return self.report("assessed", outcomes, findings=findings, sanity=checks, headline=headline,
                           grade=grade_of(findings))
