"""The CLI contract: JSON object, exit codes 0/1/2, one-line errors and no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bastion.core.data import Dataset, save_npz


def bastion(*args: str, env_cache: Path | None = None) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ)
    return subprocess.run([sys.executable, "-m", "bastion", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_attack_json_contract(digits_demo):
    run = bastion("attack", "evasion", "pgd", str(digits_demo.model_path), "--data", str(digits_demo.test_path),
                  "--eps", "0.05,0.1", "--steps", "20", "--n-samples", "120", "--json", "--device", "cpu")
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert {"family", "attack", "params", "metrics", "queries", "seconds", "device"} <= set(out)
    assert out["family"] == "evasion" and out["attack"] == "pgd" and out["device"] == "cpu"
    assert out["params"]["steps"] == 20 and out["params"]["eps"] == [0.05, 0.1]
    curve = out["metrics"]["robust_accuracy"]
    assert [c["eps"] for c in curve] == [0.05, 0.1]
    assert out["metrics"]["clean_accuracy"] >= curve[0]["robust_accuracy"] >= curve[1]["robust_accuracy"]
    assert out["queries"] > 120 and out["seconds"] > 0


def test_fail_on_sets_exit_code_one(digits_demo):
    run = bastion("attack", "evasion", "fgsm", str(digits_demo.model_path), "--data", str(digits_demo.test_path),
                  "--eps", "0.3", "--n-samples", "100", "--fail-on", "medium", "--device", "cpu")
    assert run.returncode == 1, run.stderr
    assert "fgsm" in run.stdout


@pytest.mark.parametrize("args,message", [
    (["attack", "evasion", "pgd", "MISSING.pt", "--data", "DATA"], "not found"),
    (["attack", "evasion", "nosuch", "MODEL", "--data", "DATA"], "unknown evasion attack 'nosuch'"),
    (["attack", "evasion", "pgd", "MODEL", "--data", "DATA", "--eps", "5"], "whole input range"),
    (["attack", "evasion", "pgd", "MODEL", "--data", "DATA", "--eps", "-1"], "positive"),
    (["attack", "evasion", "pgd", "MODEL", "--data", "DATA", "--stepz", "3"], "no parameter --stepz"),
    (["attack", "evasion", "pgd", "MODEL"], "needs --data"),
    (["attack", "evasion", "pgd", "MODEL", "--data", "WRONGCLASSES"], "out of range"),
    (["attack", "evasion", "pgd", "MODEL", "--data", "NAN"], "NaN"),
    (["attack", "evasion", "pgd", "MODEL", "--data", "DATA", "--access", "labels"], "needs gradients access"),
    (["attack", "evasion", "pgd", "MODEL", "--data", "DATA", "--max-queries", "50"], "query budget spent"),
    (["attack", "evasion", "pgd", "MODEL", "--data", "DATA", "--device", "tpu"], "unknown device"),
    (["list", "gadgets"], "unknown kind"),
    (["attack"], "Missing argument"),
])
def test_bad_input_gives_one_line_and_exit_two(digits_demo, tmp_path, args, message):
    rng = np.random.default_rng(0)
    save_npz(Dataset(rng.random((5, 1, 8, 8)), np.full(5, 12)), tmp_path / "wrong.npz")
    x = rng.random((5, 1, 8, 8))
    x[0, 0, 0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, y=np.zeros(5, int))
    paths = {"MODEL": str(digits_demo.model_path), "DATA": str(digits_demo.test_path),
             "WRONGCLASSES": str(tmp_path / "wrong.npz"), "NAN": str(tmp_path / "nan.npz")}
    run = bastion(*[paths.get(a, a) for a in args])
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert message in run.stderr
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1


def test_list_shows_registered_attacks():
    run = bastion("list", "attacks", "--json")
    assert run.returncode == 0
    names = {row["name"] for row in json.loads(run.stdout)}
    assert {"fgsm", "pgd"} <= names


def test_help_and_console_script():
    run = bastion("--help")
    assert run.returncode == 0 and "attack" in run.stdout
    script = Path(sys.executable).parent / "bastion"
    if script.exists():
        assert subprocess.run([str(script), "--help"], capture_output=True).returncode == 0
