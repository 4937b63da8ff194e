"""torch.jit's deprecation warnings never reach the terminal (issue 21, item 6), whatever torch CI installs.

torch 2.14 warns "`torch.jit.load` is deprecated. Please switch to `torch.export`." (FutureWarning) on every
TorchScript load, save, script and trace; `make test` with that torch once failed on the extra stderr lines. CI pins
another torch, so these tests make torch.jit warn exactly as torch 2.14 does (the texts below are copied from its
torch/jit sources) and check that neither the `bastion` process nor the sandboxed worker lets them through. A
control run without Bastion's filter shows the warning does appear, so the tests can fail.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from bastion.core.data import Dataset, save_npz

# torch 2.14.1, torch/jit/_serialization.py, _script.py and _trace.py (and Python 3.14's variant of the load one)
TORCH_214 = {
    "load": "`torch.jit.load` is deprecated. Please switch to `torch.export`.",
    "save": "`torch.jit.save` is deprecated. Please switch to `torch.export`.",
    "script": "`torch.jit.script` is deprecated. Please switch to `torch.compile` or `torch.export`.",
    "trace": "`torch.jit.trace` is deprecated. Please switch to `torch.compile` or `torch.export`.",
}
PY314_LOAD = "`torch.jit.load` is not supported in Python 3.14+ and may break. Please switch to `torch.export`."

PATCH = textwrap.dedent(f"""
    import sys, warnings
    import torch

    def warning(name, function, text):
        def wrapped(*args, **kwargs):
            warnings.warn(text, FutureWarning)  # as torch 2.14 does, inside torch.jit
            return function(*args, **kwargs)
        return wrapped

    for name, text in {TORCH_214!r}.items():
        setattr(torch.jit, name, warning(name, getattr(torch.jit, name), text))
    torch.jit.load = warning("load", torch.jit.load, {PY314_LOAD!r})
""")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("jit-warnings")
    model = torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval())
    torch.jit.save(model, str(folder / "model.ts"))
    rng = np.random.default_rng(0)
    save_npz(Dataset(rng.random((8, 1, 4, 4)).astype(np.float32), np.full(8, 7)), folder / "wrong.npz")
    return {"model": str(folder / "model.ts"), "wrong": str(folder / "wrong.npz")}


def python(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PATCH + textwrap.dedent(script), *args], capture_output=True,
                          text=True, timeout=300)


def test_the_patched_torch_jit_does_warn_without_bastions_filter(files):
    """The control: the warning reaches stderr when nothing filters it."""
    run = python("torch.jit.load(sys.argv[1])", files["model"])
    assert run.returncode == 0, run.stderr
    assert "is not supported in Python 3.14+" in run.stderr  # the outer wrapper warns first


def test_the_cli_keeps_torch_jit_warnings_off_stderr(files):
    """A TorchScript model loaded in the `bastion` process (--no-sandbox): one error line, no warning."""
    run = python("""
        from bastion.cli.main import run
        run(sys.argv[1:])  # loads the TorchScript model (the error names its 3 classes)
    """, "attack", "evasion", "fgsm", files["model"], "--data", files["wrong"], "--no-sandbox", "--device", "cpu")
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert "deprecated" not in run.stderr and "Python 3.14" not in run.stderr and "Traceback" not in run.stderr
    lines = [line for line in run.stderr.splitlines() if "--no-sandbox" not in line]
    assert len(lines) == 1 and "class" in lines[0], run.stderr


def test_the_sandboxed_worker_filters_them_before_it_serves(files):
    """The worker's output reaches the user's terminal through Bastion's stderr: it filters before serving."""
    run = python("""
        import types

        import bastion.sandbox.jobs as jobs
        import bastion.sandbox.worker as worker

        model = sys.argv[1]

        def serve(channel, handlers):
            torch.jit.load(model)  # what a TorchScript job does in the worker
        worker.Channel = lambda fd: types.SimpleNamespace(out=sys.stdout)
        worker.serve, worker.warm_up, jobs.preload = serve, lambda marker: None, lambda job: None
        sys.argv = ["worker", "3"]
        worker.main()
    """, files["model"])
    assert run.returncode == 0, run.stderr
    assert "deprecated" not in run.stderr and "Python 3.14" not in run.stderr, run.stderr


def test_the_sandbox_warm_up_imports_torch_so_its_library_probe_is_not_read_as_model_code():
    """torch 2.14's CUDA wheel runs `/sbin/ldconfig -p` on `import torch`; the sandbox observer skips only what
    happens between the warm-up markers, so torch must be imported there (else a clean model gets a HIGH
    "created processes" finding under the default torch)."""
    run = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import sys
        from bastion.sandbox import worker
        assert "torch" not in sys.modules
        worker.warm_up(None)
        print("torch" in sys.modules)
    """)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "True", run.stderr
