"""What a sandboxed worker may use: its deadline, memory, CPU time, file size and scratch directory."""

from __future__ import annotations

import os
from dataclasses import dataclass

from bastion.core.errors import ParameterError
from bastion.supplychain.detect import CODE_FORMATS, carries_code  # noqa: F401  (re-exported: bastion.sandbox)

GIB = 1 << 30


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 16 * GIB


@dataclass
class SandboxPolicy:
    """Limits of one worker.

    `timeout`: wall-clock seconds for the whole job (None: no limit); `load_timeout`: seconds until the model is
    loaded and has answered its first forward pass; `memory`: bytes of data segment (RLIMIT_DATA; None: physical
    memory); `cpu_seconds`: RLIMIT_CPU (None: timeout x CPUs); `file_size`: the largest file it may write."""

    timeout: float | None = None
    load_timeout: float = 120.0
    memory: int | None = None
    cpu_seconds: int | None = None
    file_size: int = 8 * GIB
    gpu: bool = False

    def __post_init__(self) -> None:
        if self.timeout is not None and not self.timeout > 0:
            raise ParameterError(f"--timeout must be a positive number of seconds, got {self.timeout}")
        if self.timeout is not None:
            self.load_timeout = min(self.load_timeout, self.timeout)

    def rlimits(self) -> dict[str, int]:
        """RLIMIT_* name -> soft and hard limit, as the worker sets them before it loads anything."""
        cpu = self.cpu_seconds
        if cpu is None and self.timeout is not None:
            cpu = int(self.timeout * (os.cpu_count() or 1)) + 5
        limits = {"RLIMIT_DATA": int(self.memory or _physical_memory()), "RLIMIT_FSIZE": int(self.file_size),
                  "RLIMIT_CORE": 0}
        if cpu is not None:
            limits["RLIMIT_CPU"] = cpu
        return limits
