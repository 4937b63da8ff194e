"""Mitigations: Bastion's adversarial training and randomized-smoothing certification against ART's, same models.

Run with the peers' environment (the peers are never Bastion dependencies):

    PYTHONPATH=src .peers-venv/bin/python benchmarks/mitigation_peers.py [--sections train,certify]
        [--epochs 5] [--n-certify 200] [--threads 1]

Model: the demo digits CNN (1x8x8 in [0, 1]); data: scikit-learn's digits, the demo split. Both tools start from the
same initial weights and hyper-parameters (Adam, lr 2e-3, batch 128, L∞ eps 0.15).

Sections:
  train    PGD-AT (5 steps of 2.5·eps/5, random start), TRADES (β = 6) and fast FGSM training (ART: "fast is better
           than free") for `--epochs` epochs: seconds, and the clean and PGD-20 robust accuracy of each trained model
           judged by the same Bastion PGD on the test split (Bastion's early stopping is off, for equal work)
  certify  CERTIFY (Cohen et al. 2019; n0 = 100, n = 1,000, α = 0.001, σ = 0.25) on `--n-certify` test images of a
           noise-trained CNN: seconds and the certified accuracy per radius of both tools
  defenses Bastion only: every defense on the demo CNN, clean accuracy cost and robust accuracy gain under `auto`
           (BPDA/EOT where needed) on `--n-eval` test images, with the naive-attack figure where it differs; it
           needs Opacus, so run it with the project's environment (`.venv/bin/python`, no peer is imported)
"""

from __future__ import annotations

import argparse
import copy
import logging
import time

import numpy as np
import torch
from common import table
from torch import nn

from bastion.attacks.evasion.gradient import PGD
from bastion.core.data import Dataset
from bastion.core.target import TorchTarget
from bastion.core.training import Trainer, accuracy
from bastion.defenses.certify.smoothing import SmoothedClassifier
from bastion.defenses.certify.smoothing_defense import noise_training
from bastion.defenses.training.adversarial import TRADES, FastAdversarialTraining, PGDAdversarialTraining
from bastion.demo.datasets import digits
from bastion.demo.models import digits_cnn

EPS, LR, BATCH, STEPS = 0.15, 2e-3, 128, 5
SIGMA, N0, N, ALPHA = 0.25, 100, 1000, 0.001
RADII = [0.0, 0.25, 0.5, 0.75]


def robust_accuracy(model: nn.Module, test: Dataset) -> float:
    target = TorchTarget(model, (1, 8, 8), n_classes=10, device="cpu")
    result = PGD(eps=EPS, steps=20).run(target, test)
    return result.metrics["robust_accuracy"][0]["robust_accuracy"]


class Whole(nn.Module):
    """The model as one module: ART unrolls an nn.Sequential into its layers, and its TRADES trainer then reads the
    first layer's output as the logits (a crash); wrapping keeps one output for every ART trainer."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def art_classifier(model: nn.Module):
    from art.estimators.classification import PyTorchClassifier

    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    return PyTorchClassifier(Whole(model), loss=nn.CrossEntropyLoss(), optimizer=optimizer, input_shape=(1, 8, 8),
                             nb_classes=10, clip_values=(0.0, 1.0), device_type="cpu")


def art_trainer(name: str, classifier, epochs: int):
    from art.attacks.evasion import ProjectedGradientDescent
    from art.defences.trainer import (
        AdversarialTrainerFBFPyTorch,
        AdversarialTrainerMadryPGD,
        AdversarialTrainerTRADESPyTorch,
    )

    step = 2.5 * EPS / STEPS
    if name == "pgd-at":
        return AdversarialTrainerMadryPGD(classifier, nb_epochs=epochs, batch_size=BATCH, eps=EPS, eps_step=step,
                                          max_iter=STEPS), {}
    if name == "trades":
        attack = ProjectedGradientDescent(classifier, eps=EPS, eps_step=step, max_iter=STEPS, verbose=False)
        return AdversarialTrainerTRADESPyTorch(classifier, attack, beta=6.0), {"nb_epochs": epochs,
                                                                                "batch_size": BATCH}
    return AdversarialTrainerFBFPyTorch(classifier, eps=EPS), {"nb_epochs": epochs, "batch_size": BATCH}


def bastion_defense(name: str, epochs: int):
    common = {"eps": EPS, "epochs": epochs, "batch_size": BATCH, "lr": LR, "early_stop": False, "eval_eps": None}
    if name == "pgd-at":
        return PGDAdversarialTraining(steps=STEPS, **common)
    if name == "trades":
        return TRADES(steps=STEPS, beta=6.0, **common)
    return FastAdversarialTraining(**common)


def section_train(train: Dataset, test: Dataset, epochs: int) -> None:
    torch.manual_seed(0)
    init = digits_cnn()
    warm = train.head(256)  # first calls pay one-off costs (allocator, kernels): paid here, untimed, by both tools
    bastion_defense("pgd-at", 1).train(copy.deepcopy(init), warm, TorchTarget(init, (1, 8, 8), 10, device="cpu"))
    art_trainer("pgd-at", art_classifier(copy.deepcopy(init)), 1)[0].fit(warm.x, np.eye(10, dtype=np.float32)[warm.y])
    rows = []
    for name in ("pgd-at", "trades", "fast-at"):
        ours = copy.deepcopy(init)
        target = TorchTarget(ours, (1, 8, 8), n_classes=10, device="cpu")
        start = time.perf_counter()
        bastion_defense(name, epochs).train(ours, train, target)
        t_bastion = time.perf_counter() - start
        theirs = copy.deepcopy(init)
        trainer, kwargs = art_trainer(name, art_classifier(theirs), epochs)
        start = time.perf_counter()
        trainer.fit(train.x, np.eye(10, dtype=np.float32)[train.y], **kwargs)  # ART FBF needs one-hot labels
        t_art = time.perf_counter() - start
        theirs.eval()
        rows.append({"method": name, "bastion s": t_bastion, "ART s": t_art, "ART / Bastion": t_art / t_bastion,
                     "clean (Bastion)": accuracy(ours, test.x, test.y), "clean (ART)": accuracy(theirs, test.x, test.y),
                     f"PGD-20 robust @{EPS} (Bastion)": robust_accuracy(ours, test),
                     f"PGD-20 robust @{EPS} (ART)": robust_accuracy(theirs, test)})
        print(f"  {name}: done", flush=True)
    print(f"\n### Adversarial training, {epochs} epochs on {len(train)} digits (CNN, CPU)\n")
    print(table(rows, list(rows[0])))


def section_certify(train: Dataset, test: Dataset, n_images: int) -> None:
    from art.estimators.certification.randomized_smoothing import PyTorchRandomizedSmoothing

    torch.manual_seed(0)
    model = digits_cnn()
    noise_training(model, train, SIGMA, Trainer(epochs=15, lr=LR, seed=0, device="cpu"), seed=0)
    model.eval()
    data = test.head(n_images)
    target = TorchTarget(model, (1, 8, 8), n_classes=10, device="cpu")
    start = time.perf_counter()
    cert = SmoothedClassifier(target, SIGMA, batch_size=4096, seed=0).certify(torch.as_tensor(data.x), N0, N, ALPHA)
    t_bastion = time.perf_counter() - start
    ours = cert.certified_accuracy(data.y, RADII)
    smoothed = PyTorchRandomizedSmoothing(model, loss=nn.CrossEntropyLoss(), input_shape=(1, 8, 8), nb_classes=10,
                                          clip_values=(0.0, 1.0), device_type="cpu", sample_size=N0, scale=SIGMA,
                                          alpha=ALPHA)
    np.random.seed(0)
    start = time.perf_counter()
    prediction, radius = smoothed.certify(data.x, n=N, batch_size=N)
    t_art = time.perf_counter() - start
    correct = prediction == data.y
    theirs = [{"radius": r, "certified_accuracy": float(np.mean(correct & (radius >= r)))} for r in RADII]
    row = {"images": len(data), "bastion s": t_bastion, "ART s": t_art, "ART / Bastion": t_art / t_bastion}
    for a, b in zip(ours, theirs, strict=True):
        row[f"cert@{a['radius']:g} B/A"] = f"{a['certified_accuracy']:.3f}/{b['certified_accuracy']:.3f}"
    print(f"\n### CERTIFY, sigma={SIGMA}, n0={N0}, n={N}, alpha={ALPHA} (noise-trained CNN, CPU)\n")
    print(table([row], list(row)))


DEFENSES = [
    ("adv-train", {"eps": EPS, "steps": STEPS, "epochs": 10, "lr": LR}),
    ("trades", {"eps": EPS, "steps": STEPS, "epochs": 10, "lr": LR}),
    ("fast-at", {"eps": EPS, "epochs": 10, "lr": LR}),
    ("dp-sgd", {"target_epsilon": 4.0, "epochs": 15, "lr": LR, "from_scratch": True, "eval_eps": [EPS]}),
    ("squeeze", {"bits": 1, "eps": [EPS]}),
    ("quantize", {"levels": 4, "eps": [EPS]}),
    ("spatial-smooth", {"window": 2, "eps": [EPS]}),
    ("round", {"decimals": 1, "eps": [EPS]}),
    ("top-k", {"k": 1, "eps": [EPS]}),
]


def section_defenses(train: Dataset, test: Dataset, n_eval: int) -> None:
    from bastion.core import registry

    torch.manual_seed(0)
    model = Trainer(epochs=15, lr=LR, seed=0, device="cpu").fit(digits_cnn(), train.x, train.y)
    data = test.head(n_eval)
    rows = []
    for name, params in DEFENSES:
        target = TorchTarget(model, (1, 8, 8), n_classes=10, device="cpu", name="digits cnn")
        start = time.perf_counter()
        m = registry.get("defenses", name)(**params).run(target, data, train_data=train).metrics
        naive = m.get("robust_accuracy_after_naive")
        rows.append({"defense": name, "clean before": m["clean_accuracy_before"],
                     "clean after": m["clean_accuracy_after"],
                     f"robust @{EPS} before": m["robust_accuracy_before"][0]["robust_accuracy"],
                     f"robust @{EPS} after": m["robust_accuracy_after"][0]["robust_accuracy"],
                     "naive attack after": naive[0]["robust_accuracy"] if naive else "",
                     "adaptive": m["evaluation"].get("adaptive", ""), "seconds": time.perf_counter() - start})
        print(f"  {name}: done", flush=True)
    print(f"\n### Every defense on the digits CNN, L∞ eps {EPS}, `auto`, {len(data)} test images (CPU)\n")
    print(table(rows, list(rows[0])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="train,certify")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--n-certify", type=int, default=200)
    parser.add_argument("--n-eval", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    logging.getLogger("art").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    train, test = digits()
    print(f"torch {torch.__version__}, {args.threads} thread(s), train {len(train)}, test {len(test)}")
    sections = args.sections.split(",")
    if "train" in sections:
        section_train(train, test, args.epochs)
    if "certify" in sections:
        section_certify(train, test, args.n_certify)
    if "defenses" in sections:
        section_defenses(train, test, args.n_eval)


if __name__ == "__main__":
    main()
