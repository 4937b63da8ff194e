"""Membership inference: Bastion's attacks against ART's on the same target models and the same records.

Data: a synthetic 10-class tabular task (scikit-learn `make_classification`, features scaled to [0, 1]); the
target MLP trains on `members`. Candidates are split in two halves: ART's supervised attacks (black-box attack
models, which need known members) train on the first half, and every attack, Bastion's and ART's, is evaluated on
the second half. Bastion's reference-model attacks instead use a population pool of records the target never saw.
Two targets: an overfit one (no regularisation, 60 epochs) and a well-regularised one (strong weight decay,
early stopping). TPR at low FPR comes from the same metrics code for every attack; wall times include training
reference, shadow and attack models.

    PYTHONPATH=src .peers-venv/bin/python benchmarks/privacy_peers.py [--quick] [--plot roc.png]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable

import numpy as np
import torch
from sklearn.datasets import make_classification
from torch import nn

from bastion.core.data import Dataset
from bastion.core.registry import get
from bastion.core.target import TorchTarget
from bastion.core.training import Trainer, seed_everything
from bastion.evaluation.metrics import roc_summary
from bastion.evaluation.privacy_plot import curves_from_scores, roc_loglog_png
from bastion.models.layers import Standardize

N_FEATURES, N_CLASSES = 40, 10
RECIPES = {  # how each target (and every model trained to imitate it) is trained
    "overfit": {"epochs": 60, "batch_size": 64, "lr": 1e-3, "optimizer": "adam", "weight_decay": 0.0},
    "regularised": {"epochs": 5, "batch_size": 64, "lr": 1e-3, "optimizer": "adamw", "weight_decay": 0.5},
}
STATS: dict[str, np.ndarray] = {}  # feature mean and std of the population, set in main()


def mlp() -> nn.Module:
    """The target architecture: standardisation inside the model, one hidden layer of 256."""
    return nn.Sequential(Standardize(STATS["mean"], STATS["std"]), nn.Linear(N_FEATURES, 256), nn.ReLU(),
                         nn.Linear(256, N_CLASSES))


def make_data(n_members: int, seed: int = 0) -> dict[str, Dataset]:
    """members (training set), nonmembers, population; candidates halved into ART-train and evaluation parts."""
    n = 4 * n_members
    x, y = make_classification(n_samples=n, n_features=N_FEATURES, n_informative=20, n_redundant=0,
                               n_classes=N_CLASSES, n_clusters_per_class=2, flip_y=0.02, class_sep=1.5,
                               random_state=seed)
    x = ((x - x.min(0)) / (x.max(0) - x.min(0))).astype(np.float32)
    m, h = n_members, n_members // 2
    return {
        "members": Dataset(x[:m], y[:m]), "nonmembers": Dataset(x[m:2 * m], y[m:2 * m]),
        "population": Dataset(x[2 * m:], y[2 * m:]),
        "art_members": Dataset(x[:h], y[:h]), "art_nonmembers": Dataset(x[m:m + h], y[m:m + h]),
        "eval_members": Dataset(x[h:m], y[h:m]), "eval_nonmembers": Dataset(x[m + h:2 * m], y[m + h:2 * m]),
    }


def setup_data(n_members: int) -> dict[str, Dataset]:
    """make_data, plus the population feature statistics that every model built by mlp() standardises with."""
    data = make_data(n_members)
    STATS.update(mean=data["population"].x.mean(0), std=data["population"].x.std(0))
    return data


def train_target(data: dict[str, Dataset], recipe: dict) -> nn.Module:
    seed_everything(1)
    return Trainer(**recipe, seed=1, device="cpu").fit(mlp(), data["members"].x, data["members"].y)


def accuracy(model: nn.Module, d: Dataset) -> float:
    with torch.no_grad():
        return float((model(torch.as_tensor(d.x)).argmax(1).numpy() == d.y).mean())


def timed(fn: Callable[[], tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, float]:
    start = time.perf_counter()
    m, n = fn()
    return np.asarray(m, float), np.asarray(n, float), time.perf_counter() - start


def bastion_configs(data: dict[str, Dataset], recipe: dict, n_reference: int) -> dict[str, tuple[str, dict]]:
    """Label -> (registered attack name, parameters) of every Bastion attack run on a target."""
    refs = {"arch": mlp, **recipe, "train_size": len(data["members"])}
    return {
        "bastion loss": ("loss", {}),
        "bastion label-only gap": ("label-only", {"method": "gap"}),
        "bastion shadow": ("shadow", {**refs, "n_reference": 4}),
        "bastion rmia (2 refs)": ("rmia", {**refs, "n_reference": 2}),
        f"bastion lira offline ({n_reference} refs)": ("lira", {**refs, "n_reference": n_reference,
                                                                 "mode": "offline"}),
        f"bastion lira online ({n_reference} refs)": ("lira", {**refs, "n_reference": n_reference}),
    }


def bastion_attacks(model: nn.Module, data: dict[str, Dataset], recipe: dict, n_reference: int) -> dict:
    out = {}
    for label, (name, params) in bastion_configs(data, recipe, n_reference).items():
        attack = get("attacks", name, "privacy")(**params, n_bootstrap=0)
        target = TorchTarget(model, (N_FEATURES,), device="cpu")

        def run(attack=attack, target=target):
            attack.run(target, members=data["eval_members"], nonmembers=data["eval_nonmembers"],
                       population=data["population"])
            return attack.scores_

        out[label] = timed(run)
    return out


def art_attacks(model: nn.Module, data: dict[str, Dataset], recipe: dict) -> dict:
    from art.attacks.privacy.membership_inference import (
        MembershipInferenceBlackBox,
        MembershipInferenceBlackBoxRuleBased,
    )
    from art.attacks.privacy.membership_inference.shadow_models import ShadowModels
    from art.estimators.classification import PyTorchClassifier

    class RecipeClassifier(PyTorchClassifier):
        """ART's shadow models call fit() with its defaults; train them with the target's recipe instead."""

        def fit(self, x, y, **kwargs):  # noqa: ANN001, ANN003
            super().fit(x, y, nb_epochs=recipe["epochs"], batch_size=recipe["batch_size"])

    def classifier(module: nn.Module, cls: type = PyTorchClassifier) -> PyTorchClassifier:
        optimizer = torch.optim.Adam(module.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
        return cls(model=module, loss=nn.CrossEntropyLoss(), optimizer=optimizer, input_shape=(N_FEATURES,),
                   nb_classes=N_CLASSES, clip_values=(0.0, 1.0), device_type="cpu")

    target = classifier(model)
    am, an = data["art_members"], data["art_nonmembers"]
    em, en = data["eval_members"], data["eval_nonmembers"]

    def scores(attack) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
        return (attack.infer(em.x, em.y, probabilities=True).reshape(len(em), -1)[:, -1],
                attack.infer(en.x, en.y, probabilities=True).reshape(len(en), -1)[:, -1])

    out = {}
    for kind in ("nn", "rf", "gb"):
        for input_type in ("prediction", "loss"):
            def run(kind=kind, input_type=input_type):
                attack = MembershipInferenceBlackBox(target, input_type=input_type, attack_model_type=kind)
                attack.fit(am.x, am.y, an.x, an.y)
                return scores(attack)

            out[f"art black-box {kind} ({input_type})"] = timed(run)

    def rule_based():
        return scores(MembershipInferenceBlackBoxRuleBased(target))

    out["art rule-based"] = timed(rule_based)

    def shadow():
        seed_everything(2)
        shadows = ShadowModels(classifier(mlp(), RecipeClassifier), num_shadow_models=4, random_state=0)
        pop = data["population"]
        (mx, my, mp), (nx, ny, npred) = shadows.generate_shadow_dataset(pop.x, pop.y, member_ratio=0.5)
        attack = MembershipInferenceBlackBox(target, attack_model_type="rf")
        attack.fit(mx, my, nx, ny, mp, npred)
        return scores(attack)

    out["art shadow models + rf"] = timed(shadow)
    return out


def summarise(results: dict, seed: int) -> list[dict]:
    rows = []
    for label, (m, n, seconds) in results.items():
        s = roc_summary(m, n, fprs=(0.01, 0.001), n_bootstrap=200, seed=seed)
        rows.append({"attack": label, "auc": s.auc.estimate, "tpr@1%": s.tpr_at_fpr[0.01].estimate,
                     "tpr@1%_ci": [s.tpr_at_fpr[0.01].low, s.tpr_at_fpr[0.01].high],
                     "tpr@0.1%": s.tpr_at_fpr[0.001].estimate,
                     "tpr@0.1%_ci": [s.tpr_at_fpr[0.001].low, s.tpr_at_fpr[0.001].high], "seconds": seconds})
    return rows


def parse_args(description: str, plot: bool = True) -> argparse.Namespace:
    """The options every membership benchmark shares (`--quick`: 1,000 members, 8 reference models)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--members", type=int, default=2500)
    parser.add_argument("--n-reference", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="1000 members, 8 reference models")
    if plot:
        parser.add_argument("--plot", help="write the log-log ROC of the overfit target to this PNG")
    parser.add_argument("--json", help="write all rows to this JSON file")
    args = parser.parse_args()
    if args.quick:
        args.members, args.n_reference = 1000, 8
    return args


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    torch.set_num_threads(1)  # reference models train in worker processes, one thread each
    data = setup_data(args.members)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.members} members, eval {len(data['eval_members'])}+{len(data['eval_nonmembers'])} records")
    report = {}
    for name, recipe in RECIPES.items():
        model = train_target(data, recipe)
        print(f"\n== {name} target: train accuracy {accuracy(model, data['members']):.3f}, "
              f"test accuracy {accuracy(model, data['nonmembers']):.3f}")
        results = {**art_attacks(model, data, recipe), **bastion_attacks(model, data, recipe, args.n_reference)}
        rows = summarise(results, seed=0)
        report[name] = rows
        print(f"{'attack':38s} {'AUC':>6s} {'TPR@1%':>8s} {'TPR@0.1%':>9s} {'seconds':>8s}")
        for r in rows:
            print(f"{r['attack']:38s} {r['auc']:6.3f} {r['tpr@1%']:8.4f} {r['tpr@0.1%']:9.4f} {r['seconds']:8.1f}")
        best_b = max((r for r in rows if r["attack"].startswith("bastion")), key=lambda r: r["tpr@0.1%"])
        best_a = max((r for r in rows if r["attack"].startswith("art")), key=lambda r: r["tpr@0.1%"])
        ratio = best_b["tpr@0.1%"] / max(best_a["tpr@0.1%"], 1e-12)
        print(f"best Bastion at 0.1% FPR: {best_b['attack']} {best_b['tpr@0.1%']:.4f}; best ART: "
              f"{best_a['attack']} {best_a['tpr@0.1%']:.4f}; ratio {ratio:.1f}x")
        if name == "overfit":
            ok = best_b["tpr@0.1%"] >= 2 * best_a["tpr@0.1%"] and best_b["tpr@0.1%"] >= 0.01
            print(f"criterion (>= 2x ART's best and >= 1% absolute at 0.1% FPR): {'PASS' if ok else 'FAIL'}")
            if args.plot:
                keep = {k: (m, n) for k, (m, n, _) in results.items()
                        if k in (best_b["attack"], best_a["attack"], "bastion loss", "art rule-based")}
                roc_loglog_png(curves_from_scores(keep), args.plot, title="Overfit target: membership ROC")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
