"""Hostile models are contained by the sandbox and reported: a canary outside scratch stays untouched, a loopback
listener receives no connection, and each behaviour becomes the right finding. A model that only computes gets
none. The hostile files come from tests/hostile_models.py. (Needs bubblewrap and strace; skipped where they are
missing; test_sandbox_fallback.py covers that path.)"""

from __future__ import annotations

import hashlib
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from bastion.models.export import save_model
from bastion.sandbox import SandboxOptions
from bastion.sandbox.bwrap import bwrap_problem
from bastion.sandbox.cli_jobs import dynamic_scan

from . import hostile_models as hostile

needs_sandbox = pytest.mark.skipif(bwrap_problem() is not None or shutil.which("strace") is None,
                                   reason="bubblewrap with user namespaces and strace are needed")


def linear_weights(folder: Path) -> Path:
    """Weights for the factories of hostile_models (a Linear(4, 3))."""
    torch.manual_seed(0)
    return save_model(torch.nn.Linear(4, 3), folder / "weights.safetensors", hostile.META)


@pytest.fixture()
def listener():
    """A loopback TCP listener on a free port; yields ((host, port), connected) where connected() waits briefly."""
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

    yield server.getsockname(), connected
    server.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def targets(findings: list) -> dict[str, list[str]]:
    return {f.metric: f.evidence["targets"] for f in findings}


Build = Callable[[Path, Path, tuple[str, int]], tuple[str, str | None]]
HOSTILE: dict[str, tuple[Build, set[str]]] = {  # model, --arch  ->  the findings it must get
    "torchscript-from_file-forward": (lambda f, c, a: (str(hostile.torchscript_from_file(f, c, "forward")), None),
                                      {"dynamic-write"}),
    "torchscript-from_file-setstate": (lambda f, c, a: (str(hostile.torchscript_from_file(f, c, "setstate")), None),
                                       {"dynamic-write"}),
    "pt2-use_pickle": (lambda f, c, a: (str(hostile.pt2_use_pickle(f, c, a)), None),
                       {"dynamic-write", "dynamic-connect"}),
    "pt2-opaque-constant": (lambda f, c, a: (str(hostile.pt2_opaque_constant(f, c, a)), None),
                            {"dynamic-write", "dynamic-connect"}),
    "pt2-pickled-constant": (lambda f, c, a: (str(hostile.pt2_pickled_constant(f, c, a)), None),
                             {"dynamic-write", "dynamic-connect"}),
    "skops-numpy-savetxt": (lambda f, c, a: (str(hostile.skops_numpy_savetxt(f, c)), None), {"dynamic-write"}),
    "arch-factory": (lambda f, c, a: (str(linear_weights(f)), hostile.arch_factory(f, c, a)),
                     {"dynamic-write", "dynamic-connect", "dynamic-exec"}),
}
BENIGN = {
    "torchscript": lambda f: (str(hostile.torchscript_plain(f)), None),
    "torchscript-setstate": lambda f: (str(hostile.torchscript_plain(f, "setstate")), None),
    "pt2": lambda f: (str(hostile.export_pt2(f / "plain.pt2")), None),
    "skops": lambda f: (str(hostile.skops_plain(f)), None),
    "arch-factory": lambda f: (str(linear_weights(f)), hostile.arch_plain(f)),
}


@needs_sandbox
@pytest.mark.parametrize("kind", list(BENIGN))
def test_a_model_that_only_computes_gets_no_finding(tmp_path: Path, kind: str) -> None:
    model, arch = BENIGN[kind](tmp_path)
    result = dynamic_scan(model, arch, None, SandboxOptions(timeout=120))
    assert result.findings == []
    assert result.metrics["probe"]["samples"] == 5, result.metrics
    assert result.metrics["sandbox"]["observer"] == "strace"


@needs_sandbox
@pytest.mark.parametrize("kind", list(HOSTILE))
def test_a_hostile_model_is_contained_and_reported(tmp_path: Path, kind: str, listener) -> None:
    address, connected = listener
    canary = tmp_path / "canary.txt"
    build, expected = HOSTILE[kind]
    model, arch = build(tmp_path, canary, address)
    before = digest(Path(model))
    result = dynamic_scan(model, arch, None, SandboxOptions(timeout=120))
    assert not canary.exists() and digest(Path(model)) == before
    assert not connected()
    found = targets(result.findings)
    assert expected <= set(found), (found, result.metrics)
    assert str(canary) in found["dynamic-write"]
    if "dynamic-connect" in expected:
        assert found["dynamic-connect"] == [f"connect {address[0]}:{address[1]}"]
    if "dynamic-exec" in expected:
        assert "true" in found["dynamic-exec"]
    assert all(f.severity == "critical" for f in result.findings if f.metric in expected)


@needs_sandbox
def test_a_model_writing_its_own_read_only_file_is_reported(tmp_path: Path) -> None:
    model = hostile.scripted(hostile.FromFileInForward(str(tmp_path / "self.pt")), tmp_path / "self.pt")
    before = digest(model)  # the model file is visible inside the sandbox, read-only
    result = dynamic_scan(str(model), None, None, SandboxOptions(timeout=120))
    assert digest(model) == before
    assert str(model) in targets(result.findings)["dynamic-write"]


def probe_arch(folder: Path, body: str) -> str:
    """An --arch factory file that runs `body`, then builds the Linear(4, 3) of hostile_models."""
    source = folder / "probe_arch.py"
    source.write_text("import torch\n\n\ndef factory():\n" + "".join(f"    {line}\n" for line in body.splitlines())
                      + "    return torch.nn.Linear(4, 3)\n")
    return f"{source}:factory"


PROGRAM = "import subprocess\ntry:\n    subprocess.run(['lscpu', '--parse=core'])\nexcept OSError:\n    pass"


@needs_sandbox
def test_a_librarys_cpu_probe_is_not_the_models_but_a_model_running_it_is(tmp_path: Path) -> None:
    """joblib counts physical cores with `lscpu --parse=core` once per process (scikit-learn's KMeans asks):
    the worker's warm-up runs it before any model code, so a library asking again is no finding, while a model
    that runs the same program itself is reported."""
    weights = str(linear_weights(tmp_path))
    library = dynamic_scan(weights, probe_arch(tmp_path, "import joblib\njoblib.cpu_count(only_physical_cores=True)"),
                           None, SandboxOptions(timeout=120))
    assert library.findings == [], targets(library.findings)
    model = dynamic_scan(weights, probe_arch(tmp_path, PROGRAM),
                         None, SandboxOptions(timeout=120))
    assert "lscpu --parse=core" in targets(model.findings)["dynamic-exec"]
