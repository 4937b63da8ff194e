"""Model extraction: Bastion against ART's CopycatCNN and KnockoffNets on the same victim, budgets and substitute.

Run with the peers' environment (ART is never a Bastion dependency):

    PYTHONPATH=src .peers-venv/bin/python benchmarks/extraction_peers.py [--sections peers,curve] [--seeds 0,1,2]

Sections:
  peers      digits CNN victim; copycat (active and random sampling), knockoff random, knockoff adaptive vs ART
             at each budget (fidelity on the test set, mean over seeds, and CPU seconds per run)
  curve      synthetic 5-class tabular victim; fidelity / OOD fidelity / accuracy from 100 to 10,000 queries for
             copycat (active, random) and knockoff (random, active) beside ART's CopycatCNN and random KnockoffNets,
             with CPU seconds of the extraction (Bastion: cumulative over its one nested run; ART: one run per budget)
  defenses   every output defense against every attack at one budget (fidelity, transfer, API accuracy)
  detection  PRADA detection rate per attack and false alarms on benign streams
  equation   Tramèr's equation solving: queries and parameter error, with and without rounding
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import table
from sklearn.datasets import load_breast_cancer, load_digits, load_wine, make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import MinMaxScaler
from torch import nn

from bastion.attacks.extraction import Copycat, EquationSolving, JacobianAugmentation, KnockoffNets
from bastion.attacks.extraction.study import benign_streams, defense_table, detection_table
from bastion.core.data import Dataset
from bastion.core.target import FunctionTarget, TorchTarget
from bastion.core.training import Trainer
from bastion.demo.datasets import digits
from bastion.demo.models import digits_cnn, tabular_mlp

EPOCHS, BATCH, LR = 50, 64, 1e-3


def digits_victim() -> tuple[nn.Module, Dataset, Dataset]:
    train, test = digits()
    torch.manual_seed(0)  # torch's initial seed differs per process: fix the victim's initial weights
    model = digits_cnn()
    Trainer(epochs=15, batch_size=64, lr=2e-3, seed=0, device="cpu").fit(model, train.x, train.y)
    return model.eval(), train, test


def tabular_victim() -> tuple[nn.Module, Dataset, Dataset]:
    x, y = make_classification(n_samples=30000, n_features=20, n_informative=12, n_classes=5, n_clusters_per_class=2,
                               class_sep=1.5, random_state=0)
    x = x.astype(np.float32)
    victim_train, pool, test = slice(0, 12000), slice(12000, 27000), slice(27000, 30000)
    torch.manual_seed(0)  # torch's initial seed differs per process: fix the victim's initial weights
    model = tabular_mlp(20, 5, x[victim_train].mean(0), x[victim_train].std(0), hidden=64)
    Trainer(epochs=20, batch_size=128, lr=2e-3, seed=0, device="cpu").fit(model, x[victim_train], y[victim_train])
    return model.eval(), Dataset(x[pool], y[pool], "pool"), Dataset(x[test], y[test], "test")


def art_extract(kind: str, victim: nn.Module, factory, shape, n_classes, pool: Dataset, budget: int, seed: int,
                bounds=None):
    from art.attacks.extraction import CopycatCNN
    from art.attacks.extraction import KnockoffNets as ArtKnockoff
    from art.estimators.classification import PyTorchClassifier

    np.random.seed(seed)
    torch.manual_seed(seed)
    api = PyTorchClassifier(nn.Sequential(victim, nn.Softmax(dim=1)), loss=nn.CrossEntropyLoss(),
                            input_shape=shape, nb_classes=n_classes, clip_values=bounds, device_type="cpu")
    thief_model = factory()
    thief = PyTorchClassifier(thief_model, loss=nn.CrossEntropyLoss(),
                              optimizer=torch.optim.Adam(thief_model.parameters(), lr=LR), input_shape=shape,
                              nb_classes=n_classes, clip_values=bounds, device_type="cpu")
    common = {"batch_size_fit": BATCH, "batch_size_query": BATCH, "nb_epochs": EPOCHS, "nb_stolen": budget}
    if kind.startswith("copycat"):
        attack = CopycatCNN(api, use_probability=False, **common)
        return attack.extract(pool.x, thieved_classifier=thief)
    if kind == "knockoff":
        attack = ArtKnockoff(api, sampling_strategy="random", use_probability=True, verbose=False, **common)
        return attack.extract(pool.x, thieved_classifier=thief)
    attack = ArtKnockoff(api, sampling_strategy="adaptive", reward="all", use_probability=True, verbose=False,
                         **common)
    onehot = np.eye(int(pool.y.max()) + 1)[pool.y]
    return attack.extract(pool.x, onehot, thieved_classifier=thief)


def bastion_attack(kind: str, budget, seed: int, **extra):
    common = {"epochs": EPOCHS, "batch_size": BATCH, "lr": LR, "seed": seed, **extra}
    if kind == "copycat":
        return Copycat(budget=budget, **common)
    if kind == "copycat_random":
        return Copycat(budget=budget, sampling="random", **common)
    if kind == "jacobian":
        return JacobianAugmentation(budget=budget, **common)
    common.setdefault("sampling", "adaptive" if kind == "adaptive" else "random")
    return KnockoffNets(budget=budget, **common)


def section_peers(budgets: list[int], seeds: list[int]) -> None:
    victim, train, test = digits_victim()
    target = TorchTarget(victim, (1, 8, 8), device="cpu")
    truth = target.labels(test.x).numpy()
    rows = []
    art_runs: dict[tuple[str, int, int], tuple[float, float]] = {}
    for kind in ("copycat", "copycat_random", "knockoff", "adaptive"):
        for budget in budgets:
            runs: dict[str, list[tuple[float, float]]] = {"bastion": [], "bastion_same_arch": [], "art": []}
            for seed in seeds:
                for name, arch in (("bastion", None), ("bastion_same_arch", "bastion.demo.models:digits_cnn")):
                    attack = bastion_attack(kind, budget, seed, arch=arch, monitor=False, ood_samples=0,
                                            transfer_samples=0)
                    start = time.process_time()
                    result = attack.run(target, test, pool=train)
                    runs[name].append((result.metrics["fidelity"], time.process_time() - start))
                art_kind = "copycat" if kind.startswith("copycat") else kind
                if (art_kind, budget, seed) not in art_runs:  # copycat and copycat_random share ART's runs
                    start = time.process_time()
                    thief = art_extract(art_kind, victim, digits_cnn, (1, 8, 8), 10, train, budget, seed, (0.0, 1.0))
                    seconds = time.process_time() - start
                    art_runs[art_kind, budget, seed] = (float((thief.predict(test.x).argmax(1) == truth).mean()),
                                                        seconds)
                runs["art"].append(art_runs[art_kind, budget, seed])
            row = {"attack": kind, "budget": budget}
            for name, values in runs.items():
                fid, sec = np.array(values).T
                row[f"{name}_fidelity"] = f"{fid.mean():.4f} ± {fid.std():.4f}"
                row[f"{name}_cpu_s"] = float(sec.mean())
            rows.append(row)
            print(rows[-1], flush=True)
    print(f"\n## peers (digits CNN victim; ART and bastion_same_arch train digits_cnn, bastion its default "
          f"substitute; {EPOCHS} epochs each; mean ± std over seeds {seeds})\n")
    print(table(rows, list(rows[0])))


def timed_extract(attack) -> list[float]:
    """Record the cumulative CPU seconds `attack.extract` spends up to each copy (scoring excluded)."""
    times: list[float] = []
    extract = attack.extract

    def wrapped(api, pool, budgets):
        inner, total = extract(api, pool, budgets), 0.0
        while True:
            start = time.process_time()
            try:
                item = next(inner)
            except StopIteration:
                return
            total += time.process_time() - start
            times.append(total)
            yield item

    attack.extract = wrapped
    return times


CURVE_VARIANTS = {  # name: (kind, extra parameters); ART is run for the kinds with an "art" entry
    "copycat": ("copycat", {}),
    "copycat (random)": ("copycat", {"sampling": "random"}),
    "knockoff (random)": ("knockoff", {}),
    "knockoff (active)": ("knockoff", {"sampling": "active"}),
}


def section_curve(budgets: list[int], seeds: list[int]) -> None:
    victim, pool, test = tabular_victim()
    target = TorchTarget(victim, (20,), bounds=(float(pool.x.min()), float(pool.x.max())), device="cpu")
    truth = target.labels(test.x).numpy()
    rows = []
    for seed in seeds:
        for name, (kind, extra) in CURVE_VARIANTS.items():
            attack = bastion_attack(kind, budgets, seed, monitor=False, transfer_samples=300, **extra)
            times = timed_extract(attack)
            result = attack.run(target, test, pool=pool)
            print(name, seed, [round(p["fidelity"], 4) for p in result.metrics["curve"]], f"{times[-1]:.1f} cpu s",
                  flush=True)
            for point, seconds in zip(result.metrics["curve"], times, strict=True):
                rows.append({"attack": name, "seed": seed, **point, "cpu_s": seconds})
        for kind in ("copycat", "knockoff"):
            for budget in budgets:
                factory = lambda: tabular_mlp(20, 5, pool.x.mean(0), pool.x.std(0), hidden=128)  # noqa: E731
                start = time.process_time()
                thief = art_extract(kind, victim, factory, (20,), 5, pool, budget, seed)
                seconds = time.process_time() - start
                rows.append({"attack": f"ART {kind}", "seed": seed, "budget": budget, "cpu_s": seconds,
                             "fidelity": float((thief.predict(test.x).argmax(1) == truth).mean())})
            print(f"ART {kind}", seed, [round(r["fidelity"], 4) for r in rows[-len(budgets):]], flush=True)
    summary = []
    names = [*CURVE_VARIANTS, "ART copycat", "ART knockoff"]
    for name in names:
        for budget in budgets:
            sel = [r for r in rows if r["attack"] == name and r["budget"] == budget]
            row = {"attack": name, "budget": budget}
            for key in ("fidelity", "fidelity_ood", "accuracy", "transfer_success", "cpu_s"):
                if key not in sel[0]:
                    continue
                values = np.array([r[key] for r in sel])
                row[key] = f"{values.mean():.4f} ± {values.std():.4f}" if "fidelity" in key else float(values.mean())
            summary.append(row)
    print("\n## curve (synthetic 5-class tabular MLP victim, victim accuracy "
          f"{float((truth == test.y).mean()):.3f}; mean ± std over seeds {seeds}; Bastion cpu_s is cumulative "
          "over the nested curve, ART's is one run per budget)\n")
    print(table(summary, ["attack", "budget", "fidelity", "cpu_s", "fidelity_ood", "accuracy", "transfer_success"]))


def section_defenses(budget: int) -> None:
    victim, train, test = digits_victim()
    target = TorchTarget(victim, (1, 8, 8), device="cpu")
    attacks = {kind: bastion_attack(kind, budget, 0) for kind in ("copycat", "knockoff", "adaptive", "jacobian")}
    defenses = [None, "label_only", "rounding:1", "top_k:1", "reverse_sigmoid", "poisoning:0.5",
                "poisoning_argmax:1.0"]
    rows = defense_table(target, test, train, attacks, defenses)
    print(f"\n## defenses (digits CNN victim, budget {budget}, seed 0)\n")
    print(table(rows, ["attack", "defense", "fidelity", "accuracy", "transfer_success", "api_accuracy", "error"]))


def section_detection(budget: int, seeds: list[int]) -> None:
    from bastion.defenses.detect.prada import PRADA

    victim, train, test = digits_victim()
    target = TorchTarget(victim, (1, 8, 8), device="cpu")
    bunch = load_digits()
    natural = Dataset((bunch.images / 16.0).astype(np.float32)[:, None], bunch.target)
    attacks = {kind: bastion_attack(kind, budget, 0, epochs=10, min_steps=100)
               for kind in ("jacobian", "copycat", "knockoff", "adaptive")}
    benign = benign_streams(target, natural, 20, budget, seed=1000)
    calibrated = PRADA(min_queries=100)
    delta = calibrated.calibrate(benign_streams(target, train, 10, budget, seed=0))
    detectors = {"default (delta 0.96, from 200 distances)": PRADA(),
                 f"paper setting (from 100 distances, delta calibrated = {delta:.3f})": calibrated}
    rows = detection_table(target, test, train, attacks, seeds, benign, detectors)
    print(f"\n## detection: PRADA on {budget}-query streams, {len(seeds)} per attack, 20 benign streams\n")
    print(table(rows, list(rows[0])))


def section_equation() -> None:
    rows = []
    for loader in (load_breast_cancer, load_wine, load_digits):
        x, y = loader(return_X_y=True)
        x = MinMaxScaler().fit_transform(x).astype(np.float32)
        model = LogisticRegression(C=10, max_iter=5000).fit(x, y)
        k = len(model.classes_)
        weights, bias = model.coef_, model.intercept_
        if k > 2:
            weights, bias = weights - weights.mean(0), bias - bias.mean()
        for precision in ("float64", "float32"):
            cast = np.float64 if precision == "float64" else np.float32
            target = FunctionTarget(lambda a, m=model, c=cast: m.predict_proba(a.astype(c)), k, (x.shape[1],))
            for defense in (None, "rounding:4", "rounding:2"):
                attack = EquationSolving(defense=defense, monitor=False, transfer_samples=0)
                start = time.perf_counter()
                result = attack.run(target, Dataset(x, y))
                rows.append({"data": loader.__name__[5:], "classes": k, "d": x.shape[1], "api": precision,
                             "defense": defense or "none", "queries": result.queries,
                             "zero_scores": result.metrics["zero_scores"],
                             "max_weight_error": float(np.abs(attack.weights_ - weights).max()),
                             "max_bias_error": float(np.abs(attack.bias_ - bias).max()),
                             "fidelity": result.metrics["fidelity"], "fidelity_ood": result.metrics["fidelity_ood"],
                             "seconds": time.perf_counter() - start})
    print("\n## equation solving (logistic regression on min-max scaled features)\n")
    print(table(rows, list(rows[0])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="peers,curve,defenses,detection,equation")
    parser.add_argument("--budgets", default="100,250,500,1000")
    parser.add_argument("--curve-budgets", default="100,300,1000,3000,10000")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    budgets = [int(b) for b in args.budgets.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    sections = args.sections.split(",")
    if "peers" in sections:
        section_peers(budgets, seeds)
    if "curve" in sections:
        section_curve([int(b) for b in args.curve_budgets.split(",")], seeds)
    if "defenses" in sections:
        section_defenses(500)
    if "detection" in sections:
        section_detection(1000, seeds)
    if "equation" in sections:
        section_equation()


if __name__ == "__main__":
    main()
