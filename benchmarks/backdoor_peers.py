"""Poisoned-data detection: Bastion's Activation Clustering and Spectral Signatures against ART's on the same data.

Data: scikit-learn digits (1x8x8 in [0, 1]); 1100 training images poisoned by Bastion's BadNets (3x3 patch, all
to class 0) or Blended (alpha 0.2) attacks, or left clean, and the small CNN `bastion.demo.models:digits_cnn`
trained on them (20 epochs). Every detector screens the same training set with the same model; TPR and FPR are
measured against the known poison. ART reads its fixed layer (the classifier's last layer, here the logits);
"ART@features" gives ART the feature layer Bastion reads (the input of the first linear layer after the
convolutions) by handing it the model truncated there. Times are wall-clock seconds of one screening (Bastion's
default AC includes retraining a model for exclusionary reclassification).

    PYTHONPATH=src /work/peers-venv/bin/python benchmarks/backdoor_peers.py [--seeds 0 1 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

from bastion.attacks.poisoning.backdoor import BadNets, Blended
from bastion.core.data import Dataset
from bastion.core.target import TorchTarget
from bastion.core.training import Trainer, seed_everything
from bastion.defenses.detect.activation_clustering import ActivationClustering
from bastion.defenses.detect.spectral import SpectralSignatures
from bastion.demo.models import digits_cnn
from bastion.evaluation.metrics import detection_rates

ARCH = "bastion.demo.models:digits_cnn"
SCENARIOS = {"badnets-5%": (BadNets, {"poison_rate": 0.05}), "badnets-10%": (BadNets, {"poison_rate": 0.1}),
             "blended-5%": (Blended, {"poison_rate": 0.05, "alpha": 0.2}),
             "blended-10%": (Blended, {"poison_rate": 0.1, "alpha": 0.2}), "clean": (None, {})}


def digits() -> tuple[Dataset, Dataset]:
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    return Dataset(x[:1100], y[:1100], "train"), Dataset(x[1400:], y[1400:], "test")


def art_classifier(model: nn.Module) -> object:
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=(1, 8, 8), nb_classes=10,
                             clip_values=(0.0, 1.0))


def art_ac(model: nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    from art.defences.detector.poison import ActivationDefence

    defence = ActivationDefence(art_classifier(model), x, np.eye(10)[y])
    _, is_clean = defence.detect_poison(nb_clusters=2, nb_dims=10, reduce="PCA")
    return np.asarray(is_clean) == 0


def art_ss(model: nn.Module, x: np.ndarray, y: np.ndarray, eps: float) -> np.ndarray:
    from art.defences.detector.poison import SpectralSignatureDefense

    defence = SpectralSignatureDefense(art_classifier(model), x, np.eye(10)[y], batch_size=128,
                                       eps_multiplier=1.5, expected_pp_poison=eps)
    _, is_clean = defence.detect_poison()
    return np.asarray(is_clean) == 0


def timed(fn: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    flags = fn()
    return flags, time.perf_counter() - start


def one_scenario(name: str, seed: int, eps: float) -> list[dict]:
    train, test = digits()
    cls, params = SCENARIOS[name]
    if cls is None:  # a clean training set: every flag is a false positive
        seed_everything(seed)
        model = Trainer(epochs=20, seed=seed, device="cpu").fit(digits_cnn(), train.x, train.y)
        poisoned, truth, asr = train, np.zeros(len(train), bool), float("nan")
    else:
        attack = cls(arch=ARCH, epochs=20, seed=seed, **params)
        result = attack.run(TorchTarget(digits_cnn(), (1, 8, 8), device="cpu"), test, train_data=train)
        model, poisoned = attack.artifact.eval(), attack.poisoned.to_dataset()
        truth, asr = attack.poisoned.is_poison.cpu().numpy(), result.metrics["curve"][0]["attack_success_rate"]
    target = TorchTarget(model, (1, 8, 8), device="cpu")
    features = nn.Sequential(*list(model)[:6])  # up to Flatten: the layer Bastion reads
    x, y = poisoned.x, poisoned.y
    runs: dict[str, Callable[[], np.ndarray]] = {
        "Bastion AC (exclusionary reclassification)": lambda: _flags(
            target, poisoned, ActivationClustering(seed=seed)),
        "Bastion AC (silhouette, no retraining)": lambda: _flags(
            target, poisoned, ActivationClustering(reclassify=False, seed=seed)),
        "ART ActivationDefence": lambda: art_ac(model, x, y),
        "ART@features ActivationDefence": lambda: art_ac(features, x, y),
        f"Bastion Spectral (eps={eps})": lambda: _flags(target, poisoned, SpectralSignatures(eps=eps)),
        f"ART SpectralSignatureDefense (eps={eps})": lambda: art_ss(model, x, y, eps),
        f"ART@features SpectralSignatureDefense (eps={eps})": lambda: art_ss(features, x, y, eps),
    }
    rows = []
    for method, fn in runs.items():
        flags, seconds = timed(fn)
        rates = detection_rates(flags, truth)
        rows.append({"scenario": name, "seed": seed, "method": method, "tpr": rates["tpr"], "fpr": rates["fpr"],
                     "seconds": seconds, "asr": asr})
    return rows


def _flags(target: TorchTarget, data: Dataset, defense: ActivationClustering | SpectralSignatures) -> np.ndarray:
    defense.run(target, data)
    return defense.flagged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--eps", type=float, default=0.05, help="expected poison fraction for Spectral Signatures")
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--json", action="store_true", help="print every row as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    rows = [r for name in args.scenarios for seed in args.seeds for r in one_scenario(name, seed, args.eps)]
    if args.json:
        print(json.dumps(rows, indent=1))
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, seeds {args.seeds}")
    print("| scenario | method | TPR | FPR | seconds | ASR of the poisoned model |")
    print("|---|---|---|---|---|---|")
    for name in args.scenarios:
        for method in dict.fromkeys(r["method"] for r in rows if r["scenario"] == name):
            sel = [r for r in rows if r["scenario"] == name and r["method"] == method]
            mean = {k: float(np.mean([r[k] for r in sel])) for k in ("tpr", "fpr", "seconds", "asr")}
            print(f"| {name} | {method} | {mean['tpr']:.3f} | {mean['fpr']:.3f} | {mean['seconds']:.2f} | "
                  f"{mean['asr']:.3f} |")


if __name__ == "__main__":
    main()
