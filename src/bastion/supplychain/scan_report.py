"""The result of a scan: files seen (format, hash, size) and the findings, serialisable to JSON and back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from bastion.core.results import Finding, Serializable, severity_rank


@dataclass
class ScannedFile(Serializable):
    """One file on disk: where, what format its bytes are, its sha256 and size, and the names it imports."""

    path: str
    format: str
    sha256: str
    size: int
    seconds: float = 0.0
    globals: list[str] = field(default_factory=list)


@dataclass
class ScanReport(Serializable):
    """Everything `scan_path` found; `is_clean` is the verdict loaders and the CLI act on."""

    _nested: ClassVar[dict[str, type]] = {"files": ScannedFile, "findings": Finding}

    files: list[ScannedFile] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def at_or_above(self, min_severity: str) -> list[Finding]:
        """Findings whose severity is at least `min_severity`, worst first."""
        rank = severity_rank(min_severity)
        hits = [f for f in self.findings if severity_rank(f.severity) >= rank]
        return sorted(hits, key=lambda f: -severity_rank(f.severity))

    def is_clean(self, min_severity: str = "low") -> bool:
        """True when no finding reaches `min_severity` and every file could be read."""
        return not self.errors and not self.at_or_above(min_severity)

    def worst_severity(self) -> str | None:
        """The highest severity among the findings, or None."""
        if not self.findings:
            return None
        return max((f.severity for f in self.findings), key=severity_rank)

    def worst_finding(self) -> Finding | None:
        """The first finding of the highest severity, or None."""
        ranked = self.at_or_above("info")
        return ranked[0] if ranked else None

    def merge(self, other: ScanReport) -> ScanReport:
        """Add another report's files, findings and errors to this one (returns self)."""
        self.files += other.files
        self.findings += other.findings
        self.errors += other.errors
        self.seconds += other.seconds
        return self
