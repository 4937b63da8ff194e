"""The demo run: train or load the demo models, attack them, print a table and write JSON results."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bastion.attacks.evasion.gradient import FGSM, PGD
from bastion.core.results import AttackResult
from bastion.demo.cache import DEMO_MODELS, demo_model
from bastion.models import load_target

# Epsilons in each model's input units: pixels in [0, 1]; raw tabular features measured in the L2 norm.
DEMO_EPS = {"digits-cnn": ("linf", [0.05, 0.1, 0.2, 0.3]), "breast-cancer-mlp": ("l2", [5.0, 20.0, 50.0, 100.0])}


def run_demo(out: Path, seed: int = 0, device: str = "auto", console: Console | None = None) -> list[AttackResult]:
    """Evasion slice of the demo: FGSM and PGD at four epsilons on each demo model."""
    console = console or Console()
    out.mkdir(parents=True, exist_ok=True)
    results: list[AttackResult] = []
    for name in DEMO_MODELS:
        cached = demo_model(name, seed=seed)
        target = load_target(cached.model_path, data=cached.test, device=device)
        norm, eps = DEMO_EPS[name]
        for attack in (FGSM(eps=eps, norm=norm, seed=seed), PGD(eps=eps, norm=norm, steps=50, seed=seed)):
            result = attack.run(target, cached.test)
            result.params["model"] = name
            results.append(result)
    table = Table(title="Bastion demo — evasion (robust accuracy per epsilon)")
    for col in ("model", "attack", "norm", "clean", "robust accuracy by eps", "queries", "seconds", "severity"):
        table.add_column(col)
    for r in results:
        curve = "  ".join(f"{c['eps']:g}: {c['robust_accuracy']:.1%}" for c in r.metrics["robust_accuracy"])
        table.add_row(r.params["model"], r.attack, r.metrics["norm"], f"{r.metrics['clean_accuracy']:.1%}", curve,
                      str(r.queries), f"{r.seconds:.2f}", r.worst_severity() or "-")
    console.print(table)
    path = out / "demo-results.json"
    path.write_text(json.dumps([r.to_dict() for r in results], indent=2))
    console.print(f"results written to {path}")
    for name in DEMO_MODELS:
        cached = demo_model(name, seed=seed, progress=False)
        console.print(f"{name}: model {cached.model_path}  test data {cached.test_path}")
    return results
