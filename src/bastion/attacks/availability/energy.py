"""Energy counters the machine exposes: Linux RAPL (powercap) for CPU packages, NVML for NVIDIA GPUs.

RAPL: `/sys/class/powercap/intel-rapl:N/energy_uj` (also AMD's packages under the same name) counts microjoules
and wraps at `max_energy_range_uj`; a reading across one wrap is corrected. NVML: the total energy consumption of
the GPU since driver load (millijoules, Volta and later), read through `libnvidia-ml` with ctypes. Where neither
is readable, `EnergyMeter.available` is False and reports say "energy: not exposed on this machine".
"""

from __future__ import annotations

import ctypes
import re
import time
from collections.abc import Callable
from pathlib import Path

import torch

POWERCAP = Path("/sys/class/powercap")
NOT_EXPOSED = "energy: not exposed on this machine"


def _rapl_packages(root: Path = POWERCAP) -> list[Path]:
    """Top-level RAPL domains (packages) whose counter this user can read."""
    if not root.is_dir():
        return []
    found = []
    for path in sorted(root.iterdir()):
        if re.fullmatch(r"intel-rapl:\d+", path.name) and (path / "energy_uj").is_file():
            try:
                int((path / "energy_uj").read_text())
            except (OSError, ValueError):
                continue
            found.append(path)
    return found


def _nvml(index: int) -> Callable[[], float] | None:
    """A function returning the GPU's energy counter in joules, or None without NVML."""
    try:
        lib = ctypes.CDLL("libnvidia-ml.so.1")
        if lib.nvmlInit_v2() != 0:
            return None
        handle = ctypes.c_void_p()
        if lib.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(index), ctypes.byref(handle)) != 0:
            return None
        value = ctypes.c_ulonglong()

        def read() -> float:
            if lib.nvmlDeviceGetTotalEnergyConsumption(handle, ctypes.byref(value)) != 0:
                raise OSError("NVML energy counter unreadable")
            return value.value / 1e3

        read()
        return read
    except (OSError, AttributeError):
        return None


class EnergyMeter:
    """Reads a cumulative energy counter in joules for the device that runs the model."""

    def __init__(self, device: torch.device | str = "cpu", root: Path = POWERCAP):
        device = torch.device(device)
        self.source, self._read = "", None
        if device.type == "cuda":
            nvml = _nvml(device.index or 0)
            if nvml is not None:
                self.source, self._read = "nvml", nvml
        else:
            packages = _rapl_packages(root)
            if packages:
                self.source, self._packages = "rapl", packages
                self._read = self._rapl
        self._last: list[int] = []

    @property
    def available(self) -> bool:
        return self._read is not None

    def _rapl(self) -> float:
        return sum(int((p / "energy_uj").read_text()) for p in self._packages) / 1e6

    def _wrap(self) -> float:
        return sum(int((p / "max_energy_range_uj").read_text()) for p in self._packages) / 1e6

    def joules(self, fn: Callable[[], int], min_seconds: float = 0.5) -> tuple[float, int]:
        """Call `fn` (returns how many inputs it processed) until `min_seconds` pass: (joules, inputs)."""
        if self._read is None:
            raise RuntimeError(NOT_EXPOSED)
        done, start_e, start_t = 0, self._read(), time.perf_counter()
        while time.perf_counter() - start_t < min_seconds:
            done += fn()
        spent = self._read() - start_e
        if spent < 0 and self.source == "rapl":  # the counter wrapped once
            spent += self._wrap()
        return spent, done
