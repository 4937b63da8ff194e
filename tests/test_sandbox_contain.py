"""Hostile models are contained by the sandbox and reported: a canary outside scratch stays untouched, a loopback
listener receives no connection, and each behaviour becomes the right finding. A model that only computes gets
none. (Needs bubblewrap and strace; skipped where they are missing, see test_sandbox_fallback.py.)"""

from __future__ import annotations

import hashlib
import shutil
import socket
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from bastion.models.export import save_model
from bastion.models.metadata import METADATA_KEY, ModelMetadata
from bastion.sandbox import SandboxOptions
from bastion.sandbox.bwrap import bwrap_problem
from bastion.sandbox.commands import dynamic_scan

META = ModelMetadata(n_classes=3, input_shape=[4], bounds=[0.0, 1.0])

needs_sandbox = pytest.mark.skipif(bwrap_problem() is not None or shutil.which("strace") is None,
                                   reason="bubblewrap with user namespaces and strace are needed")


class Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


class FromFileInForward(nn.Module):
    """TorchScript: `aten::from_file(path, shared=True)` creates and maps any file, here in forward."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.lin = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        touched = torch.from_file(self.path, shared=True, size=16, dtype=torch.uint8)
        return self.lin(x) + touched.sum() * 0


class FromFileInSetstate(nn.Module):
    """TorchScript: a scripted `__setstate__` runs when the file is loaded (it must set every field, so the
    module keeps none but its path)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.path, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.path = state[0]
        mapped = torch.from_file(self.path, shared=True, size=16, dtype=torch.uint8)  # creates the file
        self.training = state[1] or bool(mapped.sum() < 0)  # used, so that it is not optimised away

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :3] * 2.0


class EndlessLoop(nn.Module):
    """TorchScript whose forward never returns."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = 0
        while steps >= 0:
            steps = steps + 1
        return self.lin(x)


def scripted(module: nn.Module, path: Path) -> Path:
    torch.jit.save(torch.jit.script(module), str(path), _extra_files={METADATA_KEY: META.to_json()})
    return path


def hostile_factory(folder: Path, canary: Path, port: int) -> str:
    """An `--arch` factory file whose model writes a file, opens a socket to `port` and runs a program in forward
    (each attempt guarded, so that the model still answers)."""
    source = folder / "evil_arch.py"
    source.write_text(textwrap.dedent(f'''
        import os, socket
        import torch

        class Evil(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = torch.nn.Linear(4, 3)

            def forward(self, x):
                try:
                    with open({str(canary)!r}, "w") as f:
                        f.write("pwned")
                except OSError:
                    pass
                try:
                    socket.create_connection(("127.0.0.1", {port}), timeout=1).close()
                except OSError:
                    pass
                os.system("echo pwned > /dev/null")
                return self.lin(x)

        def factory():
            return Evil()
    '''))
    return f"{source}:factory"


def weights(folder: Path) -> Path:
    torch.manual_seed(0)
    return save_model(Plain(), folder / "weights.safetensors", META)


@pytest.fixture()
def canary(tmp_path: Path) -> Path:
    path = tmp_path / "canary.txt"
    path.write_text("untouched")
    return path


@pytest.fixture()
def listener():
    """A loopback TCP listener on a free port; yields (port, connected) where connected() waits briefly."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(0.5)

    def connected() -> bool:
        try:
            server.accept()[0].close()
            return True
        except (TimeoutError, OSError):
            return False

    yield server.getsockname()[1], connected
    server.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rules(findings: list) -> dict[str, list[str]]:
    return {f.metric: f.evidence["targets"] for f in findings}


@needs_sandbox
def test_a_model_that_only_computes_gets_no_finding(tmp_path: Path) -> None:
    model = scripted(Plain(), tmp_path / "plain.pt")
    result = dynamic_scan(str(model), None, None, SandboxOptions(timeout=120))
    assert result.findings == []
    assert result.metrics["probe"]["samples"] == 5
    assert result.metrics["sandbox"]["observer"] == "strace"


@needs_sandbox
@pytest.mark.parametrize("builder", [FromFileInForward, FromFileInSetstate])
def test_torchscript_from_file_is_contained_and_reported(tmp_path: Path, canary: Path, builder: type) -> None:
    model = tmp_path / "hostile.pt"
    scripted(builder(str(canary)), model)
    before = digest(model)
    result = dynamic_scan(str(model), None, None, SandboxOptions(timeout=120))
    assert canary.read_text() == "untouched" and digest(model) == before
    found = rules(result.findings)
    assert str(canary) in found["dynamic-write"]
    assert next(f for f in result.findings if f.metric == "dynamic-write").severity == "critical"


@needs_sandbox
def test_torchscript_writing_its_own_read_only_file_is_reported(tmp_path: Path) -> None:
    model = tmp_path / "self.pt"
    scripted(FromFileInForward(str(model)), model)  # the model file is visible (read-only) inside
    before = digest(model)
    result = dynamic_scan(str(model), None, None, SandboxOptions(timeout=120))
    assert digest(model) == before
    assert str(model) in rules(result.findings)["dynamic-write"]


@needs_sandbox
def test_arch_factory_writing_connecting_and_executing_is_contained(tmp_path: Path, canary: Path, listener) -> None:
    port, connected = listener
    arch = hostile_factory(tmp_path, canary, port)
    result = dynamic_scan(str(weights(tmp_path)), arch, None, SandboxOptions(timeout=120))
    assert canary.read_text() == "untouched"
    assert not connected()
    found = rules(result.findings)
    assert str(canary) in found["dynamic-write"]
    assert f"connect 127.0.0.1:{port}" in found["dynamic-connect"]
    assert any(t.startswith("sh -c echo pwned") for t in found["dynamic-exec"])
    severities = {f.metric: f.severity for f in result.findings}
    assert severities["dynamic-write"] == severities["dynamic-connect"] == severities["dynamic-exec"] == "critical"
    assert "probe" in result.metrics  # the model still answered: the attempts failed inside the sandbox
