"""Membership inference: Bastion's attacks against ML Privacy Meter's on the targets of privacy_peers.py.

Same data, targets and records as `privacy_peers.py` (imported from it, not copied): the overfit and the
well-regularised MLP trained on `members`, evaluated on the second half of the candidates (`eval_members`,
`eval_nonmembers`), with the `population` pool as the only other data an attacker holds. ML Privacy Meter
1.0.1 (`privacy_meter`; Ye et al. 2022, "Enhanced Membership Inference Attacks against Machine Learning
Models") runs its three metrics through its `Audit`, with its default loss signal and threshold functions:

- population: the target's loss on population records sets one global threshold per FPR;
- shadow: logistic regression on the losses of 4 shadow models, each trained on half of the population;
- reference: per-record thresholds from the losses of N reference models, each trained on a random population
  subset the size of the target's training set (N = the number of reference models of Bastion's LiRA), with
  its default threshold function (linear interpolation) and with its logit-rescaled Gaussian one, on the same
  models.

Privacy Meter returns decisions at a list of FPR tolerances, not one score per record. Its population metric
also returns each record's loss (the signal it thresholds), scored as -loss; its shadow metric returns a
membership probability per record; its reference metric returns only decisions, so it runs at 1,600 tolerances
between 0 and 1 and a record's score is the number of tolerances at which Privacy Meter calls it a member (its
decisions are nested, so this sweeps its own ROC). Every score goes through `bastion.evaluation.metrics`.
Privacy Meter's reference and shadow models are trained with Bastion's Trainer and the target's recipe, one
after another in this process; Bastion trains its own in 2 worker processes, so compare CPU seconds (this
process plus its children, from getrusage) as well as wall seconds.

    OMP_NUM_THREADS=1 PYTHONPATH=src .privacy-meter-venv/bin/python benchmarks/privacy_meter_peer.py [--quick]
"""

from __future__ import annotations

import copy
import json
import platform
import resource
import time
from collections.abc import Callable
from importlib.metadata import version

import numpy as np
import torch
from privacy_peers import (
    N_FEATURES,
    RECIPES,
    accuracy,
    bastion_configs,
    mlp,
    parse_args,
    setup_data,
    summarise,
    train_target,
)
from torch import nn

from bastion.core.data import Dataset
from bastion.core.registry import get
from bastion.core.target import TorchTarget
from bastion.core.training import Trainer, seed_everything

N_SHADOW = 4
TOLERANCES = np.unique(np.r_[0.0, 1.0, 1e-3, 1e-2, np.logspace(-12, 0, 600), np.linspace(0, 1, 1001)])
Scores = tuple[np.ndarray, np.ndarray]


def cpu_seconds() -> float:
    """User + system CPU of this process and of its finished children (Bastion's training workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn: Callable[[], Scores]) -> tuple[np.ndarray, np.ndarray, float, float]:
    wall, cpu = time.perf_counter(), cpu_seconds()
    m, n = fn()
    return np.asarray(m, float), np.asarray(n, float), time.perf_counter() - wall, cpu_seconds() - cpu


def train_like_target(x: np.ndarray, y: np.ndarray, recipe: dict, seed: int) -> nn.Module:
    seed_everything(seed)
    return Trainer(**recipe, seed=seed, device="cpu").fit(mlp(), x, y)


def privacy_meter_attacks(model: nn.Module, data: dict[str, Dataset], recipe: dict, n_reference: int,
                          seed: int = 10) -> dict:
    from privacy_meter.audit import Audit
    from privacy_meter.constants import InferenceGame
    from privacy_meter.dataset import Dataset as PMDataset
    from privacy_meter.hypothesis_test import linear_itp_threshold_func, logit_rescale_threshold_func
    from privacy_meter.information_source import InformationSource
    from privacy_meter.information_source_signal import ModelLoss
    from privacy_meter.metric import PopulationMetric, ReferenceMetric, ShadowMetric
    from privacy_meter.model import PytorchModel

    def wrap(module: nn.Module) -> PytorchModel:  # Privacy Meter hooks every layer: give it its own copy
        return PytorchModel(model_obj=copy.deepcopy(module), loss_fn=nn.CrossEntropyLoss())

    def pm_data(**splits: Dataset) -> PMDataset:
        return PMDataset({k: {"x": d.x, "y": d.y} for k, d in splits.items()}, default_input="x",
                         default_output="y")

    em, en, pop = data["eval_members"], data["eval_nonmembers"], data["population"]
    target = InformationSource(models=[wrap(model)], datasets=[pm_data(train=em, test=en)])
    rng = np.random.default_rng(seed)

    def audit(kind: type, reference: InformationSource, test: Callable | None = linear_itp_threshold_func):
        """Audit's own defaults for its MetricEnum metrics (which it cannot build with save_logs=False)."""
        metric = kind(target_info_source=target, reference_info_source=reference, signals=[ModelLoss()],
                      hypothesis_test_func=test)
        run = Audit(metrics=metric, inference_game_type=InferenceGame.PRIVACY_LOSS_MODEL,
                    target_info_sources=target, reference_info_sources=reference,
                    fpr_tolerances=list(TOLERANCES), save_logs=False)
        run.prepare()
        result = run.run()[0]
        return result[0] if isinstance(result, list) else result

    def population() -> Scores:
        pool = InformationSource(models=[wrap(model)], datasets=[pm_data(train=pop)])
        result = audit(PopulationMetric, pool)
        return -result.signal_values[:len(em)], -result.signal_values[len(em):]

    def shadow() -> Scores:
        models, datasets = [], []
        for k in range(N_SHADOW):
            order = rng.permutation(len(pop))
            inside, outside = order[:len(data["members"])], order[len(data["members"]):]
            models.append(wrap(train_like_target(pop.x[inside], pop.y[inside], recipe, seed + 100 + k)))
            datasets.append(pm_data(train=Dataset(pop.x[inside], pop.y[inside]),
                                    test=Dataset(pop.x[outside], pop.y[outside])))
        result = audit(ShadowMetric, InformationSource(models=models, datasets=datasets), None)
        return result.predictions_proba[:len(em)], result.predictions_proba[len(em):]

    def references() -> list[PytorchModel]:
        models = []
        for k in range(n_reference):
            inside = rng.choice(len(pop), size=len(data["members"]), replace=False)
            models.append(wrap(train_like_target(pop.x[inside], pop.y[inside], recipe, seed + 200 + k)))
        return models

    def reference(models: list[PytorchModel], test: Callable) -> Scores:
        pool = InformationSource(models=models, datasets=[target.datasets[0]])
        result = audit(ReferenceMetric, pool, test)
        decisions = np.asarray(result.predicted_labels)  # (tolerances, records), nested in the tolerance
        for alpha in (1e-2, 1e-3):
            row = decisions[np.searchsorted(TOLERANCES, alpha)]
            print(f"  privacy meter reference ({test.__name__}), its own decision at tolerance {alpha:g}: "
                  f"TPR {row[:len(em)].mean():.4f}, FPR {row[len(em):].mean():.4f}")
        flagged = decisions.sum(axis=0)  # the number of tolerances at which a record is called a member
        return flagged[:len(em)], flagged[len(em):]

    out = {"privacy meter population": timed(population),
           f"privacy meter shadow ({N_SHADOW} models)": timed(shadow)}
    wall, cpu = time.perf_counter(), cpu_seconds()
    models = references()
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu  # training, counted in both rows below
    print(f"  privacy meter's {n_reference} reference models trained in {wall:.1f} s wall, {cpu:.1f} s CPU")
    tests = {"linear": linear_itp_threshold_func, "logit-gaussian": logit_rescale_threshold_func}
    for label, test in tests.items():
        m, n, w, c = timed(lambda test=test: reference(models, test))
        out[f"privacy meter reference {label} ({n_reference})"] = (m, n, w + wall, c + cpu)
    return out


def bastion_attacks(model: nn.Module, data: dict[str, Dataset], recipe: dict, n_reference: int) -> dict:
    out = {}
    for label, (name, params) in bastion_configs(data, recipe, n_reference).items():
        if name == "label-only":
            continue
        attack = get("attacks", name, "privacy")(**params, n_bootstrap=0)
        target = TorchTarget(model, (N_FEATURES,), device="cpu")

        def run(attack=attack, target=target) -> Scores:
            attack.run(target, members=data["eval_members"], nonmembers=data["eval_nonmembers"],
                       population=data["population"])
            return attack.scores_

        out[label] = timed(run)
    return out


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], plot=False)
    torch.set_num_threads(1)
    data = setup_data(args.members)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"tensorflow {version('tensorflow-cpu')}, Privacy Meter {version('Privacy_Meter')}, "
          f"{args.members} members, eval {len(data['eval_members'])}+{len(data['eval_nonmembers'])} records")
    report = {}
    for name, recipe in RECIPES.items():
        model = train_target(data, recipe)
        print(f"\n== {name} target: train accuracy {accuracy(model, data['members']):.3f}, "
              f"test accuracy {accuracy(model, data['nonmembers']):.3f}")
        results = {**privacy_meter_attacks(model, data, recipe, args.n_reference),
                   **bastion_attacks(model, data, recipe, args.n_reference)}
        rows = summarise({k: (m, n, wall) for k, (m, n, wall, _) in results.items()}, seed=0)
        for row in rows:
            row["cpu_seconds"] = results[row["attack"]][3]
        report[name] = rows
        print(f"{'attack':36s} {'AUC':>6s} {'TPR@1%':>8s} {'TPR@0.1%':>9s} {'wall s':>7s} {'CPU s':>7s}")
        for r in rows:
            print(f"{r['attack']:36s} {r['auc']:6.3f} {r['tpr@1%']:8.4f} {r['tpr@0.1%']:9.4f} "
                  f"{r['seconds']:7.1f} {r['cpu_seconds']:7.1f}")
        for fpr in ("tpr@1%", "tpr@0.1%"):
            best_b = max((r for r in rows if r["attack"].startswith("bastion")), key=lambda r: r[fpr])
            best_p = max((r for r in rows if r["attack"].startswith("privacy meter")), key=lambda r: r[fpr])
            ratio = f"{best_b[fpr] / best_p[fpr]:.1f}x" if best_p[fpr] > 0 else "Privacy Meter finds none"
            print(f"best at {fpr[4:]} FPR: {best_b['attack']} {best_b[fpr]:.4f}; {best_p['attack']} "
                  f"{best_p[fpr]:.4f}; ratio {ratio}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
