"""Poisoned-data detection: Bastion's Activation Clustering and Spectral Signatures against ART's on the same data.

Data: scikit-learn digits (1x8x8 in [0, 1]); 1100 training images poisoned by Bastion's BadNets (3x3 patch, all
to class 0) or Blended (alpha 0.2) attacks, or left clean, and the small CNN `bastion.demo.models:digits_cnn`
trained on them (20 epochs). Every detector screens the same training set with the same model; TPR and FPR are
measured against the known poison. ART reads its fixed layer (the classifier's last layer, here the logits);
"ART@features" gives ART the feature layer Bastion reads (the input of the first linear layer after the
convolutions) by handing it the model truncated there. Times are wall-clock seconds of one screening (Bastion's
default AC includes retraining a model for exclusionary reclassification).

Section `strip`: Bastion's STRIP against ART's (`art.defences.transformer.poisoning.STRIP`), both calibrated on
the defender's 300 clean images at 1% false rejection; detection on the triggered test inputs, false rejection
on the clean test inputs. Section `model` (no peer: ART's Neural Cleanse supports Keras models only): Neural
Cleanse on the backdoored and on clean models, and the repairs (fine-tune, fine-prune) with CA, ASR and DER.

    PYTHONPATH=src .peers-venv/bin/python benchmarks/backdoor_peers.py [--sections screening strip model]
        [--seeds 0 1 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from collections.abc import Callable
from functools import cache

import numpy as np
import torch
from torch import nn

from bastion.attacks.backdoor.badnets import BadNets, Blended
from bastion.attacks.backdoor.warping import WaNet
from bastion.core.data import Dataset
from bastion.core.target import TorchTarget
from bastion.core.training import Trainer, seed_everything
from bastion.defenses.detect.activation_clustering import ActivationClustering
from bastion.defenses.detect.neural_cleanse import NeuralCleanse
from bastion.defenses.detect.spectral import SpectralSignatures
from bastion.defenses.detect.strip import STRIP
from bastion.defenses.repair.fine_prune import FinePrune
from bastion.defenses.repair.fine_tune import FineTune
from bastion.demo.datasets import digits_with_clean_set
from bastion.demo.models import digits_cnn
from bastion.evaluation.metrics import detection_rates

ARCH = "bastion.demo.models:digits_cnn"
SCENARIOS = {"badnets-5%": (BadNets, {"poison_rate": 0.05}), "badnets-10%": (BadNets, {"poison_rate": 0.1}),
             "blended-5%": (Blended, {"poison_rate": 0.05, "alpha": 0.2}),
             "blended-10%": (Blended, {"poison_rate": 0.1, "alpha": 0.2}),
             "wanet-10%": (WaNet, {"poison_rate": 0.1, "strength": 2.0, "cross_ratio": 0.5}), "clean": (None, {})}


@cache
def digits() -> tuple[Dataset, Dataset, Dataset]:
    """(train 1100, defender's clean 300, test 397), the split of the tests."""
    return digits_with_clean_set(0)


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


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


@cache
def setup(name: str, seed: int) -> dict:
    """The (poisoned or clean) training set, the model trained on it, the ground truth and triggered inputs."""
    train, _, test = digits()
    cls, params = SCENARIOS[name]
    if cls is None:  # a clean training set: every flag is a false positive
        seed_everything(seed)
        model = Trainer(epochs=20, seed=seed, device="cpu").fit(digits_cnn(), train.x, train.y)
        return {"model": model, "data": train, "truth": np.zeros(len(train), bool), "asr": float("nan")}
    attack = cls(arch=ARCH, epochs=20, seed=seed, **params)
    result = attack.run(TorchTarget(digits_cnn(), (1, 8, 8), device="cpu"), test, train_data=train)
    xt, yt = attack.triggered(torch.as_tensor(test.x), torch.as_tensor(test.y))
    return {"model": attack.artifact_.eval(), "data": attack.poisoned_.to_dataset(),
            "truth": attack.poisoned_.is_poison.cpu().numpy(), "asr": result.metrics["curve"][0]["attack_success_rate"],
            "triggered": Dataset(xt.numpy(), yt.numpy(), "triggered")}


def screening(name: str, seed: int, eps: float) -> list[dict]:
    s = setup(name, seed)
    model, data = s["model"], s["data"]
    target = TorchTarget(model, (1, 8, 8), device="cpu")
    features = nn.Sequential(*list(model)[:6])  # up to Flatten: the layer Bastion reads
    runs: dict[str, Callable[[], np.ndarray]] = {
        "Bastion AC (exclusionary reclassification)": lambda: _flags(target, data, ActivationClustering(seed=seed)),
        "Bastion AC (silhouette, no retraining)": lambda: _flags(
            target, data, ActivationClustering(reclassify=False, seed=seed)),
        "ART ActivationDefence": lambda: art_ac(model, data.x, data.y),
        "ART@features ActivationDefence": lambda: art_ac(features, data.x, data.y),
        f"Bastion Spectral (eps={eps})": lambda: _flags(target, data, SpectralSignatures(eps=eps)),
        f"ART SpectralSignatureDefense (eps={eps})": lambda: art_ss(model, data.x, data.y, eps),
        f"ART@features SpectralSignatureDefense (eps={eps})": lambda: art_ss(features, data.x, data.y, eps),
    }
    rows = []
    for method, fn in runs.items():
        flags, seconds = timed(fn)
        rates = detection_rates(flags, s["truth"])
        rows.append({"scenario": name, "seed": seed, "method": method, "tpr": rates["tpr"], "fpr": rates["fpr"],
                     "seconds": seconds, "asr": s["asr"]})
    return rows


def _flags(target: TorchTarget, data: Dataset, defense: ActivationClustering | SpectralSignatures) -> np.ndarray:
    defense.run(target, data)
    return defense.flagged_


def art_strip(model: nn.Module, clean: Dataset, inputs: list[np.ndarray]) -> list[float]:
    from art.defences.transformer.poisoning import STRIP as ArtSTRIP

    probabilities = nn.Sequential(model, nn.Softmax(dim=-1))  # ART's STRIP takes entropies of predict()'s output
    defended = ArtSTRIP(art_classifier(probabilities))(num_samples=20, false_acceptance_rate=0.01)
    defended.mitigate(clean.x)
    return [float((defended.predict(x).sum(1) == 0).mean()) for x in inputs]  # abstentions are all-zero rows


def bastion_strip(model: nn.Module, clean: Dataset, inputs: list[Dataset], seed: int) -> list[float]:
    target = TorchTarget(model, (1, 8, 8), device="cpu")
    return [STRIP(frr=0.01, seed=seed).run(target, clean, suspect=d).metrics["detection_rate"] for d in inputs]


def strip_rows(name: str, seed: int) -> list[dict]:
    s = setup(name, seed)
    _, clean, test = digits()
    rows = []
    for method, fn in (("Bastion STRIP", lambda: bastion_strip(s["model"], clean, [s["triggered"], test], seed)),
                       ("ART STRIP", lambda: art_strip(s["model"], clean, [s["triggered"].x, test.x]))):
        (detected, rejected), seconds = timed(fn)
        rows.append({"scenario": name, "seed": seed, "method": method, "tpr": detected, "fpr": rejected,
                     "seconds": seconds, "asr": s["asr"]})
    return rows


def model_rows(name: str, seed: int) -> list[dict]:
    """Neural Cleanse on the poisoned and on a clean model; repairs of the poisoned model (Bastion only)."""
    s, clean_model = setup(name, seed), setup("clean", seed)["model"]
    _, clean, test = digits()
    rows = []
    for kind, model in (("backdoored", s["model"]), ("clean", clean_model)):
        result, seconds = timed(lambda m=model: NeuralCleanse(seed=seed).run(
            TorchTarget(m, (1, 8, 8), device="cpu"), clean))
        index = result.metrics["anomaly_index"]
        rows.append({"scenario": name, "seed": seed, "method": f"Neural Cleanse on the {kind} model",
                     "flagged": result.metrics["flagged_classes"], "index_0": index[0], "seconds": seconds,
                     "max_other": max(i for c, i in enumerate(index) if c != 0
                                      and result.metrics["mask_l1"][c] < np.median(result.metrics["mask_l1"]))})
    for defense in (FineTune(seed=seed), FinePrune(seed=seed)):
        result, seconds = timed(lambda d=defense: d.run(TorchTarget(s["model"], (1, 8, 8), device="cpu"), test,
                                                        train_data=clean, triggered=s["triggered"]))
        m = result.metrics
        rows.append({"scenario": name, "seed": seed, "method": defense.name, "seconds": seconds, "der": m["der"],
                     "ca": [m["before"]["clean_accuracy"], m["after"]["clean_accuracy"]],
                     "asr": [m["before"]["attack_success_rate"], m["after"]["attack_success_rate"]]})
    return rows


def print_rates(rows: list[dict], names: list[str], what: tuple[str, str]) -> None:
    print(f"| scenario | method | {what[0]} | {what[1]} | seconds | ASR of the poisoned model |")
    print("|---|---|---|---|---|---|")
    for name in names:
        for method in dict.fromkeys(r["method"] for r in rows if r["scenario"] == name):
            sel = [r for r in rows if r["scenario"] == name and r["method"] == method]
            mean = {k: float(np.mean([r[k] for r in sel])) for k in ("tpr", "fpr", "seconds", "asr")}
            print(f"| {name} | {method} | {mean['tpr']:.3f} | {mean['fpr']:.3f} | {mean['seconds']:.2f} | "
                  f"{mean['asr']:.3f} |")


def print_model(rows: list[dict]) -> None:
    print("| scenario | seed | method | result | seconds |")
    print("|---|---|---|---|---|")
    for r in rows:
        if "flagged" in r:
            text = (f"flagged {r['flagged']}, anomaly index of class 0 {r['index_0']:.2f}, largest other "
                    f"(small-norm side) {r['max_other']:.2f}")
        else:
            text = (f"CA {r['ca'][0]:.3f} -> {r['ca'][1]:.3f}, ASR {r['asr'][0]:.3f} -> {r['asr'][1]:.3f}, "
                    f"DER {r['der']:.3f}")
        print(f"| {r['scenario']} | {r['seed']} | {r['method']} | {text} | {r['seconds']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", default=["screening", "strip", "model"],
                        choices=["screening", "strip", "model"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--eps", type=float, default=0.05, help="expected poison fraction for Spectral Signatures")
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--json", action="store_true", help="print every row as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, seeds {args.seeds}")
    attacked = [n for n in args.scenarios if n != "clean"]
    if "screening" in args.sections:
        rows = [r for n in args.scenarios for seed in args.seeds for r in screening(n, seed, args.eps)]
        if args.json:
            print(json.dumps(rows, indent=1))
        print_rates(rows, args.scenarios, ("TPR", "FPR"))
    if "strip" in args.sections:
        rows = [r for n in attacked for seed in args.seeds for r in strip_rows(n, seed)]
        if args.json:
            print(json.dumps(rows, indent=1))
        print_rates(rows, attacked, ("detected (triggered)", "rejected (clean test)"))
    if "model" in args.sections:
        rows = [r for n in attacked[:1] for seed in args.seeds for r in model_rows(n, seed)]
        if args.json:
            print(json.dumps(rows, indent=1))
        print_model(rows)


if __name__ == "__main__":
    main()
