"""Fixtures shared by the assessment, report and store tests: a quick plan, a quick assessment, and one run of
the real demo (whose reports the report tests read).

Session fixtures imported into several test modules are instantiated once per module, so the expensive ones
memoise their value here: every module shares one quick assessment and one demo run."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

_MEMO: dict[str, Any] = {}

# Small budgets: every family runs, in seconds, on the breast-cancer MLP.
QUICK_PLAN: dict[str, Any] = {
    "seed": 3,
    "device": "cpu",
    "families": {
        "evasion": {"n_samples": 60, "shards": 2, "attacks": {"fgsm": {}, "pgd": {"steps": 5}}},
        "privacy": {"n_members": 60, "n_nonmembers": 60,
                    "attacks": {"loss": {"n_bootstrap": 20}, "lira": {"n_reference": 4, "epochs": 3,
                                                                      "n_bootstrap": 20, "n_jobs": 1}}},
        "extraction": {"budgets": [20, 40], "attacks": {"knockoff": {"epochs": 2, "min_steps": 10, "ood_samples": 40,
                                                                     "transfer_samples": 20}}},
        "backdoor": {"scanners": {"activation-clustering": {"epochs": 2}}},
        "supply_chain": {"enabled": True},
    },
}


@pytest.fixture(scope="session")
def cancer_inputs(cancer_demo):
    """Inputs of the demo breast-cancer MLP (test data, training data, architecture)."""
    from bastion.demo.run import demo_inputs

    return demo_inputs(cancer_demo, "cpu")


@pytest.fixture(scope="session")
def quick_plan(cancer_inputs):
    from bastion.assess.defaults import default_plan

    info = cancer_inputs.describe()
    return default_plan(cancer_inputs, info, seed=3, device="cpu").merged(QUICK_PLAN)


@pytest.fixture(scope="session")
def quick_assessment(cancer_inputs, quick_plan, tmp_path_factory):
    """One quick assessment of every family, recorded in a fresh store."""
    from bastion.assess.runner import Runner
    from bastion.store import RunStore

    if "quick" not in _MEMO:
        store = RunStore(tmp_path_factory.mktemp("store") / "runs.sqlite")
        _MEMO["quick"] = Runner(store, show_progress=False).run(cancer_inputs, quick_plan), store
    return _MEMO["quick"]


class NetworkUsed(AssertionError):
    pass


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, digits_demo, cancer_demo):
    """`run_demo` once, with every outgoing connection refused; returns (out folder, assessments, store path)."""
    from bastion.demo.run import run_demo
    from bastion.store import RunStore

    if "demo" in _MEMO:
        return _MEMO["demo"]
    out = tmp_path_factory.mktemp("demo") / "bastion-report"
    store_path = out.parent / "runs.sqlite"
    original = socket.socket.connect

    def refuse(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise NetworkUsed(f"the demo tried to connect to {address}")
        original(self, address)

    socket.socket.connect = refuse  # type: ignore[method-assign]
    try:
        with RunStore(store_path) as store:
            assessments = run_demo(out, seed=0, device="cpu", store=store, show_progress=False)
    finally:
        socket.socket.connect = original  # type: ignore[method-assign]
    _MEMO["demo"] = Path(out), assessments, store_path
    return _MEMO["demo"]
